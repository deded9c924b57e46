//! Calling the coordinator's `AdminService` as a Kubernetes user.
//!
//! The coordinator authorizes every admin call with the caller's Kubernetes token (TokenReview,
//! then SubjectAccessReview on `shards.kubetemplater.io`). [`Credentials`] turns a kubeconfig
//! into the `authorization: Bearer …` metadata of every call, with kube-rs's own auth layer, so
//! static tokens, token files and exec plugins (cloud logins, `kubectl oidc-login` …) all work
//! and refreshed tokens are picked up. [`AdminClient`] is the generated client over such a
//! channel; [`leader`] finds the leading coordinator among several addresses.
//!
//! The coordinators serve TLS only. [`Tls`] trusts their CA bundle (the ConfigMap
//! [`CA_CONFIGMAP`] in their namespace, or a file) and checks the name [`server_name`], which
//! every coordinator certificate carries whatever address is dialled (a Service, a pod IP,
//! `127.0.0.1` through `kubectl port-forward`).

use std::sync::Arc;

use kube::client::ConfigExt as _;
use kube::client::middleware::AuthLayer;
use tonic::transport::{Channel, Endpoint};
use tower::{BoxError, Layer as _, ServiceExt};

use crate::v1::admin_service_client::AdminServiceClient;

/// ConfigMap in the coordinators' namespace holding the CA bundle (PEM, key [`CA_BUNDLE_KEY`])
/// that clients trust the coordinators with; the coordinators keep it current.
pub const CA_CONFIGMAP: &str = "kubetemplater-coordinator-ca";
/// Key of the bundle in [`CA_CONFIGMAP`].
pub const CA_BUNDLE_KEY: &str = "ca.crt";

/// The DNS name every coordinator certificate carries and clients verify:
/// `kubetemplater-coordinator.<namespace>.svc`.
pub fn server_name(namespace: &str) -> String {
    format!("kubetemplater-coordinator.{namespace}.svc")
}

/// `address` as an `https://` URL: `host:port`, `http://host:port` and `https://host:port` all
/// reach the same TLS endpoint (the coordinators serve nothing else).
pub fn https(address: &str) -> String {
    let address = address.trim();
    let rest = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    format!("https://{rest}")
}

/// Why the coordinators' CA bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The ConfigMap could not be read.
    #[error("reading the coordinators' CA bundle (ConfigMap {namespace}/{CA_CONFIGMAP}): {reason}")]
    Read {
        /// The coordinators' namespace.
        namespace: String,
        /// Why: the API server's message (a refusal names the missing permission).
        reason: String,
    },
    /// It holds no bundle yet (no coordinator has started).
    #[error(
        "ConfigMap {namespace}/{CA_CONFIGMAP} has no {CA_BUNDLE_KEY} yet: no coordinator has published its CA (is one running?)"
    )]
    Missing {
        /// The coordinators' namespace.
        namespace: String,
    },
}

/// TLS towards the coordinators: whom to trust, which name to check, and optionally the
/// client's own certificate (a worker's).
#[derive(Clone)]
pub struct Tls {
    ca_pem: String,
    server_name: String,
    identity: Option<(String, String)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Trusts `ca_pem` for the coordinators of `namespace`.
    pub fn new(ca_pem: impl Into<String>, namespace: &str) -> Self {
        Self {
            ca_pem: ca_pem.into(),
            server_name: server_name(namespace),
            identity: None,
        }
    }

    /// Trusts the bundle the coordinators of `namespace` publish ([`CA_CONFIGMAP`]).
    pub async fn from_cluster(client: &kube::Client, namespace: &str) -> Result<Self, TlsError> {
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client.clone(), namespace);
        let configmap = api
            .get_opt(CA_CONFIGMAP)
            .await
            .map_err(|e| TlsError::Read {
                namespace: namespace.to_owned(),
                reason: match e {
                    kube::Error::Api(status) => status.message,
                    other => other.to_string(),
                },
            })?;
        let bundle = configmap
            .and_then(|c| c.data)
            .and_then(|mut d| d.remove(CA_BUNDLE_KEY))
            .filter(|b| b.contains("BEGIN CERTIFICATE"))
            .ok_or_else(|| TlsError::Missing {
                namespace: namespace.to_owned(),
            })?;
        Ok(Self::new(bundle, namespace))
    }

    /// Also presents `cert_pem` with its key `key_pem` (mutual TLS).
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The trusted bundle (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// An endpoint for `address` over this TLS (the address becomes `https://`).
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, tonic::transport::Error> {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .domain_name(self.server_name.clone());
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        Endpoint::from_shared(https(address))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tls_config(config)
    }
}

/// A channel to a coordinator that adds the caller's credentials to every call.
pub type AuthChannel = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    ChannelError,
>;

/// Why a call did not reach the coordinator: the connection failed, or the credentials could
/// not be produced (an exec plugin failed …). A named type rather than `BoxError`, so futures
/// holding an [`AdminClient`] stay `Send` inside `tokio::spawn`.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ChannelError(BoxError);

/// The admin client over an [`AuthChannel`].
pub type AdminClient = AdminServiceClient<AuthChannel>;

/// Why the caller's credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The kubeconfig user authenticates with a client certificate, which the admin API cannot
    /// check (it asks the API server about tokens).
    #[error(
        "the kubeconfig user authenticates with a client certificate; the admin API takes a \
         Kubernetes token: pass one with --token (for example `kubectl create token <service-account>`)"
    )]
    ClientCertificate,
    /// kube-rs could not set up the kubeconfig's authentication (an unreadable token file …).
    #[error("reading the kubeconfig's credentials: {0}")]
    Kube(#[source] kube::Error),
}

