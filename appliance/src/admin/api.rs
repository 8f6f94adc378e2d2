//! The admin API's requests and answers, shared by its server ([`super`]) and the CLI's client
//! ([`super::client`]): a member renamed on one side is renamed on the other, and a member one
//! side reads that the other no longer writes does not compile. These are the admin API's own
//! shapes, not the store's records, which the server converts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fleet::wire::ActionKind;

/// `POST /tokens`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct NewToken {
    /// A policy of the active release.
    pub(crate) policy_id: String,
    /// A note for `tokens list`.
    #[serde(default)]
    pub(crate) name: Option<String>,
}

/// The answer to `POST /tokens`: the one time the token is shown.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TokenCreated {
    pub(crate) id: String,
    /// `base64(id:secret)`, what `elastic-agent install --enrollment-token` takes.
    pub(crate) token: String,
    pub(crate) policy_id: String,
    pub(crate) name: Option<String>,
}

/// An entry of `GET /tokens`: no secret, which is not kept.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Token {
    pub(crate) id: String,
    pub(crate) policy_id: String,
    pub(crate) name: Option<String>,
    pub(crate) created: String,
    pub(crate) revoked: bool,
}

/// The answer to `POST /tokens/{id}/revoke` and `POST /agents/{id}/revoke`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Revoked {
    pub(crate) revoked: bool,
}

/// `PUT /secrets/{id}`: the value, which the admin API never answers, lists or logs.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetSecret {
    /// UTF-8, 1 byte to 64 KiB.
    pub(crate) value: String,
}

impl std::fmt::Debug for SetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A stray `{:?}` must not print it.
        f.debug_struct("SetSecret").finish_non_exhaustive()
    }
}

/// An entry of `GET /secrets`, and the answer to `PUT /secrets/{id}`: never the value.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Secret {
    /// The Fleet secret id policies name it by.
    pub(crate) id: String,
    pub(crate) set_at: String,
    /// The policies of the active release that name it (not filled in yet: empty).
    #[serde(default)]
    pub(crate) used_by: Vec<String>,
}

/// The answer to `DELETE /secrets/{id}`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Removed {
    pub(crate) removed: bool,
}

/// The query of `GET /agents`: a page of the list, in enrollment order (`enrolled_at`, then id).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct AgentsQuery {
    /// Only agents of this policy.
    pub(crate) policy: Option<String>,
    /// At most this many agents (default [`super::PAGE`]).
    pub(crate) limit: Option<usize>,
    /// The page starts after this agent id: the last one of the previous page.
    pub(crate) after: Option<String>,
}

/// An agent as `GET /agents/{id}` shows it, and, without the bulky members an agent fills as
/// it likes, as `GET /agents` lists it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Agent {
    /// `unenrolled`, `enrolled` (never checked in), `offline`, `updating`, or what the agent
    /// reports: `online`, `degraded`, `error`, `starting`.
    pub(crate) status: String,
    pub(crate) id: String,
    pub(crate) active: bool,
    pub(crate) policy_id: String,
    pub(crate) policy_revision: u64,
    pub(crate) version: String,
    pub(crate) hostname: String,
    pub(crate) enrolled_at: String,
    pub(crate) last_checkin: Option<String>,
    pub(crate) last_status: Option<String>,
    pub(crate) last_message: Option<String>,
    pub(crate) tags: Value,
    /// Only in `GET /agents/{id}` (where it may be `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) local_metadata: Option<Value>,
    /// Only in `GET /agents/{id}` (where it may be `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) components: Option<Value>,
    pub(crate) upgrade_state: Option<String>,
    pub(crate) upgrade_target: Option<String>,
    /// In the list, only `metadata.download_percent` (the UPGRADE column), or `null`.
    pub(crate) upgrade_details: Value,
    pub(crate) upgraded_at: Option<String>,
    pub(crate) unenrolled_at: Option<String>,
    pub(crate) audit_unenroll_reason: Option<String>,
    /// The cluster instance whose check-in wrote the agent's record last; `null` on a single
    /// appliance (and absent from the answers of servers from before clusters).
    #[serde(default)]
    pub(crate) instance: Option<String>,
}

/// What `POST /actions` asks for, tagged by the action's `type` (spelled as
/// [`ActionKind::as_str`]: a test holds the two together).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ActionRequest {
    Upgrade {
        version: String,
    },
    Unenroll,
    PolicyReassign {
        policy_id: String,
    },
    Settings {
        log_level: String,
    },
    RequestDiagnostics {
        #[serde(default)]
        additional_metrics: Vec<String>,
    },
    Cancel {
        target_id: String,
    },
}

impl ActionRequest {
    /// The kind of action this creates.
    pub(crate) fn kind(&self) -> ActionKind {
        match self {
            ActionRequest::Upgrade { .. } => ActionKind::Upgrade,
            ActionRequest::Unenroll => ActionKind::Unenroll,
            ActionRequest::PolicyReassign { .. } => ActionKind::PolicyReassign,
            ActionRequest::Settings { .. } => ActionKind::Settings,
            ActionRequest::RequestDiagnostics { .. } => ActionKind::RequestDiagnostics,
            ActionRequest::Cancel { .. } => ActionKind::Cancel,
        }
    }
}

