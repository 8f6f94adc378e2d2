//! `ferry-appliance drain`: an instance taken out of a load balancer's rotation without agents
//! noticing. `/api/status` answers 503 so the health check marks it down, parked check-ins are
//! answered at once with nothing to do, and connections close (after each response, and idle
//! ones at once), so agents' next requests open new connections, which HAProxy sends to another
//! instance. `drain --undo` puts it back.

use std::io::Read as _;
use std::time::{Duration, Instant};

use ferry_testkit::haproxy::{Haproxy, Mode};
use serde_json::{Value, json};

use crate::support::agent::{Agent, Reply, get};
use crate::support::{Endpoint, Fixture, Server, VERSIONS, assert_ok, schema, stdout};

/// How long a check-in is held: long enough that an answer before it is the drain's doing.
const HOLD: &str = "checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0";

/// An appliance serving a release with policy `p`, its check-ins held for two minutes.
fn appliance() -> (Fixture, Server) {
    let f = Fixture::new();
    f.append_config(HOLD);
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    (f, server)
}

/// An agent enrolled through `endpoint` that has taken and acknowledged its policy, so its next
/// check-in parks.
fn settled<'a>(endpoint: &'a Endpoint, token: &str) -> Agent<'a> {
    let agent = Agent::enroll(endpoint, token);
    let reply = agent.checkin_online();
    assert_eq!(reply.body["actions"][0]["id"], "policy:p:1", "{reply:?}");
    assert_eq!(agent.ack(&["policy:p:1"]).status, 200);
    agent
}

/// A check-in answered with nothing to do, on a connection the server closes after it.
#[track_caller]
fn sent_away(reply: &Reply) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, json!({ "action": "checkin", "ack_token": "" }), "{reply:?}");
    assert_eq!(reply.headers["connection"], "close", "{reply:?}");
}

/// `/api/status` without a key: (HTTP status, the body's status).
fn fleet_status(endpoint: &Endpoint) -> (u16, Value) {
    let reply = get(endpoint, "/api/status", None);
    schema::check(&reply.body, schema::STATUS);
    (reply.status, reply.body["status"].clone())
}

/// Writes one keep-alive GET of `/api/status` on `stream` and reads its response (which has a
/// `Content-Length`); returns its head.
fn status_on(stream: &mut (impl std::io::Read + std::io::Write)) -> String {
    stream.write_all(b"GET /api/status HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "{}", String::from_utf8_lossy(&raw));
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    stream.read_exact(&mut vec![0u8; length]).unwrap();
    head
}

#[test]
fn a_drained_instance_answers_its_parked_check_ins_closes_its_connections_and_comes_back() {
    let (f, server) = appliance();
    let (_, token) = f.token("p");
    let agents: Vec<Agent<'_>> = (0..3).map(|_| settled(&server, &token)).collect();
    // A keep-alive connection left idle between requests, as agents hold theirs.
    let mut idle = crate::support::tls_stream(&server.https, &server.ca);
    let head = status_on(&mut idle);
    assert!(head.starts_with("HTTP/1.1 200") && !head.contains("close"), "{head}");

    std::thread::scope(|scope| {
        let parked: Vec<_> = agents.iter().map(|a| scope.spawn(|| a.checkin_online())).collect();
        std::thread::sleep(Duration::from_millis(500));
        assert!(parked.iter().all(|p| !p.is_finished()), "the check-ins should be parked");
        let started = Instant::now();
        let drained = f.run_json(&[&"drain", &"--json"]);
        assert_eq!(
            drained,
            json!({ "draining": true, "status": "STOPPING", "parked_before": 3, "parked": 0 })
        );
        for check_in in parked {
            sent_away(&check_in.join().unwrap());
        }
        // Answered by the drain, not by the two-minute hold.
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    });
    // The idle connection was closed, cleanly (TLS close_notify), without a request.
    idle.sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(idle.read(&mut [0u8; 16]).unwrap(), 0, "the idle connection should be closed");

    // The load balancer's view, and a new check-in, answered at once.
    assert_eq!(fleet_status(&server), (503, "STOPPING".into()));
    sent_away(&agents[0].checkin_online());
    // The admin API is not drained, and says so.
    let o = f.run(&[&"status", &"--json"]);
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(1), "not healthy while draining: {report}");
    assert_eq!((&report["draining"], &report["status"]), (&json!(true), &json!("STOPPING")));
    let text = stdout(&f.run(&[&"status"]));
    assert!(text.contains("server  running, draining; /api/status answers STOPPING"), "{text}");
    // Draining again is harmless, and says what it did.
    let o = f.run(&[&"drain"]);
    assert_ok(&o);
    assert!(stdout(&o).starts_with("draining: /api/status answers STOPPING (503); 0 parked"));

    // Undone: healthy again, and check-ins park again.
    let undone = f.run_json(&[&"drain", &"--undo", &"--json"]);
    assert_eq!(undone["draining"], false, "{undone}");
    assert_eq!(undone["status"], "HEALTHY", "{undone}");
    assert_eq!(fleet_status(&server), (200, "HEALTHY".into()));
    let o = f.run(&[&"status", &"--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    std::thread::scope(|scope| {
        let parked = scope.spawn(|| agents[1].checkin_online());
        std::thread::sleep(Duration::from_millis(500));
        assert!(!parked.is_finished(), "the check-in should be parked again");
        assert_ok(&f.run(&[&"drain"]));
        sent_away(&parked.join().unwrap());
    });
    let o = f.run(&[&"drain", &"--undo"]);
    assert_eq!(stdout(&o).trim(), "not draining: /api/status answers HEALTHY");
}

