//! The `ferry-wire` corpus replayed against the appliance: every request shape of every agent
//! era from 8.6 to main, byte for byte as elastic-agent's Go code sends it (`"tags":null`,
//! `"components":null`, string download rates, `+build` versions, gzip from 9.4), gets the
//! status Fleet Server gives it, and what it says is recorded.

use std::collections::BTreeSet;

use crate::support;
use crate::support::agent::{Agent, Reply, send_wire};
use crate::support::{Fixture, Server, VERSIONS, assert_ok};
use ferry_wire::{Kind, Vars};
use serde_json::{Value, json};
use sha2::Digest as _;

/// The versions that first send a sample's shape (an era may have several, for changes
/// backported to older lines); for the independent release sample, a version with build
/// metadata.
fn versions_of(sample: &ferry_wire::Sample) -> Vec<String> {
    match sample.name {
        "enroll-8.14-build" => vec!["8.14.1+build202406201002".into()],
        _ => sample.first_versions().map(ToString::to_string).collect(),
    }
}

fn site() -> (Fixture, Server, String) {
    let f = Fixture::new();
    f.append_config(
        "checkin_long_poll_seconds = 1\ncheckin_jitter_seconds = 0\n\
         [limits.upload_begin]\nburst = 20\n[limits.enroll]\nburst = 50",
    );
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(&f);
    let (_, token) = f.token("p");
    (f, server, token)
}

#[track_caller]
fn expect(sample: &ferry_wire::Sample, reply: &Reply) {
    assert_eq!(reply.status, sample.expect, "{}: {reply:?}", sample.name);
}

#[test]
fn every_era_of_the_agent_is_answered_as_fleet_server_answers_it() {
    let (f, server, token) = site();
    let mut replayed = BTreeSet::new();
    let mut versions: Vec<String> =
        ferry_wire::corpus().iter().filter(|s| s.variant.is_none()).flat_map(versions_of).collect();
    versions.sort();
    versions.dedup();
    for version in &versions {
        // Enrollment, with the era's own body: tags as the agent sends them come back cleaned.
        let sample = ferry_wire::for_agent(Kind::Enroll, version);
        let request = support::agent::enroll_request(&token, version, "Web-01");
        let reply = send_wire(&server, &request);
        expect(sample, &reply);
        let sent: Value = serde_json::from_str(&request.json).unwrap();
        let tags = sent["metadata"]["tags"].as_array().cloned().unwrap_or_default();
        assert_eq!(reply.body["item"]["tags"], json!(tags), "{}", sample.name);
        replayed.insert(sample.name);
        let agent = Agent::from_reply(&server, &reply);
        agent.set_version(version);

        // The first check-in brings the policy; the era's ack takes it.
        let sample = ferry_wire::for_agent(Kind::Checkin, version);
        let reply = agent.checkin_online();
        expect(sample, &reply);
        replayed.insert(sample.name);
        let policy = reply.body["actions"][0]["id"].as_str().expect("a policy").to_owned();
        let sample = ferry_wire::for_agent(Kind::Ack, version);
        let reply = agent.ack(&[&policy]);
        expect(sample, &reply);
        assert_eq!(reply.body["items"][0]["status"], 200, "{}: {reply:?}", sample.name);
        replayed.insert(sample.name);

        // Agents from 8.12 report an upgrade's progress in the form of their era; later ones
        // also say which policy revision they run.
        let revision = policy.rsplit(':').next().unwrap().to_owned();
        let mut extra = vec![("policy_id", "p".to_owned()), ("policy_revision", revision)];
        if ferry_wire::for_agent(Kind::Checkin, version).era >= semver::Version::new(8, 12, 0) {
            let progress = ferry_wire::download_progress(version, 0.42, 123_456.0);
            extra.push((
                "upgrade_details",
                ferry_wire::upgrade_details("9.9.9", "UPG_DOWNLOADING", "", &progress),
            ));
        }
        let reply = agent.checkin_wire(&extra);
        expect(ferry_wire::for_agent(Kind::Checkin, version), &reply);
        assert!(reply.body["actions"].as_array().is_none_or(Vec::is_empty), "{reply:?}");

        // `elastic-agent uninstall` tells the server (8.16+).
        let sample = ferry_wire::for_agent(Kind::AuditUnenroll, version);
        if semver::Version::parse(version).unwrap() >= sample.era {
            let reply = send_wire(&server, &sample.render(&agent.vars()));
            expect(sample, &reply);
            replayed.insert(sample.name);
        }
    }

    // What the agents said is what the appliance shows, versions spelled as they sent them.
    let agents = f.run_json(&[&"agents", &"list", &"--json"]);
    let shown: BTreeSet<String> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["version"].as_str().unwrap().to_owned())
        .collect();
    assert!(shown.contains("8.14.1+build202406201002"), "{shown:?}");
    assert!(shown.contains("8.6.0"), "{shown:?}");

    replayed.extend(variants(&f, &server, &token));
    let every: BTreeSet<&str> = ferry_wire::corpus().iter().map(|s| s.name).collect();
    assert_eq!(replayed, every, "every corpus sample is replayed");
}

