//! Agents' data reaches the site's Elasticsearch: per-agent output keys made on a double of
//! Elasticsearch's security API held to Elastic's specification (`ferry_testkit::elastic`),
//! delivered in policies, replaced and invalidated as Fleet Server does, and made exactly once
//! per agent and output through outages, lost answers and a crash of the appliance.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_testkit::elastic::{DoubleOptions, ElasticDouble, Fault};
use serde_json::{Value, json};

use crate::support::agent::{Agent, enroll_body, request};
use crate::support::{Fixture, Server};

/// A Kibana full agent policy for Fleet: two Elasticsearch outputs with their permissions,
/// and a Logstash one, which needs no key.
fn policy(revision: u64, metrics: bool, default_privileges: &str) -> String {
    let metrics_output = if metrics {
        "  metrics: {type: elasticsearch, hosts: [\"https://es.site:9200\"]}\n"
    } else {
        ""
    };
    let metrics_permissions = if metrics {
        "  metrics:\n    es: {indices: [{names: [metrics-*-*], privileges: [auto_configure, create_doc]}]}\n"
    } else {
        ""
    };
    format!(
        "id: es\nrevision: {revision}\noutputs:\n  default: {{type: elasticsearch, hosts: [\"https://es.site:9200\"]}}\n\
         {metrics_output}  ls: {{type: logstash, hosts: [\"ls:5044\"]}}\n\
         output_permissions:\n  default:\n    _elastic_agent_checks: {{cluster: [monitor]}}\n\
         \x20   es: {{indices: [{{names: [logs-*-*], privileges: [{default_privileges}]}}]}}\n\
         {metrics_permissions}inputs: []\n"
    )
}

