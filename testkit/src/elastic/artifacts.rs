//! The double's `.fleet-artifacts`: Elastic Defend's user artifacts, written as Kibana writes
//! them (`PUT /.fleet-artifacts/_create/{id}`, `specification/_global/create/`, the document
//! of Kibana's fleet plugin `server/services/artifacts`: the body zlib-compressed then base64,
//! `decoded_sha256` of the JSON, `encoded_sha256` of the compressed bytes) and searched as
//! Fleet Server searches them (`POST /.fleet-artifacts/_search`, `specification/_global/search/`,
//! with the part of the query DSL Fleet Server uses: `bool` of `term`s, and `match_all`).
//! The answers have Elasticsearch's shapes (`CreateResponse`/`WriteResponseBase`,
//! `SearchResponseBody` with `HitsMetadata`); what the double does not understand is refused
//! with Elasticsearch's 400 and recorded as a violation; the service account
//! `elastic/fleet-server` may read and write `.fleet-*`, an agent's key may not.

use super::State;
use super::api::{self, Answer, Principal, Refusal, Request, bad};
use serde_json::{Map, Value, json};
use sha2::Digest as _;

/// The concrete index behind the `.fleet-artifacts` alias, as Elasticsearch names it in hits.
const INDEX: &str = ".fleet-artifacts-7";
/// Fields of the index's mapping (Fleet Server's `internal/pkg/es/mapping.go`,
/// `MappingArtifact`) that are keywords, and those that are numbers.
const KEYWORDS: &[&str] = &[
    "identifier",
    "compression_algorithm",
    "encryption_algorithm",
    "encoded_sha256",
    "decoded_sha256",
    "package_name",
    "type",
    "relative_url",
];
const NUMBERS: &[&str] = &["encoded_size", "decoded_size"];

/// The index privileges of the service account on `.fleet-*` (the `elastic/fleet-server`
/// service account's role in Elasticsearch's `ElasticServiceAccounts`); nobody else holds an
/// index privilege here.
pub(crate) fn index_privilege(principal: Principal, index: &str, privilege: &str) -> bool {
    principal == Principal::Service
        && index.starts_with(".fleet-")
        && matches!(
            privilege,
            "read" | "write" | "monitor" | "create_index" | "auto_configure" | "maintenance"
        )
}

/// A user artifact as Kibana stores it, made from its decoded content.
#[derive(Debug, Clone)]
pub struct KibanaArtifact {
    /// `identifier`, such as `endpoint-trustlist-linux-v1`.
    pub identifier: String,
    /// The document's `_id`: `endpoint:<identifier>-<decoded_sha256>`, as Kibana makes it.
    pub id: String,
    /// The zlib-compressed content: what Fleet Server serves.
    pub encoded: Vec<u8>,
    pub decoded_sha256: String,
    pub encoded_sha256: String,
    pub decoded_size: usize,
    /// The document (`_source`).
    pub source: Value,
}

impl KibanaArtifact {
    /// Compresses `decoded` (the artifact's JSON) with zlib and describes it as Kibana does.
    pub fn new(identifier: &str, decoded: &[u8]) -> KibanaArtifact {
        use base64::Engine as _;
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(decoded).expect("zlib into memory");
        let encoded = z.finish().expect("zlib into memory");
        let decoded_sha256 = hex::encode(sha2::Sha256::digest(decoded));
        let encoded_sha256 = hex::encode(sha2::Sha256::digest(&encoded));
        let source = json!({
            "identifier": identifier,
            "compression_algorithm": "zlib",
            "encryption_algorithm": "none",
            "encoded_sha256": encoded_sha256,
            "encoded_size": encoded.len(),
            "decoded_sha256": decoded_sha256,
            "decoded_size": decoded.len(),
            "created": "2026-01-02T03:04:05.678Z",
            "body": base64::engine::general_purpose::STANDARD.encode(&encoded),
            "package_name": "endpoint",
            "type": "exceptionlist",
            "relative_url": format!("/api/fleet/artifacts/{identifier}/{decoded_sha256}"),
        });
        KibanaArtifact {
            identifier: identifier.to_owned(),
            id: format!("endpoint:{identifier}-{decoded_sha256}"),
            encoded,
            decoded_sha256,
            encoded_sha256,
            decoded_size: decoded.len(),
            source,
        }
    }

