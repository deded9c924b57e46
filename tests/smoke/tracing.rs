//! One trace across two processes: a span from this test process and a child span from a
//! second process (joined through W3C trace context) come back from Jaeger's query API as one
//! trace. Its own test binary, because telemetry is initialised once per process.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kubetemplater_e2e::eventually;

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_crosses_processes_and_reaches_jaeger() -> Result<()> {
    let target = devcluster::testing::target().await?;
    let Some(jaeger) = target.endpoints.as_ref().and_then(|e| e.jaeger.clone()) else {
        eprintln!("SKIP a_trace_crosses_processes_and_reaches_jaeger: needs devcluster's Jaeger");
        return Ok(());
    };
    let args = telemetry::TelemetryArgs {
        log_format: telemetry::LogFormat::Pretty,
        log_level: None,
        otlp_endpoint: Some(jaeger.otlp_grpc.clone()),
    };
    let guard = telemetry::init(&args, "kt-smoke-parent")?;

    let trace_id = {
        let span = tracing::info_span!("parent-work", side = "parent");
        let _entered = span.enter();
        let cx = telemetry::propagation::current_context();
        let trace_id =
            telemetry::propagation::trace_id_of(&cx).context("the parent span has no trace id")?;
        let mut headers = http::HeaderMap::new();
        telemetry::propagation::inject_http(&cx, &mut headers);
        let traceparent = headers
            .get("traceparent")
            .context("no traceparent injected")?
            .to_str()?
            .to_string();
        assert!(
            traceparent.contains(&trace_id),
            "{traceparent} carries {trace_id}"
        );
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_kt-trace-child"))
            .args([
                "--otlp-endpoint",
                &jaeger.otlp_grpc,
                "--traceparent",
                &traceparent,
            ])
            .status()?;
        if !status.success() {
            bail!("kt-trace-child failed: {status}");
        }
        trace_id
    };
    guard.shutdown()?;

    let url = format!("{}/api/traces/{trace_id}", jaeger.query);
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "Jaeger to return both spans as one trace",
        || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let resp = http.get(&url).send().await?;
                if !resp.status().is_success() {
                    return Ok(false);
                }
                let body: serde_json::Value = resp.json().await?;
                let trace = &body["data"][0];
                let spans = trace["spans"].as_array().cloned().unwrap_or_default();
                let ops: HashSet<&str> = spans
                    .iter()
                    .filter_map(|s| s["operationName"].as_str())
                    .collect();
                if !(ops.contains("parent-work") && ops.contains("child-work")) {
                    return Ok(false);
                }
                let services: HashSet<&str> = trace["processes"]
                    .as_object()
                    .map(|p| {
                        p.values()
                            .filter_map(|v| v["serviceName"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(
                    services,
                    HashSet::from(["kt-smoke-parent", "kt-trace-child"]),
                    "one trace, two processes"
                );
                let parent = spans
                    .iter()
                    .find(|s| s["operationName"] == "parent-work")
                    .context("parent span")?;
                let child = spans
                    .iter()
                    .find(|s| s["operationName"] == "child-work")
                    .context("child span")?;
                let child_of = child["references"].as_array().is_some_and(|refs| {
                    refs.iter()
                        .any(|r| r["refType"] == "CHILD_OF" && r["spanID"] == parent["spanID"])
                });
                assert!(
                    child_of,
                    "the child span's parent is the parent span: {child}"
                );
                Ok(true)
            }
        },
    )
    .await
}
