//! Metrics of the registry controller.
//!
//! The original's gauges keep their names (no prefix) so its dashboards work:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `registry_desired` | gauge | `registry`, `namespace` (templates × active rows) |
//! | `registry_ready` | gauge | `registry`, `namespace` (Tenants whose Ready is True) |
//! | `registry_failed` | gauge | `registry`, `namespace` (Tenants whose Ready is not True) |
//! | `kubetemplater_registry_rows` | gauge | `registry`, `namespace`, `state` (`total`, `active`) |
//! | `kubetemplater_registry_query_duration_seconds` | histogram | `result` (`ok`, `error`) |
//! | `kubetemplater_registry_sync_duration_seconds` | histogram | `result` (`success`, `partial_failure`, `read_failed`) |
//!
//! API writes are counted by the caller's `kubetemplater_api_requests_total{verb}` (verbs
//! `apply_tenant`, `delete_tenant`, `registry_status`, `template_status`, `event`), through the
//! callback given to [`RegistryMetrics::register`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabels {
    registry: String,
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RowLabels {
    registry: String,
    namespace: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Counts one API write under a verb.
pub type WriteCounter = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The registry controller's metrics; cheap to clone.
#[derive(Clone)]
pub struct RegistryMetrics {
    desired: Family<RegistryLabels, Gauge>,
    ready: Family<RegistryLabels, Gauge>,
    failed: Family<RegistryLabels, Gauge>,
    rows: Family<RowLabels, Gauge>,
    query: Family<ResultLabel, Histogram>,
    sync: Family<ResultLabel, Histogram>,
    writes: WriteCounter,
}

impl fmt::Debug for RegistryMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryMetrics").finish_non_exhaustive()
    }
}

fn histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl RegistryMetrics {
    /// Metrics that are not exported (tests, tools).
    pub fn unregistered() -> Self {
        Self {
            desired: Family::default(),
            ready: Family::default(),
            failed: Family::default(),
            rows: Family::default(),
            query: Family::new_with_constructor(histogram),
            sync: Family::new_with_constructor(histogram),
            writes: Arc::new(|_| {}),
        }
    }

    /// Registers the metrics in `root` (a registry WITHOUT prefix: the original's names are
    /// kept as they were); `writes` counts API writes.
    pub fn register(root: &mut Registry, writes: WriteCounter) -> Self {
        let m = Self {
            writes,
            ..Self::unregistered()
        };
        root.register(
            "registry_desired",
            "Tenants a registry should have (templates x active rows)",
            m.desired.clone(),
        );
        root.register(
            "registry_ready",
            "Tenants of a registry whose Ready condition is True",
            m.ready.clone(),
        );
        root.register(
            "registry_failed",
            "Tenants of a registry whose Ready condition is not True",
            m.failed.clone(),
        );
        let ours = root.sub_registry_with_prefix("kubetemplater");
        ours.register(
            "registry_rows",
            "Rows of a registry's table at the last read, total and active",
            m.rows.clone(),
        );
        ours.register(
            "registry_query_duration_seconds",
            "Time to run a registry's query and stream its rows",
            m.query.clone(),
        );
        ours.register(
            "registry_sync_duration_seconds",
            "Time of one registry sync: read, plan, writes",
            m.sync.clone(),
        );
        m
    }

    fn labels(namespace: &str, registry: &str) -> RegistryLabels {
        RegistryLabels {
            registry: registry.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// The registry gauges.
    pub fn set(
        &self,
        namespace: &str,
        registry: &str,
        desired: usize,
        ready: usize,
        failed: usize,
    ) {
        let labels = Self::labels(namespace, registry);
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.desired.get_or_create(&labels).set(gauge(desired));
        self.ready.get_or_create(&labels).set(gauge(ready));
        self.failed.get_or_create(&labels).set(gauge(failed));
    }

    /// Rows read.
    pub fn set_rows(&self, namespace: &str, registry: &str, total: usize, active: usize) {
        for (state, n) in [("total", total), ("active", active)] {
            self.rows
                .get_or_create(&RowLabels {
                    registry: registry.to_owned(),
                    namespace: namespace.to_owned(),
                    state,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Drops the series of a deleted registry.
    pub fn forget(&self, namespace: &str, registry: &str) {
        let labels = Self::labels(namespace, registry);
        for family in [&self.desired, &self.ready, &self.failed] {
            family.remove(&labels);
        }
        for state in ["total", "active"] {
            self.rows.remove(&RowLabels {
                registry: registry.to_owned(),
                namespace: namespace.to_owned(),
                state,
            });
        }
    }

    /// One query.
    pub fn observe_query(&self, _namespace: &str, _registry: &str, ok: bool, elapsed: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.query
            .get_or_create(&ResultLabel { result })
            .observe(elapsed.as_secs_f64());
    }

    /// One sync.
    pub fn observe_sync(&self, result: &'static str, elapsed: Duration) {
        self.sync
            .get_or_create(&ResultLabel { result })
            .observe(elapsed.as_secs_f64());
    }

    /// One API write.
    pub fn observe_write(&self, verb: &'static str) {
        (self.writes)(verb);
    }
}
