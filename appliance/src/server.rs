//! The HTTP side: the router (mirror, status, PGP key), the one error type turned into
//! responses, and the accept loop over rustls that takes an already-bound listener.

use std::future::Future;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ferry_artifacts::BlobStore;
use ferry_manifests::{EntryName, TrustedKeys};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::net::TcpListener;

use crate::release::{Active, Release};

/// What `/api/status` answers for `active`, by Fleet Server's rules for a server that is not
/// ready (fleet-server internal/pkg/policy/self.go): `STARTING` while it waits for its policy
/// (here: no release was ever activated), `FAILED` when what it should run cannot be read (the
/// active release does not verify, so nothing is served), `HEALTHY` otherwise.
pub fn fleet_status(active: &Active) -> &'static str {
    match active {
        Active::Ready(_) => "HEALTHY",
        Active::None => "STARTING",
        Active::Unusable { .. } => "FAILED",
    }
}

/// What every handler shares.
pub struct AppState {
    pub blobs: BlobStore,
    /// The active release as last loaded: served when it verified, otherwise nothing is.
    /// Replaced when an import or rollback changes it.
    pub release: RwLock<Active>,
    /// Bumped whenever `release` changes, to wake parked check-ins.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// The quick-start CA's revocation list (DER), served at [`crate::tls::CRL_PATH`].
    pub crl: Option<Vec<u8>>,
}

impl AppState {
    pub fn new(blobs: BlobStore, crl: Option<Vec<u8>>) -> Self {
        Self {
            blobs,
            release: RwLock::new(Active::None),
            changed: tokio::sync::watch::channel(0).0,
            crl,
        }
    }

    /// The release served now: the active one, when it verified.
    pub fn current(&self) -> Option<Arc<Release>> {
        self.served_or_trouble().ok()
    }

    pub fn active(&self) -> Active {
        self.release.read().expect("release lock").clone()
    }

    /// The release served now, or why there is none in the words `releases` and `serve` use.
    pub fn served_or_trouble(&self) -> Result<Arc<Release>, String> {
        match self.active() {
            Active::Ready(release) => Ok(release),
            other => Err(other.trouble().unwrap_or_default()),
        }
    }
}

/// Runs blocking work (SQLite, files) off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(e.into()))?
}

/// Runs `f` with the state database, off the async threads.
pub async fn with_db<T: Send + 'static>(
    db: &Arc<std::sync::Mutex<crate::state::SqliteState>>,
    f: impl FnOnce(&mut crate::state::SqliteState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let db = Arc::clone(db);
    blocking(move || f(&mut db.lock().expect("state lock"))).await
}

/// Errors as agents expect them: a status and Fleet Server's JSON error shape. Internal causes
/// are logged here, once, and never sent.
#[derive(Debug)]
pub enum ApiError {
    /// Any Fleet error: a status, Fleet Server's `error` code, and a message for the agent's log.
    Fleet {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// `429` with Fleet's error shape and a `Retry-After` (whole seconds, at least one: what
    /// HTTP clients and agents' backoff understand).
    TooMany {
        code: &'static str,
        message: String,
        retry_after: Duration,
    },
    /// A refused `Authorization` header.
    Credential(crate::credentials::CredentialError),
    NotFound,
    TlsRequired,
    RangeNotSatisfiable {
        size: u64,
    },
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn fleet(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Fleet { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, message) = match self {
            ApiError::Fleet { status, code, message } => (status, code, message),
            ApiError::TooMany { code, message, retry_after } => {
                let mut response =
                    ApiError::fleet(StatusCode::TOO_MANY_REQUESTS, code, message).into_response();
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                return response;
            }
            ApiError::Credential(e) => {
                let (status, code) = e.status_and_code();
                (StatusCode::from_u16(status).expect("valid status"), code, e.to_string())
            }
            ApiError::NotFound => (StatusCode::NOT_FOUND, "NotFound", "not found".to_owned()),
            ApiError::TlsRequired => {
                (StatusCode::NOT_IMPLEMENTED, "ErrTLSRequired", "TLS required".to_owned())
            }
            ApiError::RangeNotSatisfiable { size } => {
                let mut response = (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response();
                *response.body_mut() = Body::empty();
                return response;
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "BadRequest", "internal error".to_owned())
            }
        };
        let body = serde_json::json!({ "statusCode": status.as_u16(), "error": error, "message": message });
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        response
    }
}

/// Tells browsers not to guess content types, on every response (a scanner's rule; agents are
/// not browsers, but operators may open the mirror in one).
pub async fn nosniff(mut response: Response) -> Response {
    response.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

/// The routes of the TLS listener: the agent-facing API and the mirror.
/// Without TLS, the PGP key route answers 501, as Fleet Server does.
pub fn router(
    state: Arc<AppState>,
    agents: Arc<crate::agent_api::AgentApi>,
    limits: &crate::limits::Limits,
    tls: bool,
) -> Router {
    let l =
        |route: &str| axum::middleware::from_fn_with_state(limits.get(route), crate::limits::limit);
    let pgp = if tls { get(pgp_key) } else { get(|| async { ApiError::TlsRequired }) };
    Router::new()
        .route("/api/status", get(status).layer(l("status")))
        .route("/api/agents/upgrades/{version}/pgp-public-key", pgp.layer(l("pgp_key")))
        .route(crate::tls::CRL_PATH, get(crl).layer(l("status")))
        .merge(mirror_router(Arc::clone(&state)))
        .with_state(state)
        .merge(crate::agent_api::router(agents, limits))
        .layer(axum::middleware::from_fn(crate::agent_api::api_version))
        .layer(axum::middleware::map_response(nosniff))
}

/// The mirror alone, for a separate plain-HTTP listener. Its PGP key route answers 501, as
/// Fleet Server does without TLS.
pub fn mirror_router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/downloads/{*path}", get(download))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

/// The plain-HTTP listener's routes.
pub fn plain_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/api/agents/upgrades/{version}/pgp-public-key",
            get(|| async { ApiError::TlsRequired }),
        )
        .merge(mirror_router(Arc::clone(&state)))
        .with_state(state)
        .layer(axum::middleware::map_response(nosniff))
}

