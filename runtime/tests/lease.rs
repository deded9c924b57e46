//! Leases against the real API server: one holder at a time, release hands over at once, a
//! crashed holder is replaced only after expiry, a lost Lease fences its holder.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use runtime::lease::{LeaseConfig, LeaseHolder};
use tokio_util::sync::CancellationToken;

async fn kube_config(target: &devcluster::testing::Target) -> kube::Config {
    let kubeconfig = Kubeconfig::read_from(&target.kubeconfig).unwrap();
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap()
}

fn config(ns: &str, holder: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: ns.into(),
        name: "shared".into(),
        holder: holder.into(),
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
        labels: BTreeMap::new(),
    }
}

async fn acquire_within(
    cfg: &kube::Config,
    lease: LeaseConfig,
    limit: Duration,
) -> Option<LeaseHolder> {
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(limit).await;
        canceller.cancel();
    });
    LeaseHolder::acquire(cfg.clone(), lease, &cancel)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_holder_release_crash_and_fencing() {
    let target = devcluster::testing::target().await.unwrap();
    let ns = target.namespace("lease").await.unwrap();
    let cfg = kube_config(&target).await;

    // Two race for one Lease: exactly one gets it.
    let (a, b) = tokio::join!(
        acquire_within(&cfg, config(&ns, "a"), Duration::from_secs(2)),
        acquire_within(&cfg, config(&ns, "b"), Duration::from_secs(2)),
    );
    let (holder, other) = match (a, b) {
        (Some(a), None) => (a, "b"),
        (None, Some(b)) => (b, "a"),
        _ => panic!("exactly one holder"),
    };
    // While renewed, nobody else gets it, even after several lease durations.
    assert!(
        acquire_within(&cfg, config(&ns, other), Duration::from_secs(4))
            .await
            .is_none()
    );
    assert!(holder.fence().check().is_ok());

    // Release: the other takes over at once.
    holder.release().await.unwrap();
    let started = Instant::now();
    let holder = acquire_within(&cfg, config(&ns, other), Duration::from_secs(2))
        .await
        .expect("taken over after release");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Crash (no release): taken over only once the Lease expired.
    drop(holder);
    let crashed = Instant::now();
    let third = acquire_within(&cfg, config(&ns, "c"), Duration::from_secs(10))
        .await
        .expect("taken over after expiry");
    assert!(
        crashed.elapsed() >= Duration::from_secs(2),
        "taken over after {:?}, before the Lease expired",
        crashed.elapsed()
    );

    // The Lease disappears: its holder is fenced.
    let fence = third.fence();
    Api::<Lease>::namespaced(target.client().await.unwrap(), &ns)
        .delete("shared", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), fence.lost())
        .await
        .expect("fenced after losing the Lease");
    assert!(fence.check().is_err());
}
