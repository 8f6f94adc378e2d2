//! The PostgreSQL backend: the state of several appliances behind one load balancer, in one
//! database they share. Each table group is a file implementing its trait of [`crate::store`],
//! as in `store/sqlite/`; the schema has the same tables and columns as SQLite's (so that
//! `store copy` moves a single appliance's state table by table), versioned by [`migrations`],
//! which several instances starting at once apply once (an advisory lock).
//!
//! # One connection per store handle
//!
//! The traits are synchronous and a handle serves one caller at a time ([`crate::store::Db`]),
//! so a handle is one connection, through `postgres`, the blocking facade of tokio-postgres.
//! What bounds the connections an instance opens is therefore the number of handles, never the
//! number of agents: `serve` holds one for the agent and admin APIs and one that listens for the
//! other instances' notifications (`crate::cluster`); each running command holds one more. A
//! connection the server closed (PostgreSQL restarted, a failover) is opened again at the next
//! call; the call that found it closed fails as [`StoreError::Unavailable`], which agents see as
//! `503` with `Retry-After`, never as a refusal of their credentials.
//!
//! # Several writers
//!
//! SQLite has one writer at a time; here every instance writes the same rows at once, in
//! transactions of PostgreSQL's default isolation, READ COMMITTED (each statement sees what was
//! committed when it began). Where a method reads and then writes on what it read, that is
//! made safe one of these ways, each said where it is used:
//!
//! - a conditional UPDATE or an upsert whose new value is computed from the row as locked
//!   (`GREATEST` for floors, cursors and running revisions, `WHERE state = 'creating'`);
//! - a row lock taken by the read (`SELECT ... FOR UPDATE`), held to the commit;
//! - `INSERT ... ON CONFLICT DO NOTHING` where the row to lock may not exist yet (enrolling a
//!   new id, a policy's next revision);
//! - advisory locks: one for migrations ([`migrations::MIGRATION_LOCK`]), one ordering the
//!   creation of actions with the numbering of their `seq` (`actions::ACTIONS_LOCK`).
//!
//! A call that locks several agents' rows locks them in id order, so that two instances never
//! deadlock on them; a deadlock or serialization failure all the same (nothing written) is
//! [`StoreError::Unavailable`], to be tried again. What other instances must learn at once
//! (a new action, a deactivated agent, a changed secret, a moved active release) is notified
//! on the [`channel`]s in the transaction that makes the change.

mod actions;
mod agents;
pub(crate) mod cluster;
pub(crate) mod copy;
mod migrations;
mod output_keys;
mod policies;
mod releases;
mod secrets;
mod tokens;
mod uploads;

use std::cell::{RefCell, RefMut};
use std::path::PathBuf;
use std::time::Duration;

use postgres::error::SqlState;

use super::{Result, StoreError};

/// How long opening a connection may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the database is and who this instance is (`[store]`, `[cluster]`).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `postgresql://user@host:port/database`.
    pub url: String,
    /// From `store.password_file`.
    pub password: Option<String>,
    /// Set: TLS, required, the server's certificate verified against this CA (PEM).
    pub ca_file: Option<PathBuf>,
    /// This instance's name, written on the agents whose check-ins it holds.
    pub instance: String,
}

/// The PostgreSQL store: one connection, opened again when the server closed it.
///
/// The traits read through `&self` (SQLite reads on a shared connection), while a `postgres`
/// client runs every statement through `&mut`: the connection sits in a `RefCell`. A handle is
/// `Send` but not `Sync`, and [`crate::store::Db`] hands it to one caller at a time, so the
/// cell is never borrowed twice.
pub(crate) struct PostgresStore {
    settings: Settings,
    /// `None` only while dropping (see [`Drop`]) or after a failed reconnect.
    client: RefCell<Option<postgres::Client>>,
}

