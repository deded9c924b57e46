//! The gRPC APIs of kubetemplater, generated at build time from `kubetemplater/v1/*.proto`
//! (package `kubetemplater.v1`), and the reference for the coordinator ↔ worker protocol.
//!
//! - [`v1::worker_service_server`] / [`v1::worker_service_client`]: the `WorkerService` session
//!   between each worker and the coordinator leader (`worker.proto`).
//! - [`v1::admin_service_server`] / [`v1::admin_service_client`]: the coordinator's
//!   `AdminService` (`admin.proto`), used by `ktctl`.
//! - [`client`]: calling the `AdminService` as a Kubernetes user (the kubeconfig's credentials)
//!   and finding the leading coordinator.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for a gRPC reflection service.
//!
//! The comments in the `.proto` files are the field-by-field documentation; they also appear on
//! the generated types. This page describes how the messages fit together.
//!
//! # Buckets and epochs
//!
//! Every sharded object hashes into one of B buckets (`engine::bucket`; B is fixed at install,
//! default 1024). The coordinator leader assigns each bucket to at most one worker. Each
//! assignment has an *epoch*: a `u64` per bucket that only grows, by one for every grant. A
//! [`v1::BucketEpoch`] `(bucket, epoch)` names one term of ownership. Buckets are `u32`
//! everywhere, epochs `u64`.
//!
//! # The session
//!
//! A worker holds its own `coordination.k8s.io` Lease; its name is the worker's id. The worker
//! opens one `WorkerService.Session` stream to the leader and keeps it open:
//!
//! 1. **hello → welcome.** The worker sends [`v1::Hello`]: its id, its Lease's namespace, the
//!    buckets (with epochs) it holds right now, its B and its version. The leader ends the stream
//!    with `FAILED_PRECONDITION` if B differs, otherwise answers [`v1::Welcome`]: its identity,
//!    its leadership term (`leader_epoch`), B, and the Load interval. A worker ends a session
//!    whose `leader_epoch` is lower than one it was already welcomed with (a deposed leader). A
//!    standby coordinator ends the stream with `UNAVAILABLE`; the worker retries with backoff.
//! 2. The leader compares the Hello with its persisted map: a bucket held at an epoch the map no
//!    longer gives the worker is revoked (`COORDINATOR_RESTART`); a bucket the map gives the
//!    worker that it does not report (a grant lost with an earlier stream) is granted again. A new
//!    leader starts from the persisted map plus these reports, never from scratch.
//! 3. **load.** The worker sends [`v1::Load`] right after the Welcome and then every
//!    `Welcome.load_report_interval` ([`DEFAULT_LOAD_REPORT_INTERVAL`] when unset). Only workers
//!    send Load; the coordinator's planner weighs buckets by the object counts of its own watch.
//! 4. **grant / revoke** at any time from the leader (below); **leaving** on graceful shutdown.
//!
//! The stream is not liveness: the Lease is. When the stream drops, nothing is revoked; the
//! worker keeps serving what it holds (fail static) and reconnects with a fresh Hello. Nothing new
//! is assigned while no leader is reachable.
//!
//! # Handoff: revoke → released → grant
//!
//! To move bucket `b` from worker X (epoch `e`) to worker Y:
//!
//! 1. The leader sends [`v1::Revoke`] `{(b, e)}` with a handoff id and a [`v1::HandoffReason`].
//! 2. X stops taking new work for `b`, finishes what is in flight, stops `b`'s watches, then
//!    sends [`v1::Released`] `{(b, e)}` with the same handoff id and how long that took.
//! 3. Only then does the leader persist `(b, e + 1, Y)` in the map and send [`v1::Grant`]
//!    `{(b, e + 1)}` to Y, which lists and reconciles everything in `b`.
//!
//! If X never sends Released, the leader grants only once X's Lease has provably expired; X has
//! stopped writing before that, when it missed its renew deadline (self-fencing). One handoff
//! moves a set of buckets from one worker to one other; `AdminService.ListHandoffs` shows each
//! with its timings and outcome.
//!
//! Stale and repeated messages are harmless, so the leader may resend a Revoke or Grant after a
//! reconnect: a worker ignores a Grant entry whose epoch is not above every epoch it has seen for
//! that bucket; it ignores a Revoke entry below the epoch it holds, and otherwise releases (if it
//! holds the bucket) and acknowledges, also for a bucket it no longer or never held.
//!
//! **Leaving.** On SIGTERM a worker sends [`v1::Leaving`]; the leader marks it draining and
//! revokes all its buckets (`WORKER_LEAVING`); after its Released the worker releases its Lease
//! and exits. Without a leader it finishes in-flight work, releases its Lease and exits, and its
//! buckets move once the Lease is gone. `AdminService.DrainWorker` does the same on an operator's
//! request (`DRAIN`).
//!
//! # Tracing
//!
//! Both envelopes carry `trace_context` (W3C `traceparent`/`tracestate` as a string map, the
//! carrier OpenTelemetry propagators read and write), so the Revoke, Released and Grant of one
//! handoff belong to one trace across the coordinator and both workers.

