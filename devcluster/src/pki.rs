//! Certificates, service-account keys and API identities for the local control plane.
//!
//! A throwaway CA (ECDSA P-256) signs kube-apiserver's serving certificate for 127.0.0.1 and
//! the in-cluster names; a separate key pair signs service-account tokens. Clients authenticate
//! with bearer tokens from a static token file, one identity per component, so the audit log
//! names which component made each write.

use std::fs;
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// One API identity: a user in the static token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Short name, used for the kubeconfig file (`.local/kubeconfigs/<name>.kubeconfig`).
    pub name: String,
    /// The Kubernetes user name the audit log shows.
    pub user: String,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
    /// Its bearer token.
    pub token: String,
}

/// The most workers devcluster runs (`worker-0` … `worker-15`). Each runs under the workers'
/// ServiceAccount with a token bound to a Pod of its name ([`crate::identity`]).
pub const WORKER_IDENTITIES: usize = 16;

/// The identities devcluster provisions: `(name, user, groups)`.
///
/// `admin`, the controller manager and kwok are in `system:masters`; kube-scheduler gets what the
/// built-in bindings grant `system:kube-scheduler`; `loadtest` and `e2e` are in their own groups
/// and get only what RBAC grants those. Our components are not here: they run under the chart's
/// ServiceAccounts ([`crate::identity`], ADR 0002).
pub fn identity_specs() -> Vec<(String, String, Vec<String>)> {
    let mut specs = vec![
        (
            "admin".to_string(),
            "devcluster:admin".to_string(),
            vec!["system:masters".to_string()],
        ),
        (
            "kube-controller-manager".to_string(),
            "system:kube-controller-manager".to_string(),
            vec!["system:masters".to_string()],
        ),
        (
            "kube-scheduler".to_string(),
            "system:kube-scheduler".to_string(),
            vec![],
        ),
        // kwok plays every kubelet of the fake Nodes (node and pod status, pod deletion); like
        // the controller manager it runs as a control-plane component.
        (
            "kwok".to_string(),
            "devcluster:kwok".to_string(),
            vec!["system:masters".to_string()],
        ),
    ];
    let component = |name: String, group: &str| {
        let user = format!("kubetemplater:{name}");
        (name, user, vec![format!("kubetemplater:{group}")])
    };
    specs.push(component("loadtest".to_string(), "loadtest"));
    // A test identity with no permissions of its own: tests bind roles to it as they need.
    specs.push(component("e2e".to_string(), "e2e"));
    specs
}

/// Files making up the PKI of one cluster.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (PEM), trusted by clients.
    pub ca_cert: PathBuf,
    /// CA key (PEM).
    pub ca_key: PathBuf,
    /// kube-apiserver serving certificate.
    pub server_cert: PathBuf,
    /// kube-apiserver serving key.
    pub server_key: PathBuf,
    /// Service-account token signing key (private).
    pub sa_key: PathBuf,
    /// Service-account token verification key (public).
    pub sa_pub: PathBuf,
    /// The static token file.
    pub tokens: PathBuf,
    /// The identities in the token file.
    pub identities: Vec<Identity>,
}

impl Pki {
    /// The identity called `name`.
    pub fn identity(&self, name: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| i.name == name)
    }

    /// The CA certificate as PEM text.
    pub fn ca_pem(&self) -> Result<String> {
        fs::read_to_string(&self.ca_cert).map_err(Error::io("reading", &self.ca_cert))
    }
}

fn pki_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Pki { what, source }
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).map_err(Error::io("writing", path))
}

/// Loads the PKI in `dir`, generating whatever is missing. Existing files are kept, so
/// kubeconfigs stay valid across restarts of the same state directory.
pub fn ensure(dir: &Path) -> Result<Pki> {
    fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        tokens: dir.join("tokens.csv"),
        identities: Vec::new(),
    };
    let complete = [
        &pki.ca_cert,
        &pki.ca_key,
        &pki.server_cert,
        &pki.server_key,
        &pki.sa_key,
        &pki.sa_pub,
    ]
    .iter()
    .all(|p| p.exists());
    if !complete {
        generate_certificates(&pki)?;
    }
    let identities = ensure_tokens(&pki.tokens)?;
    Ok(Pki { identities, ..pki })
}

fn generate_certificates(pki: &Pki) -> Result<()> {
    let ca_key = KeyPair::generate().map_err(pki_err("CA key"))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(pki_err("CA parameters"))?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "devcluster-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(pki_err("CA certificate"))?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate().map_err(pki_err("kube-apiserver key"))?;
    let sans = [
        "127.0.0.1",
        "::1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "10.0.0.1",
    ];
    let mut server_params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map_err(pki_err("kube-apiserver certificate parameters"))?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(pki_err("kube-apiserver certificate"))?;

    let sa_key = KeyPair::generate().map_err(pki_err("service-account key"))?;

    write(&pki.ca_cert, &ca_cert.pem())?;
    write(&pki.ca_key, &ca_key.serialize_pem())?;
    write(&pki.server_cert, &server_cert.pem())?;
    write(&pki.server_key, &server_key.serialize_pem())?;
    write(&pki.sa_key, &sa_key.serialize_pem())?;
    write(&pki.sa_pub, &sa_key.public_key_pem())?;
    Ok(())
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Reads the token file, adding a line for every identity it lacks.
fn ensure_tokens(path: &Path) -> Result<Vec<Identity>> {
    let existing = fs::read_to_string(path).unwrap_or_default();
    let mut by_user = std::collections::HashMap::new();
    for line in existing.lines() {
        let mut fields = line.splitn(3, ',');
        if let (Some(token), Some(user)) = (fields.next(), fields.next()) {
            by_user.insert(user.to_string(), token.to_string());
        }
    }
    let mut identities = Vec::new();
    let mut text = String::new();
    for (name, user, groups) in identity_specs() {
        let token = by_user.get(&user).cloned().unwrap_or_else(random_token);
        // token,user,uid,"group1,group2"
        text.push_str(&format!("{token},{user},{user},\"{}\"\n", groups.join(",")));
        identities.push(Identity {
            name,
            user,
            groups,
            token,
        });
    }
    if text != existing {
        write(path, &text)?;
    }
    Ok(identities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_keeps_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path()).unwrap();
        let ca = fs::read_to_string(&first.ca_cert).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            fs::read_to_string(&first.sa_pub)
                .unwrap()
                .contains("PUBLIC KEY")
        );
        let second = ensure(dir.path()).unwrap();
        assert_eq!(ca, fs::read_to_string(&second.ca_cert).unwrap());
        assert_eq!(first.identities, second.identities);
    }

    #[test]
    fn token_file_has_one_line_per_identity_in_apiserver_format() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ensure(dir.path()).unwrap();
        let text = fs::read_to_string(&pki.tokens).unwrap();
        assert_eq!(text.lines().count(), identity_specs().len());
        let e2e = pki.identity("e2e").unwrap();
        assert_eq!(e2e.user, "kubetemplater:e2e");
        assert!(text.contains(&format!(
            "{},kubetemplater:e2e,kubetemplater:e2e,\"kubetemplater:e2e\"",
            e2e.token
        )));
        let users: std::collections::HashSet<_> = pki.identities.iter().map(|i| &i.token).collect();
        assert_eq!(users.len(), pki.identities.len(), "tokens are unique");
    }
}
