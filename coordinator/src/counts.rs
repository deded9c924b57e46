//! Objects per bucket, from a metadata-only list + watch of KubeTemplates, in memory that does
//! not grow with the number of objects: one counter per bucket and one per namespace.
//!
//! A KubeTemplate's bucket is a function of its namespace (its shard key), so the count needs
//! neither the object's labels nor any per-object state: `Added` adds one to the bucket of the
//! object's namespace, `Deleted` removes one, `Modified` changes nothing. That is why this uses
//! the raw list + watch (which says *added* or *modified*) instead of kube-runtime's watcher
//! (which folds both into `Apply` and would need a per-object set to tell them apart). A relist
//! (start, or the watch's resourceVersion expired) counts into fresh counters and swaps them in.
//!
//! Objects that arrive without the `kubetemplater.io/bucket` label (created while the webhook was
//! down, or in an exempt namespace) are reported on a channel so the leader can backfill it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use api::KubeTemplate;
use api::constants::LABEL_BUCKET;
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::{Api, ListParams, PartialObjectMeta, WatchEvent, WatchParams};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Counts per bucket and per namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Objects in each bucket (`len` = B).
    pub per_bucket: Vec<u64>,
    /// Objects per namespace (for `locate`).
    pub per_namespace: HashMap<String, u64>,
}

impl Counts {
    fn new(buckets: NonZeroU32) -> Self {
        Self {
            per_bucket: vec![0; buckets.get() as usize],
            per_namespace: HashMap::new(),
        }
    }

    fn add(&mut self, bucket: u32, namespace: &str, delta: i64) {
        if let Some(slot) = self.per_bucket.get_mut(bucket as usize) {
            *slot = slot.saturating_add_signed(delta);
        }
        let entry = self.per_namespace.entry(namespace.to_owned()).or_default();
        *entry = entry.saturating_add_signed(delta);
        if *entry == 0 {
            self.per_namespace.remove(namespace);
        }
    }

    /// Total objects.
    pub fn total(&self) -> u64 {
        self.per_bucket.iter().sum()
    }
}

/// A template that has no bucket label yet (namespace, name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlabelled {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The live counts, shared with the planner and the admin API.
#[derive(Debug, Clone)]
pub struct BucketCounts {
    buckets: NonZeroU32,
    inner: Arc<RwLock<Counts>>,
    synced: Arc<tokio::sync::watch::Sender<bool>>,
}

impl BucketCounts {
    /// Zero counts for `buckets` buckets.
    pub fn new(buckets: NonZeroU32) -> Self {
        Self {
            buckets,
            inner: Arc::new(RwLock::new(Counts::new(buckets))),
            synced: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// A copy of the current counts.
    pub fn snapshot(&self) -> Counts {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the first list has been counted.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits for the first complete list.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|s| *s).await;
    }

    fn bucket_of(&self, namespace: &str) -> u32 {
        engine::bucket::bucket(
            &engine::bucket::kubetemplate_shard_key(namespace),
            self.buckets,
        )
    }

    /// Lists and watches KubeTemplate metadata cluster-wide until `cancel`, keeping the counts
    /// and sending templates without a bucket label on `unlabelled` (dropped, not blocking, when
    /// the receiver is full: the next relist reports them again).
    pub async fn run(
        self,
        client: kube::Client,
        unlabelled: mpsc::Sender<Unlabelled>,
        cancel: CancellationToken,
    ) {
        let api: Api<KubeTemplate> = Api::all(client);
        let mut backoff = std::time::Duration::from_millis(500);
        loop {
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.list_then_watch(&api, &unlabelled, &cancel) => r,
            };
            match result {
                Ok(()) => backoff = std::time::Duration::from_millis(500),
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "counting KubeTemplates per bucket failed; listing again");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                }
            }
        }
    }

    /// One list (paginated) then a watch from its resourceVersion, until the watch ends (`Ok`:
    /// relist at once) or fails.
    async fn list_then_watch(
        &self,
        api: &Api<KubeTemplate>,
        unlabelled: &mpsc::Sender<Unlabelled>,
        cancel: &CancellationToken,
    ) -> kube::Result<()> {
        let mut fresh = Counts::new(self.buckets);
        let mut params = ListParams::default().limit(500);
        let version = loop {
            let page = api.list_metadata(&params).await?;
            for meta in &page.items {
                self.observe(&mut fresh, meta, 1, unlabelled);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break page.metadata.resource_version.unwrap_or_default(),
            }
        };
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.synced.send_replace(true);

        let mut version = version;
        loop {
            let params = WatchParams::default().timeout(290);
            let mut events = api.watch_metadata(&params, &version).await?.boxed();
            loop {
                let event = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    e = events.try_next() => e?,
                };
                let Some(event) = event else { break };
                match event {
                    WatchEvent::Added(meta) => {
                        let mut counts = self.inner.write().unwrap_or_else(|p| p.into_inner());
                        self.observe(&mut counts, &meta, 1, unlabelled);
                        version = meta.metadata.resource_version.clone().unwrap_or(version);
                    }
                    WatchEvent::Modified(meta) => {
                        if meta
                            .metadata
                            .labels
                            .as_ref()
                            .is_none_or(|l| !l.contains_key(LABEL_BUCKET))
                        {
                            report_unlabelled(&meta, unlabelled);
                        }
                        version = meta.metadata.resource_version.clone().unwrap_or(version);
                    }
                    WatchEvent::Deleted(meta) => {
                        let mut counts = self.inner.write().unwrap_or_else(|p| p.into_inner());
                        let namespace = meta.metadata.namespace.clone().unwrap_or_default();
                        counts.add(self.bucket_of(&namespace), &namespace, -1);
                        version = meta.metadata.resource_version.clone().unwrap_or(version);
                    }
                    WatchEvent::Bookmark(bookmark) => version = bookmark.metadata.resource_version,
                    WatchEvent::Error(status) if status.code == 410 => {
                        // Our resourceVersion is too old: relist.
                        return Ok(());
                    }
                    WatchEvent::Error(status) => {
                        return Err(kube::Error::Api(Box::new(
                            kube::core::Status::failure(&status.message, &status.reason)
                                .with_code(status.code),
                        )));
                    }
                }
            }
        }
    }

    fn observe(
        &self,
        counts: &mut Counts,
        meta: &PartialObjectMeta<KubeTemplate>,
        delta: i64,
        unlabelled: &mpsc::Sender<Unlabelled>,
    ) {
        let namespace = meta.metadata.namespace.clone().unwrap_or_default();
        counts.add(self.bucket_of(&namespace), &namespace, delta);
        if meta
            .metadata
            .labels
            .as_ref()
            .is_none_or(|l| !l.contains_key(LABEL_BUCKET))
        {
            report_unlabelled(meta, unlabelled);
        }
    }
}

