//! Enrollment as a stock Elastic Agent performs it (fleet-protocol.md §2, §3.2): over real HTTPS,
//! with the agent's headers, and every refusal with Fleet Server's status and error body.

mod support;

use serde_json::{Value, json};
use support::{Fixture, Server, assert_ok, stdout};

const AGENT_UA: &str = "Elastic Agent v9.1.2";

fn enroll_body(id: &str) -> Value {
    json!({
        "type": "PERMANENT",
        "id": id,
        "replace_token": "",
        "metadata": {
            "local": { "elastic": { "agent": { "id": "placeholder", "version": "9.1.2" } },
                       "host": { "hostname": "web-01" } },
            "user_provided": {},
            "tags": ["linux", "dmz", "linux"]
        }
    })
}

/// POSTs to the enroll route with the agent's headers, overridden by `headers`.
fn enroll(
    server: &Server,
    auth: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, ureq::http::HeaderMap, Value) {
    let url =
        format!("{}/api/fleet/agents/enroll?", server.https.replace("127.0.0.1", "localhost"));
    let mut req = server.client().post(&url);
    let mut defaults = vec![
        ("User-Agent", AGENT_UA),
        ("Elastic-Api-Version", "2023-06-01"),
        ("Content-Type", "application/json"),
        ("kbn-xsrf", "1"),
    ];
    for (k, v) in headers {
        defaults.retain(|(dk, _)| !dk.eq_ignore_ascii_case(k));
        defaults.push((k, v));
    }
    for (k, v) in defaults {
        if !v.is_empty() {
            req = req.header(k, v);
        }
    }
    let auth_value;
    if let Some(token) = auth {
        auth_value = format!("ApiKey {token}");
        req = req.header("Authorization", &auth_value);
    }
    let mut resp = req.send(body.as_bytes()).unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn new_token(f: &Fixture, policy: &str) -> (String, String) {
    let o = f.run(&[&"tokens", &"create", &"--policy", &policy, &"--json"]);
    assert_ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    (v["id"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned())
}

#[track_caller]
fn assert_fleet_error(got: &(u16, ureq::http::HeaderMap, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.2);
    assert_eq!(got.2["statusCode"], status, "{}", got.2);
    assert_eq!(got.2["error"], code, "{}", got.2);
    assert_eq!(got.1["content-type"], "application/json; charset=utf-8");
}

#[test]
fn an_agent_enrolls_and_every_bad_request_gets_fleets_answer() {
    let f = Fixture::new();
    let (token_id, token) = new_token(&f, "linux-servers");
    let server = Server::start(&f);

    let (status, headers, body) = enroll(&server, Some(&token), &[], &enroll_body("").to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["elastic-api-version"], "2023-06-01");
    assert_eq!(body["action"], "created");
    let item = &body["item"];
    let id = item["id"].as_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID when the agent asks for none");
    assert_eq!(item["type"], "PERMANENT");
    assert_eq!(item["active"], true);
    assert_eq!(item["policy_id"], "linux-servers");
    assert_eq!(item["status"], "online");
    assert!(item["user_provided_metadata"].is_null());
    assert_eq!(
        item["local_metadata"]["elastic"]["agent"]["id"], id,
        "the agent id is written into local metadata"
    );
    assert_eq!(item["tags"], json!(["dmz", "linux"]));
    time::OffsetDateTime::parse(
        item["enrolled_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let access =
        ferry_appliance::credentials::ApiKey::decode(item["access_api_key"].as_str().unwrap())
            .unwrap();
    assert_eq!(access.id().as_str(), item["access_api_key_id"].as_str().unwrap());

    // A requested id is kept; asking again for an active agent's id is refused.
    let (status, _, body) = enroll(&server, Some(&token), &[], &enroll_body("host-7").to_string());
    assert_eq!((status, body["item"]["id"].as_str()), (200, Some("host-7")));
    assert_fleet_error(
        &enroll(&server, Some(&token), &[], &enroll_body("host-7").to_string()),
        403,
        "AgentNotReplaceable",
    );

    // Credentials.
    let good = enroll_body("").to_string();
    assert_fleet_error(&enroll(&server, None, &[], &good), 401, "ErrNoAuthHeader");
    assert_fleet_error(&enroll(&server, Some("!!!"), &[], &good), 401, "ErrInvalidToken");
    let no_colon = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "nocolon");
    assert_fleet_error(&enroll(&server, Some(&no_colon), &[], &good), 400, "ErrMalformedToken");
    let unknown = ferry_appliance::credentials::ApiKey::mint().encoded();
    assert_fleet_error(&enroll(&server, Some(&unknown), &[], &good), 401, "ErrUnauthorized");
    assert_ok(&f.run(&[&"tokens", &"revoke", &token_id]));
    assert_fleet_error(&enroll(&server, Some(&token), &[], &good), 401, "ErrUnauthorized");
    let o = f.run(&[&"tokens", &"list"]);
    assert!(stdout(&o).contains("revoked"), "{}", stdout(&o));

    // Headers and bodies.
    let (_, token) = new_token(&f, "linux-servers");
    assert_fleet_error(
        &enroll(&server, Some(&token), &[("User-Agent", "curl/8")], &good),
        400,
        "InvalidUserAgent",
    );
    assert_fleet_error(
        &enroll(&server, Some(&token), &[("User-Agent", "Elastic Agent v7.9.0")], &good),
        400,
        "UnsupportedVersion",
    );
    let got = enroll(&server, Some(&token), &[("Elastic-Api-Version", "2099-01-01")], &good);
    assert_fleet_error(&got, 400, "ErrUnsupportedAPIVersion");
    assert_eq!(got.1["elastic-api-version"], "2023-06-01");
    assert_fleet_error(
        &enroll(&server, Some(&token), &[("Elastic-Api-Version", "v1")], &good),
        400,
        "ErrInvalidAPIVersionFormat",
    );
    assert_fleet_error(&enroll(&server, Some(&token), &[], "{not json"), 400, "BadRequest");
    assert_fleet_error(
        &enroll(&server, Some(&token), &[], &json!({"type": "PERMANENT"}).to_string()),
        400,
        "BadRequest",
    );
    let huge = json!({"type": "PERMANENT", "metadata": {"local": {"x": "y".repeat(600 << 10)}}})
        .to_string();
    let got = enroll(&server, Some(&token), &[], &huge);
    assert!(got.0 == 400 || got.0 == 413, "oversized body: {}", got.0);
    // Absent Elastic-Api-Version: served, and the response names the default.
    let (status, headers, _) = enroll(&server, Some(&token), &[("Elastic-Api-Version", "")], &good);
    assert_eq!((status, headers["elastic-api-version"].to_str().unwrap()), (200, "2023-06-01"));
}
