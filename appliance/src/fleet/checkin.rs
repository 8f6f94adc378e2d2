//! `POST /api/fleet/agents/{id}/checkin`, the long poll (fleet-protocol.md §3.3): resolve the
//! agent's action cursor, queue its report, then answer with pending actions, a newer policy
//! revision, or nothing once the hold runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::hub::Parked;
use super::wire::{Action, ActionData, ActionKind, CheckinRequest, CheckinResponse};
use super::{
    AgentApi, CHECKIN_BODY_LIMIT, CHECKIN_WIRE_LIMIT, agent_version, blocking, with_state,
};
use crate::elastic::Keys;
use crate::elastic::slots::KeySlot;
use crate::error::ApiError;
use crate::net::later::Later;
use crate::release::Release;
use crate::store::{ActionRecord, CheckinUpdate};

/// The most actions one check-in response carries (Fleet Server's fetch size).
const MAX_ACTIONS: usize = 100;

/// A policy as this appliance delivers it.
pub(crate) struct Delivered {
    pub revision: u64,
    pub created: String,
    /// The policy document, serialised once: each POLICY_CHANGE copies this text.
    pub policy: Box<RawValue>,
    /// Outputs whose `api_key` is each agent's own (`[elasticsearch]`): placeholders in
    /// `policy`, filled per agent.
    pub slots: Vec<KeySlot>,
    /// The user artifacts its inputs' `artifact_manifest`s list, as (identifier, decoded
    /// SHA-256): what the agent may fetch from `/api/fleet/artifacts/` (`super::artifacts`).
    pub artifacts: super::artifacts::Listed,
}

/// Delivered policies of the active release, computed once per release change rather than
/// once per check-in: a new release wakes every parked agent at the same moment.
#[derive(Default)]
pub(crate) struct PolicyCache {
    inner: Mutex<Generation>,
}

/// Why a policy of the active release is not delivered (agents keep the one they run).
pub(crate) type Held = std::collections::BTreeMap<String, String>;

/// The policies delivered from one active release (`None`: the release has no such policy).
#[derive(Default)]
struct Generation {
    number: u64,
    policies: HashMap<String, Option<Arc<Delivered>>>,
    held: Held,
}

impl PolicyCache {
    /// The policy if this release's copy is computed already: no thread hop for the thousands
    /// of parked check-ins a new release wakes at once.
    pub(crate) fn cached(&self, api: &AgentApi, policy_id: &str) -> Option<Option<Arc<Delivered>>> {
        let generation = *api.app.changed.borrow();
        let inner = self.inner.lock().expect("policy cache lock");
        (inner.number == generation).then(|| inner.policies.get(policy_id).cloned()).flatten()
    }

    /// The policy `policy_id` of the active release, if it has one. Blocking.
    pub(crate) fn get(
        &self,
        api: &AgentApi,
        policy_id: &str,
    ) -> Result<Option<Arc<Delivered>>, ApiError> {
        let generation = *api.app.changed.borrow();
        let mut inner = self.inner.lock().expect("policy cache lock");
        if inner.number != generation {
            *inner = Generation { number: generation, ..Generation::default() };
        }
        if let Some(hit) = inner.policies.get(policy_id) {
            return Ok(hit.clone());
        }
        let delivered = match api.app.current() {
            Some(release) => match deliver(api, &release, policy_id)? {
                Ok(delivered) => delivered.map(Arc::new),
                Err(why) => {
                    tracing::warn!(policy = policy_id, "policy not delivered: {why}");
                    inner.held.insert(policy_id.to_owned(), why);
                    None
                }
            },
            None => None,
        };
        inner.policies.insert(policy_id.to_owned(), delivered.clone());
        Ok(delivered)
    }

    /// The policies of the active release not delivered, and why, among those looked at.
    pub(crate) fn held(&self, api: &AgentApi) -> Held {
        let generation = *api.app.changed.borrow();
        let inner = self.inner.lock().expect("policy cache lock");
        if inner.number == generation { inner.held.clone() } else { Held::new() }
    }
}

