//! Tenant metrics under the original Tenant Operator's names (no `kubetemplater_` prefix), so its
//! dashboards keep working:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tenant_reconcile_duration_seconds` | histogram | `result` (`success`, `partial_failure`, `error`, `status_only`; buckets 0.1–60 s) |
//! | `apply_attempts_total` | counter | `kind`, `result` (`success`, `conflict`, `error`), `conflict_policy` |
//! | `tenant_conflicts_total` | counter | `tenant`, `namespace`, `resource_kind`, `conflict_policy` |
//!
//! The original's per-Tenant gauges (`tenant_resources_*`, `tenant_condition_status`) are not
//! exported: at 100k Tenants they are 100k series each. The same numbers are in every Tenant's
//! status and, summed, in the registry gauges (`registry_ready` …) of the coordinator.

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    kind: String,
    result: &'static str,
    conflict_policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConflictLabels {
    tenant: String,
    namespace: String,
    resource_kind: String,
    conflict_policy: &'static str,
}

/// The Tenant metrics; cheap to clone.
#[derive(Clone)]
pub struct TenantMetrics {
    duration: Family<ResultLabel, Histogram>,
    attempts: Family<AttemptLabels, Counter>,
    conflicts: Family<ConflictLabels, Counter>,
}

impl fmt::Debug for TenantMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantMetrics").finish_non_exhaustive()
    }
}

impl Default for TenantMetrics {
    fn default() -> Self {
        Self {
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
            }),
            attempts: Family::default(),
            conflicts: Family::default(),
        }
    }
}

impl TenantMetrics {
    /// Registers them in `root`, a registry WITHOUT prefix.
    pub fn register(root: &mut Registry) -> Self {
        let m = Self::default();
        root.register(
            "tenant_reconcile_duration_seconds",
            "Time of one Tenant reconcile, by result",
            m.duration.clone(),
        );
        root.register(
            "apply_attempts",
            "Writes of Tenant resources, by kind, result and conflict policy",
            m.attempts.clone(),
        );
        root.register(
            "tenant_conflicts",
            "Tenant resources refused because another field manager owns a field",
            m.conflicts.clone(),
        );
        m
    }

    /// One reconcile.
    pub fn observe_reconcile(&self, result: &'static str, elapsed: Duration) {
        self.duration
            .get_or_create(&ResultLabel { result })
            .observe(elapsed.as_secs_f64());
    }

    /// One write of a resource.
    pub fn observe_apply(&self, kind: &str, result: &'static str, conflict_policy: &'static str) {
        self.attempts
            .get_or_create(&AttemptLabels {
                kind: kind.to_owned(),
                result,
                conflict_policy,
            })
            .inc();
    }

    /// One conflict.
    pub fn observe_conflict(
        &self,
        tenant: &str,
        namespace: &str,
        kind: &str,
        conflict_policy: &'static str,
    ) {
        self.conflicts
            .get_or_create(&ConflictLabels {
                tenant: tenant.to_owned(),
                namespace: namespace.to_owned(),
                resource_kind: kind.to_owned(),
                conflict_policy,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn the_originals_names_are_exported_without_prefix() {
        let mut root = Registry::default();
        let m = TenantMetrics::register(&mut root);
        m.observe_reconcile("success", Duration::from_millis(300));
        m.observe_apply("Deployment", "success", "Stuck");
        m.observe_conflict("acme-web", "saas", "ConfigMap", "Stuck");
        let mut text = String::new();
        encode(&mut text, &root).expect("encode");
        assert!(
            text.contains(
                "tenant_reconcile_duration_seconds_bucket{le=\"0.5\",result=\"success\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("apply_attempts_total{kind=\"Deployment\",result=\"success\",conflict_policy=\"Stuck\"} 1"), "{text}");
        assert!(text.contains("tenant_conflicts_total{tenant=\"acme-web\",namespace=\"saas\",resource_kind=\"ConfigMap\",conflict_policy=\"Stuck\"} 1"), "{text}");
    }
}
