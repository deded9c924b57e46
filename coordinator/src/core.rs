//! The leader's event loop: one task owns the bucket map ([`Handoffs`]), the sessions and the
//! membership, and turns events into the state machine's actions, in order:
//!
//! ```text
//! Hello / Closed / Released / Leaving   (from worker sessions)
//! Members                               (live worker Leases changed)
//! Tick                                  (re-plan with fresh object counts)
//!        │
//!        ▼
//! Handoffs::{hello, released, drain, step} ──► [Persist, Revoke…, Grant…]
//!        Persist: write the map (a superseded leader stops here: Err)
//!        Revoke/Grant: send on the worker's session (a full or closed session counts as gone)
//! ```
//!
//! Planning is a [`Planner`]: given the eligible workers (live, not draining, sorted), the object
//! count per bucket and the current map, the target owner of every bucket.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::SystemTime;

use proto::v1::{self, CoordinatorMessage};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::handoff::{Action, Handoffs, Members, Reason, Slot, WorkerId};

/// The W3C trace context of `span`, as a message carries it.
fn carrier(span: &tracing::Span) -> std::collections::HashMap<String, String> {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier
}
use crate::metrics::Metrics;
use crate::store::{MapStore, StoreError};

/// The metric label of a revoke's reason.
fn reason_label(reason: Reason) -> &'static str {
    match reason {
        Reason::Rebalance => "rebalance",
        Reason::Drain => "drain",
        Reason::CoordinatorRestart => "coordinator_restart",
    }
}

/// Computes target owners.
pub trait Planner: Send + 'static {
    /// The target owner of each bucket.
    fn plan(
        &self,
        workers: &[WorkerId],
        weights: &[u64],
        current: &[Slot],
    ) -> Vec<Option<WorkerId>>;
}

/// The sending half of a worker's session.
pub type Outbox = mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>;

/// What the loop reacts to.
#[derive(Debug)]
pub enum Event {
    /// A session opened.
    Hello {
        /// Worker id.
        worker: WorkerId,
        /// Buckets it holds.
        held: Vec<(u32, u64)>,
        /// Session number (to ignore a stale Closed).
        session: u64,
        /// Where to send.
        outbox: Outbox,
    },
    /// A session closed.
    Closed {
        /// Worker id.
        worker: WorkerId,
        /// Session number.
        session: u64,
    },
    /// A worker released buckets.
    Released {
        /// Worker id.
        worker: WorkerId,
        /// (bucket, epoch) pairs.
        entries: Vec<(u32, u64)>,
        /// The handoff.
        handoff_id: String,
        /// W3C trace context of the worker's release (the grant continues that trace).
        trace: std::collections::HashMap<String, String>,
    },
    /// A worker reported its load.
    Load {
        /// Worker id.
        worker: WorkerId,
        /// The report.
        load: v1::Load,
    },
    /// A worker is leaving (SIGTERM) or an operator drains it.
    Drain {
        /// Worker id.
        worker: WorkerId,
    },
    /// The set of workers with a live Lease.
    Members(BTreeSet<WorkerId>),
    /// Re-plan (object counts changed).
    Tick,
}

/// One handoff, for `ListHandoffs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffRecord {
    /// Id.
    pub id: String,
    /// (bucket, epoch) pairs.
    pub buckets: Vec<(u32, u64)>,
    /// From.
    pub from: Option<WorkerId>,
    /// To.
    pub to: Option<WorkerId>,
    /// When the revoke (or direct grant) was sent.
    pub started: SystemTime,
    /// When the grant was sent.
    pub granted: Option<SystemTime>,
    /// Why (`rebalance`, `drain`, `coordinator_restart`; for a grant without a revoke
    /// `worker_lost` (its owner's Lease had expired; `from` names it) or `unassigned`).
    pub reason: &'static str,
}

/// What the admin API and metrics read.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The map.
    pub slots: Vec<Slot>,
    /// Buckets being handed off: bucket → (from, to).
    pub pending: BTreeMap<u32, (WorkerId, Option<WorkerId>)>,
    /// Live and connected workers.
    pub live: BTreeSet<WorkerId>,
    /// Workers with a session.
    pub connected: BTreeSet<WorkerId>,
    /// Draining workers.
    pub draining: BTreeSet<WorkerId>,
    /// Last load per worker.
    pub loads: BTreeMap<WorkerId, v1::Load>,
    /// The most recent handoffs (up to 100), oldest first.
    pub handoffs: Vec<HandoffRecord>,
}

