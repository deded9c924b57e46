//! Admission decisions: one `AdmissionRequest` in, one `AdmissionResponse` out. No I/O: policies
//! come from the [`PolicyCache`], everything else from `engine`.
//!
//! | endpoint ([`Operation`])  | resources                      | decides                                   |
//! |---------------------------|--------------------------------|-------------------------------------------|
//! | validate KubeTemplate     | kubetemplates CREATE, UPDATE   | `engine::policy` verdict, all violations  |
//! | validate policy           | kubetemplatepolicies           | CEL/regex compile, min ≤ max, no duplicate GVK rule |
//! | validate TenantTemplate   | tenanttemplates                | ids, dependencies, cycles, templates parse |
//! | mutate bucket             | kubetemplates, tenants         | adds `kubetemplater.io/bucket`, trace context |
//!
//! Deliberate differences from the original KubeTemplater webhook (see `docs/webhook.md`):
//! an UPDATE that leaves `spec` unchanged, or of an object being deleted, is allowed without
//! evaluation, so labels, annotations and finalizers can always be changed (the original re-checked
//! the whole object, so a template that a policy change made invalid could not even lose its
//! finalizer); every violation is reported, not only the first.

use std::num::NonZeroU32;
use std::sync::Arc;

use api::constants::{LABEL_BUCKET, LABEL_TENANT_REGISTRY};
use api::{KubeTemplatePolicy, KubeTemplateSpec, TenantTemplate};
use engine::bucket::{
    bucket, bucket_label_value, kubetemplate_shard_key, parse_bucket_label, tenant_shard_key,
};
use engine::policy::{EvaluateOptions, PolicyLookup, evaluate_with, validate_policy};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation as AdmissionOperation};
use serde::Deserialize as _;
use serde_json::{Map, Value};

use crate::PolicyCache;
use crate::metrics::Verdict;

/// The review endpoints the webhook serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Validating: KubeTemplate against its namespace's policy.
    ValidateKubeTemplate,
    /// Validating: KubeTemplatePolicy well-formedness.
    ValidatePolicy,
    /// Validating: TenantTemplate well-formedness.
    ValidateTenantTemplate,
    /// Mutating: bucket label and trace context on KubeTemplates and Tenants.
    MutateBucket,
}

impl Operation {
    /// Every endpoint.
    pub const ALL: [Operation; 4] = [
        Operation::ValidateKubeTemplate,
        Operation::ValidatePolicy,
        Operation::ValidateTenantTemplate,
        Operation::MutateBucket,
    ];

    /// The HTTP path. The KubeTemplate one is the original's, so existing configurations and
    /// scripts keep working.
    pub fn path(self) -> &'static str {
        match self {
            Operation::ValidateKubeTemplate => "/validate-kubetemplater-io-v1alpha1-kubetemplate",
            Operation::ValidatePolicy => "/validate-kubetemplater-io-v1alpha1-kubetemplatepolicy",
            Operation::ValidateTenantTemplate => {
                "/validate-operator-kubernetes-tenants-org-v1-tenanttemplate"
            }
            Operation::MutateBucket => "/mutate-kubetemplater-io-bucket",
        }
    }

    /// The endpoint for a path.
    pub fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.path() == path)
    }

    /// The metric and span label.
    pub fn label(self) -> &'static str {
        match self {
            Operation::ValidateKubeTemplate => "validate-kubetemplate",
            Operation::ValidatePolicy => "validate-kubetemplatepolicy",
            Operation::ValidateTenantTemplate => "validate-tenanttemplate",
            Operation::MutateBucket => "mutate-bucket",
        }
    }
}

/// A decided review.
#[derive(Debug)]
pub struct Outcome {
    /// What goes back to the API server.
    pub response: AdmissionResponse,
    /// For metrics and the span.
    pub verdict: Verdict,
}

/// Makes admission decisions. Cheap to share (`Arc` inside).
#[derive(Debug, Clone)]
pub struct Reviewer {
    cache: Arc<PolicyCache>,
    buckets: NonZeroU32,
    policy_namespace: String,
    options: Arc<EvaluateOptions>,
}

