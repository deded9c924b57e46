//! What a Tenant asks for: its variables, its objects in dependency levels, and the digest that
//! lets an unchanged, ready Tenant be skipped without an API call. Pure: no I/O.
//!
//! Variables are rebuilt from the Tenant as the original does: `.uid` from the spec, `.hostOrUrl`
//! (the uid when empty), `.host`, `.activate` and the extras from the registry's annotations, plus
//! `.registryId` (its label) and `.templateRef`. Annotation JSON that does not parse is an error
//! (the original's `VariablesBuildError`), and so is a template that uses a variable the row does
//! not have.
//!
//! Every object gets the annotation `kubernetes-tenants.org/deletion-policy` (and
//! `kubernetes-tenants.org/created-once: "true"` with `creationPolicy: Once`), the bucket label
//! of its Tenant and the tracking labels `kubernetes-tenants.org/tenant` and `…/tenant-namespace`
//! (the original's documentation lists a tenant's objects with
//! `kubectl get deployments,services -l kubernetes-tenants.org/tenant`; its code set them only on
//! objects without an owner). In the Tenant's namespace with `deletionPolicy: Delete` (and not a
//! Namespace) an object also gets a controller owner reference to the Tenant, so the garbage
//! collector removes it with the Tenant. Cluster-scoped kinds other than Namespace lose the owner
//! reference at apply time, once discovery says they are cluster-scoped.

use std::collections::BTreeMap;

use api::constants::{
    ANNOTATION_ACTIVATE, ANNOTATION_CREATED_ONCE, ANNOTATION_DELETION_POLICY, ANNOTATION_EXTRA,
    ANNOTATION_HOST_OR_URL, LABEL_BUCKET, LABEL_TENANT, LABEL_TENANT_NAMESPACE,
    LABEL_TENANT_REGISTRY, TENANT_GROUP, TENANT_VERSION,
};
use api::{ConflictPolicy, CreationPolicy, DeletionPolicy, PatchStrategy, TResource, Tenant};
use engine::render::{Renderer, Vars};
use kube::ResourceExt as _;
use serde_json::{Value, json};

/// One object of a Tenant, rendered, with its entry's policies.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantObject {
    /// The entry's id.
    pub id: String,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Namespace (the Tenant's unless `targetNamespace` says otherwise; ignored for
    /// cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The object to write.
    pub object: Value,
    /// The entry's `dependIds`.
    pub depends: Vec<String>,
    /// `creationPolicy`.
    pub creation: CreationPolicy,
    /// `deletionPolicy`.
    pub deletion: DeletionPolicy,
    /// `conflictPolicy`.
    pub conflict: ConflictPolicy,
    /// `patchStrategy`.
    pub patch: PatchStrategy,
    /// `waitForReady`.
    pub wait_for_ready: bool,
    /// `timeoutSeconds`.
    pub timeout_seconds: u64,
    /// `skipOnDependencyFailure` (default true).
    pub skip_on_dependency_failure: bool,
    /// `ignoreFields`.
    pub ignore_fields: Vec<String>,
    /// Whether it carries an owner reference to the Tenant.
    pub owned: bool,
}

impl TenantObject {
    /// The key recorded in `status.appliedResources`: `Kind/namespace/name@id`, as the original.
    pub fn key(&self) -> String {
        format!("{}/{}/{}@{}", self.kind, self.namespace, self.name, self.id)
    }

    /// `Kind namespace/name` for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {}/{} (id {})",
            self.kind, self.namespace, self.name, self.id
        )
    }
}

/// A key of `status.appliedResources`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedKey {
    /// Kind.
    pub kind: String,
    /// Namespace ("" for cluster-scoped objects recorded without one).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The entry's id.
    pub id: String,
}

impl AppliedKey {
    /// Parses `Kind/namespace/name@id`.
    pub fn parse(key: &str) -> Option<Self> {
        let (rest, id) = key.rsplit_once('@')?;
        let mut parts = rest.splitn(3, '/');
        let kind = parts.next()?.to_owned();
        let namespace = parts.next()?.to_owned();
        let name = parts.next()?.to_owned();
        (!kind.is_empty() && !name.is_empty()).then_some(Self {
            kind,
            namespace,
            name,
            id: id.to_owned(),
        })
    }
}

