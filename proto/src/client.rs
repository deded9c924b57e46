//! Calling the coordinator's `AdminService` as a Kubernetes user.
//!
//! The coordinator authorizes every admin call with the caller's Kubernetes token (TokenReview,
//! then SubjectAccessReview on `shards.kubetemplater.io`). [`Credentials`] turns a kubeconfig
//! into the `authorization: Bearer …` metadata of every call, with kube-rs's own auth layer, so
//! static tokens, token files and exec plugins (cloud logins, `kubectl oidc-login` …) all work
//! and refreshed tokens are picked up. [`AdminClient`] is the generated client over such a
//! channel; [`leader`] finds the leading coordinator among several addresses.

use std::sync::Arc;

use kube::client::ConfigExt as _;
use kube::client::middleware::AuthLayer;
use tonic::transport::{Channel, Endpoint};
use tower::{BoxError, Layer as _, ServiceExt};

use crate::v1::admin_service_client::AdminServiceClient;

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

/// The admin client of the leading coordinator: each address in turn is asked for the bucket
/// map; a standby answers UNAVAILABLE and the next is tried. A refusal of the credentials is
/// final (every replica would say the same).
pub async fn leader(
    addresses: impl IntoIterator<Item = impl AsRef<str>>,
    credentials: &Credentials,
    configure: impl Fn(Endpoint) -> Endpoint,
) -> Result<AdminClient, LeaderError> {
    let mut tried = Vec::new();
    for address in addresses {
        let address = address.as_ref().trim();
        if address.is_empty() {
            continue;
        }
        let endpoint =
            Endpoint::from_shared(address.to_owned()).map_err(|source| LeaderError::Address {
                address: address.to_owned(),
                source,
            })?;
        let mut client = match admin_client(configure(endpoint), credentials).await {
            Ok(client) => client,
            Err(e) => {
                tried.push(format!("cannot reach {address}: {e}"));
                continue;
            }
        };
        match client
            .get_bucket_map(crate::v1::GetBucketMapRequest {})
            .await
        {
            Ok(_) => return Ok(client),
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
    fn a_token_becomes_credentials() {
        let credentials = Credentials::token("abc").unwrap();
        assert!(credentials.layer.is_some());
        assert!(Credentials::none().layer.is_none());
    }
}
