//! Request bodies and query parameters of Elasticsearch's security API as Rust types, each
//! written from the TypeScript file of Elastic's specification (elastic/elasticsearch-specification)
//! it cites: a body the appliance sends must parse into these (unknown fields refused, required
//! fields required), which is what "held to the spec" means for the double.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// `Metadata` in `specification/_types/common.ts`: `Dictionary<string, UserDefinedValue>`.
pub(crate) type Metadata = Map<String, Value>;

/// `T | T[]`, the spec's shape for `Ids`, `Names`, `Fields` and `IndexName | IndexName[]`
/// (`specification/_types/common.ts`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub(crate) fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        }
    }
}

/// `Duration` in `specification/_types/Time.ts`: `string | -1 | 0`, the string being
/// Elasticsearch's `TimeValue` (a number and one of the units `nanos`, `micros`, `ms`, `s`,
/// `m`, `h`, `d`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Duration {
    Number(i64),
    Text(String),
}

impl Duration {
    /// The duration in milliseconds, `None` for `-1` (no expiry), or why it is not one.
    pub(crate) fn millis(&self) -> Result<Option<i64>, String> {
        let text = match self {
            Duration::Number(-1) => return Ok(None),
            Duration::Number(0) => return Ok(Some(0)),
            Duration::Number(n) => {
                return Err(format!("expiration [{n}]: a number must be -1 or 0"));
            }
            Duration::Text(t) => t.trim(),
        };
        if text == "-1" {
            return Ok(None);
        }
        if text == "0" {
            return Ok(Some(0));
        }
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit_ms: f64 = match unit {
            "nanos" => 1e-6,
            "micros" => 1e-3,
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => {
                return Err(format!(
                    "failed to parse [{text}] as a time value: unit is missing or unrecognized"
                ));
            }
        };
        let number: u64 =
            number.parse().map_err(|_| format!("failed to parse [{text}] as a time value"))?;
        Ok(Some((number as f64 * unit_ms) as i64))
    }
}

/// `RoleDescriptor` in `specification/security/_types/RoleDescriptor.ts`. The privilege
/// enums (`ClusterPrivilege`, `IndexPrivilege` in `specification/security/_types/Privileges.ts`)
/// are `@non_exhaustive`, so any string is taken as a privilege name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Parsed to be checked; the raw JSON is what the double keeps.
pub(crate) struct RoleDescriptor {
    pub cluster: Option<Vec<String>>,
    pub indices: Option<Vec<IndicesPrivileges>>,
    pub remote_indices: Option<Vec<RemoteIndicesPrivileges>>,
    pub remote_cluster: Option<Vec<RemoteClusterPrivileges>>,
    pub global: Option<OneOrMany<GlobalPrivilege>>,
    pub applications: Option<Vec<ApplicationPrivileges>>,
    pub metadata: Option<Metadata>,
    pub run_as: Option<Vec<String>>,
    pub description: Option<String>,
    pub restriction: Option<Restriction>,
    pub transient_metadata: Option<Metadata>,
}

impl RoleDescriptor {
    /// True when the descriptor grants nothing: what Elasticsearch demands of every role
    /// descriptor of a key created by an API key (the NOTE on `role_descriptors` in
    /// `specification/security/create_api_key/SecurityCreateApiKeyRequest.ts`).
    pub(crate) fn grants_nothing(&self) -> bool {
        fn empty<T>(v: &Option<Vec<T>>) -> bool {
            v.as_ref().is_none_or(Vec::is_empty)
        }
        empty(&self.cluster)
            && empty(&self.indices)
            && empty(&self.remote_indices)
            && empty(&self.remote_cluster)
            && empty(&self.applications)
            && empty(&self.run_as)
            && self.global.is_none()
    }
}

/// `IndicesPrivileges` (= `IndicesPrivilegesBase`) in `specification/security/_types/Privileges.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct IndicesPrivileges {
    pub field_security: Option<FieldSecurity>,
    pub names: OneOrMany<String>,
    pub privileges: Vec<String>,
    pub query: Option<IndicesPrivilegesQuery>,
    pub allow_restricted_indices: Option<bool>,
}