/// The fixture configured for `double`, its bundle (`policy(1, true, ..)`) imported.
fn site(double: &ElasticDouble, long_poll: u64) -> Fixture {
    let f = Fixture::new();
    double.write_ca(&f.path("es-ca.pem"));
    std::fs::write(f.path("es-token"), double.service_token()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(f.path("es-token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    f.append_config(&format!(
        "checkin_long_poll_seconds = {long_poll}\ncheckin_jitter_seconds = 0\n\
         [limits.enroll]\nper_second = 1000\nburst = 1000\n\
         [elasticsearch]\nhosts = [\"{}\"]\nca_file = \"es-ca.pem\"\nservice_token_file = \"es-token\"\n\
         request_timeout_seconds = 2\n",
        double.url()
    ));
    let bundle =
        f.bundle_with_policies(1, &[("es", &policy(1, true, "auto_configure, create_doc"))]);
    let out = f.run(&[&"import", &bundle]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    f
}

/// The policy the agent is sent, checking in until one comes (within `patience`).
fn policy_of(agent: &Agent<'_>, patience: Duration) -> Value {
    let start = Instant::now();
    loop {
        let reply = agent.checkin_online();
        assert_eq!(reply.status, 200, "{reply:?}");
        if let Some(a) = reply.body["actions"].as_array().and_then(|a| a.first()) {
            assert_eq!(a["type"], "POLICY_CHANGE", "{a}");
            return a["data"]["policy"].clone();
        }
        assert!(start.elapsed() < patience, "no policy within {patience:?}");
    }
}

/// The valid keys of the double, by (agent id, output name).
fn valid_by_output(double: &ElasticDouble) -> BTreeMap<(String, String), Vec<String>> {
    let mut by = BTreeMap::<(String, String), Vec<String>>::new();
    for k in double.valid_keys() {
        let agent = k.metadata["agent_id"].as_str().unwrap_or_default().to_owned();
        let output = k.metadata["output_name"].as_str().unwrap_or_default().to_owned();
        by.entry((agent, output)).or_default().push(k.id);
    }
    by
}

fn wait_until(what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < patience, "{what}: not within {patience:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_agent_gets_its_own_key_per_output_with_the_outputs_permissions() {
    let double = ElasticDouble::start(DoubleOptions::default());
    let f = site(&double, 5);
    let server = Server::start(&f);
    let (_, token) = f.token("es");
    let status = f.run_json(&[&"status", &"--json"]);
    assert_eq!(status["elasticsearch"]["state"], "ok", "{status}");
    let (a, b) = (Agent::enroll(&server, &token), Agent::enroll(&server, &token));
    let (pa, pb) = (policy_of(&a, Duration::from_secs(10)), policy_of(&b, Duration::from_secs(10)));
    let text = policy(1, true, "auto_configure, create_doc");
    let document = ferry_artifacts::Policy::parse(text.as_bytes(), "es.yml").unwrap().document;
    let permissions = document["output_permissions"].clone();
    let mut seen = Vec::new();
    for (agent, p) in [(&a, &pa), (&b, &pb)] {
        assert!(p["outputs"]["ls"].get("api_key").is_none(), "logstash needs no key: {p}");
        for output in ["default", "metrics"] {
            let key = p["outputs"][output]["api_key"].as_str().unwrap();
            let record = double.authenticate(key).expect("the delivered key authenticates");
            assert_eq!(record.role_descriptors, permissions[output], "{output}");
            // Fleet Server's metadata (fleet-server internal/pkg/apikey/metadata.go), and the
            // mark of the creation the key came from.
            let mut metadata = record.metadata.clone();
            let intent = metadata.as_object_mut().unwrap().remove("ferry_intent").unwrap();
            assert_eq!(intent.as_str().map(str::len), Some(32), "{intent}");
            assert_eq!(
                metadata,
                json!({"agent_id": agent.id, "output_name": output, "managed": true,
                       "managed_by": "fleet-server", "type": "output"})
            );
            assert_eq!(record.name, format!("{}:{output}", agent.id));
            seen.push(key.to_owned());
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "one key per agent and output");
    // Neither the key nor its secret shows in the admin's views.
    let listed = f.run(&[&"agents", &"list", &"--json"]);
    let shown = String::from_utf8_lossy(&listed.stdout);
    assert!(seen.iter().all(|k| !shown.contains(k.split(':').nth(1).unwrap())), "{shown}");

    // Unenrolled by acknowledging UNENROLL: both of a's keys go. Revoked: both of b's.
    f.run_json(&[&"unenroll", &a.id, &"--json"]);
    let reply = a.checkin_online();
    let action = reply.body["actions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(a.ack(&[&action]).status, 200);
    let out = f.run(&[&"unenroll", &"--revoke", &b.id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("every key invalidated", Duration::from_secs(10), || double.valid_keys().is_empty());
    for key in &seen {
        assert!(double.authenticate(key).is_none());
    }
    assert_eq!(double.keys().len(), 4, "no key made twice");
    assert_eq!(double.violations(), Vec::<String>::new());
    drop(server);
}

#[test]
fn changed_permissions_replace_the_key_and_a_removed_output_s_key_retires_on_the_ack() {
    let double = ElasticDouble::start(DoubleOptions::default());
    let f = site(&double, 2);
    let server = Server::start(&f);
    let (_, token) = f.token("es");
    let agent = Agent::enroll(&server, &token);
    let first = policy_of(&agent, Duration::from_secs(10));
    let ack = |policy: &Value| {
        let id = format!("policy:es:{}", policy["revision"]);
        assert_eq!(agent.ack(&[&id]).status, 200);
    };
    ack(&first);
    let old_default = first["outputs"]["default"]["api_key"].as_str().unwrap().to_owned();
    let old_metrics = first["outputs"]["metrics"]["api_key"].as_str().unwrap().to_owned();

    // The next bundle gives `default` more privileges and drops `metrics`.
    let bundle =
        f.bundle_with_policies(2, &[("es", &policy(2, false, "auto_configure, create_doc, read"))]);
    let out = f.run(&[&"import", &bundle]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = policy_of(&agent, Duration::from_secs(15));
    let new_default = second["outputs"]["default"]["api_key"].as_str().unwrap().to_owned();
    assert_ne!(new_default, old_default, "new permissions, new key");
    let record = double.authenticate(&new_default).unwrap();
    assert_eq!(record.role_descriptors["es"]["indices"][0]["privileges"][2], "read");
    // Until the agent runs the new revision its old keys keep working.
    assert!(double.authenticate(&old_default).is_some());
    assert!(double.authenticate(&old_metrics).is_some());
    ack(&second);
    wait_until("the old keys invalidated", Duration::from_secs(10), || {
        double.authenticate(&old_default).is_none() && double.authenticate(&old_metrics).is_none()
    });
    assert!(double.authenticate(&new_default).is_some());
    assert_eq!(double.valid_keys().len(), 1);
    assert_eq!(double.violations(), Vec::<String>::new());
    drop(server);
}

/// Elasticsearch is down while 200 agents enroll: none is refused, each keeps checking in
/// without a policy, and once it is back each gets its keys within 10 s; answers lost after
/// creating keys, and a crash of the appliance, leave exactly one valid key per agent and
/// output.
#[test]
fn an_outage_lost_answers_and_a_crash_leave_one_key_per_agent_and_output() {
    const AGENTS: usize = 200;
    let double = ElasticDouble::start(DoubleOptions::default());
    let f = site(&double, 1);
    let server = Server::start(&f);
    let (_, token) = f.token("es");
    double.stop_listening();
    let agents: Vec<Agent<'_>> = (0..AGENTS).map(|_| Agent::enroll(&server, &token)).collect();
    // Each checks in at once (a one-second hold each): answered, with nothing to run yet.
    std::thread::scope(|scope| {
        for agent in &agents {
            scope.spawn(move || {
                let reply = agent.checkin_online();
                assert_eq!(reply.status, 200, "{reply:?}");
                let actions = reply.body["actions"].as_array().map_or(0, Vec::len);
                assert_eq!(actions, 0, "no policy without its keys: {}", reply.body);
            });
        }
    });
    wait_until("status says Elasticsearch is unreachable", Duration::from_secs(10), || {
        // `status` exits 1 while Elasticsearch is in trouble.
        let out = f.run(&[&"status", &"--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        !out.status.success()
            && status["elasticsearch"]["state"] == "unreachable"
            && status["elasticsearch"]["agents_waiting_for_keys"] == AGENTS
    });
    let (code, _, body) = server.get("/api/status", &[]);
    assert_eq!(code, 503, "DEGRADED, as Fleet Server answers");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["status"], "DEGRADED");

    // Back, but the first 30 answers are lost after their keys were made; then the appliance
    // is killed while it works and started again.
    double.set_fault(Fault::LoseCreateResponse(30));
    double.resume_listening();
    let resumed = Instant::now();
    wait_until("some keys made", Duration::from_secs(30), || double.keys().len() >= 100);
    server.kill();
    let server = Server::start(&f);
    let recovered = Instant::now();
    let got: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter()
            .map(|agent| {
                let agent = agent.on(&server);
                scope.spawn(move || policy_of(&agent, Duration::from_secs(20)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "{AGENTS} agents had their keys {:?} after the restart, {:?} after Elasticsearch came back",
        recovered.elapsed(),
        resumed.elapsed()
    );
    for (agent, p) in agents.iter().zip(&got) {
        for output in ["default", "metrics"] {
            let key = p["outputs"][output]["api_key"].as_str();
            let key = key.unwrap_or_else(|| panic!("no key for {output} in {p}"));
            let record = double.authenticate(key).expect("the delivered key is valid");
            assert_eq!(record.metadata["agent_id"], agent.id.as_str());
        }
    }
    let by = valid_by_output(&double);
    assert_eq!(by.len(), AGENTS * 2);
    let twice: Vec<_> = by.iter().filter(|(_, ids)| ids.len() != 1).collect();
    assert!(twice.is_empty(), "agents with more than one valid key for an output: {twice:?}");
    assert_eq!(double.violations(), Vec::<String>::new());
    drop(server);
}

/// The verdict of `status` (and its alias `health`) while Elasticsearch is well, refuses the
/// credential, lacks the privilege, does not answer, or shows a certificate of another CA.
#[test]
fn status_says_what_is_wrong_with_elasticsearch() {
    let double = ElasticDouble::start(DoubleOptions::default());
    let f = site(&double, 5);
    f.append_config("check_interval_seconds = 1");
    let server = Server::start(&f);
    let verdict = |want: &str| {
        let start = Instant::now();
        loop {
            let out = f.run(&[&"health", &"--json"]);
            let last: Value = serde_json::from_slice(&out.stdout).unwrap();
            if last["elasticsearch"]["state"] == want && out.status.success() == (want == "ok") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "not {want}: {last}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = f.run(&[&"status"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(verdict("ok").contains("elasticsearch  ok as elastic/fleet-server"));
    assert_eq!(server.get("/api/status", &[]).0, 200);
    double.set_missing_privilege(true);
    assert!(verdict("missing_privilege").contains("manage_own_api_key"));
    double.set_missing_privilege(false);
    double.set_fault(Fault::Status(401));
    assert!(verdict("unauthorized").contains("refused the appliance's credential"));
    double.set_fault(Fault::Hang);
    assert!(verdict("unreachable").contains("timed out"));
    assert_eq!(server.get("/api/status", &[]).0, 503);
    double.set_fault(Fault::None);
    verdict("ok");
    drop(server);

    // Elasticsearch's certificate is not from the configured CA: said at start, naming the fix.
    let other = ElasticDouble::start(DoubleOptions::default());
    other.write_ca(&f.path("es-ca.pem"));
    let server = Server::start(&f);
    assert!(verdict("tls").contains("elasticsearch.ca_file"));
    drop(server);

    // A credential file others can read is refused at start, by name.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(f.path("es-token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = f.run(&[&"serve"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("es-token") && err.contains("readable by other users"), "{err}");
}

/// Role descriptors Elasticsearch refuses (a privilege list given as a string) hold that
/// policy's key alone; the next bundle's fixed permissions get the key at once, though the
/// refused creation is still being retried.
#[test]
fn permissions_elasticsearch_refuses_hold_only_that_key_until_a_bundle_fixes_them() {
    let double = ElasticDouble::start(DoubleOptions::default());
    let f = site(&double, 2);
    let broken = "id: es\nrevision: 2\noutputs:\n  default: {type: elasticsearch, hosts: [\"https://es.site:9200\"]}\n\
                  output_permissions:\n  default:\n    es: {cluster: monitor}\ninputs: []\n";
    let out = f.run(&[&"import", &f.bundle_with_policies(2, &[("es", broken)])]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start(&f);
    let (_, token) = f.token("es");
    let agent = Agent::enroll(&server, &token);
    for _ in 0..2 {
        let reply = agent.checkin_online();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body["actions"].as_array().map_or(0, Vec::len), 0, "{}", reply.body);
    }
    assert!(double.keys().is_empty());
    assert_eq!(double.violations().len(), 1, "the refused body, as Elasticsearch refuses it");
    let fixed = policy(3, false, "auto_configure, create_doc");
    let out = f.run(&[&"import", &f.bundle_with_policies(3, &[("es", &fixed)])]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let delivered = policy_of(&agent, Duration::from_secs(10));
    let key = delivered["outputs"]["default"]["api_key"].as_str().unwrap();
    assert!(double.authenticate(key).is_some());
    drop(server);
}

/// An agent re-enrolled with its replace token (a reinstalled host) gets new keys; the keys of
/// the record it replaced are invalidated, since they were another installation's.
#[test]
fn a_replacing_enrollment_invalidates_the_replaced_agents_keys() {
    let double = ElasticDouble::start(DoubleOptions::default());
    let f = site(&double, 2);
    let server = Server::start(&f);
    let (_, token) = f.token("es");
    let enroll = || {
        let body = enroll_body("host-7", "h7", "s3cret").to_string();
        let reply = request(
            &server,
            "POST",
            "/api/fleet/agents/enroll",
            Some(&token),
            &[],
            body.as_bytes(),
        );
        assert_eq!(reply.status, 200, "{reply:?}");
        Agent::from_reply(&server, &reply)
    };
    let first = enroll();
    let old = policy_of(&first, Duration::from_secs(10));
    let old_key = old["outputs"]["default"]["api_key"].as_str().unwrap().to_owned();
    let second = enroll();
    assert_eq!(second.id, first.id);
    wait_until("the replaced record's keys invalidated", Duration::from_secs(10), || {
        double.authenticate(&old_key).is_none()
    });
    let new = policy_of(&second, Duration::from_secs(10));
    let new_key = new["outputs"]["default"]["api_key"].as_str().unwrap();
    assert_ne!(new_key, old_key);
    assert!(double.authenticate(new_key).is_some());
    assert_eq!(valid_by_output(&double).len(), 2, "one valid key per output");
    drop(server);
}
