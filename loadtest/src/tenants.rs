//! `tenants`: database-driven tenants end to end. An SQLite table of N active rows, one
//! TenantRegistry reading it every `--sync-interval` and one TenantTemplate of k objects (a
//! ConfigMap, a Secret, a Deployment, then more ConfigMaps): the coordinator leader's registry
//! controller turns every row into a Tenant, the workers turn every Tenant into its objects.
//!
//! ```text
//! rows ─► table (SQLite file the coordinator reads) ─► TenantTemplate, TenantRegistry (t0)
//!      ─► watch: every Tenant Ready ─► M rows' plan changed ─► watch: their ConfigMaps updated
//!      ─► settle ─► idle window (writes by our identities, Lease renewals excepted: 0)
//! ```
//!
//! What it reports: registry creation → all N Tenants Ready (and → all created), throughput
//! (tenants and objects per second), the registry's query and sync cost per sync (the
//! coordinators' `kubetemplater_registry_query_duration_seconds` and
//! `kubetemplater_registry_sync_duration_seconds`, while Tenants are made and while idle, and the
//! rows gauge), row change → Tenant updated and → every ConfigMap of the tenant updated
//! (p50/p95/p99/max), the writes by phase (the coordinators' `kubetemplater_api_requests_total`
//! by verb; on devcluster exact, by identity and resource, from the audit log), writes in the
//! idle window (must be 0), CPU and memory of every process and memory per tenant.
//!
//! The coordinator opens the SQLite file itself, so it must be a path the coordinator can read:
//! on devcluster (local processes) the default `<devcluster dir>/loadtest/tenants-<run>.db`;
//! against another cluster `--sqlite-path` must name one (a volume mounted into the
//! coordinator's pod that this machine writes too), or the run is refused.
//!
//! Each tenant's Deployment needs pods: on devcluster, when the fake Nodes lack room (three
//! Nodes of 1,100 pods), the run adds fake Nodes of its own (kwok plays them), tainted so only
//! its pods land there, and removes them at the end.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::constants::condition::READY;
use api::constants::{ANNOTATION_EXTRA, LABEL_TENANT_REGISTRY};
use api::{Tenant, TenantRegistry, TenantTemplate};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde::Serialize;
use serde_json::json;
use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::apicount::{OUR_IDENTITIES, Window, Writes};
use crate::monitor::{Monitor, Observed};
use crate::plot::Panel;
use crate::progress::Progress;
use crate::promtext::{self, Scrape};
use crate::report::{Figure, Report, unit};
use crate::stats::Summary;
use crate::target::Target;
use crate::workload::{RUN_LABEL, Workload};
use crate::{Error, Result, burst, idle, workload};

/// Scenario name.
pub const SCENARIO: &str = "tenants";

/// Name of the run's TenantRegistry.
pub const REGISTRY: &str = "lt";
/// Name of the run's TenantTemplate (Tenants are `<uid>-lt`).
pub const TEMPLATE: &str = "lt";
/// The table in the SQLite file.
pub const TABLE: &str = "tenants";
/// Label on every object a Tenant makes (besides the run label): the tenant's uid.
pub const TENANT_LABEL: &str = "loadtest.kubetemplater.io/tenant";
/// The rows' `plan` before the change phase.
const INITIAL_PLAN: &str = "p0";
/// The changed rows' `plan`.
const CHANGED_PLAN: &str = "p1";
/// Room for pods of each fake Node devcluster's kwok plays.
const PODS_PER_FAKE_NODE: i64 = 1100;
/// Fake Node indexes with a pod CIDR of their own (`10.244.<8 i>.0/21`).
const FAKE_NODE_INDEXES: std::ops::Range<usize> = 0..32;
/// Unit of the per-row query cost.
const MICROSECONDS: &str = "µs";
/// Quantiles reported for latencies.
const QUANTILES: [(f64, &str); 4] = [(50.0, "p50"), (95.0, "p95"), (99.0, "p99"), (100.0, "max")];

/// Arguments of `loadtest tenants`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct TenantsArgs {
    /// Rows in the registry's table, every one active: one Tenant each.
    #[arg(long, default_value_t = 1000)]
    pub rows: usize,
    /// Objects per tenant: a ConfigMap, a Secret, a Deployment, then more ConfigMaps.
    #[arg(long, default_value_t = 3)]
    pub resources: usize,
    /// Replicas of each tenant's Deployment (pods kwok makes Ready on devcluster).
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// The registry's `spec.source.syncInterval` (a number and s, m or h).
    #[arg(long, default_value = "5s")]
    pub sync_interval: String,
    /// Rows whose `plan` is changed after every Tenant is Ready, to time row change →
    /// objects updated (spread evenly over the table; 0 skips the phase).
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// Seconds over which the changed rows are updated, one UPDATE each (so changes land at
    /// every point of the sync cycle); 0 changes them all in one UPDATE.
    #[arg(long, default_value_t = 10)]
    pub change_seconds: u64,
    /// Seconds to let the last syncs and status writes settle before the idle window.
    #[arg(long, default_value_t = 15)]
    pub settle: u64,
    /// Length of the idle window, in seconds (0 skips it).
    #[arg(long, default_value_t = 30)]
    pub idle_seconds: u64,
    /// The SQLite file to create (it must not exist), at a path the coordinator can read
    /// [default on devcluster: <devcluster dir>/loadtest/tenants-<run>.db; required elsewhere].
    #[arg(long, value_name = "FILE")]
    pub sqlite_path: Option<PathBuf>,
    /// Give up waiting for every Tenant Ready after this many seconds.
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 1800)]
    pub timeout_s: u64,
    /// Leave the namespace, its registry, template and Tenants, the SQLite file and any fake
    /// Node in place (`loadtest cleanup` removes them later).
    #[arg(long)]
    pub keep: bool,
}

impl TenantsArgs {
    /// Checks the numbers make sense.
    pub fn validate(&self) -> Result<()> {
        if self.rows == 0 || self.resources == 0 {
            return Err(Error::InvalidArgument(
                "--rows and --resources must be at least 1".into(),
            ));
        }
        if self.changes > self.rows {
            return Err(Error::InvalidArgument(format!(
                "--changes {} is more than --rows {}",
                self.changes, self.rows
            )));
        }
        if self.resources >= 3 && self.replicas == 0 {
            return Err(Error::InvalidArgument(
                "--replicas 0: a Deployment of 0 replicas is never ready (the original's rule); \
                 use --resources 2 for tenants without a Deployment"
                    .into(),
            ));
        }
        parse_interval(&self.sync_interval).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--sync-interval {:?} is not a number followed by s, m or h (e.g. 5s)",
                self.sync_interval
            ))
        })?;
        Ok(())
    }

    /// The sync interval.
    pub fn interval(&self) -> Duration {
        parse_interval(&self.sync_interval).unwrap_or(Duration::from_secs(30))
    }

    /// Pods the tenants' Deployments need.
    pub fn pods(&self) -> i64 {
        if self.resources >= 3 {
            self.rows as i64 * i64::from(self.replicas)
        } else {
            0
        }
    }
}

/// `syncInterval` as the registry reads it: `^[0-9]+(s|m|h)$`, more than 0.
fn parse_interval(text: &str) -> Option<Duration> {
    tenant::registry::parse_sync_interval(text)
}

/// The rows' uids: `r0` … `r<rows-1>`.
pub fn uids(rows: usize) -> Vec<String> {
    (0..rows).map(|i| format!("r{i}")).collect()
}

