//! Telemetry shared by every kubetemplater binary (coordinator, worker,
//! webhook, ktctl, loadtest): logging, OTLP tracing, W3C trace-context
//! propagation, Prometheus metrics and the admin endpoint.
//!
//! # What `main` does
//!
//! 1. `#[clap(flatten)]` [`TelemetryArgs`] (and, for long-running binaries,
//!    [`AdminArgs`]) into its `Args`.
//! 2. Calls [`init`] **first thing**, keeping the returned [`TelemetryGuard`]
//!    alive until the end of `main`; it flushes spans on drop (or via
//!    [`TelemetryGuard::shutdown`]) and provides the [`LogLevelHandle`].
//! 3. Owns the metrics [`Registry`], giving each component a prefixed
//!    sub-registry, then shares it as `Arc<Registry>` with the admin server.
//! 4. Registers [`Readiness`] checks, binds the [`AdminServer`] and runs it
//!    until its `CancellationToken` is cancelled.
//!
//! Logging: `--log-format pretty|json` (`KT_LOG_FORMAT`) and `--log-level`
//! (`KT_LOG`, else `RUST_LOG`, else `info`), changeable at run time through
//! `PUT /log-level`. Tracing export follows the standard OpenTelemetry
//! variables (`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_SDK_DISABLED`)
//! plus `--otlp-endpoint` (`KT_OTLP_ENDPOINT`); it is off unless an endpoint is
//! given. See [`OtelConfig::from_env`] for the exact rules.
//!
//! Trace context crosses process boundaries with the helpers in
//! [`propagation`]: HTTP headers, gRPC metadata ([`TraceContextInterceptor`]
//! for tonic clients) and the `kubetemplater.io/traceparent` object annotation,
//! which lets the worker continue the trace of the admission that created an
//! object.
//!
//! Tests in other crates call [`init_for_tests`] instead of [`init`].
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use clap::Parser;
//! use kubetemplater_telemetry::{self as telemetry, prometheus_client};
//! use prometheus_client::metrics::counter::Counter;
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Debug, Parser)]
//! struct Args {
//!     #[clap(flatten)]
//!     telemetry: telemetry::TelemetryArgs,
//!     #[clap(flatten)]
//!     admin: telemetry::AdminArgs,
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let args = Args::parse();
//!     let telemetry = telemetry::init(&args.telemetry, "worker")?;
//!
//!     let mut registry = telemetry::Registry::with_prefix("kubetemplater");
//!     let reconciles = Counter::<u64>::default();
//!     registry
//!         .sub_registry_with_prefix("worker")
//!         .register("reconciles", "Reconciliations run", reconciles.clone());
//!
//!     let readiness = telemetry::Readiness::new();
//!     readiness.register("informers");
//!
//!     let shutdown = CancellationToken::new();
//!     let state = telemetry::AdminState::new(
//!         Arc::new(registry),
//!         readiness.clone(),
//!         telemetry.log_level(),
//!     );
//!     let admin = telemetry::AdminServer::bind(&args.admin, state).await?;
//!     let admin = tokio::spawn(admin.run(shutdown.clone()));
//!
//!     // ... start informers, then:
//!     readiness.mark_ready("informers");
//!     reconciles.inc();
//!
//!     tokio::signal::ctrl_c().await?;
//!     shutdown.cancel();
//!     admin.await??;
//!     telemetry.shutdown()?;
//!     Ok(())
//! }
//! ```

mod admin;
mod args;
mod config;
mod error;
mod init;
mod log_level;
mod metrics;
pub mod propagation;
mod readiness;

pub use admin::{AdminServer, AdminState, router, serve};
pub use args::{
    AdminArgs, DEFAULT_ADMIN_ADDR, DEFAULT_LOG_DIRECTIVE, LogFormat, TelemetryArgs, parse_duration,
};
pub use config::{OtelConfig, OtlpExport, OtlpProtocol, SamplerConfig, TelemetryConfig};
pub use error::{Error, Result};
pub use init::{TelemetryGuard, init, init_for_tests, init_with_config};
pub use log_level::LogLevelHandle;
pub use metrics::{
    OPENMETRICS_CONTENT_TYPE, Registry, encode as encode_metrics, prometheus_client,
};
pub use propagation::{
    TRACEPARENT_ANNOTATION, TRACESTATE_ANNOTATION, TraceContextInterceptor, current_context,
    extract_annotations, extract_grpc, extract_http, inject_annotations, inject_grpc, inject_http,
    set_parent, trace_id_of,
};
pub use readiness::Readiness;
