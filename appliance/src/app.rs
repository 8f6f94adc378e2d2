//! What every handler shares: the release being served (reloaded when an import or rollback
//! moves the active pointer), and running blocking work (the state database, files) off the
//! async threads.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_artifacts::BlobStore;
use ferry_manifests::TrustedKeys;

use crate::error::ApiError;
use crate::release::{Active, Release};

/// What every handler shares.
pub(crate) struct AppState {
    pub blobs: BlobStore,
    /// The active release as last loaded: served when it verified, otherwise nothing is.
    /// Replaced when an import or rollback changes it.
    pub release: RwLock<Active>,
    /// Bumped whenever `release` changes, to wake parked check-ins.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// The quick-start CA's revocation list (DER), served at [`crate::net::tls::CRL_PATH`].
    pub crl: Option<Vec<u8>>,
    /// The site's Elasticsearch, when `[elasticsearch]` is configured (set once, at start).
    pub elastic: std::sync::OnceLock<Arc<crate::elastic::Elastic>>,
}

impl AppState {
    pub(crate) fn new(blobs: BlobStore, crl: Option<Vec<u8>>) -> Self {
        Self {
            blobs,
            release: RwLock::new(Active::None),
            changed: tokio::sync::watch::channel(0).0,
            crl,
            elastic: std::sync::OnceLock::new(),
        }
    }

    /// The release served now: the active one, when it verified.
    pub(crate) fn current(&self) -> Option<Arc<Release>> {
        self.served_or_trouble().ok()
    }

    pub(crate) fn active(&self) -> Active {
        self.release.read().expect("release lock").clone()
    }

    /// The release served now, or why there is none in the words `releases` and `serve` use.
    pub(crate) fn served_or_trouble(&self) -> Result<Arc<Release>, String> {
        match self.active() {
            Active::Ready(release) => Ok(release),
            other => Err(other.trouble().unwrap_or_default()),
        }
    }
}

/// Runs blocking work (SQLite, files) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(e.into()))?
}

/// Runs `f` with the store, off the async threads.
pub(crate) async fn with_db<T: Send + 'static>(
    db: &crate::store::Db,
    f: impl FnOnce(&mut dyn crate::store::Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let db = Arc::clone(db);
    blocking(move || f(&mut **db.lock().expect("state lock"))).await
}

/// A store failure is internal trouble: logged, answered with `500`.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Internal(e.into())
    }
}

/// What the release watcher last made of the active pointer.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// Before the first look: whatever is there is loaded and reported.
    Nothing,
    Pointer(Option<(String, u64)>),
}

/// Loads the active release now (so nothing is answered as if there were none, and a server
/// with nothing to serve says so at start), then re-reads it whenever the state database says
/// it changed, so an import or rollback takes effect for new requests without a restart.
pub(crate) fn watch_active(
    state: Arc<AppState>,
    db: crate::store::Db,
    data_dir: PathBuf,
    keys: TrustedKeys,
) {
    let shown = refresh(&state, &db, &data_dir, &keys, Seen::Nothing);
    tokio::spawn(async move {
        let mut shown = shown;
        // One indexed SQLite read per tick: cheap enough to notice an import within 100 ms.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let (state, db, dir, keys) =
                (Arc::clone(&state), Arc::clone(&db), data_dir.clone(), keys.clone());
            let seen = shown.clone();
            match tokio::task::spawn_blocking(move || refresh(&state, &db, &dir, &keys, seen)).await
            {
                Ok(now) => shown = now,
                Err(e) => tracing::error!(error = %e, "release watcher failed"),
            }
        }
    });
}

/// Makes the active release the one served if it is not `shown` already; returns what is
/// shown now. A release that fails to load (its manifest no longer verifies with the trusted
/// keys, say) is never served: the server then serves nothing, rather than a previous release
/// that `releases` no longer calls active and the import's garbage collection may be removing,
/// and reports it once, with the fix.
fn refresh(
    state: &AppState,
    db: &crate::store::Db,
    data_dir: &std::path::Path,
    keys: &TrustedKeys,
    shown: Seen,
) -> Seen {
    let pointer = match db.lock().expect("state lock").active() {
        Ok(pointer) => pointer,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot read the active release");
            return shown;
        }
    };
    let seen = Seen::Pointer(pointer.clone());
    if seen == shown {
        return shown;
    }
    // Loading re-verifies the stored manifest with the keys trusted now.
    let active = Active::load(data_dir, pointer, keys);
    match active.trouble() {
        None => tracing::info!(release = ?active.pointer(), "serving the active release"),
        Some(trouble) => tracing::warn!("{trouble}"),
    }
    *state.release.write().expect("release lock") = active;
    state.changed.send_modify(|generation| *generation += 1);
    seen
}
