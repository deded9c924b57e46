//! Self-fencing: every write the worker sends to the API server goes through [`Writes::send`].
//!
//! ```text
//! Writes::send(verb, request)
//!   ├─ count it in flight (before the check, so `idle` cannot miss it)
//!   ├─ WriteGate::check ── closed: WriteError::Fenced, request never sent, counted
//!   ├─ closed locally (`close`, voluntary shutdown)? ── the same
//!   └─ request, cut off after the write timeout ── WriteError::TimedOut
//! ```
//!
//! The gate of a running worker is its Lease's [`Fence`] (DESIGN.md, Sharding 3): it closes
//! when no renewal succeeded within the renew deadline, when the Lease was taken over, deleted
//! or released, and never reopens. The check happens right before the request is sent (a
//! future does nothing until polled), so a write starts only while the Lease is ours.
//!
//! The fencing argument (`runtime::lease` module docs, point 4) allows a checked write
//! [`LeaseConfig::write_budget`](runtime::lease::LeaseConfig::write_budget) to reach the API
//! server (4 s with the defaults). Two things keep writes within it:
//!
//! - every write runs under a total timeout below that budget (the worker uses ¾ of it;
//!   dropping the request future resets its HTTP/2 stream or closes its connection);
//! - the worker's writing client is built with kube's retry layer **off**
//!   (`kube::Config::default_retry = false`): that layer re-sends requests answered 429, 503 or
//!   504 for minutes, each time without a fence check. A failed write fails the reconcile; the
//!   work queue retries it later, through the gate again.
//!
//! A fenced write is not retried by anyone in particular: the reconcile fails with
//! [`ReconcileError::Fenced`](crate::reconcile::ReconcileError::Fenced) (counted in
//! `kubetemplater_writes_fenced_total`), and the worker, which watches the same fence, stops all
//! work and exits as soon as it closes.
//!
//! Tests and tools that hold no Lease use [`Writes::unfenced`] (what `Reconciler::new` starts
//! with).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use runtime::lease::{Fence, Fenced};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Whether this process may write to the API server now.
pub trait WriteGate: Send + Sync + fmt::Debug {
    /// `Ok` while writes are allowed. Called right before every write.
    fn check(&self) -> Result<(), Fenced>;
}

impl WriteGate for Fence {
    fn check(&self) -> Result<(), Fenced> {
        Fence::check(self)
    }
}

/// Always open: for tests and tools that hold no Lease.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unfenced;

impl WriteGate for Unfenced {
    fn check(&self) -> Result<(), Fenced> {
        Ok(())
    }
}

/// Why a write was not done.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The gate is closed: the request was not sent.
    #[error(transparent)]
    Fenced(Fenced),
    /// No answer within the write timeout: the request was abandoned (it may still have landed).
    #[error("no answer within {after:?} (the write timeout); abandoned")]
    TimedOut {
        /// The timeout.
        after: Duration,
    },
    /// The API server (or the connection to it) answered with an error.
    #[error(transparent)]
    Api(kube::Error),
}

impl WriteError {
    /// The API server's status code, for an [`WriteError::Api`] error that has one.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            WriteError::Api(kube::Error::Api(status)) => Some(status.code),
            _ => None,
        }
    }
}

struct Inner {
    gate: Arc<dyn WriteGate>,
    timeout: Option<Duration>,
    metrics: Metrics,
    /// Set by [`Writes::close`]; never unset.
    closed: OnceLock<Fenced>,
    /// Writes between their check and their end.
    in_flight: watch::Sender<usize>,
}

/// The gate, timeout and accounting of the worker's writes. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Writes(Arc<Inner>);

impl fmt::Debug for Writes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writes")
            .field("gate", &self.0.gate)
            .field("timeout", &self.0.timeout)
            .field("closed", &self.0.closed.get())
            .field("in_flight", &*self.0.in_flight.borrow())
            .finish()
    }
}

/// Decrements the in-flight count when the write ends (also when its future is dropped).
struct InFlight<'a>(&'a watch::Sender<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Writes {
    /// Writes checked against `gate`, each cut off after `timeout` (`None`: no timeout), counted
    /// in `metrics`.
    pub fn new(gate: Arc<dyn WriteGate>, timeout: Option<Duration>, metrics: Metrics) -> Self {
        Self(Arc::new(Inner {
            gate,
            timeout,
            metrics,
            closed: OnceLock::new(),
            in_flight: watch::Sender::new(0),
        }))
    }

    /// Always allowed, no timeout, metrics not registered anywhere: for tests and tools.
    pub fn unfenced() -> Self {
        Self::new(Arc::new(Unfenced), None, Metrics::default())
    }

