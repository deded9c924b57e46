//! Our CRDs are Established and the samples of both APIs apply unchanged.

use anyhow::Result;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kubetemplater_e2e::Env;

#[tokio::test]
async fn every_crd_is_established_with_status_subresource_and_short_names() -> Result<()> {
    let env = Env::get().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    let expected = api::crds();
    assert_eq!(
        expected.len(),
        5,
        "KubeTemplate, KubeTemplatePolicy, TenantRegistry, TenantTemplate, Tenant"
    );
    for want in expected {
        let name = want.metadata.name.clone().unwrap_or_default();
        let got = crds.get(&name).await?;
        let established = got
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        assert!(established, "{name} is not Established");
        let version = &got.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: no status subresource"
        );
        assert!(
            !version
                .additional_printer_columns
                .clone()
                .unwrap_or_default()
                .is_empty(),
            "{name}: no printer columns"
        );
        assert!(
            !got.spec
                .names
                .short_names
                .clone()
                .unwrap_or_default()
                .is_empty(),
            "{name}: no short names"
        );
    }
    Ok(())
}

#[tokio::test]
async fn samples_of_both_apis_apply_with_kubectl() -> Result<()> {
    let env = Env::get().await?;
    let samples = devcluster::layout::repo_root().join("deploy/samples");
    let samples = samples.to_string_lossy();
    // `cargo xtask test` applied them (as `up` does, the demo registry pointed at its SQLite
    // file); applying them again for real would point it back at the sample's placeholder path.
    // A server-side dry run checks every object against the real API server and changes nothing.
    env.kubectl_ok(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=kubetemplater-samples",
        "-f",
        &samples,
    ])?;
    let templates = env.kubectl_ok(&["get", "kubetemplates", "-A", "-o", "name"])?;
    assert!(
        !templates.trim().is_empty(),
        "no KubeTemplate after applying the samples"
    );
    for kind in [
        "kubetemplatepolicies",
        "tenantregistries",
        "tenanttemplates",
    ] {
        let out = env.kubectl_ok(&["get", kind, "-A", "-o", "name"])?;
        assert!(
            !out.trim().is_empty(),
            "no {kind} after applying the samples"
        );
    }
    Ok(())
}

#[tokio::test]
async fn manifests_from_the_original_docs_apply_unchanged() -> Result<()> {
    // The original's README example, verbatim in shape: policy + template.
    let env = Env::get().await?;
    let ns = env.namespace_without_admission("compat").await?;
    let manifest = format!(
        r#"
apiVersion: kubetemplater.io/v1alpha1
kind: KubeTemplatePolicy
metadata:
  name: policy-{ns}
  namespace: {ns}
spec:
  sourceNamespace: {ns}
  validationRules:
    - kind: ConfigMap
      group: ""
      version: v1
      targetNamespaces: ["{ns}"]
      rule: "object.metadata.name.startsWith('app-')"
      fieldValidations:
        - name: replicas-range
          type: range
          fieldPath: spec.replicas
          min: 1
          max: 10
          message: replicas must be between 1 and 10
---
apiVersion: kubetemplater.io/v1alpha1
kind: KubeTemplate
metadata:
  name: example
  namespace: {ns}
spec:
  templates:
    - object:
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: app-config
        data:
          key: value
      replace: true
    - referenced: true
      object:
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: app-other
"#
    );
    let path = std::env::temp_dir().join(format!("{ns}.yaml"));
    std::fs::write(&path, manifest)?;
    env.kubectl_ok(&["apply", "-f", &path.to_string_lossy()])?;
    let back = env.kubectl_ok(&["get", "kubetemplate", "example", "-n", &ns, "-o", "json"])?;
    let back: serde_json::Value = serde_json::from_str(&back)?;
    assert_eq!(
        back["spec"]["templates"][0]["object"]["data"]["key"], "value",
        "arbitrary object kept as written"
    );
    assert_eq!(back["spec"]["templates"][0]["replace"], true);
    assert_eq!(back["spec"]["templates"][1]["referenced"], true);
    let _ = std::fs::remove_file(path);
    env.target.delete_namespace(&ns).await?;
    Ok(())
}
