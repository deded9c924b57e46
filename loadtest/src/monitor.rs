//! Sampling while a scenario runs: CPU and memory of every known process, and the workers'
//! queue depth, once per interval on a background task.
//!
//! Processes come from the [`Target`] (devcluster's records, refreshed so scaled workers are
//! followed, or `--pid`); queue depth is the sum of `kubetemplater_queue_depth` over the
//! components whose name starts with `worker`. A scrape that fails (a worker stopping) is
//! skipped for that tick.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::procstat::{self, ProcSample};
use crate::report::{Figure, Report, Series, unit};
use crate::target::Target;

/// What one process did over the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessUsage {
    /// Its name (`worker-0`, `kube-apiserver` …).
    pub name: String,
    /// CPU seconds used between its first and last sample.
    pub cpu_s: f64,
    /// Resident memory at its first sample.
    pub rss_first: u64,
    /// Resident memory at its last sample.
    pub rss_last: u64,
    /// Highest resident memory sampled.
    pub rss_peak: u64,
}

/// What the monitor saw.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Per process, by name.
    pub processes: BTreeMap<String, ProcessUsage>,
    /// Sum of the workers' queue depth over time (x: seconds since the monitor started).
    pub queue_depth: Series,
    /// Highest queue depth seen.
    pub queue_depth_max: f64,
    /// CPU cores used by all our processes together, over time.
    pub cpu_ours: Series,
    /// CPU cores used by the control plane (kube-apiserver, etcd, …), over time.
    pub cpu_control_plane: Series,
}

impl Default for Observed {
    fn default() -> Self {
        Self {
            processes: BTreeMap::new(),
            queue_depth: Series::new("queue_depth", unit::COUNT, unit::S),
            queue_depth_max: 0.0,
            cpu_ours: Series::new("cpu_ours", "cores", unit::S),
            cpu_control_plane: Series::new("cpu_control_plane", "cores", unit::S),
        }
    }
}

/// A running monitor; [`Monitor::stop`] returns what it saw.
#[derive(Debug)]
pub struct Monitor {
    stop: watch::Sender<bool>,
    task: JoinHandle<Observed>,
    started: Instant,
}

/// Whether a process is one of ours (not the control plane).
pub fn is_ours(name: &str) -> bool {
    ["worker", "coordinator", "webhook"]
        .iter()
        .any(|p| name.starts_with(p))
}