/// `changes` of the `rows` uids, spread evenly over the table.
pub fn changed_uids(rows: usize, changes: usize) -> Vec<String> {
    if changes == 0 {
        return Vec::new();
    }
    (0..changes)
        .map(|i| format!("r{}", i * rows / changes))
        .collect()
}

/// The names of the ConfigMaps of tenant `uid` with `resources` objects.
fn config_map_names(uid: &str, resources: usize) -> Vec<String> {
    let extra = resources.saturating_sub(3);
    std::iter::once(format!("{uid}-config"))
        .chain((1..=extra).map(|j| format!("{uid}-config-{j}")))
        .collect()
}

/// The run's TenantTemplate: `resources` objects per tenant, in this order: a ConfigMap (the
/// row's host and plan), a Secret, a Deployment of `replicas` pods that depends on the
/// ConfigMap (its pods tolerate the run's fake Nodes), then ConfigMaps `<uid>-config-<j>`. Every
/// object carries the run label and [`TENANT_LABEL`].
pub fn template_object(
    namespace: &str,
    run: &str,
    resources: usize,
    replicas: u32,
) -> Result<TenantTemplate> {
    let labels = json!({RUN_LABEL: run, TENANT_LABEL: "{{ .uid }}"});
    let config_map = |id: String, name: String| {
        json!({
            "id": id,
            "nameTemplate": name,
            "labelsTemplate": labels,
            "spec": {
                "apiVersion": "v1", "kind": "ConfigMap",
                "data": {"uid": "{{ .uid }}", "host": "{{ .host }}", "plan": "{{ .planId }}"},
            },
        })
    };
    let mut config_maps = vec![config_map("config".into(), "{{ .uid }}-config".into())];
    for j in 1..=resources.saturating_sub(3) {
        config_maps.push(config_map(
            format!("config-{j}"),
            format!("{{{{ .uid }}}}-config-{j}"),
        ));
    }
    let mut spec = json!({"registryId": REGISTRY, "configMaps": config_maps});
    if resources >= 2 {
        spec["secrets"] = json!([{
            "id": "secret",
            "nameTemplate": "{{ .uid }}-secret",
            "labelsTemplate": labels,
            "spec": {
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "data": {"token": "{{ .uid | b64enc }}"},
            },
        }]);
    }
    if resources >= 3 {
        spec["deployments"] = json!([{
            "id": "app",
            "dependIds": ["config"],
            "nameTemplate": "{{ .uid }}-app",
            "labelsTemplate": labels,
            "spec": {
                "apiVersion": "apps/v1", "kind": "Deployment",
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": "{{ .uid }}-app"}},
                    "template": {
                        "metadata": {"labels": {"app": "{{ .uid }}-app"}},
                        "spec": {
                            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                            "tolerations": [{
                                "key": RUN_LABEL, "operator": "Equal", "value": run,
                                "effect": "NoSchedule",
                            }],
                        },
                    },
                },
            },
        }]);
    }
    serde_json::from_value(json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1",
        "kind": "TenantTemplate",
        "metadata": {"name": TEMPLATE, "namespace": namespace, "labels": {RUN_LABEL: run}},
        "spec": spec,
    }))
    .map_err(|e| Error::Cluster(format!("building the TenantTemplate: {e}")))
}

/// The run's TenantRegistry reading table [`TABLE`] of the SQLite file at `path`.
pub fn registry_object(
    namespace: &str,
    run: &str,
    path: &Path,
    sync_interval: &str,
) -> Result<TenantRegistry> {
    serde_json::from_value(json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1",
        "kind": "TenantRegistry",
        "metadata": {"name": REGISTRY, "namespace": namespace, "labels": {RUN_LABEL: run}},
        "spec": {
            "source": {
                "type": "sqlite",
                "syncInterval": sync_interval,
                "sqlite": {"path": path.display().to_string(), "table": TABLE},
            },
            "valueMappings": {"uid": "id", "hostOrUrl": "url", "activate": "active"},
            "extraValueMappings": {"planId": "plan"},
        },
    }))
    .map_err(|e| Error::Cluster(format!("building the TenantRegistry: {e}")))
}

// === the SQLite table ===

async fn open_sqlite(path: &Path, create: bool) -> Result<SqliteConnection> {
    // A rollback journal, not sqlx's default WAL: this writer and the coordinator's read-only
    // reader then share nothing but the one file.
    SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Delete),
    )
    .await
    .map_err(|e| Error::Cluster(format!("opening SQLite file {}: {e}", path.display())))
}

async fn exec(conn: &mut SqliteConnection, path: &Path, sql: &str) -> Result<()> {
    sqlx::raw_sql(sql).execute(&mut *conn).await.map_err(|e| {
        let head: String = sql.chars().take(80).collect();
        Error::Cluster(format!("SQLite {}: {head}…: {e}", path.display()))
    })?;
    Ok(())
}

/// Creates the table at `path` with one active row per uid (plan [`INITIAL_PLAN`]).
async fn fill_table(path: &Path, uids: &[String], quiet: bool) -> Result<()> {
    let mut conn = open_sqlite(path, true).await?;
    exec(
        &mut conn,
        path,
        &format!(
            "CREATE TABLE {TABLE} (id TEXT PRIMARY KEY, url TEXT NOT NULL, active TEXT NOT NULL, \
             plan TEXT NOT NULL)"
        ),
    )
    .await?;
    let progress = Progress::new("rows", uids.len() as u64, "rows", quiet);
    exec(&mut conn, path, "BEGIN").await?;
    let mut done = 0;
    for chunk in uids.chunks(500) {
        // The values are ours (`r<i>`), nothing to escape.
        let values: Vec<String> = chunk
            .iter()
            .map(|uid| format!("('{uid}', 'https://{uid}.example.com', '1', '{INITIAL_PLAN}')"))
            .collect();
        exec(
            &mut conn,
            path,
            &format!("INSERT INTO {TABLE} VALUES {}", values.join(", ")),
        )
        .await?;
        done += chunk.len();
        progress.set_position(done as u64);
    }
    exec(&mut conn, path, "COMMIT").await?;
    progress.finish();
    conn.close()
        .await
        .map_err(|e| Error::Cluster(format!("closing {}: {e}", path.display())))
}

/// Sets `plan` of the rows `uids`: one UPDATE per row, evenly spread over `spread` (so rows
/// change at every point of the registry's sync cycle), or all in one UPDATE when `spread` is
/// zero. Returns when each row's change was committed.
async fn set_plan(
    path: &Path,
    uids: &[String],
    plan: &str,
    spread: Duration,
    quiet: bool,
) -> Result<HashMap<String, Instant>> {
    let mut conn = open_sqlite(path, false).await?;
    let mut committed = HashMap::new();
    if spread.is_zero() {
        let list: Vec<String> = uids.iter().map(|u| format!("'{u}'")).collect();
        exec(
            &mut conn,
            path,
            &format!(
                "UPDATE {TABLE} SET plan = '{plan}' WHERE id IN ({})",
                list.join(", ")
            ),
        )
        .await?;
        let at = Instant::now();
        committed.extend(uids.iter().map(|u| (u.clone(), at)));
    } else {
        let progress = Progress::new("update", uids.len() as u64, "rows", quiet);
        let start = tokio::time::Instant::now();
        let n = uids.len().max(1) as u32;
        for (i, uid) in (0u32..).zip(uids) {
            tokio::time::sleep_until(start + spread * i / n).await;
            exec(
                &mut conn,
                path,
                &format!("UPDATE {TABLE} SET plan = '{plan}' WHERE id = '{uid}'"),
            )
            .await?;
            committed.insert(uid.clone(), Instant::now());
            progress.step();
        }
        progress.finish();
    }
    conn.close()
        .await
        .map_err(|e| Error::Cluster(format!("closing {}: {e}", path.display())))?;
    Ok(committed)
}

