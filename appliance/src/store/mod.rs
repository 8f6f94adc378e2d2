//! The store boundary: [`Store`], the durable state the appliance keeps, its records and its
//! typed [`StoreError`]; [`open`] picks the backend: `store/sqlite/` (one file,
//! `DATA/state.db`, one appliance) or `store/postgres/` (a server database several appliances
//! behind one load balancer share), each a folder implementing the same traits and passing the
//! same `conformance` suite, with the same tables and columns.
//!
//! # What is kept
//!
//! Grouped as the traits are (each group is one file of a backend):
//!
//! - **Releases** ([`ReleaseStore`]): `releases`, one row per imported release (the summary of
//!   its verified manifest: name, sequence, created, expires, key, entry count, payload bytes,
//!   manifest digest, import time); `floors`, per bundle name the highest sequence ever
//!   accepted; `active`, the one row naming the active release.
//! - **Enrollment tokens** ([`TokenStore`]): `enrollment_tokens`, the key id, the SHA-256 of the
//!   secret (never the secret), the policy it enrolls into, an optional name, whether revoked.
//! - **Agents** ([`AgentStore`]): `agents`, one row per agent id (its access key id and secret's
//!   SHA-256, policy, kind, tags, metadata, the last check-in report, the upgrade fields, the
//!   unenrollment and audit annotations, the cluster instance whose check-in wrote it last,
//!   plus the cursors of the other groups: the policy revision it runs and its action cursor);
//!   `revoked_agents`, the ids an operator revoked.
//! - **Policies** ([`PolicyStore`]): `policy_revisions`, per policy the appliance's revisions,
//!   each with the SHA-256 of the content delivered under it.
//! - **Actions** ([`ActionStore`]): `actions`, in creation order (`seq`, which `ack_token`s
//!   resolve to); `action_targets`, which agents each action is for and whether it was
//!   cancelled for them; `action_results`, what agents acknowledged.
//! - **Output keys** ([`OutputKeyStore`]): `output_keys`, each agent's API keys on the site's
//!   Elasticsearch, one row per key from the intent to create it to its invalidation (the
//!   key's secret is kept: agents need it in every policy they are sent).
//! - **Uploads** ([`UploadStore`]): `uploads`, the diagnostics uploads agents made;
//!   `upload_chunks`, the chunks of an open one (their bytes are files, see
//!   `fleet::uploads`).
//! - **Secrets** ([`SecretStore`]): `secrets`, the values the operator set for the Fleet
//!   secrets policies name, each sealed by `crate::secrets` (with a key kept outside the
//!   store), and when it was set.
//!
//! Times are RFC 3339 text in UTC to the second, given by the caller (`crate::clock`), so that a
//! backend compares times by comparing text and a test can choose them.
//!
//! # Invariants every backend keeps (the `conformance` suite states them as tests)
//!
//! - Every method is one transaction: all of its writes happen, or none.
//! - The active pointer always names a stored release: only a stored release is activated, and
//!   the active one cannot be forgotten. A new release is recorded, made active and its floor
//!   raised in one transaction.
//! - A floor never goes down: not by a rollback, not by an import under `--allow-downgrade`.
//! - An enrollment is decided and written in one transaction: a revoked id never enrolls, an
//!   active agent is replaced only by the caller that proved it holds the access key named in
//!   `replacing`, and the new agent starts after every existing action. Replacing an agent
//!   replaces its credential: the old access key finds nothing any more.
//! - An agent's action cursor and the policy revision it runs never go back, and a revision
//!   is never above what the appliance issued for the agent's current policy.
//! - A policy's revision only goes up: new content (also older content again) is a new one.
//! - Actions are returned in creation order, after the agent's cursor and its enrollment,
//!   unexpired and not cancelled for it, at most as many as asked.
//! - A check-in report is written only if the agent still holds the access key it came with.
//! - An upload is `AWAITING_UPLOAD` until it is finished as `READY` (with its SHA-256) or
//!   `UPLOAD_ERROR`, which forgets its chunks; uploads left open too long are closed as
//!   `UPLOAD_ERROR`, all in one transaction.
//! - Only hashes of agents' and tokens' secrets are stored.
//! - An agent has at most one output key being created per output. Deactivating an agent
//!   (unenrollment, revocation) or replacing it by a new enrollment marks all its output keys
//!   for invalidation in the same transaction; a key finished after that stays marked.
//! - Secret values are stored only sealed: a backend keeps the bytes it is given and never sees
//!   a value.
//!
//! # Sync, on blocking threads
//!
//! The traits are synchronous and called from blocking threads (`app::with_db`), as the
//! release commands call them from plain threads. An async trait would buy nothing here: a
//! parked check-in does no database work (check-in reports are written in batches, one
//! transaction per batch), so the calls that remain are few and short, and the import,
//! rollback and status commands have no runtime. A backend speaking to a server uses a
//! blocking client on the same threads.