#[test]
fn haproxy_takes_a_drained_instance_out_and_sends_its_agents_to_the_other() {
    // Two instances with one certificate for the public name (the second is given the
    // first's), each with its own SQLite store: until they share one, an agent enrolled on A
    // is unknown to B, which answers its check-ins 401, and that is how a test can tell that
    // they reached B.
    let (f_a, a) = appliance();
    let f_b = Fixture::new();
    let tls = f_a.path("data/tls");
    f_b.append_config(&format!(
        "{HOLD}\ntls_cert = {:?}\ntls_key = {:?}",
        tls.join("server.pem"),
        tls.join("server.key")
    ));
    assert_ok(&f_b.run(&[&"import", &f_b.bundle(1, VERSIONS[0], Fixture::later())]));
    let b = Server::start(&f_b);
    let address = |s: &Server| s.https.trim_start_matches("https://").parse().unwrap();
    let Some(proxy) = Haproxy::start(Mode::TlsPassthrough, &[address(&a), address(&b)]) else {
        return;
    };
    proxy.wait_for(0, "UP");
    proxy.wait_for(1, "UP");
    // Agents reach the instances only through HAProxy, with the public name's certificate.
    let fleet = Endpoint { https: proxy.url(), ca: a.ca.clone() };
    assert_eq!(fleet_status(&fleet), (200, "HEALTHY".into()));

    // Enrolled and parked on A: B is out of rotation meanwhile, then back.
    proxy.runtime("set server ferry/s1 state maint");
    let (_, token) = f_a.token("p");
    let agents: Vec<Agent<'_>> = (0..3).map(|_| settled(&fleet, &token)).collect();
    std::thread::scope(|scope| {
        let parked: Vec<_> = agents.iter().map(|a| scope.spawn(|| a.checkin_online())).collect();
        std::thread::sleep(Duration::from_millis(500));
        assert!(parked.iter().all(|p| !p.is_finished()), "the check-ins should be parked");
        let servers = proxy.servers();
        assert!(
            servers[0].current_sessions >= 3 && servers[1].current_sessions == 0,
            "{servers:?}"
        );
        proxy.runtime("set server ferry/s1 state ready");
        proxy.wait_for(1, "UP");

        let drained = f_a.run_json(&[&"drain", &"--json"]);
        assert_eq!((&drained["parked_before"], &drained["parked"]), (&json!(3), &json!(0)));
        for check_in in parked {
            sent_away(&check_in.join().unwrap());
        }
    });
    let down = proxy.wait_for(0, "DOWN");
    assert_eq!(down.check, "L7STS", "taken out for its 503: {down:?}");
    let before = proxy.servers();

    // The agents' next check-ins open new connections, which HAProxy sends to B.
    for agent in &agents {
        agent.checkin_online().assert_error(401, "ErrUnauthorized");
    }
    // And any new connection: B answers 200 where A would say 503 STOPPING.
    for _ in 0..3 {
        assert_eq!(fleet_status(&fleet), (200, "HEALTHY".into()));
    }
    let after = proxy.servers();
    assert_eq!(after[0].total_sessions, before[0].total_sessions, "none to A: {after:?}");
    assert_eq!(after[1].total_sessions, before[1].total_sessions + 6, "all to B: {after:?}");

    // Undone, A is back in rotation.
    assert_ok(&f_a.run(&[&"drain", &"--undo"]));
    proxy.wait_for(0, "UP");
}
