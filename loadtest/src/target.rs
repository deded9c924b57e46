//! The cluster a scenario runs against, and what can be learnt about it.
//!
//! The kubeconfig is `--kubeconfig`, else `$KUBECONFIG`, else devcluster's
//! `.local/kubeconfig`. When the kubeconfig is a devcluster's (an `endpoints.json` beside it
//! names it), the run also knows the processes (for CPU and memory sampling), the components'
//! admin endpoints (for their metrics) and kube-apiserver's audit log (for exact write counts by
//! identity). Elsewhere the components can be named with `--metrics name=url` and `--pid
//! name=pid`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use devcluster::{Endpoints, Layout};
use kube::Client;

use crate::promtext::Scrape;
use crate::{Error, Result};

/// Where to run.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TargetArgs {
    /// Kubeconfig of the cluster [default: $KUBECONFIG, else devcluster's .local/kubeconfig]
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the system (policies, bucket map, Leases).
    #[arg(long, default_value = devcluster::stack::SYSTEM_NAMESPACE)]
    pub system_namespace: String,
    /// A component's metrics endpoint, `name=http://host:port` (repeatable); on devcluster
    /// every component's is known already. Names starting `worker` are read for queue depth.
    #[arg(long = "metrics", value_name = "NAME=URL", value_parser = parse_pair)]
    pub metrics: Vec<(String, String)>,
    /// A local process to sample for CPU and memory, `name=pid` (repeatable); on devcluster
    /// every process is known already.
    #[arg(long = "pid", value_name = "NAME=PID", value_parser = parse_pid)]
    pub pids: Vec<(String, u32)>,
}

