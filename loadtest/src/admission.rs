//! `admission`: webhook latency three ways: from this client (server-side dry-run creates of a
//! KubeTemplate, which pass through both webhooks but store nothing), from the webhook's own
//! histogram (`kubetemplater_webhook_duration_seconds`), and as kube-apiserver reports it
//! (`apiserver_admission_webhook_admission_duration_seconds`). The same dry-run creates in a
//! namespace the webhooks skip give the baseline, so the webhooks' added latency shows.

use std::time::Instant;

use api::KubeTemplate;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::json;

use crate::plot::Panel;
use crate::progress::Progress;
use crate::promtext::{self, Scrape};
use crate::report::{Figure, Report, unit};
use crate::stats::Summary;
use crate::target::Target;
use crate::workload::{self, FIELD_MANAGER, Workload};
use crate::{Error, Result, burst};

/// Scenario name.
pub const SCENARIO: &str = "admission";

/// The webhook's own review-time histogram.
const WEBHOOK_HISTOGRAM: &str = "kubetemplater_webhook_duration_seconds";
/// kube-apiserver's histogram of each webhook call.
const APISERVER_HISTOGRAM: &str = "apiserver_admission_webhook_admission_duration_seconds";

/// Arguments of `loadtest admission`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct AdmissionArgs {
    /// Dry-run creates to send (each side: with webhooks, and the baseline).
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// ConfigMaps in the template (what the validating webhook evaluates).
    #[arg(long, default_value_t = 10)]
    pub objects: usize,
}

