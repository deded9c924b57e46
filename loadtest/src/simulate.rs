//! Scenario `simulate`: the coordinator's assignment logic alone, at a scale this machine
//! cannot host as processes.
//!
//! Builds the bucket weights of a cluster (objects over namespaces with Zipf sizes, each
//! namespace in its real bucket), plans an assignment for the initial workers from scratch, then
//! applies a seeded sequence of events (a worker joins, leaves gracefully, or dies) and replans
//! after each from the previous plan, exactly as the coordinator's planner does
//! ([`coordinator::plan::assign`]: a ring over the eligible workers, then the sticky
//! bounded-load plan). For the planner a death and a graceful leave are the same change of the
//! worker set; they are reported separately all the same.
//!
//! Per event it records the buckets and weight moved against the ideal
//! ([`coordinator::plan::Summary`]), the heaviest worker's load against the mean and against the
//! best any assignment could do, the time to rebalance (ring + plan, one thread) and the memory
//! (peak resident set during the rebalance). It checks every plan: every bucket owned by an
//! eligible worker, the count cap and the weight bound of the planner's docs held, and (unless
//! `--no-verify`) that planning again from the plan changes nothing (the fixed point).
//!
//! **Buckets are the unit of movement.** With the default 1,024 buckets and 1,000 workers a
//! worker holds about one bucket: a join or leave moves whole buckets, so the ratio to the ideal
//! share is quantised, and the load cannot be balanced finer than a bucket. Fleets of that size
//! need more buckets (`--buckets 65536`); the number of buckets is fixed at install time.

use std::num::NonZeroU32;
use std::time::Instant;

use coordinator::plan::{
    Assignment, DEFAULT_COUNT_EPSILON, DEFAULT_EPSILON, DEFAULT_VNODES, Params, Summary, WorkerId,
    assign_on,
};
use coordinator::ring::Ring;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::host::{self, Memory};
use crate::plot::Panel;
use crate::progress::Progress;
use crate::report::{Figure, Report, Series, unit};
use crate::stats;
use crate::zipf;
use crate::{Error, Result};

/// Name of the scenario.
pub const SCENARIO: &str = "simulate";

/// Below this many buckets per worker the report warns that moves and loads are quantised.
const FEW_BUCKETS_PER_WORKER: f64 = 16.0;

/// Arguments of `loadtest simulate`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SimulateArgs {
    /// Workers at the start.
    #[arg(long, default_value_t = 1_000)]
    pub workers: usize,
    /// Objects (KubeTemplates) in the cluster.
    #[arg(long, default_value_t = 1_000_000)]
    pub objects: u64,
    /// Namespaces the objects are spread over.
    #[arg(long, default_value_t = 100_000)]
    pub namespaces: usize,
    /// Zipf exponent of namespace sizes: the namespace of rank k holds a share ∝ k^-zipf
    /// (0: all the same size).
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Number of buckets B (fixed at install time; the default is the system's).
    #[arg(long, default_value_t = engine::bucket::DEFAULT_BUCKETS)]
    pub buckets: u32,
    /// Events after the initial plan: workers joining, leaving gracefully, dying.
    #[arg(long, default_value_t = 50)]
    pub events: usize,
    /// Seed of the event sequence (the cluster itself does not depend on it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Planner weight slack ε.
    #[arg(long, default_value_t = DEFAULT_EPSILON)]
    pub epsilon: f64,
    /// Planner bucket-count slack.
    #[arg(long, default_value_t = DEFAULT_COUNT_EPSILON)]
    pub count_epsilon: f64,
    /// Virtual nodes per worker on the ring.
    #[arg(long, default_value_t = DEFAULT_VNODES)]
    pub vnodes: usize,
    /// Skip the fixed-point check (which plans a second time after every event).
    #[arg(long)]
    pub no_verify: bool,
}

/// What happens to the fleet in one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The plan from scratch for the initial workers.
    Initial,
    /// A new worker joins.
    Join,
    /// A worker leaves gracefully (drains, releases its buckets).
    Leave,
    /// A worker dies (its Lease expires).
    Die,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Die => "die",
        }
    }
}