/// The credentials sent with every admin call.
#[derive(Clone)]
pub struct Credentials {
    layer: Option<Arc<AuthLayer>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("present", &self.layer.is_some())
            .finish()
    }
}

impl Credentials {
    /// The credentials of a kubeconfig's current user (`kube::Config::infer()` …).
    pub fn from_kube_config(config: &kube::Config) -> Result<Self, CredentialsError> {
        let layer = config.auth_layer().map_err(CredentialsError::Kube)?;
        if layer.is_none()
            && (config.auth_info.client_certificate.is_some()
                || config.auth_info.client_certificate_data.is_some())
        {
            return Err(CredentialsError::ClientCertificate);
        }
        Ok(Self {
            layer: layer.map(Arc::new),
        })
    }

    /// A fixed bearer token (`ktctl --token`).
    pub fn token(token: impl Into<String>) -> Result<Self, CredentialsError> {
        let mut config = kube::Config::new(http::Uri::from_static("https://kubernetes.invalid"));
        config.auth_info.token = Some(token.into().into());
        Self::from_kube_config(&config)
    }

    /// No credentials: the coordinator refuses every admin call, saying what it needs.
    pub fn none() -> Self {
        Self { layer: None }
    }

    /// `channel` with these credentials on every request.
    pub fn wrap(&self, channel: Channel) -> AuthChannel {
        // Both arms of kube's auth layer fail with `BoxError`; so does the channel under it.
        let channel = ServiceExt::<http::Request<tonic::body::Body>>::map_err(channel, boxed);
        match &self.layer {
            Some(layer) => tower::util::BoxCloneSyncService::new(ServiceExt::<
                http::Request<tonic::body::Body>,
            >::map_err(
                layer.layer(channel),
                ChannelError,
            )),
            None => {
                tower::util::BoxCloneSyncService::new(
                    ServiceExt::<http::Request<tonic::body::Body>>::map_err(channel, ChannelError),
                )
            }
        }
    }
}

fn boxed(error: tonic::transport::Error) -> BoxError {
    Box::new(error)
}

/// Connects to one coordinator address.
pub async fn admin_client(
    endpoint: Endpoint,
    credentials: &Credentials,
) -> Result<AdminClient, tonic::transport::Error> {
    let channel = endpoint.connect().await?;
    Ok(AdminServiceClient::new(credentials.wrap(channel)))
}

/// Why no leader was found.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// An address is not a URL.
    #[error("coordinator address {address:?}: {source}")]
    Address {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The leader refused the caller (no or a bad token, a missing permission): final.
    #[error("{address}: {}", status.message())]
    Refused {
        /// The leader's address.
        address: String,
        /// Its answer.
        status: Box<tonic::Status>,
    },
    /// No address answered as leader.
    #[error("no coordinator answered as leader: {}", tried.join("; "))]
    NoLeader {
        /// What each address said.
        tried: Vec<String>,
    },
}

/// How long the leader probe (one GetBucketMap) may take per address.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The admin client of the leading coordinator, and the bucket map it answered with: each
/// address in turn is asked for the map (within [`PROBE_TIMEOUT`]); a standby answers
/// UNAVAILABLE and the next is tried. A refusal of the credentials is final (every replica
/// would say the same).
pub async fn leader(
    addresses: impl IntoIterator<Item = impl AsRef<str>>,
    credentials: &Credentials,
    tls: &Tls,
) -> Result<(AdminClient, crate::v1::GetBucketMapResponse), LeaderError> {
    let mut tried = Vec::new();
    for address in addresses {
        let address = address.as_ref().trim();
        if address.is_empty() {
            continue;
        }
        let endpoint = tls
            .endpoint(address)
            .map_err(|source| LeaderError::Address {
                address: address.to_owned(),
                source,
            })?;
        let mut client = match admin_client(endpoint, credentials).await {
            Ok(client) => client,
            Err(e) => {
                tried.push(format!("cannot reach {address}: {e}"));
                continue;
            }
        };
        let mut probe = tonic::Request::new(crate::v1::GetBucketMapRequest {});
        probe.set_timeout(PROBE_TIMEOUT);
        match client.get_bucket_map(probe).await {
            Ok(map) => return Ok((client, map.into_inner())),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                return Err(LeaderError::Refused {
                    address: address.to_owned(),
                    status: Box::new(status),
                });
            }
            Err(status) => tried.push(format!(
                "{address} answered {:?}: {}",
                status.code(),
                status.message()
            )),
        }
    }
    Err(LeaderError::NoLeader { tried })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_user_is_told_to_use_a_token() {
        let mut config = kube::Config::new(http::Uri::from_static("https://k8s.invalid"));
        config.auth_info.client_certificate_data = Some("cert".into());
        config.auth_info.client_key_data = Some("key".to_owned().into());
        let err = Credentials::from_kube_config(&config).unwrap_err();
        assert!(err.to_string().contains("--token"), "{err}");
    }

    #[test]
    fn every_address_form_becomes_https() {
        for address in [
            "127.0.0.1:9444",
            "http://127.0.0.1:9444",
            " https://127.0.0.1:9444",
        ] {
            assert_eq!(https(address), "https://127.0.0.1:9444");
        }
        assert_eq!(
            server_name("kubetemplater-system"),
            "kubetemplater-coordinator.kubetemplater-system.svc"
        );
    }

    #[test]
    fn a_token_becomes_credentials() {
        let credentials = Credentials::token("abc").unwrap();
        assert!(credentials.layer.is_some());
        assert!(Credentials::none().layer.is_none());
    }
}
