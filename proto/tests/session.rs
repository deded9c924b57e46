//! The generated WorkerService over a real loopback connection: two workers open bidirectional
//! sessions with a small in-process coordinator, which moves worker A's buckets to worker B with
//! hello → welcome → revoke → released → grant, carrying trace context; and the session's error
//! statuses (wrong bucket count, no Hello first).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::bucket_epochs;
use proto::v1::worker_service_client::WorkerServiceClient;
use proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use proto::v1::{
    BucketEpoch, CoordinatorMessage, Grant, HandoffReason, Hello, Load, Released, Revoke, Welcome,
    WorkerMessage, coordinator_message, worker_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status, Streaming};

const BUCKETS: u32 = 1024;
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

type Outbound = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// Just enough coordinator to exercise the protocol: when a worker says Hello holding buckets
/// while another worker is connected, it moves them all to that other worker.
#[derive(Default)]
struct Coordinator {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Outbound>,
    /// Handoff id → the worker its buckets go to.
    handoffs: HashMap<String, String>,
    loads: HashMap<String, Load>,
    next_handoff: u64,
}

#[tonic::async_trait]
impl WorkerService for Coordinator {
    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let state = self.state.clone();
        tokio::spawn(async move {
            if let Err(status) = serve_session(inbound, tx.clone(), state).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn send(tx: &Outbound, message: CoordinatorMessage) -> Result<(), Status> {
    tx.send(Ok(message))
        .await
        .map_err(|_| Status::cancelled("worker went away"))
}

async fn serve_session(
    mut inbound: Streaming<WorkerMessage>,
    tx: Outbound,
    state: Arc<Mutex<State>>,
) -> Result<(), Status> {
    let hello = match inbound.message().await? {
        Some(WorkerMessage {
            kind: Some(worker_message::Kind::Hello(hello)),
            ..
        }) => hello,
        _ => {
            return Err(Status::invalid_argument(
                "the first message must be a Hello",
            ));
        }
    };
    if hello.bucket_count != BUCKETS {
        return Err(Status::failed_precondition(format!(
            "worker has {} buckets, coordinator {BUCKETS}",
            hello.bucket_count
        )));
    }
    send(
        &tx,
        Welcome {
            coordinator_id: "coordinator-0".into(),
            leader_epoch: 1,
            bucket_count: BUCKETS,
            load_report_interval: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
        }
        .into(),
    )
    .await?;

    let revoke = {
        let mut state = state.lock().expect("state lock");
        let target = state.sessions.keys().next().cloned();
        state.sessions.insert(hello.worker_id.clone(), tx.clone());
        match target {
            Some(target) if !hello.held.is_empty() => {
                state.next_handoff += 1;
                let id = format!("h-{}", state.next_handoff);
                state.handoffs.insert(id.clone(), target);
                Some(Revoke {
                    buckets: hello.held.clone(),
                    handoff_id: id,
                    reason: HandoffReason::Rebalance.into(),
                })
            }
            _ => None,
        }
    };
    if let Some(revoke) = revoke {
        send(
            &tx,
            CoordinatorMessage::from(revoke).with_trace_context([("traceparent", TRACEPARENT)]),
        )
        .await?;
    }

    while let Some(message) = inbound.message().await? {
        match message.kind {
            Some(worker_message::Kind::Released(released)) => {
                let (to, outbound) = {
                    let mut state = state.lock().expect("state lock");
                    let to = state
                        .handoffs
                        .remove(&released.handoff_id)
                        .ok_or_else(|| Status::invalid_argument("unknown handoff"))?;
                    let outbound = state.sessions.get(&to).cloned();
                    (to, outbound)
                };
                let outbound = outbound.ok_or_else(|| Status::internal(format!("{to} left")))?;
                let grant = Grant {
                    buckets: released
                        .buckets
                        .iter()
                        .map(|be| BucketEpoch::new(be.bucket, be.epoch + 1))
                        .collect(),
                    handoff_id: released.handoff_id,
                };
                // The grant continues the trace the release carried.
                send(
                    &outbound,
                    CoordinatorMessage::from(grant).with_trace_context(message.trace_context),
                )
                .await?;
            }
            Some(worker_message::Kind::Load(load)) => {
                state
                    .lock()
                    .expect("state lock")
                    .loads
                    .insert(hello.worker_id.clone(), load);
            }
            Some(worker_message::Kind::Hello(_)) => {
                return Err(Status::invalid_argument("Hello only comes first"));
            }
            Some(worker_message::Kind::Leaving(_)) | None => {}
        }
    }
    state
        .lock()
        .expect("state lock")
        .sessions
        .remove(&hello.worker_id);
    Ok(())
}

async fn start(coordinator: Coordinator) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(
        Server::builder()
            .add_service(WorkerServiceServer::new(coordinator))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

async fn client(addr: SocketAddr) -> WorkerServiceClient<Channel> {
    WorkerServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// A worker's side of a session: what it sends, and the stream of what it receives.
struct Session {
    tx: mpsc::Sender<WorkerMessage>,
    rx: Streaming<CoordinatorMessage>,
}

impl Session {
    async fn open(addr: SocketAddr, first: WorkerMessage) -> Session {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue first message");
        let rx = client(addr)
            .await
            .session(ReceiverStream::new(rx))
            .await
            .expect("session opens")
            .into_inner();
        Session { tx, rx }
    }

    async fn send(&self, message: impl Into<WorkerMessage>) {
        self.tx.send(message.into()).await.expect("send");
    }

    async fn next(&mut self) -> CoordinatorMessage {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a message within 5 s")
            .expect("no error status")
            .expect("stream still open")
    }

    async fn error(mut self) -> Status {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("an answer within 5 s")
            .expect_err("an error status")
    }
}

fn hello(worker_id: &str, held: Vec<BucketEpoch>, bucket_count: u32) -> WorkerMessage {
    Hello {
        worker_id: worker_id.into(),
        lease_namespace: "kubetemplater-system".into(),
        held,
        bucket_count,
        version: env!("CARGO_PKG_VERSION").into(),
    }
    .into()
}

fn expect_welcome(message: CoordinatorMessage) -> Welcome {
    match message.kind {
        Some(coordinator_message::Kind::Welcome(welcome)) => welcome,
        other => panic!("expected a Welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn handoff_over_bidirectional_sessions() {
    let coordinator = Coordinator::default();
    let state = coordinator.state.clone();
    let addr = start(coordinator).await;

    // Worker B: fresh, holds nothing.
    let mut b = Session::open(addr, hello("worker-b", vec![], BUCKETS)).await;
    let welcome = expect_welcome(b.next().await);
    assert_eq!(welcome.bucket_count, BUCKETS);
    assert_eq!(welcome.coordinator_id, "coordinator-0");
    assert_eq!(
        welcome.load_report_interval_or_default(),
        Duration::from_secs(1)
    );

    // Worker A reconnects holding two buckets; they go to B.
    let held = bucket_epochs([(3, 7), (4, 7)]);
    let mut a = Session::open(addr, hello("worker-a", held.clone(), BUCKETS)).await;
    expect_welcome(a.next().await);
    let revoke = a.next().await;
    assert_eq!(revoke.trace_context["traceparent"], TRACEPARENT);
    let revoke = match revoke.kind {
        Some(coordinator_message::Kind::Revoke(revoke)) => revoke,
        other => panic!("expected a Revoke, got {other:?}"),
    };
    assert_eq!(revoke.buckets, held);
    assert_eq!(revoke.reason(), HandoffReason::Rebalance);

    // While A has not released, B is granted nothing.
    a.send(Load {
        queue_depth: 2,
        objects_owned: 40,
        in_flight: 1,
        reconciles_per_second: 3.0,
        ..Default::default()
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), b.rx.message())
            .await
            .is_err(),
        "B must not hear anything before A's Released"
    );

    // A releases, continuing the revoke's trace; B is granted the next epochs.
    a.tx.send(
        WorkerMessage::from(Released {
            buckets: revoke.buckets.clone(),
            handoff_id: revoke.handoff_id.clone(),
            release_duration: prost_types::Duration::try_from(Duration::from_millis(120)).ok(),
        })
        .with_trace_context([("traceparent", TRACEPARENT)]),
    )
    .await
    .expect("send Released");
    let grant = b.next().await;
    assert_eq!(grant.trace_context["traceparent"], TRACEPARENT);
    match grant.kind {
        Some(coordinator_message::Kind::Grant(grant)) => {
            assert_eq!(grant.buckets, bucket_epochs([(3, 8), (4, 8)]));
            assert_eq!(grant.handoff_id, revoke.handoff_id);
        }
        other => panic!("expected a Grant, got {other:?}"),
    }
    assert_eq!(
        state.lock().expect("state lock").loads["worker-a"].objects_owned,
        40
    );

    // A worker that closes its side ends the session cleanly.
    drop(a.tx);
    let end = tokio::time::timeout(Duration::from_secs(5), a.rx.message())
        .await
        .expect("end within 5 s");
    assert!(matches!(end, Ok(None)), "clean end, got {end:?}");
}

#[tokio::test]
async fn a_bucket_count_mismatch_is_refused() {
    let addr = start(Coordinator::default()).await;
    let session = Session::open(addr, hello("worker-c", vec![], BUCKETS / 2)).await;
    assert_eq!(session.error().await.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_session_must_start_with_hello() {
    let addr = start(Coordinator::default()).await;
    let session = Session::open(addr, Load::default().into()).await;
    assert_eq!(session.error().await.code(), Code::InvalidArgument);
}
