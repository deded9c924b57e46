//! `kubetemplater.io/v1alpha1`: [`KubeTemplate`] and [`KubeTemplatePolicy`].
//!
//! Field names, required fields and enum values match KubeTemplater v0.6.2, so its manifests apply
//! unchanged. Status fields we add (`observedGeneration`, `conditions`, `appliedResources`) are
//! optional and do not collide with the original's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Desired state of a KubeTemplate: the objects to create and keep in sync. Every object must
/// be allowed by the KubeTemplatePolicy whose sourceNamespace is the template's namespace.
#[allow(
    clippy::duplicated_attributes,
    reason = "each kube printcolumn(...) repeats keys such as type_ and priority"
)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubetemplater.io",
    version = "v1alpha1",
    kind = "KubeTemplate",
    plural = "kubetemplates",
    singular = "kubetemplate",
    namespaced,
    status = "KubeTemplateStatus",
    shortname = "kt",
    category = "kubetemplater",
    derive = "PartialEq",
    doc = "A set of Kubernetes objects that the operator creates and keeps in sync. Every object must be allowed by the KubeTemplatePolicy whose sourceNamespace is this template's namespace.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.processingPhase",
        description = "Processing phase: Queued, Processing, Completed, Failed or Paused"
    ),
    printcolumn(
        name = "Synced",
        type_ = "integer",
        json_path = ".status.resourcesSynced",
        description = "Objects found in sync at the last check"
    ),
    printcolumn(
        name = "Total",
        type_ = "integer",
        json_path = ".status.resourcesTotal",
        description = "Objects in the template at the last check"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Retry Cycle",
        type_ = "integer",
        json_path = ".status.retryCycle",
        description = "Current retry cycle",
        priority = 1
    ),
    printcolumn(
        name = "Last Reconcile",
        type_ = "date",
        json_path = ".status.lastReconcileTime",
        description = "Last drift check",
        priority = 1
    ),
    printcolumn(
        name = "Drift Count",
        type_ = "integer",
        json_path = ".status.driftDetectionCount",
        description = "Times drift was detected and corrected",
        priority = 1
    ),
    printcolumn(
        name = "Last Drift",
        type_ = "date",
        json_path = ".status.lastDriftDetected",
        description = "Last time drift was detected",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KubeTemplateSpec {
    /// The objects to create. Required; an empty list is allowed and creates nothing. At most 50
    /// entries are admitted.
    pub templates: Vec<TemplateItem>,
}

/// One object of a KubeTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateItem {
    /// The Kubernetes object to create, written exactly as for `kubectl apply` (apiVersion, kind,
    /// metadata, spec...). Kept as written. Without `metadata.namespace` it goes into the
    /// template's namespace.
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub object: Map<String, Value>,
    /// When true and an update is refused because it changes an immutable field, the object is
    /// deleted and created again. Default false.
    #[serde(default)]
    pub replace: bool,
    /// When true the object gets an owner reference to this KubeTemplate, so Kubernetes deletes
    /// it together with the template. Only works for objects in the template's namespace.
    /// Default false.
    #[serde(default)]
    pub referenced: bool,
}

/// Observed state of a KubeTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeTemplateStatus {
    /// Human-readable result of the last processing, e.g. `Completed` or `Error: ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Processing phase: Queued, Processing, Completed, Failed or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_phase: Option<String>,
    /// When the template was last queued for processing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<Time>,
    /// When the template was last processed successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<Time>,
    /// Failed attempts in the current retry cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_count: Option<i64>,
    /// Retry cycles started so far; too many pause the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_cycle: Option<i64>,
    /// When the objects were last checked for drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile_time: Option<Time>,
    /// Number of objects in the template at the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources_total: Option<i64>,
    /// Number of objects found in sync at the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources_synced: Option<i64>,
    /// When drift (an object changed by someone else) was last detected and corrected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drift_detected: Option<Time>,
    /// How many times drift was detected and corrected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_detection_count: Option<i64>,
    /// Total number of dry-run comparisons made while checking for drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run_checks: Option<i64>,
    /// Hex SHA-256 of the spec (as JSON) that was last applied successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_spec_hash: Option<String>,
    /// Why the template is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_reason: Option<String>,
    /// When the template was paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<Time>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Latest observations of the template's state (Ready, Progressing, Degraded), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
    /// The objects applied from this template, used to delete (prune) those no longer listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_resources: Vec<AppliedResource>,
}