/// The workers, and the seeded choice of what happens next.
#[derive(Debug)]
struct Fleet {
    workers: Vec<WorkerId>,
    next_id: usize,
    target: usize,
    rng: ChaCha8Rng,
}

impl Fleet {
    fn new(workers: usize, seed: u64) -> Self {
        Self {
            workers: (0..workers).map(worker_name).collect(),
            next_id: workers,
            target: workers,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Applies the next event: a join is likelier below the initial size, a departure above it;
    /// the last worker never leaves. Returns its kind and the worker concerned.
    fn next_event(&mut self) -> (EventKind, WorkerId) {
        let n = self.workers.len();
        let p_join = match n {
            0 | 1 => 1.0,
            n if n < self.target => 0.6,
            n if n > self.target => 0.4,
            _ => 0.5,
        };
        let r: f64 = self.rng.random();
        if r < p_join {
            let w = worker_name(self.next_id);
            self.next_id += 1;
            self.workers.push(w.clone());
            return (EventKind::Join, w);
        }
        let kind = if r < p_join + (1.0 - p_join) / 2.0 {
            EventKind::Leave
        } else {
            EventKind::Die
        };
        let i = self.rng.random_range(0..n);
        (kind, self.workers.swap_remove(i))
    }
}

fn worker_name(i: usize) -> WorkerId {
    WorkerId::from(format!("worker-{i}"))
}

/// One row of the report's `records`: an event and the rebalance after it.
#[derive(Debug, Clone, Serialize)]
struct EventRecord {
    event: usize,
    kind: EventKind,
    worker: Option<String>,
    workers_before: usize,
    workers_after: usize,
    buckets_moved: usize,
    /// Buckets the ideal moves: `ideal_fraction · B`.
    ideal_buckets: f64,
    ratio_to_ideal: Option<f64>,
    weight_moved: u64,
    weight_ratio_to_ideal: Option<f64>,
    max_weight: u64,
    mean_weight: f64,
    max_over_mean: f64,
    /// The least max/mean any assignment reaches: `max(mean, heaviest bucket) / mean`.
    load_floor: f64,
    max_buckets: u32,
    buckets_max_over_mean: f64,
    weight_cap: u64,
    count_cap: u32,
    forced: usize,
    fallback: u32,
    over_bound: u32,
    ring_ms: f64,
    plan_ms: f64,
    rebalance_ms: f64,
    rss_before_bytes: Option<u64>,
    /// Peak resident set during the rebalance (or since start when it cannot be reset).
    peak_rss_bytes: Option<u64>,
    fixed_point: Option<bool>,
    /// Join events: the new worker's buckets over the even share B/N.
    new_worker_bucket_share: Option<f64>,
    /// Join events: the new worker's objects over the mean per worker W/N.
    new_worker_weight_share: Option<f64>,
}

/// The inputs of every plan: bucket weights and derived totals.
#[derive(Debug)]
struct Cluster {
    weights: Vec<u64>,
    total: u64,
    heaviest: u64,
}

/// Runs the scenario. Fills `report` (parameters, figures, series, records, notes, problems)
/// and returns the panels of its plot.
pub fn run(args: &SimulateArgs, quiet: bool, report: &mut Report) -> Result<Vec<Panel>> {
    if args.workers == 0 {
        return Err(Error::InvalidArgument(
            "--workers must be at least 1".into(),
        ));
    }
    let buckets = engine::bucket::bucket_count(args.buckets)
        .map_err(|e| Error::InvalidArgument(format!("--buckets: {e}")))?;
    report.parameters = serde_json::to_value(args).map_err(Error::Serialize)?;
    let params = Params {
        epsilon: args.epsilon,
        count_epsilon: args.count_epsilon,
        vnodes: args.vnodes,
    };

    let cluster = build_cluster(args, buckets);
    let can_reset_peak = host::reset_peak_rss();

    let progress = Progress::new(SCENARIO, args.events as u64, "events", quiet);
    progress.message("initial plan");
    let mut fleet = Fleet::new(args.workers, args.seed);
    let unassigned: Vec<Option<WorkerId>> = vec![None; cluster.weights.len()];
    let planner = Planner {
        cluster: &cluster,
        params: &params,
        verify: !args.no_verify,
    };
    let (mut plan, first) = planner.rebalance(
        &Change {
            event: 0,
            kind: EventKind::Initial,
            worker: None,
            before: &[],
            after: &fleet.workers,
            current: &unassigned,
        },
        &mut report.problems,
    );
    let mut records = vec![first];
    for event in 1..=args.events {
        let before = fleet.workers.clone();
        let (kind, worker) = fleet.next_event();
        let (next, record) = planner.rebalance(
            &Change {
                event,
                kind,
                worker: Some(&worker),
                before: &before,
                after: &fleet.workers,
                current: &plan.owners,
            },
            &mut report.problems,
        );
        plan = next;
        progress.message(format!(
            "{} {}: moved/ideal {}, {:.1} ms",
            record.kind.as_str(),
            worker.as_str(),
            record
                .ratio_to_ideal
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            record.rebalance_ms
        ));
        records.push(record);
        progress.step();
    }
    progress.finish();

    summarise(args, &cluster, &records, can_reset_peak, report);
    report.records = records
        .iter()
        .map(serde_json::to_value)
        .collect::<std::result::Result<_, _>>()
        .map_err(Error::Serialize)?;
    Ok(panels())
}

fn build_cluster(args: &SimulateArgs, buckets: NonZeroU32) -> Cluster {
    let sizes = zipf::namespace_sizes(args.namespaces, args.objects, args.zipf);
    let weights = zipf::bucket_weights(&sizes, buckets);
    let total = weights.iter().sum();
    let heaviest = weights.iter().copied().max().unwrap_or(0);
    Cluster {
        weights,
        total,
        heaviest,
    }
}

/// One change of the worker set.
#[derive(Debug)]
struct Change<'a> {
    event: usize,
    kind: EventKind,
    /// The worker that joined or left (none for the initial plan).
    worker: Option<&'a WorkerId>,
    before: &'a [WorkerId],
    after: &'a [WorkerId],
    /// The plan for `before` (all `None` for the initial plan).
    current: &'a [Option<WorkerId>],
}

/// The planner as the coordinator runs it, measured and checked.
#[derive(Debug)]
struct Planner<'a> {
    cluster: &'a Cluster,
    params: &'a Params,
    /// Check the fixed point (plan a second time).
    verify: bool,
}

