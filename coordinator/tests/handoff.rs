//! The leader's loop with real worker sessions over gRPC and the map in a real ConfigMap: a
//! second worker joins, half the buckets move, and no bucket is ever held by both.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::num::NonZeroU32;

use coordinator::access::Access;
use coordinator::admin::Admin;
use coordinator::core::{Core, Event, Planner};
use coordinator::counts::BucketCounts;
use coordinator::handoff::{Slot, WorkerId};
use coordinator::sessions::{Leadership, WorkerSessions};
use coordinator::store::MapStore;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use proto::client::Credentials;
use proto::v1::admin_service_server::AdminServiceServer;
use proto::v1::worker_service_server::WorkerServiceServer;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use worker::metrics::Metrics;
use worker::ownership::Ownership;
use worker::session::{BucketHost, Session, SessionConfig};

const B: u32 = 8;

/// Bucket b goes to the (b mod n)-th eligible worker: enough to exercise the loop.
struct RoundRobin;

impl Planner for RoundRobin {
    fn plan(&self, workers: &[WorkerId], _: &[u64], _: &[Slot]) -> Vec<Option<WorkerId>> {
        (0..B as usize)
            .map(|b| (!workers.is_empty()).then(|| workers[b % workers.len()].clone()))
            .collect()
    }
}

#[derive(Default)]
struct Log {
    /// bucket -> holders right now
    holders: BTreeMap<u32, BTreeSet<String>>,
    violations: Vec<String>,
}

struct Host {
    name: String,
    log: Arc<Mutex<Log>>,
}

impl BucketHost for Host {
    fn start(&self, buckets: &[u32]) {
        let mut log = self.log.lock().unwrap();
        for b in buckets {
            let holders = log.holders.entry(*b).or_default();
            if !holders.is_empty() {
                let msg = format!("{} got bucket {b} while {holders:?} held it", self.name);
                log.violations.push(msg);
            }
            log.holders.entry(*b).or_default().insert(self.name.clone());
        }
    }
    fn stop(&self, buckets: Vec<u32>) -> BoxFuture<'static, ()> {
        let log = self.log.clone();
        let name = self.name.clone();
        async move {
            // Some in-flight work to finish first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut log = log.lock().unwrap();
            for b in buckets {
                log.holders.entry(b).or_default().remove(&name);
            }
        }
        .boxed()
    }
    fn load(&self) -> proto::v1::Load {
        proto::v1::Load::default()
    }
}