use std::time::Duration;

/// The generated messages, enums, clients and servers of package `kubetemplater.v1`, plus the
/// conveniences below.
#[allow(clippy::all, clippy::pedantic, clippy::nursery)]
pub mod client;

pub mod v1 {
    tonic::include_proto!("kubetemplater.v1");
}

/// The encoded `google.protobuf.FileDescriptorSet` of `worker.proto`, `admin.proto` and their
/// imports (with source info, so comments show through reflection), for a gRPC reflection
/// service (e.g. `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kubetemplater_v1_descriptor.bin"));

/// How often a worker sends [`v1::Load`] when `Welcome.load_report_interval` is unset or zero.
pub const DEFAULT_LOAD_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// How many handoffs `ListHandoffs` returns when the request's `limit` is zero.
pub const DEFAULT_HANDOFF_LIMIT: u32 = 50;

impl v1::BucketEpoch {
    /// `bucket` at `epoch`.
    pub const fn new(bucket: u32, epoch: u64) -> Self {
        Self { bucket, epoch }
    }
}

impl From<(u32, u64)> for v1::BucketEpoch {
    fn from((bucket, epoch): (u32, u64)) -> Self {
        Self { bucket, epoch }
    }
}

impl From<v1::BucketEpoch> for (u32, u64) {
    fn from(be: v1::BucketEpoch) -> Self {
        (be.bucket, be.epoch)
    }
}

/// Turns `(bucket, epoch)` pairs (or anything else convertible) into the `buckets` field of a
/// [`v1::Grant`], [`v1::Revoke`] or [`v1::Released`].
pub fn bucket_epochs<I>(pairs: I) -> Vec<v1::BucketEpoch>
where
    I: IntoIterator,
    I::Item: Into<v1::BucketEpoch>,
{
    pairs.into_iter().map(Into::into).collect()
}

macro_rules! envelope {
    ($envelope:ident, $module:ident, $($variant:ident),+) => {
        $(
            impl From<v1::$variant> for v1::$envelope {
                fn from(message: v1::$variant) -> Self {
                    Self {
                        kind: Some(v1::$module::Kind::$variant(message)),
                        trace_context: Default::default(),
                    }
                }
            }
        )+

        impl v1::$envelope {
            /// Sets the W3C trace context (`traceparent`, `tracestate`) carried by this message.
            #[must_use]
            pub fn with_trace_context<I, K, V>(mut self, context: I) -> Self
            where
                I: IntoIterator<Item = (K, V)>,
                K: Into<String>,
                V: Into<String>,
            {
                self.trace_context = context
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect();
                self
            }
        }
    };
}

envelope!(
    WorkerMessage,
    worker_message,
    Hello,
    Released,
    Load,
    Leaving
);
envelope!(
    CoordinatorMessage,
    coordinator_message,
    Welcome,
    Grant,
    Revoke
);

/// A handoff reason's short name, as `ktctl handoffs` and loadtest reports show it (`-` for a
/// value this build does not know).
pub fn handoff_reason_name(reason: i32) -> &'static str {
    match v1::HandoffReason::try_from(reason) {
        Ok(v1::HandoffReason::Rebalance) => "rebalance",
        Ok(v1::HandoffReason::Drain) => "drain",
        Ok(v1::HandoffReason::WorkerLeaving) => "leaving",
        Ok(v1::HandoffReason::CoordinatorRestart) => "coordinator-restart",
        Ok(v1::HandoffReason::WorkerLost) => "worker-lost",
        Ok(v1::HandoffReason::Assign) => "assign",
        _ => "-",
    }
}