    /// Its entry in a policy's `artifact_manifest.artifacts`, as Kibana writes it.
    pub fn manifest_entry(&self) -> Value {
        json!({
            "encryption_algorithm": "none",
            "decoded_sha256": self.decoded_sha256,
            "decoded_size": self.decoded_size,
            "encoded_sha256": self.encoded_sha256,
            "encoded_size": self.encoded.len(),
            "relative_url": self.source["relative_url"],
            "compression_algorithm": "zlib",
        })
    }
}

impl super::ElasticDouble {
    /// Indexes `source` into `.fleet-artifacts` as `_id` `id`, the way Kibana does (a create
    /// with `refresh=wait_for`, by a principal that may write there: here the admin key);
    /// the status Elasticsearch answers (201, or 409 when the id exists).
    pub fn index_artifact(&self, id: &str, source: &Value) -> u16 {
        let auth = format!("ApiKey {}", self.admin_api_key());
        let target = format!("/.fleet-artifacts/_create/{id}?refresh=wait_for");
        let body = source.to_string();
        let mut state = super::lock(&self.state);
        let request = Request {
            method: "PUT",
            target: &target,
            authorization: Some(&auth),
            content_type: Some("application/json"),
            body: body.as_bytes(),
        };
        api::dispatch(&mut state, &request).status
    }

    /// The documents of `.fleet-artifacts`, by `_id`.
    pub fn artifact_documents(&self) -> Vec<(String, Value)> {
        super::lock(&self.state).artifacts.clone().unwrap_or_default()
    }
}

/// The index's endpoints.
enum Endpoint {
    /// `_global/create`, with the document's `_id`.
    Create(String),
    /// `_global/search`.
    Search,
}

/// Answers a request to `/.fleet-artifacts/…`.
pub(crate) fn dispatch(state: &mut State, req: &Request<'_>, path: &str, query: &str) -> Answer {
    let segments: Vec<String> =
        path.trim_start_matches('/').split('/').map(|s| api::percent_decode(s, false)).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let endpoint = match (&segments[1..], req.method) {
        (["_create", id], "PUT" | "POST") if !id.is_empty() => Endpoint::Create((*id).to_owned()),
        (["_search"], "GET" | "POST") => Endpoint::Search,
        _ => {
            return api::no_handler(state, req, path);
        }
    };
    let principal = match api::authenticate(state, req.authorization, path) {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let result = match endpoint {
        Endpoint::Create(id) => create(state, req, principal, query, &id),
        Endpoint::Search => search(state, req, principal, query),
    };
    match result {
        Ok(answer) => answer,
        Err(refusal) => {
            if refusal.violation {
                state.violation(req, &format!("{}: {}", refusal.kind, refusal.reason));
            }
            let mut answer = api::error_answer(refusal.status, refusal.kind, &refusal.reason);
            if refusal.kind == "index_not_found_exception" {
                // Elasticsearch names the missing index in the cause and its root cause.
                let mut cause = json!({"type": refusal.kind, "reason": refusal.reason,
                    "resource.type": "index_or_alias", "resource.id": ".fleet-artifacts",
                    "index_uuid": "_na_", "index": ".fleet-artifacts"});
                answer.body["error"] = cause.clone();
                cause["root_cause"] = json!([answer.body["error"].clone()]);
                answer.body["error"] = cause;
            }
            answer
        }
    }
}

/// The query string against the endpoint's `query_parameters` (only those the double acts on
/// or that change nothing here) and the common ones.
fn check_params(path: &str, query: &str, allowed: &[&str]) -> Result<(), Refusal> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = api::percent_decode(name, true);
        let value = api::percent_decode(value, true);
        let common = super::spec::COMMON_PARAMS.iter().any(|(n, _)| *n == name);
        if !common && !allowed.contains(&name.as_str()) {
            return Err(bad(
                "illegal_argument_exception",
                format!("request [{path}] contains unrecognized parameter: [{name}]"),
            ));
        }
        if name == "refresh" && !matches!(value.as_str(), "" | "true" | "false" | "wait_for") {
            return Err(bad(
                "illegal_argument_exception",
                format!("Failed to parse value [{value}] of parameter [refresh]"),
            ));
        }
    }
    Ok(())
}

