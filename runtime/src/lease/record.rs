//! Reading Leases as recorded by the API server: expiry, membership, waiting for expiry.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt as _, watcher};

use super::LeaseError;

/// The holder named in the Lease; `None` when it has none (released, or never held): an
/// empty `holderIdentity` means released.
pub fn holder_of(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty())
}

/// `renewTime + leaseDurationSeconds` as recorded in the Lease (`None` without either).
pub fn expires_at(lease: &Lease) -> Option<jiff::Timestamp> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref()?.0;
    let seconds = spec.lease_duration_seconds?;
    renewed
        .checked_add(jiff::SignedDuration::from_secs(i64::from(seconds.max(0))))
        .ok()
}

/// Whether nobody may be writing under `lease` any more at `now` (a wall-clock reading): it
/// names no holder (released), or lacks a renew time or duration, or its
/// `renewTime + leaseDurationSeconds` is not after `now`. Only the Lease's own recorded times
/// and duration count, not those of whoever asks.
pub fn is_expired(lease: &Lease, now: jiff::Timestamp) -> bool {
    match (holder_of(lease), expires_at(lease)) {
        (Some(_), Some(expires)) => expires <= now,
        _ => true,
    }
}

/// One Lease as membership sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Name of the Lease (for a worker: its worker id).
    pub name: String,
    /// Its holder (`None`: released).
    pub holder: Option<String>,
    /// `renewTime`.
    pub renew_time: Option<jiff::Timestamp>,
    /// `acquireTime` of the current holder.
    pub acquire_time: Option<jiff::Timestamp>,
    /// `renewTime + leaseDurationSeconds`.
    pub expires_at: Option<jiff::Timestamp>,
    /// `leaseTransitions`: grows with every change of holder (the holder's term).
    pub transitions: i32,
}

impl LeaseInfo {
    /// Reads the fields of `lease`.
    pub fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            name: lease.metadata.name.clone().unwrap_or_default(),
            holder: holder_of(lease).map(str::to_owned),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            acquire_time: spec.and_then(|s| s.acquire_time.as_ref()).map(|t| t.0),
            expires_at: expires_at(lease),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        }
    }

    /// Held and unexpired at `now`.
    pub fn is_live(&self, now: jiff::Timestamp) -> bool {
        self.holder.is_some() && self.expires_at.is_some_and(|e| e > now)
    }
}

/// All Leases in `namespace` matching `label_selector` (e.g.
/// [`WORKER_LEASE_SELECTOR`](super::WORKER_LEASE_SELECTOR)), sorted by name.
pub async fn list(
    client: &kube::Client,
    namespace: &str,
    label_selector: &str,
) -> Result<Vec<LeaseInfo>, LeaseError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let leases = api
        .list(&ListParams::default().labels(label_selector))
        .await
        .map_err(|source| LeaseError::List {
            namespace: namespace.to_owned(),
            selector: label_selector.to_owned(),
            source: Box::new(source),
        })?;
    let mut infos: Vec<LeaseInfo> = leases.items.iter().map(LeaseInfo::from_lease).collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

/// The Leases in `namespace` matching `label_selector` that are held and unexpired now: the
/// live members. Sorted by name.
pub async fn list_live(
    client: &kube::Client,
    namespace: &str,
    label_selector: &str,
) -> Result<Vec<LeaseInfo>, LeaseError> {
    let now = jiff::Timestamp::now();
    let mut infos = list(client, namespace, label_selector).await?;
    infos.retain(|info| info.is_live(now));
    Ok(infos)
}

/// How a Lease stopped being held by the holder we waited on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vacated {
    /// Still naming it, but `renewTime + leaseDurationSeconds` has passed.
    Expired {
        /// When it expired (as recorded).
        expired_at: jiff::Timestamp,
    },
    /// Its holder released it (empty holder).
    Released,
    /// Another holder holds it now.
    TakenOver {
        /// The new holder.
        holder: String,
    },
    /// The Lease no longer exists.
    Deleted,
}

/// Whether `lease` (`None`: absent) is no longer held by `observed_holder` at `now`, and how.
pub fn vacated(
    lease: Option<&Lease>,
    observed_holder: &str,
    now: jiff::Timestamp,
) -> Option<Vacated> {
    let Some(lease) = lease else {
        return Some(Vacated::Deleted);
    };
    match holder_of(lease) {
        None => Some(Vacated::Released),
        Some(holder) if holder != observed_holder => Some(Vacated::TakenOver {
            holder: holder.to_owned(),
        }),
        Some(_) => match expires_at(lease) {
            None => Some(Vacated::Expired { expired_at: now }),
            Some(expires) if expires <= now => Some(Vacated::Expired {
                expired_at: expires,
            }),
            Some(_) => None,
        },
    }
}

