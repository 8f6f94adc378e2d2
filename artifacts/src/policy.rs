//! Agent policies as Kibana exports them ("full agent policy", YAML or JSON), checked for what
//! an agent needs before one travels in a bundle.

use std::fmt;

use serde_json::{Map, Value};

/// Output types an agent can ship to: the four Fleet Server prepares for delivery
/// (`internal/pkg/policy/policy_output.go` in elastic/fleet-server). Any other would reach the
/// agent unprepared, so the builder refuses it rather than the agent failing at the site. Newer
/// Fleet Server also prepares `otlp`; it stays refused here until the appliance does too.
pub const OUTPUT_TYPES: [&str; 4] = ["elasticsearch", "logstash", "kafka", "remote_elasticsearch"];

/// The keys under `agent.download` that belong to the exporting site: where it downloads from and
/// how it reaches and trusts that place. The appliance serves the downloads itself.
const DOWNLOAD_SETTINGS: [&str; 6] =
    ["sourceURI", "source_uri", "proxy_url", "proxy_headers", "proxy_disable", "ssl"];

/// Why a policy file was refused. Each names the file and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("{file} is not valid {format}: {reason}")]
    Syntax { file: String, format: &'static str, reason: String },
    #[error("{file}: the policy is not a mapping at its top level")]
    NotAMapping { file: String },
    #[error("{file}: field `{field}` {problem}")]
    Field { file: String, field: String, problem: String },
}

/// The facts of a policy the builder records and the appliance acts on, plus the policy itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub id: String,
    pub revision: u64,
    pub name: Option<String>,
    /// Output names and their types, in the policy's order.
    pub outputs: Vec<(String, String)>,
    pub inputs: usize,
    /// The whole policy as JSON.
    pub document: Value,
}

impl Policy {
    /// Parses a policy file (JSON when it starts with `{`, YAML otherwise). `file` names it in
    /// errors.
    pub fn parse(bytes: &[u8], file: &str) -> Result<Self, PolicyError> {
        let text = std::str::from_utf8(bytes).map_err(|e| PolicyError::Syntax {
            file: file.into(),
            format: "UTF-8",
            reason: e.to_string(),
        })?;
        let document: Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| PolicyError::Syntax {
                file: file.into(),
                format: "JSON",
                reason: e.to_string(),
            })?
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| PolicyError::Syntax {
                file: file.into(),
                format: "YAML",
                reason: e.to_string(),
            })?
        };
        // Kibana's "download policy" wraps nothing, but its API answers {"item": {...}}.
        let document = match document {
            Value::Object(mut map) if map.len() == 1 && map.contains_key("item") => {
                map.remove("item").expect("checked")
            }
            other => other,
        };
        Self::from_document(document, file)
    }

    fn from_document(document: Value, file: &str) -> Result<Self, PolicyError> {
        let field = |field: &str, problem: String| PolicyError::Field {
            file: file.into(),
            field: field.into(),
            problem,
        };
        let map =
            document.as_object().ok_or_else(|| PolicyError::NotAMapping { file: file.into() })?;
        let id = match map.get("id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(other) => {
                return Err(field("id", format!("must be a non-empty string, found {other}")));
            }
            None => return Err(field("id", "is missing".into())),
        };
        let revision = match map.get("revision") {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| field("revision", format!("must be a whole number, found {v}")))?,
            None => return Err(field("revision", "is missing".into())),
        };
        let name = map.get("name").and_then(Value::as_str).map(str::to_owned);
        let outputs = match map.get("outputs") {
            Some(Value::Object(outputs)) if !outputs.is_empty() => outputs,
            Some(Value::Object(_)) => {
                return Err(field("outputs", "has no output; an agent needs at least one".into()));
            }
            Some(other) => {
                return Err(field(
                    "outputs",
                    format!("must be a mapping of outputs, found {other}"),
                ));
            }
            None => {
                return Err(field(
                    "outputs",
                    "is missing; an agent needs at least one output".into(),
                ));
            }
        };
        let mut output_types = Vec::new();
        for (name, output) in outputs {
            let path = format!("outputs.{name}.type");
            let kind = output
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| field(&path, "is missing".into()))?;
            if !OUTPUT_TYPES.contains(&kind) {
                return Err(field(
                    &path,
                    format!("is {kind:?}; known types: {}", OUTPUT_TYPES.join(", ")),
                ));
            }
            output_types.push((name.clone(), kind.to_owned()));
        }
        let inputs = match map.get("inputs") {
            Some(Value::Array(inputs)) => inputs.len(),
            Some(other) => return Err(field("inputs", format!("must be a list, found {other}"))),
            None => return Err(field("inputs", "is missing".into())),
        };
        Ok(Self { id, revision, name, outputs: output_types, inputs, document })
    }
}

