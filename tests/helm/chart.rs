//! The Helm chart users install (deploy/helm/kubetemplater), checked with the real Helm built from
//! its Go module: it lints; bad values are refused with a message that names them; its rendered
//! objects pass a server-side dry run in a namespace that enforces the `restricted` Pod Security
//! level, without a warning; and a real `helm install` into a private devcluster succeeds with
//! every Deployment Available (kwok runs the pods) and the HPA accepted; the chart's identities
//! (ServiceAccount tokens from the TokenRequest API) are refused what they must not do (a worker
//! writing in the release namespace other than Leases, the webhook writing KubeTemplates); an
//! upgrade keeps the worker count the HPA set.
//!
//! A private cluster, so the chart's webhook configurations (whose pods answer nothing under kwok)
//! never see the shared cluster's requests.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use devcluster::layout::{Layout, repo_root};
use devcluster::testing::PrivateCluster;
use devcluster::toolchain::{self, Tool};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const RELEASE: &str = "kt";
const NAMESPACE: &str = "kubetemplater";

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/kubetemplater")
}

/// Helm built from `devcluster/go/helm`, with its caches in `home` (nothing in the user's).
fn helm(home: &Path) -> Command {
    let layout = Layout::shared();
    toolchain::ensure_built(&layout, Tool::Helm).unwrap();
    let mut cmd = Command::new(toolchain::binary_or_path(&layout, "helm"));
    for (var, dir) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        cmd.env(var, home.join(dir));
    }
    cmd
}

/// A token for a ServiceAccount of the release, from the TokenRequest API (what its pods get).
async fn token(client: &kube::Client, service_account: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 600}
    }))
    .unwrap();
    let answer: TokenRequest = accounts
        .create_subresource("token", service_account, &PostParams::default(), &request)
        .await
        .unwrap();
    answer.status.unwrap().token.unwrap()
}

/// A client for the cluster of `kubeconfig` that authenticates with `token`.
async fn client_for(kubeconfig: &Path, token: &str) -> kube::Client {
    let file = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_owned().into()),
        ..Default::default()
    };
    kube::Client::try_from(config).unwrap()
}

fn run(mut cmd: Command) -> Output {
    let output = cmd.output().unwrap();
    eprintln!(
        "{cmd:?}\n{}{}",
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn the_chart_lints_and_refuses_bad_values() {
    let home = tempfile::tempdir().unwrap();
    let mut lint = helm(home.path());
    lint.args(["lint", "--strict"]).arg(chart());
    let output = run(lint);
    assert!(output.status.success(), "helm lint --strict failed");

    for (set, message) in [
        (
            "webhook.failurePolicy=Sometimes",
            "webhook.failurePolicy must be Fail or Ignore",
        ),
        (
            "webhook.timeoutSeconds=31",
            "webhook.timeoutSeconds must be between 1 and 30",
        ),
        (
            "webhook.certificate.mode=provided",
            "webhook.certificate.provided.secretName is required",
        ),
    ] {
        let mut template = helm(home.path());
        template
            .args(["template", RELEASE, "--namespace", NAMESPACE, "--set", set])
            .arg(chart());
        let output = run(template);
        assert!(!output.status.success(), "{set} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{set}: {stderr}");
    }
}

/// The RBAC objects and admission policies of YAML documents, keyed by kind and name, with rule
/// lists and subject lists as sets (their order means nothing).
fn access_objects(yaml: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    use serde::Deserialize as _;
    const KINDS: [&str; 6] = [
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    let sorted = |v: &serde_json::Value| {
        let mut items: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i.to_string())
            .collect();
        items.sort();
        serde_json::json!(items)
    };
    let mut out = std::collections::BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc).unwrap();
        let kind = value["kind"].as_str().unwrap_or_default();
        if !KINDS.contains(&kind) {
            continue;
        }
        let key = format!("{kind}/{}", value["metadata"]["name"].as_str().unwrap());
        let essence = match kind {
            "Role" | "ClusterRole" => serde_json::json!({"rules": sorted(&value["rules"])}),
            "RoleBinding" | "ClusterRoleBinding" => serde_json::json!({
                "roleRef": value["roleRef"], "subjects": sorted(&value["subjects"]),
            }),
            _ => value["spec"].clone(),
        };
        out.insert(key, essence);
    }
    out
}

