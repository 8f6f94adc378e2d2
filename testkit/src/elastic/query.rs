//! The part of the query DSL the double evaluates for `_security/_query/api_key`: `match_all`,
//! `bool`, `term`, `terms`, `ids`, `exists` and `prefix` (a subset of `ApiKeyQueryContainer` in
//! `specification/security/query_api_keys/types.ts`), over the fields Elasticsearch lets an API
//! key query name, plus `sort` and `search_after`. Anything else is refused with a 400 the way
//! Elasticsearch refuses a query it cannot run, so a test notices the appliance asking for more
//! than the double knows.

use super::StoredKey;
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// A refusal: Elasticsearch's error `type` and `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueryError {
    pub kind: &'static str,
    pub reason: String,
}

fn illegal(reason: impl Into<String>) -> QueryError {
    QueryError { kind: "illegal_argument_exception", reason: reason.into() }
}

fn parsing(reason: impl Into<String>) -> QueryError {
    QueryError { kind: "parsing_exception", reason: reason.into() }
}

/// A field an API-key query may name. The names are the ones Elasticsearch translates for
/// API-key queries (the list in the `query` doc of
/// `specification/security/query_api_keys/QueryApiKeysRequest.ts`; the realm is queried as
/// `realm_name`, and `metadata` is a flattened field whose leaves are keywords).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Field {
    Id,
    Name,
    Type,
    Creation,
    Expiration,
    Invalidated,
    Invalidation,
    Username,
    RealmName,
    /// `metadata` (every leaf) or `metadata.a.b` (the leaves at that path).
    Metadata(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Keyword,
    Date,
    Boolean,
}

impl Field {
    fn parse(name: &str) -> Result<Field, QueryError> {
        Ok(match name {
            "id" => Field::Id,
            "name" => Field::Name,
            "type" => Field::Type,
            "creation" => Field::Creation,
            "expiration" => Field::Expiration,
            "invalidated" => Field::Invalidated,
            "invalidation" => Field::Invalidation,
            "username" => Field::Username,
            "realm_name" => Field::RealmName,
            "metadata" => Field::Metadata(Vec::new()),
            other => match other.strip_prefix("metadata.") {
                Some(path) if !path.is_empty() => {
                    Field::Metadata(path.split('.').map(str::to_owned).collect())
                }
                _ => {
                    return Err(illegal(format!(
                        "Field [{other}] is not allowed for querying or aggregation"
                    )));
                }
            },
        })
    }

    fn kind(&self) -> Kind {
        match self {
            Field::Creation | Field::Expiration | Field::Invalidation => Kind::Date,
            Field::Invalidated => Kind::Boolean,
            _ => Kind::Keyword,
        }
    }

    /// The values the key holds in this field, as Elasticsearch indexes them.
    fn values(&self, key: &StoredKey) -> Vec<Scalar> {
        let r = &key.record;
        let text = |s: &str| vec![Scalar::Text(s.to_owned())];
        match self {
            Field::Id => text(&r.id),
            Field::Name => text(&r.name),
            Field::Type => text("rest"),
            Field::Username => text(&r.owner),
            Field::RealmName => text(&key.realm),
            Field::Creation => vec![Scalar::Number(r.creation)],
            Field::Expiration => key.expiration.map(Scalar::Number).into_iter().collect(),
            Field::Invalidation => key.invalidation.map(Scalar::Number).into_iter().collect(),
            Field::Invalidated => vec![Scalar::Bool(r.invalidated)],
            Field::Metadata(path) => {
                let mut out = Vec::new();
                let mut node = &r.metadata;
                for step in path {
                    match node.get(step) {
                        Some(next) => node = next,
                        None => return out,
                    }
                }
                leaves(node, &mut out);
                out
            }
        }
    }
}

