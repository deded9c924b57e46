//! Builds the pinned control-plane tools from their Go modules into `.local/bin/`.
//!
//! Each tool has a small Go module under `devcluster/go/<tool>` (go.mod + go.sum with `tool`
//! lines). A build runs only when the fingerprint of what decides the output (go.mod, go.sum, the
//! Go version, the package list and the link flags) differs from the stamp written by the last
//! successful build, or when a binary is missing.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::layout::{Layout, go_modules_dir};
use crate::process::tail_of;

/// The Kubernetes version pinned in `devcluster/go/kubernetes/go.mod`; stamped into the binaries
/// so `kubectl version` reports it.
pub const KUBERNETES_VERSION: &str = "v1.36.3";

/// The kwok version pinned in `devcluster/go/kwok/go.mod`.
pub const KWOK_VERSION: &str = "v0.8.0";

/// The Helm version pinned in `devcluster/go/helm/go.mod`; stamped into the binary so
/// `helm version` reports it.
pub const HELM_VERSION: &str = "v4.3.2";

/// One tool module and the binaries it yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// kube-apiserver, kube-controller-manager, kube-scheduler, kubectl.
    Kubernetes,
    /// The etcd server.
    Etcd,
    /// kwok: plays the kubelet's part for fake Nodes (node and pod status), so scheduled pods
    /// become Running and Ready without a kubelet.
    Kwok,
    /// Jaeger all-in-one (collector + in-memory storage + query).
    Jaeger,
    /// Helm, for the chart's checks and installs; not needed to run the cluster, so not in
    /// [`Tool::ALL`] (built on first use with [`ensure_built`]).
    Helm,
}

impl Tool {
    /// Every tool, in build order.
    pub const ALL: [Tool; 4] = [Tool::Kubernetes, Tool::Etcd, Tool::Kwok, Tool::Jaeger];

    /// The tool's name (its module directory).
    pub fn name(self) -> &'static str {
        match self {
            Tool::Kubernetes => "kubernetes",
            Tool::Etcd => "etcd",
            Tool::Kwok => "kwok",
            Tool::Jaeger => "jaeger",
            Tool::Helm => "helm",
        }
    }

    /// Go packages to build, in the order of [`Tool::binaries`].
    fn packages(self) -> &'static [&'static str] {
        match self {
            Tool::Kubernetes => &[
                "k8s.io/kubernetes/cmd/kube-apiserver",
                "k8s.io/kubernetes/cmd/kube-controller-manager",
                "k8s.io/kubernetes/cmd/kube-scheduler",
                "k8s.io/kubernetes/cmd/kubectl",
            ],
            Tool::Etcd => &["go.etcd.io/etcd/server/v3"],
            Tool::Kwok => &["sigs.k8s.io/kwok/cmd/kwok"],
            Tool::Jaeger => &["github.com/jaegertracing/jaeger/cmd/jaeger"],
            Tool::Helm => &["helm.sh/helm/v4/cmd/helm"],
        }
    }

    /// Names of the binaries the build leaves in `.local/bin/`.
    pub fn binaries(self) -> &'static [&'static str] {
        match self {
            Tool::Kubernetes => &[
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kubectl",
            ],
            Tool::Etcd => &["etcd"],
            Tool::Kwok => &["kwok"],
            Tool::Jaeger => &["jaeger"],
            Tool::Helm => &["helm"],
        }
    }

    fn ldflags(self) -> String {
        match self {
            Tool::Kubernetes => {
                let v = KUBERNETES_VERSION;
                let (major, minor) = major_minor(v);
                let mut flags = String::from("-s -w");
                for pkg in [
                    "k8s.io/component-base/version",
                    "k8s.io/client-go/pkg/version",
                ] {
                    flags.push_str(&format!(
                        " -X {pkg}.gitVersion={v} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor} \
                         -X {pkg}.gitTreeState=clean"
                    ));
                }
                flags
            }
            // kwok's own version (`sigs.k8s.io/kwok/pkg/consts.Version`) is set in its source.
            Tool::Etcd | Tool::Kwok | Tool::Jaeger => "-s -w".to_string(),
            Tool::Helm => {
                format!("-s -w -X helm.sh/helm/v4/internal/version.version={HELM_VERSION}")
            }
        }
    }

    fn module_dir(self) -> PathBuf {
        go_modules_dir().join(self.name())
    }
}

