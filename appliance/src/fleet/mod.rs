//! The Fleet agent API: what a stock Elastic Agent calls (fleet-protocol.md §3). Shared here:
//! the API's state, the header rules every route applies (API version, User-Agent, access
//! keys), and request bodies with their caps. Each endpoint family has its own module; the
//! bodies agents send and read are typed in `wire`.

pub(crate) mod acks;
pub(crate) mod artifacts;
pub(crate) mod checkin;
pub(crate) mod enroll;
pub(crate) mod hub;
pub(crate) mod status;
pub(crate) mod upgrade;
pub(crate) mod uploads;
pub(crate) mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::{AppState, blocking};
use crate::credentials::{ApiKey, SecretHash};
use crate::error::ApiError;
use crate::fleet::hub::Hub;
use crate::store::{AgentKey, Db, Store, StoreError};

pub(crate) use checkin::PolicyCache;
pub(crate) use uploads::upload_file;

/// The only `Elastic-Api-Version` Fleet Server supports.
pub(crate) const API_VERSION: &str = "2023-06-01";
/// The oldest agent the API accepts (fleet-protocol.md §2.6); newer ones are never refused.
const MIN_AGENT: (u32, u32) = (7, 13);

/// Body caps per route, as Fleet Server's defaults (§6.3), in the route table
/// ([`crate::routes`]). Check-in bodies are capped on the
/// wire and again after gunzip.
pub(crate) const ENROLL_BODY_LIMIT: usize = 512 << 10;
pub(crate) const CHECKIN_WIRE_LIMIT: usize = 1 << 20;
pub(crate) const CHECKIN_BODY_LIMIT: u64 = 20 << 20;
pub(crate) const ACK_BODY_LIMIT: usize = 2 << 20;
pub(crate) const AUDIT_BODY_LIMIT: usize = 1 << 10;
pub(crate) const UPLOAD_BEGIN_LIMIT: usize = 5 << 20;
pub(crate) const UPLOAD_END_LIMIT: usize = 1 << 10;
/// The chunk size handed to agents, and so the largest chunk accepted.
pub(crate) const UPLOAD_CHUNK_SIZE: usize = 4 << 20;

/// The agent API's shared state.
pub(crate) struct AgentApi {
    /// The state database, used from blocking tasks (shared with the release watcher).
    pub(crate) state: Db,
    /// The active release and its change signal.
    pub app: Arc<AppState>,
    /// Parked check-ins and queued check-in reports.
    pub hub: Arc<Hub>,
    /// This appliance's URL as agents reach it, without a trailing slash.
    pub public_base: String,
    pub long_poll: Duration,
    pub jitter: Duration,
    /// Where diagnostics uploads are kept.
    pub uploads_dir: PathBuf,
    /// The largest upload accepted.
    pub max_upload_bytes: u64,
    /// Policies as delivered, computed once per active release.
    pub policies: PolicyCache,
    /// CA certificates (PEM) delivered as `agent.download.ssl.certificate_authorities`.
    pub download_ca: Option<String>,
    /// Elastic Defend's user artifacts: the cache and the searches in flight.
    pub artifacts: artifacts::Artifacts,
}

/// Applies Fleet Server's `Elastic-Api-Version` rule to every agent route (§2.4): absent → the
/// response names the default; present → it must be a supported date.
pub(crate) async fn api_version(request: Request, next: Next) -> Response {
    let version =
        request.headers().get("elastic-api-version").map(|v| v.to_str().unwrap_or("").to_owned());
    let mut response = match version.as_deref() {
        None | Some(API_VERSION) => next.run(request).await,
        Some(v) => {
            let well_formed = v.len() == 10
                && v.bytes()
                    .enumerate()
                    .all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
            let (code, message) = if well_formed {
                ("ErrUnsupportedAPIVersion", format!("Elastic-Api-Version {v} is not supported"))
            } else {
                (
                    "ErrInvalidAPIVersionFormat",
                    format!("Elastic-Api-Version {v:?} is not YYYY-MM-DD"),
                )
            };
            ApiError::fleet(StatusCode::BAD_REQUEST, code, message).into_response()
        }
    };
    response.headers_mut().insert("elastic-api-version", HeaderValue::from_static(API_VERSION));
    response
}

