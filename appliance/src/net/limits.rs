//! Per-route request limits, Fleet Server's model (fleet-protocol.md §2.7, §6.3): a token bucket
//! for the rate and a cap on requests in flight, each refusing at once with `429` and
//! `Retry-After` rather than queueing. Every route has its own, so parked check-ins (which hold
//! their request for minutes) never use up the slots of enrollments or acks.
//!
//! Failed authentications are not charged to the route: a client whose credentials fail gets
//! its route token back and is charged to a bucket of its own address instead, so a flood of
//! bogus keys from one address never starves the agents whose keys are good (issue 22, 5). An
//! address out of failures is refused before anything runs, except for credentials that were
//! proven recently: agents behind the same NAT address as the flood keep being served.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::net::http1::ClientAddr;

/// One route's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RouteLimit {
    /// Sustained requests per second (0: no rate limit).
    pub per_second: f64,
    /// Requests accepted at once above the sustained rate.
    pub burst: u32,
    /// Requests in flight at once (0: no cap).
    pub concurrent: u32,
}

/// Buckets kept per key (an address, an agent id, an enrollment token), charged only for
/// failures; `concurrent` does not apply to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PerKey {
    /// Failed authentications per source address (an IPv6 /64), across all routes.
    AuthFailures,
    /// Wrong replace tokens per target agent id.
    ReplacePerAgent,
    /// Wrong replace tokens per enrollment token, across ids.
    ReplacePerToken,
}

impl PerKey {
    pub(crate) const ALL: [PerKey; 3] =
        [PerKey::AuthFailures, PerKey::ReplacePerAgent, PerKey::ReplacePerToken];

    /// Its name in the configuration (`[limits.NAME]`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            PerKey::AuthFailures => "auth_failures",
            PerKey::ReplacePerAgent => "replace_per_agent",
            PerKey::ReplacePerToken => "replace_per_token",
        }
    }

    pub(crate) fn default(self) -> RouteLimit {
        let limit = |per_second, burst| RouteLimit { per_second, burst, concurrent: 0 };
        match self {
            // A site behind one NAT address sends only good keys; one that sends many bad
            // ones (every agent of a restored or revoked site retrying) is refused for a
            // while, and retries. One address flooding bogus keys does a database lookup for
            // each of 200, then 20 a second.
            PerKey::AuthFailures => limit(20.0, 200),
            // 5, then one more every 5 minutes, so guessing a replace token online takes 12
            // guesses an hour.
            PerKey::ReplacePerAgent => limit(1.0 / 300.0, 5),
            // 10 a minute.
            PerKey::ReplacePerToken => limit(10.0 / 60.0, 10),
        }
    }
}

/// Keys of a [`KeyedBuckets`] map at most: the oldest entries go first beyond this.
const MAX_KEYS: usize = 65_536;

/// A route's settings in the configuration file; what is left out keeps its default.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitOverride {
    pub per_second: Option<f64>,
    pub burst: Option<u32>,
    pub concurrent: Option<u32>,
}

/// The effective limits of every route.
pub(crate) struct RateLimits {
    routes: HashMap<&'static str, Arc<Limiter>>,
    /// Indexed by [`PerKey`].
    per_key: [RouteLimit; PerKey::ALL.len()],
    proven: Arc<Proven>,
}

