//! The double's Elasticsearch: routing, authentication, the checks a request must pass (its
//! query parameters and body against the spec types in `spec.rs`, then Elasticsearch's own
//! validation and `manage_own_api_key` ownership rules) and the answers of each endpoint, all
//! synchronous over the double's state (the caller holds its lock).

use super::query::{self, Query};
use super::spec::{self, Param};
use super::{ADMIN_USER, Fault, KeyRecord, SERVICE_ACCOUNT, State, StoredKey};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The realm of the service account's credentials and of the keys it creates.
const SERVICE_REALM: &str = "_service_account";
/// The realm of the admin key's owner (a native user, as a site's administrator would be).
const ADMIN_REALM: &str = "default_native";
const ADMIN_REALM_TYPE: &str = "native";
/// The name of the service token the double hands out (`elastic/fleet-server/<name>`).
pub(crate) const TOKEN_NAME: &str = "ferry-double";

/// What the server needs of a request.
pub(crate) struct Request<'a> {
    pub method: &'a str,
    /// The path with its query string, as sent.
    pub target: &'a str,
    pub authorization: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// An answer: status, JSON body, and the headers some answers carry.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Value,
    /// Elasticsearch's `WWW-Authenticate` challenges (every 401).
    pub challenge: bool,
    /// `Allow`, on a 405.
    pub allow: Option<String>,
    /// A key was created (what `Fault::LoseCreateResponse` waits for).
    pub created: bool,
}

impl Answer {
    pub(crate) fn ok(body: Value) -> Answer {
        Answer { status: 200, body, challenge: false, allow: None, created: false }
    }
}

/// The `WWW-Authenticate` values Elasticsearch sends with a 401 when the basic, token and API
/// key realms are enabled.
pub(crate) const CHALLENGES: &[&str] =
    &["Basic realm=\"security\", charset=\"UTF-8\"", "Bearer realm=\"security\"", "ApiKey"];

/// Elasticsearch's error body (`ErrorResponseBase` in `specification/_types/Base.ts`, its
/// `error` an `ErrorCause` from `specification/_types/Errors.ts` with a one-element
/// `root_cause`).
pub(crate) fn error_body(status: u16, kind: &str, reason: &str) -> Value {
    let mut cause = json!({"type": kind, "reason": reason});
    if status == 401 {
        cause["header"] = json!({"WWW-Authenticate": CHALLENGES});
    }
    let mut error = cause.clone();
    error["root_cause"] = json!([cause]);
    json!({"error": error, "status": status})
}

pub(crate) fn error_answer(status: u16, kind: &str, reason: &str) -> Answer {
    Answer {
        status,
        body: error_body(status, kind, reason),
        challenge: status == 401,
        allow: None,
        created: false,
    }
}

/// The answer to every security call while `Fault::Status(status)` is set, each shaped as
/// Elasticsearch answers that status.
/// Elasticsearch's answer to a path no handler takes: 400 with a bare string `error` (not an
/// `ErrorCause`), recorded as a violation so the test sees what the appliance asked for.
pub(crate) fn no_handler(state: &mut State, req: &Request<'_>, path: &str) -> Answer {
    let reason = format!("no handler found for uri [{path}] and method [{}]", req.method);
    state.violation(req, &reason);
    Answer {
        status: 400,
        body: json!({"error": reason, "status": 400}),
        challenge: false,
        allow: None,
        created: false,
    }
}

pub(crate) fn fault_answer(status: u16) -> Answer {
    let (kind, reason) = match status {
        400 => ("illegal_argument_exception", "request rejected"),
        401 => (
            "security_exception",
            "unable to authenticate with provided credentials and anonymous access is not allowed for this request",
        ),
        403 => (
            "security_exception",
            "action [cluster:admin/xpack/security/api_key/create] is unauthorized for service account [elastic/fleet-server]",
        ),
        404 => ("resource_not_found_exception", "resource not found"),
        409 => ("version_conflict_engine_exception", "version conflict, document already exists"),
        413 => ("content_too_long_exception", "request content is too long"),
        429 => (
            "es_rejected_execution_exception",
            "rejected execution of org.elasticsearch.common.util.concurrent.TimedRunnable on EsThreadPoolExecutor[name = es/security-crypto, queue capacity = 1000]",
        ),
        500 => ("exception", "internal server error"),
        503 => (
            "unavailable_shards_exception",
            "at least one primary shard for the index [.security-7] is unavailable",
        ),
        504 => ("timeout_exception", "timed out"),
        _ => ("status_exception", "failure"),
    };
    error_answer(status, kind, reason)
}

/// A request refused: Elasticsearch's status, error type and reason, and whether the refusal
/// means the client broke the spec or Elasticsearch's rules (recorded in `violations()`), as
/// opposed to an outcome a correct client meets (a 404 for a key that is gone, a 403 while
/// the privilege is withdrawn).
pub(crate) struct Refusal {
    pub status: u16,
    pub kind: &'static str,
    pub reason: String,
    pub violation: bool,
}

pub(crate) fn bad(kind: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal { status: 400, kind, reason: reason.into(), violation: true }
}

fn invalid(reasons: &[String]) -> Refusal {
    let listed: String =
        reasons.iter().enumerate().map(|(i, r)| format!("{}: {r};", i + 1)).collect();
    bad("action_request_validation_exception", format!("Validation Failed: {listed}"))
}

/// Who sent the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Principal {
    /// The service account `elastic/fleet-server`, by its token.
    Service,
    /// The admin API key.
    Admin,
    /// A key the double created (index into `State::keys`).
    Key(usize),
}

