//! One reconcile of one KubeTemplate:
//!
//! ```text
//! deleted? ── finalizer: delete what status.appliedResources lists (ours only) ── drop finalizer
//! unchanged (generation observed, Completed, appliedSpecHash = spec hash) and not drift? ── skip: no API call
//! finalizer present? ── else add it (once)
//! policy (defence in depth: the webhook may have been bypassed) ── denied: status Failed, stop
//! desired objects ── server-side apply, independent objects in parallel (bounded)
//! prune: objects listed last time and no longer desired (ours only)
//! status ── written only when it changed
//! ```
//!
//! A template whose objects all applied ends `Completed`; any object that failed makes it `Failed`
//! with every error in `status.status`, and the reconcile returns an error so the queue retries
//! it with backoff. A policy denial is not retried by the queue (the verdict only changes with
//! the policy).
//!
//! Every write (apply, replace, delete, finalizer, status) goes through the reconciler's
//! [`Writes`]: in a worker, the fence of its Lease, checked right before the request is sent
//! ([`crate::writes`]). Once a write is fenced the reconcile stops writing and returns
//! [`ReconcileError::Fenced`]; nothing after it (prune, status) is attempted.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use api::constants::FIELD_MANAGER;
use api::constants::condition::READY;
use api::constants::phase::{COMPLETED as PHASE_COMPLETED, FAILED as PHASE_FAILED};
use api::{AppliedResource, KubeTemplate, KubeTemplateStatus};
use engine::policy::{CompiledPolicy, PolicyLookup, evaluate};
use futures::{StreamExt as _, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use runtime::lease::Fenced;

use crate::apply::{Applier, ApplyError};
use crate::desired::desired;
use crate::writes::{WriteError, Writes};

/// Finalizer on every KubeTemplate a worker has applied, so deleting the template deletes its
/// objects (those Kubernetes' garbage collector would not: other namespaces, not `referenced`).
pub const FINALIZER: &str = "kubetemplater.io/cleanup";

/// Where compiled policies come from (the worker's watch-fed cache).
pub trait PolicySource: Send + Sync {
    /// The compiled policies selecting `namespace`.
    fn lookup(&self, namespace: &str) -> Vec<Arc<CompiledPolicy>>;
}

impl PolicySource for runtime::policies::PolicyCache {
    fn lookup(&self, namespace: &str) -> Vec<Arc<CompiledPolicy>> {
        runtime::policies::PolicyCache::lookup(self, namespace)
    }
}

/// Why a reconcile was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The template changed (or was just granted).
    Change,
    /// A managed object changed: read the objects and put back (by force) those that drifted.
    Drift,
    /// The slow safety resync.
    Resync,
}

/// What a reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing changed; no API call was made.
    Unchanged,
    /// Objects applied (and stale ones pruned).
    Applied {
        /// Objects applied.
        applied: usize,
        /// Objects deleted because the template no longer lists them.
        pruned: usize,
    },
    /// The policy refused the template; status says why.
    Denied,
    /// The template was being deleted: its objects were deleted and the finalizer removed.
    Finalized,
}

/// Why a reconcile must be retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Objects failed to apply or prune; all are listed.
    #[error("{} object(s) failed: {}", .0.len(), join(.0))]
    Objects(Vec<ApplyError>),
    /// A write to the template itself (finalizer, status) failed.
    #[error("{action} KubeTemplate {template}: {source}")]
    Template {
        /// What was being done.
        action: &'static str,
        /// `namespace/name`.
        template: String,
        /// The error.
        #[source]
        source: Box<WriteError>,
    },
    /// A Tenant reconcile failed.
    #[error(transparent)]
    Tenant(#[from] crate::tenant::reconcile::TenantError),
    /// The worker's Lease fence is closed: a write was refused unsent and the reconcile stopped
    /// writing. The worker stops all work when its fence closes; the next holder of the bucket
    /// reconciles the template again.
    #[error("{template}: stopped writing: {source}")]
    Fenced {
        /// `namespace/name`.
        template: String,
        /// Which Lease, and why it is no longer held.
        source: Fenced,
    },
}

