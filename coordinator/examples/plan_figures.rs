//! Prints how many buckets the planner (`coordinator::plan`) moves when workers join and leave,
//! against the ideal share, and how even the resulting loads are. The unit tests check a few
//! fixed cases; this sweeps many sets of worker names, cluster sizes and weight profiles, to
//! choose the parameters and to see where the bounds stop holding. The `plan` bench measures
//! time, not this.
//!
//! ```text
//! cargo run --release -p kubetemplater-coordinator --example plan_figures [vnodes] [epsilon] [count_epsilon]
//! ```
//!
//! For each profile and N: a plan from scratch for N workers, then join, leave, join, leave (a
//! pseudo-random worker leaves), each planned from the previous plan, over 20 sets of worker
//! names (4 at N = 100), and each plan checked to be a fixed point. Columns: the moved share
//! of buckets over the ideal share ([`Summary::ratio_to_ideal`]) for joins and for leaves
//! (min, mean, max), how many of all events were above 1.15 and below 0.85 times the ideal,
//! the heaviest worker over the mean weight and the busiest worker over the mean bucket count
//! (max over all plans).

use coordinator::plan::{Input, Params, Summary, WorkerId, assign};

/// Buckets, as installed by default.
const B: usize = engine::bucket::DEFAULT_BUCKETS as usize;

/// A small deterministic generator (the figures must not change between runs).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Name set 0 is `worker-0`, `worker-1`, …; the others look like pod names.
fn names(set: u64, n: usize) -> Vec<WorkerId> {
    let mut r = Lcg(set + 7);
    (0..n)
        .map(|i| {
            if set == 0 {
                WorkerId::from(format!("worker-{i}"))
            } else {
                WorkerId::from(format!(
                    "kubetemplater-worker-{:05x}-{i}",
                    r.next() & 0xf_ffff
                ))
            }
        })
        .collect()
}

/// Bucket weights of `namespaces` namespaces holding `objects` objects in all, namespace `k`
/// holding a share proportional to `k^-zipf_s` (0: all the same).
fn bucket_weights(namespaces: usize, objects: u64, zipf_s: f64) -> Vec<u64> {
    let mut w = vec![0u64; B];
    let h: f64 = (1..=namespaces)
        .map(|k| 1.0 / (k as f64).powf(zipf_s))
        .sum();
    for k in 1..=namespaces {
        let size = ((objects as f64) / h / (k as f64).powf(zipf_s)).round() as u64;
        let b = engine::bucket::bucket(
            &engine::bucket::kubetemplate_shard_key(&format!("ns-{k}")),
            engine::bucket::DEFAULT_BUCKET_COUNT,
        );
        w[b as usize] += size;
    }
    w
}

#[derive(Default)]
struct Stats {
    join: Vec<f64>,
    leave: Vec<f64>,
    max_over_mean: f64,
    max_buckets: f64,
}

impl Stats {
    fn event(&mut self, s: &Summary, joined: bool) {
        if let Some(r) = s.ratio_to_ideal() {
            if joined {
                self.join.push(r);
            } else {
                self.leave.push(r);
            }
        }
        self.max_over_mean = self.max_over_mean.max(s.max_over_mean());
        let even = B as f64 / s.workers_after as f64;
        self.max_buckets = self.max_buckets.max(f64::from(s.max_buckets) / even);
    }

    fn print(&self, n: usize) {
        let spread = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            (min, mean, v.iter().copied().fold(0.0, f64::max))
        };
        let (jn, jm, jx) = spread(&self.join);
        let (ln, lm, lx) = spread(&self.leave);
        let all = || self.join.iter().chain(&self.leave);
        let above = all().filter(|r| **r > 1.15).count();
        let below = all().filter(|r| **r < 0.85).count();
        println!(
            "{n:>4} | {jn:>5.3} {jm:>5.3} {jx:>5.3} | {ln:>5.3} {lm:>5.3} {lx:>5.3} | {above:>5} {below:>5} {:>4} | {:>8.2} {:>9.2}",
            self.join.len() + self.leave.len(),
            self.max_over_mean,
            self.max_buckets,
        );
    }
}

fn plan(
    workers: &[WorkerId],
    weights: &[u64],
    current: &[Option<WorkerId>],
    params: Params,
) -> Vec<Option<WorkerId>> {
    assign(&Input {
        workers,
        weights,
        current,
        params,
    })
    .owners
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut p = Params::default();
    if let Some(v) = args.get(1) {
        p.vnodes = v.parse().expect("vnodes: a number");
    }
    if let Some(v) = args.get(2) {
        p.epsilon = v.parse().expect("epsilon: a number");
    }
    if let Some(v) = args.get(3) {
        p.count_epsilon = v.parse().expect("count_epsilon: a number");
    }
    println!("{p:?}");
    let profiles: [(&str, Vec<u64>); 4] = [
        ("empty buckets", vec![0; B]),
        ("100 namespaces × 5 objects", bucket_weights(100, 500, 0.0)),
        ("one object per bucket", vec![1; B]),
        (
            "10,000 namespaces, 1M objects, Zipf",
            bucket_weights(10_000, 1_000_000, 1.0),
        ),
    ];
    for (profile, weights) in &profiles {
        println!("== {profile}");
        println!(
            "   N | join: min  mean   max | leave: min  mean   max | >1.15 <0.85  all | max/mean maxB/even"
        );
        for n in [2usize, 3, 4, 8, 16, 100] {
            let sets = if n >= 100 { 4 } else { 20 };
            let mut st = Stats::default();
            for set in 0..sets {
                let mut pool = names(set, n + 2).into_iter();
                let mut workers: Vec<WorkerId> = pool.by_ref().take(n).collect();
                let mut owners = plan(&workers, weights, &[], p);
                let mut r = Lcg(set * 31 + n as u64);
                for step in 0..4 {
                    let before = workers.clone();
                    let joined = step % 2 == 0;
                    if joined {
                        workers.extend(pool.next());
                    } else {
                        let gone = (r.next() as usize) % workers.len();
                        workers.remove(gone);
                    }
                    let next = plan(&workers, weights, &owners, p);
                    st.event(
                        &Summary::new(&before, &workers, &owners, &next, weights),
                        joined,
                    );
                    assert_eq!(plan(&workers, weights, &next, p), next, "not a fixed point");
                    owners = next;
                }
            }
            st.print(n);
        }
    }
}
