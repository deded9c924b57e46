//! The wired worker (`worker::run_with`, what the binary runs) against the real API server and an
//! in-process coordinator: a standby is skipped, a granted bucket is reconciled through the
//! fenced writes, /readyz turns ready once Lease, policy cache and session are there; SIGTERM
//! sends Leaving, waits for the revoke, releases the Lease and returns `Ok`; without a
//! coordinator SIGTERM still releases at once; a deleted Lease stops the worker with an error.
//! The coordinators serve mutual TLS as the real one does; the worker gets supplied certificate
//! files (`--tls-cert-file` …) naming it, signed by the test's CA.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures: a failed setup step should fail the test loudly"
)]

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use api::{KubeTemplate, KubeTemplatePolicy, KubeTemplatePolicySpec};
use futures::Stream;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use proto::v1::{CoordinatorMessage, Grant, Revoke, Welcome, WorkerMessage, worker_message};
use runtime::lease::LostReason;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use worker::{Args, RunError};

const PATIENCE: Duration = Duration::from_secs(30);
/// B of this test's worker and coordinator: larger than any real installation's in the shared
/// cluster (1024), so no other worker of this run watches [`BUCKET`].
const BUCKETS: u32 = 4096;
const BUCKET: u32 = 4001;

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;
type SessionEnds = (
    Streaming<WorkerMessage>,
    mpsc::Sender<Result<CoordinatorMessage, Status>>,
);

/// The leader: hands each session's two ends to the test.
struct Leader(mpsc::Sender<SessionEnds>);

#[tonic::async_trait]
impl WorkerService for Leader {
    type SessionStream = Outbound;
    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let (tx, rx) = mpsc::channel(16);
        self.0.send((request.into_inner(), tx)).await.unwrap();
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A standby: not the leader.
struct Standby;

#[tonic::async_trait]
impl WorkerService for Standby {
    type SessionStream = Outbound;
    async fn session(
        &self,
        _request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        Err(Status::unavailable(
            "this coordinator is not the leader; retry",
        ))
    }
}

/// A CA, a coordinator's serving certificate signed by it, and certificates for workers.
struct Pki {
    dir: tempfile::TempDir,
    signer: certs::client::Signer,
    server: Arc<rustls::ServerConfig>,
    _certs: watch::Sender<Arc<certs::ServingCert>>,
}

impl Pki {
    fn new(namespace: &str) -> Self {
        let cert = certs::ServingCert::generate(
            &[proto::client::server_name(namespace)],
            &[],
            Duration::from_secs(3600),
        )
        .unwrap();
        let signer = cert.signer().unwrap().clone();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &cert.ca_pem).unwrap();
        let (tx, rx) = watch::channel(Arc::new(cert));
        let server = certs::tls::mtls_server_config(
            Arc::new(certs::tls::ReloadingResolver::new(rx.clone())),
            rx,
        )
        .unwrap();
        Self {
            dir,
            signer,
            server,
            _certs: tx,
        }
    }

    /// Files `--tls-cert-file`, `--tls-key-file`, `--tls-ca-file` for `worker_id`.
    fn worker_files(&self, worker_id: &str) -> [String; 3] {
        use secrecy::ExposeSecret as _;
        let request = certs::client::key_and_request(worker_id).unwrap();
        let issued = self
            .signer
            .issue_client(
                &request.csr_pem,
                worker_id,
                &format!("kubetemplater://worker/{worker_id}"),
                Duration::from_secs(3600),
            )
            .unwrap();
        let path = |name: String| self.dir.path().join(name).display().to_string();
        let (cert, key) = (
            path(format!("{worker_id}.crt")),
            path(format!("{worker_id}.key")),
        );
        std::fs::write(&cert, issued.chain_pem).unwrap();
        std::fs::write(&key, request.key_pem.expose_secret()).unwrap();
        [cert, key, path("ca.crt".into())]
    }

