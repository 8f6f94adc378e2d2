//! Releases, floors and the active pointer (tables `releases`, `floors`, `active`).

use rusqlite::{OptionalExtension as _, params};

use super::{SqliteStore, int, uint};
use crate::store::{ReleaseRecord, ReleaseStore, Result, StoreError};

impl ReleaseStore for SqliteStore {
    fn floor(&self, name: &str) -> Result<Option<u64>> {
        Ok(self
            .conn
            .query_row("SELECT sequence FROM floors WHERE name = ?1", params![name], |r| uint(r, 0))
            .optional()?)
    }

    fn activate_new(&mut self, r: &ReleaseRecord) -> Result<()> {
        let sequence = int("sequence", r.sequence)?;
        let (entries, payload_bytes) =
            (int("entry count", r.entries)?, int("payload size", r.payload_bytes)?);
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO releases
             (name, sequence, created, expires, key_id, entries, payload_bytes, manifest_sha256, imported_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                r.name,
                sequence,
                r.created,
                r.expires,
                r.key_id,
                entries,
                payload_bytes,
                r.manifest_sha256,
                r.imported_at
            ],
        )?;
        point_at(&tx, &r.name, sequence)?;
        tx.execute(
            "INSERT INTO floors (name, sequence) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET sequence = MAX(sequence, excluded.sequence)",
            params![r.name, sequence],
        )?;
        crate::crash_point("before-commit");
        tx.commit()?;
        crate::crash_point("after-commit");
        Ok(())
    }

    fn activate(&mut self, name: &str, sequence: u64) -> Result<()> {
        let seq = int("sequence", sequence)?;
        let tx = self.conn.transaction()?;
        let known = tx
            .query_row(
                "SELECT 1 FROM releases WHERE name = ?1 AND sequence = ?2",
                params![name, seq],
                |_| Ok(()),
            )
            .optional()?;
        if known.is_none() {
            return Err(StoreError::NotFound {
                what: "release",
                key: format!("{name} {sequence}"),
            });
        }
        point_at(&tx, name, seq)?;
        tx.commit()?;
        Ok(())
    }

    fn active(&self) -> Result<Option<(String, u64)>> {
        Ok(self
            .conn
            .query_row("SELECT name, sequence FROM active WHERE id = 1", [], |r| {
                Ok((r.get(0)?, uint(r, 1)?))
            })
            .optional()?)
    }

    fn releases(&self) -> Result<Vec<ReleaseRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, sequence, created, expires, key_id, entries, payload_bytes, manifest_sha256, imported_at
             FROM releases ORDER BY imported_at, name, sequence",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ReleaseRecord {
                name: r.get(0)?,
                sequence: uint(r, 1)?,
                created: r.get(2)?,
                expires: r.get(3)?,
                key_id: r.get(4)?,
                entries: uint(r, 5)?,
                payload_bytes: uint(r, 6)?,
                manifest_sha256: r.get(7)?,
                imported_at: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn forget(&mut self, name: &str, sequence: u64) -> Result<()> {
        let seq = int("sequence", sequence)?;
        let tx = self.conn.transaction()?;
        let active = tx
            .query_row(
                "SELECT 1 FROM active WHERE id = 1 AND name = ?1 AND sequence = ?2",
                params![name, seq],
                |_| Ok(()),
            )
            .optional()?;
        if active.is_some() {
            return Err(StoreError::ActiveRelease { name: name.to_owned(), sequence });
        }
        tx.execute("DELETE FROM releases WHERE name = ?1 AND sequence = ?2", params![name, seq])?;
        tx.commit()?;
        Ok(())
    }
}

/// Makes the stored release `name` `sequence` the active one.
fn point_at(conn: &rusqlite::Connection, name: &str, sequence: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO active (id, name, sequence) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, sequence = excluded.sequence",
        params![name, sequence],
    )?;
    Ok(())
}