impl Monitor {
    /// Starts sampling `target` every `interval`.
    pub fn start(target: &Target, interval: Duration) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let mut target = target.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut first: BTreeMap<(String, u32), ProcSample> = BTreeMap::new();
            let mut last: BTreeMap<(String, u32), ProcSample> = BTreeMap::new();
            let mut peak: BTreeMap<String, u64> = BTreeMap::new();
            let mut previous: Option<(f64, f64, f64)> = None;
            let mut observed = Observed::default();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ticks = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                ticks += 1;
                if ticks.is_multiple_of(5) {
                    target.refresh();
                }
                let t = started.elapsed().as_secs_f64();
                let (mut ours, mut control) = (0.0, 0.0);
                for (name, &pid) in &target.processes {
                    let Some(sample) = procstat::read(pid) else {
                        continue;
                    };
                    let key = (name.clone(), pid);
                    first.entry(key.clone()).or_insert(sample);
                    last.insert(key, sample);
                    let p = peak.entry(name.clone()).or_insert(0);
                    *p = (*p).max(sample.rss_bytes);
                    if is_ours(name) {
                        ours += sample.cpu_s;
                    } else {
                        control += sample.cpu_s;
                    }
                }
                if let Some((t0, ours0, control0)) = previous {
                    let dt = (t - t0).max(1e-3);
                    // A process that exited drops out of the sum; never plot negative use.
                    observed.cpu_ours.push(t, ((ours - ours0) / dt).max(0.0));
                    observed
                        .cpu_control_plane
                        .push(t, ((control - control0) / dt).max(0.0));
                }
                previous = Some((t, ours, control));
                let mut depth = 0.0;
                let mut any = false;
                for worker in target.components("worker") {
                    if let Ok(scrape) = target.component_metrics(&worker).await {
                        depth += scrape.sum("kubetemplater_queue_depth", &[]);
                        any = true;
                    }
                }
                if any {
                    observed.queue_depth.push(t, depth);
                    observed.queue_depth_max = observed.queue_depth_max.max(depth);
                }
            }
            for ((name, pid), f) in &first {
                let Some(l) = last.get(&(name.clone(), *pid)) else {
                    continue;
                };
                let usage =
                    observed
                        .processes
                        .entry(name.clone())
                        .or_insert_with(|| ProcessUsage {
                            name: name.clone(),
                            cpu_s: 0.0,
                            rss_first: f.rss_bytes,
                            rss_last: l.rss_bytes,
                            rss_peak: 0,
                        });
                usage.cpu_s += (l.cpu_s - f.cpu_s).max(0.0);
                usage.rss_last = l.rss_bytes;
                usage.rss_peak = peak.get(name).copied().unwrap_or(l.rss_bytes);
            }
            observed
        });
        Self {
            stop,
            task,
            started,
        }
    }

    /// When sampling started: x = 0 of its series.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops sampling and returns what was seen.
    pub async fn stop(self) -> Observed {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

impl Observed {
    /// Adds the per-process figures to `report`: CPU seconds, CPU seconds per 1,000 units of
    /// work (`work` = (count, unit), e.g. templates created or changes made; none when the
    /// count is 0) for our processes, peak and final memory; and memory per owned object
    /// (`objects` > 0): the growth of the workers' resident memory over the run divided by the
    /// objects they own at its end.
    pub fn add_figures(&self, report: &mut Report, work: (usize, &str), objects: usize) {
        let (templates, per) = work;
        if self.processes.is_empty() {
            report.notes.push(
                "no process was sampled for CPU and memory (not a devcluster; name local ones \
                 with --pid NAME=PID)"
                    .to_owned(),
            );
        }
        for (name, usage) in &self.processes {
            report.figures.push(
                Figure::new(format!("cpu_s.{name}"), usage.cpu_s, unit::S)
                    .describe(format!("CPU seconds used by {name} during the run")),
            );
            if templates > 0 && is_ours(name) {
                report.figures.push(Figure::new(
                    format!("cpu_s_per_1000_{per}.{name}"),
                    usage.cpu_s * 1000.0 / templates as f64,
                    unit::S,
                ));
            }
            report.figures.push(Figure::new(
                format!("rss_peak.{name}"),
                usage.rss_peak as f64,
                unit::BYTES,
            ));
        }
        let ours: f64 = self
            .processes
            .values()
            .filter(|u| is_ours(&u.name))
            .map(|u| u.cpu_s)
            .sum();
        if templates > 0 && ours > 0.0 {
            report.figures.push(
                Figure::new(
                    format!("cpu_s_per_1000_{per}.ours"),
                    ours * 1000.0 / templates as f64,
                    unit::S,
                )
                .describe(format!(
                    "CPU seconds of coordinators, workers and webhooks per 1,000 {per}"
                )),
            );
        }
        let workers: Vec<&ProcessUsage> = self
            .processes
            .values()
            .filter(|u| u.name.starts_with("worker"))
            .collect();
        if objects > 0 && !workers.is_empty() {
            let growth: f64 = workers
                .iter()
                .map(|u| u.rss_last as f64 - u.rss_first as f64)
                .sum();
            let total: f64 = workers.iter().map(|u| u.rss_last as f64).sum();
            report.figures.push(
                Figure::new(
                    "memory_per_owned_object",
                    (growth / objects as f64).max(0.0),
                    unit::BYTES,
                )
                .describe("growth of the workers' resident memory over the run per object they own (templates + managed objects)"),
            );
            report.figures.push(
                Figure::new("workers_rss_total", total, unit::BYTES)
                    .describe("the workers' resident memory at the end"),
            );
        }
        report.figures.push(Figure::new(
            "queue_depth.max",
            self.queue_depth_max,
            unit::COUNT,
        ));
        for s in [&self.queue_depth, &self.cpu_ours, &self.cpu_control_plane] {
            if !s.points.is_empty() {
                report.series.push(s.clone());
            }
        }
        report.records.extend(self.processes.values().map(|u| {
            serde_json::json!({
                "process": u.name, "cpu_s": u.cpu_s, "rss_first": u.rss_first,
                "rss_last": u.rss_last, "rss_peak": u.rss_peak,
            })
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_and_theirs() {
        assert!(is_ours("worker-3"));
        assert!(is_ours("coordinator-0"));
        assert!(is_ours("webhook-1"));
        assert!(!is_ours("kube-apiserver"));
        assert!(!is_ours("etcd"));
    }

    #[test]
    fn figures_from_usage() {
        let mut observed = Observed::default();
        for (name, cpu, first, last) in [
            ("worker-0", 2.0, 100, 1_100),
            ("worker-1", 1.0, 100, 1_100),
            ("etcd", 5.0, 10, 20),
        ] {
            observed.processes.insert(
                name.into(),
                ProcessUsage {
                    name: name.into(),
                    cpu_s: cpu,
                    rss_first: first,
                    rss_last: last,
                    rss_peak: last,
                },
            );
        }
        let mut report = crate::report::tests_support::minimal("burst");
        observed.add_figures(&mut report, (500, "templates"), 20);
        assert_eq!(
            report
                .figure("cpu_s_per_1000_templates.ours")
                .unwrap()
                .value,
            6.0
        );
        assert_eq!(
            report.figure("memory_per_owned_object").unwrap().value,
            100.0
        );
        assert!(report.figure("cpu_s_per_1000_templates.etcd").is_none());
        assert_eq!(report.figure("cpu_s.etcd").unwrap().value, 5.0);
    }
}
