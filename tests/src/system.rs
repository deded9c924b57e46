//! The whole system as processes, for the multi-process scenarios: on devcluster a private
//! control plane with a webhook replica, two coordinators and N workers, each under its own API
//! identity (so the audit log says who wrote what); against another cluster
//! (`cargo xtask test --kubeconfig`) the coordinators and workers run here as local processes
//! with that kubeconfig, without the webhook (a remote API server cannot call a loopback
//! address; the coordinator adds the bucket labels) and without an audit log. The binaries are
//! the ones `cargo xtask test` builds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use devcluster::stack::{self, Component, ShardConfig};
use devcluster::testing::{ExternalStack, PrivateCluster};
use devcluster::{Endpoints, Layout};
use kube::Client;
use proto::client::{AdminClient, Credentials, Tls};
use proto::v1::{self};

use crate::{eventually, install_crds};

/// The binaries the scenarios run; `cargo xtask test` builds them first.
pub const BINARIES: [&str; 3] = [
    "kubetemplater-webhook",
    "kubetemplater-coordinator",
    "kubetemplater-worker",
];

/// Where the processes run.
enum Base {
    /// A private devcluster (dropping it stops every process).
    Private(PrivateCluster),
    /// Local processes against an external cluster.
    External(ExternalStack),
}

