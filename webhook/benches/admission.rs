//! Admission latency, three ways (`cargo bench -p kubetemplater-webhook --bench admission`):
//!
//! 1. **evaluation**: `Reviewer::review` of a 10-object KubeTemplate against a 10-rule policy,
//!    in process (what the webhook spends deciding);
//! 2. **HTTPS on loopback**: the same review POSTed to the real server (rustls, HTTP/2) by one
//!    client, one request at a time, then by 16 concurrent clients for reviews/s;
//! 3. **added by the API server** (only when devcluster runs with the webhook, e.g. after
//!    `cargo xtask up`): 200 server-side dry-run creates, read back from kube-apiserver's own
//!    `apiserver_admission_webhook_admission_duration_seconds` histogram, per webhook.
//!
//! Prints a table and writes `target/bench/webhook-admission.json`. Percentiles are exact over the
//! samples for 1 and 2; for 3 they are the upper bounds of the API server's histogram buckets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::{KubeTemplatePolicy, KubeTemplatePolicySpec};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use serde_json::{Value, json};
use webhook::PolicyCache;
use webhook::metrics::Metrics;
use webhook::review::{Operation, Reviewer};
use webhook::server::{self, Limits};

const NS: &str = "bench";

fn policy() -> KubeTemplatePolicy {
    let kinds = [
        ("", "v1", "ConfigMap"),
        ("", "v1", "Secret"),
        ("", "v1", "Service"),
        ("", "v1", "ServiceAccount"),
        ("apps", "v1", "Deployment"),
        ("apps", "v1", "StatefulSet"),
        ("batch", "v1", "Job"),
        ("networking.k8s.io", "v1", "Ingress"),
        ("policy", "v1", "PodDisruptionBudget"),
        ("autoscaling", "v2", "HorizontalPodAutoscaler"),
    ];
    let rules: Vec<Value> = kinds
        .iter()
        .map(|(group, version, kind)| {
            json!({
                "kind": kind, "group": group, "version": version, "targetNamespaces": [NS],
                "fieldValidations": [
                    {"name": "dns-name", "type": "regex", "fieldPath": "metadata.name", "regex": "^[a-z0-9-]{1,40}$"},
                    {"name": "team-label", "type": "required", "fieldPath": "metadata.labels.team"},
                    {"name": "cel-prefix", "type": "cel", "fieldPath": "metadata.name", "cel": "value.startsWith('app-')"}
                ]
            })
        })
        .collect();
    let mut p = KubeTemplatePolicy::new(
        NS,
        KubeTemplatePolicySpec {
            source_namespace: NS.into(),
            validation_rules: serde_json::from_value(Value::Array(rules)).expect("rules decode"),
        },
    );
    p.metadata.namespace = Some("kubetemplater-system".into());
    p.metadata.uid = Some("bench".into());
    p.metadata.generation = Some(1);
    p
}

fn template_items() -> Value {
    let objects = [
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "Service"),
        ("v1", "ServiceAccount"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
        ("batch/v1", "Job"),
        ("networking.k8s.io/v1", "Ingress"),
        ("policy/v1", "PodDisruptionBudget"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ];
    Value::Array(
        objects
            .iter()
            .enumerate()
            .map(|(i, (api_version, kind))| {
                json!({"object": {
                    "apiVersion": api_version, "kind": kind,
                    "metadata": {"name": format!("app-{i}"), "labels": {"team": "a"}},
                    "spec": {"replicas": 2, "data": {"k": "v".repeat(64)}}
                }})
            })
            .collect(),
    )
}

fn review_json() -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "bench", "operation": "CREATE", "name": "web", "namespace": NS,
            "kind": {"group": "kubetemplater.io", "version": "v1alpha1", "kind": "KubeTemplate"},
            "resource": {"group": "kubetemplater.io", "version": "v1alpha1", "resource": "kubetemplates"},
            "userInfo": {"username": "bench"},
            "object": {"apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
                       "metadata": {"name": "web", "namespace": NS}, "spec": {"templates": template_items()}}
        }
    })
}

fn reviewer() -> Reviewer {
    let cache = Arc::new(PolicyCache::new(Arc::new(Metrics::default())));
    cache.reset(&[policy()]);
    Reviewer::new(
        cache,
        engine::bucket::DEFAULT_BUCKET_COUNT,
        "kubetemplater-system",
    )
}

#[derive(Debug, serde::Serialize)]
struct Stats {
    samples: usize,
    p50_us: f64,
    p99_us: f64,
    per_second: f64,
}

fn stats(mut samples: Vec<Duration>, wall: Duration) -> Stats {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    Stats {
        samples: samples.len(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        per_second: samples.len() as f64 / wall.as_secs_f64(),
    }
}

fn evaluation() -> Stats {
    let reviewer = reviewer();
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(review_json()).expect("review");
    let request: AdmissionRequest<DynamicObject> = review.try_into().expect("request");
    assert!(
        reviewer
            .review(Operation::ValidateKubeTemplate, &request)
            .response
            .allowed
    );
    for _ in 0..500 {
        std::hint::black_box(reviewer.review(Operation::ValidateKubeTemplate, &request));
    }
    let n = 20_000;
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        std::hint::black_box(reviewer.review(Operation::ValidateKubeTemplate, &request));
        samples.push(t.elapsed());
    }
    stats(samples, start.elapsed())
}

