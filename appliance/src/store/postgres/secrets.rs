//! On-site secrets (table `secrets`): sealed values by id, never a value in clear. A change is
//! notified on [`channel::SECRETS`] so that the other instances read the value again.

use super::{PostgresStore, channel, notify};
use crate::store::{Result, SecretRecord, SecretStore};

impl SecretStore for PostgresStore {
    fn put_secret(&mut self, id: &str, sealed: &[u8], at: &str) -> Result<()> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // An upsert that writes only what differs: the same value set again (at the same
        // time) changes nothing and tells nobody.
        let changed = tx.execute(
            "INSERT INTO secrets (id, sealed, set_at) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET sealed = excluded.sealed, set_at = excluded.set_at
             WHERE (secrets.sealed, secrets.set_at) IS DISTINCT FROM (excluded.sealed, excluded.set_at)",
            &[&id, &sealed, &at],
        )? > 0;
        if changed {
            notify(&mut tx, channel::SECRETS, id)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn secret_records(&self) -> Result<Vec<SecretRecord>> {
        let rows =
            self.client()?.query("SELECT id, sealed, set_at FROM secrets ORDER BY id", &[])?;
        rows.iter()
            .map(|r| {
                Ok(SecretRecord { id: r.try_get(0)?, sealed: r.try_get(1)?, set_at: r.try_get(2)? })
            })
            .collect()
    }

    fn remove_secret(&mut self, id: &str) -> Result<bool> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        let removed = tx.execute("DELETE FROM secrets WHERE id = $1", &[&id])? > 0;
        if removed {
            notify(&mut tx, channel::SECRETS, id)?;
        }
        tx.commit()?;
        Ok(removed)
    }
}