/// A running system.
pub struct System {
    base: Base,
    /// Admin client.
    pub client: Client,
    config: ShardConfig,
    coordinators: Vec<Component>,
    workers: BTreeMap<usize, Component>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("workers", &self.workers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Timing that keeps the scenarios short: Leases of 6 s (renew deadline 4 s, renewals every
/// 1 s), a re-plan every 5 s.
pub const LEASE_DURATION: Duration = Duration::from_secs(6);

/// Whether the tests run against an external cluster (`cargo xtask test --kubeconfig`).
pub fn on_external_cluster() -> bool {
    std::env::var_os(devcluster::testing::EXTERNAL_KUBECONFIG_ENV).is_some_and(|p| !p.is_empty())
}

fn binary(name: &str) -> Result<std::path::PathBuf> {
    stack::binary_in_target_dir(name).with_context(|| {
        format!(
            "{name} is not built next to the tests; run the tests with `cargo xtask test` (it builds \
             kubetemplater's binaries first) or `cargo build --bins` before `cargo test`"
        )
    })
}

impl System {
    /// Starts a private cluster (with Jaeger when `jaeger`), the CRDs, our RBAC, one webhook
    /// replica, two coordinators and `workers` workers, and waits until all are ready.
    pub async fn start(workers: usize, jaeger: bool) -> Result<Self> {
        let webhook = binary(BINARIES[0])?;
        let mut config = ShardConfig::new(
            binary(BINARIES[1])?,
            binary(BINARIES[2])?,
            vec![
                devcluster::cluster::free_port()?,
                devcluster::cluster::free_port()?,
            ],
        );
        let timing = [
            "--lease-duration=6s",
            "--renew-deadline=4s",
            "--retry-period=1s",
        ];
        config
            .coordinator_args
            .extend(timing.iter().map(|s| (*s).to_owned()));
        config
            .coordinator_args
            .push("--rebalance-interval=5s".to_owned());
        config
            .worker_args
            .extend(timing.iter().map(|s| (*s).to_owned()));
        config.worker_args.push("--shutdown-grace=20s".to_owned());

        let base = match std::env::var_os(devcluster::testing::EXTERNAL_KUBECONFIG_ENV)
            .filter(|_| on_external_cluster())
        {
            Some(kubeconfig) => {
                Base::External(ExternalStack::new(std::path::Path::new(&kubeconfig))?)
            }
            None => Base::Private(PrivateCluster::start(jaeger).await?),
        };
        let (layout, endpoints) = match &base {
            Base::Private(c) => (c.layout().clone(), c.endpoints().clone()),
            Base::External(e) => (e.layout().clone(), e.endpoints().clone()),
        };
        let client = devcluster::cluster::client_from_kubeconfig(&endpoints.kubeconfig).await?;
        install_crds(&client).await?;
        stack::install_prerequisites(&layout, &endpoints.kubeconfig)?;
        if matches!(base, Base::Private(_)) {
            stack::start_webhooks(
                &layout,
                &endpoints,
                &stack::WebhookConfig::new(webhook, 1, devcluster::cluster::free_port()?),
            )
            .await?;
        }
        let coordinators = stack::start_coordinators(&layout, &endpoints, &config).await?;
        let mut system = Self {
            base,
            client,
            config,
            coordinators,
            workers: BTreeMap::new(),
        };
        system.add_workers(workers).await?;
        Ok(system)
    }

    /// Starts `n` more workers (the lowest free identities) and waits until they are ready.
    pub async fn add_workers(&mut self, n: usize) -> Result<Vec<String>> {
        let ids: Vec<usize> = (0..devcluster::pki::WORKER_IDENTITIES)
            .filter(|i| !self.workers.contains_key(i))
            .take(n)
            .collect();
        if ids.len() < n {
            bail!(
                "devcluster has identities for {} workers",
                devcluster::pki::WORKER_IDENTITIES
            );
        }
        let started =
            stack::start_workers(self.layout(), self.endpoints(), &self.config, ids.clone())
                .await?;
        let names = started.iter().map(|c| c.record.component.clone()).collect();
        for (id, component) in ids.into_iter().zip(started) {
            self.workers.insert(id, component);
        }
        Ok(names)
    }

    /// Copies the cluster's logs (the coordinators' and workers' included) to
    /// `$TMPDIR/kt-<test>-logs-<pid>`, which outlives a private cluster: call it before failing.
    pub fn keep_logs(&self, test: &str) {
        let from = self.layout().logs_dir();
        let to = std::env::temp_dir().join(format!("kt-{test}-logs-{}", std::process::id()));
        let copy = || -> std::io::Result<()> {
            std::fs::create_dir_all(&to)?;
            for entry in std::fs::read_dir(&from)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    std::fs::copy(entry.path(), to.join(entry.file_name()))?;
                }
            }
            Ok(())
        };
        match copy() {
            Ok(()) => eprintln!("the cluster's logs are kept in {}", to.display()),
            Err(e) => eprintln!("keeping the logs of {}: {e}", from.display()),
        }
    }

    /// The state directory of the processes (their logs are in `logs/`).
    pub fn layout(&self) -> &Layout {
        match &self.base {
            Base::Private(c) => c.layout(),
            Base::External(e) => e.layout(),
        }
    }

    /// The cluster's endpoints.
    pub fn endpoints(&self) -> &Endpoints {
        match &self.base {
            Base::Private(c) => c.endpoints(),
            Base::External(e) => e.endpoints(),
        }
    }

    /// kube-apiserver's audit log; `None` on an external cluster.
    pub fn audit(&self) -> Option<devcluster::audit::AuditLog> {
        match &self.base {
            Base::Private(c) => Some(devcluster::audit::AuditLog::new(&c.endpoints().audit_log)),
            Base::External(_) => None,
        }
    }

    /// Whether the webhook runs (devcluster only).
    pub fn has_webhook(&self) -> bool {
        matches!(self.base, Base::Private(_))
    }

    /// Names of the running workers.
    pub fn workers(&self) -> Vec<String> {
        self.workers
            .values()
            .map(|c| c.record.component.clone())
            .collect()
    }

    /// Stops the highest-numbered worker gracefully (SIGTERM) and waits until it exited.
    pub fn stop_worker(&mut self) -> Result<String> {
        let (&id, _) = self.workers.iter().next_back().context("no worker runs")?;
        let component = self.workers.remove(&id).context("no worker runs")?;
        component.record.stop(Duration::from_secs(40));
        Ok(component.record.component)
    }

    /// SIGKILLs worker `name`.
    pub fn kill_worker(&mut self, name: &str) -> Result<()> {
        let id = self
            .workers
            .iter()
            .find(|(_, c)| c.record.component == name)
            .map(|(id, _)| *id)
            .with_context(|| format!("{name} does not run"))?;
        let component = self.workers.remove(&id).context("worker vanished")?;
        kill(&component)
    }

    /// SIGKILLs the leading coordinator; returns its id.
    pub async fn kill_leader(&mut self) -> Result<String> {
        let leader = self.map().await?.leader_id;
        let index = self
            .coordinators
            .iter()
            .position(|c| c.record.component == leader)
            .with_context(|| format!("the leader {leader} is not one of ours"))?;
        let component = self.coordinators.remove(index);
        kill(&component)?;
        Ok(leader)
    }

    /// An admin client of the leader (standbys answer UNAVAILABLE).
    /// Calls carry the admin kubeconfig's token (cluster-admin).
    pub async fn admin(&self) -> Result<AdminClient> {
        Ok(self.leader().await?.0)
    }

    /// The leader's admin client and the bucket map it answered the probe with.
    async fn leader(&self) -> Result<(AdminClient, v1::GetBucketMapResponse)> {
        let urls = self
            .config
            .coordinator_ports
            .iter()
            .map(|port| format!("https://127.0.0.1:{port}"));
        Ok(proto::client::leader(urls, &self.credentials().await?, &self.tls().await?).await?)
    }

    /// TLS towards the coordinators: the CA bundle they publish.
    pub async fn tls(&self) -> Result<Tls> {
        Ok(Tls::from_cluster(&self.client, "kubetemplater-system").await?)
    }

    /// The admin kubeconfig's credentials, for the coordinators' admin API.
    pub async fn credentials(&self) -> Result<Credentials> {
        let config =
            devcluster::cluster::config_from_kubeconfig(&self.endpoints().kubeconfig).await?;
        Ok(Credentials::from_kube_config(&config)?)
    }

    /// The bucket map as the leader sees it.
    pub async fn map(&self) -> Result<v1::GetBucketMapResponse> {
        Ok(self.leader().await?.1)
    }

    /// Waits until no handoff is in progress and every bucket has one of the running workers
    /// as owner; returns the map.
    pub async fn settled_map(&self, timeout: Duration) -> Result<v1::GetBucketMapResponse> {
        let workers: BTreeSet<String> = self.workers().into_iter().collect();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match self.map().await {
                Ok(map) => {
                    let bad = map
                        .buckets
                        .iter()
                        .filter(|b| {
                            !workers.contains(&b.owner) || b.state != v1::BucketState::Owned as i32
                        })
                        .count();
                    if bad == 0 {
                        return Ok(map);
                    }
                    format!("{bad} buckets not settled on {workers:?}")
                }
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("the bucket map did not settle within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The coordinators' gRPC URLs, comma-separated (for `ktctl --coordinator`).
    pub fn coordinator_urls(&self) -> String {
        self.config.coordinator_urls()
    }

    /// Waits until `check` holds, polling.
    pub async fn until<F, Fut>(&self, timeout: Duration, what: &str, check: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        eventually(timeout, what, check).await
    }
}

fn kill(component: &Component) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &component.record.pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -9 {} failed", component.record.pid);
    }
    Ok(())
}

/// Owners of each bucket in `map`.
pub fn owners(map: &v1::GetBucketMapResponse) -> Vec<String> {
    map.buckets.iter().map(|b| b.owner.clone()).collect()
}

/// The share of buckets whose owner differs between two maps.
pub fn moved_fraction(before: &[String], after: &[String]) -> f64 {
    let moved = before.iter().zip(after).filter(|(a, b)| a != b).count();
    moved as f64 / before.len().max(1) as f64
}