/// A principal without the index privilege: Elasticsearch's 403.
fn unauthorized(state: &State, principal: Principal, action: &str) -> Refusal {
    let who = match principal {
        Principal::Key(i) => format!(
            "API key id [{}] of user [{}]",
            state.keys[i].record.id, state.keys[i].record.owner
        ),
        _ => "user".to_owned(),
    };
    Refusal {
        status: 403,
        kind: "security_exception",
        reason: format!(
            "action [{action}] is unauthorized for {who} on indices [.fleet-artifacts], this action is granted by the index privileges [read,all]"
        ),
        violation: true,
    }
}

/// `_global/create`: the document, its mapped fields of their mapped types.
fn create(
    state: &mut State,
    req: &Request<'_>,
    principal: Principal,
    query: &str,
    id: &str,
) -> Result<Answer, Refusal> {
    if matches!(principal, Principal::Key(_)) {
        return Err(unauthorized(state, principal, "indices:data/write/index"));
    }
    check_params(req.target, query, &["refresh", "routing", "timeout", "wait_for_active_shards"])?;
    let source = api::required_body(req)?;
    for (field, value) in &source {
        let fine = if KEYWORDS.contains(&field.as_str()) || field == "body" || field == "created" {
            value.is_string()
        } else if NUMBERS.contains(&field.as_str()) {
            value.is_i64()
        } else {
            true // the mapping is `dynamic: false`: other fields are kept, not indexed
        };
        if !fine {
            return Err(bad(
                "document_parsing_exception",
                format!("[1:2] failed to parse field [{field}] of type in document with id '{id}'"),
            ));
        }
    }
    let documents = state.artifacts.get_or_insert_with(Vec::new);
    if documents.iter().any(|(existing, _)| existing == id) {
        return Err(Refusal {
            status: 409,
            kind: "version_conflict_engine_exception",
            reason: format!(
                "[{id}]: version conflict, document already exists (current version [1])"
            ),
            violation: false,
        });
    }
    documents.push((id.to_owned(), Value::Object(source)));
    let seq_no = documents.len() - 1;
    Ok(Answer {
        status: 201,
        body: json!({
            "_index": INDEX,
            "_id": id,
            "_version": 1,
            "result": "created",
            "_shards": {"total": 2, "successful": 1, "failed": 0},
            "_seq_no": seq_no,
            "_primary_term": 1,
        }),
        challenge: false,
        allow: None,
        created: false,
    })
}

/// A query the double evaluates.
#[derive(Debug)]
enum Query {
    MatchAll,
    Term { field: String, value: Value },
    Bool { must: Vec<Query>, filter: Vec<Query>, should: Vec<Query>, must_not: Vec<Query> },
}

fn parsing(reason: impl Into<String>) -> Refusal {
    bad("parsing_exception", reason)
}

/// One query container: an object with exactly one key.
fn parse_query(value: &Value) -> Result<Query, Refusal> {
    let object = value
        .as_object()
        .ok_or_else(|| parsing("query malformed, must start with start_object"))?;
    let mut entries = object.iter();
    let (Some((kind, body)), None) = (entries.next(), entries.next()) else {
        return Err(parsing("[_na] query malformed, no start_object after query name"));
    };
    match kind.as_str() {
        "match_all" => match body.as_object() {
            Some(o) if o.keys().all(|k| k == "boost" || k == "_name") => Ok(Query::MatchAll),
            _ => Err(parsing("[match_all] query malformed")),
        },
        "term" => {
            let object = body.as_object().ok_or_else(|| parsing("[term] query malformed"))?;
            let mut fields = object.iter();
            let (Some((field, value)), None) = (fields.next(), fields.next()) else {
                return Err(parsing("[term] query doesn't support multiple fields"));
            };
            let value = match value {
                Value::Object(long) => {
                    if let Some(unknown) = long.keys().find(|k| {
                        !matches!(k.as_str(), "value" | "boost" | "case_insensitive" | "_name")
                    }) {
                        return Err(parsing(format!("[term] query does not support [{unknown}]")));
                    }
                    long.get("value")
                        .cloned()
                        .ok_or_else(|| parsing("[term] query requires a value"))?
                }
                Value::Array(_) | Value::Null => {
                    return Err(parsing("[term] query does not support array of values"));
                }
                scalar => scalar.clone(),
            };
            Ok(Query::Term { field: field.clone(), value })
        }
        "bool" => {
            let object = body.as_object().ok_or_else(|| parsing("[bool] query malformed"))?;
            let (mut must, mut filter, mut should, mut must_not) = (vec![], vec![], vec![], vec![]);
            for (key, clauses) in object {
                let list = match key.as_str() {
                    "must" => &mut must,
                    "filter" => &mut filter,
                    "should" => &mut should,
                    "must_not" => &mut must_not,
                    "boost" | "_name" => continue,
                    other => {
                        return Err(parsing(format!("[bool] query does not support [{other}]")));
                    }
                };
                match clauses {
                    Value::Array(items) => {
                        for item in items {
                            list.push(parse_query(item)?);
                        }
                    }
                    one => list.push(parse_query(one)?),
                }
            }
            Ok(Query::Bool { must, filter, should, must_not })
        }
        other => Err(parsing(format!("unknown query [{other}]"))),
    }
}