    /// Serves `service` over mutual TLS; its `https://` URL.
    async fn serve<S: WorkerService>(&self, service: S) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server));
        let incoming =
            futures::stream::unfold((listener, acceptor), |(listener, acceptor)| async move {
                loop {
                    let (tcp, _) = listener.accept().await.ok()?;
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        return Some((Ok::<_, std::io::Error>(tls), (listener, acceptor)));
                    }
                }
            });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(WorkerServiceServer::new(service))
                .serve_with_incoming(incoming),
        );
        format!("https://{addr}")
    }
}

/// A loopback address nothing listens on (for the admin endpoint, or a dead coordinator).
async fn free_addr() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn next(stream: &mut Streaming<WorkerMessage>) -> worker_message::Kind {
    loop {
        let m = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a message in time")
            .unwrap()
            .expect("stream open");
        match m.kind.unwrap() {
            worker_message::Kind::Load(_) => continue,
            kind => return kind,
        }
    }
}

/// The status code of `GET path` on the admin endpoint (0 when it does not answer).
async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

struct Fixture {
    client: kube::Client,
    config: kube::Config,
    ns: String,
    pki: Pki,
}

impl Fixture {
    async fn new(prefix: &str) -> Self {
        let target = devcluster::testing::target().await.unwrap();
        let client = target.client().await.unwrap();
        let ns = target.namespace_without_admission(prefix).await.unwrap();
        let kubeconfig = Kubeconfig::read_from(&target.kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        let pki = Pki::new(&ns);
        Self {
            client,
            config,
            ns,
            pki,
        }
    }

    fn args(&self, worker_id: &str, coordinators: &[String], admin: std::net::SocketAddr) -> Args {
        use clap::Parser as _;
        let [cert, key, ca] = self.pki.worker_files(worker_id);
        Args::try_parse_from([
            "kubetemplater-worker",
            "--worker-id",
            worker_id,
            "--namespace",
            &self.ns,
            "--buckets",
            &BUCKETS.to_string(),
            "--coordinator-addr",
            &coordinators.join(","),
            "--admin-addr",
            &admin.to_string(),
            "--shutdown-grace",
            "10s",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-file",
            &ca,
        ])
        .unwrap()
    }

    fn start(&self, args: Args, shutdown: &CancellationToken) -> JoinHandle<Result<(), RunError>> {
        let log_level = telemetry::LogLevelHandle::detached("info").unwrap();
        tokio::spawn(worker::run_with(
            args,
            self.config.clone(),
            log_level,
            shutdown.clone(),
        ))
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn holder(&self, name: &str) -> Option<String> {
        self.leases()
            .get_opt(name)
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty())
    }

    async fn until_held(&self, name: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(holder) = self.holder(name).await {
                return holder;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Lease {name} never held"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn finished(task: JoinHandle<Result<(), RunError>>) -> Result<(), RunError> {
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the worker stops in time")
        .expect("the worker does not panic")
}

#[tokio::test(flavor = "multi_thread")]
async fn reconciles_its_grant_and_on_sigterm_leaves_then_releases_its_lease() {
    let f = Fixture::new("worker-run").await;
    let spec: KubeTemplatePolicySpec = serde_json::from_value(json!({
        "sourceNamespace": f.ns,
        "validationRules": [
            {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": [f.ns]}
        ]
    }))
    .unwrap();
    Api::<KubeTemplatePolicy>::namespaced(f.client.clone(), &f.ns)
        .create(&PostParams::default(), &KubeTemplatePolicy::new("p", spec))
        .await
        .unwrap();
    let kt: KubeTemplate = serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
        "metadata": {"name": "web", "labels": {"kubetemplater.io/bucket": BUCKET.to_string()}},
        "spec": {"templates": [
            {"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "v"}}}
        ]}
    }))
    .unwrap();
    let templates: Api<KubeTemplate> = Api::namespaced(f.client.clone(), &f.ns);
    templates.create(&PostParams::default(), &kt).await.unwrap();

    let standby = f.pki.serve(Standby).await;
    let (sessions_tx, mut sessions) = mpsc::channel(4);
    let leader = f.pki.serve(Leader(sessions_tx)).await;
    let admin = free_addr().await;
    let shutdown = CancellationToken::new();
    let task = f.start(f.args("w-run", &[standby, leader], admin), &shutdown);

    let (mut inbound, outbound) = tokio::time::timeout(PATIENCE, sessions.recv())
        .await
        .expect("the leader gets a session past the standby")
        .unwrap();
    let worker_message::Kind::Hello(hello) = next(&mut inbound).await else {
        panic!("Hello first")
    };
    assert_eq!(hello.worker_id, "w-run");
    assert_eq!(hello.lease_namespace, f.ns);
    assert_eq!(hello.bucket_count, BUCKETS);
    assert!(
        f.holder("w-run").await.unwrap().starts_with("w-run-"),
        "the Lease is held before the session opens"
    );
    outbound
        .send(Ok(Welcome {
            coordinator_id: "coordinator-0".into(),
            leader_epoch: 1,
            bucket_count: BUCKETS,
            load_report_interval: None,
        }
        .into()))
        .await
        .unwrap();
    outbound
        .send(Ok(Grant {
            buckets: proto::bucket_epochs([(BUCKET, 1)]),
            handoff_id: "h1".into(),
        }
        .into()))
        .await
        .unwrap();

    // The granted bucket's template is reconciled, through the fenced writes.
    let configmaps: Api<ConfigMap> = Api::namespaced(f.client.clone(), &f.ns);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while configmaps.get_opt("cm").await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "cm never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while http_status(admin, "/readyz").await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM: Leaving → the coordinator revokes → Released → the Lease is released.
    shutdown.cancel();
    let worker_message::Kind::Leaving(_) = next(&mut inbound).await else {
        panic!("Leaving on SIGTERM")
    };
    assert!(!task.is_finished(), "it waits for the revoke");
    outbound
        .send(Ok(Revoke {
            buckets: proto::bucket_epochs([(BUCKET, 1)]),
            handoff_id: "bye".into(),
            reason: 0,
        }
        .into()))
        .await
        .unwrap();
    let worker_message::Kind::Released(released) = next(&mut inbound).await else {
        panic!("Released")
    };
    assert_eq!(released.handoff_id, "bye");
    finished(task).await.unwrap();
    assert_eq!(f.holder("w-run").await, None, "the Lease is released");

    // The finalizer would block the namespace's deletion: finish the template here.
    templates
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let kt = templates.get("web").await.unwrap();
    let reconciler = worker::reconcile::Reconciler::new(
        f.client.clone(),
        std::sync::Arc::new(runtime::policies::PolicyCache::new(std::sync::Arc::new(
            runtime::policies::NoObserver,
        ))),
        1,
    );
    reconciler
        .reconcile(&kt, &BUCKET.to_string(), worker::reconcile::Trigger::Change)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_coordinator_sigterm_releases_the_lease_at_once() {
    let f = Fixture::new("worker-run-alone").await;
    let dead = format!("http://{}", free_addr().await);
    let shutdown = CancellationToken::new();
    let task = f.start(f.args("w-alone", &[dead], free_addr().await), &shutdown);
    f.until_held("w-alone").await;
    let started = tokio::time::Instant::now();
    shutdown.cancel();
    finished(task).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no wait for revokes without a session: {:?}",
        started.elapsed()
    );
    assert_eq!(f.holder("w-alone").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_lease_stops_the_worker_with_an_error() {
    let f = Fixture::new("worker-run-lost").await;
    let dead = format!("http://{}", free_addr().await);
    let shutdown = CancellationToken::new();
    let task = f.start(f.args("w-lost", &[dead], free_addr().await), &shutdown);
    f.until_held("w-lost").await;
    f.leases()
        .delete("w-lost", &DeleteParams::default())
        .await
        .unwrap();
    match finished(task).await {
        Err(RunError::LeaseLost(fenced)) => {
            assert_eq!(fenced.reason, LostReason::Deleted);
            assert!(fenced.lease.ends_with("/w-lost"), "{}", fenced.lease);
        }
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    assert!(!shutdown.is_cancelled());
}
