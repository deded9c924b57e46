//! The router in process (no TLS): every client mistake gets its status and a sentence.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;
use crate::PolicyCache;

fn app(limits: Limits) -> (Router, Metrics) {
    let metrics = Metrics::default();
    let cache = Arc::new(PolicyCache::new(Arc::new(metrics.clone())));
    cache.reset(&[]);
    let reviewer = Reviewer::new(
        cache,
        engine::bucket::DEFAULT_BUCKET_COUNT,
        "kubetemplater-system",
    );
    (router(reviewer, metrics.clone(), limits), metrics)
}

fn review_body() -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3f1c",
            "kind": {"group": "kubetemplater.io", "version": "v1alpha1", "kind": "KubeTemplate"},
            "resource": {"group": "kubetemplater.io", "version": "v1alpha1", "resource": "kubetemplates"},
            "name": "web", "namespace": "team-a", "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "kubetemplater.io/v1alpha1", "kind": "KubeTemplate",
                       "metadata": {"name": "web", "namespace": "team-a"}, "spec": {"templates": []}}
        }
    })
}

fn post(path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::builder().method("POST").uri(path);
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(body.into()).unwrap()
}

async fn call(app: Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

const KT_PATH: &str = "/validate-kubetemplater-io-v1alpha1-kubetemplate";

#[tokio::test]
async fn a_review_is_answered_with_its_uid() {
    let (app, _) = app(Limits::default());
    let (status, body) = call(
        app,
        post(KT_PATH, Some("application/json"), review_body().to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let review: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(review["response"]["uid"], "3f1c");
    assert_eq!(review["response"]["allowed"], false);
    assert_eq!(review["response"]["status"]["code"], 403);
}

#[tokio::test]
async fn content_type_with_charset_is_accepted() {
    let (app, _) = app(Limits::default());
    let (status, _) = call(
        app,
        post(
            KT_PATH,
            Some("application/json; charset=utf-8"),
            review_body().to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_path_lists_the_endpoints() {
    let (app, _) = app(Limits::default());
    let (status, body) = call(app, post("/validate", Some("application/json"), "{}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains(KT_PATH), "{body}");
}

#[tokio::test]
async fn get_is_refused_with_allow_header() {
    let (app, _) = app(Limits::default());
    let resp = app
        .oneshot(Request::builder().uri(KT_PATH).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()[header::ALLOW], "POST");
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let (app, metrics) = app(Limits::default());
    let (status, body) = call(app.clone(), post(KT_PATH, Some("application/yaml"), "a: b")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(body.contains("application/yaml"), "{body}");
    let (status, body) = call(app, post(KT_PATH, None, "{}")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(body.contains("got none"), "{body}");
    let _ = metrics;
}

#[tokio::test]
async fn oversized_body_is_413_whether_declared_or_streamed() {
    let limits = Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    };
    let (app, _) = app(limits);
    let big = "x".repeat(4096);
    let mut declared = post(KT_PATH, Some("application/json"), big.clone());
    declared
        .headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(4096));
    let (status, body) = call(app.clone(), declared).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        body.contains("4096 bytes") && body.contains("1024"),
        "{body}"
    );
    // Without Content-Length (chunked): the limit still holds.
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let req = post(KT_PATH, Some("application/json"), Body::from_stream(stream));
    let (status, body) = call(app, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("exceeds the limit of 1024 bytes"), "{body}");
}

#[tokio::test]
async fn malformed_reviews_are_400_with_the_reason() {
    let (app, _) = app(Limits::default());
    let cases = [
        ("{not json", "malformed AdmissionReview"),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "no request",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
            "admission.k8s.io/v1",
        ),
        ("[]", "malformed AdmissionReview"),
    ];
    for (body, needle) in cases {
        let (status, text) = call(app.clone(), post(KT_PATH, Some("application/json"), body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }
}

#[tokio::test]
async fn mutate_endpoint_returns_a_json_patch() {
    let (app, _) = app(Limits::default());
    let (status, body) = call(
        app,
        post(
            "/mutate-kubetemplater-io-bucket",
            Some("application/json"),
            review_body().to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let review: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    // kube-core encodes the patch bytes as a JSON array of numbers, which the API server's
    // decoder accepts for []byte as it does base64.
    let patch: Vec<u8> = serde_json::from_value(review["response"]["patch"].clone()).unwrap();
    let ops: Value = serde_json::from_slice(&patch).unwrap();
    assert_eq!(ops[0]["op"], "add");
}