impl Principal {
    /// The owner user and realm (name, type) keys created by this principal get, and that
    /// `manage_own_api_key` restricts it to.
    fn owner(self, state: &State) -> (String, String, String) {
        match self {
            Principal::Service => {
                (SERVICE_ACCOUNT.to_owned(), SERVICE_REALM.to_owned(), SERVICE_REALM.to_owned())
            }
            Principal::Admin => {
                (ADMIN_USER.to_owned(), ADMIN_REALM.to_owned(), ADMIN_REALM_TYPE.to_owned())
            }
            Principal::Key(i) => {
                let k = &state.keys[i];
                (k.record.owner.clone(), k.realm.clone(), k.realm_type.clone())
            }
        }
    }

    fn owns(self, state: &State, key: &StoredKey) -> bool {
        let (user, realm, _) = self.owner(state);
        key.record.owner == user && key.realm == realm
    }

    fn is_api_key(self) -> bool {
        !matches!(self, Principal::Service)
    }
}

/// The endpoints, named by the spec folder that defines each.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// `security/authenticate`
    Authenticate,
    /// `security/has_privileges`, with the `{user}` path part when given.
    HasPrivileges(Option<String>),
    /// `security/create_api_key`
    CreateApiKey,
    /// `security/get_api_key`
    GetApiKey,
    /// `security/invalidate_api_key`
    InvalidateApiKey,
    /// `security/query_api_keys`
    QueryApiKeys,
    /// `security/update_api_key`
    UpdateApiKey(String),
    /// `security/bulk_update_api_keys`
    BulkUpdateApiKeys,
}

impl Endpoint {
    /// The Elasticsearch action a missing privilege names.
    fn action(&self) -> &'static str {
        match self {
            Endpoint::Authenticate => "cluster:admin/xpack/security/user/authenticate",
            Endpoint::HasPrivileges(_) => "cluster:admin/xpack/security/user/has_privileges",
            Endpoint::CreateApiKey => "cluster:admin/xpack/security/api_key/create",
            Endpoint::GetApiKey => "cluster:admin/xpack/security/api_key/get",
            Endpoint::InvalidateApiKey => "cluster:admin/xpack/security/api_key/invalidate",
            Endpoint::QueryApiKeys => "cluster:admin/xpack/security/api_key/query",
            Endpoint::UpdateApiKey(_) => "cluster:admin/xpack/security/api_key/update",
            Endpoint::BulkUpdateApiKeys => "cluster:admin/xpack/security/api_key/bulk_update",
        }
    }

    fn params(&self) -> &'static [(&'static str, Param)] {
        match self {
            Endpoint::CreateApiKey => spec::CREATE_PARAMS,
            Endpoint::GetApiKey => spec::GET_PARAMS,
            Endpoint::QueryApiKeys => spec::QUERY_PARAMS,
            _ => spec::NO_PARAMS,
        }
    }

    fn manages_keys(&self) -> bool {
        !matches!(self, Endpoint::Authenticate | Endpoint::HasPrivileges(_))
    }
}

/// The `urls` of each endpoint's spec file. `Err(None)`: no handler for the path;
/// `Err(Some(allowed))`: the path exists with other methods.
fn route(method: &str, path: &str) -> Result<Endpoint, Option<&'static str>> {
    let segments: Vec<String> =
        path.trim_start_matches('/').split('/').map(|s| percent_decode(s, false)).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (segments.as_slice(), method) {
        (["_security", "_authenticate"], "GET") => Ok(Endpoint::Authenticate),
        (["_security", "_authenticate"], _) => Err(Some("GET")),
        (["_security", "user", "_has_privileges"], "GET" | "POST") => {
            Ok(Endpoint::HasPrivileges(None))
        }
        (["_security", "user", user, "_has_privileges"], "GET" | "POST") => {
            Ok(Endpoint::HasPrivileges(Some((*user).to_owned())))
        }
        (
            ["_security", "user", _, "_has_privileges"] | ["_security", "user", "_has_privileges"],
            _,
        ) => Err(Some("GET, POST")),
        (["_security", "api_key"], "POST" | "PUT") => Ok(Endpoint::CreateApiKey),
        (["_security", "api_key"], "GET") => Ok(Endpoint::GetApiKey),
        (["_security", "api_key"], "DELETE") => Ok(Endpoint::InvalidateApiKey),
        (["_security", "api_key"], _) => Err(Some("POST, PUT, GET, DELETE")),
        (["_security", "_query", "api_key"], "GET" | "POST") => Ok(Endpoint::QueryApiKeys),
        (["_security", "_query", "api_key"], _) => Err(Some("GET, POST")),
        (["_security", "api_key", "_bulk_update"], "POST") => Ok(Endpoint::BulkUpdateApiKeys),
        (["_security", "api_key", id], "PUT") if !id.is_empty() => {
            Ok(Endpoint::UpdateApiKey((*id).to_owned()))
        }
        (["_security", "api_key", "_bulk_update"], _) => Err(Some("POST, PUT")),
        (["_security", "api_key", id], _) if !id.is_empty() => Err(Some("PUT")),
        _ => Err(None),
    }
}