/// Where the SQLite file of run `run` goes by default on devcluster.
pub fn default_sqlite_path(root: &Path, run: &str) -> PathBuf {
    root.join("loadtest").join(format!("tenants-{run}.db"))
}

/// Removes the SQLite files runs left in devcluster's directory (of `run`, or of every run);
/// returns how many.
pub fn remove_databases(target: &Target, run: Option<&str>) -> usize {
    let Some((layout, _)) = &target.devcluster else {
        return 0;
    };
    let dir = layout.root().join("loadtest");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = match run {
            Some(run) => name.starts_with(&format!("tenants-{run}.db")),
            None => name.starts_with("tenants-") && name.contains(".db"),
        };
        if ours && std::fs::remove_file(entry.path()).is_ok() && name.ends_with(".db") {
            removed += 1;
        }
    }
    removed
}

fn remove_database(path: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

// === watching Tenants and their ConfigMaps ===

/// What is known of one Tenant.
#[derive(Debug, Clone, Default)]
pub struct TenantSeen {
    /// When it was first seen.
    pub created: Option<Instant>,
    /// When its Ready condition was first seen True.
    pub ready: Option<Instant>,
    /// Its Ready condition while not True (`status reason: message`).
    pub not_ready: Option<String>,
    /// When each `planId` of its extra-values annotation was first seen.
    pub plans: HashMap<String, Instant>,
}

#[derive(Debug, Default)]
struct Seen {
    /// By uid.
    tenants: HashMap<String, TenantSeen>,
    /// By ConfigMap name: when each `plan` value was first seen.
    config_maps: HashMap<String, HashMap<String, Instant>>,
    watch_error: Option<String>,
}

/// Watches of the run's Tenants (by the registry label) and of their ConfigMaps (by the run
/// label), stopped on drop. Times are this process's clock at the watch event.
#[derive(Debug)]
struct Watches {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watches {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `planId` of a Tenant's extra-values annotation (`{"planId":"p0"}`).
fn tenant_plan(tenant: &Tenant) -> Option<String> {
    let extra = tenant
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_EXTRA)?;
    let values: BTreeMap<String, serde_json::Value> = serde_json::from_str(extra).ok()?;
    values.get("planId")?.as_str().map(str::to_owned)
}

fn observe_tenant(seen: &mut Seen, tenant: &Tenant, now: Instant) {
    let uid = tenant.spec.uid.clone();
    let state = seen.tenants.entry(uid).or_default();
    state.created.get_or_insert(now);
    if let Some(plan) = tenant_plan(tenant) {
        state.plans.entry(plan).or_insert(now);
    }
    let ready = tenant
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    match ready {
        Some(c) if c.status == "True" => {
            state.ready.get_or_insert(now);
            state.not_ready = None;
        }
        Some(c) => state.not_ready = Some(format!("{} {}: {}", c.status, c.reason, c.message)),
        None => state.not_ready = Some("no Ready condition yet".into()),
    }
}

fn observe_config_map(seen: &mut Seen, cm: &ConfigMap, now: Instant) {
    let (Some(name), Some(plan)) = (
        cm.metadata.name.clone(),
        cm.data.as_ref().and_then(|d| d.get("plan")).cloned(),
    ) else {
        return;
    };
    seen.config_maps
        .entry(name)
        .or_default()
        .entry(plan)
        .or_insert(now);
}

impl Watches {
    fn start(client: &Client, namespace: &str, run: &str) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let changed = Arc::new(Notify::new());
        let tenants: Api<Tenant> = Api::namespaced(client.clone(), namespace);
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let tenant_task = {
            let (seen, changed) = (seen.clone(), changed.clone());
            let config =
                watcher::Config::default().labels(&format!("{LABEL_TENANT_REGISTRY}={REGISTRY}"));
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(watcher::watcher(tenants, config));
                while let Some(event) = stream.next().await {
                    let now = Instant::now();
                    let mut guard = lock(&seen);
                    match event {
                        Ok(Event::Apply(t) | Event::InitApply(t)) => {
                            observe_tenant(&mut guard, &t, now);
                        }
                        Ok(Event::Delete(_) | Event::Init | Event::InitDone) => {}
                        Err(e) => guard.watch_error = Some(format!("Tenants: {e}")),
                    }
                    drop(guard);
                    changed.notify_waiters();
                }
            })
        };
        let config_map_task = {
            let (seen, changed) = (seen.clone(), changed.clone());
            let config = watcher::Config::default().labels(&format!("{RUN_LABEL}={run}"));
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(watcher::watcher(config_maps, config));
                while let Some(event) = stream.next().await {
                    let now = Instant::now();
                    let mut guard = lock(&seen);
                    match event {
                        Ok(Event::Apply(cm) | Event::InitApply(cm)) => {
                            observe_config_map(&mut guard, &cm, now);
                        }
                        Ok(Event::Delete(_) | Event::Init | Event::InitDone) => {}
                        Err(e) => guard.watch_error = Some(format!("ConfigMaps: {e}")),
                    }
                    drop(guard);
                    changed.notify_waiters();
                }
            })
        };
        Self {
            seen,
            changed,
            tasks: vec![tenant_task, config_map_task],
        }
    }

    /// Waits until `check` (done, total, a few missing) says all are done, showing progress;
    /// `Err` names what is missing after `timeout`.
    async fn wait<C>(
        &self,
        timeout: Duration,
        progress: &Progress,
        check: C,
    ) -> std::result::Result<(), String>
    where
        C: Fn(&Seen) -> (usize, usize, Vec<String>),
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let checked = tokio::time::Instant::now();
            let ((done, total, missing), watch_error) = {
                let guard = lock(&self.seen);
                (check(&guard), guard.watch_error.clone())
            };
            progress.set_position(done as u64);
            if done >= total {
                return Ok(());
            }
            tokio::select! {
                () = notified => {
                    // A check scans everything: a few per second at most.
                    tokio::time::sleep_until(checked + Duration::from_millis(200)).await;
                }
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(format!(
                        "{done} of {total} after {timeout:?}; e.g. {}{}",
                        missing.join("; "),
                        watch_error
                            .map_or_else(String::new, |e| format!(" (last watch error: {e})"))
                    ));
                }
            }
        }
    }

    fn snapshot_tenants(&self) -> HashMap<String, TenantSeen> {
        lock(&self.seen).tenants.clone()
    }

    fn snapshot_config_maps(&self) -> HashMap<String, HashMap<String, Instant>> {
        lock(&self.seen).config_maps.clone()
    }
}

// === the coordinators' metrics ===

