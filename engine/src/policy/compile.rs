//! Compiling a KubeTemplatePolicy once per generation: CEL programs parsed and checked, regexes
//! compiled, rules indexed by group/version/kind, problems collected.

use std::collections::HashMap;
use std::fmt;

use api::{FieldValidation, FieldValidationType, KubeTemplatePolicy, ValidationRule};
use regex::Regex;

use super::cel::{CelCompileError, CelProgram, CelVar};
use super::cost::{COST_LIMIT, within_limit};
use super::fields::FieldPath;
use super::{PolicyError, re2};

/// Group, version and kind of an object type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupVersionKind {
    /// API group, "" for the core group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

impl GroupVersionKind {
    /// From an `apiVersion` and `kind` the way Go's `schema.FromAPIVersionAndKind` does it: `v1`
    /// is the core group, `apps/v1` group `apps`, anything with more slashes is dropped.
    pub fn from_api_version(api_version: &str, kind: &str) -> Self {
        let (group, version) = match api_version.matches('/').count() {
            0 => ("", api_version),
            1 => api_version.split_once('/').unwrap_or(("", api_version)),
            _ => ("", ""),
        };
        GroupVersionKind {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
        }
    }
}

/// Go's `GroupVersionKind.String()`: `apps/v1, Kind=Deployment`, `/v1, Kind=Secret`.
impl fmt::Display for GroupVersionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}, Kind={}", self.group, self.version, self.kind)
    }
}

/// What is wrong with a policy. Problems do not stop the policy from being used: a template
/// touching the faulty part is denied with the original's message for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    /// Index of the rule in `validationRules`.
    pub rule_index: usize,
    /// The rule's type, Go-style (`apps/v1, Kind=Deployment`).
    pub rule: String,
    /// The field validation's name, when the problem is in one (`None`: the rule itself).
    pub validation: Option<String>,
    /// What kind of problem.
    pub kind: ProblemKind,
    /// Human-readable description, including the parse or compile error.
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "validationRules[{}] ({})", self.rule_index, self.rule)?;
        if let Some(name) = &self.validation {
            write!(f, " fieldValidation ({name})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Kinds of policy problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// A CEL expression does not parse or check.
    InvalidCel,
    /// A CEL expression costs more than the limit even for the smallest object.
    CelCostLimit,
    /// A regex does not compile.
    InvalidRegex,
    /// A parameter the validation type needs is missing (cel, regex, fieldPath, min/max).
    MissingParameter,
    /// `min` is greater than `max`.
    MinGreaterThanMax,
    /// A second rule for the same group/version/kind; only the first is ever used.
    DuplicateRule,
}

/// A KubeTemplatePolicy ready for evaluation. Immutable, `Send + Sync`; share it with `Arc`.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub(crate) name: String,
    source_namespace: String,
    generation: Option<i64>,
    pub(crate) rules: Vec<CompiledRule>,
    index: HashMap<GroupVersionKind, usize>,
    problems: Vec<PolicyProblem>,
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) target_namespaces: Vec<String>,
    /// The `rule` source and its program (None when empty).
    pub(crate) rule: Option<(String, Result<CelProgram, CelCompileError>)>,
    pub(crate) validations: Vec<CompiledValidation>,
}

#[derive(Debug)]
pub(crate) struct CompiledValidation {
    pub(crate) name: String,
    pub(crate) field_path: String,
    pub(crate) path: FieldPath,
    /// The custom message, when non-empty.
    pub(crate) message: Option<String>,
    pub(crate) kind: CompiledKind,
}

#[derive(Debug)]
pub(crate) enum CompiledKind {
    Cel {
        source: String,
        program: Result<CelProgram, CelCompileError>,
    },
    Regex {
        pattern: String,
        regex: Result<Regex, String>,
    },
    Range {
        min: Option<i64>,
        max: Option<i64>,
    },
    Required,
    Forbidden,
}

impl CompiledPolicy {
    /// Compiles every rule and validation of the policy. Never fails: problems are recorded
    /// ([`Self::problems`]) and a template that reaches a faulty part is denied with the
    /// original's message for it (e.g. `failed to parse CEL rule: ...`).
    pub fn compile(policy: &KubeTemplatePolicy) -> Self {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let mut rules = Vec::with_capacity(policy.spec.validation_rules.len());
        let mut index = HashMap::new();
        let mut problems = Vec::new();
        for (i, rule) in policy.spec.validation_rules.iter().enumerate() {
            let gvk = GroupVersionKind {
                group: rule.group.clone(),
                version: rule.version.clone(),
                kind: rule.kind.clone(),
            };
            if index.contains_key(&gvk) {
                problems.push(PolicyProblem {
                    rule_index: i,
                    rule: gvk.to_string(),
                    validation: None,
                    kind: ProblemKind::DuplicateRule,
                    message: format!("another rule for {gvk} comes first; this one is never used"),
                });
            } else {
                index.insert(gvk.clone(), i);
            }
            rules.push(compile_rule(i, &gvk, rule, &mut problems));
        }
        CompiledPolicy {
            name,
            source_namespace: policy.spec.source_namespace.clone(),
            generation: policy.metadata.generation,
            rules,
            index,
            problems,
        }
    }

    /// Like [`Self::compile`], but any problem is an error.
    pub fn compile_strict(policy: &KubeTemplatePolicy) -> Result<Self, PolicyError> {
        let compiled = Self::compile(policy);
        if compiled.problems.is_empty() {
            Ok(compiled)
        } else {
            Err(PolicyError::InvalidPolicy {
                policy: compiled.name.clone(),
                problems: compiled.problems,
            })
        }
    }