/// A setting of the exporting site that a policy carries: the appliance drops or replaces it on
/// delivery, or, written as a dotted key, would let it through. `ferry build` warns about each
/// and goes on: the policy is still good, but the operator should know what the agents will not
/// get, that a secret travels in the bundle, or that a setting escapes the appliance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSetting {
    /// The field as written in the policy, dotted from its top (below any `item` wrapper).
    pub field: String,
    pub carried: Carried,
}

/// What kind of site setting a [`SiteSetting`] is, which decides what the appliance does to it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Carried {
    /// A key under `fleet` other than `hosts`: the appliance replaces `fleet` with its own.
    Fleet,
    /// A download source, proxy or TLS setting under `agent.download`.
    Download,
    /// The service token of a `remote_elasticsearch` output, as text.
    ServiceToken { output: String },
    /// The service token of a `remote_elasticsearch` output as a reference into the exporting
    /// Fleet's secret store (`secrets.service_token.id`), which nothing at the site can read.
    ServiceTokenReference { output: String },
    /// Any of the above written with a dotted key (`agent.download.proxy_url: ...` at the top):
    /// the appliance strips these settings where Kibana writes them, one key per level, but the
    /// agent reads a dotted key as the nested one, so this one would reach and steer agents.
    Dotted,
}

impl fmt::Display for SiteSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = &self.field;
        match &self.carried {
            Carried::Fleet => write!(
                f,
                "the appliance replaces `fleet` with its own; `{field}` is dropped on delivery"
            ),
            Carried::Download => write!(
                f,
                "`{field}` is dropped on delivery; the appliance sets the download source and \
                 TLS itself"
            ),
            Carried::ServiceToken { output } => write!(
                f,
                "`{field}` is a service token and travels in the bundle in clear; the appliance \
                 delivers output `{output}` as `elasticsearch` without it"
            ),
            Carried::ServiceTokenReference { output } => write!(
                f,
                "`{field}` refers to a secret of the exporting site's Fleet, which the isolated \
                 site cannot read; the appliance delivers output `{output}` as `elasticsearch` \
                 without it"
            ),
            Carried::Dotted => write!(
                f,
                "`{field}` is a setting of the exporting site written as a dotted key, which the \
                 appliance does not strip but agents read as nested; write it one key per level \
                 or remove it"
            ),
        }
    }
}

