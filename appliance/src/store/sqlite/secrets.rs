//! On-site secrets (table `secrets`): sealed values by id, never a value in clear.

use rusqlite::params;

use super::SqliteStore;
use crate::store::{Result, SecretRecord, SecretStore};

impl SecretStore for SqliteStore {
    fn put_secret(&mut self, id: &str, sealed: &[u8], at: &str) -> Result<()> {
        // An upsert rather than `INSERT OR REPLACE`, which deletes the row and inserts another.
        self.conn.execute(
            "INSERT INTO secrets (id, sealed, set_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET sealed = excluded.sealed, set_at = excluded.set_at",
            params![id, sealed, at],
        )?;
        Ok(())
    }

    fn secret_records(&self) -> Result<Vec<SecretRecord>> {
        let mut stmt = self.conn.prepare("SELECT id, sealed, set_at FROM secrets ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(SecretRecord { id: r.get(0)?, sealed: r.get(1)?, set_at: r.get(2)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn remove_secret(&mut self, id: &str) -> Result<bool> {
        Ok(self.conn.execute("DELETE FROM secrets WHERE id = ?1", params![id])? > 0)
    }
}