impl Planner<'_> {
    /// Plans for `change.after` from `change.current`, measures and checks the plan.
    fn rebalance(
        &self,
        change: &Change<'_>,
        problems: &mut Vec<String>,
    ) -> (Assignment, EventRecord) {
        let Change {
            event,
            kind,
            worker,
            before,
            after,
            current,
        } = *change;
        let (cluster, params, verify) = (self.cluster, self.params, self.verify);
        host::reset_peak_rss();
        let rss_before = Memory::now().rss_bytes;
        let start = Instant::now();
        let ring = Ring::new(after.iter().cloned(), params.vnodes);
        let ring_done = Instant::now();
        let plan = assign_on(&ring, &cluster.weights, current, params);
        let plan_done = Instant::now();
        let memory = Memory::now();

        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let summary = Summary::new(before, after, current, &plan.owners, &cluster.weights);
        let fixed_point = verify.then(|| {
        let again = assign_on(&ring, &cluster.weights, &plan.owners, params);
        let moved = coordinator::plan::moves(&plan.owners, &again.owners).len();
        if moved > 0 {
            problems.push(format!(
                "event {event} ({}): planning again from the plan moves {moved} buckets (not a fixed point)",
                kind.as_str()
            ));
        }
        moved == 0
    });
        check(event, kind, &plan, after, cluster, problems);

        let n = after.len().max(1) as f64;
        let b = cluster.weights.len() as f64;
        let mean_weight = summary.mean_weight;
        let load_floor = if mean_weight > 0.0 {
            (cluster.heaviest as f64).max(mean_weight) / mean_weight
        } else {
            0.0
        };
        let joined = worker
            .filter(|_| kind == EventKind::Join)
            .and_then(|w| plan.loads.get(w));
        let record = EventRecord {
            event,
            kind,
            worker: worker.map(|w| w.as_str().to_owned()),
            workers_before: before.len(),
            workers_after: after.len(),
            buckets_moved: summary.buckets_moved,
            ideal_buckets: summary.ideal_fraction * b,
            ratio_to_ideal: (kind != EventKind::Initial)
                .then(|| summary.ratio_to_ideal())
                .flatten(),
            weight_moved: summary.weight_moved,
            weight_ratio_to_ideal: (kind != EventKind::Initial)
                .then(|| summary.weight_ratio_to_ideal())
                .flatten(),
            max_weight: summary.max_weight,
            mean_weight,
            max_over_mean: summary.max_over_mean(),
            load_floor,
            max_buckets: summary.max_buckets,
            buckets_max_over_mean: f64::from(summary.max_buckets) / (b / n),
            weight_cap: plan.weight_cap,
            count_cap: plan.count_cap,
            forced: plan.forced.len(),
            fallback: plan.placement.fallback,
            over_bound: plan.placement.over_bound,
            ring_ms: ms(ring_done - start),
            plan_ms: ms(plan_done - ring_done),
            rebalance_ms: ms(plan_done - start),
            rss_before_bytes: rss_before,
            peak_rss_bytes: memory.peak_rss_bytes,
            fixed_point,
            new_worker_bucket_share: joined.map(|l| f64::from(l.buckets) / (b / n)),
            new_worker_weight_share: joined
                .filter(|_| mean_weight > 0.0)
                .map(|l| l.weight as f64 / mean_weight),
        };
        (plan, record)
    }
}