/// Answers one request, recording what did not conform in `state.violations`.
pub(crate) fn dispatch(state: &mut State, req: &Request<'_>) -> Answer {
    let (path, query) = req.target.split_once('?').unwrap_or((req.target, ""));
    if path == "/.fleet-artifacts" || path.starts_with("/.fleet-artifacts/") {
        return super::artifacts::dispatch(state, req, path, query);
    }
    let endpoint = match route(req.method, path) {
        Ok(endpoint) => endpoint,
        // Elasticsearch's routing layer answers these itself, with `error` a plain string
        // (the case the comment on `ErrorResponseBase` in `specification/_types/Base.ts`
        // describes): 400 "no handler found" for an unknown path, 405 with `Allow` for a
        // known path and another method.
        Err(None) => {
            return no_handler(state, req, path);
        }
        Err(Some(allowed)) => {
            let reason = format!(
                "Incorrect HTTP method for uri [{path}] and method [{}], allowed: [{allowed}]",
                req.method
            );
            state.violation(req, &reason);
            return Answer {
                status: 405,
                body: json!({"error": reason, "status": 405}),
                challenge: false,
                allow: Some(allowed.to_owned()),
                created: false,
            };
        }
    };
    let principal = match authenticate(state, req.authorization, path) {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let result = params(&endpoint, path, query)
        .and_then(|params| handle(state, req, &endpoint, principal, &params));
    match result {
        Ok(answer) => answer,
        Err(refusal) => {
            if refusal.violation {
                state.violation(req, &format!("{}: {}", refusal.kind, refusal.reason));
            }
            error_answer(refusal.status, refusal.kind, &refusal.reason)
        }
    }
}

/// Elasticsearch's authentication of the REST request: a service token (`Bearer`) or an API
/// key (`ApiKey base64(id:key)`); anything else, or nothing, is a 401.
pub(crate) fn authenticate(
    state: &State,
    header: Option<&str>,
    path: &str,
) -> Result<Principal, Answer> {
    let Some(header) = header else {
        return Err(error_answer(
            401,
            "security_exception",
            &format!("missing authentication credentials for REST request [{path}]"),
        ));
    };
    let unable = || {
        error_answer(
            401,
            "security_exception",
            "unable to authenticate with provided credentials and anonymous access is not allowed for this request",
        )
    };
    let (scheme, credential) = header.trim().split_once(' ').ok_or_else(unable)?;
    let credential = credential.trim();
    if scheme.eq_ignore_ascii_case("Bearer") {
        return if credential == state.service_token {
            Ok(Principal::Service)
        } else {
            Err(unable())
        };
    }
    if !scheme.eq_ignore_ascii_case("ApiKey") {
        return Err(unable());
    }
    // Java's basic Base64 decoder, which Elasticsearch uses here, takes padding or none.
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded = lenient.decode(credential).map_err(|_| unable())?;
    let decoded = String::from_utf8(decoded).map_err(|_| unable())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(unable)?;
    if id == state.admin_id {
        return if secret == state.admin_secret { Ok(Principal::Admin) } else { Err(unable()) };
    }
    let now = now_ms();
    state
        .keys
        .iter()
        .position(|k| k.record.id == id && k.record.api_key == secret && k.active(now))
        .map(Principal::Key)
        .ok_or_else(unable)
}

type Params = BTreeMap<String, String>;

/// Checks the query string against the endpoint's `query_parameters` and the common ones.
fn params(endpoint: &Endpoint, path: &str, query: &str) -> Result<Params, Refusal> {
    let mut out = Params::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (percent_decode(name, true), percent_decode(value, true));
        let Some((_, kind)) =
            spec::COMMON_PARAMS.iter().chain(endpoint.params()).find(|(n, _)| *n == name)
        else {
            return Err(bad(
                "illegal_argument_exception",
                format!("request [{path}] contains unrecognized parameter: [{name}]"),
            ));
        };
        let fine = match kind {
            Param::Text => true,
            Param::Bool => matches!(value.as_str(), "" | "true" | "false"),
            Param::Refresh => matches!(value.as_str(), "" | "true" | "false" | "wait_for"),
        };
        if !fine {
            return Err(bad(
                "illegal_argument_exception",
                format!("Failed to parse value [{value}] of parameter [{name}]"),
            ));
        }
        out.insert(name, value);
    }
    Ok(out)
}

fn flag(params: &Params, name: &str) -> bool {
    params.get(name).is_some_and(|v| v == "true")
}

/// The body as a JSON object, or `None` when there is none.
pub(crate) fn json_body(req: &Request<'_>) -> Result<Option<Map<String, Value>>, Refusal> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let media =
        req.content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media != "application/json" && media != "application/vnd.elasticsearch+json" {
        // Elasticsearch answers 406 for a body whose Content-Type it cannot read.
        return Err(Refusal {
            status: 406,
            kind: "media_type_header_exception",
            reason: format!(
                "Content-Type header [{}] is not supported",
                req.content_type.unwrap_or("")
            ),
            violation: true,
        });
    }
    match serde_json::from_slice::<Value>(req.body) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(other) => Err(bad(
            "x_content_parse_exception",
            format!("[1:1] request body must be an object, not {other}"),
        )),
        Err(e) => {
            Err(bad("x_content_parse_exception", format!("[{}:{}] {e}", e.line(), e.column())))
        }
    }
}

pub(crate) fn required_body(req: &Request<'_>) -> Result<Map<String, Value>, Refusal> {
    json_body(req)?.ok_or_else(|| bad("parse_exception", "request body is required"))
}

fn no_body(req: &Request<'_>, path: &str) -> Result<(), Refusal> {
    match json_body(req)? {
        None => Ok(()),
        Some(_) => Err(bad(
            "illegal_argument_exception",
            format!("request [{} {path}] does not support having a body", req.method),
        )),
    }
}

