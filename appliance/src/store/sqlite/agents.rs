//! Agents (table `agents`) and revoked agent ids (`revoked_agents`): enrollment, check-in
//! reports, revocation, the admin's views.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{SqliteStore, uint};
use crate::store::{
    AgentKey, AgentPage, AgentRecord, AgentStore, AgentView, AuditOutcome, CheckinUpdate,
    Enrollment, Result, StoreError, StoredUpgrade, UpgradeRule,
};

const AGENT_COLUMNS: &str = "SELECT id, access_key_id, access_secret_sha256, policy_id, kind,
    enrolled_at, active, version, local_metadata, tags, replace_token FROM agents";

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRecord> {
    Ok(AgentRecord {
        id: r.get(0)?,
        access_key_id: r.get(1)?,
        access_secret_sha256: r.get(2)?,
        policy_id: r.get(3)?,
        kind: r.get(4)?,
        enrolled_at: r.get(5)?,
        active: r.get(6)?,
        version: r.get(7)?,
        local_metadata: r.get(8)?,
        tags: r.get(9)?,
        replace_token: r.get(10)?,
    })
}

const VIEW_COLUMNS: &str = "SELECT id, active, policy_id, policy_revision, version, enrolled_at,
    last_checkin, last_status, last_message, tags, local_metadata, components, upgrade_state,
    upgrade_target, upgrade_details, upgraded_at, unenrolled_at, audit_reason, instance
    FROM agents";

fn view_row(r: &rusqlite::Row<'_>, summary: bool) -> rusqlite::Result<AgentView> {
    // What agents sent is kept as they sent it; what does not parse shows as null. A summary
    // (`AgentPage::summary`) parses none of it.
    let json = |column: usize| -> rusqlite::Result<serde_json::Value> {
        if summary {
            return Ok(serde_json::Value::Null);
        }
        let text: Option<String> = r.get(column)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(serde_json::Value::Null))
    };
    let local_metadata = json(10)?;
    Ok(AgentView {
        id: r.get(0)?,
        active: r.get(1)?,
        policy_id: r.get(2)?,
        policy_revision: uint(r, 3)?,
        version: r.get(4)?,
        hostname: local_metadata
            .pointer("/host/hostname")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        enrolled_at: r.get(5)?,
        last_checkin: r.get(6)?,
        last_status: r.get(7)?,
        last_message: r.get(8)?,
        tags: json(9)?,
        local_metadata,
        components: json(11)?,
        upgrade_state: r.get(12)?,
        upgrade_target: r.get(13)?,
        upgrade_details: json(14)?,
        upgraded_at: r.get(15)?,
        unenrolled_at: r.get(16)?,
        audit_unenroll_reason: r.get(17)?,
        instance: r.get(18)?,
    })
}

