//! Two webhook replicas on their own control plane: they share one certificate and one address,
//! and when one is killed the other answers every new admission.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use devcluster::stack::{self, WebhookConfig};
use devcluster::testing::PrivateCluster;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use sha2::Digest as _;

/// SHA-256 of the certificate the server at `port` presents (whichever replica accepts).
async fn served_certificate(port: u16) -> Result<String> {
    #[derive(Debug)]
    struct Capture;
    impl rustls::client::danger::ServerCertVerifier for Capture {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(Capture))
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost")?.to_owned(),
            tcp,
        )
        .await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no certificate presented")?;
    Ok(hex::encode(sha2::Sha256::digest(leaf.as_ref())))
}

/// Sum of a metric's series on a replica's admin endpoint.
async fn metric(admin: &str, name: &str) -> Result<f64> {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn admissions_answered(admin: &str) -> Result<f64> {
    metric(admin, "kubetemplater_admissions_total").await
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_a_certificate_and_an_address_and_survive_a_kill() -> Result<()> {
    let cluster = PrivateCluster::start(false).await?;
    let target = cluster.target();
    let client = target.client().await?;
    install_crds(&client).await?;
    stack::install_prerequisites(cluster.layout(), &target.kubeconfig)?;
    let port = devcluster::cluster::free_port()?;
    let replicas = stack::start_webhooks(
        cluster.layout(),
        cluster.endpoints(),
        &WebhookConfig::new(webhook_binary(), 2, port),
    )
    .await?;
    assert_eq!(replicas.len(), 2);

    // One Secret, one certificate, whichever replica answers.
    let secret = Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .get("kubetemplater-webhook-tls")
        .await?;
    assert!(secret.data.unwrap_or_default().contains_key("tls.crt"));
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        seen.insert(served_certificate(port).await?);
    }
    assert_eq!(
        seen.len(),
        1,
        "replicas serve different certificates: {seen:?}"
    );
    // The kernel spread those connections over both replicas: one address, two servers.
    for replica in &replicas {
        let accepted = metric(&replica.admin, "kubetemplater_webhook_connections_total").await?;
        assert!(
            accepted > 0.0,
            "{} accepted no connection",
            replica.record.component
        );
    }

    // The API server's admissions go through the one address (it keeps its connection open, so
    // one replica answers them until that connection ends).
    let ns = target.namespace("replicas").await?;
    install_policy(&target, &ns, "^app-").await?;
    let template = template_yaml(&ns, "t", &configmap_item("app-x", None));
    let dry_run = || -> Result<bool> {
        Ok(kubectl(
            &target,
            &["create", "--dry-run=server", "-f", "-"],
            Some(&template),
        )?
        .0)
    };
    assert!(dry_run()?, "an allowed template was refused");
    let mut answering = None;
    for (i, replica) in replicas.iter().enumerate() {
        if admissions_answered(&replica.admin).await? > 0.0 {
            answering = Some(i);
        }
    }
    let victim = answering.context("no replica counted the admissions")?;
    let survivor = &replicas[1 - victim];

    // Kill the one that answered: new admissions are answered by the other.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(replicas[victim].record.pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    eventually(
        Duration::from_secs(10),
        "an admission after the kill",
        || async { dry_run() },
    )
    .await?;
    let before = admissions_answered(&survivor.admin).await?;
    for i in 0..10 {
        assert!(dry_run()?, "admission {i} after the kill failed");
    }
    let after = admissions_answered(&survivor.admin).await?;
    // Each dry-run create passes the mutating and the validating webhook.
    assert!(
        after >= before + 20.0,
        "the surviving replica answered {} reviews for 10 creates",
        after - before
    );
    Ok(())
}
