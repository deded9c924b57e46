//! One registry sync, decided: which Tenants to write and which to delete, from the active rows,
//! the referencing TenantTemplates and the Tenants that exist. Pure; the registry controller
//! does the I/O.
//!
//! desired = referencing templates × active rows, one Tenant `<uid>-<templateName>` each, as the
//! original. A Tenant is written only when what it was rendered from changed: its row's values
//! (hostOrUrl, activate, the extras) or **its own** template's generation (the original compared
//! with the first referencing template only), or when it lacks its bucket label. The comparison
//! uses the annotations the original already writes, so Tenants it created are adopted without a
//! write unless they differ. Every Tenant of the registry that is not desired is deleted, unless
//! the deletion brake ([`brake`]) holds the deletions back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;

use api::constants::{
    ANNOTATION_ACTIVATE, ANNOTATION_EXTRA, ANNOTATION_HOST_OR_URL, ANNOTATION_TEMPLATE_GENERATION,
    LABEL_BUCKET, LABEL_TENANT_REGISTRY, LABEL_TENANT_UID, TENANT_GROUP, TENANT_VERSION,
};
use api::{DeletionSafety, TResource, Tenant, TenantResources, TenantSpec, TenantTemplateSpec};
use engine::render::{Renderer, Vars};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use sha2::{Digest as _, Sha256};

use crate::datasource::Row;

/// Annotation on a TenantRegistry confirming held-back deletions: its value must equal the
/// number of deletions the `DeletionBlocked` condition reports.
pub const ANNOTATION_CONFIRM_DELETIONS: &str = "kubetemplater.io/confirm-deletions";

/// The registry being synced.
#[derive(Debug, Clone)]
pub struct RegistryRef<'a> {
    /// Namespace (Tenants are created here).
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// `metadata.uid`, for the Tenants' owner reference.
    pub uid: &'a str,
}

/// A TenantTemplate referencing the registry.
#[derive(Debug, Clone)]
pub struct TemplateRef<'a> {
    /// Name.
    pub name: &'a str,
    /// `metadata.generation`.
    pub generation: i64,
    /// Spec.
    pub spec: &'a TenantTemplateSpec,
}

/// What the controller keeps of an existing Tenant (a projection, not the object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingTenant {
    /// Digest of what it was rendered from ([`inputs_digest`] of its annotations).
    pub inputs: [u8; 16],
    /// Its bucket label is present.
    pub has_bucket: bool,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Being deleted (it has a deletion timestamp).
    pub deleting: bool,
    /// `spec.templateRef`.
    pub template: String,
}

/// Digest of what a Tenant is rendered from: the row's values and the template generation.
pub fn inputs_digest(
    host_or_url: &str,
    activate: &str,
    extra_json: &str,
    template_generation: &str,
) -> [u8; 16] {
    let mut digest = Sha256::new();
    for part in [host_or_url, activate, extra_json, template_generation] {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part.as_bytes());
    }
    let full = digest.finalize();
    let mut short = [0u8; 16];
    short.copy_from_slice(&full[..16]);
    short
}

/// The digest recorded in a Tenant's annotations (see [`inputs_digest`]).
pub fn existing_digest(annotations: &BTreeMap<String, String>) -> [u8; 16] {
    let get = |key: &str| annotations.get(key).map(String::as_str).unwrap_or("");
    inputs_digest(
        get(ANNOTATION_HOST_OR_URL),
        get(ANNOTATION_ACTIVATE),
        get(ANNOTATION_EXTRA),
        get(ANNOTATION_TEMPLATE_GENERATION),
    )
}

fn extra_json(row: &Row) -> String {
    // A map of strings always serializes; Go's json.Marshal sorts keys as BTreeMap does.
    serde_json::to_string(&row.extra).unwrap_or_else(|_| "{}".to_owned())
}

/// Why a row produced no Tenant for a template (the Tenant, if it exists, is kept as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The row's uid.
    pub uid: String,
    /// The template, when the problem is specific to one.
    pub template: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.template {
            Some(template) => write!(
                f,
                "row {:?}, template {template}: {}",
                self.uid, self.message
            ),
            None => write!(f, "row {:?}: {}", self.uid, self.message),
        }
    }
}

/// Deletions held back by the brake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// Tenants that would have been deleted.
    pub pending: usize,
    /// Tenants of the registry before the sync.
    pub existing: usize,
    /// Which limit held them back, for the condition.
    pub reason: &'static str,
    /// The condition's message.
    pub message: String,
}

/// The decision of one sync.
#[derive(Debug, Default)]
pub struct Plan {
    /// Tenants to create or update (server-side apply).
    pub writes: Vec<Tenant>,
    /// Names of Tenants to delete.
    pub deletes: Vec<String>,
    /// Deletions held back, if any (then `deletes` is empty).
    pub blocked: Option<Blocked>,
    /// Rows that produced no Tenant, and why.
    pub problems: Vec<Problem>,
    /// Tenants that should exist (templates × active rows, problems included).
    pub desired: usize,
    /// Tenants already as desired.
    pub unchanged: usize,
    /// Desired Tenants still being deleted, written again once they are gone.
    pub waiting: usize,
}

