//! `churn`: a steady rate of template updates, deletes and creates over a populated cluster;
//! latency of each kind of change, queue depth under it, and two correctness checks: no applied
//! state is missed (every live template's objects hold its latest value, a deleted template's
//! are gone) and, on devcluster, no apply is duplicated (each change of a template is written to
//! each of its objects exactly once, by one worker, per the audit log). `rebalance` is the same
//! with workers scaled during the run.
//!
//! A template is only changed again once its previous change completed, so every generation
//! must produce exactly one write per object: the duplicate count is exact, not a heuristic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use rand::Rng as _;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::apicount::Window;
use crate::monitor::Monitor;
use crate::plot::Panel;
use crate::populate::{self, PopulateArgs, Populated};
use crate::progress::Progress;
use crate::report::{Figure, Report, unit};
use crate::stats::Summary;
use crate::target::Target;
use crate::tracker::Count;
use crate::workload::Key;
use crate::{Error, Result, burst};

/// Scenario name.
pub const SCENARIO: &str = "churn";

/// Arguments of `loadtest churn`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ChurnArgs {
    /// The templates to create first.
    #[command(flatten)]
    pub populate: PopulateArgs,
    /// Changes per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Share of updates (relative weight).
    #[arg(long, default_value_t = 70)]
    pub updates: u32,
    /// Share of deletes (relative weight).
    #[arg(long, default_value_t = 15)]
    pub deletes: u32,
    /// Share of creates (relative weight).
    #[arg(long, default_value_t = 15)]
    pub creates: u32,
    /// Seconds to wait, after the churn, for every change to complete.
    #[arg(long, default_value_t = 300)]
    pub drain_timeout: u64,
}

impl ChurnArgs {
    /// Checks the numbers make sense.
    pub fn validate(&self) -> Result<()> {
        self.populate.validate()?;
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err(Error::InvalidArgument("--rate must be above 0".into()));
        }
        if self.updates + self.deletes + self.creates == 0 {
            return Err(Error::InvalidArgument(
                "--updates, --deletes and --creates are all 0: nothing to do".into(),
            ));
        }
        Ok(())
    }
}

/// Kinds of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A new value for every object of a template.
    Update,
    /// A template deleted.
    Delete,
    /// A new template.
    Create,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Create => "create",
        }
    }
}

/// One change sent.
#[derive(Debug, Clone)]
struct Change {
    kind: Kind,
    key: Key,
    sent: Instant,
    /// The generation that must complete (update, create).
    generation: i64,
}

/// What the churn loop shares with the changes it spawned.
#[derive(Debug, Default)]
struct Live {
    /// Live templates with their latest value.
    values: HashMap<Key, String>,
    /// Live templates, for random picks.
    keys: Vec<Key>,
    /// Templates with a change in flight: `None` while the request runs, then the generation
    /// it made, until that generation completed.
    busy: HashMap<Key, Option<i64>>,
    /// Templates deleted.
    deleted: HashSet<Key>,
}

fn lock(live: &Mutex<Live>) -> std::sync::MutexGuard<'_, Live> {
    // The maps stay consistent at every await point; a poisoned lock only means a change task
    // panicked, which the JoinSet reports.
    live.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Something that changes the worker count during the churn (`rebalance`).
