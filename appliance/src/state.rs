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

    /// Stores a newly enrolled agent, replacing an inactive record with the same id.
    fn put_agent(&mut self, agent: &AgentRecord) -> anyhow::Result<()>;
    fn agent(&self, id: &str) -> anyhow::Result<Option<AgentRecord>>;
    fn agent_by_access_key(&self, key_id: &str) -> anyhow::Result<Option<AgentRecord>>;
    /// The revision the agent runs (raised by policy acks and check-in reports, never lowered).
    fn agent_policy_revision(&self, id: &str) -> anyhow::Result<u64>;
    fn raise_agent_policy_revision(&mut self, id: &str, revision: u64) -> anyhow::Result<()>;
    /// Records a check-in's status and message with the current time.
    fn record_checkin(&mut self, id: &str, status: &str, message: &str) -> anyhow::Result<()>;
    /// The appliance revision of a policy's content: the latest one if the content is unchanged,
    /// else a new one above every earlier revision (so rolling back to older content is a new
    /// revision too). Returns (revision, created).
    fn policy_revision(
        &mut self,
        policy_id: &str,
        content_sha256: &str,
    ) -> anyhow::Result<(u64, String)>;
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
                last_checkin TEXT,
                last_status TEXT,
                last_message TEXT
            );
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
        let now = ferry_manifests::rfc3339(time::OffsetDateTime::now_utc().replace_nanosecond(0)?);
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

    fn put_agent(&mut self, a: &AgentRecord) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO agents
             (id, access_key_id, access_secret_sha256, policy_id, kind, enrolled_at, active, version, local_metadata, tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
                a.tags
            ],
        )?;
        Ok(())
    }

    fn agent(&self, id: &str) -> anyhow::Result<Option<AgentRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, access_key_id, access_secret_sha256, policy_id, kind, enrolled_at, active, version, local_metadata, tags
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

    fn raise_agent_policy_revision(&mut self, id: &str, revision: u64) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE agents SET policy_revision = MAX(policy_revision, ?2) WHERE id = ?1",
            params![id, to_i64(revision)?],
        )?;
        Ok(())
    }

    fn record_checkin(&mut self, id: &str, status: &str, message: &str) -> anyhow::Result<()> {
        let now = ferry_manifests::rfc3339(time::OffsetDateTime::now_utc().replace_nanosecond(0)?);
        self.conn.execute(
            "UPDATE agents SET last_checkin = ?2, last_status = ?3, last_message = ?4 WHERE id = ?1",
            params![id, now, status, message],
        )?;
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
        let now = ferry_manifests::rfc3339(time::OffsetDateTime::now_utc().replace_nanosecond(0)?);
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
}
