//! Acquiring, renewing (on a thread of its own) and releasing one Lease.

use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::record::{expires_at, holder_of, is_expired};
use super::{Fence, LeaseConfig, LeaseError, LeaseState, LostReason};

/// How a [`LeaseHolder`] got its Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquisition {
    /// `leaseTransitions` after acquiring: the term. Grows with every acquisition of an
    /// existing Lease, so two holders (or two acquisitions by one identity) never share one.
    pub term: i32,
    /// The `acquireTime` written.
    pub acquired_at: jiff::Timestamp,
    /// From whom.
    pub from: AcquiredFrom,
}

/// The state the Lease was in when we acquired it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquiredFrom {
    /// It did not exist; we created it.
    Created,
    /// It named no holder (released).
    Released,
    /// Its holder's `renewTime + leaseDurationSeconds` had passed.
    Expired {
        /// The holder it named.
        previous: String,
        /// When it expired, as recorded.
        expired_at: jiff::Timestamp,
    },
}

/// A held Lease, renewed every `retry_period` on a dedicated OS thread (with its own
/// current-thread tokio runtime and its own `kube::Client`) until it is lost,
/// [released](LeaseHolder::release) or dropped. Dropping it without release stops renewing and
/// closes the fence, as a crash would: others take the Lease over once it has expired.
pub struct LeaseHolder {
    config: LeaseConfig,
    /// Built on the caller's runtime; used to acquire and to release.
    client: kube::Client,
    fence: Fence,
    acquisition: Acquisition,
    stop: CancellationToken,
    /// The renew thread; it returns the last Lease it wrote or read.
    renewer: Option<std::thread::JoinHandle<Lease>>,
}

impl std::fmt::Debug for LeaseHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHolder")
            .field("config", &self.config)
            .field("acquisition", &self.acquisition)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

/// What one acquisition attempt found.
enum Attempt {
    Acquired {
        lease: Box<Lease>,
        sent: Instant,
        sent_wall: SystemTime,
        acquisition: Acquisition,
    },
    /// Someone else holds it, unexpired.
    Held {
        holder: String,
        expires_at: Option<jiff::Timestamp>,
    },
    /// Someone wrote it between our read and our write: read again at once.
    Raced,
}

/// The wall clock now, rounded *up* to the microsecond (a `MicroTime`'s precision), so that a
/// recorded renew time is never before the instant it stands for.
fn micro_now() -> MicroTime {
    let now = jiff::Timestamp::now();
    let rounded = now
        .round(
            jiff::TimestampRound::new()
                .smallest(jiff::Unit::Microsecond)
                .mode(jiff::RoundMode::Ceil),
        )
        .unwrap_or(now);
    MicroTime(rounded)
}

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Whether retrying may help: connection trouble, timeouts, throttling, server errors,
/// conflicts. A refusal (401, 403, 422, …) will not go away by retrying.
fn is_transient(error: &kube::Error) -> bool {
    match status_code(error) {
        Some(code) => matches!(code, 404 | 408 | 409 | 429) || code >= 500,
        None => true,
    }
}

fn lease_error_is_transient(error: &LeaseError) -> bool {
    match error {
        LeaseError::Read { source, .. }
        | LeaseError::Create { source, .. }
        | LeaseError::TakeOver { source, .. }
        | LeaseError::Release { source, .. } => is_transient(source),
        _ => false,
    }
}

/// A random factor in [1, 1.2) so that standbys do not retry in lockstep.
fn jittered(period: Duration) -> Duration {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(super::fence::wall_nanos(SystemTime::now()));
    let fraction = (hasher.finish() % 1000) as f64 / 5000.0;
    period.mul_f64(1.0 + fraction)
}

