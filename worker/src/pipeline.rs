//! The worker's pipeline for its buckets: bucket-scoped watches → work queue → reconcile.
//!
//! ```text
//! grant(b)   ── queue admits b, watches start (their initial lists queue every template of b)
//! watch event ── queue.add(key, Change)      (initial lists and the safety resync: Resync)
//! queue.run(N) ── reconcile (skip when unchanged; render, policy, apply, prune, status)
//! revoke(b)  ── watches of b stop, queue fences b and drops its keys; resolves once b's
//!               in-flight reconciles finished: only then is `Released` sent
//! reconciled  ── the template's kinds are registered with the drift watches (crate::drift)
//! drift event ── owner still lists the object? queue.add(owner, Change), marked as drift
//! ```
//!
//! The queue knows two priorities only; a key whose drift was reported is remembered in a set
//! (at most one entry per queued key; emptied for revoked buckets) and reconciled with
//! [`Trigger::Drift`] (objects read, the changed ones re-applied by force, the drift counted in the
//! status, although the template did not change) when
//! it is handed out, whatever priority it was queued with. A drift reconcile that fails stays
//! marked, so its retries force as well.
//!
//! A reconcile continues the trace the mutating webhook stored on the template
//! (`kubetemplater.io/traceparent`), so one trace goes from `kubectl apply` to the last apply.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use kube::ResourceExt as _;
use rand::Rng as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::drift::{self, DriftEvent, DriftWatches};
use crate::metrics::Metrics;
use crate::queue::{Added, Priority, QueueConfig, QueueKey, QueueObserver, Work, WorkQueue};
use crate::reconcile::{Outcome, ReconcileError, Reconciler, Trigger};
use crate::session::BucketHost;
use crate::tenant::reconcile::{TenantOutcome, TenantReconciler};
use crate::watches::{Kind, TemplateEvent, TemplateKey, TemplateWatches, TenantWatches};

impl QueueKey for TemplateKey {
    type Shard = u32;
    fn shard(&self) -> u32 {
        self.bucket
    }
}

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Templates reconciled at once.
    pub concurrency: usize,
    /// Safety resync period (jittered ±20%).
    pub resync_interval: Duration,
    /// The queue.
    pub queue: QueueConfig,
}

struct Observer(Metrics);

impl QueueObserver<TemplateKey> for Observer {
    fn depth_changed(&self, depth: usize, in_flight: usize) {
        self.0.set_queue(depth, in_flight);
    }
    fn retry_scheduled(&self, key: &TemplateKey, _: &crate::queue::AfterFailure, delay: Duration) {
        self.0.observe_retry();
        tracing::debug!(%key, ?delay, "retry scheduled");
    }
}

