//! `ktctl workers | buckets | locate | drain` against an in-process admin API with a known map.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use clap::Parser as _;
mod common;

use common::TlsServer;
use proto::v1::admin_service_server::AdminService;
use proto::v1::{self, BucketState, WorkerState};
use tonic::{Request, Response, Status};

struct Canned;

/// The credentials ktctl sent: `ops-token` may do everything, `viewer-token` may only read.
fn authorized<T>(request: &Request<T>, changes: bool) -> Result<(), Status> {
    match request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        Some("Bearer ops-token") => Ok(()),
        Some("Bearer viewer-token") if !changes => Ok(()),
        Some("Bearer viewer-token") => Err(Status::permission_denied(
            "user \"viewer\" lacks permission `update shards.kubetemplater.io in namespace \"kubetemplater-system\"`, which DrainWorker needs",
        )),
        other => Err(Status::unauthenticated(format!(
            "unexpected credentials {other:?}"
        ))),
    }
}

fn assignment(bucket: u32, owner: &str, state: BucketState) -> v1::BucketAssignment {
    v1::BucketAssignment {
        bucket,
        owner: owner.into(),
        epoch: 2,
        objects: 10,
        state: state as i32,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl AdminService for Canned {
    async fn list_workers(
        &self,
        request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        authorized(&request, false)?;
        Ok(Response::new(v1::ListWorkersResponse {
            workers: vec![v1::WorkerInfo {
                id: "worker-0".into(),
                state: WorkerState::Alive as i32,
                connected: true,
                buckets_owned: 3,
                load: Some(v1::Load {
                    objects_owned: 30,
                    queue_depth: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }))
    }
    async fn get_bucket_map(
        &self,
        request: Request<v1::GetBucketMapRequest>,
    ) -> Result<Response<v1::GetBucketMapResponse>, Status> {
        authorized(&request, false)?;
        Ok(Response::new(v1::GetBucketMapResponse {
            bucket_count: 6,
            leader_id: "coordinator-1".into(),
            leader_epoch: 4,
            map_version: 0,
            buckets: vec![
                assignment(0, "worker-0", BucketState::Owned),
                assignment(1, "worker-0", BucketState::Owned),
                assignment(2, "worker-0", BucketState::Revoking),
                assignment(3, "worker-1", BucketState::Owned),
                assignment(4, "worker-1", BucketState::Owned),
                assignment(5, "", BucketState::Unassigned),
            ],
        }))
    }
    async fn locate(
        &self,
        r: Request<v1::LocateRequest>,
    ) -> Result<Response<v1::LocateResponse>, Status> {
        authorized(&r, false)?;
        let Some(v1::locate_request::Key::Namespace(ns)) = r.into_inner().key else {
            return Err(Status::invalid_argument("ns"));
        };
        Ok(Response::new(v1::LocateResponse {
            bucket: 3,
            owner: "worker-1".into(),
            epoch: 2,
            shard_key: ns,
            state: BucketState::Owned as i32,
        }))
    }
    async fn list_handoffs(
        &self,
        request: Request<v1::ListHandoffsRequest>,
    ) -> Result<Response<v1::ListHandoffsResponse>, Status> {
        authorized(&request, false)?;
        Ok(Response::new(v1::ListHandoffsResponse::default()))
    }
    async fn drain_worker(
        &self,
        request: Request<v1::DrainWorkerRequest>,
    ) -> Result<Response<v1::DrainWorkerResponse>, Status> {
        authorized(&request, true)?;
        Ok(Response::new(v1::DrainWorkerResponse {
            moves: (0..3)
                .map(|b| v1::BucketMove {
                    bucket: b,
                    from: "worker-0".into(),
                    ..Default::default()
                })
                .collect(),
        }))
    }
    async fn rebalance(
        &self,
        request: Request<v1::RebalanceRequest>,
    ) -> Result<Response<v1::RebalanceResponse>, Status> {
        authorized(&request, true)?;
        Err(Status::unimplemented("not in this test"))
    }
}

fn ktctl(server: &TlsServer, url: &str, args: &[&str]) -> (u8, String, String) {
    ktctl_as(server, "ops-token", url, args)
}

fn ktctl_as(server: &TlsServer, token: &str, url: &str, args: &[&str]) -> (u8, String, String) {
    let ca = server.ca_path();
    let mut argv = vec![
        "ktctl",
        "--coordinator",
        url,
        "--token",
        token,
        "--ca-file",
        &ca,
    ];
    argv.extend_from_slice(args);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = ktctl::run(ktctl::Args::parse_from(argv), &mut out, &mut err);
    let code = if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    };
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn admin_commands_print_for_people() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = common::serve(&runtime, Canned);
    let url = server.url.as_str();

    let (code, out, _) = ktctl(&server, url, &["buckets"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("6 buckets, leader coordinator-1 (term 4)"),
        "{out}"
    );
    let worker0 = out.lines().find(|l| l.starts_with("worker-0")).unwrap();
    assert!(
        worker0.contains(" 3 ") && worker0.contains("30") && worker0.ends_with("0-2"),
        "{worker0}"
    );
    assert!(out.contains("(unassigned)"), "{out}");

    let (_, out, _) = ktctl(&server, url, &["buckets", "--wide"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("2 ") && l.contains("revoking")),
        "{out}"
    );

    let (_, out, _) = ktctl(&server, url, &["locate", "team-a"]);
    assert_eq!(
        out.trim(),
        "namespace team-a -> bucket 3 -> worker-1 (epoch 2, owned)"
    );

    let (_, out, _) = ktctl(&server, url, &["workers"]);
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["worker-0", "alive", "yes", "3", "30", "2"],
        "{out}"
    );

    let (_, out, _) = ktctl(&server, url, &["--format", "json", "locate", "team-a"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["owner"], "worker-1");

    let (_, out, _) = ktctl(&server, url, &["drain", "worker-0"]);
    assert_eq!(out.trim(), "draining worker-0: 3 bucket(s) moving: 0-2");

    // The coordinator's refusal is printed as it is, and no other address is tried.
    let (code, out, err) = ktctl_as(
        &server,
        "viewer-token",
        &format!("{url},http://127.0.0.1:1"),
        &["drain", "worker-0"],
    );
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("PermissionDenied")
            && err.contains("lacks permission `update shards.kubetemplater.io")
            && !err.contains("127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn an_unreachable_coordinator_is_named() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = common::serve(&runtime, Canned);
    let (code, _, err) = ktctl(&server, "http://127.0.0.1:1,127.0.0.1:2", &["buckets"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no coordinator answered as leader")
            && err.contains("cannot reach http://127.0.0.1:1")
            && err.contains("cannot reach 127.0.0.1:2"),
        "{err}"
    );
}