/// The loop's state.
pub struct Core<P: Planner> {
    handoffs: Handoffs,
    store: MapStore,
    planner: P,
    weights: Box<dyn Fn() -> Vec<u64> + Send>,
    sessions: HashMap<WorkerId, (u64, Outbox)>,
    members: Members,
    draining: BTreeSet<WorkerId>,
    loads: BTreeMap<WorkerId, v1::Load>,
    next_handoff: u64,
    history: VecDeque<HandoffRecord>,
    snapshot: watch::Sender<Snapshot>,
    metrics: Option<Metrics>,
    /// The revoke a `Released` answered, while its grants are executed.
    completing: Option<String>,
    /// Whom each bucket was last granted to (from the loaded map at first): tells a grant after
    /// a lost worker from one of an unassigned bucket.
    granted_to: Vec<Option<WorkerId>>,
}

impl<P: Planner> std::fmt::Debug for Core<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl<P: Planner> Core<P> {
    /// A loop over the map `slots` (as loaded from `store`), planning with `planner` and the
    /// object counts `weights` returns.
    pub fn new(
        slots: Vec<Slot>,
        store: MapStore,
        planner: P,
        weights: Box<dyn Fn() -> Vec<u64> + Send>,
    ) -> (Self, watch::Receiver<Snapshot>) {
        let (snapshot, rx) = watch::channel(Snapshot::default());
        (
            Self::with_snapshot(slots, store, planner, weights, snapshot),
            rx,
        )
    }

    /// As [`Core::new`], publishing on an existing channel (a coordinator keeps one channel for
    /// the admin API across its terms as leader).
    pub fn with_snapshot(
        slots: Vec<Slot>,
        store: MapStore,
        planner: P,
        weights: Box<dyn Fn() -> Vec<u64> + Send>,
        snapshot: watch::Sender<Snapshot>,
    ) -> Self {
        let granted_to = slots.iter().map(|s| s.owner.clone()).collect();
        let core = Self {
            granted_to,
            handoffs: Handoffs::new(slots),
            store,
            planner,
            weights,
            sessions: HashMap::new(),
            members: Members::default(),
            draining: BTreeSet::new(),
            loads: BTreeMap::new(),
            next_handoff: 0,
            history: VecDeque::new(),
            snapshot,
            metrics: None,
            completing: None,
        };
        core.publish();
        core
    }

