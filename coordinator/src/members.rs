//! Worker membership: a worker is alive while it holds its own `coordination.k8s.io` Lease (a
//! dropped gRPC stream alone is not death). A reflector keeps the worker Leases of the system
//! namespace (label `kubetemplater.io/component=worker`); a one-second timer re-evaluates expiry,
//! since a Lease expires by the passing of time, not by an event. Changes go to the leader's loop
//! as [`Event::Members`].

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use runtime::lease::{self, WORKER_LEASE_SELECTOR};

use crate::core::Event;
use crate::handoff::WorkerId;

/// The live workers among `leases` (the Lease name is the worker id).
pub fn live_workers<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    now: jiff::Timestamp,
) -> BTreeSet<WorkerId> {
    leases
        .into_iter()
        .filter(|l| !lease::is_expired(l, now))
        .filter_map(|l| l.metadata.name.clone())
        .collect()
}

/// Watches worker Leases in `namespace` and sends the live set on `events` whenever it changes,
/// until `cancel`.
pub async fn watch(
    client: kube::Client,
    namespace: String,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let (store, writer): (Store<Lease>, _) = reflector::store();
    let config = watcher::Config::default().labels(WORKER_LEASE_SELECTOR);
    let mut stream = reflector::reflector(writer, watcher::watcher(api, config))
        .default_backoff()
        .boxed();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last: Option<BTreeSet<WorkerId>> = None;
    let mut synced = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            event = stream.next() => match event {
                None => return,
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching worker Leases failed; retrying");
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) => synced = true,
                Some(Ok(_)) => {}
            },
            _ = ticker.tick() => {}
        }
        // Before the first complete list the store is partial: report nothing yet.
        if !synced {
            continue;
        }
        let live = live_workers(
            store.state().iter().map(AsRef::as_ref),
            jiff::Timestamp::now(),
        );
        if last.as_ref() != Some(&live) {
            last = Some(live.clone());
            if events.send(Event::Members(live)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(name: &str, holder: Option<&str>, renewed: jiff::Timestamp, seconds: i32) -> Lease {
        Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn live_means_held_and_unexpired() {
        let now = jiff::Timestamp::now();
        let ago = |s: i64| now - jiff::SignedDuration::from_secs(s);
        let leases = [
            lease("w0", Some("w0"), ago(5), 15),
            lease("w1", Some("w1"), ago(20), 15),
            lease("w2", None, ago(1), 15),
            lease("w3", Some(""), ago(1), 15),
        ];
        assert_eq!(live_workers(&leases, now), ["w0".to_owned()].into());
    }
}