mod cluster;
pub(crate) mod postgres;
pub(crate) mod sqlite;

#[cfg(test)]
mod conformance;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub(crate) use cluster::{
    Beat, ClusterImport, ClusterStore, Holding, Instance, LIVE_SECONDS, channel,
};

/// What every store method returns.
pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store as the server shares it between the agent API, the admin API, the check-in writer
/// and the release watcher: one handle, one caller at a time, used from blocking threads. SQLite
/// writes one transaction at a time anyway, and a caller that needs several calls to see each
/// other (begin an upload: expire, check, create) holds the lock across them.
pub(crate) type Db = Arc<Mutex<Box<dyn Store>>>;

/// Where the store is (`Config::store_location`).
#[derive(Debug, Clone)]
pub(crate) enum Location {
    /// SQLite, in this data directory.
    Sqlite(PathBuf),
    /// A PostgreSQL database several instances share.
    Postgres(postgres::Settings),
}

/// The store at `location`, created if there is none, migrated to the schema this binary
/// writes.
pub(crate) fn open(location: &Location) -> Result<Box<dyn Store>> {
    Ok(match location {
        Location::Sqlite(data_dir) => {
            Box::new(sqlite::SqliteStore::open(&data_dir.join(sqlite::FILE))?)
        }
        Location::Postgres(settings) => Box::new(postgres::PostgresStore::connect(settings)?),
    })
}

/// Copies the SQLite database `sqlite` (a single appliance's state) into the empty store at
/// `to`, a server database; returns the rows copied by table. See `postgres::copy`.
pub(crate) fn copy_sqlite(sqlite: &Path, to: &Location) -> anyhow::Result<Vec<(String, u64)>> {
    match to {
        Location::Postgres(settings) => postgres::copy::sqlite_to_postgres(
            sqlite,
            &mut postgres::PostgresStore::connect(settings)?,
        ),
        Location::Sqlite(_) => anyhow::bail!("state is copied into a server database, not SQLite"),
    }
}

/// A cluster's store: `None` for a single appliance's.
pub(crate) fn open_cluster(location: &Location) -> Result<Option<Box<dyn ClusterStore>>> {
    Ok(match location {
        Location::Sqlite(_) => None,
        Location::Postgres(settings) => Some(Box::new(postgres::PostgresStore::connect(settings)?)),
    })
}

/// [`open`], but `None` where no store was ever created (`status` of a fresh data directory
/// creates nothing).
pub(crate) fn open_existing(location: &Location) -> Result<Option<Box<dyn Store>>> {
    if let Location::Sqlite(data_dir) = location
        && !data_dir.join(sqlite::FILE).exists()
    {
        return Ok(None);
    }
    open(location).map(Some)
}

/// Refuses a cluster instance name that could not be shown plainly or be a label: 1 to 63
/// letters, digits, `-`, `_` and `.`.
pub(crate) fn check_instance_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=63).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "instance name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.'"
    );
    Ok(())
}

