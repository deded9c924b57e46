//! Tenant reconciles against the real API server (kwok makes workloads Ready): dependency order
//! with readiness waits, owner references and tracking labels, idle, re-render on a row change,
//! removal from the template, conflicts (Stuck, then Force), a readiness timeout that skips the
//! dependants, deletion honouring Retain, terminating namespaces, and retries that write nothing.
#![allow(
    clippy::unwrap_used,
    reason = "test fixtures: a failed setup step should fail the test loudly"
)]

use std::time::{Duration, Instant};

use api::Tenant;
use api::constants::{
    ANNOTATION_EXTRA, ANNOTATION_ORPHANED_REASON, FINALIZER_TENANT, LABEL_ORPHANED, LABEL_TENANT,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::rbac::v1::Role;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use worker::apply::Applier;
use worker::tenant::reconcile::{TenantError, TenantOutcome, TenantReconciler};

/// A bucket beyond the real ones (0..1024), so workers of a system running on the same cluster
/// leave these Tenants to the test (see tests/drift.rs).
fn bucket() -> String {
    rand::random_range(3_000_000..4_000_000u32).to_string()
}

fn tenant(name: &str, uid: &str, extra: Value, spec: Value) -> Tenant {
    let mut spec = spec;
    spec["uid"] = json!(uid);
    spec["templateRef"] = json!("web");
    serde_json::from_value(json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1",
        "kind": "Tenant",
        "metadata": {
            "name": name,
            "labels": {"kubernetes-tenants.org/registry": "reg", "kubetemplater.io/bucket": bucket()},
            "annotations": {
                "kubernetes-tenants.org/hostOrUrl": format!("https://{uid}.example.com"),
                "kubernetes-tenants.org/activate": "1",
                "kubernetes-tenants.org/extra": extra.to_string()
            }
        },
        "spec": spec
    }))
    .unwrap()
}

/// Reconciles the current version of the Tenant until it is no longer waiting (or `limit`).
async fn settle(
    reconciler: &TenantReconciler,
    api: &Api<Tenant>,
    name: &str,
    limit: Duration,
) -> Result<TenantOutcome, TenantError> {
    let started = Instant::now();
    loop {
        let current = api.get(name).await.unwrap();
        let outcome = reconciler.reconcile(&current).await;
        match outcome {
            Ok(TenantOutcome::Waiting(after)) if started.elapsed() < limit => {
                tokio::time::sleep(after).await;
            }
            other => return other,
        }
    }
}