/// Parses a body into its spec type; serde's message names the unknown or missing field.
fn typed<T: DeserializeOwned>(body: &Map<String, Value>, parser: &str) -> Result<T, Refusal> {
    serde_json::from_value(Value::Object(body.clone()))
        .map_err(|e| bad("x_content_parse_exception", format!("[{parser}] failed to parse: {e}")))
}

fn handle(
    state: &mut State,
    req: &Request<'_>,
    endpoint: &Endpoint,
    principal: Principal,
    params: &Params,
) -> Result<Answer, Refusal> {
    let path = req.target.split('?').next().unwrap_or_default();
    if let Principal::Key(_) = principal {
        // A key the double made for an agent carries the agent's privileges, none of which
        // reaches the security API; Elasticsearch authenticates it, then refuses the action.
        if *endpoint != Endpoint::Authenticate {
            let (user, _, _) = principal.owner(state);
            return Err(Refusal {
                status: 403,
                kind: "security_exception",
                reason: format!(
                    "action [{}] is unauthorized for API key of user [{user}]",
                    endpoint.action()
                ),
                violation: true,
            });
        }
    }
    if endpoint.manages_keys() && state.missing_privilege {
        let (user, _, _) = principal.owner(state);
        return Err(Refusal {
            status: 403,
            kind: "security_exception",
            reason: format!(
                "action [{}] is unauthorized for user [{user}], this action is granted by the cluster privileges [manage_own_api_key,manage_api_key,manage_security,all]",
                endpoint.action()
            ),
            violation: false,
        });
    }
    match endpoint {
        Endpoint::Authenticate => {
            no_body(req, path)?;
            Ok(Answer::ok(authenticate_response(state, principal)))
        }
        Endpoint::HasPrivileges(user) => has_privileges(state, req, principal, user.as_deref()),
        Endpoint::CreateApiKey => create(state, req, principal),
        Endpoint::GetApiKey => {
            no_body(req, path)?;
            get(state, principal, params)
        }
        Endpoint::InvalidateApiKey => invalidate(state, req, principal),
        Endpoint::QueryApiKeys => query_keys(state, req, principal, params),
        Endpoint::UpdateApiKey(id) => update(state, req, principal, id),
        Endpoint::BulkUpdateApiKeys => bulk_update(state, req, principal),
    }
}

/// `specification/security/authenticate/SecurityAuthenticateResponse.ts`.
fn authenticate_response(state: &State, principal: Principal) -> Value {
    let (user, _, _) = principal.owner(state);
    match principal {
        Principal::Service => json!({
            "username": user,
            "roles": [],
            "full_name": format!("Service account - {user}"),
            "email": null,
            "token": {"name": TOKEN_NAME, "type": "_service_account_index"},
            "metadata": {"_elastic_service_account": true},
            "enabled": true,
            "authentication_realm": {"name": SERVICE_REALM, "type": SERVICE_REALM},
            "lookup_realm": {"name": SERVICE_REALM, "type": SERVICE_REALM},
            "authentication_type": "token",
        }),
        Principal::Admin | Principal::Key(_) => {
            let (id, name) = match principal {
                Principal::Key(i) => {
                    (state.keys[i].record.id.clone(), state.keys[i].record.name.clone())
                }
                _ => (state.admin_id.clone(), "ferry-admin-key".to_owned()),
            };
            json!({
                "username": user,
                "roles": [],
                "full_name": null,
                "email": null,
                "metadata": {},
                "enabled": true,
                "authentication_realm": {"name": "_es_api_key", "type": "_es_api_key"},
                "lookup_realm": {"name": "_es_api_key", "type": "_es_api_key"},
                "authentication_type": "api_key",
                "api_key": {"id": id, "name": name, "managed_by": "elasticsearch"},
            })
        }
    }
}

/// `security/has_privileges`: the principal holds `monitor` and, unless withdrawn,
/// `manage_own_api_key`; the service account's index privileges on `.fleet-*`
/// (`artifacts::index_privilege`); no application privilege.
fn has_privileges(
    state: &State,
    req: &Request<'_>,
    principal: Principal,
    user: Option<&str>,
) -> Result<Answer, Refusal> {
    let (me, _, _) = principal.owner(state);
    if let Some(user) = user
        && user != me
    {
        return Err(bad(
            "illegal_argument_exception",
            "users may only check the privileges of their own account",
        ));
    }
    let body: spec::HasPrivilegesRequest = typed(&required_body(req)?, "has_privileges_request")?;
    let held = |p: &str| p == "monitor" || (p == "manage_own_api_key" && !state.missing_privilege);
    let mut all = true;
    let mut cluster = Map::new();
    for p in body.cluster.unwrap_or_default() {
        all &= held(&p);
        cluster.insert(p.clone(), Value::Bool(held(&p)));
    }
    let mut index = Map::new();
    for check in body.index.unwrap_or_default() {
        for name in check.names.to_vec() {
            let held = |p: &str| super::artifacts::index_privilege(principal, &name, p);
            let granted: Vec<bool> = check.privileges.iter().map(|p| held(p)).collect();
            let entry = index.entry(name).or_insert_with(|| json!({}));
            for (p, granted) in check.privileges.iter().zip(granted) {
                all &= granted;
                entry[p.as_str()] = Value::Bool(granted);
            }
        }
    }
    let mut application = Map::new();
    for check in body.application.unwrap_or_default() {
        let app = application.entry(check.application.clone()).or_insert_with(|| json!({}));
        for resource in &check.resources {
            for p in &check.privileges {
                all = false;
                if app.get(resource).is_none() {
                    app[resource.as_str()] = json!({});
                }
                app[resource.as_str()][p.as_str()] = Value::Bool(false);
            }
        }
    }
    Ok(Answer::ok(json!({
        "username": me,
        "has_all_requested": all,
        "cluster": cluster,
        "index": index,
        "application": application,
    })))
}

