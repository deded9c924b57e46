//! `cargo xtask <command>`: the project's chores in one place.
//!
//! - `up`    build what is missing, start devcluster + Jaeger, install the CRDs, start two webhook
//!   replicas, apply the samples
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
        Cmd::Up { release } => up(release).await.map(|()| ExitCode::SUCCESS),
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

/// Builds `kubetemplater-webhook` (same profile as the tests, so nothing is compiled twice) and
/// (re)starts the devcluster's webhook replicas from it.
async fn restart_webhooks(replicas: u32, release: bool) -> Result<Vec<stack::Component>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(repo()).args([
        "build",
        "-p",
        "kubetemplater-webhook",
        "--bin",
        "kubetemplater-webhook",
    ]);
    if release {
        build.arg("--release");
    }
    run_checked(build, "building kubetemplater-webhook")?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let binary = target_dir
        .join(if release { "release" } else { "debug" })
        .join("kubetemplater-webhook");
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

async fn up(release: bool) -> Result<()> {
    let started = Instant::now();
    let cluster = devcluster::start(&ClusterConfig::shared()).await?;
    let e = &cluster.endpoints;
    install_crds(&e.kubeconfig, true)?;
    let webhooks = restart_webhooks(2, release).await?;
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
        webhooks
            .iter()
            .map(|w| w.admin.as_str())
            .collect::<Vec<_>>()
            .join(", ")
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
    if on_devcluster {
        restart_webhooks(2, false).await?;
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
