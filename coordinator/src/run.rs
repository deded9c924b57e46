//! A coordinator replica, wired: every replica serves gRPC and counts KubeTemplates per bucket;
//! the one holding the leader Lease also runs the leader loop.
//!
//! ```text
//! replica ─┬─ admin endpoint                 /metrics /healthz /readyz
//!          ├─ gRPC (WorkerService, AdminService): UNAVAILABLE while standby
//!          ├─ BucketCounts                   metadata watch of KubeTemplates (warm on standbys)
//!          └─ loop: campaign for the leader Lease ──► one term:
//!               load the map ─ live worker Leases ─ Core (the map's owner) ─ members watch
//!               ─ re-plan tick ─ label backfill; the term ends when the fence closes (renewals
//!               failed: stop at once), the map was written by a newer leader, or on SIGTERM
//!               (release the Lease so a standby takes over without waiting for expiry)
//! ```

use std::num::NonZeroU32;
use std::sync::Arc;

use certs::{CertSource, FileSource, SecretSource};
use proto::v1::admin_service_server::AdminServiceServer;
use proto::v1::identity_service_server::IdentityServiceServer;
use proto::v1::worker_service_server::WorkerServiceServer;
use runtime::lease::{
    self, LeaderElector, LeaderExit, LeaseConfig, LeaseError, WORKER_LEASE_SELECTOR,
};
use telemetry::{AdminServer, AdminState, Readiness, Registry, TelemetryGuard};
use tenant::metrics::RegistryMetrics;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::admin::Admin;
use crate::config::Args;
use crate::core::{Core, Event, Snapshot};
use crate::counts::{self, BucketCounts, Unlabelled};
use crate::identity::{self, Identities};
use crate::members;
use crate::metrics::Metrics;
use crate::plan::{BoundedLoadPlanner, Params};
use crate::sessions::{Leadership, WorkerSessions};
use crate::store::{MapStore, StoreError};
use crate::transport;

const READY_GRPC: &str = "grpc";
const READY_COUNTS: &str = "template-counts";

