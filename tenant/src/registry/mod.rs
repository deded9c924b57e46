//! The registry controller, run by the coordinator leader: reads each TenantRegistry's table
//! every `syncInterval` (and at once when the registry or a referencing template changes),
//! converges its Tenants ([`crate::sync`]) and keeps the TenantRegistry and TenantTemplate
//! statuses.
//!
//! ```text
//! watch TenantRegistries, TenantTemplates (reflectors), Tenants (projected: a few fields each)
//! tick ─► due registries (bounded: `concurrency` at once, one sync per registry at a time)
//!          └─ sync: Secrets → settings → pool (kept while the settings are unchanged)
//!                   → one SELECT, streamed → plan → apply Tenants (SSA, bounded) → delete
//!                   → events only when something changed
//!      ─► statuses whose facts changed (at most one write per object every `status_interval`)
//! ```
//!
//! A failed read changes no Tenant (fail static): the Ready condition and a
//! `DatabaseQueryFailed` event (once per distinct failure) say why. When nothing changed, a sync
//! costs one query and no API write.

pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::constants::condition::READY;
use api::constants::{FIELD_MANAGER, LABEL_BUCKET, LABEL_TENANT_REGISTRY};
use api::{SecretRef, Tenant, TenantRegistry, TenantTemplate};
use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource as _, ResourceExt as _};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::datasource::{self, Secrets, Source, SourceError};
use crate::metrics::RegistryMetrics;
use crate::sync::{self, ANNOTATION_CONFIRM_DELETIONS, Blocked, ExistingTenant};
use api::conditions;
use status::{LastRead, RegistryFacts, TemplateFacts};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Buckets of the shard map (the Tenants' bucket labels).
    pub buckets: NonZeroU32,
    /// Registries synced at once (the original's `--registry-concurrency`, 3).
    pub concurrency: usize,
    /// Tenant writes in flight per sync.
    pub write_concurrency: usize,
    /// Longest a read of a table may take.
    pub read_timeout: Duration,
    /// Shortest time between two status writes of one object.
    pub status_interval: Duration,
    /// Who publishes the events (`reportingController`, `reportingInstance`).
    pub reporter: Reporter,
}

impl Config {
    /// Defaults: 3 registries at once, 16 writes per sync, 60 s reads, statuses at most every 2 s.
    pub fn new(buckets: NonZeroU32, instance: impl Into<String>) -> Self {
        Self {
            buckets,
            concurrency: 3,
            write_concurrency: 16,
            read_timeout: Duration::from_secs(60),
            status_interval: Duration::from_secs(2),
            reporter: Reporter {
                controller: "kubetemplater-coordinator".to_owned(),
                instance: Some(instance.into()),
            },
        }
    }
}

/// A registry's sync interval: the spec's `syncInterval` (`^[0-9]+(s|m|h)$`); anything else is
/// 30 s, as the original.
pub fn sync_interval(text: &str) -> Duration {
    parse_sync_interval(text).unwrap_or(Duration::from_secs(30))
}

/// `syncInterval` parsed: a number followed by s, m or h, more than zero; `None` otherwise.
pub fn parse_sync_interval(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

type Key = (String, String);

fn key_of<K: kube::Resource>(object: &K) -> Key {
    (
        object.meta().namespace.clone().unwrap_or_default(),
        object.meta().name.clone().unwrap_or_default(),
    )
}

/// The projection of a Tenant the controller keeps.
fn project(tenant: &Tenant) -> Option<(Key, String, ExistingTenant)> {
    let meta = &tenant.metadata;
    let registry = meta.labels.as_ref()?.get(LABEL_TENANT_REGISTRY)?.clone();
    let namespace = meta.namespace.clone()?;
    let name = meta.name.clone()?;
    let empty = BTreeMap::new();
    let existing = ExistingTenant {
        inputs: sync::existing_digest(meta.annotations.as_ref().unwrap_or(&empty)),
        has_bucket: meta
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(LABEL_BUCKET)),
        ready: tenant
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, READY)),
        deleting: meta.deletion_timestamp.is_some(),
        template: tenant.spec.template_ref.clone(),
    };
    Some(((namespace, registry), name, existing))
}