/// `RemoteIndicesPrivileges` in `specification/security/_types/Privileges.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct RemoteIndicesPrivileges {
    pub clusters: OneOrMany<String>,
    pub field_security: Option<FieldSecurity>,
    pub names: OneOrMany<String>,
    pub privileges: Vec<String>,
    pub query: Option<IndicesPrivilegesQuery>,
    pub allow_restricted_indices: Option<bool>,
}

/// `RemoteClusterPrivileges` in `specification/security/_types/Privileges.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct RemoteClusterPrivileges {
    pub clusters: OneOrMany<String>,
    pub privileges: Vec<String>,
}

/// `IndicesPrivilegesQuery` in `specification/security/_types/Privileges.ts`:
/// `string | QueryContainer | RoleTemplateQuery`. The double does not evaluate document-level
/// security, so an object is kept as given.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum IndicesPrivilegesQuery {
    Text(String),
    Object(Map<String, Value>),
}

/// `FieldSecurity` in `specification/security/_types/FieldSecurity.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct FieldSecurity {
    pub except: Option<OneOrMany<String>>,
    pub grant: Option<OneOrMany<String>>,
}

/// `ApplicationPrivileges` in `specification/security/_types/Privileges.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct ApplicationPrivileges {
    pub application: String,
    pub privileges: Vec<String>,
    pub resources: Vec<String>,
}

/// `GlobalPrivilege` in `specification/security/_types/Privileges.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct GlobalPrivilege {
    pub application: ApplicationGlobalUserPrivileges,
    pub data_source: Option<Vec<DataSourcePrivileges>>,
}

/// `ApplicationGlobalUserPrivileges` in `specification/security/_types/Privileges.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct ApplicationGlobalUserPrivileges {
    pub manage: ManageUserPrivileges,
}

/// `ManageUserPrivileges` in `specification/security/_types/Privileges.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct ManageUserPrivileges {
    pub applications: Vec<String>,
}

/// `DataSourcePrivileges` in `specification/security/_types/Privileges.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct DataSourcePrivileges {
    pub names: Vec<String>,
    pub privileges: Vec<String>,
}

/// `Restriction` in `specification/security/_types/RoleDescriptor.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct Restriction {
    pub workflows: Vec<String>,
}

/// The body of `specification/security/create_api_key/SecurityCreateApiKeyRequest.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateApiKeyRequest {
    pub expiration: Option<Duration>,
    pub name: Option<String>,
    pub role_descriptors: Option<BTreeMap<String, RoleDescriptor>>,
    pub metadata: Option<Metadata>,
}

/// The body of `specification/security/invalidate_api_key/SecurityInvalidateApiKeyRequest.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvalidateApiKeyRequest {
    pub id: Option<String>,
    pub ids: Option<Vec<String>>,
    pub name: Option<String>,
    pub owner: Option<bool>,
    pub realm_name: Option<String>,
    pub username: Option<String>,
}

/// The body of `specification/security/update_api_key/Request.ts` (the body itself is
/// optional there).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateApiKeyRequest {
    #[allow(dead_code)] // Parsed to be checked; the raw JSON is what the double keeps.
    pub role_descriptors: Option<BTreeMap<String, RoleDescriptor>>,
    pub metadata: Option<Metadata>,
    pub expiration: Option<Duration>,
}

/// The body of `specification/security/bulk_update_api_keys/SecurityBulkUpdateApiKeysRequest.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkUpdateApiKeysRequest {
    pub expiration: Option<Duration>,
    pub ids: OneOrMany<String>,
    pub metadata: Option<Metadata>,
    #[allow(dead_code)] // Parsed to be checked; the raw JSON is what the double keeps.
    pub role_descriptors: Option<BTreeMap<String, RoleDescriptor>>,
}

/// The body of `specification/security/query_api_keys/QueryApiKeysRequest.ts`. `query` and
/// `sort` stay JSON here: `query.rs` parses the query container (`ApiKeyQueryContainer` in
/// `specification/security/query_api_keys/types.ts`) and its own errors are Elasticsearch's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryApiKeysRequest {
    #[serde(alias = "aggs")]
    pub aggregations: Option<Map<String, Value>>,
    pub query: Option<Map<String, Value>>,
    pub from: Option<i64>,
    pub sort: Option<Value>,
    pub size: Option<i64>,
    pub search_after: Option<Vec<Value>>,
}

