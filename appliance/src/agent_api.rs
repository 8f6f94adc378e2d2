//! The Fleet agent API: what a stock Elastic Agent calls. Today: enrollment, the long-poll
//! check-in delivering policies from the active release, and acks. Actions other than policy
//! changes, uploads, unenroll and the admin API follow (issue 5).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::credentials::ApiKey;
use crate::server::ApiError;
use crate::state::{AgentRecord, SqliteState, StateStore};

/// The only `Elastic-Api-Version` Fleet Server supports.
pub const API_VERSION: &str = "2023-06-01";
/// Enroll bodies larger than this are refused (Fleet Server's default).
pub const ENROLL_BODY_LIMIT: usize = 512 << 10;
/// The oldest agent the API accepts (fleet-protocol.md §2.6); newer ones are never refused.
const MIN_AGENT: (u32, u32) = (7, 13);

/// Check-in bodies larger than this after decompression are refused (Fleet Server's default).
pub const CHECKIN_BODY_LIMIT: u64 = 20 << 20;
/// Check-in bodies larger than this on the wire are refused.
pub const CHECKIN_WIRE_LIMIT: usize = 1 << 20;
/// Ack bodies larger than this are refused.
pub const ACK_BODY_LIMIT: usize = 2 << 20;

/// The agent API's shared state.
pub struct AgentApi {
    /// The state database, used from blocking tasks (shared with the release watcher).
    pub state: Arc<Mutex<SqliteState>>,
    /// The active release and its change signal.
    pub app: Arc<crate::server::AppState>,
    /// This appliance's URL as agents reach it, without a trailing slash.
    pub public_base: String,
    pub long_poll: std::time::Duration,
    pub jitter: std::time::Duration,
}

/// Applies Fleet Server's `Elastic-Api-Version` rule to every agent route (§2.4): absent → the
/// response names the default; present → it must be a supported date.
pub async fn api_version(request: Request, next: Next) -> Response {
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

/// The agent version a `User-Agent: Elastic Agent vX.Y.Z[-…]` header names, checked against the
/// minimum (§2.6).
pub fn agent_version(headers: &HeaderMap) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "InvalidUserAgent",
            "User-Agent is not `Elastic Agent vX.Y.Z`",
        )
    };
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(invalid)?
        .to_ascii_lowercase();
    let rest = ua.strip_prefix("elastic agent ").ok_or_else(invalid)?;
    let rest = rest.strip_prefix('v').unwrap_or(rest);
    let core = rest.split('-').next().unwrap_or(rest).trim();
    let parts: Vec<u32> =
        core.split('.').map(str::parse).collect::<Result<_, _>>().map_err(|_| invalid())?;
    let [major, minor, patch] = parts[..] else { return Err(invalid()) };
    if (major, minor) < MIN_AGENT {
        return Err(ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "UnsupportedVersion",
            format!("agent version {core} is older than {}.{}", MIN_AGENT.0, MIN_AGENT.1),
        ));
    }
    Ok(format!("{major}.{minor}.{patch}"))
}

#[derive(Deserialize)]
struct EnrollRequest {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    #[allow(dead_code)] // Read once re-enrollment with replace_token lands.
    replace_token: String,
    metadata: EnrollMetadata,
}

#[derive(Deserialize)]
struct EnrollMetadata {
    local: Value,
    #[serde(default)]
    tags: Vec<String>,
}