/// Sends `n` dry-run creates of `kt` into its namespace; client latencies in ms.
async fn dry_runs(
    api: &Api<KubeTemplate>,
    kt: &KubeTemplate,
    n: usize,
    concurrency: usize,
    phase: &str,
    quiet: bool,
) -> Result<Vec<f64>> {
    let progress = Progress::new(phase, n as u64, "requests", quiet);
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    };
    let out = futures::stream::iter(0..n)
        .map(|i| {
            let (params, progress) = (&params, &progress);
            let mut kt = kt.clone();
            kt.metadata.name = Some(format!("dry-{i}"));
            async move {
                let sent = Instant::now();
                api.create(params, &kt)
                    .await
                    .map_err(|e| Error::Cluster(format!("dry-run create {i} ({phase}): {e}")))?;
                progress.step();
                Ok::<_, Error>(sent.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    progress.finish();
    Ok(out)
}

async fn webhook_scrapes(target: &Target) -> Vec<Scrape> {
    let mut out = Vec::new();
    for name in target.components("webhook") {
        if let Ok(s) = target.component_metrics(&name).await {
            out.push(s);
        }
    }
    out
}

fn summed_histogram(scrapes: &[Scrape], name: &str, filter: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let mut total: Vec<(f64, f64)> = Vec::new();
    for s in scrapes {
        for (bound, count) in s.histogram(name, filter) {
            match total.iter_mut().find(|(b, _)| b.total_cmp(&bound).is_eq()) {
                Some(entry) => entry.1 += count,
                None => total.push((bound, count)),
            }
        }
    }
    total.sort_by(|a, b| a.0.total_cmp(&b.0));
    total
}

fn push_latency(report: &mut Report, prefix: &str, values: &[f64], what: &str) {
    let s = Summary::new(values.iter().copied());
    for (p, name) in [(50.0, "p50"), (95.0, "p95"), (99.0, "p99"), (100.0, "max")] {
        if let Some(v) = s.percentile(p) {
            report
                .figures
                .push(Figure::new(format!("{prefix}.{name}"), v, unit::MS).describe(what));
        }
    }
}

fn push_histogram(report: &mut Report, prefix: &str, delta: &[(f64, f64)], what: &str) -> bool {
    let mut any = false;
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        if let Some(v) = promtext::histogram_quantile(q, delta) {
            report
                .figures
                .push(Figure::new(format!("{prefix}.{name}"), v * 1000.0, unit::MS).describe(what));
            any = true;
        }
    }
    any
}

/// Runs `admission`.
pub async fn run(
    target: &Target,
    args: &AdmissionArgs,
    quiet: bool,
    report: &mut Report,
) -> Result<Vec<Panel>> {
    if args.requests == 0 || args.objects == 0 {
        return Err(Error::InvalidArgument(
            "--requests and --objects must be at least 1".into(),
        ));
    }
    report.parameters = serde_json::to_value(args).unwrap_or_default();
    let client = &target.client;
    let mut workload = Workload::new(&target.system_namespace, 1, args.objects);
    workload.create_namespaces(client, true, 1, true).await?;
    // The baseline namespace: the webhooks' namespaceSelector skips it.
    let baseline_ns = format!("lt-{}-exempt", workload.run);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &baseline_ns,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": baseline_ns, "labels": {
                    workload::RUN_LABEL: workload.run,
                    "kubetemplater.io/admission": "disabled",
                }}
            })),
        )
        .await
        .map_err(|e| Error::Cluster(format!("creating namespace {baseline_ns}: {e}")))?;
    // `Workload::new` above made exactly one namespace.
    let ns = workload.namespaces[0].clone();
    let kt = workload.template(&(ns.clone(), "dry".to_owned()), "0")?;
    let api: Api<KubeTemplate> = Api::namespaced(client.clone(), &ns);

    // The policy reaches the webhooks through their watch: wait until a dry run is admitted.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match dry_runs(&api, &kt, 1, 1, "warm-up", true).await {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
    let webhooks_before = webhook_scrapes(target).await;
    let apiserver_before = target.apiserver_metrics().await.ok();
    let with_webhooks = dry_runs(
        &api,
        &kt,
        args.requests,
        args.concurrency,
        "webhooks",
        quiet,
    )
    .await?;
    let webhooks_after = webhook_scrapes(target).await;
    let apiserver_after = target.apiserver_metrics().await.ok();

    let mut exempt_kt = kt.clone();
    exempt_kt.metadata.namespace = Some(baseline_ns.clone());
    let exempt_api: Api<KubeTemplate> = Api::namespaced(client.clone(), &baseline_ns);
    let baseline = dry_runs(
        &exempt_api,
        &exempt_kt,
        args.requests,
        args.concurrency,
        "baseline",
        quiet,
    )
    .await?;

    push_latency(
        report,
        "client_ms",
        &with_webhooks,
        "dry-run create through both webhooks, from this client",
    );
    push_latency(
        report,
        "baseline_ms",
        &baseline,
        "the same dry-run create in a namespace the webhooks skip",
    );
    let (a, b) = (
        Summary::new(with_webhooks.iter().copied()).percentile(50.0),
        Summary::new(baseline.iter().copied()).percentile(50.0),
    );
    if let (Some(a), Some(b)) = (a, b) {
        report.figures.push(
            Figure::new("added_by_webhooks_ms.p50", a - b, unit::MS)
                .describe("client p50 with webhooks − baseline p50"),
        );
    }

    if webhooks_after.is_empty() {
        report.notes.push(
            "the webhook's own histogram is unavailable (not a devcluster; name replicas with --metrics webhook-0=URL)"
                .into(),
        );
    } else {
        for (endpoint, operation) in [
            ("validate", "validate-kubetemplate"),
            ("mutate", "mutate-bucket"),
        ] {
            let filter: &[(&str, &str)] = &[("operation", operation)];
            let before = summed_histogram(&webhooks_before, WEBHOOK_HISTOGRAM, filter);
            let after = summed_histogram(&webhooks_after, WEBHOOK_HISTOGRAM, filter);
            let delta = promtext::histogram_delta(&before, &after);
            push_histogram(
                report,
                &format!("webhook_ms.{endpoint}"),
                &delta,
                "the webhook's own review time (histogram, interpolated)",
            );
        }
    }
    match (apiserver_before, apiserver_after) {
        (Some(before), Some(after)) => {
            for kind in ["validating", "admit"] {
                let filter: &[(&str, &str)] = &[("type", kind), ("operation", "CREATE")];
                let delta = promtext::histogram_delta(
                    &before.histogram(APISERVER_HISTOGRAM, filter),
                    &after.histogram(APISERVER_HISTOGRAM, filter),
                );
                push_histogram(
                    report,
                    &format!("apiserver_ms.{kind}"),
                    &delta,
                    "kube-apiserver's time for the webhook call (histogram, interpolated)",
                );
            }
        }
        _ => report.notes.push(
            "kube-apiserver's webhook histogram is unavailable (no access to /metrics)".into(),
        ),
    }
    report.series.push(burst::cdf("client_cdf", &with_webhooks));
    report.series.push(burst::cdf("baseline_cdf", &baseline));
    workload.namespaces.push(baseline_ns);
    workload::cleanup(
        client,
        &target.system_namespace,
        Some(&workload.run),
        std::time::Duration::from_secs(120),
        true,
    )
    .await?;
    Ok(vec![Panel::new(
        "Dry-run create latency from the client (CDF)",
        "fraction",
        &["client_cdf", "baseline_cdf"],
    )])
}
