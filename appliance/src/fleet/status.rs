//! Fleet Server's `/api/status`: what a load balancer and an agent probing `fleet.hosts` see.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::release::Active;

/// The status of a Fleet Server that serves: the only one answered with 200.
pub(crate) const HEALTHY: &str = "HEALTHY";

/// What `/api/status` answers for `active`, by Fleet Server's rules for a server that is not
/// ready (fleet-server internal/pkg/policy/self.go): `STARTING` while it waits for its policy
/// (here: no release was ever activated), `FAILED` when what it should run cannot be read (the
/// active release does not verify, so nothing is served), `HEALTHY` otherwise.
pub(crate) fn fleet_status(active: &Active) -> &'static str {
    match active {
        Active::Ready(_) => HEALTHY,
        Active::None => "STARTING",
        Active::Unusable { .. } => "FAILED",
    }
}

/// Fleet Server's status: 200 only when `HEALTHY`, 503 with the same body otherwise
/// (fleet-server internal/pkg/api/handleStatus.go); no version without an API key, and never 401.
pub(crate) async fn status(State(state): State<Arc<AppState>>) -> Response {
    let status = match fleet_status(&state.active()) {
        // Fleet Server is DEGRADED while its Elasticsearch is in trouble (self.go); agents keep
        // checking in here meanwhile, but a load balancer should know.
        HEALTHY if state.elastic.get().is_some_and(|es| es.degraded()) => "DEGRADED",
        status => status,
    };
    let code = if status == HEALTHY { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(super::wire::StatusResponse::new(status))).into_response()
}