impl Query {
    /// Whether `source` matches, and its score (a keyword term that matches scores 1.0 here;
    /// Elasticsearch's BM25 gives another number, which nothing reads).
    fn score(&self, source: &Map<String, Value>) -> Option<f64> {
        match self {
            Query::MatchAll => Some(1.0),
            Query::Term { field, value } => {
                let held = source.get(field)?;
                let indexed =
                    KEYWORDS.contains(&field.as_str()) || NUMBERS.contains(&field.as_str());
                let equal = match (held, value) {
                    (Value::String(a), Value::String(b)) => a == b,
                    (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                    (Value::Number(a), Value::String(b)) => b.parse::<f64>().ok() == a.as_f64(),
                    _ => false,
                };
                (indexed && equal).then_some(1.0)
            }
            Query::Bool { must, filter, should, must_not } => {
                if must_not.iter().any(|q| q.score(source).is_some())
                    || filter.iter().any(|q| q.score(source).is_none())
                {
                    return None;
                }
                let mut score = 0.0;
                for q in must {
                    score += q.score(source)?;
                }
                let matched: Vec<f64> = should.iter().filter_map(|q| q.score(source)).collect();
                if must.is_empty() && filter.is_empty() && !should.is_empty() && matched.is_empty()
                {
                    return None;
                }
                Some(score + matched.iter().sum::<f64>())
            }
        }
    }
}

/// `_global/search` over the index.
fn search(
    state: &mut State,
    req: &Request<'_>,
    principal: Principal,
    query: &str,
) -> Result<Answer, Refusal> {
    if matches!(principal, Principal::Key(_)) {
        return Err(unauthorized(state, principal, "indices:data/read/search"));
    }
    check_params(req.target, query, &["size", "from", "rest_total_hits_as_int"])?;
    let body = api::json_body(req)?.unwrap_or_default();
    let mut q = Query::MatchAll;
    let (mut size, mut from) = (10usize, 0usize);
    for (key, value) in &body {
        match key.as_str() {
            "query" => q = parse_query(value)?,
            "size" | "from" => {
                let n = value
                    .as_u64()
                    .ok_or_else(|| parsing(format!("[{key}] must be a non-negative number")))?;
                if key == "size" {
                    size = n as usize;
                } else {
                    from = n as usize;
                }
            }
            other => {
                return Err(parsing(format!("Unknown key for a START_OBJECT in [{other}].")));
            }
        }
    }
    let Some(documents) = &state.artifacts else {
        return Err(Refusal {
            status: 404,
            kind: "index_not_found_exception",
            reason: "no such index [.fleet-artifacts]".to_owned(),
            violation: false,
        });
    };
    let mut hits: Vec<(f64, &String, &Value)> = documents
        .iter()
        .filter_map(|(id, source)| {
            let score = q.score(source.as_object()?)?;
            Some((score, id, source))
        })
        .collect();
    // By score, then in index order, as a one-shard index sorts ties.
    hits.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total = hits.len();
    let max_score = hits.first().map(|h| h.0);
    let page: Vec<Value> = hits
        .into_iter()
        .skip(from)
        .take(size)
        .map(|(score, id, source)| {
            json!({"_index": INDEX, "_id": id, "_score": score, "_source": source})
        })
        .collect();
    Ok(Answer::ok(json!({
        "took": 1,
        "timed_out": false,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {
            "total": {"value": total, "relation": "eq"},
            "max_score": max_score,
            "hits": page,
        },
    })))
}