/// An object applied from a KubeTemplate.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct AppliedResource {
    /// API version of the object, e.g. `apps/v1` or `v1`.
    pub api_version: String,
    /// Kind of the object, e.g. `Deployment`.
    pub kind: String,
    /// Namespace of the object; absent for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the object.
    pub name: String,
}

/// Desired state of a KubeTemplatePolicy: the namespace it governs and what it allows. The
/// policy lives in the operator's namespace; exactly one may exist per source namespace.
#[allow(
    clippy::duplicated_attributes,
    reason = "each kube printcolumn(...) repeats keys such as type_ and priority"
)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubetemplater.io",
    version = "v1alpha1",
    kind = "KubeTemplatePolicy",
    plural = "kubetemplatepolicies",
    singular = "kubetemplatepolicy",
    namespaced,
    status = "KubeTemplatePolicyStatus",
    shortname = "ktp",
    category = "kubetemplater",
    derive = "PartialEq",
    selectable = ".spec.sourceNamespace",
    doc = "Which objects the KubeTemplates of one namespace may create, where, and with which checks. Lives in the operator's namespace; exactly one policy per source namespace.",
    printcolumn(
        name = "Source Namespace",
        type_ = "string",
        json_path = ".spec.sourceNamespace",
        description = "Namespace whose KubeTemplates this policy governs"
    ),
    printcolumn(
        name = "Active",
        type_ = "boolean",
        json_path = ".status.active",
        description = "Whether the policy is in use"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Templates",
        type_ = "integer",
        json_path = ".status.templatesUsing",
        description = "KubeTemplates governed by this policy",
        priority = 1
    ),
    printcolumn(
        name = "Successes",
        type_ = "integer",
        json_path = ".status.validationSuccesses",
        description = "Admitted validations",
        priority = 1
    ),
    printcolumn(
        name = "Failures",
        type_ = "integer",
        json_path = ".status.validationFailures",
        description = "Denied validations",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KubeTemplatePolicySpec {
    /// Namespace whose KubeTemplates this policy governs.
    pub source_namespace: String,
    /// Kinds of object the templates may create. Required; an empty list allows nothing.
    pub validation_rules: Vec<ValidationRule>,
}

/// Allows one kind of object (group, version, kind) in a list of namespaces, with optional checks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationRule {
    /// Kind of object allowed, e.g. `Deployment`.
    pub kind: String,
    /// API group of the kind; empty string for the core group (ConfigMap, Secret, Service...).
    pub group: String,
    /// API version of the kind, e.g. `v1`.
    pub version: String,
    /// Namespaces the objects may be created in (exact names). An empty list allows none.
    pub target_namespaces: Vec<String>,
    /// Deprecated: a CEL expression over the whole object (variable `object`) that must be true.
    /// Prefer fieldValidations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Checks on fields of the object, run in order; all must pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub field_validations: Vec<FieldValidation>,
}

/// One check on a field of an object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldValidation {
    /// Name of the check, shown in error messages.
    pub name: String,
    /// Kind of check: cel, regex, range, required or forbidden.
    #[serde(rename = "type")]
    pub type_: FieldValidationType,
    /// Dot-separated path of the field to check, e.g. `metadata.name` or `spec.replicas`. Empty
    /// or `object` means the whole object (cel only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_path: Option<String>,
    /// CEL expression that must be true (type cel). The field's value is `value`; with an empty
    /// fieldPath the whole object is `object`. Example: `value.startsWith('prod-')`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cel: Option<String>,
    /// Regular expression (RE2, unanchored) the string field must match (type regex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Smallest allowed value, inclusive (type range, integer fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Largest allowed value, inclusive (type range, integer fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// Accepted for compatibility and ignored: type required already requires the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// Message shown instead of the default text when the check fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Kind of field check.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FieldValidationType {
    /// A CEL expression must be true.
    Cel,
    /// A string field must match a regular expression.
    Regex,
    /// An integer field must lie within min and max.
    Range,
    /// The field must be present, not null and not an empty string.
    Required,
    /// The field must be absent.
    Forbidden,
}

