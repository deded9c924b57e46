//! A worker process, wired.
//!
//! ```text
//! Args ─ validate (buckets, concurrency, coordinator URLs, Lease timing: R + skew < D)
//!   ├─ admin endpoint                     /metrics /healthz /readyz (lease, policy-cache, session)
//!   ├─ PolicyCache                        watch of KubeTemplatePolicies (--policy-namespace)
//!   ├─ LeaseHolder::acquire               its own Lease <namespace>/<worker-id>, renewed on a
//!   │                                     thread of its own; its Fence gates every write
//!   ├─ (wait until the policy cache synced: a reconcile must never judge by an empty cache)
//!   ├─ Pipeline                           bucket watches → queue → Reconciler (writes: Fence +
//!   │                                     write timeout, through a client without kube's retries)
//!   └─ Session                            the coordinator leader (addresses tried in turn);
//!                                         grants/revokes drive the pipeline as its BucketHost
//! ```
//!
//! **Lease lost** (the fence closed: renewals failed until the renew deadline, the Lease was taken
//! over or deleted): from that instant every write is refused unsent; the worker logs why,
//! cancels the pipeline and the session at once and returns [`RunError::LeaseLost`], so the
//! process exits non-zero. A supervisor restarts it; the new process acquires the Lease again,
//! in a new term, and the coordinator sees a new session.
//!
//! **SIGTERM** (`shutdown`): sends Leaving; waits until the coordinator revoked every bucket (each
//! revoke waits for that bucket's in-flight reconciles) or `--shutdown-grace` passed; shuts the
//! pipeline down with what is left of the grace; refuses every further write and waits for the
//! writes still in flight (each ends within the write timeout); stops the session; releases the
//! Lease (the next holder of any bucket may start at once, which is why no write may still be
//! going) and returns `Ok`. Without a coordinator session it skips the wait for revokes: it
//! finishes in-flight work, releases the Lease and exits, and the coordinator moves the buckets
//! once it sees the Lease released.
//!
//! **Write timeout.** Every write must reach the API server within the Lease's write budget
//! (`lease duration − renew deadline − 1 s clock skew`, see `runtime::lease`); the worker cuts
//! each write off after ¾ of it (3 s with the defaults) and sends writes through a client
//! built with kube's retry layer off, which would otherwise re-send a write answered 429/503/504
//! for minutes without a fence check ([`crate::writes`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use runtime::lease::{Fenced, LeaseConfig, LeaseError, LeaseHolder, LostReason};
use runtime::policies::{NoObserver, PolicyCache};
use telemetry::{AdminServer, AdminState, LogLevelHandle, Readiness, Registry, TelemetryGuard};
use tokio_util::sync::CancellationToken;

use crate::config::Args;
use crate::identity::{Certified, SuppliedFiles, WorkerTls};
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::queue::QueueConfig;
use crate::reconcile::Reconciler;
use crate::session::{Session, SessionConfig};
use crate::writes::Writes;
use proto::client::Credentials;

const READY_LEASE: &str = "lease";
const READY_POLICIES: &str = "policy-cache";
const READY_SESSION: &str = "session";

/// How often the drain looks whether the coordinator has revoked everything.
const REVOKE_POLL: Duration = Duration::from_millis(50);
/// How long background tasks get to stop once cancelled.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a worker stopped.
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
    /// The Lease configuration cannot fence, or acquiring the Lease failed for good.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// An endpoint could not be bound.
    #[error("{what}: {source}")]
    Serve {
        /// Which endpoint.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The worker's Lease was lost while it worked: it stopped all work at once.
    #[error("stopped all work: {0}")]
    LeaseLost(#[source] Fenced),
    /// The pipeline stopped by itself.
    #[error("the pipeline stopped unexpectedly")]
    PipelineStopped,
}

/// The worker's TLS towards the coordinators: supplied files, or a certificate the coordinator
/// signs for this worker's own token.
fn worker_tls(
    args: &Args,
    kube_config: &kube::Config,
    client: &kube::Client,
) -> Result<WorkerTls, RunError> {
    if let (Some(cert), Some(key), Some(ca)) =
        (&args.tls_cert_file, &args.tls_key_file, &args.tls_ca_file)
    {
        return Ok(WorkerTls::Supplied {
            files: SuppliedFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            },
            namespace: args.namespace.clone(),
        });
    }
    let credentials = Credentials::from_kube_config(kube_config).map_err(|e| {
        RunError::Config(format!(
            "the worker's certificate is asked for with its Kubernetes token: {e}"
        ))
    })?;
    Ok(WorkerTls::Certified(Box::new(Certified::new(
        client.clone(),
        credentials,
        args.namespace.clone(),
        args.worker_id.clone(),
    ))))
}