fn tls_config() -> (Arc<rustls::ServerConfig>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![der], key_der)
    .expect("config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (Arc::new(config), cert.pem().into_bytes())
}

async fn https() -> (Stats, Stats) {
    let (config, ca) = tls_config();
    let listener = server::bind("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let metrics = Metrics::default();
    let router = server::router(reviewer(), metrics.clone(), Limits::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(server::serve_tls(
        listener,
        config,
        router,
        metrics,
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .build()
        .expect("client");
    let url = format!(
        "https://localhost:{port}{}",
        Operation::ValidateKubeTemplate.path()
    );
    let body = serde_json::to_vec(&review_json()).expect("body");
    let post = |client: reqwest::Client, url: String, body: Vec<u8>| async move {
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert!(r.status().is_success());
        r.bytes().await.expect("body");
    };
    for _ in 0..200 {
        post(client.clone(), url.clone(), body.clone()).await;
    }
    let n = 5_000;
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        post(client.clone(), url.clone(), body.clone()).await;
        samples.push(t.elapsed());
    }
    let sequential = stats(samples, start.elapsed());

    let concurrency = 16;
    let per_task = 1_000;
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    post(client.clone(), url.clone(), body.clone()).await;
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let concurrent = stats(all, start.elapsed());
    shutdown.cancel();
    let _ = server.await;
    (sequential, concurrent)
}

#[derive(Debug, serde::Serialize)]
struct ApiServerAdded {
    webhook: String,
    calls: f64,
    mean_ms: f64,
    p50_ms_upper_bound: f64,
    p99_ms_upper_bound: f64,
}

/// Histogram buckets of one webhook from kube-apiserver's /metrics: (le, cumulative count), sum, count.
fn histogram(metrics: &str, webhook: &str) -> (Vec<(f64, f64)>, f64, f64) {
    let name = "apiserver_admission_webhook_admission_duration_seconds";
    let selector = format!("name=\"{webhook}\"");
    let mut buckets: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    let (mut sum, mut count) = (0.0, 0.0);
    for line in metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&selector))
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if series.starts_with(&format!("{name}_bucket")) {
            let le = series
                .split("le=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("+Inf");
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let e = buckets.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += value;
        } else if series.starts_with(&format!("{name}_sum")) {
            sum += value;
        } else if series.starts_with(&format!("{name}_count")) {
            count += value;
        }
    }
    let mut b: Vec<(f64, f64)> = buckets.into_values().collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    (b, sum, count)
}

#[derive(Debug, serde::Serialize)]
struct ApiServerPart {
    /// Per webhook, from kube-apiserver's histogram.
    webhooks: Vec<ApiServerAdded>,
    /// Client-side dry-run create latency through both webhooks.
    create_reviewed: Stats,
    /// The same create in a namespace the webhooks skip.
    create_exempt: Stats,
}

async fn apiserver_added() -> Option<ApiServerPart> {
    let layout = devcluster::Layout::shared();
    let endpoints = devcluster::Endpoints::load(&layout).ok().flatten()?;
    if devcluster::stack::running(&endpoints, "webhook-").is_empty() {
        eprintln!(
            "(no webhook running on devcluster: skipping the API server part; run `cargo xtask up` first)"
        );
        return None;
    }
    let client = endpoints.admin_client().await.ok()?;
    let target = devcluster::testing::target().await.ok()?;
    let ns = target.namespace_without_admission("bench").await.ok()?;
    // The policy for a namespace that is reviewed: relabel the namespace to drop the exemption.
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    let unexempt = json!({"metadata": {"labels": {"kubetemplater.io/admission": null}}});
    namespaces
        .patch(
            &ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&unexempt),
        )
        .await
        .ok()?;
    let mut p = policy();
    p.metadata = kube::api::ObjectMeta {
        name: Some(ns.clone()),
        namespace: Some("kubetemplater-system".into()),
        ..Default::default()
    };
    p.spec.source_namespace = ns.clone();
    for rule in &mut p.spec.validation_rules {
        rule.target_namespaces = vec![ns.clone()];
    }
    let policies: kube::Api<KubeTemplatePolicy> =
        kube::Api::namespaced(client.clone(), "kubetemplater-system");
    policies.create(&Default::default(), &p).await.ok()?;
    let templates: kube::Api<DynamicObject> = kube::Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<api::KubeTemplate>(&()),
    );
    let mut object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
        "metadata": {"generateName": "web-", "namespace": ns}, "spec": {"templates": template_items()}
    }))
    .ok()?;
    object.metadata.namespace = Some(ns.clone());
    if let Some(items) = object.data["spec"]["templates"].as_array_mut() {
        for item in items {
            item["object"]["metadata"]["namespace"] = json!(ns);
        }
    }
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    // Wait for the webhooks' caches to hold the new policy.
    let deadline = Instant::now() + Duration::from_secs(10);
    while templates.create(&dry_run, &object).await.is_err() {
        if Instant::now() > deadline {
            eprintln!(
                "(the webhooks never admitted the benchmark template: skipping the API server part)"
            );
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scrape = || async {
        let req = http::Request::get("/metrics")
            .body(Vec::new())
            .expect("request");
        client.request_text(req).await.expect("apiserver /metrics")
    };
    let before = scrape().await;
    let mut reviewed = Vec::with_capacity(200);
    let start = Instant::now();
    for _ in 0..200 {
        let t = Instant::now();
        templates.create(&dry_run, &object).await.ok()?;
        reviewed.push(t.elapsed());
    }
    let reviewed = stats(reviewed, start.elapsed());
    let after = scrape().await;
    // The same create in a namespace the webhooks skip: the difference is what they add.
    let exempt_ns = target
        .namespace_without_admission("bench-exempt")
        .await
        .ok()?;
    let exempt_api: kube::Api<DynamicObject> = kube::Api::namespaced_with(
        client.clone(),
        &exempt_ns,
        &kube::api::ApiResource::erase::<api::KubeTemplate>(&()),
    );
    let mut exempt_object = object.clone();
    exempt_object.metadata.namespace = Some(exempt_ns.clone());
    let mut exempt = Vec::with_capacity(200);
    let start = Instant::now();
    for _ in 0..200 {
        let t = Instant::now();
        exempt_api.create(&dry_run, &exempt_object).await.ok()?;
        exempt.push(t.elapsed());
    }
    let exempt = stats(exempt, start.elapsed());
    let _ = policies.delete(&ns, &Default::default()).await;
    let _ = target.delete_namespace(&ns).await;
    let _ = target.delete_namespace(&exempt_ns).await;
    let mut out = Vec::new();
    for webhook in ["mbucket.kubetemplater.io", "vkubetemplate.kb.io"] {
        let (b0, s0, c0) = histogram(&before, webhook);
        let (b1, s1, c1) = histogram(&after, webhook);
        let calls = c1 - c0;
        let delta: Vec<(f64, f64)> = b1
            .iter()
            .map(|(le, n)| {
                (
                    *le,
                    n - b0.iter().find(|(l, _)| l == le).map_or(0.0, |(_, m)| *m),
                )
            })
            .collect();
        let quantile = |q: f64| {
            delta
                .iter()
                .find(|(_, n)| *n >= q * calls)
                .map_or(f64::NAN, |(le, _)| le * 1e3)
        };
        out.push(ApiServerAdded {
            webhook: webhook.to_owned(),
            calls,
            mean_ms: (s1 - s0) / calls * 1e3,
            p50_ms_upper_bound: quantile(0.5),
            p99_ms_upper_bound: quantile(0.99),
        });
    }
    Some(ApiServerPart {
        webhooks: out,
        create_reviewed: reviewed,
        create_exempt: exempt,
    })
}

fn main() {
    // `cargo test --benches` runs bench targets with --bench absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let eval = evaluation();
    println!(
        "evaluation (10 objects x 10 rules, in process): p50 {:.0} us, p99 {:.0} us, {:.0} reviews/s on one thread",
        eval.p50_us, eval.p99_us, eval.per_second
    );
    let (seq, conc) = runtime.block_on(https());
    println!(
        "HTTPS loopback, one client (h2):              p50 {:.0} us, p99 {:.0} us, {:.0} reviews/s",
        seq.p50_us, seq.p99_us, seq.per_second
    );
    println!(
        "HTTPS loopback, 16 concurrent clients (h2):   p50 {:.0} us, p99 {:.0} us, {:.0} reviews/s",
        conc.p50_us, conc.p99_us, conc.per_second
    );
    let apiserver = runtime.block_on(apiserver_added());
    if let Some(part) = &apiserver {
        println!(
            "dry-run create through both webhooks (client side): p50 {:.2} ms, p99 {:.2} ms; exempt namespace: p50 {:.2} ms, p99 {:.2} ms; added: p50 {:.2} ms",
            part.create_reviewed.p50_us / 1e3,
            part.create_reviewed.p99_us / 1e3,
            part.create_exempt.p50_us / 1e3,
            part.create_exempt.p99_us / 1e3,
            (part.create_reviewed.p50_us - part.create_exempt.p50_us) / 1e3
        );
        for r in &part.webhooks {
            println!(
                "added by kube-apiserver, {:<26} {} calls: mean {:.2} ms, p50 <= {} ms, p99 <= {} ms",
                r.webhook, r.calls, r.mean_ms, r.p50_ms_upper_bound, r.p99_ms_upper_bound
            );
        }
    }
    let report = json!({
        "evaluation": eval, "https_sequential": seq, "https_concurrent_16": conc,
        "apiserver_added": apiserver,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    let dir = devcluster::layout::repo_root().join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("webhook-admission.json");
    if std::fs::write(&path, serde_json::to_vec_pretty(&report).expect("json")).is_ok() {
        println!("report: {}", path.display());
    }
}
