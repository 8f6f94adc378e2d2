//! A compromised agent's check-ins (issue 22): it holds a valid access key and uses it to store
//! what it likes, to hold many parked requests, and to keep a parked request after the operator
//! revoked it. Each test reproduces the attack as it was reported against the server before the
//! fix.

use std::time::{Duration, Instant};

use crate::support::agent::Agent;
use crate::support::{Fixture, Server, VERSIONS, assert_ok};
use serde_json::json;

/// A site with the policy delivered to one agent and acknowledged, check-ins held for 300 s, so
/// anything that ends a check-in sooner is the server's doing.
fn parked_site(f: &Fixture) -> (Server, String) {
    f.append_config("checkin_long_poll_seconds = 300\ncheckin_jitter_seconds = 0");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(f);
    let (_, token) = f.token("p");
    (server, token)
}

fn settle(agent: &Agent<'_>) {
    let reply = agent.checkin_online();
    let policy = reply.body["actions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(agent.ack(&[&policy]).status, 200);
}

/// Waits (up to a bound far above what the server needs) for a thread to finish.
fn finishes<T>(handle: &std::thread::ScopedJoinHandle<'_, T>) -> bool {
    let until = Instant::now() + Duration::from_secs(30);
    while !handle.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    handle.is_finished()
}

#[test]
fn one_parked_check_in_per_agent_and_a_revoked_agent_is_refused_when_woken() {
    let f = Fixture::new();
    let (server, token) = parked_site(&f);
    let agent = Agent::enroll(&server, &token);
    settle(&agent);
    std::thread::scope(|scope| {
        let first = scope.spawn(|| agent.checkin_online());
        std::thread::sleep(Duration::from_millis(500));
        assert!(!first.is_finished(), "the first check-in should be parked");
        // The same key parks a second check-in: the first is answered 429, which sends a second
        // host with the same identity into the agent's backoff.
        let second = scope.spawn(|| agent.checkin_online());
        assert!(finishes(&first), "a newer check-in of the agent must answer the older one");
        let first = first.join().unwrap();
        first.assert_error(429, "CheckinSuperseded");
        assert!(first.headers.contains_key("retry-after"), "{first:?}");
        assert!(!second.is_finished(), "the newer check-in stays parked");
        let status = f.run_json(&[&"status", &"--json"]);
        assert_eq!(status["agents"]["checkins_superseded"], 1, "{status}");
        assert!(server.wait_for_log("two check-ins of one agent at once").contains(&agent.id));

        // The operator revokes the agent while its check-in is parked: the check-in ends with
        // the refusal its next request would get, not with an action or a policy.
        assert_ok(&f.run(&[&"unenroll", &"--revoke", &agent.id]));
        assert!(finishes(&second), "a revoked agent's parked check-in must be answered");
        second.join().unwrap().assert_error(401, "ErrAgentInactive");
    });
}

#[test]
fn oversized_report_fields_are_cut_or_not_stored() {
    let f = Fixture::new();
    let (server, token) = parked_site(&f);
    let agent = Agent::enroll(&server, &token);
    settle(&agent);
    let show = || f.run_json(&[&"agents", &"show", &agent.id, &"--json"]);
    let before = show();
    assert!(before["local_metadata"].is_object() && before["components"].is_array(), "{before}");
    // 8 MiB of metadata, components and message in a gzipped body of a few KiB (within the
    // check-in's 20 MiB cap after gunzip): before the caps, each was stored whole.
    let mib = "a".repeat(2 << 20);
    let body = json!({
        "status": "online",
        "message": mib,
        "local_metadata": { "host": { "hostname": mib } },
        "components": [{ "id": "log-default", "status": "HEALTHY", "message": mib }],
        "upgrade_details": { "state": "UPG_DOWNLOADING", "target_version": mib,
                             "metadata": { "download_percent": 12.5 } },
    });
    std::thread::scope(|scope| {
        let parked = scope.spawn(|| agent.checkin(body));
        std::thread::sleep(Duration::from_millis(500));
        let a = show();
        // Metadata that cutting its address lists does not shrink enough is not stored: what
        // the agent reported before stays. Components keep their states, messages cut.
        assert_eq!(a["local_metadata"], before["local_metadata"], "oversized metadata");
        assert_eq!(a["components"][0]["status"], "HEALTHY");
        let message = a["components"][0]["message"].as_str().unwrap();
        assert!(message.len() <= 1024 && message.ends_with('…'), "{}", message.len());
        let message = a["last_message"].as_str().unwrap();
        assert!(message.len() <= 1024 && message.ends_with('…'), "{}", message.len());
        assert_eq!(a["upgrade_details"]["state"], "UPG_DOWNLOADING");
        assert_eq!(a["upgrade_details"]["metadata"]["download_percent"], 12.5);
        assert!(a.to_string().len() < 16 << 10, "the agent's whole record stays small");
        let status = f.run_json(&[&"status", &"--json"]);
        assert_eq!(status["agents"]["reports_trimmed"], 1, "{status}");
        let logs = server.wait_for_log("over their caps");
        assert!(logs.contains(&agent.id), "{logs}");
        // The list still answers and shows the agent.
        let list = f.run_json(&[&"agents", &"list", &"--json"]);
        assert!(list.to_string().contains(&agent.id));
        assert_ok(&f.run(&[&"unenroll", &"--revoke", &agent.id]));
        assert!(finishes(&parked));
    });
}

/// Bare connections from one address, held past what the process may open: before the caps the
/// accept loop ran out of descriptors (`Too many open files`), and with it the admin API and
/// every agent. `serve` runs with 300 open files (a reserve of 128, 172 connections in all) and
/// `max_connections_per_address = 40`.
#[test]
fn held_connections_from_one_address_leave_agents_and_the_operator_served() {
    let f = Fixture::new();
    f.append_config("header_timeout_seconds = 300\nmax_connections_per_address = 40");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let serve = f.appliance(&[&"serve"]);
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "ulimit -n 300 && exec \"$0\" \"$@\""])
        .arg(serve.get_program())
        .args(serve.get_args());
    let server = Server::start_command(cmd);
    let addr: std::net::SocketAddr = server.https.trim_start_matches("https://").parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // 400 connections from 127.0.0.2 (Linux routes all of 127/8 on lo), never a byte sent.
    let held: Vec<std::net::TcpStream> = runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..400 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            held.push(socket.connect(addr).await.unwrap().into_std().unwrap());
        }
        held
    });
    // The operator's commands and a new agent (from 127.0.0.1) are served meanwhile.
    let (_, token) = f.token("p");
    let agent = Agent::enroll(&server, &token);
    settle(&agent);
    assert!(f.run_json(&[&"agents", &"list", &"--json"]).to_string().contains(&agent.id));
    // The server closed what it would not hold: the rest of the 400 read end-of-file.
    let closed = held
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            matches!(std::io::Read::read(&mut &**s, &mut [0u8; 1]), Ok(0))
        })
        .count();
    assert!(closed >= 400 - 40, "only {closed} of 400 were closed");
    let logs = server.wait_for_log("connections refused: this address holds its share");
    assert!(logs.contains("127.0.0.2"), "{logs}");
}
