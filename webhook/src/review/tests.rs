//! Decisions, one request at a time, without a cluster.

use std::sync::Arc;

use api::{KubeTemplatePolicy, KubeTemplatePolicySpec};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use serde_json::{Value, json};

use super::*;
use crate::PolicyCache;
use crate::metrics::Metrics;

const POLICY_NS: &str = "kubetemplater-system";

fn policy(name: &str, source: &str, rules: Value) -> KubeTemplatePolicy {
    let mut p = KubeTemplatePolicy::new(
        name,
        KubeTemplatePolicySpec {
            source_namespace: source.into(),
            validation_rules: serde_json::from_value(rules).unwrap(),
        },
    );
    p.metadata.namespace = Some(POLICY_NS.into());
    p.metadata.uid = Some(format!("uid-{name}"));
    p.metadata.generation = Some(1);
    p
}

fn team_a_policy() -> KubeTemplatePolicy {
    policy(
        "team-a",
        "team-a",
        json!([
            {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": ["team-a"],
             "fieldValidations": [
                {"name": "name-prefix", "type": "regex", "fieldPath": "metadata.name", "regex": "^app-"}
             ]},
            {"kind": "Deployment", "group": "apps", "version": "v1", "targetNamespaces": ["team-a"],
             "rule": "object.spec.replicas <= 3"}
        ]),
    )
}

fn reviewer(policies: &[KubeTemplatePolicy]) -> Reviewer {
    let cache = Arc::new(PolicyCache::new(Arc::new(Metrics::default())));
    cache.reset(policies);
    Reviewer::new(cache, engine::bucket::DEFAULT_BUCKET_COUNT, POLICY_NS)
}

fn request(
    operation: &str,
    kind: (&str, &str, &str),
    namespace: &str,
    object: Value,
    old: Option<Value>,
) -> AdmissionRequest<DynamicObject> {
    let (group, version, kind) = kind;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": format!("{}s", kind.to_lowercase())},
            "name": object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object,
            "oldObject": old,
            "dryRun": false
        }
    });
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(review).unwrap();
    review.try_into().unwrap()
}

const KT: (&str, &str, &str) = ("kubetemplater.io", "v1alpha1", "KubeTemplate");
const TENANT: (&str, &str, &str) = ("operator.kubernetes-tenants.org", "v1", "Tenant");

fn kubetemplate(ns: &str, templates: Value) -> Value {
    json!({
        "apiVersion": "kubetemplater.io/v1alpha1",
        "kind": "KubeTemplate",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"templates": templates}
    })
}

fn configmap(name: &str, ns: Option<&str>) -> Value {
    let mut m = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "b"}});
    if let Some(ns) = ns {
        m["metadata"]["namespace"] = json!(ns);
    }
    json!({"object": m})
}

fn patch_of(outcome: &Outcome) -> Vec<Value> {
    assert_eq!(
        outcome.response.patch.is_some(),
        outcome.verdict == Verdict::Mutated
    );
    let bytes = outcome.response.patch.as_ref().expect("a patch");
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn allowed_template_is_allowed() {
    let r = reviewer(&[team_a_policy()]);
    let req = request(
        "CREATE",
        KT,
        "team-a",
        kubetemplate("team-a", json!([configmap("app-x", None)])),
        None,
    );
    let out = r.review(Operation::ValidateKubeTemplate, &req);
    assert!(out.response.allowed, "{:?}", out.response.result);
    assert_eq!(out.verdict, Verdict::Allowed);
    assert_eq!(out.response.uid, req.uid);
}

#[test]
fn every_violation_is_in_the_denial() {
    let r = reviewer(&[team_a_policy()]);
    let templates = json!([
        configmap("bad-name", None),
        configmap("app-ok", Some("other-ns")),
        {"object": {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}},
        {"object": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 9}}}
    ]);
    let req = request(
        "CREATE",
        KT,
        "team-a",
        kubetemplate("team-a", templates),
        None,
    );
    let out = r.review(Operation::ValidateKubeTemplate, &req);
    assert!(!out.response.allowed);
    assert_eq!(out.verdict, Verdict::Denied);
    assert_eq!(out.response.result.code, 403);
    let msg = &out.response.result.message;
    for needle in [
        "template[0]",
        "name-prefix",
        "template[1]",
        "other-ns",
        "template[2]",
        "Kind=Secret",
        "template[3]",
        "failed CEL validation rule",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from:\n{msg}");
    }
}

