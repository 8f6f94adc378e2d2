//! One integration package: its zip read once when a release activates, its `manifest.yml`
//! (and its data streams' manifests) turned into what `/search` answers for it, what its index
//! JSON adds (`super::detail`), and the map of its files for `/package/{name}/{version}/{file}`.
//! The JSON fields, their order and when they are left out follow the registry's `BasePackage`
//! (`packages/package.go`, `packages/datastream.go`).

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use super::categories;
use super::detail::{self, DataStreamManifest, Detail, FullManifest};
use ferry_artifacts::epr_version::{Constraint, Version};

/// The largest `manifest.yml` read from a package: real ones are a few KiB.
const MANIFEST_LIMIT: u64 = 4 << 20;

/// What `/search` says of a package (`BasePackage`), in the registry's field order.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BasePackage {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub release: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub download: String,
    pub path: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub icons: Vec<Image>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub policy_templates_behavior: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_templates: Vec<PolicyTemplate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Conditions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub signature_path: String,
    #[serde(skip_serializing_if = "Discovery::is_empty")]
    pub discovery: Discovery,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_streams: Vec<DataStream>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires: Option<Requires>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Source {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Image {
    #[serde(default)]
    pub src: String,
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub size: String,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Owner {
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub github: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Conditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kibana: Option<VersionCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic: Option<ElasticCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<VersionCondition>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct VersionCondition {
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ElasticCondition {
    #[serde(default)]
    pub subscription: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Named {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Discovery {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Named>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<Named>,
}

impl Discovery {
    fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.datasets.is_empty()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Requirement {
    #[serde(default)]
    pub package: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Requires {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input: Vec<Requirement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Requirement>,
}

/// A policy template as `/search` shows it (`BasePolicyTemplate`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PolicyTemplate {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icons: Vec<Image>,
    /// `None` and empty differ to `/categories?include_policy_templates=true`.
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub categories: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_modes: Option<DeploymentModes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_streams: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<Value>,
}

fn is_none_or_empty(v: &Option<Vec<String>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DeploymentModes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agentless: Option<AgentlessMode>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DefaultMode {
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct AgentlessMode {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_default: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub release: String,
}

/// A data stream as `/search` shows it (`BaseDataStream`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DataStream {
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default)]
    pub dataset: String,
    #[serde(default)]
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<Value>,
}

/// The manifest fields read; others are ignored, as the registry ignores them for `/search`.
#[derive(Debug, Default, Deserialize)]
struct Manifest {
    #[serde(default)]
    name: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    version: String,
    #[serde(default)]
    release: String,
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    description: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    format_version: String,
    #[serde(default)]
    icons: Option<Vec<Image>>,
    #[serde(default)]
    policy_templates_behavior: String,
    #[serde(default)]
    policy_templates: Option<Vec<PolicyTemplate>>,
    #[serde(default)]
    conditions: Option<Conditions>,
    #[serde(default)]
    owner: Option<Owner>,
    #[serde(default)]
    categories: Option<Vec<String>>,
    #[serde(default)]
    discovery: Option<Discovery>,
    #[serde(default)]
    deprecated: Option<Value>,
    #[serde(default)]
    requires: Option<Requires>,
    #[serde(default)]
    group: String,
}

/// What reading the zip found besides the manifests.
struct Scanned<'a> {
    name: &'a str,
    version: &'a str,
    signed: bool,
    has_readme: bool,
    files: BTreeMap<String, usize>,
    entries: Vec<(String, bool)>,
}

/// A package as the index holds it: what `/search` shows, and what filters look at.
#[derive(Debug, Clone)]
pub(crate) struct Package {
    pub base: BasePackage,
    pub version: Version,
    /// `format_version` as `major.minor.0`, what `spec.min`/`spec.max` compare with.
    pub spec: Option<Version>,
    pub kibana: Option<Constraint>,
    pub agent: Option<Constraint>,
    /// The package's files (directories left out), relative to its top folder, to their index
    /// in the zip.
    pub files: BTreeMap<String, usize>,
    /// What the index JSON adds to `base`; taken when the index JSON is written.
    pub detail: Detail,
    /// `/package/{name}/{version}/`'s answer, written once the index knows every version (a
    /// deprecation notice is the newest version's); `None` if it could not be written.
    pub index_json: Option<axum::body::Bytes>,
}

impl Package {
    /// Reads a package zip: every entry must lie below `<name>-<version>/` (no absolute paths,
    /// no `..`, no backslashes: zip-slip names refuse the package), and its manifest must be
    /// valid YAML naming `name` and `version`.
    pub(crate) fn read<R: Read + Seek>(
        reader: R,
        name: &str,
        version: &str,
        signed: bool,
    ) -> anyhow::Result<Package> {
        let mut zip = zip::ZipArchive::new(reader).context("not a readable zip archive")?;
        let top = format!("{name}-{version}/");
        let mut files = BTreeMap::new();
        // Every entry below the top folder in zip order, directories included: the order and
        // the levels the registry's asset listing walks (`collectAssets` over the zip).
        let mut entries: Vec<(String, bool)> = Vec::new();
        for i in 0..zip.len() {
            let entry = zip.by_index_raw(i)?;
            let raw = entry.name()?.into_owned();
            let Some(relative) = raw.strip_prefix(&top) else {
                bail!("entry {raw:?} is not below the package's folder {top}");
            };
            if relative.is_empty() {
                continue;
            }
            let relative_file = relative.strip_suffix('/').unwrap_or(relative);
            if raw.contains('\\')
                || relative_file.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            {
                bail!("entry {raw:?} is not a plain relative path");
            }
            entries.push((relative_file.to_owned(), entry.is_dir()));
            if !entry.is_dir() {
                files.insert(relative.to_owned(), i);
            }
        }
        let manifest_index =
            *files.get("manifest.yml").with_context(|| format!("no {top}manifest.yml"))?;
        let context = || format!("{top}manifest.yml");
        let value = yaml_value(&read_entry(&mut zip, manifest_index, MANIFEST_LIMIT)?)
            .with_context(context)?;
        let manifest: Manifest = typed(value.clone()).with_context(context)?;
        let full: FullManifest = typed(value).with_context(context)?;
        let mut data_streams = Vec::new();
        // In zip order, as the registry's glob of `data_stream/*/manifest.yml` over a zip is
        // (a directory package zipped in path order gives its sorted glob).
        let streams: Vec<(String, usize)> = entries
            .iter()
            .filter_map(|(path, _)| {
                let dir = path.strip_prefix("data_stream/")?.strip_suffix("/manifest.yml")?;
                let i = *files.get(path.as_str())?;
                (!dir.contains('/')).then(|| (dir.to_owned(), i))
            })
            .collect();
        for (dir, i) in streams {
            let m: DataStreamManifest = yaml(&read_entry(&mut zip, i, MANIFEST_LIMIT)?)
                .with_context(|| format!("{top}data_stream/{dir}/manifest.yml"))?;
            data_streams.push((dir, m));
        }
        let has_readme = files.contains_key("docs/README.md");
        Package::from_manifest(
            manifest,
            full,
            data_streams,
            Scanned { name, version, signed, has_readme, files, entries },
        )
    }

    fn from_manifest(
        m: Manifest,
        full: FullManifest,
        streams: Vec<(String, DataStreamManifest)>,
        read: Scanned<'_>,
    ) -> anyhow::Result<Package> {
        let Scanned { name, version, signed, has_readme, files, entries } = read;
        if m.name != name || m.version != version {
            bail!(
                "manifest.yml names {} {}, but the bundle carries it as {name} {version}",
                m.name,
                m.version
            );
        }
        let parsed = Version::strict(&m.version)
            .with_context(|| format!("manifest.yml: version {:?} is not semantic", m.version))?;
        if !has_readme {
            bail!("no docs/README.md, which the registry requires of every package");
        }
        let spec = if m.format_version.is_empty() {
            None
        } else {
            let v = Version::strict(&m.format_version).with_context(|| {
                format!("manifest.yml: format_version {:?} is not semantic", m.format_version)
            })?;
            Some(Version { major: v.major, minor: v.minor, patch: 0, pre: String::new() })
        };
        let constraint = |c: Option<&VersionCondition>, what: &str| {
            c.map(|c| {
                Constraint::parse(&c.version).with_context(|| {
                    format!("manifest.yml: invalid {what} versions range {:?}", c.version)
                })
            })
            .transpose()
        };
        let conditions = m.conditions.as_ref();
        let kibana = constraint(conditions.and_then(|c| c.kibana.as_ref()), "Kibana")?;
        let agent = constraint(conditions.and_then(|c| c.agent.as_ref()), "Agent")?;
        // Releases default from the version (`packages/releases.go`).
        let release = if !m.release.is_empty() {
            m.release.clone()
        } else if parsed.is_prerelease() || parsed.major < 1 {
            "beta".to_owned()
        } else {
            "ga".to_owned()
        };
        if !["experimental", "beta", "ga"].contains(&release.as_str()) {
            bail!("manifest.yml: invalid release {release:?}");
        }
        let url_path = format!("/package/{name}/{version}");
        let image_path = |mut i: Image| {
            i.path = join(&url_path, &i.src);
            i
        };
        let policy_templates = m
            .policy_templates
            .unwrap_or_default()
            .into_iter()
            .map(|mut t| {
                t.icons = t.icons.into_iter().map(image_path).collect();
                t
            })
            .collect();
        let mut data_streams = Vec::new();
        let mut full_streams = Vec::new();
        for (dir, s) in streams {
            let ds_release = if s.release.is_empty() { release.clone() } else { s.release.clone() };
            if !["experimental", "beta", "ga"].contains(&ds_release.as_str()) {
                bail!("data_stream/{dir}/manifest.yml: invalid release {ds_release:?}");
            }
            let dataset =
                if s.dataset.is_empty() { format!("{name}.{dir}") } else { s.dataset.clone() };
            data_streams.push(DataStream {
                kind: s.kind.clone(),
                dataset: dataset.clone(),
                title: s.title.clone(),
                deprecated: s.deprecated.clone(),
            });
            full_streams.push(detail::data_stream(s, name, &dir, dataset, ds_release, &files));
        }
        let kind = if m.kind.is_empty() { "integration".to_owned() } else { m.kind };
        let subscription = m
            .conditions
            .as_ref()
            .and_then(|c| c.elastic.as_ref())
            .map(|e| e.subscription.clone())
            .unwrap_or_default();
        let detail = detail::build(
            full,
            detail::Context {
                url_path: &url_path,
                kind: &kind,
                format_version: m.format_version.clone(),
                subscription,
                files: &files,
                entries: &entries,
            },
            full_streams,
        );
        let base = BasePackage {
            name: m.name.clone(),
            title: m.title,
            version: m.version.clone(),
            release,
            source: m.source,
            description: m.description,
            kind,
            download: format!("/epr/{name}/{name}-{version}.zip"),
            path: url_path.clone(),
            icons: m.icons.unwrap_or_default().into_iter().map(image_path).collect(),
            policy_templates_behavior: m.policy_templates_behavior,
            policy_templates,
            conditions: m.conditions,
            owner: m.owner,
            // Unknown categories are dropped, as the registry drops them.
            categories: m
                .categories
                .unwrap_or_default()
                .into_iter()
                .filter(|c| categories::lookup(c).is_some())
                .collect(),
            signature_path: if signed {
                format!("/epr/{name}/{name}-{version}.zip.sig")
            } else {
                String::new()
            },
            discovery: m.discovery.unwrap_or_default(),
            data_streams,
            deprecated: m.deprecated,
            requires: m.requires,
            group: m.group,
        };
        Ok(Package { base, version: parsed, spec, kibana, agent, files, detail, index_json: None })
    }

    pub(crate) fn name(&self) -> &str {
        &self.base.name
    }

    pub(crate) fn release(&self) -> &str {
        &self.base.release
    }

    pub(crate) fn capabilities(&self) -> Option<&[String]> {
        self.base.conditions.as_ref()?.elastic.as_ref()?.capabilities.as_deref()
    }

    pub(crate) fn has_category(&self, category: &str) -> bool {
        categories::has(&self.base.categories, category)
    }

    pub(crate) fn has_policy_template_with_category(&self, category: &str) -> bool {
        self.base
            .policy_templates
            .iter()
            .any(|t| categories::has(t.categories.as_deref().unwrap_or_default(), category))
    }
}

/// `path.Join(base, src)`: the image's URL path, with `.` and `..` resolved and one slash
/// between the parts.
pub(super) fn join(base: &str, src: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in base.split('/').chain(src.split('/')) {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Reads entry `index` whole, refusing one larger than `limit`.
pub(crate) fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    index: usize,
    limit: u64,
) -> anyhow::Result<Vec<u8>> {
    let entry = zip.by_index(index)?;
    if entry.size() > limit {
        bail!("{} is {} bytes, more than the {limit} read", entry.name()?, entry.size());
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.take(limit + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Parses YAML as the registry's go-ucfg reads it with `PathSep(".")`: a dotted key
/// (`kibana.version: ^8.0.0`) is the nested one, and scalars read as strings where a string
/// is expected (`version: 1.0` stays the text it was written as).
fn yaml<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<T> {
    typed(yaml_value(bytes)?)
}

/// The YAML as go-ucfg holds it: dotted keys nested, empty values gone, numbers as text except
/// below the keys whose Go fields are untyped (`default` of a variable, a data stream's
/// `index_template`), where go-ucfg keeps them numbers and the index JSON shows them so.
fn yaml_value(bytes: &[u8]) -> anyhow::Result<Value> {
    let value: Value = serde_yaml_ng::from_slice(bytes).context("not valid YAML")?;
    Ok(expand(value, false))
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> anyhow::Result<T> {
    serde_yaml_ng::from_value(value).context("not a manifest the registry reads")
}

fn expand(value: Value, keep_numbers: bool) -> Value {
    match value {
        Value::Mapping(map) => {
            let mut out = serde_yaml_ng::Mapping::new();
            for (k, v) in map {
                // An empty value is an absent one to go-ucfg.
                if v.is_null() {
                    continue;
                }
                // go-ucfg's keys are text; JSON's must be.
                let k = match k {
                    Value::Number(n) => Value::String(n.to_string()),
                    Value::Bool(b) => Value::String(b.to_string()),
                    k => k,
                };
                let untyped = matches!(&k, Value::String(s)
                    if matches!(s.split('.').next(), Some("default" | "index_template")));
                let v = expand(v, keep_numbers || untyped);
                match k {
                    Value::String(s) if s.contains('.') => {
                        let mut parts = s.split('.').rev();
                        let last = parts.next().unwrap_or_default();
                        let mut nested = Value::Mapping(
                            [(Value::String(last.to_owned()), v)].into_iter().collect(),
                        );
                        for p in parts {
                            nested = Value::Mapping(
                                [(Value::String(p.to_owned()), nested)].into_iter().collect(),
                            );
                        }
                        let Value::Mapping(nested) = nested else { unreachable!() };
                        merge(&mut out, nested);
                    }
                    k => merge(&mut out, [(k, v)].into_iter().collect()),
                }
            }
            Value::Mapping(out)
        }
        Value::Sequence(items) => {
            Value::Sequence(items.into_iter().map(|v| expand(v, keep_numbers)).collect())
        }
        // Go's JSON writes a whole float64 without a fraction (`1.0` is `1`).
        Value::Number(n) if keep_numbers => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                Value::Number((f as i64).into())
            }
            _ => Value::Number(n),
        },
        Value::Number(n) => Value::String(n.to_string()),
        Value::Tagged(t) => expand(t.value, keep_numbers),
        other => other,
    }
}

fn merge(into: &mut serde_yaml_ng::Mapping, from: serde_yaml_ng::Mapping) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Mapping(existing)), Value::Mapping(more)) => merge(existing, more),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_keys_nest_and_numbers_read_as_text() {
        let m: Manifest =
            yaml(b"name: a\nversion: 1.0.0\nconditions:\n  kibana.version: ^8.0.0\ntitle: 12\n")
                .unwrap();
        assert_eq!(m.conditions.unwrap().kibana.unwrap().version, "^8.0.0");
        assert_eq!(m.title.as_deref(), Some("12"));
    }

    #[test]
    fn invalid_yaml_is_an_error() {
        assert!(yaml::<Manifest>(b"name: [unclosed\n").is_err());
    }

    #[test]
    fn joins_like_go() {
        assert_eq!(join("/package/a/1.0.0", "/img/x.svg"), "/package/a/1.0.0/img/x.svg");
        assert_eq!(join("/package/a/1.0.0", "img/../x.svg"), "/package/a/1.0.0/x.svg");
    }
}
