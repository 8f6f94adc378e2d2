//! The read-only dashboard: server-rendered HTML pages on the admin socket, outside the admin
//! API's prefix (`/`, `/agents`, `/releases`, `/upgrades`, `/audit`, and `/dashboard.css`).
//!
//! An operator reaches it through an SSH tunnel to the socket (`ssh -L
//! 8221:/var/lib/ferry/admin.sock HOST`, then `http://localhost:8221/`): sshd connects as the
//! logged-in user, so the socket's `SO_PEERCRED` check still decides who gets in, and the
//! admin token decides it again, as a Bearer token or as the password of HTTP Basic (any user
//! name), which is what a browser can send. The data comes from the admin API's own functions
//! (`status`, the agents' list and statuses, the store, the audit log), so a page shows what
//! the API and the CLI say.
//!
//! No JavaScript and nothing from the network: every page is HTML written here with a small
//! stylesheet this module serves, and a Content Security Policy that allows nothing else.
//! Everything agents wrote (host names, tags, versions, messages) and everything read from the
//! store goes through [`Html::text`], which escapes it; markup is only ever `&'static str`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;

use super::api::{Agent, AgentsQuery, StatusReport};
use super::{Admin, db};
use crate::error::ApiError;
use crate::store::{ActionRecord, ActionTarget, AgentPage, ReleaseRecord, StoreError};

/// Audit events on the overview, and on the audit page.
const OVERVIEW_AUDIT: usize = 20;
const AUDIT_PAGE: usize = 200;
/// Upgrade actions on the overview, and on the upgrades page.
const OVERVIEW_UPGRADES: usize = 5;
const UPGRADES_PAGE: usize = 50;
/// Agents per page of `/agents`: a page a browser renders at once even for a large site.
const AGENTS_PAGE: usize = 500;
/// A release expiring within this many days is shown as a warning.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// The headers of every dashboard answer. The policy allows the stylesheet from the appliance
/// and nothing else: no script (there is none), no frame around the page, no form, no base,
/// so text an agent managed to slip past the escaping could still not run or send anything.
/// `no-store`: pages hold the fleet's inventory, which has no business in a browser's cache.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; \
         base-uri 'none'; form-action 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// The dashboard's routes, merged into the admin socket's router. GET (and HEAD, which axum
/// answers with GET's headers) only: any other method is answered 405.
pub(super) fn router(admin: Arc<Admin>) -> Router {
    let pages = Router::new()
        .route("/", get(overview))
        .route("/agents", get(agents_page))
        .route("/releases", get(releases_page))
        .route("/upgrades", get(upgrades_page))
        .route("/audit", get(audit_page))
        // Every path outside the admin API's prefix is the dashboard's, so an unknown one gets
        // its headers too.
        .fallback(not_found)
        .layer(from_fn_with_state(Arc::clone(&admin), super::require_token))
        .layer(from_fn(challenge));
    // The stylesheet is served without the token: it is the same constant bytes for everyone
    // and says nothing about the site, and a browser that does not send the page's Basic
    // credentials with a subresource (as with credentials typed into the URL) would otherwise
    // show the pages unstyled. The Host and Origin checks still apply.
    let stylesheet = Router::new().route("/dashboard.css", get(stylesheet));
    pages
        .merge(stylesheet)
        .layer(from_fn(super::local_only))
        // As on the API: refusals are recorded, successful reads are not.
        .layer(from_fn_with_state(Arc::clone(&admin), super::audit))
        // Outside the audit, so a refused Basic password is recorded with its fingerprint.
        .layer(from_fn(basic_as_bearer))
        .layer(map_response(security_headers))
        .with_state(admin)
}

pub(crate) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A browser sends the admin token as the password of HTTP Basic: it is turned into the Bearer
/// token the admin API checks ([`super::require_token`]), so both are checked by the same
/// constant-time comparison. A header that is not well-formed Basic is left as it is, and
/// refused there.
async fn basic_as_bearer(mut request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_password)
        .and_then(|password| HeaderValue::from_str(&format!("Bearer {password}")).ok());
    if let Some(bearer) = bearer {
        request.headers_mut().insert(header::AUTHORIZATION, bearer);
    }
    next.run(request).await
}

/// The password of an `Authorization: Basic base64(user:password)` value.
fn basic_password(value: &str) -> Option<String> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_user, password) = text.split_once(':')?;
    Some(password.to_owned())
}

/// Marks the answer to a page request that carried no credentials at all. A browser sends the
/// Basic credentials only once challenged, so each visit starts with such a request: that is
/// HTTP authentication beginning, not a token refused, and the audit leaves it out (a wrong
/// token, in either form, is recorded).
#[derive(Debug, Clone, Copy)]
pub(super) struct Challenged;

