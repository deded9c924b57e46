//! W3C trace-context propagation over HTTP headers, gRPC metadata and
//! Kubernetes object annotations.
//!
//! HTTP and gRPC carriers use W3C TraceContext + Baggage (`traceparent`,
//! `tracestate`, `baggage`); annotations carry TraceContext only. The
//! propagators are fixed here rather than taken from
//! `opentelemetry::global`, so these functions behave the same whether or not
//! [`init`](crate::init) ran (it installs the same propagator globally).
//!
//! Typical flows:
//! * client: [`TraceContextInterceptor`] on a tonic channel, or
//!   [`inject_http`]`(&`[`current_context`]`(), headers)` for HTTP;
//! * server: create the request span, then [`set_parent`] it from
//!   [`extract_grpc`] / [`extract_http`] **before entering it**;
//! * webhook → worker: the webhook [`inject_annotations`] into the object it
//!   admits; the worker [`extract_annotations`] and uses the result as parent of
//!   its reconcile span, continuing the same trace.

use std::collections::BTreeMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::init::w3c_propagator;

/// Annotation holding the W3C `traceparent` of the operation that produced an object.
pub const TRACEPARENT_ANNOTATION: &str = "kubetemplater.io/traceparent";
/// Annotation holding the W3C `tracestate` (absent when empty).
pub const TRACESTATE_ANNOTATION: &str = "kubetemplater.io/tracestate";

/// The OpenTelemetry context of the current `tracing` span (empty when there is
/// no current span or no OpenTelemetry layer).
pub fn current_context() -> Context {
    tracing::Span::current().context()
}

/// Lower-case 32-digit hex trace id of the span in `cx`, `None` if it has no valid span.
pub fn trace_id_of(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Makes `span` a child of `parent` (typically extracted from an incoming
/// request). Must be called before the span is first entered; returns whether
/// the parent was applied. A `parent` without a valid span context is ignored,
/// so the span keeps its local parent (or stays a root).
pub fn set_parent(span: &tracing::Span, parent: Context) -> bool {
    if !parent.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(parent).is_ok()
}

// ---------------------------------------------------------------------------
// HTTP

/// Writes `cx` (trace context + baggage) into HTTP headers. Does nothing when
/// `cx` has no valid span and no baggage.
pub fn inject_http(cx: &Context, headers: &mut http::HeaderMap) {
    w3c_propagator().inject_context(cx, &mut HeaderInjector(headers));
}

/// Reads the trace context + baggage from HTTP headers. Absent or malformed
/// headers yield a context without a remote span (never panics).
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    w3c_propagator().extract(&HeaderExtractor(headers))
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(name) = http::HeaderName::from_bytes(key.as_bytes()) else {
            return;
        };
        if value.is_empty() {
            self.0.remove(name);
        } else if let Ok(value) = http::HeaderValue::from_str(&value) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

// ---------------------------------------------------------------------------
// gRPC (tonic)

/// Writes `cx` (trace context + baggage) into gRPC request metadata.
pub fn inject_grpc(cx: &Context, metadata: &mut MetadataMap) {
    w3c_propagator().inject_context(cx, &mut MetadataInjector(metadata));
}

/// Reads the trace context + baggage from gRPC metadata. Absent or malformed
/// entries yield a context without a remote span (never panics).
pub fn extract_grpc(metadata: &MetadataMap) -> Context {
    w3c_propagator().extract(&MetadataExtractor(metadata))
}

/// Server side: [`set_parent`] of `span` from the request's metadata. Call it
/// right after creating the request span, before entering it.
pub fn set_parent_from_grpc<T>(span: &tracing::Span, request: &tonic::Request<T>) -> bool {
    set_parent(span, extract_grpc(request.metadata()))
}

/// Server side: [`set_parent`] of `span` from HTTP request headers.
pub fn set_parent_from_http(span: &tracing::Span, headers: &http::HeaderMap) -> bool {
    set_parent(span, extract_http(headers))
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(key) = MetadataKey::from_bytes(key.as_bytes()) else {
            return;
        };
        if value.is_empty() {
            self.0.remove(key);
        } else if let Ok(value) = MetadataValue::try_from(value) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Tonic client interceptor that injects the current `tracing` span's context
/// into every outgoing request.
///
/// ```no_run
/// # async fn demo() -> Result<(), tonic::transport::Error> {
/// use kubetemplater_telemetry::TraceContextInterceptor;
/// use tonic::service::interceptor::InterceptedService;
///
/// let channel = tonic::transport::Channel::from_static("http://coordinator:50051")
///     .connect()
///     .await?;
/// let traced = InterceptedService::new(channel, TraceContextInterceptor);
/// // Generated clients: `FooClient::with_interceptor(channel, TraceContextInterceptor)`.
/// # let _ = traced;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_grpc(&current_context(), request.metadata_mut());
        Ok(request)
    }
}

// ---------------------------------------------------------------------------
// Object annotations

/// Stores `cx`'s span as [`TRACEPARENT_ANNOTATION`] (and [`TRACESTATE_ANNOTATION`]
/// if non-empty, otherwise that key is removed). Leaves the map unchanged when
/// `cx` has no valid span; use [`remove_annotations`] to clear stale values.
pub fn inject_annotations(cx: &Context, annotations: &mut BTreeMap<String, String>) {
    TraceContextPropagator::new().inject_context(cx, &mut AnnotationCarrier(annotations));
}

/// The context stored by [`inject_annotations`], as a remote parent; `None` when
/// the annotation is absent or invalid.
pub fn extract_annotations(annotations: &BTreeMap<String, String>) -> Option<Context> {
    let cx = TraceContextPropagator::new().extract(&AnnotationReader(annotations));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Removes both trace-context annotations.
pub fn remove_annotations(annotations: &mut BTreeMap<String, String>) {
    annotations.remove(TRACEPARENT_ANNOTATION);
    annotations.remove(TRACESTATE_ANNOTATION);
}

/// [`set_parent`] of `span` from an object's annotations.
pub fn set_parent_from_annotations(
    span: &tracing::Span,
    annotations: &BTreeMap<String, String>,
) -> bool {
    extract_annotations(annotations).is_some_and(|cx| set_parent(span, cx))
}

/// Maps W3C field names to annotation keys.
fn annotation_key(field: &str) -> Option<&'static str> {
    match field {
        "traceparent" => Some(TRACEPARENT_ANNOTATION),
        "tracestate" => Some(TRACESTATE_ANNOTATION),
        _ => None,
    }
}

struct AnnotationCarrier<'a>(&'a mut BTreeMap<String, String>);

