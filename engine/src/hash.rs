//! Hashes of desired state, so a worker can skip an apply when nothing changed.
//!
//! All hashes are lowercase hex SHA-256 over a *canonical JSON* text:
//!
//! - object keys sorted by their UTF-8 bytes, recursively; no whitespace;
//! - strings escaped as Go's `encoding/json` does: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`,
//!   other control characters as `\u00XX`, and `<`, `>`, `&`, U+2028, U+2029 as `\u003c`,
//!   `\u003e`, `\u0026`, `\u2028`, `\u2029`;
//! - integers in decimal; other numbers as Go prints a float64 (shortest round-trip digits,
//!   plain decimal unless the magnitude is below 1e-6 or at least 1e21, then `1e+21`/`1e-7`).
//!
//! That is exactly what Go's `json.Marshal` produces for a Kubernetes unstructured object
//! (whose maps marshal with sorted keys), which lets [`spec_hash`] reproduce the original
//! KubeTemplater's `appliedSpecHash`.

use api::KubeTemplateSpec;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Canonical JSON text of a value (see the module documentation).
pub fn canonical_json(value: &Value) -> String {
    crate::gojson::go_json_value(value)
}

/// Lowercase hex SHA-256 of the canonical JSON of one object.
pub fn object_hash(object: &Value) -> String {
    sha256_hex(canonical_json(object).as_bytes())
}

/// Hash of the rendered desired state of one owner (a Tenant's or a KubeTemplate's objects).
///
/// The order of `objects` does NOT matter: each object's canonical JSON is computed, the
/// objects are sorted by (`apiVersion`, `kind`, `metadata.namespace`, `metadata.name`, then the
/// canonical text itself for full determinism), and the hash is the SHA-256 of the canonical
/// JSON array `[o1,o2,...]` of the sorted objects. A change of the apply order (for example a
/// new `dependIds` edge) therefore does not change the hash, while any change of any value,
/// including a value of the same key moving between objects, does. Key order inside objects
/// never matters.
pub fn desired_state_hash(objects: &[Value]) -> String {
    let mut entries: Vec<([&str; 4], String)> = objects
        .iter()
        .map(|object| (sort_key(object), canonical_json(object)))
        .collect();
    entries.sort();
    let mut hasher = Sha256::new();
    hasher.update(b"[");
    for (i, (_, text)) in entries.iter().enumerate() {
        if i > 0 {
            hasher.update(b",");
        }
        hasher.update(text.as_bytes());
    }
    hasher.update(b"]");
    hex::encode(hasher.finalize())
}

/// The original KubeTemplater's `appliedSpecHash`: hex SHA-256 of Go's `json.Marshal` of the
/// spec, i.e. `{"templates":[{"object":{...},"replace":true,"referenced":true},...]}` with the
/// fields in Go's declaration order (object, replace, referenced), `replace`/`referenced`
/// left out when false (`omitempty`), and each object as the API server hands it to a client:
/// compact, keys sorted. Differences from Go are limited to exotic floats whose shortest
/// representation Go and Rust format differently (none known).
pub fn spec_hash(spec: &KubeTemplateSpec) -> String {
    let mut out = String::with_capacity(512);
    out.push_str("{\"templates\":[");
    for (i, item) in spec.templates.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"object\":");
        out.push_str(&crate::gojson::go_json(&item.object));
        if item.replace {
            out.push_str(",\"replace\":true");
        }
        if item.referenced {
            out.push_str(",\"referenced\":true");
        }
        out.push('}');
    }
    out.push_str("]}");
    sha256_hex(out.as_bytes())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sort_key(object: &Value) -> [&str; 4] {
    fn text(v: Option<&Value>) -> &str {
        v.and_then(Value::as_str).unwrap_or("")
    }
    let metadata = object.get("metadata");
    [
        text(object.get("apiVersion")),
        text(object.get("kind")),
        text(metadata.and_then(|m| m.get("namespace"))),
        text(metadata.and_then(|m| m.get("name"))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_go() {
        let go_float = |f: f64| canonical_json(&serde_json::json!(f));
        for (f, want) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (123456789.125, "123456789.125"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (0.000001, "0.000001"),
            (0.0000001, "1e-7"),
            (1.25e-10, "1.25e-10"),
            (0.1, "0.1"),
        ] {
            assert_eq!(go_float(f), want, "{f}");
        }
    }

    #[test]
    fn strings_escape_like_go() {
        let out = canonical_json(&Value::String("a\"b\\c\n<x>&\u{1}\u{2028}é".into()));
        assert_eq!(out, r#""a\"b\\c\n\u003cx\u003e\u0026\u0001\u2028é""#);
    }
}
