//! Policy evaluation: is a KubeTemplate admitted by the KubeTemplatePolicy of its namespace, and
//! if not, why.
//!
//! ```text
//! KubeTemplatePolicy --CompiledPolicy::compile--> CompiledPolicy (once per generation, Arc-shared)
//! namespace + templates + PolicyLookup --evaluate--> Verdict { allowed, violations, warnings }
//! ```
//!
//! The semantics and every message are the original KubeTemplater's (v0.6.2 webhook), byte for
//! byte: policy lookup, at most 50 templates, objects of at most 1 MiB (compact JSON), decode
//! (`kind` required), namespace defaulting to the template's namespace, the first rule whose
//! group/version/kind equals the object's, target namespaces, the CEL `rule`, field validations
//! in order, and the `replace` warning. CEL and validation semantics are described on
//! [`CompiledPolicy`] and in `docs/policy.md`.
//!
//! # Deliberate differences from the original
//!
//! 1. **Every violation is reported**, not only the first: for each item every failing check
//!    (namespace, `rule`, each field validation), and every item. The first violation is the
//!    one the original reports; [`Verdict::message`] joins them one per line. Items that fail
//!    the size, decode or type checks are not checked further. Only items that pass everything
//!    get the `replace` warning.
//! 2. **Cluster-scoped kinds are denied unless the rule explicitly allows them.** The original
//!    checks a cluster-scoped object's (defaulted) namespace against `targetNamespaces`, so a
//!    policy allowing `Namespace` or `ClusterRole` in the tenant's namespace lets the tenant
//!    create cluster-wide objects. Here a kind of the built-in table of cluster-scoped kinds
//!    ([`BUILTIN_CLUSTER_SCOPED`], extendable through [`EvaluateOptions`]) is allowed only if its
//!    rule lists the empty string `""` (cluster scope) in `targetNamespaces`; the namespace check
//!    is then skipped. `""` never matches anything in the original (namespaces are defaulted
//!    before the check), so listing it changes nothing else. Otherwise: `template[%d]: resource
//!    type %s is cluster-scoped and is not allowed by policy %s: its rule must list "" (cluster
//!    scope) in targetNamespaces`.
//! 3. **List indexes and `*` in `fieldPath`.** On a list, a decimal segment indexes it
//!    (`spec.template.spec.containers.0.image`; out of range is "not found") and `*` applies the
//!    validation to every element (each failing element is reported with its concrete path, a
//!    custom message gets ` (field <path>)` appended; an empty list passes). Any other segment
//!    on a list, and any segment on a scalar, is the original's accessor error.
//! 4. **CEL environment** is the `cel` crate's standard library and macros plus all `kube-cel`
//!    extension functions (a superset of the original's bare cel-go). Parse and evaluation error
//!    texts are the Rust implementation's (cel-go-like where simple: `no such key: x`); the
//!    surrounding messages are the original's.
//! 5. **Cost limit** is enforced before evaluation, from an upper bound of the cost over the
//!    expression and the actual object (see `cost.rs` and docs/adr/0004-cel-cost-limit.md),
//!    with the original's text `operation cancelled: actual cost limit exceeded`. The bound can
//!    refuse an expression the original would run if it stayed under 1,000,000 in practice.
//! 6. **Regex** follows Go RE2 semantics (ASCII `\d \w \s \b`, `\Q..\E`), but invalid-pattern
//!    error texts are the `regex` crate's.
//!
//! Unknown field validation types cannot occur: [`api::FieldValidationType`] rejects them when a
//! policy is decoded (as the CRD schema does).

mod cel;
mod compile;
mod cost;
mod evaluate;
mod fields;
mod re2;
mod scope;
mod verdict;

pub use compile::{CompiledPolicy, GroupVersionKind, PolicyProblem, ProblemKind, validate_policy};
pub use evaluate::{
    EvaluateOptions, MAX_OBJECT_BYTES, MAX_TEMPLATES, PolicyLookup, evaluate, evaluate_with,
};
pub use scope::{BUILTIN_CLUSTER_SCOPED, ClusterScopedKinds, is_builtin_cluster_scoped};
pub use verdict::{Check, Verdict, Violation};

/// The original's CEL cost limit, in cost units.
pub const CEL_COST_LIMIT: u64 = 1_000_000;

/// Errors of the policy module. A denial is not an error: it is a [`Verdict`].
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy has problems (only from [`CompiledPolicy::compile_strict`]).
    #[error("KubeTemplatePolicy {policy} is invalid: {}", join_problems(.problems))]
    InvalidPolicy {
        /// The policy's name.
        policy: String,
        /// What is wrong with it.
        problems: Vec<PolicyProblem>,
    },
}

impl PolicyError {
    /// Short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PolicyError::InvalidPolicy { .. } => "invalid_policy",
        }
    }
}

fn join_problems(problems: &[PolicyProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Result of this module's fallible operations.
pub type Result<T, E = PolicyError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
