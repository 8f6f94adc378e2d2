//! `POST /api/fleet/agents/enroll` (fleet-protocol.md §3.2): an enrollment token in, a new
//! agent record and its access key out; re-enrollment of a known id with its replace token.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::wire::{EnrollRequest, EnrollResponse, EnrollResponseItem};
use super::{AgentApi, ENROLL_BODY_LIMIT, access_key, agent_version, blocking};
use crate::credentials::{
    ApiKey, REPLACE_HASHING, SecretHash, hash_replace_token, replace_token_matches,
};
use crate::error::ApiError;
use crate::net::limits::{KeyedBuckets, PerKey, RateLimits};
use crate::store::{AgentRecord, Enrollment};

fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn not_replaceable(id: &str) -> ApiError {
    ApiError::fleet(
        StatusCode::FORBIDDEN,
        "AgentNotReplaceable",
        format!("agent {id} is enrolled and active; re-enrolling it needs its replace token"),
    )
}

/// Limits on guessing replace tokens. Fleet Server (handleEnroll.go) checks a replace token
/// with no limit but the enroll route's rate: every wrong one is `403 AgentNotReplaceable` and
/// a debug log line. Here wrong ones are also counted per target agent id and per enrollment
/// token ([limits.replace_per_agent], [limits.replace_per_token]): past either, replace attempts
/// get `429` before any hashing, a legitimate agent retrying after the lockout.
pub(crate) struct ReplaceLimits {
    per_agent: KeyedBuckets<String>,
    per_token: KeyedBuckets<String>,
}

impl ReplaceLimits {
    pub(crate) fn new(limits: &RateLimits) -> Self {
        Self {
            per_agent: limits.per_key(PerKey::ReplacePerAgent),
            per_token: limits.per_key(PerKey::ReplacePerToken),
        }
    }

    /// Runs `check` (whether the replace token matches) unless `id` or `token` is out of
    /// attempts; a wrong token is charged to both, a right one charges nothing.
    async fn checked(
        &self,
        id: &str,
        token: &str,
        check: impl Future<Output = Option<bool>>,
    ) -> Result<(), ApiError> {
        let now = std::time::Instant::now();
        let (id, token) = (id.to_owned(), token.to_owned());
        if let Err(wait) = self.per_agent.check(&id, now) {
            tracing::warn!(agent = %id, "replace attempt refused: too many wrong replace tokens");
            return Err(too_many(
                "AgentReplaceLocked",
                format!(
                    "too many wrong replace tokens for agent {id}; retry in {}s",
                    wait.as_secs() + 1
                ),
                wait,
            ));
        }
        if let Err(wait) = self.per_token.check(&token, now) {
            tracing::warn!(agent = %id, token = %token, "replace attempt refused: too many wrong replace tokens with this enrollment token");
            return Err(too_many(
                "ReplaceTokenRateLimit",
                format!(
                    "too many wrong replace tokens with enrollment token {token}; retry in {}s",
                    wait.as_secs() + 1
                ),
                wait,
            ));
        }
        if !check.await.ok_or_else(hashing_busy)? {
            let _ = self.per_agent.charge(id.clone(), now);
            let _ = self.per_token.charge(token, now);
            tracing::warn!(agent = %id, "wrong replace token");
            return Err(not_replaceable(&id));
        }
        Ok(())
    }
}

fn too_many(code: &'static str, message: String, retry_after: std::time::Duration) -> ApiError {
    ApiError::TooMany { code, message, retry_after }
}

fn hashing_busy() -> ApiError {
    let message = "too many replace tokens being checked; retry later".to_owned();
    // The queue holds 8 hashes of about 0.1 s each in a release build: a second clears it.
    too_many("MaxLimit", message, std::time::Duration::from_secs(1))
}

/// A departure from Fleet Server, whose `_checkAgent` (handleEnroll.go) deletes any inactive
/// agent's record when its id enrolls again, revoked (Kibana's force unenroll) or not: here an
/// id the operator revoked stays refused, so a compromised host cannot come back under the
/// identity the operator cut off. An agent that acknowledged its UNENROLL re-enrolls as Fleet
/// lets it, as a new agent.
fn revoked(id: &str) -> ApiError {
    ApiError::fleet(
        StatusCode::FORBIDDEN,
        "AgentRevoked",
        format!("agent ID {id} was revoked by the operator; enroll with a new id"),
    )
}

