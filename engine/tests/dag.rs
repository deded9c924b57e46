//! Dependency levels and template validation.

use api::{TResource, TenantTemplateSpec};
use engine::dag::{
    DagError, ProblemKind, check_spec_templates, levels, levels_of, validate_template,
    validate_template_with,
};
use proptest::prelude::*;
use serde_json::json;

fn res(id: &str, deps: &[&str]) -> TResource {
    serde_json::from_value(json!({
        "id": id,
        "dependIds": deps,
        "spec": {"apiVersion": "v1", "kind": "ConfigMap"}
    }))
    .expect("resource")
}

fn lv(resources: &[TResource]) -> Result<Vec<Vec<String>>, DagError> {
    levels(resources)
}

fn ids(levels: &[&[&str]]) -> Vec<Vec<String>> {
    levels
        .iter()
        .map(|l| l.iter().map(|s| (*s).to_owned()).collect())
        .collect()
}

#[test]
fn no_resources_no_levels() {
    assert_eq!(lv(&[]), Ok(vec![]));
}

#[test]
fn independent_resources_share_level_zero_sorted() {
    let r = [res("c", &[]), res("a", &[]), res("b", &[])];
    assert_eq!(lv(&r), Ok(ids(&[&["a", "b", "c"]])));
}

#[test]
fn chain() {
    let r = [res("app", &["cfg"]), res("cfg", &["ns"]), res("ns", &[])];
    assert_eq!(lv(&r), Ok(ids(&[&["ns"], &["cfg"], &["app"]])));
}

#[test]
fn fan_in_and_diamond() {
    // ns <- (cfg, secret) <- app ; ns <- svc ; app <- ingress
    let r = [
        res("ingress", &["app", "svc"]),
        res("app", &["cfg", "secret"]),
        res("cfg", &["ns"]),
        res("secret", &["ns"]),
        res("svc", &["ns"]),
        res("ns", &[]),
    ];
    assert_eq!(
        lv(&r),
        Ok(ids(&[
            &["ns"],
            &["cfg", "secret", "svc"],
            &["app"],
            &["ingress"]
        ]))
    );
}

#[test]
fn level_is_one_plus_deepest_dependency() {
    // d depends on a (level 0) and c (level 2) -> level 3
    let r = [
        res("a", &[]),
        res("b", &["a"]),
        res("c", &["b"]),
        res("d", &["a", "c"]),
    ];
    assert_eq!(lv(&r), Ok(ids(&[&["a"], &["b"], &["c"], &["d"]])));
}

#[test]
fn repeated_dependency_is_harmless() {
    let r = [res("a", &[]), res("b", &["a", "a"])];
    assert_eq!(lv(&r), Ok(ids(&[&["a"], &["b"]])));
}

#[test]
fn self_dependency_is_a_cycle() {
    let err = lv(&[res("a", &["a"])]).expect_err("cycle");
    assert_eq!(
        err,
        DagError::Cycle {
            cycle: vec!["a".into(), "a".into()]
        }
    );
    assert_eq!(err.to_string(), "dependency cycle: a -> a");
}

#[test]
fn direct_cycle() {
    let err = lv(&[res("b", &["a"]), res("a", &["b"])]).expect_err("cycle");
    assert_eq!(err.to_string(), "dependency cycle: a -> b -> a");
}

#[test]
fn indirect_cycle_named_in_order() {
    let r = [
        res("ok", &[]),
        res("c", &["a"]),
        res("b", &["c"]),
        res("a", &["b", "ok"]),
        res("later", &["c"]),
    ];
    let err = lv(&r).expect_err("cycle");
    assert_eq!(err.to_string(), "dependency cycle: a -> b -> c -> a");
}

#[test]
fn unknown_dependency_names_both() {
    let err = lv(&[res("app", &["cfg", "db"]), res("cfg", &[])]).expect_err("unknown");
    assert_eq!(
        err,
        DagError::UnknownDependency {
            id: "app".into(),
            missing: "db".into()
        }
    );
    assert_eq!(
        err.to_string(),
        r#"resource "app" depends on unknown id "db""#
    );
}

#[test]
fn duplicate_and_empty_ids() {
    let err = lv(&[res("a", &[]), res("a", &[])]).expect_err("duplicate");
    assert_eq!(err, DagError::DuplicateId { id: "a".into() });
    let err = lv(&[res("a", &[]), res("", &[])]).expect_err("empty");
    assert_eq!(err, DagError::EmptyId { index: 1 });
}

fn template(value: serde_json::Value) -> TenantTemplateSpec {
    serde_json::from_value(value).expect("template spec")
}

#[test]
fn levels_of_template_lists() {
    let spec = template(json!({
        "registryId": "reg",
        "namespaces": [{"id": "ns", "spec": {"apiVersion": "v1", "kind": "Namespace"}}],
        "deployments": [{"id": "app", "dependIds": ["ns", "cfg"], "spec": {}}],
        "configMaps": [{"id": "cfg", "dependIds": ["ns"], "spec": {}}]
    }));
    assert_eq!(
        levels_of(&spec.resources),
        Ok(ids(&[&["ns"], &["cfg"], &["app"]]))
    );
}

