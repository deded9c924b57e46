//! `coordination.k8s.io/v1` Leases with self-fencing: a worker's own Lease (its liveness) and the
//! coordinators' shared one (leader election) use the same [`LeaseHolder`].
//!
//! # Why a fenced holder stops before anyone else can take over
//!
//! A renewal sent at instant `s` (measured on the holder's monotonic clock) that succeeds writes
//! `renewTime ≥ s` into the Lease. Another process may take the Lease over only once
//! `renewTime + leaseDuration` has passed. The holder's [`Fence`] stays open only while
//! `now < s_last + renewDeadline`, where `s_last` is the send instant of the last successful
//! renewal. With `renewDeadline < leaseDuration` (checked by [`LeaseConfig::validate`]) the fence
//! closes at least `leaseDuration − renewDeadline` (5 s with the defaults 15 s / 10 s) before the
//! earliest takeover, a margin for clock rate differences and for a write already in flight.
//! Every write of a worker checks the fence first, so once it could be replaced it no longer
//! writes. A fenced holder stays fenced: it must acquire the Lease again (a new term).
//!
//! # Renewals cannot be starved
//!
//! The renew loop runs on its own OS thread with its own single-threaded tokio runtime and its own
//! `kube::Client` (a client's connection pool lives on the runtime that built it), so a main
//! runtime busy with reconciles cannot delay it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a Lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The timing parameters cannot give the fencing guarantee.
    #[error("Lease {name}: {problem}")]
    Config {
        /// The Lease.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// An API call failed.
    #[error("{action} Lease {namespace}/{name}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The renew thread could not start.
    #[error("starting the renew thread of Lease {name}: {problem}")]
    Thread {
        /// The Lease.
        name: String,
        /// What failed.
        problem: String,
    },
}

impl LeaseError {
    /// Short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            LeaseError::Config { .. } => "config",
            LeaseError::Api { .. } => "api",
            LeaseError::Thread { .. } => "thread",
        }
    }
}

/// Which Lease, held by whom, with which timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Our identity (`holderIdentity`).
    pub holder: String,
    /// How long a renewal keeps the Lease ours (`leaseDurationSeconds`, whole seconds).
    pub lease_duration: Duration,
    /// How long after the last successful renewal we stop writing.
    pub renew_deadline: Duration,
    /// How often we renew (and retry acquiring).
    pub retry_period: Duration,
    /// Labels on the Lease (`kubetemplater.io/component=worker` for workers).
    pub labels: BTreeMap<String, String>,
}

impl LeaseConfig {
    /// Checks `retry_period < renew_deadline < lease_duration` and whole-second durations.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let problem = if self.lease_duration.subsec_nanos() != 0
            || self.lease_duration.as_secs() == 0
        {
            Some("the lease duration must be a whole number of seconds, at least 1".to_owned())
        } else if self.renew_deadline >= self.lease_duration {
            Some(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?}), or a fenced holder could still write after another took over",
                self.renew_deadline, self.lease_duration
            ))
        } else if self.retry_period >= self.renew_deadline {
            Some(format!(
                "the retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ))
        } else {
            None
        };
        problem.map_or(Ok(()), |problem| {
            Err(LeaseError::Config {
                name: self.name.clone(),
                problem,
            })
        })
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// Whether `lease` is held by someone and unexpired at `now`.
pub fn is_held(lease: &Lease, now: jiff::Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    let held = spec
        .holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty());
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return false;
    };
    held && renewed.0 + jiff::SignedDuration::from_secs(i64::from(seconds)) > now
}

#[derive(Debug)]
struct FenceState {
    origin: Instant,
    /// Nanoseconds after `origin` of the send instant of the last successful renewal.
    renewed: AtomicU64,
    deadline: Duration,
    lost: AtomicBool,
    notify: watch::Sender<bool>,
}

/// The write permission of a Lease holder; cheap to clone and to check.
#[derive(Debug, Clone)]
pub struct Fence(Arc<FenceState>);

/// The holder may no longer write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fenced: the Lease was not renewed within the renew deadline, or was lost")]
pub struct Fenced;

