use super::*;

fn tenant(extra: &str) -> Tenant {
    let mut tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1",
        "kind": "Tenant",
        "metadata": {
            "name": "acme-web", "namespace": "saas", "uid": "u-1",
            "labels": {"kubernetes-tenants.org/registry": "reg", "kubetemplater.io/bucket": "7"},
            "annotations": {
                "kubernetes-tenants.org/hostOrUrl": "https://acme.example.com",
                "kubernetes-tenants.org/activate": "1",
                "kubernetes-tenants.org/extra": extra
            }
        },
        "spec": {
            "uid": "acme",
            "templateRef": "web",
            "namespaces": [{
                "id": "ns", "nameTemplate": "{{ .uid }}-ns",
                "spec": {"apiVersion": "v1", "kind": "Namespace"}
            }],
            "configMaps": [{
                "id": "cfg", "nameTemplate": "{{ .uid }}-cfg",
                "spec": {"apiVersion": "v1", "kind": "ConfigMap", "data": {"plan": "{{ .planId }}", "host": "{{ .host }}"}}
            }, {
                "id": "remote", "nameTemplate": "{{ .uid }}-remote", "dependIds": ["ns"],
                "targetNamespace": "{{ .uid }}-ns",
                "spec": {"apiVersion": "v1", "kind": "ConfigMap"}
            }, {
                "id": "kept", "nameTemplate": "{{ .uid }}-kept", "deletionPolicy": "Retain",
                "creationPolicy": "Once", "dependIds": ["cfg"],
                "spec": {"apiVersion": "v1", "kind": "ConfigMap"}
            }]
        }
    }))
    .expect("tenant");
    tenant.metadata.generation = Some(1);
    tenant
}

fn find<'a>(desired: &'a TenantDesired, id: &str) -> &'a TenantObject {
    desired.objects().find(|o| o.id == id).expect(id)
}

#[test]
fn objects_come_in_levels_with_owner_or_tracking_labels() {
    let tenant = tenant(r#"{"planId":"gold"}"#);
    let vars = vars(&tenant).expect("vars");
    let desired = desired(&tenant, &vars).expect("desired");
    let levels: Vec<Vec<&str>> = desired
        .levels
        .iter()
        .map(|l| l.iter().map(|o| o.id.as_str()).collect())
        .collect();
    assert_eq!(levels, [vec!["cfg", "ns"], vec!["kept", "remote"]]);

    let cfg = find(&desired, "cfg");
    assert!(cfg.owned);
    assert_eq!(cfg.key(), "ConfigMap/saas/acme-cfg@cfg");
    assert_eq!(cfg.object["data"]["plan"], "gold");
    assert_eq!(cfg.object["data"]["host"], "acme.example.com");
    let meta = &cfg.object["metadata"];
    assert_eq!(meta["ownerReferences"][0]["kind"], "Tenant");
    assert_eq!(meta["ownerReferences"][0]["uid"], "u-1");
    assert_eq!(meta["ownerReferences"][0]["controller"], true);
    assert_eq!(meta["labels"][LABEL_BUCKET], "7");
    assert_eq!(
        meta["labels"][LABEL_TENANT], "acme-web",
        "tracking labels on owned objects too, as the original's documentation lists them"
    );
    assert_eq!(meta["annotations"][ANNOTATION_DELETION_POLICY], "Delete");

    for id in ["ns", "remote", "kept"] {
        let object = find(&desired, id);
        assert!(!object.owned, "{id}");
        let labels = &object.object["metadata"]["labels"];
        assert_eq!(labels[LABEL_TENANT], "acme-web", "{id}");
        assert_eq!(labels[LABEL_TENANT_NAMESPACE], "saas", "{id}");
        assert!(object.object["metadata"].get("ownerReferences").is_none());
    }
    assert_eq!(find(&desired, "remote").namespace, "acme-ns");
    let kept = find(&desired, "kept");
    assert_eq!(
        kept.object["metadata"]["annotations"][ANNOTATION_DELETION_POLICY],
        "Retain"
    );
    assert_eq!(
        kept.object["metadata"]["annotations"][ANNOTATION_CREATED_ONCE],
        "true"
    );
}

#[test]
fn a_missing_variable_fails_its_entry_and_bad_extras_fail_the_tenant() {
    let one = tenant("{}");
    let vars = vars(&one).expect("vars");
    let desired = desired(&one, &vars).expect("desired");
    assert_eq!(desired.failed.len(), 1);
    assert_eq!(desired.failed[0].0, "cfg");
    assert!(
        desired.failed[0].1.contains("planId"),
        "{}",
        desired.failed[0].1
    );
    assert_eq!(desired.len(), 4);

    let broken = self::tenant("{not json");
    let error = super::vars(&broken).expect_err("bad extra");
    assert!(matches!(error, DesiredError::Variables(_)), "{error}");
}

#[test]
fn the_digest_follows_spec_and_row_values() {
    let a = tenant(r#"{"planId":"gold"}"#);
    let b = tenant(r#"{"planId":"free"}"#);
    let da = digest(&a, &vars(&a).expect("vars"));
    assert_eq!(da, digest(&a, &vars(&a).expect("vars")));
    assert_ne!(da, digest(&b, &vars(&b).expect("vars")));
}

#[test]
fn applied_keys_parse_back() {
    let key = AppliedKey::parse("ConfigMap/saas/acme-cfg@cfg").expect("key");
    assert_eq!(
        (
            key.kind.as_str(),
            key.namespace.as_str(),
            key.name.as_str(),
            key.id.as_str()
        ),
        ("ConfigMap", "saas", "acme-cfg", "cfg")
    );
    let cluster = AppliedKey::parse("Namespace//acme-ns@ns").expect("cluster-scoped");
    assert_eq!(cluster.namespace, "");
    assert_eq!(AppliedKey::parse("garbage"), None);
}