/// Why a Tenant cannot be rendered at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    /// Its variables cannot be built (the `extra` annotation is not a JSON object of strings).
    #[error("building the variables: {0}")]
    Variables(String),
    /// Its entries cannot be ordered (duplicate or empty id, unknown dependency, cycle).
    #[error("ordering the resources: {0}")]
    Dependencies(#[from] engine::dag::DagError),
}

/// A Tenant's objects.
#[derive(Debug, Clone, Default)]
pub struct TenantDesired {
    /// Objects by level: level 0 first; the objects of a level are independent.
    pub levels: Vec<Vec<TenantObject>>,
    /// Entries that failed to render: (id, message).
    pub failed: Vec<(String, String)>,
}

impl TenantDesired {
    /// Every object, level by level.
    pub fn objects(&self) -> impl Iterator<Item = &TenantObject> {
        self.levels.iter().flatten()
    }

    /// Entries in total (rendered or not).
    pub fn len(&self) -> usize {
        self.levels.iter().map(Vec::len).sum::<usize>() + self.failed.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Tenant's template variables (see the module documentation).
pub fn vars(tenant: &Tenant) -> Result<Vars, DesiredError> {
    let annotations = tenant.annotations();
    let get = |key: &str| annotations.get(key).map(String::as_str).unwrap_or("");
    let extra: BTreeMap<String, String> = match annotations.get(ANNOTATION_EXTRA) {
        None => BTreeMap::new(),
        Some(text) if text.trim().is_empty() => BTreeMap::new(),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            DesiredError::Variables(format!(
                "annotation {ANNOTATION_EXTRA} is not a JSON object of strings: {e}"
            ))
        })?,
    };
    let activate = match get(ANNOTATION_ACTIVATE) {
        "" => "true",
        value => value,
    };
    let registry = tenant
        .labels()
        .get(LABEL_TENANT_REGISTRY)
        .cloned()
        .unwrap_or_default();
    Ok(
        Vars::tenant(&tenant.spec.uid, get(ANNOTATION_HOST_OR_URL), activate)
            .with_registry_id(registry)
            .with_template_ref(tenant.spec.template_ref.clone())
            .with_extra(extra),
    )
}

/// Digest of what a Tenant's objects are made from: its spec, variables and identity.
pub fn digest(tenant: &Tenant, vars: &Vars) -> String {
    let vars: BTreeMap<&str, &str> = vars.iter().collect();
    engine::hash::object_hash(&json!({
        "spec": tenant.spec,
        "vars": vars,
        "namespace": tenant.namespace(),
        "name": tenant.name_any(),
        "uid": tenant.metadata.uid,
        "bucket": tenant.labels().get(LABEL_BUCKET),
    }))
}

/// Renders a Tenant's objects in dependency levels.
pub fn desired(tenant: &Tenant, vars: &Vars) -> Result<TenantDesired, DesiredError> {
    let levels = engine::dag::levels_of(&tenant.spec.resources)?;
    let entries: BTreeMap<&str, &TResource> = tenant
        .spec
        .resources
        .iter()
        .map(|(_, entry)| (entry.id.as_str(), entry))
        .collect();
    let namespace = tenant.namespace().unwrap_or_default();
    let mut renderer = Renderer::new();
    let mut out = TenantDesired::default();
    for level in levels {
        let mut objects = Vec::with_capacity(level.len());
        for id in level {
            let Some(entry) = entries.get(id.as_str()) else {
                continue;
            };
            match renderer.render_resource(entry, vars, &namespace) {
                Ok(rendered) => objects.push(decorate(tenant, entry, rendered)),
                Err(error) => out.failed.push((id.clone(), error.to_string())),
            }
        }
        out.levels.push(objects);
    }
    Ok(out)
}

