//! Templates, policies and checks for the multi-process scenarios.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use api::{KubeTemplate, KubeTemplatePolicy};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use crate::eventually;

/// Namespace of the policies.
pub const SYSTEM_NAMESPACE: &str = devcluster::stack::SYSTEM_NAMESPACE;

/// Creates namespaces `{prefix}-{random}-0` … (labelled for the sweep of test namespaces) and,
/// for each, a policy admitting ConfigMaps in it.
pub async fn namespaces_with_policies(
    client: &Client,
    prefix: &str,
    n: usize,
) -> Result<Vec<String>> {
    let run: u32 = rand::random::<u32>() & 0xff_ffff;
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{run:06x}-{i}")).collect();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let policies: Api<KubeTemplatePolicy> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    futures::stream::iter(names.clone())
        .map(|ns| {
            let (namespaces, policies) = (namespaces.clone(), policies.clone());
            async move {
                let namespace: Namespace = serde_json::from_value(json!({"metadata": {
                    "name": ns,
                    "labels": {devcluster::testing::TEST_NAMESPACE_LABEL: "true"},
                }}))?;
                namespaces
                    .create(&PostParams::default(), &namespace)
                    .await
                    .with_context(|| format!("creating namespace {ns}"))?;
                let policy: KubeTemplatePolicy = serde_json::from_value(json!({
                    "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplatePolicy",
                    "metadata": {"name": ns},
                    "spec": {"sourceNamespace": ns, "validationRules": [
                        {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": [ns]}
                    ]}
                }))?;
                policies
                    .create(&PostParams::default(), &policy)
                    .await
                    .with_context(|| format!("creating the policy of {ns}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(names)
}

/// A template `name` in `namespace` with `objects` ConfigMaps `{name}-{k}`, data `v`.
pub fn template(namespace: &str, name: &str, objects: usize, value: &str) -> Result<KubeTemplate> {
    let templates: Vec<serde_json::Value> = (0..objects)
        .map(|k| {
            json!({"object": {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("{name}-{k}"), "namespace": namespace},
                "data": {"v": value}
            }})
        })
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"templates": templates}
    }))?)
}

