//! Actions (table `actions`), who they are for (`action_targets`), what agents acknowledged
//! (`action_results`), and each agent's action cursor (a column of `agents`). A new action is
//! notified on [`channel::ACTIONS`] so that the other instances wake the agents' parked
//! check-ins.

use super::{PostgresStore, channel, conflict, notify};
use crate::store::{
    ActionEffect, ActionRecord, ActionResult, ActionStore, ActionTarget, NewAction, Result,
};

/// The advisory lock ("ferryact") that orders action creation. An agent's cursor is the `seq`
/// of the last action it received, and it is given only actions above it: so an action must
/// never become visible after one with a higher `seq`. A sequence hands out numbers in the
/// order transactions ask, not in the order they commit; two instances creating actions at
/// once could commit 11 before 10, and an agent shown 11 would never be shown 10. Creating an
/// action therefore holds this lock (exclusive) from before its `seq` is drawn until its
/// commit: numbers are drawn and committed in the same order. An enrollment holds it shared, so
/// that the new agent starts after the actions being created too.
pub(super) const ACTIONS_LOCK: i64 = i64::from_be_bytes(*b"ferryact");

const ACTION_COLUMNS: &str =
    "SELECT a.seq, a.id, a.type, a.data, a.created_at, a.start_time, a.expiration FROM actions a";

fn action_row(r: &postgres::Row) -> Result<ActionRecord> {
    Ok(ActionRecord {
        seq: r.try_get(0)?,
        id: r.try_get(1)?,
        kind: r.try_get(2)?,
        data: r.try_get(3)?,
        created_at: r.try_get(4)?,
        start_time: r.try_get(5)?,
        expiration: r.try_get(6)?,
    })
}

