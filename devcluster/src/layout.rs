//! Where devcluster keeps its binaries, state, certificates and logs.
//!
//! Everything lives under one state directory (`.local/` at the repository root for the shared
//! cluster, a private directory for a test that owns its cluster). Binaries are shared: they are
//! always built into the repository's `.local/bin/`.

use std::path::{Path, PathBuf};

/// The repository root: devcluster lives one level below it.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// The Go modules that pin the tools (`devcluster/go/<tool>`).
pub fn go_modules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("go")
}

/// The default state directory: `<repo>/.local`.
pub fn default_state_dir() -> PathBuf {
    repo_root().join(".local")
}

/// Paths inside one state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    bin: PathBuf,
}

impl Layout {
    /// A layout rooted at `root`, using the repository's shared `.local/bin` for binaries.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            bin: default_state_dir().join("bin"),
        }
    }

    /// The layout of the shared cluster (`<repo>/.local`).
    pub fn shared() -> Self {
        Self::new(default_state_dir())
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Built binaries.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }
    /// A built binary by name.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
    /// Process logs (and build logs).
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The log of one component.
    pub fn log(&self, component: &str) -> PathBuf {
        self.logs_dir().join(format!("{component}.log"))
    }
    /// The kube-apiserver audit log (JSON lines).
    pub fn audit_log(&self) -> PathBuf {
        self.logs_dir().join("audit.log")
    }
    /// Certificates, keys and the token file.
    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }
    /// etcd's data directory.
    pub fn etcd_data_dir(&self) -> PathBuf {
        self.root.join("etcd")
    }
    /// Generated configuration files (audit policy, Jaeger config).
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }
    /// The admin kubeconfig.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    /// One kubeconfig per component identity.
    pub fn kubeconfigs_dir(&self) -> PathBuf {
        self.root.join("kubeconfigs")
    }
    /// The kubeconfig of one identity.
    pub fn kubeconfig_for(&self, identity: &str) -> PathBuf {
        self.kubeconfigs_dir()
            .join(format!("{identity}.kubeconfig"))
    }
    /// Every address and pid of the running cluster.
    pub fn endpoints_file(&self) -> PathBuf {
        self.root.join("endpoints.json")
    }
    /// Lock held while a cluster is started or stopped in this directory.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("devcluster.lock")
    }
}