/// `POST /actions`: one action for some agents.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CreateActions {
    #[serde(flatten)]
    pub(crate) action: ActionRequest,
    /// Target agents by id…
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) agents: Vec<String>,
    /// …or every active agent of a policy (a cancel names neither: it goes to the cancelled
    /// action's agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) policy: Option<String>,
    /// Default [`super::DEFAULT_EXPIRY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires_in_seconds: Option<u64>,
    /// RFC 3339; only upgrades are scheduled by agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) start_time: Option<String>,
}

/// The answer to `POST /actions`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ActionsCreated {
    pub(crate) action_id: String,
    #[serde(rename = "type")]
    pub(crate) kind: ActionKind,
    pub(crate) created_at: String,
    /// The agents it was queued for.
    pub(crate) agents: Vec<String>,
    /// What the operator should know (the platforms an upgrade has archives for).
    pub(crate) notes: Vec<String>,
}

/// The answer to `GET /actions/{id}`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ActionStatus {
    pub(crate) action_id: String,
    pub(crate) agents: Vec<ActionTarget>,
}

/// An agent an action is for, and its acknowledgement.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ActionTarget {
    pub(crate) agent_id: String,
    pub(crate) acknowledged: bool,
    /// The error the agent acknowledged with.
    pub(crate) error: Option<String>,
}

/// An entry of `GET /uploads`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Upload {
    pub(crate) id: String,
    pub(crate) action_id: String,
    pub(crate) agent_id: String,
    /// The agent's name for the file: shown, never used as a path.
    pub(crate) name: String,
    pub(crate) mime_type: String,
    pub(crate) size: u64,
    pub(crate) chunk_size: u64,
    /// `AWAITING_UPLOAD`, `READY` or `UPLOAD_ERROR`.
    pub(crate) status: String,
    pub(crate) created: String,
    pub(crate) completed: Option<String>,
    /// The whole file's SHA-256, once complete.
    pub(crate) sha256: Option<String>,
}

/// What `GET /status` answers, and `status` reports from the data directory when no server
/// runs.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StatusReport {
    pub(crate) server: Server,
    /// What `/api/status` answers; `null` without a server.
    pub(crate) status: Option<String>,
    /// Whether the server drains (`ferry-appliance drain`); false without a server (a restart
    /// ends a drain), and in the answers of servers from before draining.
    #[serde(default)]
    pub(crate) draining: bool,
    /// The active pointer's release, whether or not it verifies.
    pub(crate) active: Option<ActiveRelease>,
    /// Whether the active release verifies.
    pub(crate) loaded: bool,
    /// Whether a server serves it.
    pub(crate) served: bool,
    /// The check the active release fails.
    pub(crate) check: Option<String>,
    /// Why nothing is served, naming the fix.
    pub(crate) message: Option<String>,
    pub(crate) agents: AgentCounts,
    /// The site's Elasticsearch as the server last saw it; absent without `[elasticsearch]`
    /// or without a server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) elasticsearch: Option<crate::elastic::Health>,
    /// Policies of the active release that are not delivered, and why (agents keep the one
    /// they run).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) policies_held: BTreeMap<String, String>,
    /// The address the agent listener is bound to (the configured one, with its port when
    /// that was 0); absent without a server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// The state store's error, when it did not answer (the agent counts are then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) database: Option<String>,
    /// What `health` decided, check by check, and its one line: filled in by the CLI, which
    /// also reads the listener, the certificate and the disk on this host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) checks: Vec<crate::health::Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) verdict: Option<String>,
}

/// The answer to `POST /drain` (start draining) and `DELETE /drain` (end it).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Drain {
    /// Whether the server drains now.
    pub(crate) draining: bool,
    /// What `/api/status` answers now.
    pub(crate) status: String,
    /// Check-ins that were parked when draining started (0 for `DELETE`, or when it drained
    /// already).
    pub(crate) parked_before: usize,
    /// Check-ins still parked when the answer was written: `POST` waits up to 10 s for those
    /// parked before to be answered (a check-in is parked again only once draining ends).
    pub(crate) parked: usize,
}

/// Whether a server runs on the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Server {
    Running,
    Stopped,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ActiveRelease {
    pub(crate) name: String,
    pub(crate) sequence: u64,
    /// RFC 3339, when it verifies (absent from servers from before `health`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires: Option<String>,
    /// How old what it carries is, when it verifies (absent from servers from before
    /// freshness was reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<Content>,
}

