//! Command line and environment of the coordinator (clap). Every flag has an `env` twin.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    pub tls: TlsArgs,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// TLS of the gRPC endpoint (always on) and the workers' certificates.
///
/// Self-managed by default: a CA and a serving certificate in the Secret `--tls-secret`, shared
/// by the replicas and rotated before expiry without a restart; the CA also signs the workers'
/// client certificates. With `--tls-cert-file`/`--tls-key-file` the serving certificate is
/// supplied instead (cert-manager style, re-read when the files change) and the workers need
/// supplied certificates too, from a CA in `--tls-ca-file`.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Secret holding the self-managed CA and serving certificate (in --namespace).
    #[arg(
        long = "tls-secret",
        env = "KT_TLS_SECRET",
        default_value = "kubetemplater-coordinator-tls"
    )]
    pub secret_name: String,

    /// More names the serving certificate carries (DNS names or IP addresses, comma-separated),
    /// e.g. the Service's. It always carries kubetemplater-coordinator[.<namespace>[.svc]]
    /// (the name clients check), localhost and 127.0.0.1.
    #[arg(long = "tls-names", env = "KT_TLS_NAMES", value_delimiter = ',')]
    pub names: Vec<String>,

    /// A supplied serving certificate (PEM chain, leaf first) instead of the Secret.
    #[arg(long, env = "KT_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// The supplied certificate's private key.
    #[arg(long, env = "KT_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// With a supplied certificate: the CA bundle worker certificates must chain to (default:
    /// the last certificate of the supplied chain).
    #[arg(long, env = "KT_TLS_CA_FILE", requires = "tls_cert_file")]
    pub tls_ca_file: Option<PathBuf>,

    /// Validity of the client certificates the coordinator signs for workers (they renew at
    /// two thirds of it).
    #[arg(long, env = "KT_WORKER_CERT_VALIDITY", default_value = "24h", value_parser = parse_duration)]
    pub worker_cert_validity: Duration,
}

impl TlsArgs {
    /// DNS names and IP addresses of the serving certificate, for the coordinators of
    /// `namespace`.
    pub fn subject_names(&self, namespace: &str) -> (Vec<String>, Vec<std::net::IpAddr>) {
        let mut dns = vec![
            "kubetemplater-coordinator".to_owned(),
            format!("kubetemplater-coordinator.{namespace}"),
            proto::client::server_name(namespace),
            "localhost".to_owned(),
        ];
        let mut ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
        for name in self
            .names
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
        {
            match name.parse::<std::net::IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !dns.iter().any(|d| d == name) => dns.push(name.to_owned()),
                Err(_) => {}
            }
        }
        (dns, ips)
    }
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
    fn the_certificate_names_what_clients_check_and_what_is_configured() {
        let args = Args::try_parse_from([
            "kubetemplater-coordinator",
            "--id",
            "c-0",
            "--tls-names",
            "kt-coordinator.kt.svc,10.0.0.7,localhost",
        ])
        .unwrap();
        let (dns, ips) = args.tls.subject_names("kt");
        assert!(dns.contains(&"kubetemplater-coordinator.kt.svc".to_owned()));
        assert!(dns.contains(&"kt-coordinator.kt.svc".to_owned()));
        assert_eq!(dns.iter().filter(|d| *d == "localhost").count(), 1);
        assert_eq!(ips.len(), 2);
        assert_eq!(args.tls.worker_cert_validity, Duration::from_secs(86_400));
    }

    #[test]
    fn a_supplied_certificate_needs_its_key() {
        let err = Args::try_parse_from([
            "kubetemplater-coordinator",
            "--id",
            "c-0",
            "--tls-cert-file",
            "/tls/tls.crt",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--tls-key-file"), "{err}");
    }

    #[test]
    fn the_identity_is_required() {
        let err = Args::try_parse_from(["kubetemplater-coordinator"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--id"), "{err}");
    }
}
