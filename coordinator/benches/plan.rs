//! Planner cost for the default 1,024 buckets with Zipf-distributed namespace sizes, at 3, 16
//! and 100 workers: a plan from scratch (a new map), a replan with nothing changed (every tick
//! of the leader), a replan after one worker joined, and building the ring alone (most of a
//! plan's cost at many workers, see `plan::assign_on`).
//!
//! `cargo bench -p kubetemplater-coordinator --bench plan` (`-- --quick` for a short run).
//! How many buckets move, rather than how long it takes: the `plan_figures` example.

use std::hint::black_box;

use coordinator::plan::{Input, Params, WorkerId, assign, assign_on};
use coordinator::ring::Ring;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use engine::bucket::{DEFAULT_BUCKET_COUNT, DEFAULT_BUCKETS, bucket, kubetemplate_shard_key};

/// Namespaces, and objects in all of them.
const NAMESPACES: usize = 5_000;
const OBJECTS: f64 = 100_000.0;

/// Namespace `k` (from 1) holds a share of the objects proportional to `1/k`, at least one.
fn zipf_weights() -> Vec<u64> {
    let harmonic: f64 = (1..=NAMESPACES).map(|k| 1.0 / k as f64).sum();
    let mut weights = vec![0u64; DEFAULT_BUCKETS as usize];
    for k in 1..=NAMESPACES {
        let objects = (OBJECTS / harmonic / k as f64).round().max(1.0) as u64;
        let b = bucket(
            &kubetemplate_shard_key(&format!("namespace-{k}")),
            DEFAULT_BUCKET_COUNT,
        );
        weights[b as usize] += objects;
    }
    weights
}

fn workers(n: usize) -> Vec<WorkerId> {
    (0..n)
        .map(|i| WorkerId::from(format!("kubetemplater-worker-{i}")))
        .collect()
}

fn plan(
    workers: &[WorkerId],
    weights: &[u64],
    current: &[Option<WorkerId>],
) -> Vec<Option<WorkerId>> {
    assign(&Input {
        workers,
        weights,
        current,
        params: Params::default(),
    })
    .owners
}

fn bench(c: &mut Criterion) {
    let weights = zipf_weights();
    let params = Params::default();
    let mut group = c.benchmark_group("plan_1024_buckets");
    group.sample_size(20);
    for n in [3usize, 16, 100] {
        let before = workers(n);
        let after = workers(n + 1);
        let current = plan(&before, &weights, &[]);

        group.bench_with_input(BenchmarkId::new("from_scratch", n), &n, |b, _| {
            b.iter(|| plan(black_box(&before), black_box(&weights), &[]));
        });
        group.bench_with_input(BenchmarkId::new("replan_unchanged", n), &n, |b, _| {
            b.iter(|| plan(black_box(&before), black_box(&weights), black_box(&current)));
        });
        group.bench_with_input(BenchmarkId::new("replan_one_joined", n), &n, |b, _| {
            b.iter(|| plan(black_box(&after), black_box(&weights), black_box(&current)));
        });
        let ring = Ring::new(after.iter().cloned(), params.vnodes);
        group.bench_with_input(
            BenchmarkId::new("replan_one_joined_prebuilt_ring", n),
            &n,
            |b, _| {
                b.iter(|| {
                    assign_on(
                        black_box(&ring),
                        black_box(&weights),
                        black_box(&current),
                        &params,
                    )
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("ring_only", n), &n, |b, _| {
            b.iter(|| Ring::new(black_box(&after).iter().cloned(), params.vnodes));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