async fn crl(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let crl = state.crl.clone().ok_or(ApiError::NotFound)?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], crl).into_response())
}

/// Fleet Server's status: 200 only when `HEALTHY`, 503 with the same body otherwise
/// (fleet-server internal/pkg/api/handleStatus.go); no version without an API key, and never 401.
async fn status(State(state): State<Arc<AppState>>) -> Response {
    let status = fleet_status(&state.active());
    let code = if status == "HEALTHY" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(serde_json::json!({ "name": "fleet-server", "status": status })))
        .into_response()
}

async fn pgp_key(
    State(state): State<Arc<AppState>>,
    UrlPath(version): UrlPath<String>,
) -> Result<Response, ApiError> {
    // Agents (8.10.4+) ask with the core version of their upgrade target, which may be one
    // this appliance does not carry (a fallback key source, elastic-agent
    // internal/pkg/agent/application/upgrade/step_download.go); Fleet Server answers every
    // version with its one key. A path that is not X.Y.Z is a bad request.
    let parts: Vec<&str> = version.split('.').collect();
    if parts.len() != 3
        || !parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("{version:?} is not a version MAJOR.MINOR.PATCH"),
        ));
    }
    let release = state.current().ok_or(ApiError::NotFound)?;
    let key = release.pgp_key().ok_or(ApiError::NotFound)?;
    let bytes = tokio::fs::read(state.blobs.path(&key.sha256))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// Maps a request path to a release entry, refusing anything that is not exactly an entry name
/// below `downloads/`: no percent-encoding, backslashes, empty, `.` or `..` components.
fn entry_for(raw_path: &str) -> Option<EntryName> {
    let relative = raw_path.strip_prefix('/')?;
    if relative.contains('%') || !relative.starts_with("downloads/") {
        return None;
    }
    EntryName::new(relative).ok()
}

/// A single `bytes=` range, resolved against `size`. `Ok(None)` means serve the whole file
/// (no header, or a form we do not serve, such as several ranges).
fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(spec) = value.strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((start, end)) = spec.split_once('-') else { return Ok(None) };
    let unsatisfiable = ApiError::RangeNotSatisfiable { size };
    let (start, end) = match (start.trim(), end.trim()) {
        ("", "") => return Ok(None),
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ApiError::RangeNotSatisfiable { size })?;
            if n == 0 || size == 0 {
                return Err(unsatisfiable);
            }
            (size.saturating_sub(n), size - 1)
        }
        (start, end) => {
            let start: u64 = start.parse().map_err(|_| ApiError::RangeNotSatisfiable { size })?;
            let end: u64 = if end.is_empty() {
                size.saturating_sub(1)
            } else {
                end.parse().map_err(|_| ApiError::RangeNotSatisfiable { size })?
            };
            if start >= size || end < start {
                return Err(unsatisfiable);
            }
            (start, end.min(size - 1))
        }
    };
    Ok(Some((start, end)))
}