/// Per-registry bookkeeping.
#[derive(Debug)]
struct RegistryState {
    next_sync: Instant,
    due: bool,
    in_flight: bool,
    /// Generation and confirm annotation last seen: a change makes the registry due.
    seen: (Option<i64>, Option<String>),
    read: LastRead,
    synced_generation: Option<i64>,
    desired: Option<usize>,
    problems: usize,
    blocked: Option<Blocked>,
    /// Last failure and problem set events were published for (not repeated every sync).
    reported_failure: Option<String>,
    reported_problems: Option<u64>,
    status_due: bool,
    status_written: Option<Instant>,
}

impl RegistryState {
    fn new() -> Self {
        Self {
            next_sync: Instant::now(),
            due: true,
            in_flight: false,
            seen: (None, None),
            read: LastRead::None,
            synced_generation: None,
            desired: None,
            problems: 0,
            blocked: None,
            reported_failure: None,
            reported_problems: None,
            status_due: true,
            status_written: None,
        }
    }
}

#[derive(Debug, Default)]
struct TemplateState {
    generation: Option<i64>,
    status_due: bool,
    status_written: Option<Instant>,
}

/// What a sync reports back to the loop.
#[derive(Debug)]
struct Synced {
    key: Key,
    generation: Option<i64>,
    outcome: Result<SyncOutcome, SourceError>,
}

#[derive(Debug)]
struct SyncOutcome {
    desired: usize,
    problems: usize,
    problems_digest: u64,
    blocked: Option<Blocked>,
    /// Tenants written, as the projection will show them once the watch delivers them.
    written: Vec<(String, ExistingTenant)>,
}

/// Reads Secrets of one namespace through the API.
struct KubeSecrets(Api<Secret>);

impl Secrets for KubeSecrets {
    async fn value(&self, r: &SecretRef) -> Result<Vec<u8>, String> {
        let secret = self.0.get_opt(&r.name).await.map_err(|e| match &e {
            kube::Error::Api(s) if s.code == 403 => format!("forbidden: {}", s.message),
            _ => e.to_string(),
        })?;
        let secret = secret.ok_or_else(|| "the Secret does not exist".to_owned())?;
        if let Some(value) = secret.data.as_ref().and_then(|d| d.get(&r.key)) {
            return Ok(value.0.clone());
        }
        if let Some(value) = secret.string_data.as_ref().and_then(|d| d.get(&r.key)) {
            return Ok(value.clone().into_bytes());
        }
        Err("the Secret has no such key".to_owned())
    }
}

struct Shared {
    client: Client,
    config: Config,
    recorder: Recorder,
    metrics: RegistryMetrics,
    sources: Mutex<HashMap<Key, Source>>,
    syncs: Arc<Semaphore>,
}

