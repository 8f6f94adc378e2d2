//! Enrollment as a stock Elastic Agent performs it (fleet-protocol.md §2, §3.2): over real HTTPS,
//! with the agent's headers, and every refusal with Fleet Server's status and error body.

use crate::support;
use crate::support::agent::{Agent, Reply, enroll_body, request};
use crate::support::{Fixture, Server, VERSIONS, assert_ok, schema, stdout};
use serde_json::json;

fn enroll(server: &Server, token: Option<&str>, headers: &[(&str, &str)], body: &str) -> Reply {
    request(server, "POST", "/api/fleet/agents/enroll", token, headers, body.as_bytes())
}

#[test]
fn an_agent_enrolls_and_every_bad_request_gets_fleets_answer() {
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (token_id, token) = f.token("p");

    let good = enroll_body("", "web-01", "").to_string();
    let reply = enroll(&server, Some(&token), &[], &good);
    assert_eq!(reply.status, 200, "{reply:?}");
    schema::check(&reply.body, schema::ENROLL_RESPONSE);
    assert_eq!(reply.headers["elastic-api-version"], "2023-06-01");
    assert_eq!(reply.body["action"], "created");
    let item = &reply.body["item"];
    let id = item["id"].as_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID when the agent asks for none");
    assert_eq!(item["type"], "PERMANENT");
    assert_eq!(item["active"], true);
    assert_eq!(item["policy_id"], "p");
    assert_eq!(item["status"], "online");
    assert!(item["user_provided_metadata"].is_null());
    assert_eq!(
        item["local_metadata"]["elastic"]["agent"]["id"], id,
        "the agent id is written into local metadata"
    );
    assert_eq!(item["tags"], json!(["dmz", "linux"]));
    let access =
        ferry_appliance::credentials::ApiKey::decode(item["access_api_key"].as_str().unwrap())
            .unwrap();
    assert_eq!(access.id().as_str(), item["access_api_key_id"].as_str().unwrap());

    // A requested id is kept; asking again for an active agent's id is refused.
    let host7 = enroll_body("host-7", "h7", "").to_string();
    let reply = enroll(&server, Some(&token), &[], &host7);
    assert_eq!((reply.status, reply.body["item"]["id"].as_str()), (200, Some("host-7")));
    enroll(&server, Some(&token), &[], &host7).assert_error(403, "AgentNotReplaceable");

    // Credentials.
    enroll(&server, None, &[], &good).assert_error(401, "ErrNoAuthHeader");
    enroll(&server, Some("!!!"), &[], &good).assert_error(401, "ErrInvalidToken");
    let no_colon = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "nocolon");
    enroll(&server, Some(&no_colon), &[], &good).assert_error(400, "ErrMalformedToken");
    let unknown = ferry_appliance::credentials::ApiKey::mint().encoded();
    enroll(&server, Some(&unknown), &[], &good).assert_error(401, "ErrUnauthorized");
    // The credential is checked before the body is read: without one, any body is 401.
    for body in ["", "{not json", r#"{"type":"PERMANENT","metadata":null}"#] {
        enroll(&server, Some(&unknown), &[], body).assert_error(401, "ErrUnauthorized");
        enroll(&server, None, &[], body).assert_error(401, "ErrNoAuthHeader");
    }
    assert_ok(&f.run(&[&"tokens", &"revoke", &token_id]));
    enroll(&server, Some(&token), &[], &good).assert_error(401, "ErrUnauthorized");
    let o = f.run(&[&"tokens", &"list"]);
    assert!(stdout(&o).contains("revoked"), "{}", stdout(&o));
    // A token for a policy the active release does not have is refused at creation.
    let o = f.run(&[&"tokens", &"create", &"--policy", &"nope"]);
    assert!(!o.status.success());
    assert!(support::stderr(&o).contains("not in the active release"), "{}", support::stderr(&o));

    // Headers and bodies.
    let (_, token) = f.token("p");
    enroll(&server, Some(&token), &[("User-Agent", "curl/8")], &good)
        .assert_error(400, "InvalidUserAgent");
    enroll(&server, Some(&token), &[("User-Agent", "Elastic Agent v7.9.0")], &good)
        .assert_error(400, "UnsupportedVersion");
    let reply = enroll(&server, Some(&token), &[("Elastic-Api-Version", "2099-01-01")], &good);
    reply.assert_error(400, "ErrUnsupportedAPIVersion");
    assert_eq!(reply.headers["elastic-api-version"], "2023-06-01");
    enroll(&server, Some(&token), &[("Elastic-Api-Version", "v1")], &good)
        .assert_error(400, "ErrInvalidAPIVersionFormat");
    enroll(&server, Some(&token), &[], "{not json").assert_error(400, "BadRequest");
    enroll(&server, Some(&token), &[], &json!({"type": "PERMANENT"}).to_string())
        .assert_error(400, "BadRequest");
    let huge = json!({"type": "PERMANENT", "metadata": {"local": {"x": "y".repeat(600 << 10)}}})
        .to_string();
    enroll(&server, Some(&token), &[], &huge).assert_error(413, "ErrPayloadSizeTooLarge");
    // Absent Elastic-Api-Version: served, and the response names the default.
    let reply = enroll(&server, Some(&token), &[("Elastic-Api-Version", "")], &good);
    assert_eq!(
        (reply.status, reply.headers["elastic-api-version"].to_str().unwrap()),
        (200, "2023-06-01")
    );
}

