//! The operator's whole journey with the real binaries and simulated agents: a synthetic Elastic
//! download site, a bundle built from it and checked with the stock `minisign`, imported and
//! served; agents enroll and take policy revision 1, upgrade from the mirror (checksum and PGP
//! checked by the agents), receive revision 2 and a new agent version from a second bundle while
//! parked, follow a rollback, and one is unenrolled. Then the failure journeys: a bundle damaged
//! in transit, an expired one, an old one replayed, each refused while the site keeps serving.

use std::process::Command;

use crate::support::{Lines, PATIENCE, Site, count, eventually, run_ok, sim};
use serde_json::Value;

/// `agents list --json`, once every agent listed is as `all` wants.
fn agents_if(site: &Site, all: impl Fn(&Value) -> bool) -> Option<Value> {
    let listed: Value = serde_json::from_str(&site.admin(&["agents", "list", "--json"])).unwrap();
    listed.as_array().unwrap().iter().all(all).then_some(listed)
}

/// `ferry-sim run` with the flags of the `elastic-agent install` line the demo prints.
fn install(port: u16, ca: &std::path::Path, token: &str, agents: usize) -> Command {
    let mut run = sim();
    run.arg("run")
        .arg(format!("--url=https://127.0.0.1:{port}"))
        .arg(format!("--enrollment-token={token}"))
        .arg(format!("--certificate-authorities={}", ca.display()))
        .args(["--agents", &agents.to_string(), "--report-ms", "200", "--backoff", "1"]);
    run
}

#[test]
fn a_site_from_bundle_to_upgraded_agents_and_back() {
    let site = Site::new();
    let first = site.bundle(1, &["9.1.2", "9.2.2"], None);
    // The stock minisign checks the detached signature as the carrier would.
    run_ok(
        ferry_manifests::test_tools::tool("minisign")
            .current_dir(site.path())
            .arg("-Vm")
            .arg(&first)
            .args(["-p", "ferry.pub"]),
    );

    let port = site.configure("checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0", "");
    site.admin(&["import", first.to_str().unwrap()]);
    let server = site.serve();
    let token = site.admin(&["tokens", "create", "--policy", "default-policy"]).trim().to_owned();
    let ca = site.path().join("data/tls/ca.pem");

    // Five agents enroll with the flags `elastic-agent install` takes (as the demo prints
    // them), speaking the corpus shapes of 9.1.2, and take revision 1.
    let agents = Lines::spawn(install(port, &ca, &token, 5), PATIENCE);
    agents.report("5 agents on revision 1", |v| {
        count(v, "revisions", "1") == 5 && v["in_checkin"] == 5
    });

    // An upgrade from the mirror: the agents check the .sha512 and the PGP signature, over TLS
    // verified with the CA the policy gives in agent.download.ssl (not the enrollment CA).
    site.admin(&["upgrade", "--version", "9.2.2", "--policy", "default-policy"]);
    agents
        .report("5 agents on 9.2.2", |v| count(v, "versions", "9.2.2") == 5 && v["upgraded"] == 5);
    // The appliance learns it from their next check-in (new User-Agent, no more details).
    let listed = eventually("the appliance sees 9.2.2 everywhere", || {
        agents_if(&site, |a| a["version"] == "9.2.2" && a["upgrade_state"] != "UPG_REQUESTED")
    });

    // A second bundle brings revision 2 and 9.3.0; parked agents get the policy at once.
    let second = site.bundle(2, &["9.2.2", "9.3.0"], None);
    site.admin(&["import", second.to_str().unwrap()]);
    agents.report("5 agents on revision 2", |v| count(v, "revisions", "2") == 5);
    site.admin(&["upgrade", "--version", "9.3.0", "--policy", "default-policy"]);
    agents.report("5 agents on 9.3.0", |v| count(v, "versions", "9.3.0") == 5);

    // A rollback re-activates bundle 1: its policy comes back as revision 3 (never backwards).
    site.admin(&["rollback"]);
    agents.report("5 agents on revision 3", |v| count(v, "revisions", "3") == 5);

    // Failure journeys: each refused with exit 1, the site still serving release 1.
    let damaged = site.path().join("damaged.ferry");
    let mut bytes = std::fs::read(&second).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&damaged, bytes).unwrap();
    std::fs::copy(
        second.with_extension("ferry.minisig"),
        site.path().join("damaged.ferry.minisig"),
    )
    .unwrap();
    let expired = site.bundle(3, &["9.3.0"], Some("2020-02-01T00:00:00Z"));
    for (bundle, why) in [(&damaged, "signature"), (&expired, "expired"), (&first, "sequence")] {
        let o = site.appliance().arg("import").arg(bundle).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
        assert!(err.contains(why), "{why}: {err}");
    }
    let releases: Value = serde_json::from_str(&site.admin(&["releases", "--json"])).unwrap();
    let active: Vec<u64> = releases
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["active"] == true)
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(active, [1], "the rolled-back release stays active");
    agents.report("agents still parked", |v| v["in_checkin"] == 5);

    // Unenroll one agent: it acknowledges, stops, and its key is dead.
    let one = listed[0]["id"].as_str().unwrap().to_owned();
    site.admin(&["unenroll", &one]);
    agents.report("one agent unenrolled", |v| v["unenrolled"] == 1 && v["stopped"] == 1);
    let shown: Value =
        serde_json::from_str(&site.admin(&["agents", "show", &one, "--json"])).unwrap();
    assert_eq!(shown["status"], "unenrolled");
    drop(agents);
    drop(server);
}