impl ActionStore for PostgresStore {
    fn create_action(&mut self, a: &NewAction) -> Result<i64> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIONS_LOCK])?;
        let seq: i64 = tx
            .query_one(
                "INSERT INTO actions (id, type, data, created_at, start_time, expiration)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
                &[&a.id, &a.kind, &a.data, &a.created_at, &a.start_time, &a.expiration],
            )
            .map_err(|e| conflict(e, "action", &a.id))?
            .try_get(0)?;
        tx.execute(
            "INSERT INTO action_targets (agent_id, seq) SELECT unnest($1::text[]), $2",
            &[&a.agents, &seq],
        )?;
        let writes_agents = match &a.effect {
            ActionEffect::None => false,
            ActionEffect::Reassign { .. } | ActionEffect::Upgrade { .. } => true,
            ActionEffect::Cancel { upgrade_state, .. } => upgrade_state.is_some(),
        };
        if writes_agents {
            super::agents::lock_in_order(&mut tx, &a.agents)?;
        }
        match &a.effect {
            ActionEffect::None => {}
            ActionEffect::Reassign { policy_id } => {
                tx.execute(
                    "UPDATE agents SET policy_id = $2, policy_revision = 0 WHERE id = ANY($1)",
                    &[&a.agents, policy_id],
                )?;
            }
            ActionEffect::Upgrade { version, state } => {
                tx.execute(
                    "UPDATE agents SET upgrade_state = $2, upgrade_target = $3 WHERE id = ANY($1)",
                    &[&a.agents, state, version],
                )?;
            }
            ActionEffect::Cancel { target_id, upgrade_state } => {
                // Only for the agents this cancel is for.
                tx.execute(
                    "UPDATE action_targets SET cancelled = 1
                     WHERE agent_id = ANY($1) AND seq = (SELECT seq FROM actions WHERE id = $2)",
                    &[&a.agents, target_id],
                )?;
                if let Some(state) = upgrade_state {
                    tx.execute(
                        "UPDATE agents SET upgrade_state = $2, upgrade_target = NULL,
                             upgrade_details = NULL
                         WHERE id = ANY($1) AND upgrade_target IS NOT NULL",
                        &[&a.agents, state],
                    )?;
                }
            }
        }
        notify(&mut tx, channel::ACTIONS, &seq.to_string())?;
        tx.commit()?;
        Ok(seq)
    }

    fn action(&self, id: &str) -> Result<Option<ActionRecord>> {
        let row = self.client()?.query_opt(&format!("{ACTION_COLUMNS} WHERE a.id = $1"), &[&id])?;
        row.as_ref().map(action_row).transpose()
    }

    fn pending_actions(
        &self,
        agent_id: &str,
        after: i64,
        now: &str,
        limit: usize,
    ) -> Result<Vec<ActionRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.client()?.query(
            "SELECT a.seq, a.id, a.type, a.data, a.created_at, a.start_time, a.expiration
             FROM action_targets t JOIN actions a ON a.seq = t.seq
             JOIN agents g ON g.id = t.agent_id
             WHERE t.agent_id = $1 AND t.seq > GREATEST($2, g.enroll_seq) AND a.expiration > $3
               AND t.cancelled = 0
             ORDER BY t.seq LIMIT $4",
            &[&agent_id, &after, &now, &limit],
        )?;
        rows.iter().map(action_row).collect()
    }

    fn agent_action(&self, agent_id: &str, action_id: &str) -> Result<Option<ActionRecord>> {
        let row = self.client()?.query_opt(
            &format!(
                "{ACTION_COLUMNS} JOIN action_targets t ON t.seq = a.seq
                 JOIN agents g ON g.id = t.agent_id
                 WHERE a.id = $2 AND t.agent_id = $1 AND t.seq > g.enroll_seq"
            ),
            &[&agent_id, &action_id],
        )?;
        row.as_ref().map(action_row).transpose()
    }

    fn action_cursor(&self, agent_id: &str) -> Result<i64> {
        let row = self
            .client()?
            .query_opt("SELECT action_seq FROM agents WHERE id = $1", &[&agent_id])?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }

    fn record_action_results(
        &mut self,
        agent_id: &str,
        results: &[ActionResult],
        unenroll: bool,
        at: &str,
    ) -> Result<()> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // A later ack of the same action replaces the earlier one (SQLite's `INSERT OR
        // REPLACE`), also when another instance wrote the earlier one a moment ago.
        let stmt = tx.prepare(
            "INSERT INTO action_results (action_id, agent_id, acked_at, error, data)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (action_id, agent_id) DO UPDATE SET acked_at = excluded.acked_at,
                 error = excluded.error, data = excluded.data",
        )?;
        for r in results {
            tx.execute(&stmt, &[&r.action_id, &agent_id, &at, &r.error, &r.data])?;
        }
        if unenroll {
            super::agents::deactivate(&mut tx, agent_id, at)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn action_targets(&self, action_id: &str) -> Result<Vec<ActionTarget>> {
        let rows = self.client()?.query(
            "SELECT t.agent_id, r.acked_at IS NOT NULL, r.error, t.cancelled
             FROM actions a JOIN action_targets t ON t.seq = a.seq
             LEFT JOIN action_results r ON r.action_id = a.id AND r.agent_id = t.agent_id
             WHERE a.id = $1 ORDER BY t.agent_id",
            &[&action_id],
        )?;
        rows.iter()
            .map(|r| {
                let acked: bool = r.try_get(1)?;
                Ok(ActionTarget {
                    agent_id: r.try_get(0)?,
                    ack: if acked { Some(r.try_get(2)?) } else { None },
                    cancelled: super::flag(r, 3)?,
                })
            })
            .collect()
    }

    fn recent_actions(&self, kind: &str, limit: usize) -> Result<Vec<ActionRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.client()?.query(
            &format!("{ACTION_COLUMNS} WHERE a.type = $1 ORDER BY a.seq DESC LIMIT $2"),
            &[&kind, &limit],
        )?;
        rows.iter().map(action_row).collect()
    }
}
