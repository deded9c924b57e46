//! Prometheus metrics: the registry type and its OpenMetrics encoding.
//!
//! `main` owns one [`Registry`], hands each component a prefixed sub-registry
//! (`registry.sub_registry_with_prefix("reconciler")`) to register its metrics
//! in, and then wraps it in an `Arc` for the admin server. Registration needs
//! `&mut`, encoding only `&`, so after start-up the registry is read-only and
//! shared without a lock; metric values themselves are atomics.

pub use prometheus_client;
pub use prometheus_client::registry::Registry;

use crate::error::Result;

/// Content type of `GET /metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes `registry` in the OpenMetrics text format (including `# EOF`).
pub fn encode(registry: &Registry) -> Result<String> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn encodes_prefixed_sub_registries() {
        let mut registry = Registry::with_prefix("kt");
        let reconciles = Counter::<u64>::default();
        registry.sub_registry_with_prefix("worker").register(
            "reconciles",
            "Reconciliations",
            reconciles.clone(),
        );
        reconciles.inc_by(3);
        let text = encode(&registry).expect("encodes");
        assert!(text.contains("kt_worker_reconciles_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
