//! Unit tests of evaluation: every check, allow and deny, with the exact texts.

use api::{KubeTemplatePolicy, TemplateItem};
use serde_json::{Value, json};

use super::*;

fn policy(rules: Value) -> CompiledPolicy {
    let policy: KubeTemplatePolicy = serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1",
        "kind": "KubeTemplatePolicy",
        "metadata": {"name": "test-policy", "namespace": "kubetemplater-system"},
        "spec": {"sourceNamespace": "default", "validationRules": rules}
    }))
    .expect("policy decodes");
    CompiledPolicy::compile(&policy)
}

fn item(object: Value) -> TemplateItem {
    serde_json::from_value(json!({ "object": object })).expect("item decodes")
}

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

fn run(policy: &CompiledPolicy, objects: Vec<Value>) -> Verdict {
    let items: Vec<TemplateItem> = objects.into_iter().map(item).collect();
    evaluate("default", &items, PolicyLookup::Found(policy))
}

fn messages(verdict: &Verdict) -> Vec<String> {
    verdict
        .violations
        .iter()
        .map(|v| v.message.clone())
        .collect()
}

fn cm_rule(extra: Value) -> Value {
    let mut rule =
        json!({"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": ["default"]});
    if let (Some(rule), Some(extra)) = (rule.as_object_mut(), extra.as_object()) {
        rule.extend(extra.clone());
    }
    json!([rule])
}

fn validation(v: Value) -> CompiledPolicy {
    policy(cm_rule(json!({"fieldValidations": [v]})))
}

#[test]
fn policy_lookup_texts() {
    let items = vec![item(cm("a"))];
    let none = evaluate("team-a", &items, PolicyLookup::NotFound);
    assert!(!none.allowed);
    assert_eq!(
        none.message(),
        "failed to get policy: no KubeTemplatePolicy found for source namespace team-a"
    );
    assert_eq!(none.violations[0].check, Check::PolicyLookup);
    let many = evaluate("team-a", &items, PolicyLookup::Multiple);
    assert_eq!(
        many.message(),
        "failed to get policy: multiple KubeTemplatePolicies found for source namespace team-a"
    );
    let failed = evaluate("team-a", &items, PolicyLookup::ListFailed("timeout"));
    assert_eq!(
        failed.message(),
        "failed to get policy: failed to list KubeTemplatePolicies: timeout"
    );
}

#[test]
fn lookup_among_policies() {
    let a = policy(json!([]));
    let b = policy(json!([]));
    assert!(matches!(
        PolicyLookup::among("default", [&a]),
        PolicyLookup::Found(_)
    ));
    assert!(matches!(
        PolicyLookup::among("default", [&a, &b]),
        PolicyLookup::Multiple
    ));
    assert!(matches!(
        PolicyLookup::among("other", [&a]),
        PolicyLookup::NotFound
    ));
}

#[test]
fn allowed_configmap_and_empty_template() {
    let p = policy(cm_rule(json!({})));
    let verdict = run(&p, vec![cm("a")]);
    assert!(verdict.allowed, "{verdict:?}");
    assert!(verdict.warnings.is_empty());
    assert!(run(&p, vec![]).allowed);
}

#[test]
fn too_many_templates() {
    let p = policy(cm_rule(json!({})));
    let verdict = run(&p, (0..51).map(|i| cm(&format!("c{i}"))).collect());
    assert_eq!(
        verdict.message(),
        "too many templates: 51 (max allowed: 50)"
    );
    assert_eq!(verdict.violations.len(), 1);
    assert!(run(&p, (0..50).map(|i| cm(&format!("c{i}"))).collect()).allowed);
}

