//! Durable state: releases, the active pointer and the rollback floors. SQLite (WAL, full sync)
//! is the embedded store; the trait is what a server database would implement for several
//! appliances behind one load balancer.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::credentials::{ApiKey, SecretHash};

/// One imported release, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseRecord {
    pub name: String,
    pub sequence: u64,
    pub created: String,
    pub expires: String,
    pub key_id: String,
    pub entries: u64,
    pub payload_bytes: u64,
    pub manifest_sha256: String,
    pub imported_at: String,
}

/// An enrollment token as stored: its key id, the policy it enrolls into, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EnrollmentToken {
    pub id: String,
    pub policy_id: String,
    pub name: Option<String>,
    pub created: String,
    pub revoked: bool,
}

/// An enrolled agent as stored. The access key's secret is kept only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub id: String,
    pub access_key_id: String,
    pub access_secret_sha256: String,
    pub policy_id: String,
    pub kind: String,
    pub enrolled_at: String,
    pub active: bool,
    pub version: String,
    /// JSON object.
    pub local_metadata: String,
    /// JSON array of strings.
    pub tags: String,
    /// The PBKDF2 hash of the agent's replace token, if it gave one.
    pub replace_token: Option<String>,
}

/// An action as stored. `seq` orders actions and is what an `ack_token` resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    pub seq: i64,
    pub id: String,
    pub kind: String,
    /// JSON, or `None` for actions without data (UNENROLL).
    pub data: Option<String>,
    pub created_at: String,
    pub start_time: Option<String>,
    pub expiration: String,
}

/// What creating an action changes besides queueing it, in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionEffect {
    None,
    /// The agents now belong to this policy and run none of its revisions yet.
    Reassign {
        policy_id: String,
    },
    /// The agents' upgrade state becomes "requested" towards this version.
    Upgrade {
        version: String,
    },
    /// The target action is no longer delivered to agents that have not received it.
    Cancel {
        target_id: String,
    },
}

/// A new action for some agents.
#[derive(Debug, Clone)]
pub struct NewAction {
    pub id: String,
    pub kind: String,
    pub data: Option<String>,
    pub created_at: String,
    pub start_time: Option<String>,
    pub expiration: String,
    pub agents: Vec<String>,
    pub effect: ActionEffect,
}

/// One acknowledged action, as an agent reported it.
#[derive(Debug, Clone)]
pub struct ActionResult {
    pub action_id: String,
    pub error: Option<String>,
    /// JSON.
    pub data: Option<String>,
}

/// What one check-in reported, written later in a batch with others.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckinUpdate {
    pub agent_id: String,
    /// The key the check-in came with: a report of an agent since re-enrolled is dropped.
    pub access_key_id: String,
    pub at: String,
    pub status: String,
    pub message: String,
    /// From the User-Agent.
    pub version: String,
    /// JSON, when the agent sent it.
    pub local_metadata: Option<String>,
    /// JSON, when the agent sent it.
    pub components: Option<String>,
    /// JSON; absent while no upgrade is in flight.
    pub upgrade_details: Option<String>,
    /// `(policy_id, revision)` the agent says it runs (agents >= 9.2).
    pub running: Option<(String, u64)>,
    /// The action cursor the agent's `ack_token` resolved to.
    pub cursor: Option<i64>,
}

/// An acknowledged policy revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyAck {
    pub agent_id: String,
    pub access_key_id: String,
    pub policy_id: String,
    pub revision: u64,
}

/// A chunked upload (diagnostics bundles).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UploadRecord {
    pub id: String,
    pub action_id: String,
    pub agent_id: String,
    pub name: String,
    pub mime_type: String,
    pub size: u64,
    pub chunk_size: u64,
    /// `AWAITING_UPLOAD`, `READY` or `UPLOAD_ERROR`, as Fleet names them.
    pub status: String,
    pub created: String,
    pub completed: Option<String>,
    /// SHA-256 of the whole file, once complete.
    pub sha256: Option<String>,
}

/// One stored chunk of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    pub num: u64,
    pub size: u64,
    pub sha256: String,
}

/// An agent as the admin sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AgentView {
    pub id: String,
    pub active: bool,
    pub policy_id: String,
    pub policy_revision: u64,
    pub version: String,
    pub hostname: String,
    pub enrolled_at: String,
    pub last_checkin: Option<String>,
    pub last_status: Option<String>,
    pub last_message: Option<String>,
    pub tags: serde_json::Value,
    pub local_metadata: serde_json::Value,
    pub components: serde_json::Value,
    pub upgrade_state: Option<String>,
    pub upgrade_target: Option<String>,
    pub upgrade_details: serde_json::Value,
    pub upgraded_at: Option<String>,
    pub unenrolled_at: Option<String>,
    pub audit_unenroll_reason: Option<String>,
}

/// The upgrade state after a check-in, from what the agent sent (`details`, its version) and
/// what was stored. Agents >= 8.12 report `upgrade_details` while an upgrade runs and stop
/// sending it when done; older ones only show the new version.
pub fn next_upgrade_state(
    stored_details: bool,
    stored_state: Option<&str>,
    target: Option<&str>,
    version: &str,
    details: Option<&serde_json::Value>,
) -> Option<String> {
    if let Some(details) = details {
        let state = details.get("state").and_then(serde_json::Value::as_str);
        return Some(state.filter(|s| !s.is_empty()).unwrap_or("UPG_UNKNOWN").to_owned());
    }
    // Reached when the versions are equal in Elastic's order (build metadata does not count:
    // the User-Agent of 8.14.1+build… may differ from the target's build), snapshot marks
    // aside: the User-Agent names no `-SNAPSHOT`, so a snapshot target is reached at its
    // release. A stored string that is no version (older rows) is compared as spelled.
    let reached = target.is_some_and(|t| {
        use ferry_artifacts::Version;
        match (t.parse::<Version>(), version.parse::<Version>()) {
            (Ok(t), Ok(v)) => t.without_snapshot().precedence_cmp(&v.without_snapshot()).is_eq(),
            _ => t == version,
        }
    });
    if stored_details {
        // Details stopped: done, unless the agent is still not on the target (a rollback).
        return Some(
            if reached || target.is_none() { "UPG_COMPLETED" } else { "UPG_FAILED" }.into(),
        );
    }
    if reached && stored_state == Some(UPGRADE_REQUESTED) {
        return Some("UPG_COMPLETED".into());
    }
    stored_state.map(str::to_owned)
}

/// The upgrade state an agent has between the action and its first report.
pub const UPGRADE_REQUESTED: &str = "UPG_REQUESTED";
/// The upgrade state after the admin cancelled the upgrade.
pub const UPGRADE_CANCELLED: &str = "UPG_CANCELLED";

