//! Self-fencing against the real API server: a reconciler whose write gate is closed sends no
//! write at all (apply, finalizer, status, delete), the gate is checked before each write (not
//! once per reconcile), and a real Lease's fence closes the reconciler's writes once the Lease is
//! released.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures: a failed setup step should fail the test loudly"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use api::{KubeTemplate, KubeTemplatePolicy, KubeTemplatePolicySpec};
use engine::policy::CompiledPolicy;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use runtime::lease::{Fenced, LeaseConfig, LeaseHolder, LostReason};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use worker::metrics::Metrics;
use worker::reconcile::{FINALIZER, Outcome, PolicySource, ReconcileError, Reconciler, Trigger};
use worker::writes::{WriteGate, Writes};

struct Fixed(Vec<Arc<CompiledPolicy>>);

impl PolicySource for Fixed {
    fn lookup(&self, _namespace: &str) -> Vec<Arc<CompiledPolicy>> {
        self.0.clone()
    }
}

fn allow_configmaps(ns: &str) -> Arc<dyn PolicySource> {
    let spec: KubeTemplatePolicySpec = serde_json::from_value(json!({
        "sourceNamespace": ns,
        "validationRules": [
            {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": [ns]}
        ]
    }))
    .unwrap();
    Arc::new(Fixed(vec![Arc::new(CompiledPolicy::compile(
        &KubeTemplatePolicy::new("p", spec),
    ))]))
}

fn configmap(name: &str, value: &str) -> serde_json::Value {
    json!({"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": value}}})
}

async fn create(
    api: &Api<KubeTemplate>,
    name: &str,
    finalizer: bool,
    items: serde_json::Value,
) -> KubeTemplate {
    let mut kt: KubeTemplate = serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
        "metadata": {"name": name}, "spec": {"templates": items}
    }))
    .unwrap();
    if finalizer {
        kt.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    }
    api.create(&PostParams::default(), &kt).await.unwrap()
}

/// Open for the first `open` writes, closed (the Lease "taken over") after.
#[derive(Debug)]
struct Countdown {
    open: AtomicUsize,
}

impl Countdown {
    fn new(open: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(open),
        })
    }
}

impl WriteGate for Countdown {
    fn check(&self) -> Result<(), Fenced> {
        let open = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        open.map(drop).map_err(|_| Fenced {
            lease: "test/worker-0".into(),
            reason: LostReason::TakenOver {
                holder: "worker-1".into(),
            },
        })
    }
}

fn fenced_reason(error: &ReconcileError) -> LostReason {
    match error {
        ReconcileError::Fenced { source, .. } => source.reason.clone(),
        other => panic!("expected ReconcileError::Fenced, got {other}"),
    }
}

fn metrics() -> (prometheus_client::registry::Registry, Metrics) {
    let mut registry = prometheus_client::registry::Registry::with_prefix("kubetemplater");
    let metrics = Metrics::register(&mut registry);
    (registry, metrics)
}

