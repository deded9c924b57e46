//! Serving certificates: self-managed in a Secret shared by all replicas, or provided as files.
//!
//! [`load`] returns the first certificate; [`maintain`] keeps it current and sends every new
//! one on a watch channel, which the TLS resolver ([`crate::tls::ReloadingResolver`]) and the
//! CA-bundle registration follow. Neither needs a restart.
//!
//! # Self-managed ([`CertSource::Secret`])
//!
//! One Secret of type `kubernetes.io/tls`, labelled
//! `app.kubernetes.io/managed-by: kubetemplater-webhook`, holds everything, so every replica
//! serves the same certificate and any replica can rotate it:
//!
//! | key           | content                                                                  |
//! |---------------|--------------------------------------------------------------------------|
//! | `tls.crt`     | the serving certificate (PEM)                                            |
//! | `tls.key`     | its private key (PKCS#8 PEM)                                             |
//! | `ca.crt`      | the CA bundle for `caBundle`: signing CA, then a next CA waiting for promotion, then retired CAs that have not expired |
//! | `ca.key`      | the signing CA's private key                                             |
//! | `ca-next.key` | only during a CA rotation: the private key of the next CA                |
//!
//! The annotation `kubetemplater.io/certificate-change` says when and why it last changed.
//!
//! **Lifecycle** (details and the exact windows in `rotation`): a missing Secret is created with a
//! new CA (ECDSA P-256, `ca_validity`, default 10 years) and serving certificate (`leaf_validity`,
//! default 90 days, never beyond the CA). The serving certificate is re-issued by the same CA
//! when it expires within `rotate_before` (default 30 days) or lacks a configured name; the CA
//! is not touched. The CA rotates in two steps so clients never see a certificate they do not
//! trust yet: when it expires within `rotate_before`, a next CA joins the bundle while the old one
//! keeps signing; `rotate_before / 2` later the next CA is promoted and signs a new serving
//! certificate; the old CA stays in the bundle until it expires.
//!
//! **Races.** Replicas start together and rotate independently, so every write is conditional:
//! the Secret is created with `create` (on `409 AlreadyExists` the winner's Secret is read and
//! used) and changed with `replace` carrying the `resourceVersion` it was computed from (on
//! `409 Conflict` it is read again, and what the other replica wrote is used if it is good).
//! As all replicas apply the same rules to the same Secret, they agree on the outcome.
//!
//! **Broken contents.** A Secret whose keys are missing, unparseable or do not match is repaired
//! when it carries our label: only the broken part is replaced where possible (a bad serving
//! certificate is re-issued by the existing CA), everything is regenerated when the CA is
//! unusable, and the reason is logged. A Secret without our label is never written: it is used
//! as it is when its serving certificate is usable, and is otherwise an error naming the problem
//! ([`CertError::SecretNotManaged`]).
//!
//! **Staying current.** [`maintain`] watches the one Secret (kube-runtime watcher, field selector
//! `metadata.name`), so a rotation by another replica reaches this one within the watch latency
//! (about a second); a timer wakes it at the next rotation deadline (and at least every
//! `recheck_interval`). A deleted Secret is recreated. Errors are logged and retried with
//! backoff (1 s doubling to 60 s) while the current certificate keeps being served.
//!
//! RBAC: `get, list, watch, create, update` on Secrets in the webhook's namespace.
//!
//! # Provided files ([`CertSource::Files`])
//!
//! `tls.crt` (leaf first, then intermediates), `tls.key` and optionally `ca.crt`, as written by
//! cert-manager or mounted from a Secret. The files are read every `poll_interval`; when their
//! content hash changes and the certificate and key parse and match, the new certificate is
//! sent. A bad or half-written pair is logged with the file and the reason, and the previous
//! certificate stays in use. Without `ca.crt` the CA bundle is the last certificate of the chain.

mod authority;
pub mod client;
mod files;
mod rotation;
mod secret;
pub mod tls;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rustls::sign::CertifiedKey;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use secret::{CHANGE_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL};

/// Default validity of a self-managed serving certificate: 90 days.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// Default validity of a self-managed CA: 10 years (3650 days).
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);
/// Default rotation window: rotate a certificate (or start rotating the CA) when it expires
/// within 30 days.
pub const DEFAULT_ROTATE_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// Default interval at which the Secret is re-read even without a watch event: 10 minutes.
pub const DEFAULT_RECHECK_INTERVAL: Duration = Duration::from_secs(600);
/// Default interval at which provided files are polled: 5 seconds.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// One serving certificate with its CA bundle, as PEM.
#[derive(Clone)]
pub struct ServingCert {
    /// CA certificates clients should trust (the webhook configurations' `caBundle`).
    pub ca_pem: String,
    /// The serving certificate, followed by any intermediates.
    pub chain_pem: String,
    key_pem: SecretString,
    /// When the serving certificate expires.
    pub not_after: Timestamp,
    /// SHA-256 of the serving certificate's DER, lowercase hex (for logs and metrics).
    pub fingerprint: String,
    certified: Arc<CertifiedKey>,
    signer: Option<client::Signer>,
}