/// A page refused for its token asks the browser for it (`WWW-Authenticate`), with a page
/// saying where the token is, for whoever cancels the prompt.
async fn challenge(request: Request, next: Next) -> Response {
    let presented = request.headers().contains_key(header::AUTHORIZATION);
    let response = next.run(request).await;
    if response.status() != StatusCode::UNAUTHORIZED {
        return response;
    }
    let mut h = Html::default();
    h.m("<p>The dashboard needs this start's admin token: the password is the content of \
         <code>admin.token</code> in the appliance's data directory (any user name). It \
         changes at every start of <code>ferry-appliance serve</code>.</p>");
    let page = h.page("Admin token needed", "");
    let mut response = (StatusCode::UNAUTHORIZED, page).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"ferry-appliance\""),
    );
    if !presented {
        response.extensions_mut().insert(Challenged);
    }
    response
}

async fn not_found() -> Response {
    let mut h = Html::default();
    h.m("<p>There is no such page. The pages are listed above.</p>");
    let mut response = h.page("Not found", "");
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLESHEET).into_response()
}

/// HTML under construction. Markup comes only from [`Html::m`], which takes the code's own
/// `&'static str`; every value known at run time goes through [`Html::text`] (or
/// [`Html::num`]), so no path puts an agent's text into the page unescaped.
#[derive(Default)]
struct Html(String);

impl Html {
    /// The code's own markup.
    fn m(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Text, escaped for element content and for quoted attribute values alike.
    fn text(&mut self, text: &str) -> &mut Self {
        for c in text.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&#39;"),
                c => self.0.push(c),
            }
        }
        self
    }

    fn num(&mut self, n: impl Into<u64>) -> &mut Self {
        self.0.push_str(&n.into().to_string());
        self
    }

    /// `<td id="ID">N</td>`: a number a test (or a scraper) finds by its id.
    fn cell_id(&mut self, id: &str, n: usize) -> &mut Self {
        self.m("<td class=\"n\" id=\"").text(id).m("\">").num(n as u64).m("</td>")
    }

    /// A link to a dashboard page with one query parameter.
    fn link_query(&mut self, path: &'static str, key: &'static str, value: &str, label: &str) {
        self.m("<a href=\"").m(path).m("?").m(key).m("=").text(&query_value(value));
        self.m("\">").text(label).m("</a>");
    }

    /// The whole document: head, the navigation with `current` marked, then this body.
    fn page(self, title: &str, current: &str) -> Response {
        let mut h = Html::default();
        h.m("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <meta name=\"referrer\" content=\"no-referrer\"><title>");
        h.text(title).m(" · Ferry appliance</title>");
        h.m("<link rel=\"stylesheet\" href=\"/dashboard.css\"></head><body><header>\
             <span class=\"brand\">Ferry appliance</span><nav>");
        for (path, name) in NAV {
            h.m("<a href=\"").m(path).m("\"");
            if *path == current {
                h.m(" aria-current=\"page\"");
            }
            h.m(">").m(name).m("</a>");
        }
        h.m("</nav></header><main><h1>").text(title).m("</h1>");
        h.0.push_str(&self.0);
        h.m("<footer>Read-only. Generated ").text(&crate::clock::now_rfc3339());
        h.m(" by ferry-appliance ")
            .m(env!("CARGO_PKG_VERSION"))
            .m(".</footer></main></body></html>\n");
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], h.0).into_response()
    }
}

const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/agents", "Agents"),
    ("/releases", "Releases"),
    ("/upgrades", "Upgrades"),
    ("/audit", "Audit"),
];

