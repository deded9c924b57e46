//! Process-wide initialisation: `tracing` subscriber, log filter, OTLP export
//! and the W3C propagator.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Layered, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::args::{LogFormat, TelemetryArgs};
use crate::config::{OtelConfig, OtlpExport, OtlpProtocol, TelemetryConfig};
use crate::error::{Error, Result};
use crate::log_level::{LogLevelHandle, parse_filter};

/// Instrumentation scope name used for the tracer handed to `tracing-opentelemetry`.
const TRACER_NAME: &str = "kubetemplater";

/// Set once [`init_with_config`] got past its checks; never reset after success.
static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// The subscriber stack below the fmt layer.
type Base = Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// Targets whose spans never go to the OTLP exporter: the exporter's own
/// transport would otherwise trace itself (telemetry-induced telemetry).
const EXPORT_DENYLIST: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "reqwest",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry-otlp",
];

/// Returned by [`init`]; keep it alive for the life of the process.
///
/// Dropping it flushes and shuts down the tracer provider (blocking for at most
/// a few seconds). Prefer calling [`shutdown`](Self::shutdown) explicitly at the
/// end of `main` to see errors. When exporting over gRPC, do this while the
/// Tokio runtime is still running (the export rides on it), e.g. at the end of a
/// `#[tokio::main]` function. Shutdown blocks the calling thread; on a
/// current-thread runtime with gRPC export run it via
/// `tokio::task::spawn_blocking`, or the final export only ends by timeout.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    log_level: LogLevelHandle,
}

impl TelemetryGuard {
    /// A handle to read/replace the log filter at run time; give it to the admin
    /// server ([`AdminState::new`](crate::AdminState::new)).
    pub fn log_level(&self) -> LogLevelHandle {
        self.log_level.clone()
    }

    /// Whether spans are exported over OTLP.
    pub fn export_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports all finished spans now. No-op when export is off.
    pub fn force_flush(&self) -> Result<()> {
        if let Some(provider) = &self.provider {
            provider.force_flush()?;
        }
        Ok(())
    }

    /// Flushes and shuts down the tracer provider. No-op when export is off.
    pub fn shutdown(mut self) -> Result<()> {
        match self.provider.take() {
            Some(provider) => Ok(provider.shutdown()?),
            None => Ok(()),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "failed to shut down the OpenTelemetry tracer provider");
        }
    }
}

/// Initialises logging and tracing for a binary; call it first thing in `main`.
///
/// Resolves the configuration from `args` and the process environment (the only
/// place this crate reads it, see [`TelemetryConfig::resolve`]) and hands it to
/// [`init_with_config`]. `default_service` becomes `service.name` unless
/// `OTEL_SERVICE_NAME` (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
///
/// With gRPC export on, this must run inside a Tokio runtime.
///
/// # Errors
/// Invalid configuration, exporter construction failures, and
/// [`Error::AlreadyInitialized`] on a second call.
pub fn init(args: &TelemetryArgs, default_service: &str) -> Result<TelemetryGuard> {
    let config = TelemetryConfig::resolve(args, default_service, |name| std::env::var(name).ok())?;
    init_with_config(config)
}

/// Like [`init`], but with an already resolved configuration (no environment access).
///
/// Installs, as the global default: a `tracing-subscriber` registry with a
/// reloadable [`EnvFilter`], a fmt layer (pretty or JSON, on stderr), and — when
/// export is on — a `tracing-opentelemetry` layer feeding an SDK tracer provider
/// with a batch span processor and an OTLP exporter (gRPC via tonic or
/// HTTP/protobuf). `log` records are bridged into `tracing`. The global
/// OpenTelemetry text-map propagator is set to W3C TraceContext + Baggage, and
/// the global tracer provider to ours when exporting.
///
/// The SDK's batch span processor exports from its own background thread; the
/// gRPC exporter's tonic channel runs on the ambient Tokio runtime, which is why
/// gRPC export needs one ([`Error::NoTokioRuntime`] otherwise).
pub fn init_with_config(config: TelemetryConfig) -> Result<TelemetryGuard> {
    if INITIALIZED
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Err(Error::AlreadyInitialized);
    }
    let result = install(config);
    if result.is_err() {
        // Nothing global was installed (see `install`), so a retry may succeed.
        INITIALIZED.store(false, Ordering::SeqCst);
    }
    result
}

/// Builds everything, then installs the subscriber as the last fallible step.
fn install(config: TelemetryConfig) -> Result<TelemetryGuard> {
    let filter = parse_filter(&config.log_directive)?;
    let provider = match &config.otel.export {
        Some(export) => Some(build_provider(&config.otel, export)?),
        None => None,
    };

    let (filter_layer, reload_handle) = reload::Layer::new(filter);
    let fmt_layer: Box<dyn Layer<Base> + Send + Sync> = match config.log_format {
        LogFormat::Pretty => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(config.ansi)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(TRACER_NAME))
            .with_filter(export_filter())
    });

    let installed = Registry::default()
        .with(filter_layer)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init();
    if let Err(error) = installed {
        if let Some(provider) = provider {
            // Best effort: nothing was exported yet.
            let _ = provider.shutdown();
        }
        return Err(error.into());
    }

    opentelemetry::global::set_text_map_propagator(w3c_propagator());
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    tracing::debug!(
        service.name = %config.otel.service_name,
        log.directive = %config.log_directive,
        otlp.protocol = config.otel.export.as_ref().map(|e| tracing::field::display(e.protocol)),
        otlp.endpoint = config.otel.export.as_ref().map(|e| e.endpoint.as_str()),
        "telemetry initialised"
    );

    Ok(TelemetryGuard {
        provider,
        log_level: LogLevelHandle::new(reload_handle, config.log_directive),
    })
}

/// W3C TraceContext + Baggage, the propagator installed globally.
pub(crate) fn w3c_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// Everything except the exporter's own transport stack.
fn export_filter() -> Targets {
    EXPORT_DENYLIST.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, target| t.with_target(*target, LevelFilter::OFF),
    )
}

fn build_provider(otel: &OtelConfig, export: &OtlpExport) -> Result<SdkTracerProvider> {
    let exporter = match export.protocol {
        OtlpProtocol::Grpc => {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(Error::NoTokioRuntime);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(Protocol::Grpc)
                .with_endpoint(export.endpoint.clone())
                .build()?
        }
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(export.endpoint.clone())
            .build()?,
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(otel.sampler.to_sdk())
        .with_resource(otel.resource())
        .build())
}

/// Installs a test-friendly global subscriber; safe to call from every test.
///
/// The first call installs: an [`EnvFilter`] from `RUST_LOG` (default `info`),
/// a fmt layer writing through the test harness's capture, and a
/// `tracing-opentelemetry` layer backed by an SDK tracer provider **without**
/// exporter and with an always-on sampler, so spans carry real trace ids and
/// [`current_context`](crate::current_context) /
/// [`TraceContextInterceptor`](crate::TraceContextInterceptor) work. It also sets
/// the global W3C propagator. Later calls do nothing. If another global
/// subscriber was installed first, that one stays (no panic).
pub fn init_for_tests() {
    static TEST_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
    TEST_PROVIDER.get_or_init(|| {
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOn)
            .build();
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let _ = Registry::default()
            .with(filter)
            .with(fmt::layer().with_test_writer())
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(TRACER_NAME)))
            .try_init();
        opentelemetry::global::set_text_map_propagator(w3c_propagator());
        provider
    });
}
