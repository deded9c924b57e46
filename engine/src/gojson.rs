//! JSON values as Go sees them: numbers after its decode, `encoding/json` output
//! (for the raw size, the missing-kind message and the desired-state hash) and `fmt`'s `%v` / `%T`
//! (for accessor errors). Shared by `policy` and `hash`.

use serde_json::{Map, Number, Value};

/// A JSON number as the original's decoded object holds it.
///
/// The API server decodes integers into `int64` and everything else into `float64`; the webhook
/// then round-trips the raw JSON through YAML, so a float with an integral value below 2^63 (such
/// as `3.0`) arrives as the integer `3`. Integers above `i64::MAX` become floats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum GoNumber {
    /// Go `int64`.
    Int(i64),
    /// Go `float64`.
    Float(f64),
}

/// 2^63 as f64, the first float that no longer fits an `int64`.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

pub(crate) fn go_number(n: &Number) -> GoNumber {
    if let Some(i) = n.as_i64() {
        return GoNumber::Int(i);
    }
    if let Some(u) = n.as_u64() {
        return GoNumber::Float(u as f64);
    }
    let f = n.as_f64().unwrap_or(0.0);
    if f.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&f) {
        GoNumber::Int(f as i64)
    } else {
        GoNumber::Float(f)
    }
}

/// Where JSON text goes: a string, or a byte counter.
trait Sink {
    fn put(&mut self, s: &str);
    fn put_char(&mut self, c: char);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
    fn put_char(&mut self, c: char) {
        self.push(c);
    }
}

/// Counts the bytes that would be written.
struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, s: &str) {
        self.0 += s.len();
    }
    fn put_char(&mut self, c: char) {
        self.0 += c.len_utf8();
    }
}

/// Size in bytes of `encoding/json`'s compact output for the object: what the original measures
/// as the template's raw size.
pub(crate) fn go_json_size(object: &Map<String, Value>) -> usize {
    let mut counter = Counter(0);
    write_map(&mut counter, object, false);
    counter.0
}

/// `encoding/json`'s compact output for the object, keys sorted.
pub(crate) fn go_json(object: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_map(&mut out, object, true);
    out
}

/// `encoding/json`'s compact output for any value, object keys sorted (as Go marshals the maps
/// of an unstructured Kubernetes object).
pub(crate) fn go_json_value(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, true);
    out
}

fn write_map(sink: &mut impl Sink, map: &Map<String, Value>, sorted: bool) {
    sink.put_char('{');
    if sorted {
        let mut entries: Vec<(&String, &Value)> = map.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        for (i, (k, v)) in entries.into_iter().enumerate() {
            write_entry(sink, i, k, v, sorted);
        }
    } else {
        for (i, (k, v)) in map.iter().enumerate() {
            write_entry(sink, i, k, v, sorted);
        }
    }
    sink.put_char('}');
}

fn write_entry(sink: &mut impl Sink, i: usize, key: &str, value: &Value, sorted: bool) {
    if i > 0 {
        sink.put_char(',');
    }
    write_string(sink, key);
    sink.put_char(':');
    write_value(sink, value, sorted);
}

fn write_value(sink: &mut impl Sink, value: &Value, sorted: bool) {
    match value {
        Value::Null => sink.put("null"),
        Value::Bool(b) => sink.put(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(sink, n),
        Value::String(s) => write_string(sink, s),
        Value::Array(items) => {
            sink.put_char('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    sink.put_char(',');
                }
                write_value(sink, item, sorted);
            }
            sink.put_char(']');
        }
        Value::Object(map) => write_map(sink, map, sorted),
    }
}

fn write_number(sink: &mut impl Sink, n: &Number) {
    if n.is_i64() || n.is_u64() {
        if let Some(u) = n.as_u64().filter(|u| *u > i64::MAX as u64) {
            // The API server decoded it as float64.
            sink.put(&json_float(u as f64));
        } else {
            sink.put(&n.to_string());
        }
    } else {
        sink.put(&json_float(n.as_f64().unwrap_or(0.0)));
    }
}

/// `encoding/json`'s float64 text: shortest digits, exponent form below 1e-6 and from 1e21.
pub(crate) fn json_float(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let text = format!("{f:e}");
        match text.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
            _ => text,
        }
    } else {
        format!("{f}")
    }
}

