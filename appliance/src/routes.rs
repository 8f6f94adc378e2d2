//! The route table: every route of the agent-facing listeners, once, with the largest body the
//! HTTP loop reads for it and the rate-limit class it runs under. The router, the HTTP loop's
//! body caps and the limits (`[limits.NAME]`) are all built from it, so a route cannot have a
//! handler without a cap or a limit without a route: [`Route::spec`] and [`Class::default`]
//! are exhaustive matches, and a route left out of [`Route::ALL`] fails to compile.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, get, on};

use crate::app::AppState;
use crate::error::ApiError;
use crate::fleet::{self, AgentApi};
use crate::mirror;
use crate::net::limits::{LimitOverride, RateLimits, RouteLimit, limit};

/// A route of the agent-facing listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Enroll,
    Checkin,
    Ack,
    AuditUnenroll,
    UploadBegin,
    UploadEnd,
    UploadChunk,
    Artifact,
    Status,
    PgpKey,
    Crl,
    Download,
    RegistryRoot,
    Registry,
}

/// What the table says of a route.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub method: Method,
    /// The path as axum matches it: `{name}` is one segment, `{*name}` the rest.
    pub path: &'static str,
    /// The largest body read for it; the handlers check theirs again, with Fleet's error.
    pub body_limit: usize,
    /// The rate and concurrency limit it runs under (several routes may share one).
    pub class: Option<Class>,
}

impl Route {
    /// Every route, in declaration order (checked below at compile time).
    pub(crate) const ALL: [Route; 14] = [
        Route::Enroll,
        Route::Checkin,
        Route::Ack,
        Route::AuditUnenroll,
        Route::UploadBegin,
        Route::UploadEnd,
        Route::UploadChunk,
        Route::Artifact,
        Route::Status,
        Route::PgpKey,
        Route::Crl,
        Route::Download,
        Route::RegistryRoot,
        Route::Registry,
    ];

    pub(crate) fn spec(self) -> Spec {
        let spec = |method, path, body_limit, class| Spec { method, path, body_limit, class };
        match self {
            Route::Enroll => spec(
                Method::POST,
                "/api/fleet/agents/enroll",
                fleet::ENROLL_BODY_LIMIT,
                Some(Class::Enroll),
            ),
            Route::Checkin => spec(
                Method::POST,
                "/api/fleet/agents/{id}/checkin",
                fleet::CHECKIN_WIRE_LIMIT,
                Some(Class::Checkin),
            ),
            Route::Ack => spec(
                Method::POST,
                "/api/fleet/agents/{id}/acks",
                fleet::ACK_BODY_LIMIT,
                Some(Class::Ack),
            ),
            Route::AuditUnenroll => spec(
                Method::POST,
                "/api/fleet/agents/{id}/audit/unenroll",
                fleet::AUDIT_BODY_LIMIT,
                Some(Class::AuditUnenroll),
            ),
            Route::UploadBegin => spec(
                Method::POST,
                "/api/fleet/uploads",
                fleet::UPLOAD_BEGIN_LIMIT,
                Some(Class::UploadBegin),
            ),
            Route::UploadEnd => spec(
                Method::POST,
                "/api/fleet/uploads/{upload_id}",
                fleet::UPLOAD_END_LIMIT,
                Some(Class::UploadEnd),
            ),
            Route::UploadChunk => spec(
                Method::PUT,
                "/api/fleet/uploads/{upload_id}/{chunk}",
                fleet::UPLOAD_CHUNK_SIZE,
                Some(Class::UploadChunk),
            ),
            // Elastic Defend's user artifacts; nothing takes a body.
            Route::Artifact => spec(
                Method::GET,
                "/api/fleet/artifacts/{id}/{sha256}",
                OTHER_BODY_LIMIT,
                Some(Class::Artifact),
            ),
            Route::Status => {
                spec(Method::GET, "/api/status", OTHER_BODY_LIMIT, Some(Class::Status))
            }
            Route::PgpKey => spec(
                Method::GET,
                "/api/agents/upgrades/{version}/pgp-public-key",
                OTHER_BODY_LIMIT,
                Some(Class::PgpKey),
            ),
            // The CRL is fetched as rarely as the status, and by the same kind of client.
            Route::Crl => {
                spec(Method::GET, crate::net::tls::CRL_PATH, OTHER_BODY_LIMIT, Some(Class::Status))
            }
            // Downloads are bounded by connections, not by a rate: an upgrade wave is one
            // download per agent, and a slow one must not be refused halfway.
            Route::Download => spec(Method::GET, "/downloads/{*path}", OTHER_BODY_LIMIT, None),
            // The package registry Kibana reads (`crate::registry`): its index, then every
            // path below it, dispatched by the registry's own rules.
            Route::RegistryRoot => {
                spec(Method::GET, "/registry/", OTHER_BODY_LIMIT, Some(Class::Registry))
            }
            Route::Registry => {
                spec(Method::GET, "/registry/{*path}", OTHER_BODY_LIMIT, Some(Class::Registry))
            }
        }
    }
}

