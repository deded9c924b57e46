//! Reloadable rustls server configuration.
//!
//! [`ReloadingResolver`] hands rustls whatever [`ServingCert`] was last sent on the certificate
//! watch channel ([`crate::maintain`] is the sender), so a rotated or re-provided
//! certificate is used from the next TLS handshake on, without restarting the listener.
//! Connections already established keep the certificate they were opened with.
//!
//! Every [`ServingCert`] already holds its parsed [`CertifiedKey`] (built once, when the
//! certificate was loaded, by `certified_key`, which also checks that the key matches the
//! certificate), so a handshake only clones an `Arc`.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;

use crate::{CertError, ServingCert};

/// ALPN protocols the webhook offers, in order of preference.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A rustls certificate resolver serving the latest [`ServingCert`] of a watch channel.
///
/// Server Name Indication is ignored: the webhook has one certificate, carrying every name it
/// is reached by.
pub struct ReloadingResolver {
    certs: watch::Receiver<Arc<ServingCert>>,
}

impl ReloadingResolver {
    /// Follows `certs`: every handshake uses the value current at that moment.
    pub fn new(certs: watch::Receiver<Arc<ServingCert>>) -> Self {
        Self { certs }
    }

    /// The certificate the next handshake will use.
    pub fn current(&self) -> Arc<ServingCert> {
        Arc::clone(&self.certs.borrow())
    }
}

impl std::fmt::Debug for ReloadingResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingResolver")
            .field("fingerprint", &self.certs.borrow().fingerprint)
            .finish()
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certs.borrow().certified_key())
    }
}

/// A rustls server configuration using `resolver`: ring provider (passed explicitly, so no
/// process-wide default provider is needed), TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, no
/// client authentication (the API server authenticates the webhook, not the other way round).
pub fn server_config(resolver: Arc<ReloadingResolver>) -> Result<Arc<ServerConfig>, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CertError::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A verifier and the certificate whose bundle it was built from.
type BuiltVerifier = (Arc<ServingCert>, Arc<dyn ClientCertVerifier>);

/// A rustls client-certificate verifier trusting the CA bundle of the latest [`ServingCert`]
/// on a watch channel: a rotated CA is trusted from the next handshake on, without a restart.
///
/// Clients may connect without a certificate (`allow_unauthenticated`): the server decides per
/// call whether one is needed (the coordinator's WorkerService needs it, its AdminService
/// takes a token instead). A certificate that is presented must chain to the bundle and carry
/// `clientAuth`; otherwise the handshake fails.
pub struct ReloadingClientVerifier {
    certs: watch::Receiver<Arc<ServingCert>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: std::sync::Mutex<Option<BuiltVerifier>>,
}

impl std::fmt::Debug for ReloadingClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingClientVerifier")
            .finish_non_exhaustive()
    }
}

impl ReloadingClientVerifier {
    /// Follows the CA bundle of `certs`.
    pub fn new(certs: watch::Receiver<Arc<ServingCert>>) -> Self {
        Self {
            certs,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            current: std::sync::Mutex::new(None),
        }
    }

    /// The verifier for the current bundle, built once per bundle.
    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let cert = Arc::clone(&self.certs.borrow());
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, verifier)) = current.as_ref()
            && (Arc::ptr_eq(seen, &cert) || seen.ca_pem == cert.ca_pem)
        {
            return Ok(Arc::clone(verifier));
        }
        let mut roots = rustls::RootCertStore::empty();
        let chain = parse_chain(&cert.ca_pem, "the CA bundle")
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        for ca in chain {
            roots.add(ca)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
        *current = Some((cert, Arc::clone(&verifier)));
        Ok(verifier)
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // Hints are optional; clients hold one certificate each.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls server configuration for gRPC with optional client certificates: the serving
/// certificate from `resolver`, client certificates checked against the CA bundle of `certs`
/// ([`ReloadingClientVerifier`]), ring, TLS 1.2 and 1.3, ALPN `h2` only.
pub fn mtls_server_config(
    resolver: Arc<ReloadingResolver>,
    certs: watch::Receiver<Arc<ServingCert>>,
) -> Result<Arc<ServerConfig>, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CertError::Tls)?
        .with_client_cert_verifier(Arc::new(ReloadingClientVerifier::new(certs)))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Parses a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1)
