//! Operating the appliance: `/metrics` on its own listener shows, with the right values, what a
//! test provokes (imports accepted and refused by their check, an enrollment, a rate-limited
//! one, an upgrade and its acknowledgement, mirror downloads), only to the metrics or the admin
//! token; and `health` says in one line whether the appliance is fine and why not.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::agent::{Agent, enroll_request, send_wire};
use crate::support::{Fixture, Server, VERSIONS, assert_ok, stdout};
use serde_json::Value;

/// The metrics listener's address, as `serve` printed it.
fn metrics_url(server: &Server) -> String {
    let printed = server.printed().0;
    let line = printed.lines().find_map(|l| l.strip_prefix("serving metrics on ")).unwrap();
    line.trim().to_owned()
}

/// `GET url` with `token` (if any): status, `WWW-Authenticate`, body.
fn scrape(url: &str, token: Option<&str>) -> (u16, Option<String>, String) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().unwrap();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().into());
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let body = response.body_mut().read_to_string().unwrap();
    if response.status() == 200 {
        assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
    }
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    assert!(header("content-security-policy").unwrap().starts_with("default-src 'none'"));
    assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(header("cache-control").as_deref(), Some("no-store"));
    (response.status().as_u16(), challenge, body)
}

/// Each sample of Prometheus' text format: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            (name.to_owned(), value.parse().unwrap_or_else(|e| panic!("{l:?}: {e}")))
        })
        .collect()
}

#[test]
fn metrics_show_what_happened_with_the_right_values_and_only_to_a_token() {
    let f = Fixture::new();
    let target = VERSIONS[1];
    f.append_config(
        "metrics_listen = \"127.0.0.1:0\"\ncheckin_long_poll_seconds = 2\ncheckin_jitter_seconds = 0\n\
         [limits.enroll]\nper_second = 0.001\nburst = 1",
    );
    assert_ok(&f.run(&[&"import", &f.bundle(1, target, Fixture::later())]));
    // Refused: signed by a key the appliance does not trust.
    let stranger = f.other_key("stranger.pub");
    let refused = f.bundle_with_key(2, target, Fixture::later(), &stranger);
    let o = f.run(&[&"import", &refused, &"--json"]);
    assert!(!o.status.success());
    let verdict: Value = serde_json::from_slice(&o.stdout).unwrap();
    let check = verdict["check"].as_str().unwrap().to_owned();

    let server = Server::start(&f);
    let url = metrics_url(&server);
    let token = std::fs::read_to_string(f.path("data/metrics.token")).unwrap();
    // No token, a wrong one: refused, saying how to authenticate.
    let (status, challenge, _) = scrape(&url, None);
    assert_eq!((status, challenge.as_deref()), (401, Some("Bearer")));
    assert_eq!(scrape(&url, Some("ZmFrZTp0b2tlbg==")).0, 401);
    assert_eq!(scrape(&url.replace("/metrics", "/admin/v1/status"), Some(&token)).0, 404);

    // One agent enrolls and takes its policy; a second enrollment hits the limit; an upgrade
    // is queued for the first, which acknowledges it; the mirror serves a file and a 404.
    let (_, enrollment) = f.token("p");
    let agent = Agent::enroll(&server, &enrollment);
    let reply = agent.checkin_online();
    assert_eq!(agent.ack(&[reply.body["actions"][0]["id"].as_str().unwrap()]).status, 200);
    let second = send_wire(&server, &enroll_request(&enrollment, VERSIONS[0], "Web-02"));
    assert_eq!(second.status, 429, "{second:?}");
    let o = f.run(&[&"upgrade", &"--version", &target, &agent.id, &"--json"]);
    let action: Value = serde_json::from_slice(&o.stdout).unwrap();
    let action_id = action["action_id"].as_str().unwrap();
    let reply = agent.checkin_online();
    assert_eq!(reply.body["actions"][0]["id"], action_id, "{reply:?}");
    assert_eq!(agent.ack(&[action_id]).status, 200);
    let sidecar =
        format!("{}/downloads/{}.sha512", server.http, crate::support::archive_path(target));
    let served = ureq::get(&sidecar).call().unwrap().body_mut().read_to_vec().unwrap();
    let missing = format!("{}/downloads/beats/elastic-agent/none.tar.gz", server.http);
    assert!(ureq::get(&missing).call().is_err());

    let (status, _, text) = scrape(&url, Some(&token));
    assert_eq!(status, 200, "{text}");
    let got = samples(&text);
    let value =
        |name: &str| got.get(name).copied().unwrap_or_else(|| panic!("no {name} in\n{text}"));
    assert_eq!(value("ferry_enrollments_total"), 1.0);
    assert_eq!(value("ferry_rate_limited_total{route=\"enroll\",reason=\"RateLimit\"}"), 1.0);
    let agents: f64 =
        got.iter().filter(|(k, _)| k.starts_with("ferry_agents{")).map(|(_, v)| v).sum();
    assert_eq!(agents, 1.0, "{text}");
    assert_eq!(value(&format!("ferry_agents_by_version{{version=\"{}\"}}", agent.version())), 1.0);
    assert_eq!(value("ferry_agents_by_policy{policy=\"p\"}"), 1.0);
    assert_eq!(value("ferry_actions_queued_total{type=\"UPGRADE\"}"), 1.0);
    assert_eq!(value("ferry_action_acks_total{type=\"UPGRADE\",outcome=\"ok\"}"), 1.0);
    assert_eq!(value("ferry_audit_events_total{event=\"import\",outcome=\"ok\"}"), 1.0);
    assert_eq!(value("ferry_audit_events_total{event=\"import\",outcome=\"refused\"}"), 1.0);
    assert_eq!(value(&format!("ferry_refusals_total{{check=\"{check}\"}}")), 1.0);
    assert_eq!(value("ferry_release_active{name=\"site\",sequence=\"1\"}"), 1.0);
    assert_eq!(value("ferry_release_served"), 1.0);
    let expires = value("ferry_release_expiry_timestamp_seconds");
    let later = Fixture::later().unix_timestamp() as f64;
    assert!((later - expires).abs() < 3600.0, "{expires} against {later}");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(value("ferry_certificate_expiry_timestamp_seconds") > now + 86400.0 * 365.0);
    assert_eq!(value("ferry_mirror_requests_total{code=\"200\"}"), 1.0);
    assert_eq!(value("ferry_mirror_requests_total{code=\"404\"}"), 1.0);
    assert_eq!(value("ferry_mirror_sent_bytes_total"), served.len() as f64);
    assert!(value("ferry_data_dir_free_bytes") > 0.0);
    assert_eq!(value("ferry_store_up"), 1.0);
    // The admin token is accepted too.
    let admin = crate::support::admin_token(&f);
    assert_eq!(scrape(&url, Some(&admin)).0, 200);

    // After a restart: the same metrics token, and the audit log's counts read again from its
    // start, so they do not fall back to zero.
    server.terminate();
    let server = Server::start(&f);
    let url = metrics_url(&server);
    assert_eq!(std::fs::read_to_string(f.path("data/metrics.token")).unwrap(), token);
    let (status, _, text) = scrape(&url, Some(&token));
    assert_eq!(status, 200);
    let got = samples(&text);
    assert_eq!(got["ferry_audit_events_total{event=\"import\",outcome=\"ok\"}"], 1.0, "{text}");
    assert_eq!(got["ferry_audit_events_total{event=\"serve.start\",outcome=\"ok\"}"], 2.0);
    assert_eq!(got.get("ferry_enrollments_total"), Some(&0.0), "counters restart with the process");
    drop(server);
}