/// Why a replica stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A flag is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No usable kubeconfig or in-cluster configuration.
    #[error("reading the Kubernetes client configuration (KUBECONFIG or in-cluster): {0}")]
    KubeConfig(#[source] kube::config::InferConfigError),
    /// The client could not be built from it.
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The Lease configuration is unsafe or campaigning failed for good.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// An endpoint could not be bound or served.
    #[error("{what}: {source}")]
    Serve {
        /// Which endpoint.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Runs one coordinator replica until `shutdown` (SIGTERM/SIGINT).
pub async fn run(
    args: Args,
    telemetry: &TelemetryGuard,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let buckets = engine::bucket::bucket_count(args.buckets)
        .map_err(|e| RunError::Config(format!("--buckets: {e}")))?;
    if !(0.0..=10.0).contains(&args.balance_epsilon) {
        return Err(RunError::Config(format!(
            "--balance-epsilon {} must be between 0 and 10",
            args.balance_epsilon
        )));
    }
    let lease_config = LeaseConfig::coordinator(args.namespace.clone(), args.id.clone())
        .with_timing(args.lease_duration, args.renew_deadline, args.retry_period);
    let kube_config = kube::Config::infer().await.map_err(RunError::KubeConfig)?;
    let client = kube::Client::try_from(kube_config.clone()).map_err(RunError::Client)?;
    let elector = LeaderElector::new(kube_config, lease_config)?;

    // The root has no prefix: the tenant gauges keep the original's names (registry_desired …).
    let mut registry = Registry::default();
    let metrics = Metrics::register(registry.sub_registry_with_prefix("kubetemplater"));
    let tenant_metrics = RegistryMetrics::register(&mut registry, {
        let metrics = metrics.clone();
        Arc::new(move |verb| metrics.observe_write(verb))
    });
    metrics.set_leader(false);
    let readiness = Readiness::new();
    for check in [READY_GRPC, READY_COUNTS] {
        readiness.register(check);
    }
    let admin_server = AdminServer::bind(
        &args.admin,
        AdminState::new(Arc::new(registry), readiness.clone(), telemetry.log_level()),
    )
    .await
    .map_err(|e| RunError::Serve {
        what: format!("binding the admin endpoint {}", args.admin.admin_addr),
        source: e.into(),
    })?;

    let background = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let cancel = background.clone();
        async move {
            if let Err(error) = admin_server.run(cancel).await {
                tracing::error!(%error, "admin endpoint stopped");
            }
        }
    });

    // Counts on every replica: a new leader plans with warm counts at once.
    let counts = BucketCounts::new(buckets);
    let (unlabelled_tx, unlabelled_rx) = mpsc::channel::<Unlabelled>(1024);
    tasks.spawn(
        counts
            .clone()
            .run(client.clone(), unlabelled_tx, background.clone()),
    );
    tasks.spawn({
        let (counts, readiness, metrics, cancel) = (
            counts.clone(),
            readiness.clone(),
            metrics.clone(),
            background.clone(),
        );
        async move {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = counts.wait_synced() => readiness.mark_ready(READY_COUNTS),
            }
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => metrics.set_templates(counts.snapshot().total()),
                }
            }
        }
    });

    // TLS: the serving certificate (and the CA that signs workers' certificates), kept current;
    // its CA bundle published for clients.
    let source = cert_source(&args, &client);
    let first = tokio::select! {
        () = shutdown.cancelled() => {
            background.cancel();
            while tasks.join_next().await.is_some() {}
            return Ok(());
        }
        first = certs::load_with_retry(&source) => first,
    };
    tracing::info!(fingerprint = %first.fingerprint, not_after = %first.not_after, signs_workers = first.signer().is_some(), "serving certificate loaded");
    let (cert_tx, cert_rx) = watch::channel(Arc::new(first));
    tasks.spawn({
        let cancel = background.clone();
        async move {
            if let Err(error) = certs::maintain(source, cert_tx, cancel).await {
                tracing::error!(%error, "certificate maintenance stopped");
            }
        }
    });
    tasks.spawn(identity::publish_bundle(
        client.clone(),
        args.namespace.clone(),
        cert_rx.clone(),
        background.clone(),
    ));
    let tls_config = certs::tls::mtls_server_config(
        Arc::new(certs::tls::ReloadingResolver::new(cert_rx.clone())),
        cert_rx.clone(),
    )
    .map_err(|e| RunError::Serve {
        what: "building the TLS configuration".to_owned(),
        source: e.into(),
    })?;
    let access = Arc::new(Access::new(client.clone(), args.namespace.clone()));

    // gRPC, served by every replica; the leadership channel says whether to answer.
    let (events_tx, events_rx) = mpsc::channel::<Event>(4096);
    let (leadership_tx, leadership_rx) = watch::channel::<Option<Leadership>>(None);
    let (snapshot_tx, snapshot_rx) = watch::channel(Snapshot::default());
    let listener = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .map_err(|e| RunError::Serve {
            what: format!("binding the gRPC endpoint {}", args.grpc_addr),
            source: e.into(),
        })?;
    tracing::info!(addr = %args.grpc_addr, id = %args.id, "serving WorkerService, AdminService and IdentityService over TLS");
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .add_service(WorkerServiceServer::new(WorkerSessions::new(
            events_tx.clone(),
            leadership_rx.clone(),
            buckets.get(),
        )))
        .add_service(AdminServiceServer::new(Admin::new(
            snapshot_rx,
            leadership_rx,
            counts.clone(),
            events_tx.clone(),
            buckets,
            Arc::clone(&access),
        )))
        .add_service(IdentityServiceServer::new(Identities::new(
            access,
            cert_rx,
            args.tls.worker_cert_validity,
        )))
        .serve_with_incoming_shutdown(
            transport::tls_incoming(listener, tls_config, background.clone()),
            background.clone().cancelled_owned(),
        );
    tasks.spawn(async move {
        if let Err(error) = grpc.await {
            tracing::error!(%error, "gRPC endpoint stopped");
        }
    });
    readiness.mark_ready(READY_GRPC);

    let term = Term {
        args: &args,
        client: &client,
        buckets,
        counts: &counts,
        metrics: &metrics,
        tenant_metrics: &tenant_metrics,
        events: events_tx,
        leadership: &leadership_tx,
        snapshot: &snapshot_tx,
        unlabelled: Arc::new(Mutex::new(unlabelled_rx)),
    };
    let mut events_rx = events_rx;
    let result = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        tracing::info!(
            lease = lease::COORDINATOR_LEASE_NAME,
            "standing by for leadership"
        );
        let exit = elector
            .run_as_leader(&shutdown, |leadership| {
                term.lead(leadership, &mut events_rx)
            })
            .await;
        leadership_tx.send_replace(None);
        metrics.set_leader(false);
        metrics.clear_map();
        match exit {
            Ok(LeaderExit::Cancelled) => break Ok(()),
            Ok(LeaderExit::Lost(fenced)) => {
                tracing::warn!(%fenced, "lost the leader Lease; standing by again");
            }
            Ok(LeaderExit::Finished(Ok(()))) => {
                tracing::info!("leader loop ended; standing by again");
            }
            Ok(LeaderExit::Finished(Err(error))) => {
                tracing::warn!(%error, "leader loop failed; stepping down");
            }
            Err(error) => break Err(RunError::Lease(error)),
        }
        // Whatever a lost term queued belongs to sessions that are gone.
        while events_rx.try_recv().is_ok() {}
    };

    background.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("coordinator stopped");
    result
}

