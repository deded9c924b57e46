//! One reconcile of one Tenant:
//!
//! ```text
//! deleting? ── cleanup: each applied object → Delete: deleted / Retain: orphan markers ── drop finalizer
//! digest unchanged, observed and Ready? ── skip: no API call
//! finalizer present? ── else add it
//! variables, levels (an error: status says which, no retry until the Tenant changes)
//! level by level, the objects of a level in parallel (bounded):
//!     a dependency failed → skipped (skipOnDependencyFailure, default) / a dependency not ready → wait
//!     Once and already created → counted ready, not touched
//!     apply (SSA, force = conflictPolicy Force) | merge (JSON merge patch; created when missing)
//!     | replace (create, or update at the live resourceVersion); ignoreFields keep live values
//!     waitForReady → ready from the write's answer (later polls read, never re-apply);
//!     not ready after timeoutSeconds → failed
//! orphans: applied last time, not rendered now → Delete / Retain by the object's annotation
//! status ── written only when it changed; requeued while something is not ready
//! ```
//!
//! A create refused because its namespace is terminating is not a failure: in the Tenant's own
//! namespace the Tenant itself is about to be deleted, so the pass stops without writing (and
//! the namespace is remembered: its other Tenants are left alone without API calls, while the
//! namespace controller deletes their objects); in another namespace the object waits (looked at
//! again every [`TERMINATING_POLL`]) while that namespace terminates.
//!
//! Every write goes through the worker's [`Writes`] (its Lease's fence and the write timeout).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::conditions;
use api::constants::condition::READY;
use api::constants::{
    ANNOTATION_CREATED_ONCE, ANNOTATION_DELETION_POLICY, ANNOTATION_ORPHANED_AT,
    ANNOTATION_ORPHANED_REASON, FIELD_MANAGER, FINALIZER_TENANT, LABEL_ORPHANED, LABEL_TENANT,
    LABEL_TENANT_NAMESPACE, ORPHANED_REASON_REMOVED_FROM_TEMPLATE, ORPHANED_REASON_TENANT_DELETED,
};
use api::{ConflictPolicy, CreationPolicy, PatchStrategy, Tenant, TenantStatus};
use futures::{StreamExt as _, stream};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource as _, ResourceExt as _};
use runtime::lease::Fenced;
use serde_json::{Value, json};

use super::desired::{self, AppliedKey, DesiredError, TenantObject};
use super::ignore;
use super::metrics::TenantMetrics;
use super::readiness;
use super::status::{self, Counts};
use crate::apply::{Applier, ApplyError};
use crate::writes::WriteError;

/// How long to wait before looking again at objects that are not ready.
pub const READINESS_POLL: Duration = Duration::from_secs(2);

/// How long to wait before creating an object again in a namespace that was terminating.
pub const TERMINATING_POLL: Duration = Duration::from_secs(5);

/// How long a namespace seen terminating is remembered. A long deletion is covered by the next
/// refused write after it (one try a minute); a Tenant created after the refusal was seen is never
/// skipped (it lives in a new namespace of the same name).
const TERMINATING_MEMORY: Duration = Duration::from_secs(60);

/// Tenants remembered between passes before completed entries are dropped.
const MAX_PROGRESS: usize = 200_000;

/// What a Tenant reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantOutcome {
    /// Nothing changed and everything is ready: no API call was made.
    Unchanged,
    /// Objects were applied; everything is ready.
    Applied {
        /// Objects written.
        applied: usize,
        /// Objects removed from the template and cleaned up.
        pruned: usize,
    },
    /// Something is not ready yet: look again after the delay.
    Waiting(Duration),
    /// The Tenant cannot be rendered (variables, dependency graph); status says why.
    Broken,
    /// The Tenant was being deleted: cleaned up and the finalizer removed.
    Finalized,
    /// The Tenant's namespace is terminating (the Tenant goes with it): nothing was written.
    NamespaceTerminating,
}

/// Why a Tenant reconcile must be retried.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// Objects failed (apply, conflict, readiness timeout, skipped dependants); all are listed.
    #[error("Tenant {tenant}: {} resource(s) failed: {}", .failures.len(), .failures.join("; "))]
    Resources {
        /// `namespace/name`.
        tenant: String,
        /// What failed.
        failures: Vec<String>,
    },
    /// A write to the Tenant itself (finalizer, status) failed.
    #[error("{action} Tenant {tenant}: {source}")]
    Write {
        /// What was being done.
        action: &'static str,
        /// `namespace/name`.
        tenant: String,
        /// The error.
        #[source]
        source: Box<WriteError>,
    },
    /// The Lease's fence closed: the reconcile stopped writing.
    #[error("Tenant {tenant}: stopped writing: {source}")]
    Fenced {
        /// `namespace/name`.
        tenant: String,
        /// Why.
        source: Fenced,
    },
}