impl RateLimits {
    /// `classes` (a name and its default each) and the [`PerKey`] limits, with `overrides`
    /// applied; an unknown name is an error. `credential_id` names the credential a request
    /// shows, for the proven set.
    pub(crate) fn new(
        classes: impl IntoIterator<Item = (&'static str, RouteLimit)>,
        overrides: &BTreeMap<String, LimitOverride>,
        credential_id: fn(&HeaderMap) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let classes: Vec<_> = classes.into_iter().collect();
        let per_key_names = PerKey::ALL.map(PerKey::name);
        let known = || classes.iter().map(|(n, _)| *n).chain(per_key_names);
        for (name, o) in overrides {
            anyhow::ensure!(
                known().any(|n| n == name),
                "[limits.{name}]: unknown route (known: {})",
                known().collect::<Vec<_>>().join(", ")
            );
            anyhow::ensure!(
                o.concurrent.is_none() || !per_key_names.contains(&name.as_str()),
                "[limits.{name}]: `concurrent` does not apply here, only `per_second` and `burst`"
            );
        }
        let effective = |(name, default): &(&'static str, RouteLimit)| {
            let o = overrides.get(*name).copied().unwrap_or_default();
            let limit = RouteLimit {
                per_second: o.per_second.unwrap_or(default.per_second).max(0.0),
                burst: o.burst.unwrap_or(default.burst).max(1),
                concurrent: o.concurrent.unwrap_or(default.concurrent),
            };
            (*name, limit)
        };
        let per_key = PerKey::ALL.map(|k| effective(&(k.name(), k.default())).1);
        let failures = Arc::new(KeyedBuckets::new(per_key[PerKey::AuthFailures as usize]));
        let proven = Arc::new(Proven::default());
        let routes = classes
            .iter()
            .map(effective)
            .map(|(name, limit)| {
                let shared = (Arc::clone(&failures), Arc::clone(&proven), credential_id);
                (name, Arc::new(Limiter::new(name, limit, shared)))
            })
            .collect();
        Ok(Self { routes, per_key, proven })
    }

    /// Counts these credential ids as proven: `serve` starts with every one the database
    /// holds, so that after a restart agents behind an address that floods bogus keys (agents
    /// restored from an old backup, say, all reconnecting at once) are not refused with it.
    pub(crate) fn prove<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            self.proven.insert(id);
        }
    }

    /// New buckets for the per-key limit `which`.
    pub(crate) fn per_key<K: Hash + Eq + Clone>(&self, which: PerKey) -> KeyedBuckets<K> {
        KeyedBuckets::new(self.per_key[which as usize])
    }

    /// The limiter of the class `name` given to [`RateLimits::new`].
    pub(crate) fn get(&self, name: &str) -> Arc<Limiter> {
        Arc::clone(self.routes.get(name).unwrap_or_else(|| panic!("no limits for {name}")))
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(limit: RouteLimit, now: Instant) -> Self {
        Self { tokens: f64::from(limit.burst), last: now }
    }

    /// Adds the tokens earned since the last call, up to the burst.
    fn refill(&mut self, limit: RouteLimit, now: Instant) {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * limit.per_second;
        self.tokens = (self.tokens + earned).min(f64::from(limit.burst));
        self.last = now;
    }

    /// Ok when a token is left (`take`: and takes it), or how long until one is.
    fn check(&mut self, limit: RouteLimit, now: Instant, take: bool) -> Result<(), Duration> {
        if limit.per_second <= 0.0 {
            return Ok(());
        }
        self.refill(limit, now);
        if self.tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - self.tokens) / limit.per_second));
        }
        if take {
            self.tokens -= 1.0;
        }
        Ok(())
    }

    fn give_back(&mut self, limit: RouteLimit) {
        self.tokens = (self.tokens + 1.0).min(f64::from(limit.burst));
    }
}

/// A token bucket per key, for failures: [`KeyedBuckets::check`] before the work, and
/// [`KeyedBuckets::charge`] when it failed. At most [`MAX_KEYS`] keys are kept; a key whose
/// bucket is full again is forgotten first, then the least recently charged.
pub(crate) struct KeyedBuckets<K> {
    limit: RouteLimit,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    pub(crate) fn new(limit: RouteLimit) -> Self {
        Self { limit, buckets: Mutex::new(HashMap::new()) }
    }

    /// Ok when `key` has a token left, or how long until it has.
    pub(crate) fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("buckets lock");
        buckets.get_mut(key).map_or(Ok(()), |b| b.check(self.limit, now, false))
    }

    /// Takes a token from `key`'s bucket, or says how long until one is available.
    pub(crate) fn charge(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("buckets lock");
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) {
            self.prune(&mut buckets, now);
        }
        buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(self.limit, now))
            .check(self.limit, now, true)
    }

    /// Forgets keys whose bucket is full again (they remember nothing), then the least recently
    /// charged down to 3/4 of the cap: one sort per MAX_KEYS/4 new keys at worst.
    fn prune(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        let burst = f64::from(self.limit.burst);
        buckets.retain(|_, b| {
            b.refill(self.limit, now);
            b.tokens < burst
        });
        let keep = MAX_KEYS * 3 / 4;
        if buckets.len() > keep {
            let mut ages: Vec<(Instant, K)> =
                buckets.iter().map(|(k, b)| (b.last, k.clone())).collect();
            ages.sort_unstable_by_key(|(last, _)| std::cmp::Reverse(*last));
            for (_, key) in ages.drain(keep..) {
                buckets.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().expect("buckets lock").len()
    }
}

/// Whom a failed authentication is charged to: the source address, an IPv6 one by its /64
/// (what one host or site is given); requests without an address share one key.
fn address_key(addr: Option<IpAddr>) -> Option<IpAddr> {
    addr.map(|a| match a.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    })
}

tokio::task_local! {
    /// Set while a request runs under [`limit`]: whether its credentials failed.
    static CREDENTIALS_FAILED: Cell<bool>;
}

