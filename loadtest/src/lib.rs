//! `loadtest`: reproducible benchmarks of kubetemplater, each run leaving a report people can
//! read: `report.json` (every figure with its unit, the machine, versions, parameters) and
//! `report.png` (the series behind the figures).
//!
//! # Usage
//!
//! ```text
//! cargo run --release -p loadtest -- simulate                  # 1,000 workers, 1M objects, 50 events
//! cargo run --release -p loadtest -- simulate --buckets 65536  # the same fleet with enough buckets
//! cargo run --release -p loadtest -- simulate --quiet --out /tmp/sim   # CI: one summary line
//! cargo run --release -p loadtest -- report target/loadtest/simulate-…/report.json
//! ```
//!
//! Every scenario takes `--out <dir>` (default `target/loadtest/<scenario>-<UTC timestamp>/`
//! under the current directory) and `--quiet` (no progress bar, one summary line). A scenario
//! exits with 1 when its checks found problems (the report says which), `report` exits with 1
//! for a report that is not ok, and both exit with 2 on an error.
//!
//! # Scenarios
//!
//! - `simulate` ([`simulate`]): the coordinator's planner alone, at a scale this machine cannot
//!   host as processes: workers joining, leaving and dying over a Zipf-distributed cluster;
//!   buckets moved against the ideal, load against the mean, time and memory per rebalance.
//!
//! The cluster scenarios of issue 12 (burst, ceiling, idle, churn, rebalance, admission) write
//! the same [`report::Report`].
//!
//! # Layout
//!
//! [`report`] is the format, [`host`] what a run ran on, [`output`] where it goes, [`plot`] the
//! PNG, [`table`] the text of `loadtest report`, [`progress`] the bar, [`stats`] and [`zipf`] the
//! arithmetic; each scenario is one module.

pub mod host;
pub mod output;
pub mod plot;
pub mod progress;
pub mod report;
pub mod simulate;
pub mod stats;
pub mod table;
pub mod zipf;

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