impl Policy {
    /// The settings of the exporting site this policy carries (see [`SiteSetting`]): `fleet`
    /// beyond `hosts`, the download source, proxy and TLS under `agent.download`, and the
    /// service tokens of `remote_elasticsearch` outputs. In that order, each group in the
    /// policy's order. A field that is null or empty carries nothing and is not listed.
    pub fn carried_site_settings(&self) -> Vec<SiteSetting> {
        let Some(top) = self.document.as_object() else { return Vec::new() };
        let mut found = Vec::new();
        for key in below(top, &["fleet"], "") {
            // The appliance replaces a `fleet` written as one key whole, dotted keys inside it
            // included; a dotted `fleet.…` at the top survives, hosts and all.
            let carried = match (key.prefix_nested, key.name) {
                (true, "hosts") => continue,
                (true, _) => Carried::Fleet,
                (false, _) => Carried::Dotted,
            };
            if carries(key.value) {
                found.push(SiteSetting { field: key.field, carried });
            }
        }
        for key in below(top, &["agent", "download"], "") {
            if DOWNLOAD_SETTINGS.contains(&key.name) && carries(key.value) {
                let carried = if key.exact() { Carried::Download } else { Carried::Dotted };
                found.push(SiteSetting { field: key.field, carried });
            }
        }
        let Some(Value::Object(outputs)) = top.get("outputs") else { return found };
        for (name, kind) in &self.outputs {
            let Some(Value::Object(output)) = outputs.get(name) else { continue };
            if kind != "remote_elasticsearch" {
                continue;
            }
            // Fleet Server itself turns a remote_elasticsearch output into an elasticsearch one
            // with a per-agent API key and without the token (policy_output.go); the token is
            // for Fleet Server's own use against the remote cluster, never for agents.
            let base = format!("outputs.{name}");
            let tokens = below(output, &[], &base)
                .into_iter()
                .chain(below(output, &["secrets"], &base))
                .filter(|key| key.name == "service_token" && carries(key.value));
            for key in tokens {
                // Kibana writes a stored secret as `secrets.service_token: {id: ...}`; a string
                // at the token's own path is the token itself.
                let carried = match (key.exact(), key.value.is_string()) {
                    (false, _) => Carried::Dotted,
                    (true, true) => Carried::ServiceToken { output: name.clone() },
                    (true, false) => Carried::ServiceTokenReference { output: name.clone() },
                };
                found.push(SiteSetting { field: key.field, carried });
            }
        }
        found
    }
}

/// A key found by [`below`].
struct Below<'a> {
    /// The field as written, dotted from the top.
    field: String,
    /// The key's name right below the prefix (the first part of a dotted key reaching further).
    name: &'a str,
    value: &'a Value,
    /// Whether the prefix was written one key per level, so a reader of nested keys (the
    /// appliance) finds the map holding this key.
    prefix_nested: bool,
    /// Whether the key itself is just `name`, not a dotted key reaching further down.
    single: bool,
}

impl Below<'_> {
    /// Whether a reader of nested keys finds this key under its logical path.
    fn exact(&self) -> bool {
        self.prefix_nested && self.single
    }
}

/// The keys right below the path `prefix` of `map`, with their fields dotted from `written`.
/// Agents read a dotted key (`fleet.ssl: ...`) as the nested one, so a hand-edited policy that
/// writes it so is looked at too; a dotted key reaching further down is listed under its first
/// name below `prefix`.
fn below<'a>(map: &'a Map<String, Value>, prefix: &[&str], written: &str) -> Vec<Below<'a>> {
    let mut found = Vec::new();
    walk(map, prefix, written, true, &mut found);
    found
}

fn walk<'a>(
    map: &'a Map<String, Value>,
    prefix: &[&str],
    written: &str,
    nested: bool,
    found: &mut Vec<Below<'a>>,
) {
    for (key, value) in map {
        let segments: Vec<&str> = key.split('.').collect();
        let shared = segments.len().min(prefix.len());
        if segments[..shared] != prefix[..shared] {
            continue;
        }
        let field = if written.is_empty() { key.clone() } else { format!("{written}.{key}") };
        if let Some(name) = segments.get(prefix.len()) {
            found.push(Below {
                field,
                name,
                value,
                prefix_nested: nested && prefix.is_empty(),
                single: segments.len() == 1,
            });
        } else if let Value::Object(inner) = value {
            walk(inner, &prefix[segments.len()..], &field, nested && segments.len() == 1, found);
        }
    }
}

