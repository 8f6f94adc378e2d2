//! A compromised agent's floods (issue 22) against the real binaries, briefly: `ferry-sim
//! flood` runs its replace-token, bogus-token, hold-fds, parked-per-key and bulky-checkin kinds
//! at once while `ferry-sim probe` makes control calls, the admin API's status among them. Each
//! kind must have been answered as the appliance answers that attack, every control call must
//! have succeeded, and a new agent must still enroll afterwards. Nothing is timed: how much the
//! floods slow the control calls is `scripts/bench-faults.py`'s business.

use std::collections::BTreeMap;

use crate::support;
use crate::support::{Site, json_stdout, sim};
use serde_json::Value;

const FLOOD_SECONDS: &str = "8";
const PARKED_PER_KEY: u64 = 10;
const HELD: u64 = 200;
const BULKY_AGENTS: u64 = 2;

fn counts(v: &Value, field: &str) -> BTreeMap<String, u64> {
    v[field].as_object().unwrap().iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap())).collect()
}

fn total(v: &Value, field: &str) -> u64 {
    counts(v, field).values().sum()
}

/// Asserts every attempt of a kind was answered, only with `allowed` statuses.
#[track_caller]
fn all_answered(kind: &Value, what: &str, allowed: &[&str]) {
    let status = counts(kind, "status");
    assert!(kind["attempts"].as_u64().unwrap() > 0, "{what}: no attempt: {kind}");
    assert!(status.keys().all(|s| allowed.contains(&s.as_str())), "{what}: {kind}");
    assert_eq!(total(kind, "status"), kind["attempts"].as_u64().unwrap(), "{what}: {kind}");
}

#[test]
fn a_compromised_agents_floods_are_answered_and_control_calls_still_succeed() {
    let site = Site::new();
    let bundle = site.bundle(1, &["9.1.2"], None);
    // Parked check-ins outlast the flood, so one still parked at its end was never answered.
    // The limits are the defaults: the bogus-token flood is about what they let through.
    let port = site.configure("checkin_long_poll_seconds = 60", "");
    site.admin(&["import", bundle.to_str().unwrap()]);
    let server = site.serve();
    let token = site.admin(&["tokens", "create", "--policy", "default-policy"]).trim().to_owned();
    let url = format!("https://127.0.0.1:{port}");
    let data = site.path().join("data");
    let target = |cmd: &mut std::process::Command| {
        cmd.args(["--url", &url, "--ca"]).arg(data.join("tls/ca.pem")).args(["--token", &token]);
        cmd.args(["--sources", "8"]);
    };

    let mut flood = sim();
    flood.arg("flood");
    target(&mut flood);
    flood.args([
        "--seconds",
        FLOOD_SECONDS,
        "--kinds",
        "replace-token,bogus-token,hold-fds,parked-per-key,bulky-checkin",
        "--replace-rate",
        "20",
        "--bogus-rate",
        "300",
        "--hold-fds",
        &HELD.to_string(),
        "--parked-per-key",
        &PARKED_PER_KEY.to_string(),
        "--bulky-agents",
        &BULKY_AGENTS.to_string(),
    ]);
    let mut probe = sim();
    probe.arg("probe");
    target(&mut probe);
    probe.args(["--duration", FLOOD_SECONDS, "--rate", "5", "--fresh-enroll"]);
    probe.arg("--admin-socket").arg(data.join("admin.sock"));
    probe.arg("--admin-token-file").arg(data.join("admin.token"));
    let (flood, probe) = std::thread::scope(|s| {
        let flood = s.spawn(|| flood.output().unwrap());
        let probe = s.spawn(|| probe.output().unwrap());
        (json_stdout(&flood.join().unwrap()), json_stdout(&probe.join().unwrap()))
    });
    eprintln!("flood: {flood}\nprobe: {probe}");
    assert!(server.alive(), "the server died under the floods");

    // Every control call succeeded, the admin API's too, and real enrollments were not
    // starved by the unknown tokens (finding 5: they were charged to the same bucket).
    assert_eq!(probe["errors"], serde_json::json!({}), "{probe}");
    for call in ["status", "ack", "enroll", "admin"] {
        assert!(probe[call]["n"].as_u64().unwrap() > 0, "{probe}");
    }

    let kinds = &flood["kinds"];
    // Wrong replace tokens: refused (403), then limited (429) once the guesses for one agent
    // add up (finding 4: no 429 ever, each guess a PBKDF2 check).
    let replace = &kinds["replace-token"];
    all_answered(replace, "replace-token", &["403", "429"]);
    assert!(replace["status"]["429"].as_u64().unwrap_or(0) > 0, "{replace}");
    // Unknown enrollment tokens: refused (401), or limited per address (429).
    all_answered(&kinds["bogus-token"], "bogus-token", &["401", "429"]);
    // Bulky check-ins: the agents enrolled and each check-in was answered, whatever the
    // appliance does with fields that large.
    let bulky = &kinds["bulky-checkin"];
    assert_eq!(bulky["outcomes"]["enrolled"], BULKY_AGENTS, "{bulky}");
    assert_eq!(
        total(bulky, "status") + total(bulky, "errors"),
        bulky["attempts"].as_u64().unwrap()
    );
    assert!(total(bulky, "status") > 0, "{bulky}");
    // Held connections: all opened (the test's appliance has files to spare); each attempt
    // ended held or closed, or failed to connect.
    let held = &kinds["hold-fds"];
    assert_eq!(held["open_peak"], HELD, "{held}");
    assert_eq!(total(held, "outcomes") + total(held, "errors"), held["attempts"].as_u64().unwrap());
    // Check-ins of one key: all opened; each was answered, failed, or was still parked at the
    // end. Older ones were answered by newer ones, long before the 60 s poll ended (finding 6:
    // all were held, one key could park any number).
    let parked = &kinds["parked-per-key"];
    assert!(parked["attempts"].as_u64().unwrap() >= PARKED_PER_KEY, "{parked}");
    assert!(total(parked, "status") >= PARKED_PER_KEY - 1, "{parked}");
    assert!(parked["outcomes"]["held_to_end"].as_u64().unwrap_or(0) < PARKED_PER_KEY, "{parked}");
    assert_eq!(
        total(parked, "status") + total(parked, "errors") + total(parked, "outcomes"),
        parked["attempts"].as_u64().unwrap(),
        "{parked}"
    );

    // A new agent enrolls and checks in.
    support::a_new_agent_checks_in(&target);
    assert!(server.alive());
}
