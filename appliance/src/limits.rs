//! Per-route request limits, Fleet Server's model (fleet-protocol.md §2.7, §6.3): a token bucket
//! for the rate and a cap on requests in flight, each refusing at once with `429` and
//! `Retry-After` rather than queueing. Every route has its own, so parked check-ins (which hold
//! their request for minutes) never use up the slots of enrollments or acks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::server::ApiError;

/// One route's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteLimit {
    /// Sustained requests per second (0: no rate limit).
    pub per_second: f64,
    /// Requests accepted at once above the sustained rate.
    pub burst: u32,
    /// Requests in flight at once (0: no cap).
    pub concurrent: u32,
}

/// The built-in limits, sized for one appliance and a fleet of about 20 000 agents: acks and
/// status probes arrive from every agent at once after a policy change, enrollment is slow on
/// purpose, uploads are rare and large.
pub const DEFAULTS: &[(&str, RouteLimit)] = &[
    ("enroll", RouteLimit { per_second: 100.0, burst: 100, concurrent: 50 }),
    // After a restart every agent checks in again within a couple of seconds.
    ("checkin", RouteLimit { per_second: 5000.0, burst: 20000, concurrent: 0 }),
    // A new policy revision makes every agent ack (and, when fleet.hosts changes, probe
    // /api/status) within a second or two.
    ("ack", RouteLimit { per_second: 5000.0, burst: 20000, concurrent: 5000 }),
    ("status", RouteLimit { per_second: 5000.0, burst: 20000, concurrent: 2000 }),
    ("audit_unenroll", RouteLimit { per_second: 100.0, burst: 50, concurrent: 100 }),
    ("upload_begin", RouteLimit { per_second: 0.5, burst: 5, concurrent: 10 }),
    ("upload_chunk", RouteLimit { per_second: 300.0, burst: 5, concurrent: 10 }),
    ("upload_end", RouteLimit { per_second: 0.5, burst: 5, concurrent: 10 }),
    ("pgp_key", RouteLimit { per_second: 500.0, burst: 500, concurrent: 50 }),
];

/// A route's settings in the configuration file; what is left out keeps its default.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    pub per_second: Option<f64>,
    pub burst: Option<u32>,
    pub concurrent: Option<u32>,
}

/// The effective limits of every route.
pub struct Limits {
    routes: HashMap<&'static str, Arc<Limiter>>,
}

impl Limits {
    /// The defaults with `overrides` applied; an unknown route name is an error.
    pub fn new(overrides: &BTreeMap<String, LimitOverride>) -> anyhow::Result<Self> {
        for name in overrides.keys() {
            anyhow::ensure!(
                DEFAULTS.iter().any(|(n, _)| n == name),
                "[limits.{name}]: unknown route (known: {})",
                DEFAULTS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            );
        }
        let routes = DEFAULTS
            .iter()
            .map(|(name, default)| {
                let o = overrides.get(*name).copied().unwrap_or_default();
                let limit = RouteLimit {
                    per_second: o.per_second.unwrap_or(default.per_second).max(0.0),
                    burst: o.burst.unwrap_or(default.burst).max(1),
                    concurrent: o.concurrent.unwrap_or(default.concurrent),
                };
                (*name, Arc::new(Limiter::new(limit)))
            })
            .collect();
        Ok(Self { routes })
    }

    /// The limiter of a route named in [`DEFAULTS`].
    pub fn get(&self, route: &str) -> Arc<Limiter> {
        Arc::clone(self.routes.get(route).unwrap_or_else(|| panic!("no limits for route {route}")))
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct Limiter {
    limit: RouteLimit,
    bucket: Mutex<Bucket>,
    in_flight: Option<Arc<Semaphore>>,
}

impl Limiter {
    fn new(limit: RouteLimit) -> Self {
        Self {
            limit,
            bucket: Mutex::new(Bucket { tokens: f64::from(limit.burst), last: Instant::now() }),
            in_flight: (limit.concurrent > 0)
                .then(|| Arc::new(Semaphore::new(limit.concurrent as usize))),
        }
    }

    /// Takes a token, or says how long until one is available.
    fn take(&self, now: Instant) -> Result<(), Duration> {
        if self.limit.per_second <= 0.0 {
            return Ok(());
        }
        let mut b = self.bucket.lock().expect("bucket lock");
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * self.limit.per_second;
        b.tokens = (b.tokens + refill).min(f64::from(self.limit.burst));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.limit.per_second))
        }
    }
}

fn too_many(code: &'static str, message: &str, retry_after: Duration) -> Response {
    let mut response =
        ApiError::fleet(StatusCode::TOO_MANY_REQUESTS, code, message).into_response();
    // Whole seconds, at least one: what HTTP clients and agents' backoff understand.
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    response
}

/// The middleware: `axum::middleware::from_fn_with_state(limits.get("ack"), limit)`.
pub async fn limit(State(limiter): State<Arc<Limiter>>, request: Request, next: Next) -> Response {
    if let Err(wait) = limiter.take(Instant::now()) {
        return too_many("RateLimit", "exceeded the rate limit", wait);
    }
    let _permit = match &limiter.in_flight {
        Some(s) => match Arc::clone(s).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                return too_many("MaxLimit", "too many requests in flight", Duration::from_secs(1));
            }
        },
        None => None,
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_rate_up_to_the_burst() {
        let l = Limiter::new(RouteLimit { per_second: 10.0, burst: 2, concurrent: 0 });
        let t0 = Instant::now();
        assert!(l.take(t0).is_ok());
        assert!(l.take(t0).is_ok());
        let wait = l.take(t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO, "{wait:?}");
        assert!(l.take(t0 + Duration::from_millis(100)).is_ok(), "one token after 1/rate");
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(l.take(later).is_ok() && l.take(later).is_ok());
        assert!(l.take(later).is_err());
    }

    #[test]
    fn overrides_keep_unset_defaults_and_unknown_routes_are_errors() {
        let o = BTreeMap::from([(
            "enroll".to_owned(),
            LimitOverride { burst: Some(3), ..Default::default() },
        )]);
        let limits = Limits::new(&o).unwrap();
        let enroll = limits.get("enroll").limit;
        assert_eq!((enroll.burst, enroll.per_second, enroll.concurrent), (3, 100.0, 50));
        let o = BTreeMap::from([("enrol".to_owned(), LimitOverride::default())]);
        let err = Limits::new(&o).err().unwrap().to_string();
        assert!(err.contains("enrol") && err.contains("known: enroll"), "{err}");
    }
}
