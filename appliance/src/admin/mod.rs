//! The admin API: HTTP/1.1 on a Unix socket in the private data directory
//! (`data_dir/admin.sock`, mode 0600, peers checked with `SO_PEERCRED`), every request carrying
//! the admin token (`Authorization: Bearer …`) that `serve` mints afresh at each start into
//! `data_dir/admin.token`. The CLI's `status`, `tokens`, `agents`, `upgrade`, `unenroll`,
//! `reassign`, `settings`, `diagnostics`, `actions`, `secrets` and `drain` commands are its
//! clients. Actions are created here, in the serving process, so a parked check-in of a
//! targeted agent wakes at once.
//!
//! The same socket serves the read-only dashboard ([`dashboard`]: `/`, `/agents`, `/releases`,
//! `/upgrades`, `/audit`), outside [`PREFIX`], for a browser at the end of an SSH tunnel
//! (`ssh -L 8221:DATA_DIR/admin.sock HOST`); it takes the same token as the password of HTTP
//! Basic.

pub(crate) mod api;
pub(crate) mod client;
pub(crate) mod dashboard;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use self::api::{
    ActionRequest, ActionStatus, ActionTarget, ActionsCreated, ActiveRelease, Agent, AgentCounts,
    AgentsQuery, CreateActions, Drain, NewToken, Removed, Revoked, Secret, Server, SetSecret,
    StatusReport, Token, TokenCreated, Upload,
};
use crate::app::AppState;
use crate::credentials::ApiKey;
use crate::error::ApiError;
use crate::fleet::hub::Hub;
use crate::fleet::wire::{
    ActionKind, CancelData, PolicyReassignData, RequestDiagnosticsData, SettingsData, UpgradeData,
};
use crate::store::{
    ActionEffect, AgentPage, AgentView, Db, NewAction, NewEnrollmentToken, Store, StoreError,
    UploadStatus,
};

/// The admin API's prefix; the CLI and the server agree on it here.
pub(crate) const PREFIX: &str = "/admin/v1";
/// Files in `data_dir` through which the CLI reaches the running server.
pub(crate) const TOKEN_FILE: &str = "admin.token";
pub(crate) const SOCKET_FILE: &str = "admin.sock";
/// How long an action stays deliverable unless the admin says otherwise (Kibana: a month).
pub(crate) const DEFAULT_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);

pub(crate) struct Admin {
    pub(crate) state: Db,
    /// The agent API, whose delivered policies `status` reports on.
    pub agents: Arc<crate::fleet::AgentApi>,
    pub app: Arc<AppState>,
    pub hub: Arc<Hub>,
    pub public_base: String,
    pub uploads_dir: PathBuf,
    pub token: String,
    pub offline_after: Duration,
    pub audit: crate::audit::AuditLog,
    pub metrics: crate::metrics::Scraper,
    /// The agent listener's bound address, for `health`'s probe.
    pub listen: std::net::SocketAddr,
    /// The cluster this instance is in, whose instances the dashboard shows.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The OS user on the other end of an admin connection (`SO_PEERCRED`), for the audit log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub u32);

/// What a handler adds to its request's audit record: ids, names, counts, never a secret.
#[derive(Debug, Clone)]
pub(crate) struct AuditDetails(pub Value);

pub(crate) fn router(admin: Arc<Admin>) -> Router {
    let routes = Router::new()
        .route("/status", get(status))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}/revoke", post(revoke_token))
        .route("/agents", get(list_agents))
        .route("/agents/{id}", get(show_agent))
        .route("/agents/{id}/revoke", post(revoke_agent))
        .route("/actions", post(create_actions))
        .route("/actions/{id}", get(show_action))
        .route("/uploads", get(list_uploads))
        .route("/uploads/{id}/file", get(upload_file))
        .route("/secrets", get(list_secrets))
        .route("/secrets/{id}", put(set_secret).delete(remove_secret))
        .route("/drain", post(start_drain).delete(end_drain))
        .route("/metrics", get(crate::metrics::handler))
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&admin), require_token))
        .layer(axum::middleware::from_fn(local_only))
        // Outermost: it sees the requests the two checks above refuse too.
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&admin), audit))
        .with_state(Arc::clone(&admin));
    Router::new()
        .nest(PREFIX, routes)
        .merge(dashboard::router(admin))
        .layer(axum::middleware::map_response(crate::net::nosniff))
}

/// Mints this start's admin token into `data_dir/admin.token` (0600): a new one at every
/// start, so a token seen once (a backup, a leaked log) is worthless after the next restart.
/// Written to a temporary name opened with `O_EXCL`, then renamed over the old one, so no reader
/// ever sees half a token and nothing planted at the temporary name is written through.
pub(crate) fn mint_token(data_dir: &Path) -> anyhow::Result<String> {
    write_token(&data_dir.join(TOKEN_FILE))
}