/// Why a store operation failed, in the terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// A record with this key is stored already (an id used twice); nothing was written.
    #[error("{what} {key} exists already")]
    Conflict { what: &'static str, key: String },
    /// The record the operation needs is not stored.
    #[error("no {what} {key} is stored")]
    NotFound { what: &'static str, key: String },
    /// Forgetting the active release would leave the active pointer naming nothing.
    #[error("release {name} {sequence} is active and cannot be removed")]
    ActiveRelease { name: String, sequence: u64 },
    /// A number larger than every backend stores (their integers are signed 64-bit).
    #[error("{what} {value} is larger than this appliance stores (2^63 - 1)")]
    OutOfRange { what: &'static str, value: u64 },
    /// The store was written by a newer release, whose schema this binary does not know; it is
    /// left untouched.
    #[error(
        "the state database has schema version {found}, newer than {known}, the newest this \
         ferry-appliance knows: it was written by a newer release; run that release, or restore \
         the backup taken before upgrading"
    )]
    NewerSchema { found: i64, known: i64 },
    /// Stored data this code never writes (a negative count, an unknown upload status, a
    /// damaged file).
    #[error("the state database holds what this appliance never writes: {0}")]
    Corrupt(String),
    /// The database server cannot be reached now (down, restarting, out of connections): the
    /// caller may try again; nothing was written.
    #[error("the state database is unavailable: {0}")]
    Unavailable(String),
    /// Anything else the backend reports: I/O, a lock held too long, the database server.
    #[error("state database: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// Every operation the appliance needs from durable state, by group. Object-safe: callers hold
/// a `Box<dyn Store>` (see [`Db`]).
pub(crate) trait Store:
    ReleaseStore
    + TokenStore
    + AgentStore
    + PolicyStore
    + ActionStore
    + UploadStore
    + OutputKeyStore
    + SecretStore
    + Send
{
}

impl<T> Store for T where
    T: ReleaseStore
        + TokenStore
        + AgentStore
        + PolicyStore
        + ActionStore
        + UploadStore
        + OutputKeyStore
        + SecretStore
        + Send
{
}

/// Releases, the active pointer and the floors (`release::DataDir`, the release watcher).
pub(crate) trait ReleaseStore {
    /// The highest sequence ever accepted for `name`.
    fn floor(&self, name: &str) -> Result<Option<u64>>;
    /// Records `release`, makes it active and raises its floor to its sequence (never lowers
    /// it), in one transaction. The crash tests stop an import around its commit: a backend
    /// calls `crate::crash_point("before-commit")` and `crash_point("after-commit")` there.
    fn activate_new(&mut self, release: &ReleaseRecord) -> Result<()>;
    /// Makes a stored release active again (a rollback); floors are untouched.
    /// [`StoreError::NotFound`] when it is not stored.
    fn activate(&mut self, name: &str, sequence: u64) -> Result<()>;
    /// The active release's name and sequence.
    fn active(&self) -> Result<Option<(String, u64)>>;
    /// Every stored release, oldest import first.
    fn releases(&self) -> Result<Vec<ReleaseRecord>>;
    /// Forgets a release; [`StoreError::ActiveRelease`] when it is the active one.
    fn forget(&mut self, name: &str, sequence: u64) -> Result<()>;
}

/// Enrollment tokens (the admin API creates and revokes them, enrollment checks them).
pub(crate) trait TokenStore {
    /// Stores a new token; [`StoreError::Conflict`] when its id is taken.
    fn create_enrollment_token(&mut self, token: &NewEnrollmentToken) -> Result<()>;
    /// Every token, oldest first.
    fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>>;
    /// Revokes a token; false when there is no token with that id.
    fn revoke_enrollment_token(&mut self, id: &str) -> Result<bool>;
    /// What checks a presented token: its secret's hash and policy, if `id` is a token not
    /// revoked. The caller checks the presented secret against the hash.
    fn enrollment_secret(&self, id: &str) -> Result<Option<TokenSecret>>;
    /// The ids of every credential that may authenticate: active agents' access keys and
    /// enrollment tokens not revoked.
    fn credential_ids(&self) -> Result<Vec<String>>;
}

/// Agents: enrollment, authentication, check-in reports, revocation, the admin's views.
pub(crate) trait AgentStore {
    /// Stores a newly enrolled agent, in one transaction with the check that decides it may:
    /// the id was never revoked ([`Enrollment::Revoked`]), and no agent has it, or an inactive
    /// one, or (when `replacing` names its access key) the very agent whose replace token the
    /// caller checked ([`Enrollment::NotReplaceable`] otherwise, and nothing changes). The
    /// agent starts after every existing action, with none of its policy's revisions.
    fn enroll_agent(&mut self, agent: &AgentRecord, replacing: Option<&str>) -> Result<Enrollment>;
    /// When the operator revoked agent `id` (`unenroll --revoke`), if ever: a revoked id never
    /// enrolls again, whatever token comes with it.
    fn revoked_at(&self, id: &str) -> Result<Option<String>>;
    fn agent(&self, id: &str) -> Result<Option<AgentRecord>>;
    /// What authenticates a request made with access key `key_id`: every agent request
    /// reads it, so it carries none of the agent's reports.
    fn agent_by_access_key(&self, key_id: &str) -> Result<Option<AgentKey>>;
    /// Writes a batch of check-in reports in one transaction. A report is dropped when its
    /// agent is gone or holds another access key now. Each agent's upgrade fields become what
    /// `upgrade` (Fleet's rule, `crate::fleet::upgrade`) makes of the stored ones and the report.
    fn record_checkins(
        &mut self,
        updates: &[CheckinUpdate],
        upgrade: &UpgradeRule<'_>,
    ) -> Result<()>;
    /// Marks active agents whose check-ins are parked as seen at `at`, in one transaction.
    fn touch_agents(&mut self, ids: &[String], at: &str) -> Result<()>;
    /// Revokes an active agent at `at`: its key stops working and its id is tombstoned (see
    /// [`AgentStore::revoked_at`]); false when unknown or inactive.
    fn deactivate_agent(&mut self, id: &str, at: &str) -> Result<bool>;
    /// Annotates an agent as unenrolled by itself (`audit/unenroll`), until its next check-in
    /// report, unless its stored reason is `final_reason` already ([`AuditOutcome::Conflict`]).
    fn audit_unenroll(
        &mut self,
        id: &str,
        reason: &str,
        at: &str,
        final_reason: &str,
    ) -> Result<AuditOutcome>;
    /// One agent as the admin sees it.
    fn agent_view(&self, id: &str) -> Result<Option<AgentView>>;
    /// A page of agents as the admin sees them (see [`AgentPage`]); [`StoreError::NotFound`]
    /// when `after` is not among the agents the page lists.
    fn agent_views(&self, page: &AgentPage) -> Result<Vec<AgentView>>;
    /// The ids of the active agents in a policy.
    fn agents_in_policy(&self, policy_id: &str) -> Result<Vec<String>>;
}

/// Agents' API keys on the site's Elasticsearch, one per agent and output (`crate::elastic`).
/// A key's life: `creating` (recorded before Elasticsearch is asked, so a crash leaves a trace
/// to reconcile) → `active` (delivered in the agent's policy) → `retiring` (replaced or its
/// output removed; invalidated once the agent acknowledges the policy revision `retire_at`)
/// → `invalidating` (to be invalidated now) → forgotten.
pub(crate) trait OutputKeyStore {
    /// Every key row of agent `agent_id`, oldest first.
    fn output_keys(&self, agent_id: &str) -> Result<Vec<OutputKeyRecord>>;
    /// Every key row in one of `states`, oldest first.
    fn output_keys_in(&self, states: &[KeyState]) -> Result<Vec<OutputKeyRecord>>;
    /// Records the intent to create agent `agent_id`'s key for `output` (`intent`: a unique
    /// mark the key's metadata carries, by which a creation whose answer was lost is found),
    /// in one transaction with retiring its active key for that output at `retire_at` (the
    /// policy and revision that bring the new key); returns the row. [`StoreError::NotFound`]
    /// when the agent is not active, [`StoreError::Conflict`] when a creation is recorded
    /// already (it must be reconciled first).
    fn begin_output_key(
        &mut self,
        agent_id: &str,
        output: &str,
        permissions_sha256: &str,
        intent: &str,
        retire_at: (&str, u64),
        at: &str,
    ) -> Result<i64>;
    /// The key of a `creating` row exists: it becomes `active`. False when the row was dropped
    /// meanwhile (the agent was unenrolled): the key id is kept on it, to be invalidated.
    fn finish_output_key(&mut self, row: i64, key_id: &str, api_key: &str) -> Result<bool>;
    /// Retires agent `agent_id`'s active keys of outputs not in `keep`, at `retire_at` (the
    /// policy and revision that no longer use them); returns how many.
    fn retire_output_keys(
        &mut self,
        agent_id: &str,
        keep: &[String],
        retire_at: (&str, u64),
    ) -> Result<usize>;
    /// Marks rows for invalidation now.
    fn drop_output_keys(&mut self, rows: &[i64]) -> Result<()>;
    /// Forgets a row whose key is invalidated (or was never made).
    fn forget_output_key(&mut self, row: i64) -> Result<()>;
}

/// One row of [`OutputKeyStore`]. `api_key` is the key's secret: never logged, never shown.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct OutputKeyRecord {
    pub row: i64,
    pub agent_id: String,
    pub output: String,
    pub key_id: Option<String>,
    pub api_key: Option<String>,
    pub permissions_sha256: String,
    pub state: KeyState,
    pub retire_at: Option<u64>,
    /// The policy whose revision `retire_at` counts in (revisions are per policy).
    pub retire_policy: Option<String>,
    pub created_at: String,
    /// The mark in the key's metadata (`ferry_intent`) that finds it after a lost answer.
    pub intent: String,
}