/// A flattened field indexes every leaf as a keyword: strings as they are, numbers and
/// booleans as their JSON text; nulls are not indexed.
fn leaves(value: &Value, out: &mut Vec<Scalar>) {
    match value {
        Value::Null => {}
        Value::String(s) => out.push(Scalar::Text(s.clone())),
        Value::Bool(b) => out.push(Scalar::Text(b.to_string())),
        Value::Number(n) => out.push(Scalar::Text(n.to_string())),
        Value::Array(items) => items.iter().for_each(|v| leaves(v, out)),
        Value::Object(map) => map.values().for_each(|v| leaves(v, out)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scalar {
    Bool(bool),
    Number(i64),
    Text(String),
}

impl Scalar {
    fn to_json(&self) -> Value {
        match self {
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Number(n) => Value::from(*n),
            Scalar::Text(s) => Value::String(s.clone()),
        }
    }
}

/// A parsed query.
#[derive(Debug, Clone)]
pub(crate) enum Query {
    MatchAll,
    Bool {
        must: Vec<Query>,
        filter: Vec<Query>,
        should: Vec<Query>,
        must_not: Vec<Query>,
        minimum_should_match: Option<usize>,
    },
    Term {
        field: Field,
        value: Scalar,
        case_insensitive: bool,
    },
    Terms {
        field: Field,
        values: Vec<Scalar>,
    },
    Ids(Vec<String>),
    Exists(Field),
    Prefix {
        field: Field,
        value: String,
        case_insensitive: bool,
    },
}

/// Query types `ApiKeyQueryContainer` lists but the double does not evaluate.
const UNIMPLEMENTED: &[&str] = &["match", "range", "simple_query_string", "wildcard"];

/// Parses one query container (`ApiKeyQueryContainer`): an object with exactly one key.
pub(crate) fn parse(container: &Map<String, Value>) -> Result<Query, QueryError> {
    let mut entries = container.iter();
    let (kind, body) = match (entries.next(), entries.next()) {
        (Some(entry), None) => entry,
        (None, _) => return Err(parsing("query malformed, empty clause found")),
        (Some(_), Some((second, _))) => {
            return Err(parsing(format!(
                "[{}] malformed query, expected [END_OBJECT] but found [FIELD_NAME] ([{second}])",
                container.keys().next().map(String::as_str).unwrap_or_default()
            )));
        }
    };
    let object = |what: &str| {
        body.as_object().ok_or_else(|| {
            parsing(format!("[{what}] query malformed, no start_object after query name"))
        })
    };
    match kind.as_str() {
        "match_all" => {
            check_keys(object("match_all")?, "match_all", &["boost", "_name"])?;
            Ok(Query::MatchAll)
        }
        "bool" => parse_bool(object("bool")?),
        "term" => {
            let (field, spec) = single_field(object("term")?, "term")?;
            let (value, case_insensitive) = match spec {
                Value::Object(inner) => {
                    check_keys(inner, "term", &["value", "case_insensitive", "boost", "_name"])?;
                    let value = inner
                        .get("value")
                        .ok_or_else(|| parsing("[term] query requires a value"))?;
                    (value, bool_option(inner, "case_insensitive", "term")?)
                }
                other => (other, false),
            };
            let value = scalar_for(&field, value)?;
            Ok(Query::Term { field, value, case_insensitive })
        }
        "terms" => {
            let mut fields =
                object("terms")?.iter().filter(|(k, _)| !matches!(k.as_str(), "boost" | "_name"));
            let (name, values) = match (fields.next(), fields.next()) {
                (Some(entry), None) => entry,
                (None, _) => return Err(parsing("[terms] query requires a field")),
                (Some(_), Some(_)) => {
                    return Err(parsing("[terms] query does not support multiple fields"));
                }
            };
            let field = Field::parse(name)?;
            let Value::Array(values) = values else {
                return Err(illegal(
                    "terms lookup is not supported for API key queries; [terms] takes an array of values",
                ));
            };
            let values = values.iter().map(|v| scalar_for(&field, v)).collect::<Result<_, _>>()?;
            Ok(Query::Terms { field, values })
        }
        "ids" => {
            let inner = object("ids")?;
            check_keys(inner, "ids", &["values", "boost", "_name"])?;
            let values = match inner.get("values") {
                None => Vec::new(),
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| parsing("[ids] values must be strings"))
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(parsing("[ids] values must be a string or an array of strings"));
                }
            };
            Ok(Query::Ids(values))
        }
        "exists" => {
            let inner = object("exists")?;
            check_keys(inner, "exists", &["field", "boost", "_name"])?;
            let field = inner
                .get("field")
                .and_then(Value::as_str)
                .ok_or_else(|| parsing("[exists] must be provided with a [field]"))?;
            Ok(Query::Exists(Field::parse(field)?))
        }
        "prefix" => {
            let (field, spec) = single_field(object("prefix")?, "prefix")?;
            let (value, case_insensitive) = match spec {
                Value::Object(inner) => {
                    check_keys(
                        inner,
                        "prefix",
                        &["value", "rewrite", "case_insensitive", "boost", "_name"],
                    )?;
                    (inner.get("value"), bool_option(inner, "case_insensitive", "prefix")?)
                }
                other => (Some(other), false),
            };
            let value = value
                .and_then(Value::as_str)
                .ok_or_else(|| parsing("[prefix] requires a string value"))?;
            if field.kind() != Kind::Keyword {
                return Err(illegal(format!(
                    "Can only use prefix queries on keyword fields - not on [{field:?}] which is a {:?} field",
                    field.kind()
                )));
            }
            Ok(Query::Prefix { field, value: value.to_owned(), case_insensitive })
        }
        other if UNIMPLEMENTED.contains(&other) => Err(illegal(format!(
            "Query type [{other}] is allowed by Elasticsearch for API key queries but not implemented by the ES double"
        ))),
        other => {
            Err(illegal(format!("Query type [{other}] is not currently supported in this context")))
        }
    }
}

fn check_keys(
    object: &Map<String, Value>,
    query: &str,
    allowed: &[&str],
) -> Result<(), QueryError> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(parsing(format!("[{query}] query does not support [{k}]"))),
        None => Ok(()),
    }
}

