//! Template functions: Go's builtins (`and or not eq ne lt le gt ge len index print println
//! printf urlquery`), the Sprig subset the original operators' users rely on, Lynq's
//! `int`/`float`/`bool`, and the original's `toHost`/`trunc63`/`sha1sum`/`fromJson`. Values are
//! JSON values; maps print and range with sorted keys, as in Go.

use std::cmp::Ordering;
use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{Map, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A template function: arguments (the piped value last) to a value or an error message.
pub(crate) type Func = fn(&[Value]) -> Result<Value, String>;

/// The function called `name` in templates.
pub(crate) fn lookup(name: &str) -> Option<Func> {
    let func: Func = match name {
        // Go text/template builtins
        "and" => and,
        "or" => or,
        "not" => not,
        "print" => print,
        "println" => println,
        "printf" => printf,
        "eq" => eq,
        "ne" => ne,
        "lt" => lt,
        "le" => le,
        "gt" => gt,
        "ge" => ge,
        "len" => len,
        "index" => index,
        "urlquery" => urlquery,
        // Sprig
        "default" => default,
        "trunc" => trunc,
        "upper" => upper,
        "lower" => lower,
        "trim" => trim,
        "trimPrefix" => trim_prefix,
        "trimSuffix" => trim_suffix,
        "replace" => replace,
        "quote" => quote,
        "squote" => squote,
        "b64enc" => b64enc,
        "b64dec" => b64dec,
        "sha256sum" => sha256sum,
        "toJson" => to_json,
        "ternary" => ternary,
        "list" => list,
        "join" => join,
        "add" => add,
        "sub" => sub,
        "mul" => mul,
        "div" => div,
        "mod" => modulo,
        "max" => max,
        "min" => min,
        "contains" => contains,
        "hasPrefix" => has_prefix,
        "hasSuffix" => has_suffix,
        // the original operator's own
        "toHost" => to_host_fn,
        "trunc63" => trunc63,
        "sha1sum" => sha1sum,
        "fromJson" => from_json,
        // Lynq's typed conversions
        "int" => to_int,
        "float" => to_float,
        "bool" => to_bool,
        _ => return None,
    };
    Some(func)
}

/// Largest value (text length, or total size of a list or map) a function may produce.
pub(crate) const MAX_VALUE_BYTES: usize = 1 << 20;

/// Whether a value is larger than [`MAX_VALUE_BYTES`] (text bytes plus 8 per item, summed
/// over nested lists and maps; stops counting once over).
pub(crate) fn too_large(value: &Value) -> bool {
    fn size(value: &Value, budget: &mut usize) -> bool {
        let cost = match value {
            Value::String(s) => s.len(),
            Value::Array(items) => items.len() * 8,
            Value::Object(map) => map.keys().map(|k| k.len() + 8).sum(),
            _ => 8,
        };
        if cost > *budget {
            return true;
        }
        *budget -= cost;
        match value {
            Value::Array(items) => items.iter().any(|v| size(v, budget)),
            Value::Object(map) => map.values().any(|v| size(v, budget)),
            _ => false,
        }
    }
    let mut budget = MAX_VALUE_BYTES;
    size(value, &mut budget)
}

/// Names of the functions that turn a whole-value template into a typed JSON value.
pub(crate) const TYPED_FUNCS: [&str; 3] = ["int", "float", "bool"];

fn err(message: String) -> String {
    message
}

fn exactly(name: &str, args: &[Value], n: usize) -> Result<(), String> {
    if args.len() == n {
        Ok(())
    } else {
        Err(err(format!(
            "{name}: wants {n} argument{}, got {}",
            if n == 1 { "" } else { "s" },
            args.len()
        )))
    }
}

fn at_least(name: &str, args: &[Value], n: usize) -> Result<(), String> {
    if args.len() >= n {
        Ok(())
    } else {
        Err(err(format!(
            "{name}: wants at least {n} argument{}, got {}",
            if n == 1 { "" } else { "s" },
            args.len()
        )))
    }
}

// === value conversions ===

/// Text of a value as Go's `fmt.Sprint` prints it: strings as they are, `<nil>`, numbers in
/// Go's `%v` form, lists as `[a b]`, maps as `map[k:v]` with sorted keys.
pub(crate) fn strval(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

/// Appends a value as Go's `fmt.Fprint` prints it (see [`strval`]).
pub(crate) fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match number(value) {
            Some(Num::Float(f)) => out.push_str(&go_g(f, None, false)),
            _ => {
                let _ = write!(out, "{n}");
            }
        },
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push_str("map[");
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(key);
                out.push(':');
                write_value(out, item);
            }
            out.push(']');
        }
    }
}