impl std::fmt::Debug for OutputKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputKeyRecord")
            .field("row", &self.row)
            .field("agent_id", &self.agent_id)
            .field("output", &self.output)
            .field("key_id", &self.key_id)
            .field("state", &self.state)
            .field("retire_at", &self.retire_at)
            .finish_non_exhaustive()
    }
}

impl OutputKeyRecord {
    /// Whether this retiring key is done with once its agent runs `revision` of `policy`: a
    /// revision at or past the one it retired at, or any revision of another policy (the agent
    /// was moved; Fleet Server invalidates retired keys on any newer revision acknowledged,
    /// fleet-server internal/pkg/api/handleAck.go handlePolicyChange).
    pub(crate) fn retired_by(&self, policy: &str, revision: u64) -> bool {
        self.state == KeyState::Retiring
            && match (&self.retire_policy, self.retire_at) {
                (Some(p), Some(at)) => p != policy || at <= revision,
                _ => true,
            }
    }
}

/// Where an output key is in its life (see [`OutputKeyStore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyState {
    Creating,
    Active,
    Retiring,
    Invalidating,
}

impl KeyState {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "creating" => Self::Creating,
            "active" => Self::Active,
            "retiring" => Self::Retiring,
            "invalidating" => Self::Invalidating,
            _ => return None,
        })
    }
}