#[test]
fn an_active_agent_is_replaced_only_with_its_replace_token() {
    let f = Fixture::new();
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");

    let first =
        enroll(&server, Some(&token), &[], &enroll_body("fixed", "h", "s3cret").to_string());
    assert_eq!(first.status, 200, "{first:?}");
    let old = Agent::from_reply(&server, &first);
    assert_eq!(old.checkin_online().status, 200);

    // Wrong or missing replace token: refused, the enrolled agent keeps working.
    for wrong in ["", "guess"] {
        enroll(&server, Some(&token), &[], &enroll_body("fixed", "h", wrong).to_string())
            .assert_error(403, "AgentNotReplaceable");
    }
    // Same token but another policy: refused too.
    let (_, other_policy) = f.token("q");
    enroll(&server, Some(&other_policy), &[], &enroll_body("fixed", "h", "s3cret").to_string())
        .assert_error(403, "AgentNotReplaceable");

    let second =
        enroll(&server, Some(&token), &[], &enroll_body("fixed", "h2", "s3cret").to_string());
    assert_eq!(second.status, 200, "{second:?}");
    let new = Agent::from_reply(&server, &second);
    assert_eq!(new.id, "fixed");
    assert_ne!(new.key, old.key);
    old.checkin_online().assert_error(401, "ErrUnauthorized");
    // The replacement starts over: its first check-in gets the policy again.
    let reply = new.checkin_online();
    assert_eq!(reply.body["actions"][0]["type"], "POLICY_CHANGE", "{reply:?}");
}

#[test]
fn an_enrollment_flood_gets_429s_while_other_agents_are_served() {
    let f = Fixture::new();
    f.append_config("checkin_long_poll_seconds = 1\ncheckin_jitter_seconds = 0\n[limits.enroll]\nper_second = 1\nburst = 3");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let agent = Agent::enroll(&server, &token);
    let good = enroll_body("", "web-01", "").to_string();
    let replies: Vec<Reply> = (0..20).map(|_| enroll(&server, Some(&token), &[], &good)).collect();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert!(limited.len() >= 15, "{} of 20 limited", limited.len());
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 429));
    for r in limited {
        r.assert_error(429, "RateLimit");
        let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&after), "Retry-After {after}");
    }
    // Check-ins have their own limit: the enrolled agent is served meanwhile.
    assert_eq!(agent.checkin_online().status, 200);
}