/// The planner's guarantees (module docs of `coordinator::plan`), checked on one plan.
fn check(
    event: usize,
    kind: EventKind,
    plan: &Assignment,
    workers: &[WorkerId],
    cluster: &Cluster,
    problems: &mut Vec<String>,
) {
    let what = format!("event {event} ({})", kind.as_str());
    let unowned = plan.owners.iter().filter(|o| o.is_none()).count();
    if unowned > 0 && !workers.is_empty() {
        problems.push(format!("{what}: {unowned} buckets without owner"));
    }
    let strangers = plan
        .owners
        .iter()
        .flatten()
        .filter(|o| !plan.loads.contains_key(*o))
        .count();
    if strangers > 0 || plan.loads.len() != workers.len() {
        problems.push(format!(
            "{what}: {strangers} buckets owned by a worker that is not eligible"
        ));
    }
    if plan.max_buckets() > plan.count_cap {
        problems.push(format!(
            "{what}: a worker holds {} buckets, above the count cap {}",
            plan.max_buckets(),
            plan.count_cap
        ));
    }
    if plan.placement.over_bound == 0 && !workers.is_empty() {
        // Every worker within max(cap, ⌈W/N⌉ + its heaviest bucket).
        let mut heaviest = std::collections::BTreeMap::<&WorkerId, u64>::new();
        for (b, owner) in plan.owners.iter().enumerate() {
            if let Some(o) = owner {
                let h = heaviest.entry(o).or_default();
                *h = (*h).max(cluster.weights[b]);
            }
        }
        let ceil_even = cluster.total.div_ceil(workers.len() as u64);
        let over: Vec<_> = plan
            .loads
            .iter()
            .filter(|(w, load)| {
                let h = heaviest.get(w).copied().unwrap_or(0);
                load.weight > plan.weight_cap.max(ceil_even.saturating_add(h))
            })
            .collect();
        if !over.is_empty() {
            problems.push(format!(
                "{what}: {} workers above the weight bound max(cap, ⌈W/N⌉ + heaviest)",
                over.len()
            ));
        }
    }
}

