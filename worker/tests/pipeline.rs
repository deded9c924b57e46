//! Grant a bucket: its templates are reconciled; revoke it: nothing of it is touched anymore.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::sync::Arc;
use std::time::Duration;

use api::{KubeTemplate, KubeTemplatePolicy, KubeTemplatePolicySpec};
use engine::policy::CompiledPolicy;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use worker::metrics::Metrics;
use worker::pipeline::{Pipeline, PipelineConfig};
use worker::queue::QueueConfig;
use worker::reconcile::{PolicySource, Reconciler};
use worker::session::BucketHost;

struct AllowConfigMaps;

impl PolicySource for AllowConfigMaps {
    fn lookup(&self, namespace: &str) -> Vec<Arc<CompiledPolicy>> {
        let spec: KubeTemplatePolicySpec = serde_json::from_value(json!({
            "sourceNamespace": namespace,
            "validationRules": [{"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": [namespace]}]
        }))
        .unwrap();
        vec![Arc::new(CompiledPolicy::compile(&KubeTemplatePolicy::new(
            "p", spec,
        )))]
    }
}

async fn create(api: &Api<KubeTemplate>, name: &str, bucket: u32) {
    let kt: KubeTemplate = serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
        "metadata": {"name": name, "labels": {"kubetemplater.io/bucket": bucket.to_string()}},
        "spec": {"templates": [{"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{name}")}, "data": {"k": "v"}}}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &kt).await.unwrap();
}

async fn phase(api: &Api<KubeTemplate>, name: &str) -> Option<String> {
    api.get(name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.processing_phase)
}

#[tokio::test(flavor = "multi_thread")]
async fn granted_buckets_are_reconciled_and_revoked_ones_left_alone() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target
        .namespace_without_admission("pipeline")
        .await
        .unwrap();
    let api: Api<KubeTemplate> = Api::namespaced(client.clone(), &ns);
    // Buckets no real namespace of this run uses for templates with these names.
    create(&api, "one", 1003).await;
    create(&api, "two", 1003).await;

    let reconciler = Reconciler::new(client.clone(), Arc::new(AllowConfigMaps), 4);
    let config = PipelineConfig {
        concurrency: 4,
        resync_interval: Duration::from_secs(3600),
        queue: QueueConfig::default(),
    };
    let pipeline = Pipeline::new(client.clone(), reconciler, Metrics::default(), config);
    let cancel = CancellationToken::new();
    tokio::spawn(pipeline.clone().run(cancel.clone()));

    pipeline.start(&[1003]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while phase(&api, "one").await.as_deref() != Some("Completed")
        || phase(&api, "two").await.as_deref() != Some("Completed")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "templates of the granted bucket not Completed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Revoke: the future resolves (nothing in flight), and a new template there is not touched.
    tokio::time::timeout(Duration::from_secs(10), pipeline.stop(vec![1003]))
        .await
        .unwrap();
    assert!(pipeline.owned().is_empty());
    create(&api, "three", 1003).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        phase(&api, "three").await,
        None,
        "a revoked bucket's template was reconciled"
    );

    // Granted again: it is picked up.
    pipeline.start(&[1003]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while phase(&api, "three").await.as_deref() != Some("Completed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "re-granted bucket not reconciled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pipeline.shut_down(Duration::from_secs(5)).await;
    cancel.cancel();
}