fn encoded(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_gate_sends_no_write_and_each_write_is_checked() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target.namespace_without_admission("fenced").await.unwrap();
    let templates: Api<KubeTemplate> = Api::namespaced(client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    // Closed from the start: not even the finalizer is added.
    let (registry, m) = metrics();
    let closed = Reconciler::new(client.clone(), allow_configmaps(&ns), 4).with_writes(
        Writes::new(Countdown::new(0), Some(Duration::from_secs(3)), m),
    );
    let kt = create(&templates, "closed", false, json!([configmap("a", "1")])).await;
    let error = closed
        .reconcile(&kt, "3", Trigger::Change)
        .await
        .unwrap_err();
    assert_eq!(
        fenced_reason(&error),
        LostReason::TakenOver {
            holder: "worker-1".into()
        }
    );
    assert_eq!(error.metric_label(), "fenced");
    let now = templates.get("closed").await.unwrap();
    assert_eq!(now.metadata.resource_version, kt.metadata.resource_version);
    assert!(configmaps.get_opt("a").await.unwrap().is_none());
    let text = encoded(&registry);
    assert!(
        text.contains("kubetemplater_writes_fenced_total{verb=\"patch\"} 1"),
        "{text}"
    );

    // Open for one write: the finalizer goes out, then both applies are refused unsent, and
    // neither prune nor status is attempted.
    let (registry, m) = metrics();
    let one = Reconciler::new(client.clone(), allow_configmaps(&ns), 4).with_writes(Writes::new(
        Countdown::new(1),
        Some(Duration::from_secs(3)),
        m,
    ));
    let kt = create(
        &templates,
        "one",
        false,
        json!([configmap("b", "1"), configmap("c", "1")]),
    )
    .await;
    let error = one.reconcile(&kt, "3", Trigger::Change).await.unwrap_err();
    assert!(error.fenced().is_some(), "{error}");
    let now = templates.get("one").await.unwrap();
    assert!(now.finalizers().contains(&FINALIZER.to_owned()));
    assert!(
        now.status.is_none(),
        "no status write after the fence closed"
    );
    assert!(configmaps.get_opt("b").await.unwrap().is_none());
    assert!(configmaps.get_opt("c").await.unwrap().is_none());
    let text = encoded(&registry);
    assert!(text.contains("kubetemplater_api_requests_total{verb=\"patch\"} 1"));
    assert!(text.contains("kubetemplater_writes_fenced_total{verb=\"apply\"} 2"));
    assert!(!text.contains("verb=\"patch_status\""), "{text}");

    // A template being deleted: the fenced reconciler deletes nothing and keeps the finalizer.
    let open = Reconciler::new(client.clone(), allow_configmaps(&ns), 4);
    let kt = create(&templates, "gone", true, json!([configmap("d", "1")])).await;
    assert_eq!(
        open.reconcile(&kt, "3", Trigger::Change).await.unwrap(),
        Outcome::Applied {
            applied: 1,
            pruned: 0
        }
    );
    templates
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    let kt = templates.get("gone").await.unwrap();
    let error = closed
        .reconcile(&kt, "3", Trigger::Change)
        .await
        .unwrap_err();
    assert!(error.fenced().is_some(), "{error}");
    assert!(configmaps.get_opt("d").await.unwrap().is_some());
    assert!(templates.get_opt("gone").await.unwrap().is_some());
    // The unfenced reconciler finishes the job (and unblocks the namespace's deletion).
    assert_eq!(
        open.reconcile(&kt, "3", Trigger::Change).await.unwrap(),
        Outcome::Finalized
    );
    assert!(configmaps.get_opt("d").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_released_lease_closes_the_reconcilers_writes() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target
        .namespace_without_admission("fenced-lease")
        .await
        .unwrap();
    let kubeconfig = Kubeconfig::read_from(&target.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let lease = LeaseConfig::worker(&ns, "worker-0", "worker-0-test");
    let holder = LeaseHolder::acquire(config, lease.clone(), &CancellationToken::new())
        .await
        .unwrap();
    let reconciler =
        Reconciler::new(client.clone(), allow_configmaps(&ns), 4).with_writes(Writes::new(
            Arc::new(holder.fence()),
            Some(lease.write_budget().mul_f64(0.75)),
            Metrics::default(),
        ));
    let templates: Api<KubeTemplate> = Api::namespaced(client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    let kt = create(&templates, "t", false, json!([configmap("a", "1")])).await;
    assert_eq!(
        reconciler
            .reconcile(&kt, "7", Trigger::Change)
            .await
            .unwrap(),
        Outcome::Applied {
            applied: 1,
            pruned: 0
        },
        "writes pass while the Lease is held"
    );

    holder.release().await.unwrap();
    let mut kt = templates.get("t").await.unwrap();
    kt.spec = serde_json::from_value(json!({"templates": [configmap("a", "2")]})).unwrap();
    let kt = templates
        .replace("t", &PostParams::default(), &kt)
        .await
        .unwrap();
    let error = reconciler
        .reconcile(&kt, "7", Trigger::Change)
        .await
        .unwrap_err();
    assert_eq!(fenced_reason(&error), LostReason::Released);
    assert!(error.to_string().contains("worker-0"), "{error}");
    assert_eq!(
        configmaps.get("a").await.unwrap().data.unwrap()["k"],
        "1",
        "not applied after the release"
    );

    // Clean up through an unfenced reconciler (the finalizer would block the namespace).
    templates
        .delete("t", &DeleteParams::default())
        .await
        .unwrap();
    let kt = templates.get("t").await.unwrap();
    let open = Reconciler::new(client, allow_configmaps(&ns), 4);
    assert_eq!(
        open.reconcile(&kt, "7", Trigger::Change).await.unwrap(),
        Outcome::Finalized
    );
}
