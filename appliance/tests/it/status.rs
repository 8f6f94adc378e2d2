//! An appliance with nothing to serve says so, everywhere and in the same words: `serve` warns
//! at start naming the fix, `/api/status` answers as Fleet Server does when it is not ready
//! (`503`, `STARTING` or `FAILED`), `status` reports it and exits 1, `releases` and
//! `tokens create` agree with it. Once a bundle that verifies is imported, all of them turn
//! healthy together. A server never serves a release other than the active one.

use crate::support;
use crate::support::agent::get;
use crate::support::{Fixture, Server, VERSIONS, archive_bytes, archive_path, assert_ok, schema};
use crate::support::{stderr, stdout};
use serde_json::Value;

/// The fix every message names.
const IMPORT_FIX: &str = "bundle with `ferry-appliance import FILE`";

/// `/api/status` as an agent without a key asks it: (HTTP status, the body's status).
fn fleet_status(server: &Server) -> (u16, Value) {
    let reply = get(server, "/api/status", None);
    schema::check(&reply.body, schema::STATUS);
    assert_eq!(reply.body["name"], "fleet-server", "{reply:?}");
    (reply.status, reply.body["status"].clone())
}

/// `status --json`: its exit code and report.
fn status(f: &Fixture) -> (Option<i32>, Value) {
    let o = f.run(&[&"status", &"--json"]);
    let report = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&o), stderr(&o)));
    (o.status.code(), report)
}

/// Waits (bounded) until `status --json` reports `want`.
fn wait_for_status(f: &Fixture, want: &str) -> (Option<i32>, Value) {
    for _ in 0..100 {
        let (code, report) = status(f);
        if report["status"] == want {
            return (code, report);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("status never became {want}: {}", status(f).1);
}

#[test]
fn an_empty_appliance_says_it_has_nothing_to_serve_until_a_bundle_is_imported() {
    let f = Fixture::new();
    // Before any server ran: the data directory's view.
    let (code, report) = status(&f);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["server"], "stopped", "{report}");
    assert_eq!(report["status"], Value::Null, "{report}");
    assert_eq!(report["active"], Value::Null, "{report}");
    assert!(report["message"].as_str().unwrap().contains(IMPORT_FIX), "{report}");

    let server = Server::start(&f);
    let logs = server.wait_for_log("no release is active");
    assert!(logs.contains(IMPORT_FIX), "{logs}");
    assert_eq!(fleet_status(&server), (503, "STARTING".into()));

    let (code, report) = status(&f);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["server"], "running", "{report}");
    assert_eq!(report["status"], "STARTING", "{report}");
    assert_eq!(report["loaded"], false, "{report}");
    assert_eq!(report["served"], false, "{report}");
    assert_eq!(report["agents"]["total"], 0, "{report}");
    let message = report["message"].as_str().unwrap().to_owned();
    assert_eq!(message, format!("no release is active: import a {IMPORT_FIX}"));
    let text = stdout(&f.run(&[&"status"]));
    assert!(text.contains("STARTING") && text.contains(&message), "{text}");

    // The same words from `releases` and from a command that needs a release.
    assert!(stdout(&f.run(&[&"releases"])).contains(&message));
    let o = f.run(&[&"tokens", &"create", &"--policy", &"p"]);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains(&message), "{}", stderr(&o));

    // A bundle makes every one of them healthy.
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let (code, report) = wait_for_status(&f, "HEALTHY");
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["loaded"], true, "{report}");
    assert_eq!((&report["served"], &report["active"]["sequence"]), (&true.into(), &1.into()));
    assert_eq!(report["message"], Value::Null, "{report}");
    assert_eq!(fleet_status(&server), (200, "HEALTHY".into()));
    let (_, token) = f.token("p");
    support::agent::Agent::enroll(&server, &token);
    assert_eq!(status(&f).1["agents"]["total"], 1);

    // Stopped, the data directory's view again: the release is ready, nothing serves it.
    server.terminate();
    let (code, report) = status(&f);
    assert_eq!((code, &report["server"]), (Some(1), &"stopped".into()), "{report}");
    assert_eq!((&report["loaded"], &report["message"]), (&true.into(), &Value::Null), "{report}");
    assert_eq!(report["agents"]["total"], 1, "{report}");
}