// A route missing from `Route::ALL`, or listed out of order, is a compile error.
const _: () = {
    let mut i = 0;
    while i < Route::ALL.len() {
        assert!(Route::ALL[i] as usize == i, "Route::ALL must list every route in order");
        i += 1;
    }
    assert!(Route::ALL.len() == Route::Registry as usize + 1, "Route::ALL misses a route");
};

/// What a request to a route outside the table may carry: nothing takes a body there, but a
/// little is tolerated, as from clients that send `{}`.
pub(crate) const OTHER_BODY_LIMIT: usize = 64 << 10;

/// The largest body the HTTP loop reads for a request (query removed), so that an oversized
/// one is refused from its head, before its bytes are read. `HEAD` is served as `GET`.
pub(crate) fn body_limit(method: &Method, path: &str) -> usize {
    let method = if method == Method::HEAD { &Method::GET } else { method };
    Route::ALL
        .iter()
        .map(|r| r.spec())
        .find(|s| s.method == method && matches(s.path, path))
        .map_or(OTHER_BODY_LIMIT, |s| s.body_limit)
}

/// Whether `path` is one axum would route to `pattern`.
fn matches(pattern: &str, path: &str) -> bool {
    let mut pattern = pattern.trim_start_matches('/').split('/');
    let mut path = path.trim_start_matches('/').split('/');
    loop {
        match (pattern.next(), path.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if p.starts_with("{*") => return !s.is_empty(),
            (Some(p), Some(s)) if p.starts_with('{') => {
                if s.is_empty() {
                    return false;
                }
            }
            (Some(p), Some(s)) if p == s => {}
            _ => return false,
        }
    }
}

/// A rate-limit class: `[limits.NAME]` in the configuration sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Enroll,
    Checkin,
    Ack,
    Status,
    AuditUnenroll,
    UploadBegin,
    UploadChunk,
    UploadEnd,
    PgpKey,
    Artifact,
    Registry,
}

impl Class {
    pub(crate) const ALL: [Class; 11] = [
        Class::Enroll,
        Class::Checkin,
        Class::Ack,
        Class::Status,
        Class::AuditUnenroll,
        Class::UploadBegin,
        Class::UploadChunk,
        Class::UploadEnd,
        Class::PgpKey,
        Class::Artifact,
        Class::Registry,
    ];