/// Runs the controller until `cancel`.
pub async fn run(
    client: Client,
    config: Config,
    metrics: RegistryMetrics,
    cancel: CancellationToken,
) {
    let shared = Arc::new(Shared {
        recorder: Recorder::new(client.clone(), config.reporter.clone()),
        syncs: Arc::new(Semaphore::new(config.concurrency.max(1))),
        client: client.clone(),
        config,
        metrics,
        sources: Mutex::new(HashMap::new()),
    });
    let (registry_store, registry_writer) = reflector::store::<TenantRegistry>();
    let mut registries = reflector::reflector(
        registry_writer,
        watcher::watcher(
            Api::<TenantRegistry>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .boxed();
    let (template_store, template_writer) = reflector::store::<TenantTemplate>();
    let mut templates = reflector::reflector(
        template_writer,
        watcher::watcher(
            Api::<TenantTemplate>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .boxed();
    let mut tenants = watcher::watcher(
        Api::<Tenant>::all(client.clone()),
        watcher::Config::default().labels(LABEL_TENANT_REGISTRY),
    )
    .default_backoff()
    .boxed();

    let mut state = Loop {
        shared,
        registry_store,
        template_store,
        registries: HashMap::new(),
        templates: HashMap::new(),
        tenants: HashMap::new(),
        initial_tenants: None,
        tenants_synced: false,
    };
    let (done_tx, mut done_rx) = mpsc::channel::<Synced>(64);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(event) = registries.next() => match event {
                Ok(event) => state.on_registry(event),
                Err(error) => tracing::warn!(%error, "watching TenantRegistries"),
            },
            Some(event) = templates.next() => match event {
                Ok(event) => state.on_template(event),
                Err(error) => tracing::warn!(%error, "watching TenantTemplates"),
            },
            Some(event) = tenants.next() => match event {
                Ok(event) => state.on_tenant(event),
                Err(error) => tracing::warn!(%error, "watching Tenants"),
            },
            Some(done) = done_rx.recv() => state.on_synced(done).await,
            _ = tick.tick() => state.on_tick(&done_tx, &cancel).await,
        }
    }
    for source in state.shared.sources.lock().await.drain().map(|(_, s)| s) {
        source.close().await;
    }
}

struct Loop {
    shared: Arc<Shared>,
    registry_store: Store<TenantRegistry>,
    template_store: Store<TenantTemplate>,
    registries: HashMap<Key, RegistryState>,
    templates: HashMap<Key, TemplateState>,
    /// Tenants by registry, then by name.
    tenants: HashMap<Key, HashMap<String, ExistingTenant>>,
    /// Tenants of a relist in progress (swapped in at its end).
    initial_tenants: Option<HashMap<Key, HashMap<String, ExistingTenant>>>,
    tenants_synced: bool,
}

impl Loop {
    fn on_registry(&mut self, event: Event<TenantRegistry>) {
        match event {
            Event::Apply(registry) | Event::InitApply(registry) => {
                let key = key_of(&registry);
                let seen = (
                    registry.metadata.generation,
                    registry
                        .annotations()
                        .get(ANNOTATION_CONFIRM_DELETIONS)
                        .cloned(),
                );
                if !self.registries.contains_key(&key) {
                    // Its templates' `Valid` says whether it exists.
                    self.templates_status_due(&key);
                }
                let state = self
                    .registries
                    .entry(key)
                    .or_insert_with(RegistryState::new);
                if state.seen != seen {
                    state.seen = seen;
                    state.due = true;
                }
                state.status_due = true;
            }
            Event::Delete(registry) => {
                let key = key_of(&registry);
                self.registries.remove(&key);
                self.templates_status_due(&key);
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    if let Some(source) = shared.sources.lock().await.remove(&key) {
                        source.close().await;
                    }
                    shared.metrics.forget(&key.0, &key.1);
                });
            }
            Event::Init | Event::InitDone => {}
        }
    }

    /// The templates referencing `registry` get their status recomputed.
    fn templates_status_due(&mut self, registry: &Key) {
        for template in self.template_store.state() {
            if template.metadata.namespace.as_deref() == Some(registry.0.as_str())
                && template.spec.registry_id == registry.1
                && let Some(state) = self.templates.get_mut(&key_of(template.as_ref()))
            {
                state.status_due = true;
            }
        }
    }

    fn on_template(&mut self, event: Event<TenantTemplate>) {
        match event {
            Event::Apply(template) | Event::InitApply(template) => {
                let (namespace, name) = key_of(&template);
                let generation = template.metadata.generation;
                let state = self.templates.entry((namespace.clone(), name)).or_default();
                if state.generation != generation {
                    state.generation = generation;
                    state.status_due = true;
                    if let Some(registry) = self
                        .registries
                        .get_mut(&(namespace, template.spec.registry_id.clone()))
                    {
                        registry.due = true;
                    }
                }
            }
            Event::Delete(template) => {
                let (namespace, name) = key_of(&template);
                self.templates.remove(&(namespace.clone(), name));
                if let Some(registry) = self
                    .registries
                    .get_mut(&(namespace, template.spec.registry_id.clone()))
                {
                    registry.due = true;
                }
            }
            Event::Init | Event::InitDone => {}
        }
    }

    fn on_tenant(&mut self, event: Event<Tenant>) {
        match event {
            Event::Init => self.initial_tenants = Some(HashMap::new()),
            Event::InitApply(tenant) => {
                if let (Some(initial), Some((key, name, existing))) =
                    (self.initial_tenants.as_mut(), project(&tenant))
                {
                    initial.entry(key).or_default().insert(name, existing);
                }
            }
            Event::InitDone => {
                if let Some(initial) = self.initial_tenants.take() {
                    self.tenants = initial;
                }
                self.tenants_synced = true;
                for state in self.registries.values_mut() {
                    state.status_due = true;
                }
                for state in self.templates.values_mut() {
                    state.status_due = true;
                }
            }
            Event::Apply(tenant) => {
                let Some((key, name, existing)) = project(&tenant) else {
                    return;
                };
                let template = existing.template.clone();
                let changed = self
                    .tenants
                    .entry(key.clone())
                    .or_default()
                    .insert(name, existing.clone())
                    .is_none_or(|old| old != existing);
                if changed {
                    self.status_due(&key, &template);
                }
            }
            Event::Delete(tenant) => {
                let Some((key, name, existing)) = project(&tenant) else {
                    return;
                };
                if let Some(tenants) = self.tenants.get_mut(&key) {
                    tenants.remove(&name);
                }
                self.status_due(&key, &existing.template);
                // A desired Tenant that was being deleted is written again by the next sync.
                if let Some(state) = self.registries.get_mut(&key) {
                    state.due = true;
                }
            }
        }
    }

    fn status_due(&mut self, registry: &Key, template: &str) {
        if let Some(state) = self.registries.get_mut(registry) {
            state.status_due = true;
        }
        if let Some(state) = self
            .templates
            .get_mut(&(registry.0.clone(), template.to_owned()))
        {
            state.status_due = true;
        }
    }

    async fn on_synced(&mut self, done: Synced) {
        let Some(state) = self.registries.get_mut(&done.key) else {
            return;
        };
        state.in_flight = false;
        state.status_due = true;
        state.synced_generation = done.generation;
        match done.outcome {
            Ok(outcome) => {
                // What was written counts as existing at once: the next sync may run before the
                // watch delivers it, and would write it again. The watch's event replaces the
                // entry; readiness and deletion stay as the watch last said.
                let tenants = self.tenants.entry(done.key.clone()).or_default();
                for (name, written) in outcome.written {
                    match tenants.get_mut(&name) {
                        Some(existing) => {
                            existing.inputs = written.inputs;
                            existing.has_bucket = written.has_bucket;
                            existing.template = written.template;
                        }
                        None => {
                            tenants.insert(name, written);
                        }
                    }
                }
                // Logged when the brake engages or its count changes, not on every sync.
                if let Some(blocked) = &outcome.blocked
                    && state.blocked.as_ref().map(|b| b.pending) != Some(blocked.pending)
                {
                    tracing::warn!(namespace = %done.key.0, registry = %done.key.1, pending = blocked.pending, "deletions held back: {}", blocked.message);
                }
                state.read = LastRead::Ok;
                state.desired = Some(outcome.desired);
                state.problems = outcome.problems;
                state.blocked = outcome.blocked;
                state.reported_failure = None;
                state.reported_problems = Some(outcome.problems_digest);
            }
            Err(error) => {
                state.reported_failure = Some(error.to_string());
                state.read = LastRead::Failed(error);
            }
        }
    }

    async fn on_tick(&mut self, done: &mpsc::Sender<Synced>, cancel: &CancellationToken) {
        // Before the first list of Tenants, a sync would see none and create them all again.
        if !self.tenants_synced {
            return;
        }
        let now = Instant::now();
        let keys: Vec<Key> = self.registries.keys().cloned().collect();
        for key in keys {
            self.maybe_sync(&key, now, done, cancel);
            self.maybe_write_registry_status(&key, now).await;
        }
        let keys: Vec<Key> = self.templates.keys().cloned().collect();
        for key in keys {
            self.maybe_write_template_status(&key, now).await;
        }
    }

    fn maybe_sync(
        &mut self,
        key: &Key,
        now: Instant,
        done: &mpsc::Sender<Synced>,
        cancel: &CancellationToken,
    ) {
        let Some(state) = self.registries.get_mut(key) else {
            return;
        };
        if state.in_flight || !(state.due || now >= state.next_sync) {
            return;
        }
        let Some(registry) = self
            .registry_store
            .get(&ObjectRef::new(&key.1).within(&key.0))
        else {
            return;
        };
        if registry.metadata.deletion_timestamp.is_some() {
            return;
        }
        // All `concurrency` syncs busy: this registry waits for the next tick.
        let Ok(permit) = Arc::clone(&self.shared.syncs).try_acquire_owned() else {
            return;
        };
        state.in_flight = true;
        state.due = false;
        state.next_sync = now + sync_interval(&registry.spec.source.sync_interval);
        let templates: Vec<Arc<TenantTemplate>> = self
            .template_store
            .state()
            .into_iter()
            .filter(|t| {
                t.metadata.namespace.as_deref() == Some(key.0.as_str())
                    && t.spec.registry_id == key.1
                    && t.metadata.deletion_timestamp.is_none()
            })
            .collect();
        let existing = self.tenants.get(key).cloned().unwrap_or_default();
        let reported = (state.reported_failure.clone(), state.reported_problems);
        let shared = Arc::clone(&self.shared);
        let (done, cancel, key) = (done.clone(), cancel.clone(), key.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let generation = registry.metadata.generation;
            let outcome = tokio::select! {
                () = cancel.cancelled() => return,
                outcome = shared.sync(&registry, &templates, &existing, reported) => outcome,
            };
            let _ = done
                .send(Synced {
                    key,
                    generation,
                    outcome,
                })
                .await;
        });
    }

    async fn maybe_write_registry_status(&mut self, key: &Key, now: Instant) {
        let Some(state) = self.registries.get_mut(key) else {
            return;
        };
        let interval = self.shared.config.status_interval;
        if !state.status_due || state.status_written.is_some_and(|t| now < t + interval) {
            return;
        }
        state.status_due = false;
        let Some(registry) = self
            .registry_store
            .get(&ObjectRef::new(&key.1).within(&key.0))
        else {
            return;
        };
        let tenants = self.tenants.get(key);
        let ready = tenants.map_or(0, |t| t.values().filter(|e| e.ready).count());
        let total = tenants.map_or(0, HashMap::len);
        let templates = self
            .template_store
            .state()
            .iter()
            .filter(|t| {
                t.metadata.namespace.as_deref() == Some(key.0.as_str())
                    && t.spec.registry_id == key.1
            })
            .count();
        let facts = RegistryFacts {
            observed_generation: state.synced_generation,
            templates,
            desired: state.desired,
            ready,
            failed: total - ready,
            read: &state.read,
            problems: state.problems,
            blocked: state.blocked.as_ref(),
        };
        self.shared.metrics.set(
            &key.0,
            &key.1,
            facts.desired.unwrap_or(0),
            ready,
            total - ready,
        );
        let previous = registry.status.clone().unwrap_or_default();
        let status = status::registry_status(&previous, &facts);
        if !status::registry_differs(registry.status.as_ref(), &status) {
            return;
        }
        state.status_written = Some(now);
        let api: Api<TenantRegistry> = Api::namespaced(self.shared.client.clone(), &key.0);
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.shared.metrics.observe_write("registry_status"),
            Err(error) => {
                tracing::warn!(namespace = %key.0, registry = %key.1, %error, "writing the TenantRegistry status");
                state.status_due = true;
            }
        }
    }

    async fn maybe_write_template_status(&mut self, key: &Key, now: Instant) {
        let Some(state) = self.templates.get_mut(key) else {
            return;
        };
        let interval = self.shared.config.status_interval;
        if !state.status_due || state.status_written.is_some_and(|t| now < t + interval) {
            return;
        }
        state.status_due = false;
        let Some(template) = self
            .template_store
            .get(&ObjectRef::new(&key.1).within(&key.0))
        else {
            return;
        };
        let registry_key = (key.0.clone(), template.spec.registry_id.clone());
        let (total, ready) = self.tenants.get(&registry_key).map_or((0, 0), |tenants| {
            tenants
                .values()
                .filter(|e| e.template == key.1)
                .fold((0, 0), |(t, r), e| (t + 1, r + usize::from(e.ready)))
        });
        let problems: Vec<String> = engine::dag::validate_template(&template.spec)
            .iter()
            .map(ToString::to_string)
            .collect();
        let facts = TemplateFacts {
            generation: template.metadata.generation,
            total,
            ready,
            problems: &problems,
            registry_found: self.registries.contains_key(&registry_key),
            registry: &template.spec.registry_id,
        };
        let previous = template.status.clone().unwrap_or_default();
        let status = status::template_status(&previous, &facts);
        if !status::template_differs(template.status.as_ref(), &status) {
            return;
        }
        state.status_written = Some(now);
        let api: Api<TenantTemplate> = Api::namespaced(self.shared.client.clone(), &key.0);
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.shared.metrics.observe_write("template_status"),
            Err(error) => {
                tracing::warn!(namespace = %key.0, template = %key.1, %error, "writing the TenantTemplate status");
                state.status_due = true;
            }
        }
    }
}

