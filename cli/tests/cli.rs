//! ktctl as a user runs it: exit codes, output, and agreement with the engine library.

use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;

fn ktctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ktctl"))
        .args(args)
        .output()
        .expect("ktctl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a test file");
    path.to_string_lossy().into_owned()
}

const POLICY: &str = r#"
apiVersion: kubetemplater.io/v1alpha1
kind: KubeTemplatePolicy
metadata: {name: apps, namespace: kubetemplater-system}
spec:
  sourceNamespace: apps
  validationRules:
    - kind: Deployment
      group: apps
      version: v1
      targetNamespaces: [apps]
      fieldValidations:
        - {name: replicas, type: range, fieldPath: spec.replicas, min: 1, max: 5}
        - {name: naming, type: regex, fieldPath: metadata.name, regex: "^prod-", message: "names start with prod-"}
    - kind: ConfigMap
      group: ""
      version: v1
      targetNamespaces: [apps]
      rule: "object.metadata.name.startsWith('cfg-')"
"#;

#[test]
fn validate_admits_the_samples() {
    let samples = repo().join("deploy/samples/kubetemplater.yaml");
    let samples = samples.to_string_lossy();
    let (code, out, err) = ktctl(&["validate", "--policy", &samples, &samples]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "team-a/web: admitted");
}

#[test]
fn validate_denies_with_every_violation() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.yaml", POLICY);
    let template = write(
        dir.path(),
        "template.yaml",
        r#"
apiVersion: kubetemplater.io/v1alpha1
kind: KubeTemplate
metadata: {name: bad, namespace: apps}
spec:
  templates:
    - object: {apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {replicas: 9}}
    - object: {apiVersion: v1, kind: Secret, metadata: {name: s}}
    - object: {apiVersion: v1, kind: ConfigMap, metadata: {name: other, namespace: elsewhere}}
"#,
    );
    let (code, out, _) = ktctl(&["validate", "--policy", &policy, &template]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("apps/bad: denied (5 violations)"), "{out}");
    for expected in [
        "template[0]: fieldValidation (replicas): field spec.replicas value 9 is greater than maximum 5",
        "template[0]: fieldValidation (naming): names start with prod-",
        "template[1]: resource type /v1, Kind=Secret is not allowed by policy apps",
        "template[2]: resource namespace elsewhere is not in the allowed target namespaces [apps] for resource type /v1, Kind=ConfigMap",
        "template[2]: resource /v1, Kind=ConfigMap/other failed CEL validation rule: object.metadata.name.startsWith('cfg-')",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
}

#[test]
fn validate_without_a_policy_for_the_namespace_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.yaml", POLICY);
    let template = write(
        dir.path(),
        "t.yaml",
        "apiVersion: kubetemplater.io/v1alpha1\nkind: KubeTemplate\nmetadata: {name: t}\nspec: {templates: []}\n",
    );
    let (code, out, _) = ktctl(&["validate", "--policy", &policy, &template]);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "failed to get policy: no KubeTemplatePolicy found for source namespace default"
        ),
        "{out}"
    );
}

#[test]
fn validate_bad_input_exits_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.yaml", POLICY);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                policy.clone(),
                dir.path().join("missing.yaml").to_string_lossy().into(),
            ],
            "missing.yaml: cannot read",
        ),
        (
            vec![
                policy.clone(),
                write(dir.path(), "syntax.yaml", "kind: [unclosed\n"),
            ],
            "syntax.yaml: document 1: not valid YAML",
        ),
        (
            vec![
                policy.clone(),
                write(
                    dir.path(),
                    "schema.yaml",
                    "apiVersion: kubetemplater.io/v1alpha1\nkind: KubeTemplate\nmetadata: {name: x}\nspec: {templates: [{replace: true}]}\n",
                ),
            ],
            "schema.yaml: document 1 (KubeTemplate x)",
        ),
        (
            vec![
                policy.clone(),
                write(dir.path(), "none.yaml", "kind: ConfigMap\n"),
            ],
            "none.yaml: no KubeTemplate in this file",
        ),
        (
            vec![
                write(
                    dir.path(),
                    "badcel.yaml",
                    &POLICY.replace(
                        "object.metadata.name.startsWith('cfg-')",
                        "object.metadata.name.(",
                    ),
                ),
                write(
                    dir.path(),
                    "ok.yaml",
                    "apiVersion: kubetemplater.io/v1alpha1\nkind: KubeTemplate\nmetadata: {name: t, namespace: apps}\nspec: {templates: []}\n",
                ),
            ],
            "KubeTemplatePolicy kubetemplater-system/apps is invalid",
        ),
    ];
    for (files, expected) in cases {
        let (code, out, err) = ktctl(&["validate", "--policy", &files[0], &files[1]]);
        assert_eq!(code, 2, "{expected}: {out}{err}");
        assert!(
            err.contains(expected),
            "expected {expected:?} in stderr:\n{err}"
        );
    }
}

