//! Agents (table `agents`) and revoked agent ids (`revoked_agents`): enrollment, check-in
//! reports, revocation, the admin's views. Several instances write agents' rows at once (each
//! the check-ins it holds, any of them an enrollment or a revocation), so what SQLite's single
//! writer made safe is made so here by row locks, taken in id order where a call locks several.

use std::collections::HashMap;

use postgres::GenericClient;

use super::{PostgresStore, channel, flag, notify, uint};
use crate::store::{
    AgentKey, AgentPage, AgentRecord, AgentStore, AgentView, AuditOutcome, CheckinUpdate,
    Enrollment, Result, StoreError, StoredUpgrade, UpgradeRule,
};

const AGENT_COLUMNS: &str = "SELECT id, access_key_id, access_secret_sha256, policy_id, kind,
    enrolled_at, active, version, local_metadata, tags, replace_token FROM agents";

fn agent_row(r: &postgres::Row) -> Result<AgentRecord> {
    Ok(AgentRecord {
        id: r.try_get(0)?,
        access_key_id: r.try_get(1)?,
        access_secret_sha256: r.try_get(2)?,
        policy_id: r.try_get(3)?,
        kind: r.try_get(4)?,
        enrolled_at: r.try_get(5)?,
        active: flag(r, 6)?,
        version: r.try_get(7)?,
        local_metadata: r.try_get(8)?,
        tags: r.try_get(9)?,
        replace_token: r.try_get(10)?,
    })
}

const VIEW_COLUMNS: &str = "SELECT id, active, policy_id, policy_revision, version, enrolled_at,
    last_checkin, last_status, last_message, tags, local_metadata, components, upgrade_state,
    upgrade_target, upgrade_details, upgraded_at, unenrolled_at, audit_reason, instance
    FROM agents";

fn view_row(r: &postgres::Row, summary: bool) -> Result<AgentView> {
    // What agents sent is kept as they sent it; what does not parse shows as null. A summary
    // (`AgentPage::summary`) parses none of it.
    let json = |column: usize| -> Result<serde_json::Value> {
        if summary {
            return Ok(serde_json::Value::Null);
        }
        let text: Option<String> = r.try_get(column)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(serde_json::Value::Null))
    };
    let local_metadata = json(10)?;
    Ok(AgentView {
        id: r.try_get(0)?,
        active: flag(r, 1)?,
        policy_id: r.try_get(2)?,
        policy_revision: uint(r, 3)?,
        version: r.try_get(4)?,
        hostname: local_metadata
            .pointer("/host/hostname")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        enrolled_at: r.try_get(5)?,
        last_checkin: r.try_get(6)?,
        last_status: r.try_get(7)?,
        last_message: r.try_get(8)?,
        tags: json(9)?,
        local_metadata,
        components: json(11)?,
        upgrade_state: r.try_get(12)?,
        upgrade_target: r.try_get(13)?,
        upgrade_details: json(14)?,
        upgraded_at: r.try_get(15)?,
        unenrolled_at: r.try_get(16)?,
        audit_unenroll_reason: r.try_get(17)?,
        instance: r.try_get(18)?,
    })
}

/// A new agent's row: every column not named takes its default, as SQLite's `INSERT OR
/// REPLACE` leaves them. It starts after every action stored (its cursor and its enrollment
/// mark are the highest `seq`).
const INSERT_AGENT: &str = "INSERT INTO agents
    (id, access_key_id, access_secret_sha256, policy_id, kind, enrolled_at, active, version,
     local_metadata, tags, replace_token, action_seq, enroll_seq)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
            (SELECT COALESCE(MAX(seq), 0) FROM actions),
            (SELECT COALESCE(MAX(seq), 0) FROM actions))";

