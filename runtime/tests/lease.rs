//! Leases against a real API server (devcluster, or `KT_TEST_KUBECONFIG`): one holder at a
//! time, takeover only after expiry, release hands over at once, failing renewals close the
//! fence before the Lease expires, a deleted Lease fences, leadership hands over, membership
//! and the wait for an unresponsive worker's Lease.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test fixtures")]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use runtime::lease::{
    AcquiredFrom, Acquisition, COORDINATOR_LEASE_NAME, LeaderElector, LeaderExit, LeaseConfig,
    LeaseError, LeaseHolder, LeaseState, LostReason, Vacated, WORKER_LEASE_SELECTOR, expires_at,
    list_live, wait_until_expired,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything that should happen "soon" on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(200);

struct Cluster {
    target: devcluster::testing::Target,
    ns: String,
    config: kube::Config,
    client: kube::Client,
}

impl Cluster {
    async fn new() -> Self {
        let target = devcluster::testing::target().await.unwrap();
        let ns = target.namespace("lease").await.unwrap();
        let kubeconfig = Kubeconfig::read_from(&target.kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        let client = target.client().await.unwrap();
        Self {
            target,
            ns,
            config,
            client,
        }
    }

    fn lease(&self, name: &str, holder: &str) -> LeaseConfig {
        let mut config =
            LeaseConfig::worker(&self.ns, name, holder).with_timing(LEASE, DEADLINE, RETRY);
        config.max_clock_skew = Duration::from_millis(500);
        config
    }

    fn api(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn read(&self, name: &str) -> Lease {
        self.api().get(name).await.unwrap()
    }

    /// Starts acquiring in the background.
    fn contend(&self, lease: LeaseConfig) -> Contender {
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (config, cancel) = (self.config.clone(), cancel.clone());
            async move { LeaseHolder::acquire(config, lease, &cancel).await }
        });
        Contender { cancel, task }
    }

    async fn acquire(&self, lease: LeaseConfig) -> LeaseHolder {
        within(self.contend(lease).task).await.unwrap().unwrap()
    }

    async fn done(self) {
        let _ = self.target.delete_namespace(&self.ns).await;
    }
}

struct Contender {
    cancel: CancellationToken,
    task: JoinHandle<Result<LeaseHolder, LeaseError>>,
}

impl Contender {
    async fn cancelled(self) -> Result<LeaseHolder, LeaseError> {
        self.cancel.cancel();
        within(self.task).await.unwrap()
    }
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("did not happen in time")
}

fn renew_time(lease: &Lease) -> jiff::Timestamp {
    lease.spec.as_ref().unwrap().renew_time.as_ref().unwrap().0
}

fn holder_in(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().unwrap().holder_identity.clone()
}

fn transitions(lease: &Lease) -> i32 {
    lease.spec.as_ref().unwrap().lease_transitions.unwrap()
}

