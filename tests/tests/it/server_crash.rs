//! The server killed (SIGKILL) with two thousand simulated agents connected, in the middle of an
//! action's fan-out. After a restart every agent is back on its own key, every acknowledged
//! action is still acknowledged, none is delivered again past an agent's `ack_token`, the action
//! cut off by the crash reaches everyone, and the data directory is whole.

use crate::support::{Lines, PATIENCE, Site, count, eventually, sim};
use serde_json::Value;

const AGENTS: u64 = 2000;

/// Queues a SETTINGS action for every agent of the policy; returns its id.
fn settings(site: &Site, level: &str) -> String {
    let out =
        site.admin(&["settings", "--log-level", level, "--policy", "default-policy", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["action_id"].as_str().unwrap().to_owned()
}

/// How many agents have acknowledged `action`, and how many it targets.
fn acked(site: &Site, action: &str) -> (usize, usize) {
    let v: Value =
        serde_json::from_str(&site.admin(&["actions", "show", action, "--json"])).unwrap();
    let agents = v["agents"].as_array().unwrap();
    (agents.iter().filter(|a| a["acknowledged"] == true).count(), agents.len())
}

fn everyone_acked(site: &Site, action: &str) {
    eventually(&format!("every agent acknowledges {action}"), || {
        let (done, of) = acked(site, action);
        (done == AGENTS as usize && of == AGENTS as usize).then_some(())
    });
}

#[test]
fn a_server_killed_under_two_thousand_agents_loses_nothing() {
    let site = Site::new();
    let bundle = site.bundle(1, &["9.1.2"], None);
    let port = site.configure(
        "checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0",
        // Acks slowed to 300 a second, so the crash lands in the middle of a fan-out.
        "[limits.enroll]\nper_second = 2000\nburst = 2000\n[limits.ack]\nper_second = 300\nburst = 300\n",
    );
    site.admin(&["import", bundle.to_str().unwrap()]);
    let server = site.serve();
    let token = site.admin(&["tokens", "create", "--policy", "default-policy"]).trim().to_owned();

    let mut run = sim();
    run.args(["run", "--url", &format!("https://127.0.0.1:{port}"), "--ca"])
        .arg(site.path().join("data/tls/ca.pem"))
        .args(["--token", &token, "--agents", &AGENTS.to_string(), "--ramp", "500"])
        .args(["--report-ms", "250", "--backoff", "1", "--backoff-max", "2"]);
    let agents = Lines::spawn(run, PATIENCE);
    agents.report("every agent parked on revision 1", |v| {
        count(v, "revisions", "1") == AGENTS && v["in_checkin"] == AGENTS
    });

    // One action everyone has acknowledged, and one cut off by the crash.
    let before = settings(&site, "debug");
    everyone_acked(&site, &before);
    let during = settings(&site, "info");
    let at_kill = eventually("the first acknowledgements", || {
        let (done, _) = acked(&site, &during);
        (done > 0).then_some(done)
    });
    drop(server); // SIGKILL, with parked check-ins, acks and the fan-out in flight
    eprintln!("killed with {at_kill} of {AGENTS} acknowledgements of {during} recorded");
    assert!(at_kill < AGENTS as usize, "the fan-out was over before the crash");

    // The data directory is whole before the server comes back.
    site.admin(&["fsck"]);
    let releases: Value = serde_json::from_str(&site.admin(&["releases", "--json"])).unwrap();
    let active: Vec<_> =
        releases.as_array().unwrap().iter().filter(|r| r["active"] == true).collect();
    assert_eq!(active.len(), 1, "{releases}");

    let _server = site.serve();
    let after = settings(&site, "warning");
    for action in [&before, &during, &after] {
        everyone_acked(&site, action);
    }
    let report = agents.report("every agent parked again", |v| v["in_checkin"] == AGENTS);
    eprintln!("after the restart: {report}");
    assert_eq!(report["redelivered"], 0, "actions delivered past an ack_token: {report}");
    assert_eq!(report["stopped"], 0, "agents lost their keys: {report}");
    assert_eq!(report["enrolled"], AGENTS, "{report}");
    let listed: Value = serde_json::from_str(&site.admin(&["agents", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len() as u64, AGENTS);
}