/// A query parameter's value, percent-encoded but for the characters that never need it.
fn query_value(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `-` for what is not there.
fn or_dash(text: Option<&str>) -> &str {
    text.filter(|t| !t.is_empty()).unwrap_or("-")
}

/// Every agent as the admin API sees it (`GET /agents` without paging), with its status.
async fn all_agents(admin: &Arc<Admin>) -> Result<Vec<Agent>, ApiError> {
    super::agents(admin, |s| Ok(s.agent_views(&AgentPage::default())?)).await
}

/// Enrolled (active) agents counted by `key`, most first, then by name.
fn count_by<'a>(agents: &'a [Agent], key: impl Fn(&'a Agent) -> &'a str) -> Vec<(&'a str, usize)> {
    let mut counts = BTreeMap::<&str, usize>::new();
    for agent in agents.iter().filter(|a| a.active) {
        *counts.entry(key(agent)).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts
}

// ----- the overview -----

async fn overview(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let report = super::status_now(&admin).await?;
    let agents = all_agents(&admin).await?;
    let releases = db(&admin, |s| Ok(s.releases()?)).await?;
    let upgrades = upgrades(&admin, OVERVIEW_UPGRADES, &agents).await?;
    let audit = recent_audit(&admin, OVERVIEW_AUDIT).await?;
    let instances = instances(&admin).await;

    let mut h = Html::default();
    health_banner(&mut h, &report);
    fleet_summary(&mut h, &report, &agents);
    h.m("<section><h2>Releases</h2>");
    releases_table(&mut h, &report, &releases);
    h.m("<p class=\"more\"><a href=\"/releases\">All releases</a></p></section>");
    h.m("<section><h2>Upgrades</h2>");
    upgrades_table(&mut h, &upgrades, false);
    h.m("<p class=\"more\"><a href=\"/upgrades\">All upgrades</a></p></section>");
    services(&mut h, &report, instances);
    h.m("<section><h2>Recent audit events</h2>");
    audit_table(&mut h, &audit);
    h.m("<p class=\"more\"><a href=\"/audit\">More of the audit log</a></p></section>");
    Ok(h.page("Overview", "/"))
}

/// What `/api/status` answers, and why when it is not healthy.
fn health_banner(h: &mut Html, report: &StatusReport) {
    let status = report.status.as_deref().unwrap_or("UNKNOWN");
    h.m("<p class=\"banner ");
    h.m(if status == "HEALTHY" { "ok" } else { "bad" });
    h.m("\">Fleet status <strong id=\"fleet-status\">").text(status).m("</strong>");
    if report.draining {
        h.m(" · <strong>draining</strong>: agents are sent to other instances \
             (<code>ferry-appliance drain --undo</code> ends it)");
    }
    if let Some(message) = &report.message {
        h.m(" · ").text(message);
    }
    h.m("</p>");
    if !report.policies_held.is_empty() {
        h.m("<section class=\"warn\"><h2>Policies held back</h2><p>Agents keep the policy \
             they run until these can be delivered.</p><table><thead><tr><th>Policy</th>\
             <th>Why</th></tr></thead><tbody>");
        for (policy, why) in &report.policies_held {
            h.m("<tr><td>").text(policy).m("</td><td>").text(why).m("</td></tr>");
        }
        h.m("</tbody></table></section>");
    }
}

/// Agents by status (the `status` report's counts), by version and by policy.
fn fleet_summary(h: &mut Html, report: &StatusReport, agents: &[Agent]) {
    let by_status = &report.agents.by_status;
    let count = |status: &str| by_status.get(status).copied().unwrap_or(0);
    h.m("<section><h2>Fleet</h2><div class=\"tiles\">");
    for (id, label, n) in [
        ("agents-total", "Enrolled agents", report.agents.total),
        ("agents-online", "Online", count("online")),
        ("agents-offline", "Offline", count("offline")),
        ("agents-unhealthy", "Degraded or error", count("degraded") + count("error")),
        ("agents-updating", "Updating", count("updating")),
    ] {
        h.m("<div class=\"tile\"><span class=\"big\" id=\"").text(id).m("\">");
        h.num(n as u64).m("</span><span>").text(label).m("</span></div>");
    }
    h.m("</div><div class=\"columns\"><div><h3>By status</h3><table><tbody>");
    for (status, n) in by_status {
        h.m("<tr><td><span class=\"status s-").text(status).m("\">").text(status);
        h.m("</span></td>").cell_id(&format!("status-{status}"), *n).m("</tr>");
    }
    if by_status.is_empty() {
        h.m("<tr><td class=\"none\">No agent enrolled yet.</td></tr>");
    }
    h.m("</tbody></table></div><div><h3>By version</h3><table><tbody>");
    for (version, n) in count_by(agents, |a| a.version.as_str()) {
        h.m("<tr><td>").text(or_dash(Some(version))).m("</td>");
        h.cell_id(&format!("version-{version}"), n).m("</tr>");
    }
    h.m("</tbody></table></div><div><h3>By policy</h3><table><tbody>");
    for (policy, n) in count_by(agents, |a| a.policy_id.as_str()) {
        h.m("<tr><td>");
        h.link_query("/agents", "policy", policy, policy);
        h.m("</td>").cell_id(&format!("policy-{policy}"), n).m("</tr>");
    }
    h.m("</tbody></table></div></div></section>");
}

/// The site's Elasticsearch, and the other instances of the cluster, when there are such.
fn services(h: &mut Html, report: &StatusReport, instances: Option<Result<Vec<Instance>, String>>) {
    h.m("<section><h2>Elasticsearch</h2>");
    match &report.elasticsearch {
        None => h.m("<p class=\"none\">Not configured (no <code>[elasticsearch]</code>): \
                     agents' output credentials come from the policies.</p>"),
        Some(es) => {
            let state = es.state.to_string();
            h.m("<table><tbody><tr><th>State</th><td id=\"elasticsearch-state\"><span \
                 class=\"status s-");
            h.text(&state).m("\">").text(&state).m("</span></td></tr>");
            h.m("<tr><th>Authenticated as</th><td>").text(or_dash(es.principal.as_deref()));
            h.m("</td></tr><tr><th>Checked</th><td>").text(or_dash(es.checked_at.as_deref()));
            h.m("</td></tr><tr><th>Agents waiting for output keys</th>");
            h.cell_id("elasticsearch-waiting", es.agents_waiting_for_keys).m("</tr>");
            if !es.message.is_empty() {
                h.m("<tr><th>Trouble</th><td>").text(&es.message).m("</td></tr>");
            }
            h.m("</tbody></table>")
        }
    };
    h.m("</section>");
    let Some(instances) = instances else { return };
    h.m("<section><h2>Cluster instances</h2>");
    match instances {
        Err(e) => {
            h.m("<p class=\"bad\">Cannot read the cluster's instances: ").text(&e).m("</p>");
        }
        Ok(instances) => {
            h.m("<table><thead><tr><th>Instance</th><th>State</th><th>Version</th>\
                 <th>Active release</th><th class=\"n\">Parked check-ins</th><th>Last seen</th>\
                 </tr></thead><tbody>");
            for i in &instances {
                let state = match (i.live, i.state.as_str()) {
                    (true, state) => state,
                    (false, "stopped") => "stopped",
                    (false, _) => "lost",
                };
                h.m("<tr><td>").text(&i.name);
                if i.this {
                    h.m(" <span class=\"tag\">this one</span>");
                }
                h.m("</td><td id=\"instance-").text(&i.name).m("\"><span class=\"status s-");
                h.text(state).m("\">").text(state).m("</span></td><td>").text(&i.version);
                h.m("</td><td>");
                match &i.active {
                    Some((name, sequence)) => h.text(name).m(" ").num(*sequence),
                    None => h.m("-"),
                };
                h.m("</td><td class=\"n\">").num(i.parked).m("</td><td>");
                h.num(i.seconds_since_seen).m(" s ago</td></tr>");
            }
            h.m("</tbody></table>");
        }
    }
    h.m("</section>");
}

/// A cluster instance as the dashboard shows it.
struct Instance {
    name: String,
    this: bool,
    live: bool,
    state: String,
    version: String,
    active: Option<(String, u64)>,
    parked: u64,
    seconds_since_seen: u64,
}

/// The cluster's instances as `ferry-appliance cluster` lists them; `None` outside a cluster.
/// A store that cannot be read is shown on the page, not turned into an error of the page.
async fn instances(admin: &Arc<Admin>) -> Option<Result<Vec<Instance>, String>> {
    let cluster = Arc::clone(admin.cluster.as_ref()?);
    let read = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Instance>> {
        let mut db = cluster.store()?;
        Ok(db
            .instances()?
            .into_iter()
            .map(|i| Instance {
                this: i.name == cluster.name(),
                name: i.name,
                live: i.live,
                state: i.state,
                version: i.version,
                active: i.active,
                parked: i.parked,
                seconds_since_seen: i.seconds_since_seen,
            })
            .collect())
    })
    .await;
    Some(match read {
        Ok(result) => result.map_err(|e| format!("{e:#}")),
        Err(e) => Err(e.to_string()),
    })
}

// ----- agents -----

async fn agents_page(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<AgentsQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(AGENTS_PAGE);
    if !(1..=super::PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit={limit}: a page holds 1 to {} agents",
            super::PAGE
        )));
    }
    let page = AgentPage {
        policy: query.policy.clone(),
        after: query.after.clone(),
        limit: Some(limit),
        summary: false,
    };
    let list = super::agents(&admin, move |s| match s.agent_views(&page) {
        Err(StoreError::NotFound { key: after, .. }) => Err(ApiError::bad_request(format!(
            "after={after:?}: no such agent (follow the page's \"next\" link)"
        ))),
        views => Ok(views?),
    })
    .await?;
    let mut h = Html::default();
    if let Some(policy) = &query.policy {
        h.m("<p>Policy <strong>").text(policy).m("</strong> only. <a href=\"/agents\">All \
             agents</a></p>");
    }
    h.m("<section><table class=\"agents\"><thead><tr><th>Host</th><th>Status</th><th>Version</th>\
         <th>Policy</th><th>Last check-in</th><th>Upgrade</th><th>Tags</th><th>Message</th>\
         </tr></thead><tbody>");
    for a in &list {
        h.m("<tr id=\"agent-").text(&a.id).m("\"><td>").text(or_dash(Some(&a.hostname)));
        h.m("<br><span class=\"id\">").text(&a.id).m("</span></td><td><span class=\"status s-");
        h.text(&a.status)
            .m("\">")
            .text(&a.status)
            .m("</span></td><td>")
            .text(or_dash(Some(&a.version)));
        h.m("</td><td>").text(&a.policy_id).m(" <span class=\"id\">rev ").num(a.policy_revision);
        h.m("</span></td><td class=\"t\">").text(or_dash(a.last_checkin.as_deref())).m("</td><td>");
        upgrade_cell(&mut h, a);
        h.m("</td><td>");
        for tag in a.tags.as_array().into_iter().flatten() {
            let tag = tag.as_str().map_or_else(|| tag.to_string(), str::to_owned);
            h.m("<span class=\"tag\">").text(&tag).m("</span> ");
        }
        h.m("</td><td class=\"message\">").text(or_dash(a.last_message.as_deref())).m("</td></tr>");
    }
    if list.is_empty() {
        h.m("<tr><td colspan=\"8\" class=\"none\">No agents here.</td></tr>");
    }
    h.m("</tbody></table><p class=\"more\"><span id=\"agents-shown\">").num(list.len() as u64);
    h.m("</span> agent(s) shown.");
    if let Some(last) = list.last().filter(|_| list.len() == limit) {
        h.m(" <a href=\"/agents?after=").text(&query_value(&last.id));
        if let Some(policy) = &query.policy {
            h.m("&amp;policy=").text(&query_value(policy));
        }
        h.m("\">Next page</a>");
    }
    h.m("</p></section>");
    Ok(h.page("Agents", "/agents"))
}

