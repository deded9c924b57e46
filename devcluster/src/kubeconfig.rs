//! kubeconfig files: one for the admin, one per component identity.

use std::fs;
use std::path::Path;

use crate::error::{Error, Result};
use crate::pki::Identity;

/// Renders a kubeconfig for `identity` against `server`, trusting `ca_pem`.
pub fn render(server: &str, ca_pem: &str, identity: &Identity) -> Result<String> {
    use base64::Engine;
    use std::io::Write;
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {"server": server, "certificate-authority-data": ca_b64}}],
        "users": [{"name": identity.name, "user": {"token": identity.token}}],
        "contexts": [{"name": format!("devcluster-{}", identity.name), "context": {"cluster": "devcluster", "user": identity.name, "namespace": "default"}}],
        "current-context": format!("devcluster-{}", identity.name),
        "preferences": {},
    });
    let mut out = Vec::new();
    let _ = writeln!(
        out,
        "# devcluster kubeconfig for {} ({})",
        identity.name, identity.user
    );
    serde_yaml::to_writer(&mut out, &doc).map_err(|e| Error::BadState {
        path: Path::new("kubeconfig").to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Writes the kubeconfig of `identity` to `path` (mode 0600: it holds a token).
pub fn write(path: &Path, server: &str, ca_pem: &str, identity: &Identity) -> Result<()> {
    write_private(path, &render(server, ca_pem, identity)?)
}

/// Writes `text` to `path` readable by its owner only (mode 0600: a kubeconfig holds a token),
/// creating the directory.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    fs::write(path, text).map_err(Error::io("writing", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(Error::io("setting mode of", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_parses_with_kube() {
        let id = Identity {
            name: "worker-0".into(),
            user: "kubetemplater:worker-0".into(),
            groups: vec![],
            token: "abc".into(),
        };
        let text = render(
            "https://127.0.0.1:6443",
            "-----BEGIN CERTIFICATE-----\n",
            &id,
        )
        .unwrap();
        let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(
            parsed.current_context.as_deref(),
            Some("devcluster-worker-0")
        );
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.token.is_some());
    }
}
