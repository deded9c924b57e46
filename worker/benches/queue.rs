//! Work queue throughput at 100k keys: add, add + next + done, and dedup of repeated adds.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use worker::queue::{Priority, QueueConfig, QueueKey, WorkQueue};

const KEYS: usize = 100_000;

/// Shaped like the worker's template key: bucket, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    bucket: u32,
    namespace: String,
    name: String,
}

impl QueueKey for Key {
    type Shard = u32;
    fn shard(&self) -> u32 {
        self.bucket
    }
}

fn keys() -> Vec<Key> {
    (0..KEYS)
        .map(|i| Key {
            bucket: u32::try_from(i % 1024).unwrap_or(0),
            namespace: format!("namespace-{}", i / 5),
            name: format!("template-{i}"),
        })
        .collect()
}

fn queue() -> WorkQueue<Key> {
    WorkQueue::new(QueueConfig {
        capacity: KEYS,
        ..QueueConfig::default()
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let keys = keys();
    let mut group = c.benchmark_group("queue_100k");
    group.sample_size(10);
    group.throughput(Throughput::Elements(KEYS as u64));

    group.bench_function("add", |b| {
        b.iter_batched(
            || (queue(), keys.clone()),
            |(q, keys)| {
                for (i, key) in keys.into_iter().enumerate() {
                    let priority = if i % 4 == 0 {
                        Priority::Resync
                    } else {
                        Priority::Change
                    };
                    black_box(q.try_add(key, priority).ok());
                }
                q
            },
            BatchSize::PerIteration,
        );
    });

    group.bench_function("add_next_done", |b| {
        b.iter_batched(
            || (queue(), keys.clone()),
            |(q, keys)| {
                rt.block_on(async {
                    for (i, key) in keys.into_iter().enumerate() {
                        let priority = if i % 4 == 0 {
                            Priority::Resync
                        } else {
                            Priority::Change
                        };
                        black_box(q.try_add(key, priority).ok());
                    }
                    while q.stats().ready > 0 {
                        let Some(job) = q.next().await else { break };
                        black_box(job.succeed());
                    }
                });
                q
            },
            BatchSize::PerIteration,
        );
    });

    group.bench_function("readd_queued", |b| {
        let q = queue();
        for key in &keys {
            black_box(q.try_add(key.clone(), Priority::Resync).ok());
        }
        b.iter_batched(
            || keys.clone(),
            |keys| {
                for key in keys {
                    black_box(q.try_add(key, Priority::Resync).ok());
                }
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