/// An agent's upgrade as `agents list` shows it: the state, target and download progress.
fn upgrade_cell(h: &mut Html, agent: &Agent) {
    let Some(state) = &agent.upgrade_state else {
        h.m("-");
        return;
    };
    h.text(state.strip_prefix("UPG_").unwrap_or(state).to_ascii_lowercase().as_str());
    if let Some(target) = &agent.upgrade_target {
        h.m(" ").text(target);
    }
    if let Some(percent) =
        agent.upgrade_details.pointer("/metadata/download_percent").and_then(|p| p.as_f64())
    {
        h.m(" ").text(&format!("{percent:.0}%"));
    }
}

// ----- releases -----

async fn releases_page(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let report = super::status_now(&admin).await?;
    let releases = db(&admin, |s| Ok(s.releases()?)).await?;
    let mut h = Html::default();
    health_banner(&mut h, &report);
    h.m("<section>");
    releases_table(&mut h, &report, &releases);
    h.m("<p class=\"more\">Retained releases are what <code>ferry-appliance rollback</code> \
         can return to; <code>ferry-appliance releases</code> also re-verifies each one.</p>\
         </section>");
    Ok(h.page("Releases", "/releases"))
}

/// The active release and the retained ones, newest first, with their expiry.
fn releases_table(h: &mut Html, report: &StatusReport, releases: &[ReleaseRecord]) {
    let active = report.active.as_ref().map(|a| (a.name.as_str(), a.sequence));
    if releases.is_empty() {
        h.m("<p class=\"none\">No release imported.</p>");
        return;
    }
    let now = time::OffsetDateTime::now_utc();
    h.m("<table><thead><tr><th>Release</th><th>State</th><th>Created</th><th>Expires</th>\
         <th>Signer</th><th class=\"n\">Size</th></tr></thead><tbody>");
    let mut sorted: Vec<&ReleaseRecord> = releases.iter().collect();
    sorted.sort_by(|a, b| b.imported_at.cmp(&a.imported_at).then(b.sequence.cmp(&a.sequence)));
    for r in sorted {
        let is_active = active == Some((r.name.as_str(), r.sequence));
        let id = format!("release-{}-{}", r.name, r.sequence);
        h.m("<tr id=\"").text(&id).m("\"><td>").text(&r.name).m(" ").num(r.sequence).m("</td><td>");
        match (is_active, report.served) {
            (true, true) => h.m("<span class=\"status s-online\">active, served</span>"),
            (true, false) => h.m("<span class=\"status s-error\">active, not served</span>"),
            (false, _) => h.m("<span class=\"status s-retained\">retained</span>"),
        };
        h.m("</td><td class=\"t\">").text(&r.created).m("</td><td class=\"t\">").text(&r.expires);
        if let Some(expires) = crate::clock::utc_time(&r.expires) {
            let days = (expires - now).whole_days();
            let (class, text) = match days {
                _ if expires <= now => ("bad", "expired".to_owned()),
                0 => ("bad", "within a day".to_owned()),
                d if d <= EXPIRY_WARNING_DAYS => ("warn", format!("in {d} days")),
                d => ("", format!("in {d} days")),
            };
            h.m("<br><span class=\"").m(class).m("\" id=\"").text(&id).m("-expiry\">");
            h.text(&text).m("</span>");
        }
        h.m("</td><td class=\"id\">").text(&r.key_id).m("</td><td class=\"n\">");
        h.text(&bytes(r.payload_bytes)).m("</td></tr>");
    }
    h.m("</tbody></table>");
}