/// Why an audit/unenroll annotation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    Recorded,
    /// The agent is already annotated as orphaned.
    Conflict,
}

/// What [`StateStore::enroll_agent`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollment {
    Stored,
    /// An active agent has the id and the caller did not prove it may replace that one.
    NotReplaceable,
    /// The operator revoked the id (a tombstone).
    Revoked,
}

/// The state operations the appliance needs. Every method is one transaction.
pub trait StateStore {
    /// The highest sequence ever accepted for `name`.
    fn floor(&self, name: &str) -> anyhow::Result<Option<u64>>;
    /// Records `release`, makes it active and raises the floor to its sequence (never lowers).
    fn activate_new(&mut self, release: &ReleaseRecord) -> anyhow::Result<()>;
    /// Makes a recorded release active again; floors are untouched.
    fn activate(&mut self, name: &str, sequence: u64) -> anyhow::Result<()>;
    /// The active release's name and sequence.
    fn active(&self) -> anyhow::Result<Option<(String, u64)>>;
    /// Every recorded release, oldest first.
    fn releases(&self) -> anyhow::Result<Vec<ReleaseRecord>>;
    /// Forgets a release that is not active.
    fn forget(&mut self, name: &str, sequence: u64) -> anyhow::Result<()>;

    /// Stores a new enrollment token for `policy_id` (only the hash of its secret).
    fn create_enrollment_token(
        &mut self,
        key: &ApiKey,
        policy_id: &str,
        name: Option<&str>,
    ) -> anyhow::Result<()>;
    /// Every enrollment token, oldest first.
    fn enrollment_tokens(&self) -> anyhow::Result<Vec<EnrollmentToken>>;
    /// Revokes a token; false when there is no token with that id.
    fn revoke_enrollment_token(&mut self, id: &str) -> anyhow::Result<bool>;
    /// The policy `key` enrolls into, if it is a known, unrevoked token with the right secret.
    fn enrollment_policy(&self, key: &ApiKey) -> anyhow::Result<Option<String>>;

    /// Stores a newly enrolled agent, in one transaction with the check that decides it may:
    /// the id was never revoked, and no agent has it, or an inactive one, or (when `replacing`
    /// names its access key) the very agent the caller checked the replace token of. The agent
    /// starts after every existing action.
    fn enroll_agent(
        &mut self,
        agent: &AgentRecord,
        replacing: Option<&str>,
    ) -> anyhow::Result<Enrollment>;
    /// When the operator revoked agent `id` (`unenroll --revoke`), if ever: a revoked id never
    /// enrolls again, whatever token comes with it.
    fn revoked_at(&self, id: &str) -> anyhow::Result<Option<String>>;
    fn agent(&self, id: &str) -> anyhow::Result<Option<AgentRecord>>;
    fn agent_by_access_key(&self, key_id: &str) -> anyhow::Result<Option<AgentRecord>>;
    /// The revision the agent runs (raised by policy acks and check-in reports, never lowered).
    fn agent_policy_revision(&self, id: &str) -> anyhow::Result<u64>;
    /// Records acknowledged policy revisions `(agent, policy, revision)` in one transaction; a
    /// revision is raised only while the agent is still in that policy, and never lowered.
    fn record_policy_acks(&mut self, acks: &[PolicyAck]) -> anyhow::Result<()>;
    /// The appliance revision of a policy's content: the latest one if the content is unchanged,
    /// else a new one above every earlier revision (so rolling back to older content is a new
    /// revision too). Returns (revision, created).
    fn policy_revision(
        &mut self,
        policy_id: &str,
        content_sha256: &str,
    ) -> anyhow::Result<(u64, String)>;

