//! Agent policies as Kibana exports them ("full agent policy", YAML or JSON), checked for what
//! an agent needs before one travels in a bundle, and made the site's when the appliance
//! delivers one: the builder's warnings and the appliance's delivery share that rule.

use std::fmt;

use serde_json::{Map, Value, json};

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

/// A setting of the exporting site that a policy carries, which [`deliver_for_site`] removes on
/// delivery. `ferry build` warns about each except the addresses (see
/// [`Policy::carried_site_settings`]) and goes on: the policy is still good, but the operator
/// should know what the agents will not get, or that a secret travels in the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSetting {
    /// The field as written in the policy, dotted from its top (below any `item` wrapper): a
    /// dotted key is named whole, so `fleet.ssl.verification_mode` may be one key.
    pub field: String,
    pub carried: Carried,
}

/// What kind of site setting a [`SiteSetting`] is, which decides what the appliance does to it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Carried {
    /// Where agents reach the exporting site: `fleet.hosts`, or the download source
    /// `agent.download.sourceURI` / `source_uri`. Nearly every export carries them and the
    /// appliance always puts its own in their place, so the builder does not warn about them.
    Address,
    /// A key under `fleet` other than `hosts`: the appliance replaces `fleet` with its own.
    Fleet,
    /// A download proxy or TLS setting under `agent.download`.
    Download,
    /// The service token of a `remote_elasticsearch` output, as text.
    ServiceToken { output: String },
    /// The service token of a `remote_elasticsearch` output as a reference into the exporting
    /// Fleet's secret store (`secrets.service_token.id`), which nothing at the site can read.
    ServiceTokenReference { output: String },
}

impl fmt::Display for SiteSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = &self.field;
        match &self.carried {
            Carried::Address => write!(
                f,
                "`{field}` is an address of the exporting site; the appliance puts its own in its \
                 place on delivery"
            ),
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
        }
    }
}

impl Policy {
    /// The settings of the exporting site this policy carries: what [`deliver_for_site`]
    /// removes from it, less the [`Carried::Address`]es, in the same order. The same walk
    /// does both, so the builder warns about exactly what the appliance strips.
    pub fn carried_site_settings(&self) -> Vec<SiteSetting> {
        let mut copy = self.document.clone();
        strip_exporting_site(&mut copy)
            .into_iter()
            .filter(|setting| setting.carried != Carried::Address)
            .collect()
    }
}

/// The site a policy is delivered at, as its agents reach the appliance there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteConnection<'a> {
    /// The appliance's base URL without a trailing slash: the agents' Fleet Server host, and
    /// with `/downloads/` their download source.
    pub public_base: &'a str,
    /// The CA (PEM) agents verify downloads from the appliance with, when it is a private one.
    pub download_ca: Option<&'a str>,
}

/// Makes a policy the site's: removes what belongs to the site that exported it and writes the
/// site's own connection in its place. Returns what was removed, with the fields as written;
/// a field that is null or empty carried nothing and is removed without being listed.
///
/// - `fleet` is replaced whole by `{hosts: [public_base]}`: a Kibana export carries the hosts,
///   TLS and proxy of the exporting site's Fleet Server, which agents would otherwise try.
/// - `agent.download` keeps its other settings (timeouts, retries), but its source becomes the
///   appliance's mirror, `<public_base>/downloads/`, and its proxy and TLS settings go: agents
///   reach the appliance directly. `source_uri` goes too, as it wins over `sourceURI`, and the
///   downloader takes TLS only from `agent.download.ssl`, never from the CA an agent enrolled
///   with (elastic-agent internal/pkg/agent/application/upgrade/artifact/config.go, `Reload`),
///   so a private CA (`download_ca`) is written there for an upgrade to verify the mirror.
/// - `remote_elasticsearch` outputs go out as `elasticsearch` without their `service_token` or
///   `secrets.service_token`, as Fleet Server delivers them (fleet-server
///   internal/pkg/policy/policy_output.go): the token is Fleet Server's, for the remote
///   cluster, never the agents'. A `secrets` left empty goes as well.
///
/// The agent reads its policy with `ucfg.PathSep(".")` (elastic-agent
/// internal/pkg/config/config.go), so a dotted key is the nested one: `agent.download.ssl: ...`
/// at the top, `download.ssl` inside `agent` or `ssl.verification_mode` inside
/// `agent.download` are all `agent.download.ssl`, and are all removed. A mapping left empty by
/// the removals goes with them. A document that is not a mapping is left alone
/// ([`Policy::parse`] refuses those).
pub fn deliver_for_site(doc: &mut Value, site: &SiteConnection<'_>) -> Vec<SiteSetting> {
    let removed = strip_exporting_site(doc);
    let Some(top) = doc.as_object_mut() else { return removed };
    top.insert("fleet".into(), json!({ "hosts": [site.public_base] }));
    let download = mapping(mapping(top, "agent"), "download");
    download.insert("sourceURI".into(), json!(format!("{}/downloads/", site.public_base)));
    if let Some(pem) = site.download_ca {
        download.insert("ssl".into(), json!({ "certificate_authorities": [pem] }));
    }
    if let Some(Value::Object(outputs)) = top.get_mut("outputs") {
        for output in outputs.values_mut().filter_map(Value::as_object_mut) {
            if output.get("type").and_then(Value::as_str) == Some("remote_elasticsearch") {
                output.insert("type".into(), json!("elasticsearch"));
            }
        }
    }
    removed
}

