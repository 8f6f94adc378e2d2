//! The audit log as an operator meets it: imports on the host, changes made through the admin
//! API and requests it refused are recorded with who made them, `audit verify` finds a broken
//! chain at its first bad line, and no record holds a secret.

use crate::support::{Fixture, Server, assert_ok, stdout};

fn records(f: &Fixture) -> Vec<serde_json::Value> {
    let out = f.run(&[&"audit", &"show", &"--json"]);
    assert_ok(&out);
    stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn admin_changes_and_refusals_are_recorded_and_the_chain_verifies() {
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &f.bundle(1, "9.1.2", Fixture::later())]));
    let server = Server::start(&f);
    let (token_id, token) = f.token("p");
    assert_ok(&f.run(&[&"tokens", &"revoke", &token_id]));
    // A caller with a stale admin token is refused, and that is recorded too.
    let token_file = f.path("data/admin.token");
    let admin_token = std::fs::read_to_string(&token_file).unwrap();
    std::fs::write(&token_file, "not-the-token").unwrap();
    assert!(!f.run(&[&"tokens", &"list"]).status.success());
    std::fs::write(&token_file, &admin_token).unwrap();
    drop(server);

    let all = records(&f);
    let events: Vec<(&str, &str)> = all
        .iter()
        .map(|r| (r["event"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .filter(|(e, _)| e.starts_with("tokens") || e.starts_with("admin"))
        .collect();
    assert_eq!(
        events,
        [("tokens.create", "ok"), ("tokens.revoke", "ok"), ("admin.denied", "refused")],
        "{all:#?}"
    );
    // The import on the host, before: who ran it and what it activated.
    let import = &all[0];
    assert_eq!(
        (import["event"].as_str(), import["outcome"].as_str()),
        (Some("import"), Some("ok"))
    );
    assert_eq!(import["actor"]["kind"], "local");
    assert_eq!(import["details"]["activated"]["sequence"], 1);
    assert_eq!(all[1]["event"], "serve.start");
    let created = all.iter().find(|r| r["event"] == "tokens.create").unwrap();
    assert_eq!(created["details"]["token_id"], token_id.as_str());
    assert_eq!(created["details"]["policy_id"], "p");
    assert_eq!(created["actor"]["kind"], "admin");
    assert_eq!(created["actor"]["uid"], rustix::process::geteuid().as_raw());
    let fingerprint = &ferry_manifests::Sha256Digest::of(admin_token.as_bytes()).to_hex()[..16];
    assert_eq!(created["actor"]["token"], fingerprint);
    // Neither the enrollment token nor the admin token is ever written.
    let log = std::fs::read_to_string(f.path("data/audit.log")).unwrap();
    assert!(!log.contains(&token) && !log.contains(admin_token.trim()), "{log}");

    let out = f.run(&[&"audit", &"verify"]);
    assert_ok(&out);
    assert!(stdout(&out).starts_with("OK: "), "{}", stdout(&out));
    // A line removed from the middle: found at the line after it.
    let lines: Vec<&str> = log.lines().collect();
    let mut cut = lines.clone();
    cut.remove(1);
    std::fs::write(f.path("data/audit.log"), cut.join("\n") + "\n").unwrap();
    let out = f.run(&[&"audit", &"verify", &"--json"]);
    assert_eq!(out.status.code(), Some(1));
    let verdict: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(verdict["problem"]["at"].as_str().unwrap().ends_with("audit.log line 2"), "{verdict}");
    assert!(verdict["problem"]["reason"].as_str().unwrap().contains("records are missing"));
}
