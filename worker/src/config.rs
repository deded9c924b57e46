//! Command line and environment of the worker (clap). Every flag has an `env` twin.

use std::path::PathBuf;
use std::time::Duration;

use telemetry::{AdminArgs, TelemetryArgs, parse_duration};

const AFTER_HELP: &str = "\
The worker holds its own Lease <--namespace>/<--worker-id> and writes to the API server only while
the Lease is renewed (self-fencing): each write is checked against it right before it is sent and
is abandoned after 3/4 of (lease duration - renew deadline - 1 s clock skew).

Readiness (/readyz): the Lease is held, the policy cache has synced, and a coordinator session has
been open at least once.

Exit status: 0 after SIGTERM/SIGINT (Leaving sent, buckets revoked or --shutdown-grace passed,
in-flight work finished, Lease released); 1 on a configuration error, or when the Lease was lost
(renewals failed until the renew deadline, taken over, deleted): all work stops at once and a
supervisor restarts the process, which acquires the Lease in a new term.

The cluster comes from KUBECONFIG, or the in-cluster configuration.";

/// `kubetemplater-worker`: owns buckets, reconciles their KubeTemplates.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "kubetemplater-worker", version, about, after_long_help = AFTER_HELP)]
pub struct Args {
    /// This worker's identity: the name of its Lease and what the coordinator calls it. In a pod,
    /// set it from the pod name (downward API).
    #[arg(long, env = "KT_WORKER_ID")]
    pub worker_id: String,

    /// The coordinators' gRPC addresses, comma-separated: each replica's, or one Service in front
    /// of them. Only the leader accepts a session (a standby answers UNAVAILABLE); they are
    /// tried in turn, and the worker waits (0.5 s doubling to 30 s) only after all refused.
    #[arg(
        long,
        env = "KT_COORDINATOR_ADDR",
        value_delimiter = ',',
        value_name = "URL[,URL...]",
        default_value = "https://kubetemplater-coordinator:9444"
    )]
    pub coordinator_addr: Vec<String>,

    /// A supplied client certificate (PEM, naming this worker: URI
    /// kubetemplater://worker/<worker-id>), instead of one the coordinator signs on request.
    /// Read again for every connection.
    #[arg(long, env = "KT_TLS_CERT_FILE", requires_all = ["tls_key_file", "tls_ca_file"])]
    pub tls_cert_file: Option<PathBuf>,

    /// The supplied certificate's private key.
    #[arg(long, env = "KT_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// With a supplied certificate: the CA bundle the coordinators' certificates chain to
    /// (otherwise read from the ConfigMap kubetemplater-coordinator-ca in --namespace).
    #[arg(long, env = "KT_TLS_CA_FILE", requires = "tls_cert_file")]
    pub tls_ca_file: Option<PathBuf>,

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

    /// The worker stops writing when it could not renew its Lease for this long. Plus the 1 s
    /// clock-skew allowance, it must stay below the lease duration; at least twice the retry
    /// period.
    #[arg(long, env = "KT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// How often the Lease is renewed.
    #[arg(long, env = "KT_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// On SIGTERM: how long to wait for the coordinator to revoke every bucket (after Leaving)
    /// and for in-flight reconciles to finish, in all, before the Lease is released anyway.
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
        assert_eq!(
            args.coordinator_addr,
            vec!["https://kubetemplater-coordinator:9444".to_owned()]
        );
    }

    #[test]
    fn coordinators_are_a_comma_separated_list() {
        let args = Args::try_parse_from([
            "kubetemplater-worker",
            "--worker-id",
            "worker-0",
            "--coordinator-addr",
            "http://127.0.0.1:9444,http://127.0.0.1:9445",
        ])
        .unwrap();
        assert_eq!(
            args.coordinator_addr,
            vec!["http://127.0.0.1:9444", "http://127.0.0.1:9445"]
        );
    }

    #[test]
    fn a_supplied_certificate_needs_its_key_and_ca() {
        let err = Args::try_parse_from([
            "kubetemplater-worker",
            "--worker-id",
            "worker-0",
            "--tls-cert-file",
            "/tls/tls.crt",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--tls-key-file") && err.contains("--tls-ca-file"),
            "{err}"
        );
    }

    #[test]
    fn the_identity_is_required() {
        let err = Args::try_parse_from(["kubetemplater-worker"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--worker-id"), "{err}");
    }
}