/// Decides one sync. `existing` holds the registry's Tenants by name; `confirmed` is the value of
/// the registry's [`ANNOTATION_CONFIRM_DELETIONS`].
pub fn plan(
    registry: &RegistryRef<'_>,
    templates: &[TemplateRef<'_>],
    rows: &[Row],
    existing: &HashMap<String, ExistingTenant>,
    safety: &DeletionSafety,
    confirmed: Option<&str>,
    buckets: NonZeroU32,
) -> Plan {
    let mut plan = Plan::default();
    let mut wanted: HashSet<String> = HashSet::with_capacity(templates.len() * rows.len());
    let mut seen_uids: HashSet<&str> = HashSet::with_capacity(rows.len());
    let mut renderer = Renderer::new();
    for row in rows {
        if row.uid.is_empty() {
            plan.problems.push(Problem {
                uid: String::new(),
                template: None,
                message: "the uid column is empty (or NULL)".to_owned(),
            });
            continue;
        }
        if !seen_uids.insert(&row.uid) {
            plan.problems.push(Problem {
                uid: row.uid.clone(),
                template: None,
                message: "another active row has the same uid; only the first is used".to_owned(),
            });
            continue;
        }
        if let Err(message) = label_value(&row.uid) {
            plan.problems.push(Problem {
                uid: row.uid.clone(),
                template: None,
                message: format!("the uid cannot be a label value: {message}"),
            });
            continue;
        }
        let extra = extra_json(row);
        for template in templates {
            plan.desired += 1;
            let name = format!("{}-{}", row.uid, template.name);
            if let Err(message) = object_name(&name) {
                plan.problems.push(Problem {
                    uid: row.uid.clone(),
                    template: Some(template.name.to_owned()),
                    message: format!("Tenant name {name:?} is not valid: {message}"),
                });
                continue;
            }
            wanted.insert(name.clone());
            let generation = template.generation.to_string();
            let digest = inputs_digest(&row.host_or_url, &row.activate, &extra, &generation);
            match existing.get(&name) {
                Some(e) if e.deleting => {
                    // Written again once it is gone (its deletion triggers a sync).
                    plan.waiting += 1;
                    continue;
                }
                Some(e) if e.inputs == digest && e.has_bucket => {
                    plan.unchanged += 1;
                    continue;
                }
                _ => {}
            }
            match tenant(
                registry,
                template,
                row,
                &name,
                &extra,
                &generation,
                buckets,
                &mut renderer,
            ) {
                Ok(tenant) => plan.writes.push(tenant),
                Err(message) => plan.problems.push(Problem {
                    uid: row.uid.clone(),
                    template: Some(template.name.to_owned()),
                    message,
                }),
            }
        }
    }
    let mut deletes: Vec<String> = existing
        .iter()
        .filter(|(name, e)| !e.deleting && !wanted.contains(*name))
        .map(|(name, _)| name.clone())
        .collect();
    deletes.sort();
    let live = existing.values().filter(|e| !e.deleting).count();
    plan.blocked = brake(safety, live, deletes.len(), rows.len(), confirmed);
    if plan.blocked.is_none() {
        plan.deletes = deletes;
    }
    plan
}

/// The deletion brake. Deletions are held back when the result is empty while Tenants exist
/// (`blockOnEmptyResult`, on by default, also when `deletionSafety` is absent), or when they
/// exceed `maxDeleteCount` or `maxDeletePercent` of the existing Tenants, unless the registry's
/// [`ANNOTATION_CONFIRM_DELETIONS`] equals the number held back.
pub fn brake(
    safety: &DeletionSafety,
    existing: usize,
    deletions: usize,
    active_rows: usize,
    confirmed: Option<&str>,
) -> Option<Blocked> {
    if deletions == 0 {
        return None;
    }
    let (reason, limit) = if safety.block_on_empty_result && active_rows == 0 && existing > 0 {
        (
            "EmptyResult",
            "the table returned no active rows".to_owned(),
        )
    } else if let Some(max) = safety
        .max_delete_count
        .filter(|max| deletions > usize::try_from(*max).unwrap_or(0))
    {
        (
            "TooManyDeletions",
            format!("more than deletionSafety.maxDeleteCount ({max})"),
        )
    } else if let Some(max) = safety.max_delete_percent.filter(|max| {
        // deletions / existing > max / 100, in integers.
        (deletions as u128) * 100 > (existing as u128) * u128::try_from(*max).unwrap_or(0)
    }) {
        (
            "TooManyDeletions",
            format!("more than deletionSafety.maxDeletePercent ({max}%) of {existing}"),
        )
    } else {
        return None;
    };
    if confirmed.map(str::trim) == Some(deletions.to_string().as_str()) {
        return None;
    }
    Some(Blocked {
        pending: deletions,
        existing,
        reason,
        message: format!(
            "{deletions} of {existing} Tenants would be deleted: {limit}. Nothing is deleted until \
             the rows come back, the limit is raised, or the registry is annotated \
             {ANNOTATION_CONFIRM_DELETIONS}=\"{deletions}\""
        ),
    })
}

fn label_value(value: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err(format!("{} characters, at most 63", value.len()));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !value.starts_with(alnum) || !value.ends_with(alnum) {
        return Err("must begin and end with a letter or digit".to_owned());
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("contains {bad:?}"));
    }
    Ok(())
}

