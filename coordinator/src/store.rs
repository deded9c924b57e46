//! The bucket map, persisted in a ConfigMap so a new leader starts from it (never from scratch
//! while old owners may still be working).
//!
//! `ConfigMap/<name>` in the system namespace, key `map.json`:
//!
//! ```json
//! {"buckets": 1024, "workers": ["worker-0", "worker-1"], "owners": [0, 1, -1, …], "epochs": [3, 7, 1, …]}
//! ```
//!
//! Owners are indexes into `workers` (-1: unassigned), so 1,024 buckets take about 10 KiB. Every
//! write is a replace at the resourceVersion this leader last read or wrote: a 409 means another
//! leader wrote meanwhile, and this one must stop acting ([`StoreError::Superseded`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use serde::{Deserialize, Serialize};

use crate::handoff::Slot;

/// The data key.
pub const KEY: &str = "map.json";

/// Why the map could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another leader wrote the map since we read it.
    #[error(
        "ConfigMap {namespace}/{name} was written by someone else (resourceVersion changed): another leader is acting"
    )]
    Superseded {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The stored map does not fit this installation.
    #[error("ConfigMap {namespace}/{name} key {KEY}: {problem}")]
    Invalid {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The API call failed.
    #[error("{action} ConfigMap {namespace}/{name}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Encoded {
    buckets: u32,
    workers: Vec<String>,
    owners: Vec<i64>,
    epochs: Vec<u64>,
}

/// Encodes the map compactly.
pub fn encode(slots: &[Slot]) -> String {
    let mut index: BTreeMap<&str, i64> = BTreeMap::new();
    let mut workers = Vec::new();
    let owners = slots
        .iter()
        .map(|s| match &s.owner {
            None => -1,
            Some(w) => *index.entry(w.as_str()).or_insert_with(|| {
                workers.push(w.clone());
                i64::try_from(workers.len() - 1).unwrap_or(i64::MAX)
            }),
        })
        .collect();
    let encoded = Encoded {
        buckets: u32::try_from(slots.len()).unwrap_or(u32::MAX),
        workers,
        owners,
        epochs: slots.iter().map(|s| s.epoch).collect(),
    };
    // A struct of strings and numbers always serializes.
    serde_json::to_string(&encoded).unwrap_or_default()
}

/// Decodes a map for `buckets` buckets; the text's problem otherwise.
pub fn decode(text: &str, buckets: u32) -> Result<Vec<Slot>, String> {
    let e: Encoded =
        serde_json::from_str(text).map_err(|err| format!("not a bucket map: {err}"))?;
    if e.buckets != buckets
        || e.owners.len() != buckets as usize
        || e.epochs.len() != buckets as usize
    {
        return Err(format!(
            "it holds {} buckets ({} owners, {} epochs); this installation has {buckets}: B must never change",
            e.buckets,
            e.owners.len(),
            e.epochs.len()
        ));
    }
    e.owners
        .iter()
        .zip(&e.epochs)
        .enumerate()
        .map(|(b, (owner, epoch))| {
            let owner = match *owner {
                -1 => None,
                i => Some(
                    usize::try_from(i)
                        .ok()
                        .and_then(|i| e.workers.get(i))
                        .cloned()
                        .ok_or_else(|| format!("bucket {b}: owner index {i} is not in workers"))?,
                ),
            };
            Ok(Slot {
                owner,
                epoch: *epoch,
            })
        })
        .collect()
}

/// Reads and writes the map.
#[derive(Debug, Clone)]
pub struct MapStore {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    buckets: u32,
    version: Option<String>,
}

impl MapStore {
    /// The map in `namespace`/`name` for `buckets` buckets.
    pub fn new(client: kube::Client, namespace: &str, name: &str, buckets: u32) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            buckets,
            version: None,
        }
    }

    fn api_error(&self, action: &'static str) -> impl FnOnce(kube::Error) -> StoreError + '_ {
        move |source| StoreError::Api {
            action,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Box::new(source),
        }
    }

    /// Reads the map (all unassigned, epoch 0, when there is none yet) and remembers its version.
    pub async fn load(&mut self) -> Result<Vec<Slot>, StoreError> {
        let found = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(self.api_error("reading"))?;
        let Some(cm) = found else {
            self.version = None;
            return Ok(vec![Slot::default(); self.buckets as usize]);
        };
        self.version = cm.metadata.resource_version.clone();
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(KEY))
            .cloned()
            .unwrap_or_default();
        decode(&text, self.buckets).map_err(|problem| StoreError::Invalid {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            problem,
        })
    }

    /// Writes the map at the version last read or written.
    pub async fn save(&mut self, slots: &[Slot]) -> Result<(), StoreError> {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: self.version.clone(),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "kubetemplater-coordinator".to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some([(KEY.to_owned(), encode(slots))].into()),
            ..ConfigMap::default()
        };
        let result = match self.version {
            None => self.api.create(&PostParams::default(), &cm).await,
            Some(_) => {
                self.api
                    .replace(&self.name, &PostParams::default(), &cm)
                    .await
            }
        };
        match result {
            Ok(written) => {
                self.version = written.metadata.resource_version;
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Err(StoreError::Superseded {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
            }),
            Err(e) => Err(self.api_error("writing")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let slots: Vec<Slot> = (0..1024)
            .map(|b| Slot {
                owner: (b % 5 != 0).then(|| format!("worker-{}", b % 7)),
                epoch: b as u64 * 3,
            })
            .collect();
        let text = encode(&slots);
        assert!(text.len() < 20_000, "{} bytes", text.len());
        assert_eq!(decode(&text, 1024).unwrap(), slots);
    }

    #[test]
    fn a_different_bucket_count_is_refused() {
        let text = encode(&vec![Slot::default(); 16]);
        assert!(
            decode(&text, 1024)
                .unwrap_err()
                .contains("B must never change")
        );
        assert!(decode("{", 16).unwrap_err().contains("not a bucket map"));
        let bad = r#"{"buckets":1,"workers":[],"owners":[3],"epochs":[1]}"#;
        assert!(decode(bad, 1).unwrap_err().contains("owner index 3"));
    }
}
