//! The PostgreSQL schema as versioned migrations, applied in order when a store connects.
//!
//! As in SQLite (`store/sqlite/migrations.rs`), the version is kept in a table,
//! `schema_version`, one row per applied migration (its number, when, by which
//! ferry-appliance). Migration 1 is SQLite's schema with every SQLite migration applied: the
//! same tables, columns, keys and indexes under the same names, so that `store copy` moves a
//! single appliance's state into PostgreSQL table by table, column by column. Migrations are
//! only ever appended; a released one is never edited.
//!
//! Several instances may start at once against one database: `migrate` runs in one
//! transaction that first takes an advisory lock ([`MIGRATION_LOCK`]), so the first migrates
//! and the others, waiting on the lock, then find the schema current.
//!
//! # Types
//!
//! - Integers are `bigint` (SQLite's are signed 64-bit), also the flags SQLite keeps as
//!   `INTEGER` 0 or 1 (`active`, `revoked`, `cancelled`): every value copies as it is.
//! - Blobs are `bytea`.
//! - SQLite's `INTEGER PRIMARY KEY AUTOINCREMENT` columns (`actions.seq`, `output_keys.row`) are
//!   `bigint GENERATED ALWAYS AS IDENTITY`: never reused, never written by hand (a copy inserts
//!   them `OVERRIDING SYSTEM VALUE` and restarts the identity after the highest).
//! - Text is `text COLLATE "C"`: it compares and sorts bytewise, as SQLite's `BINARY` does,
//!   whatever locale the database was created with. The store relies on it: times are RFC 3339
//!   text compared as text, and lists are in id order (secrets "by id, bytewise").
//! - The foreign keys SQLite declares (and does not enforce) are declared here, and enforced:
//!   the active pointer names a stored release, a target names a stored action.

use postgres::GenericClient;

use crate::store::{Result, StoreError};

/// Migration n is `MIGRATIONS[n - 1]`: 1 is the state every backend keeps, 2 the tables of a
/// cluster (`store::ClusterStore`), which SQLite has no use for.
const MIGRATIONS: &[&str] = &[V1, super::cluster::SCHEMA];

/// The schema version this binary writes.
pub(super) const LATEST: i64 = MIGRATIONS.len() as i64;

/// The advisory lock every migration holds (`pg_advisory_xact_lock`, released at commit or
/// rollback): "ferrymig". Advisory locks are per database, so other databases on the same
/// server are not held up.
pub(super) const MIGRATION_LOCK: i64 = i64::from_be_bytes(*b"ferrymig");