impl PostgresStore {
    /// Connects and migrates the schema to the version this binary writes; a database of a
    /// newer schema is refused untouched.
    pub(crate) fn connect(settings: &Settings) -> Result<Self> {
        let mut client = connect(settings)?;
        migrations::migrate(&mut client)?;
        Ok(Self { settings: settings.clone(), client: RefCell::new(Some(client)) })
    }

    /// This instance's name.
    pub(crate) fn instance(&self) -> &str {
        &self.settings.instance
    }

    /// The connection, opened again if the server closed it since the last call. A method
    /// holds it for its one transaction: `let mut c = self.client()?; let mut tx =
    /// c.transaction()?;`, and a method of a single statement runs it on `c` directly (a
    /// statement outside a transaction is one of its own).
    fn client(&self) -> Result<RefMut<'_, postgres::Client>> {
        let mut slot = self.client.borrow_mut();
        if slot.as_ref().is_none_or(postgres::Client::is_closed) {
            *slot = None;
            *slot = Some(connect(&self.settings)?);
            tracing::info!("reconnected to PostgreSQL");
        }
        Ok(RefMut::map(slot, |c| c.as_mut().expect("connected above")))
    }
}

impl Drop for PostgresStore {
    /// `postgres` drives its connection on a runtime of its own, which tokio refuses to drop
    /// inside another runtime's task: there it is dropped on a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(client));
        }
    }
}

/// Opens a connection as `settings` say: TLS verified against `ca_file` when it is set.
pub(crate) fn connect(settings: &Settings) -> Result<postgres::Client> {
    let mut config: postgres::Config =
        settings.url.parse().map_err(|e| StoreError::Backend(format!("store.url: {e}").into()))?;
    if let Some(password) = &settings.password {
        config.password(password);
    }
    config.application_name(&format!("ferry-appliance {}", settings.instance));
    config.connect_timeout(CONNECT_TIMEOUT);
    // Keepalives notice a database host that vanished without closing the connection.
    config.keepalives(true).keepalives_idle(Duration::from_secs(30));
    let client = match &settings.ca_file {
        Some(ca) => {
            config.ssl_mode(postgres::config::SslMode::Require);
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(ca)?);
            config.connect(tls)
        }
        None => config.connect(postgres::NoTls),
    };
    client.map_err(|e| connect_error(&e, settings))
}

/// Why a connection could not be opened. What trying again cannot mend (a certificate the CA
/// does not vouch for, a refused password, a database that does not exist) is said as such,
/// naming the setting to look at; the rest (the server down, starting, full) is
/// [`StoreError::Unavailable`].
fn connect_error(e: &postgres::Error, settings: &Settings) -> StoreError {
    if let Some(tls) = rustls_error(e) {
        let ca = settings.ca_file.as_deref().unwrap_or_else(|| std::path::Path::new("?"));
        return StoreError::Backend(
            format!(
                "the database server's certificate is not trusted with store.ca_file {}: {tls}",
                ca.display()
            )
            .into(),
        );
    }
    match e.code() {
        Some(c) if c.code().starts_with("28") => {
            StoreError::Backend(format!("store.url, store.password_file: {}", describe(e)).into())
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
            StoreError::Backend(format!("store.url: {}", describe(e)).into())
        }
        _ => unavailable(e),
    }
}

/// The TLS error under `e`, if the handshake failed (rustls' error sits in an `io::Error`,
/// whose `source` skips it).
fn rustls_error(e: &postgres::Error) -> Option<&rustls::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(tls) = s
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        source = s.source();
    }
    None
}