impl TenantError {
    /// Why the reconcile stopped writing, when the fence closed.
    pub fn fenced(&self) -> Option<&Fenced> {
        match self {
            TenantError::Fenced { source, .. } => Some(source),
            TenantError::Write { source, .. } => match &**source {
                WriteError::Fenced(f) => Some(f),
                _ => None,
            },
            TenantError::Resources { .. } => None,
        }
    }
}

/// The state of one object after a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Ready,
    Waiting,
    /// Not applied: a dependency is not ready yet.
    Pending,
    Failed(String),
    Conflicted(String),
    /// A create refused because this namespace is terminating.
    Terminating(String),
}

/// What this worker remembers of a Tenant between passes: the digest it is applying, the
/// objects already written for it, and since when each has not been ready.
#[derive(Debug, Default)]
struct Progress {
    digest: String,
    written: HashSet<String>,
    not_ready_since: HashMap<String, Instant>,
    /// This digest was applied completely at this generation and its status written: until the
    /// watch cache shows that status (a re-queue caused by our own finalizer or status write
    /// may run on the older cache), the Tenant is not applied again.
    complete_at: Option<Option<i64>>,
}

/// Reconciles Tenants. Cheap to clone.
#[derive(Clone)]
pub struct TenantReconciler {
    applier: Applier,
    concurrency: usize,
    progress: Arc<Mutex<HashMap<String, Progress>>>,
    metrics: TenantMetrics,
    events: Option<Recorder>,
    /// Digest of the last event published per Tenant uid (reason and note): a retry that fails
    /// the same way publishes nothing new.
    reported: Arc<Mutex<HashMap<String, u64>>>,
    /// Namespaces a create was refused in because they are terminating, and when that was seen.
    terminating: Arc<Mutex<HashMap<String, jiff::Timestamp>>>,
}

impl std::fmt::Debug for TenantReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantReconciler")
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps updated in single steps: a poisoned lock leaves them consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `apiVersion` of the built-in kinds a Tenant template lists, for objects known only by the
/// `Kind/namespace/name@id` key of `appliedResources` (removed from the template, or cleanup).
fn builtin_api_version(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Namespace"
        | "ConfigMap"
        | "Secret"
        | "Service"
        | "ServiceAccount"
        | "PersistentVolumeClaim" => "v1",
        "Deployment" | "StatefulSet" | "DaemonSet" => "apps/v1",
        "Job" | "CronJob" => "batch/v1",
        "Ingress" | "NetworkPolicy" => "networking.k8s.io/v1",
        "PodDisruptionBudget" => "policy/v1",
        "HorizontalPodAutoscaler" => "autoscaling/v2",
        "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding" => {
            "rbac.authorization.k8s.io/v1"
        }
        _ => return None,
    })
}

impl TenantReconciler {
    /// A reconciler writing through `applier`, applying up to `concurrency` objects of a level
    /// at once.
    pub fn new(applier: Applier, concurrency: usize) -> Self {
        Self {
            applier,
            concurrency: concurrency.max(1),
            progress: Arc::default(),
            metrics: TenantMetrics::default(),
            events: None,
            reported: Arc::default(),
            terminating: Arc::default(),
        }
    }

    /// The same reconciler counting in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: TenantMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The same reconciler publishing events on Tenants through `recorder`.
    #[must_use]
    pub fn with_events(mut self, recorder: Recorder) -> Self {
        self.events = Some(recorder);
        self
    }

    /// Publishes an event on `tenant`, unless it is the one last published for it.
    async fn event(&self, tenant: &Tenant, warning: bool, reason: &str, note: String) {
        let Some(recorder) = &self.events else {
            return;
        };
        // No event can be created in a terminating namespace (the Tenants of a namespace being
        // deleted are finalized in bulk): not even tried once one was refused.
        if self.namespace_terminating(tenant) {
            return;
        }
        let uid = tenant.metadata.uid.clone().unwrap_or_default();
        let entry = {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (reason, note.as_str()).hash(&mut hasher);
            hasher.finish()
        };
        if lock(&self.reported).get(&uid) == Some(&entry) {
            return;
        }
        let mut note = note;
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        match recorder.publish(&event, &tenant.object_ref(&())).await {
            Ok(()) => {
                let mut reported = lock(&self.reported);
                if reported.len() >= MAX_PROGRESS {
                    // Handed-off Tenants' entries: forgetting them costs at most a repeated event.
                    reported.clear();
                }
                reported.insert(uid, entry);
            }
            Err(kube::Error::Api(status)) if status_terminating(&status) => {
                self.remember_terminating(&tenant.namespace().unwrap_or_default());
            }
            Err(error) => tracing::debug!(%error, reason, "publishing an event failed"),
        }
    }

