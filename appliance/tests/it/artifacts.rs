//! Elastic Defend's user artifacts: Endpoint fetches what its agent's policy lists from
//! `/api/fleet/artifacts/{id}/{sha256}` with the agent's access key, and gets Kibana's bytes from
//! the site's Elasticsearch (the double, `ferry_testkit::elastic`) with the answers Fleet Server
//! gives (fleet-server internal/pkg/api/handleArtifacts.go and error.go), including for every
//! request it must refuse.

use ferry_testkit::elastic::{DoubleOptions, ElasticDouble, Fault, KibanaArtifact};
use serde_json::{Value, json};

use crate::support::agent::{Agent, Reply, request};
use crate::support::{Fixture, Server};

const TRUSTLIST: &str = "endpoint-trustlist-linux-v1";

/// A Kibana full agent policy with an Elastic Defend input whose `artifact_manifest` lists
/// `listed`, as Kibana writes it.
fn policy(listed: &[&KibanaArtifact]) -> String {
    let artifacts: serde_json::Map<String, Value> =
        listed.iter().map(|a| (a.identifier.clone(), a.manifest_entry())).collect();
    json!({
        "id": "defend",
        "revision": 1,
        "outputs": {"default": {"type": "elasticsearch", "hosts": ["https://es.site:9200"]}},
        "output_permissions": {"default": {"endpoint": {"indices": [
            {"names": ["logs-endpoint.*-default"], "privileges": ["auto_configure", "create_doc"]}
        ]}}},
        "inputs": [
            {"id": "logfile-1", "type": "logfile", "data_stream": {"namespace": "default"}},
            {"id": "defend-1", "name": "Defend", "type": "endpoint", "revision": 1,
             "data_stream": {"namespace": "default"}, "use_output": "default",
             "artifact_manifest": {"manifest_version": "1.0.3", "schema_version": "v1",
                                   "artifacts": artifacts}},
        ],
    })
    .to_string()
}

/// A fixture whose bundle has `policy(listed)`, configured for `double` when there is one.
fn site(double: Option<&ElasticDouble>, listed: &[&KibanaArtifact]) -> Fixture {
    let f = Fixture::new();
    f.append_config("[limits.enroll]\nper_second = 1000\nburst = 1000\n");
    if let Some(double) = double {
        double.write_ca(&f.path("es-ca.pem"));
        std::fs::write(f.path("es-token"), double.service_token()).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(f.path("es-token"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        f.append_config(&format!(
            "[elasticsearch]\nhosts = [\"{}\"]\nca_file = \"es-ca.pem\"\n\
             service_token_file = \"es-token\"\nrequest_timeout_seconds = 2\n",
            double.url()
        ));
    }
    let bundle = f.bundle_with_policies(1, &[("defend", &policy(listed))]);
    let out = f.run(&[&"import", &bundle]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    f
}

/// Endpoint's request: a plain GET with the agent's key, none of Elastic Agent's headers.
fn fetch(agent: &Agent<'_>, id: &str, sha: &str, key: Option<&str>) -> Reply {
    let path = format!("/api/fleet/artifacts/{id}/{sha}");
    let none = [
        ("User-Agent", ""),
        ("Elastic-Api-Version", ""),
        ("Content-Type", ""),
        ("kbn-xsrf", ""),
        ("X-Request-ID", ""),
    ];
    request(agent.server, "GET", &path, key, &none, b"")
}

fn searches(double: &ElasticDouble) -> usize {
    double.requests().iter().filter(|r| r.path.starts_with("/.fleet-artifacts/_search")).count()
}

#[track_caller]
fn assert_body(reply: &Reply, status: u16, body: &Value) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(&reply.body, body, "{reply:?}");
    assert_eq!(reply.headers["content-type"], "application/json; charset=utf-8");
}

#[test]
fn endpoint_gets_its_policy_s_artifact_byte_for_byte_from_one_search() {
    let double = ElasticDouble::start(DoubleOptions::default());
    let decoded = br#"{"entries":[{"type":"simple","entries":[{"field":"process.executable.caseless","operator":"included","type":"exact_cased","value":"/usr/bin/trusted"}]}]}"#;
    let artifact = KibanaArtifact::new(TRUSTLIST, decoded);
    let f = site(Some(&double), &[&artifact]);
    assert_eq!(double.index_artifact(&artifact.id, &artifact.source), 201);
    let server = Server::start(&f);
    let (_, token) = f.token("defend");
    let agent = Agent::enroll(&server, &token);

    for _ in 0..5 {
        let reply = fetch(&agent, TRUSTLIST, &artifact.decoded_sha256, Some(&agent.key));
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.raw, artifact.encoded, "the zlib bytes Kibana stored");
        // What Go's net/http sniffs for zlib bytes, and the length.
        assert_eq!(reply.headers["content-type"], "application/octet-stream");
        assert_eq!(reply.headers["content-length"], artifact.encoded.len().to_string().as_str());
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::ZlibDecoder::new(&reply.raw[..]),
            &mut inflated,
        )
        .unwrap();
        assert_eq!(inflated, decoded);
    }
    assert_eq!(searches(&double), 1, "the rest came from the cache");
    assert_eq!(double.violations(), Vec::<String>::new());
    drop(server);
}