/// A rustls client configuration trusting only the certificates of `ca` (PEM).
fn tls_config(ca: &std::path::Path) -> Result<rustls::ClientConfig> {
    let fail =
        |e: String| StoreError::Backend(format!("store.ca_file {}: {e}", ca.display()).into());
    let pem = std::fs::read(ca).map_err(|e| fail(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls::pki_types::CertificateDer<'static> =
            cert.map_err(|e| fail(e.to_string()))?;
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("holds no certificate".into()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `e` and its causes: `postgres` shows only its kind ("db error", "error connecting to
/// server") and keeps the server's message, or the I/O error, as its source.
fn describe(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A failure to reach the database as [`StoreError::Unavailable`].
fn unavailable(e: &postgres::Error) -> StoreError {
    StoreError::Unavailable(describe(e))
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if e.is_closed() || e.as_db_error().is_none() && e.code().is_none() && is_io(&e) {
            return unavailable(&e);
        }
        match e.code() {
            // The server is shutting down or restarting, or cannot take more connections.
            // A deadlock or a serialization failure rolled the transaction back: nothing was
            // written and the same call again succeeds (two instances locked the same rows).
            Some(c)
                if [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                ]
                .contains(c) =>
            {
                unavailable(&e)
            }
            Some(c) if *c == SqlState::DATA_CORRUPTED || *c == SqlState::INDEX_CORRUPTED => {
                Self::Corrupt(describe(&e))
            }
            _ if e.to_string().starts_with("error deserializing column") => {
                Self::Corrupt(describe(&e))
            }
            _ => Self::Backend(describe(&e).into()),
        }
    }
}

/// Whether `e` was caused by I/O (the connection broke).
fn is_io(e: &postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// `e` as [`StoreError::Conflict`] when it is a unique constraint violated by inserting `what`
/// `key`.
fn conflict(e: postgres::Error, what: &'static str, key: &str) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict { what, key: key.to_owned() }
    } else {
        e.into()
    }
}

/// A count or sequence as PostgreSQL's `bigint`.
fn int(what: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

/// A `bigint` column this code wrote from a `u64` (a negative one is [`StoreError::Corrupt`]).
fn uint<I>(row: &postgres::Row, column: I) -> Result<u64>
where
    I: postgres::row::RowIndex + std::fmt::Display + Copy,
{
    let value: i64 = row.try_get(column)?;
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("column {column} holds {value}, never written")))
}

/// A flag column (`active`, `revoked`, `cancelled`): `bigint` 0 or 1 as in SQLite, so that
/// `store copy` moves every column as it is.
fn flag<I>(row: &postgres::Row, column: I) -> Result<bool>
where
    I: postgres::row::RowIndex + std::fmt::Display + Copy,
{
    let value: i64 = row.try_get(column)?;
    Ok(value != 0)
}

/// Tells the other instances, on `channel` (see [`channel`]), in the caller's transaction:
/// PostgreSQL delivers it at commit and drops it at a rollback.
fn notify(tx: &mut postgres::Transaction<'_>, channel: &str, payload: &str) -> Result<()> {
    tx.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])?;
    Ok(())
}

/// The channels an instance's writes notify the other instances on, in the transaction that
/// makes the change (PostgreSQL delivers a notification at commit, and never one of a
/// transaction rolled back). `crate::cluster` listens on all of them.
pub(crate) mod channel {
    /// An action was queued: the payload is its `seq`.
    pub(crate) const ACTIONS: &str = "ferry_actions";
    /// An agent was deactivated (unenrolled, revoked): the payload is its id.
    pub(crate) const AGENTS: &str = "ferry_agents";
    /// An on-site secret was set or removed: the payload is its id.
    pub(crate) const SECRETS: &str = "ferry_secrets";
    /// The active pointer moved (an import, a rollback): no payload.
    pub(crate) const RELEASES: &str = "ferry_releases";
    /// A cluster import started, or an instance staged or refused it: `NAME SEQUENCE`.
    pub(crate) const IMPORTS: &str = "ferry_imports";
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use ferry_testkit::postgres::{self as pg, Cluster, Database};
    use postgres::fallible_iterator::FallibleIterator as _;

    use super::*;
    use crate::store::{
        ActionEffect, ActionStore as _, AgentStore as _, Enrollment, NewAction,
        OutputKeyStore as _, ReleaseStore as _, SecretStore as _, Store, TokenStore as _,
        UploadStore as _, conformance,
    };

    fn settings(url: String, instance: &str) -> Settings {
        Settings { url, password: None, ca_file: None, instance: instance.to_owned() }
    }

    /// A store on a database of its own on the shared test cluster, dropped with the guard;
    /// `None` where PostgreSQL is not installed.
    fn fresh() -> Option<(Database<'static>, Box<dyn Store>)> {
        let db = pg::fresh_database()?;
        let store = PostgresStore::connect(&settings(db.url(), "test-1")).unwrap();
        Some((db, Box::new(store)))
    }

    conformance::suite!(fresh);

    fn action(id: &str, agents: &[&str]) -> NewAction {
        NewAction {
            id: id.into(),
            kind: "SETTINGS".into(),
            data: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            start_time: None,
            expiration: "2099-01-01T00:00:00Z".into(),
            agents: agents.iter().map(|a| (*a).to_owned()).collect(),
            effect: ActionEffect::None,
        }
    }

    /// Every schema version row: (version, appliance).
    fn versions(client: &mut postgres::Client) -> Vec<(i64, String)> {
        client
            .query("SELECT version, appliance FROM schema_version ORDER BY version", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Every column of every table, and every index, as the catalog has them.
    fn schema(client: &mut postgres::Client) -> Vec<String> {
        let mut all: Vec<String> = client
            .query(
                "SELECT table_name || '.' || column_name || ' ' || data_type
                 FROM information_schema.columns WHERE table_schema = current_schema()
                 UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn the_schema_has_sqlite_s_tables_columns_and_indexes() {
        let Some(db) = pg::fresh_database() else { return };
        drop(PostgresStore::connect(&settings(db.url(), "test-1")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::store::sqlite::FILE);
        drop(crate::store::sqlite::SqliteStore::open(&path).unwrap());
        let lite = rusqlite::Connection::open(&path).unwrap();
        let query = |sql: &str| -> Vec<(String, String)> {
            let mut stmt = lite.prepare(sql).unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let sqlite_columns = query(
            "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY 1, 2",
        );
        let mut client = db.connect();
        // Every table and column of SQLite's, and no other column in those tables (PostgreSQL
        // may have tables of its own: a cluster's).
        let tables: std::collections::BTreeSet<&str> =
            sqlite_columns.iter().map(|(t, _)| t.as_str()).collect();
        let mut postgres_columns = Vec::new();
        for table in &tables {
            for r in client
                .query(
                    "SELECT column_name::text FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1 ORDER BY 1",
                    &[table],
                )
                .unwrap()
            {
                postgres_columns.push(((*table).to_owned(), r.get::<_, String>(0)));
            }
        }
        postgres_columns.sort();
        assert_eq!(postgres_columns, sqlite_columns);
        // The same primary keys, unique constraints and named indexes, on the same columns.
        let keys = |sql: &str| -> Vec<(String, String, String)> {
            let mut stmt = lite.prepare(sql).unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let mut sqlite_keys = keys(
            "SELECT t, 'primary key', group_concat(c, ', ') FROM (
                 SELECT m.name AS t, p.name AS c FROM sqlite_master m
                 JOIN pragma_table_info(m.name) p
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND p.pk > 0
                 ORDER BY m.name, p.pk)
             GROUP BY t",
        );
        sqlite_keys.extend(keys(
            "SELECT t, kind, group_concat(c, ', ') FROM (
                 SELECT m.name AS t, il.name AS i, ii.name AS c,
                     CASE il.origin WHEN 'u' THEN 'unique' ELSE 'index ' || il.name END AS kind
                 FROM sqlite_master m JOIN pragma_index_list(m.name) il
                 JOIN pragma_index_info(il.name) ii
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND il.origin IN ('u', 'c')
                 ORDER BY m.name, il.name, ii.seqno)
             GROUP BY t, i",
        ));
        sqlite_keys.sort();
        let tables: Vec<&str> = tables.into_iter().collect();
        let mut postgres_keys: Vec<(String, String, String)> = client
            .query(
                "SELECT t.relname::text,
                     CASE WHEN x.indisprimary THEN 'primary key' WHEN x.indisunique THEN 'unique'
                          ELSE 'index ' || c.relname END,
                     string_agg(a.attname::text, ', ' ORDER BY k.n)
                 FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                 JOIN pg_class t ON t.oid = x.indrelid
                 JOIN pg_namespace s ON s.oid = t.relnamespace
                 CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                 WHERE s.nspname = current_schema() AND t.relname = ANY($1)
                 GROUP BY t.relname, x.indisprimary, x.indisunique, c.relname",
                &[&tables],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        postgres_keys.sort();
        assert_eq!(postgres_keys, sqlite_keys);
        let key = |t: &str, kind: &str, c: &str| (t.to_owned(), kind.to_owned(), c.to_owned());
        for expected in [
            key("actions", "primary key", "seq"),
            key("action_targets", "primary key", "agent_id, seq"),
            key("agents", "unique", "access_key_id"),
            key("agents", "index agents_by_enrollment", "enrolled_at, id"),
        ] {
            assert!(sqlite_keys.contains(&expected), "{expected:?} in {sqlite_keys:?}");
        }
    }

    #[test]
    fn instances_starting_at_once_migrate_once() {
        let Some(db) = pg::fresh_database() else { return };
        let instances = 8;
        let barrier = Arc::new(Barrier::new(instances));
        let threads: Vec<_> = (0..instances)
            .map(|i| {
                let (barrier, url) = (Arc::clone(&barrier), db.url());
                std::thread::spawn(move || {
                    barrier.wait();
                    PostgresStore::connect(&settings(url, &format!("test-{i}"))).map(|_| ())
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let rows = versions(&mut db.connect());
        let numbers: Vec<i64> = rows.iter().map(|(v, _)| *v).collect();
        assert_eq!(numbers, (1..=migrations::LATEST).collect::<Vec<_>>(), "each once");
        assert!(rows.iter().all(|(_, by)| by == crate::version()), "{rows:?}");
    }

    #[test]
    fn a_newer_schema_is_refused_untouched() {
        let Some(db) = pg::fresh_database() else { return };
        let mut store = PostgresStore::connect(&settings(db.url(), "test-1")).unwrap();
        store.create_enrollment_token(&conformance::token("t1", "linux")).unwrap();
        drop(store);
        let newer = migrations::LATEST + 1;
        let mut client = db.connect();
        client
            .execute(
                "INSERT INTO schema_version VALUES ($1, '2030-01-01T00:00:00Z', '9.0.0')",
                &[&newer],
            )
            .unwrap();
        let before = (schema(&mut client), versions(&mut client));
        let Err(e) = PostgresStore::connect(&settings(db.url(), "test-1")) else {
            panic!("a newer schema was opened")
        };
        assert!(
            matches!(e, StoreError::NewerSchema { found, known }
                if found == newer && known == migrations::LATEST),
            "{e}"
        );
        assert_eq!((schema(&mut client), versions(&mut client)), before, "left untouched");
        let tokens: i64 =
            client.query_one("SELECT count(*) FROM enrollment_tokens", &[]).unwrap().get(0);
        assert_eq!(tokens, 1);
    }

    #[test]
    fn a_restarted_server_costs_one_call_at_most_and_nothing_stored() {
        let Some(cluster) = Cluster::start() else { return };
        let db = cluster.database();
        let mut store = PostgresStore::connect(&settings(db.url(), "test-1")).unwrap();
        store.activate_new(&conformance::release("site", 3, "2026-01-01T00:00:00Z")).unwrap();
        store.create_enrollment_token(&conformance::token("t1", "linux")).unwrap();

        cluster.restart();
        // The call that finds the connection broken may fail, as one to try again (agents
        // see 503); or the break was noticed first and it reconnects.
        match store.floor("site") {
            Ok(floor) => assert_eq!(floor, Some(3)),
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("not a refusal to try again: {e:?}"),
        }
        assert_eq!(store.floor("site").unwrap(), Some(3), "the next call reconnects");
        assert_eq!(store.active().unwrap(), Some(("site".into(), 3)));
        assert_eq!(store.enrollment_tokens().unwrap().len(), 1);

        // While the server is down, every call is unavailable; once it is back, they work.
        cluster.stop();
        for _ in 0..2 {
            let e = store.create_enrollment_token(&conformance::token("t2", "linux")).unwrap_err();
            assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        }
        cluster.restart();
        store.create_enrollment_token(&conformance::token("t2", "linux")).unwrap();
        assert_eq!(store.enrollment_tokens().unwrap().len(), 2, "nothing lost, nothing twice");
    }

    #[test]
    fn tls_is_verified_against_store_ca_file() {
        let Some(cluster) = Cluster::start_tls() else { return };
        let db = cluster.database();
        let dir = tempfile::tempdir().unwrap();
        let (right, wrong) = (dir.path().join("ca.pem"), dir.path().join("other-ca.pem"));
        std::fs::write(&right, cluster.ca_pem().unwrap()).unwrap();
        std::fs::write(&wrong, pg::unrelated_ca_pem()).unwrap();

        let tls = |ca: &std::path::Path| Settings {
            ca_file: Some(ca.to_owned()),
            ..settings(db.url(), "test-1")
        };
        let store = PostgresStore::connect(&tls(&right)).unwrap();
        let ssl: bool = store
            .client()
            .unwrap()
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        assert!(ssl, "the connection is TLS");
        assert_eq!(store.active().unwrap(), None);

        let Err(e) = PostgresStore::connect(&tls(&wrong)) else {
            panic!("a server certificate of another CA was trusted")
        };
        let message = e.to_string();
        assert!(
            matches!(e, StoreError::Backend(_))
                && message.contains("store.ca_file")
                && message.contains(&wrong.display().to_string())
                && message.contains("certificate"),
            "{message}"
        );
        // A CA file that holds no certificate is refused before connecting.
        std::fs::write(&wrong, "not a certificate").unwrap();
        let Err(e) = PostgresStore::connect(&tls(&wrong)) else { panic!("an empty CA file") };
        assert!(e.to_string().contains("holds no certificate"), "{e}");
    }

    #[test]
    fn a_server_not_there_is_unavailable_and_a_database_not_there_is_not() {
        let Some(cluster) = pg::shared() else { return };
        let Err(e) = PostgresStore::connect(&settings(cluster.url("no_such_database"), "t")) else {
            panic!("connected to a database that does not exist")
        };
        assert!(
            matches!(e, StoreError::Backend(_)) && e.to_string().contains("store.url"),
            "trying again mends nothing: {e}"
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url = format!("postgresql://{}@127.0.0.1:{port}/postgres", pg::SUPERUSER);
        let Err(e) = PostgresStore::connect(&settings(url, "t")) else {
            panic!("connected to a port nothing listens on")
        };
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    }

    #[test]
    fn instances_enrolling_one_id_at_once_store_it_once() {
        let Some(db) = pg::fresh_database() else { return };
        let rounds = 25;
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|instance| {
                let mut store = PostgresStore::connect(&settings(db.url(), instance)).unwrap();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    (0..rounds)
                        .map(|round| {
                            let record = conformance::agent(
                                &format!("agent-{round}"),
                                &format!("{instance}-{round}"),
                            );
                            barrier.wait();
                            store.enroll_agent(&record, None).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<Vec<Enrollment>> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let store = PostgresStore::connect(&settings(db.url(), "check")).unwrap();
        for (round, (&a, &b)) in results[0].iter().zip(&results[1]).enumerate() {
            let mut both = [a, b];
            both.sort_by_key(|e| *e == Enrollment::Stored);
            assert_eq!(both, [Enrollment::NotReplaceable, Enrollment::Stored], "round {round}");
            let winner = if a == Enrollment::Stored { "a" } else { "b" };
            let stored = store.agent(&format!("agent-{round}")).unwrap().unwrap();
            assert_eq!(stored.access_key_id, format!("{winner}-{round}"), "the winner's");
        }
        assert_eq!(store.credential_ids().unwrap().len(), rounds);
    }

    #[test]
    fn instances_beginning_one_output_key_at_once_begin_it_once() {
        let Some(db) = pg::fresh_database() else { return };
        let mut first = PostgresStore::connect(&settings(db.url(), "a")).unwrap();
        let rounds = 25;
        for round in 0..rounds {
            assert_eq!(
                first
                    .enroll_agent(
                        &conformance::agent(&format!("agent-{round}"), &format!("k{round}")),
                        None
                    )
                    .unwrap(),
                Enrollment::Stored
            );
        }
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|instance| {
                let mut store = PostgresStore::connect(&settings(db.url(), instance)).unwrap();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    (0..rounds)
                        .map(|round| {
                            let agent = format!("agent-{round}");
                            barrier.wait();
                            store
                                .begin_output_key(&agent, "default", "h", "i", ("p", 1), "t")
                                .is_ok()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<Vec<bool>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for (round, (a, b)) in results[0].iter().zip(&results[1]).enumerate() {
            assert!(a != b, "round {round}: exactly one");
            assert_eq!(first.output_keys(&format!("agent-{round}")).unwrap().len(), 1);
        }
    }

    #[test]
    fn an_agent_following_its_cursor_misses_no_action_two_instances_create() {
        let Some(db) = pg::fresh_database() else { return };
        let mut reader = PostgresStore::connect(&settings(db.url(), "reader")).unwrap();
        assert_eq!(
            reader.enroll_agent(&conformance::agent("a", "ka"), None).unwrap(),
            Enrollment::Stored
        );
        let per_instance = 150;
        let writers: Vec<_> = ["w1", "w2"]
            .into_iter()
            .map(|instance| {
                let mut store = PostgresStore::connect(&settings(db.url(), instance)).unwrap();
                std::thread::spawn(move || {
                    for i in 0..per_instance {
                        store.create_action(&action(&format!("{instance}-{i}"), &["a"])).unwrap();
                    }
                })
            })
            .collect();
        // As an agent does: every action after its cursor, the cursor then at the last one.
        let (mut cursor, mut seen) = (0, Vec::new());
        let mut read = |seen: &mut Vec<String>| {
            let got = reader.pending_actions("a", cursor, "2026-06-01T00:00:00Z", 1000).unwrap();
            cursor = got.last().map_or(cursor, |a| a.seq);
            seen.extend(got.into_iter().map(|a| a.id));
        };
        while writers.iter().any(|w| !w.is_finished()) {
            read(&mut seen);
        }
        for w in writers {
            w.join().unwrap();
        }
        read(&mut seen);
        let count = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!((count, seen.len()), (2 * per_instance, 2 * per_instance), "each once");
    }

    #[test]
    fn changes_are_notified_at_commit_and_only_then() {
        let Some(db) = pg::fresh_database() else { return };
        let mut store = PostgresStore::connect(&settings(db.url(), "test-1")).unwrap();
        let mut listener = db.connect();
        for name in [channel::ACTIONS, channel::AGENTS, channel::SECRETS, channel::RELEASES] {
            listener.batch_execute(&format!("LISTEN {name}")).unwrap();
        }
        // What the listener hears within `within`, and until nothing more comes for 200 ms.
        let mut heard = |within: Duration| -> Vec<(String, String)> {
            let mut notifications = listener.notifications();
            let (mut all, mut wait) = (Vec::new(), within);
            while let Some(n) = notifications.timeout_iter(wait).next().unwrap() {
                all.push((n.channel().to_owned(), n.payload().to_owned()));
                wait = Duration::from_millis(200);
            }
            all
        };
        let quiet = Duration::from_millis(500);
        let soon = Duration::from_secs(10);
        let note = |channel: &str, payload: &str| vec![(channel.to_owned(), payload.to_owned())];

        assert_eq!(
            store.enroll_agent(&conformance::agent("a", "ka"), None).unwrap(),
            Enrollment::Stored
        );
        assert_eq!(heard(quiet), [], "an enrollment is not announced");
        let seq = store.create_action(&action("x", &["a"])).unwrap();
        assert_eq!(heard(soon), note(channel::ACTIONS, &seq.to_string()));
        // A call that fails rolls back, its notification with it.
        let e = store.create_action(&action("x", &["a"])).unwrap_err();
        assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
        assert_eq!(heard(quiet), []);

        assert!(store.deactivate_agent("a", "2026-02-01T00:00:00Z").unwrap());
        assert_eq!(heard(soon), note(channel::AGENTS, "a"));
        assert!(!store.deactivate_agent("a", "2026-02-01T00:00:00Z").unwrap());
        assert_eq!(heard(quiet), [], "nothing changed");
        // An acknowledged UNENROLL deactivates too.
        assert_eq!(
            store.enroll_agent(&conformance::agent("b", "kb"), None).unwrap(),
            Enrollment::Stored
        );
        store.record_action_results("b", &[], true, "2026-02-01T00:00:00Z").unwrap();
        assert_eq!(heard(soon), note(channel::AGENTS, "b"));

        store.put_secret("db-password", b"sealed", "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(heard(soon), note(channel::SECRETS, "db-password"));
        store.put_secret("db-password", b"sealed", "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(heard(quiet), [], "the same value again changes nothing");
        assert!(store.remove_secret("db-password").unwrap());
        assert_eq!(heard(soon), note(channel::SECRETS, "db-password"));
        assert!(!store.remove_secret("db-password").unwrap());
        assert_eq!(heard(quiet), []);

        store.activate_new(&conformance::release("site", 3, "2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(heard(soon), note(channel::RELEASES, ""));
        store.activate("site", 3).unwrap();
        assert_eq!(heard(soon), note(channel::RELEASES, ""));
        assert!(store.activate("site", 9).is_err());
        assert_eq!(heard(quiet), []);
    }

    #[test]
    fn check_ins_name_the_instance_that_wrote_them() {
        let Some(db) = pg::fresh_database() else { return };
        let mut a = PostgresStore::connect(&settings(db.url(), "instance-a")).unwrap();
        let mut b = PostgresStore::connect(&settings(db.url(), "instance-b")).unwrap();
        assert_eq!(
            a.enroll_agent(&conformance::agent("x", "kx"), None).unwrap(),
            Enrollment::Stored
        );
        assert_eq!(a.agent_view("x").unwrap().unwrap().instance, None, "never checked in");
        a.record_checkins(&[conformance::report("x", "kx")], &conformance::unchanged).unwrap();
        assert_eq!(b.agent_view("x").unwrap().unwrap().instance.as_deref(), Some("instance-a"));
        b.touch_agents(&["x".into()], "2026-06-01T00:01:00Z").unwrap();
        let view = a.agent_view("x").unwrap().unwrap();
        assert_eq!(view.instance.as_deref(), Some("instance-b"));
        assert_eq!(view.last_checkin.as_deref(), Some("2026-06-01T00:01:00Z"));
    }

    #[test]
    fn what_this_code_never_writes_is_corrupt() {
        let Some(db) = pg::fresh_database() else { return };
        let store = PostgresStore::connect(&settings(db.url(), "test-1")).unwrap();
        db.connect()
            .batch_execute(
                "INSERT INTO agents (id, access_key_id, access_secret_sha256, policy_id, kind,
                     enrolled_at, active, version, local_metadata, tags, policy_revision)
                 VALUES ('a', 'k', '00', 'p', 'PERMANENT', 't', 1, '9.1.2', '{}', '[]', -1);
                 INSERT INTO uploads VALUES ('u', 'x', 'a', 'n', 'm', 1, 1, 'LOST', 't', NULL, NULL)",
            )
            .unwrap();
        let e = store.agent_view("a").unwrap_err();
        assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
        let e = store.upload("u").unwrap_err();
        assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    }
}
