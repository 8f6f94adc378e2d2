//! Actions (table `actions`), who they are for (`action_targets`), what agents acknowledged
//! (`action_results`), and each agent's action cursor (a column of `agents`).

use rusqlite::{OptionalExtension as _, params};

use super::{SqliteStore, conflict};
use crate::store::{
    ActionEffect, ActionRecord, ActionResult, ActionStore, ActionTarget, NewAction, Result,
};

const ACTION_COLUMNS: &str =
    "SELECT a.seq, a.id, a.type, a.data, a.created_at, a.start_time, a.expiration FROM actions a";

fn action_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ActionRecord> {
    Ok(ActionRecord {
        seq: r.get(0)?,
        id: r.get(1)?,
        kind: r.get(2)?,
        data: r.get(3)?,
        created_at: r.get(4)?,
        start_time: r.get(5)?,
        expiration: r.get(6)?,
    })
}

impl ActionStore for SqliteStore {
    fn create_action(&mut self, a: &NewAction) -> Result<i64> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO actions (id, type, data, created_at, start_time, expiration)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![a.id, a.kind, a.data, a.created_at, a.start_time, a.expiration],
        )
        .map_err(|e| conflict(e, "action", &a.id))?;
        let seq = tx.last_insert_rowid();
        {
            let mut target =
                tx.prepare_cached("INSERT INTO action_targets (agent_id, seq) VALUES (?1, ?2)")?;
            for agent in &a.agents {
                target.execute(params![agent, seq])?;
            }
            match &a.effect {
                ActionEffect::None => {}
                ActionEffect::Reassign { policy_id } => {
                    let mut stmt = tx.prepare_cached(
                        "UPDATE agents SET policy_id = ?2, policy_revision = 0 WHERE id = ?1",
                    )?;
                    for agent in &a.agents {
                        stmt.execute(params![agent, policy_id])?;
                    }
                }
                ActionEffect::Upgrade { version, state } => {
                    let mut stmt = tx.prepare_cached(
                        "UPDATE agents SET upgrade_state = ?2, upgrade_target = ?3 WHERE id = ?1",
                    )?;
                    for agent in &a.agents {
                        stmt.execute(params![agent, state, version])?;
                    }
                }
                ActionEffect::Cancel { target_id, upgrade_state } => {
                    // Only for the agents this cancel is for.
                    let mut cancel = tx.prepare_cached(
                        "UPDATE action_targets SET cancelled = 1
                         WHERE agent_id = ?1 AND seq = (SELECT seq FROM actions WHERE id = ?2)",
                    )?;
                    for agent in &a.agents {
                        cancel.execute(params![agent, target_id])?;
                    }
                    if let Some(state) = upgrade_state {
                        let mut upgrade = tx.prepare_cached(
                            "UPDATE agents SET upgrade_state = ?2, upgrade_target = NULL, upgrade_details = NULL
                             WHERE id = ?1 AND upgrade_target IS NOT NULL",
                        )?;
                        for agent in &a.agents {
                            upgrade.execute(params![agent, state])?;
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(seq)
    }

    fn action(&self, id: &str) -> Result<Option<ActionRecord>> {
        Ok(self
            .conn
            .query_row(&format!("{ACTION_COLUMNS} WHERE a.id = ?1"), params![id], action_row)
            .optional()?)
    }

    fn pending_actions(
        &self,
        agent_id: &str,
        after: i64,
        now: &str,
        limit: usize,
    ) -> Result<Vec<ActionRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT a.seq, a.id, a.type, a.data, a.created_at, a.start_time, a.expiration
             FROM action_targets t JOIN actions a ON a.seq = t.seq
             JOIN agents g ON g.id = t.agent_id
             WHERE t.agent_id = ?1 AND t.seq > MAX(?2, g.enroll_seq) AND a.expiration > ?3
               AND NOT t.cancelled
             ORDER BY t.seq LIMIT ?4",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![agent_id, after, now, limit], action_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn agent_action(&self, agent_id: &str, action_id: &str) -> Result<Option<ActionRecord>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "{ACTION_COLUMNS} JOIN action_targets t ON t.seq = a.seq
                 JOIN agents g ON g.id = t.agent_id
                 WHERE a.id = ?2 AND t.agent_id = ?1 AND t.seq > g.enroll_seq"
            ))?
            .query_row(params![agent_id, action_id], action_row)
            .optional()?)
    }

    fn action_cursor(&self, agent_id: &str) -> Result<i64> {
        let cursor: Option<i64> = self
            .conn
            .prepare_cached("SELECT action_seq FROM agents WHERE id = ?1")?
            .query_row(params![agent_id], |r| r.get(0))
            .optional()?;
        Ok(cursor.unwrap_or(0))
    }

    fn record_action_results(
        &mut self,
        agent_id: &str,
        results: &[ActionResult],
        unenroll: bool,
        at: &str,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO action_results (action_id, agent_id, acked_at, error, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in results {
                stmt.execute(params![r.action_id, agent_id, at, r.error, r.data])?;
            }
        }
        if unenroll {
            super::agents::deactivate(&tx, agent_id, at)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn action_targets(&self, action_id: &str) -> Result<Vec<ActionTarget>> {
        let mut stmt = self.conn.prepare(
            "SELECT t.agent_id, r.acked_at IS NOT NULL, r.error, t.cancelled
             FROM actions a JOIN action_targets t ON t.seq = a.seq
             LEFT JOIN action_results r ON r.action_id = a.id AND r.agent_id = t.agent_id
             WHERE a.id = ?1 ORDER BY t.agent_id",
        )?;
        let rows = stmt.query_map(params![action_id], |r| {
            let acked: bool = r.get(1)?;
            Ok(ActionTarget {
                agent_id: r.get(0)?,
                ack: if acked { Some(r.get(2)?) } else { None },
                cancelled: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn recent_actions(&self, kind: &str, limit: usize) -> Result<Vec<ActionRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{ACTION_COLUMNS} WHERE a.type = ?1 ORDER BY a.seq DESC LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![kind, limit], action_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
