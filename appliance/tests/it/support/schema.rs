//! The response shapes of Fleet Server's OpenAPI description (field names, types, which are
//! required), restated here so tests can hold every answer to them. A field the schema does not
//! name is an error too: agents decode strictly, and a misspelt field is a silent bug.

use serde_json::Value;

#[derive(Clone, Copy)]
pub enum Ty {
    Str,
    /// A string holding an RFC 3339 time.
    Time,
    Int,
    Bool,
    Object,
    /// `json.RawMessage` in Fleet Server: an object or `null`.
    ObjectOrNull,
    Array(&'static Ty),
    Ref(&'static [Field]),
}

pub struct Field(pub &'static str, pub Ty, pub bool);

use Ty::*;

pub const ERROR: &[Field] =
    &[Field("statusCode", Int, true), Field("error", Str, true), Field("message", Str, false)];

pub const STATUS: &[Field] =
    &[Field("name", Str, true), Field("status", Str, true), Field("version", Object, false)];

pub const ENROLL_ITEM: &[Field] = &[
    Field("id", Str, true),
    Field("active", Bool, true),
    Field("policy_id", Str, true),
    Field("type", Str, true),
    Field("enrolled_at", Time, true),
    Field("user_provided_metadata", ObjectOrNull, true),
    Field("local_metadata", ObjectOrNull, true),
    Field("actions", Array(&Object), false),
    Field("access_api_key_id", Str, true),
    Field("access_api_key", Str, true),
    Field("status", Str, true),
    Field("tags", Array(&Str), true),
];

pub const ENROLL_RESPONSE: &[Field] =
    &[Field("action", Str, true), Field("item", Ref(ENROLL_ITEM), true)];

pub const ACTION: &[Field] = &[
    Field("id", Str, true),
    Field("type", Str, true),
    Field("agent_id", Str, true),
    Field("created_at", Time, true),
    Field("start_time", Time, false),
    Field("expiration", Time, false),
    Field("data", ObjectOrNull, true),
    Field("input_type", Str, true),
    Field("timeout", Int, false),
    Field("traceparent", Str, false),
    Field("signed", Object, false),
];

pub const CHECKIN_RESPONSE: &[Field] = &[
    Field("action", Str, true),
    Field("ack_token", Str, false),
    Field("actions", Array(&Ref(ACTION)), false),
];

pub const ACK_ITEM: &[Field] = &[Field("status", Int, true), Field("message", Str, false)];

pub const ACK_RESPONSE: &[Field] = &[
    Field("action", Str, true),
    Field("errors", Bool, false),
    Field("items", Array(&Ref(ACK_ITEM)), false),
];

pub const UPLOAD_BEGIN_RESPONSE: &[Field] =
    &[Field("upload_id", Str, true), Field("chunk_size", Int, true)];

fn matches(value: &Value, ty: Ty, at: &str) {
    let ok = match ty {
        Str => value.is_string(),
        Time => value.as_str().is_some_and(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok()
        }),
        Int => value.is_i64() || value.is_u64(),
        Bool => value.is_boolean(),
        Object => value.is_object(),
        ObjectOrNull => value.is_object() || value.is_null(),
        Array(item) => match value.as_array() {
            Some(items) => {
                for (i, v) in items.iter().enumerate() {
                    matches(v, *item, &format!("{at}[{i}]"));
                }
                true
            }
            None => false,
        },
        Ref(fields) => {
            check_at(value, fields, at);
            true
        }
    };
    assert!(ok, "{at}: {value} has the wrong type");
}

/// Asserts `value` is an object with exactly the schema's fields, each of its type.
#[track_caller]
pub fn check(value: &Value, schema: &[Field]) {
    check_at(value, schema, "$");
}

fn check_at(value: &Value, schema: &[Field], at: &str) {
    let object = value.as_object().unwrap_or_else(|| panic!("{at}: {value} is not an object"));
    for Field(name, ty, required) in schema {
        match object.get(*name) {
            Some(v) => matches(v, *ty, &format!("{at}.{name}")),
            None => assert!(!required, "{at}.{name} is required: {value}"),
        }
    }
    for name in object.keys() {
        assert!(
            schema.iter().any(|Field(n, _, _)| n == name),
            "{at}.{name} is not in the schema: {value}"
        );
    }
}