/// Figures, series and notes from the records.
fn summarise(
    args: &SimulateArgs,
    cluster: &Cluster,
    records: &[EventRecord],
    can_reset_peak: bool,
    report: &mut Report,
) {
    let events = || records.iter().filter(|r| r.kind != EventKind::Initial);
    let of_kind = |k: EventKind| records.iter().filter(move |r| r.kind == k);
    let ratio = stats::Summary::new(events().filter_map(|r| r.ratio_to_ideal));
    let weight_ratio = stats::Summary::new(events().filter_map(|r| r.weight_ratio_to_ideal));
    let max_over_mean = stats::Summary::new(records.iter().map(|r| r.max_over_mean));
    let over_floor = stats::Summary::new(
        records
            .iter()
            .filter(|r| r.load_floor > 0.0)
            .map(|r| r.max_over_mean / r.load_floor),
    );
    let bucket_balance = stats::Summary::new(records.iter().map(|r| r.buckets_max_over_mean));
    let rebalance = stats::Summary::new(events().map(|r| r.rebalance_ms));
    let ring = stats::Summary::new(events().map(|r| r.ring_ms));
    let plan = stats::Summary::new(events().map(|r| r.plan_ms));
    let growth = stats::Summary::new(
        records
            .iter()
            .filter_map(|r| Some(r.peak_rss_bytes?.saturating_sub(r.rss_before_bytes?) as f64)),
    );
    let peak_rss = records.iter().filter_map(|r| r.peak_rss_bytes).max();
    let workers = stats::Summary::new(records.iter().map(|r| r.workers_after as f64));
    let b = cluster.weights.len();
    let nonempty = cluster.weights.iter().filter(|w| **w > 0).count();

    let mut figures = Vec::new();
    let mut fig = |name: &str, value: Option<f64>, unit: &str, description: &str| {
        if let Some(value) = value {
            figures.push(Figure::new(name, value, unit).describe(description));
        }
    };
    let n0 = args.workers as f64;
    fig(
        "workers.initial",
        Some(n0),
        unit::WORKERS,
        "workers at the start",
    );
    fig(
        "workers.min",
        workers.min(),
        unit::WORKERS,
        "fewest workers during the run",
    );
    fig(
        "workers.max",
        workers.max(),
        unit::WORKERS,
        "most workers during the run",
    );
    fig(
        "buckets",
        Some(b as f64),
        unit::BUCKETS,
        "number of buckets B",
    );
    fig(
        "buckets.nonempty",
        Some(nonempty as f64),
        unit::BUCKETS,
        "buckets holding objects",
    );
    fig(
        "buckets_per_worker",
        Some(b as f64 / n0),
        unit::BUCKETS,
        "B / initial workers: the granularity of moves and loads",
    );
    fig(
        "objects",
        Some(cluster.total as f64),
        unit::OBJECTS,
        "objects in all buckets",
    );
    fig(
        "namespaces",
        Some(args.namespaces as f64),
        unit::NAMESPACES,
        "namespaces (Zipf sizes)",
    );
    fig(
        "bucket_weight.max",
        Some(cluster.heaviest as f64),
        unit::OBJECTS,
        "objects in the heaviest bucket",
    );
    for k in [EventKind::Join, EventKind::Leave, EventKind::Die] {
        fig(
            &format!("events.{}", k.as_str()),
            Some(of_kind(k).count() as f64),
            unit::COUNT,
            &format!("events of kind {}", k.as_str()),
        );
    }
    let moved = "buckets moved / the ideal share (1.0 is ideal)";
    fig("ratio_to_ideal.mean", ratio.mean(), unit::RATIO, moved);
    fig(
        "ratio_to_ideal.p95",
        ratio.percentile(95.0),
        unit::RATIO,
        moved,
    );
    fig("ratio_to_ideal.max", ratio.max(), unit::RATIO, moved);
    for k in [EventKind::Join, EventKind::Leave, EventKind::Die] {
        let s = stats::Summary::new(of_kind(k).filter_map(|r| r.ratio_to_ideal));
        fig(
            &format!("ratio_to_ideal.{}.mean", k.as_str()),
            s.mean(),
            unit::RATIO,
            &format!("{moved}, {} events", k.as_str()),
        );
    }
    let joins = |f: fn(&EventRecord) -> Option<f64>| stats::Summary::new(events().filter_map(f));
    fig(
        "join.new_worker_bucket_share.mean",
        joins(|r| r.new_worker_bucket_share).mean(),
        unit::RATIO,
        "buckets a joining worker gets / B/N (1.0: its even share)",
    );
    fig(
        "join.new_worker_weight_share.mean",
        joins(|r| r.new_worker_weight_share).mean(),
        unit::RATIO,
        "objects a joining worker gets / W/N (1.0: the mean load)",
    );
    let wmoved = "weight moved / the ideal share of the weight";
    fig(
        "weight_ratio_to_ideal.mean",
        weight_ratio.mean(),
        unit::RATIO,
        wmoved,
    );
    fig(
        "weight_ratio_to_ideal.max",
        weight_ratio.max(),
        unit::RATIO,
        wmoved,
    );
    let load = "heaviest worker's objects / mean per worker";
    fig(
        "max_over_mean.mean",
        max_over_mean.mean(),
        unit::RATIO,
        load,
    );
    fig("max_over_mean.max", max_over_mean.max(), unit::RATIO, load);
    fig(
        "max_over_floor.max",
        over_floor.max(),
        unit::RATIO,
        "max/mean over the least any assignment reaches, max(mean, heaviest bucket)/mean",
    );
    fig(
        "buckets_max_over_mean.max",
        bucket_balance.max(),
        unit::RATIO,
        "busiest worker's bucket count / B/N",
    );
    fig(
        "initial_plan_ms",
        records.first().map(|r| r.rebalance_ms),
        unit::MS,
        "ring + plan from scratch",
    );
    let time = "ring + plan after one event, one thread";
    fig(
        "rebalance_ms.p50",
        rebalance.percentile(50.0),
        unit::MS,
        time,
    );
    fig(
        "rebalance_ms.p99",
        rebalance.percentile(99.0),
        unit::MS,
        time,
    );
    fig("rebalance_ms.max", rebalance.max(), unit::MS, time);
    fig(
        "ring_ms.p50",
        ring.percentile(50.0),
        unit::MS,
        "building the ring",
    );
    fig(
        "plan_ms.p50",
        plan.percentile(50.0),
        unit::MS,
        "planning on the ring",
    );
    fig(
        "peak_rss_bytes",
        peak_rss.map(|v| v as f64),
        unit::BYTES,
        "largest resident set of the process during a rebalance",
    );
    fig(
        "rebalance_rss_growth_bytes.max",
        growth.max(),
        unit::BYTES,
        "resident set growth during one rebalance (peak − before)",
    );
    fig(
        "forced.max",
        records.iter().map(|r| r.forced as f64).reduce(f64::max),
        unit::BUCKETS,
        "buckets that take their worker above the weight cap",
    );
    fig(
        "over_bound.max",
        records
            .iter()
            .map(|r| f64::from(r.over_bound))
            .reduce(f64::max),
        unit::BUCKETS,
        "buckets placed beyond the weight bound (heavy tails)",
    );
    if !args.no_verify {
        fig(
            "fixed_point_failures",
            Some(
                records
                    .iter()
                    .filter(|r| r.fixed_point == Some(false))
                    .count() as f64,
            ),
            unit::COUNT,
            "plans that change when planned again",
        );
    }
    report.figures = figures;

    let mut series = |name: &str, unit: &str, y: &dyn Fn(&EventRecord) -> Option<f64>| {
        let mut s = Series::new(name, unit, unit::EVENT);
        for r in events() {
            if let Some(v) = y(r) {
                s.push(r.event as f64, v);
            }
        }
        report.series.push(s);
    };
    series("ratio_to_ideal", unit::RATIO, &|r| r.ratio_to_ideal);
    series("weight_ratio_to_ideal", unit::RATIO, &|r| {
        r.weight_ratio_to_ideal
    });
    series("max_over_mean", unit::RATIO, &|r| Some(r.max_over_mean));
    series("load_floor", unit::RATIO, &|r| Some(r.load_floor));
    series("buckets_max_over_mean", unit::RATIO, &|r| {
        Some(r.buckets_max_over_mean)
    });
    series("rebalance_ms", unit::MS, &|r| Some(r.rebalance_ms));
    series("peak_rss_mib", "MiB", &|r| {
        r.peak_rss_bytes.map(|v| v as f64 / (1024.0 * 1024.0))
    });

    report.notes = notes(args, cluster, can_reset_peak);
    let bucket_share = joins(|r| r.new_worker_bucket_share).mean();
    let weight_share = joins(|r| r.new_worker_weight_share).mean();
    if let (Some(bs), Some(ws)) = (bucket_share, weight_share)
        && (bs < 0.5 || ws < 0.5)
    {
        report.notes.push(format!(
            "Joins: a new worker got {bs:.2}× its even share of buckets and {ws:.2}× the mean \
             load on average, so joins move less than the ideal. The planner's pull takes a \
             bucket (a home of the new worker, then one it is second candidate of) only from an \
             owner that still holds its even share afterwards (at least ⌊B/N⌋ buckets and \
             ⌊W/N⌋ objects), so the new worker gets only those buckets, and stays below its \
             floors when there are not enough of them (coordinator::plan, pass 1)."
        ));
    }
}

