//! Which Lease, held by whom, with which timing; and the check that the timing can fence.

use std::collections::BTreeMap;
use std::time::Duration;

use super::LeaseError;

/// Default `leaseDurationSeconds`: how long one renewal keeps the Lease ours in others' eyes.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default renew deadline: how long after the last successful renewal we stop writing.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Default retry period: how often we renew, and how often a standby retries acquiring.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Default bound on the wall-clock difference between a holder and whoever judges its Lease
/// expired (another contender, the coordinator).
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(1);

/// Label key marking what a Lease belongs to, so membership can list them.
pub const COMPONENT_LABEL: &str = "kubetemplater.io/component";
/// [`COMPONENT_LABEL`] value on every worker's own Lease.
pub const WORKER_COMPONENT: &str = "worker";
/// [`COMPONENT_LABEL`] value on the coordinators' shared Lease.
pub const COORDINATOR_COMPONENT: &str = "coordinator";
/// The label selector of worker Leases (`kubetemplater.io/component=worker`).
pub const WORKER_LEASE_SELECTOR: &str = "kubetemplater.io/component=worker";
/// The name of the coordinators' shared leader-election Lease.
pub const COORDINATOR_LEASE_NAME: &str = "kubetemplater-coordinator";

/// Which Lease, held by whom, with which timing.
///
/// The timing must satisfy (checked by [`LeaseConfig::validate`]):
/// `2 × retry_period ≤ renew_deadline` and
/// `renew_deadline + max_clock_skew < lease_duration`; see the [module docs](super) for why.
/// What is left, [`LeaseConfig::write_budget`], bounds how long a write checked against the
/// fence may take to reach the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease (for a worker: its worker id).
    pub name: String,
    /// Our identity, written as `holderIdentity`. Unique per process incarnation (a pod name):
    /// a Lease held under the same identity by an earlier incarnation is *not* taken over
    /// before it expires or is released, since a restart cannot be told from a duplicate.
    pub holder: String,
    /// `leaseDurationSeconds`: whole seconds, at least 1.
    pub lease_duration: Duration,
    /// How long after the send instant of the last successful renewal we keep writing.
    pub renew_deadline: Duration,
    /// Interval between renewals, and between acquisition attempts of a standby.
    pub retry_period: Duration,
    /// The largest wall-clock difference between any two participants that the fencing
    /// guarantee must survive.
    pub max_clock_skew: Duration,
    /// Labels on the Lease when we create it (e.g. `kubetemplater.io/component=worker`).
    pub labels: BTreeMap<String, String>,
}

