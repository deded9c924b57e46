//! The worker's side of the `WorkerService.Session` stream (protocol: the `proto` crate docs).
//!
//! One task keeps one stream to the coordinator leader open, reconnecting with exponential
//! backoff (0.5 s doubling to 30 s, jittered) and a fresh Hello listing what it holds. A dropped
//! stream revokes nothing (fail static): the worker keeps serving its buckets under its Lease.
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
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

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

/// Who this worker is, for the Hello.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The coordinator's gRPC URL.
    pub coordinator: String,
    /// Worker id = Lease name.
    pub worker_id: String,
    /// Namespace of the worker's Lease.
    pub lease_namespace: String,
    /// B.
    pub buckets: u32,
}

/// The session task's shared state.
#[derive(Clone)]
pub struct Session {
    config: SessionConfig,
    ownership: Arc<Mutex<Ownership>>,
    host: Arc<dyn BucketHost>,
    metrics: Metrics,
    outbox: Arc<Mutex<Option<mpsc::Sender<WorkerMessage>>>>,
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
        }
    }

    /// Keeps a session open until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        let mut leader_epoch = 0u64;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.connection(&mut leader_epoch) => r,
            };
            *lock(&self.outbox) = None;
            if let Err(error) = result {
                tracing::warn!(%error, coordinator = %self.config.coordinator, "coordinator session ended; still serving held buckets");
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(500);
            }
            let jitter = rand::rng().random_range(0.8..1.2);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Tells the coordinator this worker is leaving (it revokes everything); returns whether a
    /// session was open to send it on.
    pub async fn leave(&self, reason: &str) -> bool {
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

    async fn connection(&self, leader_epoch: &mut u64) -> Result<(), SessionError> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.config.coordinator.clone())
            .map_err(|source| SessionError::Connect {
                addr: self.config.coordinator.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| SessionError::Connect {
                addr: self.config.coordinator.clone(),
                source,
            })?;
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
                "a deposed leader welcomed us; reconnecting"
            );
            return Err(SessionError::Ended);
        }
        *leader_epoch = welcome.leader_epoch;
        tracing::info!(coordinator = %welcome.coordinator_id, leader_epoch = welcome.leader_epoch, "session with the coordinator open");
        *lock(&self.outbox) = Some(tx.clone());
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
