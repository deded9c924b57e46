//! Drift seen through watches on managed objects, so a change behind our back is put back at
//! once instead of at the slow safety resync, and an idle system still does nothing.
//!
//! ```text
//! reconcile ok ── register(kinds of the template)      (spec items and status.appliedResources)
//!   new kind  ── discovery once ── a watch per (kind × chunk of owned buckets)
//! watch event ── initial list? ignore
//!             ── modified, last writer is us? ignore     (our own applies)
//!             ── modified by someone else, or deleted ── DriftEvent { owner key, object }
//! pipeline    ── owner still lists the object? ── queue.add(owner, Change) as a drift
//! ```
//!
//! * **Scope.** Every object the worker applies carries `kubetemplater.io/bucket` and its owner:
//!   a KubeTemplate's objects the `kubetemplater.io/template-{name,namespace}` labels
//!   ([`crate::desired`]); a Tenant's objects a controller owner reference to the Tenant or the
//!   tracking labels `kubernetes-tenants.org/tenant{,-namespace}` ([`crate::tenant::desired`]).
//!   Each watch selects `kubetemplater.io/bucket in (b1,…,bn)` over all namespaces
//!   (`Api::all_with`), so cluster-scoped kinds and objects in other namespaces than their
//!   owner's are seen, and only by the owning worker. Owned buckets are grouped in chunks of
//!   at most [`crate::watches::CHUNK`] as for the template watches: a grant starts new chunks, a
//!   revoke restarts only the chunks that held a revoked bucket.
//! * **Kinds.** The pipeline registers the kinds of every template it reconciled successfully
//!   (the kinds its spec lists and those its `status.appliedResources` lists), so the kinds come
//!   from what was actually applied, including on a fresh grant where every template is
//!   unchanged. A kind is resolved by discovery once per process and keyed by group and kind
//!   (two versions of one kind are one watch). A kind that is not served (CRD deleted), cannot be
//!   watched, or whose watch is refused (403) or gone (404) is logged once and not watched; it is
//!   tried again when registered after [`UNAVAILABLE_RETRY`]. Other watch errors back off
//!   (`default_backoff`) and retry; nothing here panics or ends the process.
//! * **Small.** The watches are metadata-only (`Api<PartialObjectMeta<_>>`) and
//!   keep no store: memory does not grow with the managed objects.
//! * **Ours or foreign.** An object modified by our own apply must not trigger work, or every
//!   apply would cause a second reconcile. The apply result (its resourceVersion) is not known
//!   here, and remembering it per object would be memory per object and racy (the event can
//!   arrive before the apply returns). Instead every event is classified on its own from
//!   `metadata.managedFields` ([`classify`]): the server stamps the entry of the manager that
//!   changed the object with the time of the change. An event is ours when the newest entry
//!   (ignoring subresource entries such as `status`, which never hold fields we apply) belongs to
//!   the field manager `kubetemplater` and is strictly newer than every other manager's entry.
//!   The timestamps have one-second resolution: a tie counts as foreign, so a foreign write in
//!   the same second as our apply is never missed; the price is at most one extra reconcile,
//!   whose apply changes nothing (a no-op server-side apply writes nothing and sends no event),
//!   so it settles.
//! * **Tenants also follow status.** A Tenant counts its objects' readiness, so for a Tenant's
//!   object a status change after our last apply (a `status` subresource entry newer than ours,
//!   [`status_after_ours`]) is reported too; the pipeline then reads the Tenant's objects again
//!   without writing what did not drift.
//! * **Deletes** carry no writer: every delete of a labelled object is reported, and the
//!   pipeline drops those the owner no longer lists (our own prune) or whose owner is being
//!   deleted (our finalizer, the garbage collector).
//! * **Not seen here.** Initial lists (a new or restarted watch, a relist after an expired
//!   resourceVersion) are ignored: they describe the present, not a change, and the grant
//!   already reconciles every template. Objects changed or deleted while no watch ran are
//!   healed by the safety resync, which reads every object.
//! * **Bounded.** Events go through a bounded channel; a full channel slows the watches (their
//!   `send` waits) and never drops an event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::KubeTemplate;
use api::constants::{
    FIELD_MANAGER, LABEL_BUCKET, LABEL_TEMPLATE_NAME, LABEL_TEMPLATE_NAMESPACE, LABEL_TENANT,
    LABEL_TENANT_NAMESPACE, TENANT_GROUP,
};
use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt as _;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::watches::{CHUNK, Kind, TemplateKey};