/// Go's truth: false, 0, "", nil and empty lists and maps are false.
pub(crate) fn truth(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(_) => number_f64(value) != Some(0.0),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// Sprig's `empty`: the values Go considers false.
fn is_empty(value: &Value) -> bool {
    !truth(value)
}

/// Go's type name of a value, for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nil",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

enum Num {
    Int(i128),
    Float(f64),
}

fn number(value: &Value) -> Option<Num> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        Some(Num::Int(i128::from(i)))
    } else if let Some(u) = n.as_u64() {
        Some(Num::Int(i128::from(u)))
    } else {
        n.as_f64().map(Num::Float)
    }
}

fn number_f64(value: &Value) -> Option<f64> {
    number(value).map(|n| match n {
        // Precision loss beyond 2^53 is accepted, as in Go's float64 conversions.
        #[allow(clippy::cast_precision_loss)]
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    })
}

/// A float as a value; NaN and infinities (no JSON form) become Go's text for them.
pub(crate) fn float_value(f: f64) -> Value {
    match serde_json::Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".to_owned()),
        None if f > 0.0 => Value::String("+Inf".to_owned()),
        None => Value::String("-Inf".to_owned()),
    }
}

/// Go's `%g`/`%v` of a float64: shortest digits (or `precision` significant digits), in
/// exponent form when the exponent is below -4 or at least the precision (6 for the shortest
/// form: `1e+06`, `123456`).
pub(crate) fn go_g(f: f64, precision: Option<usize>, upper: bool) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    let sci = match precision {
        Some(p) => format!("{:.*e}", p.saturating_sub(1), f.abs()),
        None => format!("{:e}", f.abs()),
    };
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let mut digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if precision.is_some() {
        // %g drops trailing zeros
        while digits.len() > 1 && digits.ends_with('0') {
            digits.pop();
        }
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    let limit = i64::try_from(precision.unwrap_or(6)).unwrap_or(6);
    if exp < -4 || exp >= limit {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let e = if upper { 'E' } else { 'e' };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}{e}{exp_sign}{:02}", exp.abs())
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

/// Saturating float → int64 truncation, as Go does for in-range values.
#[allow(clippy::cast_possible_truncation)]
fn trunc_f64(f: f64) -> i64 {
    if f.is_nan() { 0 } else { f as i64 }
}

/// `cast.ToInt64` (used by Sprig's arithmetic): numbers truncate, bools are 0/1, strings parse
/// as Go integer literals (`0x`, `0o`, `0b`, leading `0` = octal; a trailing `.0…` is
/// dropped), anything else is 0.
fn cast_i64(value: &Value) -> i64 {
    match value {
        Value::Bool(b) => i64::from(*b),
        Value::String(s) => parse_go_int(s).unwrap_or(0),
        _ => match number(value) {
            // Go converts uint64 to int64 by wrapping.
            #[allow(clippy::cast_possible_truncation)]
            Some(Num::Int(i)) => i as i64,
            Some(Num::Float(f)) => trunc_f64(f),
            None => 0,
        },
    }
}

fn parse_go_int(s: &str) -> Option<i64> {
    let s = trim_zero_decimal(s);
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(rest) = lower.strip_prefix("0x") {
        (16, rest.to_owned())
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (2, rest.to_owned())
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (8, rest.to_owned())
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_owned())
    } else {
        (10, lower.clone())
    };
    let body = if radix == 10 {
        body
    } else {
        body.replace('_', "")
    };
    if body.is_empty() || body.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = i128::from_str_radix(&body, radix).ok()?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).ok()
}

fn trim_zero_decimal(s: &str) -> &str {
    if let Some((int, frac)) = s.split_once('.')
        && !int.is_empty()
        && !frac.is_empty()
        && frac.bytes().all(|b| b == b'0')
    {
        return int;
    }
    s
}

/// Argument as text: strings as they are, other values as Go prints them.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => strval(other),
    }
}

// === Go builtins ===

