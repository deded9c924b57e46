//! Fixtures shared by the cluster tests: the target cluster, CRD installation, kubectl, waiting.
//!
//! Every test gets its own namespace from [`Env::namespace`]; the cluster is shared by the run
//! (see [`devcluster::testing`]).

use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

pub use devcluster::testing::Target;

pub mod system;
pub mod workload;

/// Field manager the tests use when they install things.
pub const TEST_MANAGER: &str = "kubetemplater-e2e";

/// What a test works with: the target cluster and an admin client bound to the test's runtime.
#[derive(Clone)]
pub struct Env {
    /// The cluster.
    pub target: Target,
    /// Admin client.
    pub client: Client,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Env {
    /// The run's cluster, with our CRDs installed and Established.
    pub async fn get() -> Result<Self> {
        let target = devcluster::testing::target()
            .await
            .context("getting the test cluster")?;
        let client = target.client().await?;
        install_crds(&client).await?;
        Ok(Self { target, client })
    }

    /// A fresh namespace for one test.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        Ok(self.target.namespace(prefix).await?)
    }

    /// A fresh namespace exempt from kubetemplater's admission webhooks, for tests of the API
    /// server's own behaviour with our CRDs (schema, columns, SSA, watches, GC) that must not
    /// depend on a KubeTemplatePolicy.
    pub async fn namespace_without_admission(&self, prefix: &str) -> Result<String> {
        Ok(self.target.namespace_without_admission(prefix).await?)
    }

    /// Runs kubectl against the target; returns its output whatever the exit status.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.target
            .kubectl()
            .args(args)
            .output()
            .context("running kubectl")
    }

    /// Runs kubectl and fails with its stderr unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Installs every CRD of the `api` crate with server-side apply and waits until each is
/// Established and served.
pub async fn install_crds(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(TEST_MANAGER).force();
    for crd in api::crds() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
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

/// Polls `check` every 100 ms until it returns `Ok(true)`, failing after `timeout` with the
/// last error (or "still false").
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, check: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => String::from("condition still false"),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
