//! The double seen from a real HTTPS client (ureq over rustls, trusting only the double's CA):
//! each behaviour the appliance's tests will lean on, and each fault as a client meets it.

use super::{DoubleOptions, ElasticDouble, Fault, SERVICE_ACCOUNT};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn client(double: &ElasticDouble, timeout: Option<Duration>) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder();
    let pem = double.ca_pem();
    if !pem.is_empty() {
        let certs: Vec<_> = ureq::tls::parse_pem(pem.as_bytes())
            .filter_map(|item| match item.expect("PEM") {
                ureq::tls::PemItem::Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    ureq::Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(false)
        .timeout_global(timeout)
        .build()
        .into()
}

struct Reply {
    status: u16,
    challenges: usize,
    body: Value,
}

fn call(
    agent: &ureq::Agent,
    double: &ElasticDouble,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> Result<Reply, ureq::Error> {
    let mut request =
        ureq::http::Request::builder().method(method).uri(format!("{}{path}", double.url()));
    if let Some(auth) = authorization {
        request = request.header("Authorization", auth);
    }
    let mut response = match body {
        Some(body) => agent.run(
            request
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .expect("request"),
        )?,
        None => agent.run(request.body(()).expect("request"))?,
    };
    let challenges = response.headers().get_all("www-authenticate").iter().count();
    let text = response.body_mut().read_to_string()?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Reply { status: response.status().as_u16(), challenges, body })
}

fn bearer(double: &ElasticDouble) -> String {
    format!("Bearer {}", double.service_token())
}

fn start() -> (ElasticDouble, ureq::Agent) {
    let double = ElasticDouble::start(DoubleOptions::default());
    let agent = client(&double, Some(Duration::from_secs(10)));
    (double, agent)
}

/// Creates a key the way Fleet Server does for an agent's output.
fn create(double: &ElasticDouble, agent: &ureq::Agent, agent_id: &str) -> Reply {
    let body = json!({
        "name": format!("ferry-agent-{agent_id}"),
        "role_descriptors": {"ferry-output": {
            "cluster": ["monitor"],
            "indices": [{"names": ["logs-*-*", "metrics-*-*"], "privileges": ["auto_configure", "create_doc"]}]
        }},
        "metadata": {"agent_id": agent_id, "managed": true, "managed_by": "ferry", "type": "output"}
    });
    let reply = call(
        agent,
        double,
        "POST",
        "/_security/api_key?refresh=wait_for",
        Some(&bearer(double)),
        Some(body),
    )
    .expect("create answered");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply
}

#[test]
fn a_created_key_authenticates_with_its_secret() {
    let (double, agent) = start();
    assert!(double.url().starts_with("https://127.0.0.1:"));
    let created = create(&double, &agent, "a1").body;
    let (id, secret) = (created["id"].as_str().unwrap(), created["api_key"].as_str().unwrap());
    assert_eq!(id.len(), 20);
    assert_eq!(secret.len(), 22);
    assert!(created.get("expiration").is_none(), "no expiration asked, none answered");

    let record = double.authenticate(&format!("{id}:{secret}")).expect("the key authenticates");
    assert_eq!(record.owner, SERVICE_ACCOUNT);
    assert_eq!(record.metadata["agent_id"], "a1");
    assert_eq!(record.role_descriptors["ferry-output"]["cluster"], json!(["monitor"]));
    assert!(double.authenticate(&format!("{id}:wrong")).is_none());

    // The encoded form is what an agent sends; Elasticsearch says who it is.
    let who = call(
        &agent,
        &double,
        "GET",
        "/_security/_authenticate",
        Some(&format!("ApiKey {}", created["encoded"].as_str().unwrap())),
        None,
    )
    .unwrap();
    assert_eq!(who.status, 200);
    assert_eq!(who.body["username"], SERVICE_ACCOUNT);
    assert_eq!(who.body["api_key"]["id"], id);
    assert_eq!(who.body["authentication_type"], "api_key");

    let me = call(&agent, &double, "GET", "/_security/_authenticate", Some(&bearer(&double)), None)
        .unwrap();
    assert_eq!(me.body["token"]["type"], "_service_account_index");
    assert!(double.violations().is_empty(), "{:?}", double.violations());
}

#[test]
fn an_invalidated_key_no_longer_authenticates() {
    let (double, agent) = start();
    let created = create(&double, &agent, "a1").body;
    let id = created["id"].as_str().unwrap();
    let secret = created["api_key"].as_str().unwrap();
    let reply = call(
        &agent,
        &double,
        "DELETE",
        "/_security/api_key",
        Some(&bearer(&double)),
        Some(json!({"ids": [id], "owner": true})),
    )
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["invalidated_api_keys"], json!([id]));
    assert_eq!(reply.body["error_count"], 0);
    assert!(reply.body.get("error_details").is_none());

    assert!(double.authenticate(&format!("{id}:{secret}")).is_none());
    assert!(double.valid_keys().is_empty());
    assert!(double.keys()[0].invalidated);
    let who = call(
        &agent,
        &double,
        "GET",
        "/_security/_authenticate",
        Some(&format!("ApiKey {}", created["encoded"].as_str().unwrap())),
        None,
    )
    .unwrap();
    assert_eq!(who.status, 401);

    // Again: Elasticsearch looks among valid keys only, so nothing matches and it says so
    // with empty lists, not an error.
    let again = call(
        &agent,
        &double,
        "DELETE",
        "/_security/api_key",
        Some(&bearer(&double)),
        Some(json!({"ids": [id], "owner": true})),
    )
    .unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(again.body["invalidated_api_keys"], json!([]));
    assert!(double.violations().is_empty(), "{:?}", double.violations());
}

#[test]
fn a_term_query_on_metadata_finds_exactly_the_agents_keys() {
    let (double, agent) = start();
    let mine = [create(&double, &agent, "a1").body, create(&double, &agent, "a1").body];
    create(&double, &agent, "b2");
    let reply = call(
        &agent,
        &double,
        "POST",
        "/_security/_query/api_key",
        Some(&bearer(&double)),
        Some(json!({
            "query": {"bool": {"filter": [
                {"term": {"metadata.agent_id": "a1"}},
                {"term": {"invalidated": {"value": false}}}
            ]}},
            "sort": [{"creation": "asc"}],
            "size": 100
        })),
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["total"], 2);
    assert_eq!(reply.body["count"], 2);
    let ids: Vec<&str> = reply.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine[0]["id"].as_str().unwrap(), mine[1]["id"].as_str().unwrap()]);
    assert_eq!(reply.body["api_keys"][0]["metadata"]["agent_id"], "a1");
    assert_eq!(reply.body["api_keys"][0]["type"], "rest");

    // An unknown field is refused as Elasticsearch refuses it, and recorded.
    let refused = call(
        &agent,
        &double,
        "POST",
        "/_security/_query/api_key",
        Some(&bearer(&double)),
        Some(json!({"query": {"term": {"api_key_hash": "x"}}})),
    )
    .unwrap();
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.body["error"]["reason"],
        "Field [api_key_hash] is not allowed for querying or aggregation"
    );
    assert_eq!(double.violations().len(), 1);
}

