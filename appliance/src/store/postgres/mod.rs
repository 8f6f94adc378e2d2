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
}