/// A histogram's sum, count and buckets (summed over the coordinators).
#[derive(Debug, Clone, Default)]
struct Histogram {
    sum: f64,
    count: f64,
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    fn add(&mut self, scrape: &Scrape, name: &str, filter: &[(&str, &str)]) {
        self.sum += scrape.sum(&format!("{name}_sum"), filter);
        self.count += scrape.sum(&format!("{name}_count"), filter);
        for (bound, count) in scrape.histogram(name, filter) {
            match self
                .buckets
                .iter_mut()
                .find(|(b, _)| b.total_cmp(&bound).is_eq())
            {
                Some(entry) => entry.1 += count,
                None => self.buckets.push((bound, count)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// `self − before`.
    fn since(&self, before: &Self) -> Self {
        Self {
            sum: self.sum - before.sum,
            count: self.count - before.count,
            buckets: promtext::histogram_delta(&before.buckets, &self.buckets),
        }
    }
}

const QUERY_HISTOGRAM: &str = "kubetemplater_registry_query_duration_seconds";
const SYNC_HISTOGRAM: &str = "kubetemplater_registry_sync_duration_seconds";

/// One scrape of every coordinator.
#[derive(Debug, Clone, Default)]
struct Coordinators {
    /// Successful queries.
    query: Histogram,
    /// Successful syncs.
    sync: Histogram,
    /// `kubetemplater_api_requests_total` by verb.
    writes: BTreeMap<String, f64>,
    /// The coordinator exporting the run's registry gauges (the leader).
    leader: Option<String>,
    /// `kubetemplater_registry_rows` (total, active) of the run's registry.
    rows: Option<(f64, f64)>,
    /// `registry_desired`, `registry_ready`, `registry_failed` of the run's registry.
    gauges: Option<(f64, f64, f64)>,
    scraped: usize,
}

async fn scrape_coordinators(target: &Target, namespace: &str) -> Coordinators {
    let mut out = Coordinators::default();
    for name in target.components("coordinator") {
        let Ok(scrape) = target.component_metrics(&name).await else {
            continue;
        };
        out.scraped += 1;
        out.query.add(&scrape, QUERY_HISTOGRAM, &[("result", "ok")]);
        out.sync
            .add(&scrape, SYNC_HISTOGRAM, &[("result", "success")]);
        for (verb, n) in scrape.sum_by("kubetemplater_api_requests_total", &[], "verb") {
            *out.writes.entry(verb).or_insert(0.0) += n;
        }
        let ours = [("registry", REGISTRY), ("namespace", namespace)];
        let rows = |state| {
            let filter = [ours[0], ours[1], ("state", state)];
            scrape
                .matching("kubetemplater_registry_rows", &filter)
                .next()
                .map(|s| s.value)
        };
        if let (Some(total), Some(active)) = (rows("total"), rows("active")) {
            out.rows = Some((total, active));
            out.leader = Some(name.clone());
            let gauge = |metric| scrape.sum(metric, &ours);
            out.gauges = Some((
                gauge("registry_desired"),
                gauge("registry_ready"),
                gauge("registry_failed"),
            ));
        }
    }
    out
}

/// Adds the query and sync cost and the coordinators' writes by verb between two scrapes,
/// named `<phase>.…`.
fn cost_figures(report: &mut Report, phase: &str, before: &Coordinators, after: &Coordinators) {
    if after.scraped == 0 {
        report.notes.push(format!(
            "{phase}: no coordinator metrics endpoint could be read (not a devcluster; name them \
             with --metrics coordinator-0=URL): no query cost"
        ));
        return;
    }
    for (what, before, after, description) in [
        (
            "query",
            &before.query,
            &after.query,
            "one registry query (run and stream every row), successful ones",
        ),
        (
            "sync",
            &before.sync,
            &after.sync,
            "one registry sync (read, plan, Tenant writes), successful ones",
        ),
    ] {
        let delta = after.since(before);
        report.figures.push(
            Figure::new(format!("{phase}.{what}.count"), delta.count, unit::COUNT)
                .describe(format!("{what} runs in the phase (all registries)")),
        );
        if let Some(mean) = promtext::mean(delta.sum, delta.count) {
            report.figures.push(
                Figure::new(format!("{phase}.{what}_ms.mean"), mean * 1000.0, unit::MS)
                    .describe(description),
            );
        }
        // Runs longer than the top bucket are only counted: a quantile among them is unknown.
        let (top, beyond) = beyond_top_bucket(&delta.buckets);
        if beyond > 0.0 {
            report.figures.push(
                Figure::new(
                    format!("{phase}.{what}.beyond_histogram"),
                    beyond,
                    unit::COUNT,
                )
                .describe(format!(
                    "{what} runs longer than the histogram's top bucket ({top} s)"
                )),
            );
        }
        let p99 = promtext::histogram_quantile(0.99, &delta.buckets);
        if let Some(p99) = p99.filter(|_| beyond <= delta.count * 0.01) {
            report.figures.push(
                Figure::new(format!("{phase}.{what}_ms.p99"), p99 * 1000.0, unit::MS).describe(
                    "interpolated within the histogram's buckets (powers of 2 from 1 ms)",
                ),
            );
        }
    }
    for (verb, n) in &after.writes {
        let delta = n - before.writes.get(verb).copied().unwrap_or(0.0);
        if delta > 0.0 {
            report.figures.push(
                Figure::new(
                    format!("{phase}.coordinator_writes.{verb}"),
                    delta,
                    unit::COUNT,
                )
                .describe("the coordinators' own write counter (kubetemplater_api_requests_total)"),
            );
        }
    }
}

/// The top finite bound of a cumulative histogram and the observations above it.
fn beyond_top_bucket(buckets: &[(f64, f64)]) -> (f64, f64) {
    let finite = buckets.iter().rev().find(|(b, _)| b.is_finite());
    let total = buckets.last().map_or(0.0, |(_, c)| *c);
    match finite {
        Some(&(bound, below)) => (bound, (total - below).max(0.0)),
        None => (f64::INFINITY, 0.0),
    }
}

fn coordinator_writes(before: &Coordinators, after: &Coordinators, verb: &str) -> f64 {
    after.writes.get(verb).copied().unwrap_or(0.0) - before.writes.get(verb).copied().unwrap_or(0.0)
}

// === pods room (fake Nodes on devcluster) ===

/// Pods the schedulable, untainted Nodes can still take.
async fn pod_room(client: &Client) -> Result<i64> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::Cluster(format!("listing Nodes: {e}")))?;
    let mut room = 0;
    for node in &list.items {
        let spec = node.spec.clone().unwrap_or_default();
        let tainted = spec
            .taints
            .iter()
            .flatten()
            .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute");
        if spec.unschedulable == Some(true) || tainted {
            continue;
        }
        room += node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("pods"))
            .and_then(|q| q.0.parse::<i64>().ok())
            .unwrap_or(0);
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let running = pods
        .list_metadata(
            &ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
        )
        .await
        .map_err(|e| Error::Cluster(format!("listing pods: {e}")))?;
    Ok(room - running.items.len() as i64)
}

/// Makes room for `pods` more pods: on devcluster by adding fake Nodes (tainted for this run,
/// labelled with it); elsewhere refuses when there is too little. Returns the Nodes added.
async fn make_pod_room(
    target: &Target,
    run: &str,
    pods: i64,
    report: &mut Report,
) -> Result<Vec<String>> {
    if pods == 0 {
        return Ok(Vec::new());
    }
    let room = pod_room(&target.client).await?;
    if room >= pods {
        return Ok(Vec::new());
    }
    let missing = pods - room;
    if target.devcluster.is_none() {
        return Err(Error::InvalidArgument(format!(
            "the tenants' Deployments need {pods} pods and the cluster's Nodes have room for \
             {room}: add Nodes, lower --replicas, or run without Deployments (--resources 2)"
        )));
    }
    let nodes: Api<Node> = Api::all(target.client.clone());
    let existing: Vec<String> = nodes
        .list_metadata(&ListParams::default())
        .await
        .map_err(|e| Error::Cluster(format!("listing Nodes: {e}")))?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let wanted = usize::try_from((missing + PODS_PER_FAKE_NODE - 1) / PODS_PER_FAKE_NODE)
        .unwrap_or(usize::MAX);
    let free: Vec<usize> = FAKE_NODE_INDEXES
        .filter(|i| !existing.contains(&devcluster::cluster::kwok::node_name(*i)))
        .take(wanted)
        .collect();
    if free.len() < wanted {
        return Err(Error::InvalidArgument(format!(
            "the tenants' Deployments need {pods} pods, the Nodes have room for {room}, and \
             devcluster can take only {} more fake Nodes of {PODS_PER_FAKE_NODE} pods: lower \
             --rows or --replicas",
            free.len()
        )));
    }
    let mut added = Vec::new();
    for index in free {
        let mut node = devcluster::cluster::kwok::fake_node(index)
            .map_err(|e| Error::Cluster(format!("building a fake Node: {e}")))?;
        node.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(RUN_LABEL.to_owned(), run.to_owned());
        node.spec.get_or_insert_with(Default::default).taints = Some(vec![
            serde_json::from_value(json!({"key": RUN_LABEL, "value": run, "effect": "NoSchedule"}))
                .map_err(|e| Error::Cluster(format!("building a taint: {e}")))?,
        ]);
        let name = node.metadata.name.clone().unwrap_or_default();
        nodes
            .create(&PostParams::default(), &node)
            .await
            .map_err(|e| Error::Cluster(format!("creating fake Node {name}: {e}")))?;
        added.push(name);
    }
    // kwok takes them over within a second or so.
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in &added {
        loop {
            let node = nodes
                .get(name)
                .await
                .map_err(|e| Error::Cluster(format!("reading fake Node {name}: {e}")))?;
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Cluster(format!(
                    "fake Node {name} is not Ready after 60 s: does kwok run?"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    report.notes.push(format!(
        "the Deployments need {pods} pods and the Nodes had room for {room}: added {} fake \
         Nodes ({}), tainted for this run's pods only, removed at the end unless --keep",
        added.len(),
        added.join(", ")
    ));
    Ok(added)
}

/// Deletes the Nodes labelled with `run`'s label (of every run when `None`); returns how many.
pub async fn remove_nodes(client: &Client, run: Option<&str>) -> Result<usize> {
    let selector = match run {
        Some(run) => format!("{RUN_LABEL}={run}"),
        None => RUN_LABEL.to_owned(),
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let names: Vec<String> = nodes
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::Cluster(format!("listing the Nodes labelled {selector}: {e}")))?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for name in &names {
        match nodes.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::Cluster(format!("deleting Node {name}: {e}"))),
        }
    }
    Ok(names.len())
}

// === the run ===

/// The writes of a phase by our identities (Lease renewals excepted), per role (`coordinator`,
/// `worker`, `webhook`), resource and verb, as records; returns their number.
fn write_records(report: &mut Report, phase: &str, writes: &Writes) -> usize {
    let ours = writes.ours_without_leases();
    let mut by: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for e in &ours {
        let role = e
            .user
            .component()
            .trim_start_matches(OUR_IDENTITIES)
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            .to_owned();
        let resource = e.object_ref.as_ref().map_or_else(
            || e.request_uri.clone(),
            |o| {
                if o.subresource.is_empty() {
                    o.resource.clone()
                } else {
                    format!("{}/{}", o.resource, o.subresource)
                }
            },
        );
        *by.entry((role, resource, e.verb.clone())).or_insert(0) += 1;
    }
    for ((role, resource, verb), n) in by {
        report.records.push(json!({
            "phase": phase, "writer": role, "resource": resource, "verb": verb, "writes": n,
        }));
    }
    ours.len()
}

fn latency_figures(report: &mut Report, name: &str, values: &[f64], what: &str) {
    let s = Summary::new(values.iter().copied());
    for (p, q) in QUANTILES {
        if let Some(v) = s.percentile(p) {
            report
                .figures
                .push(Figure::new(format!("{name}.{q}"), v, unit::MS).describe(what));
        }
    }
}

/// What the phases found, for the figures at the end.
#[derive(Debug, Default)]
struct Phases {
    /// Registry created (t0).
    created_at: Option<Instant>,
    leader: Option<String>,
}

/// Runs `tenants`.
pub async fn run(
    target: &Target,
    args: &TenantsArgs,
    quiet: bool,
    report: &mut Report,
) -> Result<Vec<Panel>> {
    args.validate()?;
    report.parameters = serde_json::to_value(args).unwrap_or_default();
    let workload = Workload::new(&target.system_namespace, 1, args.resources);
    let sqlite_path = match (&args.sqlite_path, &target.devcluster) {
        (Some(path), _) => std::path::absolute(path).map_err(|e| {
            Error::InvalidArgument(format!("--sqlite-path {}: {e}", path.display()))
        })?,
        (None, Some((layout, _))) => {
            let root = std::path::absolute(layout.root()).map_err(|e| {
                Error::Cluster(format!(
                    "devcluster's directory {}: {e}",
                    layout.root().display()
                ))
            })?;
            default_sqlite_path(&root, &workload.run)
        }
        (None, None) => {
            return Err(Error::InvalidArgument(
                "the coordinator opens the registry's SQLite file itself, so on a cluster other \
                 than devcluster --sqlite-path must name a file the coordinator can read (e.g. on \
                 a volume mounted into its pod that this machine writes as well)"
                    .into(),
            ));
        }
    };
    if sqlite_path.exists() {
        return Err(Error::InvalidArgument(format!(
            "{} exists already: the run creates its own table; remove it or name another file",
            sqlite_path.display()
        )));
    }
    if let Some(dir) = sqlite_path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    report.records.push(json!({
        "run": workload.run, "namespace": workload.namespaces[0],
        "sqlite": sqlite_path.display().to_string(),
    }));
    let monitor = Monitor::start(target, Duration::from_secs(1));
    let origin = monitor.started();
    let mut nodes = Vec::new();
    let mut phases = Phases::default();
    let outcome = phases_of_run(
        target,
        args,
        &workload,
        &sqlite_path,
        &mut nodes,
        &mut phases,
        quiet,
        report,
    )
    .await;
    let observed = monitor.stop().await;
    observed.add_figures(
        report,
        (args.rows, "tenants"),
        args.rows * (1 + args.resources),
    );
    memory_per_tenant(&observed, args.rows, phases.leader.as_deref(), report);
    if let (Ok(watches), Some(t0)) = (&outcome, phases.created_at) {
        series(watches, origin, t0, report);
    }
    if args.keep {
        report.notes.push(format!(
            "kept: namespace {} (remove with `loadtest cleanup --run {}`), SQLite file {}{}",
            workload.namespaces[0],
            workload.run,
            sqlite_path.display(),
            if nodes.is_empty() {
                String::new()
            } else {
                format!(", fake Nodes {}", nodes.join(", "))
            }
        ));
    } else {
        let began = Instant::now();
        let cleaned = workload::cleanup(
            &target.client,
            &target.system_namespace,
            Some(&workload.run),
            Duration::from_secs(1800),
            quiet,
        )
        .await;
        match cleaned {
            Ok(_) => {
                report.figures.push(
                    Figure::new("cleanup_s", began.elapsed().as_secs_f64(), unit::S).describe(
                        "namespace deleted → gone (every Tenant finalized by the workers, its \
                         objects deleted)",
                    ),
                );
                // The fake Nodes once their pods are gone.
                remove_nodes(&target.client, Some(&workload.run)).await?;
                remove_database(&sqlite_path);
            }
            // The figures stand; what is left is named, for `loadtest cleanup`.
            Err(e) => report.problems.push(format!(
                "cleanup: {e}; `loadtest cleanup --run {}` removes what is left",
                workload.run
            )),
        }
    }
    outcome?;
    Ok(panels())
}

fn panels() -> Vec<Panel> {
    vec![
        Panel::new(
            "Tenants created and made Ready per second",
            "tenants/s",
            &["tenants_created_per_s", "tenants_ready_per_s"],
        ),
        Panel::new("Work queue depth (all workers)", "keys", &["queue_depth"]),
        Panel::new(
            "CPU (cores): tenants made, rows changed, idle window",
            "cores",
            &["cpu_ours", "cpu_control_plane"],
        ),
        Panel::new(
            "Registry created -> Tenant Ready (CDF)",
            "fraction",
            &["ready_cdf"],
        ),
        Panel::new(
            "Row changed -> Tenant / every ConfigMap updated (CDF)",
            "fraction",
            &["change_tenant_cdf", "change_objects_cdf"],
        ),
    ]
}

/// Memory per tenant: the growth of the workers' (and of the leading coordinator's) resident
/// memory over the run, per tenant.
fn memory_per_tenant(observed: &Observed, rows: usize, leader: Option<&str>, report: &mut Report) {
    let growth = |pick: &dyn Fn(&str) -> bool| -> Option<f64> {
        let chosen: Vec<_> = observed
            .processes
            .values()
            .filter(|u| pick(&u.name))
            .collect();
        (!chosen.is_empty()).then(|| {
            chosen
                .iter()
                .map(|u| u.rss_last as f64 - u.rss_first as f64)
                .sum::<f64>()
        })
    };
    if let Some(g) = growth(&|n| n.starts_with("worker")) {
        report.figures.push(
            Figure::new(
                "memory_per_tenant.workers",
                (g / rows as f64).max(0.0),
                unit::BYTES,
            )
            .describe(
                "growth of the workers' resident memory over the run per tenant (its Tenant and \
                 objects)",
            ),
        );
    }
    if let Some(leader) = leader
        && let Some(g) = growth(&|n| n == leader)
    {
        report.figures.push(
            Figure::new(
                "memory_per_tenant.coordinator",
                (g / rows as f64).max(0.0),
                unit::BYTES,
            )
            .describe(format!(
                "growth of the leading coordinator's ({leader}) resident memory over the run per \
                 tenant (rows, projected Tenants)"
            )),
        );
    }
}

/// The series of the plot: per second on the monitor's time axis (x: seconds after `origin`),
/// the distribution of registry created (`t0`) → Ready.
fn series(watches: &Watches, origin: Instant, t0: Instant, report: &mut Report) {
    let tenants = watches.snapshot_tenants();
    let since = |t: &Instant| t.saturating_duration_since(origin).as_secs_f64();
    let created: Vec<f64> = tenants
        .values()
        .filter_map(|s| s.created.as_ref())
        .map(since)
        .collect();
    let ready: Vec<f64> = tenants
        .values()
        .filter_map(|s| s.ready.as_ref())
        .map(since)
        .collect();
    report
        .series
        .push(burst::per_second("tenants_created_per_s", &created));
    report
        .series
        .push(burst::per_second("tenants_ready_per_s", &ready));
    let ready_ms: Vec<f64> = tenants
        .values()
        .filter_map(|s| s.ready)
        .map(|t| t.saturating_duration_since(t0).as_secs_f64() * 1000.0)
        .collect();
    report.series.push(burst::cdf("ready_cdf", &ready_ms));
}

#[allow(clippy::too_many_arguments, reason = "the run's pieces, each used")]
async fn phases_of_run(
    target: &Target,
    args: &TenantsArgs,
    workload: &Workload,
    sqlite_path: &Path,
    nodes: &mut Vec<String>,
    phases: &mut Phases,
    quiet: bool,
    report: &mut Report,
) -> Result<Watches> {
    let client = &target.client;
    let namespace = workload.namespaces[0].clone();
    let uids = uids(args.rows);

    // The table, the namespace, pods room and the template; the registry last (t0).
    fill_table(sqlite_path, &uids, quiet).await?;
    workload.create_namespaces(client, false, 1, true).await?;
    nodes.extend(make_pod_room(target, &workload.run, args.pods(), report).await?);
    let watches = Watches::start(client, &namespace, &workload.run);
    let templates: Api<TenantTemplate> = Api::namespaced(client.clone(), &namespace);
    templates
        .create(
            &PostParams::default(),
            &template_object(&namespace, &workload.run, args.resources, args.replicas)?,
        )
        .await
        .map_err(|e| {
            Error::Cluster(format!(
                "creating TenantTemplate {namespace}/{TEMPLATE}: {e}"
            ))
        })?;
    let before = scrape_coordinators(target, &namespace).await;
    let window = Window::start(target).await;
    let registries: Api<TenantRegistry> = Api::namespaced(client.clone(), &namespace);
    let t0 = Instant::now();
    registries
        .create(
            &PostParams::default(),
            &registry_object(&namespace, &workload.run, sqlite_path, &args.sync_interval)?,
        )
        .await
        .map_err(|e| {
            Error::Cluster(format!(
                "creating TenantRegistry {namespace}/{REGISTRY}: {e}"
            ))
        })?;
    phases.created_at = Some(t0);

    // Every Tenant Ready.
    let progress = Progress::new("ready", uids.len() as u64, "tenants", quiet);
    let waited = watches
        .wait(Duration::from_secs(args.timeout_s), &progress, |seen| {
            let mut done = 0;
            let mut missing = Vec::new();
            for uid in &uids {
                match seen.tenants.get(uid) {
                    Some(s) if s.ready.is_some() => done += 1,
                    other if missing.len() < 3 => missing.push(format!(
                        "{uid}-{TEMPLATE}: {}",
                        other.map_or("not created", |s| s
                            .not_ready
                            .as_deref()
                            .unwrap_or("not ready"))
                    )),
                    _ => {}
                }
            }
            (done, uids.len(), missing)
        })
        .await;
    progress.finish();
    let all_ready = waited.is_ok();
    if let Err(e) = waited {
        report
            .problems
            .push(format!("not every Tenant became Ready: {e}"));
    }
    let ramp = window.finish(target, "", report).await;
    let after_ramp = scrape_coordinators(target, &namespace).await;
    phases.leader = after_ramp.leader.clone();
    ready_figures(&watches, &uids, t0, args, report);
    cost_figures(report, "ramp", &before, &after_ramp);
    if let Some(ramp) = &ramp {
        let ours = write_records(report, "ramp", ramp);
        report.figures.push(
            Figure::new(
                "writes_per_tenant",
                ours as f64 / uids.len() as f64,
                unit::COUNT,
            )
            .describe(
                "writes by our components (audit log, Lease renewals excepted) per tenant, \
                 registry created → all Ready",
            ),
        );
    }
    if !all_ready {
        return Ok(watches);
    }

    // Rows changed → Tenants and ConfigMaps updated.
    let changed = changed_uids(args.rows, args.changes);
    let mut after_change = after_ramp.clone();
    if !changed.is_empty() {
        let window = Window::start(target).await;
        let spread = Duration::from_secs(args.change_seconds);
        let committed = set_plan(sqlite_path, &changed, CHANGED_PLAN, spread, quiet).await?;
        let names: Vec<(String, Vec<String>)> = changed
            .iter()
            .map(|uid| (uid.clone(), config_map_names(uid, args.resources)))
            .collect();
        let timeout = Duration::from_secs(60).max(args.interval() * 10);
        let progress = Progress::new("changes", changed.len() as u64, "tenants", quiet);
        let waited = watches
            .wait(timeout, &progress, |seen| {
                let mut done = 0;
                let mut missing = Vec::new();
                for (uid, cms) in &names {
                    let tenant = seen
                        .tenants
                        .get(uid)
                        .is_some_and(|s| s.plans.contains_key(CHANGED_PLAN));
                    let objects = cms.iter().all(|cm| {
                        seen.config_maps
                            .get(cm)
                            .is_some_and(|p| p.contains_key(CHANGED_PLAN))
                    });
                    if tenant && objects {
                        done += 1;
                    } else if missing.len() < 3 {
                        missing.push(format!(
                            "{uid}: Tenant {}, ConfigMaps {}",
                            if tenant { "updated" } else { "not updated" },
                            if objects {
                                "updated"
                            } else {
                                "not all updated"
                            }
                        ));
                    }
                }
                (done, names.len(), missing)
            })
            .await;
        progress.finish();
        if let Err(e) = waited {
            report.problems.push(format!(
                "not every changed row reached its Tenant and ConfigMaps: {e}"
            ));
        }
        let writes = window.finish(target, "change.", report).await;
        after_change = scrape_coordinators(target, &namespace).await;
        change_figures(&watches, &names, &committed, args.change_seconds, report);
        cost_figures(report, "change", &after_ramp, &after_change);
        if let Some(writes) = &writes {
            write_records(report, "change", writes);
        }
        let applied = coordinator_writes(&after_ramp, &after_change, "apply_tenant");
        if after_change.scraped > 0 && applied != changed.len() as f64 {
            report.notes.push(format!(
                "{} rows changed but the coordinators applied {applied} Tenants in the change \
                 phase",
                changed.len()
            ));
        }
    }

    // Idle.
    if args.idle_seconds > 0 {
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let before_idle = scrape_coordinators(target, &namespace).await;
        idle::measure(
            target,
            args.idle_seconds,
            &format!("{} Tenants Ready and settled", args.rows),
            Some(&namespace),
            quiet,
            report,
        )
        .await;
        let after_idle = scrape_coordinators(target, &namespace).await;
        cost_figures(report, "idle", &before_idle, &after_idle);
        registry_gauges(report, &after_idle, args.rows);
        if let Some(q) = promtext::mean(
            after_idle.query.since(&before_idle.query).sum,
            after_idle.query.since(&before_idle.query).count,
        ) {
            report.figures.push(
                Figure::new(
                    "idle.query_us_per_row",
                    q * 1e6 / args.rows as f64,
                    MICROSECONDS,
                )
                .describe("mean query time per row of the table while idle"),
            );
        }
    } else {
        registry_gauges(report, &after_change, args.rows);
    }
    Ok(watches)
}

/// The registry's gauges at the end, and the leader.
fn registry_gauges(report: &mut Report, scrape: &Coordinators, rows: usize) {
    if let Some((total, active)) = scrape.rows {
        report.figures.push(
            Figure::new("registry.rows.total", total, unit::COUNT)
                .describe("kubetemplater_registry_rows{state=total} of the run's registry"),
        );
        report
            .figures
            .push(Figure::new("registry.rows.active", active, unit::COUNT));
        if total != rows as f64 {
            report.notes.push(format!(
                "the leader's rows gauge says {total} rows; the table has {rows}"
            ));
        }
    }
    if let Some((desired, ready, failed)) = scrape.gauges {
        report.figures.extend([
            Figure::new("registry.desired", desired, unit::COUNT)
                .describe("registry_desired of the run's registry"),
            Figure::new("registry.ready", ready, unit::COUNT),
            Figure::new("registry.failed", failed, unit::COUNT),
        ]);
    }
    if let Some(leader) = &scrape.leader {
        report.notes.push(format!(
            "the registry was synced by {leader} (the coordinator leader)"
        ));
    }
}

fn ready_figures(
    watches: &Watches,
    uids: &[String],
    t0: Instant,
    args: &TenantsArgs,
    report: &mut Report,
) {
    let tenants = watches.snapshot_tenants();
    let since = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let created: Vec<f64> = uids
        .iter()
        .filter_map(|u| tenants.get(u)?.created)
        .map(since)
        .collect();
    let ready: Vec<f64> = uids
        .iter()
        .filter_map(|u| tenants.get(u)?.ready)
        .map(since)
        .collect();
    let last = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let first = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::min);
    let to_ready = last(&ready);
    let objects = args.resources as f64;
    report.figures.extend([
        Figure::new("tenants", uids.len() as f64, unit::COUNT).describe("rows, all active"),
        Figure::new("objects", uids.len() as f64 * objects, unit::OBJECTS)
            .describe("objects the Tenants hold"),
        Figure::new("ready", ready.len() as f64, unit::COUNT).describe("Tenants seen Ready"),
        Figure::new("first_tenant_s", first(&created), unit::S)
            .describe("registry created → first Tenant seen"),
        Figure::new("time_to_created_s", last(&created), unit::S)
            .describe("registry created → last Tenant seen (the registry controller's writes)"),
        Figure::new("time_to_ready_s", to_ready, unit::S)
            .describe("registry created → last Tenant Ready"),
        Figure::new(
            "throughput.tenants_created_per_s",
            created.len() as f64 / last(&created).max(1e-9),
            unit::PER_S,
        )
        .describe("Tenants written by the registry controller per second"),
        Figure::new(
            "throughput.tenants_per_s",
            ready.len() as f64 / to_ready.max(1e-9),
            unit::PER_S,
        )
        .describe("Tenants made Ready per second"),
        Figure::new(
            "throughput.objects_per_s",
            ready.len() as f64 * objects / to_ready.max(1e-9),
            unit::PER_S,
        )
        .describe("objects of Ready Tenants per second"),
    ]);
    let ready_ms: Vec<f64> = ready.iter().map(|s| s * 1000.0).collect();
    latency_figures(
        report,
        "ready_ms",
        &ready_ms,
        "registry created → Tenant Ready",
    );
    let created_ms: Vec<(f64, f64)> = uids
        .iter()
        .filter_map(|u| {
            let s = tenants.get(u)?;
            Some((s.created?, s.ready?))
        })
        .map(|(c, r)| {
            (
                since(c),
                r.saturating_duration_since(c).as_secs_f64() * 1000.0,
            )
        })
        .collect();
    let per_tenant: Vec<f64> = created_ms.iter().map(|(_, ms)| *ms).collect();
    latency_figures(
        report,
        "tenant_ms",
        &per_tenant,
        "Tenant seen → Ready (the workers' part)",
    );
}

fn change_figures(
    watches: &Watches,
    names: &[(String, Vec<String>)],
    committed: &HashMap<String, Instant>,
    spread_s: u64,
    report: &mut Report,
) {
    let tenants = watches.snapshot_tenants();
    let config_maps = watches.snapshot_config_maps();
    let mut tenant_ms = Vec::new();
    let mut objects_ms = Vec::new();
    for (uid, cms) in names {
        let Some(at) = committed.get(uid).copied() else {
            continue;
        };
        let ms = |t: Instant| t.saturating_duration_since(at).as_secs_f64() * 1000.0;
        if let Some(t) = tenants.get(uid).and_then(|s| s.plans.get(CHANGED_PLAN)) {
            tenant_ms.push(ms(*t));
        }
        let times: Option<Vec<Instant>> = cms
            .iter()
            .map(|cm| config_maps.get(cm)?.get(CHANGED_PLAN).copied())
            .collect();
        if let Some(last) = times.and_then(|t| t.into_iter().max()) {
            objects_ms.push(ms(last));
        }
    }
    report.figures.extend([
        Figure::new("changes", names.len() as f64, unit::COUNT).describe(if spread_s == 0 {
            "rows whose plan was changed, in one UPDATE".to_owned()
        } else {
            format!("rows whose plan was changed, one UPDATE each, spread over {spread_s} s")
        }),
        Figure::new("changes.updated", objects_ms.len() as f64, unit::COUNT)
            .describe("of them, tenants whose every ConfigMap showed the new plan"),
    ]);
    latency_figures(
        report,
        "change_tenant_ms",
        &tenant_ms,
        "row committed → its Tenant's annotation shows the new value (the registry's part: \
         waits for the next sync)",
    );
    latency_figures(
        report,
        "change_ms",
        &objects_ms,
        "row committed → every ConfigMap of its tenant shows the new value",
    );
    report
        .series
        .push(burst::cdf("change_tenant_cdf", &tenant_ms));
    report
        .series
        .push(burst::cdf("change_objects_cdf", &objects_ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_as_the_registry_reads_them() {
        assert_eq!(parse_interval("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_interval("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_interval("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_interval("0s"), None);
        assert_eq!(parse_interval("5"), None);
        assert_eq!(parse_interval("s"), None);
        assert_eq!(parse_interval(""), None);
    }

    fn args() -> TenantsArgs {
        TenantsArgs {
            rows: 10,
            resources: 3,
            replicas: 1,
            sync_interval: "5s".into(),
            changes: 4,
            change_seconds: 0,
            settle: 1,
            idle_seconds: 1,
            sqlite_path: None,
            timeout_s: 10,
            keep: false,
        }
    }

    #[test]
    fn arguments_are_checked() {
        assert!(args().validate().is_ok());
        assert_eq!(args().pods(), 10);
        let mut a = args();
        a.changes = 11;
        assert!(a.validate().is_err());
        let mut a = args();
        a.sync_interval = "5x".into();
        assert!(a.validate().is_err());
        let mut a = args();
        a.replicas = 0;
        assert!(a.validate().is_err());
        a.resources = 2;
        assert!(a.validate().is_ok());
        assert_eq!(a.pods(), 0);
    }

    #[test]
    fn observations_beyond_the_top_bucket() {
        let b = [(1.0, 2.0), (2.0, 5.0), (f64::INFINITY, 7.0)];
        assert_eq!(beyond_top_bucket(&b), (2.0, 2.0));
        assert_eq!(beyond_top_bucket(&b[..2]), (2.0, 0.0));
        assert_eq!(beyond_top_bucket(&[]), (f64::INFINITY, 0.0));
    }

    #[test]
    fn changed_rows_are_spread() {
        assert_eq!(changed_uids(10, 0), Vec::<String>::new());
        assert_eq!(changed_uids(10, 5), vec!["r0", "r2", "r4", "r6", "r8"]);
        assert_eq!(changed_uids(3, 3), vec!["r0", "r1", "r2"]);
        assert_eq!(uids(2), vec!["r0", "r1"]);
    }

    #[test]
    fn templates_hold_k_objects() {
        for (k, cms, secrets, deployments) in
            [(1, 1, 0, 0), (2, 1, 1, 0), (3, 1, 1, 1), (5, 3, 1, 1)]
        {
            let t = template_object("ns", "abc123", k, 1).unwrap();
            let r = &t.spec.resources;
            assert_eq!(r.len(), k);
            assert_eq!(r.config_maps.len(), cms);
            assert_eq!(r.secrets.len(), secrets);
            assert_eq!(r.deployments.len(), deployments);
            assert_eq!(config_map_names("u", k).len(), cms);
        }
        let t = template_object("ns", "abc123", 4, 2).unwrap();
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["spec"]["registryId"], REGISTRY);
        assert_eq!(
            json["spec"]["configMaps"][1]["nameTemplate"],
            "{{ .uid }}-config-1"
        );
        assert_eq!(
            json["spec"]["configMaps"][0]["labelsTemplate"][RUN_LABEL],
            "abc123"
        );
        assert_eq!(
            json["spec"]["deployments"][0]["spec"]["spec"]["replicas"],
            2
        );
        assert_eq!(json["metadata"]["labels"][RUN_LABEL], "abc123");
        assert_eq!(
            config_map_names("u", 4),
            vec!["u-config".to_owned(), "u-config-1".to_owned()]
        );
    }

    #[test]
    fn registries_read_the_file() {
        let r = registry_object("ns", "abc123", Path::new("/x/t.db"), "5s").unwrap();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["spec"]["source"]["sqlite"]["path"], "/x/t.db");
        assert_eq!(json["spec"]["source"]["syncInterval"], "5s");
        assert_eq!(json["spec"]["extraValueMappings"]["planId"], "plan");
    }

    #[tokio::test]
    async fn the_table_is_written_and_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let ids = uids(1200);
        fill_table(&path, &ids, true).await.unwrap();
        let one = set_plan(
            &path,
            &changed_uids(1200, 3),
            CHANGED_PLAN,
            Duration::ZERO,
            true,
        )
        .await
        .unwrap();
        assert_eq!(one.len(), 3);
        let spread = set_plan(
            &path,
            &["r7".to_owned(), "r8".to_owned()],
            "p2",
            Duration::from_millis(20),
            true,
        )
        .await
        .unwrap();
        assert!(spread["r8"] >= spread["r7"]);
        let mut conn = open_sqlite(&path, false).await.unwrap();
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {TABLE}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 1200);
        let (changed,): (i64,) = sqlx::query_as(&format!(
            "SELECT COUNT(*) FROM {TABLE} WHERE plan = '{CHANGED_PLAN}'"
        ))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(changed, 3);
    }

    #[test]
    fn tenants_are_observed() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        let tenant = |status: serde_json::Value, plan: &str| -> Tenant {
            serde_json::from_value(json!({
                "apiVersion": "operator.kubernetes-tenants.org/v1", "kind": "Tenant",
                "metadata": {"name": "r1-lt", "namespace": "ns", "annotations": {
                    ANNOTATION_EXTRA: format!("{{\"planId\":\"{plan}\"}}")
                }},
                "spec": {"uid": "r1", "templateRef": "lt"},
                "status": status,
            }))
            .unwrap()
        };
        observe_tenant(&mut seen, &tenant(json!({}), "p0"), t0);
        assert!(seen.tenants["r1"].ready.is_none());
        assert_eq!(
            seen.tenants["r1"].not_ready.as_deref(),
            Some("no Ready condition yet")
        );
        let ready = json!({"conditions": [{
            "type": "Ready", "status": "True", "reason": "Reconciled", "message": "",
            "lastTransitionTime": "2024-01-01T00:00:00Z",
        }]});
        let later = t0 + Duration::from_secs(1);
        observe_tenant(&mut seen, &tenant(ready.clone(), "p0"), later);
        observe_tenant(
            &mut seen,
            &tenant(ready, "p1"),
            later + Duration::from_secs(1),
        );
        let s = &seen.tenants["r1"];
        assert_eq!(s.created, Some(t0));
        assert_eq!(s.ready, Some(later));
        assert_eq!(s.plans["p0"], t0);
        assert!(s.plans.contains_key("p1"));
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "r1-config"}, "data": {"plan": "p1"}
        }))
        .unwrap();
        observe_config_map(&mut seen, &cm, later);
        assert_eq!(seen.config_maps["r1-config"]["p1"], later);
    }
}
