//! `rebalance`: `churn` while the workers are scaled up and down; handoff time and buckets moved
//! (from the coordinator's admin API), and the churn's checks: no apply missed or duplicated
//! across the handoffs.
//!
//! On devcluster the workers are scaled as `cargo xtask scale` does (same binaries, identities
//! `worker-<i>`); elsewhere `--scale-command` runs a command with `{workers}` replaced, e.g.
//! `kubectl -n kubetemplater-system scale deployment/kubetemplater-worker --replicas={workers}`.

use std::pin::Pin;
use std::time::Duration;

use proto::client::{AdminClient, Credentials, Tls};
use proto::v1::{self};
use serde::Serialize;

use crate::churn::{self, ChurnArgs, Scaler};
use crate::plot::Panel;
use crate::report::{Figure, Report, unit};
use crate::stats::Summary;
use crate::target::Target;
use crate::{Error, Result};

/// Scenario name.
pub const SCENARIO: &str = "rebalance";

/// Arguments of `loadtest rebalance`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct RebalanceArgs {
    /// The churn running meanwhile.
    #[command(flatten)]
    pub churn: ChurnArgs,
    /// Worker counts to go through, evenly spaced over the churn (e.g. 4,2: up to 4, then down
    /// to 2).
    #[arg(long, value_delimiter = ',', default_values_t = [4, 2])]
    pub scale: Vec<usize>,
    /// Command that scales the workers, `{workers}` replaced by the count (required outside
    /// devcluster).
    #[arg(long)]
    pub scale_command: Option<String>,
    /// The coordinators' gRPC URLs, comma-separated [default on devcluster: from endpoints.json]
    #[arg(long)]
    pub coordinator: Option<String>,
}

/// Scales devcluster's workers.
struct DevclusterScaler {
    plan: Vec<usize>,
    kubeconfig: std::path::PathBuf,
}

impl Scaler for DevclusterScaler {
    fn plan(&self) -> Vec<usize> {
        self.plan.clone()
    }

    fn scale(&mut self, n: usize) -> Pin<Box<dyn Future<Output = Result<String>> + Send + '_>> {
        Box::pin(async move {
            let (layout, endpoints) = crate::target::devcluster_of(&self.kubeconfig)
                .ok_or_else(|| Error::Cluster("devcluster stopped".into()))?;
            let config = devcluster::stack::ShardConfig::of_running(&endpoints)
                .map_err(|e| Error::Cluster(e.to_string()))?;
            let scaled = devcluster::stack::scale_workers(&layout, &endpoints, &config, n)
                .await
                .map_err(|e| Error::Cluster(format!("scaling to {n} workers: {e}")))?;
            let started: Vec<String> = scaled
                .started
                .iter()
                .map(|c| c.record.component.clone())
                .collect();
            Ok(format!(
                "started [{}], stopped [{}]",
                started.join(", "),
                scaled.stopped.join(", ")
            ))
        })
    }
}

/// Scales with a command.
struct CommandScaler {
    plan: Vec<usize>,
    command: String,
}

impl Scaler for CommandScaler {
    fn plan(&self) -> Vec<usize> {
        self.plan.clone()
    }

