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

use std::fmt::Write as _;

use api::KubeTemplateSpec;
use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

/// Canonical JSON text of a value (see the module documentation).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_canonical(&mut out, value);
    out
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
        write_object(&mut out, &item.object);
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

fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut String, map: &serde_json::Map<String, Value>) {
    // serde_json's map may keep insertion order (feature `preserve_order`): sort explicitly.
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_canonical(out, value);
    }
    out.push('}');
}

/// Writes a JSON string the way Go's `encoding/json` does (HTML-safe escaping).
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        out.push_str(&go_float(f));
    } else {
        out.push_str(&n.to_string());
    }
}

/// Formats a float64 as Go's `encoding/json` does.
pub(crate) fn go_float(f: f64) -> String {
    if !f.is_finite() {
        return "null".to_owned();
    }
    // Shortest round-trip digits and decimal exponent, from Rust's `{:e}` ("-1.2345e-7").
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        if exp < 0 {
            format!("{sign}{first}{frac}e-{}", -exp)
        } else {
            format!("{sign}{first}{frac}e+{exp:02}")
        }
    } else if exp >= 0 {
        let int_len = usize::try_from(exp).unwrap_or(0) + 1;
        if digits.len() <= int_len {
            format!("{sign}{digits}{}", "0".repeat(int_len - digits.len()))
        } else {
            let (int, frac) = digits.split_at(int_len);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let zeros = usize::try_from(-exp - 1).unwrap_or(0);
        format!("{sign}0.{}{digits}", "0".repeat(zeros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_go() {
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
        let mut out = String::new();
        write_string(&mut out, "a\"b\\c\n<x>&\u{1}\u{2028}é");
        assert_eq!(out, r#""a\"b\\c\n\u003cx\u003e\u0026\u0001\u2028é""#);
    }
}