fn bool_option(object: &Map<String, Value>, key: &str, query: &str) -> Result<bool, QueryError> {
    match object.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(parsing(format!("[{query}] [{key}] must be a boolean"))),
    }
}

/// `SingleKeyDictionary<Field, T>`: exactly one field.
fn single_field<'a>(
    object: &'a Map<String, Value>,
    query: &str,
) -> Result<(Field, &'a Value), QueryError> {
    let mut entries = object.iter();
    match (entries.next(), entries.next()) {
        (Some((name, spec)), None) => Ok((Field::parse(name)?, spec)),
        (None, _) => Err(parsing(format!("[{query}] query requires a field"))),
        (Some(_), Some(_)) => {
            Err(parsing(format!("[{query}] query doesn't support multiple fields")))
        }
    }
}

/// A `FieldValue` (`specification/_types/common.ts`) as the field's type reads it.
fn scalar_for(field: &Field, value: &Value) -> Result<Scalar, QueryError> {
    match (field.kind(), value) {
        (_, Value::Null) | (_, Value::Array(_)) | (_, Value::Object(_)) => Err(parsing(format!(
            "[{field:?}] value must be a string, number or boolean, not {value}"
        ))),
        (Kind::Keyword, Value::String(s)) => Ok(Scalar::Text(s.clone())),
        (Kind::Keyword, other) => Ok(Scalar::Text(other.to_string())),
        (Kind::Boolean, Value::Bool(b)) => Ok(Scalar::Bool(*b)),
        (Kind::Boolean, Value::String(s)) if s == "true" || s == "false" => {
            Ok(Scalar::Bool(s == "true"))
        }
        (Kind::Boolean, other) => Err(illegal(format!(
            "Failed to parse value [{other}] as only [true] or [false] are allowed."
        ))),
        (Kind::Date, Value::Number(n)) => n
            .as_i64()
            .map(Scalar::Number)
            .ok_or_else(|| illegal(format!("failed to parse date field [{n}]"))),
        (Kind::Date, Value::String(s)) => parse_date(s).map(Scalar::Number),
        (Kind::Date, other) => Err(illegal(format!("failed to parse date field [{other}]"))),
    }
}

/// Dates as `strict_date_optional_time||epoch_millis`, narrowed to RFC 3339 and epoch millis.
fn parse_date(s: &str) -> Result<i64, QueryError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| illegal(format!("failed to parse date field [{s}] with format [strict_date_optional_time||epoch_millis]")))
}

fn clauses(value: &Value, query: &str) -> Result<Vec<Query>, QueryError> {
    match value {
        Value::Object(one) => Ok(vec![parse(one)?]),
        Value::Array(many) => many
            .iter()
            .map(|v| {
                v.as_object()
                    .ok_or_else(|| parsing(format!("[bool] [{query}] clauses must be objects")))
                    .and_then(parse)
            })
            .collect(),
        _ => Err(parsing(format!("[bool] [{query}] must be an object or an array of objects"))),
    }
}

