//! The agent API's wire contract: every request body an Elastic Agent sends and every response
//! body it reads, as serde types, each named after its schema in fleet-server's
//! `model/openapi.yml`. Requests are read as elastic-agent's Go code marshals them (the
//! `ferry-wire` corpus is decoded into them below); responses keep each field's type and whether
//! it is `null` or absent, which Go's decoder tells apart where field order does not matter.
//! [`ActionKind`] is the one spelling of an action's type, for the admin API and its CLI too.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// For fields Go can send as `null`: a slice or map without `omitempty` that was nil. Such a
/// field reads as its empty value, wherever an empty one is accepted.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(<Option<T> as Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// Declares [`ActionKind`] with each type's spelling written once: the enum, `ALL` and
/// `as_str` cannot disagree.
macro_rules! action_kinds {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// An action's `type`, spelled as Fleet does (fleet-server model/openapi.yml, `action`):
        /// the kinds this appliance creates or sends. Stored by [`ActionKind::as_str`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum ActionKind {
            $($(#[$doc])* $variant,)*
        }

        impl ActionKind {
            pub(crate) const ALL: &[ActionKind] = &[$(ActionKind::$variant),*];

            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(ActionKind::$variant => $name,)*
                }
            }
        }
    };
}

action_kinds! {
    /// Carries [`UpgradeData`].
    Upgrade = "UPGRADE",
    /// No data: the agent stops, acknowledges, and its key is revoked on the ack.
    Unenroll = "UNENROLL",
    /// Never stored: made at check-in from the policy the agent should run (§4.3).
    PolicyChange = "POLICY_CHANGE",
    /// Carries [`PolicyReassignData`].
    PolicyReassign = "POLICY_REASSIGN",
    /// Carries [`SettingsData`].
    Settings = "SETTINGS",
    /// Carries [`RequestDiagnosticsData`]; the one kind that opens an upload.
    RequestDiagnostics = "REQUEST_DIAGNOSTICS",
    /// Carries [`CancelData`]; agents never acknowledge it.
    Cancel = "CANCEL",
}

impl ActionKind {
    /// The kind stored as `text`, if it is one.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ActionKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ActionKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown action type {text:?}")))
    }
}

/// `enrollRequest` (elastic-agent pkg/fleetapi/enroll_cmd.go `EnrollRequest`).
#[derive(Deserialize)]
pub(crate) struct EnrollRequest {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) replace_token: String,
    pub(crate) metadata: EnrollMetadata,
}

/// elastic-agent's `fleetapi.Metadata` (pkg/fleetapi/enroll_cmd.go): `tags` and
/// `user_provided` have no `omitempty`, and an agent installed without `--tag` (or re-enrolled
/// by a migration) sends nil as `null`. `user_provided` is ignored, as Fleet Server does.
#[derive(Deserialize)]
pub(crate) struct EnrollMetadata {
    pub(crate) local: Value,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) tags: Vec<String>,
}

/// `enrollResponse`.
#[derive(Serialize)]
pub(crate) struct EnrollResponse<'a> {
    /// Always `created`.
    action: &'static str,
    item: EnrollResponseItem<'a>,
}

impl<'a> EnrollResponse<'a> {
    pub(crate) fn created(item: EnrollResponseItem<'a>) -> Self {
        Self { action: "created", item }
    }
}

/// `enrollResponseItem`: every required member. `actions` (optional, unused by agents) is
/// left out.
#[derive(Serialize)]
pub(crate) struct EnrollResponseItem<'a> {
    pub(crate) id: &'a str,
    /// Always true: Fleet never enrolls an inactive agent.
    pub(crate) active: bool,
    pub(crate) policy_id: &'a str,
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
    /// RFC 3339: elastic-agent decodes it into a `time.Time`.
    pub(crate) enrolled_at: &'a str,
    /// Always `null`: Fleet Server copies the request's `user_provided`, which the appliance
    /// does not keep (and agents do not read back).
    pub(crate) user_provided_metadata: (),
    pub(crate) local_metadata: &'a Value,
    pub(crate) access_api_key_id: &'a str,
    pub(crate) access_api_key: &'a str,
    /// Always `online`, as Fleet Server answers.
    pub(crate) status: &'static str,
    pub(crate) tags: &'a [String],
}

