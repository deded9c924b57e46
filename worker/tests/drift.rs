//! Drift of managed objects is seen through watches: a foreign edit or a delete is put back at
//! once (the safety resync is an hour away), in the template's namespace, in another one and for
//! cluster-scoped objects; a settled system writes nothing.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::{KubeTemplate, KubeTemplatePolicy, KubeTemplatePolicySpec};
use engine::policy::CompiledPolicy;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use worker::drift::GroupKind;
use worker::metrics::Metrics;
use worker::pipeline::{Pipeline, PipelineConfig};
use worker::queue::QueueConfig;
use worker::reconcile::{PolicySource, Reconciler};
use worker::session::BucketHost;

/// A bucket of its own for each run, beyond the real ones (0..1024): a pipeline reconciles every
/// template labelled with its buckets in every namespace, so runs of this test at the same time
/// (or templates left by an aborted run) would otherwise be reconciled by two pipelines with
/// different policies.
fn bucket() -> u32 {
    rand::random_range(1_000_000..2_000_000)
}

/// ConfigMaps in the template's namespace and in `other`; ClusterRoles (cluster scope: `""`).
struct Allow {
    other: String,
}

impl PolicySource for Allow {
    fn lookup(&self, namespace: &str) -> Vec<Arc<CompiledPolicy>> {
        let spec: KubeTemplatePolicySpec = serde_json::from_value(json!({
            "sourceNamespace": namespace,
            "validationRules": [
                {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": [namespace, self.other]},
                {"kind": "ClusterRole", "group": "rbac.authorization.k8s.io", "version": "v1", "targetNamespaces": [""]}
            ]
        }))
        .unwrap();
        vec![Arc::new(CompiledPolicy::compile(&KubeTemplatePolicy::new(
            "p", spec,
        )))]
    }
}

/// Writes of "someone else": plain updates, so the fields they change change owner.
fn intruder() -> PatchParams {
    PatchParams {
        field_manager: Some("drift-test-intruder".into()),
        ..PatchParams::default()
    }
}

fn value(cm: &ConfigMap) -> Option<String> {
    cm.data
        .as_ref()
        .and_then(|d: &BTreeMap<String, String>| d.get("k"))
        .cloned()
}

/// Waits up to `within` for the ConfigMap `name` to hold `k=v`; returns it.
async fn restored(api: &Api<ConfigMap>, name: &str, within: Duration, what: &str) -> ConfigMap {
    let deadline = Instant::now() + within;
    loop {
        if let Some(cm) = api.get_opt(name).await.unwrap()
            && value(&cm).as_deref() == Some("v")
        {
            return cm;
        }
        assert!(Instant::now() < deadline, "{what}: not restored in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the ConfigMap's resourceVersion stayed the same for `quiet`; returns it.
async fn settled(api: &Api<ConfigMap>, name: &str, quiet: Duration) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = api.get(name).await.unwrap().metadata.resource_version;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = api.get(name).await.unwrap().metadata.resource_version;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return last.unwrap();
        }
        assert!(Instant::now() < deadline, "{name} never settled");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_edits_and_deletes_are_put_back_at_once_and_idle_writes_nothing() {
    telemetry::init_for_tests();
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let bucket = bucket();
    let ns = target.namespace_without_admission("drift").await.unwrap();
    let other = target
        .namespace_without_admission("drift-other")
        .await
        .unwrap();
    let templates: Api<KubeTemplate> = Api::namespaced(client.clone(), &ns);
    let here: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let there: Api<ConfigMap> = Api::namespaced(client.clone(), &other);
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role = format!("{ns}-reader");
    let rules = json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]);
    let kt: KubeTemplate = serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
        "metadata": {"name": "web", "labels": {"kubetemplater.io/bucket": bucket.to_string()}},
        "spec": {"templates": [
            {"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "v"}}},
            {"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "far", "namespace": other}, "data": {"k": "v"}}},
            {"object": {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role}, "rules": rules}}
        ]}
    }))
    .unwrap();
    templates.create(&PostParams::default(), &kt).await.unwrap();

    let policies = Arc::new(Allow {
        other: other.clone(),
    });
    let reconciler = Reconciler::new(client.clone(), policies, 4);
    let config = PipelineConfig {
        concurrency: 4,
        // An hour away: everything below must come from the watches.
        resync_interval: Duration::from_secs(3600),
        queue: QueueConfig::default(),
    };
    let pipeline = Pipeline::new(client.clone(), reconciler, Metrics::default(), config);
    let cancel = CancellationToken::new();
    tokio::spawn(pipeline.clone().run(cancel.clone()));
    pipeline.start(&[bucket]);

    let cm = restored(&here, "cm", Duration::from_secs(20), "first apply").await;
    restored(&there, "far", Duration::from_secs(5), "first apply").await;
    assert_eq!(
        cm.metadata
            .labels
            .unwrap_or_default()
            .get("kubetemplater.io/bucket")
            .map(String::as_str),
        Some(bucket.to_string().as_str())
    );
    // The reconcile registered the template's kinds with the drift watches.
    let deadline = Instant::now() + Duration::from_secs(10);
    let kinds = [
        GroupKind::of("v1", "ConfigMap"),
        GroupKind::of("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ];
    while !kinds.iter().all(|k| pipeline.drift().kinds().contains(k)) {
        assert!(Instant::now() < deadline, "kinds not watched for drift");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pipeline.drift().buckets().contains(&bucket));
    // The watches' initial lists must be done before the edits (an edit only seen in an initial
    // list is left to the safety resync): they take milliseconds, this takes seconds.
    let before_edit = settled(&here, "cm", Duration::from_secs(2)).await;

    // Someone else edits a field the template sets.
    here.patch(
        "cm",
        &intruder(),
        &Patch::Merge(json!({"data": {"k": "tampered", "extra": "x"}})),
    )
    .await
    .unwrap();
    let cm = restored(&here, "cm", Duration::from_secs(5), "foreign edit").await;
    assert_ne!(cm.metadata.resource_version.as_ref(), Some(&before_edit));

    // Deleted: created again.
    here.delete("cm", &DeleteParams::default()).await.unwrap();
    let recreated = restored(&here, "cm", Duration::from_secs(5), "delete").await;
    assert_ne!(recreated.metadata.uid, cm.metadata.uid, "not a new object");

    // In another namespace than the template's.
    there.delete("far", &DeleteParams::default()).await.unwrap();
    restored(&there, "far", Duration::from_secs(5), "delete elsewhere").await;

    // Cluster-scoped.
    roles
        .patch(
            &role,
            &intruder(),
            &Patch::Merge(json!({"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let live = serde_json::to_value(roles.get(&role).await.unwrap()).unwrap();
        if live["rules"] == rules {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ClusterRole not restored in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Settled: nothing writes any more (our own applies' events cause no work, nothing loops).
    let rv = settled(&here, "cm", Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cm = here.get("cm").await.unwrap();
    assert_eq!(cm.metadata.resource_version, Some(rv), "writes while idle");
    let status = templates.get("web").await.unwrap().status.unwrap();
    assert_eq!(status.processing_phase.as_deref(), Some("Completed"));

    // A change by someone else to a field the template does not set: kept, and no loop.
    here.patch(
        "cm",
        &intruder(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
    )
    .await
    .unwrap();
    let rv = settled(&here, "cm", Duration::from_secs(3)).await;
    let cm = here.get("cm").await.unwrap();
    assert_eq!(cm.metadata.resource_version, Some(rv));
    assert_eq!(value(&cm).as_deref(), Some("v"));
    assert_eq!(
        cm.metadata.labels.unwrap_or_default().get("team"),
        Some(&"a".to_owned())
    );

    // Revoked: the bucket's objects are no longer this worker's business.
    tokio::time::timeout(Duration::from_secs(10), pipeline.stop(vec![bucket]))
        .await
        .unwrap();
    assert!(pipeline.drift().buckets().is_empty());
    here.patch(
        "cm",
        &intruder(),
        &Patch::Merge(json!({"data": {"k": "tampered"}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        value(&here.get("cm").await.unwrap()).as_deref(),
        Some("tampered"),
        "a revoked bucket's object was touched"
    );

    // Granted again: the grant's reconcile (the safety resync's reads) heals what changed
    // while nobody watched. Then the template is deleted and its finalizer cleans up.
    pipeline.start(&[bucket]);
    restored(&here, "cm", Duration::from_secs(20), "re-grant").await;
    templates
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while templates.get_opt("web").await.unwrap().is_some()
        || roles.get_opt(&role).await.unwrap().is_some()
    {
        assert!(Instant::now() < deadline, "template not finalized");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    pipeline.shut_down(Duration::from_secs(5)).await;
    cancel.cancel();
}