/// Elasticsearch's validation of a key's metadata: top-level keys starting with `_` are
/// reserved (the `metadata` doc in `SecurityCreateApiKeyRequest.ts`).
fn check_metadata(metadata: Option<&spec::Metadata>, reasons: &mut Vec<String>) {
    if metadata.is_some_and(|m| m.keys().any(|k| k.starts_with('_'))) {
        reasons.push("API key metadata keys may not start with [_]".to_owned());
    }
}

fn expiration_ms(expiration: Option<&spec::Duration>) -> Result<Option<Option<i64>>, Refusal> {
    expiration
        .map(|d| {
            d.millis().map_err(|e| {
                bad("x_content_parse_exception", format!("failed to parse field [expiration]: {e}"))
            })
        })
        .transpose()
}

/// `security/create_api_key`.
fn create(state: &mut State, req: &Request<'_>, principal: Principal) -> Result<Answer, Refusal> {
    let raw = required_body(req)?;
    let body: spec::CreateApiKeyRequest = typed(&raw, "api_key_request")?;
    let expiration = expiration_ms(body.expiration.as_ref())?.flatten();
    let mut reasons = Vec::new();
    // The spec marks `name` optional; Elasticsearch's request validation still requires it
    // for a REST key, and limits its shape.
    match body.name.as_deref() {
        None | Some("") => reasons.push("api key name is required".to_owned()),
        Some(name) => {
            if name.len() > 1024 {
                reasons.push("api key name may not be more than 1024 characters long".to_owned());
            }
            if name != name.trim() {
                reasons.push("api key name may not begin or end with whitespace".to_owned());
            }
            if name.starts_with('_') {
                reasons.push("api key name may not begin with an underscore".to_owned());
            }
        }
    }
    check_metadata(body.metadata.as_ref(), &mut reasons);
    if !reasons.is_empty() {
        return Err(invalid(&reasons));
    }
    // The NOTE on `role_descriptors` in SecurityCreateApiKeyRequest.ts: a key authenticated
    // as an API key may only create keys whose every role descriptor grants nothing.
    if principal.is_api_key() {
        let derived_ok = body.role_descriptors.as_ref().is_some_and(|rds| {
            !rds.is_empty() && rds.values().all(spec::RoleDescriptor::grants_nothing)
        });
        if !derived_ok {
            return Err(bad(
                "illegal_argument_exception",
                "creating derived api keys requires an explicit role descriptor that is empty (has no privileges)",
            ));
        }
    }
    let now = now_ms();
    let (owner, realm, realm_type) = principal.owner(state);
    let record = KeyRecord {
        id: random_b64(15),
        name: body.name.clone().unwrap_or_default(),
        api_key: random_b64(16),
        role_descriptors: raw.get("role_descriptors").cloned().unwrap_or_else(|| json!({})),
        metadata: raw
            .get("metadata")
            .filter(|m| !m.is_null())
            .cloned()
            .unwrap_or_else(|| json!({})),
        invalidated: false,
        creation: now,
        owner,
    };
    let expiration = expiration.map(|ms| now + ms);
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", record.id, record.api_key));
    // `specification/security/create_api_key/SecurityCreateApiKeyResponse.ts`.
    let mut answer = json!({
        "id": record.id,
        "name": record.name,
        "api_key": record.api_key,
        "encoded": encoded,
    });
    if let Some(at) = expiration {
        answer["expiration"] = Value::from(at);
    }
    state.keys.push(StoredKey { record, expiration, invalidation: None, realm, realm_type });
    Ok(Answer { created: true, ..Answer::ok(answer) })
}

/// Elasticsearch's `manage_own_api_key` check for get and invalidate: the request must say
/// `owner=true`, or name the principal as `username` and `realm_name`; an API key may also
/// name its own id.
fn check_owner_scope(
    state: &State,
    principal: Principal,
    owner: bool,
    username: Option<&str>,
    realm: Option<&str>,
    ids: &[String],
    action: &str,
) -> Result<(), Refusal> {
    let (me, my_realm, _) = principal.owner(state);
    let self_id = match principal {
        Principal::Admin => Some(state.admin_id.as_str()),
        _ => None,
    };
    let own_user = username == Some(me.as_str()) && realm == Some(my_realm.as_str());
    let itself = self_id.is_some_and(|id| !ids.is_empty() && ids.iter().all(|i| i == id));
    if owner || own_user || itself {
        return Ok(());
    }
    Err(Refusal {
        status: 403,
        kind: "security_exception",
        reason: format!(
            "action [{action}] is unauthorized for user [{me}]: with manage_own_api_key the request must set owner=true (or name this user and realm)"
        ),
        violation: true,
    })
}

/// `ApiKey` in `specification/security/_types/ApiKey.ts`.
fn api_key_json(key: &StoredKey, with_limited_by: bool) -> Value {
    let r = &key.record;
    let mut out = json!({
        "id": r.id,
        "name": r.name,
        "type": "rest",
        "creation": r.creation,
        "invalidated": r.invalidated,
        "username": r.owner,
        "realm": key.realm,
        "realm_type": key.realm_type,
        "metadata": r.metadata,
        "role_descriptors": r.role_descriptors,
    });
    if let Some(at) = key.expiration {
        out["expiration"] = Value::from(at);
    }
    if let Some(at) = key.invalidation {
        out["invalidation"] = Value::from(at);
    }
    if with_limited_by {
        // The owner's own role, which the key's privileges are intersected with.
        out["limited_by"] = json!([{ r.owner.clone(): {
            "cluster": ["monitor", "manage_own_api_key"],
            "indices": [],
            "applications": [],
            "run_as": [],
            "metadata": {},
            "transient_metadata": {"enabled": true},
        }}]);
    }
    out
}

