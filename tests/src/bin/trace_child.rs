//! Second process of the cross-process tracing test: continues the trace whose W3C
//! `traceparent` it is given, records one child span, exports it and exits.

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    telemetry: telemetry::TelemetryArgs,
    /// The parent's `traceparent` header value.
    #[arg(long)]
    traceparent: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let guard = telemetry::init(&args.telemetry, "kt-trace-child")?;
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_str(&args.traceparent)?,
        );
        let parent = telemetry::propagation::extract_http(&headers);
        {
            let span = tracing::info_span!("child-work", side = "child");
            telemetry::propagation::set_parent(&span, parent);
            let _entered = span.enter();
            tracing::info!("working in the child process");
        }
        guard.shutdown()?;
        Ok(())
    })
}
