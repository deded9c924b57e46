//! The worker's work queue: which key to reconcile next, when to retry, and how to hand buckets
//! over without ever reconciling one object in two places.
//!
//! Generic over the key `K` ([`QueueKey`]): in the worker, a template reference with its
//! bucket; the key's [`QueueKey::shard`] (the bucket) is the unit of handoff. Wiring it to the
//! worker's `TemplateKey` is one impl:
//!
//! ```ignore
//! impl worker::queue::QueueKey for TemplateKey {
//!     type Shard = u32;
//!     fn shard(&self) -> u32 { self.bucket }
//! }
//! ```
//!
//! # A key's life
//!
//! ```text
//!            add                 next()                 succeed, not re-added
//!  (absent) ────► ready ───────────────► in flight ──────────────────────────► (absent)
//!                   ▲  ▲                  │  │ │ succeed after a re-add ("dirty")
//!                   │  └──────────────────┘  │ └──────────────────► ready
//!     due, or a     │    fail: backoff or    │ fail: cycles used up
//!     Change event  │    cooldown            ▼
//!                delayed ◄─────────      parked ──── Change event ───► ready
//! ```
//!
//! * **Dedup.** A key is in the queue at most once (ready, delayed, in flight or parked).
//!   Adding a ready key only raises its priority. Adding an in-flight key marks it *dirty*: it is
//!   queued again when its processing finishes, so it is never processed twice at the same time
//!   and an event that arrived during processing is never lost.
//! * **Priority.** [`Priority::Change`] (spec changes, drift of managed objects, retries that
//!   came due) is handed out before [`Priority::Resync`] (the slow safety resync); FIFO within a
//!   priority. The priority is strict: resyncs wait while changes are queued (a resync only
//!   guards against missed events; it must not delay a real change). A key whose retry came due
//!   is queued as `Change`: it is real unfinished work.
//! * **Retries** ([`RetryPolicy`]). A failure is retried after an exponential backoff with
//!   jitter (1 s doubling to 300 s by default), up to `max_attempts` (5) per cycle; the next
//!   failure starts a new cycle after a cooldown (300 s); a failure in cycle `max_cycles` (3)
//!   *parks* the key: it is not retried until a `Change` event arrives. [`Work::retry`] and
//!   [`Work::if_failed`] give the counters the original writes to status (`retryCount` =
//!   [`RetryState::attempts`], `retryCycle` = [`RetryState::cycle`]) and whether this failure
//!   parks the key (`Paused due to repeated failures`). A success resets the counters.
//! * **Events for a failing key.** A `Change` event for a key waiting for its retry (backoff or
//!   cooldown) queues it at once, and un-parks a parked key: the change may well have fixed the
//!   cause, so it is tried now, not after minutes. Its counters are **kept**, so events (drift
//!   of objects another manager writes, say) cannot keep a broken key out of parking: a parked
//!   key that fails again parks again at once (one attempt per `Change`). A caller that knows
//!   the spec itself changed (a new `metadata.generation`) and wants a fresh set of cycles calls
//!   [`WorkQueue::reset_retries`]. A `Resync` event never shortens a backoff and never un-parks.
//!   An event that arrives while the key is in flight and that then fails: a `Change` queues
//!   it at once (the counters still count the failure), a `Resync` is absorbed by the retry.
//! * **Bounded.** At most `capacity` distinct keys are ready, delayed or in flight (parked keys
//!   are a small record each and are not counted). On a full queue a new `Change` key first
//!   evicts the most recently queued ready `Resync` key (reported in [`Added::Queued`] and
//!   [`QueueStats::evicted_total`]: the next resync re-adds it); if there is none,
//!   [`WorkQueue::add`] *waits* for room (backpressure: the watch that feeds it slows down) and
//!   [`WorkQueue::try_add`] returns [`QueueFull`]. A new `Resync` key on a full queue is skipped
//!   at once ([`Added::Skipped`], [`QueueStats::skipped_total`]). Keys already in the queue are
//!   always accepted (merged), and retries never need room.
//! * **Bounded concurrency.** [`WorkQueue::run`] processes at most `concurrency` keys at once,
//!   each on its own task. [`WorkQueue::next`] is the lower-level API: it hands out a [`Job`]
//!   to complete with [`Job::succeed`] or [`Job::fail`]; a job dropped without either (a
//!   panicking handler) counts as a failure.
//!
//! # Handoff
//!
//! [`WorkQueue::revoke`] takes the revoked shards (buckets) and, atomically: fences them (adds of
//! their keys return [`Added::Fenced`], so a stale watch event cannot re-admit work), drops their
//! ready, delayed and parked keys with their counters, and marks their in-flight keys so they
//! are neither re-queued nor retried when they finish. It returns a future that resolves once
//! every processing of those shards that was in flight at the revoke has finished (other
//! shards' keys do not delay it): then, and only then, acknowledge `released`. A later
//! [`WorkQueue::grant`] lifts the fence; keys of all shards are admitted until revoked.
//!
//! # Shutdown
//!
//! [`WorkQueue::shut_down`] stops handing out keys ([`WorkQueue::next`] returns `None`, `run`
//! returns once its handlers finished) and refuses adds ([`Added::ShutDown`]);
//! [`WorkQueue::drained`] resolves when nothing is in flight.
//!
//! # Metrics
//!
//! [`WorkQueue::stats`] is a snapshot of the numbers (`kubetemplater_queue_depth` is
//! [`QueueStats::depth`]: ready + delayed). A [`QueueObserver`] is told about every change as it
//! happens (under the queue's lock, in order, so gauges it sets are never stale).
//!
//! Time is `tokio::time`: tests pause and advance it.

