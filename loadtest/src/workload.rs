//! The objects a run creates: namespaces, one policy per namespace, and templates of `k`
//! ConfigMaps each; all labelled with the run's id, so `loadtest cleanup` finds what a run left.

use std::time::{Duration, Instant};

use api::{KubeTemplate, KubeTemplatePolicy};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::progress::Progress;
use crate::{Error, Result};

/// Label on everything a run creates; its value is the run id.
pub const RUN_LABEL: &str = "loadtest.kubetemplater.io/run";

/// Field manager of the run's own writes.
pub const FIELD_MANAGER: &str = "kubetemplater-loadtest";

/// A template's key: `(namespace, name)`.
pub type Key = (String, String);

/// One run's objects.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The run id (6 hex digits).
    pub run: String,
    /// The run's namespaces.
    pub namespaces: Vec<String>,
    /// The system namespace (policies).
    pub system_namespace: String,
    /// ConfigMaps per template.
    pub objects: usize,
}

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |e| Error::Cluster(format!("{what}: {e}"))
}

impl Workload {
    /// A new run with `namespaces` namespaces and `objects` ConfigMaps per template.
    pub fn new(system_namespace: &str, namespaces: usize, objects: usize) -> Self {
        let run = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let namespaces = (0..namespaces).map(|i| format!("lt-{run}-{i}")).collect();
        Self {
            run,
            namespaces,
            system_namespace: system_namespace.to_owned(),
            objects,
        }
    }

    /// The label selector of the run's objects.
    pub fn selector(&self) -> String {
        format!("{RUN_LABEL}={}", self.run)
    }

    /// `count` template keys spread round-robin over the namespaces, named `t<i>` from `first`.
    pub fn keys(&self, first: usize, count: usize) -> Vec<Key> {
        (first..first + count)
            .map(|i| {
                (
                    self.namespaces[i % self.namespaces.len()].clone(),
                    format!("t{i}"),
                )
            })
            .collect()
    }

    /// Creates the namespaces and, when `policies`, one policy per namespace admitting
    /// ConfigMaps in it; `concurrency` at a time.
    pub async fn create_namespaces(
        &self,
        client: &Client,
        policies: bool,
        concurrency: usize,
        quiet: bool,
    ) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let policy_api: Api<KubeTemplatePolicy> =
            Api::namespaced(client.clone(), &self.system_namespace);
        let progress = Progress::new(
            "namespaces",
            self.namespaces.len() as u64,
            "namespaces",
            quiet,
        );
        futures::stream::iter(self.namespaces.iter())
            .map(|ns| {
                let (namespaces, policy_api, progress) = (&namespaces, &policy_api, &progress);
                async move {
                    let namespace: Namespace = serde_json::from_value(json!({"metadata": {
                        "name": ns, "labels": {RUN_LABEL: self.run},
                    }}))
                    .map_err(|e| Error::Cluster(format!("namespace {ns}: {e}")))?;
                    namespaces
                        .create(&PostParams::default(), &namespace)
                        .await
                        .map_err(kube_error(format!("creating namespace {ns}")))?;
                    if policies {
                        let policy: KubeTemplatePolicy = serde_json::from_value(json!({
                            "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplatePolicy",
                            "metadata": {"name": ns, "labels": {RUN_LABEL: self.run}},
                            "spec": {"sourceNamespace": ns, "validationRules": [
                                {"kind": "ConfigMap", "group": "", "version": "v1",
                                 "targetNamespaces": [ns]}
                            ]}
                        }))
                        .map_err(|e| Error::Cluster(format!("policy {ns}: {e}")))?;
                        policy_api
                            .create(&PostParams::default(), &policy)
                            .await
                            .map_err(kube_error(format!("creating the policy of {ns}")))?;
                    }
                    progress.step();
                    Ok::<(), Error>(())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        progress.finish();
        Ok(())
    }

    /// Template `key` with `self.objects` ConfigMaps `{name}-{j}` holding `value`.
    pub fn template(&self, key: &Key, value: &str) -> Result<KubeTemplate> {
        let (ns, name) = key;
        let templates: Vec<serde_json::Value> = (0..self.objects)
            .map(|j| {
                json!({"object": {
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("{name}-{j}"), "namespace": ns},
                    "data": {"v": value}
                }})
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
            "metadata": {"name": name, "namespace": ns, "labels": {RUN_LABEL: self.run}},
            "spec": {"templates": templates}
        }))
        .map_err(|e| Error::Cluster(format!("template {ns}/{name}: {e}")))
    }