/// `security/get_api_key`.
fn get(state: &State, principal: Principal, params: &Params) -> Result<Answer, Refusal> {
    let param = |n: &str| params.get(n).filter(|v| !v.is_empty()).map(String::as_str);
    let owner = flag(params, "owner");
    let (id, name, username, realm) =
        (param("id"), param("name"), param("username"), param("realm_name"));
    let mut reasons = Vec::new();
    if owner && (username.is_some() || realm.is_some()) {
        reasons.push("username or realm name must not be specified when the current user owns the API key(s)".to_owned());
    }
    if (id.is_some() || name.is_some()) && (username.is_some() || realm.is_some()) {
        reasons.push("username or realm name must not be specified when the api key id or api key name is specified".to_owned());
    }
    if !reasons.is_empty() {
        return Err(invalid(&reasons));
    }
    let ids: Vec<String> = id.map(str::to_owned).into_iter().collect();
    check_owner_scope(
        state,
        principal,
        owner,
        username,
        realm,
        &ids,
        Endpoint::GetApiKey.action(),
    )?;
    let (me, my_realm, _) = principal.owner(state);
    let (username, realm) =
        if owner { (Some(me.as_str()), Some(my_realm.as_str())) } else { (username, realm) };
    let now = now_ms();
    let active_only = flag(params, "active_only");
    let found: Vec<Value> = state
        .keys
        .iter()
        .filter(|k| id.is_none_or(|id| k.record.id == id))
        .filter(|k| name.is_none_or(|n| name_matches(n, &k.record.name)))
        .filter(|k| username.is_none_or(|u| k.record.owner == u))
        .filter(|k| realm.is_none_or(|r| k.realm == r))
        .filter(|k| !active_only || k.active(now))
        .map(|k| api_key_json(k, flag(params, "with_limited_by")))
        .collect();
    // RestGetApiKeyAction answers 404, with the (empty) list as its body, when an id was
    // asked for and nothing matched.
    let status = if id.is_some() && found.is_empty() { 404 } else { 200 };
    Ok(Answer { status, ..Answer::ok(json!({"api_keys": found})) })
}

/// Elasticsearch's name filter for get and invalidate: `*` is every name, a trailing `*` a
/// prefix.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// `security/invalidate_api_key`. Elasticsearch looks only among keys not yet invalidated,
/// and answers 200 with empty lists when nothing matches (ApiKeyService's
/// `InvalidateApiKeyResponse.emptyResponse()`): an unknown, foreign or already invalidated id
/// is no error. The double does the same, so `previously_invalidated_api_keys` stays empty.
fn invalidate(
    state: &mut State,
    req: &Request<'_>,
    principal: Principal,
) -> Result<Answer, Refusal> {
    let body: spec::InvalidateApiKeyRequest =
        typed(&required_body(req)?, "invalidate_api_key_request")?;
    let owner = body.owner.unwrap_or(false);
    let blank = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
    let mut reasons = Vec::new();
    if body.id.is_some() && body.ids.is_some() {
        reasons.push("Must use either [id] or [ids], not both at the same time".to_owned());
    }
    if body.ids.as_ref().is_some_and(|ids| ids.is_empty() || ids.iter().any(String::is_empty)) {
        reasons.push("Field [ids] must not be empty or contain empty ids".to_owned());
    }
    let ids: Vec<String> =
        body.id.iter().cloned().chain(body.ids.iter().flatten().cloned()).collect();
    if !owner
        && ids.is_empty()
        && blank(&body.name)
        && blank(&body.username)
        && blank(&body.realm_name)
    {
        reasons.push(
            "One of [api key id(s), api key name, username, realm name] must be specified if [owner] flag is false".to_owned(),
        );
    }
    if owner && (!blank(&body.username) || !blank(&body.realm_name)) {
        reasons.push("username or realm name must not be specified when the current user owns the API key(s)".to_owned());
    }
    if (!ids.is_empty() || !blank(&body.name))
        && (!blank(&body.username) || !blank(&body.realm_name))
    {
        reasons.push("username or realm name must not be specified when the api key id(s) or api key name are specified".to_owned());
    }
    if !reasons.is_empty() {
        return Err(invalid(&reasons));
    }
    check_owner_scope(
        state,
        principal,
        owner,
        body.username.as_deref(),
        body.realm_name.as_deref(),
        &ids,
        Endpoint::InvalidateApiKey.action(),
    )?;
    let (me, my_realm, _) = principal.owner(state);
    let (username, realm) = if owner {
        (Some(me), Some(my_realm))
    } else {
        (body.username.clone(), body.realm_name.clone())
    };
    let now = now_ms();
    let mut invalidated = Vec::new();
    for key in state.keys.iter_mut().filter(|k| !k.record.invalidated) {
        let hit = (ids.is_empty() || ids.contains(&key.record.id))
            && body.name.as_deref().is_none_or(|n| name_matches(n, &key.record.name))
            && username.as_deref().is_none_or(|u| key.record.owner == u)
            && realm.as_deref().is_none_or(|r| key.realm == r);
        if hit {
            key.record.invalidated = true;
            key.invalidation = Some(now);
            invalidated.push(key.record.id.clone());
        }
    }
    // `specification/security/invalidate_api_key/SecurityInvalidateApiKeyResponse.ts`;
    // `error_details` only when `error_count` is not 0, which it always is here.
    Ok(Answer::ok(json!({
        "invalidated_api_keys": invalidated,
        "previously_invalidated_api_keys": [],
        "error_count": 0,
    })))
}

