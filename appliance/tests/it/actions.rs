//! Actions from the admin CLI to agents (fleet-protocol.md §4, §5): an upgrade that a parked
//! agent receives at once and downloads from the mirror with checksum and PGP checks; delivery
//! order, the ack_token cursor, expiry and cancel; reassignment; unenrollment; audit/unenroll;
//! and a restart in the middle that loses nothing.

use std::time::Duration;

use crate::support;
use crate::support::agent::Agent;
use crate::support::{Fixture, Server, VERSIONS, assert_ok, stdout};
use serde_json::{Value, json};

/// An imported release with agent `version`, a running server, and one enrolled agent that
/// has taken and acknowledged its policy.
fn site(f: &Fixture, version: &str) -> (Server, String) {
    f.append_config("checkin_long_poll_seconds = 2\ncheckin_jitter_seconds = 0");
    assert_ok(&f.run(&[&"import", &f.bundle(1, version, Fixture::later())]));
    let server = Server::start(f);
    let (_, token) = f.token("p");
    (server, token)
}

fn enrolled<'a>(server: &'a Server, token: &str) -> Agent<'a> {
    enrolled_with_policy(server, token).0
}

/// An enrolled agent and the policy it took.
fn enrolled_with_policy<'a>(server: &'a Server, token: &str) -> (Agent<'a>, Value) {
    let agent = Agent::enroll(server, token);
    let reply = agent.checkin_online();
    let policy =
        reply.body["actions"][0]["id"].as_str().expect("the first check-in brings the policy");
    assert_eq!(agent.ack(&[policy]).status, 200);
    (agent, reply.body["actions"][0]["data"]["policy"].clone())
}

