//! Agents' output keys in PostgreSQL: the `output_keys` table. Each instance makes the keys
//! of the agents whose check-ins it holds, and an agent may check in on another instance
//! meanwhile: a key's state only moves forward through conditional UPDATEs, and beginning a
//! key holds its agent's row.

use super::{PostgresStore, int, uint};
use crate::store::{KeyState, OutputKeyRecord, OutputKeyStore, Result, StoreError};

const COLUMNS: &str = "SELECT row, agent_id, output, key_id, api_key, permissions_sha256, state,
    retire_at, created_at, intent, retire_policy FROM output_keys";

fn key_row(r: &postgres::Row) -> Result<OutputKeyRecord> {
    let state: String = r.try_get(6)?;
    let retire_at: Option<i64> = r.try_get(7)?;
    Ok(OutputKeyRecord {
        row: r.try_get(0)?,
        agent_id: r.try_get(1)?,
        output: r.try_get(2)?,
        key_id: r.try_get(3)?,
        api_key: r.try_get(4)?,
        permissions_sha256: r.try_get(5)?,
        state: KeyState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown output key state {state:?}")))?,
        retire_at: match retire_at {
            Some(_) => Some(uint(r, 7)?),
            None => None,
        },
        created_at: r.try_get(8)?,
        intent: r.try_get(9)?,
        retire_policy: r.try_get(10)?,
    })
}

/// Marks every output key of agent `id` for invalidation, in the caller's transaction (which
/// holds the agent's row).
pub(super) fn drop_all(tx: &mut postgres::Transaction<'_>, id: &str) -> Result<()> {
    tx.execute("UPDATE output_keys SET state = 'invalidating' WHERE agent_id = $1", &[&id])?;
    Ok(())
}

impl OutputKeyStore for PostgresStore {
    fn output_keys(&self, agent_id: &str) -> Result<Vec<OutputKeyRecord>> {
        let rows = self
            .client()?
            .query(&format!("{COLUMNS} WHERE agent_id = $1 ORDER BY row"), &[&agent_id])?;
        rows.iter().map(key_row).collect()
    }

    fn output_keys_in(&self, states: &[KeyState]) -> Result<Vec<OutputKeyRecord>> {
        let rows = self.client()?.query(&format!("{COLUMNS} ORDER BY row"), &[])?;
        let all = rows.iter().map(key_row).collect::<Result<Vec<_>>>()?;
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
        let retire_at = int("revision", retire_at)?;
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // The agent's row is locked for the rest of the transaction: two instances beginning
        // a key for the same agent take turns, so the second sees the first's `creating` row
        // and is refused; and a deactivation (which marks the agent's keys) either comes
        // before, and this sees the agent inactive, or waits and marks this key too.
        let active =
            tx.query_opt("SELECT active FROM agents WHERE id = $1 FOR UPDATE", &[&agent_id])?;
        let active = active.map(|r| super::flag(&r, 0)).transpose()?;
        if active != Some(true) {
            return Err(StoreError::NotFound { what: "active agent", key: agent_id.to_owned() });
        }
        let creating = tx.query_opt(
            "SELECT row FROM output_keys
             WHERE agent_id = $1 AND output = $2 AND state = 'creating'",
            &[&agent_id, &output],
        )?;
        if creating.is_some() {
            return Err(StoreError::Conflict {
                what: "output key being created for",
                key: format!("{agent_id}/{output}"),
            });
        }
        tx.execute(
            "UPDATE output_keys SET state = 'retiring', retire_policy = $3, retire_at = $4
             WHERE agent_id = $1 AND output = $2 AND state = 'active'",
            &[&agent_id, &output, &retire_policy, &retire_at],
        )?;
        let row: i64 = tx
            .query_one(
                "INSERT INTO output_keys
                 (agent_id, output, permissions_sha256, intent, state, created_at)
                 VALUES ($1, $2, $3, $4, 'creating', $5) RETURNING row",
                &[&agent_id, &output, &permissions_sha256, &intent, &at],
            )?
            .try_get(0)?;
        tx.commit()?;
        Ok(row)
    }

    fn finish_output_key(&mut self, row: i64, key_id: &str, api_key: &str) -> Result<bool> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // Conditional: a row marked for invalidation meanwhile (its agent deactivated or
        // replaced, on any instance) stays marked; the key id is kept on it for the
        // invalidation.
        let finished = tx.execute(
            "UPDATE output_keys SET state = 'active', key_id = $2, api_key = $3
             WHERE row = $1 AND state = 'creating'",
            &[&row, &key_id, &api_key],
        )? > 0;
        if !finished {
            tx.execute("UPDATE output_keys SET key_id = $2 WHERE row = $1", &[&row, &key_id])?;
        }
        tx.commit()?;
        Ok(finished)
    }

    fn retire_output_keys(
        &mut self,
        agent_id: &str,
        keep: &[String],
        (retire_policy, retire_at): (&str, u64),
    ) -> Result<usize> {
        let retire_at = int("revision", retire_at)?;
        // One conditional UPDATE rather than a read and writes by row: a key marked for
        // invalidation between the two would be moved back to retiring.
        let retired = self.client()?.execute(
            "UPDATE output_keys SET state = 'retiring', retire_policy = $3, retire_at = $4
             WHERE agent_id = $1 AND state = 'active' AND output <> ALL($2::text[])",
            &[&agent_id, &keep, &retire_policy, &retire_at],
        )?;
        Ok(usize::try_from(retired).unwrap_or(usize::MAX))
    }

    fn drop_output_keys(&mut self, rows: &[i64]) -> Result<()> {
        self.client()?.execute(
            "UPDATE output_keys SET state = 'invalidating' WHERE row = ANY($1)",
            &[&rows],
        )?;
        Ok(())
    }

    fn forget_output_key(&mut self, row: i64) -> Result<()> {
        self.client()?.execute("DELETE FROM output_keys WHERE row = $1", &[&row])?;
        Ok(())
    }
}