    /// Remembers that a write into `namespace` was refused because it is terminating.
    fn remember_terminating(&self, namespace: &str) {
        let now = jiff::Timestamp::now();
        let mut terminating = lock(&self.terminating);
        terminating.retain(|_, at| elapsed(*at, now) < TERMINATING_MEMORY);
        terminating.insert(namespace.to_owned(), now);
    }

    /// Whether `tenant`'s namespace was seen terminating after the Tenant was created (a Tenant
    /// created later lives in a new namespace of the same name).
    fn namespace_terminating(&self, tenant: &Tenant) -> bool {
        let namespace = tenant.namespace().unwrap_or_default();
        let Some(seen) = lock(&self.terminating).get(&namespace).copied() else {
            return false;
        };
        let created = tenant.metadata.creation_timestamp.as_ref().map(|t| t.0);
        elapsed(seen, jiff::Timestamp::now()) < TERMINATING_MEMORY
            && created.is_some_and(|created| created <= seen)
    }

    fn tenant_ref(tenant: &Tenant) -> String {
        format!(
            "{}/{}",
            tenant.namespace().unwrap_or_default(),
            tenant.name_any()
        )
    }

    fn api(&self, tenant: &Tenant) -> Api<Tenant> {
        Api::namespaced(
            self.applier.client().clone(),
            &tenant.namespace().unwrap_or_default(),
        )
    }

    /// Reconciles `tenant` (see the module documentation).
    pub async fn reconcile(&self, tenant: &Tenant) -> Result<TenantOutcome, TenantError> {
        self.reconcile_with(tenant, false).await
    }

    /// Reconciles `tenant`; with `verify` (one of its objects changed behind our back, or its
    /// status moved) there is no skip: every object is read, only those that differ from what
    /// the Tenant asks for are written again, and readiness is taken from what was read.
    pub async fn reconcile_with(
        &self,
        tenant: &Tenant,
        verify: bool,
    ) -> Result<TenantOutcome, TenantError> {
        let started = Instant::now();
        let result = self.pass(tenant, verify).await;
        let label = match &result {
            Ok(TenantOutcome::Unchanged) => "status_only",
            Ok(
                TenantOutcome::Applied { .. }
                | TenantOutcome::Waiting(_)
                | TenantOutcome::Finalized
                | TenantOutcome::NamespaceTerminating,
            ) => "success",
            Err(TenantError::Resources { .. }) => "partial_failure",
            Ok(TenantOutcome::Broken) | Err(_) => "error",
        };
        self.metrics.observe_reconcile(label, started.elapsed());
        result
    }

