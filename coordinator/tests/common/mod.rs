//! Helpers shared by the coordinator's cluster tests: ServiceAccounts, their tokens, RBAC.
#![allow(clippy::unwrap_used, reason = "test fixtures")]
#![allow(dead_code, reason = "each test binary uses some of them")]

use std::num::NonZeroU32;
use std::sync::Arc;

use coordinator::access::Access;
use coordinator::admin::Admin;
use coordinator::core::{Event, Snapshot};
use coordinator::counts::BucketCounts;
use coordinator::sessions::{Leadership, WorkerSessions};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use proto::v1::admin_service_server::AdminServiceServer;
use proto::v1::worker_service_server::WorkerServiceServer;
use tokio::sync::{mpsc, watch};

/// What a coordinator's services see while it leads (`coordinator-0`, term 1) with an empty map
/// and no leader loop: events (drain, rebalance, sessions) are taken and dropped.
pub struct Leading {
    snapshot: watch::Receiver<Snapshot>,
    leadership: watch::Receiver<Option<Leadership>>,
    events: mpsc::Sender<Event>,
    buckets: NonZeroU32,
}

impl Leading {
    /// A leading coordinator with `buckets` buckets.
    pub fn new(buckets: u32) -> Self {
        let (snapshot_tx, snapshot) = watch::channel(Snapshot::default());
        let (leadership_tx, leadership) = watch::channel(Some(Leadership {
            id: "coordinator-0".into(),
            epoch: 1,
        }));
        let (events, mut events_rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let _keep = (leadership_tx, snapshot_tx);
            while events_rx.recv().await.is_some() {}
        });
        Self {
            snapshot,
            leadership,
            events,
            buckets: NonZeroU32::new(buckets).unwrap(),
        }
    }

    /// Its AdminService, authorizing with `access`.
    pub fn admin(&self, access: Arc<Access>) -> AdminServiceServer<Admin> {
        AdminServiceServer::new(Admin::new(
            self.snapshot.clone(),
            self.leadership.clone(),
            BucketCounts::new(self.buckets),
            self.events.clone(),
            self.buckets,
            access,
        ))
    }

    /// Its WorkerService (client certificates required).
    pub fn sessions(&self) -> WorkerServiceServer<WorkerSessions> {
        WorkerServiceServer::new(WorkerSessions::new(
            self.events.clone(),
            self.leadership.clone(),
            self.buckets.get(),
        ))
    }
}

/// A token of a new ServiceAccount `name` in `namespace`.
pub async fn service_account_token(client: &kube::Client, namespace: &str, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    accounts
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer: TokenRequest = accounts
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .unwrap();
    answer.status.unwrap().token.unwrap()
}

/// Grants `rule` in `namespace` to the ServiceAccount `name` (Role and RoleBinding
/// `<name>-<suffix>`).
pub async fn grant(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    suffix: &str,
    rule: PolicyRule,
) {
    let role_name = format!("{name}-{suffix}");
    Api::<Role>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &Role {
                metadata: ObjectMeta {
                    name: Some(role_name.clone()),
                    ..Default::default()
                },
                rules: Some(vec![rule]),
            },
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: ObjectMeta {
                    name: Some(role_name.clone()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: role_name,
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: name.into(),
                    namespace: Some(namespace.into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
}

/// Retries `call` while it is refused for want of permission (an RBAC change takes a moment to
/// show, and the coordinator caches a decision for up to 10 s); then its answer. Fails the test
/// when still refused after 30 s.
pub async fn while_denied<T, F, Fut>(call: F) -> Result<T, tonic::Status>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match call().await {
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still refused after 30 s: {status:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            answer => return answer,
        }
    }
}