impl AgentStore for PostgresStore {
    fn enroll_agent(&mut self, a: &AgentRecord, replacing: Option<&str>) -> Result<Enrollment> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // Waits for the actions being created (`actions::ACTIONS_LOCK`), so that "after every
        // action" counts them: an action another instance is queueing for the agent this one
        // replaces must not reach the new one.
        tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&super::actions::ACTIONS_LOCK])?;
        let active = i64::from(a.active);
        let params: [&(dyn postgres::types::ToSql + Sync); 11] = [
            &a.id,
            &a.access_key_id,
            &a.access_secret_sha256,
            &a.policy_id,
            &a.kind,
            &a.enrolled_at,
            &active,
            &a.version,
            &a.local_metadata,
            &a.tags,
            &a.replace_token,
        ];
        // Two instances may enroll the same id at once, and a row lock cannot lock a row not
        // yet there: the insert comes first, `ON CONFLICT DO NOTHING`. It waits for another
        // transaction inserting the same id and then inserts nothing; an id already stored is
        // locked (FOR UPDATE) and decided on as SQLite does. Either way, the rest of this
        // transaction holds the id's row, and what it reads next is what was committed last.
        let inserted =
            tx.execute(&format!("{INSERT_AGENT} ON CONFLICT (id) DO NOTHING"), &params)? > 0;
        let current: Option<(bool, String)> = if inserted {
            None
        } else {
            let row = tx.query_opt(
                "SELECT active, access_key_id FROM agents WHERE id = $1 FOR UPDATE",
                &[&a.id],
            )?;
            let row = row.ok_or_else(|| {
                StoreError::Unavailable(format!("agent {} changed while enrolling", a.id))
            })?;
            Some((flag(&row, 0)?, row.try_get(1)?))
        };
        // Read after the id is held: a revocation committed meanwhile is seen.
        if revoked_at(&mut tx, &a.id)?.is_some() {
            return Ok(Enrollment::Revoked);
        }
        if inserted {
            tx.commit()?;
            return Ok(Enrollment::Stored);
        }
        let allowed = match (&current, replacing) {
            (None | Some((false, _)), _) => true,
            (Some((true, key)), Some(expected)) => key == expected,
            (Some((true, _)), None) => false,
        };
        if !allowed {
            return Ok(Enrollment::NotReplaceable);
        }
        // The output keys of the agent this one replaces were that host's: none is handed on.
        super::output_keys::drop_all(&mut tx, &a.id)?;
        // Actions queued for an earlier agent with the same id are not this one's. The row is
        // replaced whole, as by SQLite's `INSERT OR REPLACE`.
        tx.execute("DELETE FROM agents WHERE id = $1", &[&a.id])?;
        tx.execute(INSERT_AGENT, &params)?;
        tx.commit()?;
        Ok(Enrollment::Stored)
    }

    fn revoked_at(&self, id: &str) -> Result<Option<String>> {
        revoked_at(&mut *self.client()?, id)
    }

    fn agent(&self, id: &str) -> Result<Option<AgentRecord>> {
        let row = self.client()?.query_opt(&format!("{AGENT_COLUMNS} WHERE id = $1"), &[&id])?;
        row.as_ref().map(agent_row).transpose()
    }

    fn agent_by_access_key(&self, key_id: &str) -> Result<Option<AgentKey>> {
        let row = self.client()?.query_opt(
            "SELECT id, access_key_id, access_secret_sha256, policy_id, active FROM agents
             WHERE access_key_id = $1",
            &[&key_id],
        )?;
        row.map(|r| {
            Ok(AgentKey {
                id: r.try_get(0)?,
                access_key_id: r.try_get(1)?,
                access_secret_sha256: r.try_get(2)?,
                policy_id: r.try_get(3)?,
                active: flag(&r, 4)?,
            })
        })
        .transpose()
    }

    fn record_checkins(
        &mut self,
        updates: &[CheckinUpdate],
        upgrade: &UpgradeRule<'_>,
    ) -> Result<()> {
        // In agent id order (stable: one agent's reports keep theirs), see `lock_in_order`.
        let mut updates: Vec<&CheckinUpdate> = updates.iter().collect();
        updates.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let ids: Vec<&str> = updates.iter().map(|u| u.agent_id.as_str()).collect();
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // The upgrade rule is applied to what is stored: the rows are read locked, so that no
        // other instance writes one between this read and the write below (another instance
        // may hold a parked check-in of the same agent, or create an upgrade action for it).
        let mut stored: HashMap<String, (String, StoredUpgrade)> = HashMap::new();
        for r in tx.query(
            "SELECT id, access_key_id, upgrade_details IS NOT NULL, upgrade_state, upgrade_target
             FROM agents WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&ids],
        )? {
            let upgrade = StoredUpgrade {
                details: r.try_get(2)?,
                state: r.try_get(3)?,
                target: r.try_get(4)?,
            };
            stored.insert(r.try_get(0)?, (r.try_get(1)?, upgrade));
        }
        let write = tx.prepare(
            "UPDATE agents SET last_checkin = $2, last_status = $3, last_message = $4, version = $5,
                local_metadata = COALESCE($6::text, local_metadata),
                components = COALESCE($7::text, components),
                upgrade_details = $8, upgrade_state = $9,
                upgraded_at = CASE WHEN $14::boolean THEN $2 ELSE upgraded_at END,
                action_seq = GREATEST(action_seq, COALESCE($10::bigint, 0)),
                policy_revision = CASE WHEN policy_id = $11::text
                    THEN GREATEST(policy_revision, LEAST($12::bigint, (SELECT COALESCE(MAX(revision), 0)
                             FROM policy_revisions WHERE policy_id = $11::text)))
                    ELSE policy_revision END,
                audit_reason = NULL, audit_time = NULL, instance = $15
             WHERE id = $1 AND access_key_id = $13",
        )?;
        for u in updates {
            let Some((key, upgrade_stored)) = stored.get_mut(&u.agent_id) else { continue };
            let step = upgrade(upgrade_stored, u);
            // A revision is never above what this appliance issued (nor beyond PostgreSQL's
            // integers): one agent's odd report must not fail the batch of all.
            let (policy, revision) = match &u.running {
                Some((p, r)) => (Some(p.as_str()), i64::try_from(*r).unwrap_or(i64::MAX)),
                None => (None, 0),
            };
            tx.execute(
                &write,
                &[
                    &u.agent_id,
                    &u.at,
                    &u.status,
                    &u.message,
                    &u.version,
                    &u.local_metadata,
                    &u.components,
                    &u.upgrade_details,
                    &step.state,
                    &u.cursor,
                    &policy,
                    &revision,
                    &u.access_key_id,
                    &step.completed,
                    &self.instance(),
                ],
            )?;
            // A later report of the same agent in this batch sees what this one wrote, as
            // SQLite's read of the row would.
            if *key == u.access_key_id {
                upgrade_stored.details = u.upgrade_details.is_some();
                upgrade_stored.state = step.state;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn touch_agents(&mut self, ids: &[String], at: &str) -> Result<()> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        lock_in_order(&mut tx, ids)?;
        tx.execute(
            "UPDATE agents SET last_checkin = $2, instance = $3 WHERE id = ANY($1) AND active <> 0",
            &[&ids, &at, &self.instance()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn deactivate_agent(&mut self, id: &str, at: &str) -> Result<bool> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        if !deactivate(&mut tx, id, at)? {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO revoked_agents (id, revoked_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&id, &at],
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
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // Locked: another instance's annotation between this read and the write below could
        // be the final one, which must stay.
        let current =
            tx.query_opt("SELECT audit_reason FROM agents WHERE id = $1 FOR UPDATE", &[&id])?;
        let current: Option<String> = current.map(|r| r.try_get(0)).transpose()?.flatten();
        if current.as_deref() == Some(final_reason) {
            return Ok(AuditOutcome::Conflict);
        }
        tx.execute(
            "UPDATE agents SET audit_reason = $2, audit_time = $3 WHERE id = $1",
            &[&id, &reason, &at],
        )?;
        tx.commit()?;
        Ok(AuditOutcome::Recorded)
    }

    fn agent_view(&self, id: &str) -> Result<Option<AgentView>> {
        let row = self.client()?.query_opt(&format!("{VIEW_COLUMNS} WHERE id = $1"), &[&id])?;
        row.as_ref().map(|r| view_row(r, false)).transpose()
    }

    fn agent_views(&self, page: &AgentPage) -> Result<Vec<AgentView>> {
        let mut client = self.client()?;
        // Two statements, one snapshot.
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let filter = "($1::text IS NULL OR policy_id = $1::text)";
        if let Some(after) = &page.after {
            let listed = tx.query_opt(
                &format!("SELECT 1 FROM agents WHERE id = $2 AND {filter}"),
                &[&page.policy, after],
            )?;
            if listed.is_none() {
                return Err(StoreError::NotFound { what: "agent", key: after.clone() });
            }
        }
        // `LIMIT NULL` is no limit.
        let limit = page.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = tx.query(
            &format!(
                "{VIEW_COLUMNS} WHERE {filter}
                   AND ($2::text IS NULL
                        OR (enrolled_at, id) > (SELECT enrolled_at, id FROM agents WHERE id = $2::text))
                 ORDER BY enrolled_at, id LIMIT $3"
            ),
            &[&page.policy, &page.after, &limit],
        )?;
        let views = rows.iter().map(|r| view_row(r, page.summary)).collect::<Result<_>>()?;
        tx.commit()?;
        Ok(views)
    }

    fn agents_in_policy(&self, policy_id: &str) -> Result<Vec<String>> {
        let rows = self.client()?.query(
            "SELECT id FROM agents WHERE policy_id = $1 AND active <> 0 ORDER BY id",
            &[&policy_id],
        )?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}

fn revoked_at(client: &mut impl GenericClient, id: &str) -> Result<Option<String>> {
    let row = client.query_opt("SELECT revoked_at FROM revoked_agents WHERE id = $1", &[&id])?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Locks the rows of agents `ids` in id order, for the rest of the transaction. A call that
/// writes several agents' rows locks them first this way: two instances writing batches that
/// share agents then take the shared rows in the same order, and neither waits for a row the
/// other holds while holding one it waits for (a deadlock, which PostgreSQL would break by
/// failing one of them).
pub(super) fn lock_in_order(tx: &mut postgres::Transaction<'_>, ids: &[String]) -> Result<()> {
    tx.execute("SELECT 1 FROM agents WHERE id = ANY($1) ORDER BY id FOR UPDATE", &[&ids])?;
    Ok(())
}

/// Deactivates agent `id` at `at` (its key stops working), marks its output keys for
/// invalidation (an unenrolled or revoked agent's data credentials die with it, as Fleet
/// Server's handleUnenroll does) and tells the other instances (which may hold its parked
/// check-in); false if it already was inactive, or is unknown. The conditional UPDATE decides
/// under the row's lock: of two instances deactivating at once, one does.
pub(super) fn deactivate(tx: &mut postgres::Transaction<'_>, id: &str, at: &str) -> Result<bool> {
    let done = tx.execute(
        "UPDATE agents SET active = 0, unenrolled_at = $2 WHERE id = $1 AND active <> 0",
        &[&id, &at],
    )? > 0;
    if done {
        super::output_keys::drop_all(tx, id)?;
        notify(tx, channel::AGENTS, id)?;
    }
    Ok(done)
}
