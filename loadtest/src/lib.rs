//! `loadtest`: reproducible benchmarks of kubetemplater, each run leaving a report people can
//! read: `report.json` (every figure with its unit, the machine, versions, parameters) and
//! `report.png` (the series behind the figures).
//!
//! # Usage
//!
//! ```text
//! cargo xtask up --release                                     # the system on devcluster
//! cargo run --release -p loadtest -- burst --templates 2000 --namespaces 200
//! cargo run --release -p loadtest -- burst --templates 10000 --namespaces 1000 --objects 5
//! cargo run --release -p loadtest -- ceiling --objects 10000
//! cargo run --release -p loadtest -- idle --templates 10000 --namespaces 1000 --window 60
//! cargo run --release -p loadtest -- churn --templates 2000 --namespaces 200 --rate 20 --duration 60
//! cargo run --release -p loadtest -- rebalance --templates 2000 --namespaces 200 --scale 4,2
//! cargo run --release -p loadtest -- admission --requests 1000
//! cargo run --release -p loadtest -- tenants --rows 10000              # SQLite → Tenants → objects
//! cargo run --release -p loadtest -- simulate                  # 1,000 workers, 1M objects, 50 events
//! cargo run --release -p loadtest -- report target/loadtest/burst-…/report.json
//! cargo run --release -p loadtest -- cleanup                   # what interrupted runs left
//! ```
//!
//! Cluster scenarios use `--kubeconfig`, else `$KUBECONFIG`, else devcluster's
//! `.local/kubeconfig` ([`target`]). Every scenario takes `--out <dir>` (default
//! `target/loadtest/<scenario>-<UTC timestamp>/` under the current directory) and `--quiet` (no
//! progress bar, one summary line). A scenario exits with 1 when its checks found problems (the
//! report says which), `report` exits with 1 for a report that is not ok, and both exit with 2
//! on an error.
//!
//! # Scenarios
//!
//! - [`burst`]: N templates × k objects over M namespaces as fast as the API takes them; time to
//!   all Completed, throughput (also as a fraction of [`ceiling`]), latency, requests by verb,
//!   CPU and memory per process.
//! - [`ceiling`]: the API server's own server-side-apply rate with the same objects.
//! - [`idle`]: writes by the system over a window once everything settled (goal 0).
//! - [`churn`]: steady updates, deletes and creates; latency, queue depth, no missed or
//!   duplicated apply.
//! - [`rebalance`]: churn while workers are scaled; handoff time, buckets moved, same checks.
//! - [`admission`]: webhook latency from the client, the webhook and kube-apiserver.
//! - [`tenants`]: rows of an SQLite table → Tenants → their objects: time to all Ready,
//!   throughput, the registry's query cost per sync, row change → objects updated, idle writes.
//! - [`simulate`]: the coordinator's planner alone, at a scale this machine cannot host as
//!   processes.
//!
//! # Layout
//!
//! [`report`] is the format, [`host`] what a run ran on, [`output`] where it goes, [`plot`] the
//! PNG, [`table`] the text of `loadtest report`, [`progress`] the bar, [`stats`], [`zipf`] and
//! [`promtext`] the arithmetic; [`target`] the cluster, [`workload`] its objects, [`tracker`]
//! the watch on them, [`populate`] filling it, [`monitor`] + [`procstat`] CPU, memory and queue
//! depth, [`apicount`] requests and writes; each scenario is one module.

pub mod admission;
pub mod apicount;
pub mod burst;
pub mod ceiling;
pub mod churn;
pub mod host;
pub mod idle;
pub mod monitor;
pub mod output;
pub mod plot;
pub mod populate;
pub mod procstat;
pub mod progress;
pub mod promtext;
pub mod rebalance;
pub mod report;
pub mod simulate;
pub mod stats;
pub mod table;
pub mod target;
pub mod tenants;
pub mod tracker;
pub mod workload;
pub mod zipf;

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::host::{Machine, Versions};
use crate::output::OutputArgs;
use crate::report::{FORMAT, Report};

/// Result of this crate's fallible functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A report file is not a report.
    #[error("{path} is not a loadtest report: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A report could not be serialised.
    #[error("cannot serialise the report: {0}")]
    Serialize(serde_json::Error),
    /// The plot could not be drawn.
    #[error("cannot draw the plot: {0}")]
    Plot(String),
    /// A call to the cluster or a component failed (the message names the object and call).
    #[error("{0}")]
    Cluster(String),
}