mod retry;
#[cfg(test)]
mod tests;

pub use retry::{AfterFailure, FailureAction, Jitter, RetryPolicy, RetryState};

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::SeedableRng as _;
use rand::rngs::StdRng;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A queue key: cheap to clone, hashable, and belonging to a shard (the bucket), the unit that
/// [`WorkQueue::revoke`] and [`WorkQueue::grant`] move.
pub trait QueueKey: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static {
    /// The unit of handoff.
    type Shard: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static;
    /// The shard this key belongs to; must not change for a key.
    fn shard(&self) -> Self::Shard;
}

/// Why a key is queued. `Change` is handed out before `Resync` (`Change > Resync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// The slow safety resync.
    Resync,
    /// A spec change, drift of a managed object, a retry that came due.
    Change,
}

/// The queue's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Most distinct keys ready, delayed or in flight (at least 1).
    pub capacity: usize,
    /// Retries of failed keys.
    pub retry: RetryPolicy,
    /// Seed of the jitter's random numbers (`None`: from the OS). Tests set it.
    pub seed: Option<u64>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            retry: RetryPolicy::default(),
            seed: None,
        }
    }
}

/// What an add did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added<K> {
    /// The key was not queued (or was parked) and is now ready. `evicted`: the ready `Resync`
    /// key dropped to make room on a full queue.
    Queued {
        /// The resync dropped to make room, if any.
        evicted: Option<K>,
    },
    /// The key was already ready or delayed: merged (priority raised; a `Change` queues a
    /// delayed key at once).
    Merged,
    /// The key is in flight: it is queued again when its processing finishes.
    Dirty,
    /// The key is parked and the event was a `Resync`: it stays parked.
    Parked,
    /// The key's shard is revoked: ignored.
    Fenced,
    /// The queue is shut down: ignored.
    ShutDown,
    /// A new `Resync` key on a full queue: not queued (only from [`WorkQueue::add`]; the next
    /// resync re-adds it).
    Skipped,
}

/// The queue is full and the key could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("work queue full ({capacity} keys)")]
pub struct QueueFull {
    /// The capacity.
    pub capacity: usize,
}

/// A key handed out for processing, with what the reconciler needs to write status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work<K> {
    /// The key.
    pub key: K,
    /// The priority it was queued with.
    pub priority: Priority,
    /// Its failure counters before this attempt.
    pub retry: RetryState,
    /// What a failure of this attempt will do (counters to write as `retryCount`/`retryCycle`,
    /// and whether it parks the key). Computed when handed out: a `Change` event during the
    /// attempt queues the key again instead of parking it, and [`WorkQueue::reset_retries`]
    /// during the attempt changes the counters.
    pub if_failed: AfterFailure,
}