/// into a rustls [`CertifiedKey`], checking that the key belongs to the leaf.
///
/// `cert_origin` and `key_origin` say where the PEM came from ("file /etc/tls/tls.crt",
/// "Secret ns/name key tls.key"); every error names them.
pub(crate) fn certified_key(
    chain_pem: &str,
    key_pem: &SecretString,
    cert_origin: &str,
    key_origin: &str,
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = parse_chain(chain_pem, cert_origin)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.expose_secret().as_bytes()).map_err(|e| {
        CertError::Parse {
            origin: key_origin.to_owned(),
            problem: format!("no usable PEM private key: {e}"),
        }
    })?;
    let signing_key = any_supported_type(&key).map_err(|e| CertError::Parse {
        origin: key_origin.to_owned(),
        problem: format!("unsupported private key: {e}"),
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CertError::KeyMismatch {
                cert: cert_origin.to_owned(),
                key: key_origin.to_owned(),
            })
        }
        Err(e) => Err(CertError::Parse {
            origin: cert_origin.to_owned(),
            problem: format!("cannot check the certificate against its key: {e}"),
        }),
    }
}

/// Every certificate of a PEM text, in order; an error when there is none or a block is broken.
pub fn parse_chain(pem: &str, origin: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Parse {
            origin: origin.to_owned(),
            problem: format!("broken PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(CertError::Parse {
            origin: origin.to_owned(),
            problem: "no PEM CERTIFICATE block".to_owned(),
        });
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn cert(name: &str) -> ServingCert {
        ServingCert::generate(
            &[name.to_owned()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    #[test]
    fn mismatched_key_is_reported_with_both_origins() {
        let a = cert("a.example");
        let b = cert("b.example");
        let err = certified_key(
            &a.chain_pem,
            b.key_pem(),
            "file /a/tls.crt",
            "file /b/tls.key",
        )
        .unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("/a/tls.crt") && msg.contains("/b/tls.key"),
            "{msg}"
        );
        assert_eq!(err.metric_label(), "key_mismatch");
    }

    #[test]
    fn garbage_is_a_parse_error_naming_the_origin() {
        let a = cert("a.example");
        let err = certified_key("not pem", a.key_pem(), "file /x/tls.crt", "file /x/tls.key")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("/x/tls.crt: no PEM CERTIFICATE block"),
            "{err}"
        );
        let key =
            SecretString::from("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        let err = certified_key(&a.chain_pem, &key, "c", "file /x/tls.key").unwrap_err();
        assert_eq!(err.metric_label(), "parse");
        assert!(err.to_string().starts_with("file /x/tls.key: "), "{err}");
        let empty = SecretString::from("");
        let err = certified_key(&a.chain_pem, &empty, "c", "k").unwrap_err();
        assert!(
            err.to_string().contains("no usable PEM private key"),
            "{err}"
        );
    }

    #[test]
    fn matching_pair_converts_with_the_whole_chain() {
        let a = cert("a.example");
        let chain = format!("{}{}", a.chain_pem, a.ca_pem);
        let key = certified_key(&chain, a.key_pem(), "c", "k").unwrap();
        assert_eq!(key.cert.len(), 2);
        assert_eq!(
            key.end_entity_cert().unwrap().as_ref(),
            a.certified_key().cert[0].as_ref()
        );
    }

    #[test]
    fn server_config_offers_h2_and_http1() {
        let (_tx, rx) = watch::channel(Arc::new(cert("a.example")));
        let config = server_config(Arc::new(ReloadingResolver::new(rx))).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    /// Connects to `addr` trusting `ca_pem`, returns the leaf the server presented and the
    /// negotiated ALPN protocol.
    async fn handshake(addr: std::net::SocketAddr, ca_pem: &str) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut roots = rustls::RootCertStore::empty();
        for ca in parse_chain(ca_pem, "ca").unwrap() {
            roots.add(ca).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("webhook.example").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        let (_, conn) = tls.get_ref();
        let leaf = conn.peer_certificates().unwrap()[0].as_ref().to_vec();
        (leaf, conn.alpn_protocol().map(<[u8]>::to_vec))
    }

    #[tokio::test]
    async fn handshakes_use_the_latest_certificate_without_restarting() {
        let first = Arc::new(cert("webhook.example"));
        let (tx, rx) = watch::channel(Arc::clone(&first));
        let config = server_config(Arc::new(ReloadingResolver::new(rx))).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 4];
                        if tls.read_exact(&mut buf).await.is_ok() {
                            let _ = tls.write_all(b"pong").await;
                            let _ = tls.shutdown().await;
                        }
                    }
                });
            }
        });

        let (leaf, alpn) = handshake(addr, &first.ca_pem).await;
        assert_eq!(leaf, first.certified_key().cert[0].as_ref());
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

        let second = Arc::new(cert("webhook.example"));
        assert_ne!(first.fingerprint, second.fingerprint);
        tx.send(Arc::clone(&second)).unwrap();
        let (leaf, _) = handshake(addr, &second.ca_pem).await;
        assert_eq!(leaf, second.certified_key().cert[0].as_ref());
        server.abort();
    }
}