/// SQLite's schema at its version 5: releases, floors and the active pointer; enrollment
/// tokens; agents (with the instance that wrote each one's check-in last) and revoked ids;
/// actions, their targets and results; uploads and their chunks; policy revisions; output
/// keys; sealed secrets.
const V1: &str = r#"
CREATE TABLE releases (
    name text COLLATE "C" NOT NULL,
    sequence bigint NOT NULL,
    created text COLLATE "C" NOT NULL,
    expires text COLLATE "C" NOT NULL,
    key_id text COLLATE "C" NOT NULL,
    entries bigint NOT NULL,
    payload_bytes bigint NOT NULL,
    manifest_sha256 text COLLATE "C" NOT NULL,
    imported_at text COLLATE "C" NOT NULL,
    PRIMARY KEY (name, sequence)
);
CREATE TABLE floors (
    name text COLLATE "C" PRIMARY KEY,
    sequence bigint NOT NULL
);
CREATE TABLE enrollment_tokens (
    id text COLLATE "C" PRIMARY KEY,
    secret_sha256 text COLLATE "C" NOT NULL,
    policy_id text COLLATE "C" NOT NULL,
    name text COLLATE "C",
    created text COLLATE "C" NOT NULL,
    revoked bigint NOT NULL DEFAULT 0
);
CREATE TABLE agents (
    id text COLLATE "C" PRIMARY KEY,
    access_key_id text COLLATE "C" NOT NULL UNIQUE,
    access_secret_sha256 text COLLATE "C" NOT NULL,
    policy_id text COLLATE "C" NOT NULL,
    kind text COLLATE "C" NOT NULL,
    enrolled_at text COLLATE "C" NOT NULL,
    active bigint NOT NULL,
    version text COLLATE "C" NOT NULL,
    local_metadata text COLLATE "C" NOT NULL,
    tags text COLLATE "C" NOT NULL,
    policy_revision bigint NOT NULL DEFAULT 0,
    replace_token text COLLATE "C",
    action_seq bigint NOT NULL DEFAULT 0,
    enroll_seq bigint NOT NULL DEFAULT 0,
    last_checkin text COLLATE "C",
    last_status text COLLATE "C",
    last_message text COLLATE "C",
    components text COLLATE "C",
    upgrade_details text COLLATE "C",
    upgrade_state text COLLATE "C",
    upgrade_target text COLLATE "C",
    upgraded_at text COLLATE "C",
    unenrolled_at text COLLATE "C",
    audit_reason text COLLATE "C",
    audit_time text COLLATE "C",
    instance text COLLATE "C"
);
CREATE INDEX agents_by_policy ON agents (policy_id);
CREATE INDEX agents_by_enrollment ON agents (enrolled_at, id);
CREATE TABLE actions (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text COLLATE "C" NOT NULL UNIQUE,
    type text COLLATE "C" NOT NULL,
    data text COLLATE "C",
    created_at text COLLATE "C" NOT NULL,
    start_time text COLLATE "C",
    expiration text COLLATE "C" NOT NULL
);
CREATE TABLE action_targets (
    agent_id text COLLATE "C" NOT NULL,
    seq bigint NOT NULL REFERENCES actions (seq),
    cancelled bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, seq)
);
CREATE TABLE action_results (
    action_id text COLLATE "C" NOT NULL,
    agent_id text COLLATE "C" NOT NULL,
    acked_at text COLLATE "C" NOT NULL,
    error text COLLATE "C",
    data text COLLATE "C",
    PRIMARY KEY (action_id, agent_id)
);
CREATE TABLE uploads (
    id text COLLATE "C" PRIMARY KEY,
    action_id text COLLATE "C" NOT NULL,
    agent_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    mime_type text COLLATE "C" NOT NULL,
    size bigint NOT NULL,
    chunk_size bigint NOT NULL,
    status text COLLATE "C" NOT NULL,
    created text COLLATE "C" NOT NULL,
    completed text COLLATE "C",
    sha256 text COLLATE "C"
);
CREATE TABLE upload_chunks (
    upload_id text COLLATE "C" NOT NULL,
    num bigint NOT NULL,
    size bigint NOT NULL,
    sha256 text COLLATE "C" NOT NULL,
    PRIMARY KEY (upload_id, num)
);
CREATE TABLE policy_revisions (
    policy_id text COLLATE "C" NOT NULL,
    revision bigint NOT NULL,
    content_sha256 text COLLATE "C" NOT NULL,
    created text COLLATE "C" NOT NULL,
    PRIMARY KEY (policy_id, revision)
);
CREATE TABLE active (
    id bigint PRIMARY KEY CHECK (id = 1),
    name text COLLATE "C" NOT NULL,
    sequence bigint NOT NULL,
    FOREIGN KEY (name, sequence) REFERENCES releases (name, sequence)
);
CREATE TABLE revoked_agents (
    id text COLLATE "C" PRIMARY KEY,
    revoked_at text COLLATE "C" NOT NULL
);
CREATE TABLE output_keys (
    row bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id text COLLATE "C" NOT NULL,
    output text COLLATE "C" NOT NULL,
    key_id text COLLATE "C",
    api_key text COLLATE "C",
    permissions_sha256 text COLLATE "C" NOT NULL,
    intent text COLLATE "C" NOT NULL,
    state text COLLATE "C" NOT NULL,
    retire_policy text COLLATE "C",
    retire_at bigint,
    created_at text COLLATE "C" NOT NULL
);
CREATE INDEX output_keys_by_agent ON output_keys (agent_id, output);
CREATE TABLE secrets (
    id text COLLATE "C" PRIMARY KEY,
    sealed bytea NOT NULL,
    set_at text COLLATE "C" NOT NULL
);
"#;

const VERSION_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS schema_version (
    version bigint PRIMARY KEY,
    applied_at text COLLATE "C" NOT NULL,
    appliance text COLLATE "C" NOT NULL
);"#;

/// Brings the database to [`LATEST`] in one transaction under [`MIGRATION_LOCK`], or refuses
/// one of a newer schema without writing to it.
pub(super) fn migrate(client: &mut postgres::Client) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    // Read under the lock: an instance that waited for another's migration sees it done.
    let found = version(&mut tx)?;
    if found > LATEST {
        // Dropping the transaction rolls it back: nothing was written.
        return Err(StoreError::NewerSchema { found, known: LATEST });
    }
    if found == LATEST {
        tx.commit()?;
        return Ok(());
    }
    tx.batch_execute(VERSION_TABLE)?;
    let now = crate::clock::now_rfc3339();
    for (number, sql) in (1_i64..).zip(MIGRATIONS).skip(usize::try_from(found).unwrap_or(0)) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at, appliance) VALUES ($1, $2, $3)",
            &[&number, &now, &crate::version()],
        )?;
    }
    tx.commit()?;
    if found > 0 {
        tracing::info!(from = found, to = LATEST, "state database schema migrated");
    }
    Ok(())
}

/// The database's schema version: 0 when it has none (a new database).
pub(super) fn version(client: &mut impl GenericClient) -> Result<i64> {
    let exists: bool =
        client.query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?.try_get(0)?;
    if !exists {
        return Ok(0);
    }
    Ok(client.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?.try_get(0)?)
}
