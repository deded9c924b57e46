//! The worker's session against an in-process coordinator: hello with held buckets, grants start
//! work, a revoke is released only after the host finished, stale grants are ignored, and a
//! reconnect says what is held.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt as _, Stream};
use proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use proto::v1::{CoordinatorMessage, Grant, Revoke, Welcome, WorkerMessage, worker_message};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use worker::metrics::Metrics;
use worker::ownership::Ownership;
use worker::session::{BucketHost, Session, SessionConfig};

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

/// One session's two ends, as the test sees them.
type SessionEnds = (
    Streaming<WorkerMessage>,
    mpsc::Sender<Result<CoordinatorMessage, Status>>,
);

/// A scripted coordinator: hands each session's two ends to the test.
struct Fake {
    sessions: mpsc::Sender<SessionEnds>,
}

#[tonic::async_trait]
impl WorkerService for Fake {
    type SessionStream = Outbound;
    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let (tx, rx) = mpsc::channel(16);
        self.sessions
            .send((request.into_inner(), tx))
            .await
            .unwrap();
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[derive(Default)]
struct Host {
    started: Mutex<Vec<u32>>,
    stopping: Mutex<Vec<(Vec<u32>, oneshot::Sender<()>)>>,
}

struct HostRef(Arc<Host>);

impl BucketHost for HostRef {
    fn start(&self, buckets: &[u32]) {
        self.0.started.lock().unwrap().extend_from_slice(buckets);
    }
    fn stop(&self, buckets: Vec<u32>) -> BoxFuture<'static, ()> {
        let (tx, rx) = oneshot::channel();
        self.0.stopping.lock().unwrap().push((buckets, tx));
        rx.map(|_| ()).boxed()
    }
    fn load(&self) -> proto::v1::Load {
        proto::v1::Load {
            queue_depth: 3,
            ..Default::default()
        }
    }
}

async fn next(stream: &mut Streaming<WorkerMessage>) -> worker_message::Kind {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a message within 5 s")
            .unwrap()
            .expect("stream open");
        match m.kind.unwrap() {
            worker_message::Kind::Load(_) => continue,
            kind => return kind,
        }
    }
}

fn welcome(epoch: u64) -> CoordinatorMessage {
    Welcome {
        coordinator_id: "coordinator-0".into(),
        leader_epoch: epoch,
        bucket_count: 16,
        load_report_interval: None,
    }
    .into()
}

#[tokio::test]
async fn grant_revoke_release_and_reconnect() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sessions_tx, mut sessions) = mpsc::channel(4);
    let server = tonic::transport::Server::builder()
        .add_service(WorkerServiceServer::new(Fake {
            sessions: sessions_tx,
        }))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);

    let host = Arc::new(Host::default());
    let ownership = Arc::new(Mutex::new(Ownership::new()));
    let session = Session::new(
        SessionConfig {
            coordinator: vec![format!("http://{addr}")],
            worker_id: "worker-0".into(),
            lease_namespace: "ns".into(),
            buckets: 16,
            tls: None,
        },
        ownership.clone(),
        Arc::new(HostRef(host.clone())),
        Metrics::default(),
    );
    let cancel = CancellationToken::new();
    tokio::spawn(session.clone().run(cancel.clone()));

    let (mut inbound, outbound) = sessions.recv().await.unwrap();
    let worker_message::Kind::Hello(hello) = next(&mut inbound).await else {
        panic!("hello first")
    };
    assert_eq!(hello.worker_id, "worker-0");
    assert!(hello.held.is_empty());
    outbound.send(Ok(welcome(1))).await.unwrap();
    outbound
        .send(Ok(Grant {
            buckets: proto::bucket_epochs([(1, 1), (2, 1)]),
            handoff_id: "h1".into(),
        }
        .into()))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while host.started.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(*host.started.lock().unwrap(), vec![1, 2]);

    // Revoke bucket 1: no Released until the host finished stopping it.
    outbound
        .send(Ok(Revoke {
            buckets: proto::bucket_epochs([(1, 1), (9, 4)]),
            handoff_id: "h2".into(),
            reason: 0,
        }
        .into()))
        .await
        .unwrap();
    let finish = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(entry) = host.stopping.lock().unwrap().pop() {
                return entry;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(finish.0, vec![1]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), inbound.message())
            .await
            .map_or(true, |m| matches!(
                m.unwrap().unwrap().kind,
                Some(worker_message::Kind::Load(_))
            )),
        "Released must wait for the host"
    );
    finish.1.send(()).unwrap();
    let worker_message::Kind::Released(released) = next(&mut inbound).await else {
        panic!("released")
    };
    assert_eq!(released.handoff_id, "h2");
    let mut entries: Vec<(u32, u64)> = released.buckets.into_iter().map(Into::into).collect();
    entries.sort();
    assert_eq!(
        entries,
        vec![(1, 1), (9, 4)],
        "the released bucket and the acknowledged unknown one"
    );
    assert!(!ownership.lock().unwrap().holds(1));

    // A stale grant of bucket 1 at its old epoch is ignored.
    outbound
        .send(Ok(Grant {
            buckets: proto::bucket_epochs([(1, 1)]),
            handoff_id: "h3".into(),
        }
        .into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*host.started.lock().unwrap(), vec![1, 2]);

    // The coordinator goes away; the reconnect's Hello lists what is held.
    drop(outbound);
    drop(inbound);
    let (mut inbound, _outbound) = tokio::time::timeout(Duration::from_secs(10), sessions.recv())
        .await
        .unwrap()
        .unwrap();
    let worker_message::Kind::Hello(hello) = next(&mut inbound).await else {
        panic!("hello")
    };
    let held: Vec<(u32, u64)> = hello.held.into_iter().map(Into::into).collect();
    assert_eq!(held, vec![(2, 1)]);
    cancel.cancel();
}

