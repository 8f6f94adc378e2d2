//! A package's index JSON (`/package/{name}/{version}/`): what the registry's full `Package`
//! adds to the search entry (`BasePackage`): `format_version`, `readme`, `license`,
//! `screenshots`, `assets`, `vars`, `elasticsearch` and `agent` privileges, and the full policy
//! templates (inputs, their variables and streams) and data streams (streams, variables, index
//! template, ingest pipeline) in place of the search entry's short ones.
//!
//! The fields, when they are left out, and the defaults the registry fills in follow
//! `packages/package.go` (`Package`, `newPackage`, `NewPackage`, `LoadAssets`),
//! `packages/datastream.go` (`DataStream`, `Input`, `Stream`, `Variable`, `NewDataStream`) and
//! `internal/ingestionmethod/ingestion_method.yml`. Everything here is computed once, when a
//! release's index is built, from what the zip read already holds: nothing is read per request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use super::package::{DeploymentModes, Image, join};

/// The manifest fields only the index JSON shows; the rest are read into `package::Manifest`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct FullManifest {
    #[serde(default)]
    license: String,
    #[serde(default)]
    screenshots: Vec<Image>,
    #[serde(default)]
    policy_templates: Vec<PolicyTemplate>,
    #[serde(default)]
    vars: Vec<Variable>,
    #[serde(default)]
    elasticsearch: Option<PackageElasticsearch>,
    #[serde(default)]
    agent: Option<Agent>,
}

/// What the index JSON adds to the search entry, or shows in place of its short lists.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Detail {
    format_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    readme: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    license: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    screenshots: Vec<Image>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    assets: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policy_templates: Vec<PolicyTemplate>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    data_streams: Vec<DataStream>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    vars: Vec<Variable>,
    #[serde(skip_serializing_if = "Option::is_none")]
    elasticsearch: Option<PackageElasticsearch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<Agent>,
}

/// A policy template in full (`PolicyTemplate`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PolicyTemplate {
    #[serde(default)]
    name: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    data_streams: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inputs: Vec<Input>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multiple: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    icons: Vec<Image>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    categories: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    screenshots: Vec<Image>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    readme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deployment_modes: Option<DeploymentModes>,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    input: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    ingestion_method: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    template_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deprecated: Option<Value>,
}

/// An input of a policy template (`Input`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Input {
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    package: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vars: Vec<Variable>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    streams: Vec<Stream>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    template_path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    input_group: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deployment_modes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deprecated: Option<Value>,
}

/// A stream of a data stream or an input (`Stream`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Stream {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    input: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    package: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vars: Vec<Variable>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    data_stream: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    template_path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    ingestion_method: String,
}

/// A variable (`Variable`): `multi`, `required` and `show_user` are always shown; `default`
/// keeps its YAML type (a number stays a number).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Variable {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default)]
    multi: bool,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    show_user: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deprecated: Option<Value>,
}

/// `agent.privileges` of a package or a data stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Agent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    privileges: Option<RootPrivilege>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RootPrivilege {
    #[serde(default, skip_serializing_if = "is_false")]
    root: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `elasticsearch.privileges.cluster` of a package.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PackageElasticsearch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    privileges: Option<ClusterPrivileges>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ClusterPrivileges {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cluster: Vec<String>,
}