/// `checkinRequest`. Everything but `status` may be absent; `status` is checked by the route.
#[derive(Deserialize)]
pub(crate) struct CheckinRequest {
    #[serde(default)]
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default)]
    pub(crate) ack_token: Option<String>,
    /// Kept as sent: stored as text, and parsed only when over its cap (an agent's metadata
    /// is some 60 values, each its own allocation once parsed, on every check-in).
    #[serde(default)]
    pub(crate) local_metadata: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) components: Option<Box<RawValue>>,
    /// Kept as a value: odd upgrade metadata must never fail a check-in (§7.18).
    #[serde(default)]
    pub(crate) upgrade_details: Option<Value>,
    #[serde(default)]
    pub(crate) agent_policy_id: Option<String>,
    #[serde(default)]
    pub(crate) policy_revision_idx: Option<u64>,
}

/// `checkinResponse`. `actions` is absent when there are none, as Fleet Server leaves it out
/// of a long poll that ran out.
#[derive(Serialize)]
pub(crate) struct CheckinResponse<'a> {
    /// Always `checkin`.
    action: &'static str,
    /// The id of the last action delivered, `""` when none is a stored one.
    ack_token: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    actions: &'a [Action<'a>],
}

impl<'a> CheckinResponse<'a> {
    pub(crate) fn new(ack_token: &'a str, actions: &'a [Action<'a>]) -> Self {
        Self { action: "checkin", ack_token, actions }
    }
}

/// `action`, the envelope every action reaches an agent in, stored or made at check-in. Field
/// order is the one the policy change was hand-written in before, so its bytes stay the same.
#[derive(Serialize)]
pub(crate) struct Action<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: ActionKind,
    agent_id: &'a str,
    created_at: &'a str,
    /// Required by the schema, meaningful only for `INPUT_ACTION`, which this appliance does
    /// not send: always `""`.
    input_type: &'static str,
    data: ActionData<'a>,
    /// The latest start: agents drop the action unrun past it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expiration: Option<&'a str>,
    /// The earliest start (a scheduled upgrade).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) start_time: Option<&'a str>,
}

impl<'a> Action<'a> {
    pub(crate) fn new(
        id: &'a str,
        kind: ActionKind,
        agent_id: &'a str,
        created_at: &'a str,
        data: ActionData<'a>,
    ) -> Self {
        Self {
            id,
            kind,
            agent_id,
            created_at,
            input_type: "",
            data,
            expiration: None,
            start_time: None,
        }
    }
}

/// An action's `data`.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum ActionData<'a> {
    /// As stored when the action was created (one of the `*Data` types below), copied as it
    /// is; `None` (UNENROLL) is `null`.
    Stored(Option<&'a RawValue>),
    /// `actionPolicyChange`: the policy, serialised once per release and copied into each
    /// response rather than encoded again for each of the agents a new release wakes at once.
    PolicyChange { policy: &'a RawValue },
}

/// `actionUpgrade`.
#[derive(Serialize)]
pub(crate) struct UpgradeData<'a> {
    pub(crate) version: &'a str,
    /// Where the agent downloads from: this appliance's mirror (`…/downloads/`).
    pub(crate) source_uri: &'a str,
}

/// `actionPolicyReassign`.
#[derive(Serialize)]
pub(crate) struct PolicyReassignData<'a> {
    pub(crate) policy_id: &'a str,
}

/// `actionSettings`.
#[derive(Serialize)]
pub(crate) struct SettingsData<'a> {
    pub(crate) log_level: &'a str,
}

/// `actionRequestDiagnostics`.
#[derive(Serialize)]
pub(crate) struct RequestDiagnosticsData<'a> {
    pub(crate) additional_metrics: &'a [String],
}

/// `actionCancel`.
#[derive(Serialize)]
pub(crate) struct CancelData<'a> {
    pub(crate) target_id: &'a str,
}

/// `ackRequest` (elastic-agent pkg/fleetapi/ack_cmd.go `AckRequest`): `events` has no
/// `omitempty`, so a nil batch is `null`.
#[derive(Deserialize)]
pub(crate) struct AckRequest {
    #[serde(deserialize_with = "nullable")]
    pub(crate) events: Vec<AckEvent>,
}

/// One event of an `ackRequest` (`genericEvent`, `upgradeEvent`, `diagnosticsEvent`): what
/// the route reads of any of them.
#[derive(Deserialize)]
pub(crate) struct AckEvent {
    #[serde(default)]
    pub(crate) action_id: String,
    #[serde(default)]
    pub(crate) agent_id: String,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default)]
    pub(crate) data: Option<Value>,
    #[serde(default)]
    pub(crate) payload: Option<Value>,
}

