//! Agents' output keys in SQLite: the `output_keys` table.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{SqliteStore, int, uint};
use crate::store::{KeyState, OutputKeyRecord, OutputKeyStore, Result, StoreError};

const COLUMNS: &str = "SELECT row, agent_id, output, key_id, api_key, permissions_sha256, state,
    retire_at, created_at, intent, retire_policy FROM output_keys";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutputKeyRecord> {
    let state: String = r.get(6)?;
    let retire_at: Option<i64> = r.get(7)?;
    Ok(OutputKeyRecord {
        row: r.get(0)?,
        agent_id: r.get(1)?,
        output: r.get(2)?,
        key_id: r.get(3)?,
        api_key: r.get(4)?,
        permissions_sha256: r.get(5)?,
        state: KeyState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                6,
                rusqlite::types::Type::Text,
                format!("unknown output key state {state:?}").into(),
            )
        })?,
        retire_at: match retire_at {
            Some(_) => Some(uint(r, 7)?),
            None => None,
        },
        created_at: r.get(8)?,
        intent: r.get(9)?,
        retire_policy: r.get(10)?,
    })
}

/// Marks every output key of agent `id` for invalidation, in the caller's transaction.
pub(super) fn drop_all(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("UPDATE output_keys SET state = 'invalidating' WHERE agent_id = ?1", params![id])?;
    Ok(())
}

impl OutputKeyStore for SqliteStore {
    fn output_keys(&self, agent_id: &str) -> Result<Vec<OutputKeyRecord>> {
        let mut stmt =
            self.conn.prepare_cached(&format!("{COLUMNS} WHERE agent_id = ?1 ORDER BY row"))?;
        let rows = stmt.query_map(params![agent_id], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn output_keys_in(&self, states: &[KeyState]) -> Result<Vec<OutputKeyRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!("{COLUMNS} ORDER BY row"))?;
        let rows = stmt.query_map([], row)?;
        let all: Vec<OutputKeyRecord> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(all.into_iter().filter(|k| states.contains(&k.state)).collect())
    }

    fn begin_output_key(
        &mut self,
        agent_id: &str,
        output: &str,
        permissions_sha256: &str,
        intent: &str,
        (retire_policy, retire_at): (&str, u64),
        at: &str,
    ) -> Result<i64> {
        let tx = self.conn.transaction()?;
        let active: Option<bool> = tx
            .query_row("SELECT active FROM agents WHERE id = ?1", params![agent_id], |r| r.get(0))
            .optional()?;
        if active != Some(true) {
            return Err(StoreError::NotFound { what: "active agent", key: agent_id.to_owned() });
        }
        let creating: Option<i64> = tx
            .query_row(
                "SELECT row FROM output_keys
                 WHERE agent_id = ?1 AND output = ?2 AND state = 'creating'",
                params![agent_id, output],
                |r| r.get(0),
            )
            .optional()?;
        if creating.is_some() {
            return Err(StoreError::Conflict {
                what: "output key being created for",
                key: format!("{agent_id}/{output}"),
            });
        }
        tx.execute(
            "UPDATE output_keys SET state = 'retiring', retire_policy = ?3, retire_at = ?4
             WHERE agent_id = ?1 AND output = ?2 AND state = 'active'",
            params![agent_id, output, retire_policy, int("revision", retire_at)?],
        )?;
        tx.execute(
            "INSERT INTO output_keys
             (agent_id, output, permissions_sha256, intent, state, created_at)
             VALUES (?1, ?2, ?3, ?4, 'creating', ?5)",
            params![agent_id, output, permissions_sha256, intent, at],
        )?;
        let row = tx.last_insert_rowid();
        tx.commit()?;
        Ok(row)
    }

    fn finish_output_key(&mut self, row: i64, key_id: &str, api_key: &str) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let state: Option<String> = tx
            .query_row("SELECT state FROM output_keys WHERE row = ?1", params![row], |r| r.get(0))
            .optional()?;
        let finished = match state.as_deref() {
            Some("creating") => {
                tx.execute(
                    "UPDATE output_keys SET state = 'active', key_id = ?2, api_key = ?3
                     WHERE row = ?1",
                    params![row, key_id, api_key],
                )?;
                true
            }
            // Dropped while it was being made: the id is kept for its invalidation.
            Some(_) => {
                tx.execute(
                    "UPDATE output_keys SET key_id = ?2 WHERE row = ?1",
                    params![row, key_id],
                )?;
                false
            }
            None => false,
        };
        tx.commit()?;
        Ok(finished)
    }

    fn retire_output_keys(
        &mut self,
        agent_id: &str,
        keep: &[String],
        (retire_policy, retire_at): (&str, u64),
    ) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut retired = 0;
        {
            let mut stmt = tx.prepare_cached(
                "SELECT row, output FROM output_keys WHERE agent_id = ?1 AND state = 'active'",
            )?;
            let rows: Vec<(i64, String)> = stmt
                .query_map(params![agent_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (row, _) in rows.into_iter().filter(|(_, o)| !keep.contains(o)) {
                retired += tx.execute(
                    "UPDATE output_keys SET state = 'retiring', retire_policy = ?2, retire_at = ?3
                     WHERE row = ?1",
                    params![row, retire_policy, int("revision", retire_at)?],
                )?;
            }
        }
        tx.commit()?;
        Ok(retired)
    }

    fn drop_output_keys(&mut self, rows: &[i64]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for row in rows {
            tx.execute(
                "UPDATE output_keys SET state = 'invalidating' WHERE row = ?1",
                params![row],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn forget_output_key(&mut self, row: i64) -> Result<()> {
        self.conn.execute("DELETE FROM output_keys WHERE row = ?1", params![row])?;
        Ok(())
    }
}