/// Writes a new random token to `path` (0600) as [`mint_token`] describes, and returns it.
pub(crate) fn write_token(path: &Path) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = path.with_file_name(format!("{name}.{}.tmp", std::process::id()));
    // Left by a process with our pid that died between the two steps.
    let _ = std::fs::remove_file(&tmp);
    let token = ApiKey::mint().encoded();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// Binds the admin socket at `data_dir/admin.sock`, mode 0600. Called only by the process
/// holding `serve.lock`, so a socket already there is a dead server's: it is removed, but only
/// when it is a socket (anything else there is not ours, and is refused by name).
pub(crate) fn bind(data_dir: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let path = data_dir.join(SOCKET_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale {}", path.display()))?,
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket: it is not the appliance's; remove it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot stat {}", path.display())));
        }
    }
    // sun_path holds 108 bytes: a deep data_dir cannot carry the socket.
    let listener = tokio::net::UnixListener::bind(&path).with_context(|| {
        format!("cannot listen on {} (a socket path is at most 107 bytes long)", path.display())
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The one rule of trust on both ends of the admin socket: only `owner` (the user `serve` runs
/// as, whom the data directory belongs to) and root. The server applies it to the peer of each
/// connection; the client to the socket's owner and the serving process before it sends the
/// token.
pub(super) fn trusted(uid: u32, owner: u32) -> bool {
    uid == owner || uid == 0
}

/// Serves the admin router on its socket until `shutdown` resolves, each connection on its own
/// task once `SO_PEERCRED` names an allowed user; then removes the socket, so a CLI finds no
/// server rather than a dead one.
pub(crate) async fn serve(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    app: Router,
    limits: crate::net::http1::ConnLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let own_uid = rustix::process::geteuid().as_raw();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        match stream.peer_cred() {
            Ok(cred) if trusted(cred.uid(), own_uid) => {}
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "admin API: refused a connection from another user");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin API: cannot read the peer's credentials");
                continue;
            }
        }
        let peer = Peer(stream.peer_cred().map_or(u32::MAX, |c| c.uid()));
        let (app, limits) = (app.clone().layer(axum::Extension(peer)), limits.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::net::http1::serve(stream, app, limits, None).await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// The largest admin request body: axum's default for JSON, which an action naming every agent
/// of a large site stays well under.
pub(crate) fn body_limit(_: &axum::http::Method, _: &str) -> usize {
    2 << 20
}

/// Whether a `Host` header names this host: `localhost`, `127.0.0.1` or `[::1]`, any port.
fn local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(host, |(inside, _)| inside),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    ["localhost", "127.0.0.1", "::1"].contains(&name.to_ascii_lowercase().as_str())
}

/// Refuses (403) what only a browser sends: an `Origin`, or a `Host` naming another host (a page
/// reaching the socket through an SSH tunnel or DNS rebinding). The CLI sends `Host: localhost`
/// and no `Origin`. Checked before the token, so such a request learns nothing.
async fn local_only(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let refusal = if headers.contains_key(header::ORIGIN) {
        Some("the admin API refuses requests with an Origin header (browsers)".to_owned())
    } else {
        headers.get(header::HOST).and_then(|h| match h.to_str() {
            Ok(host) if local_host(host) => None,
            _ => Some(format!(
                "the admin API answers only Host localhost, 127.0.0.1 or [::1], not {h:?}"
            )),
        })
    };
    match refusal {
        Some(message) => {
            ApiError::fleet(StatusCode::FORBIDDEN, "Forbidden", message).into_response()
        }
        None => next.run(request).await,
    }
}

/// Records in the audit log every change made through the admin API and every request refused
/// for its token or origin, with the peer's user, the token's fingerprint and the outcome. Reads
/// that succeed are not recorded, nor a dashboard page's challenge to a browser that has not
/// sent credentials yet ([`dashboard::Challenged`]).
async fn audit(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    use crate::audit::{Actor, Outcome};
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let uid = request.extensions().get::<Peer>().map_or(u32::MAX, |p| p.0);
    let token = bearer(&request).to_owned();
    let response = next.run(request).await;
    if response.extensions().get::<dashboard::Challenged>().is_some() {
        return response;
    }
    let status = response.status();
    let changes = !matches!(method, axum::http::Method::GET | axum::http::Method::HEAD);
    let denied = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if !changes && !denied {
        return response;
    }
    let outcome = match status.as_u16() {
        200..=399 => Outcome::Ok,
        400..=499 => Outcome::Refused,
        _ => Outcome::Failed,
    };
    let event = event_name(&method, &path, denied);
    let mut details = json!({ "request": format!("{method} {path}"), "status": status.as_u16() });
    if let Some(AuditDetails(Value::Object(extra))) = response.extensions().get() {
        details.as_object_mut().expect("an object").extend(extra.clone());
    }
    let log = admin.audit.clone();
    let actor = Actor::admin(uid, &token);
    // Appending syncs the file: off the async threads.
    let _ = tokio::task::spawn_blocking(move || log.record(actor, &event, outcome, details)).await;
    response
}

/// The audit event of an admin request: `tokens.create`, `secrets.set` …, by the routes of
/// [`router`].
fn event_name(method: &axum::http::Method, path: &str, denied: bool) -> String {
    // Inside the router nested at PREFIX, paths arrive without it.
    let route: Vec<&str> = path.strip_prefix(PREFIX).unwrap_or(path).split('/').skip(1).collect();
    let named = match (method.as_str(), route.as_slice()) {
        _ if denied => "admin.denied",
        ("POST", ["tokens"]) => "tokens.create",
        ("POST", ["tokens", _, "revoke"]) => "tokens.revoke",
        ("POST", ["agents", _, "revoke"]) => "agents.revoke",
        ("POST", ["actions"]) => "actions.create",
        ("PUT", ["secrets", _]) => "secrets.set",
        ("DELETE", ["secrets", _]) => "secrets.remove",
        ("POST", ["drain"]) => "drain.start",
        ("DELETE", ["drain"]) => "drain.end",
        _ => "admin.request",
    };
    named.to_owned()
}

/// The bearer token a request presents, or "".
pub(crate) fn bearer(request: &Request) -> &str {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

async fn require_token(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    if !crate::credentials::same_secret(bearer(&request).as_bytes(), admin.token.as_bytes()) {
        return ApiError::fleet(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing or wrong admin token (data_dir/admin.token)",
        )
        .into_response();
    }
    next.run(request).await
}

async fn db<T: Send + 'static>(
    admin: &Arc<Admin>,
    f: impl FnOnce(&mut dyn Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::app::with_db(&admin.state, f).await
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::fleet(StatusCode::NOT_FOUND, "NotFound", message)
}

/// Refuses a request that needs a release when none is served, in the words `serve` and
/// `releases` use for it.
fn served(app: &AppState, what: &str) -> Result<Arc<crate::release::Release>, ApiError> {
    app.served_or_trouble().map_err(|trouble| ApiError::bad_request(format!("{what}: {trouble}")))
}

fn require_policy(app: &AppState, policy_id: &str) -> Result<(), ApiError> {
    let release = served(app, &format!("policy {policy_id:?}"))?;
    let known: Vec<&str> = release.policies().map(|(id, _)| id).collect();
    if known.contains(&policy_id) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "policy {policy_id:?} is not in the active release (it has: {})",
        known.join(", ")
    )))
}

