//! The coordinator's Prometheus metrics (prefix `kubetemplater_`, as the worker's).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kubetemplater_leader` | gauge | — (1 on the leader, 0 on a standby) |
//! | `kubetemplater_leader_terms_total` | counter | — (terms this replica led) |
//! | `kubetemplater_workers` | gauge | `state` (`live`, `connected`, `draining`) |
//! | `kubetemplater_buckets_owned` | gauge | `worker` (as the leader's map says) |
//! | `kubetemplater_buckets_unassigned` | gauge | — |
//! | `kubetemplater_handoffs_in_progress` | gauge | — (buckets revoked, not yet released) |
//! | `kubetemplater_handoffs_total` | counter | `reason` (`rebalance`, `drain`, `coordinator_restart`, `worker_lost`, `unassigned`) |
//! | `kubetemplater_handoff_duration_seconds` | histogram | `reason` (revoke sent → grant sent; 0 for direct grants) |
//! | `kubetemplater_api_requests_total` | counter | `verb` (writes: `update_map`, `label_template`) |
//! | `kubetemplater_templates` | gauge | — (KubeTemplates counted across all buckets) |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::Snapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabel {
    verb: &'static str,
}

/// The coordinator's metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    leader: Gauge,
    terms: Counter,
    workers: Family<StateLabel, Gauge>,
    buckets_owned: Family<WorkerLabel, Gauge>,
    unassigned: Gauge,
    in_progress: Gauge,
    handoffs: Family<ReasonLabel, Counter>,
    duration: Family<ReasonLabel, Histogram>,
    api_requests: Family<VerbLabel, Counter>,
    templates: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            leader: Gauge::default(),
            terms: Counter::default(),
            workers: Family::default(),
            buckets_owned: Family::default(),
            unassigned: Gauge::default(),
            in_progress: Gauge::default(),
            handoffs: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 18))
            }),
            api_requests: Family::default(),
            templates: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics in `registry` (give it the `kubetemplater` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("leader", "1 while this replica leads", m.leader.clone());
        registry.register("leader_terms", "Terms this replica led", m.terms.clone());
        registry.register(
            "workers",
            "Workers by state: live (Lease held), connected (session open), draining",
            m.workers.clone(),
        );
        registry.register(
            "buckets_owned",
            "Buckets each worker owns in the map",
            m.buckets_owned.clone(),
        );
        registry.register(
            "buckets_unassigned",
            "Buckets without an owner",
            m.unassigned.clone(),
        );
        registry.register(
            "handoffs_in_progress",
            "Buckets revoked and not yet released",
            m.in_progress.clone(),
        );
        registry.register(
            "handoffs",
            "Buckets handed to a new owner, by reason",
            m.handoffs.clone(),
        );
        registry.register(
            "handoff_duration_seconds",
            "Time from the revoke to the grant of a bucket, by reason",
            m.duration.clone(),
        );
        registry.register(
            "api_requests",
            "Writes sent to the API server, by verb",
            m.api_requests.clone(),
        );
        registry.register(
            "templates",
            "KubeTemplates counted across all buckets",
            m.templates.clone(),
        );
        m
    }

    /// Leader (`true`) or standby.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
        if leader {
            self.terms.inc();
        }
    }

    /// One bucket handed over for `reason` after `elapsed` since its revoke.
    pub fn observe_handoff(&self, reason: &'static str, buckets: usize, elapsed: Duration) {
        let labels = ReasonLabel { reason };
        self.handoffs
            .get_or_create(&labels)
            .inc_by(u64::try_from(buckets).unwrap_or(u64::MAX));
        let histogram = self.duration.get_or_create(&labels);
        for _ in 0..buckets {
            histogram.observe(elapsed.as_secs_f64());
        }
    }

    /// A write sent to the API server.
    pub fn observe_write(&self, verb: &'static str) {
        self.api_requests.get_or_create(&VerbLabel { verb }).inc();
    }

    /// The number of KubeTemplates counted.
    pub fn set_templates(&self, n: u64) {
        self.templates.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Map-derived gauges from the leader loop's snapshot.
    pub fn observe_snapshot(&self, snapshot: &Snapshot) {
        let gauge = |state| self.workers.get_or_create(&StateLabel { state });
        gauge("live").set(len(snapshot.live.len()));
        gauge("connected").set(len(snapshot.connected.len()));
        gauge("draining").set(len(snapshot.draining.len()));
        let mut owned = std::collections::BTreeMap::<&str, i64>::new();
        let mut unassigned = 0;
        for slot in &snapshot.slots {
            match &slot.owner {
                Some(owner) => *owned.entry(owner.as_str()).or_default() += 1,
                None => unassigned += 1,
            }
        }
        // Workers that own nothing any more disappear from the family.
        self.buckets_owned.clear();
        for (worker, n) in owned {
            self.buckets_owned
                .get_or_create(&WorkerLabel {
                    worker: worker.to_owned(),
                })
                .set(n);
        }
        self.unassigned.set(unassigned);
        self.in_progress.set(len(snapshot.pending.len()));
    }

    /// A standby shows no map.
    pub fn clear_map(&self) {
        self.buckets_owned.clear();
        self.unassigned.set(0);
        self.in_progress.set(0);
        for state in ["live", "connected", "draining"] {
            self.workers.get_or_create(&StateLabel { state }).set(0);
        }
    }
}

fn len(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::Slot;

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn snapshot_gauges_follow_the_map() {
        let mut registry = Registry::with_prefix("kubetemplater");
        let metrics = Metrics::register(&mut registry);
        let slot = |owner: Option<&str>| Slot {
            owner: owner.map(str::to_owned),
            epoch: 1,
        };
        let mut snapshot = Snapshot {
            slots: vec![
                slot(Some("w0")),
                slot(Some("w0")),
                slot(Some("w1")),
                slot(None),
            ],
            ..Snapshot::default()
        };
        snapshot.live.insert("w0".into());
        snapshot.live.insert("w1".into());
        metrics.observe_snapshot(&snapshot);
        let text = encode(&registry);
        assert!(
            text.contains("kubetemplater_buckets_owned{worker=\"w0\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("kubetemplater_buckets_owned{worker=\"w1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubetemplater_buckets_unassigned 1"),
            "{text}"
        );
        assert!(
            text.contains("kubetemplater_workers{state=\"live\"} 2"),
            "{text}"
        );

        // w1 gave its bucket away: its series goes.
        snapshot.slots[2] = slot(Some("w0"));
        metrics.observe_snapshot(&snapshot);
        let text = encode(&registry);
        assert!(!text.contains("worker=\"w1\""), "{text}");
        assert!(
            text.contains("kubetemplater_buckets_owned{worker=\"w0\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn handoffs_count_per_bucket_with_their_duration() {
        let mut registry = Registry::with_prefix("kubetemplater");
        let metrics = Metrics::register(&mut registry);
        metrics.observe_handoff("rebalance", 3, Duration::from_millis(40));
        metrics.set_leader(true);
        let text = encode(&registry);
        assert!(
            text.contains("kubetemplater_handoffs_total{reason=\"rebalance\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("kubetemplater_handoff_duration_seconds_count{reason=\"rebalance\"} 3"),
            "{text}"
        );
        assert!(text.contains("kubetemplater_leader 1"), "{text}");
        assert!(
            text.contains("kubetemplater_leader_terms_total 1"),
            "{text}"
        );
    }
}
