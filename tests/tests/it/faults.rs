//! The appliance under hostile clients, with the real binaries: a few hundred simulated agents
//! park their check-ins, then `ferry-sim flood` runs every kind of hostile client (slow heads
//! and bodies, oversized requests, forged keys, agents dropping their check-ins) while
//! `ferry-sim probe` makes control calls. The server must stay up, answer what it refuses with
//! the right status, keep every parked agent, stay within its memory, and still enroll a new
//! agent afterwards. No timing is asserted: latencies under flood are measured by
//! `scripts/bench-faults.py`, not here.

use std::collections::BTreeMap;

use crate::support;
use crate::support::{Lines, PATIENCE, Site, json_stdout, sim};
use serde_json::Value;

const AGENTS: u64 = 300;
const FLOOD_SECONDS: &str = "18";

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A report's status counts as numbers.
fn statuses(v: &Value) -> BTreeMap<u16, u64> {
    v["status"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.parse().unwrap(), n.as_u64().unwrap()))
        .collect()
}

/// Asserts a flood report (of a kind or a variant) was answered only with `allowed` statuses,
/// and answered at all.
#[track_caller]
fn only(report: &Value, what: &str, allowed: &[u16]) {
    let got = statuses(report);
    assert!(!got.is_empty(), "{what}: no answer at all: {report}");
    assert!(got.keys().all(|s| allowed.contains(s)), "{what}: {got:?}, expected only {allowed:?}");
}

#[test]
fn the_server_stays_up_and_keeps_its_agents_under_hostile_clients() {
    let site = Site::new();
    let bundle = site.bundle(1, &["9.1.2"], None);
    // Parked check-ins end every 10 s, all together (no jitter), so the fleet checks in again
    // during the flood and is all parked again a second later; heads get 5 s, so slowloris
    // connections are cut off (and come back) during the flood too. Enrollment is
    // raised so the fleet enrolls at once; the flood's own limits are the defaults.
    let port = site.configure(
        "checkin_long_poll_seconds = 10\ncheckin_jitter_seconds = 0\nheader_timeout_seconds = 5",
        "[limits.enroll]\nper_second = 1000\nburst = 1000\nconcurrent = 200\n",
    );
    site.admin(&["import", bundle.to_str().unwrap()]);
    let server = site.serve();
    let token = site.admin(&["tokens", "create", "--policy", "default-policy"]).trim().to_owned();
    let url = format!("https://127.0.0.1:{port}");
    let ca = site.path().join("data/tls/ca.pem");
    let target = |cmd: &mut std::process::Command| {
        cmd.args(["--url", &url, "--ca"]).arg(&ca).args(["--token", &token]);
    };

    let mut run = sim();
    run.arg("run");
    target(&mut run);
    run.args(["--agents", &AGENTS.to_string(), "--ramp", "500", "--report-ms", "200"]);
    let agents = Lines::spawn(run, PATIENCE);
    let parked = agents
        .report("all agents parked", |v| v["enrolled"] == AGENTS && v["in_checkin"] == AGENTS);
    let errors_before = parked["errors"].clone();
    let rss_before = rss_kib(server.pid());

    let mut flood = sim();
    flood.arg("flood");
    target(&mut flood);
    flood.args(["--seconds", FLOOD_SECONDS, "--slowloris", "200", "--slow-body", "20"]);
    flood.args(["--key-rate", "2000", "--disconnect-agents", "20"]);
    let mut probe = sim();
    probe.arg("probe");
    target(&mut probe);
    probe.args(["--duration", FLOOD_SECONDS, "--rate", "5"]);
    let (flood, probe) = std::thread::scope(|s| {
        let flood = s.spawn(|| flood.output().unwrap());
        let probe = s.spawn(|| probe.output().unwrap());
        (json_stdout(&flood.join().unwrap()), json_stdout(&probe.join().unwrap()))
    });
    let rss_after = rss_kib(server.pid());
    eprintln!("flood: {flood}\nprobe: {probe}\nRSS {rss_before} -> {rss_after} KiB");

    assert!(server.alive(), "the server died under the flood");
    // Every control call of the probe succeeded (how fast is the benchmark's business).
    assert_eq!(probe["errors"], serde_json::json!({}), "{probe}");
    for call in ["status", "ack", "enroll"] {
        assert!(probe[call]["n"].as_u64().unwrap() > 0, "{probe}");
    }

    let kinds = &flood["kinds"];
    // Forged and misused keys: refused as unknown (401) or as another agent's (403), each one,
    // and once their address has used up its failures (limits.auth_failures), with 429 before
    // anything runs, while the fleet on the same address keeps its proven keys.
    let keys = &kinds["keys"];
    only(keys, "forged keys", &[401, 403, 429]);
    let answered: u64 = statuses(keys).values().sum();
    assert_eq!(answered, keys["attempts"].as_u64().unwrap(), "every forged key answered: {keys}");
    for (variant, status) in [
        ("unknown-key-checkin", 401),
        ("unknown-key-ack", 401),
        ("wrong-secret-checkin", 401),
        ("other-agent-ack", 403),
        ("malformed-key-ack", 401),
    ] {
        only(&keys["variants"][variant], variant, &[status, 429]);
    }
    // Oversized heads get 431, oversized bodies 413, however they are framed.
    let oversize = &kinds["oversize"]["variants"];
    only(&oversize["head-16k"], "head-16k", &[431]);
    for variant in ["declared-32m", "checkin-2m-length", "checkin-2m-chunked"] {
        only(&oversize[variant], variant, &[413]);
    }
    // Gzip bombs pass the head with the flood's helper key, which the forged-key flood also
    // sends with wrong secrets: once their address is out of failures, that key is no longer
    // proven and the bombs are refused (429) before they are read.
    only(&oversize["gzip-bomb"], "gzip-bomb", &[413, 429]);
    // Slow heads are cut off by the header timeout without ever being served.
    let slowloris = &kinds["slowloris"];
    assert!(slowloris["outcomes"]["closed_by_server"].as_u64().unwrap_or(0) > 0, "{slowloris}");
    assert!(!statuses(slowloris).contains_key(&200), "{slowloris}");
    assert!(!statuses(&kinds["slow-body"]).contains_key(&200), "{}", kinds["slow-body"]);
    // The dropping agents enrolled and really left parked check-ins behind.
    let disconnect = &kinds["disconnect"];
    assert_eq!(disconnect["outcomes"]["enrolled"], 20, "{disconnect}");
    assert!(
        disconnect["outcomes"]["dropped_while_parked"].as_u64().unwrap_or(0) > 20,
        "{disconnect}"
    );

    // No parked agent was lost: all are parked again, none stopped, no check-in failed.
    let after = agents.report("all agents parked after the flood", |v| {
        v["in_checkin"] == AGENTS && v["stopped"] == 0
    });
    assert_eq!(after["errors"], errors_before, "check-ins failed during the flood: {after}");
    // Memory: the flood may leave allocator slack, but nothing that grows with it.
    assert!(rss_after < rss_before + (256 << 10), "RSS grew from {rss_before} to {rss_after} KiB");

    // A new agent enrolls and checks in.
    support::a_new_agent_checks_in(&target);
    assert!(server.alive());
}