async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<Attempt, LeaseError> {
    let (namespace, name) = (config.namespace.clone(), config.name.clone());
    let current = api
        .get_opt(&config.name)
        .await
        .map_err(|source| LeaseError::Read {
            namespace: namespace.clone(),
            name: name.clone(),
            source: Box::new(source),
        })?;
    let now = jiff::Timestamp::now();
    let (mut lease, from, term) = match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    labels: Some(config.labels.clone()),
                    ..ObjectMeta::default()
                },
                spec: None,
            };
            (lease, AcquiredFrom::Created, 0)
        }
        Some(lease) => {
            let holder = holder_of(&lease).map(str::to_owned);
            if let Some(holder) = &holder
                && !is_expired(&lease, now)
            {
                // Our own identity included: a restart cannot be told from a duplicate.
                return Ok(Attempt::Held {
                    holder: holder.clone(),
                    expires_at: expires_at(&lease),
                });
            }
            let from = match holder {
                None => AcquiredFrom::Released,
                Some(previous) => AcquiredFrom::Expired {
                    previous,
                    expired_at: expires_at(&lease).unwrap_or(now),
                },
            };
            let term = lease
                .spec
                .as_ref()
                .and_then(|s| s.lease_transitions)
                .unwrap_or(0)
                .saturating_add(1);
            (lease, from, term)
        }
    };
    // The fence counts from before the write; the times written are read after this.
    let (sent, sent_wall) = (Instant::now(), SystemTime::now());
    let stamp = micro_now();
    let labels = lease.metadata.labels.get_or_insert_with(Default::default);
    labels.extend(config.labels.clone());
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(config.holder.clone()),
        lease_duration_seconds: Some(config.lease_duration_seconds()),
        acquire_time: Some(stamp.clone()),
        renew_time: Some(stamp.clone()),
        lease_transitions: Some(term),
        ..lease.spec.take().unwrap_or_default()
    });
    let written = if from == AcquiredFrom::Created {
        api.create(&PostParams::default(), &lease).await
    } else {
        // Carries the resourceVersion we read: refused (409) if anyone wrote since.
        api.replace(&config.name, &PostParams::default(), &lease)
            .await
    };
    match written {
        Ok(lease) => Ok(Attempt::Acquired {
            lease: Box::new(lease),
            sent,
            sent_wall,
            acquisition: Acquisition {
                term,
                acquired_at: stamp.0,
                from,
            },
        }),
        Err(error) if matches!(status_code(&error), Some(404 | 409)) => Ok(Attempt::Raced),
        Err(source) if from == AcquiredFrom::Created => Err(LeaseError::Create {
            namespace,
            name,
            source: Box::new(source),
        }),
        Err(source) => Err(LeaseError::TakeOver {
            namespace,
            name,
            previous: match from {
                AcquiredFrom::Expired { previous, .. } => Some(previous),
                _ => None,
            },
            source: Box::new(source),
        }),
    }
}

/// Whether `lease` is still our term; `Some(reason)` when it is not.
fn not_ours(lease: &Lease, config: &LeaseConfig, term: i32) -> Option<LostReason> {
    let holder = holder_of(lease).unwrap_or_default();
    let transitions = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0);
    (holder != config.holder || transitions != term).then(|| LostReason::TakenOver {
        holder: holder.to_owned(),
    })
}

enum Renewal {
    Renewed,
    Lost(LostReason),
}

/// One renewal: replace the last Lease we know with a new renew time (optimistic concurrency on
/// its resourceVersion). On a conflict, read it: still our term → renew on top of what was
/// read (once); otherwise it is lost.
async fn renew_once(
    api: &Api<Lease>,
    config: &LeaseConfig,
    term: i32,
    last: &mut Lease,
) -> Result<Renewal, kube::Error> {
    let mut retried = false;
    loop {
        let mut lease = last.clone();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.renew_time = Some(micro_now());
        spec.lease_duration_seconds = Some(config.lease_duration_seconds());
        match api
            .replace(&config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                *last = written;
                return Ok(Renewal::Renewed);
            }
            Err(error) => match status_code(&error) {
                Some(404) => return Ok(Renewal::Lost(LostReason::Deleted)),
                Some(409) if !retried => {
                    let Some(current) = api.get_opt(&config.name).await? else {
                        return Ok(Renewal::Lost(LostReason::Deleted));
                    };
                    if let Some(reason) = not_ours(&current, config, term) {
                        return Ok(Renewal::Lost(reason));
                    }
                    // Still ours, changed by someone else (labels, annotations).
                    *last = current;
                    retried = true;
                }
                _ => return Err(error),
            },
        }
    }
}