    /// The policy's `metadata.name`, used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace whose templates this policy governs.
    pub fn source_namespace(&self) -> &str {
        &self.source_namespace
    }

    /// The `metadata.generation` compiled.
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// Problems found while compiling.
    pub fn problems(&self) -> &[PolicyProblem] {
        &self.problems
    }

    /// Index of the first rule for this type, if any (O(1)).
    pub fn rule_index(&self, gvk: &GroupVersionKind) -> Option<usize> {
        self.index.get(gvk).copied()
    }
}

/// Problems of a policy, for the webhook's KubeTemplatePolicy validation: CEL that does not
/// compile (or always exceeds the cost limit), regexes that do not compile, missing parameters,
/// `min > max`, duplicate rules.
pub fn validate_policy(policy: &KubeTemplatePolicy) -> Vec<PolicyProblem> {
    CompiledPolicy::compile(policy).problems
}

fn compile_rule(
    rule_index: usize,
    gvk: &GroupVersionKind,
    rule: &ValidationRule,
    problems: &mut Vec<PolicyProblem>,
) -> CompiledRule {
    let mut problem = |validation: Option<&str>, kind: ProblemKind, message: String| {
        problems.push(PolicyProblem {
            rule_index,
            rule: gvk.to_string(),
            validation: validation.map(str::to_string),
            kind,
            message,
        })
    };
    let cel_rule = rule
        .rule
        .as_deref()
        .filter(|r| !r.is_empty())
        .map(|source| {
            let program = CelProgram::compile(source, CelVar::Object);
            check_program(&program, &mut |kind, message| problem(None, kind, message));
            (source.to_string(), program)
        });
    let validations = rule
        .field_validations
        .iter()
        .map(|v| {
            compile_validation(v, &mut |kind, message| {
                problem(Some(&v.name), kind, message)
            })
        })
        .collect();
    CompiledRule {
        target_namespaces: rule.target_namespaces.clone(),
        rule: cel_rule,
        validations,
    }
}

fn check_program(
    program: &Result<CelProgram, CelCompileError>,
    problem: &mut dyn FnMut(ProblemKind, String),
) {
    match program {
        Err(e) => problem(ProblemKind::InvalidCel, e.describe()),
        Ok(p) if !within_limit(p.base_cost()) => problem(
            ProblemKind::CelCostLimit,
            format!(
                "the expression's estimated cost exceeds the limit of {COST_LIMIT} even for an empty object"
            ),
        ),
        Ok(_) => {}
    }
}

fn compile_validation(
    v: &FieldValidation,
    problem: &mut dyn FnMut(ProblemKind, String),
) -> CompiledValidation {
    let field_path = v.field_path.clone().unwrap_or_default();
    let type_ = v.type_;
    let require_path = |problem: &mut dyn FnMut(ProblemKind, String)| {
        if field_path.is_empty() {
            problem(
                ProblemKind::MissingParameter,
                format!("fieldPath is required for type '{type_}'"),
            );
        }
    };
    let kind = match type_ {
        FieldValidationType::Cel => {
            let source = v.cel.clone().unwrap_or_default();
            let var = if field_path.is_empty() || field_path == "object" {
                CelVar::Object
            } else {
                CelVar::Value
            };
            let program = if source.is_empty() {
                problem(
                    ProblemKind::MissingParameter,
                    "CEL expression is required for type 'cel'".to_string(),
                );
                Err(CelCompileError::Parse("empty expression".to_string()))
            } else {
                let program = CelProgram::compile(&source, var);
                check_program(&program, problem);
                program
            };
            CompiledKind::Cel { source, program }
        }
        FieldValidationType::Regex => {
            let pattern = v.regex.clone().unwrap_or_default();
            if pattern.is_empty() {
                problem(
                    ProblemKind::MissingParameter,
                    "regex pattern is required for type 'regex'".to_string(),
                );
            }
            require_path(problem);
            let regex = re2::compile(&pattern);
            if let Err(e) = &regex
                && !pattern.is_empty()
            {
                problem(
                    ProblemKind::InvalidRegex,
                    format!("invalid regex pattern {pattern}: {e}"),
                );
            }
            CompiledKind::Regex { pattern, regex }
        }
        FieldValidationType::Range => {
            require_path(problem);
            match (v.min, v.max) {
                (None, None) => problem(
                    ProblemKind::MissingParameter,
                    "at least one of min or max must be specified for type 'range'".to_string(),
                ),
                (Some(min), Some(max)) if min > max => problem(
                    ProblemKind::MinGreaterThanMax,
                    format!("min {min} is greater than max {max}: no value can pass"),
                ),
                _ => {}
            }
            CompiledKind::Range {
                min: v.min,
                max: v.max,
            }
        }
        FieldValidationType::Required => {
            require_path(problem);
            CompiledKind::Required
        }
        FieldValidationType::Forbidden => {
            require_path(problem);
            CompiledKind::Forbidden
        }
    };
    CompiledValidation {
        name: v.name.clone(),
        path: FieldPath::parse(&field_path),
        field_path,
        message: v.message.clone().filter(|m| !m.is_empty()),
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gvk_parsing_and_printing() {
        let gvk = GroupVersionKind::from_api_version("apps/v1", "Deployment");
        assert_eq!(gvk.to_string(), "apps/v1, Kind=Deployment");
        let core = GroupVersionKind::from_api_version("v1", "Secret");
        assert_eq!(core.to_string(), "/v1, Kind=Secret");
        let missing = GroupVersionKind::from_api_version("", "ConfigMap");
        assert_eq!(missing.to_string(), "/, Kind=ConfigMap");
        let odd = GroupVersionKind::from_api_version("a/b/c", "X");
        assert_eq!(odd.to_string(), "/, Kind=X");
    }
}