#[test]
fn refusals_are_fleet_server_s() {
    let double = ElasticDouble::start(DoubleOptions::default());
    let served = KibanaArtifact::new(TRUSTLIST, br#"{"entries":[]}"#);
    // Listed, never written to Elasticsearch.
    let unknown = KibanaArtifact::new("endpoint-blocklist-linux-v1", br#"{"entries":[1]}"#);
    // Listed, and written with a body that is not the one its `encoded_sha256` names.
    let tampered = KibanaArtifact::new("endpoint-eventfilterlist-linux-v1", br#"{"entries":[2]}"#);
    // Written, but in no policy of this agent.
    let elsewhere = KibanaArtifact::new("endpoint-trustlist-windows-v1", br#"{"entries":[3]}"#);
    let f = site(Some(&double), &[&served, &unknown, &tampered]);
    let mut forged = tampered.source.clone();
    forged["body"] = served.source["body"].clone();
    for (id, source) in
        [(&served.id, &served.source), (&tampered.id, &forged), (&elsewhere.id, &elsewhere.source)]
    {
        assert_eq!(double.index_artifact(id, source), 201);
    }
    let server = Server::start(&f);
    let (_, token) = f.token("defend");
    let agent = Agent::enroll(&server, &token);
    let key = Some(agent.key.as_str());
    let sha = served.decoded_sha256.as_str();

    // No key, or a wrong one: what every agent route answers.
    let checkin_without_key = request(
        &server,
        "POST",
        &format!("/api/fleet/agents/{}/checkin", agent.id),
        None,
        &[],
        b"{}",
    );
    let reply = fetch(&agent, TRUSTLIST, sha, None);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.body, checkin_without_key.body);
    let wrong = with_secret(&agent.key, "not-the-secret");
    let reply = fetch(&agent, TRUSTLIST, sha, Some(&wrong));
    reply.assert_error(401, "ErrUnauthorized");

    // A hash that is not 64 hex digits: Fleet Server's default error, 500.
    let malformed =
        json!({"statusCode": 500, "error": "BadRequest", "message": "malformed sha256"});
    assert_body(&fetch(&agent, TRUSTLIST, &sha[1..], key), 500, &malformed);
    assert_body(&fetch(&agent, TRUSTLIST, &format!("{}g", &sha[1..]), key), 500, &malformed);

    // Not in the agent's policy: the artifact exists, the agent may not have it; and the hash
    // of another list is not this one's.
    let forbidden = json!({"statusCode": 403, "error": "Forbidden", "message": "agent not authorized for artifact"});
    let reply = fetch(&agent, &elsewhere.identifier, &elsewhere.decoded_sha256, key);
    assert_body(&reply, 403, &forbidden);
    assert_body(&fetch(&agent, TRUSTLIST, &unknown.decoded_sha256, key), 403, &forbidden);
    // Paths that climb: one segment each, never a listed identifier.
    for id in ["..%2F..%2Fetc%2Fpasswd", "..", "%2E%2E", "endpoint-trustlist-linux-v1%2F.."] {
        assert_body(&fetch(&agent, id, sha, key), 403, &forbidden);
    }
    let reply = fetch(&agent, &format!("../{TRUSTLIST}"), sha, key);
    assert_eq!(reply.status, 404, "{reply:?}");

    // Listed, and not in Elasticsearch.
    let not_found = json!({"statusCode": 404, "error": "NotFound", "message": "not found"});
    assert_body(&fetch(&agent, &unknown.identifier, &unknown.decoded_sha256, key), 404, &not_found);

    // Listed, and its document's body does not hash to its `encoded_sha256`: never served,
    // and not cached either (each try searches again).
    let mismatched =
        json!({"statusCode": 500, "error": "BadRequest", "message": "mismatched sha256"});
    for _ in 0..2 {
        let reply = fetch(&agent, &tampered.identifier, &tampered.decoded_sha256, key);
        assert_body(&reply, 500, &mismatched);
    }
    let searched: Vec<String> = double
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/.fleet-artifacts/_search"))
        .map(|r| r.path)
        .collect();
    assert_eq!(searched.len(), 3, "unknown once, tampered twice; refusals before any search");
    assert_eq!(double.violations(), Vec::<String>::new());
    drop(server);
}

/// The access key `key` (`base64("id:secret")`) with another secret.
fn with_secret(key: &str, secret: &str) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let decoded = String::from_utf8(engine.decode(key).unwrap()).unwrap();
    let (id, _) = decoded.split_once(':').unwrap();
    engine.encode(format!("{id}:{secret}"))
}

#[test]
fn elasticsearch_down_or_hung_is_a_503_within_seconds_and_absent_is_not_found() {
    let double = ElasticDouble::start(DoubleOptions::default());
    let artifact = KibanaArtifact::new(TRUSTLIST, br#"{"entries":[]}"#);
    let f = site(Some(&double), &[&artifact]);
    assert_eq!(double.index_artifact(&artifact.id, &artifact.source), 201);
    let server = Server::start(&f);
    let (_, token) = f.token("defend");
    let agent = Agent::enroll(&server, &token);
    let sha = artifact.decoded_sha256.as_str();
    let unreachable = json!({"statusCode": 503, "error": "ServiceUnavailable",
                             "message": "Fleet server unable to communicate with Elasticsearch"});

    double.stop_listening();
    assert_body(&fetch(&agent, TRUSTLIST, sha, Some(&agent.key)), 503, &unreachable);
    double.resume_listening();

    // Hung: the request timeout (2 s here) ends the wait, and the agent gets its answer (a
    // hung Elasticsearch never answers, so the 503 is the deadline's).
    double.set_fault(Fault::Hang);
    assert_body(&fetch(&agent, TRUSTLIST, sha, Some(&agent.key)), 503, &unreachable);
    // An error Elasticsearch answers.
    double.set_fault(Fault::Status(503));
    let reply = fetch(&agent, TRUSTLIST, sha, Some(&agent.key));
    assert_body(
        &reply,
        503,
        &json!({"statusCode": 503, "error": "ServiceUnavailable", "message": "elasticsearch error"}),
    );
    double.set_fault(Fault::None);
    assert_eq!(fetch(&agent, TRUSTLIST, sha, Some(&agent.key)).status, 200);
    drop(server);

    // Without `[elasticsearch]` there are no user artifacts: Fleet Server's not found.
    let f = site(None, &[&artifact]);
    let server = Server::start(&f);
    let (_, token) = f.token("defend");
    let agent = Agent::enroll(&server, &token);
    assert_body(
        &fetch(&agent, TRUSTLIST, sha, Some(&agent.key)),
        404,
        &json!({"statusCode": 404, "error": "NotFound", "message": "not found"}),
    );
    drop(server);
}