    async fn pass(&self, tenant: &Tenant, verify: bool) -> Result<TenantOutcome, TenantError> {
        let uid = tenant.metadata.uid.clone().unwrap_or_default();
        if tenant.metadata.deletion_timestamp.is_some() {
            lock(&self.progress).remove(&uid);
            return self.finalize(tenant).await;
        }
        if self.namespace_terminating(tenant) {
            return Ok(TenantOutcome::NamespaceTerminating);
        }
        let previous = tenant.status.clone().unwrap_or_default();
        let generation = tenant.metadata.generation;
        let vars = match desired::vars(tenant) {
            Ok(vars) => vars,
            Err(error) => return self.broken(tenant, &previous, &error).await,
        };
        let digest = desired::digest(tenant, &vars);
        if !verify
            && previous.applied_hash.as_deref() == Some(digest.as_str())
            && previous.observed_generation == generation
            && conditions::is_true(&previous.conditions, READY)
        {
            lock(&self.progress).remove(&uid);
            return Ok(TenantOutcome::Unchanged);
        }
        if !verify
            && lock(&self.progress)
                .get(&uid)
                .is_some_and(|p| p.digest == digest && p.complete_at == Some(generation))
        {
            return Ok(TenantOutcome::Unchanged);
        }
        if !tenant.finalizers().iter().any(|f| f == FINALIZER_TENANT) {
            self.set_finalizer(tenant, true).await?;
        }
        let rendered = match desired::desired(tenant, &vars) {
            Ok(rendered) => rendered,
            Err(error) => return self.broken(tenant, &previous, &error).await,
        };
        {
            let mut progress = lock(&self.progress);
            let entry = progress.entry(uid.clone()).or_default();
            if entry.digest != digest {
                *entry = Progress {
                    digest: digest.clone(),
                    ..Progress::default()
                };
            }
        }

        let mut states: HashMap<String, State> = HashMap::new();
        let mut failures: Vec<String> = Vec::new();
        for (id, message) in &rendered.failed {
            let message = format!("resource {id}: rendering: {message}");
            failures.push(message.clone());
            states.insert(id.clone(), State::Failed(message));
        }
        let mut applied_keys: BTreeSet<String> = BTreeSet::new();
        let mut written = 0usize;
        for level in &rendered.levels {
            let jobs: Vec<(TenantObject, Option<State>)> = level
                .iter()
                .map(|object| (object.clone(), gate(object, &states)))
                .collect();
            let uid = uid.as_str();
            let results: Vec<(TenantObject, State, bool)> = stream::iter(jobs)
                .map(|(object, gated)| async move {
                    match gated {
                        Some(state) => (object, state, false),
                        None => self.apply_object(tenant, uid, object, verify).await,
                    }
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            for (object, state, wrote) in results {
                written += usize::from(wrote);
                if let State::Failed(m) | State::Conflicted(m) = &state {
                    failures.push(m.clone());
                }
                if matches!(state, State::Ready | State::Waiting)
                    || (matches!(state, State::Pending | State::Terminating(_))
                        && previous.applied_resources.contains(&object.key()))
                {
                    applied_keys.insert(object.key());
                }
                states.insert(object.id.clone(), state);
            }
            if let Some(fenced) = self.applier.writes().check().err() {
                return Err(TenantError::Fenced {
                    tenant: Self::tenant_ref(tenant),
                    source: fenced,
                });
            }
            let own = tenant.namespace().unwrap_or_default();
            let seen: Vec<String> = states
                .values()
                .filter_map(|s| match s {
                    State::Terminating(namespace) => Some(namespace.clone()),
                    _ => None,
                })
                .collect();
            for namespace in &seen {
                self.remember_terminating(namespace);
            }
            if seen.contains(&own) {
                tracing::debug!(tenant = %Self::tenant_ref(tenant), "its namespace is terminating; left alone");
                return Ok(TenantOutcome::NamespaceTerminating);
            }
        }

        // Orphans: applied before, not rendered now (only when every entry rendered, so a
        // transient render error never deletes anything).
        let mut pruned = 0;
        if rendered.failed.is_empty() {
            let current: HashSet<String> = rendered.objects().map(TenantObject::key).collect();
            for key in &previous.applied_resources {
                if current.contains(key) {
                    continue;
                }
                match self
                    .release(tenant, key, ORPHANED_REASON_REMOVED_FROM_TEMPLATE)
                    .await
                {
                    Ok(()) => pruned += 1,
                    Err(error) => {
                        if let Some(fenced) = error.fenced() {
                            return Err(TenantError::Fenced {
                                tenant: Self::tenant_ref(tenant),
                                source: fenced.clone(),
                            });
                        }
                        failures.push(format!("cleaning up {key}: {error}"));
                        applied_keys.insert(key.clone());
                    }
                }
            }
        } else {
            applied_keys.extend(previous.applied_resources.iter().cloned());
        }

        // Objects of a level finish in any order: sorted, the same failures make the same status
        // and event (a retry that fails the same way writes nothing).
        failures.sort_unstable();
        let mut counts = Counts {
            desired: rendered.len(),
            ..Counts::default()
        };
        let mut terminating = false;
        for state in states.values() {
            match state {
                State::Ready => counts.ready += 1,
                State::Waiting | State::Pending => counts.waiting += 1,
                State::Terminating(_) => {
                    counts.waiting += 1;
                    terminating = true;
                }
                State::Failed(_) => counts.failed += 1,
                State::Conflicted(_) => {
                    counts.failed += 1;
                    counts.conflicted += 1;
                }
            }
        }
        let complete = counts.ready == counts.desired && failures.is_empty();
        let status = status::tenant_status(
            &previous,
            generation,
            &counts,
            applied_keys.into_iter().collect(),
            complete.then(|| digest.clone()),
            &failures,
        );
        self.write_status(tenant, &status).await?;
        if !failures.is_empty() {
            let reason = if counts.conflicted > 0 {
                "ResourceConflict"
            } else if counts.ready > 0 {
                "TemplateAppliedPartial"
            } else {
                "ApplyFailed"
            };
            self.event(tenant, true, reason, failures.join("; ")).await;
        } else if complete && (written > 0 || pruned > 0) {
            self.event(
                tenant,
                false,
                "TemplateAppliedSuccess",
                format!(
                    "all {} resources are ready ({written} written, {pruned} cleaned up)",
                    counts.desired
                ),
            )
            .await;
        }
        if complete {
            let mut progress = lock(&self.progress);
            // Entries of Tenants this worker no longer owns (handed off) are never looked at
            // again: bound the map by dropping the completed ones when it grows large.
            if progress.len() >= MAX_PROGRESS {
                progress.retain(|_, p| p.complete_at.is_none());
            }
            progress.insert(
                uid.clone(),
                Progress {
                    digest,
                    complete_at: Some(generation),
                    ..Progress::default()
                },
            );
        }
        if !failures.is_empty() {
            return Err(TenantError::Resources {
                tenant: Self::tenant_ref(tenant),
                failures,
            });
        }
        if terminating {
            return Ok(TenantOutcome::Waiting(TERMINATING_POLL));
        }
        if counts.waiting > 0 {
            return Ok(TenantOutcome::Waiting(READINESS_POLL));
        }
        Ok(TenantOutcome::Applied {
            applied: written,
            pruned,
        })
    }

    /// Applies one object (or, when this digest's pass already wrote it, reads it) and tells
    /// its state; the flag says whether a write was sent.
    async fn apply_object(
        &self,
        tenant: &Tenant,
        uid: &str,
        mut object: TenantObject,
        verify: bool,
    ) -> (TenantObject, State, bool) {
        let failed = |object: &TenantObject, what: &str, e: &dyn std::fmt::Display| {
            State::Failed(format!("{}: {what}: {e}", object.describe()))
        };
        let resolved = match self
            .applier
            .resolve(&object.api_version, &object.kind)
            .await
        {
            Ok(resolved) => resolved,
            Err(e) => {
                let state = failed(&object, "discovery", &e);
                return (object, state, false);
            }
        };
        if !resolved.namespaced {
            desired::unown(&mut object);
            if let Some(meta) = object
                .object
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
            {
                meta.remove("namespace");
            }
        }
        let api = self.applier.api(&resolved, Some(&object.namespace));
        let key = object.key();
        let already = lock(&self.progress)
            .get(uid)
            .is_some_and(|p| p.written.contains(&key));
        let needs_live = already
            || verify
            || object.creation == CreationPolicy::Once
            || !object.ignore_fields.is_empty()
            || object.patch != PatchStrategy::Apply;
        let live = if needs_live {
            match api.get_opt(&object.name).await {
                Ok(live) => live.map(|l| serde_json::to_value(l).unwrap_or_default()),
                Err(e) => {
                    let state = failed(&object, "reading", &e);
                    return (object, state, false);
                }
            }
        } else {
            None
        };
        if object.creation == CreationPolicy::Once
            && live.as_ref().is_some_and(|l| {
                l.pointer("/metadata/annotations")
                    .and_then(|a| a.get(ANNOTATION_CREATED_ONCE))
                    .and_then(Value::as_str)
                    == Some("true")
            })
        {
            return (object, State::Ready, false);
        }
        // Written in an earlier pass of this digest: only readiness is left to look at.
        if already && let Some(live) = &live {
            let state = self.readiness(uid, &object, live);
            return (object, state, false);
        }
        if object.creation != CreationPolicy::Once
            && let Some(live) = &live
        {
            for path in &object.ignore_fields {
                match ignore::parse(path) {
                    Ok(segments) => ignore::keep_live(&mut object.object, live, &segments),
                    Err(problem) => {
                        let state = failed(&object, "ignoreFields", &problem);
                        return (object, state, false);
                    }
                }
            }
        }
        if verify
            && let Some(live) = &live
            && !drifted(&object, live)
        {
            let state = self.readiness(uid, &object, live);
            return (object, state, false);
        }
        let result = self.write_object(&api, &object, live.as_ref()).await;
        let policy = match object.conflict {
            ConflictPolicy::Stuck => "Stuck",
            ConflictPolicy::Force => "Force",
        };
        let outcome = match &result {
            Ok(_) => "success",
            Err(WriteError::Api(kube::Error::Api(s))) if s.code == 409 => {
                self.metrics.observe_conflict(
                    &tenant.name_any(),
                    &tenant.namespace().unwrap_or_default(),
                    &object.kind,
                    policy,
                );
                "conflict"
            }
            Err(_) => "error",
        };
        self.metrics.observe_apply(&object.kind, outcome, policy);
        match result {
            Ok(answer) => {
                lock(&self.progress)
                    .entry(uid.to_owned())
                    .or_default()
                    .written
                    .insert(key);
                let state = self.readiness(uid, &object, &answer);
                (object, state, true)
            }
            Err(e) if namespace_terminating(&e) => {
                let state = State::Terminating(object.namespace.clone());
                (object, state, false)
            }
            Err(WriteError::Api(kube::Error::Api(s)))
                if s.code == 409 && object.patch == PatchStrategy::Apply =>
            {
                let state = State::Conflicted(format!(
                    "{}: conflict (conflictPolicy Stuck): {}",
                    object.describe(),
                    s.message
                ));
                (object, state, false)
            }
            Err(e) => {
                let state = failed(&object, "writing", &e);
                (object, state, false)
            }
        }
    }

    /// The write for the object's patch strategy; returns the object as the API server answered.
    async fn write_object(
        &self,
        api: &Api<DynamicObject>,
        object: &TenantObject,
        live: Option<&Value>,
    ) -> Result<Value, WriteError> {
        let writes = self.applier.writes();
        let to_value = |o: DynamicObject| serde_json::to_value(o).unwrap_or_default();
        let as_dynamic = |value: &Value| -> Result<DynamicObject, WriteError> {
            serde_json::from_value(value.clone())
                .map_err(|e| WriteError::Api(kube::Error::SerdeError(e)))
        };
        match object.patch {
            PatchStrategy::Apply => {
                let mut params = PatchParams::apply(FIELD_MANAGER);
                params.force = object.conflict == ConflictPolicy::Force;
                writes
                    .send(
                        "apply",
                        api.patch(&object.name, &params, &Patch::Apply(&object.object)),
                    )
                    .await
                    .map(to_value)
            }
            PatchStrategy::Merge => {
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                // Strategic merge where the kind has one (the built-in kinds: lists such as
                // containers merge by their keys), JSON merge patch otherwise (custom resources).
                let strategic =
                    builtin_api_version(&object.kind) == Some(object.api_version.as_str());
                let patch = if strategic {
                    Patch::Strategic(&object.object)
                } else {
                    Patch::Merge(&object.object)
                };
                match writes
                    .send("merge", api.patch(&object.name, &params, &patch))
                    .await
                {
                    Err(e) if e.status_code() == Some(404) => writes
                        .send(
                            "create",
                            api.create(&post_params(), &as_dynamic(&object.object)?),
                        )
                        .await
                        .map(to_value),
                    other => other.map(to_value),
                }
            }
            PatchStrategy::Replace => match live {
                None => writes
                    .send(
                        "create",
                        api.create(&post_params(), &as_dynamic(&object.object)?),
                    )
                    .await
                    .map(to_value),
                Some(live) => {
                    let mut replacement = object.object.clone();
                    if let Some(rv) = live.pointer("/metadata/resourceVersion") {
                        replacement["metadata"]["resourceVersion"] = rv.clone();
                    }
                    writes
                        .send(
                            "replace",
                            api.replace(&object.name, &post_params(), &as_dynamic(&replacement)?),
                        )
                        .await
                        .map(to_value)
                }
            },
        }
    }

    fn readiness(&self, uid: &str, object: &TenantObject, live: &Value) -> State {
        let key = object.key();
        let mut progress = lock(&self.progress);
        let entry = progress.entry(uid.to_owned()).or_default();
        if !object.wait_for_ready || readiness::is_ready(&object.kind, live) {
            entry.not_ready_since.remove(&key);
            return State::Ready;
        }
        let since = *entry
            .not_ready_since
            .entry(key)
            .or_insert_with(Instant::now);
        if since.elapsed() > Duration::from_secs(object.timeout_seconds) {
            State::Failed(format!(
                "{}: not ready after timeoutSeconds ({} s)",
                object.describe(),
                object.timeout_seconds
            ))
        } else {
            State::Waiting
        }
    }

    /// Cleans up one object named by an `appliedResources` key: deleted, or released with the
    /// orphan markers when its `deletion-policy` annotation says Retain. Objects that are gone
    /// or no longer this Tenant's are left alone.
    async fn release(&self, tenant: &Tenant, key: &str, reason: &str) -> Result<(), ApplyError> {
        let Some(parsed) = AppliedKey::parse(key) else {
            tracing::warn!(key, "not a Kind/namespace/name@id key; skipped");
            return Ok(());
        };
        let Some(api_version) = builtin_api_version(&parsed.kind)
            .map(str::to_owned)
            .or_else(|| self.applier.api_version_of_kind(&parsed.kind))
        else {
            tracing::warn!(key, "kind unknown to this worker; cannot clean it up");
            return Ok(());
        };
        let resolved = match self.applier.resolve(&api_version, &parsed.kind).await {
            Ok(resolved) => resolved,
            Err(ApplyError::UnknownKind { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let namespace = (!parsed.namespace.is_empty()).then_some(parsed.namespace.as_str());
        let api = self.applier.api(&resolved, namespace);
        let describe = || format!("{} {}/{}", parsed.kind, parsed.namespace, parsed.name);
        let Some(live) = api
            .get_opt(&parsed.name)
            .await
            .map_err(|source| ApplyError::Api {
                verb: "get",
                object: describe(),
                source: Box::new(source),
            })?
        else {
            return Ok(());
        };
        let tenant_uid = tenant.metadata.uid.clone().unwrap_or_default();
        let owned = live
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == tenant_uid);
        let labels = live.labels();
        let tracked = labels.get(LABEL_TENANT) == Some(&tenant.name_any())
            && labels.get(LABEL_TENANT_NAMESPACE) == tenant.namespace().as_ref();
        if !owned && !tracked {
            tracing::info!(object = %describe(), "not cleaning up: no longer this Tenant's");
            return Ok(());
        }
        let retain = live
            .annotations()
            .get(ANNOTATION_DELETION_POLICY)
            .is_some_and(|p| p == "Retain");
        let writes = self.applier.writes();
        let result = if retain {
            let now = jiff::Timestamp::now().to_string();
            let patch = json!({
                "metadata": {
                    "ownerReferences": null,
                    "labels": {
                        LABEL_TENANT: null,
                        LABEL_TENANT_NAMESPACE: null,
                        LABEL_ORPHANED: "true",
                    },
                    "annotations": {
                        ANNOTATION_ORPHANED_AT: now,
                        ANNOTATION_ORPHANED_REASON: reason,
                    }
                }
            });
            writes
                .send(
                    "orphan",
                    api.patch(&parsed.name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
                .map(|_| ())
        } else {
            writes
                .send(
                    "delete",
                    api.delete(&parsed.name, &DeleteParams::background()),
                )
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.status_code() == Some(404) => Ok(()),
            Err(WriteError::Fenced(source)) => Err(ApplyError::Fenced {
                verb: if retain { "orphan" } else { "delete" },
                object: describe(),
                source,
            }),
            Err(e) => Err(ApplyError::Api {
                verb: if retain { "orphan" } else { "delete" },
                object: describe(),
                source: Box::new(match e {
                    WriteError::Api(e) => e,
                    other => kube::Error::Service(other.to_string().into()),
                }),
            }),
        }
    }

    /// Deletion: every object of `appliedResources` is cleaned up (Retain keeps it, released);
    /// the finalizer is removed even when some cleanup failed (as the original; the garbage
    /// collector still removes what the Tenant owns).
    async fn finalize(&self, tenant: &Tenant) -> Result<TenantOutcome, TenantError> {
        if !tenant.finalizers().iter().any(|f| f == FINALIZER_TENANT) {
            return Ok(TenantOutcome::Finalized);
        }
        let applied = tenant
            .status
            .as_ref()
            .map(|s| s.applied_resources.clone())
            .unwrap_or_default();
        let mut failures = Vec::new();
        for key in &applied {
            if let Err(error) = self
                .release(tenant, key, ORPHANED_REASON_TENANT_DELETED)
                .await
            {
                if let Some(fenced) = error.fenced() {
                    return Err(TenantError::Fenced {
                        tenant: Self::tenant_ref(tenant),
                        source: fenced.clone(),
                    });
                }
                failures.push(format!("{key}: {error}"));
            }
        }
        if failures.is_empty() {
            self.event(
                tenant,
                false,
                "TenantDeleted",
                format!("{} resources cleaned up", applied.len()),
            )
            .await;
        } else {
            tracing::warn!(tenant = %Self::tenant_ref(tenant), failures = %failures.join("; "), "cleanup partly failed; removing the finalizer anyway");
            self.event(tenant, true, "CleanupPartialFailure", failures.join("; "))
                .await;
        }
        self.set_finalizer(tenant, false).await?;
        lock(&self.reported).remove(&tenant.metadata.uid.clone().unwrap_or_default());
        Ok(TenantOutcome::Finalized)
    }

    async fn broken(
        &self,
        tenant: &Tenant,
        previous: &TenantStatus,
        error: &DesiredError,
    ) -> Result<TenantOutcome, TenantError> {
        let status = status::broken_status(
            previous,
            tenant.metadata.generation,
            tenant.spec.resources.len(),
            error,
        );
        self.write_status(tenant, &status).await?;
        let reason = match error {
            DesiredError::Variables(_) => "VariablesBuildError",
            DesiredError::Dependencies(_) => "DependencyError",
        };
        self.event(tenant, true, reason, error.to_string()).await;
        Ok(TenantOutcome::Broken)
    }

    async fn set_finalizer(&self, tenant: &Tenant, present: bool) -> Result<(), TenantError> {
        let mut finalizers: Vec<String> = tenant
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER_TENANT)
            .cloned()
            .collect();
        if present {
            finalizers.push(FINALIZER_TENANT.to_owned());
        }
        // The resourceVersion precondition makes this safe against concurrent finalizer edits.
        let patch = json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": tenant.resource_version(),
            }
        });
        let action = if present {
            "adding the finalizer to"
        } else {
            "removing the finalizer of"
        };
        match self
            .applier
            .writes()
            .send(
                "finalizer",
                self.api(tenant).patch(
                    &tenant.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                ),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if !present && e.status_code() == Some(404) => Ok(()),
            Err(e) => Err(write_error(action, tenant, e)),
        }
    }

    async fn write_status(
        &self,
        tenant: &Tenant,
        status: &TenantStatus,
    ) -> Result<(), TenantError> {
        if !status::differs(tenant.status.as_ref(), status) {
            return Ok(());
        }
        let patch = json!({ "status": status });
        self.applier
            .writes()
            .send(
                "status",
                self.api(tenant).patch_status(
                    &tenant.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                ),
            )
            .await
            .map(|_| ())
            .map_err(|e| write_error("writing the status of", tenant, e))
    }
}

/// Whether the live object differs from the object to write in a field the latter sets
/// (`stringData` of a Secret compared as the `data` it becomes).
fn drifted(object: &TenantObject, live: &Value) -> bool {
    use base64::Engine as _;
    let mut wanted = object.object.clone();
    if let Some(meta) = wanted.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("namespace");
    }
    if object.kind == "Secret"
        && let Some(map) = wanted.as_object_mut()
        && let Some(Value::Object(string_data)) = map.remove("stringData")
    {
        let data = map
            .entry("data")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(data) = data {
            for (key, value) in string_data {
                let text = value.as_str().unwrap_or_default().to_owned();
                data.insert(
                    key,
                    json!(base64::engine::general_purpose::STANDARD.encode(text)),
                );
            }
        }
    }
    !crate::apply::contains(live, &wanted)
}

/// Whether a write was refused because the object's namespace is terminating (the
/// `NamespaceTerminating` cause of the NamespaceLifecycle admission plugin).
fn namespace_terminating(error: &WriteError) -> bool {
    matches!(error, WriteError::Api(kube::Error::Api(s)) if status_terminating(s))
}

/// Whether an API error is the `NamespaceTerminating` refusal.
fn status_terminating(status: &kube::core::Status) -> bool {
    status.code == 403
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

/// Time from `since` to `now` (zero when the clock went back).
fn elapsed(since: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or_default()
}

fn post_params() -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    }
}

