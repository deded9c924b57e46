//! API-server semantics our controllers rely on: status subresource, garbage collection,
//! namespace deletion. These prove the control plane is the real one.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use kube::{Api, Resource, ResourceExt};
use kubetemplater_e2e::{Env, TEST_MANAGER, eventually};
use serde_json::json;

fn kubetemplate_api(env: &Env, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kubetemplater.io", "v1alpha1", "KubeTemplate");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "kubetemplates");
    Api::namespaced_with(env.client.clone(), ns, &ar)
}

fn kubetemplate(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "kubetemplater.io/v1alpha1",
        "kind": "KubeTemplate",
        "metadata": {"name": name},
        "spec": {"templates": [{"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}}]}
    })
}

#[tokio::test]
async fn status_update_does_not_bump_generation() -> Result<()> {
    let env = Env::get().await?;
    let ns = env.namespace_without_admission("status").await?;
    let api = kubetemplate_api(&env, &ns);
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(kubetemplate("gen"))?,
        )
        .await?;
    let generation = created.metadata.generation.context("generation")?;

    let status = json!({"status": {"processingPhase": "Completed", "resourcesTotal": 1, "resourcesSynced": 1}});
    let patched = api
        .patch_status("gen", &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    assert_eq!(
        patched.metadata.generation,
        Some(generation),
        "status write kept the generation"
    );
    assert_eq!(patched.data["status"]["processingPhase"], "Completed");

    // A status field sent to the main resource is ignored; a spec change bumps the generation.
    let spec = json!({"spec": {"templates": []}, "status": {"processingPhase": "Failed"}});
    let patched = api
        .patch("gen", &PatchParams::default(), &Patch::Merge(&spec))
        .await?;
    assert_eq!(patched.metadata.generation, Some(generation + 1));
    assert_eq!(
        patched.data["status"]["processingPhase"], "Completed",
        "status only changes via /status"
    );
    env.target.delete_namespace(&ns).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependents() -> Result<()> {
    let env = Env::get().await?;
    let ns = env.namespace_without_admission("gc").await?;
    let templates = kubetemplate_api(&env, &ns);
    let owner = templates
        .create(
            &PostParams::default(),
            &serde_json::from_value(kubetemplate("owner"))?,
        )
        .await?;
    let owner_ref = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "kubetemplater.io/v1alpha1".into(),
        kind: "KubeTemplate".into(),
        name: owner.name_any(),
        uid: owner.uid().context("uid")?,
        ..Default::default()
    };
    let configmaps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &ns);
    let mut dependent = ConfigMap::default();
    dependent.meta_mut().name = Some("dependent".into());
    dependent.meta_mut().owner_references = Some(vec![owner_ref]);
    configmaps
        .create(&PostParams::default(), &dependent)
        .await?;
    let mut unrelated = ConfigMap::default();
    unrelated.meta_mut().name = Some("unrelated".into());
    configmaps
        .create(&PostParams::default(), &unrelated)
        .await?;

    templates
        .delete("owner", &DeleteParams::background())
        .await?;
    let cms = configmaps.clone();
    eventually(
        Duration::from_secs(60),
        "the garbage collector to delete the dependent",
        || {
            let cms = cms.clone();
            async move { Ok(cms.get_opt("dependent").await?.is_none()) }
        },
    )
    .await?;
    assert!(
        configmaps.get_opt("unrelated").await?.is_some(),
        "objects without the owner are kept"
    );
    env.target.delete_namespace(&ns).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_contents() -> Result<()> {
    let env = Env::get().await?;
    let ns = env.namespace_without_admission("nsdel").await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &ns);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "content"}, "data": {"a": "b"}}))?;
    configmaps
        .patch(
            "content",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&cm),
        )
        .await?;
    let templates = kubetemplate_api(&env, &ns);
    templates
        .create(
            &PostParams::default(),
            &serde_json::from_value(kubetemplate("content"))?,
        )
        .await?;

    env.target.delete_namespace(&ns).await?;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let name = ns.clone();
    eventually(
        Duration::from_secs(90),
        "the namespace controller to empty and remove the namespace",
        || {
            let namespaces = namespaces.clone();
            let name = name.clone();
            async move { Ok(namespaces.get_opt(&name).await?.is_none()) }
        },
    )
    .await?;
    // Re-creating the namespace shows nothing of the old contents.
    let recreated: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    namespaces
        .create(&PostParams::default(), &recreated)
        .await?;
    assert!(configmaps.get_opt("content").await?.is_none());
    assert!(templates.get_opt("content").await?.is_none());
    env.target.delete_namespace(&ns).await?;
    Ok(())
}