#[test]
fn render_prints_the_sample_in_dependency_order() {
    let samples = repo().join("deploy/samples/tenants.yaml");
    let row =
        r#"{"uid":"acme","hostOrUrl":"https://acme.example.com/x","planId":"pro","region":"eu"}"#;
    let (code, out, err) = ktctl(&["render", "--registry-row", row, &samples.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert!(!docs.is_empty());
    assert_eq!(
        docs[0]["kind"], "Namespace",
        "the namespace comes first (level 0)"
    );
    assert!(out.contains("acme"), "{out}");
    let (code, json, _) = ktctl(&[
        "render",
        "-o",
        "json",
        "--registry-row",
        row,
        &samples.to_string_lossy(),
    ]);
    assert_eq!(code, 0);
    let list: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(list, docs, "JSON and YAML output agree");
}

#[test]
fn render_failures_name_resource_path_and_cause() {
    let samples = repo().join("deploy/samples/tenants.yaml");
    let samples = samples.to_string_lossy();
    // The sample uses {{ .planId }}: without it in the row, rendering fails (no `<no value>`).
    let (code, _, err) = ktctl(&["render", "--registry-row", r#"{"uid":"acme"}"#, &samples]);
    assert_eq!(code, 1);
    assert!(err.contains("planId") && err.contains("resource"), "{err}");
    let (code, _, err) = ktctl(&["render", "--registry-row", "[1,2]", &samples]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--registry-row: must be a JSON object"),
        "{err}"
    );
    let (code, _, err) = ktctl(&["render", "--registry-row", r#"{"hostOrUrl":"x"}"#, &samples]);
    assert_eq!(code, 2);
    assert!(err.contains("`uid` is required"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let cyclic = write(
        dir.path(),
        "cyclic.yaml",
        r#"
apiVersion: operator.kubernetes-tenants.org/v1
kind: TenantTemplate
metadata: {name: loop, namespace: t}
spec:
  registryId: r
  configMaps:
    - {id: a, dependIds: [b], spec: {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}}
    - {id: b, dependIds: [a], spec: {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}}
"#,
    );
    let (code, _, err) = ktctl(&["render", "--registry-row", r#"{"uid":"u"}"#, &cyclic]);
    assert_eq!(code, 1);
    assert!(
        err.contains("a -> b -> a") || err.contains("b -> a -> b"),
        "{err}"
    );
}

// === ktctl and the library agree ===

fn policy_doc(regex: &str, min: i64, max: i64, cel: &str, targets: &[&str]) -> String {
    let targets = targets
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"apiVersion: kubetemplater.io/v1alpha1
kind: KubeTemplatePolicy
metadata: {{name: p, namespace: ops}}
spec:
  sourceNamespace: apps
  validationRules:
    - kind: Deployment
      group: apps
      version: v1
      targetNamespaces: [{targets}]
      fieldValidations:
        - {{name: r, type: range, fieldPath: spec.replicas, min: {min}, max: {max}}}
        - {{name: n, type: regex, fieldPath: metadata.name, regex: {regex:?}}}
        - {{name: c, type: cel, fieldPath: metadata.labels, cel: {cel:?}}}
"#
    )
}

fn template_doc(items: &[(String, String, i64, bool)]) -> String {
    let mut text = String::from(
        "apiVersion: kubetemplater.io/v1alpha1\nkind: KubeTemplate\nmetadata: {name: t, namespace: apps}\nspec:\n",
    );
    text.push_str(if items.is_empty() {
        "  templates: []\n"
    } else {
        "  templates:\n"
    });
    for (name, ns, replicas, labelled) in items {
        let labels = if *labelled { "labels: {team: a}, " } else { "" };
        text.push_str(&format!(
            "    - object: {{apiVersion: apps/v1, kind: Deployment, metadata: {{{labels}name: {name:?}, namespace: {ns:?}}}, spec: {{replicas: {replicas}}}}}\n"
        ));
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn ktctl_validate_agrees_with_the_library(
        regex in prop::sample::select(vec!["^web", "[0-9]+", "^(a|b)$", "("]),
        min in 0i64..4,
        max in 0i64..6,
        cel in prop::sample::select(vec!["has(value.team)", "value == null", "size(value) > 0", "value.("]),
        targets in prop::sample::subsequence(vec!["apps", "other"], 0..=2),
        items in prop::collection::vec(
            ("[a-z]{1,6}", prop::sample::select(vec!["apps".to_string(), "other".to_string(), "third".to_string()]), -2i64..8, any::<bool>()),
            0..4,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let policy_text = policy_doc(regex, min, max, cel, &targets);
        let template_text = template_doc(&items);
        let policy_file = write(dir.path(), "p.yaml", &policy_text);
        let template_file = write(dir.path(), "t.yaml", &template_text);
        let (code, out, err) = ktctl(&["validate", "--policy", &policy_file, &template_file]);

        let policy: api::KubeTemplatePolicy = serde_yaml::from_str(&policy_text).unwrap();
        let template: api::KubeTemplate = serde_yaml::from_str(&template_text).unwrap();
        let compiled = engine::policy::CompiledPolicy::compile(&policy);
        if !compiled.problems().is_empty() {
            prop_assert_eq!(code, 2, "{}{}", out, err);
            for problem in compiled.problems() {
                prop_assert!(err.contains(&problem.to_string()), "{} not in {}", problem, err);
            }
        } else {
            let verdict = engine::policy::evaluate(
                "apps",
                &template.spec.templates,
                engine::policy::PolicyLookup::Found(&compiled),
            );
            prop_assert_eq!(code, if verdict.allowed { 0 } else { 1 }, "{}", out);
            let printed: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("  - ")).collect();
            let expected: Vec<&str> = verdict.violations.iter().map(|v| v.message.as_str()).collect();
            prop_assert_eq!(printed, expected);
        }
    }
}