/// What completing a job did with its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Done and forgotten.
    Done,
    /// Queued again now (it was re-added while in flight, or failed with a `Change` pending).
    Requeued,
    /// Failed: retried after `delay` ([`FailureAction::Backoff`] or
    /// [`FailureAction::Cooldown`]).
    Retry {
        /// Backoff or cooldown.
        action: FailureAction,
        /// The wait.
        delay: Duration,
    },
    /// Failed in the last cycle: parked until a `Change` event.
    Parked,
    /// Dropped: its shard was revoked, it was forgotten, or the queue shut down.
    Discarded,
}

/// A snapshot of the queue's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Keys ready to be handed out.
    pub ready: usize,
    /// Keys waiting for a retry (backoff or cooldown).
    pub delayed: usize,
    /// Keys being processed.
    pub in_flight: usize,
    /// Keys parked after their last retry cycle.
    pub parked: usize,
    /// The capacity.
    pub capacity: usize,
    /// Failures scheduled for a retry (backoff or cooldown), ever.
    pub retries_total: u64,
    /// Failures that parked a key, ever.
    pub parked_total: u64,
    /// Ready resyncs evicted by new `Change` keys on a full queue, ever.
    pub evicted_total: u64,
    /// New `Resync` keys skipped on a full queue, ever.
    pub skipped_total: u64,
}

impl QueueStats {
    /// Keys waiting: ready + delayed (`kubetemplater_queue_depth`).
    pub fn depth(&self) -> usize {
        self.ready + self.delayed
    }
}

/// Told about the queue's changes, for metrics and logs. Called with the queue's lock held, in
/// order: be quick (set a gauge, bump a counter) and never call back into the queue.
pub trait QueueObserver<K>: Send + Sync + 'static {
    /// Depth ([`QueueStats::depth`]) or in-flight count changed.
    fn depth_changed(&self, depth: usize, in_flight: usize) {
        let _ = (depth, in_flight);
    }
    /// A failure of `key` will be retried after `delay` (zero when a `Change` event arrived
    /// during the attempt; `after.action` then says what the failure alone would have done).
    fn retry_scheduled(&self, key: &K, after: &AfterFailure, delay: Duration) {
        let _ = (key, after, delay);
    }
    /// `key` failed in its last cycle and is parked.
    fn parked(&self, key: &K, retry: RetryState) {
        let _ = (key, retry);
    }
}

/// The work queue; cheap to clone (all clones are the same queue).
pub struct WorkQueue<K: QueueKey> {
    shared: Arc<Shared<K>>,
}

impl<K: QueueKey> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K: QueueKey> fmt::Debug for WorkQueue<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkQueue")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Shared<K: QueueKey> {
    inner: Mutex<Inner<K>>,
    /// A key became ready, a delayed key was scheduled, or the queue shut down: `next` looks.
    wake: Notify,
    /// Room was made, shards were fenced, or the queue shut down: waiting `add`s look.
    room: Notify,
    /// A processing finished: `revoke` and `drained` futures look.
    finished: Notify,
}

#[derive(Debug)]
enum State {
    Ready {
        seq: u64,
        priority: Priority,
    },
    Delayed {
        seq: u64,
    },
    InFlight {
        ticket: u64,
        /// Re-added while in flight, with the highest priority seen.
        dirty: Option<Priority>,
        /// Revoked or forgotten while in flight: drop it when it finishes.
        discard: bool,
    },
    Parked,
}

#[derive(Debug)]
struct Entry {
    state: State,
    retry: RetryState,
    /// The previous backoff of this cycle (decorrelated jitter).
    previous_delay: Duration,
}

/// A delayed key in the timer heap; stale once its entry's state no longer has this `seq`.
struct Timer<K> {
    due: Instant,
    seq: u64,
    key: K,
}

