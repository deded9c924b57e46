//! The original KubeTemplater's manifests (samples, docs and Go-test cases, read from
//! `shared/compat/kubetemplater/` at test time) against our types: every manifest its CRD
//! schema accepts decodes without loss; the ones it rejects fail to decode.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{decode_without_loss, kind_of, read_documents};
use kubetemplater_api::{KubeTemplate, KubeTemplatePolicy};
use serde_json::Value;

/// `shared/compat/kubetemplater/`, or a failing test explaining where it was expected.
fn compat_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/compat/kubetemplater");
    assert!(
        dir.join("index.md").is_file(),
        "compatibility data not found: expected {} with index.md (the shared/compat directory \
         beside the repository); these tests must not pass without it",
        dir.display()
    );
    dir
}

/// Verdict column of `index.md` (first word: POLICY, ADMIT, DENY or REJECT) per file name.
fn index_verdicts(dir: &Path) -> BTreeMap<String, String> {
    let index = std::fs::read_to_string(dir.join("index.md")).expect("index.md readable");
    let verdicts: BTreeMap<String, String> = index
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let file = cells.get(1)?;
            let verdict = cells.get(3)?.split_whitespace().next()?;
            file.ends_with(".yaml")
                .then(|| (file.to_string(), verdict.to_string()))
        })
        .collect();
    assert!(!verdicts.is_empty(), "no verdict rows in index.md");
    verdicts
}

/// Outcome of decoding one document of ours; `None` for other kinds.
fn decode_ours(document: &Value, origin: &str) -> Option<Result<(), String>> {
    match kind_of(document) {
        "KubeTemplate" => Some(decode_without_loss::<KubeTemplate>(document, origin).map(drop)),
        "KubeTemplatePolicy" => {
            Some(decode_without_loss::<KubeTemplatePolicy>(document, origin).map(drop))
        }
        _ => None,
    }
}

#[test]
fn index_lists_every_upstream_file() {
    let dir = compat_dir();
    let verdicts = index_verdicts(&dir);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("compat dir readable")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("upstream-") && name.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(files, verdicts.keys().cloned().collect::<Vec<_>>());
    for verdict in verdicts.values() {
        assert!(
            ["POLICY", "ADMIT", "DENY", "REJECT"].contains(&verdict.as_str()),
            "unknown verdict {verdict}"
        );
    }
}

#[test]
fn manifests_the_original_schema_accepts_decode_without_loss() {
    let dir = compat_dir();
    let mut decoded = 0;
    for (file, verdict) in index_verdicts(&dir) {
        if verdict == "REJECT" {
            continue;
        }
        let mut ours = 0;
        for (i, document) in read_documents(&dir.join(&file)).iter().enumerate() {
            let origin = format!("{file} document {i} ({verdict})");
            if let Some(result) = decode_ours(document, &origin) {
                result.unwrap_or_else(|e| panic!("{origin} does not decode: {e}"));
                ours += 1;
            }
        }
        assert!(
            ours > 0,
            "{file} holds no KubeTemplate or KubeTemplatePolicy"
        );
        decoded += ours;
    }
    assert!(decoded >= 45, "only {decoded} manifests decoded");
}

#[test]
fn manifests_the_original_schema_rejects_fail_to_decode() {
    let dir = compat_dir();
    let rejected: Vec<String> = index_verdicts(&dir)
        .into_iter()
        .filter(|(_, verdict)| verdict == "REJECT")
        .map(|(file, _)| file)
        .collect();
    assert_eq!(rejected.len(), 5, "{rejected:?}");
    for file in rejected {
        let documents = read_documents(&dir.join(&file));
        let failures = documents
            .iter()
            .filter_map(|document| decode_ours(document, &file))
            .filter(Result::is_err)
            .count();
        assert!(
            failures > 0,
            "{file} is rejected by the original's schema but decodes"
        );
    }
}

#[test]
fn go_test_cases_decode_without_loss() {
    let dir = compat_dir().join("verdicts");
    let cases_text = std::fs::read_to_string(dir.join("cases.yaml")).expect("cases.yaml");
    let cases: Vec<Value> = serde_yaml::from_str(&cases_text).expect("cases.yaml parses");
    assert_eq!(cases.len(), 26);
    let mut decoded = 0;
    for case in &cases {
        let policy = case["policy"].as_str().into_iter();
        let templates = case["templates"]
            .as_array()
            .expect("templates list")
            .iter()
            .filter_map(Value::as_str);
        for file in policy.chain(templates) {
            for document in read_documents(&dir.join(file)) {
                let origin = format!("verdicts/{file} (case {})", case["id"]);
                decode_ours(&document, &origin)
                    .unwrap_or_else(|| panic!("{origin}: unexpected kind"))
                    .unwrap_or_else(|e| panic!("{origin} does not decode: {e}"));
                decoded += 1;
            }
        }
    }
    assert!(decoded >= 50, "only {decoded} documents decoded");
}

#[test]
#[should_panic(expected = "lost or changed information")]
fn a_field_our_types_drop_is_reported() {
    let document = serde_json::json!({
        "apiVersion": "kubetemplater.io/v1alpha1",
        "kind": "KubeTemplatePolicy",
        "metadata": {"name": "p", "namespace": "kubetemplater-system"},
        "spec": {"sourceNamespace": "a", "validationRules": [], "unknownField": 1}
    });
    let _ = decode_without_loss::<KubeTemplatePolicy>(&document, "inline");
}