/// What [`validate`] derives from the arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The worker's own Lease (`<namespace>/<worker-id>`, holder `<worker-id>-<random>`).
    pub lease: LeaseConfig,
    /// Every write is abandoned after this long (¾ of [`LeaseConfig::write_budget`]).
    pub write_timeout: Duration,
}

/// Checks the arguments without touching the cluster: buckets, concurrency, resync interval,
/// coordinator URLs, and that the Lease timing can fence (`retry period × 2 ≤ renew deadline`,
/// `renew deadline + clock skew < lease duration`, whole seconds).
pub fn validate(args: &Args) -> Result<Plan, RunError> {
    let config = |message: String| Err(RunError::Config(message));
    if let Err(error) = engine::bucket::bucket_count(args.buckets) {
        return config(format!("--buckets: {error}"));
    }
    if args.concurrency == 0 {
        return config("--concurrency must be at least 1".to_owned());
    }
    if args.apply_concurrency == 0 {
        return config("--apply-concurrency must be at least 1".to_owned());
    }
    if args.resync_interval.is_zero() {
        return config("--resync-interval must be positive".to_owned());
    }
    let addresses: Vec<&String> = args
        .coordinator_addr
        .iter()
        .filter(|a| !a.trim().is_empty())
        .collect();
    if addresses.is_empty() {
        return config("--coordinator-addr: at least one address is needed".to_owned());
    }
    for address in addresses {
        if let Err(error) = tonic::transport::Endpoint::from_shared(address.trim().to_owned()) {
            return config(format!(
                "--coordinator-addr {address:?} is not a URL like http://host:9444: {error}"
            ));
        }
    }
    let lease = LeaseConfig::worker(
        args.namespace.clone(),
        args.worker_id.clone(),
        holder_identity(&args.worker_id),
    )
    .with_timing(args.lease_duration, args.renew_deadline, args.retry_period);
    lease.validate()?;
    let write_timeout = lease.write_budget().mul_f64(0.75);
    Ok(Plan {
        lease,
        write_timeout,
    })
}

/// `<worker-id>-<8 hex digits>`: unique per process, so a second process started with the same
/// id is told apart in the Lease (it waits; it never takes over a live holder).
fn holder_identity(worker_id: &str) -> String {
    format!("{worker_id}-{:08x}", rand::random::<u32>())
}

/// The client the reconciler writes through: the same cluster and identity, with kube's retry
/// layer off (it would re-send a write after its fence check, for minutes) and a connect
/// timeout no longer than the write timeout.
fn writer_config(mut config: kube::Config, write_timeout: Duration) -> kube::Config {
    config.default_retry = false;
    config.connect_timeout = Some(
        config
            .connect_timeout
            .map_or(write_timeout, |t| t.min(write_timeout)),
    );
    config
}

/// Runs the worker until `shutdown` (SIGTERM/SIGINT; then it drains and returns `Ok`) or until
/// its Lease is lost ([`RunError::LeaseLost`]). The cluster comes from `KUBECONFIG` (or the
/// in-cluster configuration).
pub async fn run(
    args: Args,
    telemetry: &TelemetryGuard,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    validate(&args)?;
    let kube_config = kube::Config::infer().await.map_err(RunError::KubeConfig)?;
    run_with(args, kube_config, telemetry.log_level(), shutdown).await
}

