//! Command line and environment of the coordinator (clap). Every flag has an `env` twin.

use std::net::SocketAddr;
use std::time::Duration;

use telemetry::{AdminArgs, TelemetryArgs, parse_duration};

/// `kubetemplater-coordinator`: elects a leader that maps namespace buckets onto workers.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "kubetemplater-coordinator", version, about)]
pub struct Args {
    /// This replica's identity: its `holderIdentity` in the leader Lease and the id workers and
    /// `ktctl` see. In a pod, set it from the pod name (downward API).
    #[arg(long, env = "KT_COORDINATOR_ID")]
    pub id: String,

    /// Address of the gRPC endpoint (WorkerService for workers, AdminService for ktctl). Every
    /// replica serves it; only the leader accepts sessions and admin calls (the others answer
    /// UNAVAILABLE, and clients try the next address).
    #[arg(long, env = "KT_GRPC_ADDR", default_value = "0.0.0.0:9444")]
    pub grpc_addr: SocketAddr,

    /// Namespace of kubetemplater's own objects (the leader Lease, worker Leases, the bucket map).
    #[arg(long, env = "KT_NAMESPACE", default_value = "kubetemplater-system")]
    pub namespace: String,

    /// Name of the ConfigMap holding the bucket map.
    #[arg(
        long,
        env = "KT_BUCKET_MAP",
        default_value = "kubetemplater-bucket-map"
    )]
    pub bucket_map: String,

    /// Number of buckets B; must equal the workers' and the webhook's.
    #[arg(long, env = "KT_BUCKETS", default_value_t = engine::bucket::DEFAULT_BUCKETS)]
    pub buckets: u32,

    /// How often the leader re-plans with fresh object counts (a worker joining, leaving or
    /// draining re-plans at once).
    #[arg(long, env = "KT_REBALANCE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub rebalance_interval: Duration,

    /// Weight slack of the planner: no worker above (1 + ε) × the mean objects per worker.
    #[arg(long, env = "KT_BALANCE_EPSILON", default_value_t = crate::plan::DEFAULT_EPSILON)]
    pub balance_epsilon: f64,

    /// Leader Lease duration: a standby takes over this long after the leader's last renewal.
    #[arg(long, env = "KT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// The leader stops acting when it could not renew for this long (< lease duration).
    #[arg(long, env = "KT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// How often the leader renews, and how often a standby tries to take over.
    #[arg(long, env = "KT_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// TenantRegistries synced at once by the leader (the original's `--registry-concurrency`).
    #[arg(long, env = "KT_REGISTRY_CONCURRENCY", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub registry_concurrency: u16,

    /// Tenant writes in flight per registry sync.
    #[arg(long, env = "KT_TENANT_WRITE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub tenant_write_concurrency: u16,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn defaults() {
        let args = Args::try_parse_from(["kubetemplater-coordinator", "--id", "c-0"]).unwrap();
        assert_eq!(args.grpc_addr.port(), 9444);
        assert_eq!(args.namespace, "kubetemplater-system");
        assert_eq!(args.buckets, 1024);
        assert!(args.renew_deadline < args.lease_duration);
    }

    #[test]
    fn the_identity_is_required() {
        let err = Args::try_parse_from(["kubetemplater-coordinator"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--id"), "{err}");
    }
}
