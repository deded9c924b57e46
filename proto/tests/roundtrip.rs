//! Every envelope and admin message survives encode → decode unchanged, and the descriptor set
//! describes both services.

use prost::Message;
use prost_types::{Duration, FileDescriptorSet, Timestamp};
use proto::v1::{
    BucketAssignment, BucketMove, BucketObjects, BucketState, CoordinatorMessage,
    DrainWorkerResponse, GetBucketMapResponse, Grant, Handoff, HandoffOutcome, HandoffReason,
    Hello, Leaving, ListHandoffsResponse, ListWorkersResponse, Load, LocateRequest, LocateResponse,
    RebalanceResponse, Released, Revoke, Welcome, WorkerInfo, WorkerMessage, WorkerState,
    coordinator_message, worker_message,
};
use proto::{FILE_DESCRIPTOR_SET, bucket_epochs};

fn roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) -> M {
    let bytes = message.encode_to_vec();
    let decoded = M::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(&decoded, message);
    decoded
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn load() -> Load {
    Load {
        queue_depth: 12,
        objects_owned: 3_000,
        bucket_objects: vec![
            BucketObjects {
                bucket: 1,
                objects: 1_000,
            },
            BucketObjects {
                bucket: 1023,
                objects: 2_000,
            },
        ],
        in_flight: 4,
        reconciles_per_second: 17.5,
    }
}

#[test]
fn worker_messages_roundtrip() {
    let messages: Vec<WorkerMessage> = vec![
        Hello {
            worker_id: "worker-7f9c".into(),
            lease_namespace: "kubetemplater-system".into(),
            held: bucket_epochs([(0, 1), (511, u64::MAX), (u32::MAX, 9)]),
            bucket_count: 1024,
            version: "0.1.0".into(),
        }
        .into(),
        Released {
            buckets: bucket_epochs([(3, 7), (4, 7)]),
            handoff_id: "h-42".into(),
            release_duration: Some(Duration {
                seconds: 1,
                nanos: 250_000_000,
            }),
        }
        .into(),
        WorkerMessage::from(load()).with_trace_context([("traceparent", TRACEPARENT)]),
        Leaving {
            reason: "SIGTERM".into(),
        }
        .into(),
    ];
    let mut kinds = Vec::new();
    for message in &messages {
        let decoded = roundtrip(message);
        kinds.push(match decoded.kind.expect("kind set") {
            worker_message::Kind::Hello(_) => "hello",
            worker_message::Kind::Released(_) => "released",
            worker_message::Kind::Load(_) => "load",
            worker_message::Kind::Leaving(_) => "leaving",
        });
    }
    assert_eq!(kinds, ["hello", "released", "load", "leaving"]);
    assert_eq!(
        roundtrip(&messages[2]).trace_context["traceparent"],
        TRACEPARENT
    );
}

#[test]
fn coordinator_messages_roundtrip() {
    let messages: Vec<CoordinatorMessage> = vec![
        Welcome {
            coordinator_id: "coordinator-0".into(),
            leader_epoch: 3,
            bucket_count: 1024,
            load_report_interval: Some(Duration {
                seconds: 10,
                nanos: 0,
            }),
        }
        .into(),
        Grant {
            buckets: bucket_epochs([(3, 8), (4, 8)]),
            handoff_id: "h-42".into(),
        }
        .into(),
        CoordinatorMessage::from(Revoke {
            buckets: bucket_epochs([(3, 7), (4, 7)]),
            handoff_id: "h-42".into(),
            reason: HandoffReason::Rebalance.into(),
        })
        .with_trace_context([("traceparent", TRACEPARENT), ("tracestate", "k=v")]),
    ];
    let mut kinds = Vec::new();
    for message in &messages {
        let decoded = roundtrip(message);
        kinds.push(match decoded.kind.expect("kind set") {
            coordinator_message::Kind::Welcome(_) => "welcome",
            coordinator_message::Kind::Grant(_) => "grant",
            coordinator_message::Kind::Revoke(r) => {
                assert_eq!(r.reason(), HandoffReason::Rebalance);
                "revoke"
            }
        });
    }
    assert_eq!(kinds, ["welcome", "grant", "revoke"]);
}

#[test]
fn an_envelope_without_kind_decodes_as_none() {
    // What a receiver sees for a kind added by a later version: it ignores the message.
    let decoded = WorkerMessage::decode(&[][..]).expect("decodes");
    assert!(decoded.kind.is_none());
}

#[test]
fn admin_messages_roundtrip() {
    let at = |seconds| Some(Timestamp { seconds, nanos: 0 });
    roundtrip(&ListWorkersResponse {
        workers: vec![WorkerInfo {
            id: "worker-a".into(),
            lease_namespace: "kubetemplater-system".into(),
            lease_holder: "worker-a".into(),
            lease_renew_time: at(1_700_000_000),
            lease_expiry: at(1_700_000_015),
            state: WorkerState::Draining.into(),
            buckets_owned: 341,
            load: Some(load()),
            load_received_at: at(1_700_000_001),
            connected: true,
            version: "0.1.0".into(),
            draining_reason: "SIGTERM".into(),
        }],
    });
    roundtrip(&GetBucketMapResponse {
        bucket_count: 2,
        leader_id: "coordinator-1".into(),
        leader_epoch: 5,
        map_version: 77,
        buckets: vec![
            BucketAssignment {
                bucket: 0,
                owner: "worker-a".into(),
                epoch: 4,
                objects: 10,
                state: BucketState::Revoking.into(),
                next_owner: "worker-b".into(),
                handoff_id: "h-1".into(),
            },
            BucketAssignment {
                bucket: 1,
                state: BucketState::Unassigned.into(),
                ..Default::default()
            },
        ],
    });
    roundtrip(&LocateRequest::namespace("team-a"));
    roundtrip(&LocateRequest::tenant("tenants", "registry", "acme"));
    roundtrip(&LocateResponse {
        bucket: 513,
        owner: "worker-b".into(),
        epoch: 2,
        shard_key: "tenants/registry/acme".into(),
        state: BucketState::Owned.into(),
    });
    roundtrip(&ListHandoffsResponse {
        handoffs: vec![Handoff {
            id: "h-1".into(),
            buckets: bucket_epochs([(0, 5)]),
            from: "worker-a".into(),
            to: "worker-b".into(),
            reason: HandoffReason::Drain.into(),
            started_at: at(10),
            revoked_at: at(10),
            released_at: None,
            granted_at: at(25),
            duration: Some(Duration {
                seconds: 15,
                nanos: 0,
            }),
            outcome: HandoffOutcome::LeaseExpired.into(),
            detail: String::new(),
        }],
    });
    let moves = vec![BucketMove {
        bucket: 9,
        from: "worker-a".into(),
        to: String::new(),
        epoch: 1,
        objects: 3,
    }];
    roundtrip(&DrainWorkerResponse {
        moves: moves.clone(),
    });
    roundtrip(&RebalanceResponse {
        moves,
        dry_run: true,
    });
}

#[test]
fn descriptor_set_describes_both_services_with_comments() {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
    for expected in [
        "kubetemplater/v1/worker.proto",
        "kubetemplater/v1/admin.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/duration.proto",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let services: Vec<(String, Vec<String>)> = set
        .file
        .iter()
        .filter(|f| f.package() == "kubetemplater.v1")
        .flat_map(|f| &f.service)
        .map(|s| {
            (
                s.name().to_owned(),
                s.method.iter().map(|m| m.name().to_owned()).collect(),
            )
        })
        .collect();
    assert!(services.contains(&("WorkerService".into(), vec!["Session".into()])));
    assert!(
        services.contains(&(
            "AdminService".into(),
            [
                "ListWorkers",
                "GetBucketMap",
                "Locate",
                "ListHandoffs",
                "DrainWorker",
                "Rebalance"
            ]
            .map(String::from)
            .to_vec()
        ))
    );
    let session = set
        .file
        .iter()
        .flat_map(|f| &f.service)
        .flat_map(|s| &s.method)
        .find(|m| m.name() == "Session")
        .expect("Session method");
    assert!(session.client_streaming() && session.server_streaming());
    let worker = set
        .file
        .iter()
        .find(|f| f.name() == "kubetemplater/v1/worker.proto")
        .expect("worker.proto");
    assert!(
        worker
            .source_code_info
            .as_ref()
            .is_some_and(|info| info.location.iter().any(|l| l.leading_comments.is_some())),
        "comments are kept for reflection"
    );
}
