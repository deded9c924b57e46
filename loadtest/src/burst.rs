//! `burst`: create N KubeTemplates (k objects each) across M namespaces as fast as the API takes
//! them; time to all `Completed`, throughput, create→Completed latency, API requests by verb,
//! CPU and memory per process; then the ceiling (the API server's own apply rate with the same
//! objects and concurrency), so throughput is also a fraction of what the server can take.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::apicount::Window;
use crate::monitor::Monitor;
use crate::plot::Panel;
use crate::populate::{self, PopulateArgs, Populated};
use crate::report::{Figure, Report, Series, unit};
use crate::stats::Summary;
use crate::target::Target;
use crate::{Result, ceiling, workload};

/// Scenario name.
pub const SCENARIO: &str = "burst";

/// Arguments of `loadtest burst`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct BurstArgs {
    /// The templates.
    #[command(flatten)]
    pub populate: PopulateArgs,
    /// Skip the ceiling measurement.
    #[arg(long)]
    pub no_ceiling: bool,
}

/// The panels of a burst report.
pub fn panels() -> Vec<Panel> {
    vec![
        Panel::new(
            "Throughput (per second)",
            "templates/s",
            &["created_per_s", "completed_per_s"],
        ),
        Panel::new("Work queue depth (all workers)", "keys", &["queue_depth"]),
        Panel::new(
            "CPU (cores; the machine has the CPUs in the header)",
            "cores",
            &["cpu_ours", "cpu_control_plane"],
        ),
        Panel::new(
            "Create -> Completed latency (CDF)",
            "fraction",
            &["latency_cdf"],
        ),
    ]
}

/// Runs `burst`.
pub async fn run(
    target: &Target,
    args: &BurstArgs,
    quiet: bool,
    report: &mut Report,
) -> Result<Vec<Panel>> {
    args.populate.validate()?;
    report.parameters = serde_json::to_value(args).unwrap_or_default();
    let monitor = Monitor::start(target, Duration::from_secs(1));
    let window = Window::start(target).await;
    let populated = populate::populate(target, &args.populate, quiet).await?;
    window.finish(target, "", report).await;
    figures(&populated, args.populate.objects, monitor.started(), report);
    report.problems.extend(populated.problems.iter().cloned());
    if !args.no_ceiling && populated.problems.is_empty() {
        let count = args.populate.templates * args.populate.objects;
        let ceiling = ceiling::measure(
            target,
            &populated.workload,
            count,
            args.populate.concurrency,
            quiet,
            report,
        )
        .await?;
        if let Some(ours) = report.figure("throughput.objects_per_s").map(|f| f.value) {
            report.figures.push(
                Figure::new("fraction_of_ceiling", ours / ceiling.per_s, unit::RATIO).describe(
                    "objects made Completed per second ÷ the API server's own apply rate",
                ),
            );
        }
    }
    let observed = monitor.stop().await;
    observed.add_figures(
        report,
        (args.populate.templates, "templates"),
        args.populate.templates * (1 + args.populate.objects),
    );
    finish(target, &populated, args.populate.keep, quiet, report).await?;
    Ok(panels())
}

/// Removes the run's objects unless `keep`, noting what was left otherwise.
pub async fn finish(
    target: &Target,
    populated: &Populated,
    keep: bool,
    quiet: bool,
    report: &mut Report,
) -> Result<()> {
    if keep {
        report.notes.push(format!(
            "objects kept: namespaces and policies labelled {} (remove with `loadtest cleanup --run {}`)",
            populated.workload.selector(),
            populated.workload.run
        ));
        return Ok(());
    }
    workload::cleanup(
        &target.client,
        &target.system_namespace,
        Some(&populated.workload.run),
        Duration::from_secs(1800),
        quiet,
    )
    .await?;
    Ok(())
}

