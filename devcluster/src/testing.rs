//! The test API: one control plane per test run, one namespace per test.
//!
//! [`target`] returns the cluster the tests run against:
//! - with `KT_TEST_KUBECONFIG=<path>` (what `cargo xtask test --kubeconfig <path>` sets): that
//!   cluster (kind, k3d, a real one). It has no audit log we can read, so audit-based checks skip
//!   and say so. A plain `KUBECONFIG` is deliberately not enough, so that a test run never lands on
//!   the cluster a developer happens to have selected.
//! - otherwise the shared devcluster in `.local/`: reused when `.local/endpoints.json` points at a
//!   live one (e.g. after `cargo xtask up`), started on first use otherwise (and left running for
//!   the next test binary; `cargo xtask test` stops it at the end if it started it).
//!
//! A test that must own its cluster uses [`PrivateCluster`] instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use rand::Rng;

use crate::audit::AuditLog;
use crate::cluster::{self, ClusterConfig, Endpoints, client_from_kubeconfig};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::toolchain;

/// Environment variable naming an external cluster's kubeconfig for the tests.
pub const EXTERNAL_KUBECONFIG_ENV: &str = "KT_TEST_KUBECONFIG";

/// Label put on every namespace a test creates, so leftovers can be swept.
pub const TEST_NAMESPACE_LABEL: &str = "kubetemplater.io/e2e";

/// The cluster tests run against.
#[derive(Debug, Clone)]
pub struct Target {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// devcluster endpoints; `None` for an external cluster.
    pub endpoints: Option<Endpoints>,
}

static TARGET: tokio::sync::OnceCell<Target> = tokio::sync::OnceCell::const_new();

/// The cluster for this test run (see the module docs). Safe to call from many tests at once,
/// and from several test processes at once.
pub async fn target() -> Result<Target> {
    TARGET.get_or_try_init(resolve).await.cloned()
}

async fn resolve() -> Result<Target> {
    if let Some(path) = std::env::var_os(EXTERNAL_KUBECONFIG_ENV).filter(|p| !p.is_empty()) {
        return Ok(Target {
            kubeconfig: PathBuf::from(path),
            endpoints: None,
        });
    }
    let cluster = cluster::start(&ClusterConfig::shared()).await?;
    Ok(Target {
        kubeconfig: cluster.endpoints.kubeconfig.clone(),
        endpoints: Some(cluster.endpoints),
    })
}

impl Target {
    /// Whether this is devcluster (audit log available, component identities present).
    pub fn is_devcluster(&self) -> bool {
        self.endpoints.is_some()
    }

    /// A new admin client (create one per test: clients are bound to the test's runtime).
    pub async fn client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// A client acting as a component identity (devcluster only).
    pub async fn client_as(&self, identity: &str) -> Result<Option<kube::Client>> {
        match &self.endpoints {
            Some(e) => client_from_kubeconfig(&e.kubeconfig_for(identity))
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// The audit log, or `None` (with the reason printed) when the target has none readable.
    pub fn audit(&self, test: &str) -> Option<AuditLog> {
        match &self.endpoints {
            Some(e) => Some(AuditLog::new(&e.audit_log)),
            None => {
                eprintln!(
                    "SKIP {test}: needs kube-apiserver's audit log, which only devcluster exposes"
                );
                None
            }
        }
    }

    /// Creates a fresh namespace `kt-<prefix>-<random>` labelled as a test namespace.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        self.namespace_with_labels(prefix, &[]).await
    }

    /// [`Target::namespace`], exempt from kubetemplater's admission webhooks (label
    /// `kubetemplater.io/admission=disabled`): for tests of the CRD schema itself, which must
    /// not depend on a policy being in place.
    pub async fn namespace_without_admission(&self, prefix: &str) -> Result<String> {
        self.namespace_with_labels(prefix, &[("kubetemplater.io/admission", "disabled")])
            .await
    }

    async fn namespace_with_labels(&self, prefix: &str, extra: &[(&str, &str)]) -> Result<String> {
        let client = self.client().await?;
        let suffix: u32 = rand::rng().random_range(0..0xff_ffff);
        let name = format!("kt-{prefix}-{suffix:06x}");
        let mut labels = BTreeMap::from([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())]);
        labels.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        kube::Api::<Namespace>::all(client)
            .create(&PostParams::default(), &ns)
            .await
            .map_err(Error::kube(format!("creating test namespace {name}")))?;
        Ok(name)
    }