fn parse_bool(object: &Map<String, Value>) -> Result<Query, QueryError> {
    check_keys(
        object,
        "bool",
        &["must", "filter", "should", "must_not", "minimum_should_match", "boost", "_name"],
    )?;
    let get = |key: &str| {
        object.get(key).map(|v| clauses(v, key)).transpose().map(Option::unwrap_or_default)
    };
    let minimum_should_match = match object.get("minimum_should_match") {
        None => None,
        Some(Value::Number(n)) => {
            Some(n.as_u64().ok_or_else(|| illegal("[minimum_should_match] must not be negative"))?
                as usize)
        }
        Some(Value::String(s)) => Some(s.parse().map_err(|_| {
            illegal(format!(
                "[minimum_should_match] [{s}]: the ES double takes a non-negative integer only"
            ))
        })?),
        Some(other) => {
            return Err(parsing(format!("[bool] [minimum_should_match] cannot be {other}")));
        }
    };
    Ok(Query::Bool {
        must: get("must")?,
        filter: get("filter")?,
        should: get("should")?,
        must_not: get("must_not")?,
        minimum_should_match,
    })
}

impl Query {
    pub(crate) fn matches(&self, key: &StoredKey) -> bool {
        match self {
            Query::MatchAll => true,
            Query::Bool { must, filter, should, must_not, minimum_should_match } => {
                let required = must.iter().chain(filter).all(|q| q.matches(key));
                let excluded = must_not.iter().any(|q| q.matches(key));
                // Elasticsearch: with no must/filter clause, at least one should clause must
                // match; with one, should clauses are optional unless minimum_should_match says.
                let needed = minimum_should_match.unwrap_or(
                    if must.is_empty() && filter.is_empty() && !should.is_empty() { 1 } else { 0 },
                );
                let matched = should.iter().filter(|q| q.matches(key)).count();
                required && !excluded && matched >= needed
            }
            Query::Term { field, value, case_insensitive } => {
                field.values(key).iter().any(|v| scalar_eq(v, value, *case_insensitive))
            }
            Query::Terms { field, values } => {
                let held = field.values(key);
                values.iter().any(|want| held.iter().any(|v| scalar_eq(v, want, false)))
            }
            Query::Ids(ids) => ids.contains(&key.record.id),
            Query::Exists(field) => !field.values(key).is_empty(),
            Query::Prefix { field, value, case_insensitive } => {
                field.values(key).iter().any(|v| match v {
                    Scalar::Text(s) if *case_insensitive => {
                        s.to_lowercase().starts_with(&value.to_lowercase())
                    }
                    Scalar::Text(s) => s.starts_with(value.as_str()),
                    _ => false,
                })
            }
        }
    }
}

fn scalar_eq(held: &Scalar, want: &Scalar, case_insensitive: bool) -> bool {
    match (held, want) {
        (Scalar::Text(a), Scalar::Text(b)) if case_insensitive => {
            a.to_lowercase() == b.to_lowercase()
        }
        (a, b) => a == b,
    }
}

/// One sort clause: a field and whether it sorts descending.
#[derive(Debug, Clone)]
pub(crate) struct SortField {
    field: Option<Field>, // None: `_doc`, creation order
    descending: bool,
}

/// Parses `sort` (`Sort` in `specification/_types/sort.ts`, narrowed to field names, `_doc`,
/// `{field: "asc"|"desc"}` and `{field: {"order": ...}}`). Elasticsearch does not sort API
/// keys by `id`.
pub(crate) fn parse_sort(sort: &Value) -> Result<Vec<SortField>, QueryError> {
    let items = match sort {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    items
        .iter()
        .map(|item| {
            let (name, order) = match item {
                Value::String(name) => (name.clone(), None),
                Value::Object(map) if map.len() == 1 => {
                    let (name, spec) = map.iter().next().expect("one entry");
                    let order = match spec {
                        Value::String(o) => Some(o.clone()),
                        Value::Object(inner) => {
                            check_keys(inner, "sort", &["order"])?;
                            inner.get("order").and_then(Value::as_str).map(str::to_owned)
                        }
                        _ => return Err(parsing(format!("[sort] malformed entry for [{name}]"))),
                    };
                    (name.clone(), order)
                }
                _ => return Err(parsing(format!("[sort] malformed entry {item}"))),
            };
            let descending = match order.as_deref() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => return Err(illegal(format!("Unknown SortOrder [{other}]"))),
            };
            let field = match name.as_str() {
                "_doc" => None,
                "id" => return Err(illegal("Sorting by field [id] is not allowed for API keys")),
                other => Some(Field::parse(other).map_err(|_| {
                    illegal(format!("Field [{other}] is not allowed for querying or aggregation"))
                })?),
            };
            Ok(SortField { field, descending })
        })
        .collect()
}