impl<K> PartialEq for Timer<K> {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}
impl<K> Eq for Timer<K> {}
impl<K> PartialOrd for Timer<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Timer<K> {
    /// Reversed, so the max-heap pops the earliest due (then the earliest scheduled).
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .due
            .cmp(&self.due)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

struct Inner<K: QueueKey> {
    capacity: usize,
    policy: RetryPolicy,
    rng: StdRng,
    entries: HashMap<K, Entry>,
    /// Ready keys by priority, FIFO, with the `seq` they were queued with; an element whose
    /// entry no longer has that `seq` is stale and skipped.
    change: VecDeque<(K, u64)>,
    resync: VecDeque<(K, u64)>,
    timers: BinaryHeap<Timer<K>>,
    fenced: HashSet<K::Shard>,
    seq: u64,
    stats: QueueStats,
    shut_down: bool,
    observer: Option<Arc<dyn QueueObserver<K>>>,
    reported: (usize, usize),
}

impl<K: QueueKey> WorkQueue<K> {
    /// An empty queue.
    pub fn new(config: QueueConfig) -> Self {
        Self::build(config, None)
    }

    /// An empty queue that tells `observer` about its changes.
    pub fn with_observer(config: QueueConfig, observer: Arc<dyn QueueObserver<K>>) -> Self {
        Self::build(config, Some(observer))
    }