/// A size as people read it.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

// ----- upgrades -----

/// Where an agent is in one upgrade action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Acknowledged without an error, or its upgrade to this version completed.
    Done,
    /// Acknowledged with an error, or its upgrade to this version failed or rolled back.
    Failed,
    /// Delivered or waiting to be, and not finished.
    InProgress,
    /// A CANCEL named the agent.
    Cancelled,
    /// The action expired before the agent finished it.
    Expired,
    /// The agent was unenrolled or revoked before it finished.
    Unenrolled,
}

impl Phase {
    const ALL: [Phase; 6] = [
        Phase::Done,
        Phase::Failed,
        Phase::InProgress,
        Phase::Cancelled,
        Phase::Expired,
        Phase::Unenrolled,
    ];

    /// For element ids.
    fn name(self) -> &'static str {
        match self {
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::InProgress => "in-progress",
            Phase::Cancelled => "cancelled",
            Phase::Expired => "expired",
            Phase::Unenrolled => "unenrolled",
        }
    }

    /// For column headings.
    fn label(self) -> &'static str {
        match self {
            Phase::Done => "Done",
            Phase::Failed => "Failed",
            Phase::InProgress => "In progress",
            Phase::Cancelled => "Cancelled",
            Phase::Expired => "Expired",
            Phase::Unenrolled => "Unenrolled",
        }
    }

    /// Of one agent in the upgrade to `version`: its acknowledgement first (what `GET
    /// /actions/{id}` shows), then the upgrade state the agent reports while it has no reason
    /// to acknowledge yet.
    fn of(target: &ActionTarget, agent: Option<&Agent>, version: &str, expired: bool) -> Phase {
        match &target.ack {
            Some(Some(_)) => return Phase::Failed,
            Some(None) => return Phase::Done,
            None => {}
        }
        if target.cancelled {
            return Phase::Cancelled;
        }
        let state = agent
            .filter(|a| a.upgrade_target.as_deref() == Some(version))
            .and_then(|a| a.upgrade_state.as_deref());
        match state {
            Some("UPG_COMPLETED") => Phase::Done,
            Some("UPG_FAILED" | "UPG_ROLLBACK") => Phase::Failed,
            _ if agent.is_none_or(|a| !a.active) => Phase::Unenrolled,
            _ if expired => Phase::Expired,
            _ => Phase::InProgress,
        }
    }
}

