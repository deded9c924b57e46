//! The worker's side of the `WorkerService.Session` stream (protocol: the `proto` crate docs).
//!
//! One task keeps one stream to the coordinator leader open, reconnecting with a fresh Hello
//! listing what it holds. A dropped stream revokes nothing (fail static): the worker keeps
//! serving its buckets under its Lease.
//!
//! **Which coordinator.** [`SessionConfig::coordinator`] lists addresses (the replicas, or one
//! Service in front of them); only the leader accepts a session, a standby answers
//! `UNAVAILABLE`. Addresses are tried in turn: after a failure before the Welcome (cannot
//! connect, `UNAVAILABLE` or any other refusal, a deposed leader) the next address is tried at
//! once; only when a whole round of addresses failed does the worker wait (0.5 s doubling to
//! 30 s, jittered). After a welcomed session ends, the same address is tried first again, after
//! that backoff (reset once a session lasted 30 s), so a coordinator that welcomes and drops at
//! once cannot make it spin.
//!
//! **Leaving.** [`Session::leave`] sends Leaving on the open session and is remembered: a
//! session opened later sends it again right after the Welcome, so a leader change during a
//! drain does not lose it.
//!
//! Grants start work on new buckets at once; each Revoke is released on its own task (stop new
//! work, finish in-flight, stop watches) and acknowledged with Released, so a slow release does
//! not hold up other messages. Every message carries the trace context of the span that sent it,
//! so a handoff is one trace across the coordinator and both workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use proto::v1::{
    self, CoordinatorMessage, Hello, Leaving, Released, WorkerMessage, coordinator_message,
    worker_service_client::WorkerServiceClient,
};
use rand::Rng as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::identity::{IdentityError, WorkerTls};
use crate::metrics::Metrics;
use crate::ownership::Ownership;

/// What the session drives: the worker's pipeline for its buckets.
pub trait BucketHost: Send + Sync + 'static {
    /// Starts work on newly granted buckets (watch, list, reconcile everything in them).
    fn start(&self, buckets: &[u32]);
    /// Stops taking work for `buckets`, waits for their in-flight work, stops their watches.
    fn stop(&self, buckets: Vec<u32>) -> BoxFuture<'static, ()>;
    /// The load to report.
    fn load(&self) -> v1::Load;
}

/// Who this worker is, for the Hello, and where the coordinators are.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The coordinators' gRPC URLs, tried in turn (only the leader accepts a session). At least
    /// one.
    pub coordinator: Vec<String>,
    /// Worker id = Lease name.
    pub worker_id: String,
    /// Namespace of the worker's Lease.
    pub lease_namespace: String,
    /// B.
    pub buckets: u32,
    /// TLS with a client certificate naming this worker ([`crate::identity`]); `None` connects
    /// in plaintext (tests against a coordinator in the same process).
    pub tls: Option<Arc<WorkerTls>>,
}

/// The session task's shared state.
#[derive(Clone)]
pub struct Session {
    config: SessionConfig,
    ownership: Arc<Mutex<Ownership>>,
    host: Arc<dyn BucketHost>,
    metrics: Metrics,
    outbox: Arc<Mutex<Option<mpsc::Sender<WorkerMessage>>>>,
    /// Set by [`Session::leave`]: the reason, sent again on every later session.
    leaving: Arc<Mutex<Option<String>>>,
    /// Sessions welcomed so far.
    welcomes: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why one connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the coordinator refused the session: {0}")]
    Refused(tonic::Status),
    #[error("the coordinator's first message was not a Welcome")]
    NoWelcome,
    #[error("the coordinator has {theirs} buckets, this worker {ours}: refusing to work with it")]
    BucketCount { ours: u32, theirs: u32 },
    #[error("the stream ended")]
    Ended,
    #[error("a deposed leader (epoch {theirs}, known {known}) welcomed us")]
    Deposed { theirs: u64, known: u64 },
    #[error("no coordinator address is configured")]
    NoAddress,
    #[error("no client certificate: {0}")]
    Identity(#[from] IdentityError),
}

impl SessionError {
    /// The coordinator refused the client certificate's identity.
    fn is_identity_refused(&self) -> bool {
        matches!(self, SessionError::Refused(status) if matches!(
            status.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ))
    }

