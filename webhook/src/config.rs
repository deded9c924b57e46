//! Command line and environment of the webhook (clap). Every flag has an `env` twin; `main`
//! parses once and hands the typed [`Args`] to [`crate::run`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use telemetry::{AdminArgs, TelemetryArgs, parse_duration};

use crate::registration::{ClientTarget, FailurePolicy, Registration};
use crate::server::{DEFAULT_MAX_BODY_BYTES, Limits};

/// Default review listener: every interface, port 9443 (the original's).
pub const DEFAULT_LISTEN_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9443);

/// `kubetemplater-webhook`: admission for KubeTemplates, KubeTemplatePolicies, TenantTemplates
/// and Tenants.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "kubetemplater-webhook", version, about)]
pub struct Args {
    /// Address the HTTPS review endpoint listens on.
    #[arg(long, env = "KT_WEBHOOK_LISTEN_ADDR", default_value_t = DEFAULT_LISTEN_ADDR)]
    pub listen_addr: SocketAddr,

    /// Set SO_REUSEPORT on the listener, so several replicas on one host share the address (the
    /// kernel spreads connections over them).
    #[arg(long, env = "KT_WEBHOOK_REUSE_PORT", default_value_t = true, action = clap::ArgAction::Set)]
    pub reuse_port: bool,

    /// Namespace the webhook runs in: its certificate Secret lives here.
    #[arg(long, env = "KT_NAMESPACE", default_value = "kubetemplater-system")]
    pub namespace: String,

    /// Namespace KubeTemplatePolicies are read from (the original's OPERATOR_NAMESPACE).
    /// Defaults to --namespace.
    #[arg(long, env = "KT_POLICY_NAMESPACE")]
    pub policy_namespace: Option<String>,

    /// Number of buckets B (bucket = hash(shard key) mod B). Set at install, never changed.
    #[arg(long, env = "KT_BUCKETS", default_value_t = engine::bucket::DEFAULT_BUCKETS)]
    pub buckets: u32,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub registration: RegistrationArgs,

    /// Largest AdmissionReview body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "KT_WEBHOOK_MAX_REVIEW_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_review_bytes: usize,

    /// Reviews evaluated at the same time; further ones wait up to 5 s, then get 503.
    #[arg(long, env = "KT_WEBHOOK_MAX_CONCURRENT_REVIEWS", default_value_t = 64)]
    pub max_concurrent_reviews: usize,

    /// On SIGTERM, how long in-flight reviews may take before the process exits anyway.
    #[arg(long, env = "KT_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Serving certificate: self-managed in a Secret (default) or loaded from files.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Certificates")]
pub struct TlsArgs {
    /// Secret holding the self-managed CA and serving certificate (shared by all replicas).
    #[arg(
        long,
        env = "KT_WEBHOOK_SECRET_NAME",
        default_value = "kubetemplater-webhook-tls"
    )]
    pub secret_name: String,

    /// DNS names in the self-managed serving certificate. Default: the Service's names
    /// (`<service>`, `<service>.<ns>`, `<service>.<ns>.svc`, `<service>.<ns>.svc.cluster.local`).
    #[arg(long, env = "KT_WEBHOOK_CERT_DNS_NAMES", value_delimiter = ',')]
    pub cert_dns_names: Vec<String>,

    /// IP addresses in the self-managed serving certificate (e.g. 127.0.0.1 when the API server
    /// calls the webhook by URL on loopback).
    #[arg(long, env = "KT_WEBHOOK_CERT_IP_ADDRESSES", value_delimiter = ',')]
    pub cert_ip_addresses: Vec<IpAddr>,

    /// Validity of a self-managed serving certificate.
    #[arg(long, env = "KT_WEBHOOK_CERT_VALIDITY", default_value = "90d", value_parser = parse_duration)]
    pub cert_validity: Duration,

    /// Renew a self-managed certificate (and the CA) when it expires within this.
    #[arg(long, env = "KT_WEBHOOK_CERT_RENEW_BEFORE", default_value = "30d", value_parser = parse_duration)]
    pub cert_renew_before: Duration,

    /// Serving certificate chain (PEM) provided by cert-manager or by hand; turns self-management
    /// off. Reloaded when the file changes.
    #[arg(long, env = "KT_WEBHOOK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert-file.
    #[arg(long, env = "KT_WEBHOOK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// CA (PEM) to put into the webhook configurations' caBundle when --tls-cert-file is used.
    /// Without it the caBundle is the last certificate of the chain.
    #[arg(long, env = "KT_WEBHOOK_TLS_CA_FILE", requires = "tls_cert_file")]
    pub tls_ca_file: Option<PathBuf>,
}