impl Shared {
    /// One sync of one registry.
    async fn sync(
        &self,
        registry: &TenantRegistry,
        templates: &[Arc<TenantTemplate>],
        existing: &HashMap<String, ExistingTenant>,
        reported: (Option<String>, Option<u64>),
    ) -> Result<SyncOutcome, SourceError> {
        let started = Instant::now();
        let (namespace, name) = key_of(registry);
        let result = self.read(registry, &namespace, &name).await;
        let rows = match result {
            Ok(rows) => rows,
            Err(error) => {
                self.metrics.observe_sync("read_failed", started.elapsed());
                if reported.0.as_deref() != Some(error.to_string().as_str()) {
                    tracing::warn!(%namespace, registry = %name, %error, "reading the tenant table failed; no Tenant is changed");
                    self.event(
                        registry,
                        EventType::Warning,
                        "DatabaseQueryFailed",
                        format!("{}: {error}", error.cause()),
                    )
                    .await;
                }
                return Err(error);
            }
        };
        let template_refs: Vec<sync::TemplateRef<'_>> = templates
            .iter()
            .map(|t| sync::TemplateRef {
                name: t.metadata.name.as_deref().unwrap_or_default(),
                generation: t.metadata.generation.unwrap_or(0),
                spec: &t.spec,
            })
            .collect();
        let uid = registry.metadata.uid.clone().unwrap_or_default();
        let registry_ref = sync::RegistryRef {
            namespace: &namespace,
            name: &name,
            uid: &uid,
        };
        let safety = registry.spec.deletion_safety.clone().unwrap_or_default();
        let plan = sync::plan(
            &registry_ref,
            &template_refs,
            &rows.active,
            existing,
            &safety,
            registry
                .annotations()
                .get(ANNOTATION_CONFIRM_DELETIONS)
                .map(String::as_str),
            self.config.buckets,
        );
        self.metrics
            .set_rows(&namespace, &name, rows.total, rows.active.len());
        drop(rows);

        let sync::Plan {
            writes,
            deletes,
            blocked,
            problems,
            desired,
            unchanged,
            waiting: _,
        } = plan;
        let api: Api<Tenant> = Api::namespaced(self.client.clone(), &namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = writes.len();
        let results: Vec<Result<(String, ExistingTenant), String>> = stream::iter(writes)
            .map(|tenant| {
                let (api, params) = (api.clone(), params.clone());
                async move {
                    let tenant_name = tenant.name_any();
                    api.patch(&tenant_name, &params, &Patch::Apply(&tenant))
                        .await
                        .map_err(|e| format!("Tenant {tenant_name}: {e}"))?;
                    let projected = project(&tenant).map(|(_, _, existing)| existing);
                    projected
                        .map(|existing| (tenant_name.clone(), existing))
                        .ok_or_else(|| {
                            format!("Tenant {tenant_name}: written without its registry label")
                        })
                }
            })
            .buffer_unordered(self.config.write_concurrency.max(1))
            .collect()
            .await;
        let mut written_tenants = Vec::with_capacity(results.len());
        let mut write_errors = Vec::new();
        for result in results {
            match result {
                Ok(entry) => written_tenants.push(entry),
                Err(error) => write_errors.push(error),
            }
        }
        for _ in 0..written {
            self.metrics.observe_write("apply_tenant");
        }
        let deleted = deletes.len();
        let delete_errors: Vec<String> = stream::iter(deletes)
            .map(|tenant_name| {
                let api = api.clone();
                async move {
                    match api.delete(&tenant_name, &DeleteParams::background()).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                        Err(e) => Err(format!("Tenant {tenant_name}: {e}")),
                    }
                }
            })
            .buffer_unordered(self.config.write_concurrency.max(1))
            .filter_map(|r| async move { r.err() })
            .collect()
            .await;
        for _ in 0..deleted {
            self.metrics.observe_write("delete_tenant");
        }

        if written > 0 || deleted > 0 {
            self.event(
                registry,
                EventType::Normal,
                "TenantsSynced",
                format!(
                    "{} Tenants written (created or updated), {} deleted, {} unchanged",
                    written - write_errors.len(),
                    deleted - delete_errors.len(),
                    unchanged
                ),
            )
            .await;
        }
        if let Some(first) = write_errors.first() {
            self.event(
                registry,
                EventType::Warning,
                "TenantApplyFailed",
                summarise(&write_errors, first),
            )
            .await;
        }
        if let Some(first) = delete_errors.first() {
            self.event(
                registry,
                EventType::Warning,
                "TenantDeletionFailed",
                summarise(&delete_errors, first),
            )
            .await;
        }
        let problem_texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let problems_digest = digest(&problem_texts);
        if let Some(first) = problem_texts.first()
            && reported.1 != Some(problems_digest)
        {
            self.event(
                registry,
                EventType::Warning,
                "TemplateRenderFailed",
                summarise(&problem_texts, first),
            )
            .await;
        }
        let result = if write_errors.is_empty() && delete_errors.is_empty() {
            "success"
        } else {
            "partial_failure"
        };
        self.metrics.observe_sync(result, started.elapsed());
        tracing::debug!(
            %namespace, registry = %name, desired, written, deleted, unchanged,
            problems = problems.len(),
            elapsed_ms = started.elapsed().as_millis() as u64, "synced"
        );
        Ok(SyncOutcome {
            desired,
            problems: problems.len(),
            problems_digest,
            blocked,
            written: written_tenants,
        })
    }