fn notes(args: &SimulateArgs, cluster: &Cluster, can_reset_peak: bool) -> Vec<String> {
    let b = cluster.weights.len() as f64;
    let n = args.workers as f64;
    let mut notes = vec![
        "The ideal share of buckets an event moves is max(removed/N_before, added/N_after) \
         (coordinator::plan::Summary); ratio_to_ideal = buckets moved / (ideal share · B)."
            .to_owned(),
        "For the planner a death and a graceful leave are the same change of the worker set; \
         they differ in the handoff (release vs Lease expiry), which this scenario does not run."
            .to_owned(),
        format!(
            "Rebalance time is Ring::new + plan::assign_on on one thread, as the coordinator \
             plans; the {} build.",
            if cfg!(debug_assertions) {
                "DEBUG (not comparable)"
            } else {
                "release"
            }
        ),
    ];
    if b / n < FEW_BUCKETS_PER_WORKER {
        notes.push(format!(
            "{b} buckets for {n} workers is {:.2} buckets per worker. Buckets are the unit of \
             movement and of load: a join or leave moves whole buckets (one bucket is {:.2}× \
             the ideal share here), so ratio_to_ideal is quantised, and no worker's load can be \
             finer than a bucket. Fleets this large need more buckets, fixed at install time \
             (for example --buckets 65536: {:.0} per worker).",
            b / n,
            n / b,
            65_536.0 / n
        ));
    }
    if cluster.total > 0 {
        let mean = cluster.total as f64 / n;
        let floor = (cluster.heaviest as f64).max(mean) / mean;
        if floor > 1.0 + args.epsilon {
            notes.push(format!(
                "The heaviest bucket holds {} objects, {floor:.1}× the mean load per worker \
                 ({mean:.0}): a namespace is never split, so no assignment gets max/mean below \
                 {floor:.1} (load_floor); compare max_over_mean with it.",
                cluster.heaviest
            ));
        }
    }
    notes.push(if can_reset_peak {
        "Memory: peak resident set during each rebalance (VmHWM reset through \
         /proc/self/clear_refs before it); the allocator reuses freed memory, so growth \
         understates what a fresh process would need."
            .to_owned()
    } else {
        "Memory: VmHWM could not be reset here (/proc/self/clear_refs), so peak_rss is the \
         peak since the process started."
            .to_owned()
    });
    notes
}