#[test]
fn object_size_limit() {
    let p = policy(cm_rule(json!({})));
    let mut big = cm("big");
    big["data"]["k"] = json!("x".repeat(MAX_OBJECT_BYTES));
    let size = serde_json::to_string(&big).expect("json").len();
    let verdict = run(&p, vec![cm("ok"), big]);
    assert_eq!(
        messages(&verdict),
        [format!(
            "template[1]: size {size} bytes exceeds maximum allowed size of 1048576 bytes"
        )]
    );
    assert_eq!(verdict.violations[0].name.as_deref(), Some("big"));
    // Go's JSON escapes < > & as \u003c..., which counts.
    let mut escaped = cm("esc");
    let filler = 1_048_576 - serde_json::to_string(&escaped).expect("json").len();
    escaped["data"]["k"] = json!(format!("{}<", "x".repeat(filler)));
    assert_eq!(
        serde_json::to_string(&escaped).expect("json").len(),
        1_048_576
    );
    assert_eq!(
        run(&p, vec![escaped]).message(),
        "template[0]: size 1048581 bytes exceeds maximum allowed size of 1048576 bytes"
    );
}

#[test]
fn missing_kind_and_api_version() {
    let p = policy(cm_rule(json!({})));
    let verdict = run(
        &p,
        vec![json!({"apiVersion": "v1", "metadata": {"name": "x"}, "data": {"b": "<&>"}})],
    );
    assert_eq!(
        verdict.message(),
        r#"template[0]: failed to unmarshal object: error unmarshaling JSON: while decoding JSON: Object 'Kind' is missing in '{"apiVersion":"v1","data":{"b":"\u003c\u0026\u003e"},"metadata":{"name":"x"}}'"#
    );
    assert_eq!(verdict.violations[0].check, Check::Decode);
    // Missing apiVersion: group and version "".
    let verdict = run(
        &p,
        vec![json!({"kind": "ConfigMap", "metadata": {"name": "x"}})],
    );
    assert_eq!(
        verdict.message(),
        "template[0]: resource type /, Kind=ConfigMap is not allowed by policy test-policy"
    );
}

#[test]
fn resource_type_not_allowed_with_go_gvk() {
    let p = policy(cm_rule(json!({})));
    let verdict = run(
        &p,
        vec![
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}),
            cm("fine"),
        ],
    );
    assert_eq!(
        messages(&verdict),
        [
            "template[0]: resource type /v1, Kind=Secret is not allowed by policy test-policy",
            "template[1]: resource type apps/v1, Kind=Deployment is not allowed by policy test-policy",
        ]
    );
    let v = &verdict.violations[1];
    assert_eq!(v.template_index, Some(1));
    assert_eq!(v.kind.as_deref(), Some("Deployment"));
    assert_eq!(v.api_version.as_deref(), Some("apps/v1"));
    assert_eq!(v.namespace.as_deref(), Some("default"));
    assert_eq!(v.name.as_deref(), Some("d"));
    assert_eq!(v.check, Check::ResourceType);
}

#[test]
fn first_matching_rule_wins() {
    let p = policy(json!([
        {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": ["default"]},
        {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": ["other"]}
    ]));
    assert!(run(&p, vec![cm("a")]).allowed);
    assert_eq!(p.problems().len(), 1);
    assert_eq!(p.problems()[0].kind, ProblemKind::DuplicateRule);
}

#[test]
fn target_namespaces() {
    let p = policy(json!([{"kind": "ConfigMap", "group": "", "version": "v1",
                           "targetNamespaces": ["a", "b"]}]));
    let mut other = cm("x");
    other["metadata"]["namespace"] = json!("b");
    let verdict = run(&p, vec![cm("defaulted"), other]);
    assert_eq!(
        messages(&verdict),
        [
            "template[0]: resource namespace default is not in the allowed target namespaces [a b] for resource type /v1, Kind=ConfigMap"
        ]
    );
    assert_eq!(verdict.violations[0].check, Check::TargetNamespace);

    let empty =
        policy(json!([{"kind": "Secret", "group": "", "version": "v1", "targetNamespaces": []}]));
    let verdict = run(
        &empty,
        vec![json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})],
    );
    assert_eq!(
        verdict.message(),
        "template[0]: resource type /v1, Kind=Secret has no target namespaces defined in policy test-policy. At least one target namespace must be specified"
    );
}

