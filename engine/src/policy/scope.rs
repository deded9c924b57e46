//! Which kinds are cluster-scoped. The engine does no API discovery, so it carries a table of the
//! Kubernetes built-in cluster-scoped kinds; callers that know more (for example from discovery of
//! CustomResourceDefinitions) add them through [`ClusterScopedKinds::with`].

use std::collections::HashSet;

/// Built-in cluster-scoped kinds as (group, kind); the version does not matter.
pub const BUILTIN_CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("", "ComponentStatus"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("storage.k8s.io", "VolumeAttributesClass"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("networking.k8s.io", "IngressClass"),
    ("networking.k8s.io", "IPAddress"),
    ("networking.k8s.io", "ServiceCIDR"),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
    ),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "MutatingAdmissionPolicyBinding",
    ),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("certificates.k8s.io", "ClusterTrustBundle"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ("policy", "PodSecurityPolicy"),
    ("resource.k8s.io", "DeviceClass"),
    ("resource.k8s.io", "ResourceSlice"),
    ("internal.apiserver.k8s.io", "StorageVersion"),
    ("storagemigration.k8s.io", "StorageVersionMigration"),
    ("authentication.k8s.io", "TokenReview"),
    ("authentication.k8s.io", "SelfSubjectReview"),
    ("authorization.k8s.io", "SubjectAccessReview"),
    ("authorization.k8s.io", "SelfSubjectAccessReview"),
    ("authorization.k8s.io", "SelfSubjectRulesReview"),
];

/// The set of kinds treated as cluster-scoped: the built-in table plus any added.
#[derive(Clone, Debug, Default)]
pub struct ClusterScopedKinds {
    extra: HashSet<(String, String)>,
}

impl ClusterScopedKinds {
    /// The built-in table only.
    pub fn builtin() -> Self {
        Self::default()
    }

    /// Adds a cluster-scoped kind (for example a cluster-scoped CRD found by discovery).
    pub fn with(mut self, group: &str, kind: &str) -> Self {
        self.extra.insert((group.to_string(), kind.to_string()));
        self
    }

    /// Whether objects of this group and kind are cluster-scoped.
    pub fn contains(&self, group: &str, kind: &str) -> bool {
        is_builtin_cluster_scoped(group, kind)
            || self
                .extra
                .iter()
                .any(|(g, k)| g.as_str() == group && k.as_str() == kind)
    }
}

/// Whether the built-in table lists this group and kind.
pub fn is_builtin_cluster_scoped(group: &str, kind: &str) -> bool {
    BUILTIN_CLUSTER_SCOPED
        .iter()
        .any(|(g, k)| *g == group && *k == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_extensions() {
        assert!(is_builtin_cluster_scoped("", "Namespace"));
        assert!(is_builtin_cluster_scoped(
            "rbac.authorization.k8s.io",
            "ClusterRole"
        ));
        assert!(!is_builtin_cluster_scoped("", "ConfigMap"));
        assert!(!is_builtin_cluster_scoped(
            "rbac.authorization.k8s.io",
            "Role"
        ));
        // Same kind name in another group is not cluster-scoped.
        assert!(!is_builtin_cluster_scoped("example.com", "Namespace"));
        let kinds = ClusterScopedKinds::builtin().with("cert-manager.io", "ClusterIssuer");
        assert!(kinds.contains("cert-manager.io", "ClusterIssuer"));
        assert!(kinds.contains("", "PersistentVolume"));
        assert!(!kinds.contains("cert-manager.io", "Issuer"));
    }
}