/// Command line of `loadtest`.
#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Reproducible benchmarks of kubetemplater, with a report (report.json + report.png)",
    long_about = "Reproducible benchmarks of kubetemplater. Every scenario writes report.json \
                  (figures with units, machine, versions, parameters, series, verdict) and \
                  report.png into --out (default target/loadtest/<scenario>-<timestamp>/). \
                  Exit status: 0 ok, 1 the run's checks found problems, 2 error."
)]
pub struct Args {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The coordinator's planner alone at scale: workers join, leave and die over a Zipf
    /// cluster; buckets moved vs the ideal, max/mean load, time and memory per rebalance.
    ///
    /// With the default 1,024 buckets and 1,000 workers a worker holds about one bucket:
    /// buckets are the unit of movement, so moves are quantised and loads cannot be balanced
    /// finer than a bucket; try --buckets 65536 for such fleets.
    Simulate {
        /// The scenario.
        #[command(flatten)]
        scenario: simulate::SimulateArgs,
        /// Output.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Prints the summary table of a report.json (exit status 1 when the report is not ok).
    Report {
        /// The report.json to read.
        json: PathBuf,
    },
    /// Create N templates (k objects each) over M namespaces as fast as the API takes them;
    /// time to all Completed, throughput (also as a fraction of the API server's own apply
    /// rate), latency, requests by verb, CPU and memory per process.
    Burst {
        /// The scenario.
        #[command(flatten)]
        scenario: burst::BurstArgs,
        /// The cluster.
        #[command(flatten)]
        target: target::TargetArgs,
        /// Output.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The API server's own server-side-apply rate with the templates' objects.
    Ceiling {
        /// The scenario.
        #[command(flatten)]
        scenario: ceiling::CeilingArgs,
        /// The cluster.
        #[command(flatten)]
        target: target::TargetArgs,
        /// Output.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// After a burst settled, the API writes the system makes over a window (goal: 0).
    Idle {
        /// The scenario.
        #[command(flatten)]
        scenario: idle::IdleArgs,
        /// The cluster.
        #[command(flatten)]
        target: target::TargetArgs,
        /// Output.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// A steady rate of updates, deletes and creates; latency, queue depth, and no missed or
    /// duplicated apply.
    Churn {
        /// The scenario.
        #[command(flatten)]
        scenario: churn::ChurnArgs,
        /// The cluster.
        #[command(flatten)]
        target: target::TargetArgs,
        /// Output.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Churn while the workers are scaled up and down; handoff time, buckets moved, and no
    /// missed or duplicated apply.
    Rebalance {
        /// The scenario.
        #[command(flatten)]
        scenario: rebalance::RebalanceArgs,
        /// The cluster.
        #[command(flatten)]
        target: target::TargetArgs,
        /// Output.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Webhook latency from the client, from the webhook's histogram and from kube-apiserver's.
    Admission {
        /// The scenario.
        #[command(flatten)]
        scenario: admission::AdmissionArgs,
        /// The cluster.
        #[command(flatten)]
        target: target::TargetArgs,
        /// Output.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Tenants from a database: an SQLite table of N rows, a TenantRegistry and a TenantTemplate
    /// of k objects; time until every Tenant is Ready, throughput, the registry's query cost per
    /// sync, row change → objects updated, writes when idle (goal: 0), CPU and memory.
    Tenants {
        /// The scenario.
        #[command(flatten)]
        scenario: tenants::TenantsArgs,
        /// The cluster.
        #[command(flatten)]
        target: target::TargetArgs,
        /// Output.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Deletes what runs left behind (namespaces, policies and fake Nodes labelled with a run
    /// id, and on devcluster the tenants scenario's SQLite files).
    Cleanup {
        /// Only this run's objects [default: every run's].
        #[arg(long)]
        run: Option<String>,
        /// The cluster.
        #[command(flatten)]
        target: target::TargetArgs,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
}

/// Runs the command, writing results to `out` and errors to `err`.
pub fn run(args: Args, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let result = match args.command {
        Command::Simulate { scenario, output } => run_simulate(&scenario, &output, out),
        Command::Report { json } => Report::load(&json).map(|report| {
            // A closed stdout is not worth an error of its own.
            let _ = out.write_all(table::render(&report).as_bytes());
            report.ok
        }),
        Command::Burst {
            scenario,
            target,
            output,
        } => run_cluster_blocking(Cluster::Burst(scenario), &target, &output, out),
        Command::Ceiling {
            scenario,
            target,
            output,
        } => run_cluster_blocking(Cluster::Ceiling(scenario), &target, &output, out),
        Command::Idle {
            scenario,
            target,
            output,
        } => run_cluster_blocking(Cluster::Idle(scenario), &target, &output, out),
        Command::Churn {
            scenario,
            target,
            output,
        } => run_cluster_blocking(Cluster::Churn(scenario), &target, &output, out),
        Command::Rebalance {
            scenario,
            target,
            output,
        } => run_cluster_blocking(Cluster::Rebalance(scenario), &target, &output, out),
        Command::Admission {
            scenario,
            target,
            output,
        } => run_cluster_blocking(Cluster::Admission(scenario), &target, &output, out),
        Command::Tenants {
            scenario,
            target,
            output,
        } => run_cluster_blocking(Cluster::Tenants(scenario), &target, &output, out),
        Command::Cleanup { run, target, quiet } => cleanup(run, &target, quiet, out),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let _ = writeln!(err, "loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

/// A cluster scenario with its arguments.
#[derive(Debug, Clone)]
pub enum Cluster {
    /// `burst`.
    Burst(burst::BurstArgs),
    /// `ceiling`.
    Ceiling(ceiling::CeilingArgs),
    /// `idle`.
    Idle(idle::IdleArgs),
    /// `churn`.
    Churn(churn::ChurnArgs),
    /// `rebalance`.
    Rebalance(rebalance::RebalanceArgs),
    /// `admission`.
    Admission(admission::AdmissionArgs),
    /// `tenants`.
    Tenants(tenants::TenantsArgs),
}

impl Cluster {
    /// The scenario's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Burst(_) => burst::SCENARIO,
            Self::Ceiling(_) => ceiling::SCENARIO,
            Self::Idle(_) => idle::SCENARIO,
            Self::Churn(_) => churn::SCENARIO,
            Self::Rebalance(_) => rebalance::SCENARIO,
            Self::Admission(_) => admission::SCENARIO,
            Self::Tenants(_) => tenants::SCENARIO,
        }
    }

    /// The figures a summary line shows.
    fn headline(&self) -> &'static [&'static str] {
        match self {
            Self::Burst(_) => &[
                "completed",
                "time_to_completed_s",
                "throughput.templates_per_s",
                "latency_ms.p99",
                "fraction_of_ceiling",
            ],
            Self::Ceiling(_) => &["ceiling.applies_per_s", "ceiling.apply_ms.p99"],
            Self::Idle(_) => &["completed", "idle.writes"],
            Self::Churn(_) | Self::Rebalance(_) => &[
                "churn.changes",
                "latency_ms.update.p99",
                "queue_depth.max",
                "missed_applies",
                "duplicated_applies",
                "buckets_moved",
                "handoff_ms.max",
            ],
            Self::Admission(_) => &[
                "client_ms.p50",
                "client_ms.p99",
                "baseline_ms.p50",
                "webhook_ms.validate.p99",
                "apiserver_ms.validating.p99",
            ],
            Self::Tenants(_) => &[
                "ready",
                "time_to_ready_s",
                "throughput.tenants_per_s",
                "idle.query_ms.mean",
                "change_ms.p99",
                "idle.writes",
            ],
        }
    }
}

/// Runs a cluster scenario against the cluster `target` names and writes its report into
/// `output`'s directory. Problems the scenario found are in the report (`ok` false); errors
/// (the cluster unreachable, a call refused) are returned.
pub async fn run_cluster(
    scenario: &Cluster,
    target: &target::TargetArgs,
    output: &OutputArgs,
) -> Result<(Report, output::Written)> {
    let started_at = jiff::Timestamp::now();
    let clock = Instant::now();
    let mut target = target::Target::connect(target).await?;
    let mut report = new_report(scenario.name(), started_at);
    if target.devcluster.is_some() {
        report.notes.push(format!(
            "target: devcluster ({}): CPU and memory of every process sampled, writes counted from the audit log",
            target.kubeconfig.display()
        ));
    } else {
        report
            .notes
            .push(format!("target: {}", target.kubeconfig.display()));
    }
    let quiet = output.quiet;
    let panels = match scenario {
        Cluster::Burst(args) => burst::run(&target, args, quiet, &mut report).await?,
        Cluster::Ceiling(args) => {
            report.parameters = serde_json::to_value(args).unwrap_or_default();
            let workload =
                workload::Workload::new(&target.system_namespace, args.namespaces.max(1), 1);
            workload
                .create_namespaces(&target.client, false, args.concurrency, quiet)
                .await?;
            ceiling::measure(
                &target,
                &workload,
                args.objects,
                args.concurrency,
                quiet,
                &mut report,
            )
            .await?;
            if !args.keep {
                workload::cleanup(
                    &target.client,
                    &target.system_namespace,
                    Some(&workload.run),
                    std::time::Duration::from_secs(600),
                    quiet,
                )
                .await?;
            }
            Vec::new()
        }
        Cluster::Idle(args) => idle::run(&target, args, quiet, &mut report).await?,
        Cluster::Churn(args) => {
            report.parameters = serde_json::to_value(args).unwrap_or_default();
            churn::run(&mut target, args, None, quiet, &mut report).await?
        }
        Cluster::Rebalance(args) => rebalance::run(&mut target, args, quiet, &mut report).await?,
        Cluster::Admission(args) => admission::run(&target, args, quiet, &mut report).await?,
        Cluster::Tenants(args) => tenants::run(&target, args, quiet, &mut report).await?,
    };
    report.duration_s = clock.elapsed().as_secs_f64();
    report.conclude();
    let written = output::write(&report, &panels, &output.dir(&report.scenario, started_at))?;
    Ok((report, written))
}

/// One line: scenario, verdict, and its headline figures.
pub fn summary_line(scenario: &Cluster, report: &Report) -> String {
    let mut line = format!(
        "{}: {}",
        report.scenario,
        if report.ok { "ok" } else { "PROBLEMS" }
    );
    for name in scenario.headline() {
        if let Some(f) = report.figure(name) {
            // Writing to a String cannot fail.
            let _ = write!(line, ", {name} {}", table::format_value(f.value, &f.unit));
        }
    }
    line
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Cluster(format!("starting the async runtime: {e}")))
}

fn run_cluster_blocking(
    scenario: Cluster,
    target: &target::TargetArgs,
    output: &OutputArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let (report, written) = runtime()?.block_on(run_cluster(&scenario, target, output))?;
    if output.quiet {
        let _ = writeln!(out, "{}", summary_line(&scenario, &report));
    } else {
        let _ = out.write_all(table::render(&report).as_bytes());
    }
    let _ = writeln!(
        out,
        "report: {} and {}",
        written.json.display(),
        written.png.display()
    );
    Ok(report.ok)
}

fn cleanup(
    run: Option<String>,
    target: &target::TargetArgs,
    quiet: bool,
    out: &mut dyn Write,
) -> Result<bool> {
    let (removed, nodes, files) = runtime()?.block_on(async {
        let target = target::Target::connect(target).await?;
        let removed = workload::cleanup(
            &target.client,
            &target.system_namespace,
            run.as_deref(),
            std::time::Duration::from_secs(1800),
            quiet,
        )
        .await?;
        // Fake Nodes only once the namespaces (and their pods) are gone.
        let nodes = tenants::remove_nodes(&target.client, run.as_deref()).await?;
        let files = tenants::remove_databases(&target, run.as_deref());
        Ok::<_, Error>((removed, nodes, files))
    })?;
    let _ = writeln!(
        out,
        "removed {removed} namespaces, {nodes} fake Nodes and {files} SQLite files of loadtest runs"
    );
    Ok(true)
}

/// A report with the run's context and nothing measured yet.
fn new_report(scenario: &str, started_at: jiff::Timestamp) -> Report {
    Report {
        format: FORMAT,
        scenario: scenario.to_owned(),
        started_at,
        duration_s: 0.0,
        machine: Machine::detect(),
        versions: Versions::detect(),
        parameters: serde_json::Value::Null,
        figures: Vec::new(),
        series: Vec::new(),
        records: Vec::new(),
        notes: Vec::new(),
        ok: false,
        problems: Vec::new(),
    }
}

fn run_simulate(
    args: &simulate::SimulateArgs,
    output: &OutputArgs,
    out: &mut dyn Write,
) -> Result<bool> {
    let started_at = jiff::Timestamp::now();
    let clock = Instant::now();
    let mut report = new_report(simulate::SCENARIO, started_at);
    let panels = simulate::run(args, output.quiet, &mut report)?;
    report.duration_s = clock.elapsed().as_secs_f64();
    report.conclude();
    let written = output::write(&report, &panels, &output.dir(&report.scenario, started_at))?;
    let _ = writeln!(out, "{}", simulate::summary_line(&report));
    if !output.quiet {
        for p in &report.problems {
            let _ = writeln!(out, "problem: {p}");
        }
    }
    let _ = writeln!(
        out,
        "report: {} and {}",
        written.json.display(),
        written.png.display()
    );
    Ok(report.ok)
}