#[test]
fn namespace_defaulting_is_visible_to_checks() {
    let p = policy(cm_rule(json!({
        "rule": "object.metadata.namespace == 'default'",
        "fieldValidations": [{"name": "ns", "type": "regex", "fieldPath": "metadata.namespace", "regex": "^default$"}]
    })));
    assert!(run(&p, vec![cm("a")]).allowed);
    let no_metadata = json!({"apiVersion": "v1", "kind": "ConfigMap"});
    assert!(run(&p, vec![no_metadata]).allowed);
    let mut empty_ns = cm("b");
    empty_ns["metadata"]["namespace"] = json!("");
    assert!(run(&p, vec![empty_ns]).allowed);
    // Without metadata, defaulting creates it (as Go's SetNamespace does).
    let required = validation(json!({"name": "m", "type": "required", "fieldPath": "metadata"}));
    assert!(
        run(
            &required,
            vec![json!({"apiVersion": "v1", "kind": "ConfigMap"})]
        )
        .allowed
    );
    let forbidden =
        validation(json!({"name": "f", "type": "forbidden", "fieldPath": "metadata.namespace"}));
    assert_eq!(
        run(&forbidden, vec![cm("a")]).message(),
        "template[0]: fieldValidation (f): forbidden field metadata.namespace is present"
    );
    let whole = policy(cm_rule(
        json!({"rule": "size(object) == 4 && object.metadata.namespace == 'default'"}),
    ));
    assert!(run(&whole, vec![cm("a")]).allowed);
    let added = policy(cm_rule(
        json!({"rule": "size(object) == 3 && object.metadata == {'namespace': 'default'}"}),
    ));
    assert!(
        run(
            &added,
            vec![json!({"apiVersion": "v1", "kind": "ConfigMap"})]
        )
        .allowed
    );
    // metadata that is not a map: Go cannot set the namespace; it stays "".
    let odd = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": "x"});
    assert_eq!(
        run(&policy(cm_rule(json!({}))), vec![odd]).message(),
        "template[0]: resource namespace  is not in the allowed target namespaces [default] for resource type /v1, Kind=ConfigMap"
    );
}

#[test]
fn rule_cel_pass_fail_and_errors() {
    let p = policy(cm_rule(
        json!({"rule": "object.metadata.name.startsWith('allowed-')"}),
    ));
    assert!(run(&p, vec![cm("allowed-x")]).allowed);
    let verdict = run(&p, vec![cm("bad")]);
    assert_eq!(
        verdict.message(),
        "template[0]: resource /v1, Kind=ConfigMap/bad failed CEL validation rule: object.metadata.name.startsWith('allowed-')"
    );
    assert_eq!(verdict.violations[0].check, Check::Rule);

    let non_bool = policy(cm_rule(json!({"rule": "object.metadata.name"})));
    assert!(!run(&non_bool, vec![cm("x")]).allowed);

    let missing = policy(cm_rule(json!({"rule": "object.spec.replicas > 1"})));
    assert_eq!(
        run(&missing, vec![cm("x")]).message(),
        "template[0]: failed to evaluate CEL rule: no such key: spec"
    );

    let invalid = policy(cm_rule(json!({"rule": "object.metadata.name.startsWith("})));
    let message = run(&invalid, vec![cm("x")]).message();
    assert!(
        message.starts_with("template[0]: failed to parse CEL rule: "),
        "{message}"
    );
    assert_eq!(invalid.problems().len(), 1);
    assert_eq!(invalid.problems()[0].kind, ProblemKind::InvalidCel);

    let unchecked = policy(cm_rule(json!({"rule": "self.metadata.name == 'x'"})));
    assert_eq!(
        run(&unchecked, vec![cm("x")]).message(),
        "template[0]: failed to check CEL rule: undeclared reference to 'self' (in container '')"
    );
}

