//! A private control plane starts on free ports, serves, and stops without leaving processes.

use devcluster::testing::PrivateCluster;

#[tokio::test(flavor = "multi_thread")]
async fn private_cluster_starts_serves_and_stops_cleanly() {
    let cluster = PrivateCluster::start(false)
        .await
        .expect("private devcluster starts");
    let endpoints = cluster.endpoints().clone();
    assert_eq!(
        endpoints
            .processes
            .iter()
            .map(|p| p.component.as_str())
            .collect::<Vec<_>>(),
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kwok",
            "kube-scheduler"
        ]
    );
    assert!(endpoints.is_live().await);

    let client = endpoints.admin_client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        version.git_version,
        devcluster::toolchain::KUBERNETES_VERSION
    );

    // The test identity authenticates and gets nothing RBAC does not grant it.
    let e2e = devcluster::cluster::client_from_kubeconfig(&endpoints.kubeconfig_for("e2e"))
        .await
        .unwrap();
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::all(e2e);
    let err = secrets
        .list(&Default::default())
        .await
        .expect_err("RBAC refuses the e2e identity");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 403),
        "{err}"
    );

    drop(cluster);
    for p in &endpoints.processes {
        assert!(
            !p.is_alive(),
            "{} (pid {}) still running after stop",
            p.component,
            p.pid
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn private_cluster_with_jaeger_serves_the_query_api_on_loopback() {
    let cluster = PrivateCluster::start(true)
        .await
        .expect("private devcluster with Jaeger starts");
    let jaeger = cluster
        .endpoints()
        .jaeger
        .clone()
        .expect("jaeger endpoints");
    assert!(jaeger.query.starts_with("http://127.0.0.1:"));
    let services: serde_json::Value = reqwest::get(format!("{}/api/services", jaeger.query))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        services["data"].is_array() || services["data"].is_null(),
        "{services}"
    );
    let pids: Vec<_> = cluster.endpoints().processes.clone();
    assert_eq!(
        pids.len(),
        6,
        "the control plane, kwok, kube-scheduler and Jaeger"
    );
    drop(cluster);
    assert!(pids.iter().all(|p| !p.is_alive()));
}