    /// A standby's "not the leader" (or a shutting-down coordinator's).
    fn is_unavailable(&self) -> bool {
        matches!(self, SessionError::Refused(status) if status.code() == tonic::Code::Unavailable)
    }
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// Which coordinator address to try next, and how long to wait before it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rotation {
    addresses: usize,
    next: usize,
    failed_in_round: usize,
    backoff: Duration,
}

impl Rotation {
    fn new(addresses: usize) -> Self {
        Self {
            addresses: addresses.max(1),
            next: 0,
            failed_in_round: 0,
            backoff: INITIAL_BACKOFF,
        }
    }

    /// Index of the address to try now.
    fn current(&self) -> usize {
        self.next
    }

    fn take_backoff(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }

    /// The attempt at the current address failed before a Welcome: move to the next address.
    /// Returns how long to wait first: nothing while the round has addresses left, the
    /// backoff (then doubled) once every address failed in a row.
    fn failed(&mut self) -> Option<Duration> {
        self.next = (self.next + 1) % self.addresses;
        self.failed_in_round += 1;
        if self.failed_in_round < self.addresses {
            return None;
        }
        self.failed_in_round = 0;
        Some(self.take_backoff())
    }

    /// A welcomed session at the current address ended after `lasted`: try the same address
    /// first again, after the backoff (reset when the session was stable), and start a new
    /// round from it.
    fn ended(&mut self, lasted: Duration) -> Duration {
        self.failed_in_round = 0;
        if lasted >= STABLE_SESSION {
            self.backoff = INITIAL_BACKOFF;
        }
        self.take_backoff()
    }
}

/// `error: its source: …`: tonic's transport errors say little without their sources.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain data updated in single steps.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn trace_context() -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier
}

fn parent_of(carrier: &HashMap<String, String>) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(carrier)
}

