//! The coordinator's `AdminService`, answered from the leader loop's [`Snapshot`] and the object
//! counts, never from the API server. Drain and rebalance are events for the loop. Every call
//! is authorized first ([`Access`]: TokenReview, then SubjectAccessReview).

use std::num::NonZeroU32;
use std::sync::Arc;

use proto::v1::admin_service_server::AdminService;
use proto::v1::{self, BucketState, HandoffOutcome, WorkerState};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use crate::access::{Access, Action};
use crate::core::{Event, HandoffRecord, Snapshot};
use crate::counts::BucketCounts;
use crate::sessions::Leadership;

/// The admin service of a coordinator replica.
#[derive(Debug)]
pub struct Admin {
    snapshot: watch::Receiver<Snapshot>,
    leadership: watch::Receiver<Option<Leadership>>,
    counts: BucketCounts,
    events: mpsc::Sender<Event>,
    buckets: NonZeroU32,
    access: Arc<Access>,
}

impl Admin {
    /// An admin service over the loop's snapshot.
    pub fn new(
        snapshot: watch::Receiver<Snapshot>,
        leadership: watch::Receiver<Option<Leadership>>,
        counts: BucketCounts,
        events: mpsc::Sender<Event>,
        buckets: NonZeroU32,
        access: Arc<Access>,
    ) -> Self {
        Self {
            snapshot,
            leadership,
            counts,
            events,
            buckets,
            access,
        }
    }

    /// The leader's term, once the caller may do `action`: a standby answers UNAVAILABLE
    /// without asking the API server, so clients move on to the next address.
    async fn admit<T>(
        &self,
        request: &Request<T>,
        action: Action,
        call: &str,
    ) -> Result<Leadership, Status> {
        let leader = self.leader()?;
        self.access.authorize(request, action, call).await?;
        Ok(leader)
    }

    fn leader(&self) -> Result<Leadership, Status> {
        self.leadership.borrow().clone().ok_or_else(|| {
            Status::unavailable(
                "this coordinator is not the leader; ask the leader (the Service routes to it)",
            )
        })
    }

    fn state_of(snapshot: &Snapshot, bucket: u32) -> (BucketState, String) {
        match snapshot.pending.get(&bucket) {
            Some((_, to)) => (BucketState::Revoking, to.clone().unwrap_or_default()),
            None => match snapshot
                .slots
                .get(bucket as usize)
                .and_then(|s| s.owner.as_ref())
            {
                Some(_) => (BucketState::Owned, String::new()),
                None => (BucketState::Unassigned, String::new()),
            },
        }
    }

    fn moves_of(&self, snapshot: &Snapshot, filter: impl Fn(&str) -> bool) -> Vec<v1::BucketMove> {
        let counts = self.counts.snapshot();
        snapshot
            .pending
            .iter()
            .filter(|(_, (from, _))| filter(from))
            .map(|(b, (from, to))| v1::BucketMove {
                bucket: *b,
                from: from.clone(),
                to: to.clone().unwrap_or_default(),
                epoch: snapshot.slots.get(*b as usize).map_or(0, |s| s.epoch),
                objects: counts.per_bucket.get(*b as usize).copied().unwrap_or(0),
            })
            .collect()
    }
}

