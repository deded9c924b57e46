//! Filling a cluster: namespaces with policies, then templates created as fast as the API
//! takes them, waited for until every one is `Completed`. `burst` measures this; `idle`,
//! `churn` and `rebalance` start from it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;

use crate::progress::Progress;
use crate::target::Target;
use crate::tracker::{Count, Tracker};
use crate::workload::{Key, Workload};
use crate::{Error, Result};

/// How many templates, where, and how fast.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct PopulateArgs {
    /// KubeTemplates to create.
    #[arg(long, default_value_t = 1000)]
    pub templates: usize,
    /// Namespaces to spread them over (each gets a policy).
    #[arg(long, default_value_t = 100)]
    pub namespaces: usize,
    /// ConfigMaps per template.
    #[arg(long, default_value_t = 1)]
    pub objects: usize,
    /// Requests in flight from this process.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Give up waiting for `Completed` after this many seconds.
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 1800)]
    pub timeout_s: u64,
    /// Leave the run's namespaces, policies and templates in place (`loadtest cleanup` removes
    /// them later).
    #[arg(long)]
    pub keep: bool,
}

impl PopulateArgs {
    /// Checks the numbers make sense.
    pub fn validate(&self) -> Result<()> {
        if self.templates == 0 || self.namespaces == 0 || self.objects == 0 {
            return Err(Error::InvalidArgument(
                "--templates, --namespaces and --objects must be at least 1".into(),
            ));
        }
        if self.namespaces > self.templates {
            return Err(Error::InvalidArgument(format!(
                "--namespaces {} is more than --templates {}: some namespaces would be empty",
                self.namespaces, self.templates
            )));
        }
        if self.concurrency == 0 {
            return Err(Error::InvalidArgument(
                "--concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A populated cluster.
#[derive(Debug)]
pub struct Populated {
    /// The run's objects.
    pub workload: Workload,
    /// The watch over its templates.
    pub tracker: Tracker,
    /// The templates.
    pub keys: Vec<Key>,
    /// When each create was sent.
    pub sent: HashMap<Key, Instant>,
    /// When the first create was sent.
    pub started: Instant,
    /// When the last create returned.
    pub created: Instant,
    /// When the last template was seen completed (or the wait gave up).
    pub settled: Instant,
    /// Templates that failed or never completed, with why.
    pub problems: Vec<String>,
}

/// Creates the namespaces and policies, starts the watch, creates the templates and waits until
/// every one completed or failed. A timeout is a problem of the run, not an error: the caller
/// still writes its report.
pub async fn populate(target: &Target, args: &PopulateArgs, quiet: bool) -> Result<Populated> {
    args.validate()?;
    let client = &target.client;
    let workload = Workload::new(&target.system_namespace, args.namespaces, args.objects);
    workload
        .create_namespaces(client, true, args.concurrency, quiet)
        .await?;
    let tracker = Tracker::start(client, &workload.selector());
    let keys = workload.keys(0, args.templates);

    let progress = Progress::new("create", keys.len() as u64, "templates", quiet);
    let started = Instant::now();
    let sent: HashMap<Key, Instant> = futures::stream::iter(keys.iter())
        .map(|key| {
            let (workload, progress) = (&workload, &progress);
            async move {
                let at = workload.create(client, key, "0").await?;
                progress.step();
                Ok::<_, Error>((key.clone(), at))
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect()
        .await?;
    let created = Instant::now();
    progress.finish();

    let progress = Progress::new("completed", keys.len() as u64, "templates", quiet);
    let waited = tracker
        .wait(
            Duration::from_secs(args.timeout_s),
            |templates| {
                let mut done = 0;
                let mut missing = Vec::new();
                for key in &keys {
                    match templates.get(key) {
                        Some(s) if s.completed.contains_key(&1) || s.failed.is_some() => done += 1,
                        _ if missing.len() < 3 => missing.push(format!("{}/{}", key.0, key.1)),
                        _ => {}
                    }
                }
                (
                    Count {
                        done,
                        total: keys.len(),
                    },
                    missing,
                )
            },
            |count| progress.set_position(count.done as u64),
        )
        .await;
    progress.finish();
    let settled = Instant::now();
    let mut problems = Vec::new();
    if let Err(e) = waited {
        problems.push(format!("not every template completed: {e}"));
    }
    let snapshot = tracker.snapshot();
    let failed: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            let reason = snapshot.get(k)?.failed.clone()?;
            Some(format!("{}/{}: {reason}", k.0, k.1))
        })
        .collect();
    if !failed.is_empty() {
        problems.push(format!(
            "{} templates failed, e.g. {}",
            failed.len(),
            failed[..failed.len().min(3)].join("; ")
        ));
    }
    // The last completion, rather than the moment the wait noticed it.
    let settled = snapshot
        .values()
        .filter_map(|s| s.completed.get(&1).copied())
        .max()
        .filter(|_| problems.is_empty())
        .unwrap_or(settled);
    Ok(Populated {
        workload,
        tracker,
        keys,
        sent,
        started,
        created,
        settled,
        problems,
    })
}

/// Create→Completed latencies of generation 1, in milliseconds, with the completion times
/// (seconds after `populated.started`).
pub fn latencies(populated: &Populated) -> (Vec<f64>, Vec<f64>) {
    let snapshot = populated.tracker.snapshot();
    let mut latencies = Vec::new();
    let mut completions = Vec::new();
    for key in &populated.keys {
        let (Some(sent), Some(done)) = (
            populated.sent.get(key),
            snapshot.get(key).and_then(|s| s.completed.get(&1)),
        ) else {
            continue;
        };
        latencies.push(done.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
        completions.push(
            done.saturating_duration_since(populated.started)
                .as_secs_f64(),
        );
    }
    (latencies, completions)
}