#[test]
fn field_cel() {
    let p = validation(
        json!({"name": "prefix", "type": "cel", "fieldPath": "metadata.name",
                              "cel": "value.startsWith('prod-')"}),
    );
    assert!(run(&p, vec![cm("prod-a")]).allowed);
    assert_eq!(
        run(&p, vec![cm("dev-a")]).message(),
        "template[0]: fieldValidation (prefix): resource /v1, Kind=ConfigMap/dev-a failed CEL validation rule: value.startsWith('prod-')"
    );
    let with_message = validation(
        json!({"name": "prefix", "type": "cel", "fieldPath": "metadata.name",
                              "cel": "value.startsWith('prod-')", "message": "must start with prod-"}),
    );
    assert_eq!(
        run(&with_message, vec![cm("dev-a")]).message(),
        "template[0]: fieldValidation (prefix): must start with prod-"
    );
    // Missing field: value is null.
    let null = validation(
        json!({"name": "n", "type": "cel", "fieldPath": "metadata.labels.team",
                                 "cel": "value == null"}),
    );
    assert!(run(&null, vec![cm("a")]).allowed);
    // Object-level: fieldPath "" or "object" binds `object`.
    for path in ["", "object"] {
        let obj = validation(json!({"name": "o", "type": "cel", "fieldPath": path,
                                    "cel": "object.kind == 'ConfigMap'"}));
        assert!(run(&obj, vec![cm("a")]).allowed, "{path}");
    }
    let obj = validation(json!({"name": "o", "type": "cel", "cel": "object.data.size() > 5"}));
    assert_eq!(
        run(&obj, vec![cm("a")]).message(),
        "template[0]: fieldValidation (o): resource /v1, Kind=ConfigMap/a failed CEL validation rule: object.data.size() > 5"
    );
    // Every CEL error is replaced by the message, lookup errors are not.
    let err = validation(
        json!({"name": "e", "type": "cel", "fieldPath": "metadata.name",
                                "cel": "value.nope(", "message": "custom"}),
    );
    assert_eq!(
        run(&err, vec![cm("a")]).message(),
        "template[0]: fieldValidation (e): custom"
    );
    let lookup = validation(
        json!({"name": "e", "type": "cel", "fieldPath": "metadata.name.x",
                                   "cel": "value == 1", "message": "custom"}),
    );
    assert_eq!(
        run(&lookup, vec![cm("a")]).message(),
        "template[0]: fieldValidation (e): failed to get field metadata.name.x: .metadata.name.x accessor error: a is of the type string, expected map[string]interface{}"
    );
    let eval = validation(
        json!({"name": "e", "type": "cel", "fieldPath": "metadata.name",
                                 "cel": "value.size() > int('x')"}),
    );
    assert!(
        run(&eval, vec![cm("a")])
            .message()
            .starts_with("template[0]: fieldValidation (e): failed to evaluate CEL rule: ")
    );
    let missing = validation(json!({"name": "m", "type": "cel", "fieldPath": "metadata.name"}));
    assert_eq!(
        run(&missing, vec![cm("a")]).message(),
        "template[0]: fieldValidation (m): CEL expression is required for type 'cel'"
    );
    assert_eq!(missing.problems()[0].kind, ProblemKind::MissingParameter);
    // `value` programs cannot see `object`.
    let scope = validation(
        json!({"name": "s", "type": "cel", "fieldPath": "metadata.name",
                                  "cel": "object.kind == 'x'"}),
    );
    assert_eq!(
        run(&scope, vec![cm("a")]).message(),
        "template[0]: fieldValidation (s): failed to check CEL rule: undeclared reference to 'object' (in container '')"
    );
}

