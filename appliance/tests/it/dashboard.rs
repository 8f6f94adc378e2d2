//! The read-only dashboard on the admin socket: it asks for the admin token (Bearer, or the
//! password of HTTP Basic, which a browser prompts for), sends strict security headers, refuses
//! what a page elsewhere could send (an `Origin`, another `Host`) and every method but GET and
//! HEAD, and escapes what hostile agents write. Then a real browser: headless Chromium, through
//! a TCP-to-socket forwarder doing what `ssh -L PORT:admin.sock` does, loads every page, and
//! the numbers it renders are the admin API's.
//!
//! Without Chromium (Debian's `chromium`) the browser test says it is skipped, unless
//! `FERRY_REQUIRE_CHROMIUM=1` (CI): then it fails.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::cluster::Node;
use crate::support::agent::{Agent, enroll_request, send_wire};
use crate::support::{Fixture, Server, VERSIONS, admin_token, assert_ok};

/// The variable that turns a missing Chromium from a skipped test into a failed one.
const REQUIRE_CHROMIUM: &str = "FERRY_REQUIRE_CHROMIUM";

/// What every dashboard answer carries.
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

const PAGES: [&str; 5] = ["/", "/agents", "/releases", "/upgrades", "/audit"];

/// An answer from the admin socket.
struct Answer {
    status: u16,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn assert_secured(&self, what: &str) {
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(self.header(name), Some(value), "{what}: {name}");
        }
    }
}

/// Sends `method path` with `headers` (and `Host: localhost` unless one is given) to the
/// admin socket, as a browser behind an SSH tunnel would.
fn send(f: &Fixture, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    send_to(&f.path("data/admin.sock"), method, path, headers)
}

/// [`send`] to the admin socket at `socket`.
fn send_to(socket: &Path, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" || method == "PUT" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer { status, headers, body: body.to_owned() }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// An appliance serving bundle 1 with agents of [`VERSIONS`] and polls held for 2 s.
fn site(f: &Fixture) -> (Server, String) {
    f.append_config("checkin_long_poll_seconds = 2\ncheckin_jitter_seconds = 0");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[1], Fixture::later())]));
    let server = Server::start(f);
    let (_, token) = f.token("p");
    (server, token)
}