pub trait Scaler: Send {
    /// The worker counts to go through, in order.
    fn plan(&self) -> Vec<usize>;
    /// Brings the workers to `n`.
    fn scale(
        &mut self,
        n: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<String>> + Send + '_>>;
}

/// The panels of a churn report.
pub fn panels() -> Vec<Panel> {
    vec![
        Panel::new(
            "Changes sent and completed (per second)",
            "changes/s",
            &["sent_per_s", "completed_per_s"],
        ),
        Panel::new("Work queue depth (all workers)", "keys", &["queue_depth"]),
        Panel::new("CPU (cores)", "cores", &["cpu_ours", "cpu_control_plane"]),
        Panel::new(
            "Change -> Completed latency (CDF)",
            "fraction",
            &["latency_cdf"],
        ),
    ]
}

/// Runs `churn` (with `scaler`, `rebalance`).
pub async fn run(
    target: &mut Target,
    args: &ChurnArgs,
    mut scaler: Option<&mut dyn Scaler>,
    quiet: bool,
    report: &mut Report,
) -> Result<Vec<Panel>> {
    args.validate()?;
    let populated = populate::populate(target, &args.populate, quiet).await?;
    report.problems.extend(populated.problems.iter().cloned());
    if !populated.problems.is_empty() {
        burst::finish(target, &populated, args.populate.keep, quiet, report).await?;
        return Ok(panels());
    }
    let live = Arc::new(Mutex::new(Live::default()));
    {
        let mut l = lock(&live);
        for key in &populated.keys {
            l.values.insert(key.clone(), "0".to_owned());
            l.keys.push(key.clone());
        }
    }
    let monitor = Monitor::start(target, Duration::from_secs(1));
    let window = Window::start(target).await;
    let started = Instant::now();
    let plan = scaler.as_ref().map(|s| s.plan()).unwrap_or_default();
    let mut scale_at: Vec<(Duration, usize)> = plan
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                Duration::from_secs_f64(
                    args.duration as f64 * (i + 1) as f64 / (plan.len() + 1) as f64,
                ),
                *n,
            )
        })
        .collect();
    scale_at.reverse();

    let weights = [
        (Kind::Update, args.updates),
        (Kind::Delete, args.deletes),
        (Kind::Create, args.creates),
    ];
    let total_weight: u32 = weights.iter().map(|(_, w)| w).sum();
    let mut next_name = populated.keys.len();
    let mut tasks: JoinSet<Result<Option<Change>>> = JoinSet::new();
    let mut changes: Vec<Change> = Vec::new();
    let (mut skipped, mut lagged) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = started + Duration::from_secs(args.duration);
    let progress = Progress::new("churn", args.duration, "seconds", quiet);
    let mut scale_events = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        progress.set_position(started.elapsed().as_secs());
        while let Some(result) = tasks.try_join_next() {
            if let Some(change) = joined(Some(result))? {
                changes.push(change);
            }
        }
        if let Some(&(at, n)) = scale_at.last()
            && started.elapsed() >= at
            && let Some(scaler) = scaler.as_deref_mut()
        {
            scale_at.pop();
            // Scaling waits for the new workers to be ready (or the old to hand over); the
            // churn keeps going meanwhile from the changes already in flight and resumes after.
            let before = started.elapsed().as_secs_f64();
            let what = scaler.scale(n).await?;
            target.refresh();
            scale_events.push(serde_json::json!({
                "at_s": before, "workers": n, "took_s": started.elapsed().as_secs_f64() - before,
                "what": what,
            }));
            continue;
        }
        if tasks.len() >= args.populate.concurrency {
            lagged += 1;
            continue;
        }
        let mut rng = rand::rng();
        let roll = rng.random_range(0..total_weight);
        let mut acc = 0;
        let kind = weights
            .iter()
            .find(|(_, w)| {
                acc += w;
                roll < acc
            })
            .map_or(Kind::Update, |(k, _)| *k);
        let key = match kind {
            Kind::Create => {
                // `keys(_, 1)` returns exactly one key (the workload has namespaces).
                let key = populated.workload.keys(next_name, 1).remove(0);
                next_name += 1;
                Some(key)
            }
            Kind::Update | Kind::Delete => pick_settled(&live, &populated, &mut rng),
        };
        let Some(key) = key else {
            skipped += 1;
            continue;
        };
        lock(&live).busy.insert(key.clone(), None);
        let seq = changes.len() + tasks.len() + 1;
        let (client, workload, live) = (
            target.client.clone(),
            populated.workload.clone(),
            live.clone(),
        );
        tasks.spawn(async move {
            let value = format!("{seq}");
            let change = match kind {
                Kind::Update => {
                    let (sent, generation) = workload.update(&client, &key, &value).await?;
                    let mut l = lock(&live);
                    l.values.insert(key.clone(), value);
                    l.busy.insert(key.clone(), Some(generation));
                    Change {
                        kind,
                        key,
                        sent,
                        generation,
                    }
                }
                Kind::Create => {
                    let sent = workload.create(&client, &key, &value).await?;
                    let mut l = lock(&live);
                    l.values.insert(key.clone(), value);
                    l.keys.push(key.clone());
                    l.busy.insert(key.clone(), Some(1));
                    Change {
                        kind,
                        key,
                        sent,
                        generation: 1,
                    }
                }
                Kind::Delete => {
                    let sent = workload.delete(&client, &key).await?;
                    let mut l = lock(&live);
                    l.values.remove(&key);
                    l.keys.retain(|k| k != &key);
                    l.deleted.insert(key.clone());
                    l.busy.remove(&key);
                    Change {
                        kind,
                        key,
                        sent,
                        generation: 0,
                    }
                }
            };
            Ok(Some(change))
        });
    }
    while let Some(result) = tasks.join_next().await {
        if let Some(change) = joined(Some(result))? {
            changes.push(change);
        }
    }
    progress.finish();

    // Every change completes: updates and creates reach their generation, deletes vanish.
    let wait_progress = Progress::new("complete", changes.len() as u64, "changes", quiet);
    let waited = populated
        .tracker
        .wait(
            Duration::from_secs(args.drain_timeout),
            |templates| {
                let mut done = 0;
                let mut missing = Vec::new();
                for c in &changes {
                    let ok = templates.get(&c.key).is_some_and(|s| match c.kind {
                        Kind::Delete => s.deleted.is_some(),
                        _ => s.completed.contains_key(&c.generation),
                    });
                    if ok {
                        done += 1;
                    } else if missing.len() < 3 {
                        missing.push(format!("{} {}/{}", c.kind.name(), c.key.0, c.key.1));
                    }
                }
                (
                    Count {
                        done,
                        total: changes.len(),
                    },
                    missing,
                )
            },
            |c| wait_progress.set_position(c.done as u64),
        )
        .await;
    wait_progress.finish();
    if let Err(e) = waited {
        report
            .problems
            .push(format!("not every change completed: {e}"));
    }
    let churn_s = started.elapsed().as_secs_f64();
    let writes = window.finish(target, "churn.", report).await;
    let observed = monitor.stop().await;

    // Latencies and rates.
    let snapshot = populated.tracker.snapshot();
    let mut latencies: BTreeMap<Kind, Vec<f64>> = BTreeMap::new();
    let mut sent_times = Vec::new();
    let mut done_times = Vec::new();
    for c in &changes {
        sent_times.push(c.sent.saturating_duration_since(started).as_secs_f64());
        let Some(state) = snapshot.get(&c.key) else {
            continue;
        };
        let done = match c.kind {
            Kind::Delete => state.deleted,
            _ => state.completed.get(&c.generation).copied(),
        };
        if let Some(done) = done {
            done_times.push(done.saturating_duration_since(started).as_secs_f64());
            latencies
                .entry(c.kind)
                .or_default()
                .push(done.saturating_duration_since(c.sent).as_secs_f64() * 1000.0);
        }
    }
    report.figures.push(Figure::new(
        "churn.changes",
        changes.len() as f64,
        unit::COUNT,
    ));
    report.figures.push(
        Figure::new(
            "churn.rate_sent",
            changes.len() as f64 / args.duration.max(1) as f64,
            unit::PER_S,
        )
        .describe("changes sent per second (asked: --rate)"),
    );
    report.figures.push(
        Figure::new("churn.skipped", skipped as f64, unit::COUNT)
            .describe("ticks with no settled template to change"),
    );
    report.figures.push(
        Figure::new("churn.lagged", lagged as f64, unit::COUNT)
            .describe("ticks dropped because --concurrency changes were in flight"),
    );
    let mut all = Vec::new();
    for (kind, values) in &latencies {
        report.figures.push(Figure::new(
            format!("churn.{}", kind.name()),
            values.len() as f64,
            unit::COUNT,
        ));
        let s = Summary::new(values.iter().copied());
        for (p, name) in [(50.0, "p50"), (95.0, "p95"), (99.0, "p99"), (100.0, "max")] {
            if let Some(v) = s.percentile(p) {
                report.figures.push(
                    Figure::new(format!("latency_ms.{}.{name}", kind.name()), v, unit::MS)
                        .describe(match kind {
                            Kind::Delete => "delete sent → template gone (its objects deleted)",
                            _ => "change sent → its generation Completed",
                        }),
                );
            }
        }
        all.extend(values.iter().copied());
    }
    report
        .series
        .push(burst::per_second("sent_per_s", &sent_times));
    report
        .series
        .push(burst::per_second("completed_per_s", &done_times));
    report.series.push(burst::cdf("latency_cdf", &all));
    observed.add_figures(report, (changes.len(), "changes"), 0);
    report.records.extend(scale_events);
    report.figures.push(
        Figure::new("churn.seconds", churn_s, unit::S)
            .describe("churn start → every change complete"),
    );

    // Correctness.
    let missed = verify_final_state(target, &populated, &live, args.populate.objects).await?;
    report.figures.push(
        Figure::new("missed_applies", missed.len() as f64, unit::COUNT)
            .describe("objects whose final state is not their template's latest (or that outlived their template)"),
    );
    if !missed.is_empty() {
        report.problems.push(format!(
            "{} objects missed their template's latest state, e.g. {}",
            missed.len(),
            missed[..missed.len().min(3)].join("; ")
        ));
    }
    match writes {
        Some(writes) => {
            let (duplicated, unwritten, examples) =
                duplicates(&writes, &changes, args.populate.objects);
            report.figures.push(
                Figure::new("duplicated_applies", duplicated as f64, unit::COUNT).describe(
                    "writes of an object beyond one per change of its template (audit log)",
                ),
            );
            report.figures.push(
                Figure::new("unwritten_changes", unwritten as f64, unit::COUNT)
                    .describe("object × change pairs with no write by a worker (audit log)"),
            );
            if duplicated > 0 || unwritten > 0 {
                report.problems.push(format!(
                    "{duplicated} duplicated and {unwritten} missing writes, e.g. {}",
                    examples.join("; ")
                ));
            }
        }
        None => report.notes.push(
            "duplicated applies are counted from devcluster's audit log; not available here".into(),
        ),
    }
    burst::finish(target, &populated, args.populate.keep, quiet, report).await?;
    Ok(panels())
}

