//! Property tests: evaluation never panics, whatever the objects and whatever the policy's CEL,
//! regexes and field paths. Invalid parts yield policy problems or violations.

use api::{KubeTemplatePolicy, TemplateItem};
use engine::policy::{CompiledPolicy, PolicyLookup, evaluate, validate_policy};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|u| json!(u)),
        (-1e30f64..1e30).prop_map(|f| json!(f)),
        "[a-z<>&\"\\\\ ]{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("metadata".to_string()),
        Just("name".to_string()),
        Just("namespace".to_string()),
        Just("spec".to_string()),
        Just("containers".to_string()),
        Just("0".to_string()),
        "[a-z]{1,6}",
    ]
}

/// Objects shaped like Kubernetes objects, with arbitrary contents.
fn object() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::option::of(prop_oneof![
            Just(json!("ConfigMap")),
            Just(json!("Deployment")),
            Just(json!("Namespace")),
            json_leaf()
        ]),
        prop::option::of(prop_oneof![
            Just(json!("v1")),
            Just(json!("apps/v1")),
            Just(json!("a/b/c")),
            json_leaf()
        ]),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
    )
        .prop_map(|(kind, api_version, metadata, spec)| {
            let mut m = Map::new();
            for (k, v) in [
                ("kind", kind),
                ("apiVersion", api_version),
                ("metadata", metadata),
                ("spec", spec),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            m
        })
}

/// CEL-ish text: fragments of real syntax glued together, or anything.
fn cel_text() -> impl Strategy<Value = String> {
    let fragment = prop::sample::select(vec![
        "object",
        "value",
        "self",
        ".",
        "metadata",
        "name",
        "spec",
        "containers",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ":",
        ",",
        "?",
        "'a'",
        "\"b\"",
        "r'c'",
        "1",
        "-2",
        "3.5",
        "true",
        "null",
        "+",
        "-",
        "*",
        "/",
        "%",
        "==",
        "!=",
        "<",
        ">=",
        "&&",
        "||",
        "!",
        " in ",
        "has(",
        "size(",
        ".all(x, ",
        ".exists(x, ",
        ".map(x, ",
        ".filter(x, ",
        ".exists_one(x, ",
        "x",
        ".startsWith(",
        ".matches(",
        ".replace(",
        ".split(",
        ".join(",
        "lists.range(",
        "sets.contains(",
        "quantity(",
        "'%s'.format(",
        "int(",
        "string(",
        "Foo{",
        "b'x'",
        "'''",
        "//",
        "\n",
    ]);
    prop_oneof![
        prop::collection::vec(fragment, 0..24).prop_map(|v| v.concat()),
        any::<String>(),
    ]
}

fn regex_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z\\\\()\\[\\]{}*+?|^$.:&~QEdwsb0-9,-]{0,16}",
        any::<String>()
    ]
}

fn field_path() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec![
        "metadata",
        "name",
        "namespace",
        "spec",
        "containers",
        "0",
        "1",
        "*",
        "",
        "x",
    ]);
    prop_oneof![
        prop::collection::vec(segment, 0..6).prop_map(|v| v.join(".")),
        any::<String>(),
    ]
}

fn policy_with(
    rule: String,
    cel: String,
    object_cel: String,
    regex: String,
    path: String,
) -> KubeTemplatePolicy {
    let rules: Vec<Value> = ["ConfigMap", "Deployment", "Namespace"]
        .iter()
        .zip([("", "v1"), ("apps", "v1"), ("", "v1")])
        .map(|(kind, (group, version))| {
            json!({
                "kind": kind, "group": group, "version": version,
                "targetNamespaces": ["default", ""],
                "rule": rule,
                "fieldValidations": [
                    {"name": "c", "type": "cel", "fieldPath": path, "cel": cel},
                    {"name": "o", "type": "cel", "cel": object_cel, "message": "m"},
                    {"name": "r", "type": "regex", "fieldPath": path, "regex": regex},
                    {"name": "n", "type": "range", "fieldPath": path, "min": -5, "max": 5},
                    {"name": "q", "type": "required", "fieldPath": path},
                    {"name": "f", "type": "forbidden", "fieldPath": path}
                ]
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1",
        "kind": "KubeTemplatePolicy",
        "metadata": {"name": "p"},
        "spec": {"sourceNamespace": "default", "validationRules": rules}
    }))
    .expect("policy decodes")
}

fn items(objects: Vec<Map<String, Value>>) -> Vec<TemplateItem> {
    objects
        .into_iter()
        .map(|object| TemplateItem {
            object,
            replace: true,
            referenced: false,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 192,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_objects_never_panic(objects in prop::collection::vec(object(), 0..4)) {
        let policy = CompiledPolicy::compile(&policy_with(
            "has(object.metadata) && object.metadata.name.startsWith('a')".into(),
            "value == null || string(value).size() < 100".into(),
            "object.all(k, k != 'forbidden')".into(),
            "^[a-z]+$".into(),
            "spec.containers.*.name".into(),
        ));
        prop_assert!(policy.problems().is_empty(), "{:?}", policy.problems());
        let items = items(objects);
        let verdict = evaluate("default", &items, PolicyLookup::Found(&policy));
        prop_assert_eq!(verdict.allowed, verdict.violations.is_empty());
        for v in &verdict.violations {
            prop_assert!(v.message.starts_with("template["), "{}", v.message);
        }
    }

    #[test]
    fn arbitrary_policy_text_never_panics(
        rule in cel_text(),
        cel in cel_text(),
        regex in regex_text(),
        path in field_path(),
        objects in prop::collection::vec(object(), 1..3),
    ) {
        let raw = policy_with(rule, cel.clone(), cel, regex, path);
        let problems = validate_policy(&raw);
        let policy = CompiledPolicy::compile(&raw);
        prop_assert_eq!(problems.len(), policy.problems().len());
        let items = items(objects);
        let verdict = evaluate("default", &items, PolicyLookup::Found(&policy));
        prop_assert_eq!(verdict.allowed, verdict.violations.is_empty());
    }
}

#[test]
fn invalid_policy_text_is_reported_not_panicking() {
    let raw = policy_with(
        "object.(".into(),
        "value.all(".into(),
        "object.all(".into(),
        "(unclosed".into(),
        "metadata.name".into(),
    );
    let policy = CompiledPolicy::compile(&raw);
    // Per rule: the rule, two cel validations and the regex.
    assert_eq!(policy.problems().len(), 12, "{:?}", policy.problems());
    let items = items(vec![
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}),
        )
        .expect("object"),
    ]);
    let verdict = evaluate("default", &items, PolicyLookup::Found(&policy));
    let messages: Vec<&str> = verdict
        .violations
        .iter()
        .map(|v| v.message.as_str())
        .collect();
    assert!(
        messages[0].starts_with("template[0]: failed to parse CEL rule: "),
        "{messages:?}"
    );
    assert!(
        messages[1].starts_with("template[0]: fieldValidation (c): failed to parse CEL rule: ")
    );
    assert_eq!(messages[2], "template[0]: fieldValidation (o): m");
    assert!(
        messages[3]
            .starts_with("template[0]: fieldValidation (r): invalid regex pattern (unclosed: ")
    );
}