#[test]
fn a_body_with_an_unknown_field_is_a_400_and_a_violation() {
    let (double, agent) = start();
    let reply = call(
        &agent,
        &double,
        "POST",
        "/_security/api_key",
        Some(&bearer(&double)),
        Some(json!({"name": "k", "role_descriptor": {}})),
    )
    .unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["status"], 400);
    assert_eq!(reply.body["error"]["type"], "x_content_parse_exception");
    assert_eq!(reply.body["error"]["root_cause"][0]["type"], "x_content_parse_exception");
    let violations = double.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].starts_with("POST /_security/api_key:"), "{}", violations[0]);
    assert!(violations[0].contains("role_descriptor"), "{}", violations[0]);
    assert!(double.keys().is_empty());

    // And an unknown query parameter, and an endpoint the appliance has no business calling.
    let param = call(
        &agent,
        &double,
        "GET",
        "/_security/api_key?owner=true&ids=x",
        Some(&bearer(&double)),
        None,
    )
    .unwrap();
    assert_eq!(param.status, 400);
    let elsewhere =
        call(&agent, &double, "GET", "/_cluster/health", Some(&bearer(&double)), None).unwrap();
    assert_eq!(elsewhere.status, 400);
    assert_eq!(double.violations().len(), 3);
}

#[test]
fn without_credentials_the_answer_is_401_with_challenges() {
    let (double, agent) = start();
    let reply =
        call(&agent, &double, "POST", "/_security/api_key", None, Some(json!({"name": "k"})))
            .unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.challenges, 3);
    assert_eq!(reply.body["error"]["type"], "security_exception");
    let wrong = call(&agent, &double, "GET", "/_security/_authenticate", Some("Bearer nope"), None)
        .unwrap();
    assert_eq!(wrong.status, 401);
    assert!(double.keys().is_empty());
}