#[test]
fn field_regex() {
    let p = validation(
        json!({"name": "r", "type": "regex", "fieldPath": "metadata.name",
                              "regex": "^[a-z]+-[a-z]+$"}),
    );
    assert!(run(&p, vec![cm("ab-cd")]).allowed);
    assert_eq!(
        run(&p, vec![cm("INVALID_NAME")]).message(),
        "template[0]: fieldValidation (r): field metadata.name value 'INVALID_NAME' does not match regex pattern '^[a-z]+-[a-z]+$'"
    );
    let unanchored = validation(
        json!({"name": "r", "type": "regex", "fieldPath": "metadata.name", "regex": "prod"}),
    );
    assert!(run(&unanchored, vec![cm("my-prod-x")]).allowed);
    let missing = validation(
        json!({"name": "r", "type": "regex", "fieldPath": "metadata.labels.x", "regex": "a", "message": "m"}),
    );
    assert_eq!(
        run(&missing, vec![cm("a")]).message(),
        "template[0]: fieldValidation (r): field metadata.labels.x not found"
    );
    let not_string =
        validation(json!({"name": "r", "type": "regex", "fieldPath": "data", "regex": "a"}));
    assert_eq!(
        run(&not_string, vec![cm("a")]).message(),
        "template[0]: fieldValidation (r): failed to get field data: .data accessor error: map[k:v] is of the type map[string]interface {}, expected string"
    );
    let invalid = validation(
        json!({"name": "r", "type": "regex", "fieldPath": "metadata.name", "regex": "("}),
    );
    let message = run(&invalid, vec![cm("a")]).message();
    assert!(
        message.starts_with("template[0]: fieldValidation (r): invalid regex pattern (: "),
        "{message}"
    );
    assert_eq!(invalid.problems()[0].kind, ProblemKind::InvalidRegex);
    let no_pattern =
        validation(json!({"name": "r", "type": "regex", "fieldPath": "metadata.name"}));
    assert_eq!(
        run(&no_pattern, vec![cm("a")]).message(),
        "template[0]: fieldValidation (r): regex pattern is required for type 'regex'"
    );
    let no_path = validation(json!({"name": "r", "type": "regex", "regex": "a"}));
    assert_eq!(
        run(&no_path, vec![cm("a")]).message(),
        "template[0]: fieldValidation (r): fieldPath is required for type 'regex'"
    );
}

fn deploy(replicas: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
    "spec": {"replicas": replicas, "template": {"spec": {"containers": [
        {"name": "a", "image": "nginx:1", "securityContext": {"privileged": true}},
        {"name": "b", "image": "evil:latest"}
    ]}}}})
}

fn deploy_policy(validations: Value) -> CompiledPolicy {
    policy(
        json!([{"kind": "Deployment", "group": "apps", "version": "v1",
                   "targetNamespaces": ["default"], "fieldValidations": validations}]),
    )
}

#[test]
fn field_range() {
    let p = deploy_policy(
        json!([{"name": "r", "type": "range", "fieldPath": "spec.replicas", "min": 2, "max": 5}]),
    );
    assert!(run(&p, vec![deploy(json!(2))]).allowed);
    assert!(run(&p, vec![deploy(json!(5))]).allowed);
    assert!(run(&p, vec![deploy(json!(3.0))]).allowed);
    assert_eq!(
        run(&p, vec![deploy(json!(1))]).message(),
        "template[0]: fieldValidation (r): field spec.replicas value 1 is less than minimum 2"
    );
    assert_eq!(
        run(&p, vec![deploy(json!(6))]).message(),
        "template[0]: fieldValidation (r): field spec.replicas value 6 is greater than maximum 5"
    );
    assert_eq!(
        run(&p, vec![deploy(json!(2.5))]).message(),
        "template[0]: fieldValidation (r): failed to get field spec.replicas as int64: .spec.replicas accessor error: 2.5 is of the type float64, expected int64"
    );
    assert_eq!(
        run(&p, vec![deploy(json!("3"))]).message(),
        "template[0]: fieldValidation (r): failed to get field spec.replicas as int64: .spec.replicas accessor error: 3 is of the type string, expected int64"
    );
    let missing = deploy_policy(
        json!([{"name": "r", "type": "range", "fieldPath": "spec.x", "max": 1, "message": "m"}]),
    );
    assert_eq!(
        run(&missing, vec![deploy(json!(1))]).message(),
        "template[0]: fieldValidation (r): field spec.x not found"
    );
    let neither =
        deploy_policy(json!([{"name": "r", "type": "range", "fieldPath": "spec.replicas"}]));
    assert_eq!(
        run(&neither, vec![deploy(json!(1))]).message(),
        "template[0]: fieldValidation (r): at least one of min or max must be specified for type 'range'"
    );
    let no_path = deploy_policy(json!([{"name": "r", "type": "range", "max": 1}]));
    assert_eq!(
        run(&no_path, vec![deploy(json!(1))]).message(),
        "template[0]: fieldValidation (r): fieldPath is required for type 'range'"
    );
    let inverted = deploy_policy(
        json!([{"name": "r", "type": "range", "fieldPath": "spec.replicas", "min": 5, "max": 1}]),
    );
    assert_eq!(inverted.problems()[0].kind, ProblemKind::MinGreaterThanMax);
    assert_eq!(
        run(&inverted, vec![deploy(json!(3))]).message(),
        "template[0]: fieldValidation (r): field spec.replicas value 3 is less than minimum 5"
    );
}

