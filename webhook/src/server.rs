//! The HTTPS side: a listener (optionally `SO_REUSEPORT`, so replicas on one host share an
//! address), rustls handshakes, HTTP/1.1 and HTTP/2, and the review handler.
//!
//! ```text
//! accept ─► TLS handshake (own task, 10 s limit) ─► hyper auto (h1/h2) ─► router
//! router: POST <endpoint path>, Content-Type application/json, body ≤ limit
//!         ─► semaphore (bounded concurrency) ─► spawn_blocking { parse, span, review, encode }
//! ```
//!
//! Everything a client can get wrong gets a status and a sentence, never a crash: unknown path
//! 404, wrong method 405, wrong content type 415, body over the limit 413, malformed
//! AdmissionReview 400, overload 503. Failed handshakes (plaintext, unknown CA) are counted and
//! logged at debug level. Shutdown: stop accepting, let in-flight requests finish (HTTP/2 gets a
//! GOAWAY, HTTP/1.1 keep-alive is closed after the current response), give up after the grace
//! period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::metrics::{Metrics, Verdict};
use crate::review::{Operation, Reviewer, describe};

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Limits of the review handler.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Reviews evaluated at the same time; more wait.
    pub max_concurrent_reviews: usize,
    /// How long a review may wait for a slot before the answer is 503.
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_concurrent_reviews: 64,
            queue_timeout: Duration::from_secs(5),
        }
    }
}

/// Default body limit: 50 objects of 1 MiB cannot pass etcd's 1.5 MiB request limit anyway; an
/// UPDATE carries the object twice (object and oldObject), plus the review's envelope.
pub const DEFAULT_MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

#[derive(Clone, Debug)]
struct AppState {
    reviewer: Reviewer,
    metrics: Metrics,
    limits: Limits,
    slots: Arc<Semaphore>,
}

/// The review routes, for serving over TLS or testing in process.
pub fn router(reviewer: Reviewer, metrics: Metrics, limits: Limits) -> Router {
    let state = AppState {
        reviewer,
        metrics,
        slots: Arc::new(Semaphore::new(limits.max_concurrent_reviews.max(1))),
        limits,
    };
    Router::new().fallback(handle).with_state(state)
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT_PLAIN)], body).into_response()
}

async fn handle(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(op) = Operation::from_path(uri.path()) else {
        state.metrics.observe_rejected("not_found");
        let known: Vec<_> = Operation::ALL.iter().map(|op| op.path()).collect();
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no review endpoint at {}; endpoints: {}\n",
                uri.path(),
                known.join(", ")
            ),
        );
    };
    if method != Method::POST {
        state.metrics.observe_rejected("method");
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST"), (header::CONTENT_TYPE, TEXT_PLAIN)],
            format!(
                "{} accepts POST of an AdmissionReview, not {method}\n",
                uri.path()
            ),
        )
            .into_response();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let is_json = content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        state.metrics.observe_rejected("content_type");
        let shown = if content_type.is_empty() {
            "none"
        } else {
            content_type
        };
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "an AdmissionReview must be sent as Content-Type application/json, got {shown}\n"
            ),
        );
    }
    let limit = state.limits.max_body_bytes;
    let too_large = |size: Option<u64>| {
        let message = match size {
            Some(size) => format!(
                "AdmissionReview body is {size} bytes; the limit is {limit} bytes (--max-review-bytes)\n"
            ),
            None => format!(
                "AdmissionReview body exceeds the limit of {limit} bytes (--max-review-bytes)\n"
            ),
        };
        text(StatusCode::PAYLOAD_TOO_LARGE, message)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        state.metrics.observe_rejected("too_large");
        return too_large(declared);
    }
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(error) => {
            let is_limit = std::error::Error::source(&error)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if is_limit {
                state.metrics.observe_rejected("too_large");
                return too_large(None);
            }
            state.metrics.observe_rejected("body");
            return text(
                StatusCode::BAD_REQUEST,
                format!("reading the request body failed: {error}\n"),
            );
        }
    };

    let started = Instant::now();
    let permit = match tokio::time::timeout(
        state.limits.queue_timeout,
        state.slots.clone().acquire_owned(),
    )
    .await
    {
        Ok(Ok(permit)) => permit,
        _ => {
            state.metrics.observe_rejected("overloaded");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many reviews in progress; retry\n".to_owned(),
            );
        }
    };
    let parent = telemetry::propagation::extract_http(&headers);
    let reviewer = state.reviewer.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        review_bytes(&reviewer, op, &bytes, parent)
    });
    let result = match job.await {
        Ok(result) => result,
        Err(error) => {
            // A panic inside a review is a bug; answer 500 and keep serving.
            tracing::error!(%error, operation = op.label(), "review task failed");
            state.metrics.observe_rejected("internal");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error\n".to_owned(),
            );
        }
    };
    match result {
        Ok((body, verdict)) => {
            state.metrics.observe_review(op, verdict, started.elapsed());
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Err(message) => {
            state.metrics.observe_rejected("malformed");
            text(StatusCode::BAD_REQUEST, format!("{message}\n"))
        }
    }
}

