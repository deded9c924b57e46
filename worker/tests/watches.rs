//! Watches see the owned buckets' templates and nothing else.
#![allow(
    clippy::unwrap_used,
    reason = "test fixtures: a failed setup step should fail the test loudly"
)]

use std::time::Duration;

use api::KubeTemplate;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::sync::mpsc;
use worker::watches::{TemplateEvent, TemplateWatches};

async fn create(api: &Api<KubeTemplate>, name: &str, bucket: u32) {
    let kt: KubeTemplate = serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
        "metadata": {"name": name, "labels": {"kubetemplater.io/bucket": bucket.to_string()}},
        "spec": {"templates": []}
    }))
    .unwrap();
    api.create(&PostParams::default(), &kt).await.unwrap();
}

async fn next(rx: &mut mpsc::Receiver<TemplateEvent>) -> Option<TemplateEvent> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_owned_buckets_are_seen() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target.namespace_without_admission("watch").await.unwrap();
    let api: Api<KubeTemplate> = Api::namespaced(client.clone(), &ns);
    // Buckets far from any real namespace's bucket are not needed: the selector is exact, and
    // other tests' objects in these buckets would carry other namespaces, which we filter below.
    create(&api, "mine", 1001).await;
    create(&api, "theirs", 1002).await;

    let (tx, mut rx) = mpsc::channel(16);
    let watches = TemplateWatches::new(client.clone(), tx);
    watches.add(&[1001]);
    let mut seen = Vec::new();
    while let Some(event) = next(&mut rx).await {
        if event.key.namespace == ns {
            seen.push(event);
            break;
        }
    }
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].key.name, "mine");
    assert_eq!(seen[0].key.bucket, 1001);
    assert!(seen[0].initial);
    assert!(watches.get(&seen[0].key).is_some());

    // A change in an owned bucket arrives; one in another bucket does not.
    create(&api, "mine-2", 1001).await;
    create(&api, "theirs-2", 1002).await;
    let event = loop {
        let e = next(&mut rx).await.expect("an event for mine-2");
        if e.key.namespace == ns {
            break e;
        }
    };
    assert_eq!(event.key.name, "mine-2");
    assert!(!event.initial);

    // Granted later: the other bucket's objects arrive from the new watch's initial list.
    watches.add(&[1002]);
    let mut names = Vec::new();
    while names.len() < 2 {
        let e = next(&mut rx).await.expect("the 1002 objects");
        if e.key.namespace == ns && e.key.bucket == 1002 {
            names.push(e.key.name);
        }
    }
    names.sort();
    assert_eq!(names, ["theirs", "theirs-2"]);

    // Revoked: no more events for it, and its objects are gone from the cache.
    watches.remove(&[1002]);
    assert_eq!(
        watches.buckets().into_iter().collect::<Vec<_>>(),
        vec![1001]
    );
    create(&api, "theirs-3", 1002).await;
    while let Some(e) = next(&mut rx).await {
        assert!(
            !(e.key.namespace == ns && e.key.bucket == 1002),
            "event for a revoked bucket: {e:?}"
        );
    }
}
