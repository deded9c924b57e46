//! Applying and deleting arbitrary objects: discovery (cached per apiVersion/kind), server-side
//! apply under the field manager `kubetemplater`, `replace` on an invalid update, and deletes that
//! only touch objects this template created. Every write goes through [`Writes`] (the Lease's
//! fence, checked right before the request is sent, and the write timeout).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use api::AppliedResource;
use api::constants::{FIELD_MANAGER, LABEL_TEMPLATE_NAME, LABEL_TEMPLATE_NAMESPACE};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::discovery::{ApiCapabilities, Scope};

use runtime::lease::Fenced;

use crate::desired::DesiredObject;
use crate::writes::{WriteError, Writes};

/// Why an apply or delete failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server does not serve the kind.
    #[error("{api_version} {kind} is not served by the API server: {source}")]
    UnknownKind {
        /// apiVersion.
        api_version: String,
        /// kind.
        kind: String,
        /// Discovery's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Another field manager owns a field we set (server-side apply conflict).
    #[error("{object}: conflict with another field manager: {message}")]
    Conflict {
        /// The object.
        object: String,
        /// The API server's message.
        message: String,
    },
    /// The API server refused the object (schema, immutable field without `replace`).
    #[error("{object}: invalid: {message}")]
    Invalid {
        /// The object.
        object: String,
        /// The API server's message.
        message: String,
    },
    /// The worker's Lease fence was closed: the write was not sent.
    #[error("{verb} {object}: {source}")]
    Fenced {
        /// apply, delete.
        verb: &'static str,
        /// The object.
        object: String,
        /// Which Lease, and why it is no longer held.
        source: Fenced,
    },
    /// The write got no answer within the write timeout and was abandoned.
    #[error("{verb} {object}: no answer within {after:?} (the write timeout)")]
    TimedOut {
        /// apply, delete.
        verb: &'static str,
        /// The object.
        object: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// Any other API error.
    #[error("{verb} {object}: {source}")]
    Api {
        /// apply, delete, get.
        verb: &'static str,
        /// The object.
        object: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
}

impl ApplyError {
    /// Short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ApplyError::UnknownKind { .. } => "unknown_kind",
            ApplyError::Conflict { .. } => "conflict",
            ApplyError::Invalid { .. } => "invalid",
            ApplyError::Fenced { .. } => "fenced",
            ApplyError::TimedOut { .. } => "timed_out",
            ApplyError::Api { .. } => "api",
        }
    }

    /// Why the write was refused unsent, when the fence was closed.
    pub fn fenced(&self) -> Option<&Fenced> {
        match self {
            ApplyError::Fenced { source, .. } => Some(source),
            _ => None,
        }
    }

    fn write(verb: &'static str, object: String, error: WriteError) -> Self {
        match error {
            WriteError::Fenced(source) => ApplyError::Fenced {
                verb,
                object,
                source,
            },
            WriteError::TimedOut { after } => ApplyError::TimedOut {
                verb,
                object,
                after,
            },
            WriteError::Api(source) => ApplyError::Api {
                verb,
                object,
                source: Box::new(source),
            },
        }
    }
}

/// What discovery says about a kind.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// For building an `Api`.
    pub resource: ApiResource,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
}

/// Applies objects of any kind. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Applier {
    client: kube::Client,
    writes: Writes,
    kinds: Arc<RwLock<HashMap<(String, String), Resolved>>>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").finish_non_exhaustive()
    }
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

impl Applier {
    /// An applier using `client`, writing without a fence ([`Writes::unfenced`]): for tests and
    /// tools that hold no Lease.
    pub fn new(client: kube::Client) -> Self {
        Self::with_writes(client, Writes::unfenced())
    }

    /// An applier using `client` whose every write goes through `writes`.
    pub fn with_writes(client: kube::Client, writes: Writes) -> Self {
        Self {
            client,
            writes,
            kinds: Arc::default(),
        }
    }

    /// The gate its writes go through.
    pub fn writes(&self) -> &Writes {
        &self.writes
    }

