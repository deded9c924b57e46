//! The policy cache: every KubeTemplatePolicy of the policy namespace, compiled once per
//! generation and indexed by `spec.sourceNamespace`, fed by a watch.
//!
//! ```text
//! watch KubeTemplatePolicy (policy namespace) ──► PolicyCache::{apply, delete, reset}
//!                                                     │  compile when uid or generation changed
//! review ──► PolicyCache::lookup(namespace) ◄─────────┘  O(1): HashMap<sourceNamespace, names>
//! ```
//!
//! The index is a plain synchronous structure behind a `RwLock` (lookups take the read lock for a
//! hash lookup and an `Arc` clone; compilation happens outside the lock). The watch follows
//! kube-runtime's reflector protocol (`Init`, `InitApply`…, `InitDone`, then `Apply`/`Delete`):
//! a relist replaces the whole index at `InitDone`, keeping the compiled form of every policy
//! whose uid and generation did not change. Objects are watched as dynamic objects and decoded
//! one by one, so one undecodable policy is logged and skipped instead of stopping the watch
//! (the CRD schema makes that rare).
//!
//! The cache is *synced* after the first complete list; the webhook serves reviews only from then
//! on (see [`PolicyCache::wait_synced`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use api::KubeTemplatePolicy;
use engine::policy::CompiledPolicy;
use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Resource as _, ResourceExt as _};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One cached policy.
#[derive(Debug, Clone)]
struct Entry {
    uid: Option<String>,
    generation: Option<i64>,
    source_namespace: String,
    compiled: Arc<CompiledPolicy>,
}

#[derive(Debug, Default)]
struct Index {
    /// Policy name → entry (policies live in one namespace, so the name is the key).
    by_name: HashMap<String, Entry>,
    /// `spec.sourceNamespace` → names of the policies selecting it (normally one).
    by_source: HashMap<String, Vec<String>>,
}

impl Index {
    fn insert(&mut self, name: String, entry: Entry) {
        if let Some(old) = self.by_name.remove(&name) {
            self.unlink(&old.source_namespace, &name);
        }
        let names = self
            .by_source
            .entry(entry.source_namespace.clone())
            .or_default();
        names.push(name.clone());
        names.sort();
        self.by_name.insert(name, entry);
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            self.unlink(&old.source_namespace, name);
        }
    }

    fn unlink(&mut self, source: &str, name: &str) {
        if let Some(names) = self.by_source.get_mut(source) {
            names.retain(|n| n != name);
            if names.is_empty() {
                self.by_source.remove(source);
            }
        }
    }

    fn reusable(&self, name: &str, uid: Option<&str>, generation: Option<i64>) -> Option<Entry> {
        self.by_name
            .get(name)
            .filter(|e| {
                e.uid.as_deref() == uid && e.generation == generation && generation.is_some()
            })
            .cloned()
    }
}

/// What the cache reports, for metrics (the webhook counts hits and misses, the worker may not).
pub trait CacheObserver: Send + Sync + std::fmt::Debug {
    /// A lookup found (`true`) or did not find a policy.
    fn lookup(&self, _hit: bool) {}
    /// A policy generation was compiled.
    fn compiled(&self) {}
    /// The number of cached policies changed.
    fn policies(&self, _count: usize) {}
}

/// An observer that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl CacheObserver for NoObserver {}

/// The watch-fed, compiled policy index. Share it with `Arc`.
#[derive(Debug)]
pub struct PolicyCache {
    index: RwLock<Index>,
    metrics: Arc<dyn CacheObserver>,
    synced: watch::Sender<bool>,
}

impl PolicyCache {
    /// An empty, not yet synced cache reporting to `metrics`.
    pub fn new(metrics: Arc<dyn CacheObserver>) -> Self {
        Self {
            index: RwLock::new(Index::default()),
            metrics,
            synced: watch::Sender::new(false),
        }
    }

