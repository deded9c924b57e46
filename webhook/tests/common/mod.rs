//! Shared fixtures of the webhook's cluster tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

pub use devcluster::stack::SYSTEM_NAMESPACE;
pub use devcluster::testing::Target;

pub const MANAGER: &str = "kubetemplater-webhook-e2e";

/// The webhook binary built for these tests.
pub fn webhook_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubetemplater-webhook"))
}

/// The shared cluster with the webhook serving. On devcluster the replicas `cargo xtask test`
/// started are used, or started here (under a lock) when the tests run without xtask. On another
/// cluster the webhook must already be installed there; `None` (with a SKIP line) when it is not.
pub async fn cluster_with_webhook(test: &str) -> Result<Option<(Target, Client)>> {
    let target = devcluster::testing::target().await?;
    let client = target.client().await?;
    install_crds(&client).await?;
    if target.is_devcluster() {
        ensure_webhooks(&target).await?;
    } else {
        let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        if configs.get_opt("kubetemplater-validating").await?.is_none() {
            eprintln!(
                "SKIP {test}: the webhook is not installed in this cluster (no ValidatingWebhookConfiguration kubetemplater-validating)"
            );
            return Ok(None);
        }
    }
    Ok(Some((target, client)))
}

async fn ensure_webhooks(target: &Target) -> Result<()> {
    let layout = devcluster::Layout::shared();
    let lock_path = layout.root().join("webhook-e2e.lock");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock().context("locking the webhook start")?;
    let endpoints = devcluster::Endpoints::load(&layout)?.context("devcluster is not running")?;
    if devcluster::stack::running(&endpoints, "webhook-").is_empty() {
        devcluster::stack::install_prerequisites(&layout, &target.kubeconfig)?;
        devcluster::stack::start_webhooks(
            &layout,
            &endpoints,
            &devcluster::stack::WebhookConfig::new(
                webhook_binary(),
                2,
                devcluster::stack::WEBHOOK_PORT,
            ),
        )
        .await?;
    }
    lock.unlock().ok();
    Ok(())
}

/// Applies every CRD and waits until each is Established.
pub async fn install_crds(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(MANAGER).force();
    for crd in api::crds() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        crds.patch(&name, &params, &Patch::Apply(&crd)).await?;
    }
    for crd in api::crds() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        let api = crds.clone();
        eventually(
            Duration::from_secs(60),
            &format!("CRD {name} Established"),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await?;
                    Ok(crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True"))
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// Polls `check` every 50 ms until `Ok(true)`; fails after `timeout` with the last error.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, check: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => "still false".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not true within {timeout:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs kubectl with `stdin`; returns (success, stdout, stderr).
pub fn kubectl(
    target: &Target,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(bool, String, String)> {
    use std::io::Write as _;
    let mut cmd = target.kubectl();
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("running kubectl")?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(input.as_bytes())?;
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `kubectl apply --server-side -f -` of `yaml`.
pub fn apply(target: &Target, yaml: &str) -> Result<(bool, String, String)> {
    kubectl(
        target,
        &[
            "apply",
            "--server-side",
            "--field-manager",
            MANAGER,
            "-f",
            "-",
        ],
        Some(yaml),
    )
}

/// A policy for `ns` (named after it, in the system namespace) allowing ConfigMaps named `app-*`
/// with a `team` label, Deployments with at most 3 replicas, both only in `ns`.
pub fn policy_yaml(ns: &str, name_regex: &str) -> String {
    format!(
        r#"apiVersion: kubetemplater.io/v1alpha1
kind: KubeTemplatePolicy
metadata:
  name: {ns}
  namespace: {SYSTEM_NAMESPACE}
spec:
  sourceNamespace: {ns}
  validationRules:
    - kind: ConfigMap
      group: ""
      version: v1
      targetNamespaces: ["{ns}"]
      fieldValidations:
        - name: name-prefix
          type: regex
          fieldPath: metadata.name
          regex: "{name_regex}"
          message: ConfigMap names must match {name_regex}
    - kind: Deployment
      group: apps
      version: v1
      targetNamespaces: ["{ns}"]
      fieldValidations:
        - name: few-replicas
          type: cel
          fieldPath: spec.replicas
          cel: "value <= 3"
          message: at most 3 replicas
"#
    )
}

/// A KubeTemplate named `name` in `ns` holding `items` (YAML list items, indented 4).
pub fn template_yaml(ns: &str, name: &str, items: &str) -> String {
    format!(
        "apiVersion: kubetemplater.io/v1alpha1\nkind: KubeTemplate\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  templates:\n{items}"
    )
}

/// A ConfigMap template item.
pub fn configmap_item(name: &str, namespace: Option<&str>) -> String {
    let ns = namespace
        .map(|n| format!("\n          namespace: {n}"))
        .unwrap_or_default();
    format!(
        "    - object:\n        apiVersion: v1\n        kind: ConfigMap\n        metadata:\n          name: {name}{ns}\n        data:\n          k: v\n"
    )
}

/// A Deployment template item with `replicas`.
pub fn deployment_item(name: &str, replicas: u32) -> String {
    format!(
        "    - object:\n        apiVersion: apps/v1\n        kind: Deployment\n        metadata:\n          name: {name}\n        spec:\n          replicas: {replicas}\n          selector:\n            matchLabels: {{app: {name}}}\n          template:\n            metadata:\n              labels: {{app: {name}}}\n            spec:\n              containers:\n                - name: c\n                  image: nginx\n"
    )
}

/// Applies the policy for `ns` and waits until the webhooks use it (a dry-run create of an
/// allowed template succeeds).
pub async fn install_policy(target: &Target, ns: &str, name_regex: &str) -> Result<()> {
    let (ok, _, err) = apply(target, &policy_yaml(ns, name_regex))?;
    if !ok {
        bail!("applying the policy for {ns} failed: {err}");
    }
    let probe = template_yaml(ns, "probe", &configmap_item("app-probe", None));
    eventually(
        Duration::from_secs(10),
        "the webhooks see the new policy",
        || {
            let probe = probe.clone();
            async move {
                let (ok, _, _) = kubectl(
                    target,
                    &["create", "--dry-run=server", "-f", "-"],
                    Some(&probe),
                )?;
                Ok(ok)
            }
        },
    )
    .await
}