fn joined(
    result: Option<std::result::Result<Result<Option<Change>>, tokio::task::JoinError>>,
) -> Result<Option<Change>> {
    match result {
        None => Ok(None),
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(Error::Cluster(format!("a change task failed: {e}"))),
    }
}

/// A random live template whose latest generation completed and that has no change in flight.
fn pick_settled(
    live: &Mutex<Live>,
    populated: &Populated,
    rng: &mut impl rand::Rng,
) -> Option<Key> {
    let mut l = lock(live);
    if l.keys.is_empty() {
        return None;
    }
    for _ in 0..8 {
        let key = l.keys[rng.random_range(0..l.keys.len())].clone();
        let Some(state) = populated.tracker.state(&key) else {
            continue;
        };
        match l.busy.get(&key) {
            None => {}
            Some(Some(g)) if state.completed.contains_key(g) => {
                l.busy.remove(&key);
            }
            Some(_) => continue,
        }
        if state.completed.contains_key(&state.generation) {
            return Some(key);
        }
    }
    None
}

/// Objects whose final state is wrong: a live template's object missing or holding another
/// value, or a deleted template's object still there. Deleted objects are garbage-collected
/// asynchronously, so this retries for a minute before it reports.
async fn verify_final_state(
    target: &Target,
    populated: &Populated,
    live: &Mutex<Live>,
    objects: usize,
) -> Result<Vec<String>> {
    let (values, deleted) = {
        let l = lock(live);
        (l.values.clone(), l.deleted.clone())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut present: HashMap<(String, String), Option<String>> = HashMap::new();
        for ns in &populated.workload.namespaces {
            let api: Api<ConfigMap> = Api::namespaced(target.client.clone(), ns);
            let list = api
                .list(&ListParams::default().labels("kubetemplater.io/template-name"))
                .await
                .map_err(|e| Error::Cluster(format!("listing ConfigMaps in {ns}: {e}")))?;
            for cm in list.items {
                let name = cm.metadata.name.clone().unwrap_or_default();
                let v = cm.data.as_ref().and_then(|d| d.get("v").cloned());
                present.insert((ns.clone(), name), v);
            }
        }
        let mut wrong = Vec::new();
        for ((ns, name), value) in &values {
            for j in 0..objects {
                match present.get(&(ns.clone(), format!("{name}-{j}"))) {
                    Some(Some(v)) if v == value => {}
                    Some(v) => wrong.push(format!("{ns}/{name}-{j} holds {v:?}, want {value:?}")),
                    None => wrong.push(format!("{ns}/{name}-{j} is missing")),
                }
            }
        }
        for (ns, name) in &deleted {
            for j in 0..objects {
                if present.contains_key(&(ns.clone(), format!("{name}-{j}"))) {
                    wrong.push(format!("{ns}/{name}-{j} outlived its template"));
                }
            }
        }
        if wrong.is_empty() || Instant::now() >= deadline {
            return Ok(wrong);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// From the window's audit events: writes of objects by workers beyond one per change of their
/// template, and object × change pairs no worker wrote.
fn duplicates(
    writes: &crate::apicount::Writes,
    changes: &[Change],
    objects: usize,
) -> (usize, usize, Vec<String>) {
    let mut expected: HashMap<(String, String), usize> = HashMap::new();
    for c in changes {
        if c.kind == Kind::Delete {
            continue;
        }
        for j in 0..objects {
            *expected
                .entry((c.key.0.clone(), format!("{}-{j}", c.key.1)))
                .or_insert(0) += 1;
        }
    }
    let mut written: HashMap<(String, String), Vec<String>> = HashMap::new();
    for e in &writes.events {
        let Some(o) = &e.object_ref else { continue };
        if !e.user.component().starts_with("kubetemplater:worker")
            || o.resource != "configmaps"
            || !matches!(e.verb.as_str(), "create" | "update" | "patch")
            || !e.succeeded()
        {
            continue;
        }
        written
            .entry((o.namespace.clone(), o.name.clone()))
            .or_default()
            .push(e.user.component());
    }
    let (mut duplicated, mut unwritten) = (0, 0);
    let mut examples = Vec::new();
    for (object, by) in &written {
        let want = expected.get(object).copied().unwrap_or(0);
        if by.len() > want {
            duplicated += by.len() - want;
            if examples.len() < 3 {
                examples.push(format!(
                    "{}/{} written {} times for {want} changes (by {})",
                    object.0,
                    object.1,
                    by.len(),
                    by.join(", ")
                ));
            }
        }
    }
    for (object, want) in &expected {
        let got = written.get(object).map_or(0, Vec::len);
        if got < *want {
            unwritten += want - got;
            if examples.len() < 3 {
                examples.push(format!(
                    "{}/{} written {got} times for {want} changes",
                    object.0, object.1
                ));
            }
        }
    }
    (duplicated, unwritten, examples)
}