fn condition(tenant: &Tenant, type_: &str) -> (String, String, String) {
    let c = tenant
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn levels_readiness_idle_rerender_prune_and_retained_cleanup() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target.namespace_without_admission("tenant").await.unwrap();
    let reconciler = TenantReconciler::new(Applier::new(client.clone()), 4);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    let uid = format!("t{}", &ns[ns.len().saturating_sub(6)..]);
    let space = format!("{uid}-space");

    let spec = json!({
        "namespaces": [{"id": "space", "nameTemplate": "{{ .uid }}-space",
            "spec": {"apiVersion": "v1", "kind": "Namespace"}}],
        "configMaps": [
            {"id": "cfg", "nameTemplate": "{{ .uid }}-cfg",
             "spec": {"apiVersion": "v1", "kind": "ConfigMap", "data": {"plan": "{{ .planId }}", "host": "{{ .host }}"}}},
            {"id": "remote", "nameTemplate": "{{ .uid }}-remote", "dependIds": ["space"],
             "targetNamespace": "{{ .uid }}-space",
             "spec": {"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}}}
        ],
        "secrets": [{"id": "sec", "nameTemplate": "{{ .uid }}-sec",
            "spec": {"apiVersion": "v1", "kind": "Secret", "stringData": {"token": "{{ .uid | sha1sum }}"}}}],
        "deployments": [{"id": "web", "nameTemplate": "{{ .uid }}-web", "dependIds": ["cfg", "sec"],
            "spec": {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {
                "replicas": "{{ .replicas | int }}",
                "selector": {"matchLabels": {"app": "{{ .uid }}"}},
                "template": {"metadata": {"labels": {"app": "{{ .uid }}"}},
                             "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}}],
        "services": [{"id": "svc", "nameTemplate": "{{ .uid }}-svc", "dependIds": ["web"],
            "spec": {"apiVersion": "v1", "kind": "Service", "spec": {
                "selector": {"app": "{{ .uid }}"}, "ports": [{"port": 80}]}}}],
        "manifests": [{"id": "role", "nameTemplate": "{{ .uid }}-role", "deletionPolicy": "Retain",
            "spec": {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                     "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}}]
    });
    let created = tenants
        .create(
            &PostParams::default(),
            &tenant(
                "acme-web",
                &uid,
                json!({"planId": "gold", "replicas": "2"}),
                spec.clone(),
            ),
        )
        .await
        .unwrap();

    // First pass: level 0 and 1 applied; the Deployment was just created, so the Service (which
    // depends on it) waits.
    let first = reconciler.reconcile(&created).await.unwrap();
    assert_eq!(first, TenantOutcome::Waiting(Duration::from_secs(2)));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    assert!(
        services
            .get_opt(&format!("{uid}-svc"))
            .await
            .unwrap()
            .is_none(),
        "the Service waits for its Deployment to be ready"
    );
    let outcome = settle(&reconciler, &tenants, "acme-web", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TenantOutcome::Applied { .. }),
        "{outcome:?}"
    );

    let done = tenants.get("acme-web").await.unwrap();
    assert!(done.finalizers().iter().any(|f| f == FINALIZER_TENANT));
    let status = done.status.clone().unwrap();
    assert_eq!(
        (
            status.desired_resources,
            status.ready_resources,
            status.failed_resources
        ),
        (Some(7), Some(7), Some(0))
    );
    assert_eq!(status.applied_resources.len(), 7);
    assert!(
        status
            .applied_resources
            .contains(&format!("Deployment/{ns}/{uid}-web@web"))
    );
    assert_eq!(condition(&done, "Ready").1, "Reconciled");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let web = deployments.get(&format!("{uid}-web")).await.unwrap();
    assert_eq!(web.spec.as_ref().unwrap().replicas, Some(2), "typed int");
    let owner = &web.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Tenant", Some(true))
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cfg = configmaps.get(&format!("{uid}-cfg")).await.unwrap();
    assert_eq!(cfg.data.as_ref().unwrap()["plan"], "gold");
    assert_eq!(
        cfg.data.as_ref().unwrap()["host"],
        format!("{uid}.example.com")
    );
    let remote: Api<ConfigMap> = Api::namespaced(client.clone(), &space);
    let r = remote.get(&format!("{uid}-remote")).await.unwrap();
    assert!(
        r.owner_references().is_empty(),
        "another namespace: no owner"
    );
    assert_eq!(r.labels()[LABEL_TENANT], "acme-web");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert_eq!(
        namespaces.get(&space).await.unwrap().labels()[LABEL_TENANT],
        "acme-web"
    );

    // Idle: nothing changed, no API call.
    assert_eq!(
        reconciler.reconcile(&done).await.unwrap(),
        TenantOutcome::Unchanged
    );

    // A row change re-renders; an entry removed from the template is cleaned up.
    let mut spec2 = spec.clone();
    spec2["services"] = json!([]);
    let patch = json!({
        "metadata": {"annotations": {ANNOTATION_EXTRA: json!({"planId": "platinum", "replicas": "2"}).to_string()}},
        "spec": {"services": null}
    });
    tenants
        .patch("acme-web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let outcome = settle(&reconciler, &tenants, "acme-web", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TenantOutcome::Applied { pruned: 1, .. }),
        "{outcome:?}"
    );
    let cfg = configmaps.get(&format!("{uid}-cfg")).await.unwrap();
    assert_eq!(cfg.data.as_ref().unwrap()["plan"], "platinum");
    assert!(
        services
            .get_opt(&format!("{uid}-svc"))
            .await
            .unwrap()
            .is_none_or(|s| s.metadata.deletion_timestamp.is_some()),
        "removed from the template: deleted"
    );

    // Deletion: Delete objects go, the Retain one stays, released with the orphan markers.
    tenants
        .delete("acme-web", &DeleteParams::default())
        .await
        .unwrap();
    let deleting = tenants.get("acme-web").await.unwrap();
    assert_eq!(
        reconciler.reconcile(&deleting).await.unwrap(),
        TenantOutcome::Finalized
    );
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
    let role = roles.get(&format!("{uid}-role")).await.unwrap();
    assert_eq!(role.labels()[LABEL_ORPHANED], "true");
    assert!(!role.labels().contains_key(LABEL_TENANT));
    assert_eq!(
        role.annotations()[ANNOTATION_ORPHANED_REASON],
        "TenantDeleted"
    );
    assert!(
        remote
            .get_opt(&format!("{uid}-remote"))
            .await
            .unwrap()
            .is_none_or(|c| c.metadata.deletion_timestamp.is_some())
    );
    assert!(
        namespaces
            .get_opt(&space)
            .await
            .unwrap()
            .is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "the tenant's Namespace is deleted"
    );
    assert!(tenants.get_opt("acme-web").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_stuck_then_forced_and_a_readiness_timeout_skips_dependants() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target
        .namespace_without_admission("tenant-conflict")
        .await
        .unwrap();
    let reconciler = TenantReconciler::new(Applier::new(client.clone()), 4);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    // Someone else owns data.plan.
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "shared"}, "data": {"plan": "theirs"}});
    configmaps
        .patch(
            "shared",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();
    let spec = |policy: &str| {
        json!({"configMaps": [{"id": "shared", "conflictPolicy": policy,
            "spec": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"},
                     "data": {"plan": "ours"}}}]})
    };
    tenants
        .create(
            &PostParams::default(),
            &tenant("c1", "c1", json!({}), spec("Stuck")),
        )
        .await
        .unwrap();
    let error = settle(&reconciler, &tenants, "c1", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("conflict"), "{error}");
    let stuck = tenants.get("c1").await.unwrap();
    assert_eq!(condition(&stuck, "Conflicted").0, "True");
    assert_eq!(condition(&stuck, "Ready").1, "ResourcesConflicted");
    assert_eq!(
        configmaps.get("shared").await.unwrap().data.unwrap()["plan"],
        "theirs"
    );

    let force = json!({"spec": spec("Force")});
    tenants
        .patch("c1", &PatchParams::default(), &Patch::Merge(&force))
        .await
        .unwrap();
    settle(&reconciler, &tenants, "c1", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        configmaps.get("shared").await.unwrap().data.unwrap()["plan"],
        "ours",
        "Force takes the field over"
    );
    assert_eq!(
        condition(&tenants.get("c1").await.unwrap(), "Conflicted").0,
        "False"
    );

    // A Deployment that can never be scheduled: its dependant is skipped once the wait times out.
    let stalled = json!({
        "deployments": [{"id": "stalled", "timeoutSeconds": 3,
            "spec": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "stalled"},
                "spec": {"selector": {"matchLabels": {"app": "stalled"}},
                    "template": {"metadata": {"labels": {"app": "stalled"}},
                        "spec": {"nodeSelector": {"no-such-node": "true"},
                                 "containers": [{"name": "c", "image": "nginx:1.27"}]}}}}}],
        "configMaps": [{"id": "after", "dependIds": ["stalled"],
            "spec": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}}}]
    });
    tenants
        .create(
            &PostParams::default(),
            &tenant("s1", "s1", json!({}), stalled),
        )
        .await
        .unwrap();
    let error = settle(&reconciler, &tenants, "s1", Duration::from_secs(30))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("not ready after timeoutSeconds (3 s)"),
        "{text}"
    );
    assert!(
        text.contains("skipped: dependency \"stalled\" failed"),
        "{text}"
    );
    assert!(configmaps.get_opt("after").await.unwrap().is_none());
    let s1 = tenants.get("s1").await.unwrap();
    assert_eq!(s1.status.as_ref().unwrap().failed_resources, Some(2));
    assert_eq!(condition(&s1, "Ready").1, "ResourcesFailed");
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_creates_and_is_strategic_for_built_in_kinds() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target
        .namespace_without_admission("tenant-merge")
        .await
        .unwrap();
    let reconciler = TenantReconciler::new(Applier::new(client.clone()), 4);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    // Someone else runs the Deployment with a sidecar.
    let theirs: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                {"name": "web", "image": "nginx:1.26"},
                {"name": "sidecar", "image": "busybox:1.36"}
            ]}}}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();

    let spec = json!({
        "deployments": [{"id": "web", "patchStrategy": "merge", "waitForReady": false,
            "spec": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}}],
        "configMaps": [{"id": "fresh", "patchStrategy": "merge",
            "spec": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fresh"},
                     "data": {"k": "v"}}}]
    });
    tenants
        .create(&PostParams::default(), &tenant("m1", "m1", json!({}), spec))
        .await
        .unwrap();
    let outcome = settle(&reconciler, &tenants, "m1", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TenantOutcome::Applied { .. }),
        "{outcome:?}"
    );
    let containers: Vec<(String, String)> = deployments
        .get("web")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| (c.name, c.image.unwrap_or_default()))
        .collect();
    assert_eq!(
        containers,
        [
            ("web".to_owned(), "nginx:1.27".to_owned()),
            ("sidecar".to_owned(), "busybox:1.36".to_owned())
        ],
        "strategic merge: containers merged by name, the sidecar kept"
    );
    assert_eq!(
        configmaps.get("fresh").await.unwrap().data.unwrap()["k"],
        "v",
        "merge creates a missing object"
    );
}

