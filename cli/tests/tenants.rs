//! `ktctl tenants` against a real API server (devcluster, or the `--kubeconfig` cluster of
//! `cargo xtask test`; the CRDs installed) with an in-process coordinator admin API serving a
//! known bucket map.
//!
//! The Tenants are created directly, in a namespace exempt from our admission webhook and with
//! bucket labels beyond any real bucket map (1024 buckets), so no worker of a running system
//! reconciles them (one would rewrite their status) and the webhook does not relabel them. The
//! registry reads an SQLite file that does not exist: a running coordinator then changes none of
//! its Tenants, only its status, which is therefore only checked for its fixed part.
#![allow(
    clippy::unwrap_used,
    reason = "test fixtures: a failed setup step should fail the test loudly"
)]

use api::{Tenant, TenantRegistry};
use clap::Parser as _;
use kube::api::{Api, Patch, PatchParams, PostParams};
mod common;

use proto::v1::admin_service_server::AdminService;
use proto::v1::{self, BucketState};
use serde_json::json;
use tonic::{Request, Response, Status};

/// Buckets no real map has.
const BUCKET_A: u32 = 100_000;
const BUCKET_B: u32 = 100_001;

/// A coordinator whose map gives BUCKET_A to worker-7 and leaves BUCKET_B unassigned.
struct Canned;

#[tonic::async_trait]
impl AdminService for Canned {
    async fn list_workers(
        &self,
        _: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn get_bucket_map(
        &self,
        _: Request<v1::GetBucketMapRequest>,
    ) -> Result<Response<v1::GetBucketMapResponse>, Status> {
        let assignment = |bucket: u32, owner: &str| v1::BucketAssignment {
            bucket,
            owner: owner.into(),
            state: if owner.is_empty() {
                BucketState::Unassigned
            } else {
                BucketState::Owned
            } as i32,
            ..Default::default()
        };
        Ok(Response::new(v1::GetBucketMapResponse {
            bucket_count: BUCKET_B + 1,
            leader_id: "coordinator-0".into(),
            buckets: vec![assignment(BUCKET_A, "worker-7"), assignment(BUCKET_B, "")],
            ..Default::default()
        }))
    }
    async fn locate(
        &self,
        _: Request<v1::LocateRequest>,
    ) -> Result<Response<v1::LocateResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn list_handoffs(
        &self,
        _: Request<v1::ListHandoffsRequest>,
    ) -> Result<Response<v1::ListHandoffsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn drain_worker(
        &self,
        _: Request<v1::DrainWorkerRequest>,
    ) -> Result<Response<v1::DrainWorkerResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn rebalance(
        &self,
        _: Request<v1::RebalanceRequest>,
    ) -> Result<Response<v1::RebalanceResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// ktctl in process: (exit code 0/1, stdout, stderr).
fn ktctl(args: &[&str]) -> (u8, String, String) {
    let mut argv = vec!["ktctl"];
    argv.extend_from_slice(args);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = ktctl::run(ktctl::Args::parse_from(argv), &mut out, &mut err);
    (
        u8::from(code != std::process::ExitCode::SUCCESS),
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn registry(name: &str) -> TenantRegistry {
    serde_json::from_value(json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1",
        "kind": "TenantRegistry",
        "metadata": {"name": name},
        "spec": {
            "source": {
                "type": "sqlite",
                "syncInterval": "1h",
                "sqlite": {"path": "/nonexistent/ktctl-test/tenants.db", "table": "tenants"}
            },
            "valueMappings": {"uid": "id", "activate": "is_active"}
        }
    }))
    .unwrap()
}

fn tenant(registry: &str, uid: &str, template: &str, bucket: u32) -> Tenant {
    serde_json::from_value(json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1",
        "kind": "Tenant",
        "metadata": {
            "name": format!("{uid}-{template}"),
            "labels": {
                "kubernetes-tenants.org/registry": registry,
                "kubernetes-tenants.org/uid": uid,
                "kubetemplater.io/bucket": bucket.to_string()
            }
        },
        "spec": {"uid": uid, "templateRef": template}
    }))
    .unwrap()
}

