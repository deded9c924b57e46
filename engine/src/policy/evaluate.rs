//! Evaluating a KubeTemplate's items against the compiled policy of its namespace.

use api::TemplateItem;
use kube_cel::cel::Context;
use serde_json::{Map, Value};

use super::cel::{CelProgram, CelVar, context_with, root_to_cel, to_cel};
use super::compile::{CompiledKind, CompiledPolicy, CompiledValidation, GroupVersionKind};
use super::cost::{Binding, SizeMemo};
use super::fields::{Hit, Root, as_int, as_string, lookup};
use super::scope::ClusterScopedKinds;
use super::verdict::{Check, Verdict, Violation};
use crate::gojson::{go_json, go_json_size};

/// Most templates (items) one KubeTemplate may hold.
pub const MAX_TEMPLATES: usize = 50;
/// Largest object (compact JSON, as the API server sends it) one item may hold, in bytes.
pub const MAX_OBJECT_BYTES: usize = 1_048_576;

/// The policies found for a template's namespace.
#[derive(Clone, Copy, Debug)]
pub enum PolicyLookup<'a> {
    /// No policy governs the namespace.
    NotFound,
    /// Exactly one policy.
    Found(&'a CompiledPolicy),
    /// Two or more policies (the original has no precedence: deny).
    Multiple,
    /// The policies could not be listed; the text is the cause.
    ListFailed(&'a str),
}

impl<'a> PolicyLookup<'a> {
    /// The result of looking for the policies whose `sourceNamespace` is `namespace`.
    pub fn among<I>(namespace: &str, policies: I) -> Self
    where
        I: IntoIterator<Item = &'a CompiledPolicy>,
    {
        let mut found = None;
        for policy in policies {
            if policy.source_namespace() == namespace {
                if found.is_some() {
                    return PolicyLookup::Multiple;
                }
                found = Some(policy);
            }
        }
        found.map_or(PolicyLookup::NotFound, PolicyLookup::Found)
    }
}

/// Options of an evaluation.
#[derive(Clone, Debug, Default)]
pub struct EvaluateOptions {
    /// Kinds treated as cluster-scoped (built-in table by default).
    pub cluster_scoped: ClusterScopedKinds,
}

/// Evaluates the items of a KubeTemplate in `template_namespace` against its policy.
pub fn evaluate(
    template_namespace: &str,
    templates: &[TemplateItem],
    policy: PolicyLookup<'_>,
) -> Verdict {
    evaluate_with(
        template_namespace,
        templates,
        policy,
        &EvaluateOptions::default(),
    )
}

/// [`evaluate`] with options.
pub fn evaluate_with(
    template_namespace: &str,
    templates: &[TemplateItem],
    policy: PolicyLookup<'_>,
    options: &EvaluateOptions,
) -> Verdict {
    let lookup_failure = |cause: String| {
        Verdict::new(
            vec![whole_template(
                Check::PolicyLookup,
                format!("failed to get policy: {cause}"),
            )],
            Vec::new(),
        )
    };
    let policy = match policy {
        PolicyLookup::Found(policy) => policy,
        PolicyLookup::NotFound => {
            return lookup_failure(format!(
                "no KubeTemplatePolicy found for source namespace {template_namespace}"
            ));
        }
        PolicyLookup::Multiple => {
            return lookup_failure(format!(
                "multiple KubeTemplatePolicies found for source namespace {template_namespace}"
            ));
        }
        PolicyLookup::ListFailed(cause) => {
            return lookup_failure(format!("failed to list KubeTemplatePolicies: {cause}"));
        }
    };
    if templates.len() > MAX_TEMPLATES {
        return Verdict::new(
            vec![whole_template(
                Check::TemplateCount,
                format!(
                    "too many templates: {} (max allowed: {MAX_TEMPLATES})",
                    templates.len()
                ),
            )],
            Vec::new(),
        );
    }
    let mut violations = Vec::new();
    let mut warnings = Vec::new();
    for (index, item) in templates.iter().enumerate() {
        let before = violations.len();
        let passed = ItemEvaluation {
            index,
            template_namespace,
            policy,
            options,
            violations: &mut violations,
        }
        .run(item);
        if let Some(id) = passed
            && violations.len() == before
            && item.replace
        {
            warnings.push(format!(
                "template[{index}]: replace is enabled for {}/{}. The resource will be deleted and recreated if immutable fields are changed",
                id.gvk, id.name
            ));
        }
    }
    Verdict::new(violations, warnings)
}

fn whole_template(check: Check, message: String) -> Violation {
    Violation {
        template_index: None,
        kind: None,
        api_version: None,
        namespace: None,
        name: None,
        check,
        field_path: None,
        message,
    }
}

/// Identity of a decoded item.
struct ItemId {
    gvk: GroupVersionKind,
    api_version: String,
    name: String,
    namespace: String,
}

struct ItemEvaluation<'a, 'p> {
    index: usize,
    template_namespace: &'a str,
    policy: &'p CompiledPolicy,
    options: &'a EvaluateOptions,
    violations: &'a mut Vec<Violation>,
}

fn string_at<'v>(object: &'v Map<String, Value>, key: &str) -> Option<&'v str> {
    object.get(key).and_then(Value::as_str)
}