    /// Writes a batch of check-ins in one transaction.
    fn record_checkins(&mut self, updates: &[CheckinUpdate]) -> anyhow::Result<()>;
    /// Marks agents whose check-ins are parked as seen at `at`, in one transaction.
    fn touch_agents(&mut self, ids: &[String], at: &str) -> anyhow::Result<()>;
    /// The stored action cursor of an agent.
    fn action_cursor(&self, agent_id: &str) -> anyhow::Result<i64>;
    /// Queues an action and applies its effect, in one transaction; returns its sequence.
    fn create_action(&mut self, action: &NewAction) -> anyhow::Result<i64>;
    /// Up to `limit` actions for the agent after `after`, unexpired at `now`, not cancelled,
    /// in creation order.
    fn pending_actions(
        &self,
        agent_id: &str,
        after: i64,
        now: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<ActionRecord>>;
    /// An action for this agent (queued since it enrolled), by id; also resolves `ack_token`s.
    fn agent_action(&self, agent_id: &str, action_id: &str)
    -> anyhow::Result<Option<ActionRecord>>;
    /// Records acks; when `unenroll`, the agent is deactivated in the same transaction.
    fn record_action_results(
        &mut self,
        agent_id: &str,
        results: &[ActionResult],
        unenroll: bool,
    ) -> anyhow::Result<()>;
    /// Every agent targeted by `action_id` with whether it acknowledged it (and its error).
    fn action_results(
        &self,
        action_id: &str,
    ) -> anyhow::Result<Vec<(String, Option<Option<String>>)>>;
    /// Revokes an agent now: its key stops working and its id is tombstoned (see
    /// [`StateStore::revoked_at`]); false when unknown or inactive.
    fn deactivate_agent(&mut self, agent_id: &str) -> anyhow::Result<bool>;
    /// Annotates an agent as unenrolled by itself (`audit/unenroll`).
    fn audit_unenroll(
        &mut self,
        agent_id: &str,
        reason: &str,
        at: &str,
    ) -> anyhow::Result<AuditOutcome>;
    /// Every agent, or one, as the admin sees them.
    fn agent_views(&self, id: Option<&str>) -> anyhow::Result<Vec<AgentView>>;
    /// The ids of the active agents in a policy.
    fn agents_in_policy(&self, policy_id: &str) -> anyhow::Result<Vec<String>>;
    /// The ids of every credential that may authenticate: active agents' access keys and
    /// enrollment tokens not revoked.
    fn credential_ids(&self) -> anyhow::Result<Vec<String>>;

    fn create_upload(&mut self, upload: &UploadRecord) -> anyhow::Result<()>;
    fn upload(&self, id: &str) -> anyhow::Result<Option<UploadRecord>>;
    fn uploads(&self) -> anyhow::Result<Vec<UploadRecord>>;
    /// The latest upload an agent made for an action.
    fn upload_for_action(
        &self,
        action_id: &str,
        agent_id: &str,
    ) -> anyhow::Result<Option<UploadRecord>>;
    /// Closes as `UPLOAD_ERROR` every upload still open that began before `before`, returning
    /// them (their files are the caller's to remove).
    fn expire_uploads(&mut self, before: &str) -> anyhow::Result<Vec<UploadRecord>>;
    fn put_chunk(&mut self, upload_id: &str, chunk: &ChunkRecord) -> anyhow::Result<()>;
    fn chunks(&self, upload_id: &str) -> anyhow::Result<Vec<ChunkRecord>>;
    /// Closes an upload as `READY` (with the file's SHA-256) or `UPLOAD_ERROR`.
    fn finish_upload(&mut self, id: &str, status: &str, sha256: Option<&str>)
    -> anyhow::Result<()>;
}

pub struct SqliteState {
    conn: Connection,
}

fn to_i64(sequence: u64) -> anyhow::Result<i64> {
    i64::try_from(sequence).map_err(|_| {
        anyhow::anyhow!("sequence {sequence} is larger than this appliance stores (2^63 - 1)")
    })
}

impl SqliteState {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // The switch to a new release must survive power loss once import says it is done.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS releases (
                name TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                created TEXT NOT NULL,
                expires TEXT NOT NULL,
                key_id TEXT NOT NULL,
                entries INTEGER NOT NULL,
                payload_bytes INTEGER NOT NULL,
                manifest_sha256 TEXT NOT NULL,
                imported_at TEXT NOT NULL,
                PRIMARY KEY (name, sequence)
            );
            CREATE TABLE IF NOT EXISTS floors (
                name TEXT PRIMARY KEY,
                sequence INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS enrollment_tokens (
                id TEXT PRIMARY KEY,
                secret_sha256 TEXT NOT NULL,
                policy_id TEXT NOT NULL,
                name TEXT,
                created TEXT NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS agents (
                id TEXT PRIMARY KEY,
                access_key_id TEXT NOT NULL UNIQUE,
                access_secret_sha256 TEXT NOT NULL,
                policy_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                enrolled_at TEXT NOT NULL,
                active INTEGER NOT NULL,
                version TEXT NOT NULL,
                local_metadata TEXT NOT NULL,
                tags TEXT NOT NULL,
                policy_revision INTEGER NOT NULL DEFAULT 0,
                replace_token TEXT,
                action_seq INTEGER NOT NULL DEFAULT 0,
                enroll_seq INTEGER NOT NULL DEFAULT 0,
                last_checkin TEXT,
                last_status TEXT,
                last_message TEXT,
                components TEXT,
                upgrade_details TEXT,
                upgrade_state TEXT,
                upgrade_target TEXT,
                upgraded_at TEXT,
                unenrolled_at TEXT,
                audit_reason TEXT,
                audit_time TEXT
            );
            CREATE INDEX IF NOT EXISTS agents_by_policy ON agents (policy_id);
            CREATE TABLE IF NOT EXISTS actions (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                type TEXT NOT NULL,
                data TEXT,
                created_at TEXT NOT NULL,
                start_time TEXT,
                expiration TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS action_targets (
                agent_id TEXT NOT NULL,
                seq INTEGER NOT NULL REFERENCES actions (seq),
                cancelled INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (agent_id, seq)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS action_results (
                action_id TEXT NOT NULL,
                agent_id TEXT NOT NULL,
                acked_at TEXT NOT NULL,
                error TEXT,
                data TEXT,
                PRIMARY KEY (action_id, agent_id)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS uploads (
                id TEXT PRIMARY KEY,
                action_id TEXT NOT NULL,
                agent_id TEXT NOT NULL,
                name TEXT NOT NULL,
                mime_type TEXT NOT NULL,
                size INTEGER NOT NULL,
                chunk_size INTEGER NOT NULL,
                status TEXT NOT NULL,
                created TEXT NOT NULL,
                completed TEXT,
                sha256 TEXT
            );
            CREATE TABLE IF NOT EXISTS upload_chunks (
                upload_id TEXT NOT NULL,
                num INTEGER NOT NULL,
                size INTEGER NOT NULL,
                sha256 TEXT NOT NULL,
                PRIMARY KEY (upload_id, num)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS policy_revisions (
                policy_id TEXT NOT NULL,
                revision INTEGER NOT NULL,
                content_sha256 TEXT NOT NULL,
                created TEXT NOT NULL,
                PRIMARY KEY (policy_id, revision)
            );
            CREATE TABLE IF NOT EXISTS active (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                name TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                FOREIGN KEY (name, sequence) REFERENCES releases (name, sequence)
            );
            -- Agent ids the operator revoked. A table of their own (CREATE ... IF NOT EXISTS, as
            -- every schema change here: an older state.db gains it when opened) rather than a
            -- column of agents, whose row an enrollment replaces whole.
            CREATE TABLE IF NOT EXISTS revoked_agents (
                id TEXT PRIMARY KEY,
                revoked_at TEXT NOT NULL
            );",
        )?;
        Ok(Self { conn })
    }
}

impl StateStore for SqliteState {
    fn floor(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let floor: Option<i64> = self
            .conn
            .query_row("SELECT sequence FROM floors WHERE name = ?1", params![name], |r| r.get(0))
            .optional()?;
        Ok(floor.map(|f| f as u64))
    }

    fn activate_new(&mut self, r: &ReleaseRecord) -> anyhow::Result<()> {
        let sequence = to_i64(r.sequence)?;
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
                r.entries as i64,
                r.payload_bytes as i64,
                r.manifest_sha256,
                r.imported_at
            ],
        )?;
        tx.execute(
            "INSERT INTO active (id, name, sequence) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, sequence = excluded.sequence",
            params![r.name, sequence],
        )?;
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

    fn activate(&mut self, name: &str, sequence: u64) -> anyhow::Result<()> {
        let sequence = to_i64(sequence)?;
        let tx = self.conn.transaction()?;
        let known: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM releases WHERE name = ?1 AND sequence = ?2",
                params![name, sequence],
                |r| r.get(0),
            )
            .optional()?;
        anyhow::ensure!(
            known.is_some(),
            "release {name} {sequence} is not retained on this appliance"
        );
        tx.execute(
            "INSERT INTO active (id, name, sequence) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, sequence = excluded.sequence",
            params![name, sequence],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn active(&self) -> anyhow::Result<Option<(String, u64)>> {
        Ok(self
            .conn
            .query_row("SELECT name, sequence FROM active WHERE id = 1", [], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .optional()?)
    }

    fn releases(&self) -> anyhow::Result<Vec<ReleaseRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, sequence, created, expires, key_id, entries, payload_bytes, manifest_sha256, imported_at
             FROM releases ORDER BY imported_at, name, sequence",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ReleaseRecord {
                name: r.get(0)?,
                sequence: r.get::<_, i64>(1)? as u64,
                created: r.get(2)?,
                expires: r.get(3)?,
                key_id: r.get(4)?,
                entries: r.get::<_, i64>(5)? as u64,
                payload_bytes: r.get::<_, i64>(6)? as u64,
                manifest_sha256: r.get(7)?,
                imported_at: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn forget(&mut self, name: &str, sequence: u64) -> anyhow::Result<()> {
        let sequence = to_i64(sequence)?;
        anyhow::ensure!(
            self.active()? != Some((name.to_owned(), sequence as u64)),
            "release {name} {sequence} is active and cannot be removed"
        );
        self.conn.execute(
            "DELETE FROM releases WHERE name = ?1 AND sequence = ?2",
            params![name, sequence],
        )?;
        Ok(())
    }

    fn create_enrollment_token(
        &mut self,
        key: &ApiKey,
        policy_id: &str,
        name: Option<&str>,
    ) -> anyhow::Result<()> {
        let now = now_rfc3339()?;
        self.conn.execute(
            "INSERT INTO enrollment_tokens (id, secret_sha256, policy_id, name, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.id().as_str(), key.secret_hash().to_hex(), policy_id, name, now],
        )?;
        Ok(())
    }

    fn enrollment_tokens(&self) -> anyhow::Result<Vec<EnrollmentToken>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, policy_id, name, created, revoked FROM enrollment_tokens ORDER BY created, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(EnrollmentToken {
                id: r.get(0)?,
                policy_id: r.get(1)?,
                name: r.get(2)?,
                created: r.get(3)?,
                revoked: r.get::<_, i64>(4)? != 0,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_enrollment_token(&mut self, id: &str) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .execute("UPDATE enrollment_tokens SET revoked = 1 WHERE id = ?1", params![id])?
            > 0)
    }

    fn enrollment_policy(&self, key: &ApiKey) -> anyhow::Result<Option<String>> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT secret_sha256, policy_id FROM enrollment_tokens WHERE id = ?1 AND revoked = 0",
                params![key.id().as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(hash, policy)| {
            SecretHash::from_hex(&hash).filter(|h| key.matches(h)).map(|_| policy)
        }))
    }

    fn enroll_agent(
        &mut self,
        a: &AgentRecord,
        replacing: Option<&str>,
    ) -> anyhow::Result<Enrollment> {
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

    fn revoked_at(&self, id: &str) -> anyhow::Result<Option<String>> {
        revoked_at(&self.conn, id)
    }

    fn agent(&self, id: &str) -> anyhow::Result<Option<AgentRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, access_key_id, access_secret_sha256, policy_id, kind, enrolled_at, active,
                        version, local_metadata, tags, replace_token
                 FROM agents WHERE id = ?1",
                params![id],
                |r| {
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
                },
            )
            .optional()?)
    }

    fn agent_policy_revision(&self, id: &str) -> anyhow::Result<u64> {
        let rev: Option<i64> = self
            .conn
            .query_row("SELECT policy_revision FROM agents WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(rev.unwrap_or(0) as u64)
    }

    fn record_policy_acks(&mut self, acks: &[PolicyAck]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE agents SET policy_revision = MAX(policy_revision, MIN(?4,
                     (SELECT COALESCE(MAX(revision), 0) FROM policy_revisions WHERE policy_id = ?3)))
                 WHERE id = ?1 AND access_key_id = ?2 AND policy_id = ?3",
            )?;
            for a in acks {
                let revision = i64::try_from(a.revision).unwrap_or(i64::MAX);
                stmt.execute(params![a.agent_id, a.access_key_id, a.policy_id, revision])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn policy_revision(
        &mut self,
        policy_id: &str,
        content_sha256: &str,
    ) -> anyhow::Result<(u64, String)> {
        let tx = self.conn.transaction()?;
        let latest: Option<(i64, String, String)> = tx
            .query_row(
                "SELECT revision, content_sha256, created FROM policy_revisions WHERE policy_id = ?1
                 ORDER BY revision DESC LIMIT 1",
                params![policy_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((revision, sha, created)) = &latest
            && sha == content_sha256
        {
            return Ok((*revision as u64, created.clone()));
        }
        let revision = latest.map_or(1, |(r, _, _)| r + 1);
        let now = now_rfc3339()?;
        tx.execute(
            "INSERT INTO policy_revisions (policy_id, revision, content_sha256, created) VALUES (?1, ?2, ?3, ?4)",
            params![policy_id, revision, content_sha256, now],
        )?;
        tx.commit()?;
        Ok((revision as u64, now))
    }

    fn agent_by_access_key(&self, key_id: &str) -> anyhow::Result<Option<AgentRecord>> {
        let id: Option<String> = self
            .conn
            .query_row("SELECT id FROM agents WHERE access_key_id = ?1", params![key_id], |r| {
                r.get(0)
            })
            .optional()?;
        match id {
            Some(id) => self.agent(&id),
            None => Ok(None),
        }
    }

    fn record_checkins(&mut self, updates: &[CheckinUpdate]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut read = tx.prepare_cached(
                "SELECT upgrade_details IS NOT NULL, upgrade_state, upgrade_target FROM agents WHERE id = ?1",
            )?;
            let mut write = tx.prepare_cached(
                "UPDATE agents SET last_checkin = ?2, last_status = ?3, last_message = ?4, version = ?5,
                    local_metadata = COALESCE(?6, local_metadata), components = COALESCE(?7, components),
                    upgrade_details = ?8, upgrade_state = ?9,
                    upgraded_at = CASE WHEN ?9 = 'UPG_COMPLETED' AND upgrade_state IS NOT 'UPG_COMPLETED'
                                       THEN ?2 ELSE upgraded_at END,
                    action_seq = MAX(action_seq, COALESCE(?10, 0)),
                    policy_revision = CASE WHEN policy_id = ?11
                        THEN MAX(policy_revision, MIN(?12, (SELECT COALESCE(MAX(revision), 0)
                                 FROM policy_revisions WHERE policy_id = ?11)))
                        ELSE policy_revision END,
                    audit_reason = NULL, audit_time = NULL
                 WHERE id = ?1 AND access_key_id = ?13",
            )?;
            for u in updates {
                let stored: Option<(bool, Option<String>, Option<String>)> = read
                    .query_row(params![u.agent_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                let Some((had_details, state, target)) = stored else { continue };
                let details: Option<serde_json::Value> =
                    u.upgrade_details.as_deref().and_then(|d| serde_json::from_str(d).ok());
                let state = next_upgrade_state(
                    had_details,
                    state.as_deref(),
                    target.as_deref(),
                    &u.version,
                    details.as_ref(),
                );
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
                    state,
                    u.cursor,
                    policy,
                    revision,
                    u.access_key_id
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn touch_agents(&mut self, ids: &[String], at: &str) -> anyhow::Result<()> {
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

    fn action_cursor(&self, agent_id: &str) -> anyhow::Result<i64> {
        let cursor: Option<i64> = self
            .conn
            .query_row("SELECT action_seq FROM agents WHERE id = ?1", params![agent_id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(cursor.unwrap_or(0))
    }

    fn create_action(&mut self, a: &NewAction) -> anyhow::Result<i64> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO actions (id, type, data, created_at, start_time, expiration)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![a.id, a.kind, a.data, a.created_at, a.start_time, a.expiration],
        )?;
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
                ActionEffect::Upgrade { version } => {
                    let mut stmt = tx.prepare_cached(
                        "UPDATE agents SET upgrade_state = ?2, upgrade_target = ?3 WHERE id = ?1",
                    )?;
                    for agent in &a.agents {
                        stmt.execute(params![agent, UPGRADE_REQUESTED, version])?;
                    }
                }
                ActionEffect::Cancel { target_id } => {
                    // Only for the agents this cancel is for; an upgrade that was waiting is
                    // no longer "requested".
                    let mut cancel = tx.prepare_cached(
                        "UPDATE action_targets SET cancelled = 1
                         WHERE agent_id = ?1 AND seq = (SELECT seq FROM actions WHERE id = ?2)",
                    )?;
                    let mut upgrade = tx.prepare_cached(
                        "UPDATE agents SET upgrade_state = ?3, upgrade_target = NULL, upgrade_details = NULL
                         WHERE id = ?1 AND upgrade_target IS NOT NULL
                           AND EXISTS (SELECT 1 FROM actions WHERE id = ?2 AND type = 'UPGRADE')",
                    )?;
                    for agent in &a.agents {
                        cancel.execute(params![agent, target_id])?;
                        upgrade.execute(params![agent, target_id, UPGRADE_CANCELLED])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(seq)
    }

    fn pending_actions(
        &self,
        agent_id: &str,
        after: i64,
        now: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<ActionRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT a.seq, a.id, a.type, a.data, a.created_at, a.start_time, a.expiration
             FROM action_targets t JOIN actions a ON a.seq = t.seq
             JOIN agents g ON g.id = t.agent_id
             WHERE t.agent_id = ?1 AND t.seq > MAX(?2, g.enroll_seq) AND a.expiration > ?3
               AND NOT t.cancelled
             ORDER BY t.seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![agent_id, after, now, limit as i64], action_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn agent_action(
        &self,
        agent_id: &str,
        action_id: &str,
    ) -> anyhow::Result<Option<ActionRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT a.seq, a.id, a.type, a.data, a.created_at, a.start_time, a.expiration
                 FROM actions a JOIN action_targets t ON t.seq = a.seq
                 JOIN agents g ON g.id = t.agent_id
                 WHERE a.id = ?2 AND t.agent_id = ?1 AND t.seq > g.enroll_seq",
                params![agent_id, action_id],
                action_row,
            )
            .optional()?)
    }

    fn record_action_results(
        &mut self,
        agent_id: &str,
        results: &[ActionResult],
        unenroll: bool,
    ) -> anyhow::Result<()> {
        let now = now_rfc3339()?;
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO action_results (action_id, agent_id, acked_at, error, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in results {
                stmt.execute(params![r.action_id, agent_id, now, r.error, r.data])?;
            }
        }
        if unenroll {
            deactivate(&tx, agent_id, &now)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn action_results(
        &self,
        action_id: &str,
    ) -> anyhow::Result<Vec<(String, Option<Option<String>>)>> {
        let mut stmt = self.conn.prepare(
            "SELECT t.agent_id, r.acked_at IS NOT NULL, r.error
             FROM actions a JOIN action_targets t ON t.seq = a.seq
             LEFT JOIN action_results r ON r.action_id = a.id AND r.agent_id = t.agent_id
             WHERE a.id = ?1 ORDER BY t.agent_id",
        )?;
        let rows = stmt.query_map(params![action_id], |r| {
            let acked: bool = r.get(1)?;
            Ok((r.get(0)?, if acked { Some(r.get(2)?) } else { None }))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn deactivate_agent(&mut self, agent_id: &str) -> anyhow::Result<bool> {
        let now = now_rfc3339()?;
        let tx = self.conn.transaction()?;
        if !deactivate(&tx, agent_id, &now)? {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR IGNORE INTO revoked_agents (id, revoked_at) VALUES (?1, ?2)",
            params![agent_id, now],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn audit_unenroll(
        &mut self,
        agent_id: &str,
        reason: &str,
        at: &str,
    ) -> anyhow::Result<AuditOutcome> {
        let tx = self.conn.transaction()?;
        let current: Option<Option<String>> = tx
            .query_row("SELECT audit_reason FROM agents WHERE id = ?1", params![agent_id], |r| {
                r.get(0)
            })
            .optional()?;
        if current.flatten().as_deref() == Some("orphaned") {
            return Ok(AuditOutcome::Conflict);
        }
        tx.execute(
            "UPDATE agents SET audit_reason = ?2, audit_time = ?3 WHERE id = ?1",
            params![agent_id, reason, at],
        )?;
        tx.commit()?;
        Ok(AuditOutcome::Recorded)
    }

    fn agent_views(&self, id: Option<&str>) -> anyhow::Result<Vec<AgentView>> {
        let json = |text: Option<String>| -> serde_json::Value {
            text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(serde_json::Value::Null)
        };
        let mut stmt = self.conn.prepare(
            "SELECT id, active, policy_id, policy_revision, version, enrolled_at, last_checkin,
                    last_status, last_message, tags, local_metadata, components, upgrade_state,
                    upgrade_target, upgrade_details, upgraded_at, unenrolled_at, audit_reason
             FROM agents WHERE ?1 IS NULL OR id = ?1 ORDER BY enrolled_at, id",
        )?;
        let rows = stmt.query_map(params![id], |r| {
            let local_metadata = json(r.get(10)?);
            Ok(AgentView {
                id: r.get(0)?,
                active: r.get(1)?,
                policy_id: r.get(2)?,
                policy_revision: r.get::<_, i64>(3)? as u64,
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
                tags: json(r.get(9)?),
                local_metadata,
                components: json(r.get(11)?),
                upgrade_state: r.get(12)?,
                upgrade_target: r.get(13)?,
                upgrade_details: json(r.get(14)?),
                upgraded_at: r.get(15)?,
                unenrolled_at: r.get(16)?,
                audit_unenroll_reason: r.get(17)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn agents_in_policy(&self, policy_id: &str) -> anyhow::Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM agents WHERE policy_id = ?1 AND active ORDER BY id")?;
        let rows = stmt.query_map(params![policy_id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn credential_ids(&self) -> anyhow::Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT access_key_id FROM agents WHERE active
             UNION ALL SELECT id FROM enrollment_tokens WHERE NOT revoked",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn create_upload(&mut self, u: &UploadRecord) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO uploads (id, action_id, agent_id, name, mime_type, size, chunk_size, status, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                u.id,
                u.action_id,
                u.agent_id,
                u.name,
                u.mime_type,
                to_i64(u.size)?,
                to_i64(u.chunk_size)?,
                u.status,
                u.created
            ],
        )?;
        Ok(())
    }

    fn upload(&self, id: &str) -> anyhow::Result<Option<UploadRecord>> {
        Ok(self
            .conn
            .query_row(&format!("{UPLOAD_COLUMNS} WHERE id = ?1"), params![id], upload_row)
            .optional()?)
    }

    fn uploads(&self) -> anyhow::Result<Vec<UploadRecord>> {
        let mut stmt = self.conn.prepare(&format!("{UPLOAD_COLUMNS} ORDER BY created, id"))?;
        let rows = stmt.query_map([], upload_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn upload_for_action(
        &self,
        action_id: &str,
        agent_id: &str,
    ) -> anyhow::Result<Option<UploadRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "{UPLOAD_COLUMNS} WHERE action_id = ?1 AND agent_id = ?2 ORDER BY created DESC, rowid DESC LIMIT 1"
                ),
                params![action_id, agent_id],
                upload_row,
            )
            .optional()?)
    }

    fn expire_uploads(&mut self, before: &str) -> anyhow::Result<Vec<UploadRecord>> {
        let stale: Vec<UploadRecord> = {
            let mut stmt = self.conn.prepare(&format!(
                "{UPLOAD_COLUMNS} WHERE status = 'AWAITING_UPLOAD' AND created < ?1"
            ))?;
            stmt.query_map(params![before], upload_row)?.collect::<Result<_, _>>()?
        };
        for u in &stale {
            self.finish_upload(&u.id, "UPLOAD_ERROR", None)?;
        }
        Ok(stale)
    }

    fn put_chunk(&mut self, upload_id: &str, c: &ChunkRecord) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO upload_chunks (upload_id, num, size, sha256) VALUES (?1, ?2, ?3, ?4)",
            params![upload_id, to_i64(c.num)?, to_i64(c.size)?, c.sha256],
        )?;
        Ok(())
    }

    fn chunks(&self, upload_id: &str) -> anyhow::Result<Vec<ChunkRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT num, size, sha256 FROM upload_chunks WHERE upload_id = ?1 ORDER BY num",
        )?;
        let rows = stmt.query_map(params![upload_id], |r| {
            Ok(ChunkRecord {
                num: r.get::<_, i64>(0)? as u64,
                size: r.get::<_, i64>(1)? as u64,
                sha256: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn finish_upload(
        &mut self,
        id: &str,
        status: &str,
        sha256: Option<&str>,
    ) -> anyhow::Result<()> {
        let now = now_rfc3339()?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE uploads SET status = ?2, sha256 = ?3, completed = ?4 WHERE id = ?1",
            params![id, status, sha256, now],
        )?;
        tx.execute("DELETE FROM upload_chunks WHERE upload_id = ?1", params![id])?;
        tx.commit()?;
        Ok(())
    }
}

fn revoked_at(conn: &Connection, id: &str) -> anyhow::Result<Option<String>> {
    Ok(conn
        .query_row("SELECT revoked_at FROM revoked_agents WHERE id = ?1", params![id], |r| r.get(0))
        .optional()?)
}

/// Makes an agent inactive (its key stops working); false if it already was, or is unknown.
fn deactivate(conn: &Connection, agent_id: &str, now: &str) -> anyhow::Result<bool> {
    Ok(conn.execute(
        "UPDATE agents SET active = 0, unenrolled_at = ?2 WHERE id = ?1 AND active",
        params![agent_id, now],
    )? > 0)
}

const UPLOAD_COLUMNS: &str = "SELECT id, action_id, agent_id, name, mime_type, size, chunk_size, status, created, completed, sha256 FROM uploads";

fn upload_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UploadRecord> {
    Ok(UploadRecord {
        id: r.get(0)?,
        action_id: r.get(1)?,
        agent_id: r.get(2)?,
        name: r.get(3)?,
        mime_type: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        chunk_size: r.get::<_, i64>(6)? as u64,
        status: r.get(7)?,
        created: r.get(8)?,
        completed: r.get(9)?,
        sha256: r.get(10)?,
    })
}

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

/// Now, as the RFC 3339 (UTC, seconds) text every stored timestamp uses, so that comparing the
/// text compares the times.
pub fn now_rfc3339() -> anyhow::Result<String> {
    Ok(ferry_manifests::rfc3339(time::OffsetDateTime::now_utc().replace_nanosecond(0)?))
}

/// An RFC 3339 time with any offset and fraction (what agents send), in UTC, to the second.
pub fn utc_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()?
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .ok()
}

/// [`utc_time`] as stored text.
pub fn utc_rfc3339(text: &str) -> Option<String> {
    utc_time(text).map(ferry_manifests::rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, sequence: u64, at: &str) -> ReleaseRecord {
        ReleaseRecord {
            name: name.into(),
            sequence,
            created: at.into(),
            expires: at.into(),
            key_id: "K".into(),
            entries: 1,
            payload_bytes: 2,
            manifest_sha256: "00".into(),
            imported_at: at.into(),
        }
    }

    #[test]
    fn floors_only_rise_and_rollback_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteState::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(s.floor("site").unwrap(), None);
        s.activate_new(&record("site", 3, "1")).unwrap();
        s.activate_new(&record("site", 5, "2")).unwrap();
        assert_eq!(s.floor("site").unwrap(), Some(5));
        assert_eq!(s.active().unwrap(), Some(("site".into(), 5)));
        s.activate("site", 3).unwrap();
        assert_eq!(s.active().unwrap(), Some(("site".into(), 3)));
        assert_eq!(s.floor("site").unwrap(), Some(5), "rollback does not lower the floor");
        // A downgrade accepted by override records the release but never lowers the floor.
        s.activate_new(&record("site", 2, "3")).unwrap();
        assert_eq!(s.floor("site").unwrap(), Some(5));
        assert!(s.activate("site", 9).is_err());
        assert!(s.forget("site", 2).is_err(), "the active release stays");
        s.forget("site", 3).unwrap();
        assert_eq!(s.releases().unwrap().len(), 2);
    }

    #[test]
    fn enrollment_tokens_authenticate_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut s = SqliteState::open(&path).unwrap();
        let key = ApiKey::mint();
        s.create_enrollment_token(&key, "linux", Some("web servers")).unwrap();
        assert_eq!(s.enrollment_policy(&key).unwrap().as_deref(), Some("linux"));
        // Same id, other secret: refused.
        let forged = ApiKey::decode(&base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:guess", key.id()),
        ))
        .unwrap();
        assert_eq!(s.enrollment_policy(&forged).unwrap(), None);
        assert_eq!(s.enrollment_policy(&ApiKey::mint()).unwrap(), None);
        // Survives a reopen; revocation sticks.
        drop(s);
        let mut s = SqliteState::open(&path).unwrap();
        let tokens = s.enrollment_tokens().unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!((tokens[0].policy_id.as_str(), tokens[0].revoked), ("linux", false));
        assert!(s.revoke_enrollment_token(key.id().as_str()).unwrap());
        assert!(!s.revoke_enrollment_token("nope").unwrap());
        assert_eq!(s.enrollment_policy(&key).unwrap(), None);
        assert!(s.enrollment_tokens().unwrap()[0].revoked);
    }

    #[test]
    fn policy_revisions_only_go_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteState::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(s.policy_revision("p", "aaa").unwrap().0, 1);
        assert_eq!(s.policy_revision("p", "aaa").unwrap().0, 1, "same content, same revision");
        assert_eq!(s.policy_revision("p", "bbb").unwrap().0, 2);
        assert_eq!(
            s.policy_revision("p", "aaa").unwrap().0,
            3,
            "going back to old content is a new revision"
        );
        assert_eq!(s.policy_revision("q", "aaa").unwrap().0, 1);
    }

    fn agent(id: &str, key: &str) -> AgentRecord {
        AgentRecord {
            id: id.into(),
            access_key_id: key.into(),
            access_secret_sha256: "00".repeat(32),
            policy_id: "p".into(),
            kind: "PERMANENT".into(),
            enrolled_at: "2026-01-01T00:00:00Z".into(),
            active: true,
            version: "9.1.2".into(),
            local_metadata: "{}".into(),
            tags: "[]".into(),
            replace_token: None,
        }
    }

    fn action(id: &str, agents: &[&str], expiration: &str, effect: ActionEffect) -> NewAction {
        NewAction {
            id: id.into(),
            kind: "SETTINGS".into(),
            data: Some(r#"{"log_level":"debug"}"#.into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            start_time: None,
            expiration: expiration.into(),
            agents: agents.iter().map(|a| (*a).to_owned()).collect(),
            effect,
        }
    }

    #[test]
    fn actions_are_pending_in_order_until_the_cursor_passes_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteState::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(s.enroll_agent(&agent("a", "ka"), None).unwrap(), Enrollment::Stored);
        assert_eq!(s.enroll_agent(&agent("b", "kb"), None).unwrap(), Enrollment::Stored);
        let far = "2099-01-01T00:00:00Z";
        let now = "2026-06-01T00:00:00Z";
        for i in 0..150 {
            s.create_action(&action(&format!("x{i}"), &["a"], far, ActionEffect::None)).unwrap();
        }
        s.create_action(&action(
            "expired",
            &["a", "b"],
            "2026-05-01T00:00:00Z",
            ActionEffect::None,
        ))
        .unwrap();
        s.create_action(&action("for-b", &["b"], far, ActionEffect::None)).unwrap();
        let first = s.pending_actions("a", 0, now, 100).unwrap();
        assert_eq!(first.len(), 100, "bounded per response");
        assert_eq!(first[0].id, "x0");
        assert!(first.windows(2).all(|w| w[0].seq < w[1].seq), "creation order");
        let cursor = s.agent_action("a", "x99").unwrap().unwrap().seq;
        assert_eq!(cursor, first[99].seq);
        let rest = s.pending_actions("a", cursor, now, 100).unwrap();
        assert_eq!(rest.len(), 50, "the expired action is not delivered");
        assert_eq!(s.agent_action("a", "for-b").unwrap(), None, "another agent's action");
        assert_eq!(s.agent_action("a", "nope").unwrap(), None);

        // Cancel hides an undelivered action; the cursor is stored by check-in reports and only
        // goes up.
        s.create_action(&action(
            "c",
            &["b"],
            far,
            ActionEffect::Cancel { target_id: "for-b".into() },
        ))
        .unwrap();
        let ids: Vec<String> =
            s.pending_actions("b", 0, now, 100).unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["c"]);
        // A cancel for some agents leaves the others' delivery alone.
        s.create_action(&action("both", &["a", "b"], far, ActionEffect::None)).unwrap();
        s.create_action(&action(
            "c2",
            &["b"],
            far,
            ActionEffect::Cancel { target_id: "both".into() },
        ))
        .unwrap();
        let last = |agent| s.pending_actions(agent, 0, now, 1000).unwrap().pop().unwrap().id;
        assert_eq!((last("a"), last("b")), ("both".to_owned(), "c2".to_owned()));
        let report = |cursor| CheckinUpdate {
            agent_id: "a".into(),
            at: now.into(),
            status: "online".into(),
            message: String::new(),
            version: "9.1.2".into(),
            local_metadata: None,
            components: None,
            upgrade_details: None,
            running: Some(("p".into(), 3)),
            cursor,
            access_key_id: "ka".into(),
        };
        for content in ["a", "b", "c"] {
            s.policy_revision("p", content).unwrap();
        }
        s.record_checkins(&[report(Some(cursor))]).unwrap();
        s.record_checkins(&[report(Some(1))]).unwrap();
        assert_eq!(s.action_cursor("a").unwrap(), cursor);
        assert_eq!(s.agent_policy_revision("a").unwrap(), 3);
        // A revision beyond what was issued (or beyond SQLite's integers) is clamped, and
        // never fails the batch.
        let mut wild = report(None);
        wild.running = Some(("p".into(), u64::MAX));
        s.record_checkins(&[wild]).unwrap();
        assert_eq!(s.agent_policy_revision("a").unwrap(), 3);
        let ack = |revision| PolicyAck {
            agent_id: "a".into(),
            access_key_id: "ka".into(),
            policy_id: "p".into(),
            revision,
        };
        s.record_policy_acks(&[ack(99)]).unwrap();
        assert_eq!(s.agent_policy_revision("a").unwrap(), 3);
        // An active agent is replaced only by the enrollment that checked its key.
        let not_replaceable = Enrollment::NotReplaceable;
        assert_eq!(s.enroll_agent(&agent("a", "ka2"), None).unwrap(), not_replaceable);
        assert_eq!(s.enroll_agent(&agent("a", "ka2"), Some("other")).unwrap(), not_replaceable);
        assert_eq!(s.enroll_agent(&agent("a", "ka2"), Some("ka")).unwrap(), Enrollment::Stored);
        // The replacement starts after every existing action, whatever token it shows.
        assert_eq!(s.agent_action("a", "x0").unwrap(), None);
        assert!(
            s.pending_actions("a", s.action_cursor("a").unwrap(), now, 100).unwrap().is_empty()
        );
    }

    #[test]
    fn upgrade_states_follow_details_and_versions() {
        let d = serde_json::json!({"state": "UPG_DOWNLOADING"});
        let odd = serde_json::json!({"state": 5});
        let st = |had, stored, target, version, details| {
            next_upgrade_state(had, stored, target, version, details)
        };
        assert_eq!(st(false, None, None, "9.1.2", Some(&d)).as_deref(), Some("UPG_DOWNLOADING"));
        assert_eq!(
            st(false, None, None, "9.1.2", Some(&odd)).as_deref(),
            Some("UPG_UNKNOWN"),
            "odd details never fail"
        );
        // Details stop: done if on the target, failed (rolled back) if not.
        assert_eq!(st(true, None, Some("9.2.2"), "9.2.2", None).as_deref(), Some("UPG_COMPLETED"));
        assert_eq!(st(true, None, Some("9.2.2"), "9.1.2", None).as_deref(), Some("UPG_FAILED"));
        assert_eq!(
            st(true, None, Some("9.2.2-SNAPSHOT"), "9.2.2", None).as_deref(),
            Some("UPG_COMPLETED"),
            "the User-Agent names no -SNAPSHOT"
        );
        // Agents after details stop, by target and reported version.
        for (target, version, state) in [
            ("8.14.1+build202406201002", "8.14.1+build202406201002", "UPG_COMPLETED"),
            // Build metadata is not compared: a rebuilt 8.14.1 is 8.14.1.
            ("8.14.1+build202406201002", "8.14.1", "UPG_COMPLETED"),
            ("8.14.1", "8.14.1+build202406201002", "UPG_COMPLETED"),
            ("8.14.1+build202406201002", "8.14.0+build202405010000", "UPG_FAILED"),
            ("8.14.2", "8.14.1+build202406201002", "UPG_FAILED"),
            ("9.3.0-SNAPSHOT", "9.3.0-SNAPSHOT", "UPG_COMPLETED"),
            ("9.3.0-SNAPSHOT", "9.3.1", "UPG_FAILED"),
            ("9.3.0", "9.3.0-SNAPSHOT", "UPG_COMPLETED"),
            ("9.0.0-beta1-SNAPSHOT", "9.0.0-beta1", "UPG_COMPLETED"),
            ("9.0.0-beta1", "9.0.0-beta1", "UPG_COMPLETED"),
            // A pre-release is not its release, either way.
            ("9.0.0-beta1", "9.0.0", "UPG_FAILED"),
            ("9.0.0", "9.0.0-beta1", "UPG_FAILED"),
            ("9.0.0-rc1", "9.0.0-beta1", "UPG_FAILED"),
            // Not a prefix match on text: 9.2.20 is not 9.2.2.
            ("9.2.2", "9.2.20", "UPG_FAILED"),
            // Unparsable stored strings are compared as spelled.
            ("weird", "weird", "UPG_COMPLETED"),
            ("weird", "9.2.2", "UPG_FAILED"),
        ] {
            assert_eq!(
                st(true, None, Some(target), version, None).as_deref(),
                Some(state),
                "{target} reported as {version}"
            );
        }
        // Agents before 8.12 send no details: the version tells.
        assert_eq!(
            st(false, Some(UPGRADE_REQUESTED), Some("9.2.2"), "9.2.2", None).as_deref(),
            Some("UPG_COMPLETED")
        );
        assert_eq!(
            st(false, Some(UPGRADE_REQUESTED), Some("9.2.2"), "9.1.2", None).as_deref(),
            Some(UPGRADE_REQUESTED)
        );
        assert_eq!(
            st(false, Some(UPGRADE_REQUESTED), Some("8.14.1+build202406201002"), "8.14.1", None)
                .as_deref(),
            Some("UPG_COMPLETED")
        );
        assert_eq!(
            st(false, Some(UPGRADE_REQUESTED), Some("9.3.0-SNAPSHOT"), "9.3.0", None).as_deref(),
            Some("UPG_COMPLETED")
        );
        assert_eq!(st(false, None, None, "9.1.2", None), None);
    }

    #[test]
    fn parked_agents_are_touched_and_inactive_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteState::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(s.enroll_agent(&agent("a", "ka"), None).unwrap(), Enrollment::Stored);
        assert_eq!(s.enroll_agent(&agent("b", "kb"), None).unwrap(), Enrollment::Stored);
        assert!(s.deactivate_agent("b").unwrap());
        assert!(!s.deactivate_agent("b").unwrap());
        // A revoked id is tombstoned: it never enrolls again, even as the agent it replaces.
        assert!(s.revoked_at("b").unwrap().is_some() && s.revoked_at("a").unwrap().is_none());
        assert_eq!(s.enroll_agent(&agent("b", "kb2"), None).unwrap(), Enrollment::Revoked);
        assert_eq!(s.enroll_agent(&agent("b", "kb2"), Some("kb")).unwrap(), Enrollment::Revoked);
        // An agent unenrolled by its acknowledged UNENROLL is not: Fleet Server deletes an
        // inactive agent's record when its id enrolls again, and so does the appliance.
        assert_eq!(s.enroll_agent(&agent("c", "kc"), None).unwrap(), Enrollment::Stored);
        s.record_action_results("c", &[], true).unwrap();
        assert_eq!(s.enroll_agent(&agent("c", "kc2"), None).unwrap(), Enrollment::Stored);
        s.touch_agents(&["a".into(), "b".into()], "2026-06-01T00:00:00Z").unwrap();
        let views = s.agent_views(None).unwrap();
        assert_eq!(views[0].last_checkin.as_deref(), Some("2026-06-01T00:00:00Z"));
        assert_eq!(views[1].last_checkin, None);
        assert!(views[1].unenrolled_at.is_some());
    }
}
