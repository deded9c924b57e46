//! Tests of the work queue. Time is paused (`start_paused`) wherever delays matter, so backoff
//! sequences are exact and instant.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use rand::{Rng as _, SeedableRng as _};
use tokio::time::Instant;

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    bucket: u32,
    name: u32,
}

impl QueueKey for Key {
    type Shard = u32;
    fn shard(&self) -> u32 {
        self.bucket
    }
}

fn k(bucket: u32, name: u32) -> Key {
    Key { bucket, name }
}

fn exact() -> RetryPolicy {
    RetryPolicy {
        jitter: Jitter::None,
        ..RetryPolicy::default()
    }
}

fn queue_with(capacity: usize, retry: RetryPolicy) -> WorkQueue<Key> {
    WorkQueue::new(QueueConfig {
        capacity,
        retry,
        seed: Some(7),
    })
}

fn queue() -> WorkQueue<Key> {
    queue_with(1000, exact())
}

/// The next job if one is ready right now.
fn ready(q: &WorkQueue<Key>) -> Option<Job<Key>> {
    q.next().now_or_never().flatten()
}

/// The keys handed out right now, in order, each completed as a success.
fn drain_now(q: &WorkQueue<Key>) -> Vec<Key> {
    let mut keys = Vec::new();
    while let Some(job) = ready(q) {
        keys.push(job.key().clone());
        job.succeed();
    }
    keys
}

async fn take(q: &WorkQueue<Key>) -> Job<Key> {
    tokio::time::timeout(Duration::from_secs(24 * 3600), q.next())
        .await
        .expect("a key within a day")
        .expect("queue not shut down")
}