/// The pipeline; share it with `Arc`.
pub struct Pipeline {
    queue: WorkQueue<TemplateKey>,
    watches: TemplateWatches,
    tenants: TenantWatches,
    drift: DriftWatches,
    reconciler: Reconciler,
    tenant_reconciler: TenantReconciler,
    metrics: Metrics,
    config: PipelineConfig,
    owned: Mutex<BTreeSet<u32>>,
    events: Mutex<Option<mpsc::Receiver<TemplateEvent>>>,
    drift_events: Mutex<Option<mpsc::Receiver<DriftEvent>>>,
    /// Keys to reconcile as [`Trigger::Drift`] when next handed out.
    drifted: Mutex<HashSet<TemplateKey>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("watches", &self.watches)
            .field("drift", &self.drift)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data updated in single steps: a poisoned lock leaves it consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pipeline {
    /// A pipeline reconciling with `reconciler`, watching through `client`.
    pub fn new(
        client: kube::Client,
        reconciler: Reconciler,
        metrics: Metrics,
        config: PipelineConfig,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(1024);
        let (drift_tx, drift_rx) = mpsc::channel(drift::CHANNEL);
        let queue =
            WorkQueue::with_observer(config.queue.clone(), Arc::new(Observer(metrics.clone())));
        Arc::new(Self {
            queue,
            watches: TemplateWatches::new(client.clone(), tx.clone()),
            tenants: TenantWatches::new(client.clone(), tx),
            drift: DriftWatches::new(client, drift_tx),
            tenant_reconciler: reconciler.tenants().with_metrics(metrics.tenants().clone()),
            reconciler,
            metrics,
            config,
            owned: Mutex::default(),
            events: Mutex::new(Some(rx)),
            drift_events: Mutex::new(Some(drift_rx)),
            drifted: Mutex::default(),
        })
    }

    /// Runs until the queue is shut down ([`Pipeline::shut_down`]) or `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let (Some(mut events), Some(mut drift_events)) =
            (lock(&self.events).take(), lock(&self.drift_events).take())
        else {
            tracing::error!("the pipeline runs once");
            return;
        };
        let feeder = {
            let queue = self.queue.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        () = cancel.cancelled() => return,
                        e = events.recv() => match e { Some(e) => e, None => return },
                    };
                    let priority = if event.initial {
                        Priority::Resync
                    } else {
                        Priority::Change
                    };
                    queue.add(event.key, priority).await;
                }
            })
        };
        let drift_feeder = {
            let this = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        () = cancel.cancelled() => return,
                        e = drift_events.recv() => match e { Some(e) => e, None => return },
                    };
                    this.drift_seen(event).await;
                }
            })
        };
        let resync = {
            let this = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                loop {
                    let jitter = rand::rng().random_range(0.8..1.2);
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(this.config.resync_interval.mul_f64(jitter)) => {}
                    }
                    let owned = lock(&this.owned).clone();
                    let keys = this
                        .watches
                        .keys(&owned)
                        .into_iter()
                        .chain(this.tenants.keys(&owned));
                    for key in keys {
                        this.queue.add(key, Priority::Resync).await;
                    }
                }
            })
        };
        let this = self.clone();
        let work = self.queue.run(self.config.concurrency, move |work| {
            let this = this.clone();
            async move { this.process(work).await }
        });
        tokio::select! {
            () = work => {}
            () = cancel.cancelled() => self.queue.shut_down(),
        }
        feeder.abort();
        drift_feeder.abort();
        resync.abort();
        self.watches.clear();
        self.tenants.clear();
        self.drift.clear();
    }

    /// A managed object was changed by someone else or deleted: queue its owner as a drift,
    /// unless the owner is gone, being deleted, or no longer lists the object (then the change
    /// is our own prune or finalizer at work, or the object is not ours to keep).
    async fn drift_seen(&self, event: DriftEvent) {
        if event.key.kind == Kind::Tenant {
            let Some(tenant) = self.tenants.get(&event.key) else {
                return;
            };
            if tenant.metadata.deletion_timestamp.is_some()
                || !crate::tenant::desired::lists(&tenant, &event.object)
            {
                return;
            }
        } else if let Some(template) = self.watches.get(&event.key) {
            if template.metadata.deletion_timestamp.is_some()
                || !drift::lists(&template, &event.object)
            {
                return;
            }
        } else {
            return;
        }
        tracing::debug!(object = %event.object, owner = %event.key, deleted = event.deleted, "drift");
        lock(&self.drifted).insert(event.key.clone());
        match self.queue.add(event.key.clone(), Priority::Change).await {
            Added::Fenced | Added::ShutDown | Added::Skipped => {
                lock(&self.drifted).remove(&event.key);
            }
            Added::Queued { .. } | Added::Merged | Added::Dirty | Added::Parked => {}
        }
    }

    /// One Tenant: reconciled, and queued again after a while when something is not ready yet.
    async fn process_tenant(&self, work: Work<TemplateKey>) -> Result<Outcome, ReconcileError> {
        let drifted = lock(&self.drifted).remove(&work.key);
        let Some(tenant) = self.tenants.get(&work.key) else {
            return Ok(Outcome::Unchanged);
        };
        let span = tracing::info_span!(
            "reconcile_tenant",
            tenant = %format!("{}/{}", work.key.namespace, work.key.name),
            bucket = work.key.bucket,
            generation = tenant.metadata.generation.unwrap_or_default(),
            outcome = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = self
            .tenant_reconciler
            .reconcile_with(&tenant, drifted)
            .instrument(span.clone())
            .await;
        // Watch the kinds it uses, so drift and readiness changes of its objects are seen.
        self.drift
            .register(crate::tenant::desired::kinds_of(&tenant));
        let label = match &result {
            Ok(TenantOutcome::Unchanged) => "unchanged",
            Ok(TenantOutcome::Applied { .. }) => "applied",
            Ok(TenantOutcome::Waiting(_)) => "waiting",
            Ok(TenantOutcome::Broken) => "denied",
            Ok(TenantOutcome::Finalized) => "finalized",
            Ok(TenantOutcome::NamespaceTerminating) => "skipped",
            Err(_) => "error",
        };
        span.record("outcome", label);
        self.metrics.observe_reconcile(label, started.elapsed());
        match result {
            Ok(TenantOutcome::Waiting(after)) => {
                let (queue, key) = (self.queue.clone(), work.key.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    // A revoked bucket fences the add; a deleted Tenant is skipped when handed out.
                    queue.add(key, Priority::Change).await;
                });
                Ok(Outcome::Applied {
                    applied: 0,
                    pruned: 0,
                })
            }
            Ok(TenantOutcome::Unchanged | TenantOutcome::NamespaceTerminating) => {
                Ok(Outcome::Unchanged)
            }
            Ok(TenantOutcome::Applied { applied, pruned }) => {
                Ok(Outcome::Applied { applied, pruned })
            }
            Ok(TenantOutcome::Broken) => Ok(Outcome::Denied),
            Ok(TenantOutcome::Finalized) => Ok(Outcome::Finalized),
            Err(error) => {
                span.in_scope(|| tracing::warn!(%error, "tenant reconcile failed; will retry"));
                Err(error.into())
            }
        }
    }

    async fn process(&self, work: Work<TemplateKey>) -> Result<Outcome, ReconcileError> {
        if work.key.kind == Kind::Tenant {
            return self.process_tenant(work).await;
        }
        let drifted = lock(&self.drifted).remove(&work.key);
        let Some(template) = self.watches.get(&work.key) else {
            // Deleted (its finalizer already ran) or its bucket was revoked meanwhile.
            return Ok(Outcome::Unchanged);
        };
        let trigger = match work.priority {
            _ if drifted => Trigger::Drift,
            Priority::Change => Trigger::Change,
            Priority::Resync => Trigger::Resync,
        };
        let span = tracing::info_span!(
            "reconcile",
            template = %format!("{}/{}", work.key.namespace, work.key.name),
            bucket = work.key.bucket,
            generation = template.metadata.generation.unwrap_or_default(),
            trigger = ?trigger,
            outcome = tracing::field::Empty,
        );
        if let Some(parent) = template
            .metadata
            .annotations
            .as_ref()
            .and_then(telemetry::propagation::extract_annotations)
        {
            telemetry::propagation::set_parent(&span, parent);
        }
        let started = Instant::now();
        let bucket = work.key.bucket.to_string();
        let result = self
            .reconciler
            .reconcile(&template, &bucket, trigger)
            .instrument(span.clone())
            .await;
        let label = match &result {
            Ok(Outcome::Unchanged) => "unchanged",
            Ok(Outcome::Applied { .. }) => "applied",
            Ok(Outcome::Denied) => "denied",
            Ok(Outcome::Finalized) => "finalized",
            Err(_) => "error",
        };
        span.record("outcome", label);
        self.metrics.observe_reconcile(label, started.elapsed());
        // Watch the kinds of what was applied, so drift of its objects is seen at once. After a
        // failure only what status lists as applied (a kind that failed may not exist at all).
        match &result {
            Ok(Outcome::Unchanged | Outcome::Applied { .. }) => {
                self.drift.register(drift::kinds_of(&template, true));
            }
            Err(_) => {
                self.drift.register(drift::kinds_of(&template, false));
                if drifted && self.queue.is_admitted(&work.key.bucket) {
                    lock(&self.drifted).insert(work.key.clone());
                }
            }
            Ok(Outcome::Denied | Outcome::Finalized) => {}
        }
        if let Err(error) = &result {
            span.in_scope(|| tracing::warn!(%error, name = %template.name_any(), "reconcile failed; will retry"));
        }
        result
    }

    /// Stops handing out work and waits up to `grace` for in-flight reconciles.
    pub async fn shut_down(&self, grace: Duration) {
        self.queue.shut_down();
        if tokio::time::timeout(grace, self.queue.drained())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "in-flight reconciles did not finish within the grace period"
            );
        }
        self.watches.clear();
        self.tenants.clear();
        self.drift.clear();
    }

    /// Buckets being worked on.
    pub fn owned(&self) -> BTreeSet<u32> {
        lock(&self.owned).clone()
    }

    /// The watches on managed objects (kinds and buckets watched).
    pub fn drift(&self) -> &DriftWatches {
        &self.drift
    }
}