/// The figures and series of a populated run; the series' x is seconds after `origin` (the
/// monitor's start, so all series of a report share one time axis).
pub fn figures(populated: &Populated, objects: usize, origin: Instant, report: &mut Report) {
    let templates = populated.keys.len();
    let total_s = populated
        .settled
        .saturating_duration_since(populated.started)
        .as_secs_f64();
    let create_s = populated
        .created
        .saturating_duration_since(populated.started)
        .as_secs_f64();
    let (latencies, completions) = populate::latencies(populated);
    report.figures.extend([
        Figure::new("templates", templates as f64, unit::COUNT),
        Figure::new("objects", (templates * objects) as f64, unit::OBJECTS)
            .describe("ConfigMaps the templates hold"),
        Figure::new("completed", completions.len() as f64, unit::COUNT)
            .describe("templates seen Completed"),
        Figure::new("create_s", create_s, unit::S)
            .describe("first create sent → last create answered"),
        Figure::new("time_to_completed_s", total_s, unit::S)
            .describe("first create sent → last template Completed"),
        Figure::new(
            "throughput.templates_per_s",
            completions.len() as f64 / total_s.max(1e-9),
            unit::PER_S,
        ),
        Figure::new(
            "throughput.objects_per_s",
            (completions.len() * objects) as f64 / total_s.max(1e-9),
            unit::PER_S,
        ),
    ]);
    let s = Summary::new(latencies.iter().copied());
    for (p, name) in [(50.0, "p50"), (95.0, "p95"), (99.0, "p99"), (100.0, "max")] {
        if let Some(v) = s.percentile(p) {
            report.figures.push(
                Figure::new(format!("latency_ms.{name}"), v, unit::MS)
                    .describe("create sent → Completed seen"),
            );
        }
    }
    let offset = populated
        .started
        .saturating_duration_since(origin)
        .as_secs_f64();
    let sent: Vec<f64> = populated
        .sent
        .values()
        .map(|t| t.saturating_duration_since(origin).as_secs_f64())
        .collect();
    let completions: Vec<f64> = completions.iter().map(|t| t + offset).collect();
    report.series.push(per_second("created_per_s", &sent));
    report
        .series
        .push(per_second("completed_per_s", &completions));
    report.series.push(cdf("latency_cdf", &latencies));
}

/// Events per one-second bin, from event times in seconds.
pub fn per_second(name: &str, times: &[f64]) -> Series {
    let mut series = Series::new(name, unit::PER_S, unit::S);
    let Some(last) = times.iter().copied().reduce(f64::max) else {
        return series;
    };
    // `as` saturates; times are non-negative and bounded by the run.
    let mut bins = vec![0u64; last.floor() as usize + 1];
    let last_bin = bins.len() - 1;
    for t in times {
        bins[(t.max(0.0).floor() as usize).min(last_bin)] += 1;
    }
    for (i, n) in bins.into_iter().enumerate() {
        series.push(i as f64 + 0.5, n as f64);
    }
    series
}

/// The empirical distribution of `values` (x: value in ms, y: fraction at or below), at most
/// 500 points.
pub fn cdf(name: &str, values: &[f64]) -> Series {
    let mut series = Series::new(name, unit::RATIO, unit::MS);
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let step = n.div_ceil(500).max(1);
    for (i, v) in sorted.iter().enumerate() {
        if i % step == 0 || i + 1 == n {
            series.push(*v, (i + 1) as f64 / n as f64);
        }
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_and_cdf() {
        let s = per_second("x", &[0.1, 0.2, 1.5, 3.9]);
        let ys: Vec<f64> = s.points.iter().map(|p| p.1).collect();
        assert_eq!(ys, vec![2.0, 1.0, 0.0, 1.0]);
        assert!(per_second("x", &[]).points.is_empty());
        let c = cdf("c", &[3.0, 1.0, 2.0]);
        assert_eq!(c.points.first().unwrap().0, 1.0);
        assert_eq!(c.points.last().unwrap().1, 1.0);
        let big: Vec<f64> = (0..10_000).map(f64::from).collect();
        let c = cdf("c", &big);
        assert!(c.points.len() <= 501);
        assert_eq!(c.points.last().unwrap().1, 1.0);
    }
}