/// Builds the delivered form of a policy: `fleet.hosts` and the download source point here, and
/// the revision is the appliance's own, which only goes up. `Err` says why the policy cannot
/// be delivered at all.
fn deliver(
    api: &AgentApi,
    release: &Release,
    policy_id: &str,
) -> Result<Result<Option<Delivered>, String>, ApiError> {
    let Some((_, entry)) = release.policies().find(|(id, _)| *id == policy_id) else {
        return Ok(Ok(None));
    };
    let bytes = std::fs::read(api.app.blobs.path(&entry.sha256))
        .map_err(|e| ApiError::Internal(e.into()))?;
    let policy = ferry_artifacts::Policy::parse(&bytes, entry.path.as_str())
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut doc = policy.document;
    // The bundle's own revision stays in the hashed content: a policy re-exported from Kibana
    // with a new revision is a change even if nothing else moved.
    doc["id"] = json!(policy_id);
    // On-site secrets, resolved as Fleet Server resolves them, on the document as exported
    // (the site rewrite below would hide a remote output's token reference). A policy with a
    // secret not set is not delivered: agents keep the one they run.
    let needed = ferry_artifacts::secrets::referenced_ids(&doc);
    let (values, fingerprint) =
        api.app.secrets_for(&needed).map_err(|e| ApiError::Internal(e.into()))?;
    let unresolved = (!needed.is_empty()).then(|| doc.clone());
    let mut secret_paths = match ferry_artifacts::secrets::resolve(&mut doc, &values) {
        Ok(paths) => paths,
        Err(missing) => return Ok(Err(missing.to_string())),
    };
    // What belongs to the site that serves the policy, not to the one that exported it (Fleet
    // Server host, download source and TLS, remote output tokens) is this appliance's; the
    // builder warned about what this removes.
    let site = ferry_artifacts::policy::SiteConnection {
        public_base: &api.public_base,
        download_ca: api.download_ca.as_deref(),
    };
    let elasticsearch = crate::elastic::slots::elasticsearch_outputs(&doc);
    ferry_artifacts::policy::deliver_for_site(&mut doc, &site);
    // serde_json's maps are sorted, so equal content gives equal text. The revision's hash is
    // of the document with its references and the secrets' fingerprint, never of a value.
    let hashed = match unresolved {
        Some(mut unresolved) => {
            ferry_artifacts::policy::deliver_for_site(&mut unresolved, &site);
            format!("{unresolved}\n{fingerprint}")
        }
        None => doc.to_string(),
    };
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(hashed.as_bytes()));
    // Fleet Server's `secret_paths` (handleCheckin.go processPolicy): the fields that hold a
    // secret, which agents redact from diagnostics; those the site rewrite removed go too.
    secret_paths.retain(|path| holds(&doc, path));
    if !secret_paths.is_empty() {
        doc["secret_paths"] = json!(secret_paths);
    }
    // Per-agent keys only where the site's Elasticsearch is configured: without it the policy
    // goes as the bundle carries it.
    let slots = match api.app.elastic.get() {
        Some(_) => match crate::elastic::slots::prepare(&mut doc, &elasticsearch) {
            Ok(slots) => slots,
            Err(why) => return Ok(Err(why)),
        },
        None => Vec::new(),
    };
    let now = crate::clock::now_rfc3339();
    let (revision, created) =
        api.state.lock().expect("state lock").policy_revision(policy_id, &sha, &now)?;
    doc["revision"] = json!(revision);
    let policy = serde_json::value::to_raw_value(&doc).map_err(|e| ApiError::Internal(e.into()))?;
    let artifacts = super::artifacts::listed(&doc);
    Ok(Ok(Some(Delivered { revision, created, policy, slots, artifacts })))
}

/// Whether `doc` has a value at dotted `path` (`inputs.0.streams.1.password`); a key that holds
/// dots itself (`auth.basic.password`) is matched whole, as `secret_paths` lists it.
fn holds(doc: &Value, path: &str) -> bool {
    if path.is_empty() {
        return true;
    }
    match doc {
        Value::Object(map) => map.iter().any(|(key, value)| {
            path == key
                || path
                    .strip_prefix(key.as_str())
                    .and_then(|r| r.strip_prefix('.'))
                    .is_some_and(|rest| holds(value, rest))
        }),
        Value::Array(items) => {
            let (index, rest) = path.split_once('.').unwrap_or((path, ""));
            index.parse::<usize>().ok().and_then(|i| items.get(i)).is_some_and(|v| holds(v, rest))
        }
        _ => false,
    }
}

/// The output keys agent `agent_id` needs for `policy`, in slot order (its stored key rows are
/// read into `keys` once); `None` while one is being made (the worker wakes the check-in).
/// Keys of outputs the policy no longer needs one for are retired before the delivery, so the
/// ack that follows finds them.
async fn output_keys<'k>(
    api: &Arc<AgentApi>,
    es: &crate::elastic::Elastic,
    agent_id: &str,
    policy_id: &str,
    policy: &Delivered,
    keys: &'k mut Option<Vec<crate::store::OutputKeyRecord>>,
) -> Result<Option<Vec<&'k str>>, ApiError> {
    if keys.is_none() {
        let id = agent_id.to_owned();
        *keys = Some(with_state(api, move |s| s.output_keys(&id)).await?);
    }
    let keys = keys.as_deref().unwrap_or_default();
    let at = (policy_id, policy.revision);
    let Keys::Ready { keys, stale } = es.keys_for(agent_id, &policy.slots, keys, at) else {
        return Ok(None);
    };
    if stale {
        let (id, retired_by, revision) =
            (agent_id.to_owned(), policy_id.to_owned(), policy.revision);
        let keep: Vec<String> = policy.slots.iter().map(|s| s.output.clone()).collect();
        with_state(api, move |s| s.retire_output_keys(&id, &keep, (&retired_by, revision))).await?;
        es.retiring(agent_id);
    }
    Ok(Some(keys))
}