    /// Its name in the configuration.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Class::Enroll => "enroll",
            Class::Checkin => "checkin",
            Class::Ack => "ack",
            Class::Status => "status",
            Class::AuditUnenroll => "audit_unenroll",
            Class::UploadBegin => "upload_begin",
            Class::UploadChunk => "upload_chunk",
            Class::UploadEnd => "upload_end",
            Class::PgpKey => "pgp_key",
            Class::Artifact => "artifact",
            Class::Registry => "registry",
        }
    }

    /// The built-in limits, sized for one appliance and a fleet of about 20 000 agents: acks
    /// and status probes arrive from every agent at once after a policy change, enrollments
    /// arrive in storms, uploads are rare and large.
    pub(crate) fn default(self) -> RouteLimit {
        let limit = |per_second, burst, concurrent| RouteLimit { per_second, burst, concurrent };
        match self {
            // A storm is the normal case (a site's install push, every agent of a restored
            // site). Elastic Agent retries a refused enrollment after 5-10 s, then 10-20, 20-40,
            // 40-80 s (`pkg/backoff/equal_jitter.go`), never reading Retry-After, so a limit
            // that refuses most of a storm's first wave costs each agent minutes: Fleet
            // Server's 100/s (burst 100) took 145-290 s for 10 000 agents at once, with
            // 27 000-31 000 refusals, in a model of that backoff. At 1000/s with a burst of
            // 2000, 10 000 enroll within about 20 s and 20 000 within 35 (measured: the storm
            // table of docs/benchmarks.md). Floods of bad tokens are charged to their address,
            // not here, and the cap on requests in flight bounds the work of good ones.
            Class::Enroll => limit(1000.0, 2000, 500),
            // After a restart every agent checks in again within a couple of seconds.
            Class::Checkin => limit(5000.0, 20000, 0),
            // A new policy revision makes every agent ack (and, when fleet.hosts changes,
            // probe /api/status) within a second or two.
            Class::Ack => limit(5000.0, 20000, 5000),
            Class::Status => limit(5000.0, 20000, 2000),
            Class::AuditUnenroll => limit(100.0, 50, 100),
            Class::UploadBegin => limit(0.5, 5, 10),
            Class::UploadChunk => limit(300.0, 5, 10),
            Class::UploadEnd => limit(0.5, 5, 10),
            Class::PgpKey => limit(500.0, 500, 50),
            // Fleet Server's `artifact_limit` for up to 20 000 agents (fleet-server
            // internal/pkg/config/defaults/lte20000_limits.yml: 0.5 ms, burst 4000, max
            // 8000): every Endpoint fetches a changed list at once, and a cache hit is cheap.
            Class::Artifact => limit(2000.0, 4000, 8000),
            // Kibana (a few instances) and the browsers of its users: a page of the
            // integrations UI asks for tens of icons at once; package zips are fetched one per
            // installation.
            Class::Registry => limit(200.0, 400, 64),
        }
    }
}

const _: () = {
    let mut i = 0;
    while i < Class::ALL.len() {
        assert!(Class::ALL[i] as usize == i, "Class::ALL must list every class in order");
        i += 1;
    }
    assert!(Class::ALL.len() == Class::Registry as usize + 1, "Class::ALL misses a class");
};

/// The limits of every class, with the configuration's overrides; an unknown name is refused
/// (at start, and by `ferry-appliance check`).
pub(crate) fn limits(overrides: &BTreeMap<String, LimitOverride>) -> anyhow::Result<RateLimits> {
    RateLimits::new(
        Class::ALL.iter().map(|c| (c.name(), c.default())),
        overrides,
        fleet::credential_id,
    )
}

/// `handler` at `route`'s path and method (a `GET` also answers `HEAD`), behind its class's
/// limit.
fn at<H, T, S>(router: Router<S>, route: Route, handler: H, limits: &RateLimits) -> Router<S>
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    let spec = route.spec();
    let method = MethodFilter::try_from(spec.method).expect("the table's methods are routable");
    let mut handler = on(method, handler);
    if let Some(class) = spec.class {
        let limiter = limits.get(class.name());
        handler = handler.layer(axum::middleware::from_fn_with_state(limiter, limit));
    }
    router.route(spec.path, handler)
}