/// The plot: moves against the ideal, load against the mean and the floor, bucket balance, time.
fn panels() -> Vec<Panel> {
    vec![
        Panel::new(
            "moved / ideal per event",
            "ratio",
            &["ratio_to_ideal", "weight_ratio_to_ideal"],
        )
        .reference(1.0),
        Panel::new(
            "max / mean load (objects) per event",
            "ratio",
            &["max_over_mean", "load_floor"],
        )
        .reference(1.0),
        Panel::new(
            "max / mean buckets per worker",
            "ratio",
            &["buckets_max_over_mean"],
        )
        .reference(1.0),
        Panel::new("rebalance time", "ms", &["rebalance_ms"]),
    ]
}

/// One line for CI and the end of a run.
pub fn summary_line(report: &Report) -> String {
    let v = |name: &str| report.figure(name).map(|f| f.value);
    let f2 = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"));
    let f1 = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"));
    format!(
        "simulate {}: {} workers, {} buckets, {} events; moved/ideal mean {} p95 {} max {}; \
         max/mean load {} (floor {}); rebalance p50 {} ms p99 {} ms; peak RSS {} MiB",
        if report.ok { "ok" } else { "FAILED" },
        f1(v("workers.initial")).trim_end_matches(".0"),
        f1(v("buckets")).trim_end_matches(".0"),
        report
            .series("ratio_to_ideal")
            .map_or(0, |s| s.points.len()),
        f2(v("ratio_to_ideal.mean")),
        f2(v("ratio_to_ideal.p95")),
        f2(v("ratio_to_ideal.max")),
        f2(v("max_over_mean.max")),
        f2(report
            .series("load_floor")
            .and_then(|s| s.points.iter().map(|p| p.1).reduce(f64::max))),
        f1(v("rebalance_ms.p50")),
        f1(v("rebalance_ms.p99")),
        f1(v("peak_rss_bytes").map(|b| b / (1024.0 * 1024.0))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(workers: usize, objects: u64, events: usize) -> SimulateArgs {
        SimulateArgs {
            workers,
            objects,
            namespaces: 1_000,
            zipf: 1.1,
            buckets: 256,
            events,
            seed: 7,
            epsilon: DEFAULT_EPSILON,
            count_epsilon: DEFAULT_COUNT_EPSILON,
            vnodes: 64,
            no_verify: false,
        }
    }

    #[test]
    fn fleet_is_seeded_and_never_empty() {
        let mut a = Fleet::new(3, 42);
        let mut b = Fleet::new(3, 42);
        for _ in 0..200 {
            let (ka, wa) = a.next_event();
            assert_eq!((ka, wa), b.next_event());
            assert!(!a.workers.is_empty());
        }
        let kinds: Vec<_> = (0..100).map(|_| a.next_event().0).collect();
        for k in [EventKind::Join, EventKind::Leave, EventKind::Die] {
            assert!(kinds.contains(&k), "{k:?} never drawn");
        }
        let mut one = Fleet::new(1, 1);
        assert_eq!(one.next_event().0, EventKind::Join);
    }

    #[test]
    fn small_run_is_ok_and_complete() {
        let mut report = crate::report::tests_support::minimal(SCENARIO);
        let panels = run(&args(8, 10_000, 12), true, &mut report).unwrap();
        report.conclude();
        assert!(report.ok, "{:?}", report.problems);
        assert_eq!(report.records.len(), 13);
        assert_eq!(report.figure("objects").unwrap().value, 10_000.0);
        assert_eq!(report.figure("fixed_point_failures").unwrap().value, 0.0);
        let joins = report.figure("events.join").unwrap().value;
        let leaves = report.figure("events.leave").unwrap().value;
        let deaths = report.figure("events.die").unwrap().value;
        assert_eq!(joins + leaves + deaths, 12.0);
        assert_eq!(report.series("ratio_to_ideal").unwrap().points.len(), 12);
        for p in &report.series("max_over_mean").unwrap().points {
            assert!(p.1 >= 1.0);
        }
        assert!(!panels.is_empty());
        assert!(
            summary_line(&report).starts_with("simulate ok: 8 workers, 256 buckets, 12 events")
        );
    }

    #[test]
    fn few_buckets_per_worker_is_explained() {
        let mut a = args(100, 1_000, 0);
        a.buckets = 128;
        let cluster = build_cluster(&a, NonZeroU32::new(128).unwrap());
        let notes = notes(&a, &cluster, true);
        assert!(notes.iter().any(|n| n.contains("unit of movement")));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut report = crate::report::tests_support::minimal(SCENARIO);
        assert!(run(&args(0, 10, 1), true, &mut report).is_err());
        let mut a = args(2, 10, 1);
        a.buckets = 0;
        assert!(run(&a, true, &mut report).is_err());
    }
}
