//! Where a delivered policy takes agents' output keys: each `elasticsearch` output without
//! credentials of its own gets an `api_key` placeholder when the policy is prepared (once per
//! release), filled with the agent's key when a check-in response is written (once per agent).

use serde_json::Value;
use serde_json::value::RawValue;

/// One output of a policy whose key the appliance makes per agent.
#[derive(Debug)]
pub(crate) struct KeySlot {
    pub output: String,
    /// The output's role descriptors (`output_permissions[output]`), as text.
    pub roles: std::sync::Arc<RawValue>,
    /// SHA-256 of the role descriptors as serialised (sorted keys): a key made for other
    /// permissions is replaced (Fleet Server compares the same hash, `PermissionsHash`).
    pub sha256: String,
    /// The JSON string standing where the key goes, quotes included.
    marker: String,
}

/// Fields that give an output credentials of its own: the appliance leaves such an output as
/// the bundle carries it (Fleet Server would overwrite `api_key`; here an operator who wrote
/// one meant it, and `ferry build` warned about it).
const OWN_CREDENTIALS: &[&str] = &["api_key", "username", "password", "secrets"];

/// The outputs of `doc` typed `elasticsearch` as exported: the ones that may get a key. Taken
/// before the site rewrite, which delivers `remote_elasticsearch` outputs as `elasticsearch`;
/// a key of the site's cluster must never go to a remote one.
pub(crate) fn elasticsearch_outputs(doc: &Value) -> Vec<String> {
    let Some(Value::Object(outputs)) = doc.get("outputs") else { return Vec::new() };
    outputs
        .iter()
        .filter(|(_, o)| o.get("type").and_then(Value::as_str) == Some("elasticsearch"))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Puts a placeholder `api_key` into every output of `candidates` (see
/// [`elasticsearch_outputs`]) that has no credentials of its own, and returns the slots. An output that needs a key but has no
/// `output_permissions` cannot get one: the error names it (Fleet Server refuses such a policy
/// too, `ErrNoOutputPerms` in fleet-server internal/pkg/policy/policy_output.go).
pub(crate) fn prepare(doc: &mut Value, candidates: &[String]) -> Result<Vec<KeySlot>, String> {
    let permissions = doc.get("output_permissions").cloned().unwrap_or(Value::Null);
    let Some(Value::Object(outputs)) = doc.get_mut("outputs") else { return Ok(Vec::new()) };
    let nonce: u64 = rand::random();
    let mut slots = Vec::new();
    for (name, output) in outputs.iter_mut() {
        let Some(output) = output.as_object_mut() else { continue };
        if !candidates.contains(name)
            || OWN_CREDENTIALS.iter().any(|f| output.get(*f).is_some_and(|v| !v.is_null()))
        {
            continue;
        }
        let Some(roles) = permissions.get(name).filter(|r| r.is_object()) else {
            return Err(format!(
                "output `{name}` is elasticsearch without credentials, and the policy has no \
                 output_permissions for it, so no key can be made for it (export the policy \
                 from Kibana's Fleet API, which includes them, or give the output credentials)"
            ));
        };
        let text = roles.to_string();
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
        let marker = format!("ferry-output-key-{nonce:016x}-{}", slots.len());
        output.insert("api_key".into(), Value::String(marker.clone()));
        slots.push(KeySlot {
            output: name.clone(),
            roles: RawValue::from_string(text).expect("JSON text").into(),
            sha256,
            marker: format!("\"{marker}\""),
        });
    }
    Ok(slots)
}

/// `body` with each slot's placeholder replaced by the agent's key (`keys[i]` for `slots[i]`,
/// as `id:key`, the form an agent's output takes: fleet-server policy_output.go).
pub(crate) fn fill(body: Vec<u8>, slots: &[KeySlot], keys: &[&str]) -> Vec<u8> {
    let mut text = String::from_utf8(body).expect("a serialised response is UTF-8");
    for (slot, key) in slots.iter().zip(keys) {
        let quoted = serde_json::to_string(key).expect("a string serialises");
        text = text.replacen(&slot.marker, &quoted, 1);
    }
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_elasticsearch_outputs_without_credentials_get_a_key() {
        let mut doc = json!({
            "outputs": {
                "default": {"type": "elasticsearch", "hosts": ["https://es:9200"]},
                "ls": {"type": "logstash", "hosts": ["ls:5044"]},
                "own": {"type": "elasticsearch", "api_key": "x:y"},
                "secret": {"type": "elasticsearch", "secrets": {"password": {"id": "s1"}}},
            },
            "output_permissions": {"default": {"_elastic_agent_checks": {"cluster": ["monitor"]}}},
        });
        let candidates = elasticsearch_outputs(&doc);
        let slots = prepare(&mut doc, &candidates).unwrap();
        assert_eq!(slots.iter().map(|s| s.output.as_str()).collect::<Vec<_>>(), ["default"]);
        assert_eq!(slots[0].roles.get(), r#"{"_elastic_agent_checks":{"cluster":["monitor"]}}"#);
        assert_eq!(doc["outputs"]["own"]["api_key"], "x:y");
        let body = serde_json::to_vec(&json!({"data": {"policy": doc}})).unwrap();
        let filled: Value = serde_json::from_slice(&fill(body, &slots, &["id1:k\"1"])).unwrap();
        assert_eq!(filled["data"]["policy"]["outputs"]["default"]["api_key"], "id1:k\"1");
    }

    #[test]
    fn a_remote_output_never_gets_a_key_of_the_site() {
        let mut doc = json!({
            "outputs": {"remote": {"type": "remote_elasticsearch", "hosts": ["https://r:9200"],
                                   "service_token": "t"}},
            "output_permissions": {"remote": {"r": {"cluster": ["monitor"]}}},
        });
        let candidates = elasticsearch_outputs(&doc);
        let site = ferry_artifacts::policy::SiteConnection {
            public_base: "https://fleet.site:8220",
            download_ca: None,
        };
        ferry_artifacts::policy::deliver_for_site(&mut doc, &site);
        assert_eq!(doc["outputs"]["remote"]["type"], "elasticsearch", "delivered as Fleet does");
        assert!(prepare(&mut doc, &candidates).unwrap().is_empty());
        assert!(doc["outputs"]["remote"].get("api_key").is_none(), "{doc}");
    }

    #[test]
    fn an_output_needing_a_key_without_permissions_is_named() {
        let mut doc = json!({"outputs": {"es": {"type": "elasticsearch"}}});
        let err = prepare(&mut doc, &["es".into()]).unwrap_err();
        assert!(err.contains("`es`") && err.contains("output_permissions"), "{err}");
    }

    #[test]
    fn the_permissions_hash_follows_the_content() {
        let hash = |roles: Value| {
            let mut doc = json!({"outputs": {"d": {"type": "elasticsearch"}},
                                 "output_permissions": {"d": roles}});
            prepare(&mut doc, &["d".into()]).unwrap()[0].sha256.clone()
        };
        let a = hash(json!({"r": {"cluster": ["monitor"]}}));
        assert_eq!(a, hash(json!({"r": {"cluster": ["monitor"]}})));
        assert_ne!(a, hash(json!({"r": {"cluster": ["monitor", "read_pipeline"]}})));
    }
}
