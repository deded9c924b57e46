//! Following a run's templates through a watch: when each generation of each template was first
//! seen `Completed`, which failed, and when each deleted template disappeared.
//!
//! A generation counts as completed when the status describes it (`observedGeneration`), its
//! phase is `Completed`, and every resource is in sync. Times are this process's monotonic
//! clock at the watch event, so latencies include the watch's delivery delay (milliseconds).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::KubeTemplate;
use futures::StreamExt as _;
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::workload::Key;
use crate::{Error, Result};

/// Shortest time between two checks of a wait.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// What is known of one template.
#[derive(Debug, Clone, Default)]
pub struct TemplateState {
    /// Its latest generation seen.
    pub generation: i64,
    /// When each generation was first seen completed.
    pub completed: BTreeMap<i64, Instant>,
    /// The latest failure (phase `Failed` or `Paused`) with its status text.
    pub failed: Option<String>,
    /// When it was seen deleted.
    pub deleted: Option<Instant>,
    /// Its bucket label, once set.
    pub bucket: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    templates: HashMap<Key, TemplateState>,
    completions: usize,
    watch_error: Option<String>,
}

/// A running watch over the templates labelled with a run's selector.
#[derive(Debug)]
pub struct Tracker {
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
    started: Instant,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Progress of a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Items done.
    pub done: usize,
    /// Items waited for.
    pub total: usize,
}

impl Tracker {
    /// Starts watching the templates matching `selector` in all namespaces.
    pub fn start(client: &Client, selector: &str) -> Self {
        let api: Api<KubeTemplate> = Api::all(client.clone());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let changed = Arc::new(Notify::new());
        let config = watcher::Config::default().labels(selector);
        let task = {
            let (shared, changed) = (shared.clone(), changed.clone());
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(watcher::watcher(api, config));
                while let Some(event) = stream.next().await {
                    let now = Instant::now();
                    let mut guard = lock(&shared);
                    match event {
                        Ok(Event::Apply(kt) | Event::InitApply(kt)) => {
                            observe(&mut guard, &kt, now)
                        }
                        Ok(Event::Delete(kt)) => {
                            if let Some(key) = key_of(&kt) {
                                guard.templates.entry(key).or_default().deleted = Some(now);
                            }
                        }
                        Ok(Event::Init | Event::InitDone) => {}
                        // The watcher retries by itself; remember the last error for a timeout.
                        Err(e) => guard.watch_error = Some(e.to_string()),
                    }
                    drop(guard);
                    changed.notify_waiters();
                }
            })
        };
        Self {
            shared,
            changed,
            task,
            started: Instant::now(),
        }
    }

    /// A copy of what is known of `key`.
    pub fn state(&self, key: &Key) -> Option<TemplateState> {
        lock(&self.shared).templates.get(key).cloned()
    }

    /// Every template's state.
    pub fn snapshot(&self) -> HashMap<Key, TemplateState> {
        lock(&self.shared).templates.clone()
    }

    /// Completions seen so far (all templates, all generations).
    pub fn completions(&self) -> usize {
        lock(&self.shared).completions
    }

    /// When the tracker started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits until `check` says everything is done, calling `on_progress` at each change; fails
    /// after `timeout`, naming what is missing (via `describe_missing`).
    pub async fn wait<C, P>(&self, timeout: Duration, check: C, mut on_progress: P) -> Result<()>
    where
        C: Fn(&HashMap<Key, TemplateState>) -> (Count, Vec<String>),
        P: FnMut(Count),
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let checked = tokio::time::Instant::now();
            let (count, missing, watch_error) = {
                let guard = lock(&self.shared);
                let (count, missing) = check(&guard.templates);
                (count, missing, guard.watch_error.clone())
            };
            on_progress(count);
            if count.done >= count.total {
                return Ok(());
            }
            let sleep = tokio::time::sleep_until(deadline);
            tokio::select! {
                () = notified => {
                    // A check scans every template: at most a few per second, however many
                    // events arrive (completion times come from the events, not from here).
                    tokio::time::sleep_until(checked + MIN_CHECK_INTERVAL).await;
                }
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = sleep => {
                    return Err(Error::Cluster(format!(
                        "{} of {} done after {timeout:?}; still missing e.g. {}{}",
                        count.done,
                        count.total,
                        missing.join("; "),
                        watch_error.map_or_else(String::new, |e| format!(" (last watch error: {e})"))
                    )));
                }
            }
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding the lock cannot leave the maps half-updated in a way that matters
    // for counting; keep going with what is there.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn key_of(kt: &KubeTemplate) -> Option<Key> {
    Some((kt.metadata.namespace.clone()?, kt.metadata.name.clone()?))
}

fn observe(shared: &mut Shared, kt: &KubeTemplate, now: Instant) {
    let Some(key) = key_of(kt) else { return };
    let generation = kt.metadata.generation.unwrap_or(0);
    let state = shared.templates.entry(key).or_default();
    state.generation = state.generation.max(generation);
    state.bucket = kt
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubetemplater.io/bucket").cloned());
    let Some(status) = &kt.status else { return };
    if status.observed_generation.is_some_and(|g| g != generation) {
        return;
    }
    match status.processing_phase.as_deref() {
        Some("Completed") if status.resources_synced == status.resources_total => {
            state.failed = None;
            if let std::collections::btree_map::Entry::Vacant(e) = state.completed.entry(generation)
            {
                e.insert(now);
                shared.completions += 1;
            }
        }
        Some(phase @ ("Failed" | "Paused")) => {
            state.failed = Some(format!(
                "{phase}: {}",
                status.status.as_deref().unwrap_or("no status text")
            ));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kt(generation: i64, status: serde_json::Value) -> KubeTemplate {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
            "metadata": {"name": "t0", "namespace": "ns", "generation": generation,
                         "labels": {"kubetemplater.io/bucket": "7"}},
            "spec": {"templates": []},
            "status": status,
        }))
        .unwrap()
    }

    /// A template at `generation` whose status says Completed for `observed` with `synced` of
    /// `total` resources.
    fn completed(generation: i64, observed: i64, total: i64, synced: i64) -> KubeTemplate {
        kt(
            generation,
            serde_json::json!({"processingPhase": "Completed", "observedGeneration": observed,
                               "resourcesTotal": total, "resourcesSynced": synced}),
        )
    }

    #[test]
    fn completion_needs_the_generation_and_all_resources() {
        let mut shared = Shared::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let key = ("ns".to_owned(), "t0".to_owned());
        observe(
            &mut shared,
            &kt(1, serde_json::json!({"processingPhase": "Processing"})),
            t0,
        );
        assert!(shared.templates[&key].completed.is_empty());
        assert_eq!(shared.templates[&key].bucket.as_deref(), Some("7"));
        // The status of generation 1 does not complete generation 2, nor does a partial sync.
        observe(&mut shared, &completed(2, 1, 1, 1), t0);
        observe(&mut shared, &completed(2, 2, 2, 1), t0);
        assert!(shared.templates[&key].completed.is_empty());
        observe(&mut shared, &completed(2, 2, 2, 2), t0);
        observe(&mut shared, &completed(2, 2, 2, 2), later);
        assert_eq!(
            shared.templates[&key].completed[&2], t0,
            "the first sighting counts"
        );
        assert_eq!(shared.completions, 1);
        observe(
            &mut shared,
            &kt(
                3,
                serde_json::json!({"processingPhase": "Failed", "observedGeneration": 3,
                                   "status": "Error: denied"}),
            ),
            later,
        );
        assert_eq!(
            shared.templates[&key].failed.as_deref(),
            Some("Failed: Error: denied")
        );
    }
}
