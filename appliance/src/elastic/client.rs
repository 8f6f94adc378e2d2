//! The calls the appliance makes to the site's Elasticsearch, as plain REST over `ureq`, with
//! request and response types written after Elastic's specification
//! (elastic/elasticsearch-specification, `specification/security/<endpoint>/` and
//! `specification/_global/search/`): five of the security API for output keys, and one search
//! of `.fleet-artifacts` for Elastic Defend's user artifacts. Blocking: they run on threads of
//! their own, a few at a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::ElasticsearchConfig;

/// The most a response body may be: a page of 100 keys with role descriptors fits many times.
const BODY_LIMIT: u64 = 4 << 20;

/// The most an artifact search's answer may be: Kibana stores an artifact zlib-compressed and
/// base64-encoded in one document, and a site's largest (a blocklist of many thousand hashes)
/// stays a few MiB; 64 MiB of answer is far past that and still bounded.
const SEARCH_BODY_LIMIT: u64 = 64 << 20;

/// Why a call failed, in the words `health` and the logs use.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum EsError {
    #[error("cannot reach Elasticsearch at {host}: {detail}")]
    Unreachable { host: String, detail: String },
    /// The request went out and the connection broke before the answer: it may have taken
    /// effect (a key made whose secret never came).
    #[error("the connection to Elasticsearch at {host} broke before its answer: {detail}")]
    Lost { host: String, detail: String },
    #[error(
        "TLS with Elasticsearch at {host} failed: {detail} (is elasticsearch.ca_file the CA \
         that signed its certificate?)"
    )]
    Tls { host: String, detail: String },
    #[error("Elasticsearch refused the appliance's credential (401): {reason}")]
    Unauthorized { reason: String },
    #[error("the appliance's credential lacks a privilege (403): {reason}")]
    Forbidden { reason: String },
    #[error("Elasticsearch answered {status}: {reason}")]
    Status { status: u16, reason: String },
    #[error("Elasticsearch answered what its specification does not allow: {0}")]
    Malformed(String),
}

/// The credential the appliance authenticates with (a service token, sent as a bearer token),
/// as an `Authorization` header value.
#[derive(Clone)]
struct Credential(String);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)")
    }
}

impl Credential {
    fn read(config: &ElasticsearchConfig) -> anyhow::Result<Self> {
        let Some(path) = &config.service_token_file else {
            anyhow::bail!("elasticsearch: no credential file is configured")
        };
        Ok(Self(format!("Bearer {}", crate::config::read_secret_file("elasticsearch", path)?)))
    }
}

/// `ApiKey` metadata as Fleet Server writes it (fleet-server internal/pkg/apikey/metadata.go),
/// so that Kibana and an operator's queries see the same keys a Fleet Server would make.
#[derive(Debug, Serialize)]
pub(crate) struct KeyMetadata {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub agent_id: String,
    pub managed: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub managed_by: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output_name: String,
    #[serde(skip_serializing_if = "String::is_empty", rename = "type")]
    pub kind: String,
    /// Ferry's own: the creation this key came from (`OutputKeyRecord::intent`), so that a
    /// creation whose answer was lost finds exactly its key, and never another's.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ferry_intent: String,
}

impl KeyMetadata {
    pub(crate) fn output(agent_id: &str, output: &str, intent: &str) -> Self {
        Self {
            agent_id: agent_id.to_owned(),
            managed: true,
            managed_by: "fleet-server".to_owned(),
            output_name: output.to_owned(),
            kind: "output".to_owned(),
            ferry_intent: intent.to_owned(),
        }
    }
}

/// `security/create_api_key` request body.
#[derive(Serialize)]
struct CreateRequest<'a> {
    name: &'a str,
    role_descriptors: &'a RawValue,
    metadata: &'a KeyMetadata,
}

/// `security/create_api_key` response body.
#[derive(Deserialize)]
pub(crate) struct CreatedKey {
    pub id: String,
    pub api_key: String,
}

/// `security/invalidate_api_key` request body: by ids, among the keys the credential owns.
#[derive(Serialize)]
struct InvalidateRequest<'a> {
    ids: &'a [String],
    owner: bool,
}

/// `security/invalidate_api_key` response body.
#[derive(Deserialize)]
pub(crate) struct Invalidated {
    pub invalidated_api_keys: Vec<String>,
    pub previously_invalidated_api_keys: Vec<String>,
    pub error_count: u32,
}

/// `security/query_api_keys` response body, the fields read.
#[derive(Deserialize)]
struct QueryResponse {
    api_keys: Vec<KeyInfo>,
}

/// `security/_types/ApiKey.ts`, the fields read.
#[derive(Deserialize)]
pub(crate) struct KeyInfo {
    pub id: String,
    #[serde(default)]
    pub invalidated: bool,
}

/// `security/authenticate` response body, the fields read.
#[derive(Deserialize)]
pub(crate) struct Authenticated {
    pub username: String,
}

/// `security/has_privileges` response body, the fields read.
#[derive(Deserialize)]
pub(crate) struct Privileges {
    pub has_all_requested: bool,
    #[serde(default)]
    pub cluster: std::collections::BTreeMap<String, bool>,
}