fn handoff(record: &HandoffRecord) -> v1::Handoff {
    v1::Handoff {
        id: record.id.clone(),
        buckets: proto::bucket_epochs(record.buckets.iter().copied()),
        from: record.from.clone().unwrap_or_default(),
        to: record.to.clone().unwrap_or_default(),
        reason: match record.reason {
            "drain" => v1::HandoffReason::Drain,
            "coordinator_restart" => v1::HandoffReason::CoordinatorRestart,
            "worker_lost" => v1::HandoffReason::WorkerLost,
            "unassigned" => v1::HandoffReason::Assign,
            _ => v1::HandoffReason::Rebalance,
        } as i32,
        started_at: Some(record.started.into()),
        revoked_at: (!matches!(record.reason, "worker_lost" | "unassigned"))
            .then(|| record.started.into()),
        released_at: None,
        granted_at: record.granted.map(Into::into),
        duration: record
            .granted
            .and_then(|g| g.duration_since(record.started).ok())
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
        outcome: if record.granted.is_some() {
            HandoffOutcome::Completed
        } else {
            HandoffOutcome::InProgress
        } as i32,
        detail: String::new(),
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn list_workers(
        &self,
        request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        self.admit(&request, Action::Read, "ListWorkers").await?;
        let snap = self.snapshot.borrow().clone();
        let mut ids: Vec<String> = snap
            .live
            .iter()
            .chain(snap.connected.iter())
            .cloned()
            .collect();
        ids.extend(snap.slots.iter().filter_map(|s| s.owner.clone()));
        ids.sort();
        ids.dedup();
        let workers = ids
            .into_iter()
            .map(|id| {
                let owned = snap
                    .slots
                    .iter()
                    .filter(|s| s.owner.as_deref() == Some(id.as_str()))
                    .count();
                let state = if snap.draining.contains(&id) {
                    WorkerState::Draining
                } else if snap.live.contains(&id) {
                    WorkerState::Alive
                } else {
                    WorkerState::Expired
                };
                v1::WorkerInfo {
                    connected: snap.connected.contains(&id),
                    load: snap.loads.get(&id).cloned(),
                    buckets_owned: u32::try_from(owned).unwrap_or(u32::MAX),
                    state: state as i32,
                    id,
                    ..Default::default()
                }
            })
            .collect();
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn get_bucket_map(
        &self,
        request: Request<v1::GetBucketMapRequest>,
    ) -> Result<Response<v1::GetBucketMapResponse>, Status> {
        let leader = self.admit(&request, Action::Read, "GetBucketMap").await?;
        let snap = self.snapshot.borrow().clone();
        let counts = self.counts.snapshot();
        let buckets = snap
            .slots
            .iter()
            .enumerate()
            .map(|(b, slot)| {
                let bucket = u32::try_from(b).unwrap_or(u32::MAX);
                let (state, next_owner) = Self::state_of(&snap, bucket);
                v1::BucketAssignment {
                    bucket,
                    owner: slot.owner.clone().unwrap_or_default(),
                    epoch: slot.epoch,
                    objects: counts.per_bucket.get(b).copied().unwrap_or(0),
                    state: state as i32,
                    next_owner,
                    handoff_id: String::new(),
                }
            })
            .collect();
        Ok(Response::new(v1::GetBucketMapResponse {
            bucket_count: self.buckets.get(),
            leader_id: leader.id,
            leader_epoch: leader.epoch,
            map_version: 0,
            buckets,
        }))
    }

    async fn locate(
        &self,
        request: Request<v1::LocateRequest>,
    ) -> Result<Response<v1::LocateResponse>, Status> {
        self.admit(&request, Action::Read, "Locate").await?;
        let shard_key = match request.into_inner().key {
            Some(v1::locate_request::Key::Namespace(ns)) if !ns.is_empty() => {
                engine::bucket::kubetemplate_shard_key(&ns)
            }
            Some(v1::locate_request::Key::Tenant(t)) => {
                engine::bucket::tenant_shard_key(&t.registry_namespace, &t.registry_name, &t.uid)
            }
            _ => return Err(Status::invalid_argument("give a namespace or a tenant key")),
        };
        let bucket = engine::bucket::bucket(&shard_key, self.buckets);
        let snap = self.snapshot.borrow().clone();
        let slot = snap.slots.get(bucket as usize).cloned().unwrap_or_default();
        let (state, _) = Self::state_of(&snap, bucket);
        Ok(Response::new(v1::LocateResponse {
            bucket,
            owner: slot.owner.unwrap_or_default(),
            epoch: slot.epoch,
            shard_key,
            state: state as i32,
        }))
    }

    async fn list_handoffs(
        &self,
        request: Request<v1::ListHandoffsRequest>,
    ) -> Result<Response<v1::ListHandoffsResponse>, Status> {
        self.admit(&request, Action::Read, "ListHandoffs").await?;
        let limit = request.into_inner().effective_limit() as usize;
        let snap = self.snapshot.borrow().clone();
        let handoffs = snap
            .handoffs
            .iter()
            .rev()
            .take(limit)
            .map(handoff)
            .collect();
        Ok(Response::new(v1::ListHandoffsResponse { handoffs }))
    }

    async fn drain_worker(
        &self,
        request: Request<v1::DrainWorkerRequest>,
    ) -> Result<Response<v1::DrainWorkerResponse>, Status> {
        self.admit(&request, Action::Change, "DrainWorker").await?;
        let worker = request.into_inner().worker_id;
        if worker.is_empty() {
            return Err(Status::invalid_argument("worker_id is empty"));
        }
        {
            let snap = self.snapshot.borrow();
            let known = snap.live.contains(&worker)
                || snap.connected.contains(&worker)
                || snap
                    .slots
                    .iter()
                    .any(|s| s.owner.as_deref() == Some(worker.as_str()));
            if !known {
                let mut workers: Vec<&String> = snap.live.iter().chain(&snap.connected).collect();
                workers.sort();
                workers.dedup();
                return Err(Status::not_found(format!(
                    "no worker {worker:?}: it holds no Lease, session or bucket (workers: {})",
                    workers
                        .iter()
                        .map(|w| w.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let mut snapshot = self.snapshot.clone();
        self.events
            .send(Event::Drain {
                worker: worker.clone(),
            })
            .await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        // The loop publishes a new snapshot after handling the event.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), snapshot.changed()).await;
        let snap = snapshot.borrow().clone();
        Ok(Response::new(v1::DrainWorkerResponse {
            moves: self.moves_of(&snap, |from| from == worker),
        }))
    }

    /// Re-plans now and returns the moves in progress; with `dry_run`, only returns the moves in
    /// progress.
    async fn rebalance(
        &self,
        request: Request<v1::RebalanceRequest>,
    ) -> Result<Response<v1::RebalanceResponse>, Status> {
        let dry_run = request.get_ref().dry_run;
        let action = if dry_run {
            Action::Read
        } else {
            Action::Change
        };
        self.admit(&request, action, "Rebalance").await?;
        let mut snapshot = self.snapshot.clone();
        if !dry_run {
            self.events
                .send(Event::Tick)
                .await
                .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), snapshot.changed()).await;
        }
        let snap = snapshot.borrow().clone();
        Ok(Response::new(v1::RebalanceResponse {
            moves: self.moves_of(&snap, |_| true),
            dry_run,
        }))
    }
}