/// A GET of the admin API with the token, its JSON body.
fn api(f: &Fixture, path: &str) -> Value {
    let token = admin_token(f);
    let answer = send(f, "GET", path, &[("Authorization", &format!("Bearer {token}"))]);
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

#[test]
fn the_dashboard_wants_the_admin_token_sends_strict_headers_and_only_reads() {
    let f = Fixture::new();
    let (_server, _) = site(&f);
    let token = admin_token(&f);
    let bearer = format!("Bearer {token}");

    for page in PAGES {
        let none = send(&f, "GET", page, &[]);
        assert_eq!(none.status, 401, "{page}");
        assert_eq!(none.header("www-authenticate"), Some("Basic realm=\"ferry-appliance\""));
        assert!(none.body.contains("admin.token"), "{}", none.body);
        none.assert_secured(page);

        let with_bearer = send(&f, "GET", page, &[("Authorization", &bearer)]);
        assert_eq!(with_bearer.status, 200, "{page}: {}", with_bearer.body);
        assert_eq!(with_bearer.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(with_bearer.body.starts_with("<!DOCTYPE html>"), "{page}");
        assert!(!with_bearer.body.contains("<script"), "{page}: no script at all");
        with_bearer.assert_secured(page);
        // Any user name: the password is what counts.
        let with_basic = send(&f, "GET", page, &[("Authorization", &basic("anyone", &token))]);
        assert_eq!(with_basic.status, 200, "{page}");
        with_basic.assert_secured(page);
    }
    // HEAD answers as GET, without a body.
    let head = send(&f, "HEAD", "/", &[("Authorization", &bearer)]);
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    head.assert_secured("HEAD /");

    // Wrong tokens, in either form.
    let wrong = "x".repeat(token.len());
    for auth in
        [format!("Bearer {wrong}"), basic("ferry", &wrong), basic(&token, ""), "Basic !".into()]
    {
        let answer = send(&f, "GET", "/", &[("Authorization", &auth)]);
        assert_eq!(answer.status, 401, "{auth}");
        assert!(answer.header("www-authenticate").is_some(), "{auth}");
    }
    // A refused Basic password is audited with its fingerprint, as a refused Bearer token is;
    // the challenge to a request without credentials (every browser's first) is not.
    let audit = f.run(&[&"audit", &"show", &"--json"]);
    assert_ok(&audit);
    let fingerprint = &ferry_manifests::Sha256Digest::of(wrong.as_bytes()).to_hex()[..16];
    let denied: Vec<Value> = crate::support::stdout(&audit)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["event"] == "admin.denied" && r["details"]["request"] == "GET /")
        .collect();
    assert_eq!(denied.len(), 4, "the four wrong tokens: {denied:?}");
    assert!(denied.iter().any(|r| r["actor"]["token"] == fingerprint), "{denied:?}");

    // What only a page elsewhere sends is refused, token or not.
    for (name, value) in [("Origin", "http://localhost:8221"), ("Host", "evil.example:8221")] {
        let answer = send(&f, "GET", "/", &[("Authorization", &bearer), (name, value)]);
        assert_eq!(answer.status, 403, "{name}");
        answer.assert_secured(name);
    }
    // Read-only: no other method, with the token or without.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for page in PAGES {
            let answer = send(&f, method, page, &[("Authorization", &bearer)]);
            assert_eq!(answer.status, 405, "{method} {page}");
            answer.assert_secured(method);
            assert_eq!(send(&f, method, page, &[]).status, 401, "{method} {page}");
        }
    }

    // Bad paging is refused, saying why.
    for (query, says) in
        [("limit=0", "1 to 1000"), ("limit=5000", "1 to 1000"), ("after=nope", "no such agent")]
    {
        let answer = send(&f, "GET", &format!("/agents?{query}"), &[("Authorization", &bearer)]);
        assert_eq!(answer.status, 400, "{query}");
        assert!(answer.body.contains(says), "{query}: {}", answer.body);
        answer.assert_secured(query);
    }

    // The stylesheet holds no data: served without the token, with the same headers.
    let css = send(&f, "GET", "/dashboard.css", &[]);
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert!(css.body.contains("font") && !css.body.contains("url("), "nothing fetched");
    css.assert_secured("css");
    assert_eq!(send(&f, "GET", "/dashboard.css", &[("Origin", "http://x")]).status, 403);

    // An unknown page: 404 behind the token, with the headers; the admin API's own 404 is
    // unchanged.
    assert_eq!(send(&f, "GET", "/favicon.ico", &[]).status, 401);
    let missing = send(&f, "GET", "/nope", &[("Authorization", &bearer)]);
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("no such page"), "{}", missing.body);
    missing.assert_secured("404");
    let missing = send(&f, "GET", "/admin/v1/nope", &[("Authorization", &bearer)]);
    assert_eq!(missing.status, 404);
    assert!(missing.header("content-type").unwrap().starts_with("application/json"));
    assert_eq!(missing.header("content-security-policy"), None);

    // The admin API is as it was: Bearer only, JSON.
    let api = send(&f, "GET", "/admin/v1/status", &[("Authorization", &basic("ferry", &token))]);
    assert_eq!(api.status, 401);
    assert_eq!(api.header("www-authenticate"), None);
}