#[test]
fn validate_reports_every_problem_with_location() {
    let spec = template(json!({
        "registryId": "reg",
        "deployments": [
            {"id": "app", "dependIds": ["missing"], "nameTemplate": "{{ .uid }}-app", "spec": {}},
            {"id": "app", "spec": {}},
            {"id": "", "spec": {}}
        ],
        "configMaps": [
            {"id": "x", "dependIds": ["y"], "spec": {}},
            {"id": "y", "dependIds": ["x"], "spec": {}},
            {"id": "bad", "nameTemplate": "{{ .uid | nope }}",
             "labelsTemplate": {"app.kubernetes.io/name": "{{ .uid", "ok": "{{ .uid }}"},
             "annotationsTemplate": {"plan": "{{ .planId }}", "n": "{{ div 1 0 }}"},
             "spec": {}}
        ]
    }));
    let problems = validate_template(&spec);
    let seen: Vec<(ProblemKind, String)> =
        problems.iter().map(|p| (p.kind, p.field.clone())).collect();
    assert_eq!(
        seen,
        vec![
            (ProblemKind::DuplicateId, "deployments[1].id".to_owned()),
            (ProblemKind::EmptyId, "deployments[2].id".to_owned()),
            (
                ProblemKind::UnknownDependency,
                "deployments[0].dependIds".to_owned()
            ),
            (ProblemKind::Cycle, "configMaps[0].dependIds".to_owned()),
            (
                ProblemKind::Template,
                "configMaps[2].nameTemplate".to_owned()
            ),
            (
                ProblemKind::Template,
                r#"configMaps[2].labelsTemplate["app.kubernetes.io/name"]"#.to_owned()
            ),
            (
                ProblemKind::Template,
                "configMaps[2].annotationsTemplate.n".to_owned()
            ),
        ],
        "{problems:#?}"
    );
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(text[3].contains("x -> y -> x"), "{}", text[3]);
    assert!(text[4].contains("function nope not defined"), "{}", text[4]);
    assert!(text[5].contains("unclosed action"), "{}", text[5]);
    assert!(text[6].contains("divide by zero"), "{}", text[6]);
}

#[test]
fn validate_with_known_extras_reports_undefined_variables() {
    let spec = template(json!({
        "registryId": "reg",
        "configMaps": [{"id": "cfg", "nameTemplate": "{{ .uid }}-{{ .planId }}",
                        "labelsTemplate": {"region": "{{ .region }}"}, "spec": {}}]
    }));
    assert!(validate_template(&spec).is_empty());
    let problems = validate_template_with(&spec, &["planId"]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "configMaps[0].labelsTemplate.region");
    assert!(problems[0].message.contains("undefined variable .region"));
    assert!(validate_template_with(&spec, &["planId", "region"]).is_empty());
}

#[test]
fn valid_template_has_no_problems() {
    let spec = template(json!({
        "registryId": "reg",
        "namespaces": [{"id": "ns", "nameTemplate": "{{ .uid | trunc63 }}", "spec": {}}],
        "deployments": [{"id": "app", "dependIds": ["ns"],
                         "nameTemplate": "{{ .uid }}-{{ .host | replace \".\" \"-\" }}",
                         "labelsTemplate": {"tenant": "{{ .uid }}", "active": "{{ .activate }}"},
                         "annotationsTemplate": {"url": "{{ .hostOrUrl }}"},
                         "spec": {}}]
    }));
    assert_eq!(validate_template(&spec), vec![]);
}

#[test]
fn spec_strings_are_syntax_checked_separately() {
    let spec = template(json!({
        "registryId": "reg",
        "configMaps": [{"id": "cfg", "targetNamespace": "{{ .uid ",
                        "spec": {"data": {"ok": "{{ .anything }}", "bad": ["x", "{{ if }}"]}}}]
    }));
    let problems = check_spec_templates(&spec);
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "configMaps[0].targetNamespace",
            "configMaps[0].spec.data.bad[1]"
        ]
    );
    assert!(validate_template(&spec).is_empty());
}

// === properties ===

/// Up to 8 resources named r0..r7, each depending on up to 4 ids among r0..r9 (r8, r9 unknown).
fn graphs() -> impl Strategy<Value = Vec<(usize, Vec<usize>)>> {
    prop::collection::vec((0usize..8, prop::collection::vec(0usize..10, 0..4)), 0..8)
}

proptest! {
    #[test]
    fn levels_never_panic_and_respect_dependencies(graph in graphs()) {
        let resources: Vec<TResource> = graph
            .iter()
            .map(|(id, deps)| {
                let deps: Vec<String> = deps.iter().map(|d| format!("r{d}")).collect();
                let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                res(&format!("r{id}"), &deps)
            })
            .collect();
        if let Ok(levels) = levels(&resources) {
            let level_of = |id: &str| levels.iter().position(|l| l.iter().any(|x| x == id));
            let total: usize = levels.iter().map(Vec::len).sum();
            prop_assert_eq!(total, resources.len());
            for l in &levels {
                prop_assert!(!l.is_empty());
                prop_assert!(l.windows(2).all(|w| w[0] < w[1]));
            }
            for r in &resources {
                let mine = level_of(&r.id).expect("placed");
                let mut deepest = None;
                for d in &r.depend_ids {
                    let theirs = level_of(d).expect("dependency placed");
                    prop_assert!(theirs < mine, "{} at {} depends on {} at {}", r.id, mine, d, theirs);
                    deepest = deepest.max(Some(theirs));
                }
                prop_assert_eq!(mine, deepest.map_or(0, |d| d + 1));
            }
        }
    }

    #[test]
    fn reported_cycles_are_real(graph in graphs()) {
        let resources: Vec<TResource> = graph
            .iter()
            .map(|(id, deps)| {
                let deps: Vec<String> = deps.iter().map(|d| format!("r{d}")).collect();
                let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                res(&format!("r{id}"), &deps)
            })
            .collect();
        if let Err(DagError::Cycle { cycle }) = levels(&resources) {
            prop_assert!(cycle.len() >= 2);
            prop_assert_eq!(cycle.first(), cycle.last());
            for pair in cycle.windows(2) {
                let from = resources.iter().find(|r| r.id == pair[0]).expect("exists");
                prop_assert!(from.depend_ids.contains(&pair[1]));
            }
        }
    }
}