impl Reviewer {
    /// A reviewer reading policies from `cache`, which holds the policies of `policy_namespace`.
    pub fn new(
        cache: Arc<PolicyCache>,
        buckets: NonZeroU32,
        policy_namespace: impl Into<String>,
    ) -> Self {
        Self {
            cache,
            buckets,
            policy_namespace: policy_namespace.into(),
            options: Arc::new(EvaluateOptions::default()),
        }
    }

    /// Decides one request for endpoint `op`.
    pub fn review(&self, op: Operation, req: &AdmissionRequest<DynamicObject>) -> Outcome {
        if !matches!(
            req.operation,
            AdmissionOperation::Create | AdmissionOperation::Update
        ) {
            // Deletes (and connects) are always allowed; the configurations do not even send them.
            return allow(req, Vec::new());
        }
        let Some(object) = req.object.as_ref() else {
            return invalid(
                req,
                format!(
                    "{} request for {} has no object",
                    operation_name(req),
                    describe(req)
                ),
            );
        };
        match op {
            Operation::ValidateKubeTemplate => self.validate_kubetemplate(req, object),
            Operation::ValidatePolicy => self.validate_policy(req, object),
            Operation::ValidateTenantTemplate => validate_tenanttemplate(req, object),
            Operation::MutateBucket => self.mutate_bucket(req, object),
        }
    }

    fn validate_kubetemplate(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        object: &DynamicObject,
    ) -> Outcome {
        if let Some(wrong) = expect_kind(req, "kubetemplater.io", "KubeTemplate") {
            return wrong;
        }
        if unchanged_spec_update(req, object) {
            return allow(req, Vec::new());
        }
        let namespace = req.namespace.as_deref().unwrap_or_default();
        let spec =
            match KubeTemplateSpec::deserialize(object.data.get("spec").unwrap_or(&Value::Null)) {
                Ok(spec) => spec,
                Err(error) => {
                    return deny(
                        req,
                        format!("{}: spec does not decode: {error}", describe(req)),
                        Vec::new(),
                    );
                }
            };
        let policies = self.cache.lookup(namespace);
        let lookup = PolicyLookup::among(namespace, policies.iter().map(AsRef::as_ref));
        let verdict = evaluate_with(namespace, &spec.templates, lookup, &self.options);
        let warnings = verdict.warnings.clone();
        if verdict.allowed {
            allow(req, warnings)
        } else {
            deny(req, verdict.message(), warnings)
        }
    }

    fn validate_policy(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        object: &DynamicObject,
    ) -> Outcome {
        if let Some(wrong) = expect_kind(req, "kubetemplater.io", "KubeTemplatePolicy") {
            return wrong;
        }
        let policy = match object.clone().try_parse::<KubeTemplatePolicy>() {
            Ok(policy) => policy,
            Err(error) => {
                return deny(
                    req,
                    format!("{} does not decode: {error}", describe(req)),
                    Vec::new(),
                );
            }
        };
        let problems = validate_policy(&policy);
        let mut warnings = policy_warnings(&policy);
        let namespace = req.namespace.as_deref().unwrap_or_default();
        if namespace != self.policy_namespace {
            warnings.push(format!(
                "KubeTemplatePolicies are read only from namespace {}; this one in {namespace} has no effect",
                self.policy_namespace
            ));
        } else {
            let others = self
                .cache
                .others_selecting(&policy.spec.source_namespace, &req.name);
            if !others.is_empty() {
                warnings.push(format!(
                    "KubeTemplatePolicy {} also selects sourceNamespace {}; while two policies select it every KubeTemplate there is denied",
                    others.join(", "),
                    policy.spec.source_namespace
                ));
            }
        }
        if problems.is_empty() {
            allow(req, warnings)
        } else {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            deny(
                req,
                format!("{} is invalid:\n{}", describe(req), list.join("\n")),
                warnings,
            )
        }
    }