fn worker(
    addr: std::net::SocketAddr,
    name: &str,
    log: &Arc<Mutex<Log>>,
    cancel: &CancellationToken,
) -> Arc<Mutex<Ownership>> {
    let ownership = Arc::new(Mutex::new(Ownership::new()));
    let session = Session::new(
        SessionConfig {
            coordinator: vec![format!("http://{addr}")],
            worker_id: name.into(),
            lease_namespace: "ns".into(),
            buckets: B,
            tls: None,
        },
        ownership.clone(),
        Arc::new(Host {
            name: name.into(),
            log: log.clone(),
        }),
        Metrics::default(),
    );
    tokio::spawn(session.run(cancel.clone()));
    ownership
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joining_worker_gets_half_and_nobody_double_holds() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target.namespace("handoff").await.unwrap();
    let mut store = MapStore::new(client.clone(), &ns, "bucket-map", B);
    let slots = store.load().await.unwrap();
    let (core, snapshot) = Core::new(slots, store, RoundRobin, Box::new(|| vec![0; B as usize]));
    let (events, rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        let mut rx = rx;
        async move { core.run(&mut rx, cancel).await }
    });
    let (_leader_tx, leadership) = watch::channel(Some(Leadership {
        id: "coordinator-0".into(),
        epoch: 1,
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(
                WorkerSessions::new(events.clone(), leadership.clone(), B).trusting_hello(),
            ))
            .add_service(AdminServiceServer::new(Admin::new(
                snapshot.clone(),
                leadership.clone(),
                BucketCounts::new(NonZeroU32::new(B).unwrap()),
                events.clone(),
                NonZeroU32::new(B).unwrap(),
                Arc::new(Access::new(client.clone(), &ns)),
            )))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let log = Arc::new(Mutex::new(Log::default()));
    let w0 = worker(addr, "w0", &log, &cancel);
    events
        .send(Event::Members(["w0".to_owned()].into()))
        .await
        .unwrap();
    until("w0 holds everything", || {
        w0.lock().unwrap().len() == B as usize
    })
    .await;

    let w1 = worker(addr, "w1", &log, &cancel);
    events
        .send(Event::Members(["w0".to_owned(), "w1".to_owned()].into()))
        .await
        .unwrap();
    until("w1 holds half", || {
        w1.lock().unwrap().len() == (B / 2) as usize
    })
    .await;
    until("w0 holds half", || {
        w0.lock().unwrap().len() == (B / 2) as usize
    })
    .await;

    let snap = snapshot.borrow().clone();
    assert!(snap.pending.is_empty());
    let moved: Vec<&Slot> = snap
        .slots
        .iter()
        .filter(|s| s.owner.as_deref() == Some("w1"))
        .collect();
    assert_eq!(moved.len(), 4);
    assert!(
        moved.iter().all(|s| s.epoch == 2),
        "moved buckets are at epoch 2: {moved:?}"
    );
    // The map in the cluster says the same (a new leader would start from it).
    let mut reread = MapStore::new(client, &ns, "bucket-map", B);
    assert_eq!(reread.load().await.unwrap(), snap.slots);

    // The admin API shows the same map, locates a namespace, lists the workers.
    // A call without a token is refused; the admin kubeconfig's token (cluster-admin) passes.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let refused = proto::client::admin_client(endpoint.clone(), &Credentials::none())
        .await
        .unwrap()
        .get_bucket_map(proto::v1::GetBucketMapRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let config = devcluster::cluster::config_from_kubeconfig(&target.kubeconfig)
        .await
        .unwrap();
    let credentials = Credentials::from_kube_config(&config).unwrap();
    let mut admin = proto::client::admin_client(endpoint, &credentials)
        .await
        .unwrap();
    let map = admin
        .get_bucket_map(proto::v1::GetBucketMapRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(map.bucket_count, B);
    assert_eq!(map.leader_id, "coordinator-0");
    assert_eq!(map.buckets.iter().filter(|b| b.owner == "w1").count(), 4);
    let located = admin
        .locate(proto::v1::LocateRequest::namespace("team-a"))
        .await
        .unwrap()
        .into_inner();
    let bucket = engine::bucket::bucket("team-a", NonZeroU32::new(B).unwrap());
    assert_eq!(located.bucket, bucket);
    assert_eq!(
        Some(located.owner.as_str()),
        snap.slots[bucket as usize].owner.as_deref()
    );
    let workers = admin
        .list_workers(proto::v1::ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = workers
        .workers
        .iter()
        .map(|w| (w.id.as_str(), w.buckets_owned, w.connected))
        .collect();
    assert_eq!(ids, [("w0", 4, true), ("w1", 4, true)]);
    let handoffs = admin
        .list_handoffs(proto::v1::ListHandoffsRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    // Newest first: the rebalance w0 → w1 (4 buckets, completed, with a duration), then the first
    // assignment of all 8 buckets to w0 (no revoke).
    let summary: Vec<_> = handoffs
        .handoffs
        .iter()
        .map(|h| {
            (
                h.from.as_str(),
                h.to.as_str(),
                h.buckets.len(),
                proto::v1::HandoffReason::try_from(h.reason).unwrap(),
                h.outcome == proto::v1::HandoffOutcome::Completed as i32,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("w0", "w1", 4, proto::v1::HandoffReason::Rebalance, true),
            ("", "w0", 8, proto::v1::HandoffReason::Assign, true),
        ],
        "{handoffs:#?}"
    );
    assert!(handoffs.handoffs[0].duration.is_some());
    assert!(handoffs.handoffs[0].revoked_at.is_some());
    assert!(handoffs.handoffs[1].revoked_at.is_none());

    // w0 leaves: everything moves to w1.
    events
        .send(Event::Drain {
            worker: "w0".into(),
        })
        .await
        .unwrap();
    until("w1 holds everything", || {
        w1.lock().unwrap().len() == B as usize
    })
    .await;
    assert!(w0.lock().unwrap().is_empty());
    let log = log.lock().unwrap();
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    cancel.cancel();
}
