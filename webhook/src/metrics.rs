//! The webhook's Prometheus metrics.
//!
//! | metric (OpenMetrics name)                        | type      | labels                  |
//! |--------------------------------------------------|-----------|-------------------------|
//! | `kubetemplater_webhook_duration_seconds`         | histogram | `operation`, `verdict`  |
//! | `kubetemplater_admissions_total`                 | counter   | `operation`, `verdict`  |
//! | `kubetemplater_cache_hits_total`                 | counter   | —                       |
//! | `kubetemplater_cache_misses_total`               | counter   | —                       |
//! | `kubetemplater_policy_compilations_total`        | counter   | —                       |
//! | `kubetemplater_policies_cached`                  | gauge     | —                       |
//! | `kubetemplater_webhook_rejected_requests_total`  | counter   | `reason`                |
//! | `kubetemplater_webhook_tls_handshake_errors_total` | counter | —                       |
//! | `kubetemplater_webhook_connections_total`        | counter | —                       |
//!
//! `operation` is the review endpoint ([`Operation::label`]), `verdict` one of `allowed`,
//! `denied`, `mutated`, `invalid` (the review itself could not be used). A cache *hit* is a
//! policy lookup answered with an already compiled policy, a *miss* one that found no policy for
//! the namespace (the lookup never reaches the API server either way: the cache is watch-fed).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::review::Operation;

/// What a review ended as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Allowed without changes.
    Allowed,
    /// Allowed with a patch.
    Mutated,
    /// Denied.
    Denied,
    /// The request could not be used (malformed review, wrong kind…).
    Invalid,
}

impl Verdict {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Mutated => "mutated",
            Verdict::Denied => "denied",
            Verdict::Invalid => "invalid",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    operation: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The webhook's metrics; cheap to clone (all values are shared atomics).
#[derive(Clone, Debug)]
pub struct Metrics {
    duration: Family<ReviewLabels, Histogram>,
    admissions: Family<ReviewLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    compilations: Counter,
    policies: Gauge,
    rejected: Family<ReasonLabels, Counter>,
    tls_errors: Counter,
    connections: Counter,
}

/// Histogram buckets for review durations: 50 µs … ~3.3 s.
fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 17)
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            duration: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
            admissions: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            compilations: Counter::default(),
            policies: Gauge::default(),
            rejected: Family::default(),
            tls_errors: Counter::default(),
            connections: Counter::default(),
        }
    }
}

impl Metrics {
    /// New metrics registered in `registry` (give it the `kubetemplater` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "webhook_duration_seconds",
            "Time to answer one AdmissionReview, from the end of the request body to the response",
            m.duration.clone(),
        );
        registry.register(
            "admissions",
            "AdmissionReviews answered, by endpoint and verdict",
            m.admissions.clone(),
        );
        registry.register(
            "cache_hits",
            "Policy lookups answered with a compiled policy from the watch-fed cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Policy lookups that found no policy for the namespace",
            m.cache_misses.clone(),
        );
        registry.register(
            "policy_compilations",
            "KubeTemplatePolicy generations compiled (CEL programs and regexes)",
            m.compilations.clone(),
        );
        registry.register(
            "policies_cached",
            "KubeTemplatePolicies in the cache",
            m.policies.clone(),
        );
        registry.register(
            "webhook_rejected_requests",
            "HTTP requests refused before review (wrong method, path, content type, oversized or malformed body, overload)",
            m.rejected.clone(),
        );
        registry.register(
            "webhook_tls_handshake_errors",
            "TLS handshakes that failed (plaintext clients, unknown CA, protocol errors)",
            m.tls_errors.clone(),
        );
        registry.register(
            "webhook_connections",
            "TCP connections accepted on the review port",
            m.connections.clone(),
        );
        m
    }

    /// Records an accepted connection.
    pub fn observe_connection(&self) {
        self.connections.inc();
    }

    /// Records one answered review.
    pub fn observe_review(&self, operation: Operation, verdict: Verdict, elapsed: Duration) {
        let labels = ReviewLabels {
            operation: operation.label(),
            verdict: verdict.label(),
        };
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.admissions.get_or_create(&labels).inc();
    }

    /// Records a policy lookup.
    pub fn observe_lookup(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    /// Records a policy compilation.
    pub fn observe_compilation(&self) {
        self.compilations.inc();
    }

    /// Sets the number of cached policies.
    pub fn set_policies(&self, n: usize) {
        self.policies.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records a request refused before review.
    pub fn observe_rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Records a failed TLS handshake.
    pub fn observe_tls_error(&self) {
        self.tls_errors.inc();
    }
}

impl runtime::policies::CacheObserver for Metrics {
    fn lookup(&self, hit: bool) {
        self.observe_lookup(hit);
    }
    fn compiled(&self) {
        self.observe_compilation();
    }
    fn policies(&self, count: usize) {
        self.set_policies(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_the_documented_prefix() {
        let mut registry = Registry::with_prefix("kubetemplater");
        let m = Metrics::register(&mut registry);
        m.observe_review(
            Operation::ValidateKubeTemplate,
            Verdict::Denied,
            Duration::from_micros(300),
        );
        m.observe_lookup(true);
        m.observe_lookup(false);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "kubetemplater_webhook_duration_seconds_bucket{",
            "kubetemplater_admissions_total{operation=\"validate-kubetemplate\",verdict=\"denied\"} 1",
            "kubetemplater_cache_hits_total 1",
            "kubetemplater_cache_misses_total 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