/// A data stream's `manifest.yml` as read (dotted keys already nested).
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct DataStreamManifest {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub dataset: String,
    #[serde(default)]
    hidden: bool,
    #[serde(default)]
    ilm_policy: String,
    #[serde(default)]
    dataset_is_prefix: bool,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    ingest_pipeline: String,
    #[serde(default)]
    streams: Vec<Stream>,
    #[serde(default)]
    elasticsearch: Option<ElasticsearchManifest>,
    #[serde(default)]
    agent: Option<Agent>,
    #[serde(default)]
    pub deprecated: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ElasticsearchManifest {
    #[serde(default)]
    index_template: Option<IndexTemplate>,
    #[serde(default)]
    ingest_pipeline: Option<PipelineName>,
    #[serde(default)]
    privileges: Option<IndicesPrivileges>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct IndexTemplate {
    #[serde(default)]
    settings: Option<Value>,
    #[serde(default)]
    mappings: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct PipelineName {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct IndicesPrivileges {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    indices: Vec<String>,
}

/// A data stream in full (`DataStream`). The registry's Go names its Elasticsearch keys with
/// the dots in them (`index_template.settings`), so the JSON does too.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DataStream {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    dataset: String,
    #[serde(skip_serializing_if = "is_false")]
    hidden: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    ilm_policy: String,
    #[serde(skip_serializing_if = "is_false")]
    dataset_is_prefix: bool,
    title: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    release: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    ingest_pipeline: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    streams: Vec<Stream>,
    #[serde(skip_serializing_if = "String::is_empty")]
    package: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    elasticsearch: Option<DataStreamElasticsearch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<Agent>,
    #[serde(skip_serializing_if = "String::is_empty")]
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    deprecated: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DataStreamElasticsearch {
    #[serde(rename = "index_template.settings", skip_serializing_if = "empty_map")]
    settings: Option<Value>,
    #[serde(rename = "index_template.mappings", skip_serializing_if = "empty_map")]
    mappings: Option<Value>,
    #[serde(rename = "ingest_pipeline.name", skip_serializing_if = "String::is_empty")]
    pipeline: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    privileges: Option<IndicesPrivileges>,
}

/// Go's `omitempty` on a map: absent or without entries.
fn empty_map(v: &Option<Value>) -> bool {
    match v {
        None => true,
        Some(Value::Mapping(m)) => m.is_empty(),
        Some(_) => false,
    }
}

/// What the package's reading knows that the index JSON needs.
pub(super) struct Context<'a> {
    /// `/package/{name}/{version}`.
    pub url_path: &'a str,
    /// The package's type, `integration` when the manifest names none.
    pub kind: &'a str,
    pub format_version: String,
    /// `conditions.elastic.subscription`, the license of a manifest that names none.
    pub subscription: String,
    pub files: &'a BTreeMap<String, usize>,
    /// Every entry in zip order, directories flagged.
    pub entries: &'a [(String, bool)],
}

/// The index JSON's additions, with the defaults `newPackage` fills in.
pub(super) fn build(m: FullManifest, cx: Context<'_>, data_streams: Vec<DataStream>) -> Detail {
    let image = |mut i: Image| {
        i.path = join(cx.url_path, &i.src);
        i
    };
    let policy_templates = m
        .policy_templates
        .into_iter()
        .map(|mut t| {
            t.multiple = Some(t.multiple.unwrap_or(true));
            t.icons = t.icons.into_iter().map(image).collect();
            t.screenshots = t.screenshots.into_iter().map(image).collect();
            // A template's own README, when the package has one (`docs/{template}.md`).
            let readme = format!("docs/{}.md", t.name);
            if cx.files.contains_key(&readme) {
                t.readme = Some(join(cx.url_path, &readme));
            }
            if cx.kind == "input" && !t.input.is_empty() {
                t.ingestion_method = ingestion_method(&t.input).unwrap_or_default().to_owned();
            }
            t
        })
        .collect();
    let license = if !m.license.is_empty() {
        m.license
    } else if !cx.subscription.is_empty() {
        // The deprecated way to name a license (`conditions.elastic.subscription`).
        cx.subscription
    } else {
        "basic".to_owned()
    };
    Detail {
        format_version: cx.format_version,
        // `docs/README.md` is required: a package without it was refused before this.
        readme: Some(join(cx.url_path, "docs/README.md")),
        license,
        screenshots: m.screenshots.into_iter().map(image).collect(),
        assets: assets(cx.url_path, cx.entries),
        policy_templates,
        data_streams,
        vars: m.vars,
        elasticsearch: m.elasticsearch,
        agent: m.agent,
    }
}

/// One data stream in full, with the defaults `NewDataStream` fills in: the dataset and release
/// (passed in, as the search entry shows them too), each stream enabled and templated by
/// `stream.yml.hbs` unless it says otherwise, its ingestion method from its input, and the
/// `default` ingest pipeline when the data stream has `default.json` or `default.yml`.
pub(super) fn data_stream(
    m: DataStreamManifest,
    package: &str,
    dir: &str,
    dataset: String,
    release: String,
    files: &BTreeMap<String, usize>,
) -> DataStream {
    let streams = m
        .streams
        .into_iter()
        .map(|mut s| {
            s.enabled = Some(s.enabled.unwrap_or(true));
            if s.template_path.is_empty() {
                s.template_path = "stream.yml.hbs".to_owned();
            }
            if let Some(method) = ingestion_method(&s.input) {
                s.ingestion_method = method.to_owned();
            }
            s
        })
        .collect();
    let has_default_pipeline = ["default.json", "default.yml"].iter().any(|f| {
        files.contains_key(&format!("data_stream/{dir}/elasticsearch/ingest_pipeline/{f}"))
    });
    let mut ingest_pipeline = m.ingest_pipeline;
    let mut unnamed = false;
    let elasticsearch = m.elasticsearch.map(|es| {
        let mut pipeline = es.ingest_pipeline.map(|p| p.name).unwrap_or_default();
        unnamed = pipeline.is_empty();
        if unnamed && has_default_pipeline {
            pipeline = "default".to_owned();
            // The legacy field follows the new one (`NewDataStream`).
            ingest_pipeline = "default".to_owned();
        }
        let (settings, mappings) =
            es.index_template.map(|t| (t.settings, t.mappings)).unwrap_or_default();
        DataStreamElasticsearch { settings, mappings, pipeline, privileges: es.privileges }
    });
    // Without an `elasticsearch` section naming none, the legacy field alone says `default`.
    // The registry refuses a data stream with other pipelines and none in use ("unused
    // pipelines"); it is served here as it is, since the rest of its package is sound.
    if !unnamed && ingest_pipeline.is_empty() && has_default_pipeline {
        ingest_pipeline = "default".to_owned();
    }
    DataStream {
        kind: m.kind,
        dataset,
        hidden: m.hidden,
        ilm_policy: m.ilm_policy,
        dataset_is_prefix: m.dataset_is_prefix,
        title: m.title,
        release,
        ingest_pipeline,
        streams,
        package: package.to_owned(),
        elasticsearch,
        agent: m.agent,
        path: dir.to_owned(),
        deprecated: m.deprecated,
    }
}

/// The URL paths of the package's files as `LoadAssets` lists them: level by level (the files
/// of the top folder, then those one folder down, …), each level in zip order, directories
/// left out, stopping at the first level with no entry at all (which only a zip without
/// directory entries can have before its last level), and `.DS_Store` files skipped.
pub(super) fn assets(url_path: &str, entries: &[(String, bool)]) -> Vec<String> {
    let mut out = Vec::new();
    for depth in 1.. {
        let mut any = false;
        for (path, dir) in entries.iter().filter(|(p, _)| p.split('/').count() == depth) {
            any = true;
            if !dir && !path.contains(".DS_Store") {
                out.push(format!("{url_path}/{path}"));
            }
        }
        if !any {
            break;
        }
    }
    out
}

/// How an input ingests its data, as Kibana groups inputs (`ingestion_method.yml`).
pub(super) fn ingestion_method(input: &str) -> Option<&'static str> {
    Some(match input {
        "cel"
        | "entity-analytics"
        | "httpjson"
        | "o365audit"
        | "salesforce"
        | "streaming"
        | "websocket"
        | "winlog"
        | "apache/metrics"
        | "aws/metrics"
        | "awsfargate/metrics"
        | "azure/metrics"
        | "containerd/metrics"
        | "docker/metrics"
        | "elasticsearch/metrics"
        | "enterprisesearch/metrics"
        | "etcd/metrics"
        | "gcp/metrics"
        | "haproxy/metrics"
        | "http/metrics"
        | "kibana/metrics"
        | "kubernetes/metrics"
        | "logstash/metrics"
        | "meraki/metrics"
        | "nats/metrics"
        | "nginx/metrics"
        | "panw/metrics"
        | "rabbitmq/metrics"
        | "stan/metrics"
        | "vsphere/metrics"
        | "windows/metrics" => "API",
        "memcached/metrics" | "mongodb/metrics" | "mysql/metrics" | "postgresql/metrics"
        | "redis" | "redis/metrics" | "sql/metrics" | "zookeeper/metrics" => "Database",
        "activemq/metrics" | "jolokia/metrics" | "kafka/metrics" => "Jolokia",
        "filestream" | "logfile" | "linux/metrics" | "system/metrics" => "File",
        "syslog" | "tcp" | "udp" | "statsd/metrics" => "Network Protocol",
        "http_endpoint" => "Webhook",
        "aws-s3" => "AWS S3",
        "azure-blob-storage" => "Azure Blob Storage",
        "aws-cloudwatch" => "AWS CloudWatch",
        "azure-eventhub" => "Azure Event Hub",
        "etw" => "ETW",
        "gcp-pubsub" => "GCP Pub/Sub",
        "gcs" => "Google Cloud Storage",
        "iis/metrics" => "Windows Performance Counters",
        "journald" => "journald",
        "kafka" => "Kafka",
        "lumberjack" => "Lumberjack",
        "netflow" => "NetFlow",
        _ => return None,
    })
}

/// The index JSON: the search entry (`base`, already serialised) with `detail`'s fields added,
/// its full policy templates and data streams replacing the search entry's short ones (Go's
/// outer field wins over the embedded one of the same name).
pub(super) fn index_json(
    base: serde_json::Value,
    detail: &Detail,
) -> serde_json::Result<serde_json::Value> {
    let serde_json::Value::Object(mut map) = base else {
        return Err(serde::ser::Error::custom("a package is a JSON object"));
    };
    map.remove("policy_templates");
    map.remove("data_streams");
    if let serde_json::Value::Object(extra) = serde_json::to_value(detail)? {
        map.extend(extra);
    }
    Ok(serde_json::Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter().map(|(p, d)| ((*p).to_owned(), *d)).collect()
    }

    #[test]
    fn assets_are_listed_level_by_level_in_zip_order() {
        let e = entries(&[
            ("manifest.yml", false),
            ("img/b.png", false),
            ("docs", true),
            ("docs/README.md", false),
            ("img/a.png", false),
            ("data_stream/x/manifest.yml", false),
            (".DS_Store", false),
        ]);
        assert_eq!(
            assets("/package/p/1.0.0", &e),
            [
                "/package/p/1.0.0/manifest.yml",
                "/package/p/1.0.0/img/b.png",
                "/package/p/1.0.0/docs/README.md",
                "/package/p/1.0.0/img/a.png",
                "/package/p/1.0.0/data_stream/x/manifest.yml",
            ]
        );
        // A level with no entry at all ends the walk, as the registry's glob does.
        let gap = entries(&[("manifest.yml", false), ("a/b/c.txt", false)]);
        assert_eq!(assets("/p", &gap), ["/p/manifest.yml"]);
    }

    #[test]
    fn ingestion_methods_by_input() {
        assert_eq!(ingestion_method("filestream"), Some("File"));
        assert_eq!(ingestion_method("sql/metrics"), Some("Database"));
        assert_eq!(ingestion_method("gcp-pubsub"), Some("GCP Pub/Sub"));
        assert_eq!(ingestion_method("foo"), None);
    }

    #[test]
    fn data_stream_defaults() {
        let m: DataStreamManifest = serde_yaml_ng::from_str(
            "title: T\ntype: logs\nstreams:\n  - input: tcp\n  - input: foo\n    enabled: false\n    template_path: x.hbs\nelasticsearch:\n  index_template:\n    mappings:\n      dynamic: false\n",
        )
        .unwrap();
        let files: BTreeMap<String, usize> =
            [("data_stream/d/elasticsearch/ingest_pipeline/default.yml".to_owned(), 3)].into();
        let ds = data_stream(m, "p", "d", "p.d".into(), "ga".into(), &files);
        let json = serde_json::to_value(&ds).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "logs", "dataset": "p.d", "title": "T", "release": "ga",
                "ingest_pipeline": "default", "package": "p", "path": "d",
                "streams": [
                    {"input": "tcp", "template_path": "stream.yml.hbs", "enabled": true,
                     "ingestion_method": "Network Protocol"},
                    {"input": "foo", "template_path": "x.hbs", "enabled": false},
                ],
                "elasticsearch": {
                    "index_template.mappings": {"dynamic": false},
                    "ingest_pipeline.name": "default",
                },
            })
        );
    }
}