fn major_minor(version: &str) -> (&str, &str) {
    let mut parts = version.trim_start_matches('v').split('.');
    (parts.next().unwrap_or("0"), parts.next().unwrap_or("0"))
}

/// What a build of `tool` would produce, as a hex digest.
fn fingerprint(tool: Tool, go_version: &str) -> Result<String> {
    let dir = tool.module_dir();
    let mut hasher = Sha256::new();
    for file in ["go.mod", "go.sum"] {
        let path = dir.join(file);
        let bytes = fs::read(&path).map_err(Error::io("reading", &path))?;
        hasher.update(file.as_bytes());
        hasher.update(&bytes);
    }
    hasher.update(go_version.as_bytes());
    hasher.update(tool.ldflags().as_bytes());
    for pkg in tool.packages() {
        hasher.update(pkg.as_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
}

fn go_version() -> Result<String> {
    let out = Command::new("go")
        .arg("version")
        .env("GOTOOLCHAIN", "local")
        .output()
        .map_err(|_| Error::GoMissing { tool: "devcluster" })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn stamp_path(layout: &Layout, tool: Tool) -> PathBuf {
    layout.bin_dir().join(format!(".{}.stamp", tool.name()))
}

/// Whether `tool` must be (re)built.
pub fn needs_build(layout: &Layout, tool: Tool) -> Result<bool> {
    if tool.binaries().iter().any(|b| !layout.bin(b).exists()) {
        return Ok(true);
    }
    let stamp = fs::read_to_string(stamp_path(layout, tool)).unwrap_or_default();
    let go = match go_version() {
        Ok(v) => v,
        // Binaries exist and Go is gone: use what is there rather than failing.
        Err(_) => return Ok(stamp.is_empty()),
    };
    Ok(stamp.trim() != fingerprint(tool, &go)?)
}

/// Builds `tool` when needed. Returns whether a build ran.
pub fn ensure_built(layout: &Layout, tool: Tool) -> Result<bool> {
    if !needs_build(layout, tool)? {
        return Ok(false);
    }
    let go = go_version().map_err(|_| Error::GoMissing { tool: tool.name() })?;
    build(layout, tool, &go)?;
    Ok(true)
}

/// Builds every tool that needs it, printing a line per build to stderr.
pub fn ensure_all_built(layout: &Layout) -> Result<()> {
    ensure_tools_built(layout, &Tool::ALL)
}

/// Builds the given tools where needed, printing a line per build to stderr.
pub fn ensure_tools_built(layout: &Layout, tools: &[Tool]) -> Result<()> {
    for &tool in tools {
        if needs_build(layout, tool)? {
            eprintln!(
                "devcluster: building {} from its Go module (first build takes minutes; log: {})",
                tool.name(),
                build_log(layout, tool).display()
            );
            let started = std::time::Instant::now();
            ensure_built(layout, tool)?;
            eprintln!(
                "devcluster: built {} in {:.0?}",
                tool.name(),
                started.elapsed()
            );
        }
    }
    Ok(())
}

fn build_log(layout: &Layout, tool: Tool) -> PathBuf {
    layout.logs_dir().join(format!("build-{}.log", tool.name()))
}

fn build(layout: &Layout, tool: Tool, go: &str) -> Result<()> {
    let bin_dir = layout.bin_dir();
    fs::create_dir_all(bin_dir).map_err(Error::io("creating", bin_dir))?;
    let logs = layout.logs_dir();
    fs::create_dir_all(&logs).map_err(Error::io("creating", &logs))?;
    let log_path = build_log(layout, tool);
    let mut log = fs::File::create(&log_path).map_err(Error::io("creating", &log_path))?;
    let _ = writeln!(
        log,
        "# {go}\n# building {:?} in {}",
        tool.packages(),
        tool.module_dir().display()
    );
    let log_err = log.try_clone().map_err(Error::io("opening", &log_path))?;

    // `-o dir/` with a trailing separator makes go build write one binary per package.
    let mut out_dir = bin_dir.as_os_str().to_owned();
    out_dir.push("/");
    let status = Command::new("go")
        .arg("build")
        .arg("-trimpath")
        .arg("-ldflags")
        .arg(tool.ldflags())
        .arg("-o")
        .arg(&out_dir)
        .args(tool.packages())
        .current_dir(tool.module_dir())
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .status()
        .map_err(|_| Error::GoMissing { tool: tool.name() })?;
    if !status.success() {
        return Err(Error::BuildFailed {
            tool: tool.name(),
            status: status.to_string(),
            tail: tail_of(&log_path, 30),
            log: log_path,
        });
    }
    // etcd's package is its module root `go.etcd.io/etcd/server/v3`, which go build names after
    // the element before the major-version suffix.
    if tool == Tool::Etcd {
        let built = bin_dir.join("server");
        let target = bin_dir.join("etcd");
        fs::rename(&built, &target).map_err(Error::io("renaming", &built))?;
    }
    let stamp = stamp_path(layout, tool);
    fs::write(&stamp, fingerprint(tool, go)?).map_err(Error::io("writing", &stamp))?;
    Ok(())
}

/// Path of a built binary, or the one on PATH when devcluster has not built it (e.g. kubectl
/// against an external cluster).
pub fn binary_or_path(layout: &Layout, name: &str) -> PathBuf {
    let built = layout.bin(name);
    if built.exists() {
        built
    } else {
        Path::new(name).to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parts() {
        assert_eq!(major_minor("v1.36.3"), ("1", "36"));
    }

    #[test]
    fn kubernetes_ldflags_stamp_both_version_packages() {
        let flags = Tool::Kubernetes.ldflags();
        assert!(flags.contains("k8s.io/component-base/version.gitVersion=v1.36.3"));
        assert!(flags.contains("k8s.io/client-go/pkg/version.gitMinor=36"));
    }

    #[test]
    fn fingerprint_changes_with_go_version() {
        let a = fingerprint(Tool::Etcd, "go1.26.8").unwrap();
        let b = fingerprint(Tool::Etcd, "go1.26.9").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, fingerprint(Tool::Etcd, "go1.26.8").unwrap());
    }

    #[test]
    fn module_pins_match_the_constant() {
        let gomod = fs::read_to_string(Tool::Kubernetes.module_dir().join("go.mod")).unwrap();
        assert!(gomod.contains(&format!("k8s.io/kubernetes {KUBERNETES_VERSION}")));
        // Every staging module is replaced at the matching v0 version.
        let v0 = KUBERNETES_VERSION.replacen("v1.", "v0.", 1);
        let replaces = gomod
            .lines()
            .filter(|l| l.contains(" => "))
            .collect::<Vec<_>>();
        assert!(
            replaces.len() >= 30,
            "expected the staging replaces, got {}",
            replaces.len()
        );
        assert!(
            replaces.iter().all(|l| l.trim_end().ends_with(&v0)),
            "{replaces:?}"
        );
    }

    #[test]
    fn kwok_module_pins_the_constant_and_its_tool() {
        let gomod = fs::read_to_string(Tool::Kwok.module_dir().join("go.mod")).unwrap();
        assert!(gomod.contains(&format!("sigs.k8s.io/kwok {KWOK_VERSION}")));
        assert!(gomod.contains("tool sigs.k8s.io/kwok/cmd/kwok"), "{gomod}");
        assert_eq!(Tool::Kwok.binaries(), ["kwok"]);
        assert!(Tool::ALL.contains(&Tool::Kwok));
    }

    #[test]
    fn helm_module_pins_the_constant_and_is_built_on_demand() {
        let gomod = fs::read_to_string(Tool::Helm.module_dir().join("go.mod")).unwrap();
        assert!(gomod.contains(&format!("helm.sh/helm/v4 {HELM_VERSION}")));
        assert!(gomod.contains("tool helm.sh/helm/v4/cmd/helm"), "{gomod}");
        assert_eq!(Tool::Helm.binaries(), ["helm"]);
        assert!(
            !Tool::ALL.contains(&Tool::Helm),
            "the cluster does not need it"
        );
    }
}