impl Fence {
    fn new(deadline: Duration, renewed_at: Instant) -> Self {
        let origin = renewed_at;
        Self(Arc::new(FenceState {
            origin,
            renewed: AtomicU64::new(0),
            deadline,
            lost: AtomicBool::new(false),
            notify: watch::Sender::new(false),
        }))
    }

    fn renewed(&self, sent_at: Instant) {
        let nanos = u64::try_from(sent_at.saturating_duration_since(self.0.origin).as_nanos())
            .unwrap_or(u64::MAX);
        self.0.renewed.fetch_max(nanos, Ordering::AcqRel);
    }

    fn lose(&self) {
        if !self.0.lost.swap(true, Ordering::AcqRel) {
            self.0.notify.send_replace(true);
        }
    }

    /// When writing stops being allowed, unless renewed before.
    pub fn deadline(&self) -> Instant {
        self.0.origin
            + Duration::from_nanos(self.0.renewed.load(Ordering::Acquire))
            + self.0.deadline
    }

    /// `Ok` while writes are allowed: not lost and before the renew deadline.
    pub fn check(&self) -> Result<(), Fenced> {
        if self.0.lost.load(Ordering::Acquire) || Instant::now() >= self.deadline() {
            self.lose();
            return Err(Fenced);
        }
        Ok(())
    }

    /// Resolves once the holder is fenced (for `select!`).
    pub async fn lost(&self) {
        let mut rx = self.0.notify.subscribe();
        loop {
            if self.check().is_err() {
                return;
            }
            let wait = self.deadline().saturating_duration_since(Instant::now());
            tokio::select! {
                _ = rx.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// A held Lease, renewed on its own thread until [`LeaseHolder::release`] (or drop: then it is
/// simply no longer renewed, as after a crash).
pub struct LeaseHolder {
    config: LeaseConfig,
    client: kube::Client,
    fence: Fence,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for LeaseHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHolder")
            .field("config", &self.config)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

enum Attempt {
    Acquired,
    HeldByOther,
}

async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<Attempt, LeaseError> {
    let api_error = |action| {
        move |source| LeaseError::Api {
            action,
            namespace: config.namespace.clone(),
            name: config.name.clone(),
            source: Box::new(source),
        }
    };
    let current = api
        .get_opt(&config.name)
        .await
        .map_err(api_error("reading"))?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                labels: Some(config.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.holder.clone()),
                lease_duration_seconds: Some(config.seconds()),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Acquired),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther),
            Err(e) => Err(api_error("creating")(e)),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(config.holder.as_str());
    if !ours && is_held(&lease, jiff::Timestamp::now()) {
        return Ok(Attempt::HeldByOther);
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if !ours {
        spec.holder_identity = Some(config.holder.clone());
        spec.acquire_time = Some(now_micro());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now_micro());
    spec.lease_duration_seconds = Some(config.seconds());
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(Attempt::Acquired),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther),
        Err(e) => Err(api_error("taking over")(e)),
    }
}

/// One renewal: `Ok(true)` renewed, `Ok(false)` the Lease is no longer ours.
async fn renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(false);
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.holder.as_str()) {
        return Ok(false);
    }
    spec.renew_time = Some(now_micro());
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        // Someone wrote the Lease between our read and write: re-read next time.
        Err(kube::Error::Api(s)) if s.code == 409 => Err(kube::Error::Api(s)),
        Err(e) => Err(e),
    }
}

