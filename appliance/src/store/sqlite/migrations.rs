//! The schema as versioned migrations, applied in order when the store opens.
//!
//! The version is kept in a table, `schema_version` (one row per applied migration: its
//! number, when, and by which ferry-appliance), rather than in `PRAGMA user_version`: a server
//! database has no such pragma, so every backend can keep its version the same way, and the
//! rows tell a support case which release migrated a database and when.
//!
//! A database without the table was written by a release from before versioning. Migration 1
//! is that release's schema exactly, every statement `IF NOT EXISTS`, so it adopts such a
//! database (and one older still, without `revoked_agents`, gains it). Migrations are only ever
//! appended; a released one is never edited.

use rusqlite::{Connection, TransactionBehavior, params};

use crate::store::{Result, StoreError};

/// Migration n is `MIGRATIONS[n - 1]`.
const MIGRATIONS: &[&str] = &[V1, V2];

/// The schema version this binary writes.
pub(super) const LATEST: i64 = MIGRATIONS.len() as i64;

/// The schema of ferry-appliance before versioning: releases, floors and the active pointer;
/// enrollment tokens; agents and revoked agent ids; actions, their targets and results;
/// uploads and their chunks; policy revisions.
const V1: &str = "CREATE TABLE IF NOT EXISTS releases (
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
    -- Agent ids the operator revoked: a table of their own rather than a column of agents,
    -- whose row an enrollment replaces whole.
    CREATE TABLE IF NOT EXISTS revoked_agents (
        id TEXT PRIMARY KEY,
        revoked_at TEXT NOT NULL
    );";

/// Pages of `agents list` (1,000 agents each) are read in enrollment order: with this index a
/// page is a seek and a short walk, not a sort of every agent. Check-in writes never change
/// these columns, so they do not pay for it.
const V2: &str = "CREATE INDEX agents_by_enrollment ON agents (enrolled_at, id);";

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL,
    appliance TEXT NOT NULL
);";

/// Brings the database to [`LATEST`], or refuses one of a newer schema without writing to it.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    // Read first without a write lock: opening an up-to-date database, as every command does,
    // never waits for an import's transaction.
    if refuse_newer(version(conn)?)? == LATEST {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Another process may have migrated while this one waited for the write lock.
    let found = refuse_newer(version(&tx)?)?;
    // Said when the data of an earlier release is migrated, not when a database is created.
    let existing = found > 0 || has_table(&tx, "releases")?;
    tx.execute_batch(VERSION_TABLE)?;
    for (number, sql) in (1..).zip(MIGRATIONS).skip(usize::try_from(found).unwrap_or(0)) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at, appliance)
             VALUES (?1, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), ?2)",
            params![number, crate::version()],
        )?;
    }
    tx.commit()?;
    if existing {
        tracing::info!(from = found, to = LATEST, "state database schema migrated");
    }
    Ok(())
}

/// The database's schema version: 0 when it has none (new, or from before versioning).
fn version(conn: &Connection) -> Result<i64> {
    if !has_table(conn, "schema_version")? {
        return Ok(0);
    }
    Ok(conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0))?)
}

fn has_table(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        params![name],
        |r| r.get(0),
    )?)
}

fn refuse_newer(found: i64) -> Result<i64> {
    if found > LATEST {
        return Err(StoreError::NewerSchema { found, known: LATEST });
    }
    Ok(found)
}
