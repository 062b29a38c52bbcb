//! Params schemas: each command's params type derives its JSON Schema
//! (`schemars`), with its ranges and defaults written once, as attributes.
//! The schema is what `GET /api/v1/commands` serves and the dashboard
//! builds its forms from, and the ranges in it are the ones enforced at
//! submit time, here: no limit is written twice.
//!
//! Types and unknown fields are serde's to check; this module checks the
//! keywords serde cannot: `minimum`, `maximum`, their exclusive forms,
//! `minLength`/`maxLength` and `minItems`/`maxItems`, through `properties`,
//! `items`, `$ref`, `anyOf` and `oneOf` (for optional and enum fields).

use serde_json::{Map, Value};

use super::SubmitError;

/// The JSON Schema of `T`, as a JSON value.
pub fn of<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

/// Checks `value` against the range keywords of `schema`, naming the first
/// field out of range the way serde names fields (`hidden[1]`).
pub fn check(schema: &Value, value: &Value) -> Result<(), SubmitError> {
    let defs = schema.get("$defs").and_then(Value::as_object);
    walk(schema, value, defs, &mut String::new())
}

fn walk(
    schema: &Value,
    value: &Value,
    defs: Option<&Map<String, Value>>,
    path: &mut String,
) -> Result<(), SubmitError> {
    let Some(schema) = schema.as_object() else {
        return Ok(());
    };
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        if let Some(def) = defs.and_then(|d| d.get(name)) {
            walk(def, value, defs, path)?;
        }
    }
    // `Option<T>` and tagged enums: the branch that fits is checked.
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = schema.get(key).and_then(Value::as_array) {
            let fits = |b: &Value| type_fits(b, value, defs);
            if let Some(branch) = branches.iter().find(|b| fits(b)) {
                walk(branch, value, defs, path)?;
            }
        }
    }
    let field = || {
        if path.is_empty() {
            "params".to_owned()
        } else {
            path.clone()
        }
    };
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
            let (min, max) = (bound("minimum"), bound("maximum"));
            let (xmin, xmax) = (bound("exclusiveMinimum"), bound("exclusiveMaximum"));
            let out = min.is_some_and(|m| x < m)
                || max.is_some_and(|m| x > m)
                || xmin.is_some_and(|m| x <= m)
                || xmax.is_some_and(|m| x >= m);
            if out {
                let low = min
                    .map(|m| format!("[{}", num(m)))
                    .or(xmin.map(|m| format!("({}", num(m))));
                let high = max
                    .map(|m| format!("{}]", num(m)))
                    .or(xmax.map(|m| format!("{})", num(m))));
                let range = match (low, high) {
                    (Some(l), Some(h)) => format!("must be in {l}, {h}"),
                    (Some(l), None) => format!("must be at least {}", &l[1..]),
                    (None, Some(h)) => format!("must be at most {}", &h[..h.len() - 1]),
                    (None, None) => unreachable!("out of range needs a bound"),
                };
                return Err(SubmitError::param(&field(), format!("{range}, got {n}")));
            }
        }
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if chars < min {
                    let msg = if min == 1 {
                        "must not be empty".to_owned()
                    } else {
                        format!("must have at least {min} characters")
                    };
                    return Err(SubmitError::param(&field(), msg));
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if chars > max {
                    return Err(SubmitError::param(
                        &field(),
                        format!("must have at most {max} characters, got {chars}"),
                    ));
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if n < min {
                    return Err(SubmitError::param(
                        &field(),
                        format!("needs at least {min} item(s), got {n}"),
                    ));
                }
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if n > max {
                    return Err(SubmitError::param(
                        &field(),
                        format!("takes at most {max} item(s), got {n}"),
                    ));
                }
            }
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, v, defs, path)?;
                    path.truncate(len);
                }
            }
        }
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in map {
                    if let Some(prop) = props.get(k) {
                        let len = path.len();
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(k);
                        walk(prop, v, defs, path)?;
                        path.truncate(len);
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether `value` is of a type the schema branch allows (for picking the
/// branch of an `anyOf`).
fn type_fits(schema: &Value, value: &Value, defs: Option<&Map<String, Value>>) -> bool {
    let schema = match schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| defs.and_then(|d| d.get(name)))
    {
        Some(def) => def,
        None => schema,
    };
    let Some(types) = schema.get("type") else {
        return true;
    };
    let name = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allows = |t: &str| t == name || (t == "number" && name == "integer");
    match types {
        Value::String(t) => allows(t),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(allows),
        _ => true,
    }
}

fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(schemars::JsonSchema, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        #[schemars(range(min = 1, max = 4))]
        size: u32,
    }

    #[derive(schemars::JsonSchema, serde::Deserialize)]
    #[allow(dead_code)]
    struct Example {
        #[schemars(range(min = 1, max = 10))]
        count: u32,
        #[schemars(extend("exclusiveMinimum" = 0))]
        #[schemars(range(max = 1))]
        rate: f64,
        #[schemars(length(max = 3), inner(range(min = 1, max = 9)))]
        layers: Vec<u32>,
        #[schemars(length(min = 1, max = 5))]
        name: Option<String>,
        inner: Option<Inner>,
    }

    fn err(value: Value) -> (String, String) {
        match check(&of::<Example>(), &value).unwrap_err() {
            SubmitError::InvalidParams { field, message } => (field, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ranges_are_enforced_naming_the_field() {
        let schema = of::<Example>();
        let ok =
            json!({"count": 10, "rate": 1, "layers": [1, 9], "name": "abc", "inner": {"size": 4}});
        check(&schema, &ok).unwrap();
        assert_eq!(
            err(json!({"count": 11})),
            ("count".into(), "must be in [1, 10], got 11".into())
        );
        assert_eq!(err(json!({"rate": 0})).0, "rate");
        assert!(
            err(json!({"rate": 0})).1.contains("(0, 1]"),
            "{:?}",
            err(json!({"rate": 0}))
        );
        assert_eq!(err(json!({"layers": [1, 2, 3, 4]})).0, "layers");
        assert_eq!(err(json!({"layers": [1, 0]})).0, "layers[1]");
        assert_eq!(
            err(json!({"name": ""})),
            ("name".into(), "must not be empty".into())
        );
        assert_eq!(err(json!({"name": "toolong"})).0, "name");
        assert_eq!(err(json!({"inner": {"size": 5}})).0, "inner.size");
        // Null for an optional field is fine.
        check(&schema, &json!({"name": null, "inner": null})).unwrap();
    }
}