    /// Creates template `key` holding `value`. A policy is watch-fed into the webhook, so a
    /// refusal within `policy_grace` of the run's start is retried. Returns when the create
    /// was sent (for latency).
    pub async fn create(&self, client: &Client, key: &Key, value: &str) -> Result<Instant> {
        let api: Api<KubeTemplate> = Api::namespaced(client.clone(), &key.0);
        let kt = self.template(key, value)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sent = Instant::now();
            match api.create(&PostParams::default(), &kt).await {
                Ok(_) => return Ok(sent),
                Err(kube::Error::Api(e)) if e.code == 403 && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(kube::Error::Api(e)) if e.code == 429 || e.code >= 500 => {
                    // Overload or a timeout: the API server asks to come back.
                    if Instant::now() >= deadline {
                        return Err(Error::Cluster(format!(
                            "creating template {}/{}: {e}",
                            key.0, key.1
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(Error::Cluster(format!(
                        "creating template {}/{}: {e}",
                        key.0, key.1
                    )));
                }
            }
        }
    }

    /// Sets every ConfigMap of template `key` to `value` (a new generation). Returns when the
    /// update was sent and the generation it made.
    pub async fn update(&self, client: &Client, key: &Key, value: &str) -> Result<(Instant, i64)> {
        let api: Api<KubeTemplate> = Api::namespaced(client.clone(), &key.0);
        let kt = self.template(key, value)?;
        let patch = json!({"spec": kt.spec});
        let sent = Instant::now();
        let updated = api
            .patch(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_error(format!("updating template {}/{}", key.0, key.1)))?;
        Ok((sent, updated.metadata.generation.unwrap_or(0)))
    }

    /// Deletes template `key`. Returns when the delete was sent.
    pub async fn delete(&self, client: &Client, key: &Key) -> Result<Instant> {
        let api: Api<KubeTemplate> = Api::namespaced(client.clone(), &key.0);
        let sent = Instant::now();
        api.delete(&key.1, &DeleteParams::default())
            .await
            .map_err(kube_error(format!("deleting template {}/{}", key.0, key.1)))?;
        Ok(sent)
    }
}

/// Deletes what runs left behind: namespaces and policies labelled [`RUN_LABEL`] (of `run`,
/// or of every run), then waits up to `timeout` until the namespaces are gone.
pub async fn cleanup(
    client: &Client,
    system_namespace: &str,
    run: Option<&str>,
    timeout: Duration,
    quiet: bool,
) -> Result<usize> {
    let selector = match run {
        Some(run) => format!("{RUN_LABEL}={run}"),
        None => RUN_LABEL.to_owned(),
    };
    let lp = ListParams::default().labels(&selector);
    let policies: Api<KubeTemplatePolicy> = Api::namespaced(client.clone(), system_namespace);
    policies
        .delete_collection(&DeleteParams::default(), &lp)
        .await
        .map_err(kube_error(format!(
            "deleting the policies labelled {selector}"
        )))?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labelled = || async {
        namespaces
            .list_metadata(&lp)
            .await
            .map_err(kube_error(format!(
                "listing the namespaces labelled {selector}"
            )))
    };
    let names: Vec<String> = labelled()
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let progress = Progress::new("cleanup", names.len() as u64, "namespaces", quiet);
    futures::stream::iter(names.iter())
        .map(|name| {
            let namespaces = &namespaces;
            async move {
                match namespaces.delete(name, &DeleteParams::background()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(Error::Cluster(format!("deleting namespace {name}: {e}"))),
                }
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = labelled().await?.items.len();
        progress.set_position(names.len().saturating_sub(left) as u64);
        if left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::Cluster(format!(
                "{left} namespaces labelled {selector} are still terminating after {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    progress.finish();
    Ok(names.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_namespaces() {
        let w = Workload::new("kubetemplater-system", 3, 2);
        assert_eq!(w.run.len(), 6);
        let keys = w.keys(0, 7);
        assert_eq!(keys.len(), 7);
        assert_eq!(keys[0].0, w.namespaces[0]);
        assert_eq!(keys[4].0, w.namespaces[1]);
        assert_eq!(keys[6].1, "t6");
        assert_eq!(w.keys(7, 1)[0].1, "t7");
        assert!(w.selector().starts_with(RUN_LABEL));
    }

    #[test]
    fn templates_hold_k_objects_with_the_value() {
        let w = Workload::new("kubetemplater-system", 1, 3);
        let key = (w.namespaces[0].clone(), "t0".to_owned());
        let kt = w.template(&key, "42").unwrap();
        assert_eq!(kt.spec.templates.len(), 3);
        let json = serde_json::to_value(&kt).unwrap();
        assert_eq!(
            json["spec"]["templates"][2]["object"]["metadata"]["name"],
            "t0-2"
        );
        assert_eq!(json["spec"]["templates"][0]["object"]["data"]["v"], "42");
        assert_eq!(json["metadata"]["labels"][RUN_LABEL], w.run);
    }
}