/// The webhook configurations the webhook registers itself in.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Registration")]
pub struct RegistrationArgs {
    /// Apply the Validating/MutatingWebhookConfiguration (with the current CA bundle). Turn off
    /// when they are managed elsewhere (e.g. cert-manager's CA injector).
    #[arg(long, env = "KT_WEBHOOK_REGISTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub register: bool,

    /// Name of the ValidatingWebhookConfiguration.
    #[arg(
        long,
        env = "KT_WEBHOOK_VALIDATING_CONFIG",
        default_value = "kubetemplater-validating"
    )]
    pub validating_config: String,

    /// Name of the MutatingWebhookConfiguration.
    #[arg(
        long,
        env = "KT_WEBHOOK_MUTATING_CONFIG",
        default_value = "kubetemplater-mutating"
    )]
    pub mutating_config: String,

    /// What the API server does when no replica answers.
    #[arg(long, env = "KT_WEBHOOK_FAILURE_POLICY", value_enum, default_value_t = FailurePolicy::Fail)]
    pub failure_policy: FailurePolicy,

    /// Seconds the API server waits for a review (1–30).
    #[arg(long, env = "KT_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=30))]
    pub timeout_seconds: i32,

    /// Base URL the API server calls (e.g. https://127.0.0.1:9443) instead of a Service: for a
    /// webhook running outside the cluster, as in devcluster.
    #[arg(long, env = "KT_WEBHOOK_URL")]
    pub url: Option<String>,

    /// Service in front of the replicas (in --namespace), when --url is not set.
    #[arg(
        long,
        env = "KT_WEBHOOK_SERVICE_NAME",
        default_value = "kubetemplater-webhook"
    )]
    pub service_name: String,

    /// Port of that Service.
    #[arg(long, env = "KT_WEBHOOK_SERVICE_PORT", default_value_t = 443)]
    pub service_port: i32,
}

impl Args {
    /// The namespace policies are read from.
    pub fn policy_namespace(&self) -> &str {
        self.policy_namespace.as_deref().unwrap_or(&self.namespace)
    }

    /// The handler limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_review_bytes,
            max_concurrent_reviews: self.max_concurrent_reviews,
            ..Limits::default()
        }
    }

    /// DNS names for the self-managed certificate.
    pub fn cert_dns_names(&self) -> Vec<String> {
        if !self.tls.cert_dns_names.is_empty() {
            return self.tls.cert_dns_names.clone();
        }
        let (svc, ns) = (&self.registration.service_name, &self.namespace);
        vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ]
    }

    /// The configurations to register.
    pub fn registration(&self) -> Registration {
        let r = &self.registration;
        Registration {
            validating_name: r.validating_config.clone(),
            mutating_name: r.mutating_config.clone(),
            failure_policy: r.failure_policy,
            timeout_seconds: r.timeout_seconds,
            target: match &r.url {
                Some(url) => ClientTarget::Url(url.clone()),
                None => ClientTarget::Service {
                    namespace: self.namespace.clone(),
                    name: r.service_name.clone(),
                    port: r.service_port,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn defaults_are_the_documented_ones() {
        let args = Args::try_parse_from(["kubetemplater-webhook"]).unwrap();
        assert_eq!(args.listen_addr.port(), 9443);
        assert_eq!(args.policy_namespace(), "kubetemplater-system");
        assert_eq!(args.registration.failure_policy, FailurePolicy::Fail);
        assert_eq!(args.tls.cert_validity, Duration::from_secs(90 * 86_400));
        assert_eq!(
            args.cert_dns_names()[3],
            "kubetemplater-webhook.kubetemplater-system.svc.cluster.local"
        );
        assert!(matches!(
            args.registration().target,
            ClientTarget::Service { port: 443, .. }
        ));
    }

    #[test]
    fn url_and_files() {
        let args = Args::try_parse_from([
            "kubetemplater-webhook",
            "--url",
            "https://127.0.0.1:9443",
            "--tls-cert-file",
            "/c",
            "--tls-key-file",
            "/k",
            "--failure-policy",
            "ignore",
        ])
        .unwrap();
        assert_eq!(
            args.registration().target,
            ClientTarget::Url("https://127.0.0.1:9443".into())
        );
        assert_eq!(args.registration.failure_policy, FailurePolicy::Ignore);
    }

    #[test]
    fn a_key_file_alone_is_refused() {
        let err = Args::try_parse_from(["kubetemplater-webhook", "--tls-key-file", "/k"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-cert-file"), "{err}");
    }
}
