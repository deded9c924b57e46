//! The worker's Prometheus metrics (names keep the original's documented ones).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kubetemplater_queue_depth` | gauge | — (ready + delayed keys) |
//! | `kubetemplater_queue_in_flight` | gauge | — |
//! | `kubetemplater_processed_total` | counter | `result` (`applied`, `unchanged`, `waiting` (a Tenant with objects not ready yet), `denied`, `finalized`, `skipped` (a Tenant whose namespace is terminating), `error`) |
//! | `kubetemplater_retries_total` | counter | — |
//! | `kubetemplater_reconcile_duration_seconds` | histogram | `result` |
//! | `kubetemplater_api_requests_total` | counter | `verb` (writes the worker sent: `apply`, `delete`, `patch_status`, `patch`) |
//! | `kubetemplater_writes_fenced_total` | counter | `verb` (writes refused unsent: the Lease's fence was closed) |
//! | `kubetemplater_write_timeouts_total` | counter | `verb` (writes abandoned after the write timeout) |
//! | `kubetemplater_buckets_owned` | gauge | — |
//! | `kubetemplater_handoffs_total` | counter | `direction` (`grant`, `revoke`) |
//! | `kubetemplater_handoff_release_seconds` | histogram | — (revoke received → released sent) |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabel {
    verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// The worker's metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    queue_depth: Gauge,
    in_flight: Gauge,
    processed: Family<ResultLabel, Counter>,
    retries: Counter,
    duration: Family<ResultLabel, Histogram>,
    api_requests: Family<VerbLabel, Counter>,
    fenced: Family<VerbLabel, Counter>,
    write_timeouts: Family<VerbLabel, Counter>,
    buckets_owned: Gauge,
    handoffs: Family<DirectionLabel, Counter>,
    release: Histogram,
    tenants: crate::tenant::metrics::TenantMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            tenants: crate::tenant::metrics::TenantMetrics::default(),
            queue_depth: Gauge::default(),
            in_flight: Gauge::default(),
            processed: Family::default(),
            retries: Counter::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            api_requests: Family::default(),
            fenced: Family::default(),
            write_timeouts: Family::default(),
            buckets_owned: Gauge::default(),
            handoffs: Family::default(),
            release: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl Metrics {
    /// The same metrics with the Tenant metrics (the original's names) registered in `root`, a
    /// registry without prefix.
    #[must_use]
    pub fn with_tenant_metrics(mut self, root: &mut Registry) -> Self {
        self.tenants = crate::tenant::metrics::TenantMetrics::register(root);
        self
    }

    /// The Tenant metrics.
    pub fn tenants(&self) -> &crate::tenant::metrics::TenantMetrics {
        &self.tenants
    }

    /// Registers the metrics in `registry` (give it the `kubetemplater` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "queue_depth",
            "Keys waiting in the work queue (ready and delayed)",
            m.queue_depth.clone(),
        );
        registry.register(
            "queue_in_flight",
            "Keys being reconciled",
            m.in_flight.clone(),
        );
        registry.register(
            "processed",
            "Reconciles finished, by result",
            m.processed.clone(),
        );
        registry.register(
            "retries",
            "Reconciles scheduled again after a failure",
            m.retries.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile, by result",
            m.duration.clone(),
        );
        registry.register(
            "api_requests",
            "Writes sent to the API server, by verb",
            m.api_requests.clone(),
        );
        registry.register(
            "writes_fenced",
            "Writes refused unsent because the worker's Lease fence was closed, by verb",
            m.fenced.clone(),
        );
        registry.register(
            "write_timeouts",
            "Writes abandoned after the write timeout, by verb",
            m.write_timeouts.clone(),
        );
        registry.register(
            "buckets_owned",
            "Buckets this worker owns",
            m.buckets_owned.clone(),
        );
        registry.register(
            "handoffs",
            "Buckets granted to or revoked from this worker",
            m.handoffs.clone(),
        );
        registry.register(
            "handoff_release_seconds",
            "Time from a revoke to the released acknowledgement (in-flight work finished)",
            m.release.clone(),
        );
        m
    }

    /// Sets queue depth and in-flight.
    pub fn set_queue(&self, depth: usize, in_flight: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
    }

    /// Records a finished reconcile.
    pub fn observe_reconcile(&self, result: &'static str, elapsed: Duration) {
        let label = ResultLabel { result };
        self.processed.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    /// Records a retry.
    pub fn observe_retry(&self) {
        self.retries.inc();
    }

    /// Records a write to the API server.
    pub fn observe_write(&self, verb: &'static str) {
        self.api_requests.get_or_create(&VerbLabel { verb }).inc();
    }

    /// Records a write refused by the fence (not sent).
    pub fn observe_fenced(&self, verb: &'static str) {
        self.fenced.get_or_create(&VerbLabel { verb }).inc();
    }

    /// Records a write abandoned after the write timeout.
    pub fn observe_write_timeout(&self, verb: &'static str) {
        self.write_timeouts.get_or_create(&VerbLabel { verb }).inc();
    }

    /// Sets the number of owned buckets.
    pub fn set_buckets_owned(&self, n: usize) {
        self.buckets_owned.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records buckets granted (`grant`) or revoked (`revoke`).
    pub fn observe_handoff(&self, direction: &'static str, buckets: usize) {
        self.handoffs
            .get_or_create(&DirectionLabel { direction })
            .inc_by(u64::try_from(buckets).unwrap_or(u64::MAX));
    }

    /// Records how long releasing revoked buckets took.
    pub fn observe_release(&self, elapsed: Duration) {
        self.release.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_names() {
        let mut registry = Registry::with_prefix("kubetemplater");
        let m = Metrics::register(&mut registry);
        m.set_queue(3, 1);
        m.observe_reconcile("applied", Duration::from_millis(4));
        m.observe_write("apply");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "kubetemplater_queue_depth 3",
            "kubetemplater_processed_total{result=\"applied\"} 1",
            "kubetemplater_api_requests_total{verb=\"apply\"} 1",
            "kubetemplater_reconcile_duration_seconds_bucket{",
        ] {
            assert!(text.contains(needle), "missing {needle}:\n{text}");
        }
    }
}
