//! One reconcile at a time against the real API server: apply, idle, edit + prune, deny, delete.
#![allow(
    clippy::unwrap_used,
    reason = "test fixtures: a failed setup step should fail the test loudly"
)]

use std::sync::Arc;

use api::{KubeTemplate, KubeTemplatePolicy, KubeTemplatePolicySpec};
use engine::policy::CompiledPolicy;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use worker::reconcile::{FINALIZER, Outcome, PolicySource, Reconciler, Trigger};

struct Fixed(Vec<Arc<CompiledPolicy>>);

impl PolicySource for Fixed {
    fn lookup(&self, _namespace: &str) -> Vec<Arc<CompiledPolicy>> {
        self.0.clone()
    }
}

fn policy(source: &str, targets: &[&str]) -> Arc<CompiledPolicy> {
    let spec: KubeTemplatePolicySpec = serde_json::from_value(json!({
        "sourceNamespace": source,
        "validationRules": [
            {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": targets}
        ]
    }))
    .unwrap();
    Arc::new(CompiledPolicy::compile(&KubeTemplatePolicy::new("p", spec)))
}

fn configmap(name: &str, ns: Option<&str>, value: &str) -> serde_json::Value {
    let mut m = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": value}});
    if let Some(ns) = ns {
        m["metadata"]["namespace"] = json!(ns);
    }
    json!({"object": m})
}

async fn create(api: &Api<KubeTemplate>, name: &str, items: serde_json::Value) -> KubeTemplate {
    let kt: KubeTemplate = serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
        "metadata": {"name": name}, "spec": {"templates": items}
    }))
    .unwrap();
    api.create(&PostParams::default(), &kt).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_idle_edit_prune_delete() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target
        .namespace_without_admission("reconcile")
        .await
        .unwrap();
    let other = target
        .namespace_without_admission("reconcile-other")
        .await
        .unwrap();
    let reconciler = Reconciler::new(
        client.clone(),
        Arc::new(Fixed(vec![policy(&ns, &[&ns, &other])])),
        4,
    );
    let templates: Api<KubeTemplate> = Api::namespaced(client.clone(), &ns);
    let here: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let there: Api<ConfigMap> = Api::namespaced(client.clone(), &other);

    let kt = create(
        &templates,
        "web",
        json!([configmap("a", None, "1"), configmap("b", Some(&other), "1")]),
    )
    .await;
    let outcome = reconciler
        .reconcile(&kt, "5", Trigger::Change)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Applied {
            applied: 2,
            pruned: 0
        }
    );
    // The re-queue our own writes cause may run before the watch cache shows them (the object
    // as created: no finalizer, no status): what was just applied is not applied again.
    let a_version = here.get("a").await.unwrap().metadata.resource_version;
    assert_eq!(
        reconciler
            .reconcile(&kt, "5", Trigger::Change)
            .await
            .unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(
        here.get("a").await.unwrap().metadata.resource_version,
        a_version
    );
    let a = here.get("a").await.unwrap();
    let labels = a.metadata.labels.unwrap();
    assert_eq!(labels["kubetemplater.io/bucket"], "5");
    assert_eq!(labels["kubetemplater.io/template-name"], "web");
    assert!(
        there.get("b").await.is_ok(),
        "the cross-namespace object exists"
    );
    let kt = templates.get("web").await.unwrap();
    assert!(
        kt.metadata
            .finalizers
            .as_ref()
            .unwrap()
            .contains(&FINALIZER.to_owned())
    );
    let status = kt.status.clone().unwrap();
    assert_eq!(status.processing_phase.as_deref(), Some("Completed"));
    assert_eq!(status.resources_synced, Some(2));
    assert_eq!(status.applied_resources.len(), 2);
    assert_eq!(
        status.applied_spec_hash.as_deref(),
        Some(engine::hash::spec_hash(&kt.spec).as_str())
    );

    // Idle: nothing changed, nothing is written.
    let version = kt.metadata.resource_version.clone();
    assert_eq!(
        reconciler
            .reconcile(&kt, "5", Trigger::Resync)
            .await
            .unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(
        templates
            .get("web")
            .await
            .unwrap()
            .metadata
            .resource_version,
        version
    );

    // Drift: someone edits a managed object; a drift-triggered reconcile (the drift watches
    // saw the edit) reads the objects, puts back only the changed one and counts the drift.
    let mut edited = here.get("a").await.unwrap();
    edited.data = Some([("k".to_owned(), "tampered".to_owned())].into());
    here.replace("a", &PostParams::default(), &edited)
        .await
        .unwrap();
    assert_eq!(
        reconciler
            .reconcile(&kt, "5", Trigger::Drift)
            .await
            .unwrap(),
        Outcome::Applied {
            applied: 1,
            pruned: 0
        }
    );
    assert_eq!(here.get("a").await.unwrap().data.unwrap()["k"], "1");
    let kt = templates.get("web").await.unwrap();
    let status = kt.status.clone().unwrap();
    assert_eq!(status.drift_detection_count, Some(1));
    // Nothing drifted: a drift trigger costs reads only.
    let version = kt.metadata.resource_version.clone();
    assert_eq!(
        reconciler
            .reconcile(&kt, "5", Trigger::Drift)
            .await
            .unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(
        templates
            .get("web")
            .await
            .unwrap()
            .metadata
            .resource_version,
        version,
        "no status write"
    );

    // The safety resync: reads only while nothing drifted; a deleted object comes back and the
    // drift is counted.
    assert_eq!(
        reconciler
            .reconcile(&kt, "5", Trigger::Resync)
            .await
            .unwrap(),
        Outcome::Unchanged
    );
    there.delete("b", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        reconciler
            .reconcile(&kt, "5", Trigger::Resync)
            .await
            .unwrap(),
        Outcome::Applied {
            applied: 1,
            pruned: 0
        }
    );
    assert!(there.get("b").await.is_ok(), "b is back");
    let status = templates.get("web").await.unwrap().status.unwrap();
    assert_eq!(status.drift_detection_count, Some(2));
    assert!(status.last_drift_detected.is_some());

    // Edit: drop b, change a: a is updated, b is pruned.
    let mut kt = templates.get("web").await.unwrap();
    kt.spec = serde_json::from_value(json!({"templates": [configmap("a", None, "2")]})).unwrap();
    let kt = templates
        .replace("web", &PostParams::default(), &kt)
        .await
        .unwrap();
    assert_eq!(
        reconciler
            .reconcile(&kt, "5", Trigger::Change)
            .await
            .unwrap(),
        Outcome::Applied {
            applied: 1,
            pruned: 1
        }
    );
    assert_eq!(here.get("a").await.unwrap().data.unwrap()["k"], "2");
    assert!(there.get_opt("b").await.unwrap().is_none(), "b was pruned");
    let status = templates.get("web").await.unwrap().status.unwrap();
    assert_eq!(status.applied_resources.len(), 1);

    // Delete: the finalizer deletes what the template created, then lets it go.
    templates
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let kt = templates.get("web").await.unwrap();
    assert!(kt.metadata.deletion_timestamp.is_some());
    assert_eq!(
        reconciler
            .reconcile(&kt, "5", Trigger::Change)
            .await
            .unwrap(),
        Outcome::Finalized
    );
    assert!(here.get_opt("a").await.unwrap().is_none());
    assert!(templates.get_opt("web").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_denial_is_written_to_status_and_nothing_is_applied() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target.namespace_without_admission("deny").await.unwrap();
    // The policy allows ConfigMaps only in a namespace the template does not use.
    let reconciler = Reconciler::new(
        client.clone(),
        Arc::new(Fixed(vec![policy(&ns, &["elsewhere"])])),
        4,
    );
    let templates: Api<KubeTemplate> = Api::namespaced(client.clone(), &ns);
    let kt = create(&templates, "t", json!([configmap("x", None, "1")])).await;
    assert_eq!(
        reconciler
            .reconcile(&kt, "1", Trigger::Change)
            .await
            .unwrap(),
        Outcome::Denied
    );
    let status = templates.get("t").await.unwrap().status.unwrap();
    assert_eq!(status.processing_phase.as_deref(), Some("Failed"));
    assert!(
        status
            .status
            .unwrap()
            .contains("not in the allowed target namespaces")
    );
    assert!(
        Api::<ConfigMap>::namespaced(client, &ns)
            .get_opt("x")
            .await
            .unwrap()
            .is_none()
    );

    // No policy at all: denied with the original's text.
    let reconciler = Reconciler::new(target.client().await.unwrap(), Arc::new(Fixed(vec![])), 4);
    let kt = templates.get("t").await.unwrap();
    let mut kt2 = kt.clone();
    kt2.metadata.generation = Some(kt.metadata.generation.unwrap_or(1) + 1);
    assert_eq!(
        reconciler
            .reconcile(&kt2, "1", Trigger::Change)
            .await
            .unwrap(),
        Outcome::Denied
    );
    let status = templates.get("t").await.unwrap().status.unwrap();
    assert!(
        status
            .status
            .unwrap()
            .contains("no KubeTemplatePolicy found")
    );
}