/// What `ferry-appliance status` reports, from the running server (`running`) or, when none
/// runs, from the data directory: the active release, whether it verifies (`loaded`) and is
/// served, what `/api/status` answers (`null` without a server), the trouble in the words
/// `serve` logs, and the enrolled agents by status.
pub(crate) fn status_report(
    running: bool,
    active: &crate::release::Active,
    agents: &std::collections::BTreeMap<&str, usize>,
) -> StatusReport {
    use crate::release::Active;
    let loaded = matches!(active, Active::Ready(_));
    StatusReport {
        server: if running { Server::Running } else { Server::Stopped },
        status: running.then(|| crate::fleet::status::fleet_status(active).to_owned()),
        draining: false,
        active: active.pointer().map(|(name, sequence)| ActiveRelease {
            name: name.to_owned(),
            sequence,
            expires: match active {
                Active::Ready(release) => Some(ferry_manifests::rfc3339(release.manifest.expires)),
                _ => None,
            },
            content: match active {
                Active::Ready(release) => Some(content_of(&release.manifest)),
                _ => None,
            },
        }),
        loaded,
        served: running && loaded,
        check: match active {
            Active::Unusable { check, .. } => Some((*check).to_owned()),
            _ => None,
        },
        message: active.trouble(),
        agents: AgentCounts {
            total: agents.values().sum(),
            by_status: agents.iter().map(|(status, n)| ((*status).to_owned(), *n)).collect(),
            reports_trimmed: None,
            checkins_superseded: None,
        },
        elasticsearch: None,
        policies_held: Default::default(),
        listen: None,
        database: None,
        checks: Vec::new(),
        verdict: None,
    }
}

/// What a release carries and how old it is (agent versions, packages, Defend manifests),
/// from its manifest alone (no blob is read, so
/// `status` stays cheap with hundreds of packages).
pub(crate) fn content_of(manifest: &ferry_manifests::Manifest) -> api::Content {
    use ferry_artifacts::epr_version::Version;
    let mut versions: Vec<(Option<Version>, String)> = manifest
        .files
        .iter()
        .filter(|f| f.kind == ferry_manifests::Kind::AgentArtifact)
        .filter_map(|f| f.metadata.version())
        .map(|v| (Version::lenient(v), v.to_owned()))
        .collect();
    versions.sort();
    versions.dedup_by(|a, b| a.1 == b.1);
    let packages = manifest.files.iter().filter(|f| f.kind == ferry_manifests::Kind::Package);
    let mut defend: Vec<(Option<Version>, api::DefendManifest)> = manifest
        .files
        .iter()
        .filter(|f| f.kind == ferry_manifests::Kind::EndpointArtifact)
        .filter_map(|f| {
            let m = &f.metadata;
            let version = m.endpoint_version()?;
            Some((
                Version::lenient(version),
                api::DefendManifest {
                    endpoint_version: version.to_owned(),
                    manifest_version: m.manifest_version().map(str::to_owned),
                    date: m.content_date().map(ferry_manifests::rfc3339),
                },
            ))
        })
        .collect();
    defend.sort_by(|a, b| a.0.cmp(&b.0));
    api::Content {
        built: ferry_manifests::rfc3339(manifest.created),
        agent_versions: versions.into_iter().map(|(_, v)| v).collect(),
        packages: packages.clone().count(),
        newest_package: packages
            .filter_map(|f| f.metadata.content_date())
            .max()
            .map(ferry_manifests::rfc3339),
        defend: defend.into_iter().map(|(_, d)| d).collect(),
    }
}

