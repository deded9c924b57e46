//! The admin API against a real API server: cluster RBAC decides who may inspect and who may
//! move shards. A ServiceAccount's token (TokenRequest) is refused until a Role grants `get`, then
//! `update`, on `shards.kubetemplater.io`; each refusal names the missing permission.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::sync::Arc;

use coordinator::access::Access;
use k8s_openapi::api::rbac::v1::PolicyRule;
use proto::client::{AdminClient, Credentials, admin_client};
use proto::v1::{DrainWorkerRequest, GetBucketMapRequest, RebalanceRequest};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;

mod common;

use common::{Leading, grant, service_account_token, while_denied};

const B: u32 = 8;

fn shards(verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec!["kubetemplater.io".into()]),
        resources: Some(vec!["shards".into()]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    }
}

/// An admin service for `namespace`, authorizing with `client`; its address.
async fn serve(client: kube::Client, namespace: &str) -> String {
    let leading = Leading::new(B);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(leading.admin(Arc::new(Access::new(client, namespace))))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

async fn connect(url: &str, credentials: &Credentials) -> AdminClient {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned()).unwrap();
    admin_client(endpoint, credentials).await.unwrap()
}

#[tokio::test]
async fn cluster_rbac_decides_who_may_inspect_and_who_may_move_shards() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target.namespace("admin-access").await.unwrap();
    let url = serve(client.clone(), &ns).await;

    // No token, and a token the API server does not know.
    let err = connect(&url, &Credentials::none())
        .await
        .get_bucket_map(GetBucketMapRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("needs a Kubernetes bearer token"),
        "{err:?}"
    );
    let err = connect(&url, &Credentials::token("not-a-token").unwrap())
        .await
        .get_bucket_map(GetBucketMapRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("did not accept"), "{err:?}");

    // A valid token without permission: the refusal names user, permission and call.
    let token = service_account_token(&client, &ns, "operator").await;
    let user = format!("system:serviceaccount:{ns}:operator");
    let mut admin = connect(&url, &Credentials::token(token).unwrap()).await;
    let err = admin
        .get_bucket_map(GetBucketMapRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().starts_with(&format!(
            "user {user:?} lacks permission `get shards.kubetemplater.io in namespace {ns:?}`, which GetBucketMap needs"
        )),
        "{err:?}"
    );

    // `get` lets it inspect (a dry-run rebalance too), not drain or rebalance.
    grant(&client, &ns, "operator", "get", shards(&["get"])).await;
    let read = while_denied(|| {
        let mut admin = admin.clone();
        async move { admin.get_bucket_map(GetBucketMapRequest {}).await }
    })
    .await
    .unwrap();
    assert_eq!(read.into_inner().bucket_count, B);
    admin
        .rebalance(RebalanceRequest { dry_run: true })
        .await
        .unwrap();
    let err = admin
        .drain_worker(DrainWorkerRequest {
            worker_id: "worker-0".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains(&format!(
            "lacks permission `update shards.kubetemplater.io in namespace {ns:?}`, which DrainWorker needs"
        )),
        "{err:?}"
    );
    let err = admin
        .rebalance(RebalanceRequest { dry_run: false })
        .await
        .unwrap_err();
    assert!(err.message().contains("which Rebalance needs"), "{err:?}");

    // `update` lets it move shards: the call gets through to the coordinator, which knows no
    // worker of that name here.
    grant(&client, &ns, "operator", "update", shards(&["update"])).await;
    let err = while_denied(|| {
        let mut admin = admin.clone();
        async move {
            admin
                .drain_worker(DrainWorkerRequest {
                    worker_id: "worker-0".into(),
                })
                .await
        }
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no worker \"worker-0\""), "{err:?}");
}