/// A random version-4 UUID, as Fleet Server gives agents that do not ask for an id.
fn uuid_v4() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `POST /api/fleet/agents/enroll` (fleet-protocol.md §3.2).
pub async fn enroll(
    State(api): State<Arc<AgentApi>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token = ApiKey::from_headers(
        headers.get_all(header::AUTHORIZATION).iter().map(HeaderValue::as_bytes),
    )
    .map_err(ApiError::Credential)?;
    let version = agent_version(&headers)?;
    let request: EnrollRequest = json_body(&body, ENROLL_BODY_LIMIT, "enroll request")?;
    if !["PERMANENT", "EPHEMERAL", "TEMPORARY"].contains(&request.kind.as_str()) {
        return Err(ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("unknown enrollment type {:?}", request.kind),
        ));
    }
    if !request.metadata.local.is_object() {
        return Err(ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "metadata.local must be an object",
        ));
    }
    if !request.id.is_empty() && !valid_agent_id(&request.id) {
        return Err(ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the requested agent id has unusable characters",
        ));
    }
    let response = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let mut state = api.state.lock().expect("state lock");
        let policy_id =
            state.enrollment_policy(&token).map_err(ApiError::Internal)?.ok_or_else(|| {
                ApiError::fleet(
                    StatusCode::UNAUTHORIZED,
                    "ErrUnauthorized",
                    "unknown or revoked enrollment token",
                )
            })?;
        let id = if request.id.is_empty() { uuid_v4() } else { request.id.clone() };
        if let Some(existing) = state.agent(&id).map_err(ApiError::Internal)?
            && existing.active
        {
            return Err(ApiError::fleet(
                StatusCode::FORBIDDEN,
                "AgentNotReplaceable",
                format!("agent {id} is enrolled and active"),
            ));
        }
        let mut local = request.metadata.local;
        if let Some(agent) = local.pointer_mut("/elastic/agent").and_then(Value::as_object_mut)
            && agent.contains_key("id")
        {
            agent.insert("id".into(), json!(id));
        }
        let mut tags = request.metadata.tags;
        tags.sort();
        tags.dedup();
        let key = ApiKey::mint();
        let enrolled_at = ferry_manifests::rfc3339(
            time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("0 ns"),
        );
        state
            .put_agent(&AgentRecord {
                id: id.clone(),
                access_key_id: key.id().to_string(),
                access_secret_sha256: key.secret_hash().to_hex(),
                policy_id: policy_id.clone(),
                kind: request.kind.clone(),
                enrolled_at: enrolled_at.clone(),
                active: true,
                version,
                local_metadata: local.to_string(),
                tags: json!(tags).to_string(),
            })
            .map_err(ApiError::Internal)?;
        tracing::info!(agent = %id, policy = %policy_id, "agent enrolled");
        Ok(json!({
            "action": "created",
            "item": {
                "id": id,
                "active": true,
                "policy_id": policy_id,
                "type": request.kind,
                "enrolled_at": enrolled_at,
                "user_provided_metadata": null,
                "local_metadata": local,
                "access_api_key_id": key.id().as_str(),
                "access_api_key": key.encoded(),
                "status": "online",
                "tags": tags,
            }
        }))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(axum::Json(response).into_response())
}

/// Authenticates an access key for the agent in the path (§2.5): unknown key or wrong secret →
/// 401, a key of another agent (or an unknown agent id) → 403, an unenrolled agent → 401.
fn authenticate(
    api: &AgentApi,
    headers: &HeaderMap,
    path_id: &str,
) -> Result<AgentRecord, ApiError> {
    let key = ApiKey::from_headers(
        headers.get_all(header::AUTHORIZATION).iter().map(HeaderValue::as_bytes),
    )
    .map_err(ApiError::Credential)?;
    let state = api.state.lock().expect("state lock");
    let agent = state.agent_by_access_key(key.id().as_str()).map_err(ApiError::Internal)?;
    let agent = agent
        .filter(|a| {
            crate::credentials::SecretHash::from_hex(&a.access_secret_sha256)
                .is_some_and(|h| key.matches(&h))
        })
        .ok_or_else(|| {
            ApiError::fleet(StatusCode::UNAUTHORIZED, "ErrUnauthorized", "unknown access key")
        })?;
    if agent.id != path_id {
        return Err(ApiError::fleet(
            StatusCode::FORBIDDEN,
            "ErrAgentIdentity",
            "Agent header contains wrong identifier",
        ));
    }
    if !agent.active {
        return Err(ApiError::fleet(
            StatusCode::UNAUTHORIZED,
            "ErrAgentInactive",
            "agent is not active",
        ));
    }
    Ok(agent)
}