/// The check-in report in a body read within the wire cap: gunzipped (when the headers say so)
/// within its own cap, decoded, and carrying the one field Fleet requires.
pub(super) fn parse_request(gzip: bool, body: Bytes) -> Result<CheckinRequest, ApiError> {
    let body = super::decompress(gzip, body, CHECKIN_BODY_LIMIT)?;
    let request: CheckinRequest = super::json_body(&body, "check-in")?;
    if request.status.is_empty() {
        return Err(ApiError::bad_request("status is required"));
    }
    Ok(request)
}

/// What one agent's report may store, per field. A check-in body may inflate to 20 MiB (Fleet
/// Server's cap, which an Elasticsearch document also bears); stored whole, 20 agents sending
/// 20 KB of gzip each grew `state.db` by 400 MB and made `agents list` too large to answer. An
/// Elastic Agent's real reports are far below these: `local_metadata` is 1–3 KB (a host with
/// 200 interfaces about 15 KB), `components` a few hundred bytes per unit (some 30 units with 20
/// integrations), `message` one line, `status` one word.
pub(super) mod caps {
    pub(crate) const STATUS: usize = 64;
    pub(crate) const MESSAGE: usize = 1 << 10;
    pub(crate) const LOCAL_METADATA: usize = 64 << 10;
    pub(crate) const COMPONENTS: usize = 256 << 10;
    pub(crate) const UPGRADE_DETAILS: usize = 16 << 10;
    /// A string kept from oversized upgrade details.
    pub(crate) const DETAIL: usize = 256;
    /// Addresses kept of `host.ip` and `host.mac` in oversized metadata.
    pub(crate) const ADDRESSES: usize = 64;
}

