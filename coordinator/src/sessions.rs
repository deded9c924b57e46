//! The leader's `WorkerService`: accepts a worker's session, checks its Hello, answers with a
//! Welcome, and turns the stream into [`Event`]s for the [`core`](crate::core) loop.
//!
//! A replica that is not the leader answers `UNAVAILABLE` (the worker retries, and finds the
//! leader through the Service); a worker with another bucket count gets `FAILED_PRECONDITION`; a
//! stream that does not start with Hello gets `INVALID_ARGUMENT`.
//!
//! A session needs a client certificate from the coordinator's CA ([`crate::identity`]):
//! without one it is `UNAUTHENTICATED`, and a Hello naming another worker than the certificate
//! is `PERMISSION_DENIED`. ([`WorkerSessions::trusting_hello`] drops this check, for tests that
//! serve plaintext in-process.)

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::Stream;
use proto::v1::worker_service_server::WorkerService;
use proto::v1::{self, CoordinatorMessage, WorkerMessage, worker_message};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::core::Event;

/// Who leads, for the Welcome; `None` while this replica is not the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// This coordinator's id.
    pub id: String,
    /// Its term (grows with every new leader).
    pub epoch: u64,
}

/// The `WorkerService` of a coordinator replica.
#[derive(Debug)]
pub struct WorkerSessions {
    events: mpsc::Sender<Event>,
    leadership: watch::Receiver<Option<Leadership>>,
    buckets: u32,
    next: AtomicU64,
    certificates: bool,
}

impl WorkerSessions {
    /// Sessions feeding `events`, welcomed while `leadership` is `Some`.
    pub fn new(
        events: mpsc::Sender<Event>,
        leadership: watch::Receiver<Option<Leadership>>,
        buckets: u32,
    ) -> Self {
        Self {
            events,
            leadership,
            buckets,
            next: AtomicU64::new(1),
            certificates: true,
        }
    }

    /// Accepts any Hello without a client certificate (plaintext tests in one process).
    pub fn trusting_hello(mut self) -> Self {
        self.certificates = false;
        self
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerSessions {
    type SessionStream = Outbound;

    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let certified = if self.certificates {
            Some(crate::identity::peer_worker(&request)?)
        } else {
            None
        };
        let Some(leader) = self.leadership.borrow().clone() else {
            return Err(Status::unavailable(
                "this coordinator is not the leader; retry",
            ));
        };
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(WorkerMessage {
                kind: Some(worker_message::Kind::Hello(hello)),
                ..
            }) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Hello",
                ));
            }
        };
        if hello.bucket_count != self.buckets {
            return Err(Status::failed_precondition(format!(
                "worker {} has {} buckets, this installation {}: B must be the same everywhere",
                hello.worker_id, hello.bucket_count, self.buckets
            )));
        }
        if hello.worker_id.is_empty() {
            return Err(Status::invalid_argument("Hello.worker_id is empty"));
        }
        if let Some(certified) = certified
            && certified != hello.worker_id
        {
            tracing::warn!(certificate = %certified, hello = %hello.worker_id, "session refused: the Hello names another worker than the certificate");
            return Err(Status::permission_denied(format!(
                "the client certificate is worker {certified:?}'s, the Hello names {:?}",
                hello.worker_id
            )));
        }
        let worker = hello.worker_id.clone();
        let session = self.next.fetch_add(1, Ordering::Relaxed);
        let (outbox, rx) = mpsc::channel(256);
        let welcome = v1::Welcome {
            coordinator_id: leader.id,
            leader_epoch: leader.epoch,
            bucket_count: self.buckets,
            load_report_interval: None,
        };
        // The receiver is alive (we hold it): this cannot fail.
        let _ = outbox.send(Ok(welcome.into())).await;
        let held = hello.held.iter().map(|b| (b.bucket, b.epoch)).collect();
        self.events
            .send(Event::Hello {
                worker: worker.clone(),
                held,
                session,
                outbox,
            })
            .await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        let events = self.events.clone();
        tokio::spawn(async move {
            loop {
                let message = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => break,
                };
                let event = match message.kind {
                    Some(worker_message::Kind::Released(r)) => Event::Released {
                        worker: worker.clone(),
                        entries: r.buckets.iter().map(|b| (b.bucket, b.epoch)).collect(),
                        handoff_id: r.handoff_id,
                        trace: message.trace_context,
                    },
                    Some(worker_message::Kind::Load(load)) => Event::Load {
                        worker: worker.clone(),
                        load,
                    },
                    Some(worker_message::Kind::Leaving(_)) => Event::Drain {
                        worker: worker.clone(),
                    },
                    Some(worker_message::Kind::Hello(_)) | None => continue,
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
            let _ = events.send(Event::Closed { worker, session }).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