/// The removing half of [`deliver_for_site`]: every setting of the exporting site, listed
/// `fleet` first, then `agent.download`, then the outputs' tokens, each in the document's order.
fn strip_exporting_site(doc: &mut Value) -> Vec<SiteSetting> {
    let Some(top) = doc.as_object_mut() else { return Vec::new() };
    let mut found = Vec::new();
    let fleet = [Setting { parent: vec!["fleet"], names: &[] }];
    strip_group(top, &fleet, &mut found, |key| match key.name.as_str() {
        "hosts" => Carried::Address,
        _ => Carried::Fleet,
    });
    let download = [Setting { parent: vec!["agent", "download"], names: &DOWNLOAD_SETTINGS }];
    strip_group(top, &download, &mut found, |key| match key.name.as_str() {
        "sourceURI" | "source_uri" => Carried::Address,
        _ => Carried::Download,
    });
    let remote: Vec<String> = match top.get("outputs") {
        Some(Value::Object(outputs)) => outputs
            .iter()
            .filter(|(_, o)| o.get("type").and_then(Value::as_str) == Some("remote_elasticsearch"))
            .map(|(name, _)| name.clone())
            .collect(),
        _ => Vec::new(),
    };
    for name in &remote {
        // Output names are keys of `outputs`, and the agent splits a dotted one like any other.
        let output: Vec<&str> = std::iter::once("outputs").chain(name.split('.')).collect();
        let secrets = output.iter().copied().chain(["secrets"]).collect();
        let tokens = [
            Setting { parent: output, names: &["service_token"] },
            Setting { parent: secrets, names: &["service_token"] },
        ];
        strip_group(top, &tokens, &mut found, |key| {
            // Kibana writes a stored secret as `secrets.service_token: {id: ...}`; a string at
            // the token's own path is the token itself.
            let output = name.clone();
            if key.whole && key.value.is_string() {
                Carried::ServiceToken { output }
            } else {
                Carried::ServiceTokenReference { output }
            }
        });
    }
    found
}

/// The mapping at `key` of `map`, made one if it is missing or something else.
fn mapping<'m>(map: &'m mut Map<String, Value>, key: &str) -> &'m mut Map<String, Value> {
    let value = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut().expect("made a mapping")
}

/// Settings of the exporting site: the keys named `names` (any key when empty) of the mapping
/// at the logical path `parent`, with everything below them.
struct Setting<'a> {
    parent: Vec<&'a str>,
    names: &'a [&'a str],
}

impl Setting<'_> {
    /// Whether a key at the logical path `path` is (or reaches into) this setting.
    fn reached_by(&self, path: &[String]) -> bool {
        let depth = self.parent.len();
        path.len() > depth
            && path[..depth] == self.parent[..]
            && (self.names.is_empty() || self.names.contains(&path[depth].as_str()))
    }

    /// Whether a key at the logical path `path` may hold this setting further down.
    fn held_below(&self, path: &[String]) -> bool {
        path.len() <= self.parent.len() && path[..] == self.parent[..path.len()]
    }
}

/// A key removed by [`strip`].
struct Removed {
    /// The field as written, dotted from the top.
    field: String,
    /// The setting's name below its parent.
    name: String,
    /// Whether the key ends at the setting rather than reaching into it (`ssl` rather than
    /// `ssl.verification_mode`).
    whole: bool,
    value: Value,
}