fn join(errors: &[ApplyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ReconcileError {
    /// Short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Objects(_) => "objects",
            ReconcileError::Template { .. } => "template_write",
            ReconcileError::Fenced { .. } => "fenced",
            ReconcileError::Tenant(e) if e.fenced().is_some() => "fenced",
            ReconcileError::Tenant(_) => "tenant",
        }
    }

    /// Why the reconcile stopped writing, when the fence was closed.
    pub fn fenced(&self) -> Option<&Fenced> {
        match self {
            ReconcileError::Fenced { source, .. } => Some(source),
            ReconcileError::Objects(errors) => errors.iter().find_map(ApplyError::fenced),
            ReconcileError::Tenant(e) => e.fenced(),
            ReconcileError::Template { source, .. } => match &**source {
                WriteError::Fenced(fenced) => Some(fenced),
                _ => None,
            },
        }
    }

    /// `self`, as [`ReconcileError::Fenced`] when any part of it was fenced.
    fn fenced_first(self, template: impl FnOnce() -> String) -> Self {
        match self.fenced() {
            Some(fenced) if !matches!(self, ReconcileError::Fenced { .. }) => {
                ReconcileError::Fenced {
                    template: template(),
                    source: fenced.clone(),
                }
            }
            _ => self,
        }
    }
}

/// A failed write to the template itself: [`ReconcileError::Fenced`] when the fence refused it.
fn template_write(action: &'static str, template: String, error: WriteError) -> ReconcileError {
    match error {
        WriteError::Fenced(source) => ReconcileError::Fenced { template, source },
        error => ReconcileError::Template {
            action,
            template,
            source: Box::new(error),
        },
    }
}

/// Reconciles KubeTemplates. Cheap to clone.
#[derive(Clone)]
pub struct Reconciler {
    client: kube::Client,
    applier: Applier,
    policies: Arc<dyn PolicySource>,
    concurrency: usize,
    recent: Arc<Mutex<HashMap<(String, String), Applied>>>,
    events: Option<kube::runtime::events::Recorder>,
}