/// `s` cut to at most `limit` bytes on a character boundary, marked with `…` when cut.
fn cut(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut end = limit.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Oversized metadata made smaller the way a real agent's grows: a host with a thousand
/// interfaces (a Kubernetes node's veths, a hypervisor's taps) lists every address in
/// `host.ip` and `host.mac`; the first [`caps::ADDRESSES`] of each are kept.
fn shrink_metadata(metadata: &Value) -> Value {
    let mut metadata = metadata.clone();
    for list in ["/host/ip", "/host/mac"] {
        if let Some(Value::Array(items)) = metadata.pointer_mut(list) {
            items.truncate(caps::ADDRESSES);
        }
    }
    metadata
}

/// Oversized components made smaller the way a real agent's grow: many units failing with long
/// errors, and units' payloads. Every message is cut to [`caps::MESSAGE`] and payloads dropped,
/// so the states, which `agents show` reads, stay.
fn shrink_components(components: &Value) -> Value {
    let mut components = components.clone();
    let cut_message = |item: &mut Value| {
        if let Some(Value::String(message)) = item.get_mut("message") {
            *message = cut(message, caps::MESSAGE);
        }
    };
    for component in components.as_array_mut().into_iter().flatten() {
        cut_message(component);
        let units = component.get_mut("units").and_then(Value::as_array_mut);
        for unit in units.into_iter().flatten() {
            cut_message(unit);
            if let Some(unit) = unit.as_object_mut() {
                unit.remove("payload");
            }
        }
    }
    components
}

/// A report's fields within [`caps`]: the status and message cut; an oversized
/// `local_metadata` or `components` made smaller as real ones grow, and not stored when that is
/// not enough (the agent's previous one stays); oversized upgrade details reduced to what the
/// upgrade state and `agents list` read. Returns the stored fields and whether anything was cut
/// or dropped.
struct Trimmed {
    status: String,
    message: String,
    local_metadata: Option<String>,
    components: Option<String>,
    upgrade_details: Option<String>,
    trimmed: bool,
}

fn trim(request: &CheckinRequest) -> Trimmed {
    let mut trimmed = false;
    // Within its cap a field is stored as the agent sent it; over it, it is parsed and made
    // smaller. (A value's text starts with its first character: `{` is an object, `[` an array.)
    let mut within = |raw: &RawValue, shrink: fn(&Value) -> Value, limit: usize| {
        let text = raw.get();
        if text.len() <= limit {
            return Some(text.to_owned());
        }
        trimmed = true;
        let value: Value = serde_json::from_str(text).ok()?;
        Some(shrink(&value).to_string()).filter(|text| text.len() <= limit)
    };
    let local_metadata = request
        .local_metadata
        .as_deref()
        .filter(|v| v.get().starts_with('{'))
        .and_then(|v| within(v, shrink_metadata, caps::LOCAL_METADATA));
    let components = request
        .components
        .as_deref()
        .filter(|v| v.get().starts_with('['))
        .and_then(|v| within(v, shrink_components, caps::COMPONENTS));
    let upgrade_details = request.upgrade_details.as_ref().filter(|v| v.is_object()).map(|v| {
        let text = v.to_string();
        if text.len() <= caps::UPGRADE_DETAILS {
            return text;
        }
        trimmed = true;
        // What the upgrade state (`state`) and the UPGRADE column (`download_percent`) read.
        let short = |v: &Value| v.as_str().map(|s| cut(s, caps::DETAIL));
        json!({
            "target_version": short(&v["target_version"]),
            "action_id": short(&v["action_id"]),
            "state": short(&v["state"]),
            "metadata": { "download_percent": v["metadata"]["download_percent"].as_f64() },
        })
        .to_string()
    });
    let message = request.message.as_deref().unwrap_or_default();
    trimmed |= request.status.len() > caps::STATUS || message.len() > caps::MESSAGE;
    Trimmed {
        status: cut(&request.status, caps::STATUS),
        message: cut(message, caps::MESSAGE),
        local_metadata,
        components,
        upgrade_details,
        trimmed,
    }
}

/// A stored action as the agent receives it (§4.2), its data copied as stored. An action of a
/// type this appliance does not know (stored by a newer version) is left out and logged, as
/// Fleet Server leaves out the types it does not know (fleet-server
/// internal/pkg/api/handleCheckin.go, `filterActions`); the agent's cursor still moves past it.
fn envelope<'a>(action: &'a ActionRecord, agent_id: &'a str) -> Option<Action<'a>> {
    let Some(kind) = ActionKind::parse(&action.kind) else {
        tracing::warn!(action = %action.id, kind = %action.kind, "action of an unknown type not delivered");
        return None;
    };
    // Stored data that is not JSON (never written so) goes out as null, as no data does.
    let data = action.data.as_deref().and_then(|d| serde_json::from_str::<&RawValue>(d).ok());
    let mut envelope =
        Action::new(&action.id, kind, agent_id, &action.created_at, ActionData::Stored(data));
    envelope.expiration = Some(action.expiration.as_str()).filter(|e| !e.is_empty());
    envelope.start_time = action.start_time.as_deref();
    Some(envelope)
}

/// The check-in response that brings an agent `policy`: the policy monitor's action, not a
/// stored one (no expiry, §4.3). Written around the policy's text, serialised once per release:
/// a new release reaches every parked agent at once, and each of their responses copies the
/// text rather than encoding the policy again (`policy_change_fan_out` measures it).
fn policy_change(policy_id: &str, agent_id: &str, policy: &Delivered, keys: &[&str]) -> Vec<u8> {
    let id = format!("policy:{policy_id}:{}", policy.revision);
    let data = ActionData::PolicyChange { policy: &policy.policy };
    let action = [Action::new(&id, ActionKind::PolicyChange, agent_id, &policy.created, data)];
    // The envelope is some 150 bytes besides the ids: the buffer is allocated once.
    let capacity = policy.policy.get().len() + id.len() + agent_id.len() + 256;
    let mut body = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut body, &CheckinResponse::new("", &action))
        .expect("a check-in response serialises");
    match policy.slots.is_empty() {
        true => body,
        false => crate::elastic::slots::fill(body, &policy.slots, keys),
    }
}