/// Counts enrolled agents by the status `agents list` shows.
pub(crate) fn count_agents(
    views: &[AgentView],
    now: &str,
    offline_after: Duration,
) -> std::collections::BTreeMap<&'static str, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for view in views.iter().filter(|v| v.active) {
        *counts.entry(agent_status(view, now, offline_after)).or_insert(0) += 1;
    }
    counts
}

async fn status(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    Ok(axum::Json(status_now(&admin).await?).into_response())
}

/// `GET /status`'s report, which the dashboard shows too.
async fn status_now(admin: &Arc<Admin>) -> Result<StatusReport, ApiError> {
    let offline_after = admin.offline_after;
    let agents = match flush(admin).await {
        Ok(()) => {
            db(admin, move |s| {
                let views = s.agent_views(&AgentPage::summary())?;
                Ok(count_agents(&views, &crate::clock::now_rfc3339(), offline_after))
            })
            .await
        }
        Err(e) => Err(e),
    };
    // A store that fails is what `health` must say, not a reason to answer nothing.
    let (agents, database) = match agents {
        Ok(agents) => (agents, None),
        Err(ApiError::Internal(e)) => (Default::default(), Some(format!("{e:#}"))),
        Err(ApiError::Unavailable { .. }) => {
            (Default::default(), Some("the database cannot be reached now".to_owned()))
        }
        Err(e) => return Err(e),
    };
    let mut report = status_report(true, &admin.app.active(), &agents);
    report.database = database;
    report.listen = Some(admin.listen);
    // Since start, what no honest agent does (the server logs each such agent once): reports
    // with fields over their caps, and check-ins superseded by a newer one of the same agent.
    report.agents.reports_trimmed = Some(admin.hub.trimmed.count());
    report.agents.checkins_superseded = Some(admin.hub.superseded.count());
    report.elasticsearch = admin.app.elastic.get().map(|es| es.health());
    // What `/api/status` answers, draining and Elasticsearch's trouble included.
    report.status = Some(crate::fleet::status::current(&admin.agents).to_owned());
    report.draining = admin.hub.draining();
    // Every policy of the release is prepared (as a check-in would), so a policy no agent
    // asked for yet is reported too.
    let agents = Arc::clone(&admin.agents);
    report.policies_held = crate::app::blocking(move || {
        if let Some(release) = agents.app.current() {
            for (id, _) in release.policies() {
                agents.policies.get(&agents, id)?;
            }
        }
        Ok(agents.policies.held(&agents))
    })
    .await?;
    Ok(report)
}

/// How long `POST /drain` waits for the check-ins parked when it started to be answered. Each
/// answers within milliseconds (its connection writes "nothing to do" and closes); the bound is
/// for a server too loaded to, and is the one `serve` gives them when it stops.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// Starts draining: `/api/status` answers 503, so a load balancer's health check takes this
/// instance out; parked check-ins are answered now with nothing to do, new ones at once; agent
/// connections close after each response and idle ones at once, so agents' next requests open
/// new connections, which the load balancer sends to other instances. Answers once the check-ins
/// parked before are answered (or after [`DRAIN_WAIT`]).
async fn start_drain(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let parked_before = admin.hub.parked_count();
    if admin.hub.drain(true) {
        tracing::warn!(
            parked = parked_before,
            "draining: /api/status answers 503 and agents are sent away until `ferry-appliance \
             drain --undo` or a restart"
        );
    }
    let end = tokio::time::Instant::now() + DRAIN_WAIT;
    while admin.hub.parked_count() > 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(axum::Json(drain_state(&admin, parked_before)).into_response())
}

/// Ends draining: `/api/status` answers as before and check-ins park again.
async fn end_drain(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    if admin.hub.drain(false) {
        tracing::warn!("draining ended: serving agents again");
    }
    Ok(axum::Json(drain_state(&admin, 0)).into_response())
}

fn drain_state(admin: &Admin, parked_before: usize) -> Drain {
    Drain {
        draining: admin.hub.draining(),
        status: crate::fleet::status::current(&admin.agents).to_owned(),
        parked_before,
        parked: admin.hub.parked_count(),
    }
}

