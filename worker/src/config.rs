//! Command line and environment of the worker (clap). Every flag has an `env` twin.

use std::time::Duration;

use telemetry::{AdminArgs, TelemetryArgs, parse_duration};

/// `kubetemplater-worker`: owns buckets, reconciles their KubeTemplates.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "kubetemplater-worker", version, about)]
pub struct Args {
    /// This worker's identity: the name of its Lease and what the coordinator calls it. In a pod,
    /// set it from the pod name (downward API).
    #[arg(long, env = "KT_WORKER_ID")]
    pub worker_id: String,

    /// The coordinator's gRPC address (the Service in front of the coordinators; only the leader
    /// accepts sessions, the others say who leads).
    #[arg(
        long,
        env = "KT_COORDINATOR_ADDR",
        default_value = "http://kubetemplater-coordinator:9444"
    )]
    pub coordinator_addr: String,

    /// Namespace of kubetemplater's own objects (the worker's Lease, the policies).
    #[arg(long, env = "KT_NAMESPACE", default_value = "kubetemplater-system")]
    pub namespace: String,

    /// Namespace KubeTemplatePolicies are read from. Defaults to --namespace.
    #[arg(long, env = "KT_POLICY_NAMESPACE")]
    pub policy_namespace: Option<String>,

    /// Number of buckets B; must equal the coordinator's.
    #[arg(long, env = "KT_BUCKETS", default_value_t = engine::bucket::DEFAULT_BUCKETS)]
    pub buckets: u32,

    /// Templates reconciled at the same time.
    #[arg(long, env = "KT_WORKER_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,

    /// Objects of one template applied at the same time.
    #[arg(long, env = "KT_WORKER_APPLY_CONCURRENCY", default_value_t = 8)]
    pub apply_concurrency: usize,

    /// Safety resync of every owned template (jittered ±20%); drift is normally seen through
    /// watches.
    #[arg(long, env = "KT_RESYNC_INTERVAL", default_value = "30m", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// Lease duration: after this long without a renewal, others may consider the worker dead.
    #[arg(long, env = "KT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// The worker stops writing when it could not renew its Lease for this long (< lease duration).
    #[arg(long, env = "KT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// How often the Lease is renewed.
    #[arg(long, env = "KT_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// On SIGTERM, how long in-flight reconciles may take before the process exits anyway.
    #[arg(long, env = "KT_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Args {
    /// The namespace policies are read from.
    pub fn policy_namespace(&self) -> &str {
        self.policy_namespace.as_deref().unwrap_or(&self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn defaults() {
        let args =
            Args::try_parse_from(["kubetemplater-worker", "--worker-id", "worker-0"]).unwrap();
        assert_eq!(args.policy_namespace(), "kubetemplater-system");
        assert_eq!(args.lease_duration, Duration::from_secs(15));
        assert!(args.renew_deadline < args.lease_duration);
        assert_eq!(args.buckets, 1024);
    }

    #[test]
    fn the_identity_is_required() {
        let err = Args::try_parse_from(["kubetemplater-worker"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--worker-id"), "{err}");
    }
}