pub(crate) async fn checkin(
    State(api): State<Arc<AgentApi>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Everything the request brought (headers, body, the agent's record) is dropped before
    // the check-in parks: a parked agent holds only `Parking`.
    let parking = prepare(&api, id, headers, body).await?;
    // Most check-ins that have something to deliver answer on the first poll. One that has to
    // wait is answered later by the HTTP loop, outside the router's layers, so a parked agent
    // holds this future alone (`net::later`).
    let mut answer = Box::pin(answer(api, parking));
    match std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await {
        Poll::Ready(response) => Ok(response),
        Poll::Pending => Ok(Later::response(answer)),
    }
}

/// The answer to a check-in once it is parked: what a parked agent holds for its long poll.
async fn answer(api: Arc<AgentApi>, parking: Parking) -> Response {
    wait(&api, parking).await.into_response()
}

/// What a parked check-in keeps.
struct Parking {
    /// Registered before the first look for actions, so one queued after it wakes the poll.
    parked: Parked,
    /// What that first look found.
    pending: Vec<ActionRecord>,
    agent_id: String,
    /// The key the check-in came with: re-checked whenever the agent is woken, so a revoked or
    /// re-enrolled agent's parked check-in is refused rather than handed an action or policy.
    access_key_id: String,
    policy_id: String,
    cursor: i64,
    running: u64,
    latest: Option<Arc<Delivered>>,
    release: tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
}

/// Authenticates, reads the report and queues it, works out what the agent has, and parks.
/// Two thread hops to the database (the key, then everything else at once), and none for the
/// policy once a release's copy is computed: at a new release every parked agent acks and
/// checks in again within a second or two, and each hop is two context switches on a machine
/// whose two cores also run the TLS and the agents' traffic.
async fn prepare(
    api: &Arc<AgentApi>,
    id: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Parking, ApiError> {
    // The headers are read and dropped before the first wait for the database. The version is
    // refused after the key is checked, in Fleet Server's order (fleet-server
    // internal/pkg/api/handleCheckin.go: authAgent, then validateUserAgent).
    let (key, version, gzip) =
        (super::access_key(&headers), agent_version(&headers), super::gzipped(&headers));
    drop(headers);
    let agent = super::authenticated_key(api, key, Some(&id)).await?;
    let version = version?;
    let body = super::read_limited(body, CHECKIN_WIRE_LIMIT).await?;
    let inflating = match gzip {
        true => Some(super::INFLATING.acquire().await.expect("the semaphore is never closed")),
        false => None,
    };
    let request = parse_request(gzip, body)?;
    drop(inflating);
    // What is kept of the report is taken now and the request dropped: in a storm thousands of
    // check-ins wait for the database at once, each holding only this.
    let fields = trim(&request);
    let reported = request.agent_policy_id.map(|p| (p, request.policy_revision_idx.unwrap_or(0)));
    let token = request.ack_token.filter(|t| !t.is_empty());
    let parked = api.hub.park(&agent.id);
    // The cursor and revision may still be in memory, waiting for the next batch write, which
    // takes them from the hub while holding the database: read under the same lock, they are
    // in one place or the other. Read after it, a batch written in between was in neither, and
    // the agent got its policy again.
    let (token_seq, cursor, stored_revision, pending) = with_state(api, {
        let hub = Arc::clone(&api.hub);
        let (id, policy, key) =
            (agent.id.clone(), agent.policy_id.clone(), agent.access_key_id.clone());
        move |s| {
            let token_seq = match token {
                Some(t) => s.agent_action(&id, &t)?.map(|a| a.seq),
                None => None,
            };
            // An unknown token falls back to the stored cursor, never an error (§7.8).
            let cursor = match token_seq {
                Some(seq) => seq,
                None => s.action_cursor(&id)?.max(hub.queued_cursor(&id).unwrap_or(0)),
            };
            let revision = s
                .agent_policy_revision(&id)?
                .max(hub.queued_policy_ack(&id, &policy, &key).unwrap_or(0));
            let now = crate::clock::now_rfc3339();
            let pending = s.pending_actions(&id, cursor, &now, MAX_ACTIONS)?;
            Ok((token_seq, cursor, revision, pending))
        }
    })
    .await?;
    // Subscribed before the policy is looked up: a release activated in between is a change
    // this check-in sees.
    let release = api.app.changed.subscribe();
    let latest = match api.policies.cached(api, &agent.policy_id) {
        Some(hit) => hit,
        None => {
            let (api, policy_id) = (Arc::clone(api), agent.policy_id.clone());
            blocking(move || api.policies.get(&api, &policy_id)).await?
        }
    };
    // Agents >= 9.2 say what they run. Another policy (a reassignment) or a revision this
    // appliance never issued means "send the policy again" (§3.3, step 2).
    let running = match &reported {
        None => stored_revision,
        Some((p, r))
            if *p == agent.policy_id && latest.as_ref().is_none_or(|l| *r <= l.revision) =>
        {
            *r
        }
        Some(_) => 0,
    };
    if fields.trimmed && api.hub.trimmed.note(&agent.id) {
        tracing::warn!(
            agent = %agent.id,
            "check-in fields over their caps were cut or not stored (logged once per agent)"
        );
    }
    api.hub.report(CheckinUpdate {
        agent_id: agent.id.clone(),
        access_key_id: agent.access_key_id.clone(),
        at: crate::clock::now_rfc3339(),
        status: fields.status,
        message: fields.message,
        version,
        local_metadata: fields.local_metadata,
        components: fields.components,
        upgrade_details: fields.upgrade_details,
        running: reported.filter(|(p, _)| *p == agent.policy_id),
        cursor: token_seq,
    });
    let jitter = api.jitter.mul_f64(rand::random::<f64>());
    let hold = api.long_poll.checked_sub(jitter).filter(|h| !h.is_zero()).unwrap_or(api.long_poll);
    Ok(Parking {
        parked,
        pending,
        agent_id: agent.id,
        access_key_id: agent.access_key_id,
        policy_id: agent.policy_id,
        cursor,
        running,
        latest,
        release,
        deadline: tokio::time::Instant::now() + hold,
    })
}

/// Waits for an action or a newer policy revision, or for the hold to run out.
async fn wait(api: &Arc<AgentApi>, p: Parking) -> Result<Response, ApiError> {
    let Parking {
        mut parked,
        mut pending,
        agent_id,
        access_key_id,
        policy_id,
        cursor,
        running,
        mut latest,
        mut release,
        deadline,
    } = p;
    let mut closing = api.hub.closing();
    // Stopping or draining already: answer at once (the loop still delivers anything pending).
    let deadline = if *closing.borrow() { tokio::time::Instant::now() } else { deadline };
    // Actions were looked up before parking (`prepare`), and are again after each wake-up of
    // this agent; a new release only changes the policy, so waking every parked agent costs no
    // database work.
    // After a wake-up the agent's record is read again with its actions: the wake may be its
    // revocation (admin `unenroll --revoke`), which must end this check-in with the 401 any
    // new request of the agent gets, not with an action or a policy.
    let mut look = false;
    // The agent's output keys, when the site's Elasticsearch is configured: read when a
    // policy is to be delivered, and again after each wake-up of the agent's own (a key it
    // waited for exists now).
    let elastic = api.app.elastic.get();
    let mut keys = None;
    loop {
        if look {
            keys = None;
            let (id, key) = (agent_id.clone(), access_key_id.clone());
            let (current, found) = with_state(api, move |s| {
                let current = s.agent(&id)?.is_some_and(|a| a.active && a.access_key_id == key);
                let now = crate::clock::now_rfc3339();
                Ok((
                    current,
                    if current {
                        s.pending_actions(&id, cursor, &now, MAX_ACTIONS)?
                    } else {
                        Vec::new()
                    },
                ))
            })
            .await?;
            if !current {
                return Err(super::inactive());
            }
            pending = found;
            look = false;
        }
        // Pending actions win; a policy change follows on the next check-in (§3.3).
        if let Some(last) = pending.last() {
            let actions: Vec<Action<'_>> =
                pending.iter().filter_map(|a| envelope(a, &agent_id)).collect();
            return Ok(axum::Json(CheckinResponse::new(&last.id, &actions)).into_response());
        }
        if let Some(policy) = latest.as_ref().filter(|p| p.revision > running) {
            // Without its keys the policy waits (the agent keeps the one it runs); the worker
            // wakes this check-in when they exist.
            let ready = match elastic {
                Some(es) => output_keys(api, es, &agent_id, &policy_id, policy, &mut keys).await?,
                None => Some(Vec::new()),
            };
            if let Some(ready) = ready {
                let body = policy_change(&policy_id, &agent_id, policy, &ready);
                return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
            }
        }
        // Biased: an agent's own wake-up (perhaps its revocation) is handled before a release
        // change that arrived at the same moment could deliver it a policy.
        tokio::select! {
            biased;
            woke = parked.woken.changed() => {
                if woke.is_err() { break }
                look = true;
            },
            // A newer check-in of this agent parked: it holds the agent's place now. An honest
            // agent has one check-in at a time (its gateway loop waits for each answer, and
            // 9.2's fast check-in cancels the old request first: elastic-agent
            // internal/pkg/agent/application/gateway/fleet/fleet_gateway.go), so this one is
            // a connection it gave up on, or a second host with the same identity (a cloned
            // image): a 429 sends that one into the agent's 1-10 min backoff instead of a
            // check-in a second, back and forth between the two.
            () = parked.newer.parked() => {
                if api.hub.superseded.note(&agent_id) {
                    tracing::warn!(
                        agent = %agent_id,
                        "two check-ins of one agent at once: a cloned host? (logged once per agent)"
                    );
                }
                return Err(ApiError::TooMany {
                    code: "CheckinSuperseded",
                    message: "a newer check-in of this agent is waiting".to_owned(),
                    retry_after: std::time::Duration::from_secs(60),
                });
            }
            woke = release.changed() => {
                if woke.is_err() { break }
                let (api, policy_id) = (Arc::clone(api), policy_id.clone());
                latest = match api.policies.cached(&api, &policy_id) {
                    Some(hit) => hit,
                    None => blocking(move || api.policies.get(&api, &policy_id)).await?,
                };
            },
            () = tokio::time::sleep_until(deadline) => break,
            // Only a change to closing: a drain undone meanwhile leaves the poll parked. (The
            // guard `wait_for` gives is dropped inside: it must not live across an await.)
            () = async { drop(closing.wait_for(|closing| *closing).await) } => break,
        }
    }
    Ok(axum::Json(CheckinResponse::new("", &[])).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &Value) -> CheckinRequest {
        serde_json::from_str(&body.to_string()).unwrap()
    }

    #[test]
    fn reports_within_their_caps_are_stored_as_sent() {
        // Byte for byte, in the agent's key order (Go marshals struct fields in their order).
        let metadata =
            r#"{"host":{"name":"web-01","hostname":"web-01"},"elastic":{"agent":{"id":"a"}}}"#;
        let components = r#"[{"id":"log-default","status":"HEALTHY","units":[]}]"#;
        let r: CheckinRequest = serde_json::from_str(&format!(
            r#"{{"status":"online","message":"Running","local_metadata":{metadata},"components":{components},"upgrade_details":{{"state":"UPG_DOWNLOADING","metadata":{{"download_percent":40}}}}}}"#
        ))
        .unwrap();
        let t = trim(&r);
        assert!(!t.trimmed);
        assert_eq!((t.status.as_str(), t.message.as_str()), ("online", "Running"));
        assert_eq!(t.local_metadata.unwrap(), metadata);
        assert_eq!(t.components.unwrap(), components);
        assert_eq!(t.upgrade_details.unwrap(), r.upgrade_details.unwrap().to_string());
        // Absent, null, or of the wrong shape: nothing stored (the agent's previous one stays).
        for body in [
            r#"{"status":"online"}"#,
            r#"{"status":"online","local_metadata":null,"components":null}"#,
            r#"{"status":"online","local_metadata":[1],"components":{"a":1}}"#,
        ] {
            let t = trim(&serde_json::from_str(body).unwrap());
            assert_eq!((t.local_metadata, t.components), (None, None), "{body}");
        }
    }

    #[test]
    fn oversized_fields_are_cut_or_not_stored() {
        let big = "é".repeat(caps::COMPONENTS);
        let r = request(&json!({
            "status": big, "message": big,
            "local_metadata": { "host": { "hostname": big } },
            "components": [{ "id": big }],
            "upgrade_details": { "state": "UPG_DOWNLOADING", "target_version": big,
                                 "metadata": { "download_percent": 40.5, "error_msg": big } },
        }));
        let t = trim(&r);
        assert!(t.trimmed);
        assert!(t.status.len() <= caps::STATUS && t.status.ends_with('…'));
        assert!(t.message.len() <= caps::MESSAGE && t.message.ends_with('…'));
        // Not stored: the agent's previous metadata and components stay.
        assert_eq!((t.local_metadata, t.components), (None, None));
        let details: Value = serde_json::from_str(&t.upgrade_details.unwrap()).unwrap();
        assert_eq!(details["state"], "UPG_DOWNLOADING");
        assert_eq!(details["metadata"]["download_percent"], 40.5);
        assert!(details.to_string().len() < caps::UPGRADE_DETAILS);
    }

    #[test]
    fn large_real_shapes_are_made_smaller_rather_than_dropped() {
        // A node with 3,000 interfaces, and 200 units failing with 2 KiB errors and payloads.
        let ips: Vec<String> = (0..3000).map(|i| format!("fe80::{i:x}:1:2:3:4")).collect();
        let units: Vec<Value> = (0..200)
            .map(|i| json!({ "id": format!("unit-{i}"), "type": "input", "status": "FAILED",
                             "message": "e".repeat(2048), "payload": { "osquery": "x".repeat(512) } }))
            .collect();
        let r = request(&json!({
            "status": "error",
            "local_metadata": { "host": { "hostname": "node-7", "ip": ips, "mac": ips } },
            "components": [{ "id": "filestream-default", "status": "FAILED",
                             "message": "m".repeat(4096), "units": units }],
        }));
        let t = trim(&r);
        assert!(t.trimmed);
        let metadata: Value = serde_json::from_str(&t.local_metadata.unwrap()).unwrap();
        assert_eq!(metadata["host"]["hostname"], "node-7");
        assert_eq!(metadata["host"]["ip"].as_array().unwrap().len(), caps::ADDRESSES);
        let components: Value = serde_json::from_str(&t.components.unwrap()).unwrap();
        let units = components[0]["units"].as_array().unwrap();
        assert_eq!(units.len(), 200, "every unit's state stays");
        assert_eq!(units[199]["status"], "FAILED");
        assert!(units[0].get("payload").is_none());
        assert!(units[0]["message"].as_str().unwrap().len() <= caps::MESSAGE);
    }

    /// The demo's Kibana full agent policy export as this appliance delivers it, its inputs
    /// repeated `copies` times (a site running many integrations: Kibana's exports run from a
    /// few KiB to a few hundred).
    fn demo_policy(copies: usize) -> Delivered {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo/policies/default-policy.yml");
        let bytes = std::fs::read(path).unwrap();
        let mut doc =
            ferry_artifacts::Policy::parse(&bytes, "default-policy.yml").unwrap().document;
        let inputs = doc["inputs"].as_array().unwrap().clone();
        doc["inputs"] = (0..copies)
            .flat_map(|n| {
                inputs.iter().map(move |input| {
                    let mut input = input.clone();
                    input["id"] = json!(format!("{}-{n}", input["id"].as_str().unwrap()));
                    input
                })
            })
            .collect();
        let site = ferry_artifacts::policy::SiteConnection {
            public_base: "https://fleet.site.internal:8220",
            download_ca: Some("-----BEGIN CERTIFICATE-----\nMIIB…\n-----END CERTIFICATE-----\n"),
        };
        ferry_artifacts::policy::deliver_for_site(&mut doc, &site);
        doc["revision"] = json!(7);
        Delivered {
            revision: 7,
            created: "2026-01-02T03:04:05Z".into(),
            policy: serde_json::value::to_raw_value(&doc).unwrap(),
            slots: Vec::new(),
            artifacts: Default::default(),
        }
    }

    /// The POLICY_CHANGE body as it was written by hand before the typed envelope: the
    /// reference `policy_change` is held to, and measured against.
    fn hand_formatted(policy_id: &str, agent_id: &str, policy: &Delivered) -> String {
        let quoted = |s: &str| serde_json::to_string(s).unwrap();
        format!(
            r#"{{"action":"checkin","ack_token":"","actions":[{{"id":{},"type":"POLICY_CHANGE","agent_id":{},"created_at":{},"input_type":"","data":{{"policy":{}}}}}]}}"#,
            quoted(&format!("policy:{policy_id}:{}", policy.revision)),
            quoted(agent_id),
            quoted(&policy.created),
            policy.policy.get(),
        )
    }

    #[test]
    fn a_policy_change_is_byte_for_byte_what_it_was() {
        let policy = demo_policy(1);
        for (policy_id, agent_id) in
            [("default-policy", "0f7c1a52-3e1b-4c2d-9a8e-5b6c7d8e9f01"), ("p\"1", "é\n<&>")]
        {
            let typed = policy_change(policy_id, agent_id, &policy, &[]);
            assert_eq!(
                String::from_utf8(typed).unwrap(),
                hand_formatted(policy_id, agent_id, &policy)
            );
        }
    }

    /// A new release reaching parked agents: ns per POLICY_CHANGE response, the typed envelope
    /// against the hand-formatted body it replaced, both around the policy text serialised once.
    /// Run: `cargo test -p ferry-appliance --release --lib -- --ignored --nocapture fan_out`.
    #[test]
    #[ignore = "a measurement, not a check: run it in release with --nocapture"]
    fn policy_change_fan_out() {
        use std::hint::black_box;
        use std::time::Instant;
        let agent_ids: Vec<String> = (0..20_000).map(|_| super::super::uuid_v4()).collect();
        for copies in [1, 40, 400] {
            let policy = demo_policy(copies);
            let size = policy.policy.get().len();
            // Alternated rounds; the fastest of each is kept (the machine is shared).
            let (mut typed, mut formatted) = (f64::MAX, f64::MAX);
            for _ in 0..7 {
                let start = Instant::now();
                for id in &agent_ids {
                    black_box(policy_change(black_box("default-policy"), id, &policy, &[]));
                }
                typed = typed.min(start.elapsed().as_nanos() as f64 / agent_ids.len() as f64);
                let start = Instant::now();
                for id in &agent_ids {
                    black_box(hand_formatted(black_box("default-policy"), id, &policy));
                }
                formatted =
                    formatted.min(start.elapsed().as_nanos() as f64 / agent_ids.len() as f64);
            }
            println!(
                "policy {size} bytes, {} agents: typed {typed:.0} ns/response, hand-formatted \
                 {formatted:.0} ns/response, typed/hand-formatted {:.2}",
                agent_ids.len(),
                typed / formatted
            );
        }
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcdef", 4), "a…");
        assert_eq!(cut("ééé", 5), "é…");
        assert!(cut(&"é".repeat(100), 64).len() <= 64);
    }

    /// A parked check-in's answer is boxed and held for the whole long poll by every parked
    /// agent, so a buffer kept on its stack across an `.await` costs the fleet (the connection's
    /// own task is held under 4 KiB in `net/http1.rs`). The handler's future, boxed by the
    /// router while it prepares, is held by every check-in in flight after an outage. (Both
    /// were 1.3 KiB, as one future, before the answer was handed out of the router's layers.)
    #[test]
    fn a_parked_check_in_stays_small() {
        fn size<A, B, F: std::future::Future>(_: fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        fn size4<A, B, C, D, F: std::future::Future>(_: fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let (parked, preparing) = (size(answer), size4(checkin));
        assert!(parked <= 1536, "a parked check-in's answer takes {parked} bytes");
        assert!(preparing <= 2 << 10, "a check-in's future takes {preparing} bytes");
    }
}