/// Resolves once Lease `namespace/name` is provably no longer held by `observed_holder`:
/// expired by its own recorded renew time and duration, released, taken over or deleted. What
/// the coordinator awaits when a worker does not acknowledge a revoke: from then on that
/// worker's fence is closed (see the [module docs](super)).
///
/// Watches the one Lease (so a release is seen at once) and wakes at its recorded expiry
/// (expiry is the passing of time, not an event). Watch failures are retried with backoff;
/// wrap the future in a timeout or `select!` to bound the wait.
pub async fn wait_until_expired(
    client: kube::Client,
    namespace: &str,
    name: &str,
    observed_holder: &str,
) -> Vacated {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let watch = || {
        watcher::watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed()
    };
    let mut events = watch();
    let mut current: Option<Lease> = None;
    let mut listing: Option<Lease> = None;
    let mut synced = false;
    loop {
        let now = jiff::Timestamp::now();
        if synced && let Some(outcome) = vacated(current.as_ref(), observed_holder, now) {
            tracing::info!(lease = %format!("{namespace}/{name}"), holder = observed_holder, ?outcome, "Lease vacated");
            return outcome;
        }
        // Wake at the recorded expiry (1 ms after, so that `expires <= now` then holds).
        let wake = current
            .as_ref()
            .and_then(expires_at)
            .and_then(|expires| Duration::try_from(expires.duration_since(now)).ok())
            .map(|d| d + Duration::from_millis(1));
        let sleep = async {
            match wake {
                Some(d) if synced => tokio::time::sleep(d).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Init)) => listing = None,
                Some(Ok(watcher::Event::InitApply(lease))) => listing = Some(lease),
                Some(Ok(watcher::Event::InitDone)) => {
                    current = listing.take();
                    synced = true;
                }
                Some(Ok(watcher::Event::Apply(lease))) => current = Some(lease),
                Some(Ok(watcher::Event::Delete(_))) => current = None,
                Some(Err(error)) => {
                    tracing::warn!(%error, lease = %format!("{namespace}/{name}"), "watching the Lease failed; retrying");
                }
                // The backoff-wrapped watcher does not end; if it did, start another.
                None => events = watch(),
            },
            () = sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>, seconds: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("w0".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: renewed.map(|s| MicroTime(at(s))),
                acquire_time: Some(MicroTime(at(0))),
                lease_duration_seconds: seconds,
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn expiry_is_renew_time_plus_the_leases_own_duration() {
        let l = lease(Some("a"), Some(100), Some(15));
        assert_eq!(expires_at(&l), Some(at(115)));
        assert!(!is_expired(&l, at(100)));
        assert!(!is_expired(&l, at(114)));
        assert!(
            !is_expired(&l, at(115) - jiff::SignedDuration::from_nanos(1)),
            "live until the last nanosecond"
        );
        assert!(is_expired(&l, at(115)));
        assert!(is_expired(&l, at(1000)));
    }

    #[test]
    fn released_or_incomplete_leases_are_expired() {
        assert!(is_expired(&lease(None, Some(100), Some(15)), at(101)));
        assert!(is_expired(&lease(Some(""), Some(100), Some(15)), at(101)));
        assert!(is_expired(&lease(Some("a"), None, Some(15)), at(101)));
        assert!(is_expired(&lease(Some("a"), Some(100), None), at(101)));
        assert!(is_expired(&lease(Some("a"), Some(100), Some(-5)), at(100)));
        assert!(is_expired(
            &Lease {
                metadata: ObjectMeta::default(),
                spec: None
            },
            at(0)
        ));
        assert_eq!(holder_of(&lease(Some(""), Some(1), Some(1))), None);
    }

    #[test]
    fn lease_info_reads_the_record() {
        let info = LeaseInfo::from_lease(&lease(Some("a"), Some(100), Some(15)));
        assert_eq!(
            info,
            LeaseInfo {
                name: "w0".into(),
                holder: Some("a".into()),
                renew_time: Some(at(100)),
                acquire_time: Some(at(0)),
                expires_at: Some(at(115)),
                transitions: 3,
            }
        );
        assert!(info.is_live(at(114)));
        assert!(!info.is_live(at(115)));
        assert!(!LeaseInfo::from_lease(&lease(None, Some(100), Some(15))).is_live(at(101)));
    }

    #[test]
    fn vacated_says_how() {
        let held = lease(Some("a"), Some(100), Some(15));
        assert_eq!(vacated(Some(&held), "a", at(114)), None);
        assert_eq!(
            vacated(Some(&held), "a", at(115)),
            Some(Vacated::Expired {
                expired_at: at(115)
            })
        );
        assert_eq!(
            vacated(Some(&held), "b", at(101)),
            Some(Vacated::TakenOver { holder: "a".into() })
        );
        assert_eq!(
            vacated(Some(&lease(None, Some(100), Some(15))), "a", at(101)),
            Some(Vacated::Released)
        );
        assert_eq!(vacated(None, "a", at(101)), Some(Vacated::Deleted));
    }
}