fn action_types(reply: &support::agent::Reply) -> Vec<String> {
    reply.body["actions"]
        .as_array()
        .map(|a| a.iter().map(|x| x["type"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Runs a CLI action command with `--json` and returns the action id.
fn act(f: &Fixture, args: &[&str]) -> String {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
    all.push(&"--json");
    let out = f.run_json(&all);
    out["action_id"].as_str().unwrap().to_owned()
}

fn show(f: &Fixture, id: &str) -> Value {
    f.run_json(&[&"agents", &"show", &id, &"--json"])
}

#[test]
fn an_upgrade_reaches_a_parked_agent_which_fetches_and_verifies_it_from_the_mirror() {
    let f = Fixture::new();
    let target = VERSIONS[1];
    let (server, token) = site(&f, target);
    let (agent, policy) = enrolled_with_policy(&server, &token);
    // The agent's downloader trusts only the CA the policy names (agent.download.ssl), never
    // the one it enrolled with: quick-start mode delivers its own.
    let cas = policy["agent"]["download"]["ssl"]["certificate_authorities"].as_array().unwrap();
    assert_eq!(cas.len(), 1);
    assert_eq!(cas[0].as_str().unwrap(), std::fs::read_to_string(&server.ca).unwrap());
    let downloader = support::client_trusting(cas[0].as_str().unwrap().as_bytes());

    // The agent parks; the upgrade wakes it (the 2 s hold would otherwise end it empty).
    let (reply, action_id) = std::thread::scope(|scope| {
        let parked = scope.spawn(|| agent.checkin_online());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!parked.is_finished(), "the check-in should be parked");
        let id = act(&f, &["upgrade", "--version", target, &agent.id]);
        (parked.join().unwrap(), id)
    });
    assert_eq!(reply.status, 200, "{reply:?}");
    let action = &reply.body["actions"][0];
    assert_eq!(action["type"], "UPGRADE", "{reply:?}");
    assert_eq!(action["id"], action_id.as_str());
    assert_eq!(action["agent_id"], agent.id.as_str());
    assert_eq!(action["data"]["version"], target);
    assert_eq!(action["data"]["source_uri"], "https://localhost:8220/downloads/");
    assert_eq!(reply.body["ack_token"], action_id.as_str(), "the token names the last action");

    // Download as the agent does: archive, .sha512, .asc from source_uri (this test's server
    // stands in for the public URL), and the PGP key from the Fleet URL.
    let base = server.https.replace("127.0.0.1", "localhost");
    let source =
        action["data"]["source_uri"].as_str().unwrap().replace("https://localhost:8220", &base);
    let name = format!("elastic-agent-{target}-linux-x86_64.tar.gz");
    let fetch = |url: &str| {
        let mut resp =
            downloader.get(url).header("User-Agent", "Beat elastic-agent v9.1.2").call().unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        assert!(
            resp.headers().get("content-encoding").is_none(),
            "{url}: archives are opaque bytes"
        );
        resp.body_mut().with_config().limit(64 << 20).read_to_vec().unwrap()
    };
    let archive = fetch(&format!("{source}beats/elastic-agent/{name}"));
    let sha512 =
        String::from_utf8(fetch(&format!("{source}beats/elastic-agent/{name}.sha512"))).unwrap();
    let asc = String::from_utf8(fetch(&format!("{source}beats/elastic-agent/{name}.asc"))).unwrap();
    let key =
        String::from_utf8(fetch(&format!("{base}/api/agents/upgrades/{target}/pgp-public-key")))
            .unwrap();
    let digest = ferry_artifacts::Sha512Digest::of_reader(&archive[..]).unwrap();
    ferry_artifacts::check_sidecar(&sha512, "sidecar", &name, &digest).unwrap();
    let keyring = ferry_artifacts::Keyring::from_armored(&key, "served key").unwrap();
    keyring.verify(&asc, "asc", &name, &archive[..]).unwrap();

    // Progress reports; the token keeps the action from coming back.
    let details = json!({"target_version": target, "state": "UPG_DOWNLOADING", "action_id": action_id,
                         "metadata": {"download_percent": 41.5, "download_rate": "3.1MBps"}});
    let reply = agent
        .checkin(json!({"status": "online", "message": "Upgrading", "upgrade_details": details}));
    assert_eq!((reply.status, action_types(&reply)), (200, vec![]), "{reply:?}");
    let shown = show(&f, &agent.id);
    assert_eq!(
        (shown["status"].as_str(), shown["upgrade_state"].as_str()),
        (Some("updating"), Some("UPG_DOWNLOADING"))
    );
    let listed = stdout(&f.run(&[&"agents", &"list"]));
    assert!(listed.contains(&format!("downloading {target} 42%")), "{listed}");

    // The new version acks from its upgrade marker, watches, then stops sending details.
    agent.set_version(target);
    assert_eq!(agent.ack(&[&action_id]).status, 200);
    let watching = json!({"target_version": target, "state": "UPG_WATCHING", "metadata": {}});
    agent.checkin(json!({"status": "online", "upgrade_details": watching}));
    assert_eq!(show(&f, &agent.id)["upgrade_state"], "UPG_WATCHING");
    // Odd metadata never fails a check-in.
    let odd = json!({"target_version": target, "state": "UPG_WATCHING", "metadata": {"download_rate": "+Inf bps", "scheduled_at": 5}});
    assert_eq!(agent.checkin(json!({"status": "online", "upgrade_details": odd})).status, 200);
    agent.checkin_online();
    let shown = show(&f, &agent.id);
    assert_eq!(shown["version"], target);
    assert_eq!(shown["upgrade_state"], "UPG_COMPLETED");
    assert!(shown["upgraded_at"].is_string());
    assert_eq!(shown["status"], "online");
    let acked = f.run_json(&[&"actions", &"show", &action_id, &"--json"]);
    assert_eq!(acked["agents"][0]["acknowledged"], true);

    // Without its token the agent falls back to the stored cursor: still no re-delivery.
    agent.forget_ack_token();
    assert!(action_types(&agent.checkin_online()).is_empty());

    // A version the release does not carry is refused before anything is queued.
    let o = f.run(&[&"upgrade", &"--version", &"9.9.9", &agent.id]);
    assert!(!o.status.success());
    assert!(support::stderr(&o).contains("no Elastic Agent 9.9.9"), "{}", support::stderr(&o));
}

#[test]
fn actions_come_in_order_once_expired_and_cancelled_ones_never_and_a_restart_loses_nothing() {
    let f = Fixture::new();
    let (server, token) = site(&f, VERSIONS[1]);
    let agent = enrolled(&server, &token);
    let other = enrolled(&server, &token);

    let settings = act(&f, &["settings", "--log-level", "debug", &agent.id]);
    let diagnostics = act(&f, &["diagnostics", "request", &agent.id, "--metric", "CPU"]);
    act(&f, &["settings", "--log-level", "error", &agent.id, "--expires-in-days", "0"]);
    let upgrade = act(
        &f,
        &[
            "upgrade",
            "--version",
            VERSIONS[1],
            "--policy",
            "p",
            "--start-time",
            "2099-01-01T00:00:00+02:00",
        ],
    );
    let cancel = act(&f, &["actions", "cancel", &upgrade]);

    let reply = agent.checkin_online();
    assert_eq!(action_types(&reply), ["SETTINGS", "REQUEST_DIAGNOSTICS", "CANCEL"], "{reply:?}");
    let actions = reply.body["actions"].as_array().unwrap();
    assert_eq!(actions[0]["id"], settings.as_str());
    assert_eq!(actions[0]["data"], json!({"log_level": "debug"}));
    assert_eq!(actions[1]["id"], diagnostics.as_str());
    assert_eq!(actions[1]["data"]["additional_metrics"], json!(["CPU"]));
    assert_eq!(actions[2]["id"], cancel.as_str());
    assert_eq!(actions[2]["data"], json!({"target_id": upgrade}));
    assert_eq!(reply.body["ack_token"], cancel.as_str());
    // The other agent of the policy got the cancel too, and nothing else.
    assert_eq!(action_types(&other.checkin_online()), ["CANCEL"]);
    // A scheduled upgrade carries its start time (in UTC) and expiration.
    act(
        &f,
        &[
            "upgrade",
            "--version",
            VERSIONS[1],
            &other.id,
            "--start-time",
            "2099-01-01T00:00:00+02:00",
        ],
    );
    let reply = other.checkin_online();
    assert_eq!(reply.body["actions"][0]["start_time"], "2098-12-31T22:00:00Z", "{reply:?}");
    assert!(reply.body["actions"][0]["expiration"].as_str().unwrap() > "2099");

    // Delivered once: the token moves the cursor past them.
    assert!(action_types(&agent.checkin_online()).is_empty());
    let reply = agent.ack(&[&settings, "policy:p:1", "never-existed"]);
    let statuses: Vec<u64> = reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_u64().unwrap())
        .collect();
    assert_eq!((reply.status, statuses), (404, vec![200, 200, 404]));

    // A restart in the middle: kill the server with an action queued and an ack recorded.
    let later = act(&f, &["settings", "--log-level", "info", &agent.id]);
    server.kill();
    let server = Server::start(&f);
    let agent = agent.on(&server);
    let reply = agent.checkin_online();
    assert_eq!(action_types(&reply), ["SETTINGS"], "{reply:?}");
    assert_eq!(reply.body["actions"][0]["id"], later.as_str());
    agent.forget_ack_token();
    assert_eq!(
        action_types(&agent.checkin_online()),
        ["SETTINGS"],
        "without a token, the cursor written before the restart applies"
    );
    let acked = f.run_json(&[&"actions", &"show", &settings, &"--json"]);
    assert_eq!(acked["agents"][0]["acknowledged"], true, "the ack survived the restart");
    let tokens = f.run_json(&[&"tokens", &"list", &"--json"]);
    assert_eq!(tokens.as_array().unwrap().len(), 1);
    assert_eq!(f.run_json(&[&"agents", &"list", &"--json"]).as_array().unwrap().len(), 2);
}

#[test]
fn reassign_unenroll_revoke_and_audit() {
    let f = Fixture::new();
    let (server, token) = site(&f, VERSIONS[1]);
    let a = enrolled(&server, &token);
    let b = enrolled(&server, &token);

    // Reassign: the action, then the new policy on the next check-in.
    act(&f, &["reassign", &a.id, "--to", "q"]);
    let reply = a.checkin_online();
    assert_eq!(action_types(&reply), ["POLICY_REASSIGN"]);
    assert_eq!(reply.body["actions"][0]["data"], json!({"policy_id": "q"}));
    let reply = a.checkin_online();
    let change = &reply.body["actions"][0];
    assert_eq!(
        (change["type"].as_str(), change["id"].as_str()),
        (Some("POLICY_CHANGE"), Some("policy:q:1")),
        "{reply:?}"
    );
    assert_eq!(change["data"]["policy"]["outputs"]["d"]["type"], "logstash");
    // A 9.2+ agent reports what it runs instead of acking: nothing more to deliver.
    let reply =
        a.checkin(json!({"status": "online", "agent_policy_id": "q", "policy_revision_idx": 1}));
    assert!(action_types(&reply).is_empty(), "{reply:?}");
    // Reporting a revision the appliance never issued gets the policy again.
    let reply =
        a.checkin(json!({"status": "online", "agent_policy_id": "q", "policy_revision_idx": 7}));
    assert_eq!(reply.body["actions"][0]["id"], "policy:q:1");
    let o = f.run(&[&"reassign", &a.id, &"--to", &"missing"]);
    assert!(!o.status.success() && support::stderr(&o).contains("not in the active release"));

    // audit/unenroll: recorded until the next check-in; bad reasons and conflicts refused.
    let audit = |agent: &Agent<'_>, reason: &str| {
        agent.send(
            "POST",
            &format!("/api/fleet/agents/{}/audit/unenroll", agent.id),
            &[],
            json!({"reason": reason, "timestamp": "2026-11-29T13:00:00+01:00"})
                .to_string()
                .as_bytes(),
        )
    };
    let reply = audit(&b, "orphaned");
    assert_eq!((reply.status, reply.raw.len()), (200, 0));
    assert_eq!(show(&f, &b.id)["audit_unenroll_reason"], "orphaned");
    audit(&b, "uninstall").assert_error(409, "ErrAuditReasonConflict");
    audit(&b, "bored").assert_error(400, "BadRequest");
    b.checkin_online();
    assert!(show(&f, &b.id)["audit_unenroll_reason"].is_null());

    // Unenroll: delivered with null data; the ack revokes the key.
    act(&f, &["unenroll", &b.id]);
    let reply = b.checkin_online();
    assert_eq!(action_types(&reply), ["UNENROLL"]);
    assert!(reply.body["actions"][0]["data"].is_null());
    let id = reply.body["actions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(b.ack(&[&id]).status, 200);
    b.checkin_online().assert_error(401, "ErrAgentInactive");
    assert_eq!(show(&f, &b.id)["status"], "unenrolled");

    // Revoke: at once, no ack needed.
    let o = f.run(&[&"unenroll", &"--revoke", &a.id]);
    assert_ok(&o);
    a.checkin_online().assert_error(401, "ErrAgentInactive");
    a.ack(&["policy:q:1"]).assert_error(401, "ErrAgentInactive");
    // Nothing is left to act on.
    let o = f.run(&[&"settings", &"--log-level", &"debug", &a.id]);
    assert!(!o.status.success() && support::stderr(&o).contains("no active agent"));
}

/// The admin commands' exit codes: 1 when the appliance refuses the request (an unknown policy,
/// agent, action or upload, a version the release does not carry), 2 when it cannot be asked
/// (no server, a wrong admin token).
#[test]
fn admin_refusals_exit_1_and_an_unreachable_server_exits_2() {
    let f = Fixture::new();
    let o = f.run(&[&"agents", &"list"]);
    assert_eq!(o.status.code(), Some(2), "no server yet: {}", support::stderr(&o));
    let (_server, _) = site(&f, VERSIONS[1]);
    assert_ok(&f.run(&[&"agents", &"list"]));
    let cases: [(&[&str], &str); 12] = [
        (&["tokens", "create", "--policy", "nosuch"], "not in the active release"),
        (&["tokens", "revoke", "nosuch"], "nosuch"),
        (&["agents", "show", "nosuch"], "no agent nosuch"),
        (&["upgrade", "--version", "9.9.9", "--policy", "p"], "9.9.9"),
        (&["unenroll", "nosuch"], "nosuch"),
        (&["unenroll", "--revoke", "nosuch"], "nosuch"),
        (&["reassign", "nosuch", "--to", "p"], "nosuch"),
        (&["settings", "--log-level", "debug", "nosuch"], "nosuch"),
        (&["diagnostics", "request", "nosuch"], "nosuch"),
        (&["diagnostics", "get", "nosuch"], "no upload nosuch"),
        (&["actions", "show", "nosuch"], "no action nosuch"),
        (&["actions", "cancel", "nosuch"], "no action nosuch"),
    ];
    for (command, says) in cases {
        let args: Vec<&dyn AsRef<std::ffi::OsStr>> = command.iter().map(|a| a as _).collect();
        let o = f.run(&args);
        let err = support::stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{command:?}: {err}");
        assert!(err.contains("the appliance refused") && err.contains(says), "{command:?}: {err}");
    }
    std::fs::write(f.path("data/admin.token"), "wrong").unwrap();
    let o = f.run(&[&"agents", &"list"]);
    assert_eq!(o.status.code(), Some(2), "{}", support::stderr(&o));
    assert!(support::stderr(&o).contains("admin token"), "{}", support::stderr(&o));
}

/// An Independent Agent Release carries build metadata in its version everywhere: the archive's
/// name, the UPGRADE action, the new agent's User-Agent. The upgrade completes when the agent
/// reports exactly that version.
#[test]
fn an_independent_release_with_build_metadata_is_upgraded_to() {
    let f = Fixture::new();
    let target = "8.14.1+build202406201002";
    let (server, token) = site(&f, target);
    let agent = Agent::enroll_as(&server, &token, "8.14.0");
    let reply = agent.checkin_online();
    let policy = reply.body["actions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(agent.ack(&[&policy]).status, 200);

    let action_id = act(&f, &["upgrade", "--version", target, &agent.id]);
    let reply = agent.checkin_online();
    assert_eq!(reply.body["actions"][0]["type"], "UPGRADE", "{reply:?}");
    assert_eq!(reply.body["actions"][0]["data"]["version"], target);
    // The names the agent builds keep the `+`; the PGP key is asked for by X.Y.Z.
    let name = format!("elastic-agent-{target}-linux-x86_64.tar.gz");
    for suffix in ["", ".sha512", ".asc"] {
        let (status, _, _) =
            server.get(&format!("/downloads/beats/elastic-agent/{name}{suffix}"), &[]);
        assert_eq!(status, 200, "{name}{suffix}");
    }
    let (status, _, _) = server.get("/api/agents/upgrades/8.14.1/pgp-public-key", &[]);
    assert_eq!(status, 200);
    assert_eq!(show(&f, &agent.id)["upgrade_state"], "UPG_REQUESTED");

    // The new agent names its version with the build metadata; 8.14 sends no details.
    agent.set_version(target);
    assert_eq!(agent.ack(&[&action_id]).status, 200);
    agent.checkin_online();
    let shown = show(&f, &agent.id);
    assert_eq!(
        (shown["version"].as_str(), shown["upgrade_state"].as_str()),
        (Some(target), Some("UPG_COMPLETED"))
    );
}