/// How old a release's content is, so an operator knows when to bring a new bundle: when the
/// bundle was built, and when Elastic made the newest of each kind of content it carries (as
/// the files themselves say, recorded by `ferry build`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Content {
    /// When the bundle was built (RFC 3339): the age of everything it fetched.
    pub(crate) built: String,
    /// The Elastic Agent versions it carries, oldest first.
    pub(crate) agent_versions: Vec<String>,
    /// How many integration packages it carries.
    pub(crate) packages: usize,
    /// When the newest of them was made (RFC 3339), if any says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) newest_package: Option<String>,
    /// Elastic Defend's global artifact manifests, one per Endpoint version, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) defend: Vec<DefendManifest>,
}

/// One Elastic Defend manifest a release carries.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct DefendManifest {
    pub(crate) endpoint_version: String,
    /// The manifest's own `manifest_version`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) manifest_version: Option<String>,
    /// When its `manifest.json` was written (RFC 3339), if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) date: Option<String>,
}

/// Enrolled agents by the status `agents list` shows.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct AgentCounts {
    pub(crate) total: usize,
    pub(crate) by_status: BTreeMap<String, usize>,
    /// Since the server started (absent without one): reports with fields over their caps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reports_trimmed: Option<u64>,
    /// Since the server started (absent without one): check-ins superseded by a newer one of
    /// the same agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) checkins_superseded: Option<u64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn action_requests_are_tagged_with_their_kind() {
        for request in [
            ActionRequest::Upgrade { version: "9.2.2".into() },
            ActionRequest::Unenroll,
            ActionRequest::PolicyReassign { policy_id: "p".into() },
            ActionRequest::Settings { log_level: "debug".into() },
            ActionRequest::RequestDiagnostics { additional_metrics: vec!["CPU".into()] },
            ActionRequest::Cancel { target_id: "a".into() },
        ] {
            let v = serde_json::to_value(&request).unwrap();
            assert_eq!(v["type"], request.kind().as_str(), "{request:?}");
        }
    }

    #[test]
    fn create_actions_reads_what_it_writes() {
        let request = CreateActions {
            action: ActionRequest::Upgrade { version: "9.2.2".into() },
            agents: vec!["a-1".into()],
            policy: None,
            expires_in_seconds: Some(86_400),
            start_time: Some("2026-01-02T03:04:05Z".into()),
        };
        let v = serde_json::to_value(&request).unwrap();
        assert_eq!(
            v,
            json!({ "type": "UPGRADE", "version": "9.2.2", "agents": ["a-1"],
                    "expires_in_seconds": 86400, "start_time": "2026-01-02T03:04:05Z" })
        );
        let read: CreateActions = serde_json::from_value(v).unwrap();
        assert!(matches!(read.action, ActionRequest::Upgrade { version } if version == "9.2.2"));
        assert_eq!((read.agents, read.policy), (vec!["a-1".to_owned()], None));
        // What earlier CLIs sent: every member, null where unset.
        let read: CreateActions = serde_json::from_value(json!({
            "type": "UNENROLL", "agents": ["a-1"], "policy": null, "expires_in_seconds": 60,
        }))
        .unwrap();
        assert_eq!(read.action.kind(), ActionKind::Unenroll);
    }

    #[test]
    fn a_secret_s_value_is_never_debug_printed() {
        let request: SetSecret = serde_json::from_value(json!({ "value": "hunter2" })).unwrap();
        assert_eq!(request.value, "hunter2");
        assert!(!format!("{request:?}").contains("hunter2"));
        assert!(serde_json::from_value::<SetSecret>(json!({ "value": "v", "x": 1 })).is_err());
        // An answer of a server from before `used_by` reads as used by nothing.
        let listed: Secret = serde_json::from_value(json!({ "id": "a", "set_at": "t" })).unwrap();
        assert!(listed.used_by.is_empty());
    }

    #[test]
    fn an_agent_is_shown_whole_and_listed_without_its_bulky_members() {
        let shown = json!({
            "status": "enrolled", "id": "a-1", "active": true, "policy_id": "p",
            "policy_revision": 0, "version": "9.2.2", "hostname": "web-01",
            "enrolled_at": "2026-01-02T03:04:05Z", "last_checkin": null, "last_status": null,
            "last_message": null, "tags": [], "local_metadata": { "host": {} },
            "components": null, "upgrade_state": null, "upgrade_target": null,
            "upgrade_details": null, "upgraded_at": null, "unenrolled_at": null,
            "audit_unenroll_reason": null, "instance": null,
        });
        let mut agent: Agent = serde_json::from_value(shown.clone()).unwrap();
        // Shown: what was never reported is null.
        agent.components = Some(Value::Null);
        assert_eq!(serde_json::to_value(&agent).unwrap(), shown);
        // Listed: absent, and the client reads such an entry.
        (agent.local_metadata, agent.components) = (None, None);
        let mut listed = shown;
        let members = listed.as_object_mut().unwrap();
        members.remove("local_metadata");
        members.remove("components");
        assert_eq!(serde_json::to_value(&agent).unwrap(), listed);
        assert!(serde_json::from_value::<Agent>(listed).is_ok());
    }
}