/// Creates the templates `(namespace, name)`, `objects` ConfigMaps each, 16 at a time. The
/// policies are watch-fed into the webhook, so a refusal right after a policy was created is
/// retried for a while.
pub async fn create_templates(
    client: &Client,
    names: &[(String, String)],
    objects: usize,
) -> Result<()> {
    futures::stream::iter(names.iter().cloned())
        .map(|(ns, name)| {
            let api: Api<KubeTemplate> = Api::namespaced(client.clone(), &ns);
            async move {
                let kt = template(&ns, &name, objects, "1")?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                loop {
                    match api.create(&PostParams::default(), &kt).await {
                        Ok(_) => return anyhow::Ok(()),
                        Err(kube::Error::Api(e))
                            if e.code == 403 && tokio::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        Err(e) => bail!("creating template {ns}/{name}: {e}"),
                    }
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// `per_namespace` template names per namespace: `t{first}` … .
pub fn names(namespaces: &[String], first: usize, per_namespace: usize) -> Vec<(String, String)> {
    namespaces
        .iter()
        .flat_map(|ns| (first..first + per_namespace).map(move |j| (ns.clone(), format!("t{j}"))))
        .collect()
}

/// Waits until every template in `namespaces` is `Completed` with `objects` resources in sync
/// and there are `expected` of them.
pub async fn all_completed(
    client: &Client,
    namespaces: &[String],
    expected: usize,
    objects: i64,
    timeout: Duration,
) -> Result<()> {
    let api: Api<KubeTemplate> = Api::all(client.clone());
    let namespaces: BTreeSet<&str> = namespaces.iter().map(String::as_str).collect();
    eventually(timeout, &format!("{expected} templates Completed"), || {
        let (api, namespaces) = (api.clone(), &namespaces);
        async move {
            let mut list = api.list(&ListParams::default()).await?;
            list.items.retain(|kt| {
                kt.metadata
                    .namespace
                    .as_deref()
                    .is_some_and(|n| namespaces.contains(n))
            });
            let mut pending = Vec::new();
            let mut done = 0;
            for kt in &list.items {
                let status = kt.status.clone().unwrap_or_default();
                if status.processing_phase.as_deref() == Some("Completed")
                    && status.resources_total == Some(objects)
                    && status.resources_synced == Some(objects)
                {
                    done += 1;
                } else if pending.len() < 3 {
                    pending.push(format!(
                        "{}/{}: {:?} {:?}",
                        kt.metadata.namespace.clone().unwrap_or_default(),
                        kt.metadata.name.clone().unwrap_or_default(),
                        status.processing_phase,
                        status.status
                    ));
                }
            }
            if done == expected && list.items.len() == expected {
                return Ok(true);
            }
            bail!(
                "{done}/{} done (want {expected}); e.g. {pending:?}",
                list.items.len()
            )
        }
    })
    .await
}

/// Every ConfigMap templates own in `namespaces`, by (namespace, name) → how many there are;
/// checks each has the labels of its template.
pub async fn managed_configmaps(
    client: &Client,
    namespaces: &[String],
) -> Result<BTreeMap<(String, String), usize>> {
    let api: Api<ConfigMap> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().labels("kubetemplater.io/template-name"))
        .await?;
    let mut seen = BTreeMap::new();
    for cm in list.items {
        let ns = cm.metadata.namespace.clone().unwrap_or_default();
        if !namespaces.contains(&ns) {
            continue;
        }
        let name = cm.metadata.name.clone().unwrap_or_default();
        let labels = cm.metadata.labels.clone().unwrap_or_default();
        let owner = labels
            .get("kubetemplater.io/template-name")
            .context("no template label")?;
        if !name.starts_with(&format!("{owner}-")) {
            bail!("{ns}/{name} is labelled as owned by {owner}");
        }
        *seen.entry((ns, name)).or_insert(0) += 1;
    }
    Ok(seen)
}

/// The bucket of namespace `ns` (B = 1024).
pub fn bucket_of(ns: &str) -> u32 {
    engine::bucket::bucket(
        &engine::bucket::kubetemplate_shard_key(ns),
        engine::bucket::DEFAULT_BUCKET_COUNT,
    )
}

/// One grant as the coordinator recorded it.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The bucket.
    pub bucket: u32,
    /// To whom.
    pub to: String,
    /// When the grant was sent.
    pub at: jiff::Timestamp,
}

/// Collects the coordinator's handoffs (it keeps the last 100) by polling.
#[derive(Debug, Default)]
pub struct HandoffLog {
    seen: BTreeSet<String>,
    /// Grants in the order seen.
    pub grants: Vec<Grant>,
}

impl HandoffLog {
    /// Adds the completed handoffs in `response` not seen before.
    pub fn add(&mut self, response: &proto::v1::ListHandoffsResponse, leader: &str) {
        for h in &response.handoffs {
            let (Some(granted), false) = (h.granted_at.as_ref(), h.to.is_empty()) else {
                continue;
            };
            if !self.seen.insert(format!("{leader}/{}", h.id)) {
                continue;
            }
            let Ok(at) = jiff::Timestamp::new(granted.seconds, granted.nanos) else {
                continue;
            };
            for b in &h.buckets {
                self.grants.push(Grant {
                    bucket: b.bucket,
                    to: h.to.clone(),
                    at,
                });
            }
        }
    }
}

/// Checks the audit log's writes by workers against the grants: a write by worker W to an
/// object of bucket b, received by kube-apiserver at t, is only allowed if W holds the latest
/// grant of b sent before t. That is stricter than "once a new owner has written, no earlier
/// owner ever writes again": a write of the old owner after the new one was granted is a
/// violation even if the new owner has not written yet. Returns the number of writes checked.
pub fn check_exclusive(
    events: &[devcluster::audit::AuditEvent],
    grants: &[Grant],
) -> Result<usize> {
    let mut by_bucket: BTreeMap<u32, Vec<&Grant>> = BTreeMap::new();
    for g in grants {
        by_bucket.entry(g.bucket).or_default().push(g);
    }
    for list in by_bucket.values_mut() {
        list.sort_by_key(|g| g.at);
    }
    let mut violations = Vec::new();
    let mut checked = 0;
    for e in events {
        let Some(worker) = e
            .user
            .component()
            .strip_prefix("kubetemplater:worker-")
            .map(str::to_owned)
        else {
            continue;
        };
        let Some(object) = &e.object_ref else {
            continue;
        };
        if object.api_group == "coordination.k8s.io" || object.namespace.is_empty() {
            continue;
        }
        if !e.succeeded() {
            continue;
        }
        checked += 1;
        let worker = format!("worker-{worker}");
        let bucket = bucket_of(&object.namespace);
        let holder = by_bucket
            .get(&bucket)
            .and_then(|l| {
                l.iter()
                    .rev()
                    .find(|g| g.at <= e.request_received_timestamp)
            })
            .map(|g| g.to.as_str());
        if holder != Some(worker.as_str()) {
            violations.push(format!(
                "{} by {worker} at {} in bucket {bucket}, granted to {holder:?} then",
                e.describe(),
                e.request_received_timestamp
            ));
        }
    }
    if !violations.is_empty() {
        bail!(
            "{} of {checked} writes outside the writer's ownership: {:#?}",
            violations.len(),
            &violations[..violations.len().min(10)]
        );
    }
    Ok(checked)
}