#[test]
fn field_required() {
    let p = validation(json!({"name": "q", "type": "required", "fieldPath": "data.k"}));
    for (value, ok) in [
        (json!("v"), true),
        (json!({}), true),
        (json!([]), true),
        (json!(0), true),
        (json!(false), true),
        (json!(""), false),
        (Value::Null, false),
    ] {
        let mut object = cm("a");
        object["data"]["k"] = value.clone();
        assert_eq!(run(&p, vec![object]).allowed, ok, "{value}");
    }
    let mut object = cm("a");
    object["data"] = json!({});
    assert_eq!(
        run(&p, vec![object]).message(),
        "template[0]: fieldValidation (q): required field data.k is missing or empty"
    );
    let no_path = validation(json!({"name": "q", "type": "required"}));
    assert_eq!(
        run(&no_path, vec![cm("a")]).message(),
        "template[0]: fieldValidation (q): fieldPath is required for type 'required'"
    );
}

#[test]
fn field_forbidden() {
    let p = validation(json!({"name": "f", "type": "forbidden", "fieldPath": "data.k"}));
    for (value, ok) in [
        (json!("v"), false),
        (Value::Null, false),
        (json!(false), false),
    ] {
        let mut object = cm("a");
        object["data"]["k"] = value.clone();
        assert_eq!(run(&p, vec![object]).allowed, ok, "{value}");
    }
    assert_eq!(
        run(&p, vec![cm("a")]).message(),
        "template[0]: fieldValidation (f): forbidden field data.k is present"
    );
    let mut absent = cm("a");
    absent["data"] = json!({"other": "x"});
    assert!(run(&p, vec![absent]).allowed);
    let no_path = validation(json!({"name": "f", "type": "forbidden"}));
    assert_eq!(
        run(&no_path, vec![cm("a")]).message(),
        "template[0]: fieldValidation (f): fieldPath is required for type 'forbidden'"
    );
}