/// Where the serving certificate comes from: supplied files, else the self-managed Secret.
fn cert_source(args: &Args, client: &kube::Client) -> CertSource {
    match (&args.tls.tls_cert_file, &args.tls.tls_key_file) {
        (Some(cert), Some(key)) => CertSource::Files(FileSource::new(
            cert.clone(),
            key.clone(),
            args.tls.tls_ca_file.clone(),
        )),
        _ => {
            let (dns_names, ip_addresses) = args.tls.subject_names(&args.namespace);
            CertSource::Secret(SecretSource {
                manager: "kubetemplater-coordinator".to_owned(),
                dns_names,
                ip_addresses,
                ..SecretSource::defaults(client.clone(), &args.namespace, &args.tls.secret_name)
            })
        }
    }
}

/// What one term as leader needs.
struct Term<'a> {
    args: &'a Args,
    client: &'a kube::Client,
    buckets: NonZeroU32,
    counts: &'a BucketCounts,
    metrics: &'a Metrics,
    tenant_metrics: &'a RegistryMetrics,
    events: mpsc::Sender<Event>,
    leadership: &'a watch::Sender<Option<Leadership>>,
    snapshot: &'a watch::Sender<Snapshot>,
    unlabelled: Arc<Mutex<mpsc::Receiver<Unlabelled>>>,
}

impl Term<'_> {
    /// One term: returns when the map was superseded (another leader wrote it) or on a failure
    /// to start; the caller drops it at once when the fence closes.
    async fn lead(
        &self,
        leadership: lease::Leadership,
        events: &mut mpsc::Receiver<Event>,
    ) -> Result<(), StoreError> {
        let epoch = u64::try_from(leadership.acquisition.term).unwrap_or(0);
        tracing::info!(id = %leadership.holder, term = epoch, from = ?leadership.acquisition.from, "leading");
        // Leftovers from before this term (sessions of an earlier leader of this replica).
        while events.try_recv().is_ok() {}
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();

        let mut store = MapStore::new(
            self.client.clone(),
            &self.args.namespace,
            &self.args.bucket_map,
            self.buckets.get(),
        );
        let slots = store.load().await?;
        // Plan with real counts from the start, not with zeros.
        self.counts.wait_synced().await;
        let counts = self.counts.clone();
        let weights = Box::new(move || counts.snapshot().per_bucket);
        let planner = BoundedLoadPlanner {
            params: Params {
                epsilon: self.args.balance_epsilon,
                ..Params::default()
            },
        };
        let mut core = Core::with_snapshot(slots, store, planner, weights, self.snapshot.clone())
            .with_metrics(self.metrics.clone());
        // Know who is alive before the first plan, so a worker's Hello does not meet an empty
        // membership and lose its buckets.
        match lease::list_live(self.client, &self.args.namespace, WORKER_LEASE_SELECTOR).await {
            Ok(live) => {
                let live = live.into_iter().map(|l| l.name).collect();
                core.handle(Event::Members(live)).await?;
            }
            Err(error) => {
                tracing::warn!(%error, "listing worker Leases failed; membership comes from the watch");
            }
        }

        tokio::spawn(members::watch(
            self.client.clone(),
            self.args.namespace.clone(),
            self.events.clone(),
            cancel.clone(),
        ));
        tokio::spawn({
            let (events, cancel) = (self.events.clone(), cancel.clone());
            let period = self.args.rebalance_interval;
            async move {
                let mut tick = tokio::time::interval(period);
                tick.tick().await;
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    // Full: a re-plan is already queued behind other events.
                    let _ = events.try_send(Event::Tick);
                }
            }
        });
        let backfill = {
            let (client, buckets, unlabelled, metrics, cancel) = (
                self.client.clone(),
                self.buckets,
                self.unlabelled.clone(),
                self.metrics.clone(),
                cancel.clone(),
            );
            async move {
                let mut unlabelled = unlabelled.lock().await;
                counts::backfill(client, buckets, &mut unlabelled, cancel, || {
                    metrics.observe_write("label_template");
                })
                .await;
            }
        };

        // Tenants: the registries' tables → Tenant objects, for as long as this term lasts.
        tokio::spawn({
            let mut config = tenant::registry::Config::new(self.buckets, self.args.id.clone());
            config.concurrency = usize::from(self.args.registry_concurrency);
            config.write_concurrency = usize::from(self.args.tenant_write_concurrency);
            tenant::registry::run(
                self.client.clone(),
                config,
                self.tenant_metrics.clone(),
                cancel.clone(),
            )
        });

        self.leadership.send_replace(Some(Leadership {
            id: self.args.id.clone(),
            epoch,
        }));
        self.metrics.set_leader(true);
        let result = tokio::select! {
            result = core.run(events, cancel.clone()) => result,
            () = backfill => Ok(()),
        };
        self.leadership.send_replace(None);
        if let Err(error) = &result {
            tracing::warn!(%error, "the bucket map was written by another leader");
        }
        result
    }
}