impl Session {
    /// A session for `host`, sharing `ownership` with the rest of the worker.
    pub fn new(
        config: SessionConfig,
        ownership: Arc<Mutex<Ownership>>,
        host: Arc<dyn BucketHost>,
        metrics: Metrics,
    ) -> Self {
        Self {
            config,
            ownership,
            host,
            metrics,
            outbox: Arc::default(),
            leaving: Arc::default(),
            welcomes: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Keeps a session open until `cancel`, trying the coordinator addresses in turn (see the
    /// module docs).
    pub async fn run(self, cancel: CancellationToken) {
        let addresses = &self.config.coordinator;
        if addresses.is_empty() {
            tracing::error!(error = %SessionError::NoAddress, "no coordinator session; still serving held buckets");
            return;
        }
        let mut rotation = Rotation::new(addresses.len());
        let mut leader_epoch = 0u64;
        loop {
            let addr = &addresses[rotation.current()];
            let mut welcomed = false;
            let started = Instant::now();
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.connection(addr, &mut leader_epoch, &mut welcomed) => r,
            };
            *lock(&self.outbox) = None;
            if let (Some(tls), Err(error)) = (&self.config.tls, &result)
                && error.is_identity_refused()
            {
                tls.invalidate().await;
            }
            let wait = if welcomed {
                let error = result.err().unwrap_or(SessionError::Ended);
                tracing::warn!(error = %chain(&error), coordinator = %addr, "coordinator session ended; still serving held buckets");
                Some(rotation.ended(started.elapsed()))
            } else {
                let error = result.err().unwrap_or(SessionError::Ended);
                if error.is_unavailable() {
                    tracing::debug!(error = %chain(&error), coordinator = %addr, "not the leader; trying the next coordinator");
                } else {
                    tracing::info!(error = %chain(&error), coordinator = %addr, "no session; trying the next coordinator");
                }
                let wait = rotation.failed();
                if let Some(wait) = wait {
                    tracing::warn!(coordinators = ?addresses, retry_in = ?wait, "no coordinator accepted a session; still serving held buckets");
                    // A handshake the coordinators refused (a CA that changed …) fails like an
                    // unreachable address: after a whole failed round, certify again.
                    if let Some(tls) = &self.config.tls {
                        tls.invalidate().await;
                    }
                }
                wait
            };
            if let Some(wait) = wait {
                let jitter = rand::rng().random_range(0.8..1.2);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(wait.mul_f64(jitter)) => {}
                }
            }
        }
    }

    /// Tells the coordinator this worker is leaving (it revokes everything); returns whether a
    /// session was open to send it on. Remembered: every session opened later sends it again.
    pub async fn leave(&self, reason: &str) -> bool {
        *lock(&self.leaving) = Some(reason.to_owned());
        let outbox = lock(&self.outbox).clone();
        match outbox {
            Some(tx) => tx
                .send(WorkerMessage::from(Leaving {
                    reason: reason.to_owned(),
                }))
                .await
                .is_ok(),
            None => false,
        }
    }

    /// Whether a session is open now (welcomed and not ended).
    pub fn is_connected(&self) -> bool {
        lock(&self.outbox).is_some()
    }

    /// The number of sessions the coordinator welcomed so far (for readiness: connected once).
    pub fn welcomes(&self) -> watch::Receiver<u64> {
        self.welcomes.subscribe()
    }

    async fn connection(
        &self,
        addr: &str,
        leader_epoch: &mut u64,
        welcomed: &mut bool,
    ) -> Result<(), SessionError> {
        let connect = |source| SessionError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let endpoint = match &self.config.tls {
            Some(tls) => tls.for_connection(addr).await?.endpoint(addr),
            None => tonic::transport::Endpoint::from_shared(addr.to_owned()),
        };
        let endpoint = endpoint
            .map_err(connect)?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect().await.map_err(connect)?;
        let (tx, rx) = mpsc::channel::<WorkerMessage>(64);
        let held: Vec<v1::BucketEpoch> =
            proto::bucket_epochs(lock(&self.ownership).held().collect::<Vec<_>>());
        let hello = Hello {
            worker_id: self.config.worker_id.clone(),
            lease_namespace: self.config.lease_namespace.clone(),
            held,
            bucket_count: self.config.buckets,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        // The channel is empty and its receiver alive: this cannot fail.
        let _ = tx.send(WorkerMessage::from(hello)).await;
        let mut inbound = WorkerServiceClient::new(channel)
            .session(ReceiverStream::new(rx))
            .await
            .map_err(SessionError::Refused)?
            .into_inner();

        let welcome = match inbound.message().await.map_err(SessionError::Refused)? {
            Some(CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Welcome(w)),
                ..
            }) => w,
            Some(_) => return Err(SessionError::NoWelcome),
            None => return Err(SessionError::Ended),
        };
        if welcome.bucket_count != self.config.buckets {
            return Err(SessionError::BucketCount {
                ours: self.config.buckets,
                theirs: welcome.bucket_count,
            });
        }
        if welcome.leader_epoch < *leader_epoch {
            tracing::warn!(
                coordinator = %welcome.coordinator_id,
                their_epoch = welcome.leader_epoch,
                known_epoch = *leader_epoch,
                "a deposed leader welcomed us; trying the next coordinator"
            );
            return Err(SessionError::Deposed {
                theirs: welcome.leader_epoch,
                known: *leader_epoch,
            });
        }
        *leader_epoch = welcome.leader_epoch;
        *welcomed = true;
        tracing::info!(coordinator = %welcome.coordinator_id, %addr, leader_epoch = welcome.leader_epoch, "session with the coordinator open");
        *lock(&self.outbox) = Some(tx.clone());
        self.welcomes.send_modify(|n| *n += 1);
        // Set before the outbox was read by `leave`, or read here after it was set: either
        // way the coordinator hears it (perhaps twice, which is harmless).
        let leaving = lock(&self.leaving).clone();
        if let Some(reason) = leaving
            && tx
                .send(WorkerMessage::from(Leaving { reason }))
                .await
                .is_err()
        {
            return Err(SessionError::Ended);
        }
        let interval = welcome.load_report_interval_or_default();
        let mut ticker = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if tx.send(WorkerMessage::from(self.host.load())).await.is_err() {
                        return Err(SessionError::Ended);
                    }
                }
                message = inbound.message() => {
                    let Some(message) = message.map_err(SessionError::Refused)? else {
                        return Err(SessionError::Ended);
                    };
                    self.handle(message, &tx);
                }
            }
        }
    }

    fn handle(&self, message: CoordinatorMessage, tx: &mpsc::Sender<WorkerMessage>) {
        let parent = parent_of(&message.trace_context);
        match message.kind {
            Some(coordinator_message::Kind::Grant(grant)) => {
                let span = tracing::info_span!("grant", handoff = %grant.handoff_id, buckets = grant.buckets.len());
                span.set_parent(parent).ok();
                let _entered = span.enter();
                let new =
                    lock(&self.ownership).grant(grant.buckets.iter().map(|b| (b.bucket, b.epoch)));
                if !new.is_empty() {
                    tracing::info!(buckets = new.len(), "granted");
                    self.metrics.observe_handoff("grant", new.len());
                    self.metrics.set_buckets_owned(lock(&self.ownership).len());
                    self.host.start(&new);
                }
            }
            Some(coordinator_message::Kind::Revoke(revoke)) => {
                let span = tracing::info_span!("release", handoff = %revoke.handoff_id, buckets = revoke.buckets.len());
                span.set_parent(parent).ok();
                let plan = lock(&self.ownership)
                    .plan_revoke(revoke.buckets.iter().map(|b| (b.bucket, b.epoch)));
                let this = self.clone();
                let tx = tx.clone();
                tokio::spawn(
                    async move {
                        let started = Instant::now();
                        let buckets: Vec<u32> = plan.release.iter().map(|(b, _)| *b).collect();
                        if !buckets.is_empty() {
                            this.host.stop(buckets.clone()).await;
                            lock(&this.ownership).remove(&buckets);
                            this.metrics.observe_handoff("revoke", buckets.len());
                            this.metrics.set_buckets_owned(lock(&this.ownership).len());
                            this.metrics.observe_release(started.elapsed());
                        }
                        let mut entries = plan.release.clone();
                        entries.extend(plan.acknowledge.iter().copied());
                        let released = Released {
                            buckets: proto::bucket_epochs(entries),
                            handoff_id: revoke.handoff_id.clone(),
                            release_duration: prost_types::Duration::try_from(started.elapsed()).ok(),
                        };
                        tracing::info!(released = buckets.len(), took = ?started.elapsed(), "released");
                        // A closed stream loses the ack; the leader re-sends the revoke after the
                        // reconnect (our Hello no longer lists the buckets) or waits for the Lease.
                        let _ = tx
                            .send(WorkerMessage::from(released).with_trace_context(trace_context()))
                            .await;
                    }
                    .instrument(span),
                );
            }
            Some(coordinator_message::Kind::Welcome(_)) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_failure_moves_to_the_next_address_at_once_until_the_round_is_done() {
        let mut r = Rotation::new(3);
        assert_eq!(r.current(), 0);
        assert_eq!(r.failed(), None);
        assert_eq!(r.current(), 1);
        assert_eq!(r.failed(), None);
        assert_eq!(r.current(), 2);
        assert_eq!(r.failed(), Some(INITIAL_BACKOFF), "a full round failed");
        assert_eq!(r.current(), 0);
        assert_eq!(r.failed(), None);
        assert_eq!(r.failed(), None);
        assert_eq!(r.failed(), Some(INITIAL_BACKOFF * 2), "doubling per round");
        for _ in 0..30 {
            r.failed();
        }
        assert_eq!(r.backoff, MAX_BACKOFF);
    }

    #[test]
    fn one_address_backs_off_after_every_failure() {
        let mut r = Rotation::new(1);
        assert_eq!(r.failed(), Some(INITIAL_BACKOFF));
        assert_eq!(r.failed(), Some(INITIAL_BACKOFF * 2));
        assert_eq!(r.current(), 0);
    }

    #[test]
    fn an_ended_session_retries_the_same_address_first_with_backoff() {
        let mut r = Rotation::new(2);
        assert_eq!(r.failed(), None);
        assert_eq!(r.current(), 1, "the leader is the second");
        // Welcomed, then dropped at once: the same address again, after a backoff that grows.
        assert_eq!(r.ended(Duration::ZERO), INITIAL_BACKOFF);
        assert_eq!(r.current(), 1);
        assert_eq!(r.ended(Duration::ZERO), INITIAL_BACKOFF * 2);
        // A new round starts from it: the other address is tried at once after it fails.
        assert_eq!(r.failed(), None);
        assert_eq!(r.current(), 0);
        assert_eq!(r.failed(), Some(INITIAL_BACKOFF * 4));
        // A stable session resets the backoff.
        assert_eq!(r.ended(STABLE_SESSION + S), INITIAL_BACKOFF);
    }

    #[test]
    fn unavailable_is_recognized() {
        assert!(SessionError::Refused(tonic::Status::unavailable("standby")).is_unavailable());
        assert!(!SessionError::Refused(tonic::Status::failed_precondition("B")).is_unavailable());
        assert!(!SessionError::Ended.is_unavailable());
    }
}