/// Go's `and` when called as a plain function (the executor short-circuits it).
fn and(args: &[Value]) -> Result<Value, String> {
    at_least("and", args, 1)?;
    Ok(args
        .iter()
        .find(|v| !truth(v))
        .unwrap_or(&args[args.len() - 1])
        .clone())
}

/// Go's `or` when called as a plain function (the executor short-circuits it).
fn or(args: &[Value]) -> Result<Value, String> {
    at_least("or", args, 1)?;
    Ok(args
        .iter()
        .find(|v| truth(v))
        .unwrap_or(&args[args.len() - 1])
        .clone())
}

fn not(args: &[Value]) -> Result<Value, String> {
    exactly("not", args, 1)?;
    Ok(Value::Bool(!truth(&args[0])))
}

/// Go's `fmt.Sprint`: spaces between operands when neither is a string.
fn print(args: &[Value]) -> Result<Value, String> {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 && !args[i - 1].is_string() && !arg.is_string() {
            out.push(' ');
        }
        write_value(&mut out, arg);
    }
    Ok(Value::String(out))
}

/// Go's `fmt.Sprintln`: spaces between all operands and a final newline.
fn println(args: &[Value]) -> Result<Value, String> {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_value(&mut out, arg);
    }
    out.push('\n');
    Ok(Value::String(out))
}

fn printf(args: &[Value]) -> Result<Value, String> {
    at_least("printf", args, 1)?;
    let format = text(&args[0]);
    super::printf::sprintf(&format, &args[1..]).map(Value::String)
}

fn basic_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nil",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

fn equal(a: &Value, b: &Value) -> Result<bool, String> {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => Ok(compare_numbers(a, b) == Some(Ordering::Equal)),
        (Value::String(x), Value::String(y)) => Ok(x == y),
        (Value::Bool(x), Value::Bool(y)) => Ok(x == y),
        (Value::Null, Value::Null) => Ok(true),
        (Value::Null, _) | (_, Value::Null) => Ok(false),
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => Ok(a == b),
        _ => Err(err(format!(
            "incompatible types for comparison: {} and {}",
            basic_kind(a),
            basic_kind(b)
        ))),
    }
}

fn compare_numbers(a: &Value, b: &Value) -> Option<Ordering> {
    match (number(a)?, number(b)?) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (x, y) => {
            let f = |n: Num| match n {
                #[allow(clippy::cast_precision_loss)]
                Num::Int(i) => i as f64,
                Num::Float(f) => f,
            };
            f(x).partial_cmp(&f(y))
        }
    }
}

