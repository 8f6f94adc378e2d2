//! What every handler shares: the release being served (reloaded when an import or rollback
//! moves the active pointer), the on-site secrets, and running blocking work (the state
//! database, files) off the async threads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_artifacts::BlobStore;
use ferry_manifests::TrustedKeys;

use crate::error::ApiError;
use crate::release::{Active, Release};
use crate::secrets::{SecretBox, SecretError};
use crate::store::{SecretRecord, Store};

/// What every handler shares.
pub(crate) struct AppState {
    pub blobs: BlobStore,
    /// The active release as last loaded: served when it verified, otherwise nothing is.
    /// Replaced when an import or rollback changes it.
    pub release: RwLock<Active>,
    /// Bumped whenever `release` or an on-site secret changes, to wake parked check-ins (and
    /// make the policy cache deliver policies anew, with the secrets' current values).
    pub changed: tokio::sync::watch::Sender<u64>,
    /// The quick-start CA's revocation list (DER), served at [`crate::net::tls::CRL_PATH`].
    pub crl: Option<Vec<u8>>,
    /// The site's Elasticsearch, when `[elasticsearch]` is configured (set once, at start).
    pub elastic: std::sync::OnceLock<Arc<crate::elastic::Elastic>>,
    /// Seals and opens the on-site secrets' values.
    secret_box: SecretBox,
    /// The on-site secrets' sealed values by id, as the store holds them: read from it at start,
    /// then changed only by [`AppState::set_secret`] and [`AppState::remove_secret`], which
    /// write the store first. Kept here so that delivering a policy needs no database call;
    /// only `serve` changes secrets (through its admin API), so nothing else writes the rows.
    sealed: RwLock<BTreeMap<String, Vec<u8>>>,
}

impl AppState {
    /// `secrets` are the store's sealed values, opened with `secret_box`.
    pub(crate) fn new(
        blobs: BlobStore,
        crl: Option<Vec<u8>>,
        secret_box: SecretBox,
        secrets: Vec<SecretRecord>,
    ) -> Self {
        Self {
            blobs,
            release: RwLock::new(Active::None),
            changed: tokio::sync::watch::channel(0).0,
            crl,
            elastic: std::sync::OnceLock::new(),
            secret_box,
            sealed: RwLock::new(secrets.into_iter().map(|r| (r.id, r.sealed)).collect()),
        }
    }

    /// Every on-site secret's value, by id, opened now: for resolving the secret references
    /// of the policies delivered (once per release or secret change, see `changed`). An error
    /// names the secret that does not open and the key file, never a value.
    pub(crate) fn secret_values(&self) -> Result<BTreeMap<String, String>, SecretError> {
        let sealed = self.sealed.read().expect("secrets lock");
        sealed.iter().map(|(id, s)| Ok((id.clone(), self.secret_box.open(id, s)?))).collect()
    }

    /// The values of secrets `ids` (those stored), and a fingerprint of their sealed forms:
    /// it changes whenever one of them is set again (a new nonce each time), so a delivered
    /// policy gets a new revision without its revision's hash ever depending on a value.
    pub(crate) fn secrets_for(
        &self,
        ids: &std::collections::BTreeSet<String>,
    ) -> Result<(BTreeMap<String, String>, String), SecretError> {
        use sha2::Digest as _;
        let sealed = self.sealed.read().expect("secrets lock");
        let mut fingerprint = sha2::Sha256::new();
        let mut values = BTreeMap::new();
        for id in ids {
            if let Some(s) = sealed.get(id) {
                fingerprint.update(id.as_bytes());
                fingerprint.update(sha2::Sha256::digest(s));
                values.insert(id.clone(), self.secret_box.open(id, s)?);
            }
        }
        Ok((values, hex::encode(fingerprint.finalize())))
    }