fn decorate(
    tenant: &Tenant,
    entry: &TResource,
    rendered: engine::render::RenderedResource,
) -> TenantObject {
    let tenant_namespace = tenant.namespace().unwrap_or_default();
    let tenant_name = tenant.name_any();
    let owned = rendered.kind != "Namespace"
        && rendered.namespace == tenant_namespace
        && entry.deletion_policy == DeletionPolicy::Delete;
    let mut object = rendered.object;
    if let Some(meta) = object
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(labels) = labels {
            if let Some(bucket) = tenant.labels().get(LABEL_BUCKET) {
                labels.insert(LABEL_BUCKET.to_owned(), json!(bucket));
            }
            labels.insert(LABEL_TENANT.to_owned(), json!(tenant_name));
            labels.insert(LABEL_TENANT_NAMESPACE.to_owned(), json!(tenant_namespace));
        }
        if let Some(annotations) = meta
            .entry("annotations")
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            let policy = match entry.deletion_policy {
                DeletionPolicy::Delete => "Delete",
                DeletionPolicy::Retain => "Retain",
            };
            annotations.insert(ANNOTATION_DELETION_POLICY.to_owned(), json!(policy));
            if entry.creation_policy == CreationPolicy::Once {
                annotations.insert(ANNOTATION_CREATED_ONCE.to_owned(), json!("true"));
            }
        }
        if owned {
            meta.insert(
                "ownerReferences".to_owned(),
                json!([{
                    "apiVersion": format!("{TENANT_GROUP}/{TENANT_VERSION}"),
                    "kind": "Tenant",
                    "name": tenant_name,
                    "uid": tenant.metadata.uid.clone().unwrap_or_default(),
                    "controller": true,
                    "blockOwnerDeletion": true,
                }]),
            );
        }
    }
    TenantObject {
        id: entry.id.clone(),
        api_version: rendered.api_version,
        kind: rendered.kind,
        namespace: rendered.namespace,
        name: rendered.name,
        object,
        depends: entry.depend_ids.clone(),
        creation: entry.creation_policy,
        deletion: entry.deletion_policy,
        conflict: entry.conflict_policy,
        patch: entry.patch_strategy,
        wait_for_ready: entry.wait_for_ready,
        timeout_seconds: u64::try_from(entry.timeout_seconds.clamp(1, 3600)).unwrap_or(300),
        skip_on_dependency_failure: entry.skips_on_dependency_failure(),
        ignore_fields: entry.ignore_fields.clone(),
        owned,
    }
}

/// Drops the owner reference of an object (a cluster-scoped kind cannot be owned by a
/// namespaced Tenant); its tracking labels remain.
pub fn unown(object: &mut TenantObject) {
    if !object.owned {
        return;
    }
    object.owned = false;
    if let Some(meta) = object
        .object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
    {
        meta.remove("ownerReferences");
    }
}

/// Whether `tenant` has applied `object` (its `status.appliedResources` names it).
pub fn lists(tenant: &Tenant, object: &crate::drift::ManagedObject) -> bool {
    let namespace = object.namespace.as_deref().unwrap_or("");
    tenant
        .status
        .iter()
        .flat_map(|s| &s.applied_resources)
        .any(|key| {
            AppliedKey::parse(key).is_some_and(|k| {
                k.kind == object.kind.kind
                    && k.name == object.name
                    && (object.namespace.is_none() || k.namespace == namespace)
            })
        })
}

/// The kinds (apiVersion, kind) a Tenant's entries create, as written in their specs.
pub fn kinds_of(tenant: &Tenant) -> std::collections::BTreeSet<(String, String)> {
    tenant
        .spec
        .resources
        .iter()
        .filter_map(|(_, entry)| {
            let text = |key: &str| entry.spec.get(key).and_then(Value::as_str);
            Some((text("apiVersion")?.to_owned(), text("kind")?.to_owned()))
        })
        .filter(|(api_version, kind)| !api_version.contains("{{") && !kind.contains("{{"))
        .collect()
}

#[cfg(test)]
mod tests;
