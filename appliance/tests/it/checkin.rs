//! Check-in and acks as a stock Elastic Agent performs them (fleet-protocol.md §3.3, §3.4):
//! the first check-in returns the policy from the active release, an ack records it, and a
//! parked check-in is woken by an import that brings a new policy revision.

use crate::support::agent::{Agent, request};
use crate::support::{Fixture, Server, VERSIONS, assert_ok};
use serde_json::json;

#[test]
fn policy_reaches_the_agent_and_a_new_revision_wakes_its_long_poll() {
    let f = Fixture::new();
    f.append_config("checkin_long_poll_seconds = 60\ncheckin_jitter_seconds = 0");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let agent = Agent::enroll(&server, &token);

    // First check-in: the policy, rewritten to point at this appliance.
    let reply =
        agent.checkin(json!({"status": "online", "message": "Running", "local_metadata": {}}));
    let (status, v) = (reply.status, reply.body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["action"], "checkin");
    assert_eq!(v["ack_token"], "");
    let action = &v["actions"][0];
    assert_eq!(action["id"], "policy:p:1");
    assert_eq!(action["type"], "POLICY_CHANGE");
    assert_eq!(action["agent_id"], agent.id.as_str());
    assert_eq!(action["input_type"], "");
    let policy = &action["data"]["policy"];
    assert_eq!(policy["id"], "p");
    assert_eq!(policy["revision"], 1);
    assert_eq!(policy["fleet"]["hosts"], json!(["https://localhost:8220"]));
    assert_eq!(policy["agent"]["download"]["sourceURI"], "https://localhost:8220/downloads/");
    assert_eq!(policy["outputs"]["d"]["type"], "elasticsearch");

    // The ack records revision 1; an unknown action id is a 404 item, and the batch says so.
    let reply = agent.ack(&["policy:p:1"]);
    assert_eq!(
        (reply.status, &reply.body["items"]),
        (200, &json!([{"status": 200, "message": "OK"}])),
        "{reply:?}"
    );
    assert!(reply.body.get("errors").is_none());
    let reply = agent.ack(&["policy:p:1", "no-such-action", "policy:p:1:0"]);
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.body["errors"], true);
    let statuses: Vec<u64> = reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 404, 200], "in request order; 4-part policy ids are accepted");

    // Now the agent parks; a bundle with a changed policy wakes it with revision 2.
    let parked = std::thread::scope(|scope| {
        let handle = scope.spawn(|| agent.checkin_online());
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(!handle.is_finished(), "the check-in should be parked");
        assert_ok(&f.run(&[&"import", &f.bundle(2, VERSIONS[1], Fixture::later())]));
        handle.join().unwrap()
    });
    assert_eq!(parked.status, 200, "{parked:?}");
    assert_eq!(
        parked.body["actions"][0]["id"], "policy:p:2",
        "woken by the import, not by the 60 s timeout"
    );
    // Answered by the HTTP loop after the router's layers were done with it (`net::later`),
    // it still carries the headers they add.
    assert_eq!(parked.headers["elastic-api-version"], "2023-06-01");
    assert_eq!(parked.headers["x-content-type-options"], "nosniff");

    // Refusals with Fleet's statuses.
    let path = format!("/api/fleet/agents/{}/checkin", agent.id);
    let body = json!({"status": "online"}).to_string();
    let post = |key: Option<&str>, body: &[u8]| request(&server, "POST", &path, key, &[], body);
    post(None, body.as_bytes()).assert_error(401, "ErrNoAuthHeader");
    let other = Agent::enroll(&server, &token);
    post(Some(&other.key), body.as_bytes()).assert_error(403, "ErrAgentIdentity");
    let forged = ferry_appliance::credentials::ApiKey::mint().encoded();
    post(Some(&forged), body.as_bytes()).assert_error(401, "ErrUnauthorized");
    post(Some("bm9jb2xvbg=="), body.as_bytes()).assert_error(400, "ErrMalformedToken");
    agent.checkin(json!({"status": ""})).assert_error(400, "BadRequest");
    agent.checkin(json!({"message": "no status"})).assert_error(400, "BadRequest");
    post(Some(&agent.key), b"{not json").assert_error(400, "BadRequest");
    let huge = json!({"status": "online", "message": "x".repeat(1 << 20)}).to_string();
    post(Some(&agent.key), huge.as_bytes()).assert_error(413, "ErrPayloadSizeTooLarge");
    // An unknown agent id in the path with a valid key is 403, as Fleet Server answers.
    request(
        &server,
        "POST",
        "/api/fleet/agents/nobody/checkin",
        Some(&agent.key),
        &[],
        body.as_bytes(),
    )
    .assert_error(403, "ErrAgentIdentity");
}