impl FieldValidationType {
    /// The value as written in manifests (`cel`, `regex`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cel => "cel",
            Self::Regex => "regex",
            Self::Range => "range",
            Self::Required => "required",
            Self::Forbidden => "forbidden",
        }
    }
}

impl std::fmt::Display for FieldValidationType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a KubeTemplatePolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeTemplatePolicyStatus {
    /// Whether the policy is in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Number of KubeTemplates governed by this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates_using: Option<i64>,
    /// When a template was last validated against this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_validation_time: Option<Time>,
    /// Number of validations that admitted a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_successes: Option<i64>,
    /// Number of validations that denied a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_failures: Option<i64>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Latest observations of the policy's state, one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Resource;
    use serde_json::json;

    fn template() -> Value {
        json!({
            "apiVersion": "kubetemplater.io/v1alpha1",
            "kind": "KubeTemplate",
            "metadata": {"name": "app", "namespace": "team-a"},
            "spec": {"templates": [
                {"object": {"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "cfg"}, "data": {"a": "1"}}},
                {"object": {"apiVersion": "apps/v1", "kind": "Deployment",
                            "metadata": {"name": "web"}, "spec": {"replicas": 2}},
                 "replace": true, "referenced": true}
            ]}
        })
    }

    #[test]
    fn template_defaults_and_round_trip() {
        let kt: KubeTemplate = serde_json::from_value(template()).expect("decodes");
        assert_eq!(kt.spec.templates.len(), 2);
        assert!(!kt.spec.templates[0].replace && !kt.spec.templates[0].referenced);
        assert!(kt.spec.templates[1].replace && kt.spec.templates[1].referenced);
        assert_eq!(kt.spec.templates[1].object["spec"]["replicas"], 2);
        assert!(kt.status.is_none());
        let back = serde_json::to_value(&kt).expect("encodes");
        assert_eq!(
            back["spec"]["templates"][1],
            template()["spec"]["templates"][1]
        );
        assert_eq!(back["spec"]["templates"][0]["replace"], false);
        let again: KubeTemplate = serde_json::from_value(back).expect("decodes again");
        assert_eq!(again, kt);
    }

    #[test]
    fn empty_template_list_is_allowed_but_required() {
        let mut value = template();
        value["spec"]["templates"] = json!([]);
        let kt: KubeTemplate = serde_json::from_value(value.clone()).expect("empty list");
        assert!(kt.spec.templates.is_empty());
        value["spec"]["templates"] = Value::Null;
        assert!(serde_json::from_value::<KubeTemplate>(value).is_err());
    }

    #[test]
    fn object_must_be_a_json_object() {
        for object in [Value::Null, json!("text"), json!([1])] {
            let mut value = template();
            value["spec"]["templates"][0]["object"] = object;
            assert!(serde_json::from_value::<KubeTemplate>(value).is_err());
        }
    }

    #[test]
    fn status_round_trips_with_original_and_our_fields() {
        let status = json!({
            "status": "Completed",
            "processingPhase": "Completed",
            "queuedAt": "2025-12-18T10:00:00Z",
            "processedAt": "2025-12-18T10:00:01Z",
            "retryCount": 0,
            "retryCycle": 1,
            "lastReconcileTime": "2025-12-18T10:01:00Z",
            "resourcesTotal": 2,
            "resourcesSynced": 2,
            "lastDriftDetected": "2025-12-18T10:01:00Z",
            "driftDetectionCount": 1,
            "dryRunChecks": 4,
            "appliedSpecHash": "ab12",
            "pausedReason": "Max retry cycles (3) exceeded. Last error: boom",
            "pausedAt": "2025-12-18T10:02:00Z",
            "observedGeneration": 3,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Applied",
                            "message": "", "lastTransitionTime": "2025-12-18T10:00:01Z"}],
            "appliedResources": [
                {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "team-a", "name": "cfg"},
                {"apiVersion": "v1", "kind": "Namespace", "name": "extra"}
            ]
        });
        let parsed: KubeTemplateStatus = serde_json::from_value(status.clone()).expect("status");
        assert_eq!(
            parsed.processing_phase.as_deref(),
            Some(crate::constants::phase::COMPLETED)
        );
        assert_eq!(parsed.applied_resources[1].namespace, None);
        assert_eq!(serde_json::to_value(&parsed).expect("encodes"), status);
        assert_eq!(
            serde_json::to_value(KubeTemplateStatus::default()).expect("encodes"),
            json!({})
        );
    }