/// [`run`] against the cluster of `kube_config`, with `log_level` behind `PUT /log-level`
/// (tests run a worker in-process with it).
pub async fn run_with(
    args: Args,
    kube_config: kube::Config,
    log_level: LogLevelHandle,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let plan = validate(&args)?;
    if plan.write_timeout < Duration::from_secs(1) {
        tracing::warn!(write_timeout = ?plan.write_timeout, "the Lease timing leaves less than 1 s per write; writes to a busy API server will time out");
    }
    let client = kube::Client::try_from(kube_config.clone()).map_err(RunError::Client)?;
    let writer = kube::Client::try_from(writer_config(kube_config.clone(), plan.write_timeout))
        .map_err(RunError::Client)?;
    let tls = worker_tls(&args, &kube_config, &client)?;

    // The root has no prefix: the Tenant metrics keep the original's names.
    let mut registry = Registry::default();
    let metrics = Metrics::register(registry.sub_registry_with_prefix("kubetemplater"))
        .with_tenant_metrics(&mut registry);
    let readiness = Readiness::new();
    for check in [READY_LEASE, READY_POLICIES, READY_SESSION] {
        readiness.register(check);
    }
    let admin = AdminServer::bind(
        &args.admin,
        AdminState::new(Arc::new(registry), readiness.clone(), log_level),
    )
    .await
    .map_err(|e| RunError::Serve {
        what: format!("binding the admin endpoint {}", args.admin.admin_addr),
        source: e.into(),
    })?;
    if let Ok(addr) = admin.local_addr() {
        tracing::info!(%addr, "admin endpoint (/metrics, /healthz, /readyz)");
    }

    // Background tasks (admin, policy cache) stop last, with `background`.
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
    let cache = Arc::new(PolicyCache::new(Arc::new(NoObserver)));
    tasks.spawn(cache.clone().run(
        client.clone(),
        args.policy_namespace().to_owned(),
        background.clone(),
    ));
    let stop_background = |mut tasks: tokio::task::JoinSet<()>| {
        let background = background.clone();
        async move {
            background.cancel();
            let joined = tokio::time::timeout(STOP_TIMEOUT, async {
                while tasks.join_next().await.is_some() {}
            });
            if joined.await.is_err() {
                tracing::warn!("background tasks did not stop in time; abandoning them");
            }
        }
    };

    tracing::info!(
        lease = %format!("{}/{}", plan.lease.namespace, plan.lease.name),
        holder = %plan.lease.holder,
        write_timeout = ?plan.write_timeout,
        "acquiring the worker's Lease"
    );
    let holder = match LeaseHolder::acquire(kube_config, plan.lease.clone(), &shutdown).await {
        Ok(holder) => holder,
        Err(LeaseError::Cancelled { .. }) => {
            stop_background(tasks).await;
            return Ok(());
        }
        Err(error) => {
            stop_background(tasks).await;
            return Err(error.into());
        }
    };
    readiness.mark_ready(READY_LEASE);
    let fence = holder.fence();

    tracing::info!(
        namespace = args.policy_namespace(),
        "waiting for the policy cache to sync"
    );
    tokio::select! {
        () = shutdown.cancelled() => {
            release(holder).await;
            stop_background(tasks).await;
            return Ok(());
        }
        fenced = holder.lost() => {
            readiness.mark_not_ready(READY_LEASE);
            stop_background(tasks).await;
            return Err(lease_lost(fenced));
        }
        () = cache.wait_synced() => {}
    }
    readiness.mark_ready(READY_POLICIES);

    let writes = Writes::new(
        Arc::new(fence.clone()),
        Some(plan.write_timeout),
        metrics.clone(),
    );
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "kubetemplater-worker".to_owned(),
            instance: Some(args.worker_id.clone()),
        },
    );
    let reconciler = Reconciler::new(writer, cache.clone(), args.apply_concurrency)
        .with_writes(writes.clone())
        .with_events(recorder);
    let pipeline = Pipeline::new(
        client,
        reconciler,
        metrics.clone(),
        PipelineConfig {
            concurrency: args.concurrency,
            resync_interval: args.resync_interval,
            queue: QueueConfig::default(),
        },
    );
    let ownership = Arc::new(Mutex::new(Ownership::new()));
    let session = Session::new(
        SessionConfig {
            coordinator: args
                .coordinator_addr
                .iter()
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
            worker_id: args.worker_id.clone(),
            lease_namespace: args.namespace.clone(),
            buckets: args.buckets,
            tls: Some(Arc::new(tls)),
        },
        ownership.clone(),
        Arc::new(pipeline.clone()),
        metrics,
    );

    // Pipeline and session stop with `work`: at once when the Lease is lost, last in a drain.
    let work = CancellationToken::new();
    let mut pipeline_task = tokio::spawn(pipeline.clone().run(work.clone()));
    let session_task = tokio::spawn(session.clone().run(work.clone()));
    tasks.spawn({
        let (mut welcomes, readiness, cancel) =
            (session.welcomes(), readiness.clone(), background.clone());
        async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                welcomed = welcomes.wait_for(|n| *n > 0) => {
                    if welcomed.is_ok() {
                        readiness.mark_ready(READY_SESSION);
                    }
                }
            }
        }
    });
    tracing::info!(worker = %args.worker_id, coordinators = ?args.coordinator_addr, "worker running");

    let stop_work = || async {
        work.cancel();
        let stopped = tokio::time::timeout(STOP_TIMEOUT, async {
            let _ = session_task.await;
        });
        if stopped.await.is_err() {
            tracing::warn!("the session did not stop in time");
        }
    };

    // Until SIGTERM, the Lease is lost, or the pipeline stops by itself.
    tokio::select! {
        () = shutdown.cancelled() => {}
        fenced = holder.lost() => {
            let error = lease_lost(fenced);
            tracing::error!(%error, "the worker's Lease is lost; stopping all work at once");
            readiness.mark_not_ready(READY_LEASE);
            stop_work().await;
            let _ = tokio::time::timeout(STOP_TIMEOUT, pipeline_task).await;
            stop_background(tasks).await;
            return Err(error);
        }
        _ = &mut pipeline_task => {
            tracing::error!("the pipeline stopped unexpectedly; releasing the Lease and exiting");
            stop_work().await;
            writes.close(released(&fence));
            writes.idle().await;
            release(holder).await;
            stop_background(tasks).await;
            return Err(RunError::PipelineStopped);
        }
    }

    // SIGTERM: drain, unless the Lease is lost meanwhile.
    readiness.mark_not_ready(READY_SESSION);
    let drained = tokio::select! {
        fenced = holder.lost() => Err(lease_lost(fenced)),
        () = drain(&session, &ownership, &pipeline, &writes, &fence, args.shutdown_grace) => Ok(()),
    };
    if let Err(error) = drained {
        tracing::error!(%error, "the worker's Lease was lost while draining; stopping all work at once");
        stop_work().await;
        let _ = tokio::time::timeout(STOP_TIMEOUT, pipeline_task).await;
        stop_background(tasks).await;
        return Err(error);
    }
    stop_work().await;
    let _ = tokio::time::timeout(STOP_TIMEOUT, pipeline_task).await;
    release(holder).await;
    stop_background(tasks).await;
    tracing::info!("worker stopped");
    Ok(())
}