    fn build(config: QueueConfig, observer: Option<Arc<dyn QueueObserver<K>>>) -> Self {
        let capacity = config.capacity.max(1);
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let inner = Inner {
            capacity,
            policy: config.retry,
            rng,
            entries: HashMap::new(),
            change: VecDeque::new(),
            resync: VecDeque::new(),
            timers: BinaryHeap::new(),
            fenced: HashSet::new(),
            seq: 0,
            stats: QueueStats {
                capacity,
                ..QueueStats::default()
            },
            shut_down: false,
            observer,
            reported: (0, 0),
        };
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                wake: Notify::new(),
                room: Notify::new(),
                finished: Notify::new(),
            }),
        }
    }

    /// The retry policy.
    pub fn policy(&self) -> RetryPolicy {
        self.shared.lock().policy.clone()
    }

    /// Adds `key` without waiting. On a full queue a new `Change` key evicts a ready `Resync`
    /// key if there is one; otherwise (and for a new `Resync` key) it returns [`QueueFull`].
    pub fn try_add(&self, key: K, priority: Priority) -> Result<Added<K>, QueueFull> {
        let mut inner = self.shared.lock();
        let added = inner.add(key, priority);
        inner.report();
        drop(inner);
        if matches!(added, Ok(Added::Queued { .. } | Added::Merged)) {
            self.shared.wake.notify_waiters();
        }
        added
    }

    /// Adds `key`. On a full queue a new `Change` key evicts a ready `Resync` key if there is
    /// one, else waits for room (backpressure; it never drops a `Change`); a new `Resync` key is
    /// skipped at once ([`Added::Skipped`]).
    pub async fn add(&self, key: K, priority: Priority) -> Added<K> {
        loop {
            let mut room = pin!(self.shared.room.notified());
            room.as_mut().enable();
            match self.try_add(key.clone(), priority) {
                Ok(added) => return added,
                Err(QueueFull { .. }) if priority == Priority::Resync => {
                    self.shared.lock().stats.skipped_total += 1;
                    return Added::Skipped;
                }
                Err(QueueFull { .. }) => room.await,
            }
        }
    }

    /// The next ready key, waiting for one (or for a retry to come due); `None` once the queue
    /// is shut down. Cancel-safe: a key is taken only when it is returned.
    pub async fn next(&self) -> Option<Job<K>> {
        loop {
            let mut wake = pin!(self.shared.wake.notified());
            wake.as_mut().enable();
            let due = {
                let mut inner = self.shared.lock();
                if inner.shut_down {
                    return None;
                }
                inner.promote_due(Instant::now());
                let taken = inner.take_ready();
                inner.report();
                if let Some((work, ticket)) = taken {
                    return Some(Job {
                        shared: Arc::clone(&self.shared),
                        work,
                        ticket,
                        completed: false,
                    });
                }
                inner.next_due()
            };
            match due {
                Some(due) => {
                    tokio::select! {
                        () = &mut wake => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                None => wake.await,
            }
        }
    }

    /// Processes keys with `handler`, at most `concurrency` (at least 1) at once, each on its
    /// own task, until the queue is shut down; returns when the last handler finished. `Ok`
    /// completes the key with [`Job::succeed`], `Err` with [`Job::fail`]; a panicking handler
    /// counts as a failure. Dropping the returned future aborts the running handlers (their
    /// keys count as failed).
    pub async fn run<H, F, T, E>(&self, concurrency: usize, handler: H)
    where
        H: Fn(Work<K>) -> F,
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = JoinSet::new();
        loop {
            // Reap finished handlers (a panic was already recorded as a failure by `Job`'s drop).
            while tasks.try_join_next().is_some() {}
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let Some(job) = self.next().await else { break };
            let running = handler(job.work().clone());
            tasks.spawn(async move {
                let _permit = permit;
                match running.await {
                    Ok(_) => job.succeed(),
                    Err(_) => job.fail(),
                };
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Revokes `shards`, atomically: their keys are no longer admitted (adds return
    /// [`Added::Fenced`]) until [`WorkQueue::grant`]; their ready, delayed and parked keys are
    /// dropped with their counters; their in-flight keys are not re-queued or retried when they
    /// finish. The returned future resolves once every processing of these shards that was in
    /// flight at this call has finished; acknowledge the release then. Its effect does not wait
    /// for it to be polled.
    pub fn revoke<I>(&self, shards: I) -> impl Future<Output = ()> + Send + 'static
    where
        I: IntoIterator<Item = K::Shard>,
    {
        let shards: HashSet<K::Shard> = shards.into_iter().collect();
        let waiting = {
            let mut inner = self.shared.lock();
            let waiting = inner.revoke(&shards);
            inner.report();
            waiting
        };
        // Waiting adds of these keys must now return `Fenced`; room may have been made.
        self.shared.room.notify_waiters();
        let shared = Arc::clone(&self.shared);
        async move {
            shared
                .wait_until(|inner| {
                    waiting
                        .iter()
                        .all(|(key, ticket)| !inner.in_flight_with(key, *ticket))
                })
                .await;
        }
    }

    /// Admits the keys of `shards` again (lifts a [`WorkQueue::revoke`]).
    pub fn grant<I>(&self, shards: I)
    where
        I: IntoIterator<Item = K::Shard>,
    {
        let mut inner = self.shared.lock();
        for shard in shards {
            inner.fenced.remove(&shard);
        }
    }

    /// Whether keys of `shard` are admitted (not revoked).
    pub fn is_admitted(&self, shard: &K::Shard) -> bool {
        !self.shared.lock().fenced.contains(shard)
    }

    /// Drops `key` and its counters (its object is gone); if in flight, it is dropped when it
    /// finishes unless added again meanwhile.
    pub fn forget(&self, key: &K) {
        let mut inner = self.shared.lock();
        inner.forget(key);
        inner.report();
        drop(inner);
        self.shared.room.notify_waiters();
    }

    /// Resets the failure counters of `key` (a fresh set of retry cycles, e.g. after its spec
    /// changed). Does not move it: a delayed key keeps its wait, a parked one stays parked until
    /// a `Change` event.
    pub fn reset_retries(&self, key: &K) {
        if let Some(entry) = self.shared.lock().entries.get_mut(key) {
            entry.retry = RetryState::default();
            entry.previous_delay = Duration::ZERO;
        }
    }

    /// The failure counters of `key`, if it is in the queue (ready, delayed, in flight or
    /// parked).
    pub fn retry_state(&self, key: &K) -> Option<RetryState> {
        self.shared.lock().entries.get(key).map(|e| e.retry)
    }

    /// The numbers.
    pub fn stats(&self) -> QueueStats {
        self.shared.lock().stats
    }

    /// Stops handing out keys and refuses adds. Keys in flight finish (see
    /// [`WorkQueue::drained`]); nothing is re-queued or retried afterwards.
    pub fn shut_down(&self) {
        self.shared.lock().shut_down = true;
        self.shared.wake.notify_waiters();
        self.shared.room.notify_waiters();
    }

    /// Whether [`WorkQueue::shut_down`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.shared.lock().shut_down
    }

    /// Resolves when no key is in flight (after [`WorkQueue::shut_down`]: when the last one
    /// finished).
    pub fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        async move {
            shared.wait_until(|inner| inner.stats.in_flight == 0).await;
        }
    }
}

/// A key being processed. Complete it with [`Job::succeed`] or [`Job::fail`]; dropping it
/// without either counts as a failure.
pub struct Job<K: QueueKey> {
    shared: Arc<Shared<K>>,
    work: Work<K>,
    ticket: u64,
    completed: bool,
}

impl<K: QueueKey> fmt::Debug for Job<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("work", &self.work)
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl<K: QueueKey> Job<K> {
    /// The key.
    pub fn key(&self) -> &K {
        &self.work.key
    }

    /// The key with its priority and counters.
    pub fn work(&self) -> &Work<K> {
        &self.work
    }

    /// The key is reconciled: its counters reset; it is queued again if it was re-added while
    /// in flight.
    pub fn succeed(mut self) -> Completion {
        self.complete(true)
    }

    /// The key failed: it is retried or parked per the [`RetryPolicy`].
    pub fn fail(mut self) -> Completion {
        self.complete(false)
    }

    fn complete(&mut self, success: bool) -> Completion {
        self.completed = true;
        let completion = {
            let mut inner = self.shared.lock();
            let completion = inner.complete(&self.work.key, self.ticket, success);
            inner.report();
            completion
        };
        self.shared.finished.notify_waiters();
        match completion {
            Completion::Requeued | Completion::Retry { .. } => self.shared.wake.notify_waiters(),
            Completion::Done | Completion::Parked | Completion::Discarded => {
                self.shared.room.notify_waiters();
            }
        }
        completion
    }
}

impl<K: QueueKey> Drop for Job<K> {
    fn drop(&mut self) {
        if !self.completed {
            self.complete(false);
        }
    }
}

impl<K: QueueKey> Shared<K> {
    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        // The state is consistent between statements; a panic elsewhere (an observer) must not
        // wedge the queue.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn wait_until(&self, done: impl Fn(&Inner<K>) -> bool) {
        loop {
            let mut finished = pin!(self.finished.notified());
            finished.as_mut().enable();
            let now_done = done(&self.lock());
            if now_done {
                return;
            }
            finished.await;
        }
    }
}

impl<K: QueueKey> Inner<K> {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn active(&self) -> usize {
        self.stats.ready + self.stats.delayed + self.stats.in_flight
    }

    fn add(&mut self, key: K, priority: Priority) -> Result<Added<K>, QueueFull> {
        if self.shut_down {
            return Ok(Added::ShutDown);
        }
        if self.fenced.contains(&key.shard()) {
            return Ok(Added::Fenced);
        }
        let seq = self.next_seq();
        let Some(entry) = self.entries.get_mut(&key) else {
            let evicted = self.make_room(priority)?;
            self.entries.insert(
                key.clone(),
                Entry {
                    state: State::Ready { seq, priority },
                    retry: RetryState::default(),
                    previous_delay: Duration::ZERO,
                },
            );
            self.push_ready(key, seq, priority);
            self.stats.ready += 1;
            return Ok(Added::Queued { evicted });
        };
        match &mut entry.state {
            State::Ready {
                seq: queued,
                priority: current,
            } => {
                if priority > *current {
                    *queued = seq;
                    *current = priority;
                    self.push_ready(key, seq, priority);
                }
                Ok(Added::Merged)
            }
            State::Delayed { .. } => {
                if priority == Priority::Change {
                    entry.state = State::Ready { seq, priority };
                    self.stats.delayed -= 1;
                    self.stats.ready += 1;
                    self.push_ready(key, seq, priority);
                }
                Ok(Added::Merged)
            }
            State::InFlight { dirty, discard, .. } => {
                *dirty = (*dirty).max(Some(priority));
                *discard = false;
                Ok(Added::Dirty)
            }
            State::Parked => {
                if priority == Priority::Resync {
                    return Ok(Added::Parked);
                }
                let evicted = self.make_room(priority)?;
                if let Some(entry) = self.entries.get_mut(&key) {
                    entry.state = State::Ready { seq, priority };
                }
                self.stats.parked -= 1;
                self.stats.ready += 1;
                self.push_ready(key, seq, priority);
                Ok(Added::Queued { evicted })
            }
        }
    }

    /// Makes room for one more active key: nothing to do below capacity; a `Change` evicts the
    /// most recently queued ready `Resync` key.
    fn make_room(&mut self, priority: Priority) -> Result<Option<K>, QueueFull> {
        if self.active() < self.capacity {
            return Ok(None);
        }
        if priority == Priority::Change {
            while let Some((key, seq)) = self.resync.pop_back() {
                if self.ready_with(&key, seq) {
                    self.entries.remove(&key);
                    self.stats.ready -= 1;
                    self.stats.evicted_total += 1;
                    return Ok(Some(key));
                }
            }
        }
        Err(QueueFull {
            capacity: self.capacity,
        })
    }

    fn push_ready(&mut self, key: K, seq: u64, priority: Priority) {
        match priority {
            Priority::Change => self.change.push_back((key, seq)),
            Priority::Resync => self.resync.push_back((key, seq)),
        }
        // Raised, forgotten and evicted keys leave stale elements behind; resyncs starved by a
        // steady stream of changes would let them pile up. Amortised O(1).
        if self.change.len() + self.resync.len() > 2 * self.stats.ready + 1024 {
            self.compact();
        }
    }

    fn ready_with(&self, key: &K, seq: u64) -> bool {
        matches!(self.entries.get(key), Some(Entry { state: State::Ready { seq: s, .. }, .. }) if *s == seq)
    }

    fn delayed_with(&self, key: &K, seq: u64) -> bool {
        matches!(self.entries.get(key), Some(Entry { state: State::Delayed { seq: s }, .. }) if *s == seq)
    }

    fn in_flight_with(&self, key: &K, ticket: u64) -> bool {
        matches!(self.entries.get(key), Some(Entry { state: State::InFlight { ticket: t, .. }, .. }) if *t == ticket)
    }

    /// Moves delayed keys due at `now` to the ready `Change` queue, in due order.
    fn promote_due(&mut self, now: Instant) {
        while let Some(timer) = self.timers.peek() {
            if timer.due > now {
                break;
            }
            let Some(Timer { seq, key, .. }) = self.timers.pop() else {
                break;
            };
            if !self.delayed_with(&key, seq) {
                continue;
            }
            let seq = self.next_seq();
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.state = State::Ready {
                    seq,
                    priority: Priority::Change,
                };
            }
            self.stats.delayed -= 1;
            self.stats.ready += 1;
            self.change.push_back((key, seq));
        }
    }

    /// When the earliest delayed key comes due (dropping stale timers).
    fn next_due(&mut self) -> Option<Instant> {
        while let Some(timer) = self.timers.peek() {
            if self.delayed_with(&timer.key, timer.seq) {
                return Some(timer.due);
            }
            self.timers.pop();
        }
        None
    }

    fn take_ready(&mut self) -> Option<(Work<K>, u64)> {
        let (key, priority) = loop {
            if let Some((key, seq)) = self.change.pop_front() {
                if self.ready_with(&key, seq) {
                    break (key, Priority::Change);
                }
            } else if let Some((key, seq)) = self.resync.pop_front() {
                if self.ready_with(&key, seq) {
                    break (key, Priority::Resync);
                }
            } else {
                return None;
            }
        };
        let ticket = self.next_seq();
        let policy = &self.policy;
        let entry = self.entries.get_mut(&key)?;
        entry.state = State::InFlight {
            ticket,
            dirty: None,
            discard: false,
        };
        let work = Work {
            if_failed: policy.after_failure(entry.retry),
            retry: entry.retry,
            key,
            priority,
        };
        self.stats.ready -= 1;
        self.stats.in_flight += 1;
        Some((work, ticket))
    }

    fn complete(&mut self, key: &K, ticket: u64, success: bool) -> Completion {
        let Some(entry) = self.entries.get_mut(key) else {
            return Completion::Discarded;
        };
        let State::InFlight {
            ticket: t,
            dirty,
            discard,
            ..
        } = entry.state
        else {
            return Completion::Discarded;
        };
        if t != ticket {
            return Completion::Discarded;
        }
        self.stats.in_flight -= 1;
        if discard || self.shut_down {
            self.entries.remove(key);
            return Completion::Discarded;
        }
        if success {
            entry.retry = RetryState::default();
            entry.previous_delay = Duration::ZERO;
            return match dirty {
                Some(priority) => {
                    let seq = self.next_seq();
                    self.requeue(key, seq, priority);
                    Completion::Requeued
                }
                None => {
                    self.entries.remove(key);
                    Completion::Done
                }
            };
        }
        let after = self.policy.after_failure(entry.retry);
        entry.retry = after.retry;
        if after.action == FailureAction::Cooldown {
            entry.previous_delay = Duration::ZERO;
        }
        if dirty == Some(Priority::Change) {
            // A change arrived during the attempt and may fix the cause: try again now. The
            // counters keep the failure.
            self.stats.retries_total += 1;
            if let Some(observer) = &self.observer {
                observer.retry_scheduled(key, &after, Duration::ZERO);
            }
            let seq = self.next_seq();
            self.requeue(key, seq, Priority::Change);
            return Completion::Requeued;
        }
        let delay = match after.action {
            FailureAction::Park => {
                entry.state = State::Parked;
                self.stats.parked += 1;
                self.stats.parked_total += 1;
                if let Some(observer) = &self.observer {
                    observer.parked(key, after.retry);
                }
                return Completion::Parked;
            }
            FailureAction::Backoff => {
                let delay =
                    self.policy
                        .backoff(after.retry.attempts, entry.previous_delay, &mut self.rng);
                entry.previous_delay = delay;
                delay
            }
            FailureAction::Cooldown => self.policy.cooldown,
        };
        self.stats.retries_total += 1;
        if let Some(observer) = &self.observer {
            observer.retry_scheduled(key, &after, delay);
        }
        let seq = self.next_seq();
        if let Some(entry) = self.entries.get_mut(key) {
            entry.state = State::Delayed { seq };
        }
        self.stats.delayed += 1;
        self.timers.push(Timer {
            due: Instant::now() + delay,
            seq,
            key: key.clone(),
        });
        Completion::Retry {
            action: after.action,
            delay,
        }
    }

    /// Puts an existing (formerly in-flight) entry back in the ready queue.
    fn requeue(&mut self, key: &K, seq: u64, priority: Priority) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.state = State::Ready { seq, priority };
        }
        self.stats.ready += 1;
        self.push_ready(key.clone(), seq, priority);
    }

    /// Fences `shards`, drops their waiting keys, marks their in-flight ones; returns the
    /// in-flight processings to wait for.
    fn revoke(&mut self, shards: &HashSet<K::Shard>) -> Vec<(K, u64)> {
        self.fenced.extend(shards.iter().cloned());
        let mut waiting = Vec::new();
        let stats = &mut self.stats;
        self.entries.retain(|key, entry| {
            if !shards.contains(&key.shard()) {
                return true;
            }
            match &mut entry.state {
                State::InFlight {
                    ticket,
                    dirty,
                    discard,
                    ..
                } => {
                    *dirty = None;
                    *discard = true;
                    entry.retry = RetryState::default();
                    entry.previous_delay = Duration::ZERO;
                    waiting.push((key.clone(), *ticket));
                    true
                }
                State::Ready { .. } => {
                    stats.ready -= 1;
                    false
                }
                State::Delayed { .. } => {
                    stats.delayed -= 1;
                    false
                }
                State::Parked => {
                    stats.parked -= 1;
                    false
                }
            }
        });
        self.compact();
        waiting
    }

    /// Drops stale elements of the ready queues and the timer heap.
    fn compact(&mut self) {
        let entries = &self.entries;
        let live = |key: &K, seq: u64| {
            matches!(
                entries.get(key).map(|e| &e.state),
                Some(State::Ready { seq: s, .. } | State::Delayed { seq: s }) if *s == seq
            )
        };
        self.change.retain(|(key, seq)| live(key, *seq));
        self.resync.retain(|(key, seq)| live(key, *seq));
        self.timers.retain(|timer| live(&timer.key, timer.seq));
    }

    fn forget(&mut self, key: &K) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        match &mut entry.state {
            State::InFlight { dirty, discard, .. } => {
                *dirty = None;
                *discard = true;
                entry.retry = RetryState::default();
                return;
            }
            State::Ready { .. } => self.stats.ready -= 1,
            State::Delayed { .. } => self.stats.delayed -= 1,
            State::Parked => self.stats.parked -= 1,
        }
        self.entries.remove(key);
    }

    /// Tells the observer about a changed depth or in-flight count.
    fn report(&mut self) {
        let now = (self.stats.depth(), self.stats.in_flight);
        if now != self.reported {
            self.reported = now;
            if let Some(observer) = &self.observer {
                observer.depth_changed(now.0, now.1);
            }
        }
    }
}
