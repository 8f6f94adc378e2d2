//! Fleet secrets in agent policies: the secret ids a policy needs, their resolution at delivery
//! the way Fleet Server resolves them, and the output credentials a policy carries in clear.
//!
//! A policy exported from Kibana never holds a secret's value, only references to Fleet's
//! secret store, in two spellings (fleet-server `internal/pkg/secret/secret.go`):
//!
//! - inline: `$co.elastic.secret{ID}` anywhere in a string, several per string allowed;
//! - path: a `secrets` mapping whose leaves are `{id: ID}`, the path to a leaf naming the field
//!   the value goes to (`secrets: {ssl: {key: {id: ID}}}` sets `ssl.key`).
//!
//! The values cross the gap separately: the operator sets them on the appliance by id, and the
//! appliance resolves the references on delivery with [`resolve`]. Everything here is a pure
//! function over the policy document as [`crate::Policy::parse`] holds it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use serde_json::{Map, Value};

/// What opens an inline reference; the id runs to the next `}`.
const REFERENCE_OPEN: &str = "$co.elastic.secret{";

/// The key of the path form's mapping.
const SECRETS: &str = "secrets";

/// A `remote_elasticsearch` output's service token: Fleet Server's, never the agents'.
const REMOTE_TOKEN: &str = "service_token";

/// The OTel sections whose components Fleet Server resolves secrets in, each component like
/// `agent.download` (fleet-server `internal/pkg/policy/parsed_policy.go`, `NewParsedPolicy`).
const OTEL_SECTIONS: [&str; 5] =
    ["receivers", "exporters", "processors", "extensions", "connectors"];

/// Every secret id the policy needs a value for on the appliance: the ids of
/// `secret_references`, and those of every inline and path-form reference in the sections
/// Fleet Server resolves (outputs, inputs with their streams at any depth, `agent.download`,
/// `fleet`, and the components of the OTel sections).
///
/// Two kinds of id are left out:
///
/// - an empty one (`$co.elastic.secret{}`, `{id: ""}`): no value can be set for it, and Fleet
///   Server leaves such a reference as written;
/// - the service token of a `remote_elasticsearch` output, unless the id is used elsewhere too:
///   it is Fleet Server's own credential for the remote cluster, never delivered to agents, and
///   the appliance delivers those outputs without it ([`crate::policy::deliver_for_site`]).
///   This holds only while the document still shows the token, so the appliance resolves a
///   policy as exported, before `deliver_for_site` strips it.
///
/// Inline references in inputs are listed even when `secret_references` is empty, though
/// Fleet Server, and so [`resolve`], then leaves the inputs as they are: such a policy is not
/// one Kibana writes, and an operator shown the ids can see what the agents will lack.
pub fn referenced_ids(doc: &Value) -> BTreeSet<String> {
    let mut copy = doc.clone();
    let Some(top) = copy.as_object_mut() else { return BTreeSet::new() };
    let listed = listed_references(top);
    let mut used = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    for mut section in sections(top, true) {
        let token = take_token(&mut section);
        for value in token.iter().flatten() {
            inline_ids_in(value, &mut tokens);
            path_ids_in(value, &mut tokens);
        }
        inline_ids(section.map, &mut used);
        path_ids(section.map, section.depth, &mut used);
    }
    let only_tokens: BTreeSet<String> = tokens.difference(&used).cloned().collect();
    used.extend(listed.into_iter().filter(|id| !only_tokens.contains(id)));
    used
}

/// Secret ids a policy needs that have no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MissingSecrets {
    pub ids: BTreeSet<String>,
}

impl fmt::Display for MissingSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.ids.iter().map(String::as_str).collect();
        write!(
            f,
            "the policy needs {} secret(s) that have no value: {} (set each with \
             `ferry-appliance secrets set ID`)",
            ids.len(),
            ids.join(", ")
        )
    }
}

/// Replaces every secret reference of the policy with its value from `values` (id → value),
/// as Fleet Server does before it hands a policy to an agent, and removes `secret_references`.
/// Returns the fields replaced, dotted from the top, sorted and without duplicates: Fleet
/// Server's `secret_paths`, which the delivered policy carries under that name
/// (`internal/pkg/api/handleCheckin.go`, `processPolicy`), such as
/// `inputs.0.streams.0.password` or `outputs.default.ssl.key`. A path-form key is named as
/// written, so `secrets: {"auth.basic.password": {id: ..}}` gives `...auth.basic.password`.
///
/// When an id [`referenced_ids`] lists has no value, nothing is changed and the missing ids
/// are returned.
///
/// Fleet Server resolves before it prepares outputs; the appliance likewise resolves the policy
/// as exported and then applies [`crate::policy::deliver_for_site`], which removes what was
/// resolved into `fleet` and into `agent.download`'s TLS along with the rest of the exporting
/// site's settings (the other order would leave `agent.download.secrets` to set the exporting
/// site's download key again). A returned path whose field delivery then removed names nothing
/// the agent receives; drop it from `secret_paths`, as Fleet Server drops the remote service
/// token's once it deleted the token.
///
/// What Fleet Server does, and this does too:
///
/// - Sections are outputs, inputs, `agent.download`, `fleet` and the OTel components, each
///   inline references first, then the path form.
/// - Inline references are replaced in every string at any depth, left to right; a string is
///   listed by its own path (`fleet.hosts.0`).
/// - The path form is read from the section's top `secrets` mapping, except in inputs, where
///   every mapping at any depth (streams, and mappings in lists) is looked at. `secrets` is
///   removed whatever it holds; a leaf is a mapping with a non-empty string `id`, and the
///   mappings on the way to it are made, replacing anything else that was there.
/// - Inputs are left alone when `secret_references` is empty or missing (`ProcessInputsSecrets`
///   in `secret.go`), `secrets` mappings included; the other sections are not.
/// - In a string, replacing stops at the first reference with no value, which only an empty id
///   can be here (`replaceStringRef`).
///
/// What it does differently, on purpose:
///
/// - Fleet Server searches the string again from its start after each replacement, so a value
///   that itself contains `$co.elastic.secret{..}` would be expanded again (and a value
///   naming its own id would loop). Values are inserted as they are here.
/// - Fleet Server has values only for the ids in `secret_references`: a reference to another id
///   stays as written (inline) or becomes `""` (path form). Here every referenced id needs a
///   value, so nothing is delivered half-resolved. A Kibana export lists every id it uses, so
///   the two agree on those.
/// - Fleet Server writes the inline replacements of outputs, `agent.download`, `fleet` and OTel
///   components back by dotted path, and fails the whole policy when a key holds a dot or is a
///   number; they are written in place here.
/// - A path-form `secrets: {id: ..}` at a section's top names no field: Fleet Server fails on it
///   (an index out of range); it is ignored here, and the `secrets` mapping removed.
/// - The service token of a `remote_elasticsearch` output is not resolved: Fleet Server resolves
///   it for its own use, deletes it from the policy and its path from `secret_paths`
///   (`processPolicy`); the appliance delivers the output without it. Its path-form leaf goes
///   with the `secrets` mapping, and an inline one is left for `deliver_for_site` to remove.
pub fn resolve(
    doc: &mut Value,
    values: &BTreeMap<String, String>,
) -> Result<Vec<String>, MissingSecrets> {
    let missing: BTreeSet<String> =
        referenced_ids(doc).into_iter().filter(|id| !values.contains_key(id)).collect();
    if !missing.is_empty() {
        return Err(MissingSecrets { ids: missing });
    }
    let Some(top) = doc.as_object_mut() else { return Ok(Vec::new()) };
    // Fleet Server asks only whether the list has items, not whether they hold ids.
    let with_inputs =
        matches!(top.get("secret_references"), Some(Value::Array(list)) if !list.is_empty());
    let mut paths = BTreeSet::new();
    for mut section in sections(top, with_inputs) {
        let mut found = Vec::new();
        // Set aside so that neither pass sees it; an inline token goes back as written.
        let [token, _] = take_token(&mut section);
        replace_inline_in_map(section.map, values, &mut Vec::new(), &mut found);
        match section.depth {
            Depth::Top => replace_paths_at(section.map, values, &[], &mut found),
            Depth::Everywhere => replace_paths_everywhere(section.map, values, &mut found),
        }
        if let Some(token) = token {
            section.map.insert(REMOTE_TOKEN.into(), token);
        }
        paths.extend(found.into_iter().map(|path| format!("{}.{path}", section.prefix)));
    }
    top.remove("secret_references");
    Ok(paths.into_iter().collect())
}

