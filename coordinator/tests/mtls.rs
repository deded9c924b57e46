//! The coordinator's gRPC endpoint against a real API server, wired as `coordinator::run` wires
//! it: TLS only, a self-managed CA in a Secret, workers certified with their Kubernetes token.
//!
//! - a plaintext client and a client whose certificate another CA signed are refused at the
//!   handshake; a TLS client without a certificate cannot open a worker session;
//! - a worker is certified only for the Lease its identity may update, and its certificate
//!   opens a session only under its own name; the worker's own certifying client
//!   (`worker::identity`) gets a certificate and is welcomed;
//! - a new CA (the Secret deleted) is served and published without a restart: clients trusting
//!   only the old bundle are refused, clients reading the published one get through.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use certs::{CertSource, SecretSource, ServingCert};
use common::{Leading, grant, service_account_token, while_denied};
use coordinator::access::Access;
use coordinator::identity::{self, Identities};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::Api;
use kube::api::DeleteParams;
use proto::client::{Credentials, Tls};
use proto::v1::identity_service_client::IdentityServiceClient;
use proto::v1::identity_service_server::IdentityServiceServer;
use proto::v1::worker_service_client::WorkerServiceClient;
use proto::v1::{CertifyRequest, GetBucketMapRequest, Hello, WorkerMessage};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const B: u32 = 8;
const SECRET: &str = "coordinator-tls";

struct Endpoint {
    url: String,
    namespace: String,
    certs: watch::Receiver<Arc<ServingCert>>,
    _cancel: tokio_util::sync::DropGuard,
}

/// A coordinator endpoint in `namespace` as `coordinator::run` serves it, leading.
async fn serve(client: kube::Client, namespace: &str) -> Endpoint {
    let cancel = CancellationToken::new();
    let source = CertSource::Secret(SecretSource {
        manager: "kubetemplater-coordinator".into(),
        dns_names: vec![proto::client::server_name(namespace)],
        recheck_interval: Duration::from_secs(1),
        ..SecretSource::defaults(client.clone(), namespace, SECRET)
    });
    let first = certs::load(&source).await.unwrap();
    let (cert_tx, cert_rx) = watch::channel(Arc::new(first));
    tokio::spawn({
        let cancel = cancel.clone();
        async move { certs::maintain(source, cert_tx, cancel).await.unwrap() }
    });
    tokio::spawn(identity::publish_bundle(
        client.clone(),
        namespace.to_owned(),
        cert_rx.clone(),
        cancel.clone(),
    ));
    let config = certs::tls::mtls_server_config(
        Arc::new(certs::tls::ReloadingResolver::new(cert_rx.clone())),
        cert_rx.clone(),
    )
    .unwrap();
    let access = Arc::new(Access::new(client, namespace));
    let leading = Leading::new(B);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(leading.sessions())
            .add_service(leading.admin(Arc::clone(&access)))
            .add_service(IdentityServiceServer::new(Identities::new(
                access,
                cert_rx.clone(),
                Duration::from_secs(3600),
            )))
            .serve_with_incoming(coordinator::transport::tls_incoming(
                listener,
                config,
                cancel.clone(),
            )),
    );
    Endpoint {
        url: format!("https://{addr}"),
        namespace: namespace.to_owned(),
        certs: cert_rx,
        _cancel: cancel.drop_guard(),
    }
}

/// Opens a session as `worker_id` over `tls`: the coordinator's answer to the Hello.
async fn session(url: &str, tls: &Tls, worker_id: &str) -> Result<(), tonic::Status> {
    let channel = tls
        .endpoint(url)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))?;
    let (tx, rx) = mpsc::channel::<WorkerMessage>(4);
    tx.send(WorkerMessage::from(Hello {
        worker_id: worker_id.into(),
        lease_namespace: "ns".into(),
        held: vec![],
        bucket_count: B,
        version: "test".into(),
    }))
    .await
    .unwrap();
    let mut inbound = WorkerServiceClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let welcome = inbound.message().await?;
    assert!(welcome.is_some(), "a Welcome");
    Ok(())
}