fn report_unlabelled(
    meta: &PartialObjectMeta<KubeTemplate>,
    unlabelled: &mpsc::Sender<Unlabelled>,
) {
    let item = Unlabelled {
        namespace: meta.metadata.namespace.clone().unwrap_or_default(),
        name: meta.metadata.name.clone().unwrap_or_default(),
    };
    // Full: the backfill is behind; the next relist or modification reports it again.
    let _ = unlabelled.try_send(item);
}

/// Adds the bucket label to templates reported by [`BucketCounts::run`], one merge patch each,
/// until `cancel`; `on_write` is called for every patch sent. Only the leader runs this (the
/// receiver outlives its terms). A template deleted meanwhile is skipped; a label
/// someone added meanwhile is left as it is (the patch only sets an absent label: it is sent with
/// the resourceVersion it was read at).
pub async fn backfill(
    client: kube::Client,
    buckets: NonZeroU32,
    unlabelled: &mut mpsc::Receiver<Unlabelled>,
    cancel: CancellationToken,
    on_write: impl Fn(),
) {
    loop {
        let item = tokio::select! {
            () = cancel.cancelled() => return,
            item = unlabelled.recv() => match item { Some(item) => item, None => return },
        };
        let api: Api<KubeTemplate> = Api::namespaced(client.clone(), &item.namespace);
        let current = match api.get_metadata_opt(&item.name).await {
            Ok(Some(current)) => current,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(%error, template = %format!("{}/{}", item.namespace, item.name), "reading a template to label it failed");
                continue;
            }
        };
        if current
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(LABEL_BUCKET))
        {
            continue;
        }
        let bucket = engine::bucket::bucket(
            &engine::bucket::kubetemplate_shard_key(&item.namespace),
            buckets,
        );
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": current.metadata.resource_version,
                "labels": { LABEL_BUCKET: engine::bucket::bucket_label_value(bucket) },
            }
        });
        on_write();
        match api
            .patch_metadata(
                &item.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(template = %format!("{}/{}", item.namespace, item.name), bucket, "added the missing bucket label")
            }
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {}
            Err(error) => {
                tracing::warn!(%error, template = %format!("{}/{}", item.namespace, item.name), "adding the bucket label failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_adds_and_deletes_and_forget_empty_namespaces() {
        let mut c = Counts::new(NonZeroU32::new(8).unwrap());
        c.add(3, "a", 1);
        c.add(3, "a", 1);
        c.add(5, "b", 1);
        assert_eq!(c.per_bucket[3], 2);
        assert_eq!(c.total(), 3);
        c.add(5, "b", -1);
        assert!(!c.per_namespace.contains_key("b"));
        c.add(5, "b", -1);
        assert_eq!(c.per_bucket[5], 0, "never below zero");
    }
}
