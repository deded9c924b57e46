//! With 10,000 Tenants settled (one TenantTemplate of one ConfigMap over an SQLite table of
//! 10,000 active rows, three workers), a 60-second window shows zero API writes from the system
//! (the Lease renewals that prove the processes alive excepted), while the leader's registry
//! controller keeps reading the table every `syncInterval` (at least five syncs in the window, so
//! the zero is not because nothing ran).
//!
//! Prints the time from the registry's creation to every Tenant existing and to every Tenant
//! Ready, and the rate. On a failure (the settle timeout included) the private cluster's logs
//! are copied somewhere that outlives it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use api::constants::LABEL_TENANT_REGISTRY;
use api::constants::condition::READY;
use api::{Tenant, TenantRegistry, TenantTemplate};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use kubetemplater_e2e::eventually;
use kubetemplater_e2e::system::System;
use loadtest::promtext::Scrape;
use serde_json::json;
use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};

/// Active rows, so Tenants (one template).
const ROWS: usize = 10_000;
/// The registry's `syncInterval`.
const SYNC: Duration = Duration::from_secs(10);
/// How long all Tenants may take to exist and be Ready.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// How often the wait says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// The idle window.
const WINDOW: Duration = Duration::from_secs(60);
/// Registry syncs the leader must run in the window.
const MIN_SYNCS: f64 = 5.0;
const TABLE: &str = "tenants";
const REGISTRY: &str = "registry";
const TEMPLATE: &str = "web";
/// The leader's registry sync histogram (`_count` per `result`).
const SYNC_COUNT: &str = "kubetemplater_registry_sync_duration_seconds_count";

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_ready_tenants_cost_no_writes() -> Result<()> {
    if kubetemplater_e2e::system::on_external_cluster() {
        eprintln!(
            "SKIP ten_thousand_ready_tenants_cost_no_writes: the proof reads devcluster's audit log"
        );
        return Ok(());
    }
    // The coordinators are local processes: they open the file at this path.
    let dir = tempfile::Builder::new()
        .prefix("kt-tenants-idle-")
        .tempdir()
        .context("temporary directory for the database")?;
    let db = dir.path().join("tenants.db");
    fill_table(&db).await?;

    let started = Instant::now();
    let system = System::start(3, false).await?;
    eprintln!("system started in {:.1?}", started.elapsed());
    let result = scenario(&system, &db).await;
    if result.is_err() {
        system.keep_logs("tenants-idle");
    }
    result
}

async fn scenario(system: &System, db: &Path) -> Result<()> {
    let audit = system.audit().context("devcluster has an audit log")?;
    let client = system.client.clone();
    let namespace = namespace(&client).await?;
    eprintln!("namespace {namespace}, {ROWS} rows in {}", db.display());

    let watch = TenantWatch::start(&client, &namespace);
    Api::<TenantTemplate>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &template_object(&namespace)?)
        .await
        .context("creating the TenantTemplate")?;
    Api::<TenantRegistry>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &registry_object(&namespace, db)?)
        .await
        .context("creating the TenantRegistry")?;
    let t0 = Instant::now();

    let settled = watch.wait_all_ready(t0).await?;
    let rate = ROWS as f64 / settled.ready.as_secs_f64();
    eprintln!(
        "settled: all {ROWS} Tenants existed after {:.1?}, all Ready after {:.1?} \
         ({rate:.1} Tenants/s)",
        settled.existed, settled.ready
    );
    drop(watch);

    // The registry's and the template's statuses catch up (at most one write per object every
    // 2 s), then the last writes land.
    wait_statuses(&client, &namespace).await?;
    tokio::time::sleep(SYNC + Duration::from_secs(5)).await;

    let leader = system.map().await?.leader_id;
    let metrics = admin_url(system, &leader)?;
    let before = sync_counts(&metrics).await?;
    let cursor = audit.cursor()?;
    tokio::time::sleep(WINDOW).await;
    let after = sync_counts(&metrics).await?;
    // Our identities' writes, Lease renewals excepted: the same count `loadtest idle` reports.
    let window = loadtest::apicount::Writes {
        events: audit.read_since(cursor)?,
    };
    let leader_after = system.map().await?.leader_id;

    let syncs: BTreeMap<String, f64> = after
        .iter()
        .map(|(result, n)| {
            (
                result.clone(),
                n - before.get(result).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let total_syncs: f64 = syncs.values().sum();
    eprintln!("registry syncs on {leader} in the {WINDOW:?} window, by result: {syncs:?}");
    eprintln!(
        "writes in the window by identity (Lease renewals included): {:?}",
        window.by_user()
    );
    let writes: Vec<String> = window
        .ours_without_leases()
        .into_iter()
        .map(|e| {
            let code = e.response_status.as_ref().map_or(0, |s| s.code);
            format!("{} (HTTP {code})", e.describe())
        })
        .collect();

    let mut failures = Vec::new();
    if !writes.is_empty() {
        failures.push(format!(
            "{} writes in the idle window: {:#?}",
            writes.len(),
            &writes[..writes.len().min(50)]
        ));
    }
    if leader_after != leader {
        failures.push(format!(
            "the leader changed during the window ({leader} → {leader_after}): the sync count is \
             not comparable"
        ));
    } else if total_syncs < MIN_SYNCS {
        failures.push(format!(
            "only {total_syncs} registry syncs in the {WINDOW:?} window (syncInterval {SYNC:?}), \
             at least {MIN_SYNCS} expected: {syncs:?}"
        ));
    }
    eprintln!(
        "time to settle {:.1?} ({rate:.1} Tenants/s); idle window: {} writes, {total_syncs} syncs",
        settled.ready,
        writes.len()
    );
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

// === the table, the namespace, the objects ===

/// Creates the table with `ROWS` active rows `t00000` … in one transaction.
async fn fill_table(path: &Path) -> Result<()> {
    // A rollback journal, not sqlx's default WAL: this writer and the coordinator's reader then
    // share nothing but the one file.
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Delete),
    )
    .await
    .with_context(|| format!("opening {}", path.display()))?;
    let mut sql = format!(
        "CREATE TABLE {TABLE} (id TEXT PRIMARY KEY, url TEXT NOT NULL, active TEXT NOT NULL, \
         plan TEXT NOT NULL);\nBEGIN;\n"
    );
    let uids: Vec<String> = (0..ROWS).map(|i| format!("t{i:05}")).collect();
    for chunk in uids.chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|uid| format!("('{uid}', 'https://{uid}.example.com', '1', 'gold')"))
            .collect();
        sql.push_str(&format!(
            "INSERT INTO {TABLE} VALUES {};\n",
            values.join(", ")
        ));
    }
    sql.push_str("COMMIT;");
    sqlx::raw_sql(&sql)
        .execute(&mut conn)
        .await
        .context("filling the table")?;
    conn.close().await?;
    Ok(())
}

