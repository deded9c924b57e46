//! The write permission of a Lease holder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::{Fenced, LostReason};

/// What a holder knows about its Lease, published on a `watch` channel
/// ([`LeaseHolder::state`](super::LeaseHolder::state), [`Fence::state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Ours: the last successful renewal was sent at `renewed_at`; writes are allowed until
    /// `deadline` (`renewed_at + renew_deadline`) unless a later renewal succeeds.
    Held {
        /// Send instant of the last successful renewal (or of the acquiring write).
        renewed_at: Instant,
        /// When the fence closes unless renewed before.
        deadline: Instant,
    },
    /// No longer ours, for good (this holder never holds again).
    Lost {
        /// Why.
        reason: LostReason,
    },
}

impl LeaseState {
    /// Whether this is [`LeaseState::Held`].
    pub fn is_held(&self) -> bool {
        matches!(self, LeaseState::Held { .. })
    }
}

/// Nanoseconds since the Unix epoch (0 before it).
pub(crate) fn wall_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
struct Inner {
    /// `namespace/name`.
    lease: Arc<str>,
    renew_deadline: Duration,
    /// Monotonic send instant of the acquiring write; `renewed_mono` counts from here.
    origin: Instant,
    /// Nanoseconds after `origin` of the send instant of the last successful renewal.
    renewed_mono: AtomicU64,
    /// The same send instant on the wall clock (nanoseconds since the Unix epoch).
    renewed_wall: AtomicU64,
    /// Set once, when the fence closes; never unset.
    lost: OnceLock<LostReason>,
    state: watch::Sender<LeaseState>,
}

/// The write permission of a Lease holder: cheap to clone, cheap to [`check`](Fence::check)
/// (two atomic loads and two clock reads).
///
/// Open while `now < s + renew_deadline`, where `s` is the send instant of the last successful
/// renewal, measured on the monotonic clock *and* on the wall clock (the monotonic clock stops
/// while a machine is suspended; the wall clock does not, and others judge expiry by wall
/// clocks). Once closed — deadline passed, Lease lost, released or its holder dropped — it
/// stays closed: a late renewal does not reopen it. Holding again means acquiring again, which
/// gives a new `Fence` (and a new term).
#[derive(Debug, Clone)]
pub struct Fence(Arc<Inner>);

impl Fence {
    /// A fence opened by a successful write sent at `sent` (`sent_wall` on the wall clock).
    pub(crate) fn new(
        lease: Arc<str>,
        renew_deadline: Duration,
        sent: Instant,
        sent_wall: SystemTime,
    ) -> Self {
        let state = watch::Sender::new(LeaseState::Held {
            renewed_at: sent,
            deadline: sent + renew_deadline,
        });
        Self(Arc::new(Inner {
            lease,
            renew_deadline,
            origin: sent,
            renewed_mono: AtomicU64::new(0),
            renewed_wall: AtomicU64::new(wall_nanos(sent_wall)),
            lost: OnceLock::new(),
            state,
        }))
    }

    /// `namespace/name` of the Lease.
    pub fn lease(&self) -> &str {
        &self.0.lease
    }

    /// Send instant of the last successful renewal.
    pub fn renewed_at(&self) -> Instant {
        self.0.origin + Duration::from_nanos(self.0.renewed_mono.load(Ordering::Acquire))
    }

    /// When the fence closes unless a renewal succeeds before (on the monotonic clock; the
    /// wall-clock bound can only close it earlier, e.g. after a suspend).
    pub fn deadline(&self) -> Instant {
        self.renewed_at() + self.0.renew_deadline
    }

    /// `Ok` while writes are allowed. Call it right before every write.
    pub fn check(&self) -> Result<(), Fenced> {
        self.check_at(Instant::now(), SystemTime::now())
    }

    /// Whether writes are allowed now.
    pub fn is_open(&self) -> bool {
        self.check().is_ok()
    }