    /// Counts handoffs, map writes and the map's gauges in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        metrics.observe_snapshot(&self.snapshot.borrow());
        self.metrics = Some(metrics);
        self
    }

    /// Handles events until `cancel` or until the map cannot be written because another leader
    /// took over (the caller then steps down).
    pub async fn run(
        mut self,
        events: &mut mpsc::Receiver<Event>,
        cancel: CancellationToken,
    ) -> Result<(), StoreError> {
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                e = events.recv() => match e { Some(e) => e, None => return Ok(()) },
            };
            self.handle(event).await?;
            self.publish();
        }
    }

    fn target(&self) -> Vec<Option<WorkerId>> {
        let eligible: Vec<WorkerId> = self
            .members
            .live
            .iter()
            .filter(|w| !self.draining.contains(*w))
            .cloned()
            .collect();
        self.planner
            .plan(&eligible, &(self.weights)(), self.handoffs.slots())
    }

    /// Applies one event.
    pub async fn handle(&mut self, event: Event) -> Result<(), StoreError> {
        let actions = match event {
            Event::Hello {
                worker,
                held,
                session,
                outbox,
            } => {
                self.sessions.insert(worker.clone(), (session, outbox));
                self.members.connected.insert(worker.clone());
                let mut actions = self.handoffs.hello(&worker, &held, &self.members);
                let target = self.target();
                actions.extend(self.handoffs.step(&target, &self.members));
                actions
            }
            Event::Closed { worker, session } => {
                if self
                    .sessions
                    .get(&worker)
                    .is_some_and(|(s, _)| *s == session)
                {
                    self.sessions.remove(&worker);
                    self.members.connected.remove(&worker);
                    self.handoffs.disconnected(&worker);
                }
                Vec::new()
            }
            Event::Released {
                worker,
                entries,
                handoff_id,
                trace,
            } => {
                // The grants that complete this handoff continue the trace of the revoke and the
                // worker's release: one trace per handoff, across the coordinator and both workers.
                let span = tracing::info_span!("handoff.grant", %worker, handoff = %handoff_id, buckets = entries.len());
                span.set_parent(TraceContextPropagator::new().extract(&trace))
                    .ok();
                tracing::info!(parent: &span, "released");
                let mut actions = self.handoffs.released(&worker, &entries, &self.members);
                let target = self.target();
                actions.extend(self.handoffs.step(&target, &self.members));
                self.completing = Some(handoff_id);
                let result = self.execute(actions).instrument(span).await;
                self.completing = None;
                return result;
            }
            Event::Load { worker, load } => {
                self.loads.insert(worker, load);
                Vec::new()
            }
            Event::Drain { worker } => {
                tracing::info!(%worker, "draining");
                self.draining.insert(worker.clone());
                let target = self.target();
                self.handoffs.drain(&worker, &target, &self.members)
            }
            Event::Members(live) => {
                if live == self.members.live {
                    return Ok(());
                }
                tracing::info!(workers = ?live, "live workers changed");
                self.members.live = live;
                let live = &self.members.live;
                self.draining.retain(|w| live.contains(w));
                self.loads.retain(|w, _| live.contains(w));
                let target = self.target();
                self.handoffs.step(&target, &self.members)
            }
            Event::Tick => {
                let target = self.target();
                self.handoffs.step(&target, &self.members)
            }
        };
        self.execute(actions).await
    }

    async fn execute(&mut self, actions: Vec<Action>) -> Result<(), StoreError> {
        for action in actions {
            match action {
                Action::Persist => {
                    self.store.save(self.handoffs.slots()).await?;
                    if let Some(metrics) = &self.metrics {
                        metrics.observe_write("update_map");
                    }
                }
                Action::Revoke {
                    worker,
                    buckets,
                    reason,
                } => {
                    let id = self.handoff_id();
                    let label = reason_label(reason);
                    let reason = match reason {
                        Reason::Rebalance => v1::HandoffReason::Rebalance,
                        Reason::Drain => v1::HandoffReason::Drain,
                        Reason::CoordinatorRestart => v1::HandoffReason::CoordinatorRestart,
                    };
                    self.record(&id, &buckets, Some(worker.clone()), None, label);
                    let span = tracing::info_span!("handoff.revoke", %worker, handoff = %id, buckets = buckets.len());
                    let message = v1::Revoke {
                        buckets: proto::bucket_epochs(buckets),
                        handoff_id: id,
                        reason: reason as i32,
                    };
                    let message =
                        CoordinatorMessage::from(message).with_trace_context(carrier(&span));
                    self.send(&worker, message);
                }
                Action::Grant { worker, buckets } => {
                    let id = self.complete(&worker, &buckets);
                    tracing::info!(%worker, buckets = buckets.len(), "granting");
                    let message = v1::Grant {
                        buckets: proto::bucket_epochs(buckets),
                        handoff_id: id,
                    };
                    let message = CoordinatorMessage::from(message)
                        .with_trace_context(carrier(&tracing::Span::current()));
                    self.send(&worker, message);
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, worker: &str, message: CoordinatorMessage) {
        let gone = match self.sessions.get(worker) {
            Some((_, outbox)) => outbox.try_send(Ok(message)).is_err(),
            None => true,
        };
        if gone {
            // A full or closed session: the worker gets the message again after its next Hello.
            self.sessions.remove(worker);
            self.members.connected.remove(worker);
            self.handoffs.disconnected(worker);
        }
    }

    /// Records a grant: it completes the open revokes of its buckets (the one being answered
    /// first; a revoke whose buckets go to several workers is split into one record per grant;
    /// each handoff's duration is observed then). What no revoke covers is a direct grant of its
    /// own: `worker_lost` when the buckets had an owner (its Lease expired), `unassigned`
    /// otherwise. Returns the id the grant message carries.
    fn complete(&mut self, worker: &WorkerId, buckets: &[(u32, u64)]) -> String {
        let now = SystemTime::now();
        let mut remaining: BTreeMap<u32, u64> = buckets.iter().copied().collect();
        let previous = remaining
            .keys()
            .find_map(|b| self.granted_to.get(*b as usize).cloned().flatten())
            .filter(|p| p != worker);
        for b in remaining.keys() {
            if let Some(slot) = self.granted_to.get_mut(*b as usize) {
                *slot = Some(worker.clone());
            }
        }
        let mut ids = Vec::new();
        loop {
            let open = |r: &HandoffRecord| {
                r.from.is_some()
                    && r.granted.is_none()
                    && r.buckets.iter().any(|(b, _)| remaining.contains_key(b))
            };
            let Some(index) = self
                .completing
                .as_ref()
                .and_then(|id| self.history.iter().rposition(|r| &r.id == id && open(r)))
                .or_else(|| self.history.iter().rposition(open))
            else {
                break;
            };
            let record = &mut self.history[index];
            let covered: Vec<(u32, u64)> = record
                .buckets
                .iter()
                .filter_map(|(b, _)| remaining.remove_entry(b))
                .collect();
            let elapsed = now.duration_since(record.started).unwrap_or_default();
            let reason = record.reason;
            let id = if covered.len() == record.buckets.len() {
                record.buckets.clone_from(&covered);
                record.to = Some(worker.clone());
                record.granted = Some(now);
                record.id.clone()
            } else {
                // Part of the revoked buckets: split them off into a record of their own.
                record
                    .buckets
                    .retain(|(b, _)| !covered.iter().any(|(c, _)| c == b));
                let mut part = record.clone();
                part.id = format!("{}.{}", record.id, covered.first().map_or(0, |(b, _)| *b));
                part.buckets = covered.clone();
                part.to = Some(worker.clone());
                part.granted = Some(now);
                let id = part.id.clone();
                self.history.push_back(part);
                id
            };
            if let Some(metrics) = &self.metrics {
                metrics.observe_handoff(reason, covered.len(), elapsed);
            }
            ids.push(id);
        }
        if !remaining.is_empty() {
            let id = self.handoff_id();
            let reason = if previous.is_some() {
                "worker_lost"
            } else {
                "unassigned"
            };
            let direct: Vec<(u32, u64)> = remaining.into_iter().collect();
            self.record(&id, &direct, previous, Some(worker.clone()), reason);
            if let Some(metrics) = &self.metrics {
                metrics.observe_handoff(reason, direct.len(), std::time::Duration::ZERO);
            }
            ids.push(id);
        }
        ids.join(",")
    }

    fn handoff_id(&mut self) -> String {
        self.next_handoff += 1;
        format!("h{}", self.next_handoff)
    }

    fn record(
        &mut self,
        id: &str,
        buckets: &[(u32, u64)],
        from: Option<WorkerId>,
        to: Option<WorkerId>,
        reason: &'static str,
    ) {
        let now = SystemTime::now();
        self.history.push_back(HandoffRecord {
            id: id.to_owned(),
            buckets: buckets.to_vec(),
            from,
            granted: to.is_some().then_some(now),
            to,
            started: now,
            reason,
        });
        while self.history.len() > 500 {
            self.history.pop_front();
        }
    }

    fn publish(&self) {
        let snapshot = self.snapshot();
        if let Some(metrics) = &self.metrics {
            metrics.observe_snapshot(&snapshot);
        }
        self.snapshot.send_replace(snapshot);
    }

    fn snapshot(&self) -> Snapshot {
        let pending = self
            .handoffs
            .pending()
            .iter()
            .map(|(b, p)| (*b, (p.from.clone(), p.to.clone())))
            .collect();
        Snapshot {
            slots: self.handoffs.slots().to_vec(),
            pending,
            live: self.members.live.clone(),
            connected: self.members.connected.clone(),
            draining: self.draining.clone(),
            loads: self.loads.clone(),
            handoffs: self.history.iter().rev().take(100).rev().cloned().collect(),
        }
    }
}