fn wall(t: SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(t).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_racing_contenders_exactly_one_holds_and_keeps_it_while_renewing() {
    let c = Cluster::new().await;
    let mut contenders: Vec<(&str, Contender)> = ["a", "b", "c"]
        .into_iter()
        .map(|h| (h, c.contend(c.lease("shared", h))))
        .collect();
    // Wait for the first to win.
    let winner = within(async {
        loop {
            if let Some(i) = contenders.iter().position(|(_, k)| k.task.is_finished()) {
                break i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (name, contender) = contenders.remove(winner);
    let holder = contender.task.await.unwrap().unwrap();
    assert_eq!(holder.acquisition().from, AcquiredFrom::Created);
    assert_eq!(holder.acquisition().term, 0);
    let lease = c.read("shared").await;
    assert_eq!(holder_in(&lease).as_deref(), Some(name));
    assert_eq!(
        lease
            .metadata
            .labels
            .unwrap()
            .get("kubetemplater.io/component")
            .map(String::as_str),
        Some("worker")
    );

    // Three lease durations later it is still the only holder, renewed, its fence open.
    let first_renewal = renew_time(&c.read("shared").await);
    tokio::time::sleep(LEASE * 3).await;
    assert!(contenders.iter().all(|(_, k)| !k.task.is_finished()));
    let lease = c.read("shared").await;
    assert_eq!(holder_in(&lease).as_deref(), Some(name));
    assert!(renew_time(&lease) > first_renewal, "renewed");
    assert!(holder.fence().check().is_ok());
    assert!(matches!(*holder.state().borrow(), LeaseState::Held { .. }));
    for (_, contender) in contenders {
        let err = contender.cancelled().await.unwrap_err();
        assert_eq!(err.metric_label(), "cancelled", "{err}");
    }
    holder.release().await.unwrap();
    c.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_is_replaced_only_once_its_lease_has_expired() {
    let c = Cluster::new().await;
    let a = c.acquire(c.lease("w", "a")).await;
    let fence = a.fence();
    let b = c.contend(c.lease("w", "b"));
    tokio::time::sleep(LEASE * 2).await;
    assert!(!b.task.is_finished(), "taken over while renewed");

    // Crash: no release, renewals stop.
    drop(a);
    assert_eq!(
        fence.check().unwrap_err().reason,
        LostReason::Dropped,
        "a dropped holder writes no more"
    );
    let b = within(b.task).await.unwrap().unwrap();
    let AcquiredFrom::Expired {
        previous,
        expired_at,
    } = b.acquisition().from.clone()
    else {
        panic!(
            "not taken over from an expired holder: {:?}",
            b.acquisition()
        );
    };
    assert_eq!(previous, "a");
    assert!(
        b.acquisition().acquired_at >= expired_at,
        "taken over at {} before the Lease expired at {expired_at}",
        b.acquisition().acquired_at
    );
    assert_eq!(b.acquisition().term, 1);
    let lease = c.read("w").await;
    assert_eq!(holder_in(&lease).as_deref(), Some("b"));
    assert_eq!(transitions(&lease), 1);
    b.release().await.unwrap();
    c.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_hands_the_lease_over_at_once() {
    let c = Cluster::new().await;
    let a = c.acquire(c.lease("w", "a")).await;
    let (fence, mut state) = (a.fence(), a.state());
    let b = c.contend(c.lease("w", "b"));
    tokio::time::sleep(RETRY * 3).await;
    assert!(!b.task.is_finished());

    let last_renewal = renew_time(&c.read("w").await);
    a.release().await.unwrap();
    assert_eq!(fence.check().unwrap_err().reason, LostReason::Released);
    state.wait_for(|s| !s.is_held()).await.unwrap();
    assert_eq!(
        *state.borrow(),
        LeaseState::Lost {
            reason: LostReason::Released
        }
    );

    let b = within(b.task).await.unwrap().unwrap();
    assert_eq!(b.acquisition().from, AcquiredFrom::Released);
    assert!(
        b.acquisition().acquired_at < last_renewal + LEASE,
        "taken over at {}, not before a's Lease would have expired ({} + {LEASE:?})",
        b.acquisition().acquired_at,
        last_renewal
    );
    assert_eq!(b.acquisition().term, 1);
    // Releasing a Lease that is no longer ours leaves it alone.
    let lease = c.read("w").await;
    assert_eq!(holder_in(&lease).as_deref(), Some("b"));
    b.release().await.unwrap();
    assert_eq!(holder_in(&c.read("w").await), None);
    c.done().await;
}

/// Refuses every renewal of Lease `name` in `ns` (an update that keeps the holder), while
/// still allowing takeovers and releases: the API server is up, the holder just cannot renew.
async fn block_renewals(c: &Cluster, name: &str) -> String {
    let policy_name = format!("{}-block-renewals", c.ns);
    let scope = serde_json::json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": c.ns}},
    });
    let mut constraints = scope.clone();
    constraints["resourceRules"] = serde_json::json!([{
        "apiGroups": ["coordination.k8s.io"],
        "apiVersions": ["v1"],
        "operations": ["UPDATE"],
        "resources": ["leases"],
        "resourceNames": [name],
    }]);
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": policy_name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": constraints,
            "validations": [{
                "expression": "!has(object.spec.holderIdentity) || !has(oldObject.spec.holderIdentity) || object.spec.holderIdentity != oldObject.spec.holderIdentity",
                "message": "renewals of this Lease are blocked by a test",
            }],
        },
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": policy_name},
        "spec": {
            "policyName": policy_name,
            "validationActions": ["Deny"],
            "matchResources": scope,
        },
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(c.client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(c.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    policy_name
}

async fn unblock(c: &Cluster, policy_name: &str) {
    let dp = DeleteParams::default();
    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(c.client.clone())
        .delete(policy_name, &dp)
        .await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(c.client.clone())
        .delete(policy_name, &dp)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_renewals_close_the_fence_before_the_lease_can_expire() {
    let c = Cluster::new().await;
    // A wider margin than elsewhere (2 s) so that the observed closing time, which includes
    // this test's own scheduling delay, can be compared with the expiry.
    let timing = |holder| {
        let mut config = c.lease("w", holder);
        config.lease_duration = Duration::from_secs(4);
        config
    };
    let a = c.acquire(timing("a")).await;
    let fence = a.fence();
    let mut state = a.state();
    let policy = block_renewals(&c, "w").await;

    // Renewals are refused (once the policy is in force): the fence closes at its deadline.
    let fenced = within(fence.lost()).await;
    let (now, now_wall) = (Instant::now(), SystemTime::now());
    unblock(&c, &policy).await;
    assert_eq!(fenced.reason, LostReason::RenewDeadlinePassed, "{fenced}");
    assert!(fence.check().is_err());
    state.wait_for(|s| !s.is_held()).await.unwrap();
    assert_eq!(
        *state.borrow(),
        LeaseState::Lost {
            reason: LostReason::RenewDeadlinePassed
        }
    );

    // The Lease still names a, unrenewed since. The fence closed before it expires by its
    // record: its deadline is at most the last renew time + the renew deadline, and lost()
    // resolved (observed here) before the expiry.
    let lease = c.read("w").await;
    assert_eq!(
        holder_in(&lease).as_deref(),
        Some("a"),
        "nobody else wrote it"
    );
    let expires = expires_at(&lease).unwrap();
    assert_eq!(expires, renew_time(&lease) + Duration::from_secs(4));
    let deadline_wall = wall(now_wall - now.duration_since(fence.deadline()));
    assert!(
        deadline_wall <= renew_time(&lease) + DEADLINE,
        "the fence's deadline {deadline_wall} is later than renew time + renew deadline"
    );
    assert!(
        wall(now_wall) < expires,
        "the fence was seen closing at {}, after the Lease expired at {expires}",
        wall(now_wall)
    );

    // Fenced is final: a fenced holder stopped renewing; the next holder takes over once the
    // Lease expired, in a new term.
    let b = c.acquire(timing("b")).await;
    assert!(matches!(
        b.acquisition().from,
        AcquiredFrom::Expired { ref previous, expired_at } if previous == "a" && expired_at == expires
    ));
    assert!(b.acquisition().acquired_at >= expires);
    assert_eq!(b.acquisition().term, 1);
    assert!(fence.check().is_err(), "never reopens");
    // a's release leaves b's Lease alone.
    a.release().await.unwrap();
    assert_eq!(holder_in(&c.read("w").await).as_deref(), Some("b"));
    b.release().await.unwrap();
    c.done().await;
}

/// The caller's runtime is blocked (one thread, busy for three lease durations): renewals go
/// on, on their own thread with their own client, and the fence stays open.
#[tokio::test(flavor = "current_thread")]
async fn a_blocked_runtime_does_not_starve_renewals() {
    let c = Cluster::new().await;
    let a = c.acquire(c.lease("w", "a")).await;
    let before = renew_time(&c.read("w").await);
    let blocked = Instant::now();
    std::thread::sleep(LEASE * 3);
    assert!(blocked.elapsed() >= LEASE * 3);
    assert!(
        a.fence().check().is_ok(),
        "fenced while the runtime was busy"
    );
    let after = renew_time(&c.read("w").await);
    assert!(
        after >= before + DEADLINE,
        "not renewed while the runtime was blocked: {before} → {after}"
    );
    a.release().await.unwrap();
    c.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_fences_its_holder() {
    let c = Cluster::new().await;
    let a = c.acquire(c.lease("w", "a")).await;
    let fence = a.fence();
    c.api().delete("w", &DeleteParams::default()).await.unwrap();
    let fenced = within(a.lost()).await;
    assert_eq!(fenced.reason, LostReason::Deleted);
    assert!(fence.check().is_err());
    // Release does not recreate it.
    a.release().await.unwrap();
    assert!(c.api().get_opt("w").await.unwrap().is_none());
    c.done().await;
}

/// A leader's work: reports that it leads (with its term), then acts until dropped.
fn leading(
    became: tokio::sync::mpsc::UnboundedSender<(String, Acquisition)>,
    acting: Arc<AtomicBool>,
) -> impl FnOnce(runtime::lease::Leadership) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    move |leadership| {
        Box::pin(async move {
            struct Acting(Arc<AtomicBool>);
            impl Drop for Acting {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::SeqCst);
                }
            }
            acting.store(true, Ordering::SeqCst);
            let _acting = Acting(acting);
            became
                .send((leadership.holder.clone(), leadership.acquisition.clone()))
                .unwrap();
            loop {
                leadership
                    .fence
                    .check()
                    .expect("acting only while the fence is open");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_passes_to_the_standby_on_step_down_and_ends_when_lost() {
    let c = Cluster::new().await;
    let coordinator = |holder: &str| {
        let mut config =
            LeaseConfig::coordinator(&c.ns, holder).with_timing(LEASE, DEADLINE, RETRY);
        config.max_clock_skew = Duration::from_millis(500);
        LeaderElector::new(c.config.clone(), config).unwrap()
    };
    let (became_tx, mut became) = tokio::sync::mpsc::unbounded_channel();
    let mut runs = std::collections::HashMap::new();
    for name in ["coordinator-0", "coordinator-1"] {
        let elector = coordinator(name);
        let cancel = CancellationToken::new();
        let acting = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (cancel, lead) = (cancel.clone(), leading(became_tx.clone(), acting.clone()));
            async move { elector.run_as_leader(&cancel, lead).await }
        });
        runs.insert(name, (cancel, acting, task));
    }

    // One leads; the other stands by.
    let (first, acquisition) = within(became.recv()).await.unwrap();
    assert_eq!(acquisition.term, 0);
    assert_eq!(acquisition.from, AcquiredFrom::Created);
    tokio::time::sleep(LEASE * 2).await;
    assert!(became.try_recv().is_err(), "two leaders");
    let second = if first == "coordinator-0" {
        "coordinator-1"
    } else {
        "coordinator-0"
    };
    assert!(runs[first.as_str()].1.load(Ordering::SeqCst));
    assert!(!runs[second].1.load(Ordering::SeqCst));

    // The leader steps down (SIGTERM): the standby leads at once, in a new term.
    let (cancel, acting, task) = runs.remove(first.as_str()).unwrap();
    cancel.cancel();
    let stepped_down = Instant::now();
    assert!(matches!(
        within(task).await.unwrap().unwrap(),
        LeaderExit::Cancelled
    ));
    assert!(!acting.load(Ordering::SeqCst), "stopped acting");
    let (now_leading, acquisition) = within(became.recv()).await.unwrap();
    assert_eq!(now_leading, second);
    assert_eq!(acquisition.term, 1);
    assert_eq!(
        acquisition.from,
        AcquiredFrom::Released,
        "the standby waited for expiry"
    );
    assert!(stepped_down.elapsed() < LEASE);
    let lease = c.read(COORDINATOR_LEASE_NAME).await;
    assert_eq!(holder_in(&lease).as_deref(), Some(second));
    assert_eq!(
        lease
            .metadata
            .labels
            .unwrap()
            .get("kubetemplater.io/component")
            .map(String::as_str),
        Some("coordinator")
    );

    // The new leader loses its Lease: its work is dropped, the term ends as Lost.
    let (_cancel, acting, task) = runs.remove(second).unwrap();
    c.api()
        .delete(COORDINATOR_LEASE_NAME, &DeleteParams::default())
        .await
        .unwrap();
    let LeaderExit::Lost(fenced) = within(task).await.unwrap().unwrap() else {
        panic!("the term did not end as lost");
    };
    assert_eq!(fenced.reason, LostReason::Deleted);
    assert!(!acting.load(Ordering::SeqCst), "stopped acting");
    c.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_lists_live_workers_and_waits_for_an_unresponsive_ones_expiry() {
    let c = Cluster::new().await;
    let w0 = c.acquire(c.lease("worker-0", "pod-0")).await;
    let w1 = c.acquire(c.lease("worker-1", "pod-1")).await;
    let unlabelled = c
        .acquire(LeaseConfig {
            labels: Default::default(),
            ..c.lease("other", "pod-x")
        })
        .await;
    let live = list_live(&c.client, &c.ns, WORKER_LEASE_SELECTOR)
        .await
        .unwrap();
    let names: Vec<_> = live
        .iter()
        .map(|l| (l.name.as_str(), l.holder.as_deref()))
        .collect();
    assert_eq!(
        names,
        [("worker-0", Some("pod-0")), ("worker-1", Some("pod-1"))]
    );
    assert!(
        live.iter()
            .all(|l| l.transitions == 0 && l.expires_at.is_some())
    );

    // A holder we did not observe: resolves at once.
    assert_eq!(
        within(wait_until_expired(
            c.client.clone(),
            &c.ns,
            "worker-0",
            "pod-9"
        ))
        .await,
        Vacated::TakenOver {
            holder: "pod-0".into()
        }
    );

    // worker-0 stops renewing without a word: the wait ends only once its Lease expired.
    let waiting = tokio::spawn({
        let client = c.client.clone();
        let ns = c.ns.clone();
        async move { wait_until_expired(client, &ns, "worker-0", "pod-0").await }
    });
    tokio::time::sleep(LEASE * 2).await;
    assert!(
        !waiting.is_finished(),
        "resolved while the Lease is renewed"
    );
    drop(w0);
    let Vacated::Expired { expired_at } = within(waiting).await.unwrap() else {
        panic!("not expired");
    };
    let resolved = jiff::Timestamp::now();
    assert!(resolved >= expired_at);
    let lease = c.read("worker-0").await;
    assert_eq!(
        expires_at(&lease),
        Some(expired_at),
        "by the Lease's own record"
    );
    assert_eq!(holder_in(&lease).as_deref(), Some("pod-0"));

    // worker-1 releases: the wait ends at once.
    let waiting = tokio::spawn({
        let client = c.client.clone();
        let ns = c.ns.clone();
        async move { wait_until_expired(client, &ns, "worker-1", "pod-1").await }
    });
    tokio::time::sleep(RETRY * 3).await;
    w1.release().await.unwrap();
    let released = Instant::now();
    assert_eq!(within(waiting).await.unwrap(), Vacated::Released);
    assert!(released.elapsed() < LEASE);

    let live = list_live(&c.client, &c.ns, WORKER_LEASE_SELECTOR)
        .await
        .unwrap();
    assert!(live.is_empty(), "{live:?}");
    assert_eq!(
        within(wait_until_expired(c.client.clone(), &c.ns, "gone", "pod-0")).await,
        Vacated::Deleted
    );
    unlabelled.release().await.unwrap();
    c.done().await;
}
