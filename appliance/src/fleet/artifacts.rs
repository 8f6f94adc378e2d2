//! `GET /api/fleet/artifacts/{id}/{sha256}`: Elastic Defend's user artifacts (trusted apps,
//! exceptions, blocklists), which Kibana writes to the site's Elasticsearch (`.fleet-artifacts`)
//! and Endpoint fetches with its agent's access key, answered as Fleet Server answers
//! (fleet-server internal/pkg/api/handleArtifacts.go): the key authenticates, the hash is 64 hex
//! digits, the agent's own policy lists the artifact with that hash, and the document found is
//! served only if its decoded body hashes to its `encoded_sha256` and it is the one the URL
//! names. Decoded artifacts are cached in memory, bounded in bytes; searches are throttled as
//! Fleet Server throttles them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::Digest as _;

use super::{AgentApi, authenticated, blocking};
use crate::elastic::EsError;
use crate::error::ApiError;

/// The artifacts a delivered policy lists, as (identifier, decoded SHA-256).
pub(crate) type Listed = BTreeSet<(String, String)>;

/// Searches of Elasticsearch in flight at once, one per hash (Fleet Server's
/// `defaultMaxParallel` in handleArtifacts.go and its `throttle` package).
const MAX_SEARCHES: usize = 8;
/// The longest an agent waits on Elasticsearch for one artifact (less if
/// `elasticsearch.request_timeout_seconds` says so): Endpoint retries, a hung request helps no one.
const SEARCH_DEADLINE: Duration = Duration::from_secs(5);
/// The decoded artifacts kept in memory. A site has a few user artifacts per operating system
/// and policy, each a few KiB to a few MiB compressed, and Kibana writes a new one (a new hash)
/// for every change of a list, the old ones never asked for again: without a bound the cache
/// would grow for as long as the appliance runs. 64 MiB holds the live set of any plausible site
/// many times over, so a fleet of thousands fetching a new artifact costs Elasticsearch one
/// search, and it is a small share of the appliance's memory.
const CACHE_BYTES: usize = 64 << 20;

/// The user artifacts `policy` (a delivered policy document) lists: every input's
/// `artifact_manifest.artifacts.<identifier>.decoded_sha256` (fleet-server's
/// `policyHasArtifact`; anything of another shape lists nothing).
pub(crate) fn listed(policy: &Value) -> Listed {
    let inputs = policy.get("inputs").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    inputs
        .iter()
        .filter_map(|input| input.get("artifact_manifest")?.get("artifacts")?.as_object())
        .flat_map(|artifacts| artifacts.iter())
        .filter_map(|(id, entry)| {
            let sha = entry.get("decoded_sha256")?.as_str()?;
            Some((id.clone(), sha.to_owned()))
        })
        .collect()
}

/// Fleet Server's `validateSha2String`: exactly 64 characters, all hex digits (either case, as
/// Go's `hex.DecodeString` takes them; only a policy's own spelling then matches).
fn well_formed_sha256(sha: &str) -> bool {
    sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The `Content-Type` Go's `net/http` gives a body written without one
/// (`http.DetectContentType`, which Fleet Server's `io.Copy` leaves it to), for the bodies a user
/// artifact has: zlib (first byte `0x78`) or JSON (`{` after white space). Of Go's signature
/// table only two rules can match such bytes, the Embedded OpenType one (`LP` at offset 34) and
/// the text one (no control byte among the first 512), and both are here; the others need a
/// first byte these bodies never have. An empty body gets none, as Go writes none.
pub(crate) fn sniffed_type(body: &[u8]) -> Option<&'static str> {
    if body.is_empty() {
        return None;
    }
    let data = &body[..body.len().min(512)];
    if data.get(34..36) == Some(b"LP") {
        return Some("application/vnd.ms-fontobject");
    }
    let first = data.iter().position(|b| !matches!(b, b'\t' | b'\n' | 0x0c | b'\r' | b' '));
    let binary = data[first.unwrap_or(data.len())..].iter().any(|&b| {
        b <= 0x08 || b == 0x0b || (0x0e..=0x1a).contains(&b) || (0x1c..=0x1f).contains(&b)
    });
    Some(if binary { "application/octet-stream" } else { "text/plain; charset=utf-8" })
}

/// The fields of a `.fleet-artifacts` document read here (fleet-server
/// internal/pkg/model/schema.go, `Artifact`; Kibana writes them all).
#[derive(serde::Deserialize)]
struct Document {
    /// Base64 of the encoded (compressed) artifact, as a JSON string.
    body: Value,
    #[serde(default)]
    identifier: String,
    #[serde(default)]
    decoded_sha256: String,
    #[serde(default)]
    encoded_sha256: String,
}