fn renew_thread(
    kube_config: kube::Config,
    config: LeaseConfig,
    term: i32,
    fence: Fence,
    stop: CancellationToken,
    mut lease: Lease,
) -> Lease {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(renew_loop(
            kube_config,
            &config,
            term,
            &fence,
            &stop,
            &mut lease,
        )),
        Err(error) => {
            fence.close(LostReason::RenewerFailed {
                problem: format!("building its runtime: {error}"),
            });
        }
    }
    lease
}

async fn renew_loop(
    kube_config: kube::Config,
    config: &LeaseConfig,
    term: i32,
    fence: &Fence,
    stop: &CancellationToken,
    lease: &mut Lease,
) {
    // Its own client: a client's request queue and connections are tasks on the runtime that
    // built it, and this runtime must not depend on the caller's.
    let client = match kube::Client::try_from(kube_config) {
        Ok(client) => client,
        Err(error) => {
            fence.close(LostReason::RenewerFailed {
                problem: format!("building its client: {error}"),
            });
            return;
        }
    };
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut state = fence.state();
    let mut next = fence.renewed_at() + config.retry_period;
    loop {
        // Until the next renewal, the fence's deadline (to publish Lost at once), a state
        // change (someone closed the fence) or stop.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next.into()) => {}
            () = tokio::time::sleep_until(fence.deadline().into()) => {}
            changed = state.changed() => {
                if changed.is_err() {
                    return; // unreachable: the fence owns the sender
                }
            }
        }
        if fence.check().is_err() {
            return;
        }
        let (sent, sent_wall) = (Instant::now(), SystemTime::now());
        if sent < next {
            continue;
        }
        next = sent + config.retry_period;
        let budget = config
            .attempt_timeout()
            .min(fence.deadline().saturating_duration_since(sent));
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            attempt = tokio::time::timeout(budget, renew_once(&api, config, term, lease)) => attempt,
        };
        match attempt {
            Ok(Ok(Renewal::Renewed)) => {
                if fence.extend(sent, sent_wall) {
                    tracing::trace!(lease = %fence.lease(), "Lease renewed");
                } else {
                    return;
                }
            }
            Ok(Ok(Renewal::Lost(reason))) => {
                fence.close(reason);
                return;
            }
            Ok(Err(error)) => tracing::warn!(
                lease = %fence.lease(),
                %error,
                left = ?fence.deadline().saturating_duration_since(Instant::now()),
                "renewing the Lease failed; retrying until the renew deadline"
            ),
            Err(_) => tracing::warn!(
                lease = %fence.lease(),
                timeout = ?budget,
                left = ?fence.deadline().saturating_duration_since(Instant::now()),
                "renewing the Lease timed out; retrying until the renew deadline"
            ),
        }
    }
}

