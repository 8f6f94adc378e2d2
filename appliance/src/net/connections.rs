//! How many connections the agent-facing listeners hold, in all and per client address. Every
//! connection is a file descriptor, and so are the database, the blobs a download reads and the
//! admin socket's clients: a client holding bare connections up to the process's limit would
//! otherwise stop the accept loop (`Too many open files`) and everything that opens a file with
//! it, the admin API included, so the operator could not revoke the attacker.
//!
//! The caps: in all, the open-file limit less a reserve for everything that is not an agent's
//! connection; per address, half of that by default (so one address cannot hold every slot, while
//! a site's NAT carrying thousands of agents still fits). The counts are the process's, shared by
//! the TLS and the mirror listeners, as the descriptor limit is.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept for what is not an agent connection: the database and its WAL, blobs being
/// served or imported, upload files, the admin socket and its clients, logs. A sixteenth of the
/// limit (1,250 of the 20,000 a default Debian root shell gets) and never fewer than 128.
fn reserve(limit: usize) -> usize {
    (limit / 16).max(128)
}

/// The connection caps and counts.
pub(crate) struct Connections {
    total: Arc<Semaphore>,
    /// The caps in all and per client address, and the open-file limit they come from.
    pub cap: usize,
    pub per_address: usize,
    pub open_files: u64,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// An admitted connection; dropping it frees its place.
pub(crate) struct Admitted {
    connections: Arc<Connections>,
    address: IpAddr,
    _total: OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().expect("connections lock");
        if let Some(n) = open.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.address);
            }
        }
    }
}

impl Connections {
    /// Caps of `total` connections in all and `per_address` from one address.
    pub(crate) fn new(total: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total.max(1))),
            cap: total.max(1),
            per_address: per_address.max(1),
            open_files: 0,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Caps derived from an open-file limit (see the module's notes).
    pub(crate) fn for_file_limit(limit: u64, per_address: Option<usize>) -> Arc<Self> {
        let files = usize::try_from(limit).unwrap_or(usize::MAX).min(1 << 24);
        let total = files.saturating_sub(reserve(files)).max(1);
        let mut connections = Self::new(total, per_address.unwrap_or(total / 2));
        Arc::get_mut(&mut connections).expect("just made").open_files = limit;
        connections
    }

    /// Waits for a place in the total (the connections waiting meanwhile stay in the listener's
    /// backlog, which is what a full server should do), before the next accept.
    pub(crate) async fn place(self: &Arc<Self>) -> OwnedSemaphorePermit {
        Arc::clone(&self.total).acquire_owned().await.expect("the semaphore is never closed")
    }

    /// Admits an accepted connection from `address` with its place, or refuses it when that
    /// address holds its share already.
    pub(crate) fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        place: OwnedSemaphorePermit,
    ) -> Option<Admitted> {
        let mut open = self.open.lock().expect("connections lock");
        let n = open.entry(address).or_insert(0);
        if *n >= self.per_address {
            return None;
        }
        *n += 1;
        Some(Admitted { connections: Arc::clone(self), address, _total: place })
    }

    /// Free places in the total.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.total.available_permits()
    }
}

static CONNECTIONS: OnceLock<Arc<Connections>> = OnceLock::new();

/// The process's caps: those [`configure`] made, or the defaults.
pub(crate) fn process() -> &'static Arc<Connections> {
    configure(None)
}

/// Makes the process's caps, once, from its open-file limit (first raised to its hard limit:
/// systemd starts services with a soft limit of 1,024 and a hard one of 524,288, and 1,024
/// descriptors would hold 900 agents) and `per_address` (default: half the total). Later calls
/// return what the first made.
pub(crate) fn configure(per_address: Option<usize>) -> &'static Arc<Connections> {
    CONNECTIONS.get_or_init(|| {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let raised = rustix::process::Rlimit { current: limit.maximum, ..limit };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::warn!(error = %e, "cannot raise the open-file limit to its hard limit");
            }
        }
        let limit = getrlimit(Resource::Nofile).current.unwrap_or(1 << 20);
        Connections::for_file_limit(limit, per_address)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_address_gets_its_share_and_places_come_back() {
        let c = Connections::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = c.admit(a, c.place().await).unwrap();
        let _second = c.admit(a, c.place().await).unwrap();
        // A third from the same address is refused, and its place is given back.
        assert!(c.admit(a, c.place().await).is_none());
        assert_eq!(c.available(), 1);
        let other = c.admit(b, c.place().await).unwrap();
        // The total is full: no place until one closes.
        assert_eq!(c.available(), 0);
        drop(first);
        assert_eq!(c.available(), 1);
        assert!(c.admit(a, c.place().await).is_some(), "the address's closed one freed its share");
        drop(other);
    }

    #[test]
    fn caps_keep_a_reserve_of_descriptors() {
        let c = Connections::for_file_limit(20_000, None);
        assert_eq!(c.available(), 18_750);
        assert_eq!(c.per_address, 9_375);
        let small = Connections::for_file_limit(1_024, None);
        assert_eq!(small.available(), 896);
        assert_eq!(Connections::for_file_limit(100, Some(5)).per_address, 5);
    }
}