/// One upgrade action and where its agents are.
struct Progress {
    action: ActionRecord,
    version: String,
    /// Agents by phase.
    phases: BTreeMap<Phase, usize>,
    targets: usize,
    /// Agents that failed, with what they said: (host, id, error).
    failures: Vec<(String, String, String)>,
}

/// The last `limit` upgrade actions, newest first, with their agents' phases.
async fn upgrades(
    admin: &Arc<Admin>,
    limit: usize,
    agents: &[Agent],
) -> Result<Vec<Progress>, ApiError> {
    let actions = db(admin, move |s| {
        let mut out = Vec::new();
        for action in s.recent_actions(crate::fleet::wire::ActionKind::Upgrade.as_str(), limit)? {
            let targets = s.action_targets(&action.id)?;
            out.push((action, targets));
        }
        Ok(out)
    })
    .await?;
    let by_id: BTreeMap<&str, &Agent> = agents.iter().map(|a| (a.id.as_str(), a)).collect();
    let now = crate::clock::now_rfc3339();
    Ok(actions
        .into_iter()
        .map(|(action, targets)| {
            let version = action
                .data
                .as_deref()
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .and_then(|d| d["version"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let expired = action.expiration <= now;
            let mut phases = BTreeMap::new();
            let mut failures = Vec::new();
            for target in &targets {
                let agent = by_id.get(target.agent_id.as_str()).copied();
                let phase = Phase::of(target, agent, &version, expired);
                *phases.entry(phase).or_default() += 1;
                if phase == Phase::Failed {
                    let error = match (&target.ack, agent) {
                        (Some(Some(error)), _) => error.clone(),
                        (_, Some(a)) => a.last_message.clone().unwrap_or_default(),
                        _ => String::new(),
                    };
                    let host = agent.map(|a| a.hostname.clone()).unwrap_or_default();
                    failures.push((host, target.agent_id.clone(), error));
                }
            }
            Progress { action, version, phases, targets: targets.len(), failures }
        })
        .collect())
}

async fn upgrades_page(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let agents = all_agents(&admin).await?;
    let upgrades = upgrades(&admin, UPGRADES_PAGE, &agents).await?;
    let mut h = Html::default();
    h.m("<section>");
    upgrades_table(&mut h, &upgrades, true);
    h.m("<p class=\"more\">An agent is <b>done</b> once it acknowledged the action (or \
         reported the upgrade completed), <b>failed</b> when it acknowledged with an error or \
         reported the upgrade failed or rolled back, and <b>in progress</b> until then. \
         <code>ferry-appliance actions show ID</code> lists each agent.</p></section>");
    Ok(h.page("Upgrades", "/upgrades"))
}

fn upgrades_table(h: &mut Html, upgrades: &[Progress], failures: bool) {
    if upgrades.is_empty() {
        h.m("<p class=\"none\">No upgrade was asked for (<code>ferry-appliance upgrade</code>).</p>");
        return;
    }
    h.m("<table><thead><tr><th>Upgrade to</th><th>Created</th><th>Progress</th>\
         <th class=\"n\">Agents</th>");
    for phase in Phase::ALL {
        h.m("<th class=\"n\">").m(phase.label()).m("</th>");
    }
    h.m("</tr></thead><tbody>");
    for p in upgrades {
        let id = &p.action.id;
        h.m("<tr><td><strong>")
            .text(or_dash(Some(&p.version)))
            .m("</strong><br><span class=\"id\">");
        h.text(id).m("</span></td><td class=\"t\">").text(&p.action.created_at);
        if let Some(start) = &p.action.start_time {
            h.m("<br>starts ").text(start);
        }
        let done = p.phases.get(&Phase::Done).copied().unwrap_or(0);
        h.m("</td><td><progress max=\"").num(p.targets as u64).m("\" value=\"").num(done as u64);
        h.m("\">").num(done as u64).m("/").num(p.targets as u64).m("</progress></td>");
        h.cell_id(&format!("upgrade-{id}-agents"), p.targets);
        for phase in Phase::ALL {
            let n = p.phases.get(&phase).copied().unwrap_or(0);
            h.cell_id(&format!("upgrade-{id}-{}", phase.name()), n);
        }
        h.m("</tr>");
        if failures && !p.failures.is_empty() {
            h.m("<tr class=\"detail\"><td colspan=\"10\"><ul>");
            for (host, agent, error) in &p.failures {
                h.m("<li>").text(or_dash(Some(host))).m(" <span class=\"id\">").text(agent);
                h.m("</span>: ").text(or_dash(Some(error))).m("</li>");
            }
            h.m("</ul></td></tr>");
        }
    }
    h.m("</tbody></table>");
}

// ----- audit -----

/// The last `n` audit records, newest first.
async fn recent_audit(admin: &Arc<Admin>, n: usize) -> Result<Vec<crate::audit::Record>, ApiError> {
    let log = admin.audit.clone();
    crate::app::blocking(move || log.recent(n).map_err(ApiError::Internal)).await
}

async fn audit_page(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let records = recent_audit(&admin, AUDIT_PAGE).await?;
    let mut h = Html::default();
    h.m("<section>");
    audit_table(&mut h, &records);
    h.m("<p class=\"more\">The last ").num(AUDIT_PAGE as u64).m(" records, newest first. \
         Reads are not recorded. <code>ferry-appliance audit show</code> has them all, \
         <code>audit verify</code> checks their chain.</p></section>");
    Ok(h.page("Audit log", "/audit"))
}

fn audit_table(h: &mut Html, records: &[crate::audit::Record]) {
    if records.is_empty() {
        h.m("<p class=\"none\">No audit records.</p>");
        return;
    }
    h.m("<table class=\"audit\"><thead><tr><th class=\"n\">Seq</th><th>Time</th><th>Who</th>\
         <th>Event</th><th>Outcome</th><th>Details</th></tr></thead><tbody>");
    for r in records {
        let outcome = serde_json::to_value(r.outcome).ok();
        let outcome = outcome.as_ref().and_then(|o| o.as_str()).unwrap_or("-");
        h.m("<tr><td class=\"n\">")
            .num(r.seq)
            .m("</td><td class=\"t\">")
            .text(&r.time)
            .m("</td><td>");
        h.text(&r.actor.describe()).m("</td><td>").text(&r.event);
        h.m("</td><td><span class=\"status o-").text(outcome).m("\">").text(outcome);
        h.m("</span></td><td class=\"details\">");
        if !r.details.is_null() {
            h.text(&r.details.to_string());
        }
        h.m("</td></tr>");
    }
    h.m("</tbody></table>");
}

/// The dashboard's only style: system fonts, no images, nothing fetched.
const STYLESHEET: &str = r#"/* ferry-appliance dashboard: served by the appliance, no web fonts, no images. */
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --card: #fff;
        --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
       sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; gap: 2em; padding: 0.6em 1.5em;
         background: #24292f; color: #fff; }
.brand { font-weight: 600; font-size: 1.05em; }
nav a { color: #d0d7de; text-decoration: none; margin-right: 1.2em; padding: 0.2em 0; }
nav a:hover { color: #fff; }
nav a[aria-current="page"] { color: #fff; border-bottom: 2px solid #fd8c73; }
main { max-width: 1200px; margin: 0 auto; padding: 1em 1.5em 2em; }
h1 { font-size: 1.5em; margin: 0.3em 0 0.6em; font-weight: 600; }
h2 { font-size: 1.1em; margin: 0 0 0.6em; font-weight: 600; }
h3 { font-size: 0.9em; margin: 0 0 0.4em; color: var(--muted); font-weight: 600;
     text-transform: uppercase; letter-spacing: 0.04em; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
          padding: 1em 1.2em; margin-bottom: 1em; overflow-x: auto; }
section.warn { border-color: var(--warn); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.35em 0.6em; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 0.9em; white-space: nowrap; }
.t { white-space: nowrap; }
tbody tr:last-child td, tbody tr:last-child th { border-bottom: none; }
.n { text-align: right; font-variant-numeric: tabular-nums; }
.tiles { display: flex; flex-wrap: wrap; gap: 0.8em; margin-bottom: 1em; }
.tile { flex: 1 1 140px; border: 1px solid var(--line); border-radius: 6px; padding: 0.6em 0.9em;
        display: flex; flex-direction: column; color: var(--muted); }
.big { font-size: 1.9em; font-weight: 600; color: var(--fg); font-variant-numeric: tabular-nums; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 1.5em; }
.banner { padding: 0.6em 1em; border-radius: 6px; margin: 0 0 1em; border: 1px solid; }
.banner.ok { background: #dafbe1; border-color: #4ac26b; }
.banner.bad { background: #ffebe9; border-color: #ff8182; }
.status { display: inline-block; padding: 0 0.55em; border-radius: 1em; font-size: 0.85em;
          border: 1px solid var(--line); background: var(--bg); white-space: nowrap; }
.s-online, .s-ok, .s-serving, .o-ok { color: var(--ok); border-color: #4ac26b; background: #dafbe1; }
.s-offline, .s-error, .s-lost, .s-unreachable, .s-unauthorized, .s-tls, .s-missing_privilege,
.o-failed, .o-refused { color: var(--bad); border-color: #ff8182; background: #ffebe9; }
.s-degraded, .s-updating, .s-starting, .s-draining, .s-enrolled { color: var(--warn);
          border-color: #d4a72c; background: #fff8c5; }
.bad { color: var(--bad); font-weight: 600; }
.warn { color: var(--warn); font-weight: 600; }
.none, .more, footer { color: var(--muted); }
.more { margin: 0.6em 0 0; font-size: 0.9em; }
.id { color: var(--muted); font-family: ui-monospace, "DejaVu Sans Mono", monospace;
      font-size: 0.8em; white-space: nowrap; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.9em;
       background: var(--bg); padding: 0 0.25em; border-radius: 3px; }
.tag { display: inline-block; background: #ddf4ff; color: #0550ae; border-radius: 3px;
       padding: 0 0.4em; font-size: 0.85em; }
.message, .details { max-width: 28em; overflow-wrap: anywhere; }
.details { min-width: 22em; max-width: 40em; }
.details { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.8em; }
progress { width: 8em; height: 0.9em; accent-color: var(--ok); }
tr.detail td { background: #fff8f8; font-size: 0.9em; }
a { color: var(--accent); }
footer { margin-top: 1.5em; font-size: 0.8em; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        let mut h = Html::default();
        h.text("<script>alert(1)</script> & \"x\" 'y'");
        assert_eq!(h.0, "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot; &#39;y&#39;");
    }

    #[test]
    fn basic_credentials_give_their_password() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            basic_password(&format!("Basic {}", b64("ferry:tok:en"))).as_deref(),
            Some("tok:en")
        );
        assert_eq!(basic_password(&format!("basic {}", b64(":t"))).as_deref(), Some("t"));
        assert_eq!(basic_password(&format!("Basic {}", b64("no-colon"))), None);
        assert_eq!(basic_password("Basic !!!"), None);
        assert_eq!(basic_password("Bearer abc"), None);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(query_value("policy-1_x.y~"), "policy-1_x.y~");
    }

    #[test]
    fn an_agent_s_phase_in_an_upgrade_comes_from_its_ack_then_its_upgrade_state() {
        let agent = |active: bool, state: Option<&str>, target: Option<&str>| -> Agent {
            serde_json::from_value(serde_json::json!({
                "status": "online", "id": "a", "active": active, "policy_id": "p",
                "policy_revision": 1, "version": "9.1.2", "hostname": "h",
                "enrolled_at": "2026-01-01T00:00:00Z", "last_checkin": null, "last_status": null,
                "last_message": null, "tags": [], "upgrade_state": state,
                "upgrade_target": target, "upgrade_details": null, "upgraded_at": null,
                "unenrolled_at": null, "audit_unenroll_reason": null,
            }))
            .unwrap()
        };
        let target = |ack: Option<Option<&str>>, cancelled: bool| ActionTarget {
            agent_id: "a".into(),
            ack: ack.map(|e| e.map(str::to_owned)),
            cancelled,
        };
        let waiting = agent(true, Some("UPG_DOWNLOADING"), Some("9.2.2"));
        let cases = [
            (target(Some(None), false), Some(&waiting), false, Phase::Done),
            (target(Some(Some("disk full")), false), Some(&waiting), false, Phase::Failed),
            (target(None, false), Some(&waiting), false, Phase::InProgress),
            (target(None, false), Some(&waiting), true, Phase::Expired),
            (target(None, true), Some(&waiting), false, Phase::Cancelled),
            (target(None, false), None, false, Phase::Unenrolled),
        ];
        for (target, agent, expired, want) in cases {
            assert_eq!(Phase::of(&target, agent, "9.2.2", expired), want, "{target:?}");
        }
        let of = |agent: &Agent| Phase::of(&target(None, false), Some(agent), "9.2.2", false);
        assert_eq!(of(&agent(true, Some("UPG_COMPLETED"), Some("9.2.2"))), Phase::Done);
        assert_eq!(of(&agent(true, Some("UPG_ROLLBACK"), Some("9.2.2"))), Phase::Failed);
        assert_eq!(of(&agent(false, Some("UPG_REQUESTED"), Some("9.2.2"))), Phase::Unenrolled);
        // The state of a later upgrade, to another version, says nothing of this one.
        assert_eq!(of(&agent(true, Some("UPG_COMPLETED"), Some("9.3.0"))), Phase::InProgress);
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