    /// The client it reads and writes with.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The `apiVersion` this process resolved for `kind` (any group), if it resolved one.
    pub fn api_version_of_kind(&self, kind: &str) -> Option<String> {
        self.read()
            .keys()
            .find(|(_, k)| k == kind)
            .map(|(api_version, _)| api_version.clone())
    }

    /// Discovery for `api_version`/`kind`, cached (one request per kind per process; a kind that
    /// is not found is asked again next time, as a CRD may have been installed meanwhile).
    pub async fn resolve(&self, api_version: &str, kind: &str) -> Result<Resolved, ApplyError> {
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some(found) = self.read().get(&key) {
            return Ok(found.clone());
        }
        let (group, version) = split_api_version(api_version);
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps): (ApiResource, ApiCapabilities) =
            kube::discovery::pinned_kind(&self.client, &gvk)
                .await
                .map_err(|source| ApplyError::UnknownKind {
                    api_version: api_version.to_owned(),
                    kind: kind.to_owned(),
                    source: Box::new(source),
                })?;
        let resolved = Resolved {
            resource,
            namespaced: caps.scope == Scope::Namespaced,
        };
        self.write().insert(key, resolved.clone());
        Ok(resolved)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(String, String), Resolved>> {
        // Poisoning cannot leave the map inconsistent (single inserts); keep using it.
        self.kinds.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<(String, String), Resolved>> {
        self.kinds.write().unwrap_or_else(|p| p.into_inner())
    }

    /// An `Api` for a resolved kind: namespaced to `namespace` when the kind is namespaced.
    pub fn api(&self, resolved: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if resolved.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &resolved.resource)
            }
            _ => Api::all_with(self.client.clone(), &resolved.resource),
        }
    }

    /// Server-side applies `desired` under the field manager `kubetemplater`. Not `force`d, a
    /// field owned by another manager is an [`ApplyError::Conflict`] (the original's behaviour for
    /// template changes); `force` takes such fields back (the original's drift correction).
    /// With `replace`, an update refused as invalid (e.g. an immutable field) deletes the object
    /// and applies it again. Returns the resolved kind (for the namespaced flag).
    pub async fn apply(
        &self,
        desired: &DesiredObject,
        force: bool,
    ) -> Result<Resolved, ApplyError> {
        let resolved = self.resolve(&desired.api_version, &desired.kind).await?;
        let mut object = desired.object.clone();
        if !resolved.namespaced
            && let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut())
        {
            meta.remove("namespace");
        }
        let api = self.api(&resolved, Some(&desired.namespace));
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = force;
        let result = self
            .writes
            .send(
                "apply",
                api.patch(&desired.name, &params, &Patch::Apply(&object)),
            )
            .await;
        match result {
            Ok(_) => Ok(resolved),
            Err(WriteError::Api(kube::Error::Api(status)))
                if status.code == 422 && desired.replace =>
            {
                tracing::info!(object = %desired.describe(), reason = %status.message, "update refused; replacing the object (replace: true)");
                let deleted = self
                    .writes
                    .send(
                        "delete",
                        api.delete(&desired.name, &DeleteParams::foreground()),
                    )
                    .await;
                match deleted {
                    Ok(_) => {}
                    Err(e) if e.status_code() == Some(404) => {}
                    Err(e) => return Err(ApplyError::write("delete", desired.describe(), e)),
                }
                // The foreground delete may still be in progress; the next apply either creates
                // the object or fails and is retried by the queue.
                self.writes
                    .send(
                        "apply",
                        api.patch(&desired.name, &params, &Patch::Apply(&object)),
                    )
                    .await
                    .map(|_| resolved)
                    .map_err(|e| classify(desired, e))
            }
            Err(e) => Err(classify(desired, e)),
        }
    }

    /// Whether the live object differs from `desired` in a field `desired` sets (or is missing):
    /// one GET, no write. Values are compared as JSON; objects by the keys `desired` has (fields
    /// the API server or others added are ignored); lists element by element, same length.
    pub async fn drifted(&self, desired: &DesiredObject) -> Result<bool, ApplyError> {
        let resolved = self.resolve(&desired.api_version, &desired.kind).await?;
        let api = self.api(&resolved, Some(&desired.namespace));
        let live = api
            .get_opt(&desired.name)
            .await
            .map_err(|source| ApplyError::Api {
                verb: "get",
                object: desired.describe(),
                source: Box::new(source),
            })?;
        let Some(live) = live else { return Ok(true) };
        let live = serde_json::to_value(&live).unwrap_or_default();
        let mut wanted = desired.object.clone();
        if let Some(meta) = wanted.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("namespace");
        }
        Ok(!contains(&live, &wanted))
    }

    /// Deletes an object this template applied, but only if it still carries the template's
    /// labels (someone may have taken the name over since). Absent objects are fine.
    pub async fn delete_owned(
        &self,
        reference: &AppliedResource,
        template_namespace: &str,
        template_name: &str,
    ) -> Result<(), ApplyError> {
        let describe = || {
            format!(
                "{} {}/{}",
                reference.kind,
                reference.namespace.as_deref().unwrap_or(""),
                reference.name
            )
        };
        let resolved = match self.resolve(&reference.api_version, &reference.kind).await {
            Ok(r) => r,
            // The kind is gone (CRD deleted): so are its objects.
            Err(ApplyError::UnknownKind { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let api = self.api(&resolved, reference.namespace.as_deref());
        let current = api
            .get_metadata_opt(&reference.name)
            .await
            .map_err(|source| ApplyError::Api {
                verb: "get",
                object: describe(),
                source: Box::new(source),
            })?;
        let Some(current) = current else {
            return Ok(());
        };
        let labels = current.metadata.labels.unwrap_or_default();
        let ours = labels.get(LABEL_TEMPLATE_NAME).map(String::as_str) == Some(template_name)
            && labels.get(LABEL_TEMPLATE_NAMESPACE).map(String::as_str) == Some(template_namespace);
        if !ours {
            tracing::info!(object = %describe(), "not deleting: it no longer carries this template's labels");
            return Ok(());
        }
        let deleted = self
            .writes
            .send(
                "delete",
                api.delete(&reference.name, &DeleteParams::background()),
            )
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if e.status_code() == Some(404) => Ok(()),
            Err(e) => Err(ApplyError::write("delete", describe(), e)),
        }
    }
}

/// An apply's error: conflicts and invalid objects by name, the rest as they came.
fn classify(desired: &DesiredObject, error: WriteError) -> ApplyError {
    match error {
        WriteError::Api(kube::Error::Api(status)) if status.code == 409 => ApplyError::Conflict {
            object: desired.describe(),
            message: status.message,
        },
        WriteError::Api(kube::Error::Api(status)) if status.code == 422 => ApplyError::Invalid {
            object: desired.describe(),
            message: status.message,
        },
        error => ApplyError::write("apply", desired.describe(), error),
    }
}

/// Whether `live` has every value `wanted` sets (see [`Applier::drifted`]).
pub fn contains(live: &serde_json::Value, wanted: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (live, wanted) {
        (Value::Object(l), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| l.get(k).is_some_and(|lv| contains(lv, wv)) || wv.is_null()),
        (Value::Array(l), Value::Array(w)) => {
            l.len() == w.len() && l.iter().zip(w).all(|(lv, wv)| contains(lv, wv))
        }
        (Value::Number(l), Value::Number(w)) => l.as_f64() == w.as_f64(),
        (l, w) => l == w,
    }
}

#[cfg(test)]
mod tests {
    use super::contains;
    use serde_json::json;

    #[test]
    fn subset_comparison() {
        let live = json!({"metadata": {"name": "a", "uid": "x", "labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always"}]}}}});
        assert!(contains(
            &live,
            &json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 2}})
        ));
        assert!(contains(
            &live,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}})
        ));
        assert!(!contains(&live, &json!({"spec": {"replicas": 3}})));
        assert!(!contains(
            &live,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "c"}, {"name": "d"}]}}}})
        ));
        assert!(!contains(&live, &json!({"data": {"k": "v"}})));
        assert!(contains(&json!({"n": 1.0}), &json!({"n": 1})));
    }
}