/// The routes of the agent-facing listener: the agent API and the mirror. Without TLS, the PGP
/// key route answers 501, as Fleet Server does.
pub(crate) fn router(
    state: Arc<AppState>,
    agents: Arc<AgentApi>,
    limits: &RateLimits,
    tls: bool,
) -> Router {
    let served = Router::new();
    let served = if tls {
        at(served, Route::PgpKey, mirror::pgp_key, limits)
    } else {
        at(served, Route::PgpKey, tls_required, limits)
    };
    let served = at(served, Route::Crl, mirror::crl, limits);
    let served = at(served, Route::Download, mirror::download, limits);
    // The status is the agent API's: it says when the hub drains.
    let api = at(Router::new(), Route::Status, fleet::status::status, limits);
    let api = at(api, Route::Enroll, fleet::enroll::enroll, limits);
    let api = at(api, Route::Checkin, fleet::checkin::checkin, limits);
    let api = at(api, Route::Ack, fleet::acks::acks, limits);
    let api = at(api, Route::AuditUnenroll, fleet::acks::audit_unenroll, limits);
    let api = at(api, Route::UploadBegin, fleet::uploads::begin, limits);
    let api = at(api, Route::UploadEnd, fleet::uploads::complete, limits);
    let api = at(api, Route::Artifact, fleet::artifacts::artifact, limits);
    let api = at(api, Route::UploadChunk, fleet::uploads::chunk, limits)
        .layer(axum::Extension(Arc::new(fleet::enroll::ReplaceLimits::new(limits))))
        // Bodies are read with their own caps, so the refusal is Fleet's JSON error.
        .layer(axum::extract::DefaultBodyLimit::disable());
    // The registry is Kibana's, not the agents': no Fleet API version header.
    let registry = at(Router::new(), Route::RegistryRoot, crate::registry::serve, limits);
    let registry = at(registry, Route::Registry, crate::registry::serve, limits);
    served
        .fallback(|| async { ApiError::NotFound })
        .with_state(Arc::clone(&state))
        .merge(api.with_state(agents))
        .layer(axum::middleware::from_fn(fleet::api_version))
        .merge(registry.with_state(state))
        .layer(axum::middleware::map_response(crate::net::nosniff))
}

/// The plain-HTTP mirror listener's routes: the mirror, and the PGP key route answering 501,
/// as Fleet Server does without TLS. No limits: this listener serves only files.
pub(crate) fn plain_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(Route::PgpKey.spec().path, get(tls_required))
        .route(Route::Download.spec().path, get(mirror::download))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
        .layer(axum::middleware::map_response(crate::net::nosniff))
}

async fn tls_required() -> ApiError {
    ApiError::TlsRequired
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_caps_follow_the_routes() {
        let id = "0b7a4e0c-1f5d-4c3b-9e0a-2b1f0c9d8e7f";
        assert_eq!(body_limit(&Method::POST, &format!("/api/fleet/agents/{id}/checkin")), 1 << 20);
        assert_eq!(body_limit(&Method::POST, &format!("/api/fleet/agents/{id}/acks")), 2 << 20);
        assert_eq!(body_limit(&Method::PUT, "/api/fleet/uploads/u/3"), fleet::UPLOAD_CHUNK_SIZE);
        assert_eq!(body_limit(&Method::POST, "/api/fleet/agents/enroll"), fleet::ENROLL_BODY_LIMIT);
        // Near misses are not the route: another method, one segment more or fewer, an empty
        // segment where an id goes.
        assert_eq!(
            body_limit(&Method::GET, &format!("/api/fleet/agents/{id}/checkin")),
            OTHER_BODY_LIMIT
        );
        assert_eq!(body_limit(&Method::POST, "/api/fleet/uploads/u/3/x"), OTHER_BODY_LIMIT);
        assert_eq!(body_limit(&Method::PUT, "/api/fleet/uploads/u"), OTHER_BODY_LIMIT);
        assert_eq!(body_limit(&Method::POST, "/api/fleet/agents//checkin"), OTHER_BODY_LIMIT);
        assert_eq!(body_limit(&Method::GET, "/api/fleet/artifacts/a/b"), OTHER_BODY_LIMIT);
    }

    #[test]
    fn paths_match_as_axum_routes_them() {
        assert!(matches("/downloads/{*path}", "/downloads/beats/a.tar.gz"));
        assert!(!matches("/downloads/{*path}", "/downloads"));
        assert!(!matches("/downloads/{*path}", "/downloads/"));
        assert!(matches("/api/status", "/api/status"));
        assert!(!matches("/api/status", "/api/status/x"));
        assert!(!matches("/api/status", "/api"));
    }

    #[test]
    fn every_class_has_a_route_and_a_distinct_name() {
        for class in Class::ALL {
            assert!(Route::ALL.iter().any(|r| r.spec().class == Some(class)), "{class:?}");
            assert_eq!(Class::ALL.iter().filter(|c| c.name() == class.name()).count(), 1);
        }
    }

    #[test]
    fn every_route_has_one_path_per_method() {
        for (i, a) in Route::ALL.iter().enumerate() {
            for b in &Route::ALL[i + 1..] {
                let (a, b) = (a.spec(), b.spec());
                assert!(a.method != b.method || a.path != b.path, "{} twice", a.path);
            }
        }
    }
}
