//! Check-in and acks as a stock Elastic Agent performs them (fleet-protocol.md §3.3, §3.4):
//! the first check-in returns the policy from the active release, an ack records it, and a
//! parked check-in is woken by an import that brings a new policy revision.

mod support;

use std::io::Write as _;

use serde_json::{Value, json};
use support::{Fixture, Server, VERSIONS, assert_ok};

struct Agent<'a> {
    server: &'a Server,
    id: String,
    key: String,
}

fn post(
    server: &Server,
    path: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let url = format!("{}{path}?", server.https.replace("127.0.0.1", "localhost"));
    let mut req = server
        .client()
        .post(&url)
        .header("User-Agent", "Elastic Agent v9.1.2")
        .header("Elastic-Api-Version", "2023-06-01")
        .header("Content-Type", "application/json");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    if let Some(key) = key {
        req = req.header("Authorization", &format!("ApiKey {key}"));
    }
    let mut resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl<'a> Agent<'a> {
    fn enroll(server: &'a Server, token: &str) -> Self {
        let body = json!({"type": "PERMANENT", "id": "", "replace_token": "", "metadata": {"local": {"host": {"hostname": "h"}}, "tags": []}});
        let (status, v) =
            post(server, "/api/fleet/agents/enroll", Some(token), &[], body.to_string().as_bytes());
        assert_eq!(status, 200, "{v}");
        Self {
            server,
            id: v["item"]["id"].as_str().unwrap().to_owned(),
            key: v["item"]["access_api_key"].as_str().unwrap().to_owned(),
        }
    }

    fn checkin(&self, body: &Value) -> (u16, Value) {
        // Agents >= 9.4 gzip check-in bodies.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body.to_string().as_bytes()).unwrap();
        post(
            self.server,
            &format!("/api/fleet/agents/{}/checkin", self.id),
            Some(&self.key),
            &[("Content-Encoding", "gzip")],
            &gz.finish().unwrap(),
        )
    }

    fn ack(&self, action_ids: &[&str]) -> (u16, Value) {
        let events: Vec<Value> = action_ids
            .iter()
            .map(|id| json!({"type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "agent_id": self.id, "action_id": id,
                             "message": "acknowledged", "timestamp": "2026-11-29T12:00:00.123456789Z"}))
            .collect();
        post(
            self.server,
            &format!("/api/fleet/agents/{}/acks", self.id),
            Some(&self.key),
            &[],
            json!({"events": events}).to_string().as_bytes(),
        )
    }
}

#[test]
fn policy_reaches_the_agent_and_a_new_revision_wakes_its_long_poll() {
    let f = Fixture::new();
    let config = std::fs::read_to_string(f.path("appliance.toml")).unwrap();
    std::fs::write(
        f.path("appliance.toml"),
        format!("{config}checkin_long_poll_seconds = 60\ncheckin_jitter_seconds = 0\n"),
    )
    .unwrap();
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let o = f.run(&[&"tokens", &"create", &"--policy", &"p", &"--json"]);
    assert_ok(&o);
    let token: Value = serde_json::from_slice(&o.stdout).unwrap();
    let server = Server::start(&f);
    server.wait_for(
        &format!("/downloads/{}", support::archive_path(VERSIONS[0])),
        &support::archive_bytes(VERSIONS[0]),
    );
    let agent = Agent::enroll(&server, token["token"].as_str().unwrap());

    // First check-in: the policy, rewritten to point at this appliance.
    let (status, v) =
        agent.checkin(&json!({"status": "online", "message": "Running", "local_metadata": {}}));
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
    let (status, v) = agent.ack(&["policy:p:1"]);
    assert_eq!((status, &v["items"]), (200, &json!([{"status": 200, "message": "OK"}])), "{v}");
    assert!(v.get("errors").is_none());
    let (status, v) = agent.ack(&["policy:p:1", "no-such-action"]);
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["errors"], true);
    assert_eq!(v["items"][1]["status"], 404);

    // Now the agent parks; a bundle with a changed policy wakes it with revision 2.
    let parked = std::thread::scope(|scope| {
        let handle =
            scope.spawn(|| agent.checkin(&json!({"status": "online", "message": "Running"})));
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(!handle.is_finished(), "the check-in should be parked");
        assert_ok(&f.run(&[&"import", &f.bundle(2, VERSIONS[1], Fixture::later())]));
        handle.join().unwrap()
    });
    assert_eq!(parked.0, 200, "{}", parked.1);
    assert_eq!(
        parked.1["actions"][0]["id"], "policy:p:2",
        "woken by the import, not by the 60 s timeout"
    );

    // Refusals with Fleet's statuses.
    let path = format!("/api/fleet/agents/{}/checkin", agent.id);
    let body = json!({"status": "online"}).to_string();
    let (status, v) = post(&server, &path, None, &[], body.as_bytes());
    assert_eq!((status, v["error"].as_str()), (401, Some("ErrNoAuthHeader")));
    let other = Agent::enroll(&server, token["token"].as_str().unwrap());
    let (status, v) = post(&server, &path, Some(&other.key), &[], body.as_bytes());
    assert_eq!((status, v["error"].as_str()), (403, Some("ErrAgentIdentity")));
    let forged = ferry_appliance::credentials::ApiKey::mint().encoded();
    let (status, v) = post(&server, &path, Some(&forged), &[], body.as_bytes());
    assert_eq!((status, v["error"].as_str()), (401, Some("ErrUnauthorized")));
    let (status, v) = agent.checkin(&json!({"status": ""}));
    assert_eq!((status, v["error"].as_str()), (400, Some("BadRequest")));
    let (status, v) = post(&server, &path, Some(&agent.key), &[], b"{not json");
    assert_eq!((status, v["error"].as_str()), (400, Some("BadRequest")));
}
