//! `POST /api/fleet/agents/{id}/acks` (fleet-protocol.md §3.4) and
//! `POST /api/fleet/agents/{id}/audit/unenroll` (§3.9).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::wire::{AckRequest, AckResponse, AckResponseItem, ActionKind, AuditUnenrollRequest};
use super::{ACK_BODY_LIMIT, AUDIT_BODY_LIMIT, AgentApi, authenticated, with_state};
use crate::error::ApiError;
use crate::store::{ActionResult, AuditOutcome, PolicyAck};

/// An acks body, decoded.
pub(super) fn parse_request(body: &[u8]) -> Result<AckRequest, ApiError> {
    super::json_body(body, "acks")
}

/// The policy id and revision a policy monitor action id acknowledges, given what follows its
/// `policy:` prefix: `<id>:<revision>[:<coordinator>]`.
pub(super) fn policy_ack(rest: &str) -> Option<(&str, u64)> {
    let mut parts = rest.split(':');
    match (parts.next(), parts.next().map(str::parse::<u64>)) {
        (Some(policy), Some(Ok(revision))) => Some((policy, revision)),
        _ => None,
    }
}

/// The response status is the highest item status; items keep the request's order.
pub(crate) async fn acks(
    State(api): State<Arc<AgentApi>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let agent = authenticated(&api, &headers, Some(&id)).await?;
    let body = super::read_limited(body, ACK_BODY_LIMIT).await?;
    let request = parse_request(&body)?;
    // Policy acks need no lookup (§7.16) and are queued in the hub; only other actions are
    // looked up and recorded, in one transaction.
    let mut items = vec![StatusCode::OK; request.events.len()];
    let mut lookups = Vec::new();
    for (i, event) in request.events.into_iter().enumerate() {
        let failed = event.error.as_deref().is_some_and(|e| !e.is_empty());
        if event.action_id.is_empty() || (!event.agent_id.is_empty() && event.agent_id != agent.id)
        {
            items[i] = StatusCode::BAD_REQUEST;
        } else if let Some(rest) = event.action_id.strip_prefix("policy:") {
            if let Some((policy, revision)) = policy_ack(rest)
                && policy == agent.policy_id
                && !failed
            {
                if let Some(es) = api.app.elastic.get() {
                    es.policy_acked(&agent.id, policy, revision);
                }
                api.hub.policy_acked(PolicyAck {
                    agent_id: agent.id.clone(),
                    access_key_id: agent.access_key_id.clone(),
                    policy_id: policy.to_owned(),
                    revision,
                });
            }
        } else {
            lookups.push((i, event, failed));
        }
    }
    if !lookups.is_empty() {
        let looked_up: Vec<usize> = lookups.iter().map(|(i, _, _)| *i).collect();
        let agent_id = agent.id.clone();
        let found = with_state(&api, move |s| {
            let mut results = Vec::new();
            let mut found = Vec::new();
            let mut unenroll = false;
            for (i, event, failed) in lookups {
                let Some(action) = s.agent_action(&agent_id, &event.action_id)? else { continue };
                unenroll |= action.kind == ActionKind::Unenroll.as_str() && !failed;
                let kind = ActionKind::parse(&action.kind).map_or("other", ActionKind::as_str);
                crate::metrics::COUNTERS.acked(kind, !failed);
                results.push(ActionResult {
                    action_id: event.action_id,
                    error: event.error.filter(|e| !e.is_empty()),
                    data: event.data.or(event.payload).map(|d| d.to_string()),
                });
                found.push(i);
            }
            if !results.is_empty() {
                let at = crate::clock::now_rfc3339();
                s.record_action_results(&agent_id, &results, unenroll, &at)?;
            }
            if unenroll {
                tracing::info!(agent = %agent_id, "agent acknowledged its unenrollment; key revoked");
            }
            Ok((found, unenroll))
        })
        .await?;
        let (found, unenroll) = found;
        // Its output keys were marked with the unenrollment: invalidated now.
        if let Some(es) = api.app.elastic.get().filter(|_| unenroll) {
            es.sweep();
        }
        for i in looked_up.into_iter().filter(|i| !found.contains(i)) {
            items[i] = StatusCode::NOT_FOUND;
        }
    }
    let worst = items.iter().copied().max().unwrap_or(StatusCode::OK);
    let items = items
        .iter()
        .map(|s| AckResponseItem {
            status: s.as_u16(),
            message: s.canonical_reason().unwrap_or(""),
        })
        .collect();
    Ok((worst, axum::Json(AckResponse::new(items))).into_response())
}

/// The agent says it was uninstalled (or orphaned, or migrated): recorded on its record until
/// its next check-in; its key is not revoked (Fleet Server's behaviour).
pub(crate) async fn audit_unenroll(
    State(api): State<Arc<AgentApi>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let agent = authenticated(&api, &headers, Some(&id)).await?;
    let body = super::read_limited(body, AUDIT_BODY_LIMIT).await?;
    let request: AuditUnenrollRequest = super::json_body(&body, "audit request")?;
    if !["uninstall", "orphaned", "key_revoked", "migrated"].contains(&request.reason.as_str()) {
        return Err(ApiError::bad_request(format!("unknown unenroll reason {:?}", request.reason)));
    }
    let at = match request.timestamp.as_deref() {
        Some(t) => crate::clock::utc_rfc3339(t)
            .ok_or_else(|| ApiError::bad_request(format!("timestamp {t:?} is not RFC 3339")))?,
        None => crate::clock::now_rfc3339(),
    };
    // A check-in report still queued predates this and would clear the annotation: written
    // first, taken while holding the database as the batch writer does.
    let hub = Arc::clone(&api.hub);
    let outcome = with_state(&api, move |s| {
        if let Some(report) = hub.take_report(&agent.id) {
            s.record_checkins(&[report], &crate::fleet::upgrade::after_checkin)?;
        }
        // An agent recorded as orphaned stays so until it checks in (Fleet Server: 409).
        s.audit_unenroll(&agent.id, &request.reason, &at, "orphaned")
    })
    .await?;
    match outcome {
        AuditOutcome::Recorded => Ok(StatusCode::OK.into_response()),
        AuditOutcome::Conflict => Err(ApiError::fleet(
            StatusCode::CONFLICT,
            "ErrAuditReasonConflict",
            "the agent is already recorded as orphaned",
        )),
    }
}
