//! Watches limited to the buckets this worker owns: never a cluster-wide watch filtered on the
//! client.
//!
//! The same machinery serves KubeTemplates and Tenants ([`BucketWatches`] over either kind).
//! Owned buckets are grouped into chunks of at most [`CHUNK`] buckets; each chunk is one
//! kube-runtime reflector over the kind with the label selector
//! `kubetemplater.io/bucket in (b1,…,bn)` and its own store. A grant starts new chunks; a revoke
//! restarts only the chunks that held a revoked bucket (without it), so moving one bucket relists
//! at most one chunk's objects, not everything the worker owns. Every object a chunk's watch
//! delivers (initial list included) is sent on the event channel for the work queue.
//!
//! The objects of an initial list are sent only once the list is complete (`InitDone`): the
//! reflector's store swaps the listed objects in at that point, so a key sent earlier could be
//! handed to a reconcile that finds no template in the store yet and skips it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use api::constants::LABEL_BUCKET;
use api::{KubeTemplate, Tenant};
use futures::StreamExt as _;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most buckets one watch covers.
pub const CHUNK: usize = 32;

/// The kinds a worker reconciles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Kind {
    /// A KubeTemplate.
    #[default]
    Template,
    /// A Tenant.
    Tenant,
}

/// A kind the bucket watches can watch.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Which kind.
    const KIND: Kind;
}

impl Watched for KubeTemplate {
    const KIND: Kind = Kind::Template;
}

impl Watched for Tenant {
    const KIND: Kind = Kind::Tenant;
}

/// Identifies an object in the queue: its kind, namespace, name and bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TemplateKey {
    /// Bucket (from the label; for a KubeTemplate the bucket of the namespace).
    pub bucket: u32,
    /// KubeTemplate or Tenant.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for TemplateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Template => "",
            Kind::Tenant => "tenant ",
        };
        write!(
            f,
            "{kind}{}/{} (bucket {})",
            self.namespace, self.name, self.bucket
        )
    }
}

/// Something happened to a template of an owned bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateEvent {
    /// Which template.
    pub key: TemplateKey,
    /// Whether it comes from the initial list of a (re)started watch rather than a change.
    pub initial: bool,
}

struct Chunk<K: Watched> {
    buckets: BTreeSet<u32>,
    store: Store<K>,
    cancel: CancellationToken,
}

/// The bucket-scoped watches of one kind in one worker.
pub struct BucketWatches<K: Watched> {
    client: kube::Client,
    events: mpsc::Sender<TemplateEvent>,
    state: Arc<Mutex<State<K>>>,
}

/// The bucket-scoped KubeTemplate watches.
pub type TemplateWatches = BucketWatches<KubeTemplate>;
/// The bucket-scoped Tenant watches.
pub type TenantWatches = BucketWatches<Tenant>;

impl<K: Watched> Clone for BucketWatches<K> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            events: self.events.clone(),
            state: Arc::clone(&self.state),
        }
    }
}

struct State<K: Watched> {
    next_id: u64,
    chunks: BTreeMap<u64, Chunk<K>>,
    chunk_of: BTreeMap<u32, u64>,
}

impl<K: Watched> Default for State<K> {
    fn default() -> Self {
        Self {
            next_id: 0,
            chunks: BTreeMap::new(),
            chunk_of: BTreeMap::new(),
        }
    }
}

impl<K: Watched> std::fmt::Debug for BucketWatches<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("BucketWatches")
            .field("kind", &K::KIND)
            .field("chunks", &state.chunks.len())
            .field("buckets", &state.chunk_of.len())
            .finish()
    }
}

