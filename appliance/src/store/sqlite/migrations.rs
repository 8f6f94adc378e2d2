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
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

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

/// Agents' output keys on the site's Elasticsearch (`crate::elastic`). `api_key` is the key's
/// secret, which agents need in their policy and Elasticsearch never shows again.
const V3: &str = "CREATE TABLE output_keys (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL,
    output TEXT NOT NULL,
    key_id TEXT,
    api_key TEXT,
    permissions_sha256 TEXT NOT NULL,
    intent TEXT NOT NULL,
    state TEXT NOT NULL,
    retire_policy TEXT,
    retire_at INTEGER,
    created_at TEXT NOT NULL
);
CREATE INDEX output_keys_by_agent ON output_keys (agent_id, output);";

/// The on-site secrets: per Fleet secret id, its value sealed by `crate::secrets` (nonce,
/// ciphertext and tag; the key is not in this database) and when the operator set it.
const V4: &str = "CREATE TABLE secrets (
        id TEXT PRIMARY KEY,
        sealed BLOB NOT NULL,
        set_at TEXT NOT NULL
    );";

/// The cluster instance whose check-in wrote an agent's row last (`store/postgres/` writes it;
/// a single appliance leaves it NULL). A column here too, so that both backends have the same
/// columns and `store copy` moves every one.
const V5: &str = "ALTER TABLE agents ADD COLUMN instance TEXT;";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{FILE, SqliteStore};
    use crate::store::{
        ActionStore as _, AgentStore as _, PolicyStore as _, ReleaseStore as _, SecretStore as _,
        TokenStore as _, UploadStatus, UploadStore as _,
    };

    /// The schema as the release before versioning created it (frozen; see the file).
    const UNVERSIONED: &str = include_str!("testdata/unversioned.sql");

    /// Rows in every table, as the release before versioning wrote them.
    const UNVERSIONED_DATA: &str = r#"
        INSERT INTO releases VALUES ('site', 3, '2026-01-01T00:00:00Z', '2027-01-01T00:00:00Z',
            'RWQKEY', 12, 3456, 'aa', '2026-01-02T00:00:00Z');
        INSERT INTO releases VALUES ('site', 5, '2026-02-01T00:00:00Z', '2027-02-01T00:00:00Z',
            'RWQKEY', 14, 7890, 'bb', '2026-02-02T00:00:00Z');
        INSERT INTO floors VALUES ('site', 5);
        INSERT INTO active VALUES (1, 'site', 5);
        INSERT INTO enrollment_tokens VALUES ('tok1', 'feed', 'linux', 'web servers',
            '2026-01-03T00:00:00Z', 0);
        INSERT INTO agents (id, access_key_id, access_secret_sha256, policy_id, kind,
            enrolled_at, active, version, local_metadata, tags, policy_revision, action_seq,
            enroll_seq, last_checkin, last_status, upgrade_state, upgrade_target)
            VALUES ('a1', 'ka1', 'beef', 'linux', 'PERMANENT', '2026-01-04T00:00:00Z', 1,
            '9.1.2', '{"host":{"hostname":"web-01"}}', '["web"]', 2, 1, 0,
            '2026-01-05T00:00:00Z', 'online', 'UPG_REQUESTED', '9.2.2');
        INSERT INTO revoked_agents VALUES ('gone', '2026-01-06T00:00:00Z');
        INSERT INTO policy_revisions VALUES ('linux', 1, 'c1', '2026-01-03T00:00:00Z');
        INSERT INTO policy_revisions VALUES ('linux', 2, 'c2', '2026-01-04T00:00:00Z');
        INSERT INTO actions VALUES (1, 'act1', 'SETTINGS', '{"log_level":"debug"}',
            '2026-01-04T00:00:00Z', NULL, '2099-01-01T00:00:00Z');
        INSERT INTO actions VALUES (2, 'act2', 'REQUEST_DIAGNOSTICS', '{}',
            '2026-01-05T00:00:00Z', NULL, '2099-01-01T00:00:00Z');
        INSERT INTO action_targets (agent_id, seq) VALUES ('a1', 1), ('a1', 2);
        INSERT INTO action_results VALUES ('act1', 'a1', '2026-01-05T00:00:00Z', NULL, NULL);
        INSERT INTO uploads (id, action_id, agent_id, name, mime_type, size, chunk_size, status,
            created) VALUES ('up1', 'act2', 'a1', 'diag.zip', 'application/zip', 10, 4194304,
            'AWAITING_UPLOAD', '2026-01-06T00:00:00Z');
        INSERT INTO upload_chunks VALUES ('up1', 0, 10, 'abcd');
    "#;

    /// Every table and index as `sqlite_master` holds it, whitespace collapsed.
    fn schema(path: &std::path::Path) -> Vec<(String, String)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| {
            let sql: String = r.get(1)?;
            Ok((r.get(0)?, sql.split_whitespace().collect::<Vec<_>>().join(" ")))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn versions(path: &std::path::Path) -> Vec<(i64, String)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt =
            conn.prepare("SELECT version, appliance FROM schema_version ORDER BY version").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn unversioned(dir: &tempfile::TempDir, without_revoked_agents: bool) -> std::path::PathBuf {
        let path = dir.path().join(FILE);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(UNVERSIONED).unwrap();
        if without_revoked_agents {
            conn.execute_batch("DROP TABLE revoked_agents").unwrap();
        } else {
            conn.execute_batch(UNVERSIONED_DATA).unwrap();
        }
        path
    }

    #[test]
    fn a_database_from_before_versioning_is_adopted_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = unversioned(&dir, false);
        let mut s = SqliteStore::open(&path).unwrap();
        let fresh = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(&fresh.path().join(FILE)).unwrap());
        assert_eq!(schema(&path), schema(&fresh.path().join(FILE)), "the schema a new one has");
        let all: Vec<i64> = versions(&path).into_iter().map(|(v, _)| v).collect();
        assert_eq!(all, (1..=LATEST).collect::<Vec<_>>());

        assert_eq!(s.active().unwrap(), Some(("site".into(), 5)));
        assert_eq!(s.floor("site").unwrap(), Some(5));
        let releases = s.releases().unwrap();
        assert_eq!(releases.len(), 2);
        assert_eq!(
            (releases[0].sequence, releases[0].entries, releases[0].payload_bytes),
            (3, 12, 3456)
        );
        let token = s.enrollment_secret("tok1").unwrap().unwrap();
        assert_eq!((token.secret_sha256.as_str(), token.policy_id.as_str()), ("feed", "linux"));
        let agent = s.agent_by_access_key("ka1").unwrap().unwrap();
        assert_eq!((agent.id.as_str(), agent.access_secret_sha256.as_str()), ("a1", "beef"));
        let view = s.agent_view("a1").unwrap().unwrap();
        assert_eq!((view.hostname.as_str(), view.policy_revision), ("web-01", 2));
        assert_eq!(view.upgrade_state.as_deref(), Some("UPG_REQUESTED"));
        assert_eq!(s.agent_policy_revision("a1").unwrap(), 2);
        assert_eq!(s.revoked_at("gone").unwrap().as_deref(), Some("2026-01-06T00:00:00Z"));
        assert_eq!(s.action_cursor("a1").unwrap(), 1);
        let pending = s.pending_actions("a1", 1, "2026-06-01T00:00:00Z", 100).unwrap();
        assert_eq!(pending.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["act2"]);
        assert_eq!(s.action_targets("act1").unwrap()[0].ack, Some(None));
        let upload = s.upload("up1").unwrap().unwrap();
        assert_eq!((upload.status, upload.size), (UploadStatus::Awaiting, 10));
        assert_eq!(s.chunks("up1").unwrap().len(), 1);
        assert_eq!(
            s.policy_revision("linux", "c2", "2026-06-01T00:00:00Z").unwrap(),
            (2, "2026-01-04T00:00:00Z".to_owned())
        );
        // And it is written to as any other.
        s.create_action(&crate::store::NewAction {
            id: "act3".into(),
            kind: "SETTINGS".into(),
            data: None,
            created_at: "2026-06-01T00:00:00Z".into(),
            start_time: None,
            expiration: "2099-01-01T00:00:00Z".into(),
            agents: vec!["a1".into()],
            effect: crate::store::ActionEffect::None,
        })
        .unwrap();
        assert_eq!(s.agent_action("a1", "act3").unwrap().unwrap().seq, 3);
    }

    #[test]
    fn an_older_database_gains_the_tables_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let path = unversioned(&dir, true);
        let mut s = SqliteStore::open(&path).unwrap();
        assert!(!s.deactivate_agent("a", "2026-06-01T00:00:00Z").unwrap());
        assert_eq!(s.revoked_at("a").unwrap(), None);
        assert!(schema(&path).iter().any(|(name, _)| name == "revoked_agents"));
    }

    #[test]
    fn a_version_3_database_gains_the_secrets_table_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(VERSION_TABLE).unwrap();
        for (number, sql) in (1..=3).zip(MIGRATIONS) {
            conn.execute_batch(sql).unwrap();
            conn.execute(
                "INSERT INTO schema_version VALUES (?1, '2026-01-01T00:00:00Z', '0.1.0')",
                params![number],
            )
            .unwrap();
        }
        conn.execute_batch(UNVERSIONED_DATA).unwrap();
        drop(conn);
        let mut s = SqliteStore::open(&path).unwrap();
        let all: Vec<i64> = versions(&path).into_iter().map(|(v, _)| v).collect();
        assert_eq!(all, (1..=LATEST).collect::<Vec<_>>());
        assert_eq!(s.active().unwrap(), Some(("site".into(), 5)));
        assert!(s.secret_records().unwrap().is_empty());
        s.put_secret("db-password", b"sealed", "2026-06-01T00:00:00Z").unwrap();
        assert_eq!(s.secret_records().unwrap().len(), 1);
    }

    #[test]
    fn a_version_4_database_gains_agents_instance_and_keeps_its_agents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(VERSION_TABLE).unwrap();
        for (number, sql) in (1..=4).zip(MIGRATIONS) {
            conn.execute_batch(sql).unwrap();
            conn.execute(
                "INSERT INTO schema_version VALUES (?1, '2026-01-01T00:00:00Z', '0.1.0')",
                params![number],
            )
            .unwrap();
        }
        conn.execute_batch(UNVERSIONED_DATA).unwrap();
        drop(conn);
        let mut s = SqliteStore::open(&path).unwrap();
        let all: Vec<i64> = versions(&path).into_iter().map(|(v, _)| v).collect();
        assert_eq!(all, (1..=LATEST).collect::<Vec<_>>());
        let view = s.agent_view("a1").unwrap().unwrap();
        assert_eq!((view.hostname.as_str(), view.instance), ("web-01", None));
        // A single appliance's check-ins name no instance.
        let report = crate::store::CheckinUpdate {
            agent_id: "a1".into(),
            access_key_id: "ka1".into(),
            at: "2026-06-01T00:00:00Z".into(),
            status: "online".into(),
            message: String::new(),
            version: "9.1.2".into(),
            local_metadata: None,
            components: None,
            upgrade_details: None,
            running: None,
            cursor: None,
        };
        let unchanged = |stored: &crate::store::StoredUpgrade, _: &crate::store::CheckinUpdate| {
            crate::store::UpgradeStep { state: stored.state.clone(), completed: false }
        };
        s.record_checkins(&[report], &unchanged).unwrap();
        let view = s.agent_view("a1").unwrap().unwrap();
        assert_eq!((view.last_status.as_deref(), view.instance), (Some("online"), None));
    }

    #[test]
    fn a_database_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        drop(SqliteStore::open(&path).unwrap());
        drop(SqliteStore::open(&path).unwrap());
        let rows = versions(&path);
        assert_eq!(rows.len(), usize::try_from(LATEST).unwrap());
        assert!(rows.iter().all(|(_, by)| by == crate::version()), "{rows:?}");
    }

    #[test]
    fn a_newer_schema_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        drop(SqliteStore::open(&path).unwrap());
        let newer = LATEST + 1;
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO schema_version VALUES (?1, '2030-01-01T00:00:00Z', '9.0.0')",
                params![newer],
            )
            .unwrap();
        let before = schema(&path);
        let Err(e) = SqliteStore::open(&path) else { panic!("a newer schema was opened") };
        assert!(
            matches!(e, StoreError::NewerSchema { found, known } if found == newer && known == LATEST)
        );
        let message = e.to_string();
        assert!(
            message.contains(&format!("version {newer}"))
                && message.contains(&format!("than {LATEST}")),
            "{message}"
        );
        assert_eq!(schema(&path), before, "left untouched");
        assert_eq!(versions(&path).len(), usize::try_from(newer).unwrap());
    }
}
