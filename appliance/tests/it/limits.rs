//! The server under pressure and odd clients: parked check-ins never take the slots of control
//! calls, a release wakes every parked agent at once, slow and oversized request heads are cut
//! off, floods of bad keys are refused while good agents are served, and the check-in accepts
//! what real agents send.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use crate::support;
use crate::support::agent::{Agent, Reply, enroll_request, request, send_wire};
use crate::support::{Fixture, Server, VERSIONS, assert_ok, schema};
use serde_json::json;

/// One request over TLS with the agent's headers, sent from the loopback address `from` (Linux
/// routes all of 127/8 on `lo`), so the server sees a client other than the test's others.
fn request_from(
    server: &Server,
    from: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &[u8],
) -> Reply {
    let addr: std::net::SocketAddr = server.https.trim_start_matches("https://").parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tcp = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(format!("{from}:0").parse().unwrap())?;
            socket.connect(addr).await?.into_std()
        })
        .unwrap();
    tcp.set_nonblocking(false).unwrap();
    let mut stream = support::tls_over(tcp, &server.ca);
    let auth = key.map(|k| format!("Authorization: ApiKey {k}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path}? HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Elastic Agent v9.1.2\r\n\
         Elastic-Api-Version: 2023-06-01\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = ureq::http::HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(": ").unwrap();
        headers.append(
            ureq::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    assert!(!headers.contains_key("transfer-encoding"), "JSON answers have a length");
    let raw = raw[split + 4..].to_vec();
    let body = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
    Reply { status, headers, body, raw }
}

/// `n` agents enrolled, each having taken and acked its first policy (so that its next
/// check-in parks).
fn on_their_first_policy<'s>(server: &'s Server, token: &str, n: usize) -> Vec<Agent<'s>> {
    let agents: Vec<Agent<'_>> = (0..n).map(|_| Agent::enroll(server, token)).collect();
    for a in &agents {
        let reply = a.checkin_online();
        assert_eq!(a.ack(&[reply.body["actions"][0]["id"].as_str().unwrap()]).status, 200);
    }
    agents
}

/// How many replies have each status.
fn count(replies: &[Reply], status: u16) -> usize {
    replies.iter().filter(|r| r.status == status).count()
}

#[test]
fn parked_check_ins_leave_control_calls_free_and_a_release_wakes_them_all() {
    let f = Fixture::new();
    f.append_config(
        "checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0\n\
         [limits.ack]\nconcurrent = 1\n[limits.status]\nconcurrent = 1",
    );
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let agents = on_their_first_policy(&server, &token, 6);
    std::thread::scope(|scope| {
        let parked: Vec<_> = agents.iter().map(|a| scope.spawn(|| a.checkin_online())).collect();
        std::thread::sleep(Duration::from_millis(500));
        assert!(parked.iter().all(|h| !h.is_finished()), "all six are parked");
        // Acks and status probes (each capped at one in flight) still go through.
        for a in &agents {
            assert_eq!(a.ack(&["policy:p:1"]).status, 200);
            let status = a.send("GET", "/api/status", &[], b"");
            assert_eq!(status.status, 200, "{status:?}");
            schema::check(&status.body, schema::STATUS);
            assert_eq!(status.body["status"], "HEALTHY");
        }
        // A new policy revision wakes every parked check-in (not the 120 s hold).
        assert_ok(&f.run(&[&"import", &f.bundle(2, VERSIONS[1], Fixture::later())]));
        for h in parked {
            let reply = h.join().unwrap();
            assert_eq!(reply.body["actions"][0]["id"], "policy:p:2", "{reply:?}");
        }
    });
}

/// A cap on check-ins in flight counts each one for its whole long poll, although the router's
/// layers hand a parked check-in's answer to the HTTP loop and are done with it early
/// (`net::later`).
#[test]
fn a_cap_on_check_ins_in_flight_counts_each_for_its_whole_long_poll() {
    let f = Fixture::new();
    f.append_config(
        "checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0\n\
         [limits.checkin]\nconcurrent = 2",
    );
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let agents = on_their_first_policy(&server, &token, 3);
    std::thread::scope(|scope| {
        let parked: Vec<_> =
            agents[..2].iter().map(|a| scope.spawn(|| a.checkin_online())).collect();
        std::thread::sleep(Duration::from_millis(500));
        assert!(parked.iter().all(|h| !h.is_finished()), "both are parked");
        agents[2].checkin_online().assert_error(429, "MaxLimit");
        assert_ok(&f.run(&[&"import", &f.bundle(2, VERSIONS[1], Fixture::later())]));
        for h in parked {
            let reply = h.join().unwrap();
            assert_eq!(reply.body["actions"][0]["id"], "policy:p:2", "{reply:?}");
        }
    });
    // Answered, they gave their places back.
    let reply = agents[2].checkin_online();
    assert_eq!(reply.body["actions"][0]["id"], "policy:p:2", "{reply:?}");
}