#[test]
fn list_indexes_and_wildcards_in_field_paths() {
    let p = deploy_policy(json!([
        {"name": "first-priv", "type": "forbidden",
         "fieldPath": "spec.template.spec.containers.0.securityContext.privileged"},
        {"name": "no-latest", "type": "regex", "fieldPath": "spec.template.spec.containers.*.image",
         "regex": "^[^:]+:[0-9]"},
        {"name": "named", "type": "required", "fieldPath": "spec.template.spec.containers.*.name",
         "message": "containers need names"},
        {"name": "priv", "type": "cel", "fieldPath": "spec.template.spec.containers.*.securityContext.privileged",
         "cel": "value != true", "message": "no privileged containers"}
    ]));
    let verdict = run(&p, vec![deploy(json!(1))]);
    assert_eq!(
        messages(&verdict),
        [
            "template[0]: fieldValidation (first-priv): forbidden field spec.template.spec.containers.0.securityContext.privileged is present",
            "template[0]: fieldValidation (no-latest): field spec.template.spec.containers.1.image value 'evil:latest' does not match regex pattern '^[^:]+:[0-9]'",
            "template[0]: fieldValidation (priv): no privileged containers (field spec.template.spec.containers.0.securityContext.privileged)",
        ]
    );
    assert_eq!(
        verdict.violations[1].field_path.as_deref(),
        Some("spec.template.spec.containers.1.image")
    );
    // A non-index segment on a list is still the original's error.
    let names = deploy_policy(json!([{"name": "n", "type": "required",
        "fieldPath": "spec.template.spec.containers.name"}]));
    let message = run(&names, vec![deploy(json!(1))]).message();
    assert!(
        message.starts_with("template[0]: fieldValidation (n): failed to get field spec.template.spec.containers.name: .spec.template.spec.containers.name accessor error: [map["),
        "{message}"
    );
    assert!(message.ends_with("is of the type []interface {}, expected map[string]interface{}"));
}

#[test]
fn all_violations_are_reported_in_order() {
    let p = policy(json!([
        {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": ["other"],
         "rule": "object.metadata.name.startsWith('ok-')",
         "fieldValidations": [
            {"name": "a", "type": "required", "fieldPath": "metadata.labels.team"},
            {"name": "b", "type": "regex", "fieldPath": "metadata.name", "regex": "^ok-"}
         ]}
    ]));
    let verdict = run(
        &p,
        vec![cm("bad"), json!({"apiVersion": "v1", "kind": "Secret"})],
    );
    assert_eq!(
        messages(&verdict),
        [
            "template[0]: resource namespace default is not in the allowed target namespaces [other] for resource type /v1, Kind=ConfigMap",
            "template[0]: resource /v1, Kind=ConfigMap/bad failed CEL validation rule: object.metadata.name.startsWith('ok-')",
            "template[0]: fieldValidation (a): required field metadata.labels.team is missing or empty",
            "template[0]: fieldValidation (b): field metadata.name value 'bad' does not match regex pattern '^ok-'",
            "template[1]: resource type /v1, Kind=Secret is not allowed by policy test-policy",
        ]
    );
    assert_eq!(verdict.message().lines().count(), 5);
}

#[test]
fn replace_warning() {
    let p = policy(cm_rule(json!({"rule": "object.metadata.name != 'bad'"})));
    let mut items = vec![item(cm("test-cm")), item(cm("bad"))];
    items[0].replace = true;
    items[1].replace = true;
    let verdict = evaluate("default", &items, PolicyLookup::Found(&p));
    assert_eq!(
        verdict.warnings,
        [
            "template[0]: replace is enabled for /v1, Kind=ConfigMap/test-cm. The resource will be deleted and recreated if immutable fields are changed"
        ]
    );
    assert!(!verdict.allowed);
}

#[test]
fn cluster_scoped_kinds_need_explicit_allowance() {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}});
    let p = policy(json!([
        {"kind": "Namespace", "group": "", "version": "v1", "targetNamespaces": ["default"]},
        {"kind": "ClusterRole", "group": "rbac.authorization.k8s.io", "version": "v1", "targetNamespaces": ["", "default"]}
    ]));
    let verdict = run(&p, vec![ns.clone(), role.clone()]);
    assert_eq!(
        messages(&verdict),
        [
            "template[0]: resource type /v1, Kind=Namespace is cluster-scoped and is not allowed by policy test-policy: its rule must list \"\" (cluster scope) in targetNamespaces"
        ]
    );
    assert_eq!(verdict.violations[0].check, Check::ClusterScope);
    // Extra kinds from discovery.
    let crd = json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "i"}});
    let p = policy(
        json!([{"kind": "ClusterIssuer", "group": "cert-manager.io", "version": "v1", "targetNamespaces": ["default"]}]),
    );
    let items = vec![item(crd)];
    assert!(evaluate("default", &items, PolicyLookup::Found(&p)).allowed);
    let options = EvaluateOptions {
        cluster_scoped: ClusterScopedKinds::builtin().with("cert-manager.io", "ClusterIssuer"),
    };
    assert!(!evaluate_with("default", &items, PolicyLookup::Found(&p), &options).allowed);
}