/// Marks the current request's credentials as failed (an unknown or malformed key or token, a
/// key of another agent): [`limit`] gives back its route token and charges its address. A no-op
/// outside the middleware.
pub(crate) fn credentials_failed() {
    let _ = CREDENTIALS_FAILED.try_with(|failed| failed.set(true));
}

/// Credential ids (access keys, enrollment tokens) that passed authentication recently, in two
/// generations of at most [`Proven::GENERATION`] each: an id used within the last generation or
/// two is remembered, the rest forgotten in one swap, so the set stays bounded (a fleet of
/// 20,000 agents checking in every 5 minutes keeps every id, in about 3 MiB at most).
#[derive(Default)]
pub(crate) struct Proven {
    generations: Mutex<[std::collections::HashSet<String>; 2]>,
}

impl Proven {
    const GENERATION: usize = 32_768;

    fn contains(&self, id: &str) -> bool {
        self.generations.lock().expect("proven lock").iter().any(|g| g.contains(id))
    }

    fn insert(&self, id: &str) {
        let mut g = self.generations.lock().expect("proven lock");
        if g[0].contains(id) {
            return;
        }
        if g[0].len() >= Self::GENERATION {
            g.swap(0, 1);
            g[0].clear();
        }
        g[0].insert(id.to_owned());
    }

    fn forget(&self, id: &str) {
        for g in self.generations.lock().expect("proven lock").iter_mut() {
            g.remove(id);
        }
    }
}

pub(crate) struct Limiter {
    /// The route class, for `ferry_rate_limited_total`.
    route: &'static str,
    limit: RouteLimit,
    bucket: Mutex<Bucket>,
    in_flight: Option<Arc<Semaphore>>,
    /// Failed authentications per address, and credentials proven recently, shared by every
    /// route.
    failures: Arc<KeyedBuckets<Option<IpAddr>>>,
    proven: Arc<Proven>,
    credential_id: fn(&HeaderMap) -> Option<String>,
}

/// What every route's limiter shares: failures per address, the proven credentials, and how a
/// request names its credential.
type Shared = (Arc<KeyedBuckets<Option<IpAddr>>>, Arc<Proven>, fn(&HeaderMap) -> Option<String>);

impl Limiter {
    fn new(
        route: &'static str,
        limit: RouteLimit,
        (failures, proven, credential_id): Shared,
    ) -> Self {
        Self {
            route,
            limit,
            bucket: Mutex::new(Bucket::full(limit, Instant::now())),
            in_flight: (limit.concurrent > 0)
                .then(|| Arc::new(Semaphore::new(limit.concurrent as usize))),
            failures,
            proven,
            credential_id,
        }
    }

    /// Takes a token, or says how long until one is available.
    fn take(&self, now: Instant) -> Result<(), Duration> {
        self.bucket.lock().expect("bucket lock").check(self.limit, now, true)
    }

    fn give_back(&self) {
        self.bucket.lock().expect("bucket lock").give_back(self.limit);
    }
}

fn too_many(
    route: &'static str,
    code: &'static str,
    message: &str,
    retry_after: Duration,
) -> Response {
    crate::metrics::COUNTERS.rate_limited(route, code);
    ApiError::TooMany { code, message: message.to_owned(), retry_after }.into_response()
}