/// `security/query_api_keys`: results are limited to the principal's own keys, as with
/// `manage_own_api_key`.
fn query_keys(
    state: &State,
    req: &Request<'_>,
    principal: Principal,
    params: &Params,
) -> Result<Answer, Refusal> {
    let body: spec::QueryApiKeysRequest = match json_body(req)? {
        Some(raw) => typed(&raw, "query_api_keys_request")?,
        None => spec::QueryApiKeysRequest::default(),
    };
    let refuse = |e: query::QueryError| bad(e.kind, e.reason);
    if body.aggregations.is_some() {
        return Err(bad(
            "illegal_argument_exception",
            "aggregations are allowed by Elasticsearch but not implemented by the ES double",
        ));
    }
    let query = match &body.query {
        Some(container) => query::parse(container).map_err(refuse)?,
        None => Query::MatchAll,
    };
    let sort =
        body.sort.as_ref().map(query::parse_sort).transpose().map_err(refuse)?.unwrap_or_default();
    let from = body.from.unwrap_or(0);
    let size = body.size.unwrap_or(10);
    if from < 0 {
        return Err(bad(
            "illegal_argument_exception",
            format!("[from] parameter cannot be negative, found [{from}]"),
        ));
    }
    if size < 0 {
        return Err(bad(
            "illegal_argument_exception",
            format!("[size] parameter cannot be negative, found [{size}]"),
        ));
    }
    if from + size > 10_000 {
        return Err(bad(
            "illegal_argument_exception",
            "Result window is too large, from + size must be less than or equal to: [10000]",
        ));
    }
    if body.search_after.is_some() && sort.is_empty() {
        return Err(bad("illegal_argument_exception", "[search_after] requires a [sort]"));
    }
    if body.search_after.as_ref().is_some_and(|after| after.len() != sort.len()) {
        return Err(bad(
            "illegal_argument_exception",
            "search_after has a different number of sort values than sort has fields",
        ));
    }
    let mut hits: Vec<(Vec<Value>, &StoredKey)> = state
        .keys
        .iter()
        .enumerate()
        .filter(|(_, k)| principal.owns(state, k) && query.matches(k))
        .map(|(i, k)| (query::sort_values(&sort, k, i), k))
        .collect();
    if !sort.is_empty() {
        hits.sort_by(|a, b| query::compare(&sort, &a.0, &b.0));
    }
    let total = hits.len();
    if let Some(after) = &body.search_after {
        hits.retain(|(values, _)| {
            query::compare(&sort, values, after) == std::cmp::Ordering::Greater
        });
    }
    let with_limited_by = flag(params, "with_limited_by");
    let page: Vec<Value> = hits
        .iter()
        .skip(from as usize)
        .take(size as usize)
        .map(|(values, k)| {
            let mut v = api_key_json(k, with_limited_by);
            if !sort.is_empty() {
                v["_sort"] = Value::Array(values.clone());
            }
            v
        })
        .collect();
    // `specification/security/query_api_keys/QueryApiKeysResponse.ts`.
    Ok(Answer::ok(json!({"total": total, "count": page.len(), "api_keys": page})))
}

/// What an update does to one key: `Ok(true)` updated, `Ok(false)` no change, `Err` why not.
struct Change {
    role_descriptors: Option<Value>,
    metadata: Option<Value>,
    expiration: Option<Option<i64>>,
}

fn apply(
    state: &mut State,
    principal: Principal,
    id: &str,
    change: &Change,
) -> Result<bool, Refusal> {
    let now = now_ms();
    let owned = state.keys.iter().position(|k| k.record.id == id && principal.owns(state, k));
    let Some(i) = owned else {
        return Err(Refusal {
            status: 404,
            kind: "resource_not_found_exception",
            reason: format!("no API key owned by requesting user found for ID [{id}]"),
            violation: false,
        });
    };
    let key = &mut state.keys[i];
    if key.record.invalidated {
        return Err(bad(
            "illegal_argument_exception",
            format!("cannot update invalidated API key [{id}]"),
        ));
    }
    if !key.active(now) {
        return Err(bad(
            "illegal_argument_exception",
            format!("cannot update expired API key [{id}]"),
        ));
    }
    let mut changed = false;
    if let Some(rd) = &change.role_descriptors
        && *rd != key.record.role_descriptors
    {
        key.record.role_descriptors = rd.clone();
        changed = true;
    }
    if let Some(md) = &change.metadata
        && *md != key.record.metadata
    {
        key.record.metadata = md.clone();
        changed = true;
    }
    if let Some(expiration) = change.expiration {
        key.expiration = expiration.map(|ms| now + ms);
        changed = true;
    }
    Ok(changed)
}

/// Elasticsearch refuses updates made with API key credentials: only the owner user may
/// update a key.
fn refuse_api_key_update(principal: Principal) -> Result<(), Refusal> {
    if principal.is_api_key() {
        return Err(bad(
            "illegal_argument_exception",
            "authentication via API key not supported: only the owner user can update an API key",
        ));
    }
    Ok(())
}