fn compare(name: &str, args: &[Value]) -> Result<Ordering, String> {
    exactly(name, args, 2)?;
    let (a, b) = (&args[0], &args[1]);
    let ordering = match (a, b) {
        (Value::Number(_), Value::Number(_)) => compare_numbers(a, b),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    ordering.ok_or_else(|| {
        err(format!(
            "{name}: incompatible types for comparison: {} and {}",
            basic_kind(a),
            basic_kind(b)
        ))
    })
}

/// Go's `eq`: `eq a b c` is `a == b || a == c`.
fn eq(args: &[Value]) -> Result<Value, String> {
    at_least("eq", args, 2)?;
    for other in &args[1..] {
        if equal(&args[0], other).map_err(|e| err(format!("eq: {e}")))? {
            return Ok(Value::Bool(true));
        }
    }
    Ok(Value::Bool(false))
}

fn ne(args: &[Value]) -> Result<Value, String> {
    exactly("ne", args, 2)?;
    let same = equal(&args[0], &args[1]).map_err(|e| err(format!("ne: {e}")))?;
    Ok(Value::Bool(!same))
}

fn lt(args: &[Value]) -> Result<Value, String> {
    Ok(Value::Bool(compare("lt", args)? == Ordering::Less))
}

fn le(args: &[Value]) -> Result<Value, String> {
    Ok(Value::Bool(compare("le", args)? != Ordering::Greater))
}

fn gt(args: &[Value]) -> Result<Value, String> {
    Ok(Value::Bool(compare("gt", args)? == Ordering::Greater))
}

fn ge(args: &[Value]) -> Result<Value, String> {
    Ok(Value::Bool(compare("ge", args)? != Ordering::Less))
}

fn len(args: &[Value]) -> Result<Value, String> {
    exactly("len", args, 1)?;
    let n = match &args[0] {
        Value::String(s) => s.len(),
        Value::Array(items) => items.len(),
        Value::Object(map) => map.len(),
        other => {
            return Err(err(format!(
                "len: cannot take the length of {}",
                basic_kind(other)
            )));
        }
    };
    Ok(Value::from(n))
}

/// Go's `index`, except that a missing map key is an error (as a missing variable is) instead
/// of a silent `<no value>`.
fn index(args: &[Value]) -> Result<Value, String> {
    at_least("index", args, 1)?;
    let mut current = args[0].clone();
    for key in &args[1..] {
        current = match (&current, key) {
            (Value::Object(map), Value::String(k)) => match map.get(k) {
                Some(v) => v.clone(),
                None => return Err(err(format!("index: map has no entry for key {k:?}"))),
            },
            (Value::Array(items), Value::Number(_)) => {
                let i = cast_i64(key);
                match usize::try_from(i).ok().and_then(|i| items.get(i)) {
                    Some(v) => v.clone(),
                    None => return Err(err(format!("index: index out of range: {i}"))),
                }
            }
            (Value::String(s), Value::Number(_)) => {
                let i = cast_i64(key);
                match usize::try_from(i).ok().and_then(|i| s.as_bytes().get(i)) {
                    Some(b) => Value::from(*b),
                    None => return Err(err(format!("index: index out of range: {i}"))),
                }
            }
            (container, key) => {
                return Err(err(format!(
                    "index: cannot index {} with {}",
                    basic_kind(container),
                    basic_kind(key)
                )));
            }
        };
    }
    Ok(current)
}

/// Go's `urlquery`: `url.QueryEscape` of the arguments printed together.
fn urlquery(args: &[Value]) -> Result<Value, String> {
    let joined = match args {
        [Value::String(s)] => s.clone(),
        _ => text(&print(args)?),
    };
    Ok(Value::String(query_escape(&joined)))
}

fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

// === Sprig ===

/// `default DEFAULT VALUE`: VALUE unless it is empty (Sprig's `empty`), else DEFAULT.
fn default(args: &[Value]) -> Result<Value, String> {
    at_least("default", args, 1)?;
    match args.get(1) {
        Some(given) if !is_empty(given) => Ok(given.clone()),
        _ => Ok(args[0].clone()),
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Sprig's `trunc`: the first N bytes (N ≥ 0) or the last -N bytes (N < 0). Cuts never split
/// a UTF-8 character: a character crossing the cut is left out.
pub(crate) fn trunc_str(count: i64, s: &str) -> String {
    let len = i64::try_from(s.len()).unwrap_or(i64::MAX);
    if count < 0 && len + count > 0 {
        let start = usize::try_from(len + count).unwrap_or(0);
        s[ceil_char_boundary(s, start)..].to_owned()
    } else if count >= 0 && len > count {
        let end = usize::try_from(count).unwrap_or(0);
        s[..floor_char_boundary(s, end)].to_owned()
    } else {
        s.to_owned()
    }
}

fn trunc(args: &[Value]) -> Result<Value, String> {
    exactly("trunc", args, 2)?;
    Ok(Value::String(trunc_str(
        cast_i64(&args[0]),
        &text(&args[1]),
    )))
}

fn trunc63(args: &[Value]) -> Result<Value, String> {
    exactly("trunc63", args, 1)?;
    Ok(Value::String(trunc_str(63, &text(&args[0]))))
}

fn one_string(name: &str, args: &[Value], f: impl Fn(&str) -> String) -> Result<Value, String> {
    exactly(name, args, 1)?;
    Ok(Value::String(f(&text(&args[0]))))
}

fn upper(args: &[Value]) -> Result<Value, String> {
    one_string("upper", args, str::to_uppercase)
}

fn lower(args: &[Value]) -> Result<Value, String> {
    one_string("lower", args, str::to_lowercase)
}

fn trim(args: &[Value]) -> Result<Value, String> {
    one_string("trim", args, |s| s.trim().to_owned())
}

fn trim_prefix(args: &[Value]) -> Result<Value, String> {
    exactly("trimPrefix", args, 2)?;
    let (prefix, s) = (text(&args[0]), text(&args[1]));
    Ok(Value::String(
        s.strip_prefix(prefix.as_str()).unwrap_or(&s).to_owned(),
    ))
}

fn trim_suffix(args: &[Value]) -> Result<Value, String> {
    exactly("trimSuffix", args, 2)?;
    let (suffix, s) = (text(&args[0]), text(&args[1]));
    Ok(Value::String(
        s.strip_suffix(suffix.as_str()).unwrap_or(&s).to_owned(),
    ))
}

/// `replace OLD NEW S`: every OLD in S replaced by NEW (an empty OLD inserts NEW between
/// characters, as Go's `strings.Replace`).
fn replace(args: &[Value]) -> Result<Value, String> {
    exactly("replace", args, 3)?;
    let (old, new, s) = (text(&args[0]), text(&args[1]), text(&args[2]));
    let places = if old.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(old.as_str()).count()
    };
    let size = s.len().saturating_add(places.saturating_mul(new.len()));
    if size > MAX_VALUE_BYTES {
        return Err(format!(
            "replace: the result would be larger than {MAX_VALUE_BYTES} bytes"
        ));
    }
    if old.is_empty() {
        let mut out = String::with_capacity(size);
        out.push_str(&new);
        for c in s.chars() {
            out.push(c);
            out.push_str(&new);
        }
        return Ok(Value::String(out));
    }
    Ok(Value::String(s.replace(old.as_str(), &new)))
}

/// Go's `strconv.Quote` (what `%q` prints for a string).
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            ' ' => out.push(' '),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() || c.is_whitespace() => {
                if u32::from(c) < 0x10000 {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                } else {
                    let _ = write!(out, "\\U{:08x}", u32::from(c));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quote(args: &[Value]) -> Result<Value, String> {
    let parts: Vec<String> = args
        .iter()
        .filter(|v| !v.is_null())
        .map(|v| go_quote(&text(v)))
        .collect();
    Ok(Value::String(parts.join(" ")))
}

fn squote(args: &[Value]) -> Result<Value, String> {
    let parts: Vec<String> = args
        .iter()
        .filter(|v| !v.is_null())
        .map(|v| format!("'{}'", text(v)))
        .collect();
    Ok(Value::String(parts.join(" ")))
}

fn b64enc(args: &[Value]) -> Result<Value, String> {
    one_string("b64enc", args, |s| {
        base64::engine::general_purpose::STANDARD.encode(s)
    })
}

/// Standard base64 with padding. Unlike Sprig (which returns Go's error text as the result),
/// invalid input or a result that is not UTF-8 text is an error.
fn b64dec(args: &[Value]) -> Result<Value, String> {
    exactly("b64dec", args, 1)?;
    let input = text(&args[0]);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(input.as_bytes())
        .map_err(|e| err(format!("b64dec: illegal base64 data: {e}")))?;
    String::from_utf8(bytes)
        .map(Value::String)
        .map_err(|_| err("b64dec: decoded data is not UTF-8 text".to_owned()))
}

fn sha1sum(args: &[Value]) -> Result<Value, String> {
    one_string("sha1sum", args, |s| hex::encode(Sha1::digest(s.as_bytes())))
}

fn sha256sum(args: &[Value]) -> Result<Value, String> {
    one_string("sha256sum", args, |s| {
        hex::encode(Sha256::digest(s.as_bytes()))
    })
}

/// `toJson`: Go's `json.Marshal` (sorted keys, HTML-safe escaping).
fn to_json(args: &[Value]) -> Result<Value, String> {
    exactly("toJson", args, 1)?;
    Ok(Value::String(crate::hash::canonical_json(&args[0])))
}

/// `fromJson`: the parsed value; invalid JSON gives an empty map, as the original.
fn from_json(args: &[Value]) -> Result<Value, String> {
    exactly("fromJson", args, 1)?;
    Ok(
        serde_json::from_str::<Value>(&text(&args[0]))
            .unwrap_or_else(|_| Value::Object(Map::new())),
    )
}

/// `ternary TRUE FALSE COND`.
fn ternary(args: &[Value]) -> Result<Value, String> {
    exactly("ternary", args, 3)?;
    match &args[2] {
        Value::Bool(true) => Ok(args[0].clone()),
        Value::Bool(false) => Ok(args[1].clone()),
        other => Err(err(format!(
            "ternary: the condition must be a bool, got {}",
            basic_kind(other)
        ))),
    }
}

fn list(args: &[Value]) -> Result<Value, String> {
    Ok(Value::Array(args.to_vec()))
}

/// `join SEP LIST`: the list's items as text (nil items left out) joined by SEP; a single
/// value counts as a one-item list.
fn join(args: &[Value]) -> Result<Value, String> {
    exactly("join", args, 2)?;
    let sep = text(&args[0]);
    let parts: Vec<String> = match &args[1] {
        Value::Array(items) => items.iter().filter(|v| !v.is_null()).map(text).collect(),
        Value::Null => Vec::new(),
        other => vec![text(other)],
    };
    Ok(Value::String(parts.join(&sep)))
}

fn add(args: &[Value]) -> Result<Value, String> {
    Ok(Value::from(
        args.iter()
            .fold(0i64, |sum, v| sum.wrapping_add(cast_i64(v))),
    ))
}

fn mul(args: &[Value]) -> Result<Value, String> {
    Ok(Value::from(
        args.iter().fold(1i64, |p, v| p.wrapping_mul(cast_i64(v))),
    ))
}

fn sub(args: &[Value]) -> Result<Value, String> {
    exactly("sub", args, 2)?;
    Ok(Value::from(
        cast_i64(&args[0]).wrapping_sub(cast_i64(&args[1])),
    ))
}

fn div(args: &[Value]) -> Result<Value, String> {
    exactly("div", args, 2)?;
    let (a, b) = (cast_i64(&args[0]), cast_i64(&args[1]));
    if b == 0 {
        return Err(err("div: integer divide by zero".to_owned()));
    }
    Ok(Value::from(a.wrapping_div(b)))
}

fn modulo(args: &[Value]) -> Result<Value, String> {
    exactly("mod", args, 2)?;
    let (a, b) = (cast_i64(&args[0]), cast_i64(&args[1]));
    if b == 0 {
        return Err(err("mod: integer divide by zero".to_owned()));
    }
    Ok(Value::from(a.wrapping_rem(b)))
}

fn max(args: &[Value]) -> Result<Value, String> {
    at_least("max", args, 1)?;
    Ok(Value::from(
        args.iter().map(cast_i64).fold(i64::MIN, i64::max),
    ))
}

fn min(args: &[Value]) -> Result<Value, String> {
    at_least("min", args, 1)?;
    Ok(Value::from(
        args.iter().map(cast_i64).fold(i64::MAX, i64::min),
    ))
}

fn two_strings(
    name: &str,
    args: &[Value],
    f: impl Fn(&str, &str) -> bool,
) -> Result<Value, String> {
    exactly(name, args, 2)?;
    Ok(Value::Bool(f(&text(&args[0]), &text(&args[1]))))
}

/// `contains SUBSTR S`.
fn contains(args: &[Value]) -> Result<Value, String> {
    two_strings("contains", args, |sub, s| s.contains(sub))
}

/// `hasPrefix PREFIX S`.
fn has_prefix(args: &[Value]) -> Result<Value, String> {
    two_strings("hasPrefix", args, |prefix, s| s.starts_with(prefix))
}

/// `hasSuffix SUFFIX S`.
fn has_suffix(args: &[Value]) -> Result<Value, String> {
    two_strings("hasSuffix", args, |suffix, s| s.ends_with(suffix))
}

// === the original operator's functions ===

/// The host of a URL, without port (`https://acme.example.com:8443/x` → `acme.example.com`);
/// text that is not a URL with a host is cut at its first `:` (`acme.example.com:80` →
/// `acme.example.com`). Same results as the original's `toHost` (Go `url.Parse` +
/// `Hostname()`, falling back to cutting at the first colon).
pub fn to_host(raw: &str) -> String {
    if let Some(host) = url_hostname(raw).filter(|h| !h.is_empty()) {
        return host.to_owned();
    }
    match raw.find(':') {
        Some(i) => raw[..i].to_owned(),
        None => raw.to_owned(),
    }
}

/// `Hostname()` of `raw` parsed as a URL, when it has an authority (`scheme://host…` or
/// `//host…`); None when Go's `url.Parse` would fail or find no host.
fn url_hostname(raw: &str) -> Option<&str> {
    let rest = if raw.starts_with("//") {
        raw
    } else {
        let colon = raw.find(':')?;
        let scheme = &raw[..colon];
        let mut chars = scheme.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid {
            return None;
        }
        &raw[colon + 1..]
    };
    let after = rest.strip_prefix("//")?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let authority = &after[..end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(bracketed) = host_port.strip_prefix('[') {
        let close = bracketed.find(']')?;
        let port = &bracketed[close + 1..];
        if !(port.is_empty() || valid_port(port)) {
            return None;
        }
        return Some(&bracketed[..close]);
    }
    let (host, port) = match host_port.rfind(':') {
        Some(i) => (&host_port[..i], &host_port[i..]),
        None => (host_port, ""),
    };
    if !(port.is_empty() || valid_port(port)) {
        return None;
    }
    let bad_char = host.chars().any(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '<' | '>' | '"' | '`' | '{' | '}' | '|' | '\\' | '^')
    });
    if bad_char {
        return None;
    }
    Some(host)
}

/// `:` followed by digits only (Go's `validOptionalPort`, non-empty case).
fn valid_port(port: &str) -> bool {
    port.strip_prefix(':')
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
}

fn to_host_fn(args: &[Value]) -> Result<Value, String> {
    one_string("toHost", args, to_host)
}

// === Lynq's typed conversions ===

/// `int`: numbers truncate, bools are 0/1, strings parse as a decimal integer or else as a
/// float (truncated), anything else (and unparsable text) is 0.
fn to_int(args: &[Value]) -> Result<Value, String> {
    exactly("int", args, 1)?;
    let n = match &args[0] {
        Value::Bool(b) => i64::from(*b),
        Value::String(s) => s
            .parse::<i64>()
            .ok()
            .or_else(|| s.parse::<f64>().ok().map(trunc_f64))
            .unwrap_or(0),
        other => match number(other) {
            #[allow(clippy::cast_possible_truncation)]
            Some(Num::Int(i)) => i as i64,
            Some(Num::Float(f)) => trunc_f64(f),
            None => 0,
        },
    };
    Ok(Value::from(n))
}

/// `float`: numbers as they are, bools are 0/1, strings parse as a float, anything else (and
/// unparsable text) is 0.
fn to_float(args: &[Value]) -> Result<Value, String> {
    exactly("float", args, 1)?;
    let f = match &args[0] {
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::String(s) => s.parse::<f64>().unwrap_or(0.0),
        other => number_f64(other).unwrap_or(0.0),
    };
    Ok(float_value(f))
}

/// `bool`: `true 1 yes on t y` (any case) are true, other text is false; numbers are true
/// unless zero; anything else is false.
fn to_bool(args: &[Value]) -> Result<Value, String> {
    exactly("bool", args, 1)?;
    let b = match &args[0] {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on" | "t" | "y"
        ),
        other => number_f64(other).is_some_and(|f| f != 0.0),
    };
    Ok(Value::Bool(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_integer_literals() {
        for (s, want) in [
            ("42", Some(42)),
            ("-7", Some(-7)),
            ("0x1F", Some(31)),
            ("017", Some(15)),
            ("0b101", Some(5)),
            ("5.00", Some(5)),
            ("08", None),
            ("5.5", None),
            ("", None),
            ("abc", None),
        ] {
            assert_eq!(parse_go_int(s), want, "{s}");
        }
    }

    #[test]
    fn trunc_respects_characters() {
        assert_eq!(trunc_str(2, "héllo"), "h");
        assert_eq!(trunc_str(3, "héllo"), "hé");
        assert_eq!(trunc_str(-3, "héllo"), "llo");
        assert_eq!(trunc_str(-4, "héllo"), "llo");
        assert_eq!(trunc_str(-10, "abc"), "abc");
        assert_eq!(trunc_str(10, "abc"), "abc");
    }

    #[test]
    fn quoting_like_go() {
        assert_eq!(
            go_quote("a\"b\\c\n\u{1}é\u{a0}"),
            r#""a\"b\\c\n\x01é\u00a0""#
        );
    }

    #[test]
    fn floats_print_like_go() {
        for (f, want) in [
            (0.0, "0"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-1.5e-7, "-1.5e-07"),
        ] {
            assert_eq!(go_g(f, None, false), want, "{f}");
        }
        assert_eq!(go_g(1.23456, Some(3), false), "1.23");
        assert_eq!(go_g(1234.0, Some(2), true), "1.2E+03");
        assert_eq!(strval(&float_value(-2.5)), "-2.5");
        assert_eq!(float_value(f64::NAN), Value::String("NaN".to_owned()));
    }
}