async fn namespace(client: &Client) -> Result<String> {
    let name = format!("kt-tenants-idle-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let ns: Namespace = serde_json::from_value(json!({"metadata": {
        "name": name,
        "labels": {devcluster::testing::TEST_NAMESPACE_LABEL: "true"},
    }}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}

fn template_object(namespace: &str) -> Result<TenantTemplate> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1",
        "kind": "TenantTemplate",
        "metadata": { "name": TEMPLATE, "namespace": namespace },
        "spec": {
            "registryId": REGISTRY,
            "configMaps": [{
                "id": "config",
                "nameTemplate": "{{ .uid }}-cfg",
                "spec": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "data": { "uid": "{{ .uid }}", "plan": "{{ .planId }}" },
                },
            }],
        },
    }))?)
}

fn registry_object(namespace: &str, db: &Path) -> Result<TenantRegistry> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1",
        "kind": "TenantRegistry",
        "metadata": { "name": REGISTRY, "namespace": namespace },
        "spec": {
            "source": {
                "type": "sqlite",
                "syncInterval": format!("{}s", SYNC.as_secs()),
                "sqlite": { "path": db.display().to_string(), "table": TABLE },
            },
            "valueMappings": { "uid": "id", "hostOrUrl": "url", "activate": "active" },
            "extraValueMappings": { "planId": "plan" },
        },
    }))?)
}

// === waiting for the Tenants ===

#[derive(Debug, Default)]
struct Seen {
    /// Ready condition by Tenant name: `None` when True, else what it says.
    tenants: HashMap<String, Option<String>>,
    /// When the count of Tenants first reached `ROWS`.
    all_existed: Option<Instant>,
    watch_error: Option<String>,
}

impl Seen {
    fn ready(&self) -> usize {
        self.tenants.values().filter(|r| r.is_none()).count()
    }
}

/// A watch of the registry's Tenants (by the registry label), stopped on drop.
struct TenantWatch {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TenantWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Tenant's Ready condition: `None` when True, else `status reason: message`.
fn not_ready(tenant: &Tenant) -> Option<String> {
    let ready = tenant
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!("{} {}: {}", c.status, c.reason, c.message)),
        None => Some("no Ready condition yet".to_owned()),
    }
}

/// How long the Tenants took from the registry's creation.
struct Settled {
    existed: Duration,
    ready: Duration,
}