async fn create_token(
    State(admin): State<Arc<Admin>>,
    axum::Json(request): axum::Json<NewToken>,
) -> Result<Response, ApiError> {
    require_policy(&admin.app, &request.policy_id)?;
    let key = ApiKey::mint();
    let out = TokenCreated {
        id: key.id().to_string(),
        token: key.encoded(),
        policy_id: request.policy_id.clone(),
        name: request.name.clone(),
    };
    let token = NewEnrollmentToken {
        id: key.id().to_string(),
        secret_sha256: key.secret_hash().to_hex(),
        policy_id: request.policy_id,
        name: request.name,
        created: crate::clock::now_rfc3339(),
    };
    let details = json!({ "token_id": out.id, "policy_id": out.policy_id, "name": out.name });
    db(&admin, move |s| Ok(s.create_enrollment_token(&token)?)).await?;
    let mut response = axum::Json(out).into_response();
    response.extensions_mut().insert(AuditDetails(details));
    Ok(response)
}

async fn list_tokens(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let tokens = db(&admin, |s| Ok(s.enrollment_tokens()?)).await?;
    let tokens: Vec<Token> = tokens
        .into_iter()
        .map(|t| Token {
            id: t.id,
            policy_id: t.policy_id,
            name: t.name,
            created: t.created,
            revoked: t.revoked,
        })
        .collect();
    Ok(axum::Json(tokens).into_response())
}

async fn revoke_token(
    State(admin): State<Arc<Admin>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let msg = format!("no enrollment token {id}");
    if !db(&admin, move |s| Ok(s.revoke_enrollment_token(&id)?)).await? {
        return Err(not_found(msg));
    }
    Ok(axum::Json(Revoked { revoked: true }).into_response())
}

/// Everything known about an agent, with the status the admin sees.
fn agent_out(view: AgentView, status: &str) -> Agent {
    // Taken apart member by member: a new one in the store is a decision here, to show or not.
    let AgentView {
        id,
        active,
        policy_id,
        policy_revision,
        version,
        hostname,
        enrolled_at,
        last_checkin,
        last_status,
        last_message,
        tags,
        local_metadata,
        components,
        upgrade_state,
        upgrade_target,
        upgrade_details,
        upgraded_at,
        unenrolled_at,
        audit_unenroll_reason,
        instance,
    } = view;
    Agent {
        status: status.to_owned(),
        id,
        active,
        policy_id,
        policy_revision,
        version,
        hostname,
        enrolled_at,
        last_checkin,
        last_status,
        last_message,
        tags,
        local_metadata: Some(local_metadata),
        components: Some(components),
        upgrade_state,
        upgrade_target,
        upgrade_details,
        upgraded_at,
        unenrolled_at,
        audit_unenroll_reason,
        instance,
    }
}

/// `unenrolled`, `enrolled` (never checked in), `offline`, `updating`, or what the agent
/// reports: `online`, `degraded`, `error`, `starting`.
pub(crate) fn agent_status(view: &AgentView, now: &str, offline_after: Duration) -> &'static str {
    if !view.active {
        return "unenrolled";
    }
    let Some(last) = &view.last_checkin else { return "enrolled" };
    let cutoff = time::OffsetDateTime::parse(now, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| ferry_manifests::rfc3339(t - offline_after));
    if cutoff.is_some_and(|c| *last < c) {
        return "offline";
    }
    if view.upgrade_state.as_deref().is_some_and(|s| !crate::fleet::upgrade::finished(s)) {
        return "updating";
    }
    match view.last_status.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("online" | "healthy") => "online",
        Some("degraded") => "degraded",
        Some("error" | "failed") => "error",
        Some("starting" | "configuring") => "starting",
        _ => "online",
    }
}

/// Agents per page of `GET /agents` unless asked otherwise: a page stays a few MB even when
/// each agent carries what the list keeps.
pub(crate) const PAGE: usize = 1000;

/// What the list shows of an agent: everything but the bulky fields an agent fills as it
/// likes (`local_metadata`, `components`, `upgrade_details`), of which only the download
/// progress the UPGRADE column shows is kept. `GET /agents/{id}` has them all.
fn list_entry(mut agent: Agent) -> Agent {
    let percent = agent.upgrade_details.pointer("/metadata/download_percent").cloned();
    (agent.local_metadata, agent.components) = (None, None);
    agent.upgrade_details = match percent {
        Some(p) => json!({ "metadata": { "download_percent": p } }),
        None => Value::Null,
    };
    agent
}

/// Agents as the admin sees them, with their status, after writing the check-in reports still
/// queued in memory; `read` picks them from the store.
async fn agents(
    admin: &Arc<Admin>,
    read: impl FnOnce(&mut dyn Store) -> Result<Vec<AgentView>, ApiError> + Send + 'static,
) -> Result<Vec<Agent>, ApiError> {
    flush(admin).await?;
    let offline_after = admin.offline_after;
    db(admin, move |s| {
        let views = read(s)?;
        let now = crate::clock::now_rfc3339();
        Ok(views
            .into_iter()
            .map(|view| {
                let status = agent_status(&view, &now, offline_after);
                agent_out(view, status)
            })
            .collect())
    })
    .await
}

