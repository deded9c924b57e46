//! Tenants through the whole pipeline (bucket watches → queue → reconcile → drift watches): a
//! Tenant of an owned bucket is applied until Ready, a foreign edit and a delete of one of its
//! objects are put back at once (the safety resync is an hour away), and a Deployment whose
//! rollout stalls shows in the Tenant's status, and ready again when it recovers.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::sync::Arc;
use std::time::Duration;

use api::Tenant;
use engine::policy::CompiledPolicy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use worker::metrics::Metrics;
use worker::pipeline::{Pipeline, PipelineConfig};
use worker::queue::QueueConfig;
use worker::reconcile::{PolicySource, Reconciler};
use worker::session::BucketHost;

struct NoPolicies;

impl PolicySource for NoPolicies {
    fn lookup(&self, _namespace: &str) -> Vec<Arc<CompiledPolicy>> {
        Vec::new()
    }
}

/// A bucket of its own for each run, beyond the real ones (see tests/drift.rs).
fn bucket() -> u32 {
    rand::random_range(2_000_000..3_000_000)
}

async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ready(tenant: &Tenant) -> Option<(String, i32)> {
    let status = tenant.status.as_ref()?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((ready.status.clone(), status.ready_resources.unwrap_or(0)))
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_are_applied_kept_and_followed_through_the_pipeline() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target
        .namespace_without_admission("tenant-pipeline")
        .await
        .unwrap();
    let bucket = bucket();
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1", "kind": "Tenant",
        "metadata": {"name": "acme-web",
            "labels": {"kubernetes-tenants.org/registry": "reg", "kubetemplater.io/bucket": bucket.to_string()},
            "annotations": {"kubernetes-tenants.org/hostOrUrl": "acme.example.com",
                            "kubernetes-tenants.org/extra": "{\"plan\":\"gold\"}"}},
        "spec": {"uid": "acme", "templateRef": "web",
            "configMaps": [{"id": "cfg", "nameTemplate": "{{ .uid }}-cfg", "conflictPolicy": "Force",
                "spec": {"apiVersion": "v1", "kind": "ConfigMap", "data": {"plan": "{{ .plan }}"}}}],
            "deployments": [{"id": "web", "nameTemplate": "{{ .uid }}-web", "dependIds": ["cfg"],
                "spec": {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {
                    "selector": {"matchLabels": {"app": "acme"}},
                    "template": {"metadata": {"labels": {"app": "acme"}},
                        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}}]}
    }))
    .unwrap();
    tenants
        .create(&PostParams::default(), &tenant)
        .await
        .unwrap();

    let reconciler = Reconciler::new(client.clone(), Arc::new(NoPolicies), 4);
    let config = PipelineConfig {
        concurrency: 4,
        resync_interval: Duration::from_secs(3600),
        queue: QueueConfig::default(),
    };
    let pipeline = Pipeline::new(client.clone(), reconciler, Metrics::default(), config);
    let cancel = CancellationToken::new();
    tokio::spawn(pipeline.clone().run(cancel.clone()));
    pipeline.start(&[bucket]);

    until("the Tenant is Ready", Duration::from_secs(60), || async {
        let t = tenants.get("acme-web").await.unwrap();
        ready(&t) == Some(("True".into(), 2))
    })
    .await;
    assert_eq!(
        configmaps.get("acme-cfg").await.unwrap().data.unwrap()["plan"],
        "gold"
    );

    // The drift watches' initial lists must be done before the edits (an edit seen only in an
    // initial list is left to the safety resync): they take milliseconds, this takes seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Someone edits a field the Tenant sets: put back (conflictPolicy Force; with Stuck the
    // Tenant reports the conflict instead, see tests/tenant.rs).
    configmaps
        .patch(
            "acme-cfg",
            &PatchParams {
                field_manager: Some("intruder".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"data": {"plan": "tampered"}})),
        )
        .await
        .unwrap();
    until("the edit is put back", Duration::from_secs(15), || async {
        configmaps.get("acme-cfg").await.unwrap().data.unwrap()["plan"] == "gold"
    })
    .await;

    // Deleted: created again.
    configmaps
        .delete("acme-cfg", &DeleteParams::default())
        .await
        .unwrap();
    until(
        "the delete is put back",
        Duration::from_secs(15),
        || async {
            configmaps
                .get_opt("acme-cfg")
                .await
                .unwrap()
                .is_some_and(|c| c.metadata.deletion_timestamp.is_none())
        },
    )
    .await;

    // Someone pins the Deployment to a node that does not exist (a field the Tenant does not
    // set, so not drift): its new pods cannot be scheduled, the rollout stalls and the Tenant's
    // status follows; unpinned, it is Ready again.
    let pin = |selector: serde_json::Value| json!({"spec": {"template": {"spec": {"nodeSelector": selector}}}});
    let intruder = PatchParams {
        field_manager: Some("intruder".into()),
        ..PatchParams::default()
    };
    deployments
        .patch(
            "acme-web",
            &intruder,
            &Patch::Merge(pin(json!({"no-such-node": "true"}))),
        )
        .await
        .unwrap();
    until(
        "the Tenant sees the stalled rollout",
        Duration::from_secs(30),
        || async {
            let t = tenants.get("acme-web").await.unwrap();
            ready(&t).is_some_and(|(status, _)| status == "False")
        },
    )
    .await;
    deployments
        .patch(
            "acme-web",
            &intruder,
            &Patch::Merge(pin(serde_json::Value::Null)),
        )
        .await
        .unwrap();
    until(
        "the Tenant is Ready again",
        Duration::from_secs(30),
        || async {
            let t = tenants.get("acme-web").await.unwrap();
            ready(&t) == Some(("True".into(), 2))
        },
    )
    .await;
    cancel.cancel();
    tenants
        .delete("acme-web", &DeleteParams::default())
        .await
        .unwrap();
}