impl LeaseHolder {
    /// Waits until the Lease is ours (creating it, taking over an expired or released one, or
    /// waiting while someone else holds it), then renews it on a dedicated thread. `kube_config`
    /// builds the renew thread's own client. Returns `Ok(None)` when `cancel` fires first.
    pub async fn acquire(
        kube_config: kube::Config,
        config: LeaseConfig,
        cancel: &CancellationToken,
    ) -> Result<Option<Self>, LeaseError> {
        config.validate()?;
        let client =
            kube::Client::try_from(kube_config.clone()).map_err(|source| LeaseError::Api {
                action: "building a client for",
                namespace: config.namespace.clone(),
                name: config.name.clone(),
                source: Box::new(source),
            })?;
        let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
        let sent = loop {
            let sent = Instant::now();
            match try_acquire(&api, &config).await {
                Ok(Attempt::Acquired) => break sent,
                Ok(Attempt::HeldByOther) => {}
                Err(error) => tracing::warn!(%error, "acquiring the Lease failed; retrying"),
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                () = tokio::time::sleep(config.retry_period) => {}
            }
        };
        let fence = Fence::new(config.renew_deadline, sent);
        let stop = CancellationToken::new();
        let thread = {
            let (renew_config, fence, stop) = (config.clone(), fence.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("lease-{}", config.name))
                .spawn(move || renew_thread(kube_config, renew_config, fence, stop))
                .map_err(|e| LeaseError::Thread {
                    name: config.name.clone(),
                    problem: e.to_string(),
                })?
        };
        tracing::info!(lease = %config.name, holder = %config.holder, "Lease acquired");
        Ok(Some(Self {
            config,
            client,
            fence,
            stop,
            thread: Some(thread),
        }))
    }

    /// The write permission.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Stops renewing and hands the Lease back (empty holder), so another process can take it at
    /// once. Only clears it if it is still ours.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        self.stop_renewing().await;
        self.fence.lose();
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let api_error = |source| LeaseError::Api {
            action: "releasing",
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source: Box::new(source),
        };
        let Some(mut lease) = api.get_opt(&self.config.name).await.map_err(api_error)? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now_micro());
        match api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(api_error(e)),
        }
        tracing::info!(lease = %self.config.name, "Lease released");
        Ok(())
    }

    async fn stop_renewing(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for LeaseHolder {
    fn drop(&mut self) {
        // Without release(): renewals stop, the Lease expires on its own (as after a crash).
        self.stop.cancel();
    }
}

fn renew_thread(
    kube_config: kube::Config,
    config: LeaseConfig,
    fence: Fence,
    stop: CancellationToken,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "the Lease renew runtime could not start; fencing");
            fence.lose();
            return;
        }
    };
    runtime.block_on(async move {
        let client = match kube::Client::try_from(kube_config) {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "the Lease renew client could not be built; fencing");
                fence.lose();
                return;
            }
        };
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(config.retry_period) => {}
            }
            let sent = Instant::now();
            let attempt = tokio::time::timeout(config.retry_period, renew(&api, &config)).await;
            match attempt {
                Ok(Ok(true)) => fence.renewed(sent),
                Ok(Ok(false)) => {
                    tracing::error!(lease = %config.name, "the Lease is no longer ours; fencing");
                    fence.lose();
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, lease = %config.name, "renewing the Lease failed")
                }
                Err(_) => tracing::warn!(lease = %config.name, "renewing the Lease timed out"),
            }
            if fence.check().is_err() {
                tracing::error!(lease = %config.name, "renew deadline passed; fencing");
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "ns".into(),
            name: "worker-0".into(),
            holder: "worker-0".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn timing_must_leave_a_fencing_margin() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.renew_deadline = Duration::from_secs(15);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("shorter than the lease duration")
        );
        let mut c = config();
        c.retry_period = Duration::from_secs(10);
        assert!(c.validate().is_err());
        let mut c = config();
        c.lease_duration = Duration::from_millis(1500);
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_fence_closes_at_the_deadline_and_stays_closed() {
        let start = Instant::now();
        let fence = Fence::new(Duration::from_millis(50), start);
        assert!(fence.check().is_ok());
        fence.renewed(start + Duration::from_millis(30));
        assert!(fence.deadline() >= start + Duration::from_millis(80));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(fence.check(), Err(Fenced));
        fence.renewed(Instant::now());
        assert_eq!(fence.check(), Err(Fenced), "a fenced holder stays fenced");
    }

    #[test]
    fn held_means_holder_and_unexpired() {
        let now = jiff::Timestamp::now();
        let lease = |holder: Option<&str>, ago: i64| Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(now - jiff::SignedDuration::from_secs(ago))),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
        };
        assert!(is_held(&lease(Some("a"), 5), now));
        assert!(!is_held(&lease(Some("a"), 20), now));
        assert!(!is_held(&lease(None, 1), now));
    }
}