#[test]
fn hostile_cel_is_refused_quickly() {
    let list = format!(
        "[{}]",
        (0..300)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let nested = format!("{list}.all(x, {list}.all(y, {list}.all(z, x + y + z >= 0)))");
    let doubling = format!("'ab'{}.size() > 0", ".replace('a', 'aaaa')".repeat(20));
    for rule in [nested, doubling] {
        let p = policy(cm_rule(json!({ "rule": rule })));
        assert_eq!(p.problems()[0].kind, ProblemKind::CelCostLimit);
        let started = std::time::Instant::now();
        let verdict = run(&p, vec![cm("a")]);
        assert_eq!(
            verdict.message(),
            "template[0]: failed to evaluate CEL rule: operation cancelled: actual cost limit exceeded"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
    // Cost depends on the object: a quadratic map over a large list in the object is refused.
    let p = policy(cm_rule(
        json!({"rule": "object.data.items.map(x, x).size() >= 0"}),
    ));
    assert!(p.problems().is_empty());
    let mut big = cm("a");
    big["data"] = json!({"items": (0..20_000).collect::<Vec<_>>()});
    let started = std::time::Instant::now();
    assert!(
        run(&p, vec![big])
            .message()
            .ends_with("actual cost limit exceeded")
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    let mut small = cm("a");
    small["data"] = json!({"items": [1, 2, 3]});
    assert!(run(&p, vec![small]).allowed);
}

#[test]
fn compile_strict_and_validate_policy() {
    let good = policy(cm_rule(json!({"rule": "true"})));
    assert!(good.problems().is_empty());
    let raw: KubeTemplatePolicy = serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplatePolicy",
        "metadata": {"name": "p", "namespace": "s", "generation": 3},
        "spec": {"sourceNamespace": "team", "validationRules": [
            {"kind": "Deployment", "group": "apps", "version": "v1", "targetNamespaces": ["team"],
             "rule": "object.(",
             "fieldValidations": [
                {"name": "a", "type": "regex", "fieldPath": "metadata.name", "regex": "[z-a]"},
                {"name": "b", "type": "range", "fieldPath": "spec.replicas", "min": 3, "max": 1},
                {"name": "c", "type": "cel", "fieldPath": "metadata.name", "cel": "value.x(("}
             ]}
        ]}
    }))
    .expect("policy");
    let problems = validate_policy(&raw);
    let kinds: Vec<_> = problems.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            ProblemKind::InvalidCel,
            ProblemKind::InvalidRegex,
            ProblemKind::MinGreaterThanMax,
            ProblemKind::InvalidCel
        ]
    );
    assert_eq!(problems[1].validation.as_deref(), Some("a"));
    assert_eq!(problems[0].rule, "apps/v1, Kind=Deployment");
    assert!(
        problems[0].to_string().starts_with(
            "validationRules[0] (apps/v1, Kind=Deployment): failed to parse CEL rule: "
        )
    );
    let err = CompiledPolicy::compile_strict(&raw).expect_err("invalid");
    assert_eq!(err.metric_label(), "invalid_policy");
    assert!(
        err.to_string()
            .starts_with("KubeTemplatePolicy p is invalid: ")
    );
    let compiled = CompiledPolicy::compile(&raw);
    assert_eq!(compiled.generation(), Some(3));
    assert_eq!(compiled.source_namespace(), "team");
    assert_eq!(compiled.name(), "p");
}

#[test]
fn compiled_policy_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledPolicy>();
    assert_send_sync::<std::sync::Arc<CompiledPolicy>>();
}