/// How deep the path form is looked for in a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// Only the section's own `secrets`.
    Top,
    /// Every mapping's `secrets`, at any depth (inputs).
    Everywhere,
}

/// One section Fleet Server resolves secrets in.
struct Section<'a> {
    /// The dotted path of the section, which prefixes the paths found in it.
    prefix: String,
    map: &'a mut Map<String, Value>,
    depth: Depth,
    /// Whether this is a `remote_elasticsearch` output, whose service token is not resolved.
    remote: bool,
}

/// The sections Fleet Server resolves secrets in, inputs only when `with_inputs`. Values that
/// are not mappings (lists for inputs) are skipped: Fleet Server would not have parsed the
/// policy at all.
fn sections(top: &mut Map<String, Value>, with_inputs: bool) -> Vec<Section<'_>> {
    let mut found = Vec::new();
    let section = |prefix: String, map, depth| Section { prefix, map, depth, remote: false };
    for (key, value) in top.iter_mut() {
        match (key.as_str(), value) {
            ("outputs", Value::Object(outputs)) => {
                for (name, output) in outputs.iter_mut() {
                    let Value::Object(map) = output else { continue };
                    let remote =
                        map.get("type").and_then(Value::as_str) == Some("remote_elasticsearch");
                    found.push(Section {
                        remote,
                        ..section(format!("outputs.{name}"), map, Depth::Top)
                    });
                }
            }
            ("inputs", Value::Array(inputs)) => {
                if !with_inputs {
                    continue;
                }
                for (i, input) in inputs.iter_mut().enumerate() {
                    if let Value::Object(map) = input {
                        found.push(section(format!("inputs.{i}"), map, Depth::Everywhere));
                    }
                }
            }
            ("agent", Value::Object(agent)) => {
                if let Some(Value::Object(download)) = agent.get_mut("download") {
                    found.push(section("agent.download".into(), download, Depth::Top));
                }
            }
            ("fleet", Value::Object(fleet)) => {
                found.push(section("fleet".into(), fleet, Depth::Top));
            }
            (name, Value::Object(components)) if OTEL_SECTIONS.contains(&name) => {
                for (component, config) in components.iter_mut() {
                    if let Value::Object(map) = config {
                        found.push(section(format!("{name}.{component}"), map, Depth::Top));
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// The non-empty ids of `secret_references`.
fn listed_references(top: &Map<String, Value>) -> BTreeSet<String> {
    let Some(Value::Array(list)) = top.get("secret_references") else { return BTreeSet::new() };
    list.iter()
        .filter_map(|item| item.get("id").and_then(Value::as_str))
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Takes a `remote_elasticsearch` output's service token out of its section: the key itself,
/// and the path-form leaf `secrets.service_token` (wrapped so that its path is kept). Both are
/// `None` for any other section.
fn take_token(section: &mut Section<'_>) -> [Option<Value>; 2] {
    if !section.remote {
        return [None, None];
    }
    let inline = section.map.remove(REMOTE_TOKEN);
    let leaf = match section.map.get_mut(SECRETS) {
        Some(Value::Object(secrets)) => secrets.remove(REMOTE_TOKEN).map(|leaf| {
            let mut wrapped = Map::new();
            wrapped.insert(
                SECRETS.into(),
                Value::Object(Map::from_iter([(REMOTE_TOKEN.into(), leaf)])),
            );
            Value::Object(wrapped)
        }),
        _ => None,
    };
    [inline, leaf]
}

/// The inline references of `text`, left to right: where each is and its id. An opening with
/// no `}` after it is no reference, and neither is any opening after it.
fn inline_references(text: &str) -> impl Iterator<Item = (Range<usize>, &str)> {
    let mut from = 0;
    std::iter::from_fn(move || {
        let start = from + text.get(from..)?.find(REFERENCE_OPEN)?;
        let id_start = start + REFERENCE_OPEN.len();
        let end = id_start + text[id_start..].find('}')?;
        from = end + 1;
        Some((start..end + 1, &text[id_start..end]))
    })
}

/// `text` with its inline references replaced, left to right up to the first with no value,
/// or `None` when none was.
fn replace_in_string(text: &str, values: &BTreeMap<String, String>) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (range, id) in inline_references(text) {
        let Some(value) = values.get(id).filter(|_| !id.is_empty()) else { break };
        out.push_str(&text[copied..range.start]);
        out.push_str(value);
        copied = range.end;
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// Collects the ids of the inline references in every string below `value`.
fn inline_ids_in(value: &Value, ids: &mut BTreeSet<String>) {
    match value {
        Value::String(text) => {
            ids.extend(
                inline_references(text)
                    .filter(|(_, id)| !id.is_empty())
                    .map(|(_, id)| id.to_owned()),
            );
        }
        Value::Object(map) => map.values().for_each(|v| inline_ids_in(v, ids)),
        Value::Array(list) => list.iter().for_each(|v| inline_ids_in(v, ids)),
        _ => {}
    }
}

fn inline_ids(map: &Map<String, Value>, ids: &mut BTreeSet<String>) {
    map.values().for_each(|v| inline_ids_in(v, ids));
}

/// Replaces the inline references in every string below `map`, found at the path `at`
/// relative to its section, and pushes the path of each string changed.
fn replace_inline_in_map(
    map: &mut Map<String, Value>,
    values: &BTreeMap<String, String>,
    at: &mut Vec<String>,
    found: &mut Vec<String>,
) {
    for (key, value) in map.iter_mut() {
        at.push(key.clone());
        replace_inline_in(value, values, at, found);
        at.pop();
    }
}

fn replace_inline_in(
    value: &mut Value,
    values: &BTreeMap<String, String>,
    at: &mut Vec<String>,
    found: &mut Vec<String>,
) {
    match value {
        Value::String(text) => {
            if let Some(replaced) = replace_in_string(text, values) {
                *text = replaced;
                found.push(at.join("."));
            }
        }
        Value::Object(map) => replace_inline_in_map(map, values, at, found),
        Value::Array(list) => {
            for (i, item) in list.iter_mut().enumerate() {
                at.push(i.to_string());
                replace_inline_in(item, values, at, found);
                at.pop();
            }
        }
        _ => {}
    }
}

/// The path-form leaves of a `secrets` value: the path to each and its id, in the mapping's
/// order. A leaf is a mapping with a non-empty string `id`; anything else that is not a
/// mapping is no leaf and holds none (`getSecretIDAndPath` in `secret.go`).
fn path_leaves(secrets: &Value) -> Vec<(Vec<String>, String)> {
    fn walk(value: &Value, at: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
        let Value::Object(map) = value else { return };
        if let Some(Value::String(id)) = map.get("id")
            && !id.is_empty()
        {
            out.push((at.clone(), id.clone()));
            return;
        }
        for (key, inner) in map {
            at.push(key.clone());
            walk(inner, at, out);
            at.pop();
        }
    }
    let mut out = Vec::new();
    walk(secrets, &mut Vec::new(), &mut out);
    // A leaf at the top names no field (see `resolve`).
    out.retain(|(path, _)| !path.is_empty());
    out
}

/// Collects the path-form ids of a section: its own `secrets`, or with
/// [`Depth::Everywhere`] those of every mapping below it too.
fn path_ids(map: &Map<String, Value>, depth: Depth, ids: &mut BTreeSet<String>) {
    if let Some(secrets) = map.get(SECRETS) {
        ids.extend(path_leaves(secrets).into_iter().map(|(_, id)| id));
    }
    if depth == Depth::Everywhere {
        for value in map.values() {
            path_ids_in(value, ids);
        }
    }
}

fn path_ids_in(value: &Value, ids: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => path_ids(map, Depth::Everywhere, ids),
        Value::Array(list) => list.iter().for_each(|v| path_ids_in(v, ids)),
        _ => {}
    }
}

/// Takes `secrets` out of `map` (found at `at` in its section), sets each leaf's value at its
/// path, and pushes those paths.
fn replace_paths_at(
    map: &mut Map<String, Value>,
    values: &BTreeMap<String, String>,
    at: &[String],
    found: &mut Vec<String>,
) {
    let Some(secrets) = map.remove(SECRETS) else { return };
    for (path, id) in path_leaves(&secrets) {
        // `referenced_ids` listed every leaf's id, and `resolve` checked each has a value.
        let value = values.get(&id).cloned().unwrap_or_default();
        set_at(map, &path, Value::String(value));
        found.push(at.iter().chain(&path).cloned().collect::<Vec<_>>().join("."));
    }
}

/// The path form in inputs: every mapping at any depth, its own `secrets` first and then what
/// is below it, including what that just set (`replacePathSecretRefsInMap`).
fn replace_paths_everywhere(
    map: &mut Map<String, Value>,
    values: &BTreeMap<String, String>,
    found: &mut Vec<String>,
) {
    fn in_map(
        map: &mut Map<String, Value>,
        values: &BTreeMap<String, String>,
        at: &mut Vec<String>,
        found: &mut Vec<String>,
    ) {
        replace_paths_at(map, values, at, found);
        for (key, value) in map.iter_mut() {
            at.push(key.clone());
            in_value(value, values, at, found);
            at.pop();
        }
    }
    fn in_value(
        value: &mut Value,
        values: &BTreeMap<String, String>,
        at: &mut Vec<String>,
        found: &mut Vec<String>,
    ) {
        match value {
            Value::Object(map) => in_map(map, values, at, found),
            Value::Array(list) => {
                for (i, item) in list.iter_mut().enumerate() {
                    at.push(i.to_string());
                    in_value(item, values, at, found);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    in_map(map, values, &mut Vec::new(), found);
}

/// Sets `value` at `path` (not empty) below `map`, making a mapping of each step that is not
/// one (`setSecretPath` in `secret.go`).
fn set_at(map: &mut Map<String, Value>, path: &[String], value: Value) {
    let (last, steps) = path.split_last().expect("a leaf's path is not empty");
    let mut here = map;
    for step in steps {
        let next = here.entry(step.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        here = next.as_object_mut().expect("made a mapping");
    }
    here.insert(last.clone(), value);
}

/// What the builder does about an [`InlineCredential`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A secret's value would travel in the bundle: the build refuses the policy.
    Refuse,
    /// Legal but discouraged, or incomplete: the build warns and goes on.
    Warn,
}

/// What kind of credential an [`InlineCredential`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// A password, or a private key in PEM, as its value: what Kibana would have stored as a
    /// secret and exported as a reference.
    SecretValue,
    /// An API key in clear.
    ApiKey,
    /// The passphrase of a TLS key in clear (Kibana has no secret storage for it).
    KeyPassphrase,
    /// A variable (`${NAME}`) where a credential goes, which each agent would have to resolve.
    Variable { text: String },
    /// A user name with neither password nor API key beside it, in clear or as a secret.
    UsernameWithoutPassword,
}

/// A credential an output carries in the policy itself rather than as a secret reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineCredential {
    /// The output's name (its key under `outputs`).
    pub output: String,
    /// The field as written, dotted from the top: `outputs.default.ssl.key`.
    pub field: String,
    pub credential: Credential,
}

impl InlineCredential {
    pub fn verdict(&self) -> Verdict {
        match self.credential {
            Credential::SecretValue => Verdict::Refuse,
            _ => Verdict::Warn,
        }
    }
}

/// How to keep a credential out of the bundle, which every message ends with.
const STORE_IT: &str = "keep it out of the policy: store it in Kibana's secret storage where Fleet \
                        offers it for this field (the export then carries a reference), or write \
                        `$co.elastic.secret{ID}` in its place, and set the value on the appliance \
                        with `ferry-appliance secrets set ID`";

impl fmt::Display for InlineCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { output, field, .. } = self;
        match &self.credential {
            Credential::SecretValue => write!(
                f,
                "`{field}` of output `{output}` is a secret's value in clear, which must not \
                 travel in the bundle: {STORE_IT}"
            ),
            Credential::ApiKey => write!(
                f,
                "`{field}` of output `{output}` is an API key in clear: it travels in the \
                 bundle, readable by whoever carries it; {STORE_IT}"
            ),
            Credential::KeyPassphrase => write!(
                f,
                "`{field}` of output `{output}` is a key passphrase in clear: it travels in the \
                 bundle, readable by whoever carries it; write `$co.elastic.secret{{ID}}` in its \
                 place and set the value on the appliance with `ferry-appliance secrets set ID`"
            ),
            Credential::Variable { text } => write!(
                f,
                "`{field}` of output `{output}` is the variable `{text}`, which each agent would \
                 have to resolve itself; instead {STORE_IT}"
            ),
            Credential::UsernameWithoutPassword => write!(
                f,
                "`{field}` of output `{output}` names a user, but the output has no password or \
                 API key, in clear or as a secret: agents cannot authenticate with it; store the \
                 password in Kibana's secret storage or as `$co.elastic.secret{{ID}}`, and set \
                 its value on the appliance with `ferry-appliance secrets set ID`"
            ),
        }
    }
}

/// The credentials each output carries in clear where Kibana would have stored a secret
/// reference, in the order of the outputs and, within one, of its fields:
///
/// - `password` and `kerberos.password` (Kibana stores a Kafka output's `password` as a
///   secret), and `ssl.key` holding a PEM key rather than a path on the agent's host (Kibana
///   stores `ssl.key` of every output as a secret): [`Credential::SecretValue`], refused;
/// - `api_key` and `ssl.key_passphrase` in clear, any of these fields as a `${NAME}` variable,
///   and `username` with neither password nor API key: warned about.
///
/// Fields holding an inline reference, and those of the output's `secrets`, are not listed.
/// Fields are read as the agent reads them, a dotted key being the nested one. The service
/// token of a `remote_elasticsearch` output is not listed here:
/// [`crate::Policy::carried_site_settings`] already reports it.
pub fn inline_credentials(doc: &Value) -> Vec<InlineCredential> {
    let Some(Value::Object(outputs)) = doc.get("outputs") else { return Vec::new() };
    let mut found = Vec::new();
    for (name, output) in outputs {
        let Value::Object(map) = output else { continue };
        let mut fields = Vec::new();
        logical_leaves(map, &mut Vec::new(), &format!("outputs.{name}"), &mut fields);
        let stored: Vec<Vec<String>> = map
            .get(SECRETS)
            .map(path_leaves)
            .unwrap_or_default()
            .into_iter()
            .map(|(path, _)| {
                path.iter().flat_map(|key| key.split('.')).map(str::to_owned).collect()
            })
            .collect();
        let is = |path: &[String], wanted: &[&str]| {
            path.iter().map(String::as_str).eq(wanted.iter().copied())
        };
        // Either authenticates the user, in clear or as a secret.
        let authenticates = |path: &[String]| is(path, &["password"]) || is(path, &["api_key"]);
        let has_password = stored.iter().any(|path| authenticates(path))
            || fields.iter().any(|(path, _, value)| authenticates(path) && carries(value));
        for (path, field, value) in &fields {
            let credential = if is(path, &["password"]) || is(path, &["kerberos", "password"]) {
                clear_text(value).map(|text| variable(text).unwrap_or(Credential::SecretValue))
            } else if is(path, &["ssl", "key"]) {
                clear_text(value).and_then(|text| {
                    variable(text)
                        .or_else(|| text.contains("-----BEGIN").then_some(Credential::SecretValue))
                })
            } else if is(path, &["api_key"]) {
                clear_text(value).map(|text| variable(text).unwrap_or(Credential::ApiKey))
            } else if is(path, &["ssl", "key_passphrase"]) {
                clear_text(value).map(|text| variable(text).unwrap_or(Credential::KeyPassphrase))
            } else if is(path, &["username"]) {
                (carries(value) && !has_password).then_some(Credential::UsernameWithoutPassword)
            } else {
                None
            };
            if let Some(credential) = credential {
                found.push(InlineCredential {
                    output: name.clone(),
                    field: field.clone(),
                    credential,
                });
            }
        }
    }
    found
}

/// The `elasticsearch` outputs that have no credentials of their own (an `api_key`,
/// `username`, `password` or `secrets` key that is not null) and no `output_permissions` entry:
/// with Fleet, an agent gets a key made for it with those permissions (fleet-server
/// `internal/pkg/policy/policy_output.go`, `prepareElasticsearch`, which refuses an output
/// without them), so without either the appliance has nothing to give it. Kibana's full agent
/// policy for Fleet includes the permissions; a standalone download does not. The rule is the
/// appliance's, which decides which outputs get a key (`appliance/src/elastic/slots.rs`).
pub fn outputs_without_permissions(doc: &Value) -> Vec<String> {
    let Some(Value::Object(outputs)) = doc.get("outputs") else { return Vec::new() };
    let permissions = doc.get("output_permissions");
    outputs
        .iter()
        .filter(|(_, output)| output.get("type").and_then(Value::as_str) == Some("elasticsearch"))
        .filter(|(_, output)| {
            ["api_key", "username", "password", SECRETS]
                .iter()
                .all(|key| output.get(key).is_none_or(Value::is_null))
        })
        // Fleet Server takes an entry that is a mapping, even an empty one (`parsePerms`).
        .filter(|(name, _)| {
            !permissions.and_then(|p| p.get(name.as_str())).is_some_and(Value::is_object)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Every value below `map` that is not a mapping, with its path as the agent reads it (keys
/// split at their dots) and its field as written, dotted after `written`. The output's own
/// `secrets` is left out: it holds references, not values.
fn logical_leaves<'a>(
    map: &'a Map<String, Value>,
    at: &mut Vec<String>,
    written: &str,
    out: &mut Vec<(Vec<String>, String, &'a Value)>,
) {
    for (key, value) in map {
        if at.is_empty() && key == SECRETS {
            continue;
        }
        let depth = at.len();
        at.extend(key.split('.').map(str::to_owned));
        let field = format!("{written}.{key}");
        match value {
            Value::Object(inner) => logical_leaves(inner, at, &field, out),
            _ => out.push((at.clone(), field, value)),
        }
        at.truncate(depth);
    }
}

/// A credential's text when it is one in clear: a non-empty string without an inline
/// reference, or a number.
fn clear_text(value: &Value) -> Option<&str> {
    match value {
        Value::String(text)
            if !text.trim().is_empty() && inline_references(text).next().is_none() =>
        {
            Some(text)
        }
        Value::Number(_) => Some("a number"),
        _ => None,
    }
}

/// A credential that is a `${NAME}` variable rather than a value.
fn variable(text: &str) -> Option<Credential> {
    let name = text.trim().strip_prefix("${")?.strip_suffix('}')?;
    (!name.is_empty() && !name.contains('}'))
        .then(|| Credential::Variable { text: text.trim().to_owned() })
}

/// Whether a field carries something: not null, nor an empty string, list or mapping.
fn carries(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(text) => !text.is_empty(),
        Value::Array(list) => !list.is_empty(),
        Value::Object(map) => !map.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A value for each id: `<id>-value`.
    fn values_for(ids: &[&str]) -> BTreeMap<String, String> {
        ids.iter().map(|id| ((*id).to_owned(), format!("{id}-value"))).collect()
    }

    fn ids(doc: &Value) -> Vec<String> {
        referenced_ids(doc).into_iter().collect()
    }

    /// Shaped like fleet-server's `internal/pkg/policy/testdata/policy_with_secrets_mixed.json`:
    /// both spellings in an output, in two streams of one input, in `agent.download` and in
    /// `fleet`, with a dotted key in a stream's `secrets`, and one id listed but unused.
    fn mixed() -> Value {
        json!({
            "id": "mixed", "revision": 5,
            "outputs": {
                "ls": {
                    "type": "logstash",
                    "hosts": ["$co.elastic.secret{ls-host}"],
                    "secrets": {"ssl": {"key": {"id": "ls-key"}}}
                },
                "default": {"type": "elasticsearch", "hosts": ["https://es:443"]}
            },
            "inputs": [{
                "id": "httpjson-golang", "type": "httpjson", "use_output": "default",
                "streams": [
                    {
                        "id": "expvar",
                        "request.ssl": null,
                        "auth.basic.user": "go_username",
                        "auth.basic.password": "$co.elastic.secret{go-pass}",
                        "processors": [{"add_fields": {"fields": {"address": "http://localhost"}}}]
                    },
                    {
                        "id": "heap",
                        "auth.basic.user": "go_username",
                        "secrets": {"auth.basic.password": {"id": "go-pass"}}
                    }
                ]
            }],
            "secret_references": [
                {"id": "ls-host"}, {"id": "ls-key"}, {"id": "go-pass"},
                {"id": "dl-source"}, {"id": "dl-key"}, {"id": "unused"}
            ],
            "agent": {
                "download": {
                    "sourceURI": "$co.elastic.secret{dl-source}",
                    "ssl": {"certificate": "client cert"},
                    "secrets": {"ssl": {"key": {"id": "dl-key"}}}
                },
                "monitoring": {"enabled": true}
            },
            "output_permissions": {"ls": {}, "default": {"_elastic_agent_checks": {}}},
            "fleet": {
                "hosts": ["$co.elastic.secret{ls-host}"],
                "secrets": {"ssl": {"key": {"id": "ls-key"}}}
            }
        })
    }

    #[test]
    fn both_spellings_are_resolved_in_every_section_and_listed_as_fleet_server_lists_them() {
        let mut doc = mixed();
        assert_eq!(ids(&doc), ["dl-key", "dl-source", "go-pass", "ls-host", "ls-key", "unused"]);
        let values = values_for(&["dl-key", "dl-source", "go-pass", "ls-host", "ls-key", "unused"]);
        let paths = resolve(&mut doc, &values).unwrap();
        // The eight keys fleet-server's parsed_policy_test.go expects of its mixed policy.
        assert_eq!(
            paths,
            [
                "agent.download.sourceURI",
                "agent.download.ssl.key",
                "fleet.hosts.0",
                "fleet.ssl.key",
                "inputs.0.streams.0.auth.basic.password",
                "inputs.0.streams.1.auth.basic.password",
                "outputs.ls.hosts.0",
                "outputs.ls.ssl.key",
            ]
        );
        assert_eq!(
            doc["outputs"]["ls"],
            json!({"type": "logstash", "hosts": ["ls-host-value"], "ssl": {"key": "ls-key-value"}})
        );
        let streams = &doc["inputs"][0]["streams"];
        assert_eq!(streams[0]["auth.basic.password"], "go-pass-value");
        // The path form sets the key as written, dots and all.
        assert_eq!(streams[1]["auth.basic.password"], "go-pass-value");
        assert!(streams[1].get("secrets").is_none());
        assert_eq!(
            doc["agent"]["download"],
            json!({"sourceURI": "dl-source-value", "ssl": {"certificate": "client cert", "key": "dl-key-value"}})
        );
        assert_eq!(
            doc["fleet"],
            json!({"hosts": ["ls-host-value"], "ssl": {"key": "ls-key-value"}})
        );
        assert!(doc.get("secret_references").is_none());
        // Nothing else changed.
        assert_eq!(doc["output_permissions"], mixed()["output_permissions"]);
        assert_eq!(doc["agent"]["monitoring"], json!({"enabled": true}));
        assert_eq!(streams[0]["request.ssl"], Value::Null);
        assert!(referenced_ids(&doc).is_empty(), "{doc:#}");
    }

    #[test]
    fn otel_components_are_resolved_like_agent_download() {
        // Shaped like fleet-server's testdata/policy_with_otel_secrets.json.
        let mut doc = json!({
            "id": "otel", "revision": 1,
            "outputs": {"default": {"type": "elasticsearch", "hosts": ["https://es:443"]}},
            "inputs": [],
            "receivers": {"otlp": {"auth": "$co.elastic.secret{r}", "protocols": {"grpc": {"endpoint": "0.0.0.0:4317"}}}},
            "exporters": {"otlphttp/default": {"endpoint": "https://apm", "secrets": {"headers": {"authorization": {"id": "e"}}}}},
            "processors": {"batch": {"api_key": "$co.elastic.secret{p}"}, "memory_limiter": "not a mapping"},
            "extensions": {"basicauth": {"secrets": {"password": {"id": "x"}}}},
            "connectors": {"spanmetrics": {"token": "$co.elastic.secret{c}"}},
            "secret_references": [{"id": "r"}, {"id": "e"}, {"id": "p"}, {"id": "x"}, {"id": "c"}]
        });
        assert_eq!(ids(&doc), ["c", "e", "p", "r", "x"]);
        let paths = resolve(&mut doc, &values_for(&["c", "e", "p", "r", "x"])).unwrap();
        assert_eq!(
            paths,
            [
                "connectors.spanmetrics.token",
                "exporters.otlphttp/default.headers.authorization",
                "extensions.basicauth.password",
                "processors.batch.api_key",
                "receivers.otlp.auth",
            ]
        );
        assert_eq!(doc["receivers"]["otlp"]["auth"], "r-value");
        assert_eq!(doc["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"], "0.0.0.0:4317");
        assert_eq!(
            doc["exporters"]["otlphttp/default"],
            json!({"endpoint": "https://apm", "headers": {"authorization": "e-value"}})
        );
        assert_eq!(
            doc["processors"],
            json!({"batch": {"api_key": "p-value"}, "memory_limiter": "not a mapping"})
        );
        assert_eq!(doc["extensions"]["basicauth"], json!({"password": "x-value"}));
        assert_eq!(doc["connectors"]["spanmetrics"]["token"], "c-value");
    }

    #[test]
    fn several_references_in_one_string_are_all_replaced_and_the_string_listed_once() {
        let mut doc = json!({
            "outputs": {"k": {"type": "kafka", "headers": [{"key": "auth", "value": "user \"$co.elastic.secret{u}\" pass \"$co.elastic.secret{p}\"/x"}]}},
            "secret_references": [{"id": "u"}, {"id": "p"}]
        });
        let paths = resolve(&mut doc, &values_for(&["u", "p"])).unwrap();
        assert_eq!(paths, ["outputs.k.headers.0.value"]);
        assert_eq!(
            doc["outputs"]["k"]["headers"][0]["value"],
            "user \"u-value\" pass \"p-value\"/x"
        );
    }

    #[test]
    fn inputs_are_searched_at_any_depth_in_both_spellings() {
        // The shapes of secret_test.go's TestGetPolicyInputsWithSecretsAndStreams and
        // TestPolicyInputSteamsEmbedded, and the path form as deep.
        let mut doc = json!({
            "inputs": [
                {"id": "i1", "package_var": "$co.elastic.secret{a}", "input_var": "$co.elastic.secret{b}"},
                {"id": "i2", "streams": [{
                    "id": "s1",
                    "stream_var": "$co.elastic.secret{c}",
                    "embedded": {
                        "arr": [{"inline": "$co.elastic.secret{a}"}, {"secrets": {"token": {"id": "d"}}}],
                        "secrets": {"deep": {"er": {"id": "b"}}}
                    }
                }]}
            ],
            "secret_references": [{"id": "a"}, {"id": "b"}, {"id": "c"}, {"id": "d"}]
        });
        let paths = resolve(&mut doc, &values_for(&["a", "b", "c", "d"])).unwrap();
        assert_eq!(
            paths,
            [
                "inputs.0.input_var",
                "inputs.0.package_var",
                "inputs.1.streams.0.embedded.arr.0.inline",
                "inputs.1.streams.0.embedded.arr.1.token",
                "inputs.1.streams.0.embedded.deep.er",
                "inputs.1.streams.0.stream_var",
            ]
        );
        assert_eq!(
            doc["inputs"][1]["streams"][0]["embedded"],
            json!({"arr": [{"inline": "a-value"}, {"token": "d-value"}], "deep": {"er": "b-value"}})
        );
    }

    #[test]
    fn without_secret_references_inputs_are_left_alone_but_their_ids_are_listed() {
        let doc = json!({
            "outputs": {"ls": {"type": "logstash", "password": "$co.elastic.secret{o}"}},
            "inputs": [{"id": "i", "token": "$co.elastic.secret{i}", "secrets": {"key": {"id": "j"}}}]
        });
        assert_eq!(ids(&doc), ["i", "j", "o"]);
        // Listed, so needed: the operator is shown them...
        let mut missing = doc.clone();
        assert_eq!(
            resolve(&mut missing, &values_for(&["o"])).unwrap_err().ids,
            ["i".to_owned(), "j".into()].into()
        );
        // ...but as with Fleet Server, only the other sections are resolved.
        let mut resolved = doc.clone();
        let paths = resolve(&mut resolved, &values_for(&["i", "j", "o"])).unwrap();
        assert_eq!(paths, ["outputs.ls.password"]);
        assert_eq!(resolved["inputs"], doc["inputs"]);
        assert_eq!(resolved["outputs"]["ls"]["password"], "o-value");
        // An empty list is no list.
        let mut empty = doc.clone();
        empty["secret_references"] = json!([]);
        let paths = resolve(&mut empty, &values_for(&["i", "j", "o"])).unwrap();
        assert_eq!(paths, ["outputs.ls.password"]);
        // A list with items is one, even when they hold no id.
        let mut idless = doc.clone();
        idless["secret_references"] = json!([{"id": ""}]);
        let paths = resolve(&mut idless, &values_for(&["i", "j", "o"])).unwrap();
        assert_eq!(paths, ["inputs.0.key", "inputs.0.token", "outputs.ls.password"]);
    }

    #[test]
    fn a_missing_value_leaves_the_document_untouched_and_names_every_missing_id() {
        let doc = mixed();
        let mut copy = doc.clone();
        let err = resolve(&mut copy, &values_for(&["ls-host", "go-pass", "dl-key"])).unwrap_err();
        assert_eq!(err.ids, ["dl-source", "ls-key", "unused"].map(String::from).into());
        assert_eq!(copy, doc);
        assert_eq!(
            err.to_string(),
            "the policy needs 3 secret(s) that have no value: dl-source, ls-key, unused (set each \
             with `ferry-appliance secrets set ID`)"
        );
    }

    #[test]
    fn values_are_inserted_as_they_are_never_searched_again() {
        // Fleet Server searches again from the string's start, so `a`'s value would turn into
        // `b`'s; here it is what the operator set.
        let mut doc = json!({
            "fleet": {"x": "$co.elastic.secret{a}"},
            "secret_references": [{"id": "a"}, {"id": "b"}]
        });
        let mut values = values_for(&["b"]);
        values.insert("a".into(), "$co.elastic.secret{b}".into());
        resolve(&mut doc, &values).unwrap();
        assert_eq!(doc["fleet"]["x"], "$co.elastic.secret{b}");
    }

    #[test]
    fn references_are_read_as_fleet_server_s_pattern_reads_them() {
        let found = |text: &str| -> Vec<(Range<usize>, String)> {
            inline_references(text).map(|(r, id)| (r, id.to_owned())).collect()
        };
        assert_eq!(found("$co.elastic.secret{abc}"), [(0..23, "abc".to_owned())]);
        assert_eq!(found("x$co.elastic.secret{a{b}}"), [(1..24, "a{b".to_owned())]);
        assert_eq!(found("$co.elastic.secret{}"), [(0..20, String::new())]);
        assert!(found("$co.elastic.secret{never closed $co.elastic.secret{").is_empty());
        assert!(found("co.elastic.secret{x} ${x} $co.elastic.secrets{x}").is_empty());
        // An empty id is no secret; the replacing stops there, as Fleet Server's does.
        let doc = json!({"fleet": {"x": "$co.elastic.secret{} and $co.elastic.secret{a}", "y": "$co.elastic.secret{a} and $co.elastic.secret{}"}});
        assert_eq!(ids(&doc), ["a"]);
        let mut resolved = doc.clone();
        assert_eq!(resolve(&mut resolved, &values_for(&["a"])).unwrap(), ["fleet.y"]);
        assert_eq!(resolved["fleet"]["x"], doc["fleet"]["x"]);
        assert_eq!(resolved["fleet"]["y"], "a-value and $co.elastic.secret{}");
    }

    #[test]
    fn the_path_form_takes_leaves_with_an_id_and_drops_secrets_whatever_it_holds() {
        let mut doc = json!({
            "outputs": {
                "a": {
                    "type": "kafka",
                    // A leaf replaces what is in its way; `ssl.other` beside `ssl.key`.
                    "ssl": "not a mapping",
                    "secrets": {
                        "ssl": {"key": {"id": "k"}, "other": {"id": "o"}},
                        "password": {"id": ""},
                        "user": "not a leaf",
                        "id_is_a_path": {"id": {"id": "deeper"}}
                    }
                },
                // An `id` at the top names no field: Fleet Server fails on it.
                "b": {"type": "logstash", "secrets": {"id": "top"}},
                "c": {"type": "logstash", "secrets": "a string"}
            },
            "secret_references": [{"id": "k"}]
        });
        assert_eq!(ids(&doc), ["deeper", "k", "o"]);
        let paths = resolve(&mut doc, &values_for(&["deeper", "k", "o"])).unwrap();
        assert_eq!(
            paths,
            ["outputs.a.id_is_a_path.id", "outputs.a.ssl.key", "outputs.a.ssl.other"]
        );
        assert_eq!(
            doc["outputs"],
            json!({
                "a": {"type": "kafka", "ssl": {"key": "k-value", "other": "o-value"}, "id_is_a_path": {"id": "deeper-value"}},
                "b": {"type": "logstash"},
                "c": {"type": "logstash"}
            })
        );
    }

    #[test]
    fn a_remote_elasticsearch_service_token_is_not_needed_and_not_listed() {
        let doc = json!({
            "outputs": {
                "remote": {
                    "type": "remote_elasticsearch", "hosts": ["https://r:9200"],
                    "secrets": {"service_token": {"id": "token"}, "ssl": {"key": {"id": "rkey"}}}
                },
                "inline": {"type": "remote_elasticsearch", "service_token": "$co.elastic.secret{token2}"},
                // Not remote: a field of that name is resolved like any other.
                "plain": {"type": "elasticsearch", "secrets": {"service_token": {"id": "token3"}}}
            },
            "inputs": [],
            "secret_references": [{"id": "token"}, {"id": "token2"}, {"id": "token3"}, {"id": "rkey"}]
        });
        assert_eq!(ids(&doc), ["rkey", "token3"]);
        let mut resolved = doc.clone();
        let paths = resolve(&mut resolved, &values_for(&["rkey", "token3"])).unwrap();
        assert_eq!(paths, ["outputs.plain.service_token", "outputs.remote.ssl.key"]);
        assert_eq!(
            resolved["outputs"]["remote"],
            json!({"type": "remote_elasticsearch", "hosts": ["https://r:9200"], "ssl": {"key": "rkey-value"}})
        );
        // An inline token is left for delivery to remove, which it does.
        assert_eq!(resolved["outputs"]["inline"], doc["outputs"]["inline"]);
        let site =
            crate::policy::SiteConnection { public_base: "https://ferry:8220", download_ca: None };
        crate::policy::deliver_for_site(&mut resolved, &site);
        assert_eq!(resolved["outputs"]["inline"], json!({"type": "elasticsearch"}));
        // An id used elsewhere as well is needed for that use.
        let mut shared = doc.clone();
        shared["fleet"] = json!({"x": "$co.elastic.secret{token}"});
        assert_eq!(ids(&shared), ["rkey", "token", "token3"]);
    }

    #[test]
    fn a_yaml_export_read_by_policy_parse_is_resolved() {
        let text = r#"
id: linux
revision: 3
outputs:
  default:
    type: kafka
    hosts: ["kafka:9092"]
    username: agent
    secrets:
      password: {id: kafka-pass}
      ssl: {key: {id: kafka-key}}
inputs:
  - id: sql
    type: sql/metrics
    streams:
      - id: sql.query
        hosts: ["postgres://user:$co.elastic.secret{db-pass}@db:5432"]
secret_references:
  - id: kafka-pass
  - id: kafka-key
  - id: db-pass
"#;
        let mut doc = crate::Policy::parse(text.as_bytes(), "p.yml").unwrap().document;
        assert!(inline_credentials(&doc).is_empty(), "{:?}", inline_credentials(&doc));
        let paths =
            resolve(&mut doc, &values_for(&["kafka-pass", "kafka-key", "db-pass"])).unwrap();
        assert_eq!(
            paths,
            ["inputs.0.streams.0.hosts.0", "outputs.default.password", "outputs.default.ssl.key"]
        );
        assert_eq!(
            doc["inputs"][0]["streams"][0]["hosts"][0],
            "postgres://user:db-pass-value@db:5432"
        );
    }

    fn credentials(doc: &Value) -> Vec<(String, Credential, Verdict)> {
        inline_credentials(doc)
            .into_iter()
            .map(|c| (c.field.clone(), c.credential.clone(), c.verdict()))
            .collect()
    }

    #[test]
    fn credentials_in_clear_are_refused_or_warned_about_by_kind() {
        let doc = json!({
            "outputs": {
                "es": {
                    "type": "elasticsearch",
                    "username": "elastic",
                    "password": "changeme",
                    "api_key": "id:secret",
                    "ssl": {"key": "-----BEGIN PRIVATE KEY-----\nMII...\n-----END PRIVATE KEY-----\n", "key_passphrase": "pp"}
                },
                "kafka": {
                    "type": "kafka",
                    "username": "agent",
                    "secrets": {"password": {"id": "kp"}},
                    "kerberos.password": 1234,
                    "ssl.key": "/etc/agent/client.key"
                },
                "vars": {"type": "elasticsearch", "username": "u", "password": "${ES_PASSWORD}", "api_key": " ${ES_API_KEY} "},
                "refs": {
                    "type": "elasticsearch",
                    "api_key": "$co.elastic.secret{ak}",
                    "ssl": {"key": "$co.elastic.secret{sk}"},
                    "password": ""
                },
                "lonely": {"type": "logstash", "username": "ls"},
                "keyed-user": {"type": "elasticsearch", "username": "u", "api_key": "$co.elastic.secret{a}"},
                "remote": {"type": "remote_elasticsearch", "service_token": "AAEAA-token"}
            }
        });
        let secret = Credential::SecretValue;
        assert_eq!(
            credentials(&doc),
            [
                ("outputs.es.api_key".to_owned(), Credential::ApiKey, Verdict::Warn),
                ("outputs.es.password".into(), secret.clone(), Verdict::Refuse),
                ("outputs.es.ssl.key".into(), secret.clone(), Verdict::Refuse),
                ("outputs.es.ssl.key_passphrase".into(), Credential::KeyPassphrase, Verdict::Warn),
                ("outputs.kafka.kerberos.password".into(), secret, Verdict::Refuse),
                (
                    "outputs.lonely.username".into(),
                    Credential::UsernameWithoutPassword,
                    Verdict::Warn
                ),
                (
                    "outputs.vars.api_key".into(),
                    Credential::Variable { text: "${ES_API_KEY}".into() },
                    Verdict::Warn
                ),
                (
                    "outputs.vars.password".into(),
                    Credential::Variable { text: "${ES_PASSWORD}".into() },
                    Verdict::Warn
                ),
            ]
        );
    }

    #[test]
    fn elasticsearch_outputs_need_credentials_or_permissions() {
        let doc = json!({
            "outputs": {
                "bare": {"type": "elasticsearch", "hosts": ["https://es:9200"]},
                "allowed": {"type": "elasticsearch"},
                "empty-allowed": {"type": "elasticsearch"},
                "keyed": {"type": "elasticsearch", "api_key": "$co.elastic.secret{k}"},
                "user": {"type": "elasticsearch", "username": "u", "secrets": {"password": {"id": "p"}}},
                "stored": {"type": "elasticsearch", "secrets": {"api_key": {"id": "k"}}},
                // Empty is still the output's own, as the appliance reads it.
                "empty-creds": {"type": "elasticsearch", "api_key": ""},
                "null-creds": {"type": "elasticsearch", "api_key": null, "username": null},
                "not-a-mapping": {"type": "elasticsearch"},
                "ls": {"type": "logstash"}
            },
            "output_permissions": {
                "allowed": {"_elastic_agent_checks": {"cluster": ["monitor"]}},
                "empty-allowed": {},
                "not-a-mapping": "all"
            }
        });
        assert_eq!(outputs_without_permissions(&doc), ["bare", "not-a-mapping", "null-creds"]);
        assert!(
            outputs_without_permissions(&json!({"outputs": {"a": {"type": "kafka"}}})).is_empty()
        );
    }

    #[test]
    fn each_credential_message_names_output_field_and_the_way_out() {
        let item = |credential| InlineCredential {
            output: "default".into(),
            field: "outputs.default.password".into(),
            credential,
        };
        for credential in [
            Credential::SecretValue,
            Credential::ApiKey,
            Credential::KeyPassphrase,
            Credential::Variable { text: "${X}".into() },
            Credential::UsernameWithoutPassword,
        ] {
            let text = item(credential).to_string();
            assert!(text.starts_with("`outputs.default.password` of output `default` "), "{text}");
            assert!(text.contains("`ferry-appliance secrets set ID`"), "{text}");
        }
        assert!(item(Credential::SecretValue).to_string().contains("Kibana's secret storage"));
    }
}