async fn flush(admin: &Arc<Admin>) -> Result<(), ApiError> {
    let (hub, state) = (Arc::clone(&admin.hub), Arc::clone(&admin.state));
    Ok(tokio::task::spawn_blocking(move || hub.flush(&state, false))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??)
}

async fn list_agents(
    State(admin): State<Arc<Admin>>,
    Query(filter): Query<AgentsQuery>,
) -> Result<Response, ApiError> {
    let limit = filter.limit.unwrap_or(PAGE);
    let page = AgentPage {
        policy: filter.policy,
        after: filter.after,
        limit: Some(limit),
        summary: false,
    };
    let list = agents(&admin, move |s| match s.agent_views(&page) {
        Err(StoreError::NotFound { key: after, .. }) => Err(ApiError::bad_request(format!(
            "after={after:?}: no such agent (it must be the last id of the previous page)"
        ))),
        views => Ok(views?),
    })
    .await?;
    if limit == 0 {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    let page: Vec<Agent> = list.into_iter().map(list_entry).collect();
    Ok(axum::Json(page).into_response())
}

async fn show_agent(
    State(admin): State<Arc<Admin>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let target = id.clone();
    let agent = agents(&admin, move |s| Ok(s.agent_view(&target)?.into_iter().collect()))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| not_found(format!("no agent {id}")))?;
    Ok(axum::Json(agent).into_response())
}

/// Deactivates an agent at once, without waiting for it to acknowledge an UNENROLL (a lost or
/// compromised host): its access key stops working on its next request.
async fn revoke_agent(
    State(admin): State<Arc<Admin>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let msg = format!("no active agent {id}");
    let target = id.clone();
    let now = crate::clock::now_rfc3339();
    if !db(&admin, move |s| Ok(s.deactivate_agent(&target, &now)?)).await? {
        return Err(not_found(msg));
    }
    admin.hub.wake([&id]);
    if let Some(es) = admin.app.elastic.get() {
        es.sweep();
    }
    tracing::warn!(agent = %id, "agent revoked by the admin");
    Ok(axum::Json(Revoked { revoked: true }).into_response())
}

/// An UPGRADE target: a version as Elastic names releases (`9.2.2`, `9.3.0-SNAPSHOT`,
/// `8.14.1+build202406201002`), spelled as the bundle's artifacts are, so agents find the files.
/// The refusal says what is accepted.
fn valid_version(v: &str) -> Result<(), String> {
    v.parse::<ferry_artifacts::Version>().map(drop).map_err(|e| e.to_string())
}

/// The platforms the served release has agent archives of for `version`.
fn release_platforms(release: &crate::release::Release, version: &str) -> Vec<String> {
    let mut platforms: Vec<String> = release
        .manifest
        .files
        .iter()
        .filter(|f| {
            f.kind == ferry_manifests::Kind::AgentArtifact && f.metadata.version() == Some(version)
        })
        .map(|f| {
            f.metadata.platform().map_or_else(
                || f.path.as_str().rsplit('/').next().unwrap_or_default().to_owned(),
                str::to_owned,
            )
        })
        .collect();
    platforms.sort();
    platforms.dedup();
    platforms
}

/// An action's data as agents receive it: stored as this text, delivered as it is.
fn action_data(data: &impl serde::Serialize) -> Result<String, ApiError> {
    serde_json::to_string(data).map_err(|e| ApiError::Internal(e.into()))
}