    /// Resolves the settings (Secrets included), reuses or replaces the pool, reads the rows.
    ///
    /// An SQLite file is opened afresh for every read: a kept connection holds the file it
    /// opened, so a file renamed away or replaced (a volume's atomic update) would go on being
    /// read as it was for as long as the pool lives.
    async fn read(
        &self,
        registry: &TenantRegistry,
        namespace: &str,
        name: &str,
    ) -> Result<datasource::Rows, SourceError> {
        let secrets = KubeSecrets(Api::namespaced(self.client.clone(), namespace));
        let settings = datasource::resolve(&registry.spec, &secrets).await?;
        let key = (namespace.to_owned(), name.to_owned());
        let keep = settings.dialect() != datasource::Dialect::Sqlite;
        let source = {
            let mut sources = self.sources.lock().await;
            match sources.get(&key) {
                _ if !keep => {
                    // Not kept: a pool of settings this registry had before goes.
                    if let Some(old) = sources.remove(&key) {
                        tokio::spawn(async move { old.close().await });
                    }
                    Source::open(settings)
                }
                Some(source) if source.settings().fingerprint() == settings.fingerprint() => {
                    source.clone()
                }
                _ => {
                    let source = Source::open(settings);
                    if let Some(old) = sources.insert(key, source.clone()) {
                        tokio::spawn(async move { old.close().await });
                    }
                    source
                }
            }
        };
        let started = Instant::now();
        let rows = source.read(self.config.read_timeout).await;
        self.metrics
            .observe_query(namespace, name, rows.is_ok(), started.elapsed());
        if !keep {
            source.close().await;
        }
        rows
    }