/// The policy `policy_id` of the active release, as this appliance delivers it: `fleet.hosts`
/// and the download source point here, and the revision is the appliance's own (monotonic).
/// Returns (revision, created, policy).
fn current_policy(
    api: &AgentApi,
    policy_id: &str,
) -> Result<Option<(u64, String, Value)>, ApiError> {
    let Some(release) = api.app.current() else { return Ok(None) };
    let Some(entry) = release.manifest.files.iter().find(|f| {
        f.kind == ferry_manifests::Kind::Policy
            && f.metadata.get("policy_id").map(String::as_str) == Some(policy_id)
    }) else {
        return Ok(None);
    };
    let bytes = std::fs::read(api.app.blobs.path(&entry.sha256))
        .map_err(|e| ApiError::Internal(e.into()))?;
    let policy = ferry_artifacts::Policy::parse(&bytes, entry.path.as_str())
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut doc = policy.document;
    let map = doc.as_object_mut().expect("a parsed policy is an object");
    // The bundle's own revision stays in the hashed content: a policy re-exported from Kibana
    // with a new revision is a change even if nothing else moved.
    map.insert("id".into(), json!(policy_id));
    let fleet = map.entry("fleet").or_insert_with(|| json!({}));
    if let Some(fleet) = fleet.as_object_mut() {
        fleet.insert("hosts".into(), json!([api.public_base]));
    }
    let agent = map.entry("agent").or_insert_with(|| json!({}));
    if let Some(agent) = agent.as_object_mut() {
        let download = agent.entry("download").or_insert_with(|| json!({}));
        if let Some(download) = download.as_object_mut() {
            download.remove("source_uri");
            download.insert("sourceURI".into(), json!(format!("{}/downloads/", api.public_base)));
        }
    }
    // serde_json's maps are sorted, so equal content gives equal text.
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(doc.to_string().as_bytes()));
    let (revision, created) = api
        .state
        .lock()
        .expect("state lock")
        .policy_revision(policy_id, &sha)
        .map_err(ApiError::Internal)?;
    doc["revision"] = json!(revision);
    Ok(Some((revision, created, doc)))
}

/// Fleet's answer to an oversized body (a 400, as Fleet Server gives on these routes).
fn too_large() -> ApiError {
    ApiError::fleet(StatusCode::BAD_REQUEST, "BadRequest", "http: request body too large")
}

/// Decodes a JSON request body of at most `limit` bytes; `what` names it in the error.
fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    limit: usize,
    what: &str,
) -> Result<T, ApiError> {
    if body.len() > limit {
        return Err(too_large());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("cannot decode the {what}: {e}"),
        )
    })
}

/// A request body, gunzipped when the agent says so, within `limit` bytes after decompression.
fn read_body(headers: &HeaderMap, body: &[u8], limit: u64) -> Result<Vec<u8>, ApiError> {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(body.to_vec());
    }
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body).take(limit + 1).read_to_end(&mut out).map_err(|e| {
        ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("cannot gunzip the body: {e}"),
        )
    })?;
    if out.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(out)
}

/// [`authenticate`], off the async threads.
async fn authenticated(
    api: &Arc<AgentApi>,
    headers: &HeaderMap,
    id: &str,
) -> Result<AgentRecord, ApiError> {
    let (api, headers, id) = (Arc::clone(api), headers.clone(), id.to_owned());
    blocking(move || authenticate(&api, &headers, &id)).await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(e.into()))?
}