/// `_global/search` response body, the fields read (`SearchResponseBody`, its `hits` a
/// `HitsMetadata` of `Hit`s in `_global/search/_types/hits.ts`).
#[derive(Deserialize)]
struct SearchResponse {
    hits: Hits,
}

#[derive(Deserialize)]
struct Hits {
    hits: Vec<Hit>,
}

#[derive(Deserialize)]
struct Hit {
    #[serde(rename = "_source")]
    source: Option<Box<RawValue>>,
}

/// Elasticsearch's error body (`_types/Base.ts`, `ErrorResponseBase`), the reason read.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorCause,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorCause {
    Cause {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Text(String),
}

/// One client for the configured hosts: each call goes to the host that answered last and
/// moves on to the next when one cannot be reached.
pub(crate) struct Client {
    agent: ureq::Agent,
    hosts: Vec<String>,
    credential: Credential,
    current: AtomicUsize,
    /// `request_timeout_seconds`: what a call takes unless it says otherwise.
    timeout: Option<Duration>,
}

impl Client {
    pub(crate) fn new(config: &ElasticsearchConfig) -> anyhow::Result<Self> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .with_context(|| format!("elasticsearch.ca_file: cannot read {}", ca.display()))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("elasticsearch.ca_file: {} is not PEM", ca.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "elasticsearch.ca_file: {} holds no certificate",
                ca.display()
            );
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let timeout = Some(Duration::from_secs(config.request_timeout_seconds));
        let config_ = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(timeout)
            .user_agent(format!("ferry-appliance/{}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            agent: config_.into(),
            hosts: config.hosts.iter().map(|h| h.trim_end_matches('/').to_owned()).collect(),
            credential: Credential::read(config)?,
            current: AtomicUsize::new(0),
            timeout,
        })
    }

    /// The configured hosts, for messages.
    pub(crate) fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// `GET /_security/_authenticate`: whom the credential names.
    pub(crate) fn authenticate(&self) -> Result<Authenticated, EsError> {
        self.call("GET", "/_security/_authenticate", None)
    }

    /// `POST /_security/user/_has_privileges` for cluster privileges.
    pub(crate) fn has_privileges(&self, cluster: &[&str]) -> Result<Privileges, EsError> {
        let body = serde_json::to_vec(&serde_json::json!({ "cluster": cluster }))
            .expect("a privilege list serialises");
        self.call("POST", "/_security/user/_has_privileges", Some(&body))
    }

    /// `POST /_security/api_key?refresh=false`, as Fleet Server creates keys
    /// (fleet-server internal/pkg/bulk/opApiKey.go): waiting for a refresh would cost up to a
    /// second a key. The reconciliation of a lost answer waits out the periodic refresh.
    pub(crate) fn create_api_key(
        &self,
        name: &str,
        role_descriptors: &RawValue,
        metadata: &KeyMetadata,
    ) -> Result<CreatedKey, EsError> {
        let body = serde_json::to_vec(&CreateRequest { name, role_descriptors, metadata })
            .expect("a create request serialises");
        self.call("POST", "/_security/api_key?refresh=false", Some(&body))
    }

    /// `DELETE /_security/api_key` with `ids` among the credential's own keys. Keys already
    /// invalidated are reported as such, not as errors.
    pub(crate) fn invalidate(&self, ids: &[String]) -> Result<Invalidated, EsError> {
        let body = serde_json::to_vec(&InvalidateRequest { ids, owner: true })
            .expect("an invalidate request serialises");
        self.call("DELETE", "/_security/api_key", Some(&body))
    }

    /// `POST /_security/_query/api_key`: the valid keys this credential made for one agent's
    /// output in one creation (`intent`), found by the metadata written with them.
    pub(crate) fn intended_keys(
        &self,
        agent_id: &str,
        output: &str,
        intent: &str,
    ) -> Result<Vec<KeyInfo>, EsError> {
        let query = serde_json::json!({
            "size": 100,
            "query": { "bool": { "filter": [
                { "term": { "metadata.agent_id": agent_id } },
                { "term": { "metadata.output_name": output } },
                { "term": { "metadata.ferry_intent": intent } },
                { "term": { "invalidated": false } },
            ] } },
        });
        let body = serde_json::to_vec(&query).expect("a query serialises");
        let found: QueryResponse = self.call("POST", "/_security/_query/api_key", Some(&body))?;
        Ok(found.api_keys.into_iter().filter(|k| !k.invalidated).collect())
    }

    /// `POST /.fleet-artifacts/_search` for the artifact `identifier` whose decoded content
    /// hashes to `decoded_sha256`, with Fleet Server's query (fleet-server
    /// internal/pkg/dl/artifact.go: a bool `must` of two `term`s); the first hit's `_source`,
    /// as Fleet Server uses the first of several. `timeout` bounds this call on each host: an
    /// agent waits for it.
    pub(crate) fn find_artifact(
        &self,
        identifier: &str,
        decoded_sha256: &str,
        timeout: Duration,
    ) -> Result<Option<Box<RawValue>>, EsError> {
        let query = serde_json::json!({
            "query": { "bool": { "must": [
                { "term": { "decoded_sha256": decoded_sha256 } },
                { "term": { "identifier": identifier } },
            ] } },
        });
        let body = serde_json::to_vec(&query).expect("a query serialises");
        let limits = (timeout, SEARCH_BODY_LIMIT);
        let found: SearchResponse =
            self.call_with("POST", "/.fleet-artifacts/_search", Some(&body), Some(limits))?;
        Ok(found.hits.hits.into_iter().next().and_then(|hit| hit.source))
    }

    fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<T, EsError> {
        self.call_with(method, path, body, None)
    }

    /// [`Client::call`], with a timeout and answer size of its own when `limits` says.
    fn call_with<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        limits: Option<(Duration, u64)>,
    ) -> Result<T, EsError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for step in 0..self.hosts.len() {
            let index = (start + step) % self.hosts.len();
            let host = &self.hosts[index];
            match self.send(host, method, path, body, limits) {
                Ok((status, bytes)) => {
                    self.current.store(index, Ordering::Relaxed);
                    return answer(status, &bytes);
                }
                Err(e @ EsError::Unreachable { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one host is configured"))
    }

    fn send(
        &self,
        host: &str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        limits: Option<(Duration, u64)>,
    ) -> Result<(u16, Vec<u8>), EsError> {
        let url = format!("{host}{path}");
        let auth = self.credential.0.as_str();
        let json = "application/json";
        let timeout = limits.map(|(t, _)| t);
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", auth).call(),
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .config()
                .timeout_global(timeout.or(self.timeout))
                .build()
                .header("Authorization", auth)
                .header("Content-Type", json)
                .send(b),
            ("DELETE", Some(b)) => self
                .agent
                .delete(&url)
                .force_send_body()
                .header("Authorization", auth)
                .header("Content-Type", json)
                .send(b),
            _ => unreachable!("only the calls above are made"),
        };
        let mut response = sent.map_err(|e| transport(host, e))?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(limits.map_or(BODY_LIMIT, |(_, size)| size))
            .read_to_vec()
            .map_err(|e| transport(host, e))?;
        Ok((status, bytes))
    }
}

/// A transport failure, told apart as TLS trouble (a configuration fix) or not reaching the
/// host (the network, or Elasticsearch down).
fn transport(host: &str, e: ureq::Error) -> EsError {
    let host = host.to_owned();
    match e {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => {
            EsError::Tls { host, detail: e.to_string() }
        }
        ureq::Error::Io(ref io) if io.to_string().contains("certificate") => {
            EsError::Tls { host, detail: e.to_string() }
        }
        ureq::Error::Timeout(_) => {
            EsError::Unreachable { host, detail: format!("{e} (timed out)") }
        }
        ureq::Error::Io(ref io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            EsError::Lost { host, detail: e.to_string() }
        }
        ureq::Error::Protocol(_) => EsError::Lost { host, detail: e.to_string() },
        other => EsError::Unreachable { host, detail: other.to_string() },
    }
}

/// The typed answer of a 2xx, or the error Elasticsearch's status and body describe.
fn answer<T: for<'de> Deserialize<'de>>(status: u16, bytes: &[u8]) -> Result<T, EsError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(bytes).map_err(|e| EsError::Malformed(e.to_string()));
    }
    let reason = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(ErrorBody { error: ErrorCause::Cause { kind, reason } }) => match reason {
            Some(reason) => format!("{kind}: {reason}"),
            None => kind,
        },
        Ok(ErrorBody { error: ErrorCause::Text(text) }) => text,
        Err(_) => String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
    };
    Err(match status {
        401 => EsError::Unauthorized { reason },
        403 => EsError::Forbidden { reason },
        status => EsError::Status { status, reason },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read_as_elasticsearch_writes_them() {
        let body = br#"{"error":{"root_cause":[],"type":"security_exception","reason":"missing authentication credentials"},"status":401}"#;
        let err = answer::<Authenticated>(401, body).err().unwrap();
        assert!(
            matches!(&err, EsError::Unauthorized { reason } if reason.contains("security_exception: missing")),
            "{err}"
        );
        let err = answer::<Authenticated>(503, b"<html>gateway</html>").err().unwrap();
        assert!(
            matches!(&err, EsError::Status { status: 503, reason } if reason.contains("gateway")),
            "{err}"
        );
        let err = answer::<Authenticated>(200, b"{}").err().unwrap();
        assert!(matches!(err, EsError::Malformed(_)), "a 200 without the required username");
    }

    #[test]
    fn metadata_is_fleet_servers() {
        let m = serde_json::to_value(KeyMetadata::output("a1", "default", "i1")).unwrap();
        assert_eq!(
            m,
            serde_json::json!({"agent_id": "a1", "managed": true, "managed_by": "fleet-server",
                               "output_name": "default", "type": "output", "ferry_intent": "i1"})
        );
    }
}