/// A certificate for `worker_id` from the coordinator, asked for with `token`.
async fn certify(
    endpoint: &Endpoint,
    tls: &Tls,
    token: &str,
    worker_id: &str,
) -> Result<Tls, tonic::Status> {
    let request = certs::client::key_and_request(worker_id).unwrap();
    let channel = tls
        .endpoint(&endpoint.url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = IdentityServiceClient::new(Credentials::token(token).unwrap().wrap(channel))
        .certify(CertifyRequest {
            worker_id: worker_id.into(),
            csr_pem: request.csr_pem,
        })
        .await?
        .into_inner();
    use secrecy::ExposeSecret as _;
    Ok(
        Tls::new(answer.ca_bundle_pem, &endpoint.namespace).with_identity(
            answer.certificate_pem,
            request.key_pem.expose_secret().to_owned(),
        ),
    )
}

fn lease_rule(name: &str) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec!["coordination.k8s.io".into()]),
        resources: Some(vec!["leases".into()]),
        resource_names: Some(vec![name.into()]),
        verbs: vec!["get".into(), "update".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn only_certified_workers_open_sessions_and_only_under_their_own_name() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target.namespace("mtls").await.unwrap();
    let endpoint = serve(client.clone(), &ns).await;
    let trusting = published(&client, &ns).await;

    // Plaintext is refused at the handshake.
    let plaintext = tonic::transport::Endpoint::from_shared(endpoint.url.replace("https", "http"))
        .unwrap()
        .connect()
        .await;
    let refused = match plaintext {
        Err(e) => format!("{e:?}"),
        Ok(channel) => {
            let err = WorkerServiceClient::new(channel)
                .session(tokio_stream::iter(Vec::<WorkerMessage>::new()))
                .await
                .unwrap_err();
            assert_ne!(err.code(), Code::Ok);
            format!("{err:?}")
        }
    };
    assert!(!refused.is_empty());

    // TLS without a certificate: no session; the admin API still takes a token.
    let err = session(&endpoint.url, &trusting, "worker-a")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("needs a client certificate"),
        "{err:?}"
    );
    let admin = devcluster::cluster::config_from_kubeconfig(&target.kubeconfig)
        .await
        .unwrap();
    let mut admin_client = proto::client::admin_client(
        trusting.endpoint(&endpoint.url).unwrap(),
        &Credentials::from_kube_config(&admin).unwrap(),
    )
    .await
    .unwrap();
    admin_client
        .get_bucket_map(GetBucketMapRequest {})
        .await
        .unwrap();

    // A certificate from another CA, naming the same worker: refused at the handshake.
    let stranger = ServingCert::generate(&["x".into()], &[], Duration::from_secs(3600)).unwrap();
    let request = certs::client::key_and_request("worker-a").unwrap();
    let forged = stranger
        .signer()
        .unwrap()
        .issue_client(
            &request.csr_pem,
            "worker-a",
            "kubetemplater://worker/worker-a",
            Duration::from_secs(3600),
        )
        .unwrap();
    use secrecy::ExposeSecret as _;
    let forged_tls = trusting
        .clone()
        .with_identity(forged.chain_pem, request.key_pem.expose_secret().to_owned());
    let err = session(&endpoint.url, &forged_tls, "worker-a")
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok, "{err:?}");
    assert!(
        !matches!(err.code(), Code::PermissionDenied | Code::Unauthenticated),
        "refused at the handshake, before any service saw it: {err:?}"
    );

    // Certify: the token's user must be allowed to update the worker's Lease.
    let token = service_account_token(&client, &ns, "worker-a").await;
    let err = certify(&endpoint, &trusting, &token, "worker-a")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains(&format!(
            "lacks permission `update leases.coordination.k8s.io \"worker-a\" in namespace {ns:?}`"
        )),
        "{err:?}"
    );
    grant(&client, &ns, "worker-a", "lease", lease_rule("worker-a")).await;
    let certified = while_denied(|| certify(&endpoint, &trusting, &token, "worker-a"))
        .await
        .unwrap();
    // …for that Lease only.
    let err = certify(&endpoint, &trusting, &token, "worker-b")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The certificate opens a session under its own name, not another's.
    session(&endpoint.url, &certified, "worker-a")
        .await
        .unwrap();
    let err = session(&endpoint.url, &certified, "worker-b")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains(
            "the client certificate is worker \"worker-a\"'s, the Hello names \"worker-b\""
        ),
        "{err:?}"
    );

    // The worker's own client: certified with its token, welcomed.
    let worker_tls =
        worker::identity::WorkerTls::Certified(Box::new(worker::identity::Certified::new(
            client.clone(),
            Credentials::token(token.clone()).unwrap(),
            ns.clone(),
            "worker-a".into(),
        )));
    let tls = worker_tls.for_connection(&endpoint.url).await.unwrap();
    session(&endpoint.url, &tls, "worker-a").await.unwrap();
}

#[tokio::test]
async fn a_new_ca_is_served_and_published_without_a_restart() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target.namespace("mtls-rotate").await.unwrap();
    let mut endpoint = serve(client.clone(), &ns).await;
    let before = published(&client, &ns).await;
    let admin = devcluster::cluster::config_from_kubeconfig(&target.kubeconfig)
        .await
        .unwrap();
    let credentials = Credentials::from_kube_config(&admin).unwrap();
    let call = |tls: Tls, url: String, credentials: Credentials| async move {
        let endpoint = tls.endpoint(&url).unwrap();
        match proto::client::admin_client(endpoint, &credentials).await {
            Ok(mut admin) => admin
                .get_bucket_map(GetBucketMapRequest {})
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}")),
            Err(e) => Err(format!("{e:?}")),
        }
    };
    call(before.clone(), endpoint.url.clone(), credentials.clone())
        .await
        .unwrap();

    // Deleting the Secret makes the coordinator generate a new CA.
    let old = endpoint.certs.borrow().ca_pem.clone();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete(SECRET, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        endpoint.certs.wait_for(|c| c.ca_pem != old),
    )
    .await
    .expect("a new CA within 30 s")
    .unwrap();
    let new_bundle = endpoint.certs.borrow().ca_pem.clone();

    // Published: the ConfigMap follows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let tls = Tls::from_cluster(&client, &ns).await.unwrap();
        if tls.ca_pem() == new_bundle {
            break tls;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ConfigMap kept the old bundle"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Served on the same listener: the old bundle no longer verifies it, the new one does.
    let err = call(before, endpoint.url.clone(), credentials.clone())
        .await
        .unwrap_err();
    assert!(!err.is_empty());
    call(after, endpoint.url.clone(), credentials)
        .await
        .unwrap();
}

/// The CA bundle the endpoint publishes, once it has (the publisher runs beside the server).
async fn published(client: &kube::Client, namespace: &str) -> Tls {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Tls::from_cluster(client, namespace).await {
            Ok(tls) => return tls,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no CA bundle published within 30 s: {e}"),
        }
    }
}