fn write_string(sink: &mut impl Sink, s: &str) {
    sink.put_char('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escaped: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '<' => Some("\\u003c"),
            '>' => Some("\\u003e"),
            '&' => Some("\\u0026"),
            '\u{2028}' => Some("\\u2028"),
            '\u{2029}' => Some("\\u2029"),
            _ => None,
        };
        let control = (c as u32) < 0x20;
        if escaped.is_some() || control {
            sink.put(&s[start..i]);
            match escaped {
                Some(text) => sink.put(text),
                None => sink.put(&format!("\\u{:04x}", c as u32)),
            }
            start = i + c.len_utf8();
        }
    }
    sink.put(&s[start..]);
    sink.put_char('"');
}

/// Go's `%v` of a decoded JSON value: `map[a:1 b:[x y]]`, `<nil>`, floats as `%g`.
pub(crate) fn go_v(value: &Value) -> String {
    let mut out = String::new();
    write_v(&mut out, value);
    out
}

/// Go's `%v` of a decoded JSON object.
pub(crate) fn go_v_map(map: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_v_map(&mut out, map);
    out
}

fn write_v(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match go_number(n) {
            GoNumber::Int(i) => out.push_str(&i.to_string()),
            GoNumber::Float(f) => out.push_str(&go_float_v(f)),
        },
        Value::String(s) => out.push_str(s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                write_v(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_v_map(out, map),
    }
}

fn write_v_map(out: &mut String, map: &Map<String, Value>) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push_str("map[");
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(k);
        out.push(':');
        write_v(out, v);
    }
    out.push(']');
}

/// Go's `%v` of a float64 (`%g`, shortest digits): exponent form when the exponent is below -4 or
/// at least 6, e.g. `1e+06`, `1.5e-05`, `123456`.
pub(crate) fn go_float_v(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let text = format!("{f:e}");
    let Some((mantissa, exp)) = text.split_once('e') else {
        return text;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    } else {
        format!("{f}")
    }
}

/// Go's `%T` of a decoded JSON value.
pub(crate) fn go_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) => match go_number(n) {
            GoNumber::Int(_) => "int64",
            GoNumber::Float(_) => "float64",
        },
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn numbers_as_go_sees_them() {
        assert_eq!(go_number(&Number::from(3)), GoNumber::Int(3));
        assert_eq!(go_number(&Number::from(-3)), GoNumber::Int(-3));
        let f = |x: f64| Number::from_f64(x).expect("finite");
        assert_eq!(go_number(&f(3.0)), GoNumber::Int(3));
        assert_eq!(go_number(&f(3.5)), GoNumber::Float(3.5));
        assert_eq!(go_number(&f(1e19)), GoNumber::Float(1e19));
        assert_eq!(
            go_number(&Number::from(u64::MAX)),
            GoNumber::Float(u64::MAX as f64)
        );
    }

    #[test]
    fn encoding_json_output() {
        let object = map(json!({
            "z": 1, "a": "<b>&\"\\\n\t\u{1}\u{2028}", "m": {"y": [1.5, 3.0, null, true]},
            "big": 1e21, "small": 1e-7, "huge": u64::MAX
        }));
        let text = go_json(&object);
        assert_eq!(
            text,
            r#"{"a":"\u003cb\u003e\u0026\"\\\n\t\u0001\u2028","big":1e+21,"huge":18446744073709552000,"m":{"y":[1.5,3,null,true]},"small":1e-7,"z":1}"#
        );
        assert_eq!(go_json_size(&object), text.len());
    }

    #[test]
    fn go_percent_v() {
        let v =
            json!([{"name": "api", "ports": [{"containerPort": 8080}], "x": null, "f": 1.5e-5}]);
        assert_eq!(
            go_v(&v),
            "[map[f:1.5e-05 name:api ports:[map[containerPort:8080]] x:<nil>]]"
        );
        assert_eq!(go_float_v(1.5), "1.5");
        assert_eq!(go_float_v(123456.0), "123456");
        assert_eq!(go_float_v(1234567.0), "1.234567e+06");
        assert_eq!(go_float_v(0.0001), "0.0001");
        assert_eq!(go_float_v(0.00001), "1e-05");
        assert_eq!(go_float_v(1e100), "1e+100");
        assert_eq!(go_type(&json!([1])), "[]interface {}");
        assert_eq!(go_type(&json!(1.5)), "float64");
        assert_eq!(go_type(&json!(2)), "int64");
        assert_eq!(go_type(&Value::Null), "<nil>");
    }
}