fn parse_pair(text: &str) -> std::result::Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    if name.is_empty() || value.is_empty() {
        return Err(format!("{text:?} is not NAME=VALUE"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

fn parse_pid(text: &str) -> std::result::Result<(String, u32), String> {
    let (name, pid) = parse_pair(text)?;
    let pid = pid
        .parse()
        .map_err(|_| format!("{pid:?} in {text:?} is not a process id"))?;
    Ok((name, pid))
}

/// A connected cluster.
#[derive(Clone)]
pub struct Target {
    /// Admin client.
    pub client: Client,
    /// The kubeconfig used.
    pub kubeconfig: PathBuf,
    /// The system's namespace.
    pub system_namespace: String,
    /// The devcluster behind the kubeconfig, if it is one.
    pub devcluster: Option<(Layout, Endpoints)>,
    /// Components' metrics endpoints by name.
    pub metrics: BTreeMap<String, String>,
    /// Local processes to sample by name.
    pub processes: BTreeMap<String, u32>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("kubeconfig", &self.kubeconfig)
            .field("devcluster", &self.devcluster.is_some())
            .field("metrics", &self.metrics)
            .field("processes", &self.processes)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Connects to the cluster `args` name.
    pub async fn connect(args: &TargetArgs) -> Result<Self> {
        let kubeconfig = args
            .kubeconfig
            .clone()
            .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Layout::shared().admin_kubeconfig());
        if !kubeconfig.is_file() {
            return Err(Error::Cluster(format!(
                "no kubeconfig at {}: start devcluster with `cargo xtask up` or pass --kubeconfig",
                kubeconfig.display()
            )));
        }
        let client = devcluster::cluster::client_from_kubeconfig(&kubeconfig)
            .await
            .map_err(|e| {
                Error::Cluster(format!("connecting with {}: {e}", kubeconfig.display()))
            })?;
        let devcluster = devcluster_of(&kubeconfig);
        let mut metrics = BTreeMap::new();
        let mut processes = BTreeMap::new();
        if let Some((_, endpoints)) = &devcluster {
            for p in endpoints.processes.iter().chain(&endpoints.components) {
                if p.is_alive() {
                    processes.insert(p.component.clone(), p.pid);
                }
            }
            for (key, url) in &endpoints.addresses {
                if let Some(name) = key.strip_suffix(".admin")
                    && processes.contains_key(name)
                {
                    metrics.insert(name.to_owned(), url.clone());
                }
            }
        }
        metrics.extend(args.metrics.iter().cloned());
        processes.extend(args.pids.iter().cloned());
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Cluster(format!("building an HTTP client: {e}")))?;
        Ok(Self {
            client,
            kubeconfig,
            system_namespace: args.system_namespace.clone(),
            devcluster,
            metrics,
            processes,
            http,
        })
    }

    /// kube-apiserver's audit log, on devcluster.
    pub fn audit(&self) -> Option<devcluster::audit::AuditLog> {
        self.devcluster
            .as_ref()
            .map(|(_, e)| devcluster::audit::AuditLog::new(&e.audit_log))
    }

    /// kube-apiserver's `/metrics`.
    pub async fn apiserver_metrics(&self) -> Result<Scrape> {
        let request = http::Request::get("/metrics")
            .body(Vec::new())
            .map_err(|e| Error::Cluster(format!("building GET /metrics: {e}")))?;
        let text = self.client.request_text(request).await.map_err(|e| {
            Error::Cluster(format!(
                "reading kube-apiserver's /metrics (the identity needs `get` on the /metrics \
                 non-resource URL): {e}"
            ))
        })?;
        Ok(Scrape::parse(&text))
    }

    /// The metrics of component `name`.
    pub async fn component_metrics(&self, name: &str) -> Result<Scrape> {
        let base = self
            .metrics
            .get(name)
            .ok_or_else(|| Error::Cluster(format!("no metrics endpoint known for {name}")))?;
        let url = format!("{}/metrics", base.trim_end_matches('/'));
        let text = async {
            self.http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        }
        .await
        .map_err(|e| Error::Cluster(format!("scraping {name} at {url}: {e}")))?;
        Ok(Scrape::parse(&text))
    }

    /// Components (with a metrics endpoint) whose name starts with `prefix`.
    pub fn components(&self, prefix: &str) -> Vec<String> {
        self.metrics
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Reloads the devcluster's processes and endpoints (after workers were scaled).
    pub fn refresh(&mut self) {
        let Some(fresh) = devcluster_of(&self.kubeconfig) else {
            return;
        };
        let (_, endpoints) = &fresh;
        self.processes.retain(|name, _| {
            !(name.starts_with("worker-")
                || name.starts_with("coordinator-")
                || name.starts_with("webhook-"))
        });
        for p in &endpoints.components {
            if p.is_alive() {
                self.processes.insert(p.component.clone(), p.pid);
            }
        }
        self.metrics
            .retain(|name, _| self.processes.contains_key(name));
        for (key, url) in &endpoints.addresses {
            if let Some(name) = key.strip_suffix(".admin")
                && self.processes.contains_key(name)
            {
                self.metrics.insert(name.to_owned(), url.clone());
            }
        }
        self.devcluster = Some(fresh);
    }
}

/// The devcluster whose admin kubeconfig `kubeconfig` is: `endpoints.json` in the same
/// directory naming it, with its control plane running.
pub fn devcluster_of(kubeconfig: &Path) -> Option<(Layout, Endpoints)> {
    let dir = kubeconfig.parent()?;
    let layout = Layout::new(dir);
    let endpoints = Endpoints::load(&layout).ok()??;
    let same = std::fs::canonicalize(&endpoints.kubeconfig).ok()?
        == std::fs::canonicalize(kubeconfig).ok()?;
    (same && endpoints.processes_alive()).then_some((layout, endpoints))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_pids() {
        assert_eq!(
            parse_pair("worker-0=http://127.0.0.1:1").unwrap(),
            ("worker-0".to_owned(), "http://127.0.0.1:1".to_owned())
        );
        assert!(parse_pair("worker-0").is_err());
        assert!(parse_pair("=x").is_err());
        assert_eq!(parse_pid("etcd=42").unwrap(), ("etcd".to_owned(), 42));
        assert!(
            parse_pid("etcd=x")
                .unwrap_err()
                .contains("not a process id")
        );
    }

    #[test]
    fn a_plain_kubeconfig_is_not_a_devcluster() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, "apiVersion: v1\n").unwrap();
        assert!(devcluster_of(&path).is_none());
    }
}
