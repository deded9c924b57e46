//! Property tests: rendering never panics (nor hangs) on arbitrary input.

use std::sync::mpsc;
use std::time::Duration;

use engine::render::{Renderer, Vars, render_str, render_value};
use proptest::prelude::*;
use serde_json::Value;

/// Runs `f` on its own thread and fails if it takes more than two seconds (a hang in the
/// template engine would otherwise stall the test forever).
fn within_deadline<T: Send + 'static>(what: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(value) => value,
        Err(_) => panic!("rendering did not finish within 2 s: {what}"),
    }
}

fn vars() -> Vars {
    Vars::tenant("acme", "https://acme.example.com:8443", "true").with("n", "3")
}

/// Template-like text: fragments of template syntax mixed with arbitrary characters.
fn template_text() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("{{".to_owned()),
        Just("}}".to_owned()),
        Just("{{- ".to_owned()),
        Just(" -}}".to_owned()),
        Just(".uid".to_owned()),
        Just(".n".to_owned()),
        Just(".missing".to_owned()),
        Just(" | ".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("`".to_owned()),
        Just("\\".to_owned()),
        Just("$x := ".to_owned()),
        Just("$x".to_owned()),
        Just("$".to_owned()),
        Just("/*".to_owned()),
        Just("*/".to_owned()),
        prop::sample::select(vec![
            "if", "else", "end", "range", "with", "define", "template", "block", "nil", "true",
            "int", "float", "bool", "default", "trunc", "printf", "index", "len", "eq", "lt",
            "and", "or", "not", "list", "join", "add", "div", "mod", "fromJson", "toJson", "quote",
            "b64dec", "toHost", "ternary", "replace", "trunc63",
        ])
        .prop_map(|w| format!(" {w} ")),
        "[0-9.eE+-]{1,6}",
        "%[0-9.]{0,4}[dsvqxf%]",
        "\\PC{0,3}",
        ".{0,3}",
    ];
    prop::collection::vec(fragment, 0..24).prop_map(|parts| parts.concat())
}

fn json_values() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        template_text().prop_map(Value::String),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    // 2000 cases by default; PROPTEST_CASES=100000 for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn render_str_never_panics(text in template_text()) {
        let t = text.clone();
        within_deadline(format!("{text:?}"), move || render_str(&t, &vars()).is_ok());
    }

    #[test]
    fn arbitrary_unicode_never_panics(text in "\\PC{0,40}") {
        let t = text.clone();
        within_deadline(format!("{text:?}"), move || {
            let _ = render_str(&t, &vars());
            render_str(&format!("{{{{{t}}}}}"), &vars()).is_ok()
        });
    }

    #[test]
    fn render_value_never_panics(value in json_values()) {
        let input = value.clone();
        let out = within_deadline(format!("{value}"), move || {
            let _ = render_value(&input, &vars());
            Renderer::new().render_value(&input, &vars())
        });
        if let Ok(out) = out {
            // the shape is kept: same keys, same lengths, non-strings untouched
            match (&value, &out) {
                (Value::Object(a), Value::Object(b)) => prop_assert!(a.keys().eq(b.keys())),
                (Value::Array(a), Value::Array(b)) => prop_assert_eq!(a.len(), b.len()),
                (Value::String(_), _) => {}
                (a, b) => prop_assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn text_without_actions_is_unchanged(text in "[^{]{0,40}") {
        prop_assert_eq!(render_str(&text, &vars()).expect("plain text renders"), text);
    }
}