/// Strips `settings` from the document's top mapping and lists those carrying a value in
/// `found`, each of the kind `kind` says.
fn strip_group(
    top: &mut Map<String, Value>,
    settings: &[Setting<'_>],
    found: &mut Vec<SiteSetting>,
    kind: impl Fn(&Removed) -> Carried,
) {
    let mut removed = Vec::new();
    strip(top, &[], "", settings, &mut removed);
    found.extend(
        removed
            .into_iter()
            .filter(|key| carries(&key.value))
            .map(|key| SiteSetting { carried: kind(&key), field: key.field }),
    );
}

/// Removes from `map`, found at the logical path `at` and written as `written`, every key that
/// is or reaches into one of `settings`, and looks into the mappings that may hold one further
/// down. A key is read as the agent reads it: split at its dots.
fn strip(
    map: &mut Map<String, Value>,
    at: &[String],
    written: &str,
    settings: &[Setting<'_>],
    removed: &mut Vec<Removed>,
) {
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let path: Vec<String> =
            at.iter().cloned().chain(key.split('.').map(str::to_owned)).collect();
        let field = if written.is_empty() { key.clone() } else { format!("{written}.{key}") };
        if let Some(setting) = settings.iter().find(|s| s.reached_by(&path)) {
            let depth = setting.parent.len();
            removed.push(Removed {
                field,
                name: path[depth].clone(),
                whole: path.len() == depth + 1,
                value: map.remove(&key).expect("a key of the map"),
            });
        } else if settings.iter().any(|s| s.held_below(&path)) {
            let Some(Value::Object(inner)) = map.get_mut(&key) else { continue };
            let before = removed.len();
            strip(inner, &path, &field, settings, removed);
            if inner.is_empty() && removed.len() > before {
                map.remove(&key);
            }
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
        // proxy_headers is null and timeout is the agent's own, so neither is listed; nor is
        // sourceURI, which every export carries and the appliance always replaces.
        assert_eq!(
            download,
            ["agent.download.proxy_disable", "agent.download.proxy_url", "agent.download.ssl"]
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
        assert_eq!(found.len(), 9);
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
        // The agent reads a dotted key as the nested one, so each of these is a site setting,
        // dropped like its nested spelling and warned about with the same text.
        let text = r#"
id: p
revision: 1
inputs: []
fleet.hosts: ["https://fleet:8220"]
fleet.ssl.verification_mode: none
agent.download.proxy_url: http://proxy:3128
agent.download.sourceURI: https://artifacts.elastic.co/downloads/
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
                ("agent.download.proxy_url".to_owned(), Carried::Download),
                ("agent.download.ssl".to_owned(), Carried::Download),
                ("fleet.ssl.verification_mode".to_owned(), Carried::Fleet),
                (
                    "outputs.r.secrets.service_token.id".to_owned(),
                    Carried::ServiceTokenReference { output: "r".into() }
                ),
            ]
        );
        // Dotted keys inside the nested mappings, and `agent.download` and a token written as
        // one dotted key each.
        let text = r#"
id: p
revision: 1
inputs: []
fleet:
  hosts: ["https://fleet:8220"]
  ssl.verification_mode: none
agent.download: {proxy_disable: true, timeout: 2h}
agent:
  download:
    ssl.verification_mode: none
    proxy_url: http://proxy:3128
outputs.r.service_token: in-clear
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
                ("agent.download.proxy_disable".to_owned(), Carried::Download),
                ("agent.download.proxy_url".to_owned(), Carried::Download),
                ("agent.download.ssl.verification_mode".to_owned(), Carried::Download),
                ("fleet.ssl.verification_mode".to_owned(), Carried::Fleet),
                (
                    "outputs.r.secrets.service_token".to_owned(),
                    Carried::ServiceTokenReference { output: "r".into() }
                ),
                (
                    "outputs.r.service_token".to_owned(),
                    Carried::ServiceToken { output: "r".into() }
                ),
            ]
        );
    }

    const SITE: SiteConnection<'static> =
        SiteConnection { public_base: "https://ferry.site:8220", download_ca: Some("PEM") };

    #[test]
    fn delivery_strips_every_spelling_and_writes_the_site_s_own() {
        let mut doc = json!({
            "id": "p", "revision": 1, "inputs": [],
            "fleet": { "hosts": ["https://fleet.corp:8220"], "proxy_url": null },
            "fleet.ssl.verification_mode": "none",
            "agent.download": { "proxy_url": "http://proxy.corp:3128", "timeout": "2h" },
            "agent.download.ssl.verification_mode": "none",
            "agent": { "download.source_uri": "https://mirror.corp/", "logging.level": "debug",
                       "download": { "sourceURI": "https://artifacts.elastic.co/downloads/",
                                     "proxy_headers.X-Site": "corp" } },
            "outputs": {
                "r": { "type": "remote_elasticsearch", "hosts": ["https://es.hq:9200"],
                       "secrets.service_token": { "id": "s1" }, "secrets": { "ssl": { "key": "k" } } },
                "r.x": { "type": "remote_elasticsearch", "service_token": "dotted-name" },
                "ls": { "type": "logstash", "hosts": ["ls:5044"], "service_token": "kept" }
            },
            "outputs.r.secrets": { "service_token": "in-clear" }
        });
        let removed = deliver_for_site(&mut doc, &SITE);
        assert_eq!(
            doc,
            json!({
                "id": "p", "revision": 1, "inputs": [],
                "fleet": { "hosts": ["https://ferry.site:8220"] },
                "agent.download": { "timeout": "2h" },
                "agent": { "logging.level": "debug",
                           "download": { "sourceURI": "https://ferry.site:8220/downloads/",
                                         "ssl": { "certificate_authorities": ["PEM"] } } },
                "outputs": {
                    "r": { "type": "elasticsearch", "hosts": ["https://es.hq:9200"],
                           "secrets": { "ssl": { "key": "k" } } },
                    "r.x": { "type": "elasticsearch" },
                    "ls": { "type": "logstash", "hosts": ["ls:5044"], "service_token": "kept" }
                }
            })
        );
        // Listed as written and in the document's order (serde_json's maps are sorted), the
        // addresses included; the null `fleet.proxy_url` is not.
        let listed: Vec<(&str, &Carried)> =
            removed.iter().map(|s| (s.field.as_str(), &s.carried)).collect();
        let reference = Carried::ServiceTokenReference { output: "r".into() };
        assert_eq!(
            listed,
            [
                ("fleet.hosts", &Carried::Address),
                ("fleet.ssl.verification_mode", &Carried::Fleet),
                ("agent.download.proxy_headers.X-Site", &Carried::Download),
                ("agent.download.sourceURI", &Carried::Address),
                ("agent.download.source_uri", &Carried::Address),
                ("agent.download.proxy_url", &Carried::Download),
                ("agent.download.ssl.verification_mode", &Carried::Download),
                ("outputs.r.secrets.service_token", &reference),
                ("outputs.r.secrets.service_token", &Carried::ServiceToken { output: "r".into() }),
                ("outputs.r.x.service_token", &Carried::ServiceToken { output: "r.x".into() }),
            ]
        );
    }

    #[test]
    fn the_builder_warns_about_what_delivery_removes_but_the_addresses() {
        let text = r#"
id: p
revision: 1
inputs: []
fleet: {hosts: ["https://fleet:8220"], ssl: {verification_mode: none}}
fleet.proxy_url: http://proxy:3128
agent: {download: {source_uri: "https://mirror/", proxy_disable: true}}
outputs: {r: {type: remote_elasticsearch, service_token: t}}
"#;
        let policy = Policy::parse(text.as_bytes(), "p").unwrap();
        let delivered = deliver_for_site(&mut policy.document.clone(), &SITE);
        let warned = policy.carried_site_settings();
        assert_eq!(
            warned,
            delivered.into_iter().filter(|s| s.carried != Carried::Address).collect::<Vec<_>>()
        );
        assert_eq!(warned.len(), 4, "{warned:?}");
        // Delivering a delivered policy again changes nothing: the appliance's own settings
        // are replaced by themselves.
        let mut once = policy.document.clone();
        deliver_for_site(&mut once, &SITE);
        let mut twice = once.clone();
        deliver_for_site(&mut twice, &SITE);
        assert_eq!(once, twice);
    }

    #[test]
    fn without_a_download_ca_delivery_sets_no_download_tls() {
        let mut doc = json!({ "id": "p", "agent": "odd", "outputs": {} });
        let removed = deliver_for_site(
            &mut doc,
            &SiteConnection { public_base: "https://ferry.site:8220", download_ca: None },
        );
        assert_eq!(removed, []);
        assert_eq!(
            doc,
            json!({ "id": "p", "outputs": {}, "fleet": { "hosts": ["https://ferry.site:8220"] },
                    "agent": { "download": { "sourceURI": "https://ferry.site:8220/downloads/" } } })
        );
        let mut not_a_policy = json!(["a"]);
        assert_eq!(deliver_for_site(&mut not_a_policy, &SITE), []);
        assert_eq!(not_a_policy, json!(["a"]));
    }

    #[test]
    fn a_policy_without_site_settings_lists_none() {
        assert_eq!(carried(GOOD), []);
        // The addresses every export carries are not listed.
        let text = "id: p\nrevision: 1\ninputs: []\nfleet: {hosts: [https://f:8220]}\n\
                    agent: {download: {timeout: 2h, sourceURI: https://a/, source_uri: https://b/}, \
                    monitoring: {enabled: false}}\n\
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
            says("fleet.hosts", Carried::Address),
            "`fleet.hosts` is an address of the exporting site; the appliance puts its own in its \
             place on delivery"
        );
    }
}