    /// Seals `value` as secret `id`'s, set at `at`, and stores it (replacing the one stored);
    /// then wakes parked check-ins so agents get policies with the new value. A refused id or
    /// value is a 400 that never repeats the value.
    pub(crate) fn set_secret(
        &self,
        store: &mut dyn Store,
        id: &str,
        value: &str,
        at: &str,
    ) -> Result<(), ApiError> {
        let sealed =
            self.secret_box.seal(id, value).map_err(|e| ApiError::bad_request(e.to_string()))?;
        {
            // Held across the write: two changes of one id land here in the store's order.
            let mut held = self.sealed.write().expect("secrets lock");
            store.put_secret(id, &sealed, at)?;
            held.insert(id.to_owned(), sealed);
        }
        self.changed.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Replaces the sealed values held with `records`, read from the store after another
    /// instance of the cluster changed one, then wakes parked check-ins.
    pub(crate) fn reload_secrets(&self, records: Vec<SecretRecord>) {
        *self.sealed.write().expect("secrets lock") =
            records.into_iter().map(|r| (r.id, r.sealed)).collect();
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Forgets secret `id` (false when there is none), then wakes parked check-ins.
    pub(crate) fn remove_secret(&self, store: &mut dyn Store, id: &str) -> Result<bool, ApiError> {
        let removed = {
            let mut held = self.sealed.write().expect("secrets lock");
            let removed = store.remove_secret(id)?;
            held.remove(id);
            removed
        };
        if removed {
            self.changed.send_modify(|generation| *generation += 1);
        }
        Ok(removed)
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

/// A store failure is internal trouble, logged and answered with `500`; but a database that
/// cannot be reached now is `503` with `Retry-After`, which agents retry with their backoff
/// (a `401` would make them give up their credentials).
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "state database unavailable");
                ApiError::Unavailable { retry_after: Duration::from_secs(5) }
            }
            e => ApiError::Internal(e.into()),
        }
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
///
/// In a cluster, a release this instance does not hold yet (it was away during the import) is
/// unpacked from the shared folder first (`crate::cluster::Cluster::catch_up`); until that
/// works, the release served before stays served, and it is tried again every few seconds.
pub(crate) async fn watch_active(
    state: Arc<AppState>,
    db: crate::store::Db,
    data_dir: PathBuf,
    keys: TrustedKeys,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) {
    let first =
        (Arc::clone(&state), Arc::clone(&db), data_dir.clone(), keys.clone(), cluster.clone());
    let shown = tokio::task::spawn_blocking(move || {
        let (state, db, dir, keys, cluster) = first;
        refresh(&state, &db, &dir, &keys, cluster.as_deref(), Seen::Nothing)
    })
    .await
    .unwrap_or(Seen::Nothing);
    tokio::spawn(async move {
        let mut shown = shown;
        // One indexed read per tick: cheap enough to notice an import within 100 ms.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let (state, db, dir, keys, cluster) = (
                Arc::clone(&state),
                Arc::clone(&db),
                data_dir.clone(),
                keys.clone(),
                cluster.clone(),
            );
            let seen = shown.clone();
            let refreshed = tokio::task::spawn_blocking(move || {
                refresh(&state, &db, &dir, &keys, cluster.as_deref(), seen)
            });
            match refreshed.await {
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
    cluster: Option<&crate::cluster::Cluster>,
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
    if let (Some(cluster), Some((name, sequence))) = (cluster, &pointer)
        && let Err(e) = cluster.catch_up(keys, name, *sequence)
    {
        // Tried again at the next tick; a few seconds apart, so the log says it once per try.
        tracing::warn!(error = %format!("{e:#}"), "keeping the release served until this instance holds the new one");
        std::thread::sleep(Duration::from_secs(5));
        return shown;
    }
    // Loading re-verifies the stored manifest with the keys trusted now.
    let active = Active::load(data_dir, pointer, keys);
    match active.trouble() {
        None => tracing::info!(release = ?active.pointer(), "serving the active release"),
        Some(trouble) => tracing::warn!("{trouble}"),
    }
    // The package registry's index, built before the release is served (a failure is logged
    // and the registry answers 500; everything else is served).
    if let Active::Ready(release) = &active {
        let _ = state.registry_of(release);
    }
    *state.release.write().expect("release lock") = active;
    state.changed.send_modify(|generation| *generation += 1);
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "2026-06-01T00:00:00Z";

    #[test]
    fn secret_changes_are_stored_kept_in_step_and_wake_check_ins() {
        let dir = tempfile::tempdir().unwrap();
        let mut store =
            crate::store::open(&crate::store::Location::Sqlite(dir.path().into())).unwrap();
        let secret_box = SecretBox::open_or_create(dir.path(), None, 0).unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let state = AppState::new(blobs, None, secret_box, Vec::new());
        let woken = state.changed.subscribe();

        state.set_secret(&mut *store, "pw", "hunter2", AT).unwrap();
        assert!(woken.has_changed().unwrap(), "a set wakes parked check-ins");
        state.set_secret(&mut *store, "key", "pem", AT).unwrap();
        let values = state.secret_values().unwrap();
        assert_eq!(
            values.into_iter().collect::<Vec<_>>(),
            [("key".to_owned(), "pem".to_owned()), ("pw".to_owned(), "hunter2".to_owned())]
        );
        let stored = store.secret_records().unwrap();
        assert!(stored.iter().all(|r| !r.sealed.windows(7).any(|w| w == b"hunter2")));

        // What a restart loads opens the same.
        let secret_box = SecretBox::open_or_create(dir.path(), None, stored.len()).unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let restarted = AppState::new(blobs, None, secret_box, stored);
        assert_eq!(restarted.secret_values().unwrap(), state.secret_values().unwrap());

        let generation = *state.changed.borrow();
        let Err(ApiError::Fleet { status, message, .. }) =
            state.set_secret(&mut *store, "bad}", "hunter2", AT)
        else {
            panic!("a bad id was taken")
        };
        assert_eq!(status, axum::http::StatusCode::BAD_REQUEST);
        assert!(!message.contains("hunter2"), "{message}");
        assert!(!state.remove_secret(&mut *store, "never").unwrap());
        assert_eq!(*state.changed.borrow(), generation, "nothing changed, nobody woken");
        assert!(state.remove_secret(&mut *store, "pw").unwrap());
        assert!(*state.changed.borrow() > generation);
        assert_eq!(state.secret_values().unwrap().keys().collect::<Vec<_>>(), ["key"]);
        assert_eq!(store.secret_records().unwrap().len(), 1);
    }
}
