//! devcluster has no kubelet, yet workloads become Ready: kube-scheduler places their pods on
//! kwok's fake Nodes and kwok plays the kubelet (pods Running and Ready; pods of Jobs Succeed).
//! A Deployment becomes Available, a StatefulSet gets ready replicas, a Job completes.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::future::Future;
use std::time::{Duration, Instant};

use devcluster::cluster::kwok;
use devcluster::testing::PrivateCluster;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde::de::DeserializeOwned;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

fn from_json<T: DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

fn pod_template(app: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
    })
}

/// Polls `check` until it yields `Some`, failing with what `describe` says about the cluster.
async fn wait_for<T, F, Fut>(what: &str, cluster: &PrivateCluster, ns: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    while started.elapsed() < TIMEOUT {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let client = cluster.endpoints().admin_client().await.unwrap();
    let pods: Vec<String> = Api::<Pod>::namespaced(client, ns)
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|p| {
                    format!(
                        "{} node={:?} status={}",
                        p.metadata.name.as_deref().unwrap_or("?"),
                        p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
                        serde_json::to_string(&p.status).unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let layout = cluster.layout();
    panic!(
        "{what} not reached within {TIMEOUT:?}\npods in {ns}:\n{}\n--- kwok log ---\n{}\n--- kube-scheduler log ---\n{}\n--- kube-controller-manager log ---\n{}",
        pods.join("\n"),
        devcluster::cluster::log_tail(layout, "kwok", 20),
        devcluster::cluster::log_tail(layout, "kube-scheduler", 20),
        devcluster::cluster::log_tail(layout, "kube-controller-manager", 20),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_statefulsets_and_jobs_become_ready_without_a_kubelet() {
    let t0 = Instant::now();
    let cluster = PrivateCluster::start(false)
        .await
        .expect("private devcluster starts");
    eprintln!("private devcluster started in {:.1?}", t0.elapsed());
    let target = cluster.target();
    let client = target.client().await.unwrap();

    // The fake Nodes are Ready and schedulable.
    let nodes: Vec<Node> = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .unwrap()
        .items;
    assert_eq!(nodes.len(), kwok::FAKE_NODES);
    for node in &nodes {
        let status = node.status.as_ref().unwrap();
        assert!(
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            "{:?} not Ready: {status:?}",
            node.metadata.name
        );
        assert_eq!(
            status.allocatable.as_ref().unwrap()["pods"].0,
            kwok::NODE_PODS
        );
        assert!(node.spec.as_ref().unwrap().taints.is_none(), "{node:?}");
    }

    let ns = target.namespace("workloads").await.unwrap();
    let pp = PostParams::default();
    let t1 = Instant::now();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &pp,
            &from_json(json!({
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": pod_template("web"),
                },
            })),
        )
        .await
        .unwrap();

    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    statefulsets
        .create(
            &pp,
            &from_json(json!({
                "metadata": {"name": "db"},
                "spec": {
                    "replicas": 2,
                    "serviceName": "db",
                    "selector": {"matchLabels": {"app": "db"}},
                    "template": pod_template("db"),
                },
            })),
        )
        .await
        .unwrap();

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let mut job_template = pod_template("batch");
    job_template["spec"]["restartPolicy"] = json!("Never");
    jobs.create(
        &pp,
        &from_json(json!({
            "metadata": {"name": "batch"},
            "spec": {"completions": 2, "parallelism": 2, "backoffLimit": 0, "template": job_template},
        })),
    )
    .await
    .unwrap();

    wait_for(
        "Deployment web with 2 available replicas",
        &cluster,
        &ns,
        || async {
            let d = deployments.get("web").await.ok()?;
            let s = d.status?;
            (s.available_replicas == Some(2) && s.ready_replicas == Some(2)).then_some(())
        },
    )
    .await;
    eprintln!("Deployment available after {:.1?}", t1.elapsed());

    wait_for(
        "StatefulSet db with 2 ready replicas",
        &cluster,
        &ns,
        || async {
            let s = statefulsets.get("db").await.ok()?.status?;
            (s.ready_replicas == Some(2)).then_some(())
        },
    )
    .await;
    eprintln!("StatefulSet ready after {:.1?}", t1.elapsed());

    wait_for(
        "Job batch Complete with 2 succeeded",
        &cluster,
        &ns,
        || async {
            let s = jobs.get("batch").await.ok()?.status?;
            let complete = s
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Complete" && c.status == "True");
            (complete && s.succeeded == Some(2)).then_some(())
        },
    )
    .await;
    eprintln!("Job complete after {:.1?}", t1.elapsed());

    // The pods ran on the fake Nodes, with IPs from their pod CIDRs.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("app in (web,db)"))
        .await
        .unwrap()
        .items;
    assert_eq!(pods.len(), 4);
    for pod in &pods {
        let node = pod.spec.as_ref().unwrap().node_name.as_deref().unwrap();
        assert!(node.starts_with("kwok-node-"), "{node}");
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let ip = status.pod_ip.as_deref().unwrap();
        assert!(ip.starts_with("10.244."), "{ip}");
    }

    // Deleting the namespace removes the pods (kwok deletes pods that are being deleted).
    target.delete_namespace(&ns).await.unwrap();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "pods of the deleted namespace gone",
        &cluster,
        &ns,
        || async {
            let left = pods_api.list(&ListParams::default()).await.ok()?;
            left.items.is_empty().then_some(())
        },
    )
    .await;
    // kube-scheduler's own identity has every permission it uses.
    let scheduler_log = std::fs::read_to_string(cluster.layout().log("kube-scheduler")).unwrap();
    assert!(!scheduler_log.contains("forbidden"), "{scheduler_log}");
    eprintln!("whole test took {:.1?}", t0.elapsed());
}