async fn create_actions(
    State(admin): State<Arc<Admin>>,
    axum::Json(request): axum::Json<CreateActions>,
) -> Result<Response, ApiError> {
    let kind = request.action.kind();
    let (data, effect, mut notes) = match &request.action {
        ActionRequest::Upgrade { version } => {
            valid_version(version).map_err(ApiError::bad_request)?;
            let release = served(&admin.app, &format!("upgrade to {version}"))?;
            let platforms = release_platforms(&release, version);
            if platforms.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "the active release has no Elastic Agent {version}: agents could not download it"
                )));
            }
            let source_uri = format!("{}/downloads/", admin.public_base);
            let data = action_data(&UpgradeData { version, source_uri: &source_uri })?;
            let state = crate::fleet::upgrade::REQUESTED.to_owned();
            let effect = ActionEffect::Upgrade { version: version.clone(), state };
            (Some(data), effect, vec![format!("archives for: {}", platforms.join(", "))])
        }
        ActionRequest::Unenroll => (None, ActionEffect::None, vec![]),
        ActionRequest::PolicyReassign { policy_id } => {
            require_policy(&admin.app, policy_id)?;
            let effect = ActionEffect::Reassign { policy_id: policy_id.clone() };
            (Some(action_data(&PolicyReassignData { policy_id })?), effect, vec![])
        }
        ActionRequest::Settings { log_level } => {
            if !["trace", "debug", "info", "warning", "error", ""].contains(&log_level.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "log level {log_level:?} is not one of trace, debug, info, warning, error (or empty to clear)"
                )));
            }
            (Some(action_data(&SettingsData { log_level })?), ActionEffect::None, vec![])
        }
        ActionRequest::RequestDiagnostics { additional_metrics } => {
            if let Some(m) =
                additional_metrics.iter().find(|m| !["CPU", "CONN"].contains(&m.as_str()))
            {
                return Err(ApiError::bad_request(format!(
                    "additional metric {m:?} is not CPU or CONN"
                )));
            }
            let data = action_data(&RequestDiagnosticsData { additional_metrics })?;
            (Some(data), ActionEffect::None, vec![])
        }
        ActionRequest::Cancel { target_id } => {
            // Whether it cancels an upgrade is known once the target is read, below.
            let effect = ActionEffect::Cancel { target_id: target_id.clone(), upgrade_state: None };
            (Some(action_data(&CancelData { target_id })?), effect, vec![])
        }
    };
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("0 ns");
    let start =
        match &request.start_time {
            Some(t) => Some(crate::clock::utc_time(t).ok_or_else(|| {
                ApiError::bad_request(format!("start_time {t:?} is not RFC 3339"))
            })?),
            None => None,
        };
    let start_time = start.map(ferry_manifests::rfc3339);
    // A scheduled action lives its full span from its start, or agents would drop it unrun.
    let expires_in = request.expires_in_seconds.map_or(DEFAULT_EXPIRY, Duration::from_secs);
    let expiration = ferry_manifests::rfc3339(start.map_or(now, |s| s.max(now)) + expires_in);
    let action_id = crate::fleet::uuid_v4();
    let cancel_target = match &request.action {
        ActionRequest::Cancel { target_id } => Some(target_id.clone()),
        _ => None,
    };
    let id = action_id.clone();
    let (agents, created) = db(&admin, move |s| {
        // A cancel goes to the agents the cancelled action was for (or some of them).
        let cancel_targets = match &cancel_target {
            Some(target) => {
                let targets: Vec<String> =
                    s.action_targets(target)?.into_iter().map(|t| t.agent_id).collect();
                if targets.is_empty() {
                    return Err(not_found(format!("no action {target}")));
                }
                Some(targets)
            }
            None => None,
        };
        let agents = match (&request.policy, request.agents.is_empty(), cancel_targets) {
            (Some(_), false, _) => {
                return Err(ApiError::bad_request("name agents or a policy, not both"));
            }
            (Some(policy), true, _) => s.agents_in_policy(policy)?,
            (None, false, _) => {
                for id in &request.agents {
                    let active = s.agent(id)?.is_some_and(|a| a.active);
                    if !active {
                        return Err(not_found(format!("no active agent {id}")));
                    }
                }
                request.agents.clone()
            }
            (None, true, Some(targets)) => targets,
            (None, true, None) => {
                return Err(ApiError::bad_request("name the agents (or a policy) to act on"));
            }
        };
        if agents.is_empty() {
            return Err(ApiError::bad_request("no active agents match"));
        }
        // Cancelling an upgrade also ends the upgrade state of the agents it is for.
        let effect = match effect {
            ActionEffect::Cancel { target_id, .. } => {
                let upgrade =
                    s.action(&target_id)?.is_some_and(|a| a.kind == ActionKind::Upgrade.as_str());
                let upgrade_state = upgrade.then(|| crate::fleet::upgrade::CANCELLED.to_owned());
                ActionEffect::Cancel { target_id, upgrade_state }
            }
            other => other,
        };
        let created = ferry_manifests::rfc3339(now);
        s.create_action(&NewAction {
            id,
            kind: kind.as_str().to_owned(),
            data,
            created_at: created.clone(),
            start_time,
            expiration,
            agents: agents.clone(),
            effect,
        })?;
        Ok((agents, created))
    })
    .await?;
    admin.hub.wake(&agents);
    tracing::info!(action = %action_id, %kind, agents = agents.len(), "action queued");
    if kind == ActionKind::Upgrade {
        notes.push("progress: `ferry-appliance agents list` (UPGRADE column)".into());
    }
    crate::metrics::COUNTERS.actions_queued(kind.as_str(), agents.len());
    let details = json!({ "action_id": action_id, "type": kind.as_str(), "agents": agents.len() });
    let mut response =
        axum::Json(ActionsCreated { action_id, kind, created_at: created, agents, notes })
            .into_response();
    response.extensions_mut().insert(AuditDetails(details));
    Ok(response)
}

