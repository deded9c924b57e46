//! Go's `fmt.Sprintf` for the template function `printf`: verbs `v s q d t x X o b c f F e E g
//! G %`, flags `- + # 0 space`, width and precision (at most 1000). `%s` and `%v` print any
//! value; `%d` and the float verbs also accept numeric text (Go prints `%!d(string=3)`); other
//! mismatches print Go's `%!verb(type=value)`.

use serde_json::Value;

use super::helpers::{go_g, go_quote, strval, type_name};

/// Largest width or precision accepted (a larger one would allocate that much).
const MAX_WIDTH: usize = 1000;

#[derive(Debug, Default)]
struct Spec {
    minus: bool,
    plus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    width: Option<usize>,
    precision: Option<usize>,
}

/// Formats like Go's `fmt.Sprintf`.
pub(crate) fn sprintf(format: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::with_capacity(format.len() + 16);
    let mut next = 0;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => spec.minus = true,
                '+' => spec.plus = true,
                '#' => spec.sharp = true,
                ' ' => spec.space = true,
                '0' => spec.zero = true,
                _ => break,
            }
            chars.next();
        }
        spec.width = number(&mut chars)?;
        if chars.peek() == Some(&'.') {
            chars.next();
            spec.precision = Some(number(&mut chars)?.unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next += 1;
        out.push_str(&format_arg(&spec, verb, arg));
    }
    if next < args.len() {
        out.push_str("%!(EXTRA ");
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|a| format!("{}={}", type_name(a), strval(a)))
            .collect();
        out.push_str(&extra.join(", "));
        out.push(')');
    }
    Ok(out)
}

fn number(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Option<usize>, String> {
    let mut n: Option<usize> = None;
    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
        chars.next();
        let value = n.unwrap_or(0) * 10 + d as usize;
        if value > MAX_WIDTH {
            return Err(format!("printf: width or precision above {MAX_WIDTH}"));
        }
        n = Some(value);
    }
    Ok(n)
}

fn bad_verb(verb: char, arg: &Value) -> String {
    format!("%!{verb}({}={})", type_name(arg), strval(arg))
}

/// An integer argument: integers, floats (truncated) and integer text.
fn integer(arg: &Value) -> Option<i128> {
    match arg {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| {
                #[allow(clippy::cast_possible_truncation)]
                n.as_f64().filter(|f| f.is_finite()).map(|f| f as i128)
            }),
        Value::String(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    }
}