impl ServingCert {
    /// Checks that `chain_pem` and `key_pem` parse and belong together and builds the
    /// certificate. `cert_origin`/`key_origin` name where they came from in errors.
    fn from_parts(
        ca_pem: String,
        chain_pem: String,
        key_pem: SecretString,
        cert_origin: &str,
        key_origin: &str,
    ) -> Result<Self, CertError> {
        let certified = crate::tls::certified_key(&chain_pem, &key_pem, cert_origin, key_origin)?;
        let leaf = certified
            .end_entity_cert()
            .map_err(|e| CertError::Parse {
                origin: cert_origin.to_owned(),
                problem: e.to_string(),
            })?
            .clone()
            .into_owned();
        let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
        let info = authority::CertInfo::parse(leaf).map_err(|problem| CertError::Parse {
            origin: cert_origin.to_owned(),
            problem,
        })?;
        Ok(Self {
            ca_pem,
            chain_pem,
            key_pem,
            not_after: info.not_after,
            fingerprint,
            certified,
            signer: None,
        })
    }

    /// The signing CA, when this replica holds its key (self-managed in a Secret, or
    /// [`ServingCert::generate`]): it signs client certificates.
    pub fn signer(&self) -> Option<&client::Signer> {
        self.signer.as_ref()
    }

    pub(crate) fn with_signer(mut self, signer: Option<client::Signer>) -> Self {
        self.signer = signer;
        self
    }

    /// A certificate from PEM text (the chain leaf first); fails when the key does not match.
    pub fn from_pem(
        ca_pem: String,
        chain_pem: String,
        key_pem: SecretString,
    ) -> Result<Self, CertError> {
        Self::from_parts(
            ca_pem,
            chain_pem,
            key_pem,
            "the given certificate PEM",
            "the given key PEM",
        )
    }

    /// A throwaway CA and a serving certificate for `dns_names` and `ip_addresses`, both valid
    /// for `validity`, kept nowhere (for tests and one-off servers).
    pub fn generate(
        dns_names: &[String],
        ip_addresses: &[IpAddr],
        validity: Duration,
    ) -> Result<Self, CertError> {
        let validity = signed(validity, "validity")?;
        let now = Timestamp::now();
        let ca = authority::generate_ca(now, validity)?;
        let leaf = authority::issue_leaf(&ca, dns_names, ip_addresses, now, validity)?;
        Ok(Self::from_parts(
            ca.cert.pem(),
            leaf.chain_pem,
            leaf.key_pem,
            "the generated certificate",
            "the generated key",
        )?
        .with_signer(Some(client::Signer::new(ca))))
    }

    /// The private key (PEM) of the serving certificate.
    pub fn key_pem(&self) -> &SecretString {
        &self.key_pem
    }

    /// The certificate chain and key as rustls uses them.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified)
    }

    /// Whether `other` is the same serving certificate with the same CA bundle (nothing to
    /// send to the followers of the channel).
    pub fn same_as(&self, other: &ServingCert) -> bool {
        // The signing CA is in the bundle: a new signer changes `ca_pem` too.
        self.fingerprint == other.fingerprint && self.ca_pem == other.ca_pem
    }
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .field(
                "ca_certificates",
                &self.ca_pem.matches("BEGIN CERTIFICATE").count(),
            )
            .finish_non_exhaustive()
    }
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// Self-managed: CA and serving certificate generated with rcgen, kept in a Secret.
    Secret(SecretSource),
    /// Provided files (cert-manager style), polled for changes.
    Files(FileSource),
}