/// Whether a field carries a value: null and empty mappings, lists and strings do not, and
/// warning about them would only teach operators to skip the warnings.
fn carries(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Object(map) => !map.is_empty(),
        Value::Array(list) => !list.is_empty(),
        Value::String(text) => !text.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "id: p1\nrevision: 3\nname: Linux\noutputs:\n  default:\n    type: elasticsearch\ninputs: []\n";

    #[test]
    fn parses_yaml_and_json() {
        let p = Policy::parse(GOOD.as_bytes(), "p.yml").unwrap();
        assert_eq!(
            (p.id.as_str(), p.revision, p.name.as_deref(), p.inputs),
            ("p1", 3, Some("Linux"), 0)
        );
        assert_eq!(p.outputs, [("default".to_owned(), "elasticsearch".to_owned())]);
        let json = r#"{"item": {"id": "p2", "revision": 1, "outputs": {"o": {"type": "logstash"}}, "inputs": [{}]}}"#;
        let p = Policy::parse(json.as_bytes(), "p.json").unwrap();
        assert_eq!((p.id.as_str(), p.inputs), ("p2", 1));
    }

    #[test]
    fn refusals_name_file_and_field() {
        let cases = [
            ("revision: 3\noutputs: {a: {type: logstash}}\ninputs: []\n", "`id` is missing"),
            ("id: p\nrevision: x\noutputs: {a: {type: logstash}}\ninputs: []\n", "`revision`"),
            ("id: p\nrevision: 1\ninputs: []\n", "`outputs` is missing"),
            ("id: p\nrevision: 1\noutputs: {}\ninputs: []\n", "`outputs` has no output"),
            (
                "id: p\nrevision: 1\noutputs: {a: {type: carrier-pigeon}}\ninputs: []\n",
                "`outputs.a.type` is \"carrier-pigeon\"",
            ),
            (
                "id: p\nrevision: 1\noutputs: {a: {hosts: []}}\ninputs: []\n",
                "`outputs.a.type` is missing",
            ),
            ("id: p\nrevision: 1\noutputs: {a: {type: kafka}}\n", "`inputs` is missing"),
            ("- a\n- b\n", "not a mapping"),
            ("id: [unclosed\n", "not valid YAML"),
        ];
        for (text, says) in cases {
            let err = Policy::parse(text.as_bytes(), "policies/x.yml").unwrap_err().to_string();
            assert!(err.contains("policies/x.yml") && err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn output_types_are_the_four_fleet_server_prepares_and_refusals_list_them() {
        let mut known = OUTPUT_TYPES.to_vec();
        known.sort_unstable();
        assert_eq!(known, ["elasticsearch", "kafka", "logstash", "remote_elasticsearch"]);
        for kind in OUTPUT_TYPES {
            let text =
                format!("id: p\nrevision: 1\noutputs: {{a: {{type: {kind}}}}}\ninputs: []\n");
            assert!(Policy::parse(text.as_bytes(), "p.yml").is_ok(), "{kind}");
        }
        let text = "id: p\nrevision: 1\noutputs: {a: {type: otel}}\ninputs: []\n";
        let err = Policy::parse(text.as_bytes(), "p.yml").unwrap_err().to_string();
        assert!(
            err.ends_with("known types: elasticsearch, logstash, kafka, remote_elasticsearch"),
            "{err}"
        );
    }

    /// (field, kind of setting) for each carried setting, in the order they are listed.
    fn carried(text: &str) -> Vec<(String, Carried)> {
        let policy = Policy::parse(text.as_bytes(), "p").unwrap();
        policy.carried_site_settings().into_iter().map(|s| (s.field, s.carried)).collect()
    }

    fn fields(found: &[(String, Carried)]) -> Vec<&str> {
        found.iter().map(|(field, _)| field.as_str()).collect()
    }

    #[test]
    fn a_kibana_yaml_export_lists_each_site_setting_it_carries() {
        // The shape of Kibana's "download policy": fleet hosts with the site's proxy and TLS,
        // its download source, and outputs of every kind.
        let text = r#"
id: site-a
revision: 7
outputs:
  default:
    type: elasticsearch
    hosts: ["https://es.site-a:9200"]
    service_token: not-remote-so-not-listed
    ssl: {certificate_authorities: ["/etc/ca.pem"]}
  remote:
    type: remote_elasticsearch
    hosts: ["https://es.remote:9200"]
    service_token: AAEAAWVsYXN0aWMvZmxlZXQtc2VydmVyL3Rva2VuLTE6c2VjcmV0
  ls:
    type: logstash
    hosts: ["ls.site-a:5044"]
fleet:
  hosts: ["https://fleet.site-a:8220"]
  proxy_url: http://proxy.site-a:3128
  proxy_headers: {X-Site: a}
  proxy_disable: false
  ssl:
    certificate_authorities: ["/etc/site-a-ca.pem"]
  secrets:
    ssl: {key: {id: fleet-key-secret}}
agent:
  monitoring: {enabled: true}
  download:
    sourceURI: https://artifacts.elastic.co/downloads/
    proxy_url: http://proxy.site-a:3128
    proxy_headers: null
    proxy_disable: true
    ssl: {verification_mode: full}
    timeout: 2h
inputs: []
"#;
        let found = carried(text);
        let mut fleet: Vec<&str> =
            found.iter().filter(|(_, c)| *c == Carried::Fleet).map(|(f, _)| f.as_str()).collect();
        fleet.sort_unstable();
        assert_eq!(
            fleet,
            [
                "fleet.proxy_disable",
                "fleet.proxy_headers",
                "fleet.proxy_url",
                "fleet.secrets",
                "fleet.ssl"
            ]
        );
        let mut download: Vec<&str> = found
            .iter()
            .filter(|(_, c)| *c == Carried::Download)
            .map(|(f, _)| f.as_str())
            .collect();
        download.sort_unstable();
        // proxy_headers is null and timeout is the agent's own, so neither is listed.
        assert_eq!(
            download,
            [
                "agent.download.proxy_disable",
                "agent.download.proxy_url",
                "agent.download.sourceURI",
                "agent.download.ssl"
            ]
        );
        let tokens: Vec<_> = found
            .iter()
            .filter(|(_, c)| !matches!(c, Carried::Fleet | Carried::Download))
            .cloned()
            .collect();
        assert_eq!(
            tokens,
            [(
                "outputs.remote.service_token".to_owned(),
                Carried::ServiceToken { output: "remote".into() }
            )]
        );
        // Grouped as documented: fleet, then agent.download, then outputs.
        let groups: Vec<&str> =
            fields(&found).iter().map(|f| f.split('.').next().unwrap()).collect();
        let mut sorted = groups.clone();
        sorted.sort_by_key(|g| ["fleet", "agent", "outputs"].iter().position(|x| x == g));
        assert_eq!(groups, sorted);
        assert_eq!(found.len(), 10);
    }

    #[test]
    fn a_kibana_json_export_wrapped_in_item_is_read_the_same() {
        // Kibana's API answers {"item": {...}}; a stored secret is a reference by id.
        let text = r#"{"item": {
            "id": "site-b", "revision": 2, "inputs": [],
            "outputs": {
                "remote": {"type": "remote_elasticsearch", "hosts": ["https://r:9200"],
                           "secrets": {"service_token": {"id": "Q2vRz4kBpO"}}},
                "remote-clear": {"type": "remote_elasticsearch", "hosts": ["https://r:9200"],
                                 "secrets": {"service_token": "in-clear"}},
                "remote-null": {"type": "remote_elasticsearch", "hosts": ["https://r:9200"],
                                "service_token": null},
                "kafka": {"type": "kafka", "hosts": ["k:9092"]}
            },
            "fleet": {"hosts": ["https://fleet.site-b:8220"], "proxy_url": null, "ssl": {}},
            "agent": {"download": {"source_uri": "https://mirror.site-b/downloads/",
                                   "proxy_headers": {"Authorization": "Basic eDp5"}}}
        }}"#;
        let found = carried(text);
        let mut found = found.clone();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            found,
            [
                ("agent.download.proxy_headers".to_owned(), Carried::Download),
                ("agent.download.source_uri".to_owned(), Carried::Download),
                (
                    "outputs.remote-clear.secrets.service_token".to_owned(),
                    Carried::ServiceToken { output: "remote-clear".into() }
                ),
                (
                    "outputs.remote.secrets.service_token".to_owned(),
                    Carried::ServiceTokenReference { output: "remote".into() }
                ),
            ]
        );
    }

    #[test]
    fn dotted_keys_are_read_as_the_agent_reads_them() {
        // At the top, dotted keys escape the appliance, which reads nested keys as Kibana
        // writes them; the agent would read and use them.
        let text = r#"
id: p
revision: 1
inputs: []
fleet.hosts: ["https://fleet:8220"]
fleet.ssl.verification_mode: none
agent.download.proxy_url: http://proxy:3128
agent:
  download.ssl: {verification_mode: none}
  logging.level: debug
outputs:
  r:
    type: remote_elasticsearch
    secrets.service_token.id: abc
"#;
        let mut found = carried(text);
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            found,
            [
                ("agent.download.proxy_url".to_owned(), Carried::Dotted),
                ("agent.download.ssl".to_owned(), Carried::Dotted),
                ("fleet.hosts".to_owned(), Carried::Dotted),
                ("fleet.ssl.verification_mode".to_owned(), Carried::Dotted),
                ("outputs.r.secrets.service_token.id".to_owned(), Carried::Dotted),
            ]
        );
        // Inside a nested `fleet` a dotted key goes with the rest of `fleet`; inside
        // `agent.download` it escapes, as the appliance removes the settings by their own name.
        let text = r#"
id: p
revision: 1
inputs: []
fleet:
  hosts: ["https://fleet:8220"]
  ssl.verification_mode: none
agent:
  download:
    ssl.verification_mode: none
    proxy_url: http://proxy:3128
outputs:
  r:
    type: remote_elasticsearch
    secrets:
      service_token: {id: s1}
"#;
        let mut found = carried(text);
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            found,
            [
                ("agent.download.proxy_url".to_owned(), Carried::Download),
                ("agent.download.ssl.verification_mode".to_owned(), Carried::Dotted),
                ("fleet.ssl.verification_mode".to_owned(), Carried::Fleet),
                (
                    "outputs.r.secrets.service_token".to_owned(),
                    Carried::ServiceTokenReference { output: "r".into() }
                ),
            ]
        );
    }

    #[test]
    fn a_policy_without_site_settings_lists_none() {
        assert_eq!(carried(GOOD), []);
        let text = "id: p\nrevision: 1\ninputs: []\nfleet: {hosts: [https://f:8220]}\n\
                    agent: {download: {timeout: 2h}, monitoring: {enabled: false}}\n\
                    outputs: {r: {type: remote_elasticsearch, hosts: [https://r:9200]}, \
                    k: {type: kafka, service_token: x}}\n";
        assert_eq!(carried(text), []);
    }

    #[test]
    fn each_setting_says_what_happens_to_it() {
        let says = |field: &str, carried: Carried| {
            SiteSetting { field: field.into(), carried }.to_string()
        };
        assert_eq!(
            says("fleet.ssl", Carried::Fleet),
            "the appliance replaces `fleet` with its own; `fleet.ssl` is dropped on delivery"
        );
        assert_eq!(
            says("agent.download.proxy_url", Carried::Download),
            "`agent.download.proxy_url` is dropped on delivery; the appliance sets the download \
             source and TLS itself"
        );
        assert_eq!(
            says("outputs.r.service_token", Carried::ServiceToken { output: "r".into() }),
            "`outputs.r.service_token` is a service token and travels in the bundle in clear; \
             the appliance delivers output `r` as `elasticsearch` without it"
        );
        assert_eq!(
            says(
                "outputs.r.secrets.service_token",
                Carried::ServiceTokenReference { output: "r".into() }
            ),
            "`outputs.r.secrets.service_token` refers to a secret of the exporting site's Fleet, \
             which the isolated site cannot read; the appliance delivers output `r` as \
             `elasticsearch` without it"
        );
        assert_eq!(
            says("agent.download.proxy_url", Carried::Dotted),
            "`agent.download.proxy_url` is a setting of the exporting site written as a dotted \
             key, which the appliance does not strip but agents read as nested; write it one key \
             per level or remove it"
        );
    }
}