/// Policy revisions and the revision each agent runs.
pub(crate) trait PolicyStore {
    /// The appliance revision of a policy's content: the latest one if the content is
    /// unchanged, else a new one above every earlier revision, created `now` (so rolling back
    /// to older content is a new revision too). Returns (revision, created).
    fn policy_revision(
        &mut self,
        policy_id: &str,
        content_sha256: &str,
        now: &str,
    ) -> Result<(u64, String)>;
    /// The revision the agent runs (raised by policy acks and check-in reports, never lowered).
    fn agent_policy_revision(&self, id: &str) -> Result<u64>;
    /// Records acknowledged policy revisions in one transaction; a revision is raised only
    /// while the agent holds that key and is still in that policy, never lowered, and never
    /// above the policy's latest revision.
    fn record_policy_acks(&mut self, acks: &[PolicyAck]) -> Result<()>;
}

/// Actions: queueing with their effects, delivery, acknowledgements.
pub(crate) trait ActionStore {
    /// Queues an action and applies its effect, in one transaction; returns its sequence.
    /// [`StoreError::Conflict`] when its id is taken.
    fn create_action(&mut self, action: &NewAction) -> Result<i64>;
    /// An action, by id.
    fn action(&self, id: &str) -> Result<Option<ActionRecord>>;
    /// Up to `limit` actions for the agent after `after` (and after its enrollment), unexpired
    /// at `now`, not cancelled for it, in creation order.
    fn pending_actions(
        &self,
        agent_id: &str,
        after: i64,
        now: &str,
        limit: usize,
    ) -> Result<Vec<ActionRecord>>;
    /// An action for this agent (queued since it enrolled), by id; also resolves `ack_token`s.
    fn agent_action(&self, agent_id: &str, action_id: &str) -> Result<Option<ActionRecord>>;
    /// The stored action cursor of an agent (raised by check-in reports, never lowered).
    fn action_cursor(&self, agent_id: &str) -> Result<i64>;
    /// Records acknowledgements at `at`; when `unenroll`, the agent is deactivated in the same
    /// transaction (without a tombstone: it may enroll again).
    fn record_action_results(
        &mut self,
        agent_id: &str,
        results: &[ActionResult],
        unenroll: bool,
        at: &str,
    ) -> Result<()>;
    /// Every agent an action is for, with its acknowledgement, by agent id; empty when there
    /// is no such action.
    fn action_targets(&self, action_id: &str) -> Result<Vec<ActionTarget>>;
    /// The last `limit` actions of type `kind` (`UPGRADE` …), newest first (the dashboard's
    /// upgrade progress).
    fn recent_actions(&self, kind: &str, limit: usize) -> Result<Vec<ActionRecord>>;
}

