//! The result of evaluating a KubeTemplate: a verdict with every violation and the warnings.

use std::fmt;

/// Admission verdict for a KubeTemplate. A denial is a value, not an error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// True when there is no violation.
    pub allowed: bool,
    /// Every violation found, in template order (the original reports only the first).
    pub violations: Vec<Violation>,
    /// Warnings returned with the verdict (admitted or not), e.g. for `replace: true`.
    pub warnings: Vec<String>,
}

impl Verdict {
    /// A verdict from its violations and warnings; allowed when there are no violations.
    pub fn new(violations: Vec<Violation>, warnings: Vec<String>) -> Self {
        Verdict {
            allowed: violations.is_empty(),
            violations,
            warnings,
        }
    }

    /// The denial text: every violation's message, one per line. With one violation this is
    /// exactly the original's message. Empty when allowed.
    pub fn message(&self) -> String {
        self.violations
            .iter()
            .map(|v| v.message.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The first violation, the one the original would have reported.
    pub fn first(&self) -> Option<&Violation> {
        self.violations.first()
    }
}

/// One reason a KubeTemplate is denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Index of the template item, `None` for whole-template problems (no policy, too many
    /// templates).
    pub template_index: Option<usize>,
    /// The object's `kind`, when known.
    pub kind: Option<String>,
    /// The object's `apiVersion`, when known.
    pub api_version: Option<String>,
    /// The object's namespace after defaulting, when known.
    pub namespace: Option<String>,
    /// The object's `metadata.name`, when known.
    pub name: Option<String>,
    /// What failed.
    pub check: Check,
    /// For field validations: the concrete field path (with `*` resolved to indexes).
    pub field_path: Option<String>,
    /// The message, with the original's wording.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The check that produced a violation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Check {
    /// No policy, several policies, or the policies could not be listed.
    PolicyLookup,
    /// More than 50 templates.
    TemplateCount,
    /// Object larger than 1 MiB.
    ObjectSize,
    /// Object cannot be decoded (e.g. no `kind`).
    Decode,
    /// No rule of the policy allows the group/version/kind.
    ResourceType,
    /// The matching rule lists no target namespaces.
    NoTargetNamespaces,
    /// The object's namespace is not a target namespace of the rule.
    TargetNamespace,
    /// A cluster-scoped kind whose rule does not allow cluster scope (not in the original).
    ClusterScope,
    /// The rule's CEL `rule`.
    Rule,
    /// A field validation of the rule.
    FieldValidation {
        /// The validation's `name`.
        name: String,
        /// Its position in the rule's `fieldValidations`.
        index: usize,
    },
}

impl Check {
    /// Short stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Check::PolicyLookup => "policy_lookup",
            Check::TemplateCount => "template_count",
            Check::ObjectSize => "object_size",
            Check::Decode => "decode",
            Check::ResourceType => "resource_type",
            Check::NoTargetNamespaces => "no_target_namespaces",
            Check::TargetNamespace => "target_namespace",
            Check::ClusterScope => "cluster_scope",
            Check::Rule => "rule",
            Check::FieldValidation { .. } => "field_validation",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(message: &str) -> Violation {
        Violation {
            template_index: Some(0),
            kind: None,
            api_version: None,
            namespace: None,
            name: None,
            check: Check::Rule,
            field_path: None,
            message: message.to_string(),
        }
    }

    #[test]
    fn message_joins_violations() {
        let verdict = Verdict::new(vec![violation("a"), violation("b")], vec![]);
        assert!(!verdict.allowed);
        assert_eq!(verdict.message(), "a\nb");
        assert_eq!(verdict.first().map(|v| v.to_string()), Some("a".into()));
        let ok = Verdict::new(vec![], vec!["w".into()]);
        assert!(ok.allowed);
        assert_eq!(ok.message(), "");
        assert_eq!(
            Check::FieldValidation {
                name: "n".into(),
                index: 0
            }
            .reason(),
            "field_validation"
        );
    }
}
