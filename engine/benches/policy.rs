//! Policy evaluation: a 10-object KubeTemplate (Deployments, ConfigMaps, Services of realistic
//! size) against a policy with 5 CEL and 5 regex field validations, and compiling that policy.
//!
//! `cargo bench -p kubetemplater-engine --bench policy -- --warm-up-time 1 --measurement-time 5`
//! Besides criterion's mean, it prints p50/p99/max of 10,000 single evaluations.

use std::hint::black_box;
use std::time::{Duration, Instant};

use api::{KubeTemplatePolicy, TemplateItem};
use criterion::Criterion;
use engine::policy::{CompiledPolicy, PolicyLookup, evaluate};
use serde_json::{Value, json};

fn policy() -> KubeTemplatePolicy {
    serde_json::from_value(json!({
        "apiVersion": "kubetemplater.io/v1alpha1",
        "kind": "KubeTemplatePolicy",
        "metadata": {"name": "team-a", "namespace": "kubetemplater-system"},
        "spec": {"sourceNamespace": "team-a", "validationRules": [
            {"kind": "Deployment", "group": "apps", "version": "v1", "targetNamespaces": ["team-a"],
             "fieldValidations": [
                {"name": "name", "type": "regex", "fieldPath": "metadata.name",
                 "regex": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                {"name": "images", "type": "regex", "fieldPath": "spec.template.spec.containers.*.image",
                 "regex": "^registry\\.example\\.com/[a-z0-9/-]+:[0-9]+\\.[0-9]+\\.[0-9]+$"},
                {"name": "replicas", "type": "cel", "fieldPath": "spec.replicas",
                 "cel": "value >= 1 && value <= 10"},
                {"name": "limits", "type": "cel",
                 "cel": "object.spec.template.spec.containers.all(c, has(c.resources) && has(c.resources.limits) && has(c.resources.limits.memory))"},
                {"name": "env", "type": "cel", "fieldPath": "metadata.labels",
                 "cel": "'team' in value && value['env'] in ['dev', 'staging', 'prod']"}
             ]},
            {"kind": "ConfigMap", "group": "", "version": "v1", "targetNamespaces": ["team-a"],
             "fieldValidations": [
                {"name": "cm-name", "type": "regex", "fieldPath": "metadata.name", "regex": "^[a-z][-a-z0-9]*-config$"},
                {"name": "cm-size", "type": "cel", "cel": "object.data.all(k, size(object.data[k]) < 4096)"}
             ]},
            {"kind": "Service", "group": "", "version": "v1", "targetNamespaces": ["team-a"],
             "fieldValidations": [
                {"name": "svc-name", "type": "regex", "fieldPath": "metadata.name", "regex": "^[a-z][-a-z0-9]*$"},
                {"name": "svc-team", "type": "regex", "fieldPath": "metadata.labels.team", "regex": "^[a-z]+$"},
                {"name": "svc-ports", "type": "cel", "fieldPath": "spec.ports",
                 "cel": "value.all(p, p.port > 0 && p.port < 65536)"}
             ]}
        ]}
    }))
    .expect("policy")
}

fn labels(app: &str) -> Value {
    json!({"app": app, "team": "payments", "env": "prod", "app.kubernetes.io/part-of": "shop"})
}

fn deployment(i: usize) -> Value {
    let container = |name: &str| {
        json!({
            "name": name,
            "image": format!("registry.example.com/shop/{name}:1.{i}.0"),
            "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "metrics"}],
            "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "PORT", "value": "8080"},
                    {"name": "DB_HOST", "valueFrom": {"secretKeyRef": {"name": "db", "key": "host"}}}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                          "limits": {"cpu": "500m", "memory": "512Mi"}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
            "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}, "periodSeconds": 10},
            "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]}}
        })
    };
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("api-{i}"), "labels": labels("api"),
                     "annotations": {"kubetemplater.io/owner": "team-a"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": format!("api-{i}")}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": format!("api-{i}")}},
                "spec": {"containers": [container("api"), container("sidecar")],
                         "serviceAccountName": "api", "terminationGracePeriodSeconds": 30}
            }
        }
    })
}

fn config_map(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("shop-{i}-config"), "labels": labels("shop")},
        "data": {
            "application.yaml": "server:\n  port: 8080\nlogging:\n  level: info\n".repeat(8),
            "feature-flags": "checkout=true\nsearch=false\nrecommendations=true\n",
            "LOG_LEVEL": "info"
        }
    })
}

fn service(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("api-{i}"), "labels": labels("api")},
        "spec": {"selector": {"app": format!("api-{i}")}, "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                           {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"}]}
    })
}

fn template() -> Vec<TemplateItem> {
    let objects: Vec<Value> = (0..4)
        .map(deployment)
        .chain((0..3).map(config_map))
        .chain((0..3).map(service))
        .collect();
    objects
        .into_iter()
        .map(|object| serde_json::from_value(json!({ "object": object })).expect("item"))
        .collect()
}

/// p50/p99/max of single evaluations, printed (criterion reports means and intervals).
fn percentiles(policy: &CompiledPolicy, items: &[TemplateItem]) {
    const RUNS: usize = 10_000;
    for _ in 0..500 {
        black_box(evaluate("team-a", items, PolicyLookup::Found(policy)));
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        black_box(evaluate("team-a", items, PolicyLookup::Found(policy)));
        samples.push(start.elapsed());
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / RUNS as u32;
    let at = |q: f64| samples[((RUNS as f64 * q) as usize).min(RUNS - 1)];
    println!(
        "policy evaluation, 10 objects, {RUNS} runs: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}, mean {:?}",
        at(0.50),
        at(0.90),
        at(0.99),
        samples[RUNS - 1],
        mean
    );
}

fn main() {
    let raw = policy();
    let policy = CompiledPolicy::compile(&raw);
    assert!(policy.problems().is_empty(), "{:?}", policy.problems());
    let items = template();
    let verdict = evaluate("team-a", &items, PolicyLookup::Found(&policy));
    assert!(verdict.allowed, "{}", verdict.message());

    if std::env::args().any(|a| a == "--bench") {
        percentiles(&policy, &items);
    }

    let mut c = Criterion::default().configure_from_args();
    c.bench_function("policy/evaluate 10 objects", |b| {
        b.iter(|| evaluate("team-a", black_box(&items), PolicyLookup::Found(&policy)))
    });
    c.bench_function("policy/compile 5 cel + 5 regex", |b| {
        b.iter(|| CompiledPolicy::compile(black_box(&raw)))
    });
    c.final_summary();
}