/// Diagnostics uploads and their chunks.
pub(crate) trait UploadStore {
    /// Stores a new upload; [`StoreError::Conflict`] when its id is taken.
    fn create_upload(&mut self, upload: &UploadRecord) -> Result<()>;
    fn upload(&self, id: &str) -> Result<Option<UploadRecord>>;
    /// Every upload, oldest first.
    fn uploads(&self) -> Result<Vec<UploadRecord>>;
    /// The latest upload an agent made for an action.
    fn upload_for_action(&self, action_id: &str, agent_id: &str) -> Result<Option<UploadRecord>>;
    /// Closes as `UPLOAD_ERROR` at `at`, in one transaction, every upload still open that began
    /// before `before`, returning them as they were (their files are the caller's to remove).
    fn expire_uploads(&mut self, before: &str, at: &str) -> Result<Vec<UploadRecord>>;
    /// Records a chunk (again: the newer one counts).
    fn put_chunk(&mut self, upload_id: &str, chunk: &ChunkRecord) -> Result<()>;
    /// An upload's chunks, by number.
    fn chunks(&self, upload_id: &str) -> Result<Vec<ChunkRecord>>;
    /// Closes an upload at `at` as `status` (`sha256` is the file's, for `READY`) and forgets
    /// its chunks.
    fn finish_upload(
        &mut self,
        id: &str,
        status: UploadStatus,
        sha256: Option<&str>,
        at: &str,
    ) -> Result<()>;
}

/// The on-site secrets' sealed values (the admin API sets and removes them; `serve` reads them
/// all at start).
pub(crate) trait SecretStore {
    /// Stores `sealed` as secret `id`'s value, set at `at`, replacing the one stored.
    fn put_secret(&mut self, id: &str, sealed: &[u8], at: &str) -> Result<()>;
    /// Every secret, by id.
    fn secret_records(&self) -> Result<Vec<SecretRecord>>;
    /// Forgets secret `id`; false when there was none.
    fn remove_secret(&mut self, id: &str) -> Result<bool>;
}

/// One imported release, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ReleaseRecord {
    pub(crate) name: String,
    pub(crate) sequence: u64,
    pub(crate) created: String,
    pub(crate) expires: String,
    pub(crate) key_id: String,
    pub(crate) entries: u64,
    pub(crate) payload_bytes: u64,
    pub(crate) manifest_sha256: String,
    pub(crate) imported_at: String,
}

/// A new enrollment token: its key id and the SHA-256 of its secret, never the secret.
#[derive(Debug, Clone)]
pub(crate) struct NewEnrollmentToken {
    pub(crate) id: String,
    /// Hex.
    pub(crate) secret_sha256: String,
    pub(crate) policy_id: String,
    pub(crate) name: Option<String>,
    pub(crate) created: String,
}

/// An enrollment token as the admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct EnrollmentToken {
    pub(crate) id: String,
    pub(crate) policy_id: String,
    pub(crate) name: Option<String>,
    pub(crate) created: String,
    pub(crate) revoked: bool,
}

/// What checks a presented enrollment token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenSecret {
    /// Hex.
    pub(crate) secret_sha256: String,
    pub(crate) policy_id: String,
}

/// An enrolled agent as stored. The access key's secret is kept only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentRecord {
    pub(crate) id: String,
    pub(crate) access_key_id: String,
    /// Hex.
    pub(crate) access_secret_sha256: String,
    pub(crate) policy_id: String,
    pub(crate) kind: String,
    pub(crate) enrolled_at: String,
    pub(crate) active: bool,
    pub(crate) version: String,
    /// JSON object.
    pub(crate) local_metadata: String,
    /// JSON array of strings.
    pub(crate) tags: String,
    /// The PBKDF2 hash of the agent's replace token, if it gave one.
    pub(crate) replace_token: Option<String>,
}

