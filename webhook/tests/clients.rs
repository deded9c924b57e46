//! Clients that get things wrong, talking straight to the webhook's HTTPS port on devcluster:
//! plaintext, untrusted TLS, bad bodies, both HTTP versions. Every one gets an answer (or a failed
//! handshake) and the replicas keep serving.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use reqwest::StatusCode;

const KT_PATH: &str = "/validate-kubetemplater-io-v1alpha1-kubetemplate";

async fn trusted_client(client: &kube::Client, http1_only: bool) -> Result<reqwest::Client> {
    let secret = Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .get("kubetemplater-webhook-tls")
        .await?;
    let ca = secret
        .data
        .unwrap_or_default()
        .get("ca.crt")
        .context("the certificate Secret has no ca.crt")?
        .0
        .clone();
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(10));
    if http1_only {
        builder = builder.http1_only();
    }
    Ok(builder.build()?)
}

fn webhook_url(target: &Target) -> Option<String> {
    target
        .endpoints
        .as_ref()
        .map(|_| devcluster::stack::webhook_url(devcluster::stack::WEBHOOK_PORT))
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_answers_and_the_webhook_keeps_serving() -> Result<()> {
    let Some((target, client)) = cluster_with_webhook("bad_requests").await? else {
        return Ok(());
    };
    let Some(base) = webhook_url(&target) else {
        eprintln!("SKIP bad_requests: needs the webhook's port on loopback (devcluster)");
        return Ok(());
    };
    let http = trusted_client(&client, false).await?;
    let url = format!("{base}{KT_PATH}");

    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await?.contains("malformed AdmissionReview"));

    let r = http
        .post(&url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(r.text().await?.contains("application/json"));

    let huge = vec![b' '; 8 * 1024 * 1024];
    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().await?.contains("limit"));

    let r = http.get(&url).send().await?;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Plaintext HTTP on the TLS port: the handshake fails, nothing else happens.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let _ = plain
        .get(format!(
            "http://127.0.0.1:{}{KT_PATH}",
            devcluster::stack::WEBHOOK_PORT
        ))
        .send()
        .await;
    // TLS without trusting the CA: refused by the client, the server counts a handshake error.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(5))
        .build()?;
    assert!(untrusting.post(&url).send().await.is_err());

    // Still serving, and every replica is alive.
    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let endpoints =
        devcluster::Endpoints::load(&devcluster::Layout::shared())?.context("endpoints")?;
    let replicas = devcluster::stack::running(&endpoints, "webhook-");
    assert!(replicas.len() >= 2, "a webhook replica died: {replicas:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn http1_and_http2_are_both_served() -> Result<()> {
    let Some((target, client)) = cluster_with_webhook("http_versions").await? else {
        return Ok(());
    };
    let Some(base) = webhook_url(&target) else {
        eprintln!("SKIP http_versions: needs the webhook's port on loopback (devcluster)");
        return Ok(());
    };
    let url = format!("{base}{KT_PATH}");
    for (http1_only, expected) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let http = trusted_client(&client, http1_only).await?;
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .body("[]")
            .send()
            .await?;
        assert_eq!(r.version(), expected);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    Ok(())
}