#[test]
fn what_hostile_agents_write_is_shown_escaped() {
    const HOST: &str = "<script>alert(1)</script>";
    const MESSAGE: &str = "\"><img src=x onerror=alert(2)>&amp;";
    let f = Fixture::new();
    let (server, token) = site(&f);
    let reply = send_wire(&server, &enroll_request(&token, VERSIONS[0], HOST));
    assert_eq!(reply.status, 200, "{reply:?}");
    let evil = Agent::from_reply(&server, &reply);
    evil.set_version(VERSIONS[0]);
    let reply = evil.checkin(json!({"status": "online", "message": MESSAGE}));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(api(&f, "/admin/v1/agents")[0]["hostname"], HOST);

    let bearer = format!("Bearer {}", admin_token(&f));
    let agents = send(&f, "GET", "/agents", &[("Authorization", &bearer)]).body;
    assert!(agents.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{agents}");
    assert!(agents.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;&amp;amp;"), "{agents}");
    for page in PAGES {
        let body = send(&f, "GET", page, &[("Authorization", &bearer)]).body;
        assert!(!body.contains("<script") && !body.contains("<img"), "{page}: {body}");
    }
}

/// In a cluster, the overview lists every instance in the state `cluster` gives it.
#[test]
fn the_overview_of_a_cluster_lists_its_instances() {
    let Some(db) = ferry_testkit::postgres::fresh_database() else { return };
    let f = Fixture::new();
    let a = Node::new(&f, "a", &db.url(), &["trusted.pub"], "");
    let b = Node::new(&f, "b", &db.url(), &["trusted.pub"], "");
    let _server_a = a.serve(None);
    let server_b = b.serve(Some(&a));
    let listed = |want_b: &str| {
        let what = format!("instance b {want_b} in `cluster --json`");
        ferry_testkit::eventually(&what, Duration::from_secs(30), || {
            let cluster = a.json(&[&"cluster", &"--json"]);
            let b = cluster["instances"].as_array()?.iter().find(|i| i["name"] == "b")?.clone();
            (b["state"] == want_b && b["live"] == (want_b == "serving")).then_some(cluster)
        })
    };
    let overview = |instance: &str| {
        let token = std::fs::read_to_string(a.data().join("admin.token")).unwrap();
        let auth = basic("ferry", token.trim());
        let page = send_to(&a.data().join("admin.sock"), "GET", "/", &[("Authorization", &auth)]);
        assert_eq!(page.status, 200, "{}", page.body);
        let at = page.body.find(&format!("id=\"instance-{instance}\"")).expect(&page.body);
        let cell = &page.body[at..];
        cell[..cell.find("</td>").unwrap()].to_owned()
    };
    listed("serving");
    assert!(overview("a").contains(">serving<"), "{}", overview("a"));
    assert!(overview("b").contains(">serving<"), "{}", overview("b"));
    server_b.terminate();
    listed("stopped");
    assert!(overview("b").contains(">stopped<"), "{}", overview("b"));
    assert!(overview("a").contains(">serving<"), "{}", overview("a"));
}

/// Chromium, or `None` after saying the calling test is skipped; fails instead when
/// [`REQUIRE_CHROMIUM`] is `1`.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).map(|d| d.join("chromium")).find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var(REQUIRE_CHROMIUM).as_deref() != Ok("1"),
            "chromium is not installed and {REQUIRE_CHROMIUM}=1: apt-get install chromium"
        );
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
    }
    found
}

/// What `ssh -L PORT:admin.sock` does: a loopback TCP port whose connections are copied both
/// ways to and from the admin socket, each on its own threads, for the test's life.
fn forward(socket: PathBuf) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let Ok(unix) = std::os::unix::net::UnixStream::connect(&socket) else { continue };
            let (mut tcp_in, mut unix_out) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut tcp_in, &mut unix_out);
                let _ = unix_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut unix_in, mut tcp_out) = (unix, tcp);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut unix_in, &mut tcp_out);
                let _ = tcp_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// The DOM Chromium renders for `url`, headless, with a profile of its own.
fn dump_dom(chromium: &std::path::Path, url: &str) -> String {
    let (dom, err) = render(chromium, url);
    assert!(dom.contains("</html>"), "chromium rendered nothing for {url}: {err}");
    dom
}

/// What Chromium printed loading `url`: the DOM, and its log.
fn render(chromium: &std::path::Path, url: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish loading {url} in 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dom = reader.join().unwrap().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (dom, err)
}