/// The part of an [`AgentRecord`] that authenticates its requests.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentKey {
    pub(crate) id: String,
    pub(crate) access_key_id: String,
    /// Hex.
    pub(crate) access_secret_sha256: String,
    pub(crate) policy_id: String,
    pub(crate) active: bool,
}

impl From<&AgentRecord> for AgentKey {
    fn from(a: &AgentRecord) -> Self {
        Self {
            id: a.id.clone(),
            access_key_id: a.access_key_id.clone(),
            access_secret_sha256: a.access_secret_sha256.clone(),
            policy_id: a.policy_id.clone(),
            active: a.active,
        }
    }
}

/// What [`AgentStore::enroll_agent`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enrollment {
    Stored,
    /// An active agent has the id and the caller did not prove it may replace that one.
    NotReplaceable,
    /// The operator revoked the id (a tombstone).
    Revoked,
}

/// What [`AgentStore::audit_unenroll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuditOutcome {
    Recorded,
    /// The agent's stored reason is final already.
    Conflict,
}

/// What one check-in reported, written later in a batch with others.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CheckinUpdate {
    pub(crate) agent_id: String,
    /// The key the check-in came with: a report of an agent since re-enrolled is dropped.
    pub(crate) access_key_id: String,
    pub(crate) at: String,
    pub(crate) status: String,
    pub(crate) message: String,
    /// From the User-Agent.
    pub(crate) version: String,
    /// JSON, when the agent sent it.
    pub(crate) local_metadata: Option<String>,
    /// JSON, when the agent sent it.
    pub(crate) components: Option<String>,
    /// JSON; absent while no upgrade is in flight.
    pub(crate) upgrade_details: Option<String>,
    /// `(policy_id, revision)` the agent says it runs (agents >= 9.2).
    pub(crate) running: Option<(String, u64)>,
    /// The action cursor the agent's `ack_token` resolved to.
    pub(crate) cursor: Option<i64>,
}

/// An agent's upgrade fields as stored before a check-in report is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredUpgrade {
    /// Whether upgrade details from an earlier report are stored.
    pub(crate) details: bool,
    pub(crate) state: Option<String>,
    pub(crate) target: Option<String>,
}

/// What a check-in report makes of an agent's upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpgradeStep {
    /// The upgrade state stored from now on.
    pub(crate) state: Option<String>,
    /// The upgrade completes with this report: its time is stored as `upgraded_at`.
    pub(crate) completed: bool,
}

/// The rule [`AgentStore::record_checkins`] applies to each report inside its transaction:
/// Fleet's (`crate::fleet::upgrade::after_checkin`), handed in so the store keeps no Fleet semantics.
pub(crate) type UpgradeRule<'a> = dyn Fn(&StoredUpgrade, &CheckinUpdate) -> UpgradeStep + 'a;

/// Which agents [`AgentStore::agent_views`] lists: in enrollment order (`enrolled_at`, then
/// id), those in `policy` if given, starting after agent `after` (the last of the previous
/// page), at most `limit` (all when `None`).
#[derive(Debug, Clone, Default)]
pub(crate) struct AgentPage {
    pub(crate) policy: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) limit: Option<usize>,
    /// For counting: what each agent sent as JSON (tags, local metadata, components, upgrade
    /// details) is not parsed and reads as null, and `hostname` as empty. Parsing it for every
    /// agent cost `status` and the metrics scrape about 10 KiB of resident memory per agent at
    /// 10 000 (docs/benchmarks.md).
    pub(crate) summary: bool,
}

impl AgentPage {
    /// Every agent, for counting.
    pub(crate) fn summary() -> Self {
        Self { summary: true, ..Self::default() }
    }
}

/// An agent as the admin sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct AgentView {
    pub(crate) id: String,
    pub(crate) active: bool,
    pub(crate) policy_id: String,
    pub(crate) policy_revision: u64,
    pub(crate) version: String,
    pub(crate) hostname: String,
    pub(crate) enrolled_at: String,
    pub(crate) last_checkin: Option<String>,
    pub(crate) last_status: Option<String>,
    pub(crate) last_message: Option<String>,
    pub(crate) tags: serde_json::Value,
    pub(crate) local_metadata: serde_json::Value,
    pub(crate) components: serde_json::Value,
    pub(crate) upgrade_state: Option<String>,
    pub(crate) upgrade_target: Option<String>,
    pub(crate) upgrade_details: serde_json::Value,
    pub(crate) upgraded_at: Option<String>,
    pub(crate) unenrolled_at: Option<String>,
    pub(crate) audit_unenroll_reason: Option<String>,
    /// The cluster instance whose check-in wrote the agent's row last (`None` with SQLite,
    /// which one appliance writes alone).
    pub(crate) instance: Option<String>,
}