/// The refusals of a document Elasticsearch gave: Fleet Server answers each `500` with its
/// default error code, and so does the appliance; the document is never served.
fn bad_document(message: impl Into<String>) -> ApiError {
    ApiError::fleet(StatusCode::INTERNAL_SERVER_ERROR, "BadRequest", message)
}

/// The bytes to serve from `source` (a `.fleet-artifacts` document) fetched for (`id`, `sha`):
/// its `body` base64-decoded, only if they hash to its `encoded_sha256` and the document is the
/// artifact the URL names (fleet-server handleArtifacts.go, `getArtifact` and
/// `processRequest`).
fn decode(source: &str, id: &str, sha: &str) -> Result<Bytes, ApiError> {
    use base64::Engine as _;
    let doc: Document = serde_json::from_str(source)
        .map_err(|e| bad_document(format!("cannot read the artifact document: {e}")))?;
    let Value::String(text) = doc.body else {
        return Err(bad_document("the artifact's body is not a string"));
    };
    // Go's base64 decoder skips line breaks, and demands padding.
    let text: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| bad_document(format!("illegal base64 data: {e}")))?;
    let expected = hex::decode(&doc.encoded_sha256)
        .map_err(|e| bad_document(format!("sha2 hex decode: {e}")))?;
    if sha2::Sha256::digest(&bytes)[..] != expected[..] {
        return Err(bad_document("mismatched sha256"));
    }
    if doc.identifier != id || doc.decoded_sha256 != sha {
        return Err(bad_document("artifact record mismatch"));
    }
    Ok(Bytes::from(bytes))
}

/// Decoded artifacts by (identifier, decoded SHA-256), and the searches in flight.
#[derive(Default)]
pub(crate) struct Artifacts {
    cache: Mutex<Cache>,
    searching: Mutex<HashSet<String>>,
}

/// At most [`CACHE_BYTES`] of artifacts; the one used longest ago goes first.
#[derive(Default)]
struct Cache {
    entries: HashMap<(String, String), (Bytes, u64)>,
    bytes: usize,
    clock: u64,
}

impl Cache {
    fn get(&mut self, key: &(String, String)) -> Option<Bytes> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(bytes, used)| {
            *used = clock;
            bytes.clone()
        })
    }

    /// Keeps `bytes` within `bound` in all. One larger than a quarter of it is served but not
    /// kept: one artifact must not evict all the others.
    fn put(&mut self, key: (String, String), bytes: Bytes, bound: usize) {
        if bytes.len() > bound / 4 || self.entries.contains_key(&key) {
            return;
        }
        while self.bytes + bytes.len() > bound {
            let Some(oldest) =
                self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((gone, _)) = self.entries.remove(&oldest) {
                self.bytes -= gone.len();
            }
        }
        self.clock += 1;
        self.bytes += bytes.len();
        self.entries.insert(key, (bytes, self.clock));
    }
}

/// Fleet Server's throttle: one search per hash, [`MAX_SEARCHES`] in all. Its tokens also
/// expire after a minute, for a search that never returns; here a search always ends (its
/// thread is bounded by the request timeout) and gives its place back then.
fn admit(searching: &mut HashSet<String>, sha: &str) -> bool {
    searching.len() < MAX_SEARCHES && searching.insert(sha.to_owned())
}

/// A search in flight for one hash, held by the thread that runs it; it ends when this drops.
struct Searching {
    api: Arc<AgentApi>,
    sha: String,
}

impl Drop for Searching {
    fn drop(&mut self) {
        self.api.artifacts.searching.lock().expect("artifacts lock").remove(&self.sha);
    }
}

impl Artifacts {
    fn begin_search(api: &Arc<AgentApi>, sha: &str) -> Option<Searching> {
        let admitted = admit(&mut api.artifacts.searching.lock().expect("artifacts lock"), sha);
        admitted.then(|| Searching { api: Arc::clone(api), sha: sha.to_owned() })
    }
}