fn metadata_string<'v>(object: &'v Map<String, Value>, key: &str) -> Option<&'v str> {
    object
        .get("metadata")
        .and_then(Value::as_object)
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
}

/// The original's `SetNamespace` when the namespace is empty: the object's `metadata` after
/// defaulting, when it changes (`None`: unchanged), and the effective namespace.
fn default_namespace(
    object: &Map<String, Value>,
    template_namespace: &str,
) -> (Option<Value>, String) {
    match object.get("metadata") {
        Some(Value::Object(metadata)) => {
            if let Some(ns) = metadata.get("namespace").and_then(Value::as_str)
                && !ns.is_empty()
            {
                return (None, ns.to_string());
            }
            if template_namespace.is_empty() {
                if !metadata.contains_key("namespace") {
                    return (None, String::new());
                }
                let mut patched = metadata.clone();
                patched.remove("namespace");
                return (Some(Value::Object(patched)), String::new());
            }
            let mut patched = metadata.clone();
            patched.insert(
                "namespace".to_string(),
                Value::String(template_namespace.to_string()),
            );
            (Some(Value::Object(patched)), template_namespace.to_string())
        }
        None if !template_namespace.is_empty() => {
            let mut patched = Map::new();
            patched.insert(
                "namespace".to_string(),
                Value::String(template_namespace.to_string()),
            );
            (Some(Value::Object(patched)), template_namespace.to_string())
        }
        // `metadata` is not a map: Go cannot set the namespace and reads it as "".
        _ => (None, String::new()),
    }
}