/// An acknowledged policy revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyAck {
    pub(crate) agent_id: String,
    pub(crate) access_key_id: String,
    pub(crate) policy_id: String,
    pub(crate) revision: u64,
}

/// An action as stored. `seq` orders actions and is what an `ack_token` resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActionRecord {
    pub(crate) seq: i64,
    pub(crate) id: String,
    pub(crate) kind: String,
    /// JSON, or `None` for actions without data (UNENROLL).
    pub(crate) data: Option<String>,
    pub(crate) created_at: String,
    pub(crate) start_time: Option<String>,
    pub(crate) expiration: String,
}

/// A new action for some agents.
#[derive(Debug, Clone)]
pub(crate) struct NewAction {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) data: Option<String>,
    pub(crate) created_at: String,
    pub(crate) start_time: Option<String>,
    pub(crate) expiration: String,
    pub(crate) agents: Vec<String>,
    pub(crate) effect: ActionEffect,
}

/// What creating an action changes besides queueing it, in the same transaction, for each of
/// its agents. The upgrade states written are the caller's (`crate::fleet::upgrade`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ActionEffect {
    None,
    /// The agents now belong to this policy and run none of its revisions yet.
    Reassign {
        policy_id: String,
    },
    /// The agents' upgrade is now `state` towards `version`.
    Upgrade {
        version: String,
        state: String,
    },
    /// The target action is no longer delivered to the agents that have not received it. With
    /// `upgrade_state` (the target was an upgrade), agents with an upgrade target take that
    /// state and lose their target and upgrade details.
    Cancel {
        target_id: String,
        upgrade_state: Option<String>,
    },
}

/// One acknowledged action, as an agent reported it.
#[derive(Debug, Clone)]
pub(crate) struct ActionResult {
    pub(crate) action_id: String,
    pub(crate) error: Option<String>,
    /// JSON.
    pub(crate) data: Option<String>,
}

/// An agent an action is for, and its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActionTarget {
    pub(crate) agent_id: String,
    /// `None` while not acknowledged; then the error the agent reported, if any.
    pub(crate) ack: Option<Option<String>>,
    /// A CANCEL of this action named this agent: it is no longer delivered to it.
    pub(crate) cancelled: bool,
}

/// Where an upload is in its life, under Fleet's names (which are also what is stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) enum UploadStatus {
    #[serde(rename = "AWAITING_UPLOAD")]
    Awaiting,
    #[serde(rename = "READY")]
    Ready,
    #[serde(rename = "UPLOAD_ERROR")]
    Failed,
}

impl UploadStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Awaiting => "AWAITING_UPLOAD",
            Self::Ready => "READY",
            Self::Failed => "UPLOAD_ERROR",
        }
    }

    /// The status stored as `text`, if it is one.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        [Self::Awaiting, Self::Ready, Self::Failed].into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for UploadStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chunked upload (diagnostics bundles).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct UploadRecord {
    pub(crate) id: String,
    pub(crate) action_id: String,
    pub(crate) agent_id: String,
    pub(crate) name: String,
    pub(crate) mime_type: String,
    pub(crate) size: u64,
    pub(crate) chunk_size: u64,
    pub(crate) status: UploadStatus,
    pub(crate) created: String,
    pub(crate) completed: Option<String>,
    /// SHA-256 of the whole file, once complete.
    pub(crate) sha256: Option<String>,
}

/// One stored chunk of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkRecord {
    pub(crate) num: u64,
    pub(crate) size: u64,
    pub(crate) sha256: String,
}

/// An on-site secret as stored: its value only sealed (`crate::secrets::SecretBox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretRecord {
    /// The Fleet secret id policies name it by.
    pub(crate) id: String,
    /// `nonce ‖ ciphertext ‖ tag`, opened only with the appliance's secrets key.
    pub(crate) sealed: Vec<u8>,
    pub(crate) set_at: String,
}
