//! Graceful shutdown: once shutdown starts, no new connection is accepted, a review in flight
//! is still answered, and the server returns.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::bytes::Bytes;
use tokio_util::sync::CancellationToken;
use webhook::PolicyCache;
use webhook::certs::ServingCert;
use webhook::metrics::Metrics;
use webhook::review::{Operation, Reviewer};
use webhook::server::{self, Limits};
use webhook::tls::{ReloadingResolver, server_config};

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_review_finishes_and_new_connections_are_refused() {
    let cert =
        ServingCert::generate(&["localhost".to_owned()], &[], Duration::from_secs(3600)).unwrap();
    let ca = cert.ca_pem.clone();
    let (_tx, rx) = watch::channel(Arc::new(cert));
    let tls = server_config(Arc::new(ReloadingResolver::new(rx))).unwrap();
    let listener = server::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
    let port = listener.local_addr().unwrap().port();
    let metrics = Metrics::default();
    let cache = Arc::new(PolicyCache::new(Arc::new(metrics.clone())));
    cache.reset(&[]);
    let reviewer = Reviewer::new(
        cache,
        engine::bucket::DEFAULT_BUCKET_COUNT,
        "kubetemplater-system",
    );
    let router = server::router(reviewer, metrics.clone(), Limits::default());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(server::serve_tls(
        listener,
        tls,
        router,
        metrics,
        shutdown.clone(),
        Duration::from_secs(10),
    ));

    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{port}{}",
        Operation::ValidateKubeTemplate.path()
    );
    // A review whose body is still being sent when shutdown starts.
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stream = futures::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await
        }
    });
    body_tx
        .send(Ok(Bytes::from_static(
            br#"{"apiVersion":"admission.k8s.io/v1","#,
        )))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new connections.
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the listener still accepts after shutdown started"
    );
    assert!(
        !server.is_finished(),
        "the server returned with a review in flight"
    );

    // The rest of the body arrives: the review is answered.
    body_tx
        .send(Ok(Bytes::from_static(br#""kind":"AdmissionReview"}"#)))
        .await
        .unwrap();
    drop(body_tx);
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight review is answered");
    assert_eq!(
        response.status(),
        reqwest::StatusCode::BAD_REQUEST,
        "no request in the review"
    );
    assert!(response.text().await.unwrap().contains("no request"));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server returns once the review is answered")
        .unwrap();
}