async fn download(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let name = entry_for(request.uri().path()).ok_or(ApiError::NotFound)?;
    let release = state.current().ok_or(ApiError::NotFound)?;
    let entry = release.files.get(name.as_str()).ok_or(ApiError::NotFound)?;
    let etag = format!("\"{}\"", entry.sha256.to_hex());
    let headers: &HeaderMap = request.headers();
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
        && inm
            .split(',')
            .map(str::trim)
            .any(|t| t == etag || t == "*" || t.strip_prefix("W/") == Some(etag.as_str()))
    {
        return Ok(response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid response"));
    }
    let content_type = if name.as_str().ends_with(".sha512") || name.as_str().ends_with(".asc") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    let size = entry.size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) => parse_range(value, size)?,
        None => None,
    };
    let (start, len) = match range {
        Some((start, end)) => {
            response = response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            (start, end - start + 1)
        }
        None => (0, size),
    };
    response =
        response.header(header::CONTENT_TYPE, content_type).header(header::CONTENT_LENGTH, len);
    if request.method() == Method::HEAD {
        return Ok(response.body(Body::empty()).expect("valid response"));
    }
    // Opened now: an import or garbage collection that replaces the blob later does not disturb
    // this download, which keeps reading the file it opened.
    let mut file = tokio::fs::File::open(state.blobs.path(&entry.sha256))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await.map_err(|e| ApiError::Internal(e.into()))?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 1 << 20);
    Ok(response.body(Body::from_stream(stream)).expect("valid response"))
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
pub fn watch_active(
    state: Arc<AppState>,
    db: Arc<std::sync::Mutex<crate::state::SqliteState>>,
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
    db: &std::sync::Mutex<crate::state::SqliteState>,
    data_dir: &std::path::Path,
    keys: &TrustedKeys,
    shown: Seen,
) -> Seen {
    let pointer = match crate::state::StateStore::active(&*db.lock().expect("state lock")) {
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

/// Serves `app` on an already-bound listener until `shutdown` resolves, over TLS when `tls` is
/// given, with our own lean HTTP/1.1 loop ([`crate::http1`]). Each connection runs on its own
/// task. The header timeout also bounds the TLS handshake.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: crate::http1::Limits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let header_timeout = limits.header_timeout;
    let connections = crate::connections::process();
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut last_refusal: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // A place first: at the cap, new connections wait in the backlog, not in a descriptor.
        let place = tokio::select! {
            place = connections.place() => place,
            () = &mut shutdown => return Ok(()),
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning, and say
                    // so once a minute rather than 20 times a second.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "accept failed (repeats are not logged for a minute)");
                        last_warning = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let peer_ip = peer.ip().to_canonical();
        let Some(admitted) = connections.admit(peer_ip, place) else {
            // Closed at once: this address holds its share of the connections already. Said
            // once a minute: agents behind a NAT address that reaches its share need
            // `server.max_connections_per_address` raised (an agent refused so cannot enroll).
            if last_refusal.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                tracing::warn!(
                    address = %peer_ip,
                    per_address = connections.per_address,
                    "connections refused: this address holds its share (server.max_connections_per_address); repeats are not logged for a minute"
                );
                last_refusal = Some(tokio::time::Instant::now());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, limits) = (app.clone(), limits.clone());
        // Two kinds of task, each sized to its own connection: a plain one does not carry
        // the room a TLS session needs.
        match acceptor.clone() {
            Some(acceptor) => tokio::spawn(async move {
                let _admitted = admitted;
                match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        log_end(peer, crate::http1::serve(tls, app, limits, Some(peer_ip)).await);
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }),
            None => tokio::spawn(async move {
                let _admitted = admitted;
                log_end(peer, crate::http1::serve(stream, app, limits, Some(peer_ip)).await);
            }),
        };
    }
}

/// Clients end connections in every way (debug); a response that broke its own framing is
/// this server's bug (warn).
fn log_end(peer: std::net::SocketAddr, result: Result<(), crate::http1::ConnError>) {
    match result {
        Ok(()) => {}
        Err(e @ crate::http1::ConnError::BodyLength { .. }) => {
            tracing::warn!(%peer, error = %e, "connection ended: a response broke its framing");
        }
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_entry_names_below_downloads() {
        assert!(entry_for("/downloads/beats/elastic-agent/a.tar.gz").is_some());
        for bad in [
            "/downloads/../state.db",
            "/downloads/%2e%2e/state.db",
            "/downloads//beats/a",
            "/downloads/beats\\a",
            "/releases/x",
            "/downloads/",
            "downloads/a",
        ] {
            assert!(entry_for(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=0-1000", 100).unwrap(), Some((0, 99)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100).unwrap(), None);
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=5-2", 100).is_err());
    }
}