    /// Why the fence is closed, once it is.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.0.lost.get().cloned()
    }

    /// The state channel ([`LeaseState::Held`] on every renewal, then [`LeaseState::Lost`]).
    pub fn state(&self) -> watch::Receiver<LeaseState> {
        self.0.state.subscribe()
    }

    /// Resolves once the fence is closed (for `select!`), with why. Wakes at the deadline by
    /// itself, so it resolves even when nobody calls [`check`](Fence::check).
    pub async fn lost(&self) -> Fenced {
        let mut state = self.0.state.subscribe();
        loop {
            if let Err(fenced) = self.check() {
                return fenced;
            }
            let deadline = tokio::time::Instant::from_std(self.deadline());
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        // Unreachable while we hold the sender; fall back to the timer.
                        tokio::time::sleep_until(deadline).await;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// The decision of [`check`](Fence::check) at given clock readings.
    pub(crate) fn check_at(&self, now: Instant, now_wall: SystemTime) -> Result<(), Fenced> {
        if self.0.lost.get().is_none() && !self.before_deadline(now, now_wall) {
            self.close(LostReason::RenewDeadlinePassed);
        }
        match self.0.lost.get() {
            None => Ok(()),
            Some(reason) => Err(Fenced {
                lease: self.0.lease.clone(),
                reason: reason.clone(),
            }),
        }
    }

    fn before_deadline(&self, now: Instant, now_wall: SystemTime) -> bool {
        let wall_deadline = self
            .0
            .renewed_wall
            .load(Ordering::Acquire)
            .saturating_add(nanos(self.0.renew_deadline));
        now < self.deadline() && wall_nanos(now_wall) < wall_deadline
    }

    /// Records a successful renewal sent at `sent` / `sent_wall`. Refused (returns `false`)
    /// when the fence is already closed or its deadline has passed by `now`: a fence never
    /// reopens.
    pub(crate) fn extend_at(
        &self,
        sent: Instant,
        sent_wall: SystemTime,
        now: Instant,
        now_wall: SystemTime,
    ) -> bool {
        if self.check_at(now, now_wall).is_err() {
            return false;
        }
        self.0.renewed_mono.fetch_max(
            nanos(sent.saturating_duration_since(self.0.origin)),
            Ordering::AcqRel,
        );
        self.0
            .renewed_wall
            .fetch_max(wall_nanos(sent_wall), Ordering::AcqRel);
        let held = LeaseState::Held {
            renewed_at: self.renewed_at(),
            deadline: self.deadline(),
        };
        // Never overwrite Lost (a concurrent close may have won).
        self.0.state.send_if_modified(|state| {
            if state.is_held() {
                *state = held;
                true
            } else {
                false
            }
        });
        true
    }

    /// [`Fence::extend_at`] now.
    pub(crate) fn extend(&self, sent: Instant, sent_wall: SystemTime) -> bool {
        self.extend_at(sent, sent_wall, Instant::now(), SystemTime::now())
    }

    /// Closes the fence for good; the first reason wins. Returns whether this call closed it.
    pub(crate) fn close(&self, reason: LostReason) -> bool {
        if self.0.lost.set(reason.clone()).is_err() {
            return false;
        }
        tracing::warn!(lease = %self.0.lease, %reason, "Lease lost: fenced");
        self.0.state.send_replace(LeaseState::Lost { reason });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn fence(start: Instant, wall: SystemTime) -> Fence {
        Fence::new("ns/l".into(), 1000 * MS, start, wall)
    }

    #[test]
    fn open_strictly_before_send_time_plus_deadline() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let f = fence(t0, w0);
        assert!(f.check_at(t0 + 999 * MS, w0 + 999 * MS).is_ok());
        assert_eq!(f.deadline(), t0 + 1000 * MS);
        let err = f.check_at(t0 + 1000 * MS, w0 + 1000 * MS).unwrap_err();
        assert_eq!(err.reason, LostReason::RenewDeadlinePassed);
        assert_eq!(&*err.lease, "ns/l");
    }

    #[test]
    fn a_renewal_moves_the_deadline_to_its_send_time_plus_deadline() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let f = fence(t0, w0);
        // Sent at 300 ms, answered at 900 ms: the deadline counts from 300 ms, not 900 ms.
        assert!(f.extend_at(t0 + 300 * MS, w0 + 300 * MS, t0 + 900 * MS, w0 + 900 * MS));
        assert_eq!(f.renewed_at(), t0 + 300 * MS);
        assert_eq!(f.deadline(), t0 + 1300 * MS);
        assert!(f.check_at(t0 + 1299 * MS, w0 + 1299 * MS).is_ok());
        assert!(f.check_at(t0 + 1300 * MS, w0 + 1300 * MS).is_err());
    }

    #[test]
    fn an_older_renewal_answered_late_does_not_move_the_deadline_back() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let f = fence(t0, w0);
        assert!(f.extend_at(t0 + 500 * MS, w0 + 500 * MS, t0 + 510 * MS, w0 + 510 * MS));
        assert!(f.extend_at(t0 + 200 * MS, w0 + 200 * MS, t0 + 600 * MS, w0 + 600 * MS));
        assert_eq!(f.deadline(), t0 + 1500 * MS);
    }

    #[test]
    fn the_wall_clock_closes_it_too_as_after_a_suspend() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let f = fence(t0, w0);
        // The monotonic clock says 100 ms passed, the wall clock says 30 s.
        let err = f
            .check_at(t0 + 100 * MS, w0 + Duration::from_secs(30))
            .unwrap_err();
        assert_eq!(err.reason, LostReason::RenewDeadlinePassed);
    }

    #[test]
    fn closed_is_terminal() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let f = fence(t0, w0);
        assert!(f.check_at(t0 + 1001 * MS, w0 + 1001 * MS).is_err());
        // A renewal sent before the deadline but answered after it does not reopen the fence.
        assert!(!f.extend_at(t0 + 900 * MS, w0 + 900 * MS, t0 + 1002 * MS, w0 + 1002 * MS));
        assert!(f.check_at(t0 + 10 * MS, w0 + 10 * MS).is_err());
        assert_eq!(
            *f.state().borrow(),
            LeaseState::Lost {
                reason: LostReason::RenewDeadlinePassed
            }
        );
        // Unchecked: a renewal answered after the deadline is refused all the same.
        let g = fence(t0, w0);
        assert!(!g.extend_at(t0 + 900 * MS, w0 + 900 * MS, t0 + 1000 * MS, w0 + 1000 * MS));
        assert!(g.check_at(t0, w0).is_err());
    }

    #[test]
    fn the_first_reason_wins_and_held_never_overwrites_lost() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let f = fence(t0, w0);
        assert!(f.close(LostReason::Deleted));
        assert!(!f.close(LostReason::Released));
        assert_eq!(f.lost_reason(), Some(LostReason::Deleted));
        assert!(!f.extend_at(t0 + 10 * MS, w0 + 10 * MS, t0 + 20 * MS, w0 + 20 * MS));
        assert!(!f.state().borrow().is_held());
    }

    #[tokio::test]
    async fn lost_resolves_when_closed() {
        let f = Fence::new(
            "ns/l".into(),
            Duration::from_secs(3600),
            Instant::now(),
            SystemTime::now(),
        );
        let clone = f.clone();
        let waiter = tokio::spawn(async move { clone.lost().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        f.close(LostReason::TakenOver {
            holder: "other".into(),
        });
        let fenced = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("lost() resolves once closed")
            .unwrap();
        assert_eq!(
            fenced.reason,
            LostReason::TakenOver {
                holder: "other".into()
            }
        );
    }

    #[tokio::test]
    async fn lost_resolves_at_the_deadline_without_anyone_checking() {
        let start = Instant::now();
        let f = Fence::new("ns/l".into(), 100 * MS, start, SystemTime::now());
        let fenced = tokio::time::timeout(Duration::from_secs(10), f.lost())
            .await
            .expect("lost() resolves by itself at the deadline");
        assert!(start.elapsed() >= 100 * MS);
        assert_eq!(fenced.reason, LostReason::RenewDeadlinePassed);
        assert_eq!(
            *f.state().borrow(),
            LeaseState::Lost {
                reason: LostReason::RenewDeadlinePassed
            }
        );
    }
}