/// How the route answers when Elasticsearch fails it (fleet-server internal/pkg/api/error.go,
/// the last branches of `NewHTTPErrResp`): `503`, in its words for a connection that failed and
/// for an error Elasticsearch answered.
fn unavailable(e: &EsError) -> ApiError {
    tracing::warn!(error = %e, "artifact search failed");
    let message = match e {
        EsError::Unreachable { .. } | EsError::Lost { .. } | EsError::Tls { .. } => {
            "Fleet server unable to communicate with Elasticsearch"
        }
        _ => "elasticsearch error",
    };
    ApiError::fleet(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
}

fn forbidden(message: &'static str) -> ApiError {
    ApiError::fleet(StatusCode::FORBIDDEN, "Forbidden", message)
}

/// `GET /api/fleet/artifacts/{id}/{sha256}`.
pub(crate) async fn artifact(
    State(api): State<Arc<AgentApi>>,
    Path((id, sha)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let agent = authenticated(&api, &headers, None).await?;
    if !well_formed_sha256(&sha) {
        return Err(bad_document("malformed sha256"));
    }
    // The policy this appliance delivers to the agent (its assignment in the store, resolved
    // against the active release as check-ins resolve it), never one the request names:
    // Fleet Server anchors on the enrollment's `policy_id` for the same reason.
    if agent.policy_id.is_empty() {
        return Err(forbidden("agent has no policy ID"));
    }
    let policy = match api.policies.cached(&api, &agent.policy_id) {
        Some(policy) => policy,
        None => {
            let (api, policy_id) = (Arc::clone(&api), agent.policy_id.clone());
            blocking(move || api.policies.get(&api, &policy_id)).await?
        }
    };
    let key = (id, sha);
    if !policy.is_some_and(|p| p.artifacts.contains(&key)) {
        tracing::warn!(agent = %agent.id, artifact = %key.0, sha256 = %key.1, "artifact not in the agent's policy");
        return Err(forbidden("agent not authorized for artifact"));
    }
    let cached = api.artifacts.cache.lock().expect("artifacts lock").get(&key);
    let bytes = match cached {
        Some(bytes) => bytes,
        None => fetch(&api, &key).await?,
    };
    let mut response = Response::new(Body::from(bytes.clone()));
    if let Some(kind) = sniffed_type(&bytes) {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    }
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Ok(response.into_response())
}

/// The artifact from the site's Elasticsearch, checked, then cached.
async fn fetch(api: &Arc<AgentApi>, key: &(String, String)) -> Result<Bytes, ApiError> {
    let (id, sha) = key;
    // No `[elasticsearch]`: nowhere for Kibana to have written user artifacts.
    let Some(elastic) = api.app.elastic.get() else {
        return Err(ApiError::NotFound);
    };
    let Some(searching) = Artifacts::begin_search(api, sha) else {
        return Err(ApiError::TooMany {
            code: "TooManyRequests",
            message: "too many requests".into(),
            retry_after: Duration::from_secs(1),
        });
    };
    let deadline = SEARCH_DEADLINE.min(elastic.request_timeout());
    let source =
        elastic.find_artifact(id, sha, deadline, searching).await.map_err(|e| unavailable(&e))?;
    let Some(source) = source else {
        return Err(ApiError::NotFound);
    };
    let (source, id2, sha2) = (source, id.clone(), sha.clone());
    let decoded = blocking(move || Ok(decode(source.get(), &id2, &sha2))).await?;
    let bytes = decoded.inspect_err(|e| {
        tracing::error!(artifact = %id, sha256 = %sha, error = ?e, "artifact document refused");
    })?;
    api.artifacts.cache.lock().expect("artifacts lock").put(
        key.clone(),
        bytes.clone(),
        CACHE_BYTES,
    );
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    const SHA: &str = "d801aa1fb7ddcc330a5e3173372ea6af4a3d08ec58074478e85aa5603e926658";

    #[test]
    fn policies_list_artifacts_as_fleet_server_reads_them() {
        // Shapes of fleet-server's handleArtifacts_test.go: several inputs, some without a
        // manifest, and entries of other shapes that list nothing.
        let policy = json!({"inputs": [
            {"type": "logfile"},
            {"type": "endpoint", "artifact_manifest": {"manifest_version": "1.0.28",
                "schema_version": "v1", "artifacts": {
                    "endpoint-trustlist-linux-v1": {"decoded_sha256": SHA, "decoded_size": 14},
                    "endpoint-blocklist-linux-v1": {"decoded_sha256": 7},
                    "endpoint-eventfilterlist-linux-v1": "x",
            }}},
            {"type": "other", "artifact_manifest": {"artifacts": {"b": {"decoded_sha256": "bbbb"}}}},
            {"type": "odd", "artifact_manifest": {"artifacts": []}},
        ]});
        let expected: Listed = [
            ("b".to_owned(), "bbbb".to_owned()),
            ("endpoint-trustlist-linux-v1".to_owned(), SHA.to_owned()),
        ]
        .into();
        assert_eq!(listed(&policy), expected);
        assert!(listed(&json!({"inputs": "no"})).is_empty());
        assert!(listed(&json!({})).is_empty());
    }

    #[test]
    fn hashes_are_64_hex_digits() {
        assert!(well_formed_sha256(SHA));
        assert!(well_formed_sha256(&SHA.to_uppercase()));
        assert!(!well_formed_sha256(&SHA[1..]));
        assert!(!well_formed_sha256(&format!("{SHA}0")));
        assert!(!well_formed_sha256(&format!("{}g", &SHA[1..])));
        assert!(!well_formed_sha256(&format!("{}é", &SHA[2..])), "64 bytes, not 64 hex digits");
    }

    #[test]
    fn content_types_are_the_ones_go_sniffs() {
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(br#"{"entries":[{"type":"simple","entries":[]}]}"#.repeat(20).as_slice())
            .unwrap();
        let zlib = z.finish().unwrap();
        assert_eq!(sniffed_type(&zlib), Some("application/octet-stream"));
        assert_eq!(sniffed_type(b"  {\"entries\":[]}\n"), Some("text/plain; charset=utf-8"));
        // A control byte past the first 512 is not looked at.
        let mut late = vec![b'a'; 512];
        late.push(1);
        assert_eq!(sniffed_type(&late), Some("text/plain; charset=utf-8"));
        assert_eq!(sniffed_type(&[0x78, 0x9c, 0x1b]), Some("text/plain; charset=utf-8"), "ESC");
        assert_eq!(sniffed_type(&[0x78, 0x9c, 0x1c]), Some("application/octet-stream"));
        let mut eot = vec![b'x'; 40];
        eot[34..36].copy_from_slice(b"LP");
        assert_eq!(sniffed_type(&eot), Some("application/vnd.ms-fontobject"));
        assert_eq!(sniffed_type(b""), None);
    }

    fn document(body: &[u8], id: &str, decoded: &str) -> String {
        json!({
            "identifier": id,
            "decoded_sha256": decoded,
            "encoded_sha256": hex::encode(sha2::Sha256::digest(body)),
            "body": base64::engine::general_purpose::STANDARD.encode(body),
            "compression_algorithm": "zlib",
            "encryption_algorithm": "none",
            "created": "2026-01-02T03:04:05.000Z",
        })
        .to_string()
    }

    #[test]
    fn only_a_document_that_checks_out_is_served() {
        let id = "endpoint-trustlist-linux-v1";
        let good = document(b"\x78\x9cbytes", id, SHA);
        assert_eq!(decode(&good, id, SHA).unwrap(), Bytes::from_static(b"\x78\x9cbytes"));
        let refused = |source: &str, message: &str| match decode(source, id, SHA) {
            Err(ApiError::Fleet { status, code: "BadRequest", message: m }) => {
                assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
                assert!(m.starts_with(message), "{m}");
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("served {source}"),
        };
        refused(&document(b"x", "endpoint-blocklist-linux-v1", SHA), "artifact record mismatch");
        refused(&document(b"x", id, &SHA.replace('d', "e")), "artifact record mismatch");
        let mut tampered: Value = serde_json::from_str(&good).unwrap();
        tampered["body"] = json!(base64::engine::general_purpose::STANDARD.encode(b"other"));
        refused(&tampered.to_string(), "mismatched sha256");
        tampered["body"] = json!(42);
        refused(&tampered.to_string(), "the artifact's body is not a string");
        tampered["body"] = json!("not base64!");
        refused(&tampered.to_string(), "illegal base64 data");
        tampered["body"] = json!("");
        tampered["encoded_sha256"] = json!("zz");
        refused(&tampered.to_string(), "sha2 hex decode");
        refused("[]", "cannot read the artifact document");
    }

    #[test]
    fn searches_are_throttled_as_fleet_server_throttles_them() {
        let mut searching = HashSet::new();
        assert!(admit(&mut searching, "a"));
        assert!(!admit(&mut searching, "a"), "one search per hash");
        for n in 1..MAX_SEARCHES {
            assert!(admit(&mut searching, &n.to_string()));
        }
        assert!(!admit(&mut searching, "b"), "at most eight in all");
        searching.remove("a");
        assert!(admit(&mut searching, "b"));
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_what_is_used() {
        let mut cache = Cache::default();
        let key = |n: u8| (format!("a{n}"), SHA.to_owned());
        let item = || Bytes::from(vec![0u8; 100]);
        for n in 0..4 {
            cache.put(key(n), item(), 400);
        }
        assert_eq!(cache.bytes, 400);
        assert!(cache.get(&key(0)).is_some());
        cache.put(key(4), item(), 400);
        assert_eq!(cache.bytes, 400);
        assert!(cache.get(&key(1)).is_none(), "the one used longest ago went");
        assert!(cache.get(&key(0)).is_some(), "the one just used stayed");
        cache.put(key(5), Bytes::from(vec![0u8; 101]), 400);
        assert!(cache.get(&key(5)).is_none(), "over a quarter of the bound is not kept");
        assert_eq!(cache.bytes, 400);
    }
}
