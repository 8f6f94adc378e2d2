//! Policy revisions (table `policy_revisions`) and the revision each agent runs (a column of
//! `agents`).

use rusqlite::{OptionalExtension as _, params};

use super::{SqliteStore, int, uint};
use crate::store::{PolicyAck, PolicyStore, Result};

impl PolicyStore for SqliteStore {
    fn policy_revision(
        &mut self,
        policy_id: &str,
        content_sha256: &str,
        now: &str,
    ) -> Result<(u64, String)> {
        let tx = self.conn.transaction()?;
        let latest: Option<(u64, String, String)> = tx
            .query_row(
                "SELECT revision, content_sha256, created FROM policy_revisions WHERE policy_id = ?1
                 ORDER BY revision DESC LIMIT 1",
                params![policy_id],
                |r| Ok((uint(r, 0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((revision, sha, created)) = latest.clone()
            && sha == content_sha256
        {
            return Ok((revision, created));
        }
        let revision = latest.map_or(1, |(r, _, _)| r + 1);
        tx.execute(
            "INSERT INTO policy_revisions (policy_id, revision, content_sha256, created) VALUES (?1, ?2, ?3, ?4)",
            params![policy_id, int("policy revision", revision)?, content_sha256, now],
        )?;
        tx.commit()?;
        Ok((revision, now.to_owned()))
    }

    fn agent_policy_revision(&self, id: &str) -> Result<u64> {
        let revision = self
            .conn
            .prepare_cached("SELECT policy_revision FROM agents WHERE id = ?1")?
            .query_row(params![id], |r| uint(r, 0))
            .optional()?;
        Ok(revision.unwrap_or(0))
    }

    fn record_policy_acks(&mut self, acks: &[PolicyAck]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE agents SET policy_revision = MAX(policy_revision, MIN(?4,
                     (SELECT COALESCE(MAX(revision), 0) FROM policy_revisions WHERE policy_id = ?3)))
                 WHERE id = ?1 AND access_key_id = ?2 AND policy_id = ?3",
            )?;
            for a in acks {
                // Clamped like the revision itself: one odd ack must not fail the batch.
                let revision = i64::try_from(a.revision).unwrap_or(i64::MAX);
                stmt.execute(params![a.agent_id, a.access_key_id, a.policy_id, revision])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