fn columns(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn a_registrys_tenants_with_bucket_owner_and_readiness() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let target = runtime.block_on(devcluster::testing::target()).unwrap();
    let ns = runtime
        .block_on(target.namespace_without_admission("ktctl-tenants"))
        .unwrap();
    let client = runtime.block_on(target.client()).unwrap();
    let registries: Api<TenantRegistry> = Api::namespaced(client.clone(), &ns);
    let tenants: Api<Tenant> = Api::namespaced(client, &ns);
    runtime.block_on(async {
        for name in ["reg", "other"] {
            registries
                .create(&PostParams::default(), &registry(name))
                .await
                .unwrap();
        }
        for t in [
            tenant("reg", "bravo", "web", BUCKET_B),
            tenant("reg", "alpha", "web", BUCKET_A),
            tenant("reg", "alpha", "api", BUCKET_A),
            tenant("other", "zulu", "web", BUCKET_A),
        ] {
            tenants.create(&PostParams::default(), &t).await.unwrap();
        }
        let ready = |status: &str, reason: &str, message: &str, ready: i32| {
            json!({"status": {
                "readyResources": ready, "desiredResources": 4, "failedResources": 4 - ready,
                "conditions": [{
                    "type": "Ready", "status": status, "reason": reason, "message": message,
                    "lastTransitionTime": "2026-01-01T00:00:00Z"
                }]
            }})
        };
        for (name, status) in [
            (
                "alpha-web",
                ready("True", "Reconciled", "all 4 resources are ready", 4),
            ),
            (
                "bravo-web",
                ready(
                    "False",
                    "ResourcesFailed",
                    "1 failed: Deployment x/y: boom",
                    3,
                ),
            ),
        ] {
            tenants
                .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
                .await
                .unwrap();
        }
    });

    let server = common::serve(&runtime, Canned);
    let url = server.url.clone();
    let ca = server.ca_path();
    let kubeconfig = target.kubeconfig.to_string_lossy().into_owned();
    let base = [
        "--kubeconfig",
        kubeconfig.as_str(),
        "-n",
        ns.as_str(),
        "--ca-file",
        ca.as_str(),
    ];

    // People: sorted by uid then template, owners from the map, readiness from the status.
    let mut args = vec!["--coordinator", url.as_str(), "tenants", "reg"];
    args.extend_from_slice(&base);
    let (code, out, err) = ktctl(&args);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(&format!("TenantRegistry {ns}/reg (sqlite): ")),
        "{out}"
    );
    assert_eq!(
        columns(lines[1]),
        [
            "UID",
            "TENANT",
            "TEMPLATE",
            "BUCKET",
            "WORKER",
            "READY",
            "REASON",
            "RESOURCES",
            "MESSAGE"
        ],
        "{out}"
    );
    let a = BUCKET_A.to_string();
    let b = BUCKET_B.to_string();
    assert_eq!(
        columns(lines[2]),
        ["alpha", "alpha-api", "api", &a, "worker-7", "-", "-", "-"],
        "{out}"
    );
    assert_eq!(
        columns(lines[3]),
        [
            "alpha",
            "alpha-web",
            "web",
            &a,
            "worker-7",
            "True",
            "Reconciled",
            "4/4"
        ],
        "{out}"
    );
    assert!(
        lines[4].starts_with("bravo")
            && columns(lines[4])[..8]
                == [
                    "bravo",
                    "bravo-web",
                    "web",
                    &b,
                    "-",
                    "False",
                    "ResourcesFailed",
                    "3/4"
                ]
            && lines[4].ends_with("(1 failed)  1 failed: Deployment x/y: boom"),
        "{out}"
    );
    assert_eq!(
        lines.len(),
        5,
        "the other registry's Tenant is not listed:\n{out}"
    );

    // Scripts.
    let mut args = vec![
        "--coordinator",
        url.as_str(),
        "--format",
        "json",
        "tenants",
        "reg",
    ];
    args.extend_from_slice(&base);
    let (code, out, _) = ktctl(&args);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["registry"]["name"], "reg");
    assert_eq!(v["workersKnown"], true);
    assert_eq!(v["tenants"][1]["worker"], "worker-7");
    assert_eq!(v["tenants"][1]["ready"]["reason"], "Reconciled");
    assert_eq!(v["tenants"][2]["worker"], serde_json::Value::Null);

    // No coordinator: the WORKER column is `?`, with a warning, and the command succeeds.
    let mut args = vec!["--coordinator", "http://127.0.0.1:1", "tenants", "reg"];
    args.extend_from_slice(&base);
    let (code, out, err) = ktctl(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().skip(2).all(|l| columns(l)[4] == "?"), "{out}");
    assert!(
        err.contains("warning: the WORKER column is unknown (?)")
            && err.contains("http://127.0.0.1:1"),
        "{err}"
    );

    // A registry that does not exist is named with its namespace.
    let mut args = vec!["--coordinator", url.as_str(), "tenants", "nope"];
    args.extend_from_slice(&base);
    let (code, out, err) = ktctl(&args);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(&format!("TenantRegistry {ns}/nope not found")),
        "{err}"
    );

    runtime.block_on(target.delete_namespace(&ns)).unwrap();
}