/// `ackResponse`. `items` is always sent, `[]` for an empty batch (Fleet Server's `omitempty`
/// leaves it out; both decode to an empty slice); `errors` only when true, as `omitempty` does.
#[derive(Serialize)]
pub(crate) struct AckResponse {
    /// Always `acks`.
    action: &'static str,
    items: Vec<AckResponseItem>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    errors: bool,
}

impl AckResponse {
    /// The response for `items`, in the request's order; `errors` when any is not a 200.
    pub(crate) fn new(items: Vec<AckResponseItem>) -> Self {
        let errors = items.iter().any(|item| item.status != 200);
        Self { action: "acks", items, errors }
    }
}

/// `ackResponseItem`: an HTTP status and its reason phrase.
#[derive(Serialize)]
pub(crate) struct AckResponseItem {
    pub(crate) status: u16,
    pub(crate) message: &'static str,
}

/// `auditUnenrollRequest`. The response is an empty 200.
#[derive(Deserialize)]
pub(crate) struct AuditUnenrollRequest {
    pub(crate) reason: String,
    #[serde(default)]
    pub(crate) timestamp: Option<String>,
}

/// `uploadBeginRequest` (elastic-agent internal/pkg/fleetapi/uploader/uploader.go): what the
/// route reads of it; the rest (`contents: null`, an empty `hash`) is ignored.
#[derive(Deserialize)]
pub(crate) struct UploadBeginRequest {
    pub(crate) action_id: String,
    pub(crate) agent_id: String,
    pub(crate) src: String,
    pub(crate) file: UploadFile,
}

/// `uploadBeginRequest.file`.
#[derive(Deserialize)]
pub(crate) struct UploadFile {
    pub(crate) name: String,
    pub(crate) mime_type: String,
    pub(crate) size: u64,
}

/// `uploadBeginResponse`.
#[derive(Serialize)]
pub(crate) struct UploadBeginResponse<'a> {
    pub(crate) upload_id: &'a str,
    pub(crate) chunk_size: u64,
}

/// `uploadCompleteRequest`.
#[derive(Deserialize)]
pub(crate) struct UploadCompleteRequest {
    pub(crate) transithash: TransitHash,
}

/// `uploadCompleteRequest.transithash`: SHA-256 over the chunks' digests in order.
#[derive(Deserialize)]
pub(crate) struct TransitHash {
    pub(crate) sha256: String,
}

/// The `200` of `POST /api/fleet/uploads/{id}` (inline in openapi.yml's `uploadComplete`).
#[derive(Serialize)]
pub(crate) struct UploadCompleteResponse {
    /// Always `ok`.
    status: &'static str,
}

impl UploadCompleteResponse {
    pub(crate) const OK: Self = Self { status: "ok" };
}

/// `statusResponse`, without the `version` Fleet Server adds only for an authenticated caller.
#[derive(Serialize)]
pub(crate) struct StatusResponse {
    /// Always `fleet-server`: what probes of `fleet.hosts` look for.
    name: &'static str,
    status: &'static str,
}

