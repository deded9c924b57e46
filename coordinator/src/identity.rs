//! Worker identities: the coordinator's CA signs each worker a client certificate that names it
//! (`IdentityService.Certify`), and a `WorkerService` session is accepted only from the worker its
//! certificate names.
//!
//! ```text
//! worker ── TLS (no client cert) ── Certify(worker_id, CSR) + Bearer <its Kubernetes token>
//!   coordinator: TokenReview → may this user update Lease <worker_id>? (SubjectAccessReview)
//!                → bound to a pod? its name must be <worker_id>
//!                → sign: CN=<worker_id>, URI kubetemplater://worker/<worker_id>, clientAuth, 24 h
//! worker ── mTLS (that cert) ── Session: Hello.worker_id must be the certificate's worker
//! ```
//!
//! Every replica certifies (a standby too), so workers get certificates while no leader is
//! elected. Every replica also keeps the ConfigMap [`proto::client::CA_CONFIGMAP`] equal to the
//! CA bundle, which is how workers and `ktctl` learn whom to trust before their first call.

use std::sync::Arc;
use std::time::Duration;

use certs::ServingCert;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use proto::v1::identity_service_server::IdentityService;
use proto::v1::{CertifyRequest, CertifyResponse};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::access::Access;

/// Prefix of the URI subject alternative name of a worker's certificate; the worker id follows.
pub const WORKER_URI_PREFIX: &str = "kubetemplater://worker/";
/// Extra attribute of a TokenReview user naming the pod a ServiceAccount token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// Default validity of a worker's certificate: 24 hours (workers renew at two thirds).
pub const DEFAULT_WORKER_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The `IdentityService` of a coordinator replica.
#[derive(Debug)]
pub struct Identities {
    access: Arc<Access>,
    certs: watch::Receiver<Arc<ServingCert>>,
    validity: Duration,
}

impl Identities {
    /// Certifies workers with the CA of `certs`, checking callers with `access`.
    pub fn new(
        access: Arc<Access>,
        certs: watch::Receiver<Arc<ServingCert>>,
        validity: Duration,
    ) -> Self {
        Self {
            access,
            certs,
            validity,
        }
    }
}

/// Whether `id` can be a worker id: a Lease name (a DNS subdomain) that is not the leader
/// Lease's.
fn check_worker_id(id: &str) -> Result<(), Status> {
    let valid = !id.is_empty()
        && id.len() <= 253
        && id.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(Status::invalid_argument(format!(
            "worker_id {id:?} is not a Lease name (lowercase letters, digits, '-' and '.')"
        )));
    }
    if id == runtime::lease::COORDINATOR_LEASE_NAME {
        return Err(Status::permission_denied(format!(
            "{id:?} is the coordinators' leader Lease, not a worker's"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl IdentityService for Identities {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let caller = self.access.caller(&request).await?;
        let CertifyRequest { worker_id, csr_pem } = request.into_inner();
        check_worker_id(&worker_id)?;
        if let Some(pods) = caller.extra.get(POD_NAME_EXTRA)
            && !pods.contains(&worker_id)
        {
            return Err(Status::permission_denied(format!(
                "user {:?} holds a token bound to pod {:?}, which may only be certified as worker {:?}, not {worker_id:?}",
                caller.username,
                pods.join(","),
                pods.join(",")
            )));
        }
        if let Some(refusal) = self.access.may_hold_lease(&caller, &worker_id).await? {
            tracing::info!(user = %caller.username, worker = %worker_id, "certificate refused");
            return Err(Status::permission_denied(refusal));
        }
        let cert = Arc::clone(&self.certs.borrow());
        let Some(signer) = cert.signer() else {
            return Err(Status::failed_precondition(
                "this coordinator serves a supplied certificate and holds no CA key: give the \
                 workers certificates of their own (--tls-cert-file, --tls-key-file)",
            ));
        };
        let uri = format!("{WORKER_URI_PREFIX}{worker_id}");
        let issued = signer
            .issue_client(&csr_pem, &worker_id, &uri, self.validity)
            .map_err(|e| match e {
                certs::CertError::Parse { .. } => Status::invalid_argument(e.to_string()),
                other => Status::internal(format!("signing the certificate: {other}")),
            })?;
        tracing::info!(user = %caller.username, worker = %worker_id, not_after = %issued.not_after, "worker certificate issued");
        Ok(Response::new(CertifyResponse {
            certificate_pem: issued.chain_pem,
            ca_bundle_pem: cert.ca_pem.clone(),
            not_after: Some(prost_types::Timestamp {
                seconds: issued.not_after.as_second(),
                nanos: 0,
            }),
        }))
    }
}

/// The worker a request's verified client certificate names, or why there is none. rustls has
/// already checked the certificate against the CA bundle; this reads its URI name.
pub fn peer_worker<T>(request: &Request<T>) -> Result<String, Status> {
    let Some(certs) = request.peer_certs() else {
        return Err(Status::unauthenticated(
            "WorkerService needs a client certificate from the coordinator's CA \
             (IdentityService.Certify issues one to a worker)",
        ));
    };
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated("the client presented an empty certificate chain")
    })?;
    let uris = certs::client::uri_names(leaf.as_ref())
        .map_err(|e| Status::unauthenticated(format!("the client certificate: {e}")))?;
    uris.iter()
        .find_map(|u| u.strip_prefix(WORKER_URI_PREFIX))
        .map(str::to_owned)
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "the client certificate names no worker (URI {WORKER_URI_PREFIX}<id>; it has {uris:?})"
            ))
        })
}