/// A standby coordinator: refuses every session with `UNAVAILABLE`, counting them.
struct Standby {
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl WorkerService for Standby {
    type SessionStream = Outbound;
    async fn session(
        &self,
        _request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(Status::unavailable(
            "this coordinator is not the leader; retry",
        ))
    }
}

/// Serves `service` on a free loopback port; returns its URL.
async fn serve<S>(service: S) -> String
where
    S: WorkerService,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

async fn standby() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = serve(Standby {
        calls: calls.clone(),
    })
    .await;
    (url, calls)
}

async fn leader() -> (String, mpsc::Receiver<SessionEnds>) {
    let (sessions, rx) = mpsc::channel(4);
    (serve(Fake { sessions }).await, rx)
}

/// A loopback URL nothing listens on.
async fn dead() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn session_to(coordinator: Vec<String>) -> Session {
    Session::new(
        SessionConfig {
            coordinator,
            worker_id: "worker-0".into(),
            lease_namespace: "ns".into(),
            buckets: 16,
            tls: None,
        },
        Arc::new(Mutex::new(Ownership::new())),
        Arc::new(HostRef(Arc::new(Host::default()))),
        Metrics::default(),
    )
}

/// Below the first backoff (0.5 s, jittered to at least 0.4 s): reaching the leader within it
/// means no backoff was taken on the way.
const AT_ONCE: Duration = Duration::from_millis(350);

#[tokio::test]
async fn a_standby_and_a_dead_address_are_skipped_at_once() {
    let (standby, standby_calls) = standby().await;
    let dead = dead().await;
    let (leader, mut sessions) = leader().await;
    let session = session_to(vec![standby, dead, leader]);
    let cancel = CancellationToken::new();
    let started = tokio::time::Instant::now();
    tokio::spawn(session.clone().run(cancel.clone()));

    let (mut inbound, outbound) = tokio::time::timeout(Duration::from_secs(5), sessions.recv())
        .await
        .expect("the leader gets a session")
        .unwrap();
    assert!(
        started.elapsed() < AT_ONCE,
        "the third address was reached at once, not after a backoff: {:?}",
        started.elapsed()
    );
    assert_eq!(standby_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let worker_message::Kind::Hello(hello) = next(&mut inbound).await else {
        panic!("hello first")
    };
    assert_eq!(hello.worker_id, "worker-0");
    assert_eq!(*session.welcomes().borrow(), 0, "not welcomed yet");
    outbound.send(Ok(welcome(1))).await.unwrap();
    let mut welcomes = session.welcomes();
    tokio::time::timeout(Duration::from_secs(5), welcomes.wait_for(|n| *n == 1))
        .await
        .unwrap()
        .unwrap();
    assert!(session.is_connected());
    cancel.cancel();
}

#[tokio::test]
async fn the_backoff_applies_only_after_a_whole_round_failed() {
    let (first, first_calls) = standby().await;
    let (second, second_calls) = standby().await;
    let session = session_to(vec![first, second]);
    let cancel = CancellationToken::new();
    tokio::spawn(session.run(cancel.clone()));
    // Round 1 at once, round 2 after 0.4–0.6 s, round 3 not before 1.2 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cancel.cancel();
    let (a, b) = (
        first_calls.load(std::sync::atomic::Ordering::SeqCst),
        second_calls.load(std::sync::atomic::Ordering::SeqCst),
    );
    assert!((1..=2).contains(&a) && (1..=2).contains(&b), "{a}, {b}");
    assert!(a.abs_diff(b) <= 1, "both are tried every round: {a}, {b}");
}

#[tokio::test]
async fn leaving_is_sent_again_on_the_next_session() {
    let (url, mut sessions) = leader().await;
    let session = session_to(vec![url]);
    assert!(
        !session.leave("before any session").await,
        "no session to send it on"
    );
    let cancel = CancellationToken::new();
    tokio::spawn(session.clone().run(cancel.clone()));

    let (mut inbound, outbound) = sessions.recv().await.unwrap();
    assert!(matches!(
        next(&mut inbound).await,
        worker_message::Kind::Hello(_)
    ));
    outbound.send(Ok(welcome(1))).await.unwrap();
    let worker_message::Kind::Leaving(leaving) = next(&mut inbound).await else {
        panic!("Leaving right after the Welcome")
    };
    assert_eq!(leaving.reason, "before any session");
    assert!(session.leave("SIGTERM").await, "sent on the open session");
    let worker_message::Kind::Leaving(leaving) = next(&mut inbound).await else {
        panic!("Leaving")
    };
    assert_eq!(leaving.reason, "SIGTERM");

    // The stream drops; the next session repeats it after its Welcome.
    drop(outbound);
    drop(inbound);
    let (mut inbound, outbound) = tokio::time::timeout(Duration::from_secs(10), sessions.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        next(&mut inbound).await,
        worker_message::Kind::Hello(_)
    ));
    outbound.send(Ok(welcome(1))).await.unwrap();
    let worker_message::Kind::Leaving(leaving) = next(&mut inbound).await else {
        panic!("Leaving again")
    };
    assert_eq!(leaving.reason, "SIGTERM");
    cancel.cancel();
}