    fn mutate_bucket(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        object: &DynamicObject,
    ) -> Outcome {
        let shard_key = match (req.kind.group.as_str(), req.kind.kind.as_str()) {
            ("kubetemplater.io", "KubeTemplate") => {
                kubetemplate_shard_key(req.namespace.as_deref().unwrap_or_default())
            }
            ("operator.kubernetes-tenants.org", "Tenant") => {
                let Some(uid) = object.data.pointer("/spec/uid").and_then(Value::as_str) else {
                    return deny(
                        req,
                        format!(
                            "{}: spec.uid is missing, so its bucket cannot be computed",
                            describe(req)
                        ),
                        Vec::new(),
                    );
                };
                let registry = object
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_TENANT_REGISTRY))
                    .map_or("", String::as_str);
                tenant_shard_key(req.namespace.as_deref().unwrap_or_default(), registry, uid)
            }
            (group, kind) => {
                return invalid(
                    req,
                    format!(
                        "the bucket endpoint serves KubeTemplates and Tenants, not {kind}.{group}"
                    ),
                );
            }
        };
        let mut ops = Vec::new();

        let current = label(object, LABEL_BUCKET);
        let previous = req
            .old_object
            .as_ref()
            .and_then(|old| label(old, LABEL_BUCKET));
        match current {
            Some(value) => {
                if let Err(error) = parse_bucket_label(value, self.buckets) {
                    return deny(
                        req,
                        format!("{}: label {LABEL_BUCKET}: {error}", describe(req)),
                        Vec::new(),
                    );
                }
                if let Some(previous) = previous
                    && previous != value
                {
                    return deny(
                        req,
                        format!(
                            "{}: label {LABEL_BUCKET} cannot change (it is {previous:?}; the request sets {value:?})",
                            describe(req)
                        ),
                        Vec::new(),
                    );
                }
            }
            None => {
                // Removed by an update (e.g. `kubectl apply` of a manifest without it): restore it.
                let value = previous
                    .filter(|p| parse_bucket_label(p, self.buckets).is_ok())
                    .map_or_else(
                        || bucket_label_value(bucket(&shard_key, self.buckets)),
                        str::to_owned,
                    );
                add_to_map(
                    &mut ops,
                    object.metadata.labels.is_some(),
                    "labels",
                    LABEL_BUCKET,
                    value,
                );
            }
        }

        if !unchanged_spec_update(req, object) {
            let mut carrier = std::collections::BTreeMap::new();
            telemetry::propagation::inject_annotations(
                &telemetry::propagation::current_context(),
                &mut carrier,
            );
            let mut has_annotations = object.metadata.annotations.is_some();
            for (key, value) in carrier {
                add_to_map(&mut ops, has_annotations, "annotations", &key, value);
                has_annotations = true;
            }
        }

        if ops.is_empty() {
            return allow(req, Vec::new());
        }
        match AdmissionResponse::from(req).with_patch(Patch(ops)) {
            Ok(response) => Outcome {
                response,
                verdict: Verdict::Mutated,
            },
            Err(error) => invalid(
                req,
                format!("building the patch for {} failed: {error}", describe(req)),
            ),
        }
    }
}

fn validate_tenanttemplate(
    req: &AdmissionRequest<DynamicObject>,
    object: &DynamicObject,
) -> Outcome {
    if let Some(wrong) = expect_kind(req, "operator.kubernetes-tenants.org", "TenantTemplate") {
        return wrong;
    }
    let template = match object.clone().try_parse::<TenantTemplate>() {
        Ok(template) => template,
        Err(error) => {
            return deny(
                req,
                format!("{} does not decode: {error}", describe(req)),
                Vec::new(),
            );
        }
    };
    let warnings: Vec<String> = engine::dag::check_spec_templates(&template.spec)
        .iter()
        .map(|p| format!("{p} (the text is kept as written when it does not render)"))
        .collect();
    let problems = engine::dag::validate_template(&template.spec);
    if problems.is_empty() {
        allow(req, warnings)
    } else {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        deny(
            req,
            format!("{} is invalid:\n{}", describe(req), list.join("\n")),
            warnings,
        )
    }
}

/// Warnings for deprecated or ignored policy fields.
fn policy_warnings(policy: &KubeTemplatePolicy) -> Vec<String> {
    let mut warnings = Vec::new();
    for (i, rule) in policy.spec.validation_rules.iter().enumerate() {
        if rule.rule.is_some() {
            warnings.push(format!(
                "validationRules[{i}].rule is deprecated: use a fieldValidation of type cel with an empty fieldPath"
            ));
        }
        for (j, validation) in rule.field_validations.iter().enumerate() {
            if validation.required.is_some() {
                warnings.push(format!(
                    "validationRules[{i}].fieldValidations[{j}].required is ignored: use type required"
                ));
            }
        }
    }
    warnings
}