    /// The write timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.0.timeout
    }

    /// Sends `request` (a `verb` write: `apply`, `delete`, `patch`, `patch_status`) if the gate
    /// is open right now; otherwise drops it unsent and returns [`WriteError::Fenced`].
    pub async fn send<T>(
        &self,
        verb: &'static str,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, WriteError> {
        // Counted before the check: `close` then `idle` sees every write that passed it.
        self.0.in_flight.send_modify(|n| *n += 1);
        let _in_flight = InFlight(&self.0.in_flight);
        if let Err(fenced) = self.check() {
            self.0.metrics.observe_fenced(verb);
            return Err(WriteError::Fenced(fenced));
        }
        self.0.metrics.observe_write(verb);
        match self.0.timeout {
            Some(after) => match tokio::time::timeout(after, request).await {
                Ok(result) => result.map_err(WriteError::Api),
                Err(_) => {
                    self.0.metrics.observe_write_timeout(verb);
                    Err(WriteError::TimedOut { after })
                }
            },
            None => request.await.map_err(WriteError::Api),
        }
    }

    /// `Ok` while writes are allowed (the gate is open and [`Writes::close`] was not called).
    pub fn check(&self) -> Result<(), Fenced> {
        if let Some(fenced) = self.0.closed.get() {
            return Err(fenced.clone());
        }
        self.0.gate.check()
    }

    /// Refuses every later write with `why` (the first reason wins), whatever the gate says.
    /// A voluntary shutdown closes the writes, waits for [`Writes::idle`], and only then
    /// releases its Lease: the next holder may start at once, so no write may still be going.
    pub fn close(&self, why: Fenced) {
        let _ = self.0.closed.set(why);
    }

    /// The number of writes between their check and their end.
    pub fn in_flight(&self) -> usize {
        *self.0.in_flight.borrow()
    }

    /// Resolves when no write is in flight (each ends within the write timeout).
    pub async fn idle(&self) {
        let mut in_flight = self.0.in_flight.subscribe();
        // The sender lives in `self`: the channel cannot close while we wait.
        let _ = in_flight.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::lease::LostReason;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A gate that is closed (taken over by "worker-1").
    #[derive(Debug)]
    struct Closed;

    impl WriteGate for Closed {
        fn check(&self) -> Result<(), Fenced> {
            Err(Fenced {
                lease: "ns/worker-0".into(),
                reason: LostReason::TakenOver {
                    holder: "worker-1".into(),
                },
            })
        }
    }

    fn registered() -> (prometheus_client::registry::Registry, Metrics) {
        let mut registry = prometheus_client::registry::Registry::with_prefix("kubetemplater");
        let metrics = Metrics::register(&mut registry);
        (registry, metrics)
    }

    fn text(registry: &prometheus_client::registry::Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry)
            .expect("encoding to a String cannot fail");
        text
    }

    #[tokio::test]
    async fn a_closed_gate_never_sends_and_counts() {
        let (registry, metrics) = registered();
        let writes = Writes::new(Arc::new(Closed), None, metrics);
        let sent = AtomicBool::new(false);
        let result = writes
            .send("apply", async {
                sent.store(true, Ordering::SeqCst);
                Ok(())
            })
            .await;
        let Err(WriteError::Fenced(fenced)) = result else {
            panic!("expected Fenced, got {result:?}");
        };
        assert_eq!(&*fenced.lease, "ns/worker-0");
        assert!(!sent.load(Ordering::SeqCst), "the request was never polled");
        assert_eq!(writes.in_flight(), 0);
        let text = text(&registry);
        assert!(
            text.contains("kubetemplater_writes_fenced_total{verb=\"apply\"} 1"),
            "{text}"
        );
        assert!(!text.contains("kubetemplater_api_requests_total{verb=\"apply\"}"));
    }

    #[tokio::test]
    async fn an_open_gate_sends_and_close_refuses_later_writes() {
        let (registry, metrics) = registered();
        let writes = Writes::new(Arc::new(Unfenced), None, metrics);
        assert_eq!(writes.send("patch", async { Ok(7) }).await.ok(), Some(7));
        writes.close(Fenced {
            lease: "ns/worker-0".into(),
            reason: LostReason::Released,
        });
        let result = writes.send("patch", async { Ok(8) }).await;
        assert!(
            matches!(&result, Err(WriteError::Fenced(f)) if f.reason == LostReason::Released),
            "{result:?}"
        );
        let text = text(&registry);
        assert!(text.contains("kubetemplater_api_requests_total{verb=\"patch\"} 1"));
        assert!(text.contains("kubetemplater_writes_fenced_total{verb=\"patch\"} 1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_write_is_cut_off_and_idle_waits_for_writes_in_flight() {
        let writes = Writes::new(
            Arc::new(Unfenced),
            Some(Duration::from_secs(3)),
            Metrics::default(),
        );
        let slow = tokio::spawn({
            let writes = writes.clone();
            async move {
                writes
                    .send("apply", async {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok(())
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(writes.in_flight(), 1);
        let started = tokio::time::Instant::now();
        writes.idle().await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        let result = slow.await.expect("the task does not panic");
        assert!(
            matches!(result, Err(WriteError::TimedOut { after }) if after == Duration::from_secs(3))
        );
    }
}
