//! Tenant rendering: a 20-resource TenantTemplate (a Namespace, 4 Deployments, 4 Services,
//! 4 ConfigMaps, 3 Secrets, a ServiceAccount, an Ingress, a PodDisruptionBudget and a
//! HorizontalPodAutoscaler, with realistic templated strings) rendered for one row; the
//! dependency levels of it; and the desired-state hash of the rendered objects.
//!
//! `cargo bench -p kubetemplater-engine --bench render -- --warm-up-time 1 --measurement-time 5`

use std::hint::black_box;

use api::{TResource, TenantTemplateSpec};
use criterion::{Criterion, criterion_group, criterion_main};
use engine::dag::levels_of;
use engine::hash::desired_state_hash;
use engine::render::{Renderer, Vars};
use serde_json::{Value, json};

const APPS: [&str; 4] = ["web", "api", "worker", "admin"];

fn labels(app: &str) -> Value {
    json!({
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/instance": "{{ .uid }}-{{ .templateRef }}",
        "app.kubernetes.io/part-of": "shop",
        "tenant": "{{ .uid }}",
        "plan": "{{ .planId | default \"basic\" }}"
    })
}

fn deployment(app: &str) -> Value {
    json!({
        "id": format!("{app}-deploy"),
        "dependIds": [format!("{app}-config"), "db-secret", "sa"],
        "nameTemplate": format!("{{{{ .uid | trunc 40 }}}}-{app}"),
        "targetNamespace": "{{ .uid }}-shop",
        "labelsTemplate": {"tenant": "{{ .uid }}", "region": "{{ .region }}"},
        "annotationsTemplate": {"shop.example.com/host": "{{ .host }}"},
        "spec": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"labels": labels(app)},
            "spec": {
                "replicas": "{{ .replicas | int }}",
                "selector": {"matchLabels": {"app.kubernetes.io/name": app, "tenant": "{{ .uid }}"}},
                "template": {
                    "metadata": {
                        "labels": labels(app),
                        "annotations": {"checksum/config": "{{ printf \"%s-%s\" .uid .planId | sha256sum | trunc 16 }}"}
                    },
                    "spec": {
                        "serviceAccountName": "{{ .uid }}-sa",
                        "containers": [{
                            "name": app,
                            "image": format!("registry.example.com/shop/{app}:{{{{ .version | default \"1.0.0\" }}}}"),
                            "args": ["--tenant={{ .uid }}", "--host={{ .host }}", "--plan={{ .planId | upper }}"],
                            "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "metrics"}],
                            "env": [
                                {"name": "TENANT_ID", "value": "{{ .uid }}"},
                                {"name": "PUBLIC_URL", "value": "{{ .hostOrUrl }}"},
                                {"name": "REGION", "value": "{{ .region | lower }}"},
                                {"name": "FEATURE_HA", "value": "{{ if eq .planId \"gold\" }}true{{ else }}false{{ end }}"},
                                {"name": "DB_HOST", "value": "db.{{ .region }}.internal"},
                                {"name": "LOG_LEVEL", "value": "info"}
                            ],
                            "envFrom": [{"configMapRef": {"name": format!("{{{{ .uid }}}}-{app}-config")}}],
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                          "limits": {"cpu": "500m", "memory": "512Mi"}},
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10}
                        }]
                    }
                }
            }
        }
    })
}

fn service(app: &str) -> Value {
    json!({
        "id": format!("{app}-svc"),
        "dependIds": [format!("{app}-deploy")],
        "nameTemplate": format!("{{{{ .uid }}}}-{app}"),
        "targetNamespace": "{{ .uid }}-shop",
        "spec": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"labels": labels(app)},
            "spec": {
                "selector": {"app.kubernetes.io/name": app, "tenant": "{{ .uid }}"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}]
            }
        }
    })
}

fn config_map(app: &str) -> Value {
    json!({
        "id": format!("{app}-config"),
        "dependIds": ["ns"],
        "nameTemplate": format!("{{{{ .uid }}}}-{app}-config"),
        "targetNamespace": "{{ .uid }}-shop",
        "spec": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"labels": labels(app)},
            "data": {
                "TENANT": "{{ .uid }}",
                "HOST": "{{ .host }}",
                "PLAN": "{{ .planId }}",
                "settings.json": "{\"tenant\": \"{{ .uid }}\", \"region\": \"{{ .region }}\", \"maxUsers\": {{ mul .replicas 100 }}}",
                "static": "unchanged text without templates"
            }
        }
    })
}

fn secret(name: &str) -> Value {
    json!({
        "id": name,
        "dependIds": ["ns"],
        "nameTemplate": format!("{{{{ .uid }}}}-{name}"),
        "targetNamespace": "{{ .uid }}-shop",
        "creationPolicy": "Once",
        "spec": {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "data": {
                "username": "{{ .uid | b64enc }}",
                "database": "{{ printf \"tenant_%s\" .uid | replace \"-\" \"_\" | b64enc }}",
                "url": "{{ printf \"postgres://%s@db.%s.internal/%s\" .uid .region .uid | b64enc }}"
            }
        }
    })
}