#[test]
fn slow_and_oversized_heads_are_cut_off_and_bad_keys_never_crowd_out_good_agents() {
    let f = Fixture::new();
    f.append_config(
        "checkin_long_poll_seconds = 1\ncheckin_jitter_seconds = 0\nheader_timeout_seconds = 1",
    );
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let agent = Agent::enroll(&server, &token);
    let addr = server.http.trim_start_matches("http://").to_owned();

    // A client that never finishes its head is disconnected after the header timeout.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /downloads/x HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let _ = slow.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(9), "the server closed the connection");
    // An idle keep-alive connection is closed the same way.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(idle.read(&mut [0u8; 16]).unwrap_or(0), 0);

    // An oversized head gets 431.
    let mut big = std::net::TcpStream::connect(&addr).unwrap();
    let head =
        format!("GET /downloads/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 << 10));
    let _ = big.write_all(head.as_bytes());
    let mut response = Vec::new();
    let _ = big.read_to_end(&mut response);
    assert!(
        response.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&response[..response.len().min(80)])
    );

    // A burst of forged keys: each refused with 401, and the real agent is served after it.
    let path = format!("/api/fleet/agents/{}/checkin", agent.id);
    let body = json!({"status": "online"}).to_string();
    for _ in 0..200 {
        let forged = ferry_appliance::credentials::ApiKey::mint().encoded();
        request(&server, "POST", &path, Some(&forged), &[], body.as_bytes())
            .assert_error(401, "ErrUnauthorized");
    }
    assert_eq!(agent.checkin_online().status, 200);
    // /api/status never answers 401, whatever key comes with it.
    let forged = ferry_appliance::credentials::ApiKey::mint().encoded();
    assert_eq!(request(&server, "POST", "/api/status", Some(&forged), &[], b"").status, 405);
    let reply = support::agent::get(&server, "/api/status", Some(&forged));
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[test]
fn check_ins_take_what_real_agents_send() {
    let f = Fixture::new();
    f.append_config("checkin_long_poll_seconds = 1\ncheckin_jitter_seconds = 0");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let agent = Agent::enroll(&server, &token);
    agent.checkin_online();
    // Any non-empty status, components, metadata, an unknown token, 9.3's upgrade field.
    for status in ["online", "error", "starting", "DEGRADED"] {
        let reply = agent.checkin(json!({
            "status": status, "message": "m", "ack_token": "not-a-known-token",
            "local_metadata": {"host": {"hostname": "renamed"}},
            "components": [{"id": "filestream-default", "type": "filestream", "status": "DEGRADED",
                            "message": "file not found", "units": []}],
            "upgrade": {"rollbacks": [{"version": "9.1.0", "valid_until": "2026-12-01T00:00:00Z"}]},
        }));
        assert_eq!(reply.status, 200, "{status}: {reply:?}");
    }
    let shown = f.run_json(&[&"agents", &"show", &agent.id, &"--json"]);
    assert_eq!(shown["last_status"], "DEGRADED");
    assert_eq!(shown["status"], "degraded");
    assert_eq!(shown["hostname"], "renamed");
    assert_eq!(shown["components"][0]["message"], "file not found");
    // A plain (not gzip) body and a body without Content-Encoding but with gzip bytes.
    let path = format!("/api/fleet/agents/{}/checkin", agent.id);
    let plain = agent.send("POST", &path, &[], json!({"status": "online"}).to_string().as_bytes());
    assert_eq!(plain.status, 200);
    let bad_gzip = agent.send("POST", &path, &[("Content-Encoding", "gzip")], b"not gzip");
    bad_gzip.assert_error(400, "BadRequest");
    // Gzip that inflates past the 20 MiB cap is refused after decompression.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let padding = " ".repeat(1 << 20);
    gz.write_all(b"{\"status\":\"online\",\"message\":\"").unwrap();
    for _ in 0..21 {
        gz.write_all(padding.as_bytes()).unwrap();
    }
    gz.write_all(b"\"}").unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "small on the wire");
    agent
        .send("POST", &path, &[("Content-Encoding", "gzip")], &bomb)
        .assert_error(413, "ErrPayloadSizeTooLarge");
    assert_eq!(agent.checkin_online().status, 200, "and the agent carries on");
}

