//! Agent policies as Kibana exports them ("full agent policy", YAML or JSON), checked for what
//! an agent needs before one travels in a bundle.

use serde_json::Value;

/// Output types an agent can ship to.
pub const OUTPUT_TYPES: [&str; 4] = ["elasticsearch", "logstash", "kafka", "remote_elasticsearch"];

/// Why a policy file was refused. Each names the file and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("{file} is not valid {format}: {reason}")]
    Syntax { file: String, format: &'static str, reason: String },
    #[error("{file}: the policy is not a mapping at its top level")]
    NotAMapping { file: String },
    #[error("{file}: field `{field}` {problem}")]
    Field { file: String, field: String, problem: String },
}

/// The facts of a policy the builder records and the appliance acts on, plus the policy itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub id: String,
    pub revision: u64,
    pub name: Option<String>,
    /// Output names and their types, in the policy's order.
    pub outputs: Vec<(String, String)>,
    pub inputs: usize,
    /// The whole policy as JSON.
    pub document: Value,
}

impl Policy {
    /// Parses a policy file (JSON when it starts with `{`, YAML otherwise). `file` names it in
    /// errors.
    pub fn parse(bytes: &[u8], file: &str) -> Result<Self, PolicyError> {
        let text = std::str::from_utf8(bytes).map_err(|e| PolicyError::Syntax {
            file: file.into(),
            format: "UTF-8",
            reason: e.to_string(),
        })?;
        let document: Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| PolicyError::Syntax {
                file: file.into(),
                format: "JSON",
                reason: e.to_string(),
            })?
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| PolicyError::Syntax {
                file: file.into(),
                format: "YAML",
                reason: e.to_string(),
            })?
        };
        // Kibana's "download policy" wraps nothing, but its API answers {"item": {...}}.
        let document = match document {
            Value::Object(mut map) if map.len() == 1 && map.contains_key("item") => {
                map.remove("item").expect("checked")
            }
            other => other,
        };
        Self::from_document(document, file)
    }

    fn from_document(document: Value, file: &str) -> Result<Self, PolicyError> {
        let field = |field: &str, problem: String| PolicyError::Field {
            file: file.into(),
            field: field.into(),
            problem,
        };
        let map =
            document.as_object().ok_or_else(|| PolicyError::NotAMapping { file: file.into() })?;
        let id = match map.get("id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(other) => {
                return Err(field("id", format!("must be a non-empty string, found {other}")));
            }
            None => return Err(field("id", "is missing".into())),
        };
        let revision = match map.get("revision") {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| field("revision", format!("must be a whole number, found {v}")))?,
            None => return Err(field("revision", "is missing".into())),
        };
        let name = map.get("name").and_then(Value::as_str).map(str::to_owned);
        let outputs = match map.get("outputs") {
            Some(Value::Object(outputs)) if !outputs.is_empty() => outputs,
            Some(Value::Object(_)) => {
                return Err(field("outputs", "has no output; an agent needs at least one".into()));
            }
            Some(other) => {
                return Err(field(
                    "outputs",
                    format!("must be a mapping of outputs, found {other}"),
                ));
            }
            None => {
                return Err(field(
                    "outputs",
                    "is missing; an agent needs at least one output".into(),
                ));
            }
        };
        let mut output_types = Vec::new();
        for (name, output) in outputs {
            let path = format!("outputs.{name}.type");
            let kind = output
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| field(&path, "is missing".into()))?;
            if !OUTPUT_TYPES.contains(&kind) {
                return Err(field(
                    &path,
                    format!("is {kind:?}; known types: {}", OUTPUT_TYPES.join(", ")),
                ));
            }
            output_types.push((name.clone(), kind.to_owned()));
        }
        let inputs = match map.get("inputs") {
            Some(Value::Array(inputs)) => inputs.len(),
            Some(other) => return Err(field("inputs", format!("must be a list, found {other}"))),
            None => return Err(field("inputs", "is missing".into())),
        };
        Ok(Self { id, revision, name, outputs: output_types, inputs, document })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "id: p1\nrevision: 3\nname: Linux\noutputs:\n  default:\n    type: elasticsearch\ninputs: []\n";

    #[test]
    fn parses_yaml_and_json() {
        let p = Policy::parse(GOOD.as_bytes(), "p.yml").unwrap();
        assert_eq!(
            (p.id.as_str(), p.revision, p.name.as_deref(), p.inputs),
            ("p1", 3, Some("Linux"), 0)
        );
        assert_eq!(p.outputs, [("default".to_owned(), "elasticsearch".to_owned())]);
        let json = r#"{"item": {"id": "p2", "revision": 1, "outputs": {"o": {"type": "logstash"}}, "inputs": [{}]}}"#;
        let p = Policy::parse(json.as_bytes(), "p.json").unwrap();
        assert_eq!((p.id.as_str(), p.inputs), ("p2", 1));
    }

    #[test]
    fn refusals_name_file_and_field() {
        let cases = [
            ("revision: 3\noutputs: {a: {type: logstash}}\ninputs: []\n", "`id` is missing"),
            ("id: p\nrevision: x\noutputs: {a: {type: logstash}}\ninputs: []\n", "`revision`"),
            ("id: p\nrevision: 1\ninputs: []\n", "`outputs` is missing"),
            ("id: p\nrevision: 1\noutputs: {}\ninputs: []\n", "`outputs` has no output"),
            (
                "id: p\nrevision: 1\noutputs: {a: {type: carrier-pigeon}}\ninputs: []\n",
                "`outputs.a.type` is \"carrier-pigeon\"",
            ),
            (
                "id: p\nrevision: 1\noutputs: {a: {hosts: []}}\ninputs: []\n",
                "`outputs.a.type` is missing",
            ),
            ("id: p\nrevision: 1\noutputs: {a: {type: kafka}}\n", "`inputs` is missing"),
            ("- a\n- b\n", "not a mapping"),
            ("id: [unclosed\n", "not valid YAML"),
        ];
        for (text, says) in cases {
            let err = Policy::parse(text.as_bytes(), "policies/x.yml").unwrap_err().to_string();
            assert!(err.contains("policies/x.yml") && err.contains(says), "{text:?}: {err}");
        }
    }
}