    #[test]
    fn policy_round_trips_and_rejects_unknown_validation_types() {
        let policy = json!({
            "apiVersion": "kubetemplater.io/v1alpha1",
            "kind": "KubeTemplatePolicy",
            "metadata": {"name": "p", "namespace": "kubetemplater-system"},
            "spec": {
                "sourceNamespace": "team-a",
                "validationRules": [{
                    "kind": "Deployment", "group": "apps", "version": "v1",
                    "targetNamespaces": ["team-a"],
                    "rule": "object.spec.replicas <= 10",
                    "fieldValidations": [
                        {"name": "r", "type": "range", "fieldPath": "spec.replicas", "min": 1, "max": 5},
                        {"name": "n", "type": "regex", "fieldPath": "metadata.name", "regex": "^web",
                         "message": "bad name", "required": true}
                    ]
                }, {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": []}]
            }
        });
        let parsed: KubeTemplatePolicy = serde_json::from_value(policy.clone()).expect("policy");
        let rules = &parsed.spec.validation_rules;
        assert_eq!(
            rules[0].field_validations[0].type_,
            FieldValidationType::Range
        );
        assert_eq!(rules[0].field_validations[0].min, Some(1));
        assert_eq!(rules[1].group, "");
        assert!(rules[1].target_namespaces.is_empty());
        assert_eq!(serde_json::to_value(&parsed).expect("encodes"), policy);

        for bad in ["Range", "CEL", "pattern"] {
            let mut value = policy.clone();
            value["spec"]["validationRules"][0]["fieldValidations"][0]["type"] = json!(bad);
            assert!(
                serde_json::from_value::<KubeTemplatePolicy>(value).is_err(),
                "{bad}"
            );
        }
        let mut unnamed = policy;
        let validation = &mut unnamed["spec"]["validationRules"][0]["fieldValidations"][0];
        validation.as_object_mut().expect("object").remove("name");
        assert!(serde_json::from_value::<KubeTemplatePolicy>(unnamed).is_err());
    }

    #[test]
    fn field_validation_type_names() {
        for (ty, name) in [
            (FieldValidationType::Cel, "cel"),
            (FieldValidationType::Regex, "regex"),
            (FieldValidationType::Range, "range"),
            (FieldValidationType::Required, "required"),
            (FieldValidationType::Forbidden, "forbidden"),
        ] {
            assert_eq!(ty.to_string(), name);
            assert_eq!(serde_json::to_value(ty).expect("encodes"), json!(name));
        }
    }

    #[test]
    fn resource_identity() {
        assert_eq!(KubeTemplate::api_version(&()), "kubetemplater.io/v1alpha1");
        assert_eq!(KubeTemplate::plural(&()), "kubetemplates");
        assert_eq!(KubeTemplatePolicy::kind(&()), "KubeTemplatePolicy");
        assert_eq!(KubeTemplatePolicy::plural(&()), "kubetemplatepolicies");
    }
}