#[test]
fn namespace_without_policy_is_refused_with_the_original_text() {
    let r = reviewer(&[team_a_policy()]);
    let req = request(
        "CREATE",
        KT,
        "team-b",
        kubetemplate("team-b", json!([])),
        None,
    );
    let out = r.review(Operation::ValidateKubeTemplate, &req);
    assert!(!out.response.allowed);
    assert_eq!(
        out.response.result.message,
        "failed to get policy: no KubeTemplatePolicy found for source namespace team-b"
    );
}

#[test]
fn two_policies_for_one_namespace_deny() {
    let mut second = team_a_policy();
    second.metadata.name = Some("team-a-2".into());
    let r = reviewer(&[team_a_policy(), second]);
    let req = request(
        "CREATE",
        KT,
        "team-a",
        kubetemplate("team-a", json!([])),
        None,
    );
    let out = r.review(Operation::ValidateKubeTemplate, &req);
    assert!(
        out.response
            .result
            .message
            .contains("multiple KubeTemplatePolicies")
    );
}

#[test]
fn replace_warning_is_returned() {
    let r = reviewer(&[team_a_policy()]);
    let mut item = configmap("app-x", None);
    item["replace"] = json!(true);
    let req = request(
        "CREATE",
        KT,
        "team-a",
        kubetemplate("team-a", json!([item])),
        None,
    );
    let out = r.review(Operation::ValidateKubeTemplate, &req);
    assert!(out.response.allowed);
    let warnings = out.response.warnings.unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn update_with_unchanged_spec_is_allowed_even_when_policy_would_deny() {
    let r = reviewer(&[]);
    let old = kubetemplate("team-a", json!([configmap("x", None)]));
    let mut new = old.clone();
    new["metadata"]["finalizers"] = json!(["kubetemplater.io/cleanup"]);
    let req = request("UPDATE", KT, "team-a", new.clone(), Some(old.clone()));
    assert!(
        r.review(Operation::ValidateKubeTemplate, &req)
            .response
            .allowed
    );
    // A spec change is checked again.
    new["spec"]["templates"] = json!([configmap("y", None)]);
    let req = request("UPDATE", KT, "team-a", new, Some(old));
    assert!(
        !r.review(Operation::ValidateKubeTemplate, &req)
            .response
            .allowed
    );
}

#[test]
fn undecodable_spec_is_denied_with_the_reason() {
    let r = reviewer(&[team_a_policy()]);
    let mut obj = kubetemplate("team-a", json!([]));
    obj["spec"] = json!({"templates": "not-a-list"});
    let req = request("CREATE", KT, "team-a", obj, None);
    let out = r.review(Operation::ValidateKubeTemplate, &req);
    assert!(!out.response.allowed);
    assert!(
        out.response
            .result
            .message
            .contains("KubeTemplate team-a/web: spec does not decode"),
        "{}",
        out.response.result.message
    );
}

#[test]
fn deletes_are_allowed() {
    let r = reviewer(&[]);
    let req = request(
        "DELETE",
        KT,
        "team-a",
        kubetemplate("team-a", json!([])),
        None,
    );
    assert!(
        r.review(Operation::ValidateKubeTemplate, &req)
            .response
            .allowed
    );
}

#[test]
fn wrong_kind_for_endpoint_is_invalid() {
    let r = reviewer(&[]);
    let req = request(
        "CREATE",
        TENANT,
        "team-a",
        json!({"metadata": {"name": "t"}, "spec": {"uid": "u"}}),
        None,
    );
    let out = r.review(Operation::ValidateKubeTemplate, &req);
    assert_eq!(out.verdict, Verdict::Invalid);
    assert!(
        out.response
            .result
            .message
            .contains("reviews KubeTemplate.kubetemplater.io, not Tenant")
    );
}

#[test]
fn bucket_label_is_added_when_absent() {
    let r = reviewer(&[]);
    let req = request(
        "CREATE",
        KT,
        "team-a",
        kubetemplate("team-a", json!([])),
        None,
    );
    let out = r.review(Operation::MutateBucket, &req);
    assert_eq!(out.verdict, Verdict::Mutated);
    let expected =
        engine::bucket::bucket("team-a", engine::bucket::DEFAULT_BUCKET_COUNT).to_string();
    let patch = patch_of(&out);
    assert_eq!(patch[0]["op"], "add");
    assert_eq!(patch[0]["path"], "/metadata/labels");
    assert_eq!(patch[0]["value"]["kubetemplater.io/bucket"], expected);
}

#[test]
fn existing_labels_get_one_more() {
    let r = reviewer(&[]);
    let mut obj = kubetemplate("team-a", json!([]));
    obj["metadata"]["labels"] = json!({"app": "web"});
    let out = r.review(
        Operation::MutateBucket,
        &request("CREATE", KT, "team-a", obj, None),
    );
    let patch = patch_of(&out);
    assert_eq!(
        patch[0]["path"],
        "/metadata/labels/kubetemplater.io~1bucket"
    );
}

#[test]
fn existing_bucket_label_is_never_changed() {
    let r = reviewer(&[]);
    let mut obj = kubetemplate("team-a", json!([]));
    obj["metadata"]["labels"] = json!({"kubetemplater.io/bucket": "7"});
    let out = r.review(
        Operation::MutateBucket,
        &request("CREATE", KT, "team-a", obj, None),
    );
    assert!(out.response.allowed);
    // No span is current in unit tests, so no trace annotation either: nothing to patch.
    assert!(out.response.patch.is_none());
}

#[test]
fn bucket_label_removed_by_an_update_is_restored_and_changes_are_refused() {
    let r = reviewer(&[]);
    let mut old = kubetemplate("team-a", json!([]));
    old["metadata"]["labels"] = json!({"kubetemplater.io/bucket": "7"});
    let new = kubetemplate("team-a", json!([]));
    let out = r.review(
        Operation::MutateBucket,
        &request("UPDATE", KT, "team-a", new, Some(old.clone())),
    );
    assert_eq!(patch_of(&out)[0]["value"]["kubetemplater.io/bucket"], "7");

    let mut changed = old.clone();
    changed["metadata"]["labels"] = json!({"kubetemplater.io/bucket": "8"});
    let out = r.review(
        Operation::MutateBucket,
        &request("UPDATE", KT, "team-a", changed, Some(old)),
    );
    assert!(!out.response.allowed);
    assert!(
        out.response.result.message.contains("cannot change"),
        "{}",
        out.response.result.message
    );
}

#[test]
fn invalid_bucket_label_is_refused() {
    let r = reviewer(&[]);
    let mut obj = kubetemplate("team-a", json!([]));
    obj["metadata"]["labels"] = json!({"kubetemplater.io/bucket": "99999"});
    let out = r.review(
        Operation::MutateBucket,
        &request("CREATE", KT, "team-a", obj, None),
    );
    assert!(!out.response.allowed);
    assert!(out.response.result.message.contains("99999"));
}

#[test]
fn tenant_bucket_uses_registry_and_uid() {
    let r = reviewer(&[]);
    let tenant = json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1", "kind": "Tenant",
        "metadata": {"name": "acme-web", "namespace": "tenants", "labels": {"kubernetes-tenants.org/registry": "reg"}},
        "spec": {"uid": "acme", "templateRef": "web"}
    });
    let out = r.review(
        Operation::MutateBucket,
        &request("CREATE", TENANT, "tenants", tenant, None),
    );
    let key = engine::bucket::tenant_shard_key("tenants", "reg", "acme");
    let expected = engine::bucket::bucket(&key, engine::bucket::DEFAULT_BUCKET_COUNT).to_string();
    let patch = patch_of(&out);
    assert_eq!(
        patch[0]["path"],
        "/metadata/labels/kubetemplater.io~1bucket"
    );
    assert_eq!(patch[0]["value"], expected);

    let no_uid = json!({"apiVersion": "operator.kubernetes-tenants.org/v1", "kind": "Tenant", "metadata": {"name": "x"}, "spec": {}});
    let out = r.review(
        Operation::MutateBucket,
        &request("CREATE", TENANT, "tenants", no_uid, None),
    );
    assert!(out.response.result.message.contains("spec.uid is missing"));
}