impl AgentStore for SqliteStore {
    fn enroll_agent(&mut self, a: &AgentRecord, replacing: Option<&str>) -> Result<Enrollment> {
        let tx = self.conn.transaction()?;
        if revoked_at(&tx, &a.id)?.is_some() {
            return Ok(Enrollment::Revoked);
        }
        let current: Option<(bool, String)> = tx
            .query_row(
                "SELECT active, access_key_id FROM agents WHERE id = ?1",
                params![a.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let allowed = match (&current, replacing) {
            (None | Some((false, _)), _) => true,
            (Some((true, key)), Some(expected)) => key == expected,
            (Some((true, _)), None) => false,
        };
        if !allowed {
            return Ok(Enrollment::NotReplaceable);
        }
        // The output keys of the agent this one replaces were that host's: none is handed on.
        if current.is_some() {
            super::output_keys::drop_all(&tx, &a.id)?;
        }
        // Actions queued for an earlier agent with the same id are not this one's.
        tx.execute(
            "INSERT OR REPLACE INTO agents
             (id, access_key_id, access_secret_sha256, policy_id, kind, enrolled_at, active, version,
              local_metadata, tags, replace_token, action_seq, enroll_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,
                     (SELECT COALESCE(MAX(seq), 0) FROM actions),
                     (SELECT COALESCE(MAX(seq), 0) FROM actions))",
            params![
                a.id,
                a.access_key_id,
                a.access_secret_sha256,
                a.policy_id,
                a.kind,
                a.enrolled_at,
                a.active,
                a.version,
                a.local_metadata,
                a.tags,
                a.replace_token
            ],
        )?;
        tx.commit()?;
        Ok(Enrollment::Stored)
    }

    fn revoked_at(&self, id: &str) -> Result<Option<String>> {
        revoked_at(&self.conn, id)
    }

    fn agent(&self, id: &str) -> Result<Option<AgentRecord>> {
        Ok(self
            .conn
            .prepare_cached(&format!("{AGENT_COLUMNS} WHERE id = ?1"))?
            .query_row(params![id], agent_row)
            .optional()?)
    }

    fn agent_by_access_key(&self, key_id: &str) -> Result<Option<AgentKey>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, access_key_id, access_secret_sha256, policy_id, active FROM agents
                 WHERE access_key_id = ?1",
            )?
            .query_row(params![key_id], |r| {
                Ok(AgentKey {
                    id: r.get(0)?,
                    access_key_id: r.get(1)?,
                    access_secret_sha256: r.get(2)?,
                    policy_id: r.get(3)?,
                    active: r.get(4)?,
                })
            })
            .optional()?)
    }

    fn record_checkins(
        &mut self,
        updates: &[CheckinUpdate],
        upgrade: &UpgradeRule<'_>,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut read = tx.prepare_cached(
                "SELECT upgrade_details IS NOT NULL, upgrade_state, upgrade_target FROM agents WHERE id = ?1",
            )?;
            let mut write = tx.prepare_cached(
                "UPDATE agents SET last_checkin = ?2, last_status = ?3, last_message = ?4, version = ?5,
                    local_metadata = COALESCE(?6, local_metadata), components = COALESCE(?7, components),
                    upgrade_details = ?8, upgrade_state = ?9,
                    upgraded_at = CASE WHEN ?14 THEN ?2 ELSE upgraded_at END,
                    action_seq = MAX(action_seq, COALESCE(?10, 0)),
                    policy_revision = CASE WHEN policy_id = ?11
                        THEN MAX(policy_revision, MIN(?12, (SELECT COALESCE(MAX(revision), 0)
                                 FROM policy_revisions WHERE policy_id = ?11)))
                        ELSE policy_revision END,
                    audit_reason = NULL, audit_time = NULL
                 WHERE id = ?1 AND access_key_id = ?13",
            )?;
            for u in updates {
                let stored = read
                    .query_row(params![u.agent_id], |r| {
                        Ok(StoredUpgrade {
                            details: r.get(0)?,
                            state: r.get(1)?,
                            target: r.get(2)?,
                        })
                    })
                    .optional()?;
                let Some(stored) = stored else { continue };
                let step = upgrade(&stored, u);
                // A revision is never above what this appliance issued (nor beyond SQLite's
                // integers): one agent's odd report must not fail the batch of all.
                let (policy, revision) = match &u.running {
                    Some((p, r)) => (Some(p.as_str()), i64::try_from(*r).unwrap_or(i64::MAX)),
                    None => (None, 0),
                };
                write.execute(params![
                    u.agent_id,
                    u.at,
                    u.status,
                    u.message,
                    u.version,
                    u.local_metadata,
                    u.components,
                    u.upgrade_details,
                    step.state,
                    u.cursor,
                    policy,
                    revision,
                    u.access_key_id,
                    step.completed
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn touch_agents(&mut self, ids: &[String], at: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("UPDATE agents SET last_checkin = ?2 WHERE id = ?1 AND active")?;
            for id in ids {
                stmt.execute(params![id, at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn deactivate_agent(&mut self, id: &str, at: &str) -> Result<bool> {
        let tx = self.conn.transaction()?;
        if !deactivate(&tx, id, at)? {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR IGNORE INTO revoked_agents (id, revoked_at) VALUES (?1, ?2)",
            params![id, at],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn audit_unenroll(
        &mut self,
        id: &str,
        reason: &str,
        at: &str,
        final_reason: &str,
    ) -> Result<AuditOutcome> {
        let tx = self.conn.transaction()?;
        let current: Option<Option<String>> = tx
            .query_row("SELECT audit_reason FROM agents WHERE id = ?1", params![id], |r| r.get(0))
            .optional()?;
        if current.flatten().as_deref() == Some(final_reason) {
            return Ok(AuditOutcome::Conflict);
        }
        tx.execute(
            "UPDATE agents SET audit_reason = ?2, audit_time = ?3 WHERE id = ?1",
            params![id, reason, at],
        )?;
        tx.commit()?;
        Ok(AuditOutcome::Recorded)
    }

    fn agent_view(&self, id: &str) -> Result<Option<AgentView>> {
        Ok(self
            .conn
            .query_row(&format!("{VIEW_COLUMNS} WHERE id = ?1"), params![id], |r| {
                view_row(r, false)
            })
            .optional()?)
    }

    fn agent_views(&self, page: &AgentPage) -> Result<Vec<AgentView>> {
        let filter = "(?1 IS NULL OR policy_id = ?1)";
        if let Some(after) = &page.after {
            let listed = self
                .conn
                .query_row(
                    &format!("SELECT 1 FROM agents WHERE id = ?2 AND {filter}"),
                    params![page.policy, after],
                    |_| Ok(()),
                )
                .optional()?;
            if listed.is_none() {
                return Err(StoreError::NotFound { what: "agent", key: after.clone() });
            }
        }
        // SQLite reads a negative limit as none.
        let limit = page.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let mut stmt = self.conn.prepare(&format!(
            "{VIEW_COLUMNS} WHERE {filter}
               AND (?2 IS NULL OR (enrolled_at, id) > (SELECT enrolled_at, id FROM agents WHERE id = ?2))
             ORDER BY enrolled_at, id LIMIT ?3"
        ))?;
        let rows =
            stmt.query_map(params![page.policy, page.after, limit], |r| view_row(r, page.summary))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn agents_in_policy(&self, policy_id: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM agents WHERE policy_id = ?1 AND active ORDER BY id")?;
        let rows = stmt.query_map(params![policy_id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn revoked_at(conn: &Connection, id: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT revoked_at FROM revoked_agents WHERE id = ?1", params![id], |r| r.get(0))
        .optional()?)
}

/// Makes an agent inactive at `at` (its key stops working); false if it already was, or is
/// unknown.
/// Deactivates agent `id`, and marks its output keys for invalidation (an unenrolled or
/// revoked agent's data credentials die with it, as Fleet Server's handleUnenroll does).
pub(super) fn deactivate(conn: &Connection, id: &str, at: &str) -> Result<bool> {
    let done = conn.execute(
        "UPDATE agents SET active = 0, unenrolled_at = ?2 WHERE id = ?1 AND active",
        params![id, at],
    )? > 0;
    if done {
        super::output_keys::drop_all(conn, id)?;
    }
    Ok(done)
}