fn write_error(action: &'static str, tenant: &Tenant, error: WriteError) -> TenantError {
    let tenant = TenantReconciler::tenant_ref(tenant);
    match error {
        WriteError::Fenced(source) => TenantError::Fenced { tenant, source },
        error => TenantError::Write {
            action,
            tenant,
            source: Box::new(error),
        },
    }
}

/// Whether an object may be applied in this pass, judging by its dependencies: `None` to go
/// ahead, else the state it takes without being applied.
fn gate(object: &TenantObject, states: &HashMap<String, State>) -> Option<State> {
    let mut waiting = false;
    for dependency in &object.depends {
        match states.get(dependency) {
            Some(State::Failed(_) | State::Conflicted(_)) if object.skip_on_dependency_failure => {
                return Some(State::Failed(format!(
                    "{}: skipped: dependency {dependency:?} failed",
                    object.describe()
                )));
            }
            Some(State::Waiting | State::Pending | State::Terminating(_)) => waiting = true,
            _ => {}
        }
    }
    waiting.then_some(State::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(id: &str, depends: &[&str], skip: bool) -> TenantObject {
        TenantObject {
            id: id.into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: "ns".into(),
            name: id.into(),
            object: json!({}),
            depends: depends.iter().map(|d| (*d).to_owned()).collect(),
            creation: CreationPolicy::WhenNeeded,
            deletion: api::DeletionPolicy::Delete,
            conflict: ConflictPolicy::Stuck,
            patch: PatchStrategy::Apply,
            wait_for_ready: true,
            timeout_seconds: 300,
            skip_on_dependency_failure: skip,
            ignore_fields: Vec::new(),
            owned: true,
        }
    }

    #[test]
    fn dependants_wait_for_readiness_and_skip_after_failures() {
        let states = HashMap::from([
            ("ready".to_owned(), State::Ready),
            ("waiting".to_owned(), State::Waiting),
            ("failed".to_owned(), State::Failed("x".into())),
        ]);
        assert_eq!(gate(&object("a", &["ready"], true), &states), None);
        assert_eq!(
            gate(&object("a", &["ready", "waiting"], true), &states),
            Some(State::Pending)
        );
        assert!(matches!(
            gate(&object("a", &["failed"], true), &states),
            Some(State::Failed(m)) if m.contains("skipped: dependency \"failed\" failed")
        ));
        assert_eq!(
            gate(&object("a", &["failed"], false), &states),
            None,
            "skipOnDependencyFailure false: applied anyway"
        );
    }

    #[test]
    fn builtin_kinds_have_their_api_versions() {
        assert_eq!(builtin_api_version("Deployment"), Some("apps/v1"));
        assert_eq!(builtin_api_version("CronJob"), Some("batch/v1"));
        assert_eq!(builtin_api_version("Widget"), None);
    }
}