impl<K: Watched> BucketWatches<K> {
    /// No watches yet; events go to `events`.
    pub fn new(client: kube::Client, events: mpsc::Sender<TemplateEvent>) -> Self {
        Self {
            client,
            events,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // Every mutation below is a few map operations that leave the state consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching `buckets` (those already watched are ignored).
    pub fn add(&self, buckets: &[u32]) {
        let mut state = self.lock();
        let new: Vec<u32> = buckets
            .iter()
            .copied()
            .filter(|b| !state.chunk_of.contains_key(b))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for group in new.chunks(CHUNK) {
            let set: BTreeSet<u32> = group.iter().copied().collect();
            self.start_chunk(&mut state, set);
        }
    }

    /// Stops watching `buckets`; chunks that also held other buckets restart without them.
    pub fn remove(&self, buckets: &[u32]) {
        let mut state = self.lock();
        let affected: BTreeSet<u64> = buckets
            .iter()
            .filter_map(|b| state.chunk_of.get(b).copied())
            .collect();
        let gone: BTreeSet<u32> = buckets.iter().copied().collect();
        for id in affected {
            let Some(chunk) = state.chunks.remove(&id) else {
                continue;
            };
            chunk.cancel.cancel();
            for b in &chunk.buckets {
                state.chunk_of.remove(b);
            }
            let rest: BTreeSet<u32> = chunk.buckets.difference(&gone).copied().collect();
            if !rest.is_empty() {
                self.start_chunk(&mut state, rest);
            }
        }
    }

    /// Stops every watch.
    pub fn clear(&self) {
        let mut state = self.lock();
        for chunk in state.chunks.values() {
            chunk.cancel.cancel();
        }
        state.chunks.clear();
        state.chunk_of.clear();
    }

    /// Buckets being watched.
    pub fn buckets(&self) -> BTreeSet<u32> {
        self.lock().chunk_of.keys().copied().collect()
    }

    /// The cached object for `key`, if its bucket is watched and the object exists.
    pub fn get(&self, key: &TemplateKey) -> Option<Arc<K>> {
        let state = self.lock();
        let id = state.chunk_of.get(&key.bucket)?;
        let chunk = state.chunks.get(id)?;
        chunk
            .store
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
    }

    /// Keys of every cached object of `buckets` (for a resync).
    pub fn keys(&self, buckets: &BTreeSet<u32>) -> Vec<TemplateKey> {
        let state = self.lock();
        state
            .chunks
            .values()
            .filter(|c| !c.buckets.is_disjoint(buckets))
            .flat_map(|c| c.store.state())
            .filter_map(|t| key_of(t.as_ref()))
            .filter(|k| buckets.contains(&k.bucket))
            .collect()
    }

    fn start_chunk(&self, state: &mut State<K>, buckets: BTreeSet<u32>) {
        let id = state.next_id;
        state.next_id += 1;
        let selector = format!(
            "{LABEL_BUCKET} in ({})",
            buckets
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let (store, writer) = reflector::store();
        let cancel = CancellationToken::new();
        for b in &buckets {
            state.chunk_of.insert(*b, id);
        }
        state.chunks.insert(
            id,
            Chunk {
                buckets,
                store,
                cancel: cancel.clone(),
            },
        );
        let api: Api<K> = Api::all(self.client.clone());
        let events = self.events.clone();
        tokio::spawn(async move {
            let config = watcher::Config::default().labels(&selector);
            let mut stream = reflector::reflector(writer, watcher::watcher(api, config))
                .default_backoff()
                .boxed();
            let mut initial = false;
            // Keys of the initial list in progress, sent when it is complete (module docs).
            let mut listed: Vec<TemplateKey> = Vec::new();
            loop {
                let event = tokio::select! {
                    () = cancel.cancelled() => return,
                    e = stream.next() => e,
                };
                let keys: Vec<(TemplateKey, bool)> = match event {
                    None => return,
                    Some(Err(error)) => {
                        tracing::warn!(%error, %selector, kind = ?K::KIND, "bucket watch failed; retrying");
                        continue;
                    }
                    Some(Ok(watcher::Event::Init)) => {
                        initial = true;
                        listed.clear();
                        continue;
                    }
                    Some(Ok(watcher::Event::InitApply(t))) => {
                        listed.extend(key_of(&t));
                        continue;
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        initial = false;
                        std::mem::take(&mut listed)
                            .into_iter()
                            .map(|key| (key, true))
                            .collect()
                    }
                    Some(Ok(watcher::Event::Apply(t))) => {
                        key_of(&t).map(|key| (key, initial)).into_iter().collect()
                    }
                    Some(Ok(watcher::Event::Delete(_))) => continue,
                };
                for (key, initial) in keys {
                    // Backpressure: a full queue channel slows the watch, it never drops events.
                    if events.send(TemplateEvent { key, initial }).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// The queue key of an object, from its kind, namespace, name and bucket label.
pub fn key_of<K: Watched>(object: &K) -> Option<TemplateKey> {
    let meta = object.meta();
    let bucket = meta.labels.as_ref()?.get(LABEL_BUCKET)?.parse().ok()?;
    Some(TemplateKey {
        bucket,
        kind: K::KIND,
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
    })
}
