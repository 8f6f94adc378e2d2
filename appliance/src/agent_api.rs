//! The Fleet agent API: what a stock Elastic Agent calls. Today: enrollment. Check-in, acks,
//! uploads and unenroll follow (issue 5).

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

/// The agent API's shared state: the state database, used from blocking tasks.
pub struct AgentApi {
    pub state: Mutex<SqliteState>,
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
    if body.len() > ENROLL_BODY_LIMIT {
        return Err(ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "http: request body too large",
        ));
    }
    let request: EnrollRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::fleet(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("cannot decode the enroll request: {e}"),
        )
    })?;
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