/// Capacity of the channel from the drift watches to the pipeline.
pub const CHANNEL: usize = 256;

/// How long a kind that could not be watched is left alone before a registration tries again.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(300);

/// A kind of managed object, without its version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKind {
    /// API group (`""` for the core group).
    pub group: String,
    /// Kind.
    pub kind: String,
}

impl GroupKind {
    /// The group and kind of `api_version` (`group/version` or `version`) and `kind`.
    pub fn of(api_version: &str, kind: &str) -> Self {
        let group = api_version
            .split_once('/')
            .map_or("", |(group, _)| group)
            .to_owned();
        Self {
            group,
            kind: kind.to_owned(),
        }
    }
}

impl std::fmt::Display for GroupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// A managed object an event was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedObject {
    /// Its kind.
    pub kind: GroupKind,
    /// Namespace (`None`: cluster-scoped).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ManagedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A managed object was changed by someone else, or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftEvent {
    /// The owner template (from the object's labels).
    pub key: TemplateKey,
    /// The object.
    pub object: ManagedObject,
    /// Whether it was deleted (else modified or created by someone else).
    pub deleted: bool,
}

/// Who made the change an event shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Our own apply (field manager `kubetemplater`) is the newest change.
    Ours,
    /// Someone else changed the object after (or in the same second as) our last apply, or we
    /// never applied it.
    Foreign,
}

/// Who last changed the object described by `meta` (see the module docs).
pub fn classify(meta: &ObjectMeta) -> Writer {
    let mut ours = None;
    let mut others = None;
    for entry in meta.managed_fields.iter().flatten() {
        if entry.subresource.as_deref().is_some_and(|s| !s.is_empty()) {
            continue;
        }
        let time = entry.time.as_ref().map(|t| t.0);
        let slot = if entry.manager.as_deref() == Some(FIELD_MANAGER) {
            &mut ours
        } else {
            &mut others
        };
        // `None < Some`: an entry without a time counts as the oldest.
        *slot = (*slot).max(Some(time));
    }
    match (ours, others) {
        (None, _) => Writer::Foreign,
        (Some(_), None) => Writer::Ours,
        (Some(ours), Some(others)) if ours > others => Writer::Ours,
        _ => Writer::Foreign,
    }
}