fn change_of(
    raw: Option<&Map<String, Value>>,
    metadata: Option<&spec::Metadata>,
    expiration: Option<&spec::Duration>,
) -> Result<Change, Refusal> {
    let mut reasons = Vec::new();
    check_metadata(metadata, &mut reasons);
    if !reasons.is_empty() {
        return Err(invalid(&reasons));
    }
    Ok(Change {
        role_descriptors: raw.and_then(|r| r.get("role_descriptors")).cloned(),
        metadata: raw.and_then(|r| r.get("metadata")).filter(|m| !m.is_null()).cloned(),
        expiration: expiration_ms(expiration)?,
    })
}

/// `security/update_api_key`: 404 for a key that is not the principal's (or does not exist),
/// 400 for an invalidated or expired one, as Elasticsearch answers.
fn update(
    state: &mut State,
    req: &Request<'_>,
    principal: Principal,
    id: &str,
) -> Result<Answer, Refusal> {
    let raw = json_body(req)?;
    let body: spec::UpdateApiKeyRequest = match &raw {
        Some(raw) => typed(raw, "update_api_key_request")?,
        None => spec::UpdateApiKeyRequest::default(),
    };
    refuse_api_key_update(principal)?;
    let change = change_of(raw.as_ref(), body.metadata.as_ref(), body.expiration.as_ref())?;
    let updated = apply(state, principal, id, &change)?;
    // `specification/security/update_api_key/Response.ts`.
    Ok(Answer::ok(json!({"updated": updated})))
}

/// `security/bulk_update_api_keys`: per-key failures are reported in `errors`, not as the
/// status (`BulkError` in `specification/security/_types/Bulk.ts`).
fn bulk_update(
    state: &mut State,
    req: &Request<'_>,
    principal: Principal,
) -> Result<Answer, Refusal> {
    let raw = required_body(req)?;
    let body: spec::BulkUpdateApiKeysRequest = typed(&raw, "bulk_update_api_key_request")?;
    refuse_api_key_update(principal)?;
    let ids = body.ids.to_vec();
    if ids.is_empty() || ids.iter().any(String::is_empty) {
        return Err(invalid(&["Field [ids] cannot be empty".to_owned()]));
    }
    let change = change_of(Some(&raw), body.metadata.as_ref(), body.expiration.as_ref())?;
    let (mut updated, mut noops, mut details) = (Vec::new(), Vec::new(), Map::new());
    for id in ids {
        match apply(state, principal, &id, &change) {
            Ok(true) => updated.push(id),
            Ok(false) => noops.push(id),
            Err(refusal) => {
                details.insert(id, json!({"type": refusal.kind, "reason": refusal.reason}));
            }
        }
    }
    // `specification/security/bulk_update_api_keys/SecurityBulkUpdateApiKeysResponse.ts`.
    let mut answer = json!({"updated": updated, "noops": noops});
    if !details.is_empty() {
        answer["errors"] = json!({"count": details.len(), "details": details});
    }
    Ok(Answer::ok(answer))
}

pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// `n` random bytes as URL-safe base64 without padding: 15 bytes make the 20 characters of an
/// Elasticsearch id, 16 the 22 of an API key secret.
pub(crate) fn random_b64(n: usize) -> String {
    use rand::RngCore as _;
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Percent-decoding of a path segment or (with `plus_is_space`) a query-string component.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            i += 3;
            continue;
        }
        out.push(if b == b'+' && plus_is_space { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl State {
    pub(crate) fn violation(&mut self, req: &Request<'_>, what: &str) {
        self.violations.push(format!("{} {}: {what}", req.method, req.target));
    }

    /// The fault to apply to the next security call, consuming one `LoseCreateResponse` when
    /// `created` says a key was just made.
    pub(crate) fn lose_after_create(&mut self) -> bool {
        match self.fault {
            Fault::LoseCreateResponse(n) if n > 0 => {
                self.fault = if n == 1 { Fault::None } else { Fault::LoseCreateResponse(n - 1) };
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("elastic%2Ffleet-server", false), "elastic/fleet-server");
        assert_eq!(percent_decode("a+b%20c", true), "a b c");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz", false), "%zz");
    }

    #[test]
    fn routes_follow_the_spec_urls() {
        assert_eq!(route("PUT", "/_security/api_key"), Ok(Endpoint::CreateApiKey));
        assert_eq!(route("DELETE", "/_security/api_key"), Ok(Endpoint::InvalidateApiKey));
        assert_eq!(
            route("PUT", "/_security/api_key/abc"),
            Ok(Endpoint::UpdateApiKey("abc".into()))
        );
        assert_eq!(
            route("POST", "/_security/api_key/_bulk_update"),
            Ok(Endpoint::BulkUpdateApiKeys)
        );
        assert_eq!(
            route("GET", "/_security/user/elastic%2Ffleet-server/_has_privileges"),
            Ok(Endpoint::HasPrivileges(Some("elastic/fleet-server".into())))
        );
        assert_eq!(route("PATCH", "/_security/api_key"), Err(Some("POST, PUT, GET, DELETE")));
        assert_eq!(route("GET", "/_cluster/health"), Err(None));
    }

    #[test]
    fn error_bodies_are_error_response_base() {
        let body = error_body(401, "security_exception", "nope");
        assert_eq!(body["status"], 401);
        assert_eq!(body["error"]["type"], "security_exception");
        assert_eq!(body["error"]["root_cause"][0]["reason"], "nope");
        assert_eq!(body["error"]["header"]["WWW-Authenticate"][2], "ApiKey");
    }
}
