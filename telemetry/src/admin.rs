//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/log-level`.
//!
//! | route            | response                                                          |
//! |------------------|-------------------------------------------------------------------|
//! | `GET /metrics`   | OpenMetrics text of the shared [`Registry`]                        |
//! | `GET /healthz`   | `200 ok` while the process serves requests (liveness)              |
//! | `GET /readyz`    | `200 ok` when [`Readiness`] is ready, else `503` listing the checks |
//! | `GET /log-level` | the current filter directive                                       |
//! | `PUT /log-level` | body = new directive; `200` with it, `400` with the parse error     |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::args::AdminArgs;
use crate::error::{Error, Result};
use crate::log_level::LogLevelHandle;
use crate::metrics::{OPENMETRICS_CONTENT_TYPE, Registry, encode};
use crate::readiness::Readiness;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// What the admin handlers need; cheap to clone.
///
/// The registry is an `Arc<Registry>` without a lock: register every metric
/// (through prefixed sub-registries) before building the state; afterwards it
/// is only read.
#[derive(Debug, Clone)]
pub struct AdminState {
    registry: Arc<Registry>,
    readiness: Readiness,
    log_level: LogLevelHandle,
}

impl AdminState {
    /// Bundles the metrics registry, the readiness checks and the log-level handle
    /// (from [`TelemetryGuard::log_level`](crate::TelemetryGuard::log_level)).
    pub fn new(registry: Arc<Registry>, readiness: Readiness, log_level: LogLevelHandle) -> Self {
        Self {
            registry,
            readiness,
            log_level,
        }
    }
}

/// The admin routes, for embedding or in-process testing.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/log-level", get(get_log_level).put(put_log_level))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown` is cancelled, then
/// finishes in-flight requests and returns.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// The admin server, bound but not yet serving. Binding first lets `main` fail
/// fast on a busy port and learn the actual address (for port 0).
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    state: AdminState,
}

impl AdminServer {
    /// Binds `args.admin_addr`.
    pub async fn bind(args: &AdminArgs, state: AdminState) -> Result<Self> {
        let listener = TcpListener::bind(args.admin_addr).await?;
        Ok(Self { listener, state })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` is cancelled (see [`serve`]).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        serve(self.listener, self.state, shutdown).await
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT_PLAIN)], body.into()).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match encode(&state.registry) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok")
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let not_ready = state.readiness.not_ready();
    if not_ready.is_empty() {
        text(StatusCode::OK, "ok")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.join(", ")),
        )
    }
}

async fn get_log_level(State(state): State<AdminState>) -> Response {
    text(StatusCode::OK, format!("{}\n", state.log_level.current()))
}

async fn put_log_level(State(state): State<AdminState>, body: String) -> Response {
    match state.log_level.set(&body) {
        Ok(()) => {
            let directive = state.log_level.current();
            tracing::info!(log.directive = %directive, "log filter changed via admin endpoint");
            text(StatusCode::OK, format!("{directive}\n"))
        }
        Err(error @ (Error::InvalidDirective { .. } | Error::InvalidConfig { .. })) => {
            text(StatusCode::BAD_REQUEST, format!("{error}\n"))
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Method, Request};
    use prometheus_client::metrics::gauge::Gauge;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tower::ServiceExt as _;

    fn state() -> (AdminState, Readiness, LogLevelHandle) {
        let mut registry = Registry::default();
        let queue = Gauge::<i64>::default();
        registry.sub_registry_with_prefix("worker").register(
            "queue_depth",
            "Items waiting",
            queue.clone(),
        );
        queue.set(7);
        let readiness = Readiness::new();
        let log_level = LogLevelHandle::detached("info").expect("valid");
        (
            AdminState::new(Arc::new(registry), readiness.clone(), log_level.clone()),
            readiness,
            log_level,
        )
    }

    async fn call(
        state: &AdminState,
        method: Method,
        uri: &str,
        body: &str,
    ) -> (StatusCode, Option<String>, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .expect("request");
        let response = router(state.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            content_type,
            String::from_utf8(bytes.to_vec()).expect("utf-8"),
        )
    }

    #[tokio::test]
    async fn metrics_endpoint() {
        let (state, _, _) = state();
        let (status, content_type, body) = call(&state, Method::GET, "/metrics", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
        assert!(body.contains("# TYPE worker_queue_depth gauge"), "{body}");
        assert!(body.contains("worker_queue_depth 7"), "{body}");
        assert!(body.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn healthz_endpoint() {
        let (state, readiness, _) = state();
        readiness.register("never");
        let (status, _, body) = call(&state, Method::GET, "/healthz", "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }

    #[tokio::test]
    async fn readyz_endpoint() {
        let (state, readiness, _) = state();
        let (status, _, body) = call(&state, Method::GET, "/readyz", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "ok"),
            "no checks = ready"
        );

        readiness.register("informers");
        readiness.register("leader-election");
        let (status, _, body) = call(&state, Method::GET, "/readyz", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: informers, leader-election\n");

        readiness.mark_ready("informers");
        let (status, _, body) = call(&state, Method::GET, "/readyz", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: leader-election\n");

        readiness.mark_ready("leader-election");
        let (status, _, body) = call(&state, Method::GET, "/readyz", "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }

    #[tokio::test]
    async fn log_level_endpoint() {
        let (state, _, handle) = state();
        let (status, _, body) = call(&state, Method::GET, "/log-level", "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "info\n"));

        let (status, _, body) = call(&state, Method::PUT, "/log-level", "debug,hyper=warn\n").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "debug,hyper=warn\n")
        );
        assert_eq!(handle.current(), "debug,hyper=warn");

        let (status, _, body) = call(&state, Method::PUT, "/log-level", "hyper=loud").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("invalid log filter directive"), "{body}");
        let (status, _, _) = call(&state, Method::PUT, "/log-level", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            handle.current(),
            "debug,hyper=warn",
            "unchanged after bad input"
        );

        let (status, _, _) = call(&state, Method::POST, "/log-level", "info").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let (status, _, _) = call(&state, Method::GET, "/nope", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn real_socket_and_graceful_shutdown() {
        let (state, _, _) = state();
        let args = AdminArgs {
            admin_addr: "127.0.0.1:0".parse().expect("addr"),
        };
        let server = AdminServer::bind(&args, state).await.expect("bind");
        let addr = server.local_addr().expect("addr");
        assert_ne!(addr.port(), 0);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));

        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nok"), "{response}");

        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("stops promptly")
            .expect("no panic")
            .expect("clean shutdown");
    }
}