impl Injector for AnnotationCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Some(key) = annotation_key(key) else {
            return;
        };
        if value.is_empty() {
            self.0.remove(key);
        } else {
            self.0.insert(key.to_owned(), value);
        }
    }
}

struct AnnotationReader<'a>(&'a BTreeMap<String, String>);

impl Extractor for AnnotationReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        annotation_key(key)
            .and_then(|k| self.0.get(k))
            .map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        ["traceparent", "tracestate"]
            .into_iter()
            .filter(|field| self.get(field).is_some())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId, Tracer as _, TracerProvider as _};
    use opentelemetry::{KeyValue, baggage::BaggageExt as _};
    use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// A real SDK tracer provider without exporter.
    fn tracer_provider_for_tests() -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOn)
            .build()
    }

    fn tracer() -> SdkTracer {
        tracer_provider_for_tests().tracer("test")
    }

    /// A context whose active span is a fresh root span.
    fn parent_context(tracer: &SdkTracer) -> Context {
        Context::current_with_span(tracer.start("parent"))
    }

    fn ids(cx: &Context) -> (TraceId, SpanId) {
        let span = cx.span();
        let sc = span.span_context();
        (sc.trace_id(), sc.span_id())
    }

    /// Starts a child of `remote` and asserts it continues `parent`'s trace.
    fn assert_child_of(tracer: &SdkTracer, parent: &Context, remote: &Context) {
        let (trace_id, span_id) = ids(parent);
        assert!(remote.span().span_context().is_remote());
        assert_eq!(ids(remote), (trace_id, span_id));
        let child = tracer.start_with_context("child", remote);
        let data = child.exported_data().expect("recording span");
        assert_eq!(data.span_context.trace_id(), trace_id);
        assert_eq!(data.parent_span_id, span_id);
        assert_ne!(data.span_context.span_id(), span_id);
    }

    #[test]
    fn http_round_trip_with_baggage() {
        let tracer = tracer();
        let parent = parent_context(&tracer).with_baggage(vec![KeyValue::new("tenant", "team-a")]);
        let mut headers = http::HeaderMap::new();
        inject_http(&parent, &mut headers);
        assert!(headers.contains_key("traceparent"));
        assert!(
            !headers.contains_key("tracestate"),
            "empty tracestate is omitted"
        );
        let remote = extract_http(&headers);
        assert_child_of(&tracer, &parent, &remote);
        assert_eq!(
            remote.baggage().get("tenant").map(|v| v.to_string()),
            Some("team-a".to_owned())
        );
        assert_eq!(trace_id_of(&remote), trace_id_of(&parent));
    }

    #[test]
    fn http_invalid_or_absent_headers_give_empty_context() {
        assert!(!extract_http(&http::HeaderMap::new()).has_active_span());
        let mut headers = http::HeaderMap::new();
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            headers.insert("traceparent", http::HeaderValue::from_static(bad));
            let cx = extract_http(&headers);
            assert!(!cx.span().span_context().is_valid(), "{bad}");
            assert_eq!(trace_id_of(&cx), None);
        }
        // Non-UTF-8 header value.
        headers.insert(
            "traceparent",
            http::HeaderValue::from_bytes(b"\xff\xfe").expect("opaque bytes are allowed"),
        );
        assert!(!extract_http(&headers).span().span_context().is_valid());
        // Injecting an empty context writes nothing.
        let mut out = http::HeaderMap::new();
        inject_http(&Context::new(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn grpc_round_trip() {
        let tracer = tracer();
        let parent = parent_context(&tracer);
        let mut metadata = MetadataMap::new();
        inject_grpc(&parent, &mut metadata);
        assert!(metadata.get("traceparent").is_some());
        let remote = extract_grpc(&metadata);
        assert_child_of(&tracer, &parent, &remote);

        let mut bad = MetadataMap::new();
        bad.insert("traceparent", MetadataValue::from_static("00-nope"));
        assert!(!extract_grpc(&bad).span().span_context().is_valid());
        assert!(!extract_grpc(&MetadataMap::new()).has_active_span());
    }

    #[test]
    fn annotations_round_trip_and_tracestate() {
        use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
        let tracer = tracer();
        let parent = parent_context(&tracer);
        let mut annotations = BTreeMap::from([
            ("app".to_owned(), "x".to_owned()),
            (TRACESTATE_ANNOTATION.to_owned(), "stale=1".to_owned()),
        ]);
        inject_annotations(&parent, &mut annotations);
        let traceparent = annotations.get(TRACEPARENT_ANNOTATION).expect("written");
        assert!(traceparent.starts_with("00-"));
        assert!(
            !annotations.contains_key(TRACESTATE_ANNOTATION),
            "stale tracestate is removed"
        );
        assert_eq!(annotations.get("app").map(String::as_str), Some("x"));
        let remote = extract_annotations(&annotations).expect("valid");
        assert_child_of(&tracer, &parent, &remote);

        // A remote context with trace state survives the trip.
        let sc = SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
            SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "v1")]).expect("valid"),
        );
        let cx = Context::new().with_remote_span_context(sc);
        let mut annotations = BTreeMap::new();
        inject_annotations(&cx, &mut annotations);
        assert_eq!(
            annotations.get(TRACEPARENT_ANNOTATION).map(String::as_str),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(
            annotations.get(TRACESTATE_ANNOTATION).map(String::as_str),
            Some("vendor=v1")
        );
        let back = extract_annotations(&annotations).expect("valid");
        assert_eq!(
            trace_id_of(&back).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            back.span().span_context().trace_state().get("vendor"),
            Some("v1")
        );

        remove_annotations(&mut annotations);
        assert!(annotations.is_empty());
    }

    #[test]
    fn annotations_absent_or_invalid_give_none() {
        assert!(extract_annotations(&BTreeMap::new()).is_none());
        let bad = BTreeMap::from([(TRACEPARENT_ANNOTATION.to_owned(), "nonsense".to_owned())]);
        assert!(extract_annotations(&bad).is_none());
        // The plain W3C key is not ours.
        let plain = BTreeMap::from([(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]);
        assert!(extract_annotations(&plain).is_none());
        // Empty context: map untouched.
        let mut annotations = BTreeMap::from([("a".to_owned(), "b".to_owned())]);
        inject_annotations(&Context::new(), &mut annotations);
        assert_eq!(annotations.len(), 1);
    }

    /// A thread-local subscriber with an OpenTelemetry layer over a real SDK tracer,
    /// plus an in-memory exporter to inspect finished spans.
    fn with_otel_subscriber<R>(
        f: impl FnOnce() -> R,
    ) -> (R, Vec<opentelemetry_sdk::trace::SpanData>) {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOn)
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let result = tracing::subscriber::with_default(subscriber, f);
        // Read before the provider is dropped: its shutdown clears the exporter.
        let spans = exporter.get_finished_spans().expect("finished spans");
        drop(provider);
        (result, spans)
    }

    #[test]
    fn current_context_and_interceptor_use_the_current_span() {
        use tonic::service::Interceptor as _;
        let ((outer_trace, request), _) = with_otel_subscriber(|| {
            assert_eq!(trace_id_of(&current_context()), None, "no span yet");
            let span = tracing::info_span!("client-call");
            let _entered = span.enter();
            let outer_trace = trace_id_of(&current_context()).expect("span has a trace");
            let request = TraceContextInterceptor
                .call(tonic::Request::new(()))
                .expect("interceptor never fails");
            (outer_trace, request)
        });
        let remote = extract_grpc(request.metadata());
        assert_eq!(trace_id_of(&remote), Some(outer_trace));

        // Without a current span the interceptor adds nothing.
        let request = TraceContextInterceptor
            .call(tonic::Request::new(()))
            .expect("interceptor never fails");
        assert!(request.metadata().get("traceparent").is_none());
    }

    #[test]
    fn set_parent_makes_server_span_a_child_of_the_incoming_context() {
        let tracer = tracer();
        let incoming = parent_context(&tracer);
        let (incoming_trace, incoming_span) = ids(&incoming);
        let mut request = tonic::Request::new(());
        inject_grpc(&incoming, request.metadata_mut());
        let mut headers = http::HeaderMap::new();
        inject_http(&incoming, &mut headers);
        let mut annotations = BTreeMap::new();
        inject_annotations(&incoming, &mut annotations);

        let (applied, spans) = with_otel_subscriber(|| {
            let grpc = tracing::info_span!("grpc-server");
            let http = tracing::info_span!("http-server");
            let reconcile = tracing::info_span!("reconcile");
            let applied = [
                set_parent_from_grpc(&grpc, &request),
                set_parent_from_http(&http, &headers),
                set_parent_from_annotations(&reconcile, &annotations),
            ];
            for span in [&grpc, &http, &reconcile] {
                let _entered = span.enter();
                assert_eq!(
                    ids(&current_context()).0,
                    incoming_trace,
                    "entered span continues the incoming trace"
                );
            }
            // An empty incoming context is ignored and leaves a root span.
            let orphan = tracing::info_span!("orphan");
            assert!(!set_parent_from_http(&orphan, &http::HeaderMap::new()));
            drop((grpc, http, reconcile, orphan));
            applied
        });
        assert_eq!(applied, [true, true, true]);
        for name in ["grpc-server", "http-server", "reconcile"] {
            let span = spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("span {name} exported"));
            assert_eq!(span.span_context.trace_id(), incoming_trace, "{name}");
            assert_eq!(span.parent_span_id, incoming_span, "{name}");
        }
        let orphan = spans.iter().find(|s| s.name == "orphan").expect("orphan");
        assert_ne!(orphan.span_context.trace_id(), incoming_trace);
        assert_eq!(orphan.parent_span_id, SpanId::INVALID);
    }

    #[test]
    fn set_parent_after_enter_is_rejected() {
        let tracer = tracer();
        let incoming = parent_context(&tracer);
        let (applied, _) = with_otel_subscriber(|| {
            let span = tracing::info_span!("late");
            drop(span.enter());
            set_parent(&span, incoming.clone())
        });
        assert!(!applied);
    }
}
