//! Helpers shared by the integration tests: reading multi-document YAML and checking that a
//! manifest survives decoding into our types and encoding back.

use std::fmt::Debug;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The documents of a multi-document YAML file as JSON values; empty documents are dropped.
pub fn read_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|document| !document.is_null())
        .collect()
}

/// `kind` of a manifest, empty if absent.
pub fn kind_of(document: &Value) -> &str {
    document["kind"].as_str().unwrap_or_default()
}

/// Decodes `document` as `T` and encodes it again. A document that does not decode is an `Err`
/// (the caller decides whether that is expected); one that decodes but loses or changes
/// information panics, naming every difference.
pub fn decode_without_loss<T>(document: &Value, origin: &str) -> Result<T, String>
where
    T: DeserializeOwned + Serialize + Debug,
{
    let decoded: T = serde_json::from_value(document.clone()).map_err(|e| e.to_string())?;
    let encoded = serde_json::to_value(&decoded).map_err(|e| e.to_string())?;
    let mut differences = Vec::new();
    contained_in(document, &encoded, "", &mut differences);
    if differences.is_empty() {
        Ok(decoded)
    } else {
        panic!(
            "{origin}: {} lost or changed information:\n{}",
            kind_of(document),
            differences.join("\n")
        );
    }
}

/// Collects every place where `original` is not contained in `encoded`. Absent, null and empty
/// collections are equivalent (encoding leaves empty optional lists out); defaults added by the
/// encoder are allowed.
fn contained_in(original: &Value, encoded: &Value, path: &str, differences: &mut Vec<String>) {
    match (original, encoded) {
        (Value::Object(original), Value::Object(encoded)) => {
            for (key, value) in original {
                let path = format!("{path}.{key}");
                match encoded.get(key) {
                    Some(encoded_value) => contained_in(value, encoded_value, &path, differences),
                    None if is_empty(value) => {}
                    None => differences.push(format!("{path}: missing (was {value})")),
                }
            }
        }
        (Value::Array(original), Value::Array(encoded)) => {
            if original.len() != encoded.len() {
                differences.push(format!(
                    "{path}: {} items became {}",
                    original.len(),
                    encoded.len()
                ));
                return;
            }
            for (i, (o, e)) in original.iter().zip(encoded).enumerate() {
                contained_in(o, e, &format!("{path}[{i}]"), differences);
            }
        }
        (Value::Number(o), Value::Number(e)) if o.as_f64() == e.as_f64() => {}
        (o, e) if o == e => {}
        (o, e) if is_empty(o) && is_empty(e) => {}
        (o, e) => differences.push(format!("{path}: {o} became {e}")),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        _ => false,
    }
}