impl<'p> ItemEvaluation<'_, 'p> {
    fn violation(
        &mut self,
        id: Option<&ItemId>,
        check: Check,
        path: Option<String>,
        message: String,
    ) {
        self.violations.push(Violation {
            template_index: Some(self.index),
            kind: id.map(|id| id.gvk.kind.clone()),
            api_version: id.map(|id| id.api_version.clone()),
            namespace: id.map(|id| id.namespace.clone()),
            name: id.map(|id| id.name.clone()).filter(|n| !n.is_empty()),
            check,
            field_path: path,
            message,
        });
    }

    /// Runs every check of the item; returns its identity when it could be decoded.
    fn run(mut self, item: &TemplateItem) -> Option<ItemId> {
        let i = self.index;
        let raw = &item.object;
        let size = go_json_size(raw);
        if size > MAX_OBJECT_BYTES {
            self.violations.push(Violation {
                template_index: Some(i),
                kind: string_at(raw, "kind").map(str::to_string),
                api_version: string_at(raw, "apiVersion").map(str::to_string),
                namespace: None,
                name: metadata_string(raw, "name").map(str::to_string),
                check: Check::ObjectSize,
                field_path: None,
                message: format!(
                    "template[{i}]: size {size} bytes exceeds maximum allowed size of {MAX_OBJECT_BYTES} bytes"
                ),
            });
            return None;
        }
        let Some(kind) = string_at(raw, "kind").filter(|k| !k.is_empty()) else {
            self.violation(
                None,
                Check::Decode,
                None,
                format!(
                    "template[{i}]: failed to unmarshal object: error unmarshaling JSON: while decoding JSON: Object 'Kind' is missing in '{}'",
                    go_json(raw)
                ),
            );
            return None;
        };
        let api_version = string_at(raw, "apiVersion").unwrap_or("");
        let gvk = GroupVersionKind::from_api_version(api_version, kind);
        let (metadata, namespace) = default_namespace(raw, self.template_namespace);
        let root = Root {
            object: raw,
            metadata: metadata.as_ref(),
        };
        let id = ItemId {
            name: root
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            api_version: api_version.to_string(),
            gvk,
            namespace,
        };
        let policy = self.policy;
        let Some(rule_index) = policy.rule_index(&id.gvk) else {
            self.violation(
                Some(&id),
                Check::ResourceType,
                None,
                format!(
                    "template[{i}]: resource type {} is not allowed by policy {}",
                    id.gvk, policy.name
                ),
            );
            return Some(id);
        };
        let rule = &policy.rules[rule_index];
        let targets = &rule.target_namespaces;
        if targets.is_empty() {
            self.violation(
                Some(&id),
                Check::NoTargetNamespaces,
                None,
                format!(
                    "template[{i}]: resource type {} has no target namespaces defined in policy {}. At least one target namespace must be specified",
                    id.gvk, policy.name
                ),
            );
        } else if self
            .options
            .cluster_scoped
            .contains(&id.gvk.group, &id.gvk.kind)
        {
            if !targets.iter().any(String::is_empty) {
                self.violation(
                    Some(&id),
                    Check::ClusterScope,
                    None,
                    format!(
                        "template[{i}]: resource type {} is cluster-scoped and is not allowed by policy {}: its rule must list \"\" (cluster scope) in targetNamespaces",
                        id.gvk, policy.name
                    ),
                );
            }
        } else if !targets.contains(&id.namespace) {
            self.violation(
                Some(&id),
                Check::TargetNamespace,
                None,
                format!(
                    "template[{i}]: resource namespace {} is not in the allowed target namespaces [{}] for resource type {}",
                    id.namespace,
                    targets.join(" "),
                    id.gvk
                ),
            );
        }

        let mut cel = CelState {
            root,
            whole_object: None,
            memo: SizeMemo::default(),
        };
        if let Some((source, program)) = &rule.rule {
            let prefix = format!("template[{i}]");
            let failure = match program {
                Err(e) => Some(format!("{prefix}: {}", e.describe())),
                Ok(p) => match cel.run_object(p) {
                    Ok(true) => None,
                    Ok(false) => Some(format!(
                        "{prefix}: resource {}/{} failed CEL validation rule: {source}",
                        id.gvk, id.name
                    )),
                    Err(e) => Some(format!("{prefix}: failed to evaluate CEL rule: {e}")),
                },
            };
            if let Some(message) = failure {
                self.violation(Some(&id), Check::Rule, None, message);
            }
        }
        for (vi, validation) in rule.validations.iter().enumerate() {
            let prefix = format!("template[{i}]: fieldValidation ({})", validation.name);
            for (path, message) in check_validation(&prefix, validation, &id, &mut cel) {
                self.violation(
                    Some(&id),
                    Check::FieldValidation {
                        name: validation.name.clone(),
                        index: vi,
                    },
                    path,
                    message,
                );
            }
        }
        Some(id)
    }
}