fn policy_object(name: &str, ns: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplatePolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"sourceNamespace": "team-a", "validationRules": rules}
    })
}

const POLICY: (&str, &str, &str) = ("kubetemplater.io", "v1alpha1", "KubeTemplatePolicy");

#[test]
fn policy_problems_are_all_listed() {
    let r = reviewer(&[]);
    let rules = json!([
        {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": [], "fieldValidations": [
            {"name": "bad-cel", "type": "cel", "cel": "value.startsWith("},
            {"name": "bad-re", "type": "regex", "fieldPath": "metadata.name", "regex": "("},
            {"name": "bad-range", "type": "range", "fieldPath": "spec.replicas", "min": 5, "max": 1}
        ]},
        {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": []}
    ]);
    let out = r.review(
        Operation::ValidatePolicy,
        &request(
            "CREATE",
            POLICY,
            POLICY_NS,
            policy_object("p", POLICY_NS, rules),
            None,
        ),
    );
    assert!(!out.response.allowed);
    let msg = &out.response.result.message;
    for needle in ["bad-cel", "bad-re", "bad-range", "validationRules[1]"] {
        assert!(msg.contains(needle), "{needle:?} missing from:\n{msg}");
    }
}

#[test]
fn valid_policy_gets_deprecation_and_placement_warnings() {
    let r = reviewer(&[team_a_policy()]);
    let rules = json!([{"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": ["team-a"], "rule": "true"}]);
    let out = r.review(
        Operation::ValidatePolicy,
        &request(
            "CREATE",
            POLICY,
            POLICY_NS,
            policy_object("p2", POLICY_NS, rules.clone()),
            None,
        ),
    );
    assert!(out.response.allowed, "{}", out.response.result.message);
    let warnings = out.response.warnings.unwrap_or_default().join("\n");
    assert!(warnings.contains("deprecated"), "{warnings}");
    assert!(warnings.contains("team-a also selects"), "{warnings}");

    let out = r.review(
        Operation::ValidatePolicy,
        &request(
            "CREATE",
            POLICY,
            "elsewhere",
            policy_object("p3", "elsewhere", rules),
            None,
        ),
    );
    assert!(
        out.response
            .warnings
            .unwrap_or_default()
            .join("\n")
            .contains("has no effect")
    );
}

