//! The ceiling: how many server-side applies per second the API server itself takes, with the
//! objects the templates hold (ConfigMaps of the same size) and this run's concurrency. The
//! system's throughput is reported as a fraction of it.

use std::time::Instant;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use crate::progress::Progress;
use crate::report::{Figure, Report, unit};
use crate::stats::Summary;
use crate::target::Target;
use crate::workload::{FIELD_MANAGER, RUN_LABEL, Workload};
use crate::{Error, Result};

/// Scenario name.
pub const SCENARIO: &str = "ceiling";

/// Arguments of `loadtest ceiling`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct CeilingArgs {
    /// ConfigMaps to apply.
    #[arg(long, default_value_t = 2000)]
    pub objects: usize,
    /// Namespaces to spread them over.
    #[arg(long, default_value_t = 20)]
    pub namespaces: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Leave the namespaces in place.
    #[arg(long)]
    pub keep: bool,
}

/// What a ceiling measurement found.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    /// Applies per second.
    pub per_s: f64,
    /// Wall time.
    pub seconds: f64,
}

/// Server-side applies `count` ConfigMaps `ceiling-<i>` (value `"0"`, as the templates' objects)
/// round-robin into `workload`'s namespaces, `concurrency` at a time; adds `ceiling.*` figures.
pub async fn measure(
    target: &Target,
    workload: &Workload,
    count: usize,
    concurrency: usize,
    quiet: bool,
    report: &mut Report,
) -> Result<Ceiling> {
    let progress = Progress::new("ceiling", count as u64, "applies", quiet);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let started = Instant::now();
    let latencies: Vec<f64> = futures::stream::iter(0..count)
        .map(|i| {
            let ns = &workload.namespaces[i % workload.namespaces.len()];
            let api: Api<ConfigMap> = Api::namespaced(target.client.clone(), ns);
            let (params, progress) = (&params, &progress);
            async move {
                let name = format!("ceiling-{i}");
                let object = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": ns,
                                 "labels": {RUN_LABEL: workload.run}},
                    "data": {"v": "0"}
                });
                let sent = Instant::now();
                api.patch(&name, params, &Patch::Apply(&object))
                    .await
                    .map_err(|e| Error::Cluster(format!("applying ConfigMap {ns}/{name}: {e}")))?;
                progress.step();
                Ok::<_, Error>(sent.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    let per_s = count as f64 / seconds.max(1e-9);
    let s = Summary::new(latencies);
    report.figures.push(
        Figure::new("ceiling.applies_per_s", per_s, unit::PER_S).describe(
            "server-side applies of the same ConfigMaps per second, straight from this client",
        ),
    );
    for (p, name) in [(50.0, "p50"), (99.0, "p99")] {
        if let Some(v) = s.percentile(p) {
            report
                .figures
                .push(Figure::new(format!("ceiling.apply_ms.{name}"), v, unit::MS));
        }
    }
    Ok(Ceiling { per_s, seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: CeilingArgs,
        }
        let cli = <Cli as clap::Parser>::parse_from(["x"]);
        assert_eq!(cli.args.objects, 2000);
        assert_eq!(cli.args.concurrency, 32);
    }
}