/// CEL state of one item: the object (the whole-object CEL context is built on first use) and
/// measured sizes.
struct CelState<'o> {
    root: Root<'o>,
    whole_object: Option<Context<'static>>,
    memo: SizeMemo,
}

impl CelState<'_> {
    fn run_object(&mut self, program: &CelProgram) -> Result<bool, String> {
        let root = self.root;
        let binding = Binding::Object(root);
        if program.reads_whole_object() {
            let ctx = self
                .whole_object
                .get_or_insert_with(|| context_with(CelVar::Object, root_to_cel(root)));
            program.evaluate(ctx, binding, &mut self.memo)
        } else {
            let ctx = context_with(CelVar::Object, program.object_value(root));
            program.evaluate(&ctx, binding, &mut self.memo)
        }
    }

    fn run_value(&mut self, program: &CelProgram, value: Option<&Value>) -> Result<bool, String> {
        let cel_value = value.map(to_cel).unwrap_or(kube_cel::cel::Value::Null);
        let ctx = context_with(CelVar::Value, cel_value);
        program.evaluate(&ctx, Binding::Value(value), &mut self.memo)
    }
}

/// Failures of one field validation, as (concrete path, message), in the original's order of
/// checks. `p` is the message prefix `template[i]: fieldValidation (name)`.
fn check_validation(
    p: &str,
    v: &CompiledValidation,
    id: &ItemId,
    cel: &mut CelState<'_>,
) -> Vec<(Option<String>, String)> {
    let mut failures = Vec::new();
    let mut fail = |path: Option<&str>, message: String| {
        failures.push((path.map(str::to_string), format!("{p}: {message}")));
    };
    // A failure of the check itself: the custom message replaces the text when set.
    let custom = |path: &str, text: String| match &v.message {
        Some(message) if v.path.has_wildcard() => format!("{message} (field {path})"),
        Some(message) => message.clone(),
        None => text,
    };
    let type_name = match &v.kind {
        CompiledKind::Cel { .. } => "cel",
        CompiledKind::Regex { .. } => "regex",
        CompiledKind::Range { .. } => "range",
        CompiledKind::Required => "required",
        CompiledKind::Forbidden => "forbidden",
    };
    let path_required = || format!("fieldPath is required for type '{type_name}'");
    match &v.kind {
        CompiledKind::Cel { source, program } => {
            if source.is_empty() {
                fail(
                    None,
                    "CEL expression is required for type 'cel'".to_string(),
                );
                return failures;
            }
            let outcome = |result: Result<bool, String>| -> Option<String> {
                match result {
                    Ok(true) => None,
                    Ok(false) => Some(format!(
                        "resource {}/{} failed CEL validation rule: {source}",
                        id.gvk, id.name
                    )),
                    Err(e) => Some(format!("failed to evaluate CEL rule: {e}")),
                }
            };
            let object_level = v.field_path.is_empty() || v.field_path == "object";
            if object_level {
                let failure = match program {
                    Err(e) => Some(e.describe()),
                    Ok(program) => outcome(cel.run_object(program)),
                };
                if let Some(text) = failure {
                    fail(None, custom(&v.field_path, text));
                }
                return failures;
            }
            for hit in lookup(cel.root, &v.path) {
                let value = match hit.result {
                    Err(e) => {
                        fail(
                            Some(&hit.path),
                            format!("failed to get field {}: {e}", hit.path),
                        );
                        continue;
                    }
                    Ok(value) => value,
                };
                let failure = match program {
                    Err(e) => Some(e.describe()),
                    Ok(program) => outcome(cel.run_value(program, value)),
                };
                if let Some(text) = failure {
                    fail(Some(&hit.path), custom(&hit.path, text));
                }
            }
        }
        CompiledKind::Regex { pattern, regex } => {
            if pattern.is_empty() {
                fail(
                    None,
                    "regex pattern is required for type 'regex'".to_string(),
                );
                return failures;
            }
            if v.field_path.is_empty() {
                fail(None, path_required());
                return failures;
            }
            for hit in lookup(cel.root, &v.path) {
                let text = match present(&hit, as_string(&hit), "") {
                    Ok(text) => text,
                    Err(message) => {
                        fail(Some(&hit.path), message);
                        continue;
                    }
                };
                match regex {
                    Err(e) => fail(
                        Some(&hit.path),
                        format!("invalid regex pattern {pattern}: {e}"),
                    ),
                    Ok(re) if !re.is_match(text) => fail(
                        Some(&hit.path),
                        custom(
                            &hit.path,
                            format!(
                                "field {} value '{text}' does not match regex pattern '{pattern}'",
                                hit.path
                            ),
                        ),
                    ),
                    Ok(_) => {}
                }
            }
        }
        CompiledKind::Range { min, max } => {
            if v.field_path.is_empty() {
                fail(None, path_required());
                return failures;
            }
            if min.is_none() && max.is_none() {
                fail(
                    None,
                    "at least one of min or max must be specified for type 'range'".to_string(),
                );
                return failures;
            }
            for hit in lookup(cel.root, &v.path) {
                let n = match present(&hit, as_int(&hit), " as int64") {
                    Ok(n) => n,
                    Err(message) => {
                        fail(Some(&hit.path), message);
                        continue;
                    }
                };
                if let Some(min) = min
                    && n < *min
                {
                    fail(
                        Some(&hit.path),
                        custom(
                            &hit.path,
                            format!("field {} value {n} is less than minimum {min}", hit.path),
                        ),
                    );
                } else if let Some(max) = max
                    && n > *max
                {
                    fail(
                        Some(&hit.path),
                        custom(
                            &hit.path,
                            format!("field {} value {n} is greater than maximum {max}", hit.path),
                        ),
                    );
                }
            }
        }
        CompiledKind::Required => {
            if v.field_path.is_empty() {
                fail(None, path_required());
                return failures;
            }
            for hit in lookup(cel.root, &v.path) {
                match hit.result {
                    Err(e) => fail(
                        Some(&hit.path),
                        format!("failed to get field {}: {e}", hit.path),
                    ),
                    Ok(None | Some(Value::Null)) => fail(
                        Some(&hit.path),
                        custom(
                            &hit.path,
                            format!("required field {} is missing or empty", hit.path),
                        ),
                    ),
                    Ok(Some(Value::String(s))) if s.is_empty() => fail(
                        Some(&hit.path),
                        custom(
                            &hit.path,
                            format!("required field {} is missing or empty", hit.path),
                        ),
                    ),
                    Ok(Some(_)) => {}
                }
            }
        }
        CompiledKind::Forbidden => {
            if v.field_path.is_empty() {
                fail(None, path_required());
                return failures;
            }
            for hit in lookup(cel.root, &v.path) {
                match hit.result {
                    Err(e) => fail(
                        Some(&hit.path),
                        format!("failed to get field {}: {e}", hit.path),
                    ),
                    Ok(Some(_)) => fail(
                        Some(&hit.path),
                        custom(
                            &hit.path,
                            format!("forbidden field {} is present", hit.path),
                        ),
                    ),
                    Ok(None) => {}
                }
            }
        }
    }
    failures
}

/// The value a regex or range validation checks, or the original's text when the field is
/// missing (`field %s not found`) or cannot be read as the type (`failed to get field %s[ as
/// int64]: %v`). Neither text is replaced by a custom message, as in the original.
fn present<T>(hit: &Hit<'_>, typed: Result<Option<T>, String>, as_type: &str) -> Result<T, String> {
    match typed {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(format!("field {} not found", hit.path)),
        Err(e) => Err(format!("failed to get field {}{as_type}: {e}", hit.path)),
    }
}