/// Whether a `status` subresource write is newer than (or as new as) our last apply: the object's
/// status moved since we wrote it.
pub fn status_after_ours(meta: &ObjectMeta) -> bool {
    let mut ours = None;
    let mut status = None;
    for entry in meta.managed_fields.iter().flatten() {
        let time = entry.time.as_ref().map(|t| t.0);
        match entry.subresource.as_deref() {
            Some("status") => status = status.max(Some(time)),
            Some(s) if !s.is_empty() => {}
            _ if entry.manager.as_deref() == Some(FIELD_MANAGER) => ours = ours.max(Some(time)),
            _ => {}
        }
    }
    match (status, ours) {
        (Some(status), Some(ours)) => status >= ours,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The owner of a managed object: a KubeTemplate by its owner labels, or a Tenant by its
/// controller owner reference or tracking labels; the bucket from the bucket label.
pub fn owner_of(meta: &ObjectMeta) -> Option<TemplateKey> {
    let labels = meta.labels.as_ref()?;
    let bucket: u32 = labels.get(LABEL_BUCKET)?.parse().ok()?;
    let label = |key: &str| labels.get(key).filter(|s| !s.is_empty()).cloned();
    if let (Some(namespace), Some(name)) =
        (label(LABEL_TEMPLATE_NAMESPACE), label(LABEL_TEMPLATE_NAME))
    {
        return Some(TemplateKey {
            bucket,
            kind: Kind::Template,
            namespace,
            name,
        });
    }
    let tenant_owner = meta.owner_references.iter().flatten().find(|o| {
        o.kind == "Tenant"
            && o.controller == Some(true)
            && o.api_version.starts_with(&format!("{TENANT_GROUP}/"))
    });
    if let (Some(owner), Some(namespace)) = (tenant_owner, meta.namespace.clone()) {
        return Some(TemplateKey {
            bucket,
            kind: Kind::Tenant,
            namespace,
            name: owner.name.clone(),
        });
    }
    Some(TemplateKey {
        bucket,
        kind: Kind::Tenant,
        namespace: label(LABEL_TENANT_NAMESPACE)?,
        name: label(LABEL_TENANT)?,
    })
}

/// Whether `template`'s spec lists `object` (same group, kind and name; same namespace, with
/// the template's namespace as the default, unless the object is cluster-scoped).
pub fn lists(template: &KubeTemplate, object: &ManagedObject) -> bool {
    let template_ns = template.namespace().unwrap_or_default();
    template.spec.templates.iter().any(|item| {
        let text = |key: &str| item.object.get(key).and_then(Value::as_str);
        let meta = |key: &str| {
            item.object
                .get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
        };
        let (Some(api_version), Some(kind), Some(name)) =
            (text("apiVersion"), text("kind"), meta("name"))
        else {
            return false;
        };
        if GroupKind::of(api_version, kind) != object.kind || name != object.name {
            return false;
        }
        match &object.namespace {
            None => true,
            Some(ns) => {
                meta("namespace")
                    .filter(|n| !n.is_empty())
                    .unwrap_or(&template_ns)
                    == ns
            }
        }
    })
}

/// The kinds (apiVersion, kind) of the objects `template` has applied (`status.appliedResources`)
/// and, with `spec`, of those its spec lists.
pub fn kinds_of(template: &KubeTemplate, spec: bool) -> BTreeSet<(String, String)> {
    let mut kinds: BTreeSet<(String, String)> = template
        .status
        .iter()
        .flat_map(|s| &s.applied_resources)
        .map(|r| (r.api_version.clone(), r.kind.clone()))
        .collect();
    if spec {
        for item in &template.spec.templates {
            let text = |key: &str| {
                item.object
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            if let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) {
                kinds.insert((api_version.to_owned(), kind.to_owned()));
            }
        }
    }
    kinds
}

enum KindState {
    /// Discovery in progress.
    Resolving,
    /// Watched in every chunk.
    Watching {
        resource: ApiResource,
        cancel: CancellationToken,
        id: u64,
    },
    /// Not served or not watchable; left alone until `since + UNAVAILABLE_RETRY`.
    Unavailable { since: Instant },
}

struct Chunk {
    buckets: BTreeSet<u32>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct State {
    next_id: u64,
    chunks: BTreeMap<u64, Chunk>,
    chunk_of: BTreeMap<u32, u64>,
    kinds: BTreeMap<GroupKind, KindState>,
    /// Kinds whose unavailability was logged at warn level already (later: debug).
    reported: BTreeSet<GroupKind>,
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The drift watches of one worker: one metadata-only watch per (kind × chunk of owned
/// buckets). Cheap to clone (shared state).
#[derive(Clone)]
pub struct DriftWatches {
    client: kube::Client,
    events: mpsc::Sender<DriftEvent>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for DriftWatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("DriftWatches")
            .field("chunks", &state.chunks.len())
            .field("buckets", &state.chunk_of.len())
            .field("kinds", &state.kinds.len())
            .finish()
    }
}

impl DriftWatches {
    /// No watches yet; events go to `events` (bounded: see [`CHANNEL`]).
    pub fn new(client: kube::Client, events: mpsc::Sender<DriftEvent>) -> Self {
        Self {
            client,
            events,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every mutation below is a few map operations that leave the state consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Buckets being watched.
    pub fn buckets(&self) -> BTreeSet<u32> {
        self.lock().chunk_of.keys().copied().collect()
    }

    /// Kinds being watched.
    pub fn kinds(&self) -> BTreeSet<GroupKind> {
        self.lock()
            .kinds
            .iter()
            .filter(|(_, s)| matches!(s, KindState::Watching { .. }))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Watches `kinds` ((apiVersion, kind) pairs) in every chunk from now on. Known kinds cost a
    /// map lookup; a new one is resolved by discovery in the background. Needs a tokio runtime.
    pub fn register(&self, kinds: impl IntoIterator<Item = (String, String)>) {
        let mut state = self.lock();
        for (api_version, kind) in kinds {
            let key = GroupKind::of(&api_version, &kind);
            match state.kinds.get(&key) {
                Some(KindState::Resolving | KindState::Watching { .. }) => continue,
                Some(KindState::Unavailable { since }) if since.elapsed() < UNAVAILABLE_RETRY => {
                    continue;
                }
                _ => {}
            }
            state.kinds.insert(key.clone(), KindState::Resolving);
            let this = self.clone();
            tokio::spawn(async move { this.resolve(key, api_version).await });
        }
    }

    async fn resolve(&self, key: GroupKind, api_version: String) {
        let (group, version) = api_version
            .split_once('/')
            .unwrap_or(("", api_version.as_str()));
        let gvk = GroupVersionKind::gvk(group, version, &key.kind);
        let found = kube::discovery::pinned_kind(&self.client, &gvk).await;
        let mut state = self.lock();
        if !matches!(state.kinds.get(&key), Some(KindState::Resolving)) {
            // Cleared meanwhile (shutdown).
            return;
        }
        let (resource, caps) = match found {
            Ok(found) => found,
            Err(error) => {
                let reason = format!("not served by the API server: {error}");
                Self::unavailable(&mut state, &key, &reason);
                return;
            }
        };
        if !caps.supports_operation(kube::discovery::verbs::WATCH)
            || !caps.supports_operation(kube::discovery::verbs::LIST)
        {
            Self::unavailable(&mut state, &key, "it cannot be listed and watched");
            return;
        }
        let cancel = CancellationToken::new();
        let id = state.next_id();
        let chunks: Vec<(BTreeSet<u32>, CancellationToken)> = state
            .chunks
            .values()
            .map(|c| (c.buckets.clone(), c.cancel.clone()))
            .collect();
        for (buckets, chunk_cancel) in chunks {
            self.spawn_watch(&key, id, &resource, &buckets, &chunk_cancel, &cancel);
        }
        tracing::debug!(kind = %key, "watching managed objects for drift");
        state.kinds.insert(
            key,
            KindState::Watching {
                resource,
                cancel,
                id,
            },
        );
    }

    fn unavailable(state: &mut State, key: &GroupKind, reason: &str) {
        if let Some(KindState::Watching { cancel, .. }) = state.kinds.get(key) {
            cancel.cancel();
        }
        state.kinds.insert(
            key.clone(),
            KindState::Unavailable {
                since: Instant::now(),
            },
        );
        if state.reported.insert(key.clone()) {
            tracing::warn!(kind = %key, %reason, "not watching this kind for drift; the safety resync still checks its objects");
        } else {
            tracing::debug!(kind = %key, %reason, "still not watching this kind for drift");
        }
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
            self.start_chunk(&mut state, group.iter().copied().collect());
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

    /// Stops every watch and forgets the kinds.
    pub fn clear(&self) {
        let mut state = self.lock();
        for chunk in state.chunks.values() {
            chunk.cancel.cancel();
        }
        for kind in state.kinds.values() {
            if let KindState::Watching { cancel, .. } = kind {
                cancel.cancel();
            }
        }
        state.chunks.clear();
        state.chunk_of.clear();
        state.kinds.clear();
    }

    fn start_chunk(&self, state: &mut State, buckets: BTreeSet<u32>) {
        let id = state.next_id();
        let cancel = CancellationToken::new();
        for (key, kind) in &state.kinds {
            if let KindState::Watching {
                resource,
                cancel: kind_cancel,
                id: kind_id,
            } = kind
            {
                self.spawn_watch(key, *kind_id, resource, &buckets, &cancel, kind_cancel);
            }
        }
        for b in &buckets {
            state.chunk_of.insert(*b, id);
        }
        state.chunks.insert(id, Chunk { buckets, cancel });
    }

    /// One watch of `kind` over `buckets`, until either token is cancelled.
    fn spawn_watch(
        &self,
        kind: &GroupKind,
        kind_id: u64,
        resource: &ApiResource,
        buckets: &BTreeSet<u32>,
        chunk_cancel: &CancellationToken,
        kind_cancel: &CancellationToken,
    ) {
        let selector = format!(
            "{LABEL_BUCKET} in ({})",
            buckets
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        // `PartialObjectMeta` makes every request metadata-only (`PartialObjectMetadata`).
        let api: Api<PartialObjectMeta<DynamicObject>> =
            Api::all_with(self.client.clone(), resource);
        let this = self.clone();
        let kind = kind.clone();
        let chunk_cancel = chunk_cancel.clone();
        let kind_cancel = kind_cancel.clone();
        tokio::spawn(async move {
            let config = watcher::Config::default().labels(&selector);
            let mut stream = watcher(api, config).default_backoff().boxed();
            let mut initial = false;
            loop {
                let event = tokio::select! {
                    () = chunk_cancel.cancelled() => return,
                    () = kind_cancel.cancelled() => return,
                    e = stream.next() => e,
                };
                let (meta, deleted) = match event {
                    None => return,
                    Some(Err(error)) => {
                        if let Some(code) = refused(&error) {
                            let reason = format!("its watch was refused ({code}): {error}");
                            let mut state = this.lock();
                            let current = matches!(
                                state.kinds.get(&kind),
                                Some(KindState::Watching { id, .. }) if *id == kind_id
                            );
                            if current {
                                Self::unavailable(&mut state, &kind, &reason);
                            }
                            return;
                        }
                        tracing::warn!(%error, %kind, %selector, "drift watch failed; retrying");
                        continue;
                    }
                    Some(Ok(watcher::Event::Init)) => {
                        initial = true;
                        continue;
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        initial = false;
                        continue;
                    }
                    Some(Ok(watcher::Event::InitApply(_))) => continue,
                    Some(Ok(watcher::Event::Apply(meta))) => {
                        let relevant = match classify(&meta.metadata) {
                            Writer::Foreign => true,
                            // A Tenant's objects: their readiness moved.
                            Writer::Ours => {
                                owner_of(&meta.metadata).is_some_and(|k| k.kind == Kind::Tenant)
                                    && status_after_ours(&meta.metadata)
                            }
                        };
                        if initial || !relevant {
                            continue;
                        }
                        (meta.metadata, false)
                    }
                    Some(Ok(watcher::Event::Delete(meta))) => (meta.metadata, true),
                };
                let Some(key) = owner_of(&meta) else {
                    continue;
                };
                let Some(name) = meta.name else { continue };
                let object = ManagedObject {
                    kind: kind.clone(),
                    namespace: meta.namespace,
                    name,
                };
                tracing::debug!(%object, owner = %key, deleted, "managed object changed by someone else");
                // Backpressure: a full channel slows the watch, it never drops events.
                if this
                    .events
                    .send(DriftEvent {
                        key,
                        object,
                        deleted,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// The HTTP status of a watch error that will not go away by retrying: 404 (the kind is gone,
/// e.g. its CRD was deleted) or 403 (the worker may not list or watch it).
fn refused(error: &watcher::Error) -> Option<u16> {
    let code = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => status.code,
        _ => return None,
    };
    matches!(code, 403 | 404).then_some(code)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test fixtures")]

    use super::*;
    use api::KubeTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
    use serde_json::json;

    fn entry(manager: &str, operation: &str, second: i64, sub: Option<&str>) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            subresource: sub.map(Into::into),
            time: Some(Time(jiff::Timestamp::from_second(second).unwrap())),
            ..ManagedFieldsEntry::default()
        }
    }

    fn meta(entries: Vec<ManagedFieldsEntry>) -> ObjectMeta {
        ObjectMeta {
            managed_fields: Some(entries),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn our_apply_is_ours() {
        assert_eq!(
            classify(&meta(vec![entry(FIELD_MANAGER, "Apply", 100, None)])),
            Writer::Ours
        );
        // An older write by someone else, then our apply.
        assert_eq!(
            classify(&meta(vec![
                entry("kubectl-edit", "Update", 50, None),
                entry(FIELD_MANAGER, "Apply", 100, None),
            ])),
            Writer::Ours
        );
    }

    #[test]
    fn a_newer_foreign_write_is_foreign() {
        assert_eq!(
            classify(&meta(vec![
                entry(FIELD_MANAGER, "Apply", 100, None),
                entry("kubectl-edit", "Update", 101, None),
            ])),
            Writer::Foreign
        );
        // A foreign server-side apply too.
        assert_eq!(
            classify(&meta(vec![
                entry(FIELD_MANAGER, "Apply", 100, None),
                entry("someone", "Apply", 130, None),
            ])),
            Writer::Foreign
        );
    }

    #[test]
    fn a_tie_is_foreign() {
        assert_eq!(
            classify(&meta(vec![
                entry(FIELD_MANAGER, "Apply", 100, None),
                entry("kubectl-edit", "Update", 100, None),
            ])),
            Writer::Foreign
        );
    }

    #[test]
    fn status_writes_are_ignored() {
        assert_eq!(
            classify(&meta(vec![
                entry(FIELD_MANAGER, "Apply", 100, None),
                entry("kube-controller-manager", "Update", 200, Some("status")),
            ])),
            Writer::Ours
        );
    }

    #[test]
    fn never_applied_by_us_is_foreign() {
        assert_eq!(classify(&meta(vec![])), Writer::Foreign);
        assert_eq!(classify(&ObjectMeta::default()), Writer::Foreign);
        assert_eq!(
            classify(&meta(vec![entry("kubectl-create", "Update", 1, None)])),
            Writer::Foreign
        );
    }

    #[test]
    fn an_entry_without_time_is_oldest() {
        let mut untimed = entry("someone", "Update", 0, None);
        untimed.time = None;
        assert_eq!(
            classify(&meta(vec![untimed, entry(FIELD_MANAGER, "Apply", 5, None)])),
            Writer::Ours
        );
    }

    fn labelled(labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn owner_from_labels() {
        let meta = labelled(&[
            (LABEL_BUCKET, "17"),
            (LABEL_TEMPLATE_NAME, "web"),
            (LABEL_TEMPLATE_NAMESPACE, "team-a"),
        ]);
        assert_eq!(
            owner_of(&meta),
            Some(TemplateKey {
                bucket: 17,
                kind: Kind::Template,
                namespace: "team-a".into(),
                name: "web".into()
            })
        );
        assert_eq!(
            owner_of(&labelled(&[
                (LABEL_BUCKET, "x"),
                (LABEL_TEMPLATE_NAME, "web"),
                (LABEL_TEMPLATE_NAMESPACE, "team-a"),
            ])),
            None
        );
        assert_eq!(
            owner_of(&labelled(&[
                (LABEL_BUCKET, "1"),
                (LABEL_TEMPLATE_NAME, "web")
            ])),
            None
        );
        assert_eq!(owner_of(&ObjectMeta::default()), None);
    }

    fn template(items: Value) -> KubeTemplate {
        let spec: KubeTemplateSpec = serde_json::from_value(json!({ "templates": items })).unwrap();
        let mut kt = KubeTemplate::new("web", spec);
        kt.metadata.namespace = Some("team-a".into());
        kt
    }

    fn object(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> ManagedObject {
        ManagedObject {
            kind: GroupKind {
                group: group.into(),
                kind: kind.into(),
            },
            namespace: namespace.map(Into::into),
            name: name.into(),
        }
    }

    #[test]
    fn listed_objects() {
        let kt = template(json!([
            {"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}},
            {"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "other"}}},
            {"object": {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}}},
        ]));
        assert!(lists(&kt, &object("", "ConfigMap", Some("team-a"), "a")));
        assert!(!lists(&kt, &object("", "ConfigMap", Some("other"), "a")));
        assert!(lists(&kt, &object("", "ConfigMap", Some("other"), "b")));
        assert!(!lists(&kt, &object("", "Secret", Some("team-a"), "a")));
        assert!(lists(
            &kt,
            &object("rbac.authorization.k8s.io", "ClusterRole", None, "r")
        ));
        assert!(!lists(
            &kt,
            &object("", "ConfigMap", Some("team-a"), "gone")
        ));
    }

    #[test]
    fn kinds_from_spec_and_status() {
        let mut kt = template(json!([
            {"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}},
            {"object": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}},
            {"object": {"kind": "Broken", "metadata": {"name": "x"}}},
        ]));
        kt.status = Some(
            serde_json::from_value(json!({"appliedResources": [
                {"apiVersion": "v1", "kind": "Secret", "name": "s", "namespace": "team-a"}
            ]}))
            .unwrap(),
        );
        let all = kinds_of(&kt, true);
        assert_eq!(
            all,
            BTreeSet::from([
                ("apps/v1".to_owned(), "Deployment".to_owned()),
                ("v1".to_owned(), "ConfigMap".to_owned()),
                ("v1".to_owned(), "Secret".to_owned()),
            ])
        );
        assert_eq!(
            kinds_of(&kt, false),
            BTreeSet::from([("v1".to_owned(), "Secret".to_owned())])
        );
    }

    #[test]
    fn group_kind() {
        assert_eq!(GroupKind::of("v1", "ConfigMap").group, "");
        assert_eq!(GroupKind::of("apps/v1", "Deployment").group, "apps");
        assert_eq!(
            GroupKind::of("apps/v1", "Deployment").to_string(),
            "Deployment.apps"
        );
    }

    #[test]
    fn refused_watches_stop() {
        let status = |code| {
            Box::new(kube::core::Status {
                code,
                ..kube::core::Status::default()
            })
        };
        assert_eq!(
            refused(&watcher::Error::InitialListFailed(kube::Error::Api(
                status(404)
            ))),
            Some(404)
        );
        assert_eq!(refused(&watcher::Error::WatchError(status(403))), Some(403));
        assert_eq!(refused(&watcher::Error::WatchError(status(410))), None);
        assert_eq!(refused(&watcher::Error::NoResourceVersion), None);
    }
}