const TT: (&str, &str, &str) = ("operator.kubernetes-tenants.org", "v1", "TenantTemplate");

#[test]
fn tenant_template_cycles_and_duplicates_are_refused() {
    let r = reviewer(&[]);
    let template = json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1", "kind": "TenantTemplate",
        "metadata": {"name": "web", "namespace": "tenants"},
        "spec": {
            "registryId": "reg",
            "configMaps": [
                {"id": "a", "dependIds": ["b"], "nameTemplate": "{{ .uid }}-a", "spec": {"apiVersion": "v1", "kind": "ConfigMap"}},
                {"id": "b", "dependIds": ["a"], "spec": {"apiVersion": "v1", "kind": "ConfigMap"}},
                {"id": "b", "spec": {"apiVersion": "v1", "kind": "ConfigMap"}}
            ]
        }
    });
    let out = r.review(
        Operation::ValidateTenantTemplate,
        &request("CREATE", TT, "tenants", template, None),
    );
    assert!(!out.response.allowed);
    let msg = &out.response.result.message;
    assert!(msg.contains("cycle") || msg.contains("Cycle"), "{msg}");
    assert!(msg.contains("duplicate") || msg.contains("twice"), "{msg}");
}

#[test]
fn tenant_template_with_bad_name_template_is_refused() {
    let r = reviewer(&[]);
    let template = json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1", "kind": "TenantTemplate",
        "metadata": {"name": "web", "namespace": "tenants"},
        "spec": {"registryId": "reg", "configMaps": [
            {"id": "a", "nameTemplate": "{{ .uid ", "spec": {"apiVersion": "v1", "kind": "ConfigMap"}}
        ]}
    });
    let out = r.review(
        Operation::ValidateTenantTemplate,
        &request("CREATE", TT, "tenants", template, None),
    );
    assert!(!out.response.allowed);
    assert!(
        out.response
            .result
            .message
            .contains("configMaps[0].nameTemplate"),
        "{}",
        out.response.result.message
    );
}

#[test]
fn paths_round_trip() {
    for op in Operation::ALL {
        assert_eq!(Operation::from_path(op.path()), Some(op));
    }
    assert_eq!(Operation::from_path("/nope"), None);
}