    /// Deletes a test namespace (asynchronously: the namespace controller empties it).
    pub async fn delete_namespace(&self, name: &str) -> Result<()> {
        let client = self.client().await?;
        match kube::Api::<Namespace>::all(client)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(Error::kube(format!("deleting test namespace {name}"))(e)),
        }
    }

    /// A `kubectl` command pointed at this cluster (devcluster's kubectl when built).
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(toolchain::binary_or_path(&Layout::shared(), "kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }
}

/// A control plane owned by one test, on free ports, stopped when dropped.
#[derive(Debug)]
pub struct PrivateCluster {
    cluster: cluster::Cluster,
    _dir: tempfile_dir::Dir,
}

impl PrivateCluster {
    /// Starts a private control plane (with Jaeger when `jaeger`).
    ///
    /// A port taken between choosing it and the component binding it is retried with new
    /// ports, up to three attempts; any other failure is returned at once.
    pub async fn start(jaeger: bool) -> Result<Self> {
        let mut attempt = 1;
        loop {
            let dir = tempfile_dir::Dir::new()?;
            let config = ClusterConfig::private(dir.path(), jaeger)?;
            match cluster::start(&config).await {
                Ok(cluster) => return Ok(Self { cluster, _dir: dir }),
                Err(e) if attempt < 3 && is_port_race(&e) => {
                    eprintln!(
                        "private devcluster attempt {attempt} lost a port race, retrying: {e}"
                    );
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Its endpoints.
    pub fn endpoints(&self) -> &Endpoints {
        &self.cluster.endpoints
    }

    /// Its state directory.
    pub fn layout(&self) -> &Layout {
        &self.cluster.layout
    }

    /// As a [`Target`].
    pub fn target(&self) -> Target {
        Target {
            kubeconfig: self.cluster.endpoints.kubeconfig.clone(),
            endpoints: Some(self.cluster.endpoints.clone()),
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.stop() {
            eprintln!("stopping private devcluster: {e}");
        }
    }
}

/// Our components run as local processes against an external cluster (`--kubeconfig`): a
/// private state directory whose `endpoints.json` has no control plane of its own and a
/// kubeconfig per component identity that is the external admin kubeconfig, so the
/// [`stack`](crate::stack) functions start, record and stop processes as on devcluster. Dropping
/// it stops them and removes the directory.
#[derive(Debug)]
pub struct ExternalStack {
    layout: Layout,
    endpoints: Endpoints,
    _dir: tempfile_dir::Dir,
}

impl ExternalStack {
    /// A stack for the cluster of `kubeconfig`.
    pub fn new(kubeconfig: &Path) -> Result<Self> {
        let dir = tempfile_dir::Dir::new()?;
        let layout = Layout::new(dir.path());
        let kubeconfigs = layout.kubeconfigs_dir();
        let logs = layout.logs_dir();
        for d in [&kubeconfigs, &logs] {
            std::fs::create_dir_all(d).map_err(Error::io("creating", d))?;
        }
        let kubeconfig =
            std::fs::canonicalize(kubeconfig).map_err(Error::io("reading", kubeconfig))?;
        for (identity, _, _) in crate::pki::identity_specs() {
            let link = layout.kubeconfig_for(&identity);
            std::os::unix::fs::symlink(&kubeconfig, &link).map_err(Error::io("linking", &link))?;
        }
        let endpoints = Endpoints {
            apiserver: String::new(),
            etcd: String::new(),
            jaeger: None,
            kubeconfig,
            kubeconfigs,
            ca_cert: PathBuf::new(),
            audit_log: layout.audit_log(),
            logs,
            kubernetes_version: String::new(),
            ports: crate::Ports::default(),
            processes: Vec::new(),
            components: Vec::new(),
            addresses: Default::default(),
        };
        endpoints.save(&layout)?;
        Ok(Self {
            layout,
            endpoints,
            _dir: dir,
        })
    }

    /// Its state directory (logs of the processes under `logs/`).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Its endpoints (no audit log, no Jaeger).
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }
}

impl Drop for ExternalStack {
    fn drop(&mut self) {
        if let Err(e) = cluster::stop(&self.layout) {
            eprintln!("stopping the components on the external cluster: {e}");
        }
    }
}

/// Whether a start failed because a chosen port was taken by someone else meanwhile.
fn is_port_race(e: &crate::Error) -> bool {
    match e {
        crate::Error::PortBusy { .. } => true,
        crate::Error::ProcessExited { tail, .. } => tail.contains("address already in use"),
        _ => false,
    }
}

/// A private state directory under `.local/private/`, removed on drop.
mod tempfile_dir {
    use super::*;

    #[derive(Debug)]
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Result<Self> {
            let suffix: u64 = rand::rng().random();
            let path = crate::layout::default_state_dir()
                .join("private")
                .join(format!("{suffix:016x}"));
            std::fs::create_dir_all(&path).map_err(Error::io("creating", &path))?;
            Ok(Self(path))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
