//! `GET /metrics`: the appliance in Prometheus' text format (0.0.4), for the site's Prometheus or
//! Elastic Agent's `prometheus` input. Served on the admin socket (`/admin/v1/metrics`, admin
//! token) and, when `server.metrics_listen` is set, on a plain HTTP listener of its own whose
//! requests carry the metrics token (`data_dir/metrics.token`, kept across restarts so a
//! scraper's configuration outlives them) or the admin token.
//!
//! Three sources, each where it is cheapest to be right:
//! - counters the serving process increments as things happen ([`COUNTERS`]): mirror requests
//!   and bytes, rate-limit answers, enrollments, actions queued and acknowledged;
//! - gauges read at each scrape: agents by status, version, policy and upgrade state (from the
//!   store, as `status` counts them), check-ins parked, the active release and its expiry, the
//!   server certificate's expiry, free space in `data_dir`, Elasticsearch's state;
//! - counters read from the audit log ([`crate::audit::AuditLog::read_new`]): imports, fsck,
//!   rollbacks and every other audited event by outcome, and refusals by named check. Imports
//!   run in other processes, and the log is where all of them are written; counting from the
//!   start of the current file keeps the figures the same across a restart of `serve`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::admin::Admin;
use crate::error::ApiError;

/// The token file a scraper reads (Prometheus: `authorization.credentials_file`).
pub(crate) const TOKEN_FILE: &str = "metrics.token";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Limited {
    route: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionType {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Acked {
    r#type: &'static str,
    outcome: &'static str,
}

/// What the serving process counts as it happens. One set per process: tests running several
/// servers in one process (none do) would share it.
#[derive(Default)]
pub(crate) struct Counters {
    mirror_requests: Family<Code, Counter>,
    mirror_bytes: Counter,
    rate_limited: Family<Limited, Counter>,
    enrollments: Counter,
    actions_queued: Family<ActionType, Counter>,
    acks: Family<Acked, Counter>,
}

pub(crate) static COUNTERS: LazyLock<Counters> = LazyLock::new(Counters::default);

impl Counters {
    /// A mirror request answered with `status` (bytes are counted as they are sent).
    pub(crate) fn mirror_answered(&self, status: StatusCode) {
        let code = match status.as_u16() {
            200 => "200",
            206 => "206",
            304 => "304",
            404 => "404",
            416 => "416",
            _ => "other",
        };
        self.mirror_requests.get_or_create(&Code { code }).inc();
    }

    /// Bytes of a mirror file sent (`sendfile(2)`) or handed to the connection (streamed).
    pub(crate) fn mirror_sent(&self, bytes: u64) {
        self.mirror_bytes.inc_by(bytes);
    }

    /// A `429` of the limiter of `route`; `reason` is its error code (`RateLimit`, `MaxLimit`,
    /// `AuthFailureLimit`).
    pub(crate) fn rate_limited(&self, route: &'static str, reason: &'static str) {
        self.rate_limited.get_or_create(&Limited { route, reason }).inc();
    }

    pub(crate) fn enrolled(&self) {
        self.enrollments.inc();
    }

    /// An action of `kind` queued for `agents` agents.
    pub(crate) fn actions_queued(&self, kind: &'static str, agents: usize) {
        self.actions_queued.get_or_create(&ActionType { r#type: kind }).inc_by(agents as u64);
    }

    /// An agent's acknowledgement of an action of `kind`, successful or with an error.
    pub(crate) fn acked(&self, kind: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.acks.get_or_create(&Acked { r#type: kind, outcome }).inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "ferry_mirror_requests",
            "Download mirror requests by HTTP status",
            self.mirror_requests.clone(),
        );
        registry.register(
            "ferry_mirror_sent_bytes",
            "Bytes of mirror files sent to clients",
            self.mirror_bytes.clone(),
        );
        registry.register(
            "ferry_rate_limited",
            "Requests answered 429 by route and limit",
            self.rate_limited.clone(),
        );
        registry.register("ferry_enrollments", "Agents enrolled", self.enrollments.clone());
        registry.register(
            "ferry_actions_queued",
            "Agent deliveries of actions created, by action type",
            self.actions_queued.clone(),
        );
        registry.register(
            "ferry_action_acks",
            "Action acknowledgements from agents, by action type and outcome",
            self.acks.clone(),
        );
    }
}

/// What a scrape reads, kept between scrapes: where the audit log was read up to, and the
/// counts so far.
#[derive(Default)]
pub(crate) struct Scraper {
    /// The server certificate whose expiry is reported; `None` without TLS.
    pub(crate) certificate: Option<PathBuf>,
    audit: Mutex<AuditCounts>,
}

#[derive(Default)]
struct AuditCounts {
    tail: crate::audit::Tail,
    events: BTreeMap<(String, &'static str), u64>,
    refusals: BTreeMap<String, u64>,
}

impl Scraper {
    pub(crate) fn new(certificate: Option<PathBuf>) -> Self {
        Self { certificate, audit: Mutex::default() }
    }
}

/// The figures read at one scrape, encoded by [`Collector::encode`].
#[derive(Debug, Default)]
struct Snapshot {
    agents_by_status: BTreeMap<&'static str, usize>,
    agents_by_version: BTreeMap<String, usize>,
    agents_by_policy: BTreeMap<String, usize>,
    upgrades_by_state: BTreeMap<String, usize>,
    parked: usize,
    draining: bool,
    reports_trimmed: u64,
    checkins_superseded: u64,
    /// Name, sequence, expiry (Unix seconds) of the active release, and whether it is served.
    release: Option<(String, u64, i64)>,
    served: bool,
    certificate_expiry: Option<i64>,
    elasticsearch: Option<bool>,
    disk: Option<crate::health::DiskSpace>,
    audit_events: BTreeMap<(String, &'static str), u64>,
    refusals: BTreeMap<String, u64>,
    store_up: bool,
}

/// One gauge or counter family from `rows` of label values and numbers.
fn family<const N: usize>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    labels: [&str; N],
    rows: impl IntoIterator<Item = ([String; N], u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (values, n) in rows {
        let set: Vec<(&str, &str)> =
            labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
        let encoder = metric.encode_family(&set)?;
        match kind {
            MetricType::Counter => ConstCounter::new(n).encode(encoder)?,
            _ => ConstGauge::new(n as i64).encode(encoder)?,
        }
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let one = |n: usize| n as u64;
        family(
            &mut e,
            "ferry_agents",
            "Active agents by status (as `agents list` shows it)",
            Gauge,
            ["status"],
            self.agents_by_status.iter().map(|(s, n)| ([(*s).to_owned()], one(*n))),
        )?;
        family(
            &mut e,
            "ferry_agents_by_version",
            "Active agents by Elastic Agent version",
            Gauge,
            ["version"],
            self.agents_by_version.iter().map(|(v, n)| ([v.clone()], one(*n))),
        )?;
        family(
            &mut e,
            "ferry_agents_by_policy",
            "Active agents by policy",
            Gauge,
            ["policy"],
            self.agents_by_policy.iter().map(|(p, n)| ([p.clone()], one(*n))),
        )?;
        family(
            &mut e,
            "ferry_agent_upgrades",
            "Active agents by upgrade state",
            Gauge,
            ["state"],
            self.upgrades_by_state.iter().map(|(s, n)| ([s.clone()], one(*n))),
        )?;
        family(
            &mut e,
            "ferry_checkins_parked",
            "Check-ins held open waiting for something to deliver",
            Gauge,
            [],
            [([], one(self.parked))],
        )?;
        family(
            &mut e,
            "ferry_draining",
            "1 while `ferry-appliance drain` holds",
            Gauge,
            [],
            [([], u64::from(self.draining))],
        )?;
        family(
            &mut e,
            "ferry_checkin_reports_trimmed",
            "Check-in reports with fields over their caps",
            Counter,
            [],
            [([], self.reports_trimmed)],
        )?;
        family(
            &mut e,
            "ferry_checkins_superseded",
            "Check-ins replaced by a newer one of the same agent",
            Counter,
            [],
            [([], self.checkins_superseded)],
        )?;
        family(
            &mut e,
            "ferry_store_up",
            "1 when the state store answered this scrape",
            Gauge,
            [],
            [([], u64::from(self.store_up))],
        )?;
        if let Some((name, sequence, expires)) = &self.release {
            family(
                &mut e,
                "ferry_release_active",
                "The active release (always 1)",
                Gauge,
                ["name", "sequence"],
                [([name.clone(), sequence.to_string()], 1)],
            )?;
            family(
                &mut e,
                "ferry_release_expiry_timestamp_seconds",
                "When the active release expires",
                Gauge,
                [],
                [([], u64::try_from(*expires).unwrap_or(0))],
            )?;
        }
        family(
            &mut e,
            "ferry_release_served",
            "1 when the active release verifies and is served",
            Gauge,
            [],
            [([], u64::from(self.served))],
        )?;
        if let Some(at) = self.certificate_expiry {
            family(
                &mut e,
                "ferry_certificate_expiry_timestamp_seconds",
                "When the server certificate expires",
                Gauge,
                [],
                [([], u64::try_from(at).unwrap_or(0))],
            )?;
        }
        if let Some(up) = self.elasticsearch {
            family(
                &mut e,
                "ferry_elasticsearch_up",
                "1 when the site's Elasticsearch answered its last check",
                Gauge,
                [],
                [([], u64::from(up))],
            )?;
        }
        if let Some(disk) = self.disk {
            family(
                &mut e,
                "ferry_data_dir_free_bytes",
                "Free space for the appliance in data_dir's file system",
                Gauge,
                [],
                [([], disk.free)],
            )?;
            family(
                &mut e,
                "ferry_data_dir_size_bytes",
                "Size of data_dir's file system",
                Gauge,
                [],
                [([], disk.total)],
            )?;
        }
        family(
            &mut e,
            "ferry_audit_events",
            "Audit log records (current file) by event and outcome",
            Counter,
            ["event", "outcome"],
            self.audit_events.iter().map(|((ev, o), n)| ([ev.clone(), (*o).to_owned()], *n)),
        )?;
        family(
            &mut e,
            "ferry_refusals",
            "Refusals by the named check that refused (imports, rollbacks, fsck)",
            Counter,
            ["check"],
            self.refusals.iter().map(|(c, n)| ([c.clone()], *n)),
        )?;
        Ok(())
    }
}

fn outcome_name(o: crate::audit::Outcome) -> &'static str {
    match o {
        crate::audit::Outcome::Ok => "ok",
        crate::audit::Outcome::Refused => "refused",
        crate::audit::Outcome::Failed => "failed",
    }
}

/// Reads the scrape's figures and encodes them with the counters.
pub(crate) async fn render(admin: &Arc<Admin>) -> Result<String, ApiError> {
    let offline_after = admin.offline_after;
    let views = crate::app::with_db(&admin.state, |s| {
        Ok(s.agent_views(&crate::store::AgentPage::summary())?)
    })
    .await;
    let mut snap = Snapshot { store_up: views.is_ok(), ..Snapshot::default() };
    let now = crate::clock::now_rfc3339();
    for view in views.iter().flatten().filter(|v| v.active) {
        *snap
            .agents_by_status
            .entry(crate::admin::agent_status(view, &now, offline_after))
            .or_default() += 1;
        *snap.agents_by_version.entry(view.version.clone()).or_default() += 1;
        *snap.agents_by_policy.entry(view.policy_id.clone()).or_default() += 1;
        if let Some(state) = &view.upgrade_state {
            *snap.upgrades_by_state.entry(state.clone()).or_default() += 1;
        }
    }
    snap.parked = admin.hub.parked_count();
    snap.draining = admin.hub.draining();
    snap.reports_trimmed = admin.hub.trimmed.count();
    snap.checkins_superseded = admin.hub.superseded.count();
    if let crate::release::Active::Ready(release) = admin.app.active() {
        let expires = release.manifest.expires.unix_timestamp();
        snap.release = Some((release.name.clone(), release.sequence, expires));
    }
    snap.served = admin.app.current().is_some();
    snap.elasticsearch =
        admin.app.elastic.get().map(|es| es.health().state == crate::elastic::State::Ok);
    let admin = Arc::clone(admin);
    crate::app::blocking(move || {
        let scraper = &admin.metrics;
        snap.certificate_expiry = scraper
            .certificate
            .as_deref()
            .and_then(|p| crate::health::certificate_expiry(p).ok())
            .map(|at| at.unix_timestamp());
        snap.disk = crate::health::disk_space(admin.audit.dir()).ok();
        let mut counts = scraper.audit.lock().expect("audit counts lock");
        let AuditCounts { tail, events, refusals } = &mut *counts;
        let read = admin.audit.read_new(tail, |record| {
            let outcome = outcome_name(record.outcome);
            *events.entry((record.event.clone(), outcome)).or_default() += 1;
            if record.outcome == crate::audit::Outcome::Refused
                && let Some(check) = record.details.get("check").and_then(|c| c.as_str())
            {
                *refusals.entry(check.to_owned()).or_default() += 1;
            }
        });
        if let Err(e) = read {
            tracing::warn!(error = %format!("{e:#}"), "metrics: cannot read the audit log");
        }
        snap.audit_events = events.clone();
        snap.refusals = refusals.clone();
        drop(counts);
        let mut registry = Registry::default();
        COUNTERS.register(&mut registry);
        registry.register_collector(Box::new(snap));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("cannot encode the metrics: {e}")))?;
        Ok(text)
    })
    .await
}

/// The answer to `GET /metrics`.
pub(crate) async fn handler(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let text = render(&admin).await?;
    let content_type = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// The metrics listener's router: `/metrics` only, to the metrics or the admin token.
pub(crate) fn router(admin: Arc<Admin>, token: String) -> axum::Router {
    let token = Arc::new(token);
    axum::Router::new()
        .route("/metrics", axum::routing::get(handler))
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn_with_state((Arc::clone(&admin), token), require_token))
        .with_state(admin)
        // The dashboard's: no framing, no script, no caching, whatever a client makes of it.
        .layer(axum::middleware::map_response(crate::admin::dashboard::security_headers))
}

async fn require_token(
    State((admin, token)): State<(Arc<Admin>, Arc<String>)>,
    request: Request,
    next: Next,
) -> Response {
    let shown = crate::admin::bearer(&request).as_bytes();
    let same = |t: &str| crate::credentials::same_secret(shown, t.as_bytes());
    if !same(&token) && !same(&admin.token) {
        let mut response = ApiError::fleet(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing or wrong token: send `Authorization: Bearer` with data_dir/metrics.token",
        )
        .into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
        return response;
    }
    next.run(request).await
}

/// The metrics token in `data_dir/metrics.token`: the one there, or a new one written there
/// (mode 0600) when there is none. Kept across restarts, unlike the admin token: it only reads.
pub(crate) fn token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())));
        }
    }
    crate::admin::write_token(&path)
}

/// Prometheus' text format, read back: each sample line's name with labels, and its value.
#[cfg(test)]
pub(crate) fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(name, value)| (name.to_owned(), value.parse().expect("a number")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_encodes_as_prometheus_text_with_escaped_labels() {
        let mut snap = Snapshot::default();
        snap.agents_by_status.insert("online", 3);
        snap.agents_by_version.insert("9.1.0\"\n\\".into(), 2);
        snap.release = Some(("site".into(), 7, 2_000_000_000));
        snap.refusals.insert("signature".into(), 4);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snap));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        let got = samples(&text);
        assert_eq!(got["ferry_agents{status=\"online\"}"], 3.0);
        assert_eq!(got["ferry_agents_by_version{version=\"9.1.0\\\"\\n\\\\\"}"], 2.0, "{text}");
        assert_eq!(got["ferry_release_active{name=\"site\",sequence=\"7\"}"], 1.0);
        assert_eq!(got["ferry_release_expiry_timestamp_seconds"], 2e9);
        assert_eq!(got["ferry_refusals_total{check=\"signature\"}"], 4.0, "{text}");
        assert!(text.contains("# TYPE ferry_refusals_total counter"), "{text}");
    }
}
