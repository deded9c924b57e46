//! The retry policy: exponential backoff with jitter inside a cycle, a cooldown between cycles,
//! parking after the last cycle. Pure, except for the random numbers the jitter draws.

use std::time::Duration;

use rand::Rng;

/// How a backoff delay is randomised, so that keys which failed together (an API server outage)
/// do not all retry at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// No randomness: failure n of a cycle waits exactly `initial_delay × 2^(n-1)`, capped at
    /// `max_delay` (the original's 1, 2, 4, 8, 16 s).
    None,
    /// "Full jitter": failure n waits a uniform random delay in `[0, initial_delay × 2^(n-1)]`
    /// (capped at `max_delay`). Spreads a burst of failures best; a retry can come early.
    #[default]
    Full,
    /// "Decorrelated jitter": failure n waits a uniform random delay in
    /// `[initial_delay, 3 × previous delay]` (capped at `max_delay`; the previous delay of the
    /// first failure of a cycle counts as `initial_delay`). Never shorter than `initial_delay`.
    Decorrelated,
}

/// When and how often a failed key is retried. The defaults are the original's
/// (`QUEUE_MAX_RETRIES` 5, `QUEUE_INITIAL_RETRY_DELAY` 1 s, `QUEUE_MAX_RETRY_DELAY` 300 s,
/// `QUEUE_MAX_RETRY_CYCLES` 3, the cooldown being the max delay), with full jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff before the first retry of a cycle (before jitter).
    pub initial_delay: Duration,
    /// Cap of every backoff delay.
    pub max_delay: Duration,
    /// Failures of a cycle that are retried with backoff; the next failure starts a cooldown.
    /// 0: every failure goes straight to a cooldown.
    pub max_attempts: u32,
    /// Wait between the last failure of a cycle and the first attempt of the next (not jittered:
    /// the jittered backoffs before it have already spread the keys out).
    pub cooldown: Duration,
    /// A failure while already in cycle `max_cycles` (counted from 0) parks the key. 0: never
    /// park, cycle forever.
    pub max_cycles: u32,
    /// How backoff delays are randomised.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_attempts: 5,
            cooldown: Duration::from_secs(300),
            max_cycles: 3,
            jitter: Jitter::Full,
        }
    }
}

/// A key's failure counters, as the original writes them to status: `attempts` is
/// `retryCount` (failures retried in the current cycle), `cycle` is `retryCycle` (cycles
/// completed). Both are 0 for a key that has not failed since its last success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RetryState {
    /// Failures retried with backoff in the current cycle (`retryCount`), `0..=max_attempts`.
    pub attempts: u32,
    /// Cooldowns passed so far (`retryCycle`).
    pub cycle: u32,
}

/// What a failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureAction {
    /// Retried after a jittered exponential backoff.
    Backoff,
    /// The cycle's attempts are used up: retried after the cooldown, in a new cycle.
    Cooldown,
    /// The cycles are used up: not retried until a `Change` event arrives (the original's
    /// `Paused due to repeated failures`).
    Park,
}

/// The counters after a failure and what the queue does with the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AfterFailure {
    /// The counters after the failure (what to write as `retryCount`/`retryCycle`).
    pub retry: RetryState,
    /// What happens to the key.
    pub action: FailureAction,
}

impl RetryPolicy {
    /// What a failure does to a key with counters `state`.
    ///
    /// With the defaults: failures 1–5 back off (`attempts` 1..=5), failure 6 starts cycle 1
    /// after the cooldown (`attempts` 0), failures 7–11 back off, 12 starts cycle 2, 13–17 back
    /// off, 18 starts cycle 3, and failure 19 parks: the original's "19th failure, about 16.5
    /// min" (3 × (1+2+4+8+16) s + 3 × 300 s = 993 s without jitter).
    pub fn after_failure(&self, state: RetryState) -> AfterFailure {
        if self.max_cycles != 0 && state.cycle >= self.max_cycles {
            AfterFailure {
                retry: state,
                action: FailureAction::Park,
            }
        } else if state.attempts < self.max_attempts {
            AfterFailure {
                retry: RetryState {
                    attempts: state.attempts + 1,
                    cycle: state.cycle,
                },
                action: FailureAction::Backoff,
            }
        } else {
            AfterFailure {
                retry: RetryState {
                    attempts: 0,
                    cycle: state.cycle.saturating_add(1),
                },
                action: FailureAction::Cooldown,
            }
        }
    }

    /// The un-jittered backoff of failure `attempt` (1-based) of a cycle:
    /// `initial_delay × 2^(attempt-1)`, capped at `max_delay`. Full jitter draws below it.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }

    /// The delay before retrying failure `attempt` (1-based) of a cycle; `previous` is the
    /// previous delay of this cycle (zero for its first failure), used by decorrelated jitter.
    pub(crate) fn backoff<R: Rng>(
        &self,
        attempt: u32,
        previous: Duration,
        rng: &mut R,
    ) -> Duration {
        match self.jitter {
            Jitter::None => self.backoff_ceiling(attempt),
            Jitter::Full => uniform(rng, Duration::ZERO, self.backoff_ceiling(attempt)),
            Jitter::Decorrelated => {
                let previous = previous.max(self.initial_delay);
                let high = previous.saturating_mul(3).min(self.max_delay);
                let low = self.initial_delay.min(high);
                uniform(rng, low, high)
            }
        }
    }
}

/// A uniform random duration in `[low, high]` (nanosecond resolution).
fn uniform<R: Rng>(rng: &mut R, low: Duration, high: Duration) -> Duration {
    let low = nanos(low);
    let high = nanos(high).max(low);
    Duration::from_nanos(rng.random_range(low..=high))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