/// devcluster runs the components under the chart's ServiceAccounts with devcluster's RBAC
/// (deploy/devcluster); the e2e suites prove that RBAC sufficient only if it is the chart's.
/// Rendered with the names devcluster uses, every Role, binding and admission policy of the
/// components is the same in both (the chart's shard roles carry aggregation labels and a
/// release prefix, so they are compared by rules).
#[test]
fn devcluster_runs_the_components_with_the_charts_rbac() {
    let home = tempfile::tempdir().unwrap();
    let mut template = helm(home.path());
    template
        .args([
            "template",
            "kubetemplater",
            "--namespace",
            "kubetemplater-system",
            "--kube-version",
            "1.36.0",
            "--set",
            "fullnameOverride=kubetemplater",
        ])
        .arg(chart());
    let output = run(template);
    assert!(output.status.success(), "helm template failed");
    let chart = access_objects(&String::from_utf8(output.stdout).unwrap());

    let mut devcluster_yaml = String::new();
    let dir = repo_root().join("deploy/devcluster");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        devcluster_yaml.push_str(&std::fs::read_to_string(file).unwrap());
        devcluster_yaml.push_str("\n---\n");
    }
    let devcluster = access_objects(&devcluster_yaml);

    assert!(!devcluster.is_empty());
    for (key, ours) in &devcluster {
        let theirs = chart
            .get(key)
            .unwrap_or_else(|| panic!("the chart renders no {key}"));
        assert_eq!(
            ours, theirs,
            "{key} differs between deploy/devcluster and the chart"
        );
    }
    let components: Vec<&String> = chart
        .keys()
        .filter(|k| !k.contains("shards-"))
        .filter(|k| !devcluster.contains_key(*k))
        .collect();
    assert!(
        components.is_empty(),
        "the chart grants what devcluster does not: {components:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_installs_under_restricted_pod_security() {
    let home = tempfile::tempdir().unwrap();
    let cluster = PrivateCluster::start(false).await.unwrap();
    let kubeconfig = cluster.endpoints().kubeconfig.clone();
    let client = cluster.endpoints().admin_client().await.unwrap();

    // The release namespace enforces (and warns about) the restricted level.
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": NAMESPACE, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted"
        }}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();

    // Rendered objects (CRDs included) pass a server-side dry run without a warning.
    let mut template = helm(home.path());
    template
        .args([
            "template",
            RELEASE,
            "--namespace",
            NAMESPACE,
            "--include-crds",
        ])
        .arg(chart());
    let rendered = run(template);
    assert!(rendered.status.success(), "helm template failed");
    let layout = Layout::shared();
    let mut apply = Command::new(toolchain::binary_or_path(&layout, "kubectl"));
    apply
        .env("KUBECONFIG", &kubeconfig)
        .args(["apply", "--dry-run=server", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = apply.spawn().unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&rendered.stdout).unwrap();
    }
    let dry_run = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&dry_run.stdout);
    let stderr = String::from_utf8_lossy(&dry_run.stderr);
    eprintln!("kubectl apply --dry-run=server:\n{stdout}{stderr}");
    assert!(dry_run.status.success(), "dry run refused: {stderr}");
    assert!(
        !stderr.contains("Warning"),
        "the dry run warned (Pod Security restricted?): {stderr}"
    );
    for kind in [
        "deployment.apps/kt-kubetemplater-coordinator",
        "deployment.apps/kt-kubetemplater-worker",
        "deployment.apps/kt-kubetemplater-webhook",
        "horizontalpodautoscaler.autoscaling/kt-kubetemplater-worker",
        "poddisruptionbudget.policy/kt-kubetemplater-webhook",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/",
        "networkpolicy.networking.k8s.io/",
        "clusterrole.rbac.authorization.k8s.io/",
        "customresourcedefinition.apiextensions.k8s.io/tenants.operator.kubernetes-tenants.org",
        "validatingadmissionpolicy.admissionregistration.k8s.io/kt-kubetemplater-system-namespace-guard",
    ] {
        assert!(stdout.contains(kind), "{kind} not rendered:\n{stdout}");
    }

    // A real install: every Deployment becomes Available (--wait), the HPA is accepted.
    let mut install = helm(home.path());
    install
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "install",
            RELEASE,
            "--namespace",
            NAMESPACE,
            "--wait",
            "--timeout",
            "4m",
        ])
        .arg(chart());
    let installed = run(install);
    assert!(installed.status.success(), "helm install failed");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let list = deployments.list(&ListParams::default()).await.unwrap();
    let mut available: Vec<(String, i32)> = list
        .items
        .iter()
        .map(|d| {
            let status = d.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            assert!(
                ready,
                "{} is not Available",
                d.metadata.name.clone().unwrap()
            );
            (
                d.metadata.name.clone().unwrap(),
                status.available_replicas.unwrap_or(0),
            )
        })
        .collect();
    available.sort();
    assert_eq!(
        available,
        [
            ("kt-kubetemplater-coordinator".to_owned(), 2),
            ("kt-kubetemplater-webhook".to_owned(), 2),
            ("kt-kubetemplater-worker".to_owned(), 2),
        ],
        "workers start at the HPA's minReplicas"
    );
    let hpa = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), NAMESPACE)
        .get("kt-kubetemplater-worker")
        .await
        .unwrap();
    let metrics: Vec<String> = hpa
        .spec
        .metrics
        .unwrap_or_default()
        .iter()
        .map(|m| {
            m.pods
                .as_ref()
                .map(|p| p.metric.name.clone())
                .or_else(|| m.resource.as_ref().map(|r| r.name.clone()))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(metrics, ["kubetemplater_queue_depth", "cpu"]);

    // What a user lists afterwards.
    let mut get = Command::new(toolchain::binary_or_path(&layout, "kubectl"));
    get.env("KUBECONFIG", &kubeconfig).args([
        "get",
        "deployments,hpa,pdb,services,serviceaccounts,networkpolicies",
        "--namespace",
        NAMESPACE,
    ]);
    let listed = run(get);
    assert!(listed.status.success());
    // The chart's identities: a worker's ServiceAccount token (TokenRequest, as its pods get)
    // may write what templates ask for elsewhere, but in the release namespace only Leases; the
    // webhook's may not write KubeTemplates at all.
    let worker = client_for(
        &kubeconfig,
        &token(&client, "kt-kubetemplater-worker").await,
    )
    .await;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let bucket_map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "kt-kubetemplater-bucket-map"}}))
            .unwrap();
    // Admission policies take effect once kube-apiserver has loaded them (a second or so).
    let started = std::time::Instant::now();
    let refused = loop {
        match Api::<ConfigMap>::namespaced(worker.clone(), NAMESPACE)
            .create(&dry_run, &bucket_map)
            .await
        {
            Err(refused) => break refused,
            Ok(_) if started.elapsed() < std::time::Duration::from_secs(30) => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Ok(_) => panic!("the worker may write the bucket map 30 s after the install"),
        }
    };
    assert!(
        refused.to_string().contains(
            "kubetemplater workers may write only their own Leases in kubetemplater, not configmaps kt-kubetemplater-bucket-map"
        ),
        "{refused}"
    );
    let leader: Lease =
        serde_json::from_value(json!({"metadata": {"name": "kubetemplater-coordinator"}})).unwrap();
    let refused = Api::<Lease>::namespaced(worker.clone(), NAMESPACE)
        .create(&dry_run, &leader)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("only their own Leases"),
        "{refused}"
    );
    let own: Lease =
        serde_json::from_value(json!({"metadata": {"name": "kt-kubetemplater-worker-abc"}}))
            .unwrap();
    Api::<Lease>::namespaced(worker.clone(), NAMESPACE)
        .create(&dry_run, &own)
        .await
        .expect("a worker writes its own Lease");
    Api::<ConfigMap>::namespaced(worker, "default")
        .create(&dry_run, &bucket_map)
        .await
        .expect("a worker writes what templates ask for outside the release namespace");
    let webhook = client_for(
        &kubeconfig,
        &token(&client, "kt-kubetemplater-webhook").await,
    )
    .await;
    let template: api::KubeTemplate = serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
        "metadata": {"name": "probe"}, "spec": {"templates": []}
    }))
    .unwrap();
    let refused = Api::<api::KubeTemplate>::namespaced(webhook, "default")
        .create(&dry_run, &template)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("cannot create resource \"kubetemplates\""),
        "{refused}"
    );

    // The HPA owns the worker count: an upgrade keeps what it set.
    deployments
        .patch(
            "kt-kubetemplater-worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    let mut upgrade = helm(home.path());
    upgrade
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "upgrade",
            RELEASE,
            "--namespace",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "worker.concurrency=8",
        ])
        .arg(chart());
    assert!(run(upgrade).status.success(), "helm upgrade failed");
    let worker = deployments.get("kt-kubetemplater-worker").await.unwrap();
    assert_eq!(
        worker.spec.unwrap().replicas,
        Some(4),
        "the upgrade reset the worker count"
    );

    let mut uninstall = helm(home.path());
    uninstall.env("KUBECONFIG", &kubeconfig).args([
        "uninstall",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--wait",
    ]);
    assert!(run(uninstall).status.success(), "helm uninstall failed");
    drop(cluster);
}