/// Keeps the ConfigMap [`proto::client::CA_CONFIGMAP`] in `namespace` equal to the CA bundle of
/// `certs` until `cancel`: written only when it differs (a get per certificate change, no write
/// while idle), retried with backoff (1 s doubling to 60 s).
pub async fn publish_bundle(
    client: kube::Client,
    namespace: String,
    mut certs: watch::Receiver<Arc<ServingCert>>,
    cancel: CancellationToken,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let mut backoff = Duration::from_secs(1);
    loop {
        let bundle = certs.borrow_and_update().ca_pem.clone();
        match ensure_bundle(&api, &bundle).await {
            Ok(changed) => {
                if changed {
                    tracing::info!(configmap = proto::client::CA_CONFIGMAP, %namespace, "CA bundle published");
                }
                backoff = Duration::from_secs(1);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = certs.changed() => if changed.is_err() { return },
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, configmap = proto::client::CA_CONFIGMAP, "publishing the CA bundle failed");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Makes the ConfigMap hold `bundle`; whether it wrote.
async fn ensure_bundle(api: &Api<ConfigMap>, bundle: &str) -> Result<bool, kube::Error> {
    let key = proto::client::CA_BUNDLE_KEY;
    match api.get_opt(proto::client::CA_CONFIGMAP).await? {
        Some(current)
            if current
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .is_some_and(|v| v == bundle) =>
        {
            Ok(false)
        }
        Some(mut current) => {
            current
                .data
                .get_or_insert_with(Default::default)
                .insert(key.to_owned(), bundle.to_owned());
            // Carries the resourceVersion read: a concurrent writer makes this fail and retry.
            api.replace(
                proto::client::CA_CONFIGMAP,
                &PostParams::default(),
                &current,
            )
            .await?;
            Ok(true)
        }
        None => {
            let configmap = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(proto::client::CA_CONFIGMAP.to_owned()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "kubetemplater-coordinator".to_owned(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                data: Some([(key.to_owned(), bundle.to_owned())].into()),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &configmap).await {
                Ok(_) => Ok(true),
                // Another replica was first; the next round compares with what it wrote.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    Box::pin(ensure_bundle(api, bundle)).await
                }
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_are_lease_names_and_never_the_leader_lease() {
        for ok in ["worker-0", "kt-kubetemplater-worker-5d9c7-abcde", "w.1"] {
            assert!(check_worker_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Worker", "-w", "w-", "w..x", "w_1", &"x".repeat(254)] {
            let err = check_worker_id(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        let err = check_worker_id(runtime::lease::COORDINATOR_LEASE_NAME).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_request_without_a_client_certificate_is_unauthenticated() {
        let err = peer_worker(&Request::new(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(
            err.message().contains("needs a client certificate"),
            "{err:?}"
        );
    }
}