fn tenant_template() -> TenantTemplateSpec {
    let apps = |f: fn(&str) -> Value| APPS.iter().map(|a| f(a)).collect::<Vec<_>>();
    let secrets: Vec<Value> = ["db-secret", "api-keys", "tls-extra"].map(secret).into();
    serde_json::from_value(json!({
        "registryId": "shop-db",
        "namespaces": [{
            "id": "ns",
            "nameTemplate": "{{ .uid }}-shop",
            "labelsTemplate": {"tenant": "{{ .uid }}", "plan": "{{ .planId }}"},
            "spec": {"apiVersion": "v1", "kind": "Namespace"}
        }],
        "serviceAccounts": [{
            "id": "sa", "dependIds": ["ns"], "nameTemplate": "{{ .uid }}-sa",
            "targetNamespace": "{{ .uid }}-shop",
            "spec": {"apiVersion": "v1", "kind": "ServiceAccount"}
        }],
        "deployments": apps(deployment),
        "services": apps(service),
        "configMaps": apps(config_map),
        "secrets": secrets,
        "ingresses": [{
            "id": "ingress", "dependIds": ["web-svc", "api-svc"], "nameTemplate": "{{ .uid }}-ingress",
            "targetNamespace": "{{ .uid }}-shop",
            "annotationsTemplate": {"cert-manager.io/cluster-issuer": "letsencrypt"},
            "spec": {
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "spec": {
                    "tls": [{"hosts": ["{{ .host }}"], "secretName": "{{ .uid }}-tls"}],
                    "rules": [{"host": "{{ .host }}", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": "{{ .uid }}-web", "port": {"number": 80}}}},
                        {"path": "/api", "pathType": "Prefix",
                         "backend": {"service": {"name": "{{ .uid }}-api", "port": {"number": 80}}}}
                    ]}}]
                }
            }
        }],
        "podDisruptionBudgets": [{
            "id": "pdb", "dependIds": ["web-deploy"], "nameTemplate": "{{ .uid }}-web",
            "targetNamespace": "{{ .uid }}-shop",
            "spec": {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                     "spec": {"minAvailable": 1,
                              "selector": {"matchLabels": {"app.kubernetes.io/name": "web", "tenant": "{{ .uid }}"}}}}
        }],
        "horizontalPodAutoscalers": [{
            "id": "hpa", "dependIds": ["web-deploy"], "nameTemplate": "{{ .uid }}-web",
            "targetNamespace": "{{ .uid }}-shop",
            "spec": {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                     "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "{{ .uid }}-web"},
                              "minReplicas": "{{ .replicas | int }}",
                              "maxReplicas": "{{ mul .replicas 4 | int }}"}}
        }]
    }))
    .expect("tenant template")
}

fn row(i: usize) -> Vars {
    Vars::tenant(
        &format!("tenant-{i:05}"),
        &format!("https://tenant-{i:05}.shop.example.com"),
        "true",
    )
    .with_registry_id("shop-db")
    .with_template_ref("shop")
    .with_extra([
        ("planId", "gold"),
        ("region", "EU-West"),
        ("replicas", "2"),
        ("version", "2.3.1"),
    ])
}

fn render_all(renderer: &mut Renderer, resources: &[&TResource], vars: &Vars) -> Vec<Value> {
    resources
        .iter()
        .map(|r| {
            renderer
                .render_resource(r, vars, "shop")
                .expect("renders")
                .object
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let spec = tenant_template();
    let resources: Vec<&TResource> = spec.resources.iter().map(|(_, r)| r).collect();
    assert_eq!(resources.len(), 20);
    let vars = row(42);

    c.bench_function(
        "render 20-resource tenant, fresh renderer (parses every template)",
        |b| {
            b.iter(|| {
                let mut renderer = Renderer::new();
                black_box(render_all(&mut renderer, &resources, black_box(&vars)))
            });
        },
    );

    let mut warm = Renderer::new();
    render_all(&mut warm, &resources, &vars);
    let mut i = 0usize;
    c.bench_function(
        "render 20-resource tenant, reused renderer (next row)",
        |b| {
            b.iter(|| {
                i += 1;
                let vars = row(i);
                black_box(render_all(&mut warm, &resources, &vars))
            });
        },
    );

    c.bench_function("levels of the 20 resources", |b| {
        b.iter(|| black_box(levels_of(black_box(&spec.resources)).expect("levels")));
    });

    let objects = render_all(&mut Renderer::new(), &resources, &vars);
    c.bench_function("desired_state_hash of the 20 rendered objects", |b| {
        b.iter(|| black_box(desired_state_hash(black_box(&objects))));
    });
}

criterion_group!(render, benches);
criterion_main!(render);
