//! `init` end to end with OTLP/gRPC export to an in-process tonic collector.
//! Its own test binary because `init` installs process-wide state.

use std::time::Duration;

use kubetemplater_telemetry::{
    Error, LogFormat, OtelConfig, OtlpExport, OtlpProtocol, SamplerConfig, TelemetryConfig,
    current_context, init_with_config, trace_id_of,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::sync::mpsc;

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn config(endpoint: String) -> TelemetryConfig {
    TelemetryConfig {
        log_format: LogFormat::Pretty,
        log_directive: "info".to_owned(),
        ansi: false,
        otel: OtelConfig {
            service_name: "init-grpc-test".to_owned(),
            resource_attributes: Vec::new(),
            sampler: SamplerConfig::ParentBasedAlwaysOn,
            export: Some(OtlpExport {
                protocol: OtlpProtocol::Grpc,
                endpoint,
            }),
        },
    }
}

#[test]
fn exports_over_grpc() {
    // Outside a Tokio runtime gRPC export is refused, and nothing is installed.
    assert!(matches!(
        init_with_config(config("http://127.0.0.1:4317".to_owned())),
        Err(Error::NoTokioRuntime)
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Collector(tx)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );

        // A retry after the failure above succeeds.
        let guard = init_with_config(config(format!("http://{addr}"))).expect("init");
        let trace_id = {
            let span = tracing::info_span!("grpc-exported-span");
            let _entered = span.enter();
            trace_id_of(&current_context()).expect("the OpenTelemetry layer is installed")
        };
        tokio::task::spawn_blocking(move || guard.shutdown())
            .await
            .expect("no panic")
            .expect("flushes");

        let request = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("collector received an export")
            .expect("channel open");
        let resource_spans = request.resource_spans.first().expect("resource spans");
        let service_name = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{v:?}"));
        assert!(
            service_name.is_some_and(|v| v.contains("init-grpc-test")),
            "service.name resource attribute"
        );
        let span = resource_spans
            .scope_spans
            .iter()
            .flat_map(|s| &s.spans)
            .find(|s| s.name == "grpc-exported-span")
            .expect("span exported");
        let exported_trace_id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(exported_trace_id, trace_id);
    });
}