/// A float argument: numbers and numeric text.
fn float(arg: &Value) -> Option<f64> {
    match arg {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

fn format_arg(spec: &Spec, verb: char, arg: &Value) -> String {
    let numeric = matches!(
        verb,
        'd' | 'x' | 'X' | 'o' | 'b' | 'f' | 'F' | 'e' | 'E' | 'g' | 'G'
    );
    let body = match verb {
        'v' | 's' => {
            let text = strval(arg);
            match spec.precision {
                Some(p) if verb == 's' || arg.is_string() => text.chars().take(p).collect(),
                _ => text,
            }
        }
        'q' => match arg {
            Value::Number(_) => match integer(arg)
                .and_then(|i| u32::try_from(i).ok())
                .and_then(char::from_u32)
            {
                Some(c) => format!("'{c}'"),
                None => bad_verb(verb, arg),
            },
            other => {
                let text = strval(other);
                if spec.sharp && !text.contains('`') {
                    format!("`{text}`")
                } else {
                    go_quote(&text)
                }
            }
        },
        't' => match arg {
            Value::Bool(b) => b.to_string(),
            other => bad_verb(verb, other),
        },
        'c' => match integer(arg)
            .and_then(|i| u32::try_from(i).ok())
            .and_then(char::from_u32)
        {
            Some(c) => c.to_string(),
            None => bad_verb(verb, arg),
        },
        'd' | 'o' | 'b' => match integer(arg) {
            Some(i) => {
                let digits = match verb {
                    'o' => format!("{:o}", i.unsigned_abs()),
                    'b' => format!("{:b}", i.unsigned_abs()),
                    _ => i.unsigned_abs().to_string(),
                };
                let prefix = match (spec.sharp, verb) {
                    (true, 'o') => "0",
                    (true, 'b') => "0b",
                    _ => "",
                };
                signed(spec, i < 0, &format!("{prefix}{digits}"))
            }
            None => bad_verb(verb, arg),
        },
        'x' | 'X' => {
            let hex = match arg {
                Value::String(s) => Some(s.bytes().map(|b| format!("{b:02x}")).collect::<String>()),
                _ => integer(arg).map(|i| {
                    let digits = format!("{:x}", i.unsigned_abs());
                    let prefix = if spec.sharp { "0x" } else { "" };
                    signed(spec, i < 0, &format!("{prefix}{digits}"))
                }),
            };
            match hex {
                Some(h) if verb == 'X' => h.to_uppercase(),
                Some(h) => h,
                None => bad_verb(verb, arg),
            }
        }
        'f' | 'F' | 'e' | 'E' | 'g' | 'G' => match float(arg) {
            Some(f) => {
                let text = if !f.is_finite() {
                    if f.is_nan() {
                        "NaN".to_owned()
                    } else if f > 0.0 {
                        "+Inf".to_owned()
                    } else {
                        "-Inf".to_owned()
                    }
                } else {
                    match verb {
                        'f' | 'F' => format!("{:.*}", spec.precision.unwrap_or(6), f.abs()),
                        'e' | 'E' => {
                            let sci = format!("{:.*e}", spec.precision.unwrap_or(6), f.abs());
                            let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
                            let exp: i32 = exp.parse().unwrap_or(0);
                            let e = if verb == 'E' { 'E' } else { 'e' };
                            let sign = if exp < 0 { '-' } else { '+' };
                            format!("{mantissa}{e}{sign}{:02}", exp.abs())
                        }
                        _ => go_g(f.abs(), spec.precision, verb == 'G'),
                    }
                };
                if f.is_finite() {
                    signed(spec, f.is_sign_negative(), &text)
                } else {
                    text
                }
            }
            None => bad_verb(verb, arg),
        },
        other => bad_verb(other, arg),
    };
    pad(spec, &body, numeric)
}

/// Adds the sign (`-`, or `+`/space when asked for).
fn signed(spec: &Spec, negative: bool, digits: &str) -> String {
    if negative {
        format!("-{digits}")
    } else if spec.plus {
        format!("+{digits}")
    } else if spec.space {
        format!(" {digits}")
    } else {
        digits.to_owned()
    }
}

/// Pads to the width: spaces on the left (right with `-`), zeros after the sign with `0`
/// for numbers.
fn pad(spec: &Spec, body: &str, numeric: bool) -> String {
    let Some(width) = spec.width else {
        return body.to_owned();
    };
    let len = body.chars().count();
    if len >= width {
        return body.to_owned();
    }
    let fill = width - len;
    if spec.minus {
        format!("{body}{}", " ".repeat(fill))
    } else if spec.zero && numeric && !body.contains("Inf") && !body.contains("NaN") {
        let sign_len = usize::from(body.starts_with(['-', '+', ' ']));
        let (sign, digits) = body.split_at(sign_len);
        format!("{sign}{}{digits}", "0".repeat(fill))
    } else {
        format!("{}{body}", " ".repeat(fill))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(format: &str, args: &[Value]) -> String {
        sprintf(format, args).expect("formats")
    }

    #[test]
    fn verbs_like_go() {
        assert_eq!(f("%s-%d", &[json!("a"), json!(7)]), "a-7");
        assert_eq!(
            f(
                "%05d|%-5d|%5d|%+d",
                &[json!(42), json!(42), json!(-42), json!(3)]
            ),
            "00042|42   |  -42|+3"
        );
        assert_eq!(
            f(
                "%x %X %o %b %#x",
                &[json!(255), json!(255), json!(8), json!(5), json!(255)]
            ),
            "ff FF 10 101 0xff"
        );
        assert_eq!(
            f("%.2f %e %g", &[json!(1.23456), json!(1234.5), json!(0.5)]),
            "1.23 1.234500e+03 0.5"
        );
        assert_eq!(
            f(
                "%q %t %c %v",
                &[json!("a\"b"), json!(true), json!(65), json!([1, "x"])]
            ),
            r#""a\"b" true A [1 x]"#
        );
        assert_eq!(
            f(
                "%.3s|%5s|%-5s|",
                &[json!("abcdef"), json!("ab"), json!("ab")]
            ),
            "abc|   ab|ab   |"
        );
        assert_eq!(f("100%%", &[]), "100%");
        assert_eq!(f("%d", &[json!("12")]), "12");
        assert_eq!(f("%x", &[json!("hi")]), "6869");
    }

    #[test]
    fn mismatches_like_go() {
        assert_eq!(f("%d", &[]), "%!d(MISSING)");
        assert_eq!(f("%d", &[json!("x")]), "%!d(string=x)");
        assert_eq!(f("%t", &[json!(1)]), "%!t(int=1)");
        assert_eq!(
            f("a", &[json!(1), json!("b")]),
            "a%!(EXTRA int=1, string=b)"
        );
        assert_eq!(f("%", &[]), "%!(NOVERB)");
        assert!(sprintf("%99999d", &[json!(1)]).is_err());
        assert!(sprintf("%.5000f", &[json!(1)]).is_err());
    }
}
