//! Fleet Server's `/api/status`: what a load balancer and an agent probing `fleet.hosts` see.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AgentApi;
use crate::release::Active;

/// The status of a Fleet Server that serves: the only one answered with 200.
pub(crate) const HEALTHY: &str = "HEALTHY";

/// The status of a draining server: Fleet's word for a server on its way out (its status
/// schema has none for "draining"), answered with 503 like every status but `HEALTHY`.
pub(crate) const DRAINING: &str = "STOPPING";

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

/// What the running server's `/api/status` answers now (and `ferry-appliance status` reports):
/// [`DRAINING`] while it drains, whatever else holds, so the load balancer takes it out;
/// otherwise [`fleet_status`], `DEGRADED` when it would be `HEALTHY` but the site's
/// Elasticsearch is in trouble.
pub(crate) fn current(api: &AgentApi) -> &'static str {
    if api.hub.draining() {
        return DRAINING;
    }
    match fleet_status(&api.app.active()) {
        // Fleet Server is DEGRADED while its Elasticsearch is in trouble (self.go); agents keep
        // checking in here meanwhile, but a load balancer should know.
        HEALTHY if api.app.elastic.get().is_some_and(|es| es.degraded()) => "DEGRADED",
        status => status,
    }
}

/// Fleet Server's status: 200 only when `HEALTHY`, 503 with the same body otherwise
/// (fleet-server internal/pkg/api/handleStatus.go); no version without an API key, and never 401.
pub(crate) async fn status(State(api): State<Arc<AgentApi>>) -> Response {
    let status = current(&api);
    let code = if status == HEALTHY { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(super::wire::StatusResponse::new(status))).into_response()
}