    /// The compiled policies selecting `namespace` (normally zero or one; two or more deny every
    /// template there, as in the original). Counts a cache hit or miss.
    pub fn lookup(&self, namespace: &str) -> Vec<Arc<CompiledPolicy>> {
        let found: Vec<_> = {
            let index = self.read();
            index
                .by_source
                .get(namespace)
                .map(|names| {
                    names
                        .iter()
                        .filter_map(|n| index.by_name.get(n).map(|e| e.compiled.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        self.metrics.lookup(!found.is_empty());
        found
    }

    /// Names of the cached policies other than `except` that select `source_namespace`.
    pub fn others_selecting(&self, source_namespace: &str, except: &str) -> Vec<String> {
        self.read()
            .by_source
            .get(source_namespace)
            .map(|names| names.iter().filter(|n| *n != except).cloned().collect())
            .unwrap_or_default()
    }

    /// Number of cached policies.
    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    /// Whether the cache holds no policy.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first complete list has been applied.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first complete list has been applied.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        // The sender lives in `self`, so the channel cannot close while we borrow `self`.
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// Adds or replaces one policy, compiling it unless the cached one has the same uid and
    /// generation.
    pub fn apply(&self, policy: &KubeTemplatePolicy) {
        let (name, entry) = self.entry_for(policy);
        let mut index = self.write();
        index.insert(name, entry);
        self.metrics.policies(index.by_name.len());
    }

    /// Removes one policy.
    pub fn delete(&self, name: &str) {
        let mut index = self.write();
        index.remove(name);
        self.metrics.policies(index.by_name.len());
    }

    /// Replaces the whole index with `policies` (after a relist) and marks the cache synced.
    pub fn reset(&self, policies: &[KubeTemplatePolicy]) {
        let entries: Vec<_> = policies.iter().map(|p| self.entry_for(p)).collect();
        let mut fresh = Index::default();
        for (name, entry) in entries {
            fresh.insert(name, entry);
        }
        let n = fresh.by_name.len();
        *self.write() = fresh;
        self.metrics.policies(n);
        self.synced.send_replace(true);
    }

    fn entry_for(&self, policy: &KubeTemplatePolicy) -> (String, Entry) {
        let name = policy.name_any();
        let meta = policy.meta();
        if let Some(entry) = self
            .read()
            .reusable(&name, meta.uid.as_deref(), meta.generation)
        {
            return (name, entry);
        }
        let compiled = Arc::new(CompiledPolicy::compile(policy));
        self.metrics.compiled();
        for problem in compiled.problems() {
            tracing::warn!(policy = %name, %problem, "KubeTemplatePolicy has a problem; templates touching it are denied");
        }
        let entry = Entry {
            uid: meta.uid.clone(),
            generation: meta.generation,
            source_namespace: policy.spec.source_namespace.clone(),
            compiled,
        };
        (name, entry)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // A poisoned lock means a panic while holding it; the index is still consistent
        // (every mutation is a single insert/remove/swap), so keep serving.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches the KubeTemplatePolicies of `namespace` and keeps the cache current until
    /// `cancel`. Watch errors are retried with kube-runtime's default backoff.
    pub async fn run(
        self: Arc<Self>,
        client: kube::Client,
        namespace: String,
        cancel: CancellationToken,
    ) {
        let resource = ApiResource::erase::<KubeTemplatePolicy>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &resource);
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut relist: Vec<KubeTemplatePolicy> = Vec::new();
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                event = events.next() => event,
            };
            match event {
                None => return,
                Some(Err(error)) => {
                    tracing::warn!(%error, namespace, "watching KubeTemplatePolicies failed; retrying");
                }
                Some(Ok(Event::Init)) => relist.clear(),
                Some(Ok(Event::InitApply(obj))) => relist.extend(decode(obj)),
                Some(Ok(Event::InitDone)) => {
                    self.reset(&relist);
                    tracing::info!(policies = relist.len(), namespace, "policy cache synced");
                    relist.clear();
                }
                Some(Ok(Event::Apply(obj))) => {
                    if let Some(policy) = decode(obj) {
                        self.apply(&policy);
                    }
                }
                Some(Ok(Event::Delete(obj))) => self.delete(&obj.name_any()),
            }
        }
    }
}

fn decode(obj: DynamicObject) -> Option<KubeTemplatePolicy> {
    let name = obj.name_any();
    let namespace = obj.namespace().unwrap_or_default();
    match obj.try_parse::<KubeTemplatePolicy>() {
        Ok(policy) => Some(policy),
        Err(error) => {
            tracing::warn!(policy = %format!("{namespace}/{name}"), %error, "skipping a KubeTemplatePolicy that does not decode");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::{KubeTemplatePolicySpec, ValidationRule};

    fn policy(name: &str, source: &str, generation: i64) -> KubeTemplatePolicy {
        let mut p = KubeTemplatePolicy::new(
            name,
            KubeTemplatePolicySpec {
                source_namespace: source.into(),
                validation_rules: vec![ValidationRule {
                    kind: "ConfigMap".into(),
                    group: String::new(),
                    version: "v1".into(),
                    target_namespaces: vec![source.into()],
                    rule: None,
                    field_validations: vec![],
                }],
            },
        );
        p.metadata.namespace = Some("kubetemplater-system".into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.generation = Some(generation);
        p
    }

    fn cache() -> PolicyCache {
        PolicyCache::new(Arc::new(NoObserver))
    }

    #[test]
    fn lookup_by_source_namespace() {
        let c = cache();
        c.reset(&[policy("a", "team-a", 1), policy("b", "team-b", 1)]);
        assert!(c.is_synced());
        assert_eq!(c.lookup("team-a").len(), 1);
        assert_eq!(c.lookup("team-a")[0].name(), "a");
        assert!(c.lookup("team-c").is_empty());
    }

    #[test]
    fn moving_source_namespace_unindexes_the_old_one() {
        let c = cache();
        c.apply(&policy("a", "team-a", 1));
        c.apply(&policy("a", "team-z", 2));
        assert!(c.lookup("team-a").is_empty());
        assert_eq!(c.lookup("team-z").len(), 1);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn same_generation_reuses_the_compiled_policy() {
        let c = cache();
        c.apply(&policy("a", "team-a", 1));
        let first = c.lookup("team-a").remove(0);
        c.apply(&policy("a", "team-a", 1));
        assert!(Arc::ptr_eq(&first, &c.lookup("team-a")[0]));
        c.reset(&[policy("a", "team-a", 1)]);
        assert!(Arc::ptr_eq(&first, &c.lookup("team-a")[0]));
        c.apply(&policy("a", "team-a", 2));
        assert!(!Arc::ptr_eq(&first, &c.lookup("team-a")[0]));
    }

    #[test]
    fn duplicates_are_all_returned_and_named() {
        let c = cache();
        c.apply(&policy("a", "team-a", 1));
        c.apply(&policy("b", "team-a", 1));
        assert_eq!(c.lookup("team-a").len(), 2);
        assert_eq!(c.others_selecting("team-a", "a"), vec!["b".to_string()]);
        c.delete("a");
        assert_eq!(c.lookup("team-a").len(), 1);
        assert!(c.others_selecting("team-a", "b").is_empty());
    }

    #[test]
    fn reset_drops_policies_that_are_gone() {
        let c = cache();
        c.apply(&policy("a", "team-a", 1));
        c.reset(&[policy("b", "team-b", 1)]);
        assert!(c.lookup("team-a").is_empty());
        assert_eq!(c.len(), 1);
    }
}