/// Whether this is an UPDATE that leaves `spec` as it was, or of an object being deleted.
fn unchanged_spec_update(req: &AdmissionRequest<DynamicObject>, object: &DynamicObject) -> bool {
    if req.operation != AdmissionOperation::Update {
        return false;
    }
    if object.metadata.deletion_timestamp.is_some() {
        return true;
    }
    req.old_object
        .as_ref()
        .is_some_and(|old| old.data.get("spec") == object.data.get("spec"))
}

fn label<'a>(object: &'a DynamicObject, key: &str) -> Option<&'a str> {
    object
        .metadata
        .labels
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Adds `key: value` to `metadata.<map>`, creating the map when it does not exist yet.
fn add_to_map(
    ops: &mut Vec<PatchOperation>,
    map_exists: bool,
    map: &str,
    key: &str,
    value: String,
) {
    let already = ops.iter_mut().find_map(|op| match op {
        PatchOperation::Add(add) if add.path == PointerBuf::from_tokens(["metadata", map]) => {
            add.value.as_object_mut()
        }
        _ => None,
    });
    if let Some(object) = already {
        object.insert(key.to_owned(), Value::String(value));
        return;
    }
    let op = if map_exists {
        AddOperation {
            path: PointerBuf::from_tokens(["metadata", map, key]),
            value: Value::String(value),
        }
    } else {
        let mut m = Map::new();
        m.insert(key.to_owned(), Value::String(value));
        AddOperation {
            path: PointerBuf::from_tokens(["metadata", map]),
            value: Value::Object(m),
        }
    };
    ops.push(PatchOperation::Add(op));
}

fn expect_kind(req: &AdmissionRequest<DynamicObject>, group: &str, kind: &str) -> Option<Outcome> {
    (req.kind.group != group || req.kind.kind != kind).then(|| {
        invalid(
            req,
            format!(
                "this endpoint reviews {kind}.{group}, not {}.{} (check the webhook configuration's rules)",
                req.kind.kind, req.kind.group
            ),
        )
    })
}

/// `Kind namespace/name` of the request's object, for messages.
pub fn describe(req: &AdmissionRequest<DynamicObject>) -> String {
    let name = if req.name.is_empty() {
        req.object
            .as_ref()
            .and_then(|o| o.metadata.generate_name.as_deref())
            .map_or_else(|| "<unnamed>".to_owned(), |g| format!("{g}<generated>"))
    } else {
        req.name.clone()
    };
    match req.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{} {ns}/{name}", req.kind.kind),
        _ => format!("{} {name}", req.kind.kind),
    }
}

fn operation_name(req: &AdmissionRequest<DynamicObject>) -> &'static str {
    match req.operation {
        AdmissionOperation::Create => "CREATE",
        AdmissionOperation::Update => "UPDATE",
        AdmissionOperation::Delete => "DELETE",
        AdmissionOperation::Connect => "CONNECT",
    }
}

fn allow(req: &AdmissionRequest<DynamicObject>, warnings: Vec<String>) -> Outcome {
    let mut response = AdmissionResponse::from(req);
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    Outcome {
        response,
        verdict: Verdict::Allowed,
    }
}

fn deny(req: &AdmissionRequest<DynamicObject>, message: String, warnings: Vec<String>) -> Outcome {
    let mut response = AdmissionResponse::from(req).deny(message);
    response.result.code = 403;
    response.result.reason = "Forbidden".to_owned();
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    Outcome {
        response,
        verdict: Verdict::Denied,
    }
}

fn invalid(req: &AdmissionRequest<DynamicObject>, message: String) -> Outcome {
    let mut response = AdmissionResponse::from(req).deny(message);
    response.result.code = 400;
    response.result.reason = "BadRequest".to_owned();
    Outcome {
        response,
        verdict: Verdict::Invalid,
    }
}

#[cfg(test)]
mod tests;