#[test]
fn status_faults_answer_elasticsearch_errors_until_cleared() {
    let (double, agent) = start();
    double.set_fault(Fault::Status(429));
    let reply = call(
        &agent,
        &double,
        "POST",
        "/_security/api_key",
        Some(&bearer(&double)),
        Some(json!({"name": "k"})),
    )
    .unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.body["error"]["type"], "es_rejected_execution_exception");
    assert!(double.keys().is_empty());

    double.set_fault(Fault::Status(401));
    let reply =
        call(&agent, &double, "GET", "/_security/_authenticate", Some(&bearer(&double)), None)
            .unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.challenges, 3);

    double.set_fault(Fault::None);
    create(&double, &agent, "a1");
    let statuses: Vec<u16> = double.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 401, 200]);
}

#[test]
fn hang_is_met_by_the_clients_timeout() {
    let double = ElasticDouble::start(DoubleOptions::default());
    let agent = client(&double, Some(Duration::from_millis(500)));
    double.set_fault(Fault::Hang);
    let started = Instant::now();
    let result =
        call(&agent, &double, "GET", "/_security/_authenticate", Some(&bearer(&double)), None);
    assert!(matches!(result, Err(ureq::Error::Timeout(_))), "{:?}", result.err());
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(double.requests()[0].status, 0, "read, never answered");
}

#[test]
fn a_lost_create_response_leaves_the_key_created() {
    let (double, agent) = start();
    double.set_fault(Fault::LoseCreateResponse(1));
    let body = json!({"name": "k", "metadata": {"agent_id": "a1"}});
    let lost =
        call(&agent, &double, "POST", "/_security/api_key", Some(&bearer(&double)), Some(body));
    assert!(lost.is_err(), "the client gets no answer");
    assert_eq!(double.keys().len(), 1, "but the key exists");
    assert_eq!(double.keys()[0].metadata["agent_id"], "a1");
    // One lost answer, then the fault clears itself.
    create(&double, &agent, "a1");
    assert_eq!(double.keys().len(), 2);
}

#[test]
fn close_connections_resets_every_connection() {
    let (double, agent) = start();
    double.set_fault(Fault::CloseConnections);
    let result =
        call(&agent, &double, "GET", "/_security/_authenticate", Some(&bearer(&double)), None);
    assert!(result.is_err());
    assert!(double.requests().is_empty(), "no request was read");
    double.set_fault(Fault::None);
    let reply =
        call(&agent, &double, "GET", "/_security/_authenticate", Some(&bearer(&double)), None)
            .unwrap();
    assert_eq!(reply.status, 200);
}