impl BucketHost for Arc<Pipeline> {
    fn start(&self, buckets: &[u32]) {
        lock(&self.owned).extend(buckets.iter().copied());
        self.queue.grant(buckets.iter().copied());
        self.watches.add(buckets);
        self.tenants.add(buckets);
        self.drift.add(buckets);
    }

    fn stop(&self, buckets: Vec<u32>) -> BoxFuture<'static, ()> {
        {
            let mut owned = lock(&self.owned);
            for b in &buckets {
                owned.remove(b);
            }
        }
        self.watches.remove(&buckets);
        self.tenants.remove(&buckets);
        self.drift.remove(&buckets);
        // The revoke fences the buckets at once: no drift mark of theirs can be added after this.
        let released = self.queue.revoke(buckets.clone());
        lock(&self.drifted).retain(|k| !buckets.contains(&k.bucket));
        released.boxed()
    }

    fn load(&self) -> proto::v1::Load {
        let stats = self.queue.stats();
        proto::v1::Load {
            queue_depth: u64::try_from(stats.depth()).unwrap_or(u64::MAX),
            objects_owned: u64::try_from(
                self.watches.keys(&self.owned()).len() + self.tenants.keys(&self.owned()).len(),
            )
            .unwrap_or(u64::MAX),
            bucket_objects: Vec::new(),
            in_flight: u32::try_from(stats.in_flight).unwrap_or(u32::MAX),
            reconciles_per_second: 0.0,
        }
    }
}
