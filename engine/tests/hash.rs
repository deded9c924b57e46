//! Desired-state and spec hashes.

use engine::hash::{canonical_json, desired_state_hash, object_hash, spec_hash};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn cm(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": "team-a"}, "data": data})
}

#[test]
fn canonical_json_sorts_keys_recursively() {
    let a: Value =
        serde_json::from_str(r#"{"b": 1, "a": {"y": [3, {"d": 1, "c": 2}], "x": null}}"#)
            .expect("json");
    assert_eq!(
        canonical_json(&a),
        r#"{"a":{"x":null,"y":[3,{"c":2,"d":1}]},"b":1}"#
    );
}

#[test]
fn key_order_does_not_matter() {
    let a: Value = serde_json::from_str(
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"n"},"data":{"k":"v","l":"w"}}"#,
    )
    .expect("json");
    let b: Value = serde_json::from_str(
        r#"{"data":{"l":"w","k":"v"},"metadata":{"namespace":"n","name":"x"},"kind":"ConfigMap","apiVersion":"v1"}"#,
    )
    .expect("json");
    assert_eq!(object_hash(&a), object_hash(&b));
    assert_eq!(
        desired_state_hash(std::slice::from_ref(&a)),
        desired_state_hash(std::slice::from_ref(&b))
    );
}

#[test]
fn object_order_does_not_matter() {
    let one = cm("one", json!({"k": "1"}));
    let two = cm("two", json!({"k": "2"}));
    assert_eq!(
        desired_state_hash(&[one.clone(), two.clone()]),
        desired_state_hash(&[two, one])
    );
}

#[test]
fn any_value_change_matters() {
    let base = desired_state_hash(&[cm("one", json!({"k": "1"})), cm("two", json!({"k": "2"}))]);
    for changed in [
        vec![cm("one", json!({"k": "1"})), cm("two", json!({"k": "3"}))],
        vec![cm("one", json!({"k": "2"})), cm("two", json!({"k": "1"}))],
        vec![cm("one", json!({"k": "1"})), cm("two", json!({"k": 2}))],
        vec![cm("one", json!({"k": "1"}))],
        vec![
            cm("one", json!({"k": "1"})),
            cm("two", json!({"k": "2", "x": null})),
        ],
        vec![
            cm("one", json!({"k": "1"})),
            cm("two", json!({"k": "2"})),
            cm("two", json!({})),
        ],
    ] {
        assert_ne!(desired_state_hash(&changed), base, "{changed:?}");
    }
    // same input, same hash, every time
    assert_eq!(
        desired_state_hash(&[cm("one", json!({"k": "1"})), cm("two", json!({"k": "2"}))]),
        base
    );
}

#[test]
fn empty_state_hash_is_sha256_of_empty_array() {
    assert_eq!(desired_state_hash(&[]), hex::encode(Sha256::digest(b"[]")));
}

#[test]
fn hash_is_hex_sha256_of_sorted_canonical_array() {
    let one = cm("one", json!({"k": "<1>"}));
    let two = cm("two", json!({}));
    let text = format!("[{},{}]", canonical_json(&one), canonical_json(&two));
    assert!(text.contains(r"\u003c1\u003e"), "{text}");
    assert_eq!(
        desired_state_hash(&[two, one]),
        hex::encode(Sha256::digest(text.as_bytes()))
    );
}

#[test]
fn spec_hash_matches_go_json_marshal() {
    let spec: api::KubeTemplateSpec = serde_json::from_value(json!({
        "templates": [
            {"object": {"kind": "ConfigMap", "apiVersion": "v1",
                        "metadata": {"name": "a&b"}, "data": {"ratio": 0.5, "n": 3}}},
            {"object": {"apiVersion": "v1", "kind": "Secret"}, "replace": true, "referenced": true},
            {"object": {"apiVersion": "v1", "kind": "Service"}, "referenced": true}
        ]
    }))
    .expect("spec");
    // What Go's json.Marshal(spec) prints: fields in declaration order, omitempty bools left
    // out, raw objects as the API server stores them (sorted keys), HTML-safe escapes.
    let go = concat!(
        r#"{"templates":["#,
        r#"{"object":{"apiVersion":"v1","data":{"n":3,"ratio":0.5},"kind":"ConfigMap","metadata":{"name":"a\u0026b"}}},"#,
        r#"{"object":{"apiVersion":"v1","kind":"Secret"},"replace":true,"referenced":true},"#,
        r#"{"object":{"apiVersion":"v1","kind":"Service"},"referenced":true}"#,
        r#"]}"#
    );
    assert_eq!(spec_hash(&spec), hex::encode(Sha256::digest(go.as_bytes())));
    let empty: api::KubeTemplateSpec =
        serde_json::from_value(json!({"templates": []})).expect("spec");
    assert_eq!(
        spec_hash(&empty),
        hex::encode(Sha256::digest(br#"{"templates":[]}"#))
    );
}
