//! [`ClusterStore`]: what the instances of a cluster tell each other through the store they
//! share (`crate::cluster` is the caller): who is alive, which bundle is being imported, which
//! instance holds or refused which release, and the notifications of what changed. Only a
//! server database has a cluster: `store/postgres/` implements it, SQLite does not.

pub(crate) use super::postgres::channel;
use super::{Result, Store};

/// Everything a cluster's instance needs from the store: the state every backend keeps, and
/// the cluster's own.
pub(crate) trait ClusterStore: Store {
    /// Records this instance's heartbeat (creating its row on the first).
    fn heartbeat(&mut self, beat: &Beat<'_>) -> Result<()>;
    /// Every instance that ever joined, by name.
    fn instances(&mut self) -> Result<Vec<Instance>>;
    /// Starts a cluster import of a bundle this instance has verified and staged, recording
    /// that it holds it, in one transaction; the other instances are notified on
    /// [`channel::IMPORTS`]. [`super::StoreError::Conflict`] when an import of this name and
    /// sequence is underway.
    fn begin_import(&mut self, import: &ClusterImport, at: &str) -> Result<()>;
    /// Imports still staging, oldest first.
    fn pending_imports(&mut self) -> Result<Vec<ClusterImport>>;
    /// Records this instance's verdict on a release: it holds it (`Ok`), or refused it and why.
    fn record_holding(
        &mut self,
        name: &str,
        sequence: u64,
        verdict: std::result::Result<(), &str>,
        at: &str,
    ) -> Result<()>;
    /// Every instance's verdict on every release, by release then instance.
    fn holdings(&mut self) -> Result<Vec<Holding>>;
    /// Ends an import: `active` once the release is active everywhere, or `refused` with why.
    fn end_import(
        &mut self,
        name: &str,
        sequence: u64,
        outcome: std::result::Result<(), &str>,
    ) -> Result<()>;
    /// Forgets verdicts on releases neither recorded nor being imported.
    fn prune_holdings(&mut self) -> Result<()>;
    /// Listens on `channels` from now on, on this handle's connection.
    fn listen(&mut self, channels: &[&str]) -> Result<()>;
    /// The notifications received, waiting up to `wait` for the first: `(channel, payload)`.
    /// Fails, rather than reconnecting, when the connection is lost: a new connection would
    /// listen on nothing, and what was notified meanwhile is gone.
    fn notifications(&mut self, wait: std::time::Duration) -> Result<Vec<(String, String)>>;
    /// The agents action `seq` is for (a notification on [`channel::ACTIONS`] names only it).
    fn action_agents(&mut self, seq: i64) -> Result<Vec<String>>;
}

/// An instance not seen for this long is not counted as live: an import does not wait for it,
/// and it catches up when it starts again. Three heartbeats (`crate::cluster::HEARTBEAT`).
pub(crate) const LIVE_SECONDS: u32 = 15;

/// What an instance says of itself at each heartbeat.
#[derive(Debug, Clone)]
pub(crate) struct Beat<'a> {
    pub started_at: &'a str,
    pub version: &'a str,
    /// `serving`, `draining`, `catching-up` or `stopped`.
    pub state: &'a str,
    pub active: Option<(&'a str, u64)>,
    /// Check-ins parked on it now.
    pub parked: u64,
}

/// An instance as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Instance {
    pub name: String,
    pub started_at: String,
    /// RFC 3339, by the database's clock.
    pub seen_at: String,
    pub seconds_since_seen: u64,
    pub version: String,
    pub state: String,
    /// Seen within [`LIVE_SECONDS`] and not stopped.
    pub live: bool,
    pub active: Option<(String, u64)>,
    pub parked: u64,
}

/// A bundle being imported into the cluster, or one whose import ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterImport {
    pub name: String,
    pub sequence: u64,
    /// Its file name in `shared_dir/bundles/` (the detached signature beside it, `.minisig`).
    pub bundle_file: String,
    /// Of the manifest the importing instance verified: every instance must stage the same.
    pub manifest_sha256: String,
    pub allow_downgrade: bool,
    pub allow_expired: bool,
    pub started_by: String,
    pub started_at: String,
    /// `staging`, `active` or `refused`.
    pub state: String,
    pub reason: Option<String>,
}

/// One instance's verdict on a release: it holds it (`staged`) or it `refused` it, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Holding {
    pub instance: String,
    pub name: String,
    pub sequence: u64,
    pub state: String,
    pub reason: Option<String>,
    pub at: String,
}
