//! The SQLite backend: one file in the data directory ([`FILE`]), one connection (WAL,
//! `synchronous=FULL`), its schema versioned by [`migrations`]. Each table group is a file
//! implementing its trait of [`crate::store`].

mod actions;
mod agents;
mod migrations;
mod output_keys;
mod policies;
mod releases;
mod secrets;
mod tokens;
mod uploads;

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::{Result, StoreError};

/// The database's file name in the data directory.
pub(crate) const FILE: &str = "state.db";

/// The SQLite store. One connection: SQLite writes one transaction at a time, and WAL lets
/// readers in other processes (an import, `status`) work meanwhile.
pub(crate) struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating) the database at `path` and migrates it to the schema this binary
    /// writes; a database of a newer schema is refused untouched.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // The switch to a new release must survive power loss once import says it is done.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // An import and `serve` share the file: a writer waits for the other's transaction
        // (milliseconds) rather than fail at once.
        conn.busy_timeout(Duration::from_secs(10))?;
        // Every statement of the store stays prepared (about 30; rusqlite keeps 16 by
        // default): parsing a statement again costs more than the lookups on a check-in's path.
        conn.set_prepared_statement_cache_capacity(64);
        migrations::migrate(&mut conn)?;
        Ok(Self { conn })
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::{Error, ErrorCode};
        match &e {
            Error::FromSqlConversionFailure(..)
            | Error::IntegralValueOutOfRange(..)
            | Error::InvalidColumnType(..) => Self::Corrupt(e.to_string()),
            Error::SqliteFailure(f, _)
                if matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) =>
            {
                Self::Corrupt(e.to_string())
            }
            _ => Self::Backend(Box::new(e)),
        }
    }
}

/// `e` as [`StoreError::Conflict`] when it is a primary key or unique constraint violated by
/// inserting `what` `key`.
fn conflict(e: rusqlite::Error, what: &'static str, key: &str) -> StoreError {
    use rusqlite::ffi::{SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE};
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if [SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE]
                .contains(&f.extended_code) =>
        {
            StoreError::Conflict { what, key: key.to_owned() }
        }
        _ => e.into(),
    }
}

/// Column `i` of `r`, a count or sequence this code wrote from a `u64` (a negative one is
/// [`StoreError::Corrupt`]).
fn uint(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let value: i64 = r.get(i)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, value))
}

/// A count or sequence as SQLite's signed 64-bit integer.
fn int(what: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AgentStore as _, ReleaseStore as _, Store, TokenStore as _, conformance};

    /// A fresh store in a directory of its own, deleted when the guard drops.
    fn fresh() -> (tempfile::TempDir, Box<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join(FILE)).unwrap();
        (dir, Box::new(store))
    }

    conformance::suite!(fresh);

    #[test]
    fn writes_survive_a_reopen_and_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut s = SqliteStore::open(&path).unwrap();
        s.activate_new(&conformance::release("site", 3, "2026-01-01T00:00:00Z")).unwrap();
        s.create_enrollment_token(&conformance::token("t1", "linux")).unwrap();
        let journal: String =
            s.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        let sync: i64 = s.conn.pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
        assert_eq!((journal.as_str(), sync), ("wal", 2), "WAL, synchronous=FULL");
        drop(s);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.active().unwrap(), Some(("site".into(), 3)));
        assert_eq!(s.enrollment_tokens().unwrap().len(), 1);
    }

    #[test]
    fn what_this_code_never_writes_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join(FILE)).unwrap();
        s.conn
            .execute_batch(
                "INSERT INTO agents (id, access_key_id, access_secret_sha256, policy_id, kind,
                     enrolled_at, active, version, local_metadata, tags, policy_revision)
                 VALUES ('a', 'k', '00', 'p', 'PERMANENT', 't', 1, '9.1.2', '{}', '[]', -1)",
            )
            .unwrap();
        let e = s.agent_view("a").unwrap_err();
        assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    }
}