    async fn event(&self, registry: &TenantRegistry, type_: EventType, reason: &str, note: String) {
        let event = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1000)),
            action: "Sync".to_owned(),
            secondary: None,
        };
        let reference = registry.object_ref(&());
        match self.recorder.publish(&event, &reference).await {
            Ok(()) => self.metrics.observe_write("event"),
            Err(error) => tracing::debug!(%error, reason, "publishing an event failed"),
        }
    }
}

fn summarise(all: &[String], first: &str) -> String {
    match all.len() {
        1 => first.to_owned(),
        n => format!("{first} (and {} more)", n - 1),
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

fn digest(texts: &[String]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for text in texts {
        for byte in text.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_intervals_parse_as_the_original() {
        assert_eq!(sync_interval("30s"), Duration::from_secs(30));
        assert_eq!(sync_interval("5m"), Duration::from_secs(300));
        assert_eq!(sync_interval("1h"), Duration::from_secs(3600));
        for bad in ["", "s", "10", "1d", "-1s", "0s", "1.5m"] {
            assert_eq!(sync_interval(bad), Duration::from_secs(30), "{bad:?}");
        }
    }

    #[test]
    fn long_event_notes_are_cut_on_a_character_boundary() {
        let text = "é".repeat(600);
        let cut = truncate(text, 1000);
        assert!(cut.len() <= 1000 && cut.chars().all(|c| c == 'é'));
    }
}