/// A self-managed certificate in the Secret `namespace`/`secret_name`.
#[derive(Clone)]
pub struct SecretSource {
    /// Client for the Secret.
    pub client: kube::Client,
    /// Namespace of the Secret (the webhook's own).
    pub namespace: String,
    /// Name of the Secret.
    pub secret_name: String,
    /// Value of the label `app.kubernetes.io/managed-by` that marks the Secret as ours to write
    /// ([`MANAGED_BY`], the webhook's, by default).
    pub manager: String,
    /// DNS names the serving certificate carries (e.g. the Service's names).
    pub dns_names: Vec<String>,
    /// IP addresses the serving certificate carries (e.g. 127.0.0.1 locally).
    pub ip_addresses: Vec<IpAddr>,
    /// Validity of a serving certificate ([`DEFAULT_LEAF_VALIDITY`]).
    pub leaf_validity: Duration,
    /// Validity of a CA ([`DEFAULT_CA_VALIDITY`]).
    pub ca_validity: Duration,
    /// Rotate a certificate that expires within this ([`DEFAULT_ROTATE_BEFORE`]); the CA the
    /// same way, with an overlap of half of it.
    pub rotate_before: Duration,
    /// Re-read the Secret at least this often, watch events aside
    /// ([`DEFAULT_RECHECK_INTERVAL`]).
    pub recheck_interval: Duration,
}

impl SecretSource {
    /// The Secret `namespace`/`secret_name` with default validities and no names yet (set
    /// `dns_names` and/or `ip_addresses`).
    pub fn defaults(client: kube::Client, namespace: &str, secret_name: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            secret_name: secret_name.to_owned(),
            manager: MANAGED_BY.to_owned(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            leaf_validity: DEFAULT_LEAF_VALIDITY,
            ca_validity: DEFAULT_CA_VALIDITY,
            rotate_before: DEFAULT_ROTATE_BEFORE,
            recheck_interval: DEFAULT_RECHECK_INTERVAL,
        }
    }

    /// The rotation policy, or why the configuration cannot work.
    fn policy(&self) -> Result<rotation::Policy, CertError> {
        let config = |msg: String| {
            Err(CertError::Config(format!(
                "Secret {}/{}: {msg}",
                self.namespace, self.secret_name
            )))
        };
        if self.namespace.is_empty() || self.secret_name.is_empty() {
            return config("namespace and Secret name must not be empty".to_owned());
        }
        if self.dns_names.is_empty() && self.ip_addresses.is_empty() {
            return config("the serving certificate needs at least one DNS name or IP".to_owned());
        }
        if let Some(bad) = self
            .dns_names
            .iter()
            .find(|n| n.is_empty() || !n.is_ascii() || n.contains(char::is_whitespace))
        {
            return config(format!("{bad:?} is not a DNS name"));
        }
        let policy = rotation::Policy {
            dns_names: self.dns_names.clone(),
            ip_addresses: self.ip_addresses.clone(),
            leaf_validity: signed(self.leaf_validity, "leaf validity")?,
            ca_validity: signed(self.ca_validity, "CA validity")?,
            rotate_before: signed(self.rotate_before, "rotate-before")?,
        };
        if self.rotate_before.is_zero() || self.rotate_before >= self.leaf_validity {
            return config(format!(
                "rotate-before ({:?}) must be above zero and below the certificate validity ({:?})",
                self.rotate_before, self.leaf_validity
            ));
        }
        if self.ca_validity < self.leaf_validity {
            return config(format!(
                "the CA validity ({:?}) must not be below the certificate validity ({:?})",
                self.ca_validity, self.leaf_validity
            ));
        }
        if self.recheck_interval.is_zero() {
            return config("the recheck interval must be above zero".to_owned());
        }
        Ok(policy)
    }
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource")
            .field("namespace", &self.namespace)
            .field("secret_name", &self.secret_name)
            .field("manager", &self.manager)
            .field("dns_names", &self.dns_names)
            .field("ip_addresses", &self.ip_addresses)
            .field("leaf_validity", &self.leaf_validity)
            .field("ca_validity", &self.ca_validity)
            .field("rotate_before", &self.rotate_before)
            .field("recheck_interval", &self.recheck_interval)
            .finish_non_exhaustive()
    }
}

/// A provided certificate: PEM files, polled for changes.
#[derive(Clone, Debug)]
pub struct FileSource {
    /// The certificate chain, leaf first (`tls.crt`).
    pub cert: PathBuf,
    /// Its private key (`tls.key`; PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle for `caBundle` (`ca.crt`); without it, the chain's last certificate.
    pub ca: Option<PathBuf>,
    /// How often the files are read ([`DEFAULT_POLL_INTERVAL`]).
    pub poll_interval: Duration,
}