/// `health`: (exit code, the one line it printed).
fn health(f: &Fixture) -> (Option<i32>, String) {
    let o = f.run(&[&"health"]);
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    (o.status.code(), text.trim().to_owned())
}

#[test]
fn health_says_in_one_line_whether_the_appliance_is_fine_and_why_not() {
    let f = Fixture::new();
    let (code, line) = health(&f);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.starts_with("UNHEALTHY: not running"), "{line}");
    assert!(line.contains("no release is active: import a bundle"), "{line}");

    // A release near its end: fine, but not for long.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(5);
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], soon)]));
    let server = Server::start(&f);
    let (code, line) = health(&f);
    assert_eq!(code, Some(2), "{line}");
    assert!(line.starts_with("healthy, but release site 1 expires in 4 day(s)"), "{line}");
    assert!(line.ends_with("import a newer bundle"), "{line}");

    assert_ok(&f.run(&[&"import", &f.bundle(2, VERSIONS[0], Fixture::later())]));
    let mut last = String::new();
    for _ in 0..100 {
        let (code, line) = health(&f);
        if code == Some(0) {
            last = line;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(last, "healthy: serving site 2 to 0 agent(s)");
    let report = f.run_json(&[&"health", &"--json"]);
    let levels: BTreeMap<String, String> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().into(), c["level"].as_str().unwrap().into()))
        .collect();
    let names: Vec<&str> = levels.keys().map(String::as_str).collect();
    assert_eq!(names, ["certificate", "database", "disk", "listener", "release", "server"]);
    assert!(levels.values().all(|l| l == "ok"), "{report}");
    assert_eq!(report["verdict"], last.as_str());
    let text = stdout(&f.run(&[&"status"]));
    assert!(text.starts_with(&format!("health  {last}\n")), "{text}");

    server.terminate();
    let (code, line) = health(&f);
    assert_eq!(
        (code, line.as_str()),
        (Some(1), "UNHEALTHY: not running: start `ferry-appliance serve`")
    );
}

#[test]
fn a_server_certificate_near_its_end_is_a_warning_and_one_past_it_a_failure() {
    let f = Fixture::new();
    let write_cert = |days: i64| {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(400);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(f.path("server.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
        std::fs::write(f.path("server.key"), key.serialize_pem()).unwrap();
    };
    write_cert(10);
    f.append_config(&format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        f.path("server.pem"),
        f.path("server.key")
    ));
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (code, line) = health(&f);
    assert_eq!(code, Some(2), "{line}");
    assert!(line.starts_with("healthy, but the server certificate expires in 9 day(s)"), "{line}");
    // Replaced on disk by one that has ended (a restart would load it): a failure.
    write_cert(-1);
    let (code, line) = health(&f);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("expired on"), "{line}");
    drop(server);
}
