//! Generating (rcgen) and reading (x509-parser) the CA and serving certificates.
//!
//! Keys are ECDSA P-256. A CA is self-signed with `basicConstraints CA:TRUE, pathlen:0` and
//! key usages `keyCertSign, cRLSign, digitalSignature`; its common name carries its creation
//! time, so an old and a new CA in one bundle are told apart by name too. A serving (leaf)
//! certificate carries the configured DNS and IP subject alternative names, `serverAuth`,
//! `digitalSignature` and an authority key identifier (so verifiers holding a bundle of several
//! CAs pick the right one). Both are backdated by [`BACKDATE`] against clock skew between this
//! replica and the API server.

use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::CertificateDer;
use secrecy::{ExposeSecret, SecretString};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::CertError;

/// How far back `notBefore` is set, so a replica whose clock runs ahead of the API server's
/// does not hand out a certificate that is not valid yet.
pub(crate) const BACKDATE: SignedDuration = SignedDuration::from_hours(1);

/// The facts about one certificate the rotation decisions need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CertInfo {
    pub der: CertificateDer<'static>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// DER of the SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// `basicConstraints CA:TRUE`.
    pub is_ca: bool,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

impl CertInfo {
    /// Reads a DER certificate; the error says what is wrong with it.
    pub fn parse(der: CertificateDer<'static>) -> Result<Self, String> {
        let (rest, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "{} bytes of trailing data after the certificate",
                rest.len()
            ));
        }
        let validity = cert.validity();
        let time = |t: &x509_parser::time::ASN1Time| {
            Timestamp::from_second(t.timestamp()).map_err(|e| format!("validity out of range: {e}"))
        };
        let not_before = time(&validity.not_before)?;
        let not_after = time(&validity.not_after)?;
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| format!("broken basicConstraints: {e}"))?
            .is_some_and(|bc| bc.value.ca);
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Some(san) = cert
            .subject_alternative_name()
            .map_err(|e| format!("broken subjectAltName: {e}"))?
        {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            ip_addresses.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        let spki = cert.public_key().raw.to_vec();
        Ok(Self {
            der,
            not_before,
            not_after,
            spki,
            is_ca,
            dns_names,
            ip_addresses,
        })
    }

    /// Whether `issuer`'s key signed this certificate (signature check only, no dates).
    pub fn signed_by(&self, issuer: &CertInfo) -> bool {
        let (Ok((_, cert)), Ok((_, ca))) = (
            X509Certificate::from_der(self.der.as_ref()),
            X509Certificate::from_der(issuer.der.as_ref()),
        ) else {
            return false;
        };
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// PEM text of the certificate.
    pub fn pem(&self) -> String {
        der_to_pem("CERTIFICATE", self.der.as_ref())
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// A CA: its certificate and private key.
#[derive(Clone, Debug)]
pub(crate) struct Ca {
    pub cert: CertInfo,
    pub key_pem: SecretString,
}

/// A serving certificate and its private key.
#[derive(Clone, Debug)]
pub(crate) struct Leaf {
    pub cert: CertInfo,
    /// The certificate PEM as stored (the leaf, possibly followed by intermediates).
    pub chain_pem: String,
    pub key_pem: SecretString,
}

/// The SubjectPublicKeyInfo (DER) of a PEM private key, or why it cannot be read.
pub(crate) fn key_spki(key_pem: &SecretString) -> Result<Vec<u8>, String> {
    KeyPair::from_pem(key_pem.expose_secret())
        .map(|k| k.subject_public_key_info())
        .map_err(|e| format!("not a usable PEM private key: {e}"))
}

pub(crate) fn offset(ts: Timestamp) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(ts.as_second())
        .map_err(|e| CertError::Config(format!("certificate date {ts} out of range: {e}")))
}

/// `ts + d`, clamped to the representable range.
pub(crate) fn add(ts: Timestamp, d: SignedDuration) -> Timestamp {
    ts.saturating_add(d).unwrap_or(Timestamp::MAX)
}

/// `ts - d`, clamped to the representable range.
pub(crate) fn sub(ts: Timestamp, d: SignedDuration) -> Timestamp {
    ts.saturating_sub(d).unwrap_or(Timestamp::MIN)
}

fn generation(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Generate { what, source }
}

/// A new self-signed CA valid from `now - BACKDATE` for `validity`.
pub(crate) fn generate_ca(now: Timestamp, validity: SignedDuration) -> Result<Ca, CertError> {
    let key = KeyPair::generate().map_err(generation("CA key"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(generation("CA parameters"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("kubetemplater CA {}", now.strftime("%Y-%m-%dT%H:%M:%SZ")),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "kubetemplater");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(sub(now, BACKDATE))?;
    params.not_after = offset(add(now, validity))?;
    let cert = params
        .self_signed(&key)
        .map_err(generation("CA certificate"))?;
    let info = CertInfo::parse(cert.der().clone()).map_err(|problem| CertError::Parse {
        origin: "the CA certificate just generated".to_owned(),
        problem,
    })?;
    Ok(Ca {
        cert: info,
        key_pem: SecretString::from(key.serialize_pem()),
    })
}

/// A new serving certificate signed by `ca`, valid from `now - BACKDATE` until
/// `min(now + validity, ca's notAfter)` (a certificate never outlives its issuer).
pub(crate) fn issue_leaf(
    ca: &Ca,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
    now: Timestamp,
    validity: SignedDuration,
) -> Result<Leaf, CertError> {
    let ca_key = KeyPair::from_pem(ca.key_pem.expose_secret()).map_err(generation("CA key"))?;
    let issuer = Issuer::from_ca_cert_der(&ca.cert.der, ca_key).map_err(generation("CA issuer"))?;
    let key = KeyPair::generate().map_err(generation("serving key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        dns_names
            .first()
            .cloned()
            .unwrap_or_else(|| "kubetemplater-webhook".to_owned()),
    );
    for name in dns_names {
        let name = name
            .clone()
            .try_into()
            .map_err(generation("serving certificate DNS name"))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    for ip in ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset(sub(now, BACKDATE))?;
    params.not_after = offset(add(now, validity).min(ca.cert.not_after))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(generation("serving certificate"))?;
    let info = CertInfo::parse(cert.der().clone()).map_err(|problem| CertError::Parse {
        origin: "the serving certificate just generated".to_owned(),
        problem,
    })?;
    Ok(Leaf {
        chain_pem: cert.pem(),
        cert: info,
        key_pem: SecretString::from(key.serialize_pem()),
    })
}

/// PEM armour around `der`, 64 base64 characters a line.
pub(crate) fn der_to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use x509_parser::extensions::ParsedExtension;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const DAY: SignedDuration = SignedDuration::from_hours(24);

    #[test]
    fn ca_is_a_proper_ca() {
        let now = ts("2030-01-01T00:00:00Z");
        let ca = generate_ca(now, DAY * 3650).unwrap();
        assert!(ca.cert.is_ca);
        assert_eq!(ca.cert.not_before, sub(now, BACKDATE));
        assert_eq!(ca.cert.not_after, add(now, DAY * 3650));
        assert!(ca.cert.signed_by(&ca.cert), "self-signed");
        assert_eq!(key_spki(&ca.key_pem).unwrap(), ca.cert.spki);
        let (_, x509) = X509Certificate::from_der(ca.cert.der.as_ref()).unwrap();
        let bc = x509.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(
            x509.subject().to_string().contains("2030-01-01T00:00:00Z"),
            "{}",
            x509.subject()
        );
    }

    #[test]
    fn leaf_carries_names_eku_and_is_signed_by_the_ca() {
        let now = ts("2030-01-01T00:00:00Z");
        let ca = generate_ca(now, DAY * 3650).unwrap();
        let names = vec!["webhook".to_owned(), "webhook.ns.svc".to_owned()];
        let ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), "::1".parse().unwrap()];
        let leaf = issue_leaf(&ca, &names, &ips, now, DAY * 90).unwrap();
        assert_eq!(leaf.cert.dns_names, names);
        assert_eq!(leaf.cert.ip_addresses, ips);
        assert!(!leaf.cert.is_ca);
        assert_eq!(leaf.cert.not_after, add(now, DAY * 90));
        assert_eq!(leaf.cert.not_before, sub(now, BACKDATE));
        assert!(leaf.cert.signed_by(&ca.cert));
        let other = generate_ca(now, DAY * 3650).unwrap();
        assert!(!leaf.cert.signed_by(&other.cert));
        assert_eq!(key_spki(&leaf.key_pem).unwrap(), leaf.cert.spki);

        let (_, x509) = X509Certificate::from_der(leaf.cert.der.as_ref()).unwrap();
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert!(x509.extensions().iter().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )));
        assert_eq!(
            x509.issuer().to_string(),
            X509Certificate::from_der(ca.cert.der.as_ref())
                .unwrap()
                .1
                .subject()
                .to_string()
        );
    }

    #[test]
    fn leaf_never_outlives_its_ca() {
        let now = ts("2030-01-01T00:00:00Z");
        let ca = generate_ca(now, DAY * 10).unwrap();
        let leaf = issue_leaf(&ca, &["a".to_owned()], &[], now, DAY * 90).unwrap();
        assert_eq!(leaf.cert.not_after, ca.cert.not_after);
    }

    #[test]
    fn bad_dns_name_is_an_error_not_a_panic() {
        let now = ts("2030-01-01T00:00:00Z");
        let ca = generate_ca(now, DAY).unwrap();
        let err = issue_leaf(&ca, &["bücher.example".to_owned()], &[], now, DAY).unwrap_err();
        assert_eq!(err.metric_label(), "generate");
    }

    #[test]
    fn garbage_is_reported() {
        let err = CertInfo::parse(CertificateDer::from(vec![1, 2, 3])).unwrap_err();
        assert!(err.contains("not an X.509 certificate"), "{err}");
        assert!(key_spki(&SecretString::from("nope")).is_err());
    }

    #[test]
    fn pem_round_trips() {
        let now = ts("2030-01-01T00:00:00Z");
        let ca = generate_ca(now, DAY).unwrap();
        let pem = ca.cert.pem();
        assert!(pem.lines().all(|l| l.len() <= 64));
        let back = crate::tls::parse_chain(&pem, "t").unwrap();
        assert_eq!(back, vec![ca.cert.der.clone()]);
    }
}
