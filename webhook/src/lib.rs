//! The kubetemplater admission webhook: validates KubeTemplates against the policy of their
//! namespace, validates KubeTemplatePolicies and TenantTemplates, and gives every KubeTemplate and
//! Tenant its bucket label before it is stored.
//!
//! ```text
//! main ─► Args ─► run
//!   ├─ runtime::policies::PolicyCache watch KubeTemplatePolicies → compiled index (readiness: synced)
//!   ├─ certs::maintain                Secret (or files) → watch channel of ServingCert
//!   ├─ registration::maintain         CA bundle → Validating/MutatingWebhookConfiguration (SSA)
//!   ├─ server::serve_tls              rustls (reloading resolver) → hyper h1/h2 → review::Reviewer
//!   └─ telemetry::AdminServer         /metrics /healthz /readyz /log-level
//! ```
//!
//! The review listener is bound only once the policy cache has synced and a certificate is
//! loaded, so a replica that is still starting never receives a review (with `SO_REUSEPORT` the
//! kernel only hands connections to bound sockets). SIGTERM/SIGINT stop accepting, finish
//! in-flight reviews and return.

pub mod config;
pub mod metrics;
pub mod registration;
pub mod review;
pub mod server;

use std::sync::Arc;

use anyhow::Context as _;
use telemetry::{AdminServer, AdminState, Readiness, Registry, TelemetryGuard};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use certs::{self, tls};
pub use config::Args;

use crate::metrics::Metrics;
use crate::review::Reviewer;
use certs::{CertSource, FileSource, SecretSource};
pub use runtime::policies::PolicyCache;

const READY_POLICIES: &str = "policy-cache";
const READY_CERTIFICATE: &str = "certificate";
const READY_LISTENER: &str = "listener";
const READY_REGISTERED: &str = "webhook-configurations";

/// Runs the webhook until `shutdown` is cancelled (`main` cancels it on SIGTERM/SIGINT).
pub async fn run(
    args: Args,
    telemetry: &TelemetryGuard,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let buckets = engine::bucket::bucket_count(args.buckets).context("--buckets")?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster config)")?;

    let mut registry = Registry::with_prefix("kubetemplater");
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::new();
    for check in [READY_POLICIES, READY_CERTIFICATE, READY_LISTENER] {
        readiness.register(check);
    }
    if args.registration.register {
        readiness.register(READY_REGISTERED);
    }
    let admin = AdminServer::bind(
        &args.admin,
        AdminState::new(Arc::new(registry), readiness.clone(), telemetry.log_level()),
    )
    .await
    .with_context(|| format!("binding the admin endpoint {}", args.admin.admin_addr))?;
    tracing::info!(addr = %admin.local_addr()?, "admin endpoint (/metrics, /healthz, /readyz)");

    // Background tasks stop with `background`, after the review server has drained.
    let background = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let cancel = background.clone();
        async move {
            if let Err(error) = admin.run(cancel).await {
                tracing::error!(%error, "admin endpoint stopped");
            }
        }
    });

    let cache = Arc::new(PolicyCache::new(Arc::new(metrics.clone())));
    tasks.spawn(cache.clone().run(
        client.clone(),
        args.policy_namespace().to_owned(),
        background.clone(),
    ));

    let source = cert_source(&args, &client);
    let first = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        first = certs::load_with_retry(&source) => first,
    };
    tracing::info!(fingerprint = %first.fingerprint, not_after = %first.not_after, "serving certificate loaded");
    let (cert_tx, cert_rx) = watch::channel(Arc::new(first));
    readiness.mark_ready(READY_CERTIFICATE);
    tasks.spawn({
        let cancel = background.clone();
        async move {
            if let Err(error) = certs::maintain(source, cert_tx, cancel).await {
                tracing::error!(%error, "certificate maintenance stopped");
            }
        }
    });
    let resolver = Arc::new(tls::ReloadingResolver::new(cert_rx.clone()));
    let tls_config = tls::server_config(resolver).context("building the TLS configuration")?;

    if args.registration.register {
        let registration = args.registration();
        let readiness = readiness.clone();
        tasks.spawn(registration.maintain(
            client.clone(),
            cert_rx.clone(),
            background.clone(),
            move || readiness.mark_ready(READY_REGISTERED),
        ));
    }

    tracing::info!(
        namespace = args.policy_namespace(),
        "waiting for the policy cache to sync"
    );
    tokio::select! {
        () = shutdown.cancelled() => {
            background.cancel();
            return Ok(());
        }
        () = cache.wait_synced() => {}
    }
    readiness.mark_ready(READY_POLICIES);

    let listener = server::bind(args.listen_addr, args.reuse_port)
        .with_context(|| format!("binding the review endpoint {}", args.listen_addr))?;
    tracing::info!(addr = %listener.local_addr()?, reuse_port = args.reuse_port, "serving admission reviews over HTTPS");
    readiness.mark_ready(READY_LISTENER);
    let reviewer = Reviewer::new(cache, buckets, args.policy_namespace());
    let router = server::router(reviewer, metrics.clone(), args.limits());
    server::serve_tls(
        listener,
        tls_config,
        router,
        metrics,
        shutdown,
        args.shutdown_grace,
    )
    .await;
    readiness.mark_not_ready(READY_LISTENER);

    background.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("webhook stopped");
    Ok(())
}

fn cert_source(args: &Args, client: &kube::Client) -> CertSource {
    match (&args.tls.tls_cert_file, &args.tls.tls_key_file) {
        (Some(cert), Some(key)) => CertSource::Files(FileSource::new(
            cert.clone(),
            key.clone(),
            args.tls.tls_ca_file.clone(),
        )),
        _ => CertSource::Secret(SecretSource {
            client: client.clone(),
            namespace: args.namespace.clone(),
            secret_name: args.tls.secret_name.clone(),
            dns_names: args.cert_dns_names(),
            ip_addresses: args.tls.cert_ip_addresses.clone(),
            leaf_validity: args.tls.cert_validity,
            rotate_before: args.tls.cert_renew_before,
            ..SecretSource::defaults(client.clone(), &args.namespace, &args.tls.secret_name)
        }),
    }
}
