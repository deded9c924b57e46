//! The crate's error type and [`Result`] alias.

/// Everything that can go wrong while setting up or running telemetry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`init`](crate::init) (or [`init_with_config`](crate::init_with_config)) was
    /// called more than once in this process.
    #[error("telemetry is already initialised in this process")]
    AlreadyInitialized,

    /// An environment variable (or flag) holds a value we cannot use.
    #[error("invalid value {value:?} for {name}: {reason}")]
    InvalidConfig {
        /// The variable or flag name, e.g. `OTEL_TRACES_SAMPLER`.
        name: String,
        /// The offending value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A log filter directive (e.g. `info,kube=debug`) failed to parse.
    #[error("invalid log filter directive {directive:?}: {source}")]
    InvalidDirective {
        /// The directive as given.
        directive: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },

    /// Swapping the log filter failed (the subscriber is gone).
    #[error("failed to reload the log filter: {0}")]
    Reload(#[from] tracing_subscriber::reload::Error),

    /// OTLP export over gRPC was requested outside of a Tokio runtime.
    #[error(
        "OTLP export over gRPC needs a Tokio runtime: call telemetry::init from inside the runtime (e.g. in a #[tokio::main] fn)"
    )]
    NoTokioRuntime,

    /// The OTLP span exporter could not be built.
    #[error("failed to build the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),

    /// The global `tracing` subscriber (or the `log` bridge) could not be installed,
    /// usually because something else installed one first.
    #[error("failed to install the global tracing subscriber: {0}")]
    GlobalSubscriber(#[from] tracing_subscriber::util::TryInitError),

    /// Flushing or shutting down the tracer provider failed.
    #[error("failed to flush or shut down the tracer provider: {0}")]
    TracerProvider(#[from] opentelemetry_sdk::error::OTelSdkError),

    /// Encoding the metrics registry failed.
    #[error("failed to encode metrics: {0}")]
    MetricsEncoding(#[from] std::fmt::Error),

    /// Binding or serving the admin endpoint failed.
    #[error("admin server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