/// The sort values of a key (its `_sort` in the response, `SortResults`); `position` is its
/// place in creation order, which `_doc` sorts by.
pub(crate) fn sort_values(sort: &[SortField], key: &StoredKey, position: usize) -> Vec<Value> {
    sort.iter()
        .map(|s| match &s.field {
            None => Value::from(position as u64),
            Some(field) => {
                let mut values = field.values(key);
                values.sort();
                let pick = if s.descending { values.last() } else { values.first() };
                pick.map(Scalar::to_json).unwrap_or(Value::Null)
            }
        })
        .collect()
}

/// Compares two keys' sort values clause by clause; a missing value sorts last either way, as
/// Elasticsearch's default `missing: _last` does.
pub(crate) fn compare(sort: &[SortField], a: &[Value], b: &[Value]) -> Ordering {
    for (i, s) in sort.iter().enumerate() {
        let (x, y) = (&a[i], &b[i]);
        let ord = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                let o = json_cmp(x, y);
                if s.descending { o.reverse() } else { o }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn json_cmp(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or_default()
            .partial_cmp(&y.as_f64().unwrap_or_default())
            .unwrap_or(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elastic::KeyRecord;
    use serde_json::json;

    fn key(id: &str, agent: &str, invalidated: bool) -> StoredKey {
        StoredKey {
            record: KeyRecord {
                id: id.to_owned(),
                name: format!("agent-{agent}"),
                api_key: "secret".to_owned(),
                role_descriptors: json!({}),
                metadata: json!({"agent_id": agent, "managed": true, "nested": {"n": 3}}),
                invalidated,
                creation: 1000,
                owner: "elastic/fleet-server".to_owned(),
            },
            expiration: None,
            invalidation: invalidated.then_some(2000),
            realm: "_service_account".to_owned(),
            realm_type: "_service_account".to_owned(),
        }
    }

    fn q(v: Value) -> Result<Query, QueryError> {
        let Value::Object(container) = v else { panic!("a query is an object") };
        parse(&container)
    }

    #[test]
    fn term_both_shapes_and_flattened_metadata() {
        let a = key("a", "x", false);
        assert!(q(json!({"term": {"metadata.agent_id": "x"}})).unwrap().matches(&a));
        assert!(q(json!({"term": {"metadata.agent_id": {"value": "x"}}})).unwrap().matches(&a));
        assert!(!q(json!({"term": {"metadata.agent_id": "y"}})).unwrap().matches(&a));
        assert!(q(json!({"term": {"metadata.managed": true}})).unwrap().matches(&a));
        assert!(q(json!({"term": {"metadata.nested.n": 3}})).unwrap().matches(&a));
        assert!(q(json!({"term": {"invalidated": false}})).unwrap().matches(&a));
    }

    #[test]
    fn bool_clauses_single_or_arrays() {
        let a = key("a", "x", false);
        let b = key("b", "x", true);
        let query = q(json!({"bool": {
            "filter": {"term": {"metadata.agent_id": "x"}},
            "must_not": [{"term": {"invalidated": true}}]
        }}))
        .unwrap();
        assert!(query.matches(&a));
        assert!(!query.matches(&b));
        let should = q(
            json!({"bool": {"should": [{"ids": {"values": ["b"]}}, {"prefix": {"name": "zz"}}]}}),
        )
        .unwrap();
        assert!(should.matches(&b) && !should.matches(&a));
        assert!(q(json!({"exists": {"field": "invalidation"}})).unwrap().matches(&b));
        assert!(q(json!({"terms": {"name": ["agent-x", "other"]}})).unwrap().matches(&a));
    }

    #[test]
    fn refusals_are_elasticsearch_shaped() {
        let err = q(json!({"term": {"secret": "x"}})).unwrap_err();
        assert_eq!(err.reason, "Field [secret] is not allowed for querying or aggregation");
        assert_eq!(err.kind, "illegal_argument_exception");
        assert!(q(json!({"match_phrase": {"name": "x"}})).is_err());
        assert!(q(json!({"wildcard": {"name": "x*"}})).is_err());
        assert!(q(json!({"term": {"name": "a", "id": "b"}})).is_err());
        assert!(q(json!({"prefix": {"creation": "1"}})).is_err());
        assert!(q(json!({"term": {"name": "a"}, "ids": {}})).is_err());
    }
}