/// The agent version a `User-Agent: Elastic Agent vX.Y.Z[-PRE][+BUILD]` header names, checked
/// against the minimum (§2.6). The version is returned as the agent spelled it (semver prints
/// what it parsed), build metadata included, so it matches an upgrade target's spelling.
pub(crate) fn agent_version(headers: &HeaderMap) -> Result<String, ApiError> {
    const PREFIX: &str = "elastic agent ";
    let invalid = || {
        ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "InvalidUserAgent",
            "User-Agent is not `Elastic Agent vX.Y.Z[-PRERELEASE][+BUILD]`",
        )
    };
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).ok_or_else(invalid)?;
    // Fleet Server lowercases the whole header; only the prefix is compared that way here, so
    // `-SNAPSHOT` and build metadata keep Elastic's spelling.
    let rest = ua
        .get(..PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(PREFIX))
        .map(|_| &ua[PREFIX.len()..])
        .ok_or_else(invalid)?;
    let rest = rest.strip_prefix(['v', 'V']).unwrap_or(rest).trim();
    // Any semver pre-release is taken (Fleet Server's go-version is as lenient), not only the
    // ones Elastic names its artifacts with: an agent is never refused for its spelling.
    let version = semver::Version::parse(rest).map_err(|_| invalid())?;
    // The minimum is a release line: every 7.13.x counts, its pre-releases too.
    if (version.major, version.minor) < (MIN_AGENT.0.into(), MIN_AGENT.1.into()) {
        return Err(ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "UnsupportedVersion",
            format!("agent version {version} is older than {}.{}", MIN_AGENT.0, MIN_AGENT.1),
        ));
    }
    Ok(version.to_string())
}

/// A random version-4 UUID, as Fleet Server uses for agent, action and upload ids.
pub(crate) fn uuid_v4() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn access_key(headers: &HeaderMap) -> Result<ApiKey, ApiError> {
    ApiKey::from_headers(headers.get_all(header::AUTHORIZATION).iter().map(HeaderValue::as_bytes))
        .map_err(|e| {
            let (status, code) = e.status_and_code();
            ApiError::fleet(
                StatusCode::from_u16(status).expect("a valid status"),
                code,
                e.to_string(),
            )
        })
}

/// The id of the credential a request shows (`Authorization: ApiKey base64(id:secret)`): the
/// rate limiter remembers the ones proven lately ([`crate::net::limits`]).
pub(crate) fn credential_id(headers: &HeaderMap) -> Option<String> {
    access_key(headers).ok().map(|k| k.id().to_string())
}

/// Authenticates an access key (§2.5): unknown key or wrong secret → 401. When the route names
/// an agent, a key of another agent (or an unknown agent id) → 403. An unenrolled agent → 401.
fn authenticate(api: &AgentApi, key: &ApiKey, path_id: Option<&str>) -> Result<AgentKey, ApiError> {
    let agent = api.state.lock().expect("state lock").agent_by_access_key(key.id().as_str())?;
    let agent = agent
        .filter(|a| SecretHash::from_hex(&a.access_secret_sha256).is_some_and(|h| key.matches(&h)))
        .ok_or_else(|| {
            ApiError::fleet(StatusCode::UNAUTHORIZED, "ErrUnauthorized", "unknown access key")
        })?;
    if path_id.is_some_and(|id| id != agent.id) {
        return Err(wrong_agent());
    }
    if !agent.active {
        return Err(inactive());
    }
    Ok(agent)
}

/// An agent that is unenrolled or revoked (Fleet Server's ErrAgentInactive).
fn inactive() -> ApiError {
    ApiError::fleet(StatusCode::UNAUTHORIZED, "ErrAgentInactive", "agent is not active")
}

/// A key of another agent: a credential failure, charged to the client's address.
fn wrong_agent() -> ApiError {
    crate::net::limits::credentials_failed();
    ApiError::fleet(
        StatusCode::FORBIDDEN,
        "ErrAgentIdentity",
        "Agent header contains wrong identifier",
    )
}

/// [`authenticate`], off the async threads.
async fn authenticated(
    api: &Arc<AgentApi>,
    headers: &HeaderMap,
    path_id: Option<&str>,
) -> Result<AgentKey, ApiError> {
    authenticated_key(api, access_key(headers), path_id).await
}

