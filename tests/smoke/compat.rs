//! The original KubeTemplater's own manifests (samples and docs, `shared/compat/kubetemplater/`)
//! against our CRD schemas in the real API server: what its schema accepted, ours accepts
//! unchanged; what its schema rejected (REJECT in the index), ours rejects too.

use anyhow::{Context, Result, bail};
use kube::Api;
use kube::api::PostParams;
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use kubetemplater_e2e::Env;
use serde::Deserialize;

fn compat_dir() -> std::path::PathBuf {
    devcluster::layout::repo_root().join("../shared/compat/kubetemplater")
}

/// `(file, schema_accepts)` from the index table.
fn verdicts() -> Result<Vec<(String, bool)>> {
    let index = compat_dir().join("index.md");
    let text = std::fs::read_to_string(&index).with_context(|| {
        format!(
            "reading {} (the shared compat data must sit beside the repository)",
            index.display()
        )
    })?;
    let rows: Vec<(String, bool)> = text
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let file = cells.get(1)?;
            let verdict = cells.get(3)?;
            file.ends_with(".yaml")
                .then(|| (file.to_string(), !verdict.starts_with("REJECT")))
        })
        .collect();
    if rows.len() < 30 {
        bail!(
            "expected the index to list the compat manifests, found {}",
            rows.len()
        );
    }
    Ok(rows)
}

#[tokio::test]
async fn original_manifests_meet_the_same_schema_verdicts() -> Result<()> {
    let env = Env::get().await?;
    let ns = env.namespace_without_admission("compat-schema").await?;
    let mut failures = Vec::new();
    let mut checked = 0;
    for (file, accepted) in verdicts()? {
        let path = compat_dir().join(&file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            // The index also lists files that are not copied (e.g. webhookvalidation-*).
            continue;
        };
        // performance-1 is the heredoc body of a shell loop: substitute `$i` as the shell would.
        let text = text.replace("$i", "1");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc)?;
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            if !matches!(kind.as_str(), "KubeTemplate" | "KubeTemplatePolicy") {
                continue;
            }
            let mut obj: DynamicObject = match serde_json::from_value(value.clone()) {
                Ok(o) => o,
                Err(e) if !accepted => {
                    // Not even an object: rejected before it reaches a schema.
                    eprintln!("{file}: {kind} is not a decodable object ({e}), as REJECT expects");
                    checked += 1;
                    continue;
                }
                Err(e) => bail!("{file}: {e}"),
            };
            // Same manifest, our test namespace (the API server rejects a body/URL mismatch).
            obj.metadata.namespace = Some(ns.clone());
            let plural = if kind == "KubeTemplate" {
                "kubetemplates"
            } else {
                "kubetemplatepolicies"
            };
            let ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("kubetemplater.io", "v1alpha1", &kind),
                plural,
            );
            let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &ns, &ar);
            let params = PostParams {
                dry_run: true,
                field_manager: None,
            };
            let result = api.create(&params, &obj).await;
            checked += 1;
            match (accepted, result) {
                (true, Ok(_)) => {}
                (false, Err(kube::Error::Api(e))) if e.code == 422 => {}
                (true, Err(e)) => failures.push(format!(
                    "{file} ({kind}): the original accepts it, we refused: {e}"
                )),
                (false, Ok(_)) => failures.push(format!(
                    "{file} ({kind}): the original's schema rejects it, we accepted"
                )),
                (false, Err(e)) => {
                    failures.push(format!("{file} ({kind}): expected 422 Invalid, got {e}"))
                }
            }
        }
    }
    assert!(checked >= 40, "only {checked} manifests checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    env.target.delete_namespace(&ns).await?;
    Ok(())
}