/// A spec this worker applied completely and recorded as `Completed`, remembered until the
/// watch cache shows that status. Without it, a reconcile that runs before the cache caught up
/// with our own status write (the re-queue our finalizer write caused, on every create) would
/// see no applied hash and apply every object a second time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    uid: String,
    generation: Option<i64>,
    spec_hash: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map holds plain values; a panic elsewhere cannot leave one half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    /// A reconciler applying at most `concurrency` objects of one template at once, writing
    /// without a fence ([`Writes::unfenced`]): for tests and tools that hold no Lease. A worker
    /// adds its fence with [`Reconciler::with_writes`].
    pub fn new(client: kube::Client, policies: Arc<dyn PolicySource>, concurrency: usize) -> Self {
        Self {
            applier: Applier::new(client.clone()),
            client,
            policies,
            concurrency: concurrency.max(1),
            recent: Arc::default(),
            events: None,
        }
    }

    /// The same reconciler publishing Kubernetes events (Tenants) through `recorder`.
    #[must_use]
    pub fn with_events(mut self, recorder: kube::runtime::events::Recorder) -> Self {
        self.events = Some(recorder);
        self
    }

    /// The same reconciler with every write going through `writes` (the worker's: its Lease
    /// fence and write timeout).
    #[must_use]
    pub fn with_writes(mut self, writes: Writes) -> Self {
        self.applier = Applier::with_writes(self.client.clone(), writes);
        self
    }

    /// The reconciler of Tenants sharing this one's applier (writes, fence, discovery cache) and
    /// per-reconcile concurrency.
    pub fn tenants(&self) -> crate::tenant::reconcile::TenantReconciler {
        let tenants =
            crate::tenant::reconcile::TenantReconciler::new(self.applier.clone(), self.concurrency);
        match &self.events {
            Some(recorder) => tenants.with_events(recorder.clone()),
            None => tenants,
        }
    }

    /// The gate its writes go through.
    pub fn writes(&self) -> &Writes {
        self.applier.writes()
    }

    /// Reconciles `template`, whose bucket label value is `bucket`.
    pub async fn reconcile(
        &self,
        template: &KubeTemplate,
        bucket: &str,
        trigger: Trigger,
    ) -> Result<Outcome, ReconcileError> {
        let template_ref = || {
            format!(
                "{}/{}",
                template.namespace().unwrap_or_default(),
                template.name_any()
            )
        };
        self.reconcile_unfenced(template, bucket, trigger)
            .await
            .map_err(|e| e.fenced_first(template_ref))
    }

    async fn reconcile_unfenced(
        &self,
        template: &KubeTemplate,
        bucket: &str,
        trigger: Trigger,
    ) -> Result<Outcome, ReconcileError> {
        let namespace = template.namespace().unwrap_or_default();
        let name = template.name_any();
        let api: Api<KubeTemplate> = Api::namespaced(self.client.clone(), &namespace);
        let template_ref = || format!("{namespace}/{name}");
        let status = template.status.clone().unwrap_or_default();

        if template.metadata.deletion_timestamp.is_some() {
            if !template.finalizers().iter().any(|f| f == FINALIZER) {
                return Ok(Outcome::Finalized);
            }
            let mut errors = Vec::new();
            for reference in &status.applied_resources {
                if let Err(e) = self
                    .applier
                    .delete_owned(reference, &namespace, &name)
                    .await
                {
                    let fenced = e.fenced().is_some();
                    errors.push(e);
                    if fenced {
                        break;
                    }
                }
            }
            if !errors.is_empty() {
                return Err(ReconcileError::Objects(errors));
            }
            self.set_finalizer(&api, template, false)
                .await
                .map_err(|e| template_write("removing the finalizer of", template_ref(), e))?;
            lock(&self.recent).remove(&(namespace.clone(), name.clone()));
            return Ok(Outcome::Finalized);
        }

        let spec_hash = engine::hash::spec_hash(&template.spec);
        let recorded = status.observed_generation == template.metadata.generation
            && status.processing_phase.as_deref() == Some(PHASE_COMPLETED)
            && status.applied_spec_hash.as_deref() == Some(spec_hash.as_str());
        let applied = Applied {
            uid: template.uid().unwrap_or_default(),
            generation: template.metadata.generation,
            spec_hash: spec_hash.clone(),
        };
        let key = (namespace.clone(), name.clone());
        let unchanged = {
            let mut recent = lock(&self.recent);
            if recorded {
                // The cache caught up: the status says it all from now on.
                recent.remove(&key);
                true
            } else {
                recent.get(&key) == Some(&applied)
            }
        };
        let wanted = desired(template, bucket);
        if unchanged && trigger == Trigger::Change {
            return Ok(Outcome::Unchanged);
        }
        if unchanged && matches!(trigger, Trigger::Resync | Trigger::Drift) {
            // The safety resync, or a managed object changed (seen by the drift watches): reads
            // only; objects changed or deleted behind our back are put back (by force: someone
            // else took fields we own), as the original's drift check. Only drifted objects are
            // written, and the drift is counted in the status.
            let mut drifted = Vec::new();
            for object in &wanted.objects {
                match self.applier.drifted(object).await {
                    Ok(true) => drifted.push(object),
                    Ok(false) => {}
                    Err(e) => return Err(ReconcileError::Objects(vec![e])),
                }
            }
            if drifted.is_empty() {
                return Ok(Outcome::Unchanged);
            }
            let mut errors = Vec::new();
            for object in &drifted {
                if let Err(e) = self.applier.apply(object, true).await {
                    let fenced = e.fenced().is_some();
                    errors.push(e);
                    if fenced {
                        return Err(ReconcileError::Objects(errors));
                    }
                }
            }
            let mut next = status.clone();
            next.last_drift_detected = Some(Time(jiff::Timestamp::now()));
            next.drift_detection_count = Some(status.drift_detection_count.unwrap_or(0) + 1);
            self.write_status(&api, template, &status, next).await?;
            tracing::info!(template = %template_ref(), objects = drifted.len(), "drift corrected");
            return if errors.is_empty() {
                Ok(Outcome::Applied {
                    applied: drifted.len(),
                    pruned: 0,
                })
            } else {
                Err(ReconcileError::Objects(errors))
            };
        }

        if !template.finalizers().iter().any(|f| f == FINALIZER) {
            self.set_finalizer(&api, template, true)
                .await
                .map_err(|e| template_write("adding the finalizer to", template_ref(), e))?;
        }

        let policies = self.policies.lookup(&namespace);
        let verdict = evaluate(
            &namespace,
            &template.spec.templates,
            PolicyLookup::among(&namespace, policies.iter().map(AsRef::as_ref)),
        );
        if !verdict.allowed {
            let mut next = status.clone();
            next.processing_phase = Some(PHASE_FAILED.to_owned());
            next.status = Some(format!("Error: {}", verdict.message()));
            next.observed_generation = template.metadata.generation;
            set_ready(&mut next, false, "PolicyDenied", &verdict.message());
            self.write_status(&api, template, &status, next).await?;
            return Ok(Outcome::Denied);
        }

        // Drift is corrected by force (someone else changed fields we own); a template change is
        // applied without force, so a field another manager owns is reported as a conflict.
        let force = trigger == Trigger::Drift;
        // Owned inputs per future (indexes, a cloned applier): a closure over borrowed items
        // makes the future not provably `Send` for every lifetime (a rustc limitation).
        let applies = wanted
            .objects
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, object)| {
                let applier = self.applier.clone();
                async move { (i, applier.apply(&object, force).await) }
            });
        let results: Vec<_> = stream::iter(applies)
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut applied_refs = Vec::new();
        let mut errors = Vec::new();
        for (i, result) in results {
            let object = &wanted.objects[i];
            match result {
                Ok(resolved) => applied_refs.push(object.reference(resolved.namespaced)),
                Err(e) => errors.push(e),
            }
        }
        if errors.iter().any(|e| e.fenced().is_some()) {
            // No prune, no status: nothing more may be written.
            return Err(ReconcileError::Objects(errors));
        }
        // Keep template order in status.
        applied_refs.sort_by_key(|r| {
            wanted.objects.iter().position(|o| {
                o.name == r.name && o.kind == r.kind && o.api_version == r.api_version
            })
        });

        // Prune what was applied before and is no longer desired. Objects that failed to apply
        // this time are still desired and kept in the list.
        let desired_keys: BTreeSet<_> = wanted
            .objects
            .iter()
            .map(|o| (o.api_version.clone(), o.kind.clone(), o.name.clone()))
            .collect();
        let mut pruned = 0;
        let mut kept = Vec::new();
        for old in &status.applied_resources {
            let key = (old.api_version.clone(), old.kind.clone(), old.name.clone());
            if desired_keys.contains(&key) {
                if !applied_refs.contains(old) {
                    kept.push(old.clone());
                }
                continue;
            }
            match self.applier.delete_owned(old, &namespace, &name).await {
                Ok(()) => pruned += 1,
                Err(e) if e.fenced().is_some() => {
                    errors.push(e);
                    return Err(ReconcileError::Objects(errors));
                }
                Err(e) => {
                    kept.push(old.clone());
                    errors.push(e);
                }
            }
        }

        let total = wanted.objects.len() + wanted.errors.len();
        let mut next = status.clone();
        next.observed_generation = template.metadata.generation;
        next.resources_total = Some(i64::try_from(total).unwrap_or(i64::MAX));
        next.resources_synced = Some(i64::try_from(applied_refs.len()).unwrap_or(i64::MAX));
        let mut listed = applied_refs.clone();
        listed.extend(kept);
        next.applied_resources = listed;
        let item_errors: Vec<String> = wanted.errors.iter().map(ToString::to_string).collect();
        let apply_errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        if item_errors.is_empty() && apply_errors.is_empty() {
            next.processing_phase = Some(PHASE_COMPLETED.to_owned());
            next.status = Some(PHASE_COMPLETED.to_owned());
            next.applied_spec_hash = Some(spec_hash);
            if next != status {
                next.processed_at = Some(Time(jiff::Timestamp::now()));
            }
            set_ready(&mut next, true, "Applied", "every object is applied");
        } else {
            let all: Vec<String> = item_errors.into_iter().chain(apply_errors).collect();
            let message = all.join("; ");
            next.processing_phase = Some(PHASE_FAILED.to_owned());
            next.status = Some(format!("Error: {message}"));
            set_ready(&mut next, false, "ApplyFailed", &message);
        }
        let completed = next.processing_phase.as_deref() == Some(PHASE_COMPLETED);
        self.write_status(&api, template, &status, next).await?;
        if completed {
            lock(&self.recent).insert(key, applied);
        } else {
            lock(&self.recent).remove(&key);
        }
        if errors.is_empty() {
            Ok(Outcome::Applied {
                applied: applied_refs.len(),
                pruned,
            })
        } else {
            Err(ReconcileError::Objects(errors))
        }
    }

    async fn set_finalizer(
        &self,
        api: &Api<KubeTemplate>,
        template: &KubeTemplate,
        present: bool,
    ) -> Result<(), WriteError> {
        let mut finalizers: Vec<String> = template
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        if present {
            finalizers.push(FINALIZER.to_owned());
        }
        // The resourceVersion precondition makes this safe against concurrent finalizer edits.
        let patch = json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": template.resource_version(),
            }
        });
        let name = template.name_any();
        let params = PatchParams::default();
        self.writes()
            .send("patch", api.patch(&name, &params, &Patch::Merge(&patch)))
            .await
            .map(drop)
    }

    /// Writes `next` unless it equals `current` (so an idle template costs no write).
    async fn write_status(
        &self,
        api: &Api<KubeTemplate>,
        template: &KubeTemplate,
        current: &KubeTemplateStatus,
        next: KubeTemplateStatus,
    ) -> Result<(), ReconcileError> {
        if &next == current {
            return Ok(());
        }
        let patch = json!({ "status": next });
        let name = template.name_any();
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        self.writes()
            .send(
                "patch_status",
                api.patch_status(&name, &params, &Patch::Merge(&patch)),
            )
            .await
            .map(drop)
            .map_err(|e| {
                let template = format!("{}/{}", template.namespace().unwrap_or_default(), name);
                template_write("writing the status of", template, e)
            })
    }
}

/// Sets the `Ready` condition, keeping its transition time when its status does not change.
fn set_ready(status: &mut KubeTemplateStatus, ready: bool, reason: &str, message: &str) {
    let value = if ready { "True" } else { "False" };
    let previous = status.conditions.iter().find(|c| c.type_ == READY);
    let since = previous.filter(|c| c.status == value).map_or_else(
        || Time(jiff::Timestamp::now()),
        |c| c.last_transition_time.clone(),
    );
    let condition = Condition {
        type_: READY.to_owned(),
        status: value.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: since,
        observed_generation: None,
    };
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.push(condition);
}

/// References of the objects a status lists, for tests and tools.
pub fn applied(status: &KubeTemplateStatus) -> &[AppliedResource] {
    &status.applied_resources
}
