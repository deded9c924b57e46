//! A canned AdminService served as the coordinators serve it: TLS, with a certificate for the
//! name ktctl checks, and the CA bundle in a file for `--ca-file`.
#![allow(clippy::unwrap_used, reason = "test fixtures")]
#![allow(dead_code, reason = "each test binary uses some of it")]

use std::sync::Arc;
use std::time::Duration;

use proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A TLS admin endpoint.
pub struct TlsServer {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The CA bundle that verifies it.
    pub ca_file: tempfile::NamedTempFile,
}

impl TlsServer {
    /// The bundle's path, for `--ca-file`.
    pub fn ca_path(&self) -> String {
        self.ca_file.path().to_string_lossy().into_owned()
    }
}

/// Serves `service` on `runtime` over TLS until the runtime stops.
pub fn serve<S: AdminService>(runtime: &tokio::runtime::Runtime, service: S) -> TlsServer {
    let cert = certs::ServingCert::generate(
        &[proto::client::server_name("kubetemplater-system")],
        &[],
        Duration::from_secs(3600),
    )
    .unwrap();
    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut ca_file, cert.ca_pem.as_bytes()).unwrap();
    let (cert_tx, cert_rx) = watch::channel(Arc::new(cert));
    let config = certs::tls::mtls_server_config(
        Arc::new(certs::tls::ReloadingResolver::new(cert_rx.clone())),
        cert_rx,
    )
    .unwrap();
    let url = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let incoming =
            coordinator::transport::tls_incoming(listener, config, CancellationToken::new());
        tokio::spawn(async move {
            let _keep = cert_tx;
            tonic::transport::Server::builder()
                .add_service(AdminServiceServer::new(service))
                .serve_with_incoming(incoming)
                .await
        });
        url
    });
    TlsServer { url, ca_file }
}