impl FileSource {
    /// The files `cert`, `key` and optionally `ca`, read every [`DEFAULT_POLL_INTERVAL`].
    pub fn new(cert: PathBuf, key: PathBuf, ca: Option<PathBuf>) -> Self {
        Self {
            cert,
            key,
            ca,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

fn signed(d: Duration, what: &str) -> Result<SignedDuration, CertError> {
    SignedDuration::try_from(d).map_err(|e| CertError::Config(format!("{what} {d:?}: {e}")))
}

/// Why a certificate could not be loaded, generated, stored or served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The configuration cannot work (fatal: [`maintain`] returns it).
    #[error("invalid certificate configuration: {0}")]
    Config(String),
    /// A Kubernetes API call on the Secret failed.
    #[error("{action} Secret {namespace}/{name}: {source}")]
    Kube {
        /// What was done ("reading", "creating", "updating").
        action: &'static str,
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Secret lacks our label, so we do not write it, and it is unusable as it is.
    #[error(
        "Secret {namespace}/{name} is not labelled {MANAGED_BY_LABEL}={manager}, so {manager} \
         does not change it, and it cannot be used as it is: {problem} (fix its contents, or \
         delete it or add the label to let {manager} manage it)"
    )]
    SecretNotManaged {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The label value that would make it ours.
        manager: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Other writers kept changing the Secret between our read and our write.
    #[error(
        "Secret {namespace}/{name} changed under us {attempts} times in a row; giving up for now"
    )]
    Contended {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// How many conditional writes lost.
        attempts: u32,
    },
    /// A provided file could not be read.
    #[error("reading {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// PEM, certificate or key content that cannot be used.
    #[error("{origin}: {problem}")]
    Parse {
        /// Which file or Secret key.
        origin: String,
        /// What is wrong.
        problem: String,
    },
    /// The private key belongs to a different certificate.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// Where the certificate came from.
        cert: String,
        /// Where the key came from.
        key: String,
    },
    /// Generating a key or certificate failed.
    #[error("generating the {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// The rustls server configuration could not be built.
    #[error("building the TLS server configuration: {0}")]
    Tls(#[source] rustls::Error),
    /// A bug: an internal invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CertError {
    /// A short, stable label for metrics (`reason`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            CertError::Config(_) => "config",
            CertError::Kube { .. } => "kube_api",
            CertError::SecretNotManaged { .. } => "secret_not_managed",
            CertError::Contended { .. } => "conflict",
            CertError::ReadFile { .. } => "file_read",
            CertError::Parse { .. } => "parse",
            CertError::KeyMismatch { .. } => "key_mismatch",
            CertError::Generate { .. } => "generate",
            CertError::Tls(_) => "tls_config",
            CertError::Internal(_) => "internal",
        }
    }

    /// Whether retrying cannot help ([`maintain`] returns these).
    pub fn is_fatal(&self) -> bool {
        matches!(self, CertError::Config(_))
    }
}

/// Loads the current certificate: reads the Secret (creating it, or rotating or repairing what
/// it holds, if needed) or the files.
pub async fn load(source: &CertSource) -> Result<ServingCert, CertError> {
    match source {
        CertSource::Secret(src) => {
            let policy = src.policy()?;
            secret::ensure(src, &policy, None)
                .await
                .map(|ensured| ensured.cert)
        }
        CertSource::Files(src) => files::load(src).await,
    }
}

