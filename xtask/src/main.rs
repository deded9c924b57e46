//! `cargo xtask <command>`: the project's chores in one place.
//!
//! - `up`    build what is missing, start devcluster + Jaeger, install the CRDs, start two webhook
//!   replicas, two coordinators and `--workers N` workers, apply the samples
//! - `scale` start or gracefully stop workers until `--workers M` run
//! - `down`  stop everything `up` started
//! - `test`  run every test, starting devcluster when needed (stopping it again afterwards)
//! - `gen`   regenerate `deploy/crds/` (`--check` fails when the checked-in YAML is stale)
//! - `build` only build the devcluster binaries

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use devcluster::{ClusterConfig, Layout, stack, testing, toolchain};

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
        /// How many workers to run (devcluster has identities for 16).
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
    /// Regenerate the CRD YAML in deploy/crds/.
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

fn gen_crds(check: bool) -> Result<()> {
    let dir = repo().join("deploy/crds");
    if check {
        api::check_crds(&dir)
            .context("CRD YAML in deploy/crds is stale: run `cargo xtask gen` and commit it")?;
        println!("deploy/crds is up to date");
    } else {
        for path in api::write_crds(&dir)? {
            println!("wrote {}", path.display());
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

/// Applies the samples. A KubeTemplate can be refused for a second after its policy was created
/// (the webhooks' policy caches are watch-fed), so a refusal is retried for up to 15 s.
fn apply_samples(kubeconfig: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let output = kubectl(kubeconfig)
            .args([
                "apply",
                "--server-side",
                "--field-manager=kubetemplater-samples",
                "-f",
            ])
            .arg(repo().join("deploy/samples"))
            .output()
            .context("running kubectl apply on deploy/samples")?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if Instant::now() >= deadline || !stderr.contains("denied the request") {
            bail!("applying the samples failed:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(500));
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
    apply_samples(&e.kubeconfig)?;
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
        "  identities       {}/<component>.kubeconfig",
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
    apply_samples(&admin_kubeconfig)?;
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
    }
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