impl StatusResponse {
    pub(crate) fn new(status: &'static str) -> Self {
        Self { name: "fleet-server", status }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A JSON type as openapi.yml names it; `Any` for `json.RawMessage` members.
    #[derive(Clone, Copy, Debug)]
    enum Type {
        String,
        Boolean,
        Integer,
        Array,
        Object,
        Any,
    }

    /// A schema's members, each with its type.
    type Members = &'static [(&'static str, Type)];

    /// Checks `value` against a schema of openapi.yml: every required member present with its
    /// type, every other member one of the schema's optional ones with its type.
    #[track_caller]
    fn conforms(value: &Value, required: Members, optional: Members) {
        let members = value.as_object().expect("an object");
        let of_type = |v: &Value, t: Type| match t {
            Type::String => v.is_string(),
            Type::Boolean => v.is_boolean(),
            Type::Integer => v.is_u64() || v.is_i64(),
            Type::Array => v.is_array(),
            Type::Object => v.is_object(),
            Type::Any => true,
        };
        for (name, t) in required {
            let v = members.get(*name).unwrap_or_else(|| panic!("{name} is required: {value}"));
            assert!(of_type(v, *t), "{name} is not {t:?}: {value}");
        }
        for (name, v) in members {
            let schema = required.iter().chain(optional).find(|(n, _)| n == name);
            let (_, t) = schema.unwrap_or_else(|| panic!("{name} is not in the schema: {value}"));
            assert!(of_type(v, *t), "{name} is not {t:?}: {value}");
        }
    }

    #[test]
    fn enroll_response_is_an_enroll_response() {
        let local = json!({ "host": { "hostname": "web-01" } });
        let tags = ["a".to_owned(), "b".to_owned()];
        let response = EnrollResponse::created(EnrollResponseItem {
            id: "agent-1",
            active: true,
            policy_id: "p",
            kind: "PERMANENT",
            enrolled_at: "2026-01-02T03:04:05Z",
            user_provided_metadata: (),
            local_metadata: &local,
            access_api_key_id: "key-id",
            access_api_key: "a2V5LWlkOnNlY3JldA==",
            status: "online",
            tags: &tags,
        });
        let v = serde_json::to_value(&response).unwrap();
        conforms(&v, &[("action", Type::String), ("item", Type::Object)], &[]);
        use Type::*;
        conforms(
            &v["item"],
            &[
                ("id", String),
                ("active", Boolean),
                ("policy_id", String),
                ("type", String),
                ("enrolled_at", String),
                ("user_provided_metadata", Any),
                ("local_metadata", Any),
                ("access_api_key_id", String),
                ("access_api_key", String),
                ("status", String),
                ("tags", Array),
            ],
            &[("actions", Array)],
        );
        assert_eq!(
            v,
            json!({ "action": "created", "item": {
                "id": "agent-1", "active": true, "policy_id": "p", "type": "PERMANENT",
                "enrolled_at": "2026-01-02T03:04:05Z", "user_provided_metadata": null,
                "local_metadata": { "host": { "hostname": "web-01" } },
                "access_api_key_id": "key-id", "access_api_key": "a2V5LWlkOnNlY3JldA==",
                "status": "online", "tags": ["a", "b"],
            }})
        );
    }

    /// `action`'s members.
    const ACTION: (Members, Members) = (
        &[
            ("agent_id", Type::String),
            ("created_at", Type::String),
            ("data", Type::Any),
            ("id", Type::String),
            ("type", Type::String),
            ("input_type", Type::String),
        ],
        &[
            ("start_time", Type::String),
            ("expiration", Type::String),
            ("traceparent", Type::String),
            ("timeout", Type::Integer),
            ("signed", Type::Object),
        ],
    );

    /// `checkinResponse`'s members.
    const CHECKIN: (Members, Members) =
        (&[("action", Type::String)], &[("ack_token", Type::String), ("actions", Type::Array)]);

    #[test]
    fn checkin_responses_are_checkin_responses() {
        let nothing = serde_json::to_value(CheckinResponse::new("", &[])).unwrap();
        conforms(&nothing, CHECKIN.0, CHECKIN.1);
        assert_eq!(nothing, json!({ "action": "checkin", "ack_token": "" }));

        let data = serde_json::from_str::<&RawValue>(r#"{"version":"9.2.2"}"#).unwrap();
        let mut upgrade = Action::new(
            "a-1",
            ActionKind::Upgrade,
            "agent-1",
            "t0",
            ActionData::Stored(Some(data)),
        );
        upgrade.expiration = Some("t9");
        upgrade.start_time = Some("t1");
        let unenroll =
            Action::new("a-2", ActionKind::Unenroll, "agent-1", "t0", ActionData::Stored(None));
        let actions = [upgrade, unenroll];
        let v = serde_json::to_value(CheckinResponse::new("a-2", &actions)).unwrap();
        conforms(&v, CHECKIN.0, CHECKIN.1);
        for action in v["actions"].as_array().unwrap() {
            conforms(action, ACTION.0, ACTION.1);
        }
        assert_eq!(
            v["actions"],
            json!([
                { "id": "a-1", "type": "UPGRADE", "agent_id": "agent-1", "created_at": "t0",
                  "input_type": "", "data": { "version": "9.2.2" }, "expiration": "t9",
                  "start_time": "t1" },
                // No data is null, not absent; no expiration or start time is absent.
                { "id": "a-2", "type": "UNENROLL", "agent_id": "agent-1", "created_at": "t0",
                  "input_type": "", "data": null },
            ])
        );
    }

    #[test]
    fn a_policy_change_is_the_policy_text_in_its_envelope() {
        let policy = serde_json::value::to_raw_value(&json!({ "id": "p", "revision": 3 })).unwrap();
        let change = [Action::new(
            "policy:p:3",
            ActionKind::PolicyChange,
            "agent-1",
            "t0",
            ActionData::PolicyChange { policy: &policy },
        )];
        let text = serde_json::to_string(&CheckinResponse::new("", &change)).unwrap();
        // Byte for byte what the hand-written body was.
        assert_eq!(
            text,
            r#"{"action":"checkin","ack_token":"","actions":[{"id":"policy:p:3","type":"POLICY_CHANGE","agent_id":"agent-1","created_at":"t0","input_type":"","data":{"policy":{"id":"p","revision":3}}}]}"#
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        conforms(&v["actions"][0], ACTION.0, ACTION.1);
        // `actionPolicyChange`: `policy` is required.
        conforms(&v["actions"][0]["data"], &[("policy", Type::Object)], &[]);
    }

    #[test]
    fn action_data_are_their_schemas() {
        use Type::*;
        let metrics = ["CPU".to_owned()];
        for (data, required, optional) in [
            (
                serde_json::to_value(UpgradeData { version: "9.2.2", source_uri: "u" }),
                &[("version", String)][..],
                &[("source_uri", String), ("rollback", Boolean)][..],
            ),
            (
                serde_json::to_value(PolicyReassignData { policy_id: "p" }),
                &[("policy_id", String)],
                &[],
            ),
            (
                serde_json::to_value(SettingsData { log_level: "debug" }),
                &[],
                &[("log_level", String)],
            ),
            (
                serde_json::to_value(RequestDiagnosticsData { additional_metrics: &metrics }),
                &[],
                &[("additional_metrics", Array), ("exclude_events_log", Boolean)],
            ),
            (serde_json::to_value(CancelData { target_id: "a" }), &[("target_id", String)], &[]),
        ] {
            conforms(&data.unwrap(), required, optional);
        }
    }

    #[test]
    fn ack_responses_are_ack_responses() {
        use Type::*;
        let schema = (&[("action", String)][..], &[("errors", Boolean), ("items", Array)][..]);
        let item = (&[("status", Integer)][..], &[("message", String)][..]);
        let ok = serde_json::to_value(AckResponse::new(vec![AckResponseItem {
            status: 200,
            message: "OK",
        }]))
        .unwrap();
        conforms(&ok, schema.0, schema.1);
        conforms(&ok["items"][0], item.0, item.1);
        assert_eq!(ok, json!({ "action": "acks", "items": [{ "status": 200, "message": "OK" }] }));
        let mixed = serde_json::to_value(AckResponse::new(vec![
            AckResponseItem { status: 200, message: "OK" },
            AckResponseItem { status: 404, message: "Not Found" },
        ]))
        .unwrap();
        conforms(&mixed, schema.0, schema.1);
        assert_eq!(mixed["errors"], true);
        let empty = serde_json::to_value(AckResponse::new(Vec::new())).unwrap();
        assert_eq!(empty, json!({ "action": "acks", "items": [] }));
    }

    #[test]
    fn upload_and_status_responses_are_their_schemas() {
        use Type::*;
        let begin =
            serde_json::to_value(UploadBeginResponse { upload_id: "u-1", chunk_size: 4 << 20 })
                .unwrap();
        conforms(&begin, &[("upload_id", String), ("chunk_size", Integer)], &[]);
        assert_eq!(begin, json!({ "upload_id": "u-1", "chunk_size": 4194304 }));
        let complete = serde_json::to_value(UploadCompleteResponse::OK).unwrap();
        conforms(&complete, &[], &[("status", String)]);
        assert_eq!(complete, json!({ "status": "ok" }));
        let status = serde_json::to_value(StatusResponse::new("HEALTHY")).unwrap();
        conforms(&status, &[("name", String), ("status", String)], &[("version", Object)]);
        assert_eq!(status, json!({ "name": "fleet-server", "status": "HEALTHY" }));
    }

    #[test]
    fn action_kinds_are_spelled_as_fleet_spells_them() {
        let spelled: Vec<&str> = ActionKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            spelled,
            [
                "UPGRADE",
                "UNENROLL",
                "POLICY_CHANGE",
                "POLICY_REASSIGN",
                "SETTINGS",
                "REQUEST_DIAGNOSTICS",
                "CANCEL"
            ]
        );
        for kind in ActionKind::ALL {
            assert_eq!(ActionKind::parse(kind.as_str()), Some(*kind));
            let text = serde_json::to_string(kind).unwrap();
            assert_eq!(serde_json::from_str::<ActionKind>(&text).unwrap(), *kind);
        }
        assert_eq!(ActionKind::parse("FORCE_UNENROLL"), None);
        assert!(serde_json::from_str::<ActionKind>(r#""upgrade""#).is_err());
    }

    /// Values for every placeholder of the corpus, with each `omitempty` member left out
    /// (`full` false) or sent (`full` true).
    fn vars(version: &str, full: bool) -> ferry_wire::Vars {
        let vars = ferry_wire::Vars::new()
            .set("version", version)
            .set("agent_id", "agent-1")
            .set("access_key", "a2V5OnNlY3JldA==")
            .set("enrollment_token", "dG9rZW46c2VjcmV0")
            .set("replace_token", "replace-me")
            .set("hostname", "Web-01")
            .set("action_id", "action-1")
            .set("action_type", "UPGRADE")
            .set("upload_id", "upload-1")
            .set("size", "1024")
            .set(
                "transit_sha256",
                "83810fdc61c44290778c212d7829d0c3f0232e81bd551d3943998a920025d14f",
            );
        if !full {
            return vars;
        }
        let details = ferry_wire::upgrade_details(
            "9.2.2",
            "UPG_DOWNLOADING",
            "action-1",
            &ferry_wire::download_progress(version, 40.5, 1e6),
        );
        vars.set("ack_token", "action-0")
            .set("data", r#"{"x":1}"#)
            .set("error", "it broke")
            .set("payload", r#"{"y":2}"#)
            .set("policy_id", "p")
            .set("policy_revision", "3")
            .set("upgrade_details", details)
    }

    #[track_caller]
    fn decode<T: serde::de::DeserializeOwned>(sample: &str, json: &str) -> T {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{sample}: {e}\n{json}"))
    }

    #[test]
    fn every_request_of_the_corpus_decodes_into_its_type() {
        use ferry_wire::Kind;
        for sample in ferry_wire::corpus() {
            for version in sample.first_versions() {
                for full in [false, true] {
                    let json = sample.render(&vars(&version.to_string(), full)).json;
                    match sample.kind {
                        Kind::Enroll => {
                            let r: EnrollRequest = decode(sample.name, &json);
                            assert!(r.metadata.local.is_object(), "{}", sample.name);
                        }
                        Kind::Checkin => {
                            let r: CheckinRequest = decode(sample.name, &json);
                            assert!(!r.status.is_empty(), "{}", sample.name);
                            let reports_upgrades = sample.body.contains("upgrade_details");
                            assert_eq!(
                                r.upgrade_details.is_some(),
                                full && reports_upgrades,
                                "{}",
                                sample.name
                            );
                        }
                        Kind::Ack => {
                            let r: AckRequest = decode(sample.name, &json);
                            assert_eq!(r.events[0].action_id, "action-1", "{}", sample.name);
                            assert_eq!(r.events[0].error.is_some(), full, "{}", sample.name);
                        }
                        Kind::AuditUnenroll => {
                            let r: AuditUnenrollRequest = decode(sample.name, &json);
                            assert!(!r.reason.is_empty(), "{}", sample.name);
                        }
                        Kind::UploadBegin => {
                            let r: UploadBeginRequest = decode(sample.name, &json);
                            assert_eq!(r.file.size, 1024, "{}", sample.name);
                        }
                        Kind::UploadFinish => {
                            let r: UploadCompleteRequest = decode(sample.name, &json);
                            assert!(!r.transithash.sha256.is_empty(), "{}", sample.name);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn go_nil_slices_read_as_empty() {
        let r: AckRequest = serde_json::from_str(r#"{"events":null}"#).unwrap();
        assert!(r.events.is_empty());
        let r: EnrollRequest =
            serde_json::from_str(r#"{"type":"PERMANENT","metadata":{"local":{},"tags":null}}"#)
                .unwrap();
        assert!(r.metadata.tags.is_empty());
        // Absent is not accepted where Go always sends the member.
        assert!(serde_json::from_str::<AckRequest>("{}").is_err());
    }
}