    fn scale(&mut self, n: usize) -> Pin<Box<dyn Future<Output = Result<String>> + Send + '_>> {
        Box::pin(async move {
            let command = self.command.replace("{workers}", &n.to_string());
            let output = tokio::process::Command::new("sh")
                .args(["-c", &command])
                .output()
                .await
                .map_err(|e| Error::Cluster(format!("running `{command}`: {e}")))?;
            if !output.status.success() {
                return Err(Error::Cluster(format!(
                    "`{command}` failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            Ok(command)
        })
    }
}

/// The leader's admin client among `urls`, called with the kubeconfig's credentials.
async fn leader(urls: &str, kubeconfig: &std::path::Path) -> Result<AdminClient> {
    let config = devcluster::cluster::config_from_kubeconfig(kubeconfig)
        .await
        .map_err(|e| Error::Cluster(e.to_string()))?;
    let credentials = Credentials::from_kube_config(&config)
        .map_err(|e| Error::Cluster(format!("the admin API: {e}")))?;
    let client = kube::Client::try_from(config).map_err(|e| Error::Cluster(e.to_string()))?;
    let tls = Tls::from_cluster(&client, "kubetemplater-system")
        .await
        .map_err(|e| Error::Cluster(e.to_string()))?;
    proto::client::leader(urls.split(','), &credentials, &tls)
        .await
        .map(|(client, _)| client)
        .map_err(|e| Error::Cluster(e.to_string()))
}

/// Runs `rebalance`.
pub async fn run(
    target: &mut Target,
    args: &RebalanceArgs,
    quiet: bool,
    report: &mut Report,
) -> Result<Vec<Panel>> {
    args.churn.validate()?;
    if args.scale.is_empty() || args.scale.contains(&0) {
        return Err(Error::InvalidArgument(
            "--scale needs worker counts of at least 1".into(),
        ));
    }
    report.parameters = serde_json::to_value(args).unwrap_or_default();
    let urls = match (&args.coordinator, &target.devcluster) {
        (Some(urls), _) => urls.clone(),
        (None, Some((_, endpoints))) => endpoints
            .addresses
            .get(devcluster::stack::COORDINATOR_ADDRESSES)
            .cloned()
            .ok_or_else(|| Error::Cluster("devcluster runs no coordinator".into()))?,
        (None, None) => {
            return Err(Error::InvalidArgument(
                "--coordinator is needed outside devcluster".into(),
            ));
        }
    };
    let mut scaler: Box<dyn Scaler> = match (&args.scale_command, &target.devcluster) {
        (Some(command), _) => Box::new(CommandScaler {
            plan: args.scale.clone(),
            command: command.clone(),
        }),
        (None, Some(_)) => Box::new(DevclusterScaler {
            plan: args.scale.clone(),
            kubeconfig: target.kubeconfig.clone(),
        }),
        (None, None) => {
            return Err(Error::InvalidArgument(
                "--scale-command is needed outside devcluster".into(),
            ));
        }
    };
    let mut admin = leader(&urls, &target.kubeconfig).await?;
    let started_at = std::time::SystemTime::now();
    let panels = churn::run(target, &args.churn, Some(scaler.as_mut()), quiet, report).await?;
    // The leader may have changed; ask again.
    if let Ok(fresh) = leader(&urls, &target.kubeconfig).await {
        admin = fresh;
    }
    let handoffs = admin
        .list_handoffs(v1::ListHandoffsRequest { limit: 10_000 })
        .await
        .map_err(|s| Error::Cluster(format!("listing handoffs: {}", s.message())))?
        .into_inner()
        .handoffs;
    let ours: Vec<&v1::Handoff> = handoffs
        .iter()
        .filter(|h| {
            h.started_at
                .and_then(|t| std::time::SystemTime::try_from(t).ok())
                .is_some_and(|t| t >= started_at)
        })
        .collect();
    let moved: usize = ours.iter().map(|h| h.buckets.len()).sum();
    let durations: Vec<f64> = ours
        .iter()
        .filter_map(|h| h.duration.and_then(|d| Duration::try_from(d).ok()))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    report
        .figures
        .push(Figure::new("handoffs", ours.len() as f64, unit::COUNT));
    report.figures.push(
        Figure::new("buckets_moved", moved as f64, unit::BUCKETS)
            .describe("buckets that changed owner during the run"),
    );
    let s = Summary::new(durations.iter().copied());
    for (p, name) in [(50.0, "p50"), (99.0, "p99"), (100.0, "max")] {
        if let Some(v) = s.percentile(p) {
            report.figures.push(
                Figure::new(format!("handoff_ms.{name}"), v, unit::MS)
                    .describe("revoke sent → grant sent (0 for a direct grant)"),
            );
        }
    }
    let unfinished = ours
        .iter()
        .filter(|h| h.outcome == v1::HandoffOutcome::InProgress as i32)
        .count();
    if unfinished > 0 {
        report.problems.push(format!(
            "{unfinished} handoffs still in progress at the end"
        ));
    }
    for h in &ours {
        report.records.push(serde_json::json!({
            "handoff": h.id, "reason": proto::handoff_reason_name(h.reason), "from": h.from, "to": h.to,
            "buckets": h.buckets.len(),
            "ms": h.duration.and_then(|d| Duration::try_from(d).ok()).map(|d| d.as_secs_f64() * 1000.0),
        }));
    }
    Ok(panels)
}