/// [`authenticated`], for a key already taken from the request's headers.
async fn authenticated_key(
    api: &Arc<AgentApi>,
    key: Result<ApiKey, ApiError>,
    path_id: Option<&str>,
) -> Result<AgentKey, ApiError> {
    let key = charged(key)?;
    let (api, id) = (Arc::clone(api), path_id.map(str::to_owned));
    charged(blocking(move || authenticate(&api, &key, id.as_deref())).await)
}

/// `result`, after telling the rate limiter when it is a credential failure (a missing,
/// malformed, unknown or inactive key or token: 400/401; another agent's key: 403), so the
/// client's address is charged for it rather than the route every agent shares. Checks that
/// ran on a blocking thread are told here, where the request's task is.
fn charged<T>(result: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(
        ApiError::Fleet { status: StatusCode::UNAUTHORIZED, .. }
        | ApiError::Fleet {
            code: "ErrAgentIdentity" | "ErrMalformedHeader" | "ErrMalformedToken",
            ..
        },
    ) = &result
    {
        crate::net::limits::credentials_failed();
    }
    result
}

/// Runs `f` with the store, off the async threads.
async fn with_state<T: Send + 'static>(
    api: &Arc<AgentApi>,
    f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::app::with_db(&api.state, move |s| Ok(f(s)?)).await
}

fn too_large(limit: usize) -> ApiError {
    ApiError::fleet(
        StatusCode::PAYLOAD_TOO_LARGE,
        "ErrPayloadSizeTooLarge",
        format!("the request body is larger than {limit} bytes"),
    )
}

/// Reads a request body of at most `limit` bytes; a larger one is refused with 413. The HTTP
/// loop has already refused bodies over the route's cap (`body_limit`) and read the rest whole,
/// so there is nothing to drain; this is the check for caps known only here (an upload's chunk
/// size), and the same check again for the others.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    let bytes = body
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?
        .to_bytes();
    if bytes.len() > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

/// Decodes a JSON request body; `what` names it in the error.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("cannot decode the {what}: {e}")))
}

/// At most this many bodies are inflated at once. Each holds a thread (of the blocking pool's
/// 16, which the database calls share) and up to twice its cap in memory while it runs, so a key
/// holder sending gzip bombs in parallel waits here instead of taking every thread.
pub(super) static INFLATING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Whether the agent sent its body gzipped.
pub(super) fn gzipped(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
}

/// A request body, gunzipped when the agent says so, within `limit` bytes after decompression.
/// Callers on the server hold an [`INFLATING`] permit while a gzipped body is inflated.
fn decompress(gzip: bool, body: Bytes, limit: u64) -> Result<Bytes, ApiError> {
    if !gzip {
        return Ok(body);
    }
    let inflate = || {
        use std::io::Read as _;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| ApiError::bad_request(format!("cannot gunzip the body: {e}")))?;
        if out.len() as u64 > limit {
            return Err(too_large(limit as usize));
        }
        Ok(out.into())
    };
    // Inflating up to the cap takes tens of milliseconds (a gzip bomb is made to): the worker
    // thread hands its other connections to another thread first, so they do not wait behind
    // it. Only a multi-threaded runtime can; elsewhere (unit tests, fuzzing) it runs inline.
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(inflate),
        _ => inflate(),
    }
}