#[test]
fn stopped_listening_refuses_then_resumes_on_the_same_port() {
    let (double, agent) = start();
    let url = double.url();
    // A connection the client keeps alive must not outlive the stop either.
    call(&agent, &double, "GET", "/_security/_authenticate", Some(&bearer(&double)), None).unwrap();
    double.stop_listening();
    let port = url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        call(&agent, &double, "GET", "/_security/_authenticate", Some(&bearer(&double)), None)
            .is_err()
    );
    double.resume_listening();
    assert_eq!(double.url(), url);
    let reply =
        call(&agent, &double, "GET", "/_security/_authenticate", Some(&bearer(&double)), None)
            .unwrap();
    assert_eq!(reply.status, 200);
}

#[test]
fn a_missing_privilege_shows_in_has_privileges_and_refuses_creation() {
    let (double, agent) = start();
    let ask = json!({"cluster": ["manage_own_api_key", "monitor"]});
    let reply = call(
        &agent,
        &double,
        "POST",
        "/_security/user/_has_privileges",
        Some(&bearer(&double)),
        Some(ask.clone()),
    )
    .unwrap();
    assert_eq!(reply.body["has_all_requested"], true);
    double.set_missing_privilege(true);
    let reply = call(
        &agent,
        &double,
        "POST",
        "/_security/user/_has_privileges",
        Some(&bearer(&double)),
        Some(ask),
    )
    .unwrap();
    assert_eq!(reply.body["cluster"], json!({"manage_own_api_key": false, "monitor": true}));
    assert_eq!(reply.body["has_all_requested"], false);
    assert_eq!(reply.body["username"], SERVICE_ACCOUNT);
    let refused = call(
        &agent,
        &double,
        "POST",
        "/_security/api_key",
        Some(&bearer(&double)),
        Some(json!({"name": "k"})),
    )
    .unwrap();
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body["error"]["type"], "security_exception");
    assert!(double.keys().is_empty());
    assert!(
        double.violations().is_empty(),
        "a withdrawn privilege is the site's doing, not the client's"
    );
}

#[test]
fn ownership_and_lookups_follow_elasticsearch() {
    let (double, agent) = start();
    let id = create(&double, &agent, "a1").body["id"].as_str().unwrap().to_owned();
    // manage_own_api_key: get and invalidate must say owner=true.
    let get = call(
        &agent,
        &double,
        "GET",
        &format!("/_security/api_key?id={id}&owner=true"),
        Some(&bearer(&double)),
        None,
    )
    .unwrap();
    assert_eq!(get.status, 200);
    assert_eq!(get.body["api_keys"][0]["username"], SERVICE_ACCOUNT);
    let missing = call(
        &agent,
        &double,
        "GET",
        "/_security/api_key?id=nope&owner=true",
        Some(&bearer(&double)),
        None,
    )
    .unwrap();
    assert_eq!((missing.status, &missing.body), (404, &json!({"api_keys": []})));
    assert!(double.violations().is_empty());
    let not_owner = call(
        &agent,
        &double,
        "DELETE",
        "/_security/api_key",
        Some(&bearer(&double)),
        Some(json!({"ids": [id]})),
    )
    .unwrap();
    assert_eq!(not_owner.status, 403);
    assert_eq!(double.violations().len(), 1);
    assert_eq!(double.valid_keys().len(), 1);

    // The admin key sees none of the service account's keys, and may only create keys that
    // grant nothing.
    let admin = format!("ApiKey {}", double.admin_api_key());
    let query =
        call(&agent, &double, "POST", "/_security/_query/api_key", Some(&admin), Some(json!({})))
            .unwrap();
    assert_eq!(query.body["total"], 0);
    let derived = call(
        &agent,
        &double,
        "POST",
        "/_security/api_key",
        Some(&admin),
        Some(json!({"name": "d", "role_descriptors": {"r": {"cluster": ["monitor"]}}})),
    )
    .unwrap();
    assert_eq!(derived.status, 400);
    let empty = call(
        &agent,
        &double,
        "POST",
        "/_security/api_key",
        Some(&admin),
        Some(json!({"name": "d", "role_descriptors": {"r": {}}})),
    )
    .unwrap();
    assert_eq!(empty.status, 200);
    assert_eq!(double.keys()[1].owner, super::ADMIN_USER);

    // Bulk update: per-key outcomes in the body.
    let bulk = call(
        &agent,
        &double,
        "POST",
        "/_security/api_key/_bulk_update",
        Some(&bearer(&double)),
        Some(json!({"ids": [id, "nope"], "role_descriptors": {}})),
    )
    .unwrap();
    assert_eq!(bulk.status, 200, "{}", bulk.body);
    assert_eq!(bulk.body["updated"], json!([id]));
    assert_eq!(bulk.body["errors"]["count"], 1);
    assert_eq!(bulk.body["errors"]["details"]["nope"]["type"], "resource_not_found_exception");
    assert_eq!(double.keys()[0].role_descriptors, json!({}));
}