impl LeaseConfig {
    /// A Lease with the default timing (15 s / 10 s / 2 s, 1 s skew) and no labels.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        holder: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            holder: holder.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            labels: BTreeMap::new(),
        }
    }

    /// A worker's own Lease `name`, labelled `kubetemplater.io/component=worker`.
    pub fn worker(
        namespace: impl Into<String>,
        name: impl Into<String>,
        holder: impl Into<String>,
    ) -> Self {
        Self::new(namespace, name, holder).with_label(COMPONENT_LABEL, WORKER_COMPONENT)
    }

    /// The coordinators' shared Lease [`COORDINATOR_LEASE_NAME`], labelled
    /// `kubetemplater.io/component=coordinator`.
    pub fn coordinator(namespace: impl Into<String>, holder: impl Into<String>) -> Self {
        Self::new(namespace, COORDINATOR_LEASE_NAME, holder)
            .with_label(COMPONENT_LABEL, COORDINATOR_COMPONENT)
    }

    /// With one more label.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// With other durations (lease duration, renew deadline, retry period).
    #[must_use]
    pub fn with_timing(
        mut self,
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Self {
        self.lease_duration = lease_duration;
        self.renew_deadline = renew_deadline;
        self.retry_period = retry_period;
        self
    }

    /// Checks that the identity is set and that the timing gives the fencing guarantee.
    pub fn validate(&self) -> Result<(), LeaseError> {
        self.problem().map_or(Ok(()), |problem| {
            Err(LeaseError::InvalidConfig {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                problem,
            })
        })
    }

    fn problem(&self) -> Option<String> {
        if self.namespace.is_empty() || self.name.is_empty() {
            return Some("the namespace and the name of the Lease must be set".to_owned());
        }
        if self.holder.is_empty() {
            return Some(
                "the holder identity must not be empty (an empty holder means released)".to_owned(),
            );
        }
        if self.lease_duration.subsec_nanos() != 0
            || self.lease_duration.is_zero()
            || i32::try_from(self.lease_duration.as_secs()).is_err()
        {
            return Some(format!(
                "the lease duration ({:?}) must be a whole number of seconds, at least 1 \
                 (leaseDurationSeconds)",
                self.lease_duration
            ));
        }
        if self.retry_period.is_zero() {
            return Some("the retry period must be positive".to_owned());
        }
        if self.retry_period.saturating_mul(2) > self.renew_deadline {
            return Some(format!(
                "the renew deadline ({:?}) must be at least twice the retry period ({:?}), so \
                 that one failed renewal does not fence the holder",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.renew_deadline.saturating_add(self.max_clock_skew) >= self.lease_duration {
            return Some(format!(
                "the lease duration ({:?}) must be longer than the renew deadline ({:?}) plus the \
                 allowed clock skew ({:?}): otherwise another process could take the Lease over \
                 while this holder may still write",
                self.lease_duration, self.renew_deadline, self.max_clock_skew
            ));
        }
        None
    }

    /// `lease_duration − renew_deadline − max_clock_skew`: how long after its fence check a
    /// write of a holder may still land without overlapping the next holder (see the
    /// [module docs](super)). Writes should use a request timeout below it.
    pub fn write_budget(&self) -> Duration {
        self.lease_duration
            .saturating_sub(self.renew_deadline)
            .saturating_sub(self.max_clock_skew)
    }

    /// `leaseDurationSeconds` (validated to fit).
    pub(crate) fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// How long one renewal request may take before it is abandoned and retried.
    pub(crate) fn attempt_timeout(&self) -> Duration {
        (self.renew_deadline / 2).max(self.retry_period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LeaseConfig {
        LeaseConfig::worker("ns", "worker-0", "worker-0-abc")
    }

    fn problem(c: &LeaseConfig) -> String {
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid_and_labelled() {
        assert_eq!(config().validate().map_err(|e| e.to_string()), Ok(()));
        assert_eq!(
            config().labels.get(COMPONENT_LABEL).map(String::as_str),
            Some(WORKER_COMPONENT)
        );
        assert_eq!(
            WORKER_LEASE_SELECTOR,
            format!("{COMPONENT_LABEL}={WORKER_COMPONENT}")
        );
        assert_eq!(config().write_budget(), Duration::from_secs(4));
        let mut test_timing = config().with_timing(
            Duration::from_secs(2),
            Duration::from_secs(1),
            Duration::from_millis(200),
        );
        assert!(
            test_timing.validate().is_err(),
            "1 s + 1 s skew leaves no margin"
        );
        test_timing.max_clock_skew = Duration::from_millis(500);
        assert!(test_timing.validate().is_ok());
        assert_eq!(test_timing.write_budget(), Duration::from_millis(500));
    }

    #[test]
    fn the_lease_must_outlast_the_renew_deadline_by_the_skew() {
        let mut c = config();
        c.renew_deadline = Duration::from_secs(15);
        let p = problem(&c);
        assert!(p.contains("worker-0") && p.contains("clock skew"), "{p}");
        // Exactly the skew is not enough (no room left for a write in flight); more is.
        c.renew_deadline = Duration::from_secs(14);
        assert!(problem(&c).contains("clock skew"));
        c.max_clock_skew = Duration::from_secs(1) - Duration::from_nanos(1);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_timing_and_identity_are_refused() {
        let mut c = config();
        c.retry_period = Duration::from_secs(6);
        assert!(problem(&c).contains("twice the retry period"));
        let mut c = config();
        c.retry_period = Duration::ZERO;
        assert!(problem(&c).contains("retry period must be positive"));
        let mut c = config();
        c.lease_duration = Duration::from_millis(15_500);
        assert!(problem(&c).contains("whole number of seconds"));
        let mut c = config();
        c.holder = String::new();
        assert!(problem(&c).contains("holder identity"));
        let mut c = config();
        c.name = String::new();
        assert!(problem(&c).contains("must be set"));
    }
}
