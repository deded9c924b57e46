//! `idle`: after a burst has settled, the API writes the system makes over a window (goal: 0).
//!
//! On devcluster the count is exact, from kube-apiserver's audit log by identity (every write of
//! a `kubetemplater:` identity except the Lease renewals that prove a process alive). Elsewhere
//! it is the sum of the components' own write counters (`kubetemplater_api_requests_total`,
//! which count every write but Lease renewals) over the window.

use std::time::Duration;

use serde::Serialize;

use crate::apicount::Window;
use crate::burst;
use crate::monitor::Monitor;
use crate::plot::Panel;
use crate::populate::{self, PopulateArgs};
use crate::report::{Figure, Report, unit};
use crate::target::Target;
use crate::{Error, Result};

/// Scenario name.
pub const SCENARIO: &str = "idle";

/// Arguments of `loadtest idle`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct IdleArgs {
    /// The templates to create first.
    #[command(flatten)]
    pub populate: PopulateArgs,
    /// Seconds to let the last status writes and re-plans settle before the window opens.
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
    /// Length of the window, in seconds.
    #[arg(long, default_value_t = 60)]
    pub window: u64,
}

/// Sum of `kubetemplater_api_requests_total` over the components with a metrics endpoint.
async fn component_writes(target: &Target) -> Result<f64> {
    let mut total = 0.0;
    let names = target.components("");
    if names.is_empty() {
        return Err(Error::Cluster(
            "no component metrics endpoint is known (not a devcluster; name them with --metrics NAME=URL)"
                .into(),
        ));
    }
    for name in names {
        total += target
            .component_metrics(&name)
            .await?
            .sum("kubetemplater_api_requests_total", &[]);
    }
    Ok(total)
}

/// Counts the writes the system makes over the next `seconds` (the caller has let everything
/// settle; `settled` says what, for the figure's description): exactly from the audit log on
/// devcluster (our identities, Lease renewals excepted; the first 20 named in the records),
/// elsewhere from the components' `kubetemplater_api_requests_total`. Adds `idle.writes` and
/// `idle.writes_per_minute` (and the window's requests by verb, `idle.api_requests.*`), and a
/// problem when there was any write. With `namespace` (a scenario's own), the audit count is also
/// split into writes there (`idle.writes.in_namespace`) and elsewhere (other objects of the
/// cluster, e.g. another test's). Returns the count (NaN when it could not be counted).
pub async fn measure(
    target: &Target,
    seconds: u64,
    settled: &str,
    namespace: Option<&str>,
    quiet: bool,
    report: &mut Report,
) -> f64 {
    let window = Window::start(target).await;
    let before = component_writes(target).await;
    let progress = crate::progress::Progress::new("idle", seconds, "seconds", quiet);
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress.step();
    }
    progress.finish();
    let after = component_writes(target).await;
    let audit = window.finish(target, "idle.", report).await;
    let mut elsewhere = None;
    let writes = match audit {
        Some(audit) => {
            let ours = audit.ours_without_leases();
            if let Some(ns) = namespace {
                let inside = ours
                    .iter()
                    .filter(|e| e.object_ref.as_ref().is_some_and(|o| o.namespace == ns))
                    .count();
                report.figures.push(
                    Figure::new("idle.writes.in_namespace", inside as f64, unit::COUNT)
                        .describe(format!("of the idle writes, those to objects in {ns}")),
                );
                elsewhere = Some(ours.len() - inside);
            }
            for e in ours.iter().take(20) {
                report
                    .records
                    .push(serde_json::json!({"idle_write": e.describe()}));
            }
            report
                .notes
                .push("idle writes counted exactly, from the audit log by identity".into());
            ours.len() as f64
        }
        None => match (before, after) {
            (Ok(b), Ok(a)) => {
                report.notes.push(
                    "idle writes counted from the components' kubetemplater_api_requests_total"
                        .into(),
                );
                a - b
            }
            (Err(e), _) | (_, Err(e)) => {
                report
                    .problems
                    .push(format!("cannot count idle writes: {e}"));
                f64::NAN
            }
        },
    };
    report.figures.push(
        Figure::new("idle.writes", writes, unit::COUNT).describe(format!(
            "writes by the system in {seconds} s with {settled} (Lease renewals excepted)"
        )),
    );
    report.figures.push(Figure::new(
        "idle.writes_per_minute",
        writes * 60.0 / seconds.max(1) as f64,
        unit::COUNT,
    ));
    if writes > 0.0 {
        let other = match (elsewhere, namespace) {
            (Some(n), Some(ns)) if n > 0 => format!(", {n} of them to objects outside {ns}"),
            _ => String::new(),
        };
        report.problems.push(format!(
            "{writes} writes in the idle window (goal: 0){other}; the report's records name them"
        ));
    }
    writes
}

/// Runs `idle`.
pub async fn run(
    target: &Target,
    args: &IdleArgs,
    quiet: bool,
    report: &mut Report,
) -> Result<Vec<Panel>> {
    args.populate.validate()?;
    report.parameters = serde_json::to_value(args).unwrap_or_default();
    // One monitor for the whole run: the figures cover creating the templates, the series show
    // the idle window after it.
    let monitor = Monitor::start(target, Duration::from_secs(1));
    let populated = populate::populate(target, &args.populate, quiet).await?;
    report.problems.extend(populated.problems.iter().cloned());
    burst::figures(&populated, args.populate.objects, monitor.started(), report);
    if populated.problems.is_empty() {
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        measure(
            target,
            args.window,
            "every template settled",
            None,
            quiet,
            report,
        )
        .await;
    }
    let observed = monitor.stop().await;
    observed.add_figures(
        report,
        (args.populate.templates, "templates"),
        args.populate.templates * (1 + args.populate.objects),
    );
    burst::finish(target, &populated, args.populate.keep, quiet, report).await?;
    Ok(vec![
        Panel::new(
            "Throughput (per second)",
            "templates/s",
            &["created_per_s", "completed_per_s"],
        ),
        Panel::new("Work queue depth (all workers)", "keys", &["queue_depth"]),
        Panel::new(
            "CPU (cores): creating, then the idle window",
            "cores",
            &["cpu_ours", "cpu_control_plane"],
        ),
    ])
}