#[test]
fn plain_http_and_latency() {
    let double =
        ElasticDouble::start(DoubleOptions { tls: false, latency: Duration::from_millis(200) });
    assert!(double.url().starts_with("http://127.0.0.1:"));
    assert!(double.ca_pem().is_empty());
    let agent = client(&double, Some(Duration::from_secs(5)));
    let started = Instant::now();
    let reply =
        call(&agent, &double, "GET", "/_security/_authenticate", Some(&bearer(&double)), None)
            .unwrap();
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

/// Fleet Server's artifact query (fleet-server internal/pkg/dl/artifact.go).
fn artifact_query(identifier: &str, sha: &str) -> Value {
    json!({"query": {"bool": {"must": [
        {"term": {"decoded_sha256": sha}},
        {"term": {"identifier": identifier}},
    ]}}})
}

#[test]
fn artifacts_are_written_as_kibana_writes_them_and_found_as_fleet_server_searches() {
    let (double, agent) = start();
    let artifact = super::KibanaArtifact::new("endpoint-trustlist-linux-v1", br#"{"entries":[]}"#);
    let query = artifact_query(&artifact.identifier, &artifact.decoded_sha256);
    // Before Kibana writes anything the index does not exist.
    let reply = call(
        &agent,
        &double,
        "POST",
        "/.fleet-artifacts/_search",
        Some(&bearer(&double)),
        Some(query.clone()),
    )
    .unwrap();
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.body["error"]["type"], "index_not_found_exception");
    assert_eq!(reply.body["error"]["root_cause"][0]["index"], ".fleet-artifacts");

    // Kibana's create, over HTTP, and its answer.
    let path = format!("/.fleet-artifacts/_create/{}?refresh=wait_for", artifact.id);
    let admin = format!("ApiKey {}", double.admin_api_key());
    let reply =
        call(&agent, &double, "PUT", &path, Some(&admin), Some(artifact.source.clone())).unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(
        reply.body,
        json!({"_index": ".fleet-artifacts-7", "_id": artifact.id, "_version": 1,
               "result": "created", "_shards": {"total": 2, "successful": 1, "failed": 0},
               "_seq_no": 0, "_primary_term": 1})
    );
    assert_eq!(double.index_artifact(&artifact.id, &artifact.source), 409, "ids are unique");
    let other = super::KibanaArtifact::new("endpoint-trustlist-linux-v1", br#"{"entries":[1]}"#);
    assert_eq!(double.index_artifact(&other.id, &other.source), 201);

    let reply = call(
        &agent,
        &double,
        "POST",
        "/.fleet-artifacts/_search",
        Some(&bearer(&double)),
        Some(query),
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body,
        json!({"took": 1, "timed_out": false,
               "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
               "hits": {"total": {"value": 1, "relation": "eq"}, "max_score": 2.0,
                        "hits": [{"_index": ".fleet-artifacts-7", "_id": artifact.id,
                                  "_score": 2.0, "_source": artifact.source}]}})
    );
    // Kibana's document: base64 of the zlib bytes, hashes of both forms.
    use base64::Engine as _;
    let body = reply.body["hits"]["hits"][0]["_source"]["body"].as_str().unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    assert_eq!(encoded, artifact.encoded);
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&encoded[..]), &mut decoded)
        .unwrap();
    assert_eq!(decoded, br#"{"entries":[]}"#);
    assert_eq!(artifact.manifest_entry()["encoded_size"], encoded.len());

    // No match: an empty page, `max_score` null.
    let none = artifact_query("endpoint-blocklist-linux-v1", &artifact.decoded_sha256);
    let reply = call(
        &agent,
        &double,
        "POST",
        "/.fleet-artifacts/_search",
        Some(&bearer(&double)),
        Some(none),
    )
    .unwrap();
    assert_eq!(
        reply.body["hits"],
        json!({"total": {"value": 0, "relation": "eq"}, "max_score": null, "hits": []})
    );
    assert!(double.violations().is_empty(), "{:?}", double.violations());
}

#[test]
fn artifact_searches_are_held_to_what_elasticsearch_accepts() {
    let (double, agent) = start();
    let artifact = super::KibanaArtifact::new("endpoint-trustlist-linux-v1", b"{}");
    assert_eq!(double.index_artifact(&artifact.id, &artifact.source), 201);
    let search = |auth: Option<&str>, body: Value| {
        call(&agent, &double, "POST", "/.fleet-artifacts/_search", auth, Some(body)).unwrap()
    };
    let token = bearer(&double);
    // Query types the double does not evaluate, and unknown keys, are Elasticsearch's 400.
    let reply = search(Some(&token), json!({"query": {"match": {"identifier": "x"}}}));
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"]["type"], "parsing_exception");
    assert_eq!(reply.body["error"]["reason"], "unknown query [match]");
    let reply = search(Some(&token), json!({"query": {"match_all": {}}, "aggs": {}}));
    assert_eq!(reply.body["error"]["reason"], "Unknown key for a START_OBJECT in [aggs].");
    let reply = search(Some(&token), json!({"query": {"term": {"a": "x", "b": "y"}}}));
    assert_eq!(reply.status, 400);
    assert_eq!(double.violations().len(), 3, "{:?}", double.violations());
    // `match_all` and the long form of `term` are understood.
    let reply = search(
        Some(&token),
        json!({"query": {"term": {"identifier": {"value": artifact.identifier}}}}),
    );
    assert_eq!(reply.body["hits"]["total"]["value"], 1, "{}", reply.body);
    assert_eq!(
        search(Some(&token), json!({"query": {"match_all": {}}})).body["hits"]["total"]["value"],
        1
    );

    // Without credentials: 401 with the challenges; an agent's key may not read the index.
    let reply = search(None, artifact_query("a", "b"));
    assert_eq!(reply.status, 401);
    assert_eq!(reply.challenges, 3);
    let created = create(&double, &agent, "a1").body;
    let key = format!("ApiKey {}", created["encoded"].as_str().unwrap());
    let reply = search(Some(&key), artifact_query("a", "b"));
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.body["error"]["type"], "security_exception");

    // The service account may read `.fleet-*`, and no other index.
    let reply = call(
        &agent,
        &double,
        "POST",
        "/_security/user/_has_privileges",
        Some(&token),
        Some(json!({"index": [{"names": [".fleet-artifacts", "logs-x"], "privileges": ["read"]}]})),
    )
    .unwrap();
    assert_eq!(
        reply.body["index"],
        json!({".fleet-artifacts": {"read": true}, "logs-x": {"read": false}})
    );
    assert_eq!(reply.body["has_all_requested"], false);

    // Faults reach searches too.
    double.set_fault(Fault::Status(503));
    assert_eq!(search(Some(&token), artifact_query("a", "b")).status, 503);
    double.set_fault(Fault::Hang);
    let quick = client(&double, Some(Duration::from_millis(300)));
    let hung = call(
        &quick,
        &double,
        "POST",
        "/.fleet-artifacts/_search",
        Some(&token),
        Some(artifact_query("a", "b")),
    );
    assert!(hung.is_err(), "a hung search times the client out");
}