/// Parses, reviews and encodes one AdmissionReview (CPU work: runs on a blocking thread).
/// `Err` is a message for a 400 answer.
fn review_bytes(
    reviewer: &Reviewer,
    op: Operation,
    bytes: &[u8],
    http_parent: opentelemetry::Context,
) -> Result<(Vec<u8>, Verdict), String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(bytes).map_err(|e| format!("malformed AdmissionReview: {e}"))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(format!(
            "expected an AdmissionReview of admission.k8s.io/v1, got kind {:?} apiVersion {:?}",
            review.types.kind, review.types.api_version
        ));
    }
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| "malformed AdmissionReview: it has no request".to_owned())?;

    let span = tracing::info_span!(
        "admission",
        otel.name = %format!("admission {}", op.label()),
        otel.kind = "server",
        operation = op.label(),
        object = %describe(&request),
        uid = %request.uid,
        user = %request.user_info.username.as_deref().unwrap_or(""),
        dry_run = request.dry_run,
        verdict = tracing::field::Empty,
    );
    // The validating review joins the trace the mutating review stored on the object (mutation
    // runs first), so one trace goes from admission to the worker's last apply.
    let object_parent = (op == Operation::ValidateKubeTemplate)
        .then(|| {
            request
                .object
                .as_ref()
                .and_then(|o| o.metadata.annotations.as_ref())
                .and_then(telemetry::propagation::extract_annotations)
        })
        .flatten();
    if !object_parent.is_some_and(|cx| telemetry::propagation::set_parent(&span, cx)) {
        telemetry::propagation::set_parent(&span, http_parent);
    }
    let outcome = span.in_scope(|| reviewer.review(op, &request));
    span.record("verdict", outcome.verdict.label());
    if outcome.verdict != Verdict::Allowed && outcome.verdict != Verdict::Mutated {
        span.in_scope(|| {
            tracing::info!(message = %outcome.response.result.message, "review denied");
        });
    }
    let body = serde_json::to_vec(&outcome.response.into_review())
        .map_err(|e| format!("encoding the AdmissionReview response failed: {e}"))?;
    Ok((body, outcome.verdict))
}

/// Binds the review listener. With `reuse_port`, several processes on one host can bind the same
/// address and the kernel spreads connections over them (how the local replicas share one URL).
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown`, then waits up to `grace` for
/// in-flight requests.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    metrics: Metrics,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        metrics.observe_connection();
        // Small request/response exchanges: without TCP_NODELAY, Nagle's algorithm meets the
        // peer's delayed ACK and adds ~40 ms to some responses (measured: p99 41 ms).
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "setting TCP_NODELAY failed");
        }
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let service = TowerToHyperService::new(router.clone());
        let metrics = metrics.clone();
        let watcher = graceful.watcher();
        tokio::spawn(
            async move {
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            metrics.observe_tls_error();
                            tracing::debug!(%error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics.observe_tls_error();
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                if let Err(error) = watcher.watch(connection).await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("connection", %peer)),
        );
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("in-flight reviews finished"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "in-flight reviews did not finish within the grace period"),
    }
}

#[cfg(test)]
mod tests;