/// Without the CA in the policy (`download_ca = false`), an agent's downloader has only its
/// system trust store, which lacks a private CA: the upgrade fails on TLS, the agents say so in
/// `upgrade_details`, and the appliance shows it. The enrollment CA does not help.
#[test]
fn an_upgrade_without_the_download_ca_fails_on_tls() {
    let site = Site::new();
    let bundle = site.bundle(1, &["9.1.2", "9.2.2"], None);
    let port = site.configure(
        "checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0\ndownload_ca = false",
        "",
    );
    site.admin(&["import", bundle.to_str().unwrap()]);
    let server = site.serve();
    let token = site.admin(&["tokens", "create", "--policy", "default-policy"]).trim().to_owned();
    let agents =
        Lines::spawn(install(port, &site.path().join("data/tls/ca.pem"), &token, 2), PATIENCE);
    agents.report("2 agents on revision 1", |v| count(v, "revisions", "1") == 2);
    site.admin(&["upgrade", "--version", "9.2.2", "--policy", "default-policy"]);
    agents.report("2 downloads refused on TLS", |v| v["errors"]["tls"].as_u64() >= Some(2));
    eventually("the appliance shows the failed upgrades", || {
        agents_if(&site, |a| a["version"] == "9.1.2" && a["upgrade_state"] == "UPG_FAILED")
    });
    drop(agents);
    drop(server);
}

/// `ferry-sim run --state` keeps each agent's id and key: a fleet killed and started again
/// reconnects at once as the same agents (as after an outage), enrolling none anew.
#[test]
fn a_fleet_killed_and_started_again_reconnects_as_the_same_agents() {
    let site = Site::new();
    let first = site.bundle(1, &["9.1.2"], None);
    let port = site.configure("checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0", "");
    site.admin(&["import", first.to_str().unwrap()]);
    let server = site.serve();
    let token = site.admin(&["tokens", "create", "--policy", "default-policy"]).trim().to_owned();
    let ca = site.path().join("data/tls/ca.pem");
    let state = site.path().join("sim-state");
    let fleet = || {
        let mut run = install(port, &ca, &token, 3);
        run.arg("--state").arg(&state);
        Lines::spawn(run, PATIENCE)
    };
    let agents = fleet();
    agents.report("3 agents parked on revision 1", |v| {
        count(v, "revisions", "1") == 3 && v["in_checkin"] == 3
    });
    let ids = |site: &Site| {
        let listed: Value =
            serde_json::from_str(&site.admin(&["agents", "list", "--json"])).unwrap();
        let mut ids: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let before = ids(&site);
    assert_eq!(before.len(), 3);
    agents.kill();
    let again = fleet();
    again.report("the same 3 agents parked again", |v| v["enrolled"] == 3 && v["in_checkin"] == 3);
    assert_eq!(ids(&site), before, "no agent enrolled anew");
    drop(again);
    drop(server);
}