/// The body of `specification/security/has_privileges/SecurityHasPrivilegesRequest.ts`, with
/// `ApplicationPrivilegesCheck` and `IndexPrivilegesCheck` from
/// `specification/security/has_privileges/types.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HasPrivilegesRequest {
    pub application: Option<Vec<ApplicationPrivilegesCheck>>,
    pub cluster: Option<Vec<String>>,
    pub index: Option<Vec<IndexPrivilegesCheck>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplicationPrivilegesCheck {
    pub application: String,
    pub privileges: Vec<String>,
    pub resources: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IndexPrivilegesCheck {
    pub names: OneOrMany<String>,
    pub privileges: Vec<String>,
    #[allow(dead_code)]
    pub allow_restricted_indices: Option<bool>,
}

/// The type of a query parameter, as the spec declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Param {
    Bool,
    Text,
    /// `Refresh` in `specification/_types/common.ts`: `true`, `false` or `wait_for`.
    Refresh,
}

/// `CommonQueryParameters` in `specification/_spec_utils/behaviors.ts`, which every
/// `RequestBase` (`specification/_types/Base.ts`) accepts.
pub(crate) const COMMON_PARAMS: &[(&str, Param)] = &[
    ("error_trace", Param::Bool),
    ("filter_path", Param::Text),
    ("human", Param::Bool),
    ("pretty", Param::Bool),
];

/// `query_parameters` of `SecurityCreateApiKeyRequest.ts`.
pub(crate) const CREATE_PARAMS: &[(&str, Param)] = &[("refresh", Param::Refresh)];

/// `query_parameters` of `SecurityGetApiKeyRequest.ts`.
pub(crate) const GET_PARAMS: &[(&str, Param)] = &[
    ("id", Param::Text),
    ("name", Param::Text),
    ("owner", Param::Bool),
    ("realm_name", Param::Text),
    ("username", Param::Text),
    ("with_limited_by", Param::Bool),
    ("active_only", Param::Bool),
    ("with_profile_uid", Param::Bool),
];

/// `query_parameters` of `QueryApiKeysRequest.ts`.
pub(crate) const QUERY_PARAMS: &[(&str, Param)] = &[
    ("with_limited_by", Param::Bool),
    ("with_profile_uid", Param::Bool),
    ("typed_keys", Param::Bool),
];

/// Endpoints whose spec file declares no `query_parameters` (authenticate, has_privileges,
/// invalidate_api_key, update_api_key, bulk_update_api_keys).
pub(crate) const NO_PARAMS: &[(&str, Param)] = &[];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_elasticsearch_time_values() {
        let ms = |s: &str| Duration::Text(s.to_owned()).millis();
        assert_eq!(ms("1d"), Ok(Some(86_400_000)));
        assert_eq!(ms("90s"), Ok(Some(90_000)));
        assert_eq!(ms("-1"), Ok(None));
        assert!(ms("1w").is_err(), "weeks are not a TimeValue unit");
        assert!(ms("ten").is_err());
        assert_eq!(Duration::Number(-1).millis(), Ok(None));
        assert!(Duration::Number(5).millis().is_err());
    }

    #[test]
    fn role_descriptors_refuse_unknown_fields_and_non_string_privileges() {
        let ok: Result<RoleDescriptor, _> = serde_json::from_value(serde_json::json!({
            "cluster": ["monitor"],
            "indices": [{"names": "logs-*", "privileges": ["auto_configure", "create_doc"]}]
        }));
        assert!(ok.is_ok());
        let unknown: Result<RoleDescriptor, _> =
            serde_json::from_value(serde_json::json!({"clusters": ["monitor"]}));
        assert!(unknown.is_err());
        let number: Result<RoleDescriptor, _> =
            serde_json::from_value(serde_json::json!({"cluster": [1]}));
        assert!(number.is_err());
        let no_names: Result<RoleDescriptor, _> =
            serde_json::from_value(serde_json::json!({"indices": [{"privileges": ["read"]}]}));
        assert!(no_names.is_err());
    }
}