/// `POST /api/fleet/agents/{id}/checkin`, the long poll (§3.3).
pub async fn checkin(
    State(api): State<Arc<AgentApi>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let agent = authenticated(&api, &headers, &id).await?;
    agent_version(&headers)?;
    if body.len() > CHECKIN_WIRE_LIMIT {
        return Err(too_large());
    }
    let body = read_body(&headers, &body, CHECKIN_BODY_LIMIT)?;
    let request: Value = json_body(&body, usize::MAX, "check-in")?;
    let status = request.get("status").and_then(Value::as_str).unwrap_or_default().to_owned();
    if status.is_empty() {
        return Err(ApiError::fleet(StatusCode::BAD_REQUEST, "BadRequest", "status is required"));
    }
    let message = request.get("message").and_then(Value::as_str).unwrap_or_default().to_owned();
    // Agents >= 9.2 report the revision they run; older ones are known from their acks.
    let reported = (request.get("agent_policy_id").and_then(Value::as_str)
        == Some(agent.policy_id.as_str()))
    .then(|| request.get("policy_revision_idx").and_then(Value::as_u64))
    .flatten();
    let running = {
        let (api, id) = (Arc::clone(&api), agent.id.clone());
        blocking(move || {
            let mut state = api.state.lock().expect("state lock");
            state.record_checkin(&id, &status, &message).map_err(ApiError::Internal)?;
            state.agent_policy_revision(&id).map_err(ApiError::Internal)
        })
        .await?
    };
    let running = reported.unwrap_or(running);

    let jitter = api.jitter.mul_f64(rand::random::<f64>());
    let hold = api.long_poll.checked_sub(jitter).filter(|h| !h.is_zero()).unwrap_or(api.long_poll);
    let deadline = tokio::time::Instant::now() + hold;
    let mut changed = api.app.changed.subscribe();
    loop {
        let current = {
            let (api, policy_id) = (Arc::clone(&api), agent.policy_id.clone());
            blocking(move || current_policy(&api, &policy_id)).await?
        };
        if let Some((revision, created, policy)) = current
            && revision > running
        {
            let action = json!({
                "id": format!("policy:{}:{revision}", agent.policy_id),
                "type": "POLICY_CHANGE",
                "agent_id": agent.id,
                "created_at": created,
                "input_type": "",
                "data": { "policy": policy },
            });
            return Ok(axum::Json(
                json!({ "action": "checkin", "ack_token": "", "actions": [action] }),
            )
            .into_response());
        }
        tokio::select! {
            woke = changed.changed() => if woke.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(axum::Json(json!({ "action": "checkin", "ack_token": "" })).into_response())
}

/// `POST /api/fleet/agents/{id}/acks` (§3.4). The response status is the highest item status.
pub async fn acks(
    State(api): State<Arc<AgentApi>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let agent = authenticated(&api, &headers, &id).await?;
    let request: Value = json_body(&body, ACK_BODY_LIMIT, "acks")?;
    let events = request.get("events").and_then(Value::as_array).ok_or_else(|| {
        ApiError::fleet(StatusCode::BAD_REQUEST, "BadRequest", "events must be a list")
    })?;
    let mut items = Vec::with_capacity(events.len());
    let mut acked_revision = None;
    for event in events {
        let action_id = event.get("action_id").and_then(Value::as_str).unwrap_or_default();
        let agent_id = event.get("agent_id").and_then(Value::as_str).unwrap_or_default();
        let failed = event.get("error").and_then(Value::as_str).is_some_and(|e| !e.is_empty());
        let status = if action_id.is_empty() || (!agent_id.is_empty() && agent_id != agent.id) {
            StatusCode::BAD_REQUEST
        } else if let Some(rest) = action_id.strip_prefix("policy:") {
            let mut parts = rest.split(':');
            if let (Some(policy), Some(Ok(revision))) =
                (parts.next(), parts.next().map(str::parse::<u64>))
                && policy == agent.policy_id
                && !failed
            {
                acked_revision = acked_revision.max(Some(revision));
            }
            StatusCode::OK
        } else {
            // No other action exists on this appliance yet.
            StatusCode::NOT_FOUND
        };
        items.push(status);
    }
    if let Some(revision) = acked_revision {
        let (api, id) = (Arc::clone(&api), agent.id.clone());
        blocking(move || {
            api.state
                .lock()
                .expect("state lock")
                .raise_agent_policy_revision(&id, revision)
                .map_err(ApiError::Internal)
        })
        .await?;
    }
    let worst = items.iter().copied().max().unwrap_or(StatusCode::OK);
    let mut body = json!({
        "action": "acks",
        "items": items.iter().map(|s| json!({ "status": s.as_u16(), "message": s.canonical_reason().unwrap_or("") })).collect::<Vec<_>>(),
    });
    if worst != StatusCode::OK {
        body["errors"] = json!(true);
    }
    Ok((worst, axum::Json(body)).into_response())
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
        assert_eq!(ua("Elastic Agent v9.1.2").unwrap(), "9.1.2");
        assert_eq!(ua("Elastic Agent v9.2.0-SNAPSHOT").unwrap(), "9.2.0");
        assert_eq!(ua("elastic agent 8.19.4").unwrap(), "8.19.4");
        assert_eq!(
            ua("Elastic Agent v99.0.0").unwrap(),
            "99.0.0",
            "newer agents are never refused"
        );
        assert!(matches!(ua("curl/8.0"), Err(ApiError::Fleet { code: "InvalidUserAgent", .. })));
        assert!(matches!(
            ua("Elastic Agent v9.1"),
            Err(ApiError::Fleet { code: "InvalidUserAgent", .. })
        ));
        assert!(matches!(
            ua("Elastic Agent v7.12.0"),
            Err(ApiError::Fleet { code: "UnsupportedVersion", .. })
        ));
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
        assert!(valid_agent_id(&id));
        assert!(!valid_agent_id("../x"));
    }
}
