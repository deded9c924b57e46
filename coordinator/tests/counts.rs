//! Per-bucket counts follow creates and deletes; unlabelled templates get their label.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::time::Duration;

use api::KubeTemplate;
use coordinator::counts::{BucketCounts, backfill};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not true within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_and_backfill() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target.namespace_without_admission("counts").await.unwrap();
    let api: Api<KubeTemplate> = Api::namespaced(client.clone(), &ns);
    let buckets = engine::bucket::DEFAULT_BUCKET_COUNT;
    let bucket = engine::bucket::bucket(&ns, buckets);

    let counts = BucketCounts::new(buckets);
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    tokio::spawn(counts.clone().run(client.clone(), tx, cancel.clone()));
    tokio::spawn({
        let (client, cancel) = (client.clone(), cancel.clone());
        async move { backfill(client, buckets, &mut rx, cancel, || {}).await }
    });
    counts.wait_synced().await;

    for name in ["a", "b", "c"] {
        let kt: KubeTemplate = serde_json::from_value(json!({
            "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
            "metadata": {"name": name}, "spec": {"templates": []}
        }))
        .unwrap();
        api.create(&PostParams::default(), &kt).await.unwrap();
    }
    eventually("three in the namespace and its bucket", async || {
        let c = counts.snapshot();
        // Other tests may use namespaces of the same bucket: exact per namespace, at least per bucket.
        c.per_namespace.get(&ns) == Some(&3) && c.per_bucket[bucket as usize] >= 3
    })
    .await;
    eventually("the bucket label backfilled", async || {
        let list = api.list(&Default::default()).await.unwrap();
        list.items.iter().all(|kt| {
            kt.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubetemplater.io/bucket"))
                == Some(&bucket.to_string())
        })
    })
    .await;
    api.delete("a", &DeleteParams::default()).await.unwrap();
    eventually("one fewer after a delete", async || {
        counts.snapshot().per_namespace.get(&ns) == Some(&2)
    })
    .await;
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_map_is_persisted_and_a_second_writer_is_refused() {
    use coordinator::handoff::Slot;
    use coordinator::store::{MapStore, StoreError};
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target.namespace("map").await.unwrap();
    let mut leader = MapStore::new(client.clone(), &ns, "bucket-map", 8);
    let mut slots = leader.load().await.unwrap();
    assert_eq!(slots, vec![Slot::default(); 8]);
    slots[3] = Slot {
        owner: Some("worker-1".into()),
        epoch: 1,
    };
    leader.save(&slots).await.unwrap();
    slots[3].epoch = 2;
    leader.save(&slots).await.unwrap();

    let mut successor = MapStore::new(client.clone(), &ns, "bucket-map", 8);
    assert_eq!(
        successor.load().await.unwrap(),
        slots,
        "a new leader starts from the stored map"
    );
    let mut newer = slots.clone();
    newer[3].epoch = 3;
    successor.save(&newer).await.unwrap();
    // The old leader's next write is refused: it must stop acting.
    assert!(matches!(
        leader.save(&slots).await,
        Err(StoreError::Superseded { .. })
    ));
    // And a map for another B is refused on load.
    let mut wrong = MapStore::new(client, &ns, "bucket-map", 16);
    assert!(matches!(
        wrong.load().await,
        Err(StoreError::Invalid { .. })
    ));
}
