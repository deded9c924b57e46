//! The worker's TLS towards the coordinators: trust their CA bundle and present a client
//! certificate that names this worker.
//!
//! - **Certified** (default): the worker makes a key and a certificate signing request and asks
//!   a coordinator to sign it (`IdentityService.Certify`), authenticating with its own Kubernetes
//!   token; the coordinator checks that this identity may hold the worker's Lease. The first call
//!   trusts the bundle the coordinators publish in the ConfigMap `kubetemplater-coordinator-ca`.
//!   The certificate is renewed at two thirds of its life, before the next connection; a refused
//!   connection drops it, so the next attempt certifies again (after a CA rotation, say).
//! - **Supplied**: `--tls-cert-file`, `--tls-key-file`, `--tls-ca-file` (cert-manager style),
//!   read again for every connection, so a renewed file is used without a restart.
//!
//! A session already open keeps the certificate it was opened with; a certificate is checked at
//! the handshake only.

use std::path::PathBuf;

use jiff::Timestamp;
use proto::client::{Credentials, Tls};
use proto::v1::CertifyRequest;
use proto::v1::identity_service_client::IdentityServiceClient;
use secrecy::ExposeSecret as _;
use tokio::sync::Mutex;

/// Why no TLS configuration could be made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The coordinators' CA bundle could not be read.
    #[error(transparent)]
    Bundle(#[from] proto::client::TlsError),
    /// A supplied file could not be read.
    #[error("reading {path}: {source}")]
    File {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Making the key or the request failed.
    #[error("making the key and certificate request: {0}")]
    Key(#[source] certs::CertError),
    /// The coordinator could not be reached for a certificate.
    #[error("connecting to {addr} for a certificate: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The coordinator refused to sign.
    #[error("{addr} refused to certify this worker: {}", status.message())]
    Refused {
        /// The address.
        addr: String,
        /// Its answer.
        status: Box<tonic::Status>,
    },
}

/// Supplied certificate files.
#[derive(Debug, Clone)]
pub struct SuppliedFiles {
    /// The worker's certificate (PEM chain, leaf first).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA bundle the coordinators' certificates chain to.
    pub ca: PathBuf,
}

/// Where the worker's certificate comes from.
#[derive(Debug)]
pub enum WorkerTls {
    /// Signed by a coordinator on request (boxed: it holds a client and the certificate).
    Certified(Box<Certified>),
    /// Supplied files.
    Supplied {
        /// The files.
        files: SuppliedFiles,
        /// The coordinators' namespace (for the name their certificates carry).
        namespace: String,
    },
}

/// A certificate the coordinator signs, and the state to renew it.
pub struct Certified {
    client: kube::Client,
    credentials: Credentials,
    namespace: String,
    worker_id: String,
    current: Mutex<Option<Current>>,
}

impl std::fmt::Debug for Certified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certified")
            .field("namespace", &self.namespace)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

struct Current {
    tls: Tls,
    renew_at: Timestamp,
}

impl Certified {
    /// Certificates for `worker_id`, asked for with `credentials` (the worker's own token),
    /// trusting the bundle the coordinators of `namespace` publish.
    pub fn new(
        client: kube::Client,
        credentials: Credentials,
        namespace: String,
        worker_id: String,
    ) -> Self {
        Self {
            client,
            credentials,
            namespace,
            worker_id,
            current: Mutex::new(None),
        }
    }

    async fn tls(&self, addr: &str) -> Result<Tls, IdentityError> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref()
            && Timestamp::now() < c.renew_at
        {
            return Ok(c.tls.clone());
        }
        let fresh = self.certify(addr).await?;
        let tls = fresh.tls.clone();
        *current = Some(fresh);
        Ok(tls)
    }

    async fn certify(&self, addr: &str) -> Result<Current, IdentityError> {
        let bootstrap = Tls::from_cluster(&self.client, &self.namespace).await?;
        let request =
            certs::client::key_and_request(&self.worker_id).map_err(IdentityError::Key)?;
        let connect = |source| IdentityError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let channel = bootstrap
            .endpoint(addr)
            .map_err(connect)?
            .connect()
            .await
            .map_err(connect)?;
        let answer = IdentityServiceClient::new(self.credentials.wrap(channel))
            .certify(CertifyRequest {
                worker_id: self.worker_id.clone(),
                csr_pem: request.csr_pem,
            })
            .await
            .map_err(|status| IdentityError::Refused {
                addr: addr.to_owned(),
                status: Box::new(status),
            })?
            .into_inner();
        let now = Timestamp::now();
        let not_after = answer
            .not_after
            .and_then(|t| Timestamp::from_second(t.seconds).ok())
            .unwrap_or(now);
        // Renew at two thirds of the remaining life.
        let renew_at = now
            .checked_add(now.duration_until(not_after) * 2 / 3)
            .unwrap_or(now);
        tracing::info!(worker = %self.worker_id, %not_after, %renew_at, "client certificate issued by the coordinator");
        Ok(Current {
            tls: Tls::new(answer.ca_bundle_pem, &self.namespace).with_identity(
                answer.certificate_pem,
                request.key_pem.expose_secret().to_owned(),
            ),
            renew_at,
        })
    }
}

impl WorkerTls {
    /// The TLS for a connection to `addr`: with a certificate that is current.
    pub async fn for_connection(&self, addr: &str) -> Result<Tls, IdentityError> {
        match self {
            WorkerTls::Certified(certified) => certified.tls(addr).await,
            WorkerTls::Supplied { files, namespace } => {
                let read = |path: &PathBuf| {
                    std::fs::read_to_string(path).map_err(|source| IdentityError::File {
                        path: path.clone(),
                        source,
                    })
                };
                Ok(Tls::new(read(&files.ca)?, namespace)
                    .with_identity(read(&files.cert)?, read(&files.key)?))
            }
        }
    }

    /// Forgets a signed certificate after a refused connection, so the next one certifies
    /// again (a rotated CA, a certificate the coordinator no longer accepts).
    pub async fn invalidate(&self) {
        if let WorkerTls::Certified(certified) = self {
            *certified.current.lock().await = None;
        }
    }
}
