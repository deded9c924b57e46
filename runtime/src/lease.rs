//! `coordination.k8s.io/v1` Leases with self-fencing, for a worker's own Lease (its liveness:
//! DESIGN.md, Sharding 3) and the coordinators' shared one (leader election).
//!
//! - [`LeaseHolder::acquire`] waits until the Lease is ours: creates it when absent, takes it
//!   over when it names no holder (released) or its holder's `renewTime +
//!   leaseDurationSeconds` has passed (bumping `leaseTransitions`: the term), and otherwise
//!   retries every `retry_period`. Every write is a create or a replace at the resourceVersion
//!   just read, so of several contenders exactly one wins; the others read again.
//! - The holder renews every `retry_period` on a dedicated OS thread with its own
//!   current-thread tokio runtime and its **own `kube::Client`**: a `kube::Client` queues its
//!   requests through a task spawned on the runtime that built it (`tower::buffer::Buffer`),
//!   and its connections are driven there too, so a shared client would make renewals wait on
//!   a main runtime busy with reconciles. Both clients come from the same `kube::Config`.
//! - Its [`Fence`] says whether it may write; its `watch` channel of [`LeaseState`] says
//!   `Held` after every renewal and `Lost` once.
//! - [`LeaseHolder::release`] (voluntary shutdown) closes the fence, stops renewing, and
//!   empties the holder if the Lease is still ours, so another takes it over at once. Dropping
//!   a holder without release is a crash: the Lease expires on its own.
//! - [`LeaderElector`] / [`run_as_leader`]: the coordinators' election on
//!   [`COORDINATOR_LEASE_NAME`]; [`list_live`], [`is_expired`] and [`wait_until_expired`]:
//!   worker membership, and the coordinator's wait for an unresponsive worker's Lease to expire.
//!
//! # Why a fenced holder stops writing before anyone else can take over
//!
//! Let `s` be the instant the holder *sent* its last successful renewal (or its acquiring
//! write), `W_h` the holder's wall clock and `W_c` that of a contender (or of the coordinator
//! judging membership), `D` = `leaseDurationSeconds`, `R` = renew deadline, `ε` = the largest
//! clock difference, `|W_c − W_h| ≤ ε` ([`LeaseConfig::max_clock_skew`]).
//!
//! 1. The renewal records `renewTime = r`, read from `W_h` after `s` and rounded up to the
//!    microsecond, so `r ≥ W_h(s)`. Failed renewals change nothing; a later successful one
//!    only raises `r` (and moves `s` with it).
//! 2. The fence is open only while `now < s + R` on the monotonic clock **and**
//!    `W_h(now) < W_h(s) + R` on the wall clock (the monotonic clock stops while a machine is
//!    suspended; the wall clock does not).
//! 3. Another process takes the Lease over (or the coordinator deems the worker dead) only at a
//!    time `t` with `W_c(t) ≥ r + D`, judged by the Lease's own recorded `renewTime` and
//!    `leaseDurationSeconds`. Then
//!    `W_h(t) ≥ W_c(t) − ε ≥ r + D − ε ≥ W_h(s) + D − ε > W_h(s) + R`,
//!    because [`LeaseConfig::validate`] requires **`R + ε < D`**. So at `t` the holder's fence
//!    has been closed for at least `D − R − ε` (by its wall-clock half, whatever its monotonic
//!    clock says).
//! 4. A write checks the fence right before it is sent. It can still land at the API server
//!    after the check; `D − R − ε` ([`LeaseConfig::write_budget`], 4 s with the defaults
//!    15 s / 10 s / 1 s) is how long it may take without overlapping the next holder, so writes
//!    should use a request timeout below it.
//! 5. A release happens only after the releaser's fence is closed, so a takeover of a released
//!    Lease (no waiting) is safe too.
//!
//! The worker's handoff relies on 3: when a worker does not acknowledge a revoke, the
//! coordinator waits ([`wait_until_expired`]) until the worker's Lease has expired by its own
//! recorded times; from then on the worker cannot pass its fence.
//!
//! # A fence never reopens
//!
//! Once closed — deadline passed, Lease taken over or deleted, released, holder dropped — a
//! [`Fence`] stays closed, even if a renewal sent before the deadline is answered after it;
//! its [`LeaseHolder`] stops renewing. Holding again means acquiring again: a new
//! `LeaseHolder`, a new `Fence`, and a new term (`leaseTransitions` + 1), which the worker
//! announces as a new session. A Lease that still names our identity is *not* taken over
//! before it expires (an identity reused by another live process cannot be told from a
//! restart); a fenced holder that wants its Lease back at once releases it first.

mod config;
mod error;
mod fence;
mod holder;
mod leader;
mod record;

pub use config::{
    COMPONENT_LABEL, COORDINATOR_COMPONENT, COORDINATOR_LEASE_NAME, DEFAULT_LEASE_DURATION,
    DEFAULT_MAX_CLOCK_SKEW, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD, LeaseConfig,
    WORKER_COMPONENT, WORKER_LEASE_SELECTOR,
};
pub use error::{Fenced, LeaseError, LostReason};
pub use fence::{Fence, LeaseState};
pub use holder::{AcquiredFrom, Acquisition, LeaseHolder};
pub use leader::{LeaderElector, LeaderExit, Leadership, run_as_leader};
pub use record::{
    LeaseInfo, Vacated, expires_at, holder_of, is_expired, list, list_live, vacated,
    wait_until_expired,
};
