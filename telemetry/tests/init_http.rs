//! `init` end to end with OTLP/HTTP export to an in-process fake collector.
//! Its own test binary because `init` installs process-wide state.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use kubetemplater_telemetry::{
    Error, LogFormat, OtelConfig, OtlpExport, OtlpProtocol, SamplerConfig, TelemetryArgs,
    TelemetryConfig, current_context, init, init_for_tests, init_with_config, trace_id_of,
};
use tokio::sync::mpsc;

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_http_and_refuses_a_second_init() {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Option<String>, Bytes)>();
    let collector = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = tx.send((content_type, body));
            async { StatusCode::OK }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        log_directive: "info".to_owned(),
        ansi: false,
        otel: OtelConfig {
            service_name: "init-http-test".to_owned(),
            resource_attributes: vec![("k8s.namespace.name".to_owned(), "kt-test".to_owned())],
            sampler: SamplerConfig::AlwaysOn,
            export: Some(OtlpExport {
                protocol: OtlpProtocol::HttpProtobuf,
                endpoint: format!("http://{addr}/v1/traces"),
            }),
        },
    };
    let guard = init_with_config(config.clone()).expect("first init");
    assert!(guard.export_enabled());

    // Second initialisation: an error, not a panic; the test helper is a no-op.
    assert!(matches!(
        init_with_config(config),
        Err(Error::AlreadyInitialized)
    ));
    assert!(matches!(
        init(&TelemetryArgs::default(), "again"),
        Err(Error::AlreadyInitialized)
    ));
    init_for_tests();

    // The log filter can be changed at run time.
    let level = guard.log_level();
    assert_eq!(level.current(), "info");
    level.set("debug,h2=info").expect("valid directive");
    assert_eq!(guard.log_level().current(), "debug,h2=info");
    assert!(level.set("h2=shouting").is_err());

    let trace_id = {
        let span = tracing::info_span!("exported-span", answer = 42);
        let _entered = span.enter();
        tracing::info!("inside the exported span");
        trace_id_of(&current_context()).expect("the OpenTelemetry layer is installed")
    };

    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .expect("no panic")
        .expect("flushes");

    let (content_type, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("collector received a request")
        .expect("channel open");
    assert_eq!(content_type.as_deref(), Some("application/x-protobuf"));
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(&hex_to_bytes(&trace_id)),
        "trace id in the payload"
    );
    assert!(contains(b"exported-span"));
    assert!(contains(b"init-http-test"));
    assert!(contains(b"kt-test"));
}
