//! A small JSON-Schema subset check shared by the tests of `load --json` and `merge --json`.

use serde_json::Value;

/// Reads docs/load-report.schema.json.
#[allow(dead_code)]
pub fn load_report_schema() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/load-report.schema.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema file"))
        .expect("schema is JSON")
}

/// A small JSON-Schema subset check: `type`, `properties` (no undocumented fields),
/// `required`, `items`, `additionalProperties`, `$ref` to `#/$defs/...`, `enum`.
pub fn check(root: &Value, schema: &Value, value: &Value, path: &str) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return check(root, &root["$defs"][name], value, path);
    }
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = allowed.contains(&actual) || (actual == "integer" && allowed.contains(&"number"));
        assert!(ok, "{path}: {actual} not in {allowed:?}");
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        assert!(values.contains(value), "{path}: {value} not in enum");
    }
    if let Value::Object(map) = value {
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = req.as_str().unwrap_or_default();
            assert!(map.contains_key(key), "{path}: missing required {key}");
        }
        for (key, v) in map {
            let sub = props
                .and_then(|p| p.get(key))
                .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
            match sub {
                Some(sub) => check(root, sub, v, &format!("{path}.{key}")),
                None => assert!(
                    props.is_none() && schema.get("additionalProperties").is_none(),
                    "{path}.{key} is not documented"
                ),
            }
        }
    }
    if let (Value::Array(items), Some(sub)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check(root, sub, v, &format!("{path}[{i}]"));
        }
    }
}
