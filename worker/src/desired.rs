//! What a KubeTemplate asks for: its objects as they will be applied, and the hash that lets an
//! unchanged template be skipped without a single API call. Pure: no I/O.
//!
//! Every object gets
//! - `metadata.namespace` = the template's namespace when it has none (cluster-scoped kinds lose
//!   it at apply time, once discovery says they are cluster-scoped);
//! - the labels `kubetemplater.io/template-name`, `kubetemplater.io/template-namespace` (the
//!   original's) and `kubetemplater.io/bucket` (the template's bucket), so the owning worker's
//!   bucket-scoped watches see drift on it and nobody else's do;
//! - with `referenced: true` and in the template's namespace, an owner reference to the template
//!   (the original's, without `controller`/`blockOwnerDeletion`), so Kubernetes' garbage
//!   collector deletes it with the template. Across namespaces an owner reference would make the
//!   collector delete the object at once, so it is not set there and the finalizer cleans up.

use api::constants::{LABEL_BUCKET, LABEL_TEMPLATE_NAME, LABEL_TEMPLATE_NAMESPACE};
use api::{AppliedResource, KubeTemplate};
use kube::ResourceExt as _;
use serde_json::{Map, Value, json};

/// One object to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    /// Index of the item in `spec.templates`.
    pub index: usize,
    /// `apiVersion` as written.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Namespace (before discovery: the template's when absent).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Delete and create again when an update is refused as invalid (immutable field).
    pub replace: bool,
    /// The full object to apply.
    pub object: Value,
}

impl DesiredObject {
    /// The reference recorded in `status.appliedResources` (namespace as applied).
    pub fn reference(&self, namespaced: bool) -> AppliedResource {
        AppliedResource {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            namespace: namespaced.then(|| self.namespace.clone()),
            name: self.name.clone(),
        }
    }

    /// `Kind namespace/name` for messages.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A template item that cannot become an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template[{index}]: {problem}")]
pub struct ItemError {
    /// Index in `spec.templates`.
    pub index: usize,
    /// What is wrong.
    pub problem: String,
}

/// The desired state of one KubeTemplate.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Objects to apply, in template order.
    pub objects: Vec<DesiredObject>,
    /// Items that could not be turned into objects (reported in status, the rest still applies).
    pub errors: Vec<ItemError>,
    /// [`engine::hash::desired_state_hash`] of the objects.
    pub hash: String,
}

/// The desired objects of `template`, whose bucket label value is `bucket`.
pub fn desired(template: &KubeTemplate, bucket: &str) -> Desired {
    let template_ns = template.namespace().unwrap_or_default();
    let template_name = template.name_any();
    let mut objects = Vec::with_capacity(template.spec.templates.len());
    let mut errors = Vec::new();
    for (index, item) in template.spec.templates.iter().enumerate() {
        let fail = |problem: String| ItemError { index, problem };
        let mut object = item.object.clone();
        let text = |object: &Map<String, Value>, key: &str| {
            object
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .filter(|s| !s.is_empty())
        };
        let Some(api_version) = text(&object, "apiVersion") else {
            errors.push(fail("object has no apiVersion".into()));
            continue;
        };
        let Some(kind) = text(&object, "kind") else {
            errors.push(fail("object has no kind".into()));
            continue;
        };
        let metadata = object
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(metadata) = metadata.as_object_mut() else {
            errors.push(fail("metadata is not an object".into()));
            continue;
        };
        let Some(name) = metadata
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .filter(|n| !n.is_empty())
        else {
            errors.push(fail(format!("{kind} has no metadata.name (generateName is not supported: the object could not be found again)")));
            continue;
        };
        let namespace = match metadata.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() => ns.to_owned(),
            _ => {
                metadata.insert("namespace".into(), Value::String(template_ns.clone()));
                template_ns.clone()
            }
        };
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(labels) = labels.as_object_mut() else {
            errors.push(fail("metadata.labels is not an object".into()));
            continue;
        };
        labels.insert(
            LABEL_TEMPLATE_NAME.into(),
            Value::String(template_name.clone()),
        );
        labels.insert(
            LABEL_TEMPLATE_NAMESPACE.into(),
            Value::String(template_ns.clone()),
        );
        labels.insert(LABEL_BUCKET.into(), Value::String(bucket.to_owned()));
        if item.referenced
            && namespace == template_ns
            && let Some(uid) = template.uid()
        {
            let owner = json!({
                "apiVersion": "kubetemplater.io/v1alpha1",
                "kind": "KubeTemplate",
                "name": template_name,
                "uid": uid,
            });
            let refs = metadata
                .entry("ownerReferences")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(refs) = refs.as_array_mut() {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
                refs.push(owner);
            }
        }
        objects.push(DesiredObject {
            index,
            api_version,
            kind,
            namespace,
            name,
            replace: item.replace,
            object: Value::Object(object),
        });
    }
    let values: Vec<Value> = objects.iter().map(|o| o.object.clone()).collect();
    let hash = engine::hash::desired_state_hash(&values);
    Desired {
        objects,
        errors,
        hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::KubeTemplateSpec;

    fn template(items: Value) -> KubeTemplate {
        let spec: KubeTemplateSpec = serde_json::from_value(json!({ "templates": items })).unwrap();
        let mut kt = KubeTemplate::new("web", spec);
        kt.metadata.namespace = Some("team-a".into());
        kt.metadata.uid = Some("uid-1".into());
        kt
    }

    #[test]
    fn defaults_namespace_and_labels() {
        let kt = template(
            json!([{"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}}]),
        );
        let d = desired(&kt, "7");
        assert!(d.errors.is_empty());
        let o = &d.objects[0];
        assert_eq!(o.namespace, "team-a");
        assert_eq!(o.object["metadata"]["namespace"], "team-a");
        assert_eq!(
            o.object["metadata"]["labels"]["kubetemplater.io/bucket"],
            "7"
        );
        assert_eq!(
            o.object["metadata"]["labels"]["kubetemplater.io/template-name"],
            "web"
        );
        assert_eq!(
            o.object["metadata"]["labels"]["kubetemplater.io/template-namespace"],
            "team-a"
        );
        assert!(o.object["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn referenced_gets_an_owner_only_in_the_template_namespace() {
        let kt = template(json!([
            {"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}, "referenced": true},
            {"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "other"}}, "referenced": true}
        ]));
        let d = desired(&kt, "1");
        assert_eq!(
            d.objects[0].object["metadata"]["ownerReferences"][0]["uid"],
            "uid-1"
        );
        assert!(
            d.objects[1].object["metadata"]
                .get("ownerReferences")
                .is_none()
        );
    }

    #[test]
    fn bad_items_are_reported_and_the_rest_kept() {
        let kt = template(json!([
            {"object": {"kind": "ConfigMap", "metadata": {"name": "a"}}},
            {"object": {"apiVersion": "v1", "metadata": {"name": "a"}}},
            {"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "x-"}}},
            {"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ok"}}}
        ]));
        let d = desired(&kt, "1");
        assert_eq!(d.objects.len(), 1);
        assert_eq!(
            d.errors.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(d.errors[2].to_string().contains("generateName"));
    }

    #[test]
    fn hash_changes_with_content_not_with_nothing() {
        let a = template(
            json!([{"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "1"}}}]),
        );
        let b = template(
            json!([{"object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "2"}}}]),
        );
        assert_eq!(desired(&a, "1").hash, desired(&a, "1").hash);
        assert_ne!(desired(&a, "1").hash, desired(&b, "1").hash);
        assert_ne!(
            desired(&a, "1").hash,
            desired(&a, "2").hash,
            "the bucket label is part of the state"
        );
    }
}
