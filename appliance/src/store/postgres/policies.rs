//! Policy revisions (table `policy_revisions`) and the revision each agent runs (a column of
//! `agents`).

use super::{PostgresStore, int, uint};
use crate::store::{PolicyAck, PolicyStore, Result, StoreError};

/// How many times [`PolicyStore::policy_revision`] tries before giving up: each try that fails
/// lost to another instance that created a revision of the same policy at that very moment.
const REVISION_TRIES: usize = 8;

impl PolicyStore for PostgresStore {
    fn policy_revision(
        &mut self,
        policy_id: &str,
        content_sha256: &str,
        now: &str,
    ) -> Result<(u64, String)> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // Every instance computes the revision of the same new content when a release
        // arrives. The latest is read and the next inserted `ON CONFLICT DO NOTHING`: an insert
        // that finds the revision taken waited for the instance that took it, and the next
        // read (a new snapshot) sees its row. Mostly that row holds this very content, which
        // is then the answer; SQLite's single writer needed none of this.
        for _ in 0..REVISION_TRIES {
            let latest = tx.query_opt(
                "SELECT revision, content_sha256, created FROM policy_revisions
                 WHERE policy_id = $1 ORDER BY revision DESC LIMIT 1",
                &[&policy_id],
            )?;
            let latest: Option<(u64, String, String)> = latest
                .map(|r| Ok::<_, StoreError>((uint(&r, 0)?, r.try_get(1)?, r.try_get(2)?)))
                .transpose()?;
            if let Some((revision, sha, created)) = &latest
                && sha == content_sha256
            {
                let answer = (*revision, created.clone());
                tx.commit()?;
                return Ok(answer);
            }
            let revision = latest.map_or(1, |(r, _, _)| r + 1);
            let inserted = tx.execute(
                "INSERT INTO policy_revisions (policy_id, revision, content_sha256, created)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&policy_id, &int("policy revision", revision)?, &content_sha256, &now],
            )?;
            if inserted > 0 {
                tx.commit()?;
                return Ok((revision, now.to_owned()));
            }
        }
        Err(StoreError::Unavailable(format!(
            "policy {policy_id}: other instances kept creating revisions; try again"
        )))
    }

    fn agent_policy_revision(&self, id: &str) -> Result<u64> {
        let row =
            self.client()?.query_opt("SELECT policy_revision FROM agents WHERE id = $1", &[&id])?;
        Ok(row.map(|r| uint(&r, 0)).transpose()?.unwrap_or(0))
    }

    fn record_policy_acks(&mut self, acks: &[PolicyAck]) -> Result<()> {
        // In agent id order (stable: one agent's acks keep theirs), so that two instances
        // writing batches that share agents lock those rows in the same order and never
        // deadlock.
        let mut acks: Vec<&PolicyAck> = acks.iter().collect();
        acks.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // GREATEST/LEAST inside the UPDATE, which computes them from the row as locked: an
        // ack written by another instance meanwhile is never lowered.
        let stmt = tx.prepare(
            "UPDATE agents SET policy_revision = GREATEST(policy_revision, LEAST($4::bigint,
                 (SELECT COALESCE(MAX(revision), 0) FROM policy_revisions WHERE policy_id = $3)))
             WHERE id = $1 AND access_key_id = $2 AND policy_id = $3",
        )?;
        for a in acks {
            // Clamped like the revision itself: one odd ack must not fail the batch.
            let revision = i64::try_from(a.revision).unwrap_or(i64::MAX);
            tx.execute(&stmt, &[&a.agent_id, &a.access_key_id, &a.policy_id, &revision])?;
        }
        tx.commit()?;
        Ok(())
    }
}