fn lease_lost(fenced: Fenced) -> RunError {
    RunError::LeaseLost(fenced)
}

fn released(fence: &runtime::lease::Fence) -> Fenced {
    Fenced {
        lease: fence.lease().into(),
        reason: LostReason::Released,
    }
}

/// Hands the Lease back (closing its fence first); on failure it expires on its own.
async fn release(holder: LeaseHolder) {
    if let Err(error) = holder.release().await {
        tracing::warn!(%error, "releasing the Lease failed; it expires on its own");
    }
}

/// The voluntary part of a shutdown: Leaving, the coordinator's revokes (within `grace`), the
/// pipeline's in-flight work (within what is left of it), then no more writes and none in
/// flight. The caller then stops the session and releases the Lease.
async fn drain(
    session: &Session,
    ownership: &Mutex<Ownership>,
    pipeline: &Pipeline,
    writes: &Writes,
    fence: &runtime::lease::Fence,
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    let held = || ownership.lock().unwrap_or_else(|p| p.into_inner()).len();
    if session.leave("shutting down (SIGTERM)").await {
        tracing::info!(
            buckets = held(),
            ?grace,
            "leaving: waiting for the coordinator to revoke every bucket"
        );
        let revoked = tokio::time::timeout_at(deadline, async {
            while held() > 0 {
                tokio::time::sleep(REVOKE_POLL).await;
            }
        })
        .await;
        match revoked {
            Ok(()) => tracing::info!("every bucket released"),
            Err(_) => tracing::warn!(
                buckets = held(),
                "the coordinator did not revoke every bucket within the shutdown grace; stopping anyway"
            ),
        }
    } else {
        tracing::warn!(
            buckets = held(),
            "no coordinator session: finishing in-flight work, then releasing the Lease (the coordinator moves the buckets once it sees it released)"
        );
    }
    pipeline
        .shut_down(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    writes.close(released(fence));
    let in_flight = writes.in_flight();
    if in_flight > 0 {
        tracing::info!(
            in_flight,
            "waiting for writes in flight before releasing the Lease"
        );
    }
    writes.idle().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["kubetemplater-worker", "--worker-id", "worker-0"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("the test's flags parse")
    }

    fn problem(extra: &[&str]) -> String {
        validate(&args(extra))
            .expect_err("the configuration is refused")
            .to_string()
    }

    #[test]
    fn the_defaults_give_a_lease_and_a_write_timeout_below_its_budget() {
        let plan = validate(&args(&[])).expect("the defaults are valid");
        assert_eq!(plan.lease.namespace, "kubetemplater-system");
        assert_eq!(plan.lease.name, "worker-0");
        assert!(
            plan.lease.holder.starts_with("worker-0-") && plan.lease.holder.len() == 17,
            "{}",
            plan.lease.holder
        );
        assert_eq!(
            plan.lease
                .labels
                .get(runtime::lease::COMPONENT_LABEL)
                .map(String::as_str),
            Some(runtime::lease::WORKER_COMPONENT)
        );
        assert_eq!(plan.lease.write_budget(), Duration::from_secs(4));
        assert_eq!(plan.write_timeout, Duration::from_secs(3));
    }

    #[test]
    fn unsafe_lease_timing_is_refused() {
        let p = problem(&["--lease-duration", "10s", "--renew-deadline", "10s"]);
        assert!(p.contains("worker-0") && p.contains("clock skew"), "{p}");
        let p = problem(&["--renew-deadline", "3s", "--retry-period", "2s"]);
        assert!(p.contains("twice the retry period"), "{p}");
        let p = problem(&["--lease-duration", "1500ms"]);
        assert!(p.contains("whole number of seconds"), "{p}");
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(problem(&["--buckets", "0"]).contains("--buckets"));
        assert!(problem(&["--concurrency", "0"]).contains("--concurrency"));
        assert!(problem(&["--apply-concurrency", "0"]).contains("--apply-concurrency"));
        assert!(problem(&["--coordinator-addr", " "]).contains("at least one"));
        let p = problem(&["--coordinator-addr", "http://ok:1,not a url"]);
        assert!(p.contains("not a url"), "{p}");
    }

    #[test]
    fn the_writer_does_not_retry_and_connects_within_the_write_timeout() {
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().expect("a URI"));
        config.connect_timeout = Some(Duration::from_secs(30));
        let writer = writer_config(config, Duration::from_secs(3));
        assert!(!writer.default_retry);
        assert_eq!(writer.connect_timeout, Some(Duration::from_secs(3)));
    }
}