impl LeaseHolder {
    /// Waits until Lease `config.namespace/config.name` is ours, then renews it on a dedicated
    /// thread. Creates it when absent, takes it over when it names no holder or its holder's
    /// `renewTime + leaseDurationSeconds` has passed (bumping `leaseTransitions`), and otherwise
    /// retries every `retry_period` (jittered). Every write is conditional (create, or replace
    /// at the resourceVersion read), so of several contenders exactly one wins.
    ///
    /// `kube_config` builds two clients: one on the caller's runtime (acquire, release) and
    /// one on the renew thread's runtime. Transient API errors are retried; refusals (403,
    /// 422, …) are returned. Returns [`LeaseError::Cancelled`] when `cancel` fires first.
    pub async fn acquire(
        kube_config: kube::Config,
        config: LeaseConfig,
        cancel: &CancellationToken,
    ) -> Result<Self, LeaseError> {
        config.validate()?;
        let client =
            kube::Client::try_from(kube_config.clone()).map_err(|source| LeaseError::Client {
                namespace: config.namespace.clone(),
                name: config.name.clone(),
                source: Box::new(source),
            })?;
        let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
        let (namespace, name) = (config.namespace.clone(), config.name.clone());
        let cancelled = || LeaseError::Cancelled {
            namespace: namespace.clone(),
            name: name.clone(),
        };
        let mut last_holder: Option<String> = None;
        loop {
            if cancel.is_cancelled() {
                return Err(cancelled());
            }
            // Not abandoned on cancel: a write that may have been sent is seen through.
            let attempt =
                tokio::time::timeout(config.attempt_timeout(), try_acquire(&api, &config)).await;
            match attempt {
                Ok(Ok(Attempt::Acquired {
                    lease,
                    sent,
                    sent_wall,
                    acquisition,
                })) => {
                    let holder = Self::start(
                        kube_config,
                        config,
                        client,
                        *lease,
                        sent,
                        sent_wall,
                        acquisition,
                    )?;
                    if cancel.is_cancelled() {
                        if let Err(error) = holder.release().await {
                            tracing::warn!(%error, "releasing a Lease acquired after cancellation");
                        }
                        return Err(cancelled());
                    }
                    return Ok(holder);
                }
                Ok(Ok(Attempt::Raced)) => continue,
                Ok(Ok(Attempt::Held { holder, expires_at })) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(
                            lease = %format!("{namespace}/{name}"),
                            %holder,
                            ?expires_at,
                            "the Lease is held by another; waiting"
                        );
                        last_holder = Some(holder);
                    }
                }
                Ok(Err(error)) if lease_error_is_transient(&error) => {
                    tracing::warn!(%error, "acquiring the Lease failed; retrying");
                }
                Ok(Err(error)) => return Err(error),
                Err(_) => tracing::warn!(
                    lease = %format!("{namespace}/{name}"),
                    "acquiring the Lease timed out; retrying"
                ),
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(cancelled()),
                () = tokio::time::sleep(jittered(config.retry_period)) => {}
            }
        }
    }

    fn start(
        kube_config: kube::Config,
        config: LeaseConfig,
        client: kube::Client,
        lease: Lease,
        sent: Instant,
        sent_wall: SystemTime,
        acquisition: Acquisition,
    ) -> Result<Self, LeaseError> {
        let label: Arc<str> = format!("{}/{}", config.namespace, config.name).into();
        let fence = Fence::new(label, config.renew_deadline, sent, sent_wall);
        let stop = CancellationToken::new();
        let spawned = {
            let (config, fence, stop) = (config.clone(), fence.clone(), stop.clone());
            let term = acquisition.term;
            std::thread::Builder::new()
                .name(format!("lease-{}", config.name))
                .spawn(move || renew_thread(kube_config, config, term, fence, stop, lease))
        };
        let renewer = match spawned {
            Ok(handle) => handle,
            Err(source) => {
                fence.close(LostReason::RenewerFailed {
                    problem: source.to_string(),
                });
                // Not renewed: it expires on its own; the caller sees why.
                return Err(LeaseError::RenewThread {
                    namespace: config.namespace,
                    name: config.name,
                    source,
                });
            }
        };
        tracing::info!(
            lease = %fence.lease(),
            holder = %config.holder,
            term = acquisition.term,
            from = ?acquisition.from,
            "Lease acquired"
        );
        Ok(Self {
            config,
            client,
            fence,
            acquisition,
            stop,
            renewer: Some(renewer),
        })
    }

    /// The write permission: check it right before every write.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// The state channel: [`LeaseState::Held`] after every renewal, then
    /// [`LeaseState::Lost`] once.
    pub fn state(&self) -> watch::Receiver<LeaseState> {
        self.fence.state()
    }

    /// How and when we got the Lease, and our term.
    pub fn acquisition(&self) -> &Acquisition {
        &self.acquisition
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Resolves when the fence closes, with why.
    pub async fn lost(&self) -> super::Fenced {
        self.fence.lost().await
    }

    /// Hands the Lease back for a voluntary shutdown: closes the fence (no more writes), stops
    /// renewing, then — only if the Lease still names us in our term — empties its holder
    /// (with a fresh renew time) at the resourceVersion last seen, so another process takes it
    /// over at once. A Lease that is no longer ours is left alone. On error the Lease simply
    /// expires.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        self.fence.close(LostReason::Released);
        let last = self.stop_renewer().await;
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let error = |source| LeaseError::Release {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source: Box::new(source),
        };
        let mut lease = match last {
            Some(lease) => Some(lease),
            None => api.get_opt(&self.config.name).await.map_err(error)?,
        };
        let mut conflicts = 0;
        while let Some(mut current) = lease.take() {
            if not_ours(&current, &self.config, self.acquisition.term).is_some() {
                return Ok(());
            }
            let spec = current.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = None;
            spec.renew_time = Some(micro_now());
            match api
                .replace(&self.config.name, &PostParams::default(), &current)
                .await
            {
                Ok(_) => {
                    tracing::info!(lease = %self.fence.lease(), "Lease released");
                    return Ok(());
                }
                Err(e) if status_code(&e) == Some(404) => return Ok(()),
                Err(e) if status_code(&e) == Some(409) && conflicts < 3 => {
                    conflicts += 1;
                    lease = api.get_opt(&self.config.name).await.map_err(error)?;
                }
                Err(e) => return Err(error(e)),
            }
        }
        Ok(())
    }

    /// Stops the renew thread and returns the last Lease it knew.
    async fn stop_renewer(&mut self) -> Option<Lease> {
        self.stop.cancel();
        let handle = self.renewer.take()?;
        match tokio::task::spawn_blocking(move || handle.join()).await {
            Ok(Ok(lease)) => Some(lease),
            _ => None,
        }
    }
}