/// The text of the element with `id`, as a number.
fn number(dom: &str, id: &str) -> u64 {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let text = &dom[at..];
    let text = &text[text.find('>').unwrap() + 1..];
    let text = &text[..text.find('<').unwrap()];
    text.trim().parse().unwrap_or_else(|_| panic!("#{id} holds {text:?}"))
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

#[test]
fn chromium_renders_every_page_with_the_numbers_the_api_gives() {
    let Some(chromium) = chromium() else { return };
    let f = Fixture::new();
    let (server, token) = site(&f);
    // Four agents: two on the old version, whose upgrade one finishes and one fails; one on
    // the target already; one that never checks in.
    let agents: Vec<Agent<'_>> = (0..3)
        .map(|i| Agent::enroll_as(&server, &token, if i < 2 { VERSIONS[0] } else { VERSIONS[1] }))
        .collect();
    for agent in &agents {
        assert_eq!(agent.checkin(json!({"status": "online"})).status, 200);
    }
    Agent::enroll(&server, &token);
    let upgrade = f.run_json(&[
        &"upgrade",
        &"--version",
        &VERSIONS[1],
        &agents[0].id,
        &agents[1].id,
        &"--json",
    ]);
    let action = upgrade["action_id"].as_str().unwrap().to_owned();
    for agent in &agents[..2] {
        let reply = agent.checkin(json!({"status": "online"}));
        assert_eq!(reply.body["actions"][0]["id"], action.as_str(), "{reply:?}");
    }
    agents[0].set_version(VERSIONS[1]);
    assert_eq!(agents[0].ack(&[&action]).status, 200);
    let mut failed = agents[1].ack_event(&action);
    failed["error"] = json!("download failed: disk full");
    assert_eq!(agents[1].ack_events(&[failed]).status, 200);

    let port = forward(f.path("data/admin.sock"));
    let base = format!("http://ferry:{}@127.0.0.1:{port}", admin_token(&f));
    let status = api(&f, "/admin/v1/status");
    let list = api(&f, "/admin/v1/agents");
    let list = list.as_array().unwrap();
    let shown = api(&f, &format!("/admin/v1/actions/{action}"));

    let dom = dump_dom(&chromium, &format!("{base}/"));
    let by_status = &status["agents"]["by_status"];
    assert_eq!(number(&dom, "agents-total"), count(&status["agents"]["total"]));
    assert_eq!(number(&dom, "agents-total"), 4);
    assert_eq!(number(&dom, "agents-online"), count(&by_status["online"]));
    assert_eq!(number(&dom, "agents-offline"), count(&by_status["offline"]));
    for (name, n) in by_status.as_object().unwrap() {
        assert_eq!(number(&dom, &format!("status-{name}")), count(n), "{name}");
    }
    for version in VERSIONS {
        let n = list.iter().filter(|a| a["version"] == version && a["active"] == true).count();
        if n > 0 {
            assert_eq!(number(&dom, &format!("version-{version}")), n as u64, "{version}");
        }
    }
    assert_eq!(number(&dom, "policy-p"), list.len() as u64);
    let targets = shown["agents"].as_array().unwrap();
    let done = targets.iter().filter(|t| t["acknowledged"] == true && t["error"].is_null());
    let failures = targets.iter().filter(|t| !t["error"].is_null());
    assert_eq!(number(&dom, &format!("upgrade-{action}-agents")), 2);
    assert_eq!(number(&dom, &format!("upgrade-{action}-done")), done.count() as u64);
    assert_eq!(number(&dom, &format!("upgrade-{action}-failed")), failures.count() as u64);
    assert_eq!(number(&dom, &format!("upgrade-{action}-in-progress")), 0);
    assert!(dom.contains("id=\"release-site-1\""), "{dom}");
    assert!(dom.contains("actions.create"), "the recent audit events: {dom}");
    assert!(dom.contains("Fleet status"), "{dom}");

    let dom = dump_dom(&chromium, &format!("{base}/agents"));
    assert_eq!(dom.matches("id=\"agent-").count(), list.len());
    assert_eq!(number(&dom, "agents-shown"), list.len() as u64);
    for agent in list {
        assert!(dom.contains(agent["id"].as_str().unwrap()), "{agent}");
    }
    let dom = dump_dom(&chromium, &format!("{base}/agents?policy=p"));
    assert_eq!(number(&dom, "agents-shown"), list.len() as u64);
    let dom = dump_dom(&chromium, &format!("{base}/agents?policy=nope"));
    assert_eq!(number(&dom, "agents-shown"), 0);

    let dom = dump_dom(&chromium, &format!("{base}/releases"));
    let releases = f.run_json(&[&"releases", &"--json"]);
    for r in releases.as_array().unwrap() {
        let id = format!("release-{}-{}", r["name"].as_str().unwrap(), r["sequence"]);
        assert!(dom.contains(&format!("id=\"{id}\"")), "{id}: {dom}");
        assert!(dom.contains(r["expires"].as_str().unwrap()), "{dom}");
    }

    let dom = dump_dom(&chromium, &format!("{base}/upgrades"));
    assert_eq!(number(&dom, &format!("upgrade-{action}-done")), 1);
    assert_eq!(number(&dom, &format!("upgrade-{action}-failed")), 1);
    assert!(dom.contains("download failed: disk full"), "the failure is shown: {dom}");

    let dom = dump_dom(&chromium, &format!("{base}/audit"));
    assert!(dom.contains("actions.create") && dom.contains(&action), "{dom}");

    // Without the token in the URL, headless Chromium (which has no one to prompt) gets the
    // challenge, not the page.
    let (dom, err) = render(&chromium, &format!("http://127.0.0.1:{port}/"));
    assert!(!dom.contains("agents-total"), "{dom}");
    assert!(err.contains("ERR_INVALID_AUTH_CREDENTIALS") || dom.contains("admin.token"), "{err}");
    // Chromium sent the credentials only once challenged, for every page: those challenges are
    // not audited as refusals.
    let audit = crate::support::stdout(&f.run(&[&"audit", &"show", &"--json"]));
    assert!(!audit.contains("admin.denied"), "{audit}");
}