async fn show_action(
    State(admin): State<Arc<Admin>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let target = id.clone();
    let targets = db(&admin, move |s| Ok(s.action_targets(&target)?)).await?;
    if targets.is_empty() {
        return Err(not_found(format!("no action {id}")));
    }
    let agents = targets
        .into_iter()
        .map(|t| ActionTarget {
            agent_id: t.agent_id,
            acknowledged: t.ack.is_some(),
            error: t.ack.flatten(),
        })
        .collect();
    Ok(axum::Json(ActionStatus { action_id: id, agents }).into_response())
}

async fn list_uploads(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let uploads = db(&admin, |s| Ok(s.uploads()?)).await?;
    let uploads: Vec<Upload> = uploads
        .into_iter()
        .map(|u| Upload {
            id: u.id,
            action_id: u.action_id,
            agent_id: u.agent_id,
            name: u.name,
            mime_type: u.mime_type,
            size: u.size,
            chunk_size: u.chunk_size,
            status: u.status.to_string(),
            created: u.created,
            completed: u.completed,
            sha256: u.sha256,
        })
        .collect();
    Ok(axum::Json(uploads).into_response())
}

async fn upload_file(
    State(admin): State<Arc<Admin>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let msg = format!("no upload {id}");
    let upload = db(&admin, move |s| Ok(s.upload(&id)?)).await?.ok_or_else(|| not_found(msg))?;
    if upload.status != UploadStatus::Ready {
        return Err(ApiError::bad_request(format!(
            "upload {} is {}, not READY",
            upload.id, upload.status
        )));
    }
    let path = crate::fleet::upload_file(&admin.uploads_dir, &upload);
    let file = tokio::fs::File::open(&path).await.map_err(|e| ApiError::Internal(e.into()))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, upload.size.to_string()),
            (
                header::HeaderName::from_static("x-file-sha256"),
                upload.sha256.clone().unwrap_or_default(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The on-site secrets, by id: when each was set, never its value.
async fn list_secrets(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let records = db(&admin, |s| Ok(s.secret_records()?)).await?;
    let used = used_by(&admin).await?;
    let list: Vec<Secret> = records
        .into_iter()
        .map(|r| {
            let used_by = used.get(&r.id).cloned().unwrap_or_default();
            Secret { id: r.id, set_at: r.set_at, used_by }
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

/// The policies of the served release that use each secret id.
async fn used_by(
    admin: &Arc<Admin>,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, ApiError> {
    let app = Arc::clone(&admin.app);
    crate::app::blocking(move || {
        let mut used = std::collections::BTreeMap::<String, Vec<String>>::new();
        if let Some(release) = app.current() {
            let ids = release.policy_secret_ids(&app.blobs).map_err(ApiError::Internal)?;
            for (policy, ids) in ids {
                for id in ids {
                    used.entry(id).or_default().push(policy.clone());
                }
            }
        }
        Ok(used)
    })
    .await
}

/// Sets (or replaces) a secret's value; agents get policies with it at their next check-in.
async fn set_secret(
    State(admin): State<Arc<Admin>>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // Read here rather than by axum's JSON extractor, whose refusals quote the body they could
    // not read: the answer must never hold a value.
    let SetSecret { value } = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request(
            "the body must be the JSON object {\"value\": \"...\"}, the value a string",
        )
    })?;
    let set_at = crate::clock::now_rfc3339();
    let (app, target, at) = (Arc::clone(&admin.app), id.clone(), set_at.clone());
    db(&admin, move |s| app.set_secret(s, &target, &value, &at)).await?;
    tracing::info!(secret = %id, "on-site secret set by the admin");
    Ok(axum::Json(Secret { id, set_at, used_by: Vec::new() }).into_response())
}

async fn remove_secret(
    State(admin): State<Arc<Admin>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let msg = format!("no secret {id} (see `secrets list`)");
    let (app, target) = (Arc::clone(&admin.app), id.clone());
    if !db(&admin, move |s| app.remove_secret(s, &target)).await? {
        return Err(not_found(msg));
    }
    tracing::info!(secret = %id, "on-site secret removed by the admin");
    Ok(axum::Json(Removed { removed: true }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_host_names_and_own_or_root_peers() {
        for good in
            ["localhost", "LOCALHOST:8222", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:8222"]
        {
            assert!(local_host(good), "{good}");
        }
        for bad in ["evil.example", "localhost.evil.example", "127.0.0.2", "[::2]:1", "", "::1x"] {
            assert!(!local_host(bad), "{bad}");
        }
        assert!(trusted(1000, 1000) && trusted(0, 1000));
        assert!(!trusted(1001, 1000));
    }

    #[test]
    fn versions() {
        for good in ["9.2.2", "9.2.2-SNAPSHOT", "9.0.0-beta1", "8.14.1+build202406201002"] {
            assert_eq!(valid_version(good), Ok(()), "{good}");
        }
        for bad in ["9.2", "9.2.2.1", "v9.2.2", "9.2.x", "", "9..2", "09.2.2", "9.2.2-", "9.2.2+"] {
            let e = valid_version(bad).unwrap_err();
            assert!(e.contains("MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]"), "{bad}: {e}");
        }
    }
}
