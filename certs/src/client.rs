//! Client certificates: a client's key and certificate signing request, and a server signing
//! such requests with its CA (the coordinator certifies workers this way).
//!
//! The signer decides what the certificate says, not the request: the request only proves the
//! client holds the private key (its signature is checked). The certificate carries the common
//! name and the one URI subject alternative name the signer chose, `clientAuth`, and a validity
//! never beyond the CA's.

use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use secrecy::{ExposeSecret, SecretString};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::CertError;
use crate::authority::{self, BACKDATE, Ca, add, sub};

/// Signs client certificates with a CA.
#[derive(Clone)]
pub struct Signer {
    ca: Ca,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("ca_not_after", &self.ca.cert.not_after)
            .finish_non_exhaustive()
    }
}

/// A signed client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM).
    pub chain_pem: String,
    /// When it expires.
    pub not_after: Timestamp,
}

/// A fresh private key and a certificate signing request made with it.
#[derive(Clone)]
pub struct KeyAndRequest {
    /// The private key (PKCS#8 PEM); it never leaves the client.
    pub key_pem: SecretString,
    /// The request (PEM), to send to the signer.
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndRequest").finish_non_exhaustive()
    }
}

impl Signer {
    pub(crate) fn new(ca: Ca) -> Self {
        Self { ca }
    }

    /// The signing CA's certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.ca.cert.pem()
    }

    /// Signs the public key of `csr_pem` (its signature checked) into a client certificate
    /// with `common_name` and the URI SAN `uri`, valid for `validity` from now (backdated by an
    /// hour against clock skew), never beyond the CA.
    pub fn issue_client(
        &self,
        csr_pem: &str,
        common_name: &str,
        uri: &str,
        validity: Duration,
    ) -> Result<Issued, CertError> {
        let request =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CertError::Parse {
                origin: "the certificate signing request".to_owned(),
                problem: e.to_string(),
            })?;
        let now = Timestamp::now();
        let validity = jiff::SignedDuration::try_from(validity)
            .map_err(|e| CertError::Config(format!("client certificate validity: {e}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(|e| {
            CertError::Generate {
                what: "client certificate URI",
                source: e,
            }
        })?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = authority::offset(sub(now, BACKDATE))?;
        let not_after = add(now, validity).min(self.ca.cert.not_after);
        params.not_after = authority::offset(not_after)?;
        let ca_key = KeyPair::from_pem(self.ca.key_pem.expose_secret()).map_err(|e| {
            CertError::Generate {
                what: "CA key",
                source: e,
            }
        })?;
        let issuer = Issuer::from_ca_cert_der(&self.ca.cert.der, ca_key).map_err(|e| {
            CertError::Generate {
                what: "CA issuer",
                source: e,
            }
        })?;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        }
        .signed_by(&issuer)
        .map_err(|e| CertError::Generate {
            what: "client certificate",
            source: e,
        })?;
        let chain_pem = signed.pem();
        Ok(Issued {
            not_after: self::not_after(&chain_pem)?,
            chain_pem,
        })
    }
}

/// A new ECDSA P-256 key and a request for `common_name` signed with it.
pub fn key_and_request(common_name: &str) -> Result<KeyAndRequest, CertError> {
    let key = KeyPair::generate().map_err(|e| CertError::Generate {
        what: "client key",
        source: e,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| CertError::Generate {
            what: "certificate signing request",
            source: e,
        })?;
    Ok(KeyAndRequest {
        key_pem: SecretString::from(key.serialize_pem()),
        csr_pem: csr,
    })
}

/// The URI subject alternative names of a DER certificate.
pub fn uri_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut uris = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| format!("broken subjectAltName: {e}"))?
    {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push((*uri).to_owned());
            }
        }
    }
    Ok(uris)
}

/// When a PEM certificate expires.
pub fn not_after(pem: &str) -> Result<Timestamp, CertError> {
    let chain = crate::tls::parse_chain(pem, "the certificate")?;
    let leaf = chain.into_iter().next().ok_or_else(|| CertError::Parse {
        origin: "the certificate".to_owned(),
        problem: "empty".to_owned(),
    })?;
    authority::CertInfo::parse(leaf)
        .map(|info| info.not_after)
        .map_err(|problem| CertError::Parse {
            origin: "the certificate".to_owned(),
            problem,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;

    fn signer() -> Signer {
        let ca =
            authority::generate_ca(Timestamp::now(), jiff::SignedDuration::from_hours(24 * 365))
                .unwrap();
        Signer::new(ca)
    }

    #[test]
    fn a_request_is_signed_with_the_identity_the_signer_chose() {
        let signer = signer();
        let request = key_and_request("asks-to-be-admin").unwrap();
        let issued = signer
            .issue_client(
                &request.csr_pem,
                "worker-3",
                "kubetemplater://worker/worker-3",
                Duration::from_secs(86_400),
            )
            .unwrap();
        let der = crate::tls::parse_chain(&issued.chain_pem, "t").unwrap();
        assert_eq!(
            uri_names(der[0].as_ref()).unwrap(),
            ["kubetemplater://worker/worker-3"]
        );
        let (_, cert) = X509Certificate::from_der(der[0].as_ref()).unwrap();
        assert!(cert.subject().to_string().contains("CN=worker-3"));
        assert!(!cert.subject().to_string().contains("asks-to-be-admin"));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let ca = authority::CertInfo::parse(
            crate::tls::parse_chain(&signer.ca_pem(), "ca").unwrap()[0].clone(),
        )
        .unwrap();
        let leaf = authority::CertInfo::parse(CertificateDer::from(der[0].to_vec())).unwrap();
        assert!(leaf.signed_by(&ca));
        assert_eq!(not_after(&issued.chain_pem).unwrap(), issued.not_after);
        // The key in the request is the key in the certificate.
        let key = KeyPair::from_pem(request.key_pem.expose_secret()).unwrap();
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let signer = signer();
        let request = key_and_request("w").unwrap();
        let issued = signer
            .issue_client(
                &request.csr_pem,
                "w",
                "kubetemplater://worker/w",
                Duration::from_secs(86_400 * 1000),
            )
            .unwrap();
        assert_eq!(issued.not_after, signer.ca.cert.not_after);
        assert!(issued.not_after > Timestamp::now());
    }

    #[test]
    fn a_broken_or_tampered_request_is_refused() {
        let signer = signer();
        let err = signer
            .issue_client(
                "not pem",
                "w",
                "kubetemplater://worker/w",
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("certificate signing request"),
            "{err}"
        );
    }
}
