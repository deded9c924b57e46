//! Least privilege, proved by refusals: each component's ServiceAccount (a token bound to a
//! placeholder Pod, as devcluster runs the components) is refused what it must not do, with a
//! message that names it, while what it needs is allowed. `tests/helm/chart.rs` checks the
//! chart's own ServiceAccounts the same way.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

const SYSTEM: &str = "kubetemplater-system";

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_identity_is_refused_what_it_must_not_do() -> Result<()> {
    let target = devcluster::testing::target().await?;
    let dir = tempfile::tempdir()?;
    let as_process = |process: &'static str| {
        let (admin, dir) = (target.kubeconfig.clone(), dir.path().to_owned());
        async move {
            let kubeconfig =
                devcluster::identity::service_account_kubeconfig(&admin, &dir, process).await?;
            anyhow::Ok(devcluster::cluster::client_from_kubeconfig(&kubeconfig).await?)
        }
    };
    let worker = as_process("worker-0").await?;
    let webhook = as_process("webhook-0").await?;
    let coordinator = as_process("coordinator-0").await?;
    let bucket_map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "kubetemplater-bucket-map"}}))?;

    // A worker may write anything templates ask for, except in the system namespace: only
    // Leases there (the ValidatingAdmissionPolicy kubetemplater-system-namespace-guard).
    let started = Instant::now();
    let refused = loop {
        match Api::<ConfigMap>::namespaced(worker.clone(), SYSTEM)
            .create(&dry_run(), &bucket_map)
            .await
        {
            Err(refused) => break refused.to_string(),
            // The policy is applied with the cluster; kube-apiserver loads it within seconds.
            Ok(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(_) => bail!("a worker may write the bucket map"),
        }
    };
    assert!(
        refused.contains(
            "kubetemplater workers may write only their own Leases in kubetemplater-system, not configmaps kubetemplater-bucket-map"
        ),
        "{refused}"
    );
    let lease = |name: &str| -> Result<Lease> {
        Ok(serde_json::from_value(json!({"metadata": {"name": name}}))?)
    };
    let leases = Api::<Lease>::namespaced(worker.clone(), SYSTEM);
    let refused = leases
        .create(&dry_run(), &lease("kubetemplater-coordinator")?)
        .await
        .expect_err("a worker may write the coordinators' leader Lease");
    assert!(
        refused.to_string().contains("only their own Leases"),
        "{refused}"
    );
    leases.create(&dry_run(), &lease("worker-probe")?).await?;
    Api::<ConfigMap>::namespaced(worker, "default")
        .create(&dry_run(), &bucket_map)
        .await?;

    // The webhook reads policies and manages its certificate: it writes no KubeTemplate.
    let template: api::KubeTemplate = serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
        "metadata": {"name": "probe"}, "spec": {"templates": []}
    }))?;
    let refused = Api::<api::KubeTemplate>::namespaced(webhook, "default")
        .create(&dry_run(), &template)
        .await
        .expect_err("the webhook may write KubeTemplates");
    assert!(
        refused
            .to_string()
            .contains("\"system:serviceaccount:kubetemplater-system:kubetemplater-webhook\" cannot create resource \"kubetemplates\""),
        "{refused}"
    );

    // The coordinator writes its bucket map, and no ConfigMap elsewhere.
    let refused = Api::<ConfigMap>::namespaced(coordinator, "default")
        .create(&dry_run(), &bucket_map)
        .await
        .expect_err("a coordinator may write ConfigMaps outside its namespace");
    assert!(
        refused
            .to_string()
            .contains("cannot create resource \"configmaps\""),
        "{refused}"
    );
    Ok(())
}