/// The middleware: `axum::middleware::from_fn_with_state(limits.get("ack"), limit)`. An
/// address out of failed authentications is refused before anything else; a request whose
/// credentials fail (see [`credentials_failed`]) is charged to its address, not the route.
pub(crate) async fn limit(
    State(limiter): State<Arc<Limiter>>,
    request: Request,
    next: Next,
) -> Response {
    let address = address_key(request.extensions().get::<ClientAddr>().map(|a| a.0));
    let credential = (limiter.credential_id)(request.headers());
    if let Err(wait) = limiter.failures.check(&address, Instant::now())
        && !credential.as_deref().is_some_and(|id| limiter.proven.contains(id))
    {
        let from = address.map_or("clients without an address".to_owned(), |a| a.to_string());
        let message = format!("too many failed authentications from {from}");
        return too_many(limiter.route, "AuthFailureLimit", &message, wait);
    }
    if let Err(wait) = limiter.take(Instant::now()) {
        return too_many(limiter.route, "RateLimit", "exceeded the rate limit", wait);
    }
    let permit = match &limiter.in_flight {
        Some(s) => match Arc::clone(s).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                return too_many(
                    limiter.route,
                    "MaxLimit",
                    "too many requests in flight",
                    Duration::from_secs(1),
                );
            }
        },
        None => None,
    };
    let (response, failed) = CREDENTIALS_FAILED
        .scope(Cell::new(false), async {
            let response = next.run(request).await;
            (response, CREDENTIALS_FAILED.with(Cell::get))
        })
        .await;
    match credential {
        // A proven id that fails (a good key id with a wrong secret) is proven no longer.
        Some(id) if failed => limiter.proven.forget(&id),
        Some(id) if response.status().is_success() => limiter.proven.insert(&id),
        _ => {}
    }
    if failed {
        limiter.give_back();
        let _ = limiter.failures.charge(address, Instant::now());
    }
    // A long poll answered later still counts as in flight until its answer (`Later`).
    match permit {
        Some(permit) => crate::net::later::Later::hold(response, permit),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proven_ids_stay_bounded_and_recent_ones_are_kept() {
        let p = Proven::default();
        p.insert("a");
        for i in 0..Proven::GENERATION {
            p.insert(&i.to_string());
        }
        // One swap: "a" is in the older generation, still proven.
        assert!(p.contains("a") && p.contains("0"));
        for i in 0..Proven::GENERATION {
            p.insert(&format!("x{i}"));
        }
        assert!(!p.contains("a"), "two generations later");
        let g = p.generations.lock().unwrap();
        assert!(g.iter().map(|g| g.len()).sum::<usize>() <= 2 * Proven::GENERATION);
        drop(g);
        p.forget("x0");
        assert!(!p.contains("x0"));
    }

    #[test]
    fn buckets_refill_at_the_rate_up_to_the_burst() {
        let failures = Arc::new(KeyedBuckets::new(PerKey::AuthFailures.default()));
        let l = Limiter::new(
            "test",
            RouteLimit { per_second: 10.0, burst: 2, concurrent: 0 },
            (failures, Arc::default(), |_| None),
        );
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

    /// Limits with one class, `enroll`, as the route table gives it.
    fn with_enroll(overrides: &BTreeMap<String, LimitOverride>) -> anyhow::Result<RateLimits> {
        let enroll = RouteLimit { per_second: 100.0, burst: 100, concurrent: 50 };
        RateLimits::new([("enroll", enroll)], overrides, |_| None)
    }

    #[test]
    fn overrides_keep_unset_defaults_and_unknown_routes_are_errors() {
        let o = BTreeMap::from([(
            "enroll".to_owned(),
            LimitOverride { burst: Some(3), ..Default::default() },
        )]);
        let limits = with_enroll(&o).unwrap();
        let enroll = limits.get("enroll").limit;
        assert_eq!((enroll.burst, enroll.per_second, enroll.concurrent), (3, 100.0, 50));
        let o = BTreeMap::from([("enrol".to_owned(), LimitOverride::default())]);
        let err = with_enroll(&o).err().unwrap().to_string();
        assert!(err.contains("enrol") && err.contains("known: enroll"), "{err}");
        let o = BTreeMap::from([(
            "auth_failures".to_owned(),
            LimitOverride { concurrent: Some(3), ..Default::default() },
        )]);
        let err = with_enroll(&o).err().unwrap().to_string();
        assert!(err.contains("[limits.auth_failures]: `concurrent` does not apply"), "{err}");
        let o = BTreeMap::from([(
            "auth_failures".to_owned(),
            LimitOverride { burst: Some(7), ..Default::default() },
        )]);
        assert_eq!(with_enroll(&o).unwrap().per_key::<u8>(PerKey::AuthFailures).limit.burst, 7);
    }

    #[test]
    fn keyed_buckets_charge_each_key_and_stay_bounded() {
        let b = KeyedBuckets::new(RouteLimit { per_second: 1.0, burst: 2, concurrent: 0 });
        let t0 = Instant::now();
        assert!(b.check(&1u32, t0).is_ok(), "an unknown key has its whole burst");
        assert!(b.charge(1, t0).is_ok() && b.charge(1, t0).is_ok());
        assert!(b.check(&1, t0).is_err() && b.charge(1, t0).is_err());
        assert!(b.check(&2, t0).is_ok(), "other keys are not charged");
        // Past the cap, keys with a full bucket go, then the oldest; the newest stay charged.
        for k in 0..MAX_KEYS as u32 + 10 {
            let _ = b.charge(k, t0 + Duration::from_millis(u64::from(k)));
        }
        assert!(b.len() <= MAX_KEYS, "{}", b.len());
        let last = MAX_KEYS as u32 + 9;
        let at = t0 + Duration::from_millis(u64::from(last));
        assert!(b.charge(last, at).is_ok(), "its second token");
        assert!(b.check(&last, at).is_err(), "the newest key is still remembered");
    }

    #[test]
    fn addresses_are_keyed_by_host_or_ipv6_slash_64() {
        let key = |s: &str| address_key(Some(s.parse().unwrap()));
        assert_eq!(key("127.0.0.2"), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(key("::ffff:10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(address_key(None), None);
    }
}