#[test]
fn an_active_release_whose_key_is_no_longer_trusted_is_not_served_and_everyone_says_so() {
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let b = f.other_key("b.pub");
    f.trust(&["b.pub"]);

    let server = Server::start(&f);
    let logs = server.wait_for_log("the active release site 1 cannot be served");
    assert!(logs.contains("not trusted") && logs.contains(IMPORT_FIX), "{logs}");
    assert_eq!(fleet_status(&server), (503, "FAILED".into()));
    let url = format!("/downloads/{}", archive_path(VERSIONS[0]));
    assert_eq!(server.get(&url, &[]).0, 404, "an untrusted release is never served");

    let (code, report) = status(&f);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["status"], "FAILED", "{report}");
    assert_eq!(report["active"]["sequence"], 1, "{report}");
    assert_eq!(report["loaded"], false, "{report}");
    assert_eq!(report["served"], false, "{report}");
    assert_eq!(report["check"], "untrusted-key", "{report}");
    let message = report["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("the active release site 1 cannot be served: signed by key"));

    // `releases` marks it active and untrusted, in the same words; `tokens create` refuses in
    // them too.
    let text = stdout(&f.run(&[&"releases"]));
    let line = text.lines().find(|l| l.starts_with('*')).unwrap();
    assert!(line.contains("untrusted"), "{text}");
    assert!(text.contains(&message), "{text}");
    let o = f.run(&[&"tokens", &"create", &"--policy", &"p"]);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains(&message), "{}", stderr(&o));

    // A bundle signed by the trusted key is served at once.
    assert_ok(&f.run(&[&"import", &f.bundle_with_key(2, VERSIONS[1], Fixture::later(), &b)]));
    let (code, report) = wait_for_status(&f, "HEALTHY");
    assert_eq!((code, &report["active"]["sequence"]), (Some(0), &2.into()), "{report}");
    let url = format!("/downloads/{}", archive_path(VERSIONS[1]));
    server.wait_for(&url, &archive_bytes(VERSIONS[1]));
}

/// `serve` reads `trusted_keys` when it starts. An import under a changed list can make active a
/// release the running server cannot verify: it serves nothing then (not the release it had,
/// which `releases` no longer calls active and the import's garbage collection removed), says
/// `FAILED`, and names the restart among the fixes.
#[test]
fn a_server_that_cannot_load_the_new_active_release_serves_nothing_and_says_failed() {
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    assert_eq!(wait_for_status(&f, "HEALTHY").0, Some(0));

    let b = f.other_key("b.pub");
    f.trust(&["b.pub"]);
    assert_ok(&f.run(&[&"import", &f.bundle_with_key(2, VERSIONS[1], Fixture::later(), &b)]));
    let (code, report) = wait_for_status(&f, "FAILED");
    assert_eq!(code, Some(1), "{report}");
    assert_eq!((&report["active"]["sequence"], &report["served"]), (&2.into(), &false.into()));
    let message = report["message"].as_str().unwrap();
    assert!(message.starts_with("the active release site 2 cannot be served"), "{message}");
    assert!(message.ends_with("`serve` reads `trusted_keys` when it starts"), "{message}");
    server.wait_for_log(message);
    assert_eq!(fleet_status(&server), (503, "FAILED".into()));
    for version in [VERSIONS[0], VERSIONS[1]] {
        let url = format!("/downloads/{}", archive_path(version));
        assert_eq!(server.get(&url, &[]).0, 404, "{version}");
    }
    // The configuration's view, which a restart takes: release 2 verifies and is active.
    let text = stdout(&f.run(&[&"releases"]));
    assert!(text.lines().any(|l| l.starts_with('*') && l.contains("active")), "{text}");
    server.terminate();
    let server = Server::start(&f);
    assert_eq!(wait_for_status(&f, "HEALTHY").0, Some(0));
    let url = format!("/downloads/{}", archive_path(VERSIONS[1]));
    server.wait_for(&url, &archive_bytes(VERSIONS[1]));
}