#[test]
fn a_revoked_agent_id_never_enrolls_again_and_an_unenrolled_one_does() {
    let f = Fixture::new();
    f.append_config("checkin_long_poll_seconds = 1\ncheckin_jitter_seconds = 0");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let show = |id: &str| f.run_json(&[&"agents", &"show", &id, &"--json"]);

    // A host the operator revokes (lost, compromised) knows its id and its replace token.
    let body = enroll_body("stolen", "h", "s3cret").to_string();
    assert_eq!(enroll(&server, Some(&token), &[], &body).status, 200);
    assert_ok(&f.run(&[&"unenroll", &"--revoke", &"stolen"]));
    let revoked = show("stolen");
    assert_eq!(revoked["status"], "unenrolled", "{revoked}");
    // Neither without its replace token nor with it, nor with a fresh enrollment token.
    let (_, fresh) = f.token("p");
    for (token, replace) in [(&token, ""), (&token, "s3cret"), (&fresh, "s3cret"), (&fresh, "x")] {
        let reply =
            enroll(&server, Some(token), &[], &enroll_body("stolen", "h2", replace).to_string());
        reply.assert_error(403, "AgentRevoked");
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains("stolen") && message.contains("new id"), "{message}");
    }
    assert_eq!(show("stolen"), revoked, "the stored record is unchanged");
    let logs = server.wait_for_log("enrollment of a revoked agent id refused");
    assert!(logs.contains("stolen"), "{logs}");

    // An agent that acknowledged its UNENROLL enrolls again as a new agent, as Fleet Server
    // lets it (handleEnroll.go deletes the inactive record), with no replace token.
    let reply = enroll(&server, Some(&token), &[], &enroll_body("retired", "h", "").to_string());
    let agent = Agent::from_reply(&server, &reply);
    agent.checkin_online();
    let unenroll = f.run_json(&[&"unenroll", &"retired", &"--json"]);
    let reply = agent.checkin_online();
    assert_eq!(reply.body["actions"][0]["type"], "UNENROLL", "{reply:?} {unenroll}");
    assert_eq!(agent.ack(&[reply.body["actions"][0]["id"].as_str().unwrap()]).status, 200);
    assert_eq!(show("retired")["status"], "unenrolled");
    let again = enroll(&server, Some(&token), &[], &enroll_body("retired", "h3", "").to_string());
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(show("retired")["status"], "enrolled", "a new agent, not yet checked in");
}

#[test]
fn wrong_replace_tokens_lock_out_their_agent_id_and_their_enrollment_token() {
    let f = Fixture::new();
    f.append_config("[limits.replace_per_token]\nper_second = 0.001\nburst = 7");
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    let body = |id: &str, replace: &str| enroll_body(id, "h", replace).to_string();
    let first = enroll(&server, Some(&token), &[], &body("a", "s3cret"));
    let a = Agent::from_reply(&server, &first);
    assert_eq!(enroll(&server, Some(&token), &[], &body("b", "0ther")).status, 200);

    // Five wrong guesses at agent a, then its id refuses replace attempts, the right one too.
    for guess in ["1", "2", "3", "4", "5"] {
        enroll(&server, Some(&token), &[], &body("a", guess))
            .assert_error(403, "AgentNotReplaceable");
    }
    for guess in ["6", "s3cret"] {
        let reply = enroll(&server, Some(&token), &[], &body("a", guess));
        reply.assert_error(429, "AgentReplaceLocked");
        assert!(reply.body["message"].as_str().unwrap().contains("agent a"), "{reply:?}");
        let retry: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=300).contains(&retry), "Retry-After {retry}");
    }
    assert_eq!(a.checkin_online().status, 200, "the enrolled agent keeps working");
    let logs = server.wait_for_log("too many wrong replace tokens");
    assert!(logs.contains("wrong replace token") && logs.contains("agent=a"), "{logs}");

    // Seven wrong guesses with one enrollment token (burst 7), whatever the ids: the token is
    // refused further guesses; another token replaces b with its replace token.
    for guess in ["1", "2"] {
        enroll(&server, Some(&token), &[], &body("b", guess))
            .assert_error(403, "AgentNotReplaceable");
    }
    let reply = enroll(&server, Some(&token), &[], &body("b", "3"));
    reply.assert_error(429, "ReplaceTokenRateLimit");
    assert!(reply.headers.contains_key("retry-after"), "{reply:?}");
    let (_, other) = f.token("p");
    let replaced = enroll(&server, Some(&other), &[], &body("b", "0ther"));
    assert_eq!(replaced.status, 200, "{replaced:?}");
}