/// Deleting a namespace full of Tenants: the namespace controller deletes their objects before
/// the Tenants, which then look drifted. A create refused because the namespace is terminating
/// is no failure: in the Tenant's own namespace the pass stops without writing its status; in
/// another namespace the object waits (and the Tenant says it is not ready) instead of failing.
#[tokio::test(flavor = "multi_thread")]
async fn a_terminating_namespace_is_left_alone() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let own = target
        .namespace_without_admission("tenant-term")
        .await
        .unwrap();
    let other = target
        .namespace_without_admission("tenant-term-other")
        .await
        .unwrap();
    let home = target
        .namespace_without_admission("tenant-term-home")
        .await
        .unwrap();
    // With events, as a worker runs it: none can be created in a terminating namespace.
    let reconciler = TenantReconciler::new(Applier::new(client.clone()), 4).with_events(
        kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "kubetemplater-worker".to_owned(),
                instance: Some("test".to_owned()),
            },
        ),
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let spec = |ns: &str| {
        json!({"configMaps": [{"id": "cfg", "nameTemplate": "{{ .uid }}-cfg", "targetNamespace": ns,
            "spec": {"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}}}]})
    };

    // A Tenant whose object lives in its own namespace, and one whose object lives in another.
    let in_own: Api<Tenant> = Api::namespaced(client.clone(), &own);
    in_own
        .create(
            &PostParams::default(),
            &tenant("t1", "t1", json!({}), spec(&own)),
        )
        .await
        .unwrap();
    let in_home: Api<Tenant> = Api::namespaced(client.clone(), &home);
    in_home
        .create(
            &PostParams::default(),
            &tenant("t2", "t2", json!({}), spec(&other)),
        )
        .await
        .unwrap();
    for (api, name) in [(&in_own, "t1"), (&in_home, "t2")] {
        let outcome = settle(&reconciler, api, name, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            matches!(outcome, TenantOutcome::Applied { .. }),
            "{outcome:?}"
        );
    }

    // The worker's cache still shows the Tenant as it was when the namespace goes: its object is
    // deleted by the namespace controller (the Tenant's finalizer keeps the namespace Terminating).
    let stale = in_own.get("t1").await.unwrap();
    namespaces
        .delete(&own, &DeleteParams::default())
        .await
        .unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &own);
    wait_gone(&configmaps, "t1-cfg").await;
    let outcome = reconciler.reconcile_with(&stale, true).await.unwrap();
    assert_eq!(outcome, TenantOutcome::NamespaceTerminating);
    let after = in_own.get("t1").await.unwrap();
    assert_eq!(
        after.status, stale.status,
        "nothing written to a Tenant whose namespace is terminating"
    );
    assert_eq!(
        reconciler.reconcile_with(&stale, true).await.unwrap(),
        TenantOutcome::NamespaceTerminating,
        "remembered: the next drift is skipped too"
    );

    // The other namespace goes away slowly (a finalizer holds one of its objects): the Tenant in
    // a live namespace waits for it instead of failing.
    let hold: Api<ConfigMap> = Api::namespaced(client.clone(), &other);
    hold.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "hold", "finalizers": ["kubetemplater.io/test-hold"]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    namespaces
        .delete(&other, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&hold, "t2-cfg").await;
    let current = in_home.get("t2").await.unwrap();
    let outcome = reconciler.reconcile_with(&current, true).await.unwrap();
    assert_eq!(outcome, TenantOutcome::Waiting(Duration::from_secs(5)));
    let waiting = in_home.get("t2").await.unwrap();
    let (status, reason, _) = condition(&waiting, "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "NotAllResourcesReady")
    );
    let (_, degraded, _) = condition(&waiting, "Degraded");
    assert_ne!(
        degraded, "ResourceFailures",
        "a terminating namespace is not a failure"
    );
    let again = reconciler.reconcile_with(&waiting, true).await.unwrap();
    assert_eq!(again, TenantOutcome::Waiting(Duration::from_secs(5)));
    assert_eq!(
        in_home.get("t2").await.unwrap().metadata.resource_version,
        waiting.metadata.resource_version,
        "the same wait writes nothing again"
    );

    // Let both namespaces go.
    hold.patch(
        "hold",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let deleting = loop {
        let current = in_own.get("t1").await.unwrap();
        if current.metadata.deletion_timestamp.is_some() {
            break current;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the namespace controller did not delete the Tenant"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        reconciler.reconcile(&deleting).await.unwrap(),
        TenantOutcome::Finalized,
        "a Tenant being deleted is still finalized"
    );
    in_home
        .delete("t2", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        reconciler
            .reconcile(&in_home.get("t2").await.unwrap())
            .await
            .unwrap(),
        TenantOutcome::Finalized
    );
}

/// Waits until `name` is gone (deleted by the namespace controller).
async fn wait_gone(api: &Api<ConfigMap>, name: &str) {
    let started = Instant::now();
    while api.get_opt(name).await.unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name} still there after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Objects of a level fail in whatever order their writes answer: a retry that fails the same
/// way writes the same status, so nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_failing_the_same_way_writes_nothing() {
    let target = devcluster::testing::target().await.unwrap();
    let client = target.client().await.unwrap();
    let ns = target
        .namespace_without_admission("tenant-same")
        .await
        .unwrap();
    let reconciler = TenantReconciler::new(Applier::new(client.clone()), 4);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    // Four ConfigMaps the API server refuses (a number where a string must be).
    let bad: Vec<Value> = (0..4)
        .map(|i| {
            json!({"id": format!("bad{i}"), "nameTemplate": format!("bad-{i}"),
                "spec": {"apiVersion": "v1", "kind": "ConfigMap", "data": {"n": i}}})
        })
        .collect();
    tenants
        .create(
            &PostParams::default(),
            &tenant("f1", "f1", json!({}), json!({"configMaps": bad})),
        )
        .await
        .unwrap();
    let first = reconciler
        .reconcile(&tenants.get("f1").await.unwrap())
        .await;
    assert!(
        matches!(&first, Err(TenantError::Resources { failures, .. }) if failures.len() == 4),
        "{first:?}"
    );
    let failed = tenants.get("f1").await.unwrap();
    let (status, reason, _) = condition(&failed, "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ResourcesFailed")
    );
    for _ in 0..5 {
        let retry = reconciler.reconcile(&failed).await;
        assert!(retry.is_err(), "{retry:?}");
        assert_eq!(
            tenants.get("f1").await.unwrap().metadata.resource_version,
            failed.metadata.resource_version,
            "a retry failing the same way wrote the Tenant"
        );
    }
}