pub(crate) async fn enroll(
    State(api): State<Arc<AgentApi>>,
    Extension(limits): Extension<Arc<ReplaceLimits>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = super::charged(access_key(&headers))?;
    let token_id = token.id().to_string();
    let version = agent_version(&headers)?;
    // The token is checked before a byte of the body is read or decoded, as Fleet Server does
    // (fleet-server internal/pkg/api/handleEnroll.go): without one, any body gets 401.
    // The store keeps the secret's hash; the token is checked against it here, as access keys
    // are (`authenticate`).
    let lookup = token_id.clone();
    let policy_id = super::charged(
        super::with_state(&api, move |s| s.enrollment_secret(&lookup))
            .await?
            .filter(|t| SecretHash::from_hex(&t.secret_sha256).is_some_and(|h| token.matches(&h)))
            .map(|t| t.policy_id)
            .ok_or_else(|| {
                ApiError::fleet(
                    StatusCode::UNAUTHORIZED,
                    "ErrUnauthorized",
                    "unknown or revoked enrollment token",
                )
            }),
    )?;
    let body = super::read_limited(body, ENROLL_BODY_LIMIT).await?;
    let request: EnrollRequest = super::json_body(&body, "enroll request")?;
    if !["PERMANENT", "EPHEMERAL", "TEMPORARY"].contains(&request.kind.as_str()) {
        return Err(ApiError::bad_request(format!("unknown enrollment type {:?}", request.kind)));
    }
    if !request.metadata.local.is_object() {
        return Err(ApiError::bad_request("metadata.local must be an object"));
    }
    if !request.id.is_empty() && !valid_agent_id(&request.id) {
        return Err(ApiError::bad_request("the requested agent id has unusable characters"));
    }
    let id = if request.id.is_empty() { super::uuid_v4() } else { request.id.clone() };
    let existing = {
        let id = id.clone();
        super::with_state(&api, move |s| Ok((s.revoked_at(&id)?, s.agent(&id)?))).await?
    };
    if existing.0.is_some() {
        tracing::warn!(agent = %id, "enrollment of a revoked agent id refused");
        return Err(revoked(&id));
    }
    // The key of the active agent this enrollment replaces, checked again when the record
    // is written: a concurrent enrollment of the same id cannot slip in between.
    let mut replacing = None;
    if let Some(existing) = existing.1.filter(|a| a.active) {
        // Fleet's rule: an active agent is replaced only by someone holding its replace
        // token, into the same policy.
        let stored = existing.replace_token.filter(|_| !request.replace_token.is_empty());
        let Some(stored) = stored else { return Err(not_replaceable(&id)) };
        let guess = request.replace_token.clone();
        limits
            .checked(&id, &token_id, async move {
                REPLACE_HASHING.run(move || replace_token_matches(&guess, &stored)).await
            })
            .await?;
        if existing.policy_id != policy_id {
            return Err(not_replaceable(&id));
        }
        tracing::info!(agent = %id, "agent re-enrolled with its replace token");
        replacing = Some(existing.access_key_id);
    }
    let replace_token = match request.replace_token.as_str() {
        "" => None,
        token => {
            let token = token.to_owned();
            let hashed = REPLACE_HASHING.run(move || hash_replace_token(&token)).await;
            Some(hashed.ok_or_else(hashing_busy)?)
        }
    };
    blocking(move || -> Result<Response, ApiError> {
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
        let enrolled_at = crate::clock::now_rfc3339();
        let outcome = api.state.lock().expect("state lock").enroll_agent(
            &AgentRecord {
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
                replace_token,
            },
            replacing.as_deref(),
        )?;
        match outcome {
            Enrollment::Stored => {}
            Enrollment::NotReplaceable => return Err(not_replaceable(&id)),
            Enrollment::Revoked => return Err(revoked(&id)),
        }
        tracing::info!(agent = %id, policy = %policy_id, "agent enrolled");
        crate::metrics::COUNTERS.enrolled();
        // A record replaced had its output keys marked with it: invalidated now.
        if let Some(es) = api.app.elastic.get().filter(|_| replacing.is_some()) {
            es.sweep();
        }
        let access_api_key = key.encoded();
        let response = EnrollResponse::created(EnrollResponseItem {
            id: &id,
            active: true,
            policy_id: &policy_id,
            kind: &request.kind,
            enrolled_at: &enrolled_at,
            user_provided_metadata: (),
            local_metadata: &local,
            access_api_key_id: key.id().as_str(),
            access_api_key: &access_api_key,
            status: "online",
            tags: &tags,
        });
        Ok(axum::Json(response).into_response())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids() {
        assert!(valid_agent_id(&super::super::uuid_v4()));
        assert!(valid_agent_id("web-01.example_2"));
        for bad in ["", "../x", "a/b", "a b", "é"] {
            assert!(!valid_agent_id(bad), "{bad}");
        }
        assert!(!valid_agent_id(&"a".repeat(129)));
    }
}