/// The shapes sent only in one situation: a migration's re-enrollment and its audit call, and
/// a diagnostics upload. Returns the samples replayed.
fn variants(f: &Fixture, server: &Server, token: &str) -> Vec<&'static str> {
    // A 9.2 agent migrating here keeps its id with a replace token, `user_provided` and
    // `tags` both null; sent again it replaces itself.
    let migrate = ferry_wire::variant(Kind::Enroll, "migrate");
    let vars = Vars::new()
        .set("version", "9.2.0")
        .set("enrollment_token", token)
        .set("hostname", "Db-02")
        .set("agent_id", "5b7e0c9e-8f2d-4c1b-a3e5-0d9c8b7a6f54")
        .set("replace_token", "kept from the old cluster");
    let first = send_wire(server, &migrate.render(&vars));
    expect(migrate, &first);
    assert_eq!(first.body["item"]["id"], "5b7e0c9e-8f2d-4c1b-a3e5-0d9c8b7a6f54");
    assert_eq!(first.body["item"]["tags"], json!([]));
    let again = send_wire(server, &migrate.render(&vars));
    expect(migrate, &again);
    let agent = Agent::from_reply(server, &again);
    agent.set_version("9.2.0");
    // An agent with a failing input says DEGRADED, in upper case.
    let degraded = ferry_wire::variant(Kind::Checkin, "degraded");
    let reply = send_wire(server, &degraded.render(&agent.vars()));
    expect(degraded, &reply);
    let shown = f.run_json(&[&"agents", &"show", &agent.id, &"--json"]);
    assert_eq!(shown["status"], "degraded", "{shown}");
    let audit = ferry_wire::variant(Kind::AuditUnenroll, "migrated");
    expect(audit, &send_wire(server, &audit.render(&agent.vars())));

    // A diagnostics bundle from an 8.7-shaped agent, begin to finish, acked with its upload id.
    let agent = Agent::enroll_as(server, token, "8.7.1");
    let policy = agent.checkin_online().body["actions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(agent.ack(&[&policy]).status, 200);
    let request = f.run_json(&[&"diagnostics", &"request", &agent.id, &"--json"]);
    let action = request["action_id"].as_str().unwrap().to_owned();
    assert_eq!(agent.checkin_online().body["actions"][0]["type"], "REQUEST_DIAGNOSTICS");
    let file: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let begin = ferry_wire::for_agent(Kind::UploadBegin, &agent.version());
    let vars = agent.vars().set("action_id", &action).set("size", file.len().to_string());
    let reply = send_wire(server, &begin.render(&vars));
    expect(begin, &reply);
    let upload = reply.body["upload_id"].as_str().unwrap().to_owned();
    let digest = sha2::Sha256::digest(&file);
    // Chunks go out with the client's JSON content type still set (uploader.go).
    let reply = agent.send(
        "PUT",
        &format!("/api/fleet/uploads/{upload}/0"),
        &[("X-Chunk-Sha2", &hex::encode(digest))],
        &file,
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let finish = ferry_wire::for_agent(Kind::UploadFinish, &agent.version());
    let transit = hex::encode(sha2::Sha256::digest(digest));
    let reply = send_wire(
        server,
        &finish.render(&agent.vars().set("upload_id", &upload).set("transit_sha256", transit)),
    );
    expect(finish, &reply);
    let ack = ferry_wire::for_agent(Kind::Ack, &agent.version());
    let vars = agent
        .vars()
        .set("action_id", &action)
        .set("action_type", "REQUEST_DIAGNOSTICS")
        .set("data", json!({ "upload_id": upload }).to_string());
    let reply = send_wire(server, &ack.render(&vars));
    assert_eq!(reply.body["items"][0]["status"], 200, "{reply:?}");
    let uploads = f.run_json(&[&"diagnostics", &"list", &"--json"]);
    assert_eq!(uploads[0]["status"], "READY", "{uploads}");
    vec![migrate.name, degraded.name, audit.name, begin.name, finish.name]
}

/// A `null` where Fleet Server refuses one is still refused, and nothing is stored for it.
#[test]
fn null_where_fleet_server_refuses_it() {
    let (f, server, token) = site();
    let agent = Agent::enroll(&server, &token);
    agent.checkin(json!({ "status": null, "message": "Running" })).assert_error(400, "BadRequest");
    let mut body: Value =
        serde_json::from_str(&support::agent::enroll_request(&token, "9.2.0", "h").json).unwrap();
    let enroll = |body: &Value| {
        let bytes = body.to_string().into_bytes();
        support::agent::request(
            &server,
            "POST",
            "/api/fleet/agents/enroll",
            Some(&token),
            &[],
            &bytes,
        )
    };
    body["metadata"]["local"] = Value::Null;
    enroll(&body).assert_error(400, "BadRequest");
    body["metadata"]["local"] = json!({});
    body["metadata"]["tags"] = json!("prod");
    enroll(&body).assert_error(400, "BadRequest");
    let agents = f.run_json(&[&"agents", &"list", &"--json"]);
    assert_eq!(agents.as_array().unwrap().len(), 1, "only the first agent enrolled");
}
