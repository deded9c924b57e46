//! The checked-in files under `deploy/`: CRD YAML up to date, samples valid and consistent.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{decode_without_loss, kind_of, read_documents};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kubetemplater_api::{
    KubeTemplate, KubeTemplatePolicy, SourceType, Tenant, TenantRegistry, TenantTemplate,
};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn checked_in_crds_are_up_to_date() {
    if let Err(error) = kubetemplater_api::check_crds(&deploy_dir().join("crds")) {
        panic!("{error}");
    }
}

/// Every document of a sample file, decoded into its type.
#[derive(Default)]
struct Sample {
    namespaces: Vec<Namespace>,
    secrets: Vec<Secret>,
    policies: Vec<KubeTemplatePolicy>,
    templates: Vec<KubeTemplate>,
    registries: Vec<TenantRegistry>,
    tenant_templates: Vec<TenantTemplate>,
    tenants: Vec<Tenant>,
}

fn load_sample(name: &str) -> (Vec<Value>, Sample) {
    let path = deploy_dir().join("samples").join(name);
    let documents = read_documents(&path);
    let mut sample = Sample::default();
    for (i, document) in documents.iter().enumerate() {
        let origin = format!("{name} document {i}");
        let result = match kind_of(document) {
            "Namespace" => {
                decode_without_loss(document, &origin).map(|o| sample.namespaces.push(o))
            }
            "Secret" => decode_without_loss(document, &origin).map(|o| sample.secrets.push(o)),
            "KubeTemplatePolicy" => {
                decode_without_loss(document, &origin).map(|o| sample.policies.push(o))
            }
            "KubeTemplate" => {
                decode_without_loss(document, &origin).map(|o| sample.templates.push(o))
            }
            "TenantRegistry" => {
                decode_without_loss(document, &origin).map(|o| sample.registries.push(o))
            }
            "TenantTemplate" => {
                decode_without_loss(document, &origin).map(|o| sample.tenant_templates.push(o))
            }
            "Tenant" => decode_without_loss(document, &origin).map(|o| sample.tenants.push(o)),
            other => panic!("{origin}: unexpected kind {other:?}"),
        };
        result.unwrap_or_else(|e| panic!("{origin} does not decode: {e}"));
    }
    (documents, sample)
}

/// Every namespaced object comes after the Namespace it lives in (or lives in `default`), so
/// one `kubectl apply -f` creates everything.
fn assert_applies_in_one_pass(name: &str, documents: &[Value]) {
    let mut created = BTreeSet::from(["default".to_owned()]);
    for document in documents {
        let metadata = &document["metadata"];
        if kind_of(document) == "Namespace" {
            created.insert(metadata["name"].as_str().expect("name").to_owned());
        } else {
            let namespace = metadata["namespace"].as_str().expect("explicit namespace");
            assert!(
                created.contains(namespace),
                "{name}: {} {} comes before namespace {namespace}",
                kind_of(document),
                metadata["name"]
            );
        }
    }
}

#[test]
fn kubetemplater_sample_is_consistent() {
    let (documents, sample) = load_sample("kubetemplater.yaml");
    assert_applies_in_one_pass("kubetemplater.yaml", &documents);
    let [policy] = sample.policies.as_slice() else {
        panic!("expected one policy");
    };
    let [template] = sample.templates.as_slice() else {
        panic!("expected one template");
    };
    assert_eq!(
        policy.metadata.namespace.as_deref(),
        Some("kubetemplater-system")
    );
    let source = template.metadata.namespace.as_deref().expect("namespace");
    assert_eq!(policy.spec.source_namespace, source);

    let mut kinds = BTreeSet::new();
    for item in &template.spec.templates {
        let object = &item.object;
        let api_version = object["apiVersion"].as_str().expect("apiVersion");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let kind = object["kind"].as_str().expect("kind");
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or(source);
        let rule = policy
            .spec
            .validation_rules
            .iter()
            .find(|r| r.kind == kind && r.group == group && r.version == version)
            .unwrap_or_else(|| panic!("{kind} is not allowed by the sample policy"));
        assert!(rule.target_namespaces.iter().any(|n| n == namespace));
        kinds.insert(kind.to_owned());
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["ConfigMap", "Deployment", "Service"].map(str::to_owned))
    );
    let types: BTreeSet<String> = policy
        .spec
        .validation_rules
        .iter()
        .flat_map(|r| &r.field_validations)
        .map(|v| v.type_.to_string())
        .collect();
    for ty in ["cel", "regex", "range"] {
        assert!(types.contains(ty), "sample policy has no {ty} validation");
    }
}

#[test]
fn tenants_sample_is_consistent() {
    let (documents, sample) = load_sample("tenants.yaml");
    assert_applies_in_one_pass("tenants.yaml", &documents);
    assert!(
        sample.tenants.is_empty(),
        "Tenants are created by registries"
    );
    let source_types: BTreeSet<SourceType> = sample
        .registries
        .iter()
        .map(|r| r.spec.source.type_)
        .collect();
    assert_eq!(
        source_types,
        BTreeSet::from([SourceType::Mysql, SourceType::Sqlite])
    );
    let secrets: BTreeSet<&str> = sample
        .secrets
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    for registry in &sample.registries {
        if let Some(mysql) = &registry.spec.source.mysql {
            let reference = mysql.password_ref.as_ref().expect("password reference");
            assert!(secrets.contains(reference.name.as_str()));
        }
    }
    let [template] = sample.tenant_templates.as_slice() else {
        panic!("expected one TenantTemplate");
    };
    let registries: BTreeSet<&str> = sample
        .registries
        .iter()
        .filter_map(|r| r.metadata.name.as_deref())
        .collect();
    assert!(registries.contains(template.spec.registry_id.as_str()));
    let resources = &template.spec.resources;
    let ids: Vec<&str> = resources.iter().map(|(_, r)| r.id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "ids are unique");
    for (_, resource) in resources.iter() {
        for dependency in &resource.depend_ids {
            assert!(
                unique.contains(dependency.as_str()),
                "unknown dependency {dependency}"
            );
        }
    }
    for list in ["namespaces", "deployments", "services", "configMaps"] {
        assert!(resources.iter().any(|(l, _)| l == list), "no {list}");
    }
    assert!(resources.iter().any(|(_, r)| {
        r.name_template
            .as_deref()
            .is_some_and(|t| t.contains("{{ .uid }}"))
    }));
}
