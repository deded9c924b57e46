//! Well-known names shared by every component: labels, annotations, finalizers, field managers
//! and the processing phases of a `KubeTemplate`.
//!
//! The tenant names keep the `kubernetes-tenants.org/` prefix of Tenant Operator v1.1.8 so objects
//! created by the original are recognised and adopted unchanged.

/// API group of `KubeTemplate` and `KubeTemplatePolicy`.
pub const KUBETEMPLATER_GROUP: &str = "kubetemplater.io";
/// API version of `KubeTemplate` and `KubeTemplatePolicy`.
pub const KUBETEMPLATER_VERSION: &str = "v1alpha1";
/// API group of `TenantRegistry`, `TenantTemplate` and `Tenant`.
pub const TENANT_GROUP: &str = "operator.kubernetes-tenants.org";
/// API version of `TenantRegistry`, `TenantTemplate` and `Tenant`.
pub const TENANT_VERSION: &str = "v1";

/// Field manager used for every server-side apply of objects rendered from a `KubeTemplate`
/// or a `Tenant`, and for our status writes.
pub const FIELD_MANAGER: &str = "kubetemplater";
/// Field manager of the original Tenant Operator (v1.1.8). Kept so ownership of fields it applied
/// can be recognised and taken over.
pub const TENANT_OPERATOR_FIELD_MANAGER: &str = "tenant-operator";

/// Label holding the bucket (`hash(shard key) mod B`) of a sharded object. Written once by the
/// mutating webhook or the coordinator and never changed; workers watch with a selector on it.
pub const LABEL_BUCKET: &str = "kubetemplater.io/bucket";
/// Namespace label: `disabled` exempts the namespace from kubetemplater's admission webhooks
/// (no admission-time policy verdict, no bucket label from the webhook). Labelling a namespace
/// needs cluster-level rights; workers still check every template against its policy and the
/// coordinator still backfills bucket labels, so the exemption only removes the early answer.
pub const LABEL_ADMISSION: &str = "kubetemplater.io/admission";
/// Value of [`LABEL_ADMISSION`] that exempts a namespace.
pub const ADMISSION_DISABLED: &str = "disabled";
/// Label on every object created from a `KubeTemplate`: the template's name.
pub const LABEL_TEMPLATE_NAME: &str = "kubetemplater.io/template-name";
/// Label on every object created from a `KubeTemplate`: the template's namespace.
pub const LABEL_TEMPLATE_NAMESPACE: &str = "kubetemplater.io/template-namespace";
/// Annotation that resumes a `Paused` `KubeTemplate` when set to `"true"`.
pub const ANNOTATION_RESUME: &str = "kubetemplater.io/resume";
/// Finalizer the original KubeTemplater puts on every namespace. We do not add it; it is listed so
/// it can be removed from namespaces left behind by the original.
pub const FINALIZER_NAMESPACE: &str = "kubetemplater.io/namespace-finalizer";

/// Label on a `Tenant`: name of the `TenantRegistry` that created it.
pub const LABEL_TENANT_REGISTRY: &str = "kubernetes-tenants.org/registry";
/// Label on a `Tenant`: the uid of its database row.
pub const LABEL_TENANT_UID: &str = "kubernetes-tenants.org/uid";
/// Tracking label on objects a `Tenant` created in another namespace (or cluster-scoped, or with
/// `deletionPolicy: Retain`): the `Tenant`'s name.
pub const LABEL_TENANT: &str = "kubernetes-tenants.org/tenant";
/// Tracking label on objects a `Tenant` created without an owner reference: the `Tenant`'s
/// namespace.
pub const LABEL_TENANT_NAMESPACE: &str = "kubernetes-tenants.org/tenant-namespace";
/// Label `"true"` on an object that was retained (orphaned) when its `Tenant` or template entry
/// went away.
pub const LABEL_ORPHANED: &str = "kubernetes-tenants.org/orphaned";

