//! `cargo xtask <command>`: the project's chores in one place.
//!
//! - `up`    build what is missing, start devcluster + Jaeger, install the CRDs, start two webhook
//!   replicas, two coordinators and `--workers N` workers, apply the samples
//! - `scale` start or gracefully stop workers until `--workers M` run
//! - `down`  stop everything `up` started (and the tests' database servers)
//! - `test`  run every test, starting devcluster when needed (stopping it again afterwards)
//! - `gen`   regenerate `deploy/crds/` and the chart's `crds/` (`--check` fails when the checked-in YAML is stale)
//! - `build` only build the devcluster binaries

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use devcluster::{ClusterConfig, Layout, stack, testing, toolchain};
use serde::Deserialize as _;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "kubetemplater project chores")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build what is missing, start devcluster and Jaeger, install CRDs and apply the samples.
    Up {
        /// Run optimised builds of our components (for benchmarks; slower to build).
        #[arg(long)]
        release: bool,
        /// How many workers to run (at most 16).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=16))]
        workers: u32,
    },
    /// Start workers, or stop the highest-numbered ones gracefully (SIGTERM: they hand their
    /// buckets over first), until M run.
    Scale {
        /// The number of workers wanted.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=16))]
        workers: u32,
        /// Use the optimised builds (as `up --release`).
        #[arg(long)]
        release: bool,
    },
    /// Stop everything `up` started (no process is left behind).
    Down,
    /// Run every test (unit, compatibility and end-to-end), starting devcluster when needed.
    Test {
        /// Run the end-to-end tests against this cluster instead of devcluster. Tests that need
        /// kube-apiserver's audit log skip there and say so.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Regenerate the CRD YAML in deploy/crds/ and deploy/helm/kubetemplater/crds/.
    Gen {
        /// Do not write; fail when the checked-in YAML differs from the types.
        #[arg(long)]
        check: bool,
    },
    /// Build the devcluster binaries (etcd, Kubernetes, Jaeger) into .local/bin.
    Build,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Up { release, workers } => up(release, workers).await.map(|()| ExitCode::SUCCESS),
        Cmd::Scale { workers, release } => {
            scale(workers, release).await.map(|()| ExitCode::SUCCESS)
        }
        Cmd::Down => down().map(|()| ExitCode::SUCCESS),
        Cmd::Test {
            kubeconfig,
            cargo_args,
        } => test(kubeconfig, cargo_args).await,
        Cmd::Gen { check } => gen_crds(check).map(|()| ExitCode::SUCCESS),
        Cmd::Build => {
            toolchain::ensure_all_built(&Layout::shared())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn repo() -> PathBuf {
    devcluster::layout::repo_root()
}

/// Where the CRD YAML goes: the plain manifests, and the Helm chart's `crds/` (Helm reads only
/// files inside the chart).
const CRD_DIRS: [&str; 2] = ["deploy/crds", "deploy/helm/kubetemplater/crds"];

fn gen_crds(check: bool) -> Result<()> {
    for dir in CRD_DIRS {
        let path = repo().join(dir);
        if check {
            api::check_crds(&path).with_context(|| {
                format!("CRD YAML in {dir} is stale: run `cargo xtask gen` and commit it")
            })?;
            println!("{dir} is up to date");
        } else {
            for path in api::write_crds(&path)? {
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

fn kubectl(kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(toolchain::binary_or_path(&Layout::shared(), "kubectl"));
    cmd.env("KUBECONFIG", kubeconfig);
    cmd
}

fn run_checked(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Installs the CRDs (server-side apply) and waits until they are Established; on devcluster
/// also applies `deploy/devcluster/` (system namespace, our components' RBAC).
fn install_crds(kubeconfig: &Path, devcluster: bool) -> Result<()> {
    let root = repo();
    let mut apply = kubectl(kubeconfig);
    apply
        .args([
            "apply",
            "--server-side",
            "--field-manager=kubetemplater-install",
            "-f",
        ])
        .arg(root.join("deploy/crds"));
    run_checked(apply, "installing the CRDs")?;
    let mut wait = kubectl(kubeconfig);
    wait.args(["wait", "--for=condition=Established", "--timeout=60s", "-f"])
        .arg(root.join("deploy/crds"));
    run_checked(wait, "waiting for the CRDs to be Established")?;
    if devcluster {
        stack::install_prerequisites(&Layout::shared(), kubeconfig)?;
    }
    Ok(())
}

/// The sample TenantRegistry backed by the demo database: `deploy/samples/tenants.yaml`'s
/// `tenants/local`.
const DEMO_REGISTRY: (&str, &str) = ("tenants", "local");

/// The demo's tenant table: three rows, two active. Rows already there are left alone, so rows
/// edited for a try-out (`sqlite3 .local/demo/tenants.db "UPDATE tenants SET is_active='1'"`)
/// survive the next `up`.
const DEMO_ROWS: [(&str, &str, &str, &str); 3] = [
    ("acme", "https://acme.example.com", "1", "gold"),
    ("globex", "https://globex.example.com", "1", "silver"),
    ("initech", "https://initech.example.com", "0", "bronze"),
];

/// Creates (idempotently) the SQLite database the sample registry `tenants/local` reads:
/// `<state dir>/demo/tenants.db` with table `tenants (id, url, is_active, plan_id)`; returns its
/// absolute path. Rollback journal, not WAL: the coordinator opens it read-only, and a read-only
/// reader of a WAL database needs its `-shm` file.
async fn demo_database(state_dir: &Path) -> Result<PathBuf> {
    use sqlx::Connection as _;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};

    let dir = state_dir.join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir =
        std::fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    let path = dir.join("tenants.db");
    let what = || format!("creating the demo database {}", path.display());
    let mut db = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Delete),
    )
    .await
    .with_context(what)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS tenants \
         (id TEXT PRIMARY KEY, url TEXT NOT NULL, is_active TEXT NOT NULL, plan_id TEXT)",
    )
    .execute(&mut db)
    .await
    .with_context(what)?;
    for (id, url, active, plan) in DEMO_ROWS {
        sqlx::query(
            "INSERT OR IGNORE INTO tenants (id, url, is_active, plan_id) VALUES (?, ?, ?, ?)",
        )
        .bind(id)
        .bind(url)
        .bind(active)
        .bind(plan)
        .execute(&mut db)
        .await
        .with_context(what)?;
    }
    db.close().await.with_context(what)?;
    Ok(path)
}

/// The sample files' documents as one multi-document YAML stream, in `kubectl apply -f <dir>`
/// order (files by name), with the SQLite path of the registry [`DEMO_REGISTRY`] replaced by
/// `database`. The YAML is static and the path depends on the checkout, so it is substituted
/// here instead of being templated in the file: the file stays a plain manifest that applies
/// as it is (`kubectl apply -f deploy/samples/`; the registry then reports its database missing).
fn samples_with_demo_database(samples_dir: &Path, database: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(samples_dir)
        .with_context(|| format!("reading {}", samples_dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", samples_dir.display()))?;
    files.retain(|p| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
    });
    files.sort();
    let mut stream = String::new();
    let mut replaced = false;
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut value = serde_yaml::Value::deserialize(document)
                .with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue;
            }
            let is_demo = value["kind"].as_str() == Some("TenantRegistry")
                && value["metadata"]["namespace"].as_str() == Some(DEMO_REGISTRY.0)
                && value["metadata"]["name"].as_str() == Some(DEMO_REGISTRY.1);
            if is_demo {
                let sqlite = value
                    .get_mut("spec")
                    .and_then(|s| s.get_mut("source"))
                    .and_then(|s| s.get_mut("sqlite"))
                    .and_then(serde_yaml::Value::as_mapping_mut)
                    .with_context(|| {
                        format!(
                            "{}: TenantRegistry {}/{} has no spec.source.sqlite",
                            file.display(),
                            DEMO_REGISTRY.0,
                            DEMO_REGISTRY.1
                        )
                    })?;
                sqlite.insert(
                    "path".into(),
                    database.to_string_lossy().into_owned().into(),
                );
                replaced = true;
            }
            stream.push_str("---\n");
            stream.push_str(&serde_yaml::to_string(&value)?);
        }
    }
    if !replaced {
        bail!(
            "{} holds no TenantRegistry {}/{} (the demo registry) to point at {}",
            samples_dir.display(),
            DEMO_REGISTRY.0,
            DEMO_REGISTRY.1,
            database.display()
        );
    }
    Ok(stream)
}

/// Applies the samples, the sample TenantRegistry `tenants/local` pointing at the demo database
/// (created first, see [`demo_database`]); returns the database's path. A KubeTemplate can be
/// refused for a second after its policy was created (the webhooks' policy caches are
/// watch-fed), so a refusal is retried for up to 15 s.
async fn apply_samples(kubeconfig: &Path) -> Result<PathBuf> {
    let database = demo_database(Layout::shared().root()).await?;
    let stream = samples_with_demo_database(&repo().join("deploy/samples"), &database)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut apply = kubectl(kubeconfig);
        apply
            .args([
                "apply",
                "--server-side",
                "--field-manager=kubetemplater-samples",
                "-f",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = apply
            .spawn()
            .context("running kubectl apply on deploy/samples")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(stream.as_bytes())
                .context("writing the samples to kubectl")?;
        }
        let output = child
            .wait_with_output()
            .context("running kubectl apply on deploy/samples")?;
        if output.status.success() {
            return Ok(database);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if Instant::now() >= deadline || !stderr.contains("denied the request") {
            bail!("applying the samples failed:\n{stderr}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Our three binaries.
const COMPONENT_BINARIES: [(&str, &str); 3] = [
    ("kubetemplater-webhook", "kubetemplater-webhook"),
    ("kubetemplater-coordinator", "kubetemplater-coordinator"),
    ("kubetemplater-worker", "kubetemplater-worker"),
];

/// Builds our binaries (same profile as the tests, so nothing is compiled twice); returns the
/// directory holding them.
fn build_components(release: bool) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(repo()).arg("build");
    for (package, binary) in COMPONENT_BINARIES {
        build.args(["-p", package, "--bin", binary]);
    }
    if release {
        build.arg("--release");
    }
    run_checked(build, "building kubetemplater's binaries")?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    Ok(target_dir.join(if release { "release" } else { "debug" }))
}

/// The shared devcluster's coordinator and worker settings.
fn shard_config(bin: &Path) -> stack::ShardConfig {
    stack::ShardConfig::new(
        bin.join("kubetemplater-coordinator"),
        bin.join("kubetemplater-worker"),
        stack::COORDINATOR_PORTS.to_vec(),
    )
}

/// Stops workers (first, gracefully) and coordinators of the shared devcluster.
fn stop_shards(endpoints: &devcluster::Endpoints) {
    for old in stack::running(endpoints, "worker-") {
        old.stop(Duration::from_secs(40));
    }
    for old in stack::running(endpoints, "coordinator-") {
        old.stop(Duration::from_secs(15));
    }
}

/// (Re)starts the coordinators and `workers` workers of the shared devcluster from `bin`.
async fn restart_shards(
    bin: &Path,
    workers: u32,
) -> Result<(Vec<stack::Component>, Vec<stack::Component>)> {
    let layout = Layout::shared();
    let endpoints = devcluster::Endpoints::load(&layout)?.context("devcluster is not running")?;
    stop_shards(&endpoints);
    let config = shard_config(bin);
    let coordinators = stack::start_coordinators(&layout, &endpoints, &config).await?;
    let workers = stack::start_workers(&layout, &endpoints, &config, 0..workers as usize).await?;
    Ok((coordinators, workers))
}

/// Starts or stops workers until `wanted` run.
async fn scale(wanted: u32, release: bool) -> Result<()> {
    let layout = Layout::shared();
    let endpoints = devcluster::Endpoints::load(&layout)?
        .context("devcluster is not running: start it with `cargo xtask up`")?;
    if stack::running(&endpoints, "coordinator-").is_empty() {
        bail!("no coordinator runs: start the system with `cargo xtask up`");
    }
    let config = if stack::running(&endpoints, "worker-").len() < wanted as usize {
        shard_config(&build_components(release)?)
    } else {
        stack::ShardConfig::of_running(&endpoints)?
    };
    let scaled = stack::scale_workers(&layout, &endpoints, &config, wanted as usize).await?;
    for name in &scaled.stopped {
        println!("stopped {name} (SIGTERM: it handed its buckets over first)");
    }
    for worker in &scaled.started {
        println!(
            "started {} (admin {})",
            worker.record.component, worker.admin
        );
    }
    println!("{wanted} workers run; see them with `ktctl workers`");
    Ok(())
}

/// (Re)starts the devcluster's webhook replicas from `bin`.
async fn restart_webhooks(bin: &Path, replicas: u32) -> Result<Vec<stack::Component>> {
    let binary = bin.join("kubetemplater-webhook");
    let layout = Layout::shared();
    let endpoints = devcluster::Endpoints::load(&layout)?.context("devcluster is not running")?;
    for old in stack::running(&endpoints, "webhook-") {
        old.stop(Duration::from_secs(15));
    }
    let components = stack::start_webhooks(
        &layout,
        &endpoints,
        &stack::WebhookConfig::new(binary, replicas, stack::WEBHOOK_PORT),
    )
    .await?;
    Ok(components)
}

async fn up(release: bool, workers: u32) -> Result<()> {
    let started = Instant::now();
    let bin = build_components(release)?;
    let cluster = devcluster::start(&ClusterConfig::shared()).await?;
    let e = &cluster.endpoints;
    install_crds(&e.kubeconfig, true)?;
    let webhooks = restart_webhooks(&bin, 2).await?;
    let (coordinators, workers) = restart_shards(&bin, workers).await?;
    let demo_database = apply_samples(&e.kubeconfig).await?;
    let rel = |p: &Path| {
        p.strip_prefix(repo())
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    };
    println!();
    println!(
        "devcluster is {} ({:.0?}): Kubernetes {}",
        if cluster.started_here {
            "up"
        } else {
            "already running"
        },
        started.elapsed(),
        e.kubernetes_version
    );
    println!("  kube-apiserver   {}", e.apiserver);
    println!(
        "  kubectl          export KUBECONFIG=$PWD/{}; .local/bin/kubectl get kubetemplates -A",
        rel(&e.kubeconfig).display()
    );
    println!(
        "  identities       {}/<process>.serviceaccount.kubeconfig (chart ServiceAccounts, pod-bound tokens)",
        rel(&e.kubeconfigs).display()
    );
    if let Some(j) = &e.jaeger {
        println!(
            "  Jaeger UI/API    {}  (e.g. {}/api/services)",
            j.query, j.query
        );
        println!(
            "  OTLP             OTEL_EXPORTER_OTLP_ENDPOINT={} (gRPC), {} (HTTP)",
            j.otlp_grpc, j.otlp_http
        );
    }
    println!(
        "  webhook          {} ({} replicas on one port; admin {})",
        stack::webhook_url(stack::WEBHOOK_PORT),
        webhooks.len(),
        admin_list(&webhooks)
    );
    println!(
        "  coordinators     {} (gRPC; one leads; admin {})",
        shard_config(&bin).coordinator_urls(),
        admin_list(&coordinators)
    );
    println!(
        "  workers          {} (admin {}); scale with `cargo xtask scale --workers M`",
        workers.len(),
        admin_list(&workers)
    );
    println!(
        "  shard map        cargo run -q -p ktctl -- buckets  (also: workers, locate <ns>, handoffs)"
    );
    println!(
        "  tenant demo      TenantRegistry tenants/local reads {} (3 rows, 2 active);",
        rel(&demo_database).display()
    );
    println!("                   cargo run -q -p ktctl -- tenants local -n tenants");
    println!("  audit log        {}", rel(&e.audit_log).display());
    println!("  logs             {}/", rel(&e.logs).display());
    println!(
        "  endpoints        {}",
        rel(&cluster.layout.endpoints_file()).display()
    );
    println!("  stop with        cargo xtask down");
    Ok(())
}

fn admin_list(components: &[stack::Component]) -> String {
    components
        .iter()
        .map(|c| c.admin.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn down() -> Result<()> {
    let layout = Layout::shared();
    let running = devcluster::Endpoints::load(&layout)?;
    devcluster::stop(&layout)?;
    match running {
        Some(e) => println!(
            "stopped {} processes",
            e.processes.len() + e.components.len()
        ),
        None => println!("devcluster was not running"),
    }
    // The tests' throwaway MariaDB and PostgreSQL servers (devcluster::database) live in the
    // same layout.
    devcluster::database::stop_all(&layout)?;
    Ok(())
}

async fn test(kubeconfig: Option<PathBuf>, cargo_args: Vec<String>) -> Result<ExitCode> {
    let layout = Layout::shared();
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo())
        .args(["test", "--workspace", "--all-targets"]);
    // Build every tool before the tests start, so a slow first build (Jaeger takes minutes on a
    // fresh machine) happens once, visibly, and not inside a test's start-up. The kubectl-driven
    // tests use devcluster's kubectl even against an external cluster.
    toolchain::ensure_all_built(&layout)?;
    let mut started_here = None;
    let on_devcluster = kubeconfig.is_none();
    let admin_kubeconfig = match kubeconfig {
        Some(path) => {
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            cmd.env(testing::EXTERNAL_KUBECONFIG_ENV, &path);
            path
        }
        None => {
            cmd.env_remove(testing::EXTERNAL_KUBECONFIG_ENV);
            let cluster = devcluster::start(&ClusterConfig::shared()).await?;
            let path = cluster.endpoints.kubeconfig.clone();
            if cluster.started_here {
                started_here = Some(cluster);
            }
            path
        }
    };
    install_crds(&admin_kubeconfig, on_devcluster)?;
    let bin = build_components(false)?;
    if on_devcluster {
        restart_webhooks(&bin, 2).await?;
        // Tests run their own workers (in process, or in a private cluster): workers left by
        // `cargo xtask up` would reconcile the tests' templates too.
        if let Some(endpoints) = devcluster::Endpoints::load(&layout)? {
            stop_shards(&endpoints);
        }
    }
    apply_samples(&admin_kubeconfig).await?;
    cmd.args(&cargo_args);
    let status = cmd.status().context("running cargo test")?;
    // Test namespaces are deleted whether the tests passed or not.
    let mut sweep = kubectl(&admin_kubeconfig);
    sweep.args([
        "delete",
        "namespace",
        "-l",
        &format!("{}=true", testing::TEST_NAMESPACE_LABEL),
        "--wait=false",
    ]);
    let _ = sweep.stdout(std::process::Stdio::null()).status();
    if let Some(cluster) = started_here {
        cluster.stop()?;
        // And the throwaway database servers the tests started (a run against a cluster `up`
        // started leaves them for the next run, as it leaves the cluster).
        devcluster::database::stop_all(&layout)?;
    }
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test fixtures")]

    use super::*;

    #[tokio::test]
    async fn the_demo_database_is_created_once_and_keeps_edited_rows() {
        use sqlx::Connection as _;

        let dir = tempfile::tempdir().unwrap();
        let path = demo_database(dir.path()).await.unwrap();
        assert!(path.is_absolute() && path.ends_with("demo/tenants.db"));
        let mut db =
            sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
        sqlx::query("UPDATE tenants SET is_active = '1' WHERE id = 'initech'")
            .execute(&mut db)
            .await
            .unwrap();
        db.close().await.unwrap();
        assert_eq!(demo_database(dir.path()).await.unwrap(), path);
        let mut db =
            sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, is_active FROM tenants ORDER BY id")
                .fetch_all(&mut db)
                .await
                .unwrap();
        assert_eq!(
            rows,
            [("acme", "1"), ("globex", "1"), ("initech", "1")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn the_samples_point_the_local_registry_at_the_demo_database() {
        let database = Path::new("/somewhere/.local/demo/tenants.db");
        let stream = samples_with_demo_database(&repo().join("deploy/samples"), database).unwrap();
        let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&stream)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .collect();
        let registries: Vec<&serde_yaml::Value> = documents
            .iter()
            .filter(|d| d["kind"].as_str() == Some("TenantRegistry"))
            .collect();
        let local = registries
            .iter()
            .find(|r| r["metadata"]["name"].as_str() == Some("local"))
            .unwrap();
        assert_eq!(
            local["spec"]["source"]["sqlite"]["path"].as_str(),
            Some("/somewhere/.local/demo/tenants.db")
        );
        assert_eq!(
            local["spec"]["source"]["sqlite"]["table"].as_str(),
            Some("tenants")
        );
        // Everything else as in the files: both APIs, the MySQL registry untouched.
        for kind in [
            "KubeTemplatePolicy",
            "KubeTemplate",
            "TenantTemplate",
            "Namespace",
        ] {
            assert!(
                documents.iter().any(|d| d["kind"].as_str() == Some(kind)),
                "{kind}"
            );
        }
        let mysql = registries
            .iter()
            .find(|r| r["metadata"]["name"].as_str() == Some("mysql"))
            .unwrap();
        assert_eq!(
            mysql["spec"]["source"]["mysql"]["host"].as_str(),
            Some("mysql.tenants.svc.cluster.local")
        );
    }
}