#[test]
fn a_stopping_server_answers_parked_check_ins_and_keeps_their_reports() {
    let f = Fixture::new();
    f.append_config("checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let agent = Agent::enroll(&server, &token);
    let reply = agent.checkin_online();
    assert_eq!(agent.ack(&[reply.body["actions"][0]["id"].as_str().unwrap()]).status, 200);
    let started = std::time::Instant::now();
    let reply = std::thread::scope(|scope| {
        let parked =
            scope.spawn(|| agent.checkin(json!({"status": "DEGRADED", "message": "draining"})));
        std::thread::sleep(Duration::from_millis(500));
        assert!(!parked.is_finished());
        assert!(server.terminate().success(), "a clean stop");
        parked.join().unwrap()
    });
    // Answered "nothing to do" (not cut off, not held for its 120 s).
    assert_eq!((reply.status, &reply.body), (200, &json!({"action": "checkin", "ack_token": ""})));
    assert!(started.elapsed() < Duration::from_secs(60));
    // What it reported, and the policy ack, were written before the process ended.
    let server = Server::start(&f);
    let shown = f.run_json(&[&"agents", &"show", &agent.id, &"--json"]);
    assert_eq!(
        (shown["last_status"].as_str(), shown["policy_revision"].as_u64()),
        (Some("DEGRADED"), Some(1))
    );
    drop(server);
}

/// Points the fixture's agent listener (`server.listen`) at a fixed address.
fn listen_on(f: &Fixture, addr: &str) {
    let config = std::fs::read_to_string(f.path("appliance.toml")).unwrap();
    let config = config.replace("\nlisten = \"127.0.0.1:0\"", &format!("\nlisten = \"{addr}\""));
    std::fs::write(f.path("appliance.toml"), config).unwrap();
}

#[test]
fn a_takeover_replaces_the_server_without_agents_noticing() {
    let f = Fixture::new();
    // A takeover binds the same address, so the port is fixed here.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    listen_on(&f, &format!("127.0.0.1:{port}"));
    f.append_config("checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let old = Server::start(&f);
    let (_, token) = f.token("p");
    let agent = Agent::enroll(&old, &token);
    let reply = agent.checkin_online();
    assert_eq!(agent.ack(&[reply.body["actions"][0]["id"].as_str().unwrap()]).status, 200);

    // A second serve without --takeover is refused and changes nothing.
    let o = f.run(&[&"serve"]);
    assert!(!o.status.success());
    assert!(support::stderr(&o).contains("--takeover"), "{}", support::stderr(&o));

    let (reply, new) = std::thread::scope(|scope| {
        let parked = scope.spawn(|| agent.checkin_online());
        std::thread::sleep(Duration::from_millis(500));
        let new = Server::start_with(&f, &[&"serve", &"--takeover"]);
        (parked.join().unwrap(), new)
    });
    // The old server answered the parked check-in and left; the agent carries on, same URL.
    assert_eq!((reply.status, &reply.body), (200, &json!({"action": "checkin", "ack_token": ""})));
    assert!(old.wait_exit().success());
    let agent = agent.on(&new);
    // The new server has the agent, its key and its state; its admin API is the one in use.
    assert_ok(&f.run(&[&"settings", &"--log-level", &"debug", &agent.id]));
    let reply = agent.checkin(json!({"status": "online", "ack_token": "x"}));
    assert_eq!(
        (reply.status, &reply.body["actions"][0]["type"]),
        (200, &json!("SETTINGS")),
        "{reply:?}"
    );
    assert!(!f.path("data/serve.takeover").exists());
}

/// `serve` as systemd starts it for `ferry-appliance.socket`: `socket` (a listening socket or
/// anything else under test) as descriptor 3, `LISTEN_FDS=1`, and `LISTEN_PID` the server's
/// own pid (the shell's, which `exec` keeps).
fn socket_activated(f: &Fixture, socket: std::os::fd::OwnedFd) -> std::process::Command {
    use command_fds::{CommandFdExt as _, FdMapping};
    let serve = f.appliance(&[&"serve"]);
    let mut cmd = ferry_testkit::command("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(serve.get_program())
        .args(serve.get_args())
        .env("LISTEN_FDS", "1");
    cmd.fd_mappings(vec![FdMapping { parent_fd: socket, child_fd: 3 }]).unwrap();
    cmd
}

#[test]
fn a_socket_activated_server_restarts_without_refusing_a_connection() {
    let f = Fixture::new();
    // The test holds the socket as systemd's socket unit does, across both processes.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    listen_on(&f, &addr.to_string());
    f.append_config("checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let old = Server::start_command(socket_activated(&f, socket.try_clone().unwrap().into()));
    // Serving on the test's port proves the server took the socket: the port is held by a
    // socket without SO_REUSEPORT, so a bind of its own would have failed.
    assert!(old.https.ends_with(&format!(":{}", addr.port())), "{}", old.https);
    let (_, token) = f.token("p");
    let agent = Agent::enroll(&old, &token);
    let reply = agent.checkin_online();
    assert_eq!(agent.ack(&[reply.body["actions"][0]["id"].as_str().unwrap()]).status, 200);

    // Stopped: no process serves, yet a client connecting now is not refused. Its connection
    // waits in the socket's backlog and the next process answers it.
    assert!(old.terminate().success());
    let endpoint = support::Endpoint { https: old.https.clone(), ca: old.ca.clone() };
    let during_the_gap = std::thread::spawn(move || endpoint.get("/api/status", &[]).0);
    std::thread::sleep(Duration::from_millis(500));
    let new = Server::start_command(socket_activated(&f, socket.into()));
    assert_eq!(during_the_gap.join().unwrap(), 200);
    // Same address, same agents: the check-in the agent makes after the restart is served.
    let agent = agent.on(&new);
    assert_ok(&f.run(&[&"settings", &"--log-level", &"debug", &agent.id]));
    let reply = agent.checkin(json!({"status": "online", "ack_token": "x"}));
    assert_eq!(reply.body["actions"][0]["type"], json!("SETTINGS"), "{reply:?}");
}

#[test]
fn socket_activation_refuses_what_the_configuration_does_not_name() {
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    // A socket on an address the configuration does not name (it says 127.0.0.1:0).
    let stray = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stray_addr = stray.local_addr().unwrap();
    let o = socket_activated(&f, stray.into()).output().unwrap();
    let err = support::stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("sockets on {stray_addr} that the configuration does not name")),
        "{err}"
    );
    // Something that is not a listening TCP socket.
    let file = std::fs::File::open(f.path("appliance.toml")).unwrap();
    let o = socket_activated(&f, file.into()).output().unwrap();
    let err = support::stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("descriptor 3 is not a listening TCP socket"), "{err}");
}

#[test]
fn failed_credentials_are_charged_to_their_address_and_never_starve_good_agents() {
    let f = Fixture::new();
    // Route buckets barely refill during the test, so any token a bogus request takes is gone.
    f.append_config(
        "checkin_long_poll_seconds = 1\ncheckin_jitter_seconds = 0\n\
         [limits.enroll]\nper_second = 0.01\nburst = 5\n\
         [limits.ack]\nper_second = 0.01\nburst = 5\n\
         [limits.auth_failures]\nper_second = 0.01\nburst = 20",
    );
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");

    // Bogus enrollment tokens from 127.0.0.2, interleaved with real enrollments from 127.0.0.1:
    // every real one is served; the flood gets its 20 failures, then 429s for its address.
    let body = enroll_request("x", "9.1.2", "h").json;
    let mut flood = Vec::new();
    let mut agents = Vec::new();
    for _ in 0..4 {
        for _ in 0..10 {
            let bogus = ferry_appliance::credentials::ApiKey::mint().encoded();
            let path = "/api/fleet/agents/enroll";
            flood.push(request_from(
                &server,
                "127.0.0.2",
                "POST",
                path,
                Some(&bogus),
                body.as_bytes(),
            ));
        }
        let reply = send_wire(&server, &enroll_request(&token, "9.1.2", "Web-01"));
        assert_eq!(reply.status, 200, "a real enrollment during the flood: {reply:?}");
        agents.push(Agent::from_reply(&server, &reply));
    }
    assert_eq!((count(&flood, 401), count(&flood, 429)), (20, 20));
    flood[..20].iter().for_each(|r| r.assert_error(401, "ErrUnauthorized"));
    for r in &flood[20..] {
        r.assert_error(429, "AuthFailureLimit");
        assert!(r.body["message"].as_str().unwrap().contains("127.0.0.2"), "{r:?}");
        assert!(r.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    }
    // The address is refused on every route now, even with a good key its agent never used;
    // once the agent has authenticated (from anywhere), its key is served from there too, as
    // agents behind the flood's NAT address would be.
    let (a, b) = (&agents[0], &agents[1]);
    let checkin = format!("/api/fleet/agents/{}/checkin", a.id);
    let online = json!({"status": "online"}).to_string();
    let from2 =
        || request_from(&server, "127.0.0.2", "POST", &checkin, Some(&a.key), online.as_bytes());
    from2().assert_error(429, "AuthFailureLimit");
    let reply = a.checkin_online();
    assert_eq!(from2().status, 200, "a proven key from the flooding address");

    // Forged check-ins and acks, and another agent's key, from 127.0.0.3; the agents are served.
    assert_eq!(a.ack(&[reply.body["actions"][0]["id"].as_str().unwrap()]).status, 200);
    let acks = format!("/api/fleet/agents/{}/acks", a.id);
    let events = json!({"events": [a.ack_event("policy:p:1")]}).to_string();
    let mut bad = Vec::new();
    for i in 0..24 {
        let forged = ferry_appliance::credentials::ApiKey::mint().encoded();
        let (path, body) = if i % 2 == 0 { (&acks, &events) } else { (&checkin, &online) };
        bad.push(request_from(&server, "127.0.0.3", "POST", path, Some(&forged), body.as_bytes()));
    }
    bad.push(request_from(&server, "127.0.0.3", "POST", &acks, Some(&b.key), events.as_bytes()));
    assert_eq!((count(&bad, 401), count(&bad, 429)), (20, 5), "{bad:?}");
    bad.last().unwrap().assert_error(429, "AuthFailureLimit");
    for _ in 0..3 {
        assert_eq!(a.ack(&["policy:p:1"]).status, 200, "the ack route's tokens are the agents'");
    }
    assert_eq!(a.checkin_online().status, 200);
    // Another agent's key is a credential failure too (403), charged to its address.
    let from4 =
        |key: &str| request_from(&server, "127.0.0.4", "POST", &acks, Some(key), events.as_bytes());
    from4(&b.key).assert_error(403, "ErrAgentIdentity");
    assert_eq!(a.ack(&["policy:p:1"]).status, 200, "the route token came back");
}

/// After a restart nothing has authenticated yet: the credentials in the database count as
/// proven from the start, so an agent behind an address that floods bogus keys (hosts restored
/// from an old backup, all reconnecting after the restart) is still served from it.
#[test]
fn after_a_restart_the_stored_credentials_are_proven() {
    let f = Fixture::new();
    f.append_config(
        "checkin_long_poll_seconds = 1\ncheckin_jitter_seconds = 0\n\
         [limits.auth_failures]\nper_second = 0.01\nburst = 5",
    );
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let reply = send_wire(&server, &enroll_request(&token, "9.1.2", "Web-01"));
    let id = Agent::from_reply(&server, &reply).id;
    let key = reply.body["item"]["access_api_key"].as_str().unwrap().to_owned();
    drop(server);

    let server = Server::start(&f);
    let checkin = format!("/api/fleet/agents/{id}/checkin");
    let online = json!({"status": "online"}).to_string();
    let from2 = |key: &str| {
        request_from(&server, "127.0.0.2", "POST", &checkin, Some(key), online.as_bytes())
    };
    let bogus: Vec<Reply> =
        (0..6).map(|_| from2(&ferry_appliance::credentials::ApiKey::mint().encoded())).collect();
    assert_eq!((count(&bogus, 401), count(&bogus, 429)), (5, 1), "{bogus:?}");
    assert_eq!(from2(&key).status, 200, "the agent's stored key is proven since the start");
}