impl TenantWatch {
    fn start(client: &Client, namespace: &str) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let api: Api<Tenant> = Api::namespaced(client.clone(), namespace);
        let config =
            watcher::Config::default().labels(&format!("{LABEL_TENANT_REGISTRY}={REGISTRY}"));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(watcher::watcher(api, config));
                while let Some(event) = stream.next().await {
                    let now = Instant::now();
                    let mut guard = lock(&seen);
                    match event {
                        Ok(Event::Apply(t) | Event::InitApply(t)) => {
                            guard
                                .tenants
                                .insert(kube::ResourceExt::name_any(&t), not_ready(&t));
                        }
                        Ok(Event::Delete(t)) => {
                            guard.tenants.remove(&kube::ResourceExt::name_any(&t));
                        }
                        Ok(Event::Init | Event::InitDone) => {}
                        Err(e) => guard.watch_error = Some(e.to_string()),
                    }
                    if guard.all_existed.is_none() && guard.tenants.len() >= ROWS {
                        guard.all_existed = Some(now);
                    }
                }
            })
        };
        Self { seen, task }
    }

    /// Waits until all `ROWS` Tenants exist and are Ready, saying how far it got every
    /// `PROGRESS_EVERY`.
    async fn wait_all_ready(&self, t0: Instant) -> Result<Settled> {
        let mut next_report = t0 + PROGRESS_EVERY;
        loop {
            let now = Instant::now();
            let (existing, ready, all_existed, watch_error, examples) = {
                let guard = lock(&self.seen);
                let examples: Vec<String> = if now >= t0 + SETTLE_TIMEOUT {
                    let mut not: Vec<(&String, &String)> = guard
                        .tenants
                        .iter()
                        .filter_map(|(n, r)| r.as_ref().map(|r| (n, r)))
                        .collect();
                    not.sort();
                    not.iter()
                        .take(5)
                        .map(|(n, r)| format!("{n}: {r}"))
                        .collect()
                } else {
                    Vec::new()
                };
                (
                    guard.tenants.len(),
                    guard.ready(),
                    guard.all_existed,
                    guard.watch_error.clone(),
                    examples,
                )
            };
            if existing >= ROWS && ready >= ROWS {
                return Ok(Settled {
                    existed: all_existed.unwrap_or(now).duration_since(t0),
                    ready: now.duration_since(t0),
                });
            }
            let elapsed = now.duration_since(t0);
            if now >= next_report {
                eprintln!(
                    "[{:>5.0}s] Tenants existing {existing}/{ROWS}, Ready {ready} \
                     ({:.1} Ready/s){}",
                    elapsed.as_secs_f64(),
                    ready as f64 / elapsed.as_secs_f64(),
                    watch_error
                        .as_deref()
                        .map_or_else(String::new, |e| format!(", last watch error: {e}"))
                );
                next_report += PROGRESS_EVERY;
            }
            if elapsed >= SETTLE_TIMEOUT {
                bail!(
                    "after {SETTLE_TIMEOUT:?}: {existing} of {ROWS} Tenants exist, {ready} Ready \
                     ({:.1} Ready/s); not Ready e.g. {examples:?}{}",
                    ready as f64 / elapsed.as_secs_f64(),
                    watch_error.map_or_else(String::new, |e| format!(" (last watch error: {e})"))
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Waits until the registry's and the template's statuses count every Tenant Ready.
async fn wait_statuses(client: &Client, namespace: &str) -> Result<()> {
    let registries: Api<TenantRegistry> = Api::namespaced(client.clone(), namespace);
    let templates: Api<TenantTemplate> = Api::namespaced(client.clone(), namespace);
    let rows = i32::try_from(ROWS)?;
    let (registries, templates) = (&registries, &templates);
    eventually(
        Duration::from_secs(120),
        "the registry's and the template's statuses to count every Tenant Ready",
        || async move {
            let r = registries.get(REGISTRY).await?.status.unwrap_or_default();
            ensure!(
                r.desired == Some(rows) && r.ready == Some(rows) && r.failed.unwrap_or(0) == 0,
                "registry desired {:?}, ready {:?}, failed {:?}",
                r.desired,
                r.ready,
                r.failed
            );
            let t = templates.get(TEMPLATE).await?.status.unwrap_or_default();
            ensure!(
                t.total_tenants == Some(rows) && t.ready_tenants == Some(rows),
                "template totalTenants {:?}, readyTenants {:?}",
                t.total_tenants,
                t.ready_tenants
            );
            Ok(true)
        },
    )
    .await
}

// === the leader's metrics ===

/// The admin endpoint (`/metrics`) of coordinator `id`, as the private cluster recorded it.
fn admin_url(system: &System, id: &str) -> Result<String> {
    let endpoints = devcluster::Endpoints::load(system.layout())?
        .context("the private cluster has no endpoints.json")?;
    endpoints
        .addresses
        .get(&format!("{id}.admin"))
        .cloned()
        .with_context(|| format!("no admin address recorded for {id}"))
}

/// The leader's registry syncs so far, by `result`.
async fn sync_counts(admin: &str) -> Result<BTreeMap<String, f64>> {
    let url = format!("{}/metrics", admin.trim_end_matches('/'));
    let text = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("scraping {url}"))?
        .text()
        .await?;
    Ok(Scrape::parse(&text).sum_by(SYNC_COUNT, &[], "result"))
}
