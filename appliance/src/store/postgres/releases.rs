//! Releases, floors and the active pointer (tables `releases`, `floors`, `active`).

use super::{PostgresStore, channel, int, notify, uint};
use crate::store::{ReleaseRecord, ReleaseStore, Result, StoreError};

const RELEASE_COLUMNS: &str = "SELECT name, sequence, created, expires, key_id, entries,
    payload_bytes, manifest_sha256, imported_at FROM releases";

fn release_row(r: &postgres::Row) -> Result<ReleaseRecord> {
    Ok(ReleaseRecord {
        name: r.try_get(0)?,
        sequence: uint(r, 1)?,
        created: r.try_get(2)?,
        expires: r.try_get(3)?,
        key_id: r.try_get(4)?,
        entries: uint(r, 5)?,
        payload_bytes: uint(r, 6)?,
        manifest_sha256: r.try_get(7)?,
        imported_at: r.try_get(8)?,
    })
}

impl ReleaseStore for PostgresStore {
    fn floor(&self, name: &str) -> Result<Option<u64>> {
        let row =
            self.client()?.query_opt("SELECT sequence FROM floors WHERE name = $1", &[&name])?;
        row.map(|r| uint(&r, 0)).transpose()
    }

    fn activate_new(&mut self, r: &ReleaseRecord) -> Result<()> {
        let sequence = int("sequence", r.sequence)?;
        let (entries, payload_bytes) =
            (int("entry count", r.entries)?, int("payload size", r.payload_bytes)?);
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        lock_pointer(&mut tx)?;
        // An upsert, not a delete and insert (SQLite's `INSERT OR REPLACE`): the active
        // pointer may reference this row, and PostgreSQL enforces that reference.
        tx.execute(
            "INSERT INTO releases
             (name, sequence, created, expires, key_id, entries, payload_bytes, manifest_sha256, imported_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (name, sequence) DO UPDATE SET created = excluded.created,
                 expires = excluded.expires, key_id = excluded.key_id, entries = excluded.entries,
                 payload_bytes = excluded.payload_bytes, manifest_sha256 = excluded.manifest_sha256,
                 imported_at = excluded.imported_at",
            &[
                &r.name,
                &sequence,
                &r.created,
                &r.expires,
                &r.key_id,
                &entries,
                &payload_bytes,
                &r.manifest_sha256,
                &r.imported_at,
            ],
        )?;
        point_at(&mut tx, &r.name, sequence)?;
        // GREATEST inside the upsert, not a read then a write: the row is locked while the
        // new value is computed from the latest one, so two instances importing at once
        // cannot lower the floor the other raised.
        tx.execute(
            "INSERT INTO floors (name, sequence) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET sequence = GREATEST(floors.sequence, excluded.sequence)",
            &[&r.name, &sequence],
        )?;
        notify(&mut tx, channel::RELEASES, "")?;
        crate::crash_point("before-commit");
        tx.commit()?;
        crate::crash_point("after-commit");
        Ok(())
    }

    fn activate(&mut self, name: &str, sequence: u64) -> Result<()> {
        let seq = int("sequence", sequence)?;
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        lock_pointer(&mut tx)?;
        let known = tx.query_opt(
            "SELECT 1 FROM releases WHERE name = $1 AND sequence = $2",
            &[&name, &seq],
        )?;
        if known.is_none() {
            return Err(StoreError::NotFound {
                what: "release",
                key: format!("{name} {sequence}"),
            });
        }
        point_at(&mut tx, name, seq)?;
        notify(&mut tx, channel::RELEASES, "")?;
        tx.commit()?;
        Ok(())
    }

    fn active(&self) -> Result<Option<(String, u64)>> {
        let row =
            self.client()?.query_opt("SELECT name, sequence FROM active WHERE id = 1", &[])?;
        row.map(|r| Ok((r.try_get(0)?, uint(&r, 1)?))).transpose()
    }

    fn releases(&self) -> Result<Vec<ReleaseRecord>> {
        let rows = self
            .client()?
            .query(&format!("{RELEASE_COLUMNS} ORDER BY imported_at, name, sequence"), &[])?;
        rows.iter().map(release_row).collect()
    }

    fn forget(&mut self, name: &str, sequence: u64) -> Result<()> {
        let seq = int("sequence", sequence)?;
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        let active = lock_pointer(&mut tx)?;
        if active.is_some_and(|(n, s)| n == name && s == seq) {
            return Err(StoreError::ActiveRelease { name: name.to_owned(), sequence });
        }
        tx.execute("DELETE FROM releases WHERE name = $1 AND sequence = $2", &[&name, &seq])?;
        tx.commit()?;
        Ok(())
    }
}

/// Locks the active pointer (while there is one) for the rest of the transaction, and reads
/// it. Every change of the releases or the pointer takes this lock first: two instances
/// importing, rolling back or forgetting at once take turns, so a release is never forgotten
/// between another's check that it is stored and its move of the pointer to it, and they
/// always lock in the same order (no deadlock).
fn lock_pointer(tx: &mut postgres::Transaction<'_>) -> Result<Option<(String, i64)>> {
    let row = tx.query_opt("SELECT name, sequence FROM active WHERE id = 1 FOR UPDATE", &[])?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

/// Makes the stored release `name` `sequence` the active one.
fn point_at(tx: &mut postgres::Transaction<'_>, name: &str, sequence: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO active (id, name, sequence) VALUES (1, $1, $2)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, sequence = excluded.sequence",
        &[&name, &sequence],
    )?;
    Ok(())
}