/// The check-in and acks routes' body parsing, reachable without a server or a database so the
/// fuzz targets (`fuzz/`) run the routes' own code. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use axum::body::Bytes;
    use axum::http::HeaderMap;

    use crate::error::ApiError;

    /// Parses a check-in body (already within the wire cap) as the route does; returns its status.
    pub fn checkin(headers: &HeaderMap, body: Bytes) -> Result<String, ApiError> {
        super::checkin::parse_request(super::gzipped(headers), body).map(|request| request.status)
    }

    /// One event of an acks body: its action id and, for a policy monitor action, the policy
    /// id and revision it acknowledges.
    pub type AckEvent = (String, Option<(String, u64)>);

    /// Parses an acks body as the route does.
    pub fn acks(body: &[u8]) -> Result<Vec<AckEvent>, ApiError> {
        let request = super::acks::parse_request(body)?;
        Ok(request
            .events
            .into_iter()
            .map(|event| {
                let policy = event
                    .action_id
                    .strip_prefix("policy:")
                    .and_then(super::acks::policy_ack)
                    .map(|(policy, revision)| (policy.to_owned(), revision));
                (event.action_id, policy)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ua(value: &str) -> Result<String, ApiError> {
        let mut h = HeaderMap::new();
        h.insert(header::USER_AGENT, HeaderValue::from_str(value).unwrap());
        agent_version(&h)
    }

    #[test]
    fn user_agents() {
        for (header, version) in [
            ("Elastic Agent v9.1.2", "9.1.2"),
            ("elastic agent 8.19.4", "8.19.4"),
            ("ELASTIC AGENT V8.19.4", "8.19.4"),
            // Independent agent releases: the stored version is the upgrade target's spelling.
            ("Elastic Agent v8.14.1+build202406201002", "8.14.1+build202406201002"),
            ("Elastic Agent v9.0.0-beta1", "9.0.0-beta1"),
            ("Elastic Agent v9.9.0-preview.2", "9.9.0-preview.2"),
            // Never sent by Elastic's agents (snapshot is a separate flag), but kept as said;
            // upgrade completion reads it as 9.2.0.
            ("Elastic Agent v9.2.0-SNAPSHOT", "9.2.0-SNAPSHOT"),
            ("Elastic Agent v7.13.0", "7.13.0"),
            ("Elastic Agent v99.0.0", "99.0.0"), // newer agents are never refused
        ] {
            assert_eq!(ua(header).unwrap(), version, "{header}");
        }
        for header in [
            "curl/8.0",
            "Elastic Agent v9.1",
            "Elastic Agent v9.1.2.3",
            "Elastic Agent v09.1.2",
            "Elastic Agent v9.1.2-",
            "Elastic Agent v9.1.2 (linux)",
            "Elastic Agent vv9.1.2",
            "Elastic Agent",
            "Elastic Agentv9.1.2",
            "Elastic Beat v9.1.2",
        ] {
            assert!(
                matches!(ua(header), Err(ApiError::Fleet { code: "InvalidUserAgent", .. })),
                "{header}"
            );
        }
        for header in
            ["Elastic Agent v7.12.0", "Elastic Agent v7.12.99+build1", "elastic agent 6.8.0"]
        {
            assert!(
                matches!(ua(header), Err(ApiError::Fleet { code: "UnsupportedVersion", .. })),
                "{header}"
            );
        }
        assert!(matches!(
            agent_version(&HeaderMap::new()),
            Err(ApiError::Fleet { code: "InvalidUserAgent", .. })
        ));
    }

    #[test]
    fn uuids_are_version_4() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }

    /// A gzip body that inflates past `CHECKIN_BODY_LIMIT`.
    fn gzip_bomb() -> Bytes {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![b' '; CHECKIN_BODY_LIMIT as usize + 1]).unwrap();
        Bytes::from(gz.finish().unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn gzip_bombs_do_not_hold_up_other_connections() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let bomb = gzip_bomb();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let (inflating, done) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        // On the only worker thread: a check-in inflating bombs, and another connection's task.
        let bomber = tokio::spawn({
            let (inflating, done) = (Arc::clone(&inflating), Arc::clone(&done));
            async move {
                inflating.store(true, Ordering::SeqCst);
                for _ in 0..5 {
                    let refused = decompress(gzipped(&headers), bomb.clone(), CHECKIN_BODY_LIMIT);
                    assert!(matches!(
                        refused,
                        Err(ApiError::Fleet { status: StatusCode::PAYLOAD_TOO_LARGE, .. })
                    ));
                }
                done.store(true, Ordering::SeqCst);
            }
        });
        while !inflating.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let other = tokio::spawn({
            let done = Arc::clone(&done);
            async move { done.load(Ordering::SeqCst) }
        });
        assert!(!other.await.unwrap(), "another task ran only after the bombs were inflated");
        bomber.await.unwrap();
    }

    #[test]
    fn gzip_bodies_are_capped_after_decompression() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b' '; 10_000]).unwrap();
        let small = Bytes::from(gz.finish().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(decompress(gzipped(&headers), small.clone(), 10_000).unwrap().len(), 10_000);
        assert!(matches!(
            decompress(gzipped(&headers), small, 9_999),
            Err(ApiError::Fleet { status: StatusCode::PAYLOAD_TOO_LARGE, .. })
        ));
        assert!(matches!(
            decompress(gzipped(&headers), Bytes::from_static(b"not gzip"), 100),
            Err(ApiError::Fleet { code: "BadRequest", .. })
        ));
    }
}
