//! Named readiness checks backing `GET /readyz`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Cheap, clone-able set of named readiness checks shared by all parts of a
/// binary. The process is ready when every registered check is ready (so a
/// process with no checks is ready).
///
/// ```
/// let readiness = kubetemplater_telemetry::Readiness::new();
/// readiness.register("informers");
/// readiness.register("leader-election");
/// assert_eq!(readiness.not_ready(), ["informers", "leader-election"]);
/// readiness.mark_ready("informers");
/// readiness.mark_ready("leader-election");
/// assert!(readiness.is_ready());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Readiness {
    /// An empty set of checks (ready).
    pub fn new() -> Self {
        Self::default()
    }

    fn checks(&self) -> MutexGuard<'_, BTreeMap<String, bool>> {
        self.checks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a check in the not-ready state; a no-op if it already exists.
    /// Register everything at start-up so `/readyz` fails until each part is up.
    pub fn register(&self, name: impl Into<String>) {
        self.checks().entry(name.into()).or_insert(false);
    }

    /// Marks a check ready (registering it if needed).
    pub fn mark_ready(&self, name: impl Into<String>) {
        self.checks().insert(name.into(), true);
    }

    /// Marks a check not ready (registering it if needed).
    pub fn mark_not_ready(&self, name: impl Into<String>) {
        self.checks().insert(name.into(), false);
    }

    /// Whether every registered check is ready.
    pub fn is_ready(&self) -> bool {
        self.checks().values().all(|ready| *ready)
    }

    /// Names of the checks that are not ready, sorted.
    pub fn not_ready(&self) -> Vec<String> {
        self.checks()
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_state() {
        let readiness = Readiness::new();
        assert!(readiness.is_ready());
        let other = readiness.clone();
        other.register("b");
        readiness.register("a");
        assert_eq!(readiness.not_ready(), ["a", "b"]);
        other.mark_ready("a");
        readiness.register("a"); // does not reset
        assert_eq!(readiness.not_ready(), ["b"]);
        readiness.mark_ready("b");
        assert!(other.is_ready());
        other.mark_not_ready("a");
        assert!(!readiness.is_ready());
        readiness.mark_not_ready("c");
        assert_eq!(other.not_ready(), ["a", "c"]);
    }
}