/// Annotation on a `Tenant`: the row's `hostOrUrl` value.
pub const ANNOTATION_HOST_OR_URL: &str = "kubernetes-tenants.org/hostOrUrl";
/// Annotation on a `Tenant`: the row's raw `activate` value.
pub const ANNOTATION_ACTIVATE: &str = "kubernetes-tenants.org/activate";
/// Annotation on a `Tenant`: JSON object of the extra values (template variable -> value).
pub const ANNOTATION_EXTRA: &str = "kubernetes-tenants.org/extra";
/// Annotation on a `Tenant`: `metadata.generation` of the `TenantTemplate` it was rendered from.
pub const ANNOTATION_TEMPLATE_GENERATION: &str = "kubernetes-tenants.org/template-generation";
/// Annotation `"true"` on an object created with `creationPolicy: Once`; once present the object
/// is never applied again.
pub const ANNOTATION_CREATED_ONCE: &str = "kubernetes-tenants.org/created-once";
/// Annotation recording an object's `deletionPolicy` (`Delete` or `Retain`), read when the object
/// is no longer rendered.
pub const ANNOTATION_DELETION_POLICY: &str = "kubernetes-tenants.org/deletion-policy";
/// Annotation on an orphaned object: when it was orphaned (RFC 3339).
pub const ANNOTATION_ORPHANED_AT: &str = "kubernetes-tenants.org/orphaned-at";
/// Annotation on an orphaned object: why (`TenantDeleted` or `RemovedFromTemplate`).
pub const ANNOTATION_ORPHANED_REASON: &str = "kubernetes-tenants.org/orphaned-reason";

/// Value of [`ANNOTATION_ORPHANED_REASON`] when the owning `Tenant` was deleted.
pub const ORPHANED_REASON_TENANT_DELETED: &str = "TenantDeleted";
/// Value of [`ANNOTATION_ORPHANED_REASON`] when the entry was removed from the template.
pub const ORPHANED_REASON_REMOVED_FROM_TEMPLATE: &str = "RemovedFromTemplate";

/// Finalizer on a `TenantRegistry`.
pub const FINALIZER_TENANT_REGISTRY: &str = "kubernetes-tenants.org/registry-finalizer";
/// Finalizer on a `Tenant`.
pub const FINALIZER_TENANT: &str = "tenant.operator.kubernetes-tenants.org/finalizer";

/// Values of `KubeTemplate` `status.processingPhase`. The field is a plain string, as in the
/// original, so unknown values still decode.
pub mod phase {
    /// Accepted and waiting for a worker.
    pub const QUEUED: &str = "Queued";
    /// A worker is rendering and applying it.
    pub const PROCESSING: &str = "Processing";
    /// Every object was applied.
    pub const COMPLETED: &str = "Completed";
    /// The last attempt failed; it will be retried.
    pub const FAILED: &str = "Failed";
    /// Retries are exhausted; set annotation `kubetemplater.io/resume: "true"` to try again.
    pub const PAUSED: &str = "Paused";
    /// Every phase, in lifecycle order.
    pub const ALL: [&str; 5] = [QUEUED, PROCESSING, COMPLETED, FAILED, PAUSED];
}

/// Condition types used in the `conditions` of our statuses.
pub mod condition {
    /// Everything the object asks for is in place.
    pub const READY: &str = "Ready";
    /// Work on the object is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something failed or is not ready.
    pub const DEGRADED: &str = "Degraded";
    /// A `Tenant` resource is owned by another field manager or `Tenant`.
    pub const CONFLICTED: &str = "Conflicted";
    /// A `TenantTemplate` passed validation.
    pub const VALID: &str = "Valid";
    /// Every `Tenant` of a `TenantTemplate` is ready.
    pub const APPLIED: &str = "Applied";
    /// A `TenantRegistry` sync would have deleted more `Tenant`s than its `deletionSafety`
    /// allows, so it deleted none.
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_keys_share_the_original_prefix() {
        for key in [
            LABEL_TENANT_REGISTRY,
            LABEL_TENANT_UID,
            LABEL_TENANT,
            LABEL_TENANT_NAMESPACE,
            LABEL_ORPHANED,
            ANNOTATION_HOST_OR_URL,
            ANNOTATION_ACTIVATE,
            ANNOTATION_EXTRA,
            ANNOTATION_TEMPLATE_GENERATION,
            ANNOTATION_CREATED_ONCE,
            ANNOTATION_DELETION_POLICY,
            ANNOTATION_ORPHANED_AT,
            ANNOTATION_ORPHANED_REASON,
            FINALIZER_TENANT_REGISTRY,
        ] {
            assert!(key.starts_with("kubernetes-tenants.org/"), "{key}");
        }
    }

    #[test]
    fn kubetemplater_labels_are_valid_qualified_names() {
        for key in [LABEL_BUCKET, LABEL_TEMPLATE_NAME, LABEL_TEMPLATE_NAMESPACE] {
            let (prefix, name) = key.split_once('/').expect("prefixed key");
            assert_eq!(prefix, KUBETEMPLATER_GROUP);
            assert!(name.len() <= 63);
        }
    }
}