impl v1::Welcome {
    /// `load_report_interval`, or [`DEFAULT_LOAD_REPORT_INTERVAL`] when unset, zero, or negative.
    pub fn load_report_interval_or_default(&self) -> Duration {
        self.load_report_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_LOAD_REPORT_INTERVAL)
    }
}

impl v1::LocateRequest {
    /// Locates the bucket of the KubeTemplates in `namespace`.
    pub fn namespace(namespace: impl Into<String>) -> Self {
        Self {
            key: Some(v1::locate_request::Key::Namespace(namespace.into())),
        }
    }

    /// Locates the bucket of the Tenant for row `uid` of TenantRegistry
    /// `registry_namespace/registry_name`.
    pub fn tenant(
        registry_namespace: impl Into<String>,
        registry_name: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        Self {
            key: Some(v1::locate_request::Key::Tenant(v1::TenantKey {
                registry_namespace: registry_namespace.into(),
                registry_name: registry_name.into(),
                uid: uid.into(),
            })),
        }
    }
}

impl v1::ListHandoffsRequest {
    /// The limit to apply: `limit`, or [`DEFAULT_HANDOFF_LIMIT`] when zero.
    pub fn effective_limit(&self) -> u32 {
        if self.limit == 0 {
            DEFAULT_HANDOFF_LIMIT
        } else {
            self.limit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{BucketEpoch, Welcome, WorkerMessage, worker_message};
    use super::*;

    #[test]
    fn handoff_reasons_have_short_names() {
        assert_eq!(
            handoff_reason_name(v1::HandoffReason::CoordinatorRestart as i32),
            "coordinator-restart"
        );
        assert_eq!(
            handoff_reason_name(v1::HandoffReason::WorkerLeaving as i32),
            "leaving"
        );
        assert_eq!(handoff_reason_name(0), "-");
        assert_eq!(handoff_reason_name(9_999), "-");
    }

    #[test]
    fn bucket_epoch_converts_from_and_to_pairs() {
        let be: BucketEpoch = (7, 42).into();
        assert_eq!(be, BucketEpoch::new(7, 42));
        assert_eq!(<(u32, u64)>::from(be), (7, 42));
        assert_eq!(
            bucket_epochs([(1, 2), (3, 4)]),
            vec![BucketEpoch::new(1, 2), BucketEpoch::new(3, 4)]
        );
    }

    #[test]
    fn envelopes_wrap_their_messages_and_carry_trace_context() {
        let msg = WorkerMessage::from(v1::Leaving {
            reason: "SIGTERM".into(),
        })
        .with_trace_context([(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]);
        assert!(
            matches!(msg.kind, Some(worker_message::Kind::Leaving(ref l)) if l.reason == "SIGTERM")
        );
        assert_eq!(msg.trace_context.len(), 1);
    }

    #[test]
    fn load_interval_defaults_when_unset_zero_or_negative() {
        let mut w = Welcome::default();
        assert_eq!(
            w.load_report_interval_or_default(),
            DEFAULT_LOAD_REPORT_INTERVAL
        );
        w.load_report_interval = Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        });
        assert_eq!(
            w.load_report_interval_or_default(),
            DEFAULT_LOAD_REPORT_INTERVAL
        );
        w.load_report_interval = Some(prost_types::Duration {
            seconds: -3,
            nanos: 0,
        });
        assert_eq!(
            w.load_report_interval_or_default(),
            DEFAULT_LOAD_REPORT_INTERVAL
        );
        w.load_report_interval = Some(prost_types::Duration {
            seconds: 2,
            nanos: 500_000_000,
        });
        assert_eq!(
            w.load_report_interval_or_default(),
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn handoff_limit_defaults_when_zero() {
        assert_eq!(
            v1::ListHandoffsRequest { limit: 0 }.effective_limit(),
            DEFAULT_HANDOFF_LIMIT
        );
        assert_eq!(v1::ListHandoffsRequest { limit: 5 }.effective_limit(), 5);
    }

    #[test]
    fn locate_request_constructors_set_the_oneof() {
        assert_eq!(
            v1::LocateRequest::namespace("team-a").key,
            Some(v1::locate_request::Key::Namespace("team-a".into()))
        );
        let t = v1::LocateRequest::tenant("tenants", "reg", "acme");
        assert!(matches!(t.key, Some(v1::locate_request::Key::Tenant(ref k))
            if k.registry_namespace == "tenants" && k.registry_name == "reg" && k.uid == "acme"));
    }
}
