//! Membership follows worker Leases: created live, gone when expired.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::time::Duration;

use coordinator::core::Event;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn lease(name: &str, seconds: i32) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("kubetemplater.io/component".to_owned(), "worker".to_owned())].into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.into()),
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            lease_duration_seconds: Some(seconds),
            ..Default::default()
        }),
    }
}

async fn next_members(rx: &mut mpsc::Receiver<Event>) -> Vec<String> {
    let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    match event {
        Event::Members(live) => live.into_iter().collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn live_while_held_and_unexpired() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target.namespace("members").await.unwrap();
    let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &lease("worker-a", 60))
        .await
        .unwrap();
    api.create(&PostParams::default(), &lease("worker-b", 2))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    tokio::spawn(coordinator::members::watch(client, ns, tx, cancel.clone()));
    assert_eq!(next_members(&mut rx).await, ["worker-a", "worker-b"]);
    // worker-b is not renewed: it drops out once its 2 s have passed.
    assert_eq!(next_members(&mut rx).await, ["worker-a"]);
    cancel.cancel();
}