fn object_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!("{} characters, at most 253", name.len()));
    }
    for part in name.split('.') {
        let ok_chars = part
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let ok_ends = part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric());
        if part.is_empty() || !ok_chars || !ok_ends {
            return Err(
                "must be lowercase letters, digits, '-' and '.', beginning and ending with a \
                 letter or digit"
                    .to_owned(),
            );
        }
    }
    Ok(())
}

/// Template variables of one Tenant: the row's, `registryId` and `templateRef`.
pub fn vars(row: &Row, registry: &str, template: &str) -> Vars {
    row.vars()
        .with_registry_id(registry)
        .with_template_ref(template)
}

/// Stage one of rendering (as the original, at the registry): `nameTemplate`, and the values of
/// `labelsTemplate` and `annotationsTemplate`, are rendered into the Tenant's copy of each
/// resource; the manifest itself and `targetNamespace` are rendered by the worker.
fn stage_one(
    resources: &TenantResources,
    vars: &Vars,
    renderer: &mut Renderer,
) -> Result<TenantResources, String> {
    let render_entry = |entry: &TResource, renderer: &mut Renderer| -> Result<TResource, String> {
        let mut out = entry.clone();
        let fail = |field: &str, e: engine::render::RenderError| {
            format!("resource {}: {field}: {e}", entry.id)
        };
        if let Some(name) = &entry.name_template {
            out.name_template = Some(
                renderer
                    .render_str(name, vars)
                    .map_err(|e| fail("nameTemplate", e))?,
            );
        }
        for (key, value) in out.labels_template.iter_mut() {
            *value = renderer
                .render_str(value, vars)
                .map_err(|e| fail(&format!("labelsTemplate[{key:?}]"), e))?;
        }
        for (key, value) in out.annotations_template.iter_mut() {
            *value = renderer
                .render_str(value, vars)
                .map_err(|e| fail(&format!("annotationsTemplate[{key:?}]"), e))?;
        }
        Ok(out)
    };
    let list = |entries: &[TResource], renderer: &mut Renderer| {
        entries
            .iter()
            .map(|entry| render_entry(entry, renderer))
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(TenantResources {
        service_accounts: list(&resources.service_accounts, renderer)?,
        deployments: list(&resources.deployments, renderer)?,
        stateful_sets: list(&resources.stateful_sets, renderer)?,
        daemon_sets: list(&resources.daemon_sets, renderer)?,
        services: list(&resources.services, renderer)?,
        ingresses: list(&resources.ingresses, renderer)?,
        config_maps: list(&resources.config_maps, renderer)?,
        secrets: list(&resources.secrets, renderer)?,
        persistent_volume_claims: list(&resources.persistent_volume_claims, renderer)?,
        jobs: list(&resources.jobs, renderer)?,
        cron_jobs: list(&resources.cron_jobs, renderer)?,
        pod_disruption_budgets: list(&resources.pod_disruption_budgets, renderer)?,
        network_policies: list(&resources.network_policies, renderer)?,
        horizontal_pod_autoscalers: list(&resources.horizontal_pod_autoscalers, renderer)?,
        namespaces: list(&resources.namespaces, renderer)?,
        manifests: list(&resources.manifests, renderer)?,
    })
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the values are computed there once per row"
)]
fn tenant(
    registry: &RegistryRef<'_>,
    template: &TemplateRef<'_>,
    row: &Row,
    name: &str,
    extra: &str,
    generation: &str,
    buckets: NonZeroU32,
    renderer: &mut Renderer,
) -> Result<Tenant, String> {
    let vars = vars(row, registry.name, template.name);
    let resources = stage_one(&template.spec.resources, &vars, renderer)?;
    let bucket = engine::bucket::bucket(
        &engine::bucket::tenant_shard_key(registry.namespace, registry.name, &row.uid),
        buckets,
    );
    Ok(Tenant {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(registry.namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (LABEL_TENANT_REGISTRY.to_owned(), registry.name.to_owned()),
                (LABEL_TENANT_UID.to_owned(), row.uid.clone()),
                (
                    LABEL_BUCKET.to_owned(),
                    engine::bucket::bucket_label_value(bucket),
                ),
            ])),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_HOST_OR_URL.to_owned(), row.host_or_url.clone()),
                (ANNOTATION_ACTIVATE.to_owned(), row.activate.clone()),
                (ANNOTATION_EXTRA.to_owned(), extra.to_owned()),
                (
                    ANNOTATION_TEMPLATE_GENERATION.to_owned(),
                    generation.to_owned(),
                ),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: format!("{TENANT_GROUP}/{TENANT_VERSION}"),
                kind: "TenantRegistry".to_owned(),
                name: registry.name.to_owned(),
                uid: registry.uid.to_owned(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: TenantSpec {
            uid: row.uid.clone(),
            template_ref: template.name.to_owned(),
            resources,
        },
        status: None,
    })
}

#[cfg(test)]
mod tests;