impl Drop for LeaseHolder {
    fn drop(&mut self) {
        // Without release(): no more writes, no more renewals; the Lease expires on its own,
        // as after a crash.
        self.fence.close(LostReason::Dropped);
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn ours_means_our_identity_in_our_term() {
        let config = LeaseConfig::new("ns", "l", "me");
        assert_eq!(not_ours(&lease(Some("me"), 4), &config, 4), None);
        assert_eq!(
            not_ours(&lease(Some("me"), 5), &config, 4),
            Some(LostReason::TakenOver {
                holder: "me".into()
            }),
            "a newer term under our identity is not ours"
        );
        assert_eq!(
            not_ours(&lease(Some("you"), 4), &config, 4),
            Some(LostReason::TakenOver {
                holder: "you".into()
            })
        );
        assert_eq!(
            not_ours(&lease(None, 4), &config, 4),
            Some(LostReason::TakenOver {
                holder: String::new()
            })
        );
    }

    #[test]
    fn refusals_are_not_retried() {
        let api = |code| {
            kube::Error::Api(Box::new(
                kube::core::Status::failure("x", "y").with_code(code),
            ))
        };
        for code in [404, 408, 409, 429, 500, 503] {
            assert!(is_transient(&api(code)), "{code}");
        }
        for code in [400, 401, 403, 422] {
            assert!(!is_transient(&api(code)), "{code}");
        }
    }

    #[test]
    fn recorded_times_are_rounded_up_to_the_microsecond() {
        let before = jiff::Timestamp::now();
        let stamp = micro_now().0;
        assert!(stamp >= before);
        assert_eq!(stamp.subsec_nanosecond() % 1000, 0);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(1));
            assert!(d >= Duration::from_secs(1) && d < Duration::from_millis(1200));
        }
    }
}
