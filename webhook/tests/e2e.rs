//! The real kube-apiserver calling the webhook replicas (devcluster, or any cluster where the
//! webhook is installed): verdicts, bucket labels, policy changes, tenants, traces, and bad
//! clients.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use api::KubeTemplate;
use common::*;
use kube::api::Api;

#[tokio::test(flavor = "multi_thread")]
async fn allowed_template_is_admitted_and_gets_its_bucket_label() -> Result<()> {
    let Some((target, client)) = cluster_with_webhook("allowed_template").await? else {
        return Ok(());
    };
    let ns = target.namespace("wh-allow").await?;
    install_policy(&target, &ns, "^app-").await?;
    let items = format!(
        "{}{}",
        configmap_item("app-config", None),
        deployment_item("web", 2)
    );
    let (ok, out, err) = apply(&target, &template_yaml(&ns, "web", &items))?;
    assert!(ok, "kubectl apply refused an allowed template: {err}");
    assert!(
        out.contains("kubetemplate.kubetemplater.io/web serverside-applied"),
        "{out}"
    );

    let kt = Api::<KubeTemplate>::namespaced(client, &ns)
        .get("web")
        .await?;
    let expected = engine::bucket::bucket(&ns, engine::bucket::DEFAULT_BUCKET_COUNT).to_string();
    assert_eq!(
        kt.metadata
            .labels
            .unwrap_or_default()
            .get("kubetemplater.io/bucket"),
        Some(&expected)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn forbidden_template_is_rejected_with_every_violation() -> Result<()> {
    let Some((target, _)) = cluster_with_webhook("forbidden_template").await? else {
        return Ok(());
    };
    let ns = target.namespace("wh-deny").await?;
    install_policy(&target, &ns, "^app-").await?;
    let items = [
        // wrong kind
        "    - object:\n        apiVersion: v1\n        kind: Secret\n        metadata:\n          name: s\n".to_owned(),
        // forbidden target namespace
        configmap_item("app-elsewhere", Some("kube-system")),
        // failing CEL
        deployment_item("big", 9),
        // failing regex
        configmap_item("wrong-name", None),
    ]
    .concat();
    let (ok, _, err) = apply(&target, &template_yaml(&ns, "bad", &items))?;
    assert!(!ok, "a forbidden template was admitted");
    assert!(
        err.contains(r#"admission webhook "vkubetemplate.kb.io" denied the request"#),
        "{err}"
    );
    for needle in [
        "template[0]",
        "Kind=Secret",
        "template[1]",
        "kube-system",
        "template[2]",
        "at most 3 replicas",
        "template[3]",
        "ConfigMap names must match",
    ] {
        assert!(
            err.contains(needle),
            "{needle:?} missing from kubectl's output:\n{err}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_without_a_policy_is_rejected_saying_so() -> Result<()> {
    let Some((target, _)) = cluster_with_webhook("no_policy").await? else {
        return Ok(());
    };
    let ns = target.namespace("wh-nopolicy").await?;
    let (ok, _, err) = apply(
        &target,
        &template_yaml(&ns, "t", &configmap_item("app-x", None)),
    )?;
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "failed to get policy: no KubeTemplatePolicy found for source namespace {ns}"
        )),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_change_changes_verdicts_within_a_second() -> Result<()> {
    let Some((target, _)) = cluster_with_webhook("policy_change").await? else {
        return Ok(());
    };
    let ns = target.namespace("wh-change").await?;
    install_policy(&target, &ns, "^app-").await?;
    let template = template_yaml(&ns, "t", &configmap_item("svc-x", None));
    let dry_run = |yaml: &str| -> Result<bool> {
        Ok(kubectl(
            &target,
            &["create", "--dry-run=server", "-f", "-"],
            Some(yaml),
        )?
        .0)
    };
    assert!(!dry_run(&template)?, "svc-x must be refused by ^app-");

    let (ok, _, err) = apply(&target, &policy_yaml(&ns, "^(app|svc)-"))?;
    assert!(ok, "{err}");
    let changed = Instant::now();
    eventually(
        Duration::from_secs(1),
        "the new policy admits svc-x",
        || {
            let template = template.clone();
            let dry_run = &dry_run;
            async move { dry_run(&template) }
        },
    )
    .await?;
    eprintln!(
        "verdict changed {:?} after the policy update",
        changed.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_policies_and_tenant_templates_are_rejected() -> Result<()> {
    let Some((target, _)) = cluster_with_webhook("invalid_policy").await? else {
        return Ok(());
    };
    let ns = target.namespace("wh-invalid").await?;
    let policy = format!(
        r#"apiVersion: kubetemplater.io/v1alpha1
kind: KubeTemplatePolicy
metadata:
  name: broken-{ns}
  namespace: {SYSTEM_NAMESPACE}
spec:
  sourceNamespace: {ns}
  validationRules:
    - kind: ConfigMap
      group: ""
      version: v1
      targetNamespaces: ["{ns}"]
      fieldValidations:
        - {{name: bad-cel, type: cel, cel: "value.startsWith("}}
        - {{name: bad-regex, type: regex, fieldPath: metadata.name, regex: "("}}
        - {{name: bad-range, type: range, fieldPath: spec.replicas, min: 5, max: 1}}
    - kind: ConfigMap
      group: ""
      version: v1
      targetNamespaces: ["{ns}"]
"#
    );
    let (ok, _, err) = apply(&target, &policy)?;
    assert!(!ok, "a broken policy was admitted");
    for needle in [
        "vkubetemplatepolicy.kubetemplater.io",
        "bad-cel",
        "bad-regex",
        "bad-range",
        "validationRules[1]",
    ] {
        assert!(err.contains(needle), "{needle:?} missing:\n{err}");
    }

    let tenant_template = format!(
        r#"apiVersion: operator.kubernetes-tenants.org/v1
kind: TenantTemplate
metadata:
  name: cyclic
  namespace: {ns}
spec:
  registryId: reg
  configMaps:
    - id: a
      dependIds: [b]
      nameTemplate: "{{{{ .uid }}}}-a"
      spec: {{apiVersion: v1, kind: ConfigMap}}
    - id: b
      dependIds: [a]
      spec: {{apiVersion: v1, kind: ConfigMap}}
"#
    );
    let (ok, _, err) = apply(&target, &tenant_template)?;
    assert!(!ok, "a cyclic TenantTemplate was admitted");
    assert!(
        err.contains("vtenanttemplate.operator.kubernetes-tenants.org"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("cycle"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_get_their_bucket_label() -> Result<()> {
    let Some((target, client)) = cluster_with_webhook("tenant_bucket").await? else {
        return Ok(());
    };
    let ns = target.namespace("wh-tenant").await?;
    let tenant = format!(
        r#"apiVersion: operator.kubernetes-tenants.org/v1
kind: Tenant
metadata:
  name: acme-web
  namespace: {ns}
  labels:
    kubernetes-tenants.org/registry: reg
spec:
  uid: acme
  templateRef: web
"#
    );
    let (ok, _, err) = apply(&target, &tenant)?;
    assert!(ok, "{err}");
    let t = Api::<api::Tenant>::namespaced(client, &ns)
        .get("acme-web")
        .await?;
    let key = engine::bucket::tenant_shard_key(&ns, "reg", "acme");
    let expected = engine::bucket::bucket(&key, engine::bucket::DEFAULT_BUCKET_COUNT).to_string();
    assert_eq!(
        t.metadata
            .labels
            .unwrap_or_default()
            .get("kubetemplater.io/bucket"),
        Some(&expected)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reapplying_without_the_label_keeps_it() -> Result<()> {
    let Some((target, client)) = cluster_with_webhook("label_kept").await? else {
        return Ok(());
    };
    let ns = target.namespace("wh-keep").await?;
    install_policy(&target, &ns, "^app-").await?;
    let one = template_yaml(&ns, "t", &configmap_item("app-one", None));
    let two = template_yaml(&ns, "t", &configmap_item("app-two", None));
    assert!(apply(&target, &one)?.0);
    assert!(apply(&target, &two)?.0, "a spec change by the same manager");
    let kt = Api::<KubeTemplate>::namespaced(client, &ns)
        .get("t")
        .await?;
    let expected = engine::bucket::bucket(&ns, engine::bucket::DEFAULT_BUCKET_COUNT).to_string();
    assert_eq!(
        kt.metadata
            .labels
            .unwrap_or_default()
            .get("kubetemplater.io/bucket"),
        Some(&expected)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admission_span_reaches_jaeger() -> Result<()> {
    let Some((target, client)) = cluster_with_webhook("admission_span").await? else {
        return Ok(());
    };
    let Some(jaeger) = target.endpoints.as_ref().and_then(|e| e.jaeger.clone()) else {
        eprintln!("SKIP the_admission_span_reaches_jaeger: needs devcluster's Jaeger");
        return Ok(());
    };
    let ns = target.namespace("wh-trace").await?;
    install_policy(&target, &ns, "^app-").await?;
    assert!(
        apply(
            &target,
            &template_yaml(&ns, "traced", &configmap_item("app-t", None))
        )?
        .0
    );
    let kt = Api::<KubeTemplate>::namespaced(client, &ns)
        .get("traced")
        .await?;
    let annotations = kt.metadata.annotations.unwrap_or_default();
    let traceparent = annotations
        .get("kubetemplater.io/traceparent")
        .context("the mutating webhook stored no traceparent")?;
    let trace_id = traceparent
        .split('-')
        .nth(1)
        .context("malformed traceparent")?
        .to_owned();
    let http = reqwest::Client::new();
    let url = format!("{}/api/traces/{trace_id}", jaeger.query);
    eventually(
        Duration::from_secs(20),
        "the admission trace in Jaeger",
        || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let body: serde_json::Value = http.get(&url).send().await?.json().await?;
                let Some(trace) = body["data"].get(0) else {
                    return Ok(false);
                };
                let names: Vec<&str> = trace["spans"]
                    .as_array()
                    .map(|spans| {
                        spans
                            .iter()
                            .filter_map(|s| s["operationName"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                let services: Vec<&str> = trace["processes"]
                    .as_object()
                    .map(|p| {
                        p.values()
                            .filter_map(|v| v["serviceName"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(names.contains(&"admission mutate-bucket")
                    && names.contains(&"admission validate-kubetemplate")
                    && services.contains(&"kubetemplater-webhook"))
            }
        },
    )
    .await
}