#[tokio::test(start_paused = true)]
async fn a_key_is_queued_once() {
    let q = queue();
    assert_eq!(
        q.try_add(k(1, 1), Priority::Change),
        Ok(Added::Queued { evicted: None })
    );
    assert_eq!(q.try_add(k(1, 1), Priority::Change), Ok(Added::Merged));
    assert_eq!(q.try_add(k(1, 1), Priority::Resync), Ok(Added::Merged));
    assert_eq!(q.stats().ready, 1);
    assert_eq!(drain_now(&q), vec![k(1, 1)]);
    assert_eq!(
        q.stats(),
        QueueStats {
            capacity: 1000,
            ..QueueStats::default()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn changes_go_before_resyncs_fifo_within_a_priority() {
    let q = queue();
    for (key, priority) in [
        (k(0, 1), Priority::Resync),
        (k(0, 2), Priority::Change),
        (k(0, 3), Priority::Resync),
        (k(0, 4), Priority::Change),
        (k(0, 5), Priority::Resync),
    ] {
        q.try_add(key, priority).expect("room");
    }
    // Raising 3 puts it behind the changes queued before; re-adding 1 as a resync changes
    // nothing.
    assert_eq!(q.try_add(k(0, 3), Priority::Change), Ok(Added::Merged));
    assert_eq!(q.try_add(k(0, 1), Priority::Resync), Ok(Added::Merged));
    assert_eq!(
        drain_now(&q),
        vec![k(0, 2), k(0, 4), k(0, 3), k(0, 1), k(0, 5)]
    );
}

#[tokio::test(start_paused = true)]
async fn stale_ready_elements_are_compacted_and_order_kept() {
    let q = queue_with(10_000, exact());
    for name in 0..3000 {
        q.try_add(k(0, name), Priority::Resync).expect("room");
    }
    // Raising every resync leaves 3000 stale resync elements behind; changes keep coming, so
    // the resync queue is never served to skip them.
    for name in (0..3000).rev() {
        assert_eq!(q.try_add(k(0, name), Priority::Change), Ok(Added::Merged));
    }
    for name in (10..3000).rev() {
        let job = ready(&q).expect("queued");
        assert_eq!(job.key(), &k(0, name));
        job.succeed();
    }
    assert_eq!(q.shared.lock().resync.len(), 3000);
    q.try_add(k(1, 0), Priority::Change).expect("room");
    {
        let inner = q.shared.lock();
        assert_eq!(
            (inner.change.len(), inner.resync.len()),
            (11, 0),
            "compacted"
        );
    }
    let mut expected: Vec<Key> = (0..10).rev().map(|n| k(0, n)).collect();
    expected.push(k(1, 0));
    assert_eq!(drain_now(&q), expected);
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_came_due_goes_before_resyncs() {
    let q = queue();
    q.try_add(k(0, 1), Priority::Resync).expect("room");
    q.try_add(k(0, 2), Priority::Resync).expect("room");
    let job = take(&q).await;
    assert_eq!(job.key(), &k(0, 1));
    assert!(
        matches!(job.fail(), Completion::Retry { delay, .. } if delay == Duration::from_secs(1))
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(drain_now(&q), vec![k(0, 1), k(0, 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_key_re_added_in_flight_is_requeued_after_and_never_handed_out_twice() {
    let q = queue();
    q.try_add(k(1, 1), Priority::Resync).expect("room");
    let job = take(&q).await;
    assert_eq!(job.work().priority, Priority::Resync);
    assert_eq!(q.try_add(k(1, 1), Priority::Resync), Ok(Added::Dirty));
    assert_eq!(q.try_add(k(1, 1), Priority::Change), Ok(Added::Dirty));
    assert!(ready(&q).is_none(), "in flight: not handed out again");
    assert_eq!(q.stats().in_flight, 1);
    assert_eq!(q.stats().depth(), 0);
    assert_eq!(job.succeed(), Completion::Requeued);
    let again = ready(&q).expect("requeued");
    assert_eq!(again.key(), &k(1, 1));
    assert_eq!(
        again.work().priority,
        Priority::Change,
        "highest priority seen"
    );
    assert_eq!(again.succeed(), Completion::Done);
    assert!(ready(&q).is_none());
}

#[tokio::test(start_paused = true)]
async fn an_event_during_a_failing_attempt_change_requeues_now_resync_waits() {
    let q = queue();
    q.try_add(k(1, 1), Priority::Change).expect("room");
    let job = take(&q).await;
    q.try_add(k(1, 1), Priority::Change).expect("room");
    assert_eq!(job.fail(), Completion::Requeued);
    let job = ready(&q).expect("queued at once");
    assert_eq!(job.work().retry.attempts, 1, "the failure still counts");
    q.try_add(k(1, 1), Priority::Resync).expect("room");
    assert_eq!(
        job.fail(),
        Completion::Retry {
            action: FailureAction::Backoff,
            delay: Duration::from_secs(2)
        }
    );
    assert!(ready(&q).is_none(), "a resync does not shorten the backoff");
}

#[test]
fn failure_counters_follow_the_original() {
    let p = RetryPolicy::default();
    let mut state = RetryState::default();
    let mut actions = Vec::new();
    for _ in 0..19 {
        let after = p.after_failure(state);
        actions.push(after.action);
        state = after.retry;
    }
    use FailureAction::{Backoff as B, Cooldown as C, Park as P};
    assert_eq!(
        actions,
        [B, B, B, B, B, C, B, B, B, B, B, C, B, B, B, B, B, C, P]
    );
    assert_eq!(
        state,
        RetryState {
            attempts: 0,
            cycle: 3
        }
    );
    // 0 cycles: never parks.
    let forever = RetryPolicy {
        max_cycles: 0,
        ..p.clone()
    };
    let after = forever.after_failure(RetryState {
        attempts: 5,
        cycle: 1000,
    });
    assert_eq!(after.action, FailureAction::Cooldown);
    assert_eq!(
        after.retry,
        RetryState {
            attempts: 0,
            cycle: 1001
        }
    );
    // Ceilings double from the initial delay up to the cap.
    let ceilings: Vec<u64> = (1..=10).map(|n| p.backoff_ceiling(n).as_secs()).collect();
    assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    assert_eq!(p.backoff_ceiling(u32::MAX), Duration::from_secs(300));
}

/// The original's schedule exactly (no jitter): 1, 2, 4, 8, 16 s, 300 s cooldown, three cycles,
/// the 19th failure parks the key 993 s after the first attempt.
#[tokio::test(start_paused = true)]
async fn backoff_then_cooldown_then_new_cycle_then_parked() {
    let q = queue();
    let start = Instant::now();
    q.try_add(k(1, 1), Priority::Change).expect("room");
    let cycle = [1, 2, 4, 8, 16, 300];
    let mut expected_state = RetryState::default();
    for failure in 0..18 {
        let job = take(&q).await;
        assert_eq!(job.work().retry, expected_state, "failure {}", failure + 1);
        let wait = Duration::from_secs(cycle[failure % 6]);
        let action = if failure % 6 == 5 {
            FailureAction::Cooldown
        } else {
            FailureAction::Backoff
        };
        assert_eq!(job.work().if_failed.action, action);
        assert_eq!(
            job.fail(),
            Completion::Retry {
                action,
                delay: wait
            }
        );
        expected_state = q.retry_state(&k(1, 1)).expect("kept");
        assert_eq!(
            expected_state,
            RetryState {
                attempts: if action == FailureAction::Cooldown {
                    0
                } else {
                    u32::try_from(failure % 6 + 1).expect("small")
                },
                cycle: u32::try_from((failure + 1) / 6).expect("small"),
            }
        );
        // Not a moment early.
        tokio::time::advance(wait - Duration::from_millis(1)).await;
        assert!(ready(&q).is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let job = take(&q).await;
    assert_eq!(job.work().if_failed.action, FailureAction::Park);
    assert_eq!(job.fail(), Completion::Parked);
    assert_eq!(start.elapsed(), Duration::from_secs(993));
    assert_eq!(
        q.retry_state(&k(1, 1)),
        Some(RetryState {
            attempts: 0,
            cycle: 3
        })
    );
    let stats = q.stats();
    assert_eq!((stats.parked, stats.depth(), stats.in_flight), (1, 0, 0));
    assert_eq!((stats.retries_total, stats.parked_total), (18, 1));
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(ready(&q).is_none(), "parked stays parked");
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_counters() {
    let q = queue();
    q.try_add(k(1, 1), Priority::Change).expect("room");
    take(&q).await.fail();
    take(&q).await.fail();
    assert_eq!(
        q.retry_state(&k(1, 1)),
        Some(RetryState {
            attempts: 2,
            cycle: 0
        })
    );
    assert_eq!(take(&q).await.succeed(), Completion::Done);
    assert_eq!(q.retry_state(&k(1, 1)), None);
    q.try_add(k(1, 1), Priority::Change).expect("room");
    let job = take(&q).await;
    assert_eq!(job.work().retry, RetryState::default());
    assert!(
        matches!(job.fail(), Completion::Retry { delay, .. } if delay == Duration::from_secs(1))
    );
}

fn quick_parking() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(10),
        max_attempts: 1,
        cooldown: Duration::from_secs(10),
        max_cycles: 1,
        jitter: Jitter::None,
    }
}

/// Fails `key` until it is parked.
async fn park(q: &WorkQueue<Key>, key: Key) {
    q.try_add(key.clone(), Priority::Change).expect("room");
    loop {
        let job = take(q).await;
        assert_eq!(job.key(), &key);
        if job.fail() == Completion::Parked {
            return;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_change_event_un_parks_a_resync_does_not() {
    let q = queue_with(100, quick_parking());
    park(&q, k(1, 1)).await;
    assert_eq!(q.try_add(k(1, 1), Priority::Resync), Ok(Added::Parked));
    assert!(ready(&q).is_none());
    assert_eq!(
        q.try_add(k(1, 1), Priority::Change),
        Ok(Added::Queued { evicted: None })
    );
    assert_eq!(q.stats().parked, 0);
    let job = ready(&q).expect("un-parked");
    // Counters kept: one attempt, then parked again.
    assert_eq!(job.work().if_failed.action, FailureAction::Park);
    assert_eq!(job.fail(), Completion::Parked);
    // A reset gives it a fresh set of cycles.
    q.reset_retries(&k(1, 1));
    q.try_add(k(1, 1), Priority::Change).expect("room");
    let job = ready(&q).expect("un-parked");
    assert_eq!(job.work().retry, RetryState::default());
    assert!(matches!(
        job.fail(),
        Completion::Retry {
            action: FailureAction::Backoff,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_change_event_cuts_a_backoff_short_and_keeps_the_counters() {
    let q = queue();
    q.try_add(k(1, 1), Priority::Change).expect("room");
    take(&q).await.fail();
    take(&q).await.fail();
    assert_eq!(q.stats().delayed, 1);
    assert_eq!(q.try_add(k(1, 1), Priority::Resync), Ok(Added::Merged));
    assert!(ready(&q).is_none(), "a resync does not");
    assert_eq!(q.try_add(k(1, 1), Priority::Change), Ok(Added::Merged));
    let job = ready(&q).expect("queued at once");
    assert_eq!(
        job.work().retry,
        RetryState {
            attempts: 2,
            cycle: 0
        }
    );
    assert_eq!(
        job.fail(),
        Completion::Retry {
            action: FailureAction::Backoff,
            delay: Duration::from_secs(4)
        }
    );
    // The old timer is stale: nothing comes out after the first backoff's time.
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(ready(&q).is_none());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(ready(&q).is_some());
}

#[tokio::test(start_paused = true)]
async fn full_jitter_stays_under_the_doubling_ceiling_and_spreads() {
    let policy = RetryPolicy::default();
    let q = queue_with(1000, policy.clone());
    for name in 0..200 {
        q.try_add(k(0, name), Priority::Change).expect("room");
    }
    let mut first = HashSet::new();
    let mut done = 0;
    while done < 200 {
        let job = take(&q).await;
        if job.work().retry.attempts == 5 {
            job.succeed();
            done += 1;
            continue;
        }
        let attempt = job.work().if_failed.retry.attempts;
        let Completion::Retry { action, delay } = job.fail() else {
            panic!("retried");
        };
        assert_eq!(action, FailureAction::Backoff);
        assert!(
            delay <= policy.backoff_ceiling(attempt),
            "{delay:?} at {attempt}"
        );
        if attempt == 1 {
            first.insert(delay);
        }
    }
    assert!(
        first.len() > 190,
        "jitter spreads retries: {} distinct",
        first.len()
    );
    let mean = first.iter().sum::<Duration>() / 200;
    assert!(
        (Duration::from_millis(350)..Duration::from_millis(650)).contains(&mean),
        "uniform in [0, 1 s]: mean {mean:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn decorrelated_jitter_stays_between_initial_and_three_times_the_previous() {
    let policy = RetryPolicy {
        max_delay: Duration::from_secs(20),
        jitter: Jitter::Decorrelated,
        ..RetryPolicy::default()
    };
    let q = queue_with(1000, policy.clone());
    for name in 0..100 {
        q.try_add(k(0, name), Priority::Change).expect("room");
    }
    let mut previous: HashMap<Key, Duration> = HashMap::new();
    let mut capped = 0;
    let mut done = 0;
    while done < 100 {
        let job = take(&q).await;
        if job.work().retry.attempts == 5 {
            job.succeed();
            done += 1;
            continue;
        }
        let key = job.key().clone();
        let Completion::Retry { action, delay } = job.fail() else {
            panic!("retried");
        };
        assert_eq!(action, FailureAction::Backoff);
        let prev = previous.get(&key).copied().unwrap_or(policy.initial_delay);
        let high = (prev * 3).min(policy.max_delay);
        assert!(
            delay >= policy.initial_delay && delay <= high,
            "{delay:?} after {prev:?}"
        );
        if delay > Duration::from_secs(15) {
            capped += 1;
        }
        previous.insert(key, delay);
    }
    assert!(capped > 0, "delays grow towards the cap");
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_delays() {
    async fn delays(seed: u64) -> Vec<Duration> {
        let q = WorkQueue::new(QueueConfig {
            capacity: 10,
            retry: RetryPolicy::default(),
            seed: Some(seed),
        });
        q.try_add(k(0, 0), Priority::Change).expect("room");
        let mut out = Vec::new();
        for _ in 0..5 {
            if let Completion::Retry { delay, .. } = take(&q).await.fail() {
                out.push(delay);
            }
        }
        out
    }
    assert_eq!(delays(1).await, delays(1).await);
    assert_ne!(delays(1).await, delays(2).await);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_evicts_resyncs_for_changes_skips_resyncs_and_waits_otherwise() {
    let q = queue_with(3, exact());
    q.try_add(k(0, 1), Priority::Change).expect("room");
    q.try_add(k(0, 2), Priority::Resync).expect("room");
    q.try_add(k(0, 3), Priority::Resync).expect("room");
    assert_eq!(
        q.try_add(k(0, 4), Priority::Resync),
        Err(QueueFull { capacity: 3 })
    );
    assert_eq!(q.add(k(0, 4), Priority::Resync).await, Added::Skipped);
    assert_eq!(q.stats().skipped_total, 1);
    // Keys already queued always merge.
    assert_eq!(q.try_add(k(0, 2), Priority::Change), Ok(Added::Merged));
    // A new change evicts the newest ready resync (3; 2 is now a change).
    assert_eq!(
        q.try_add(k(0, 5), Priority::Change),
        Ok(Added::Queued {
            evicted: Some(k(0, 3))
        })
    );
    assert_eq!(q.stats().evicted_total, 1);
    assert_eq!(
        q.try_add(k(0, 6), Priority::Change),
        Err(QueueFull { capacity: 3 })
    );
    // `add` waits for room; in-flight and delayed keys hold theirs.
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { q.add(k(0, 6), Priority::Change).await }
    });
    tokio::task::yield_now().await;
    let job = take(&q).await;
    assert_eq!(job.key(), &k(0, 1));
    assert!(matches!(job.fail(), Completion::Retry { .. }));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!waiting.is_finished());
    assert_eq!(q.stats().depth() + q.stats().in_flight, 3);
    let job = take(&q).await;
    assert_eq!(job.key(), &k(0, 2));
    assert_eq!(job.succeed(), Completion::Done);
    assert_eq!(
        waiting.await.expect("no panic"),
        Added::Queued { evicted: None }
    );
    // Parked keys hold no room.
    let q = queue_with(1, quick_parking());
    park(&q, k(0, 1)).await;
    assert_eq!(
        q.try_add(k(0, 2), Priority::Resync),
        Ok(Added::Queued { evicted: None })
    );
    // ...but un-parking needs some.
    assert_eq!(
        q.try_add(k(0, 1), Priority::Change),
        Ok(Added::Queued {
            evicted: Some(k(0, 2))
        })
    );
}

#[tokio::test(start_paused = true)]
async fn revoke_drops_waiting_keys_waits_for_its_in_flight_ones_only_and_fences() {
    let q = queue_with(100, quick_parking());
    park(&q, k(1, 9)).await;
    q.try_add(k(1, 8), Priority::Change).expect("room");
    let delayed = take(&q).await;
    assert!(matches!(delayed.fail(), Completion::Retry { .. }));
    q.try_add(k(1, 1), Priority::Change).expect("room");
    q.try_add(k(2, 1), Priority::Change).expect("room");
    let a = take(&q).await;
    let b = take(&q).await;
    assert_eq!((a.key(), b.key()), (&k(1, 1), &k(2, 1)));
    q.try_add(k(1, 2), Priority::Change).expect("room");
    q.try_add(k(2, 2), Priority::Resync).expect("room");
    q.try_add(k(1, 3), Priority::Resync).expect("room");
    q.try_add(k(1, 1), Priority::Change).expect("room"); // dirty
    let before = q.stats();
    assert_eq!(
        (
            before.ready,
            before.delayed,
            before.parked,
            before.in_flight
        ),
        (3, 1, 1, 2)
    );

    let mut released = Box::pin(q.revoke([1]));
    let after = q.stats();
    assert_eq!(
        (after.ready, after.delayed, after.parked, after.in_flight),
        (1, 0, 0, 2)
    );
    assert_eq!(q.retry_state(&k(1, 8)), None);
    assert!(!q.is_admitted(&1));
    assert!(q.is_admitted(&2));
    assert_eq!(q.try_add(k(1, 2), Priority::Change), Ok(Added::Fenced));
    assert_eq!(q.try_add(k(1, 1), Priority::Change), Ok(Added::Fenced));
    assert_eq!(q.add(k(1, 7), Priority::Change).await, Added::Fenced);
    assert!(released.as_mut().now_or_never().is_none());
    // Another shard's key finishing does not release it.
    assert_eq!(b.succeed(), Completion::Done);
    assert!(released.as_mut().now_or_never().is_none());
    // Nothing of shard 1 comes out, not even once its timers are due.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(drain_now(&q), vec![k(2, 2)]);
    // The in-flight key of shard 1 finishing (even failing, even dirty) releases it; it is
    // neither retried nor re-queued.
    assert_eq!(a.fail(), Completion::Discarded);
    released.await;
    assert_eq!(
        q.stats(),
        QueueStats {
            retries_total: 3,
            parked_total: 1,
            capacity: 100,
            ..QueueStats::default()
        }
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(ready(&q).is_none());

    // A grant admits the shard's keys again, with fresh counters.
    q.grant([1]);
    assert!(q.is_admitted(&1));
    assert_eq!(
        q.try_add(k(1, 9), Priority::Resync),
        Ok(Added::Queued { evicted: None })
    );
    let job = ready(&q).expect("admitted");
    assert_eq!(job.work().retry, RetryState::default());
    job.succeed();
    // A revoke with nothing in flight is released at once.
    q.revoke([5]).now_or_never().expect("nothing in flight");
}

#[tokio::test(start_paused = true)]
async fn a_key_re_added_after_a_re_grant_during_its_flight_is_not_lost() {
    let q = queue();
    q.try_add(k(1, 1), Priority::Change).expect("room");
    let job = take(&q).await;
    let released = q.revoke([1]);
    q.grant([1]);
    assert_eq!(q.try_add(k(1, 1), Priority::Change), Ok(Added::Dirty));
    assert_eq!(job.succeed(), Completion::Requeued);
    released
        .now_or_never()
        .expect("the revoked processing finished");
    assert_eq!(drain_now(&q), vec![k(1, 1)]);
}

#[tokio::test(start_paused = true)]
async fn forget_drops_a_key_and_its_counters() {
    let q = queue();
    q.try_add(k(1, 1), Priority::Change).expect("room");
    take(&q).await.fail();
    q.forget(&k(1, 1));
    assert_eq!(q.retry_state(&k(1, 1)), None);
    assert_eq!(q.stats().depth(), 0);
    q.try_add(k(1, 2), Priority::Change).expect("room");
    let job = take(&q).await;
    q.forget(&k(1, 2));
    assert_eq!(job.fail(), Completion::Discarded);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(ready(&q).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_job_counts_as_a_failure() {
    let q = queue();
    q.try_add(k(1, 1), Priority::Change).expect("room");
    drop(take(&q).await);
    assert_eq!(
        q.retry_state(&k(1, 1)),
        Some(RetryState {
            attempts: 1,
            cycle: 0
        })
    );
    assert_eq!(q.stats().delayed, 1);
    assert_eq!(q.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn run_processes_at_most_n_at_once_and_shut_down_drains() {
    let q = queue();
    for name in 0..40 {
        q.try_add(k(0, name), Priority::Change).expect("room");
    }
    let current = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let runner = tokio::spawn({
        let q = q.clone();
        let (current, most) = (current.clone(), most.clone());
        async move {
            q.run(4, move |work: Work<Key>| {
                let (current, most, done) = (current.clone(), most.clone(), done_tx.clone());
                async move {
                    let now = current.fetch_add(1, AtomicOrdering::SeqCst) + 1;
                    most.fetch_max(now, AtomicOrdering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    current.fetch_sub(1, AtomicOrdering::SeqCst);
                    let _ = done.send(work.key);
                    Ok::<(), ()>(())
                }
            })
            .await;
        }
    });
    let mut seen = HashSet::new();
    for _ in 0..36 {
        seen.insert(done_rx.recv().await.expect("processed"));
    }
    assert_eq!(most.load(AtomicOrdering::SeqCst), 4);
    // Four are in flight now; shut down: they finish, the rest never start.
    for _ in 0..1000 {
        if q.stats().in_flight == 4 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(q.stats().in_flight, 4);
    let started = Instant::now();
    q.shut_down();
    assert!(q.is_shut_down());
    assert!(q.next().await.is_none());
    assert_eq!(q.try_add(k(0, 100), Priority::Change), Ok(Added::ShutDown));
    q.drained().await;
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    runner.await.expect("no panic");
    while let Ok(key) = done_rx.try_recv() {
        seen.insert(key);
    }
    assert_eq!(seen.len(), 40);
    assert_eq!(q.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn run_retries_failed_and_panicking_handlers() {
    let q = queue();
    q.try_add(k(0, 1), Priority::Change).expect("room");
    q.try_add(k(0, 2), Priority::Change).expect("room");
    let attempts = Arc::new(Mutex::new(HashMap::<Key, u32>::new()));
    let runner = tokio::spawn({
        let (q, attempts) = (q.clone(), attempts.clone());
        async move {
            q.run(2, move |work: Work<Key>| {
                let attempts = attempts.clone();
                async move {
                    let n = {
                        let mut attempts = attempts.lock().expect("not poisoned");
                        let n = attempts.entry(work.key.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    assert_eq!(work.retry.attempts, n - 1);
                    if n < 3 {
                        if work.key.name == 2 {
                            panic!("handler panics (expected in this test)");
                        }
                        return Err("failed");
                    }
                    Ok(())
                }
            })
            .await;
        }
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    q.shut_down();
    runner.await.expect("run survives handler panics");
    let attempts = attempts.lock().expect("not poisoned").clone();
    assert_eq!(attempts, HashMap::from([(k(0, 1), 3), (k(0, 2), 3)]));
    assert_eq!(q.stats().retries_total, 4);
}

#[derive(Default)]
struct Recorder {
    depth: Mutex<Vec<(usize, usize)>>,
    retries: Mutex<Vec<(Key, RetryState, Duration)>>,
    parked: Mutex<Vec<Key>>,
}

impl QueueObserver<Key> for Recorder {
    fn depth_changed(&self, depth: usize, in_flight: usize) {
        self.depth
            .lock()
            .expect("not poisoned")
            .push((depth, in_flight));
    }
    fn retry_scheduled(&self, key: &Key, after: &AfterFailure, delay: Duration) {
        self.retries
            .lock()
            .expect("not poisoned")
            .push((key.clone(), after.retry, delay));
    }
    fn parked(&self, key: &Key, _retry: RetryState) {
        self.parked.lock().expect("not poisoned").push(key.clone());
    }
}

#[tokio::test(start_paused = true)]
async fn the_observer_sees_depth_retries_and_parking() {
    let recorder = Arc::new(Recorder::default());
    let q = WorkQueue::with_observer(
        QueueConfig {
            capacity: 10,
            retry: quick_parking(),
            seed: None,
        },
        recorder.clone(),
    );
    q.try_add(k(0, 1), Priority::Change).expect("room");
    q.try_add(k(0, 2), Priority::Change).expect("room");
    take(&q).await.succeed();
    park(&q, k(0, 2)).await;
    assert_eq!(
        *recorder.depth.lock().expect("not poisoned"),
        [
            (1, 0),
            (2, 0),
            (1, 1),
            (1, 0),
            (0, 1),
            (1, 0),
            (0, 1),
            (1, 0),
            (0, 1),
            (0, 0)
        ]
    );
    assert_eq!(
        *recorder.retries.lock().expect("not poisoned"),
        [
            (
                k(0, 2),
                RetryState {
                    attempts: 1,
                    cycle: 0
                },
                Duration::from_secs(1)
            ),
            (
                k(0, 2),
                RetryState {
                    attempts: 0,
                    cycle: 1
                },
                Duration::from_secs(10)
            ),
        ]
    );
    assert_eq!(*recorder.parked.lock().expect("not poisoned"), [k(0, 2)]);
}

/// Many producers and a bounded `run` on a multi-threaded runtime, with random failures, a small
/// capacity (so `add` waits), and a task revoking and re-granting some buckets: no key is ever
/// processed twice at once; every add of a never-revoked bucket is followed by a successful
/// processing that started after it; once a revoke's future resolved, nothing of that bucket
/// runs or starts until it is granted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_no_concurrent_processing_nothing_lost_revokes_hold() {
    const KEYS: u32 = 400;
    const BUCKETS: u32 = 16;
    const REVOKED: u32 = 4; // buckets 0..4 are revoked and granted again and again
    let q = WorkQueue::new(QueueConfig {
        capacity: 64,
        retry: RetryPolicy {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_attempts: 3,
            cooldown: Duration::from_millis(10),
            max_cycles: 0,
            jitter: Jitter::Full,
        },
        seed: None,
    });
    let clock = Arc::new(AtomicU64::new(1));
    // Per key: the clock before its last accepted add of each priority, and after its last
    // eviction (a ready resync dropped for a new change on the full queue: by design).
    let last_change: Arc<Mutex<HashMap<Key, u64>>> = Arc::default();
    let last_resync: Arc<Mutex<HashMap<Key, u64>>> = Arc::default();
    let evicted: Arc<Mutex<HashMap<Key, u64>>> = Arc::default();
    let last_success_start: Arc<Mutex<HashMap<Key, u64>>> = Arc::default();
    let active: Arc<Mutex<HashSet<Key>>> = Arc::default();
    let starts: Arc<Vec<AtomicU64>> = Arc::new((0..BUCKETS).map(|_| AtomicU64::new(0)).collect());
    let overlap = Arc::new(AtomicBool::new(false));

    let runner = tokio::spawn({
        let q = q.clone();
        let (clock, last_success_start, active, starts, overlap) = (
            clock.clone(),
            last_success_start.clone(),
            active.clone(),
            starts.clone(),
            overlap.clone(),
        );
        async move {
            q.run(8, move |work: Work<Key>| {
                let (clock, last_success_start, active, starts, overlap) = (
                    clock.clone(),
                    last_success_start.clone(),
                    active.clone(),
                    starts.clone(),
                    overlap.clone(),
                );
                async move {
                    let key = work.key;
                    if !active.lock().expect("not poisoned").insert(key.clone()) {
                        overlap.store(true, AtomicOrdering::SeqCst);
                    }
                    starts[key.bucket as usize].fetch_add(1, AtomicOrdering::SeqCst);
                    let started = clock.fetch_add(1, AtomicOrdering::SeqCst);
                    let (pause, fail) = {
                        let mut rng = rand::rng();
                        (rng.random_range(0..200u64), rng.random_bool(0.2))
                    };
                    tokio::time::sleep(Duration::from_micros(pause)).await;
                    active.lock().expect("not poisoned").remove(&key);
                    if fail {
                        return Err(());
                    }
                    let mut done = last_success_start.lock().expect("not poisoned");
                    let last = done.entry(key).or_default();
                    *last = (*last).max(started);
                    Ok(())
                }
            })
            .await;
        }
    });

    let producers: Vec<_> = (0..8u64)
        .map(|seed| {
            let (q, clock) = (q.clone(), clock.clone());
            let (last_change, last_resync, evicted) =
                (last_change.clone(), last_resync.clone(), evicted.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                for i in 0..1500 {
                    let name = rng.random_range(0..KEYS);
                    let key = k(name % BUCKETS, name);
                    let priority = if rng.random_bool(0.3) {
                        Priority::Resync
                    } else {
                        Priority::Change
                    };
                    let at = clock.fetch_add(1, AtomicOrdering::SeqCst);
                    let added = q.add(key.clone(), priority).await;
                    if let Added::Queued {
                        evicted: Some(gone),
                    } = &added
                    {
                        let now = clock.fetch_add(1, AtomicOrdering::SeqCst);
                        evicted
                            .lock()
                            .expect("not poisoned")
                            .insert(gone.clone(), now);
                    }
                    if matches!(added, Added::Queued { .. } | Added::Merged | Added::Dirty) {
                        let adds = match priority {
                            Priority::Change => &last_change,
                            Priority::Resync => &last_resync,
                        };
                        let mut adds = adds.lock().expect("not poisoned");
                        let last = adds.entry(key).or_default();
                        *last = (*last).max(at);
                    }
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();

    let revoker = tokio::spawn({
        let (q, active, starts) = (q.clone(), active.clone(), starts.clone());
        async move {
            let mut rounds = 0;
            for round in 0..60u32 {
                let bucket = round % REVOKED;
                q.revoke([bucket]).await;
                let of_bucket = |active: &HashSet<Key>| active.iter().any(|k| k.bucket == bucket);
                assert!(
                    !of_bucket(&active.lock().expect("not poisoned")),
                    "released with work in flight"
                );
                let before = starts[bucket as usize].load(AtomicOrdering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                assert_eq!(
                    starts[bucket as usize].load(AtomicOrdering::SeqCst),
                    before,
                    "a revoked bucket started work"
                );
                q.grant([bucket]);
                tokio::time::sleep(Duration::from_millis(1)).await;
                rounds += 1;
            }
            rounds
        }
    });

    for producer in producers {
        producer.await.expect("producer");
    }
    assert_eq!(revoker.await.expect("revoke invariants hold"), 60);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = q.stats();
        if stats.depth() == 0 && stats.in_flight == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "queue did not settle: {stats:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    q.shut_down();
    runner.await.expect("runner");

    assert!(
        !overlap.load(AtomicOrdering::SeqCst),
        "a key was processed twice at once"
    );
    let last_change = last_change.lock().expect("not poisoned");
    let last_resync = last_resync.lock().expect("not poisoned");
    let evicted = evicted.lock().expect("not poisoned");
    let last_success_start = last_success_start.lock().expect("not poisoned");
    let started = |key: &Key| last_success_start.get(key).copied().unwrap_or(0);
    let mut checked = 0;
    // A change is never lost.
    for (key, added) in last_change.iter().filter(|(k, _)| k.bucket >= REVOKED) {
        assert!(
            started(key) > *added,
            "{key:?}: change at {added}, last success started at {}",
            started(key)
        );
        checked += 1;
    }
    // A resync is lost only if it may have been evicted after it was added.
    for (key, added) in last_resync.iter().filter(|(k, _)| k.bucket >= REVOKED) {
        let excused = evicted.get(key).is_some_and(|at| at > added);
        assert!(
            excused || started(key) > *added,
            "{key:?}: resync at {added}, last success started at {}",
            started(key)
        );
    }
    assert!(
        checked > 250,
        "most keys of stable buckets had changes: {checked}"
    );
    assert!(!evicted.is_empty(), "the queue was full at times");
    let stats = q.stats();
    assert!(stats.retries_total > 0, "failures were retried");
    assert_eq!(stats.parked, 0);
}