/// [`load`], retried (1 s doubling to 30 s, each failure logged) while the API server or the
/// files are not there yet.
pub async fn load_with_retry(source: &CertSource) -> ServingCert {
    let mut backoff = Duration::from_secs(1);
    loop {
        match load(source).await {
            Ok(cert) => return cert,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "loading the serving certificate failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Keeps the certificate current until `cancel`, sending each new one on `tx` (a certificate
/// equal to the current value, see [`ServingCert::same_as`], is not sent).
///
/// Secret: watches the Secret, rotates before expiry, recreates it when deleted, follows other
/// replicas' rotations. Files: polls them. Errors are logged and retried with backoff; it
/// returns `Ok(())` on cancel and an error only for a configuration that cannot work.
pub async fn maintain(
    source: CertSource,
    tx: watch::Sender<Arc<ServingCert>>,
    cancel: CancellationToken,
) -> Result<(), CertError> {
    match source {
        CertSource::Secret(src) => secret::maintain(src, tx, cancel).await,
        CertSource::Files(src) => files::maintain(src, tx, cancel).await,
    }
}

/// Sends `cert` unless it is the current value; returns whether it was sent.
fn publish(tx: &watch::Sender<Arc<ServingCert>>, cert: ServingCert) -> bool {
    tx.send_if_modified(|current| {
        if current.same_as(&cert) {
            false
        } else {
            *current = Arc::new(cert);
            true
        }
    })
}

/// Retry delays: 1 s doubling to 60 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The delay before the next attempt after a failure.
    fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    fn succeeded(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn source() -> SecretSource {
        // A client that is never used: policy checks only.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        SecretSource {
            dns_names: vec!["webhook.ns.svc".to_owned()],
            ..SecretSource::defaults(client, "ns", "tls")
        }
    }

    #[tokio::test]
    async fn defaults_are_valid_and_bad_configurations_are_rejected() {
        let ok = source();
        assert_eq!(ok.leaf_validity, DEFAULT_LEAF_VALIDITY);
        assert_eq!(ok.rotate_before, DEFAULT_ROTATE_BEFORE);
        assert_eq!(ok.ca_validity, DEFAULT_CA_VALIDITY);
        ok.policy().unwrap();

        let cases: Vec<(SecretSource, &str)> = vec![
            (
                SecretSource {
                    dns_names: vec![],
                    ..source()
                },
                "at least one DNS name or IP",
            ),
            (
                SecretSource {
                    rotate_before: DEFAULT_LEAF_VALIDITY,
                    ..source()
                },
                "rotate-before",
            ),
            (
                SecretSource {
                    ca_validity: Duration::from_secs(86_400),
                    ..source()
                },
                "CA validity",
            ),
            (
                SecretSource {
                    dns_names: vec!["a b".to_owned()],
                    ..source()
                },
                "not a DNS name",
            ),
            (
                SecretSource {
                    recheck_interval: Duration::ZERO,
                    ..source()
                },
                "recheck interval",
            ),
        ];
        for (src, want) in cases {
            let err = src.policy().unwrap_err();
            assert!(err.is_fatal());
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains("Secret ns/tls"), "{msg}");
        }
        let ip_only = SecretSource {
            dns_names: vec![],
            ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ..source()
        };
        ip_only.policy().unwrap();
    }

    #[test]
    fn serving_cert_fingerprint_is_sha256_of_the_leaf_and_debug_hides_the_key() {
        let cert = ServingCert::generate(&["a.example".to_owned()], &[], Duration::from_secs(3600))
            .unwrap();
        let leaf = cert.certified_key().cert[0].clone();
        assert_eq!(cert.fingerprint, hex::encode(Sha256::digest(leaf.as_ref())));
        assert_eq!(cert.fingerprint.len(), 64);
        let debug = format!("{cert:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        let now = Timestamp::now();
        assert!(
            cert.not_after > now
                && cert.not_after <= authority::add(now, SignedDuration::from_hours(1))
        );

        let again = ServingCert::from_pem(
            cert.ca_pem.clone(),
            cert.chain_pem.clone(),
            cert.key_pem().clone(),
        )
        .unwrap();
        assert!(again.same_as(&cert));
    }

    #[test]
    fn publish_skips_an_identical_certificate() {
        let a = ServingCert::generate(&["a".to_owned()], &[], Duration::from_secs(60)).unwrap();
        let b = ServingCert::generate(&["a".to_owned()], &[], Duration::from_secs(60)).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(a.clone()));
        rx.borrow_and_update();
        assert!(!publish(&tx, a.clone()));
        assert!(!rx.has_changed().unwrap());
        assert!(publish(&tx, b.clone()));
        assert_eq!(rx.borrow_and_update().fingerprint, b.fingerprint);
        let mut same_leaf_new_bundle = b.clone();
        same_leaf_new_bundle.ca_pem.push_str(&a.ca_pem);
        assert!(
            publish(&tx, same_leaf_new_bundle),
            "a bundle change is sent too"
        );
    }

    #[test]
    fn backoff_doubles_to_a_minute_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..8).map(|_| b.failed().as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_secs(1));
    }

    #[test]
    fn every_error_has_a_distinct_label() {
        let errors = [
            CertError::Config(String::new()),
            CertError::SecretNotManaged {
                namespace: "n".into(),
                name: "s".into(),
                manager: "kubetemplater-webhook".into(),
                problem: "p".into(),
            },
            CertError::Contended {
                namespace: "n".into(),
                name: "s".into(),
                attempts: 5,
            },
            CertError::ReadFile {
                path: "/x".into(),
                source: std::io::Error::other("x"),
            },
            CertError::Parse {
                origin: "o".into(),
                problem: "p".into(),
            },
            CertError::KeyMismatch {
                cert: "c".into(),
                key: "k".into(),
            },
            CertError::Tls(rustls::Error::General("x".into())),
            CertError::Internal(String::new()),
        ];
        let labels: std::collections::HashSet<_> =
            errors.iter().map(CertError::metric_label).collect();
        assert_eq!(labels.len(), errors.len());
        let msg = errors[1].to_string();
        assert!(
            msg.contains("Secret n/s")
                && msg.contains("app.kubernetes.io/managed-by=kubetemplater-webhook"),
            "{msg}"
        );
    }
}
