//! What a run ran on and with: the machine, the versions, and this process's memory.
//!
//! Everything here is best effort: a field that cannot be read is `None` (or "unknown"), never
//! an error, since a benchmark must not fail for want of a hostname. Linux `/proc` is read
//! directly; other systems get what `std` knows.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The machine a report was made on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Host name.
    pub hostname: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// Total memory (`MemTotal`), when known.
    pub memory_bytes: Option<u64>,
    /// Operating system: distribution, kernel, architecture.
    pub os: String,
    /// CPU model name, when known.
    #[serde(default)]
    pub cpu_model: Option<String>,
}

/// What ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// Version of this crate.
    pub loadtest: String,
    /// `git rev-parse HEAD` of the working directory at run time, when it is a git checkout.
    pub git_commit: Option<String>,
    /// Whether the checkout had uncommitted changes (`git status --porcelain` not empty).
    #[serde(default)]
    pub git_dirty: Option<bool>,
    /// Build profile of this binary: `release`, or `debug` (timings of a debug build are not
    /// comparable).
    #[serde(default)]
    pub profile: String,
}

impl Machine {
    /// The machine this process runs on.
    pub fn detect() -> Self {
        let hostname = read_trimmed("/proc/sys/kernel/hostname")
            .or_else(|| command_output("hostname", &[]))
            .unwrap_or_else(|| "unknown".to_owned());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| kib_field(&text, "MemTotal:"));
        let distribution = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| os_release_name(&text));
        let kernel = read_trimmed("/proc/sys/kernel/osrelease");
        let os = [
            distribution,
            Some(std::env::consts::OS.to_owned()),
            kernel,
            Some(std::env::consts::ARCH.to_owned()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model(&text));
        Self {
            hostname,
            cpus,
            memory_bytes,
            os,
            cpu_model,
        }
    }
}

impl Versions {
    /// This crate's version and the git commit of the current directory, if any.
    pub fn detect() -> Self {
        let git_commit = command_output("git", &["rev-parse", "HEAD"]);
        let git_dirty = git_commit
            .as_ref()
            .and_then(|_| command_output_raw("git", &["status", "--porcelain"]))
            .map(|out| !out.trim().is_empty());
        Self {
            loadtest: env!("CARGO_PKG_VERSION").to_owned(),
            git_commit,
            git_dirty,
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
        }
    }
}

/// Memory of this process, from `/proc/self/status` (Linux; `None` elsewhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_bytes: Option<u64>,
    /// Peak resident set size (`VmHWM`): since start, or since [`reset_peak_rss`].
    pub peak_rss_bytes: Option<u64>,
}

impl Memory {
    /// Reads this process's memory now.
    pub fn now() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Self {
            rss_bytes: kib_field(&status, "VmRSS:"),
            peak_rss_bytes: kib_field(&status, "VmHWM:"),
        }
    }
}

/// Resets the peak resident set size (`VmHWM`) to the current one, by writing `5` to
/// `/proc/self/clear_refs` (Linux 4.0+). Returns whether it worked; without it `VmHWM` stays the
/// peak since the process started.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn command_output_raw(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = command_output_raw(program, args)?;
    let out = out.trim();
    (!out.is_empty()).then(|| out.to_owned())
}

/// A `Name:   1234 kB` line of `/proc/meminfo` or `/proc/<pid>/status`, in bytes.
pub(crate) fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `PRETTY_NAME` of `/etc/os-release`.
fn os_release_name(text: &str) -> Option<String> {
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))?
        .trim()
        .trim_matches('"');
    (!value.is_empty()).then(|| value.to_owned())
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model(text: &str) -> Option<String> {
    text.lines()
        .filter(|l| l.starts_with("model name"))
        .find_map(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_fields() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(1024 * 1024));
        assert_eq!(kib_field(status, "VmHWM:"), Some(2048 * 1024));
        assert_eq!(kib_field(status, "VmSwap:"), None);
        let release = "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n";
        assert_eq!(
            os_release_name(release).as_deref(),
            Some("Debian GNU/Linux 13 (trixie)")
        );
        let cpuinfo = "processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("Some CPU @ 2.0GHz"));
    }

    #[test]
    fn detection_never_fails() {
        let m = Machine::detect();
        assert!(m.cpus >= 1);
        assert!(!m.hostname.is_empty() && !m.os.is_empty());
        assert!(!Versions::detect().loadtest.is_empty());
        let mem = Memory::now();
        if cfg!(target_os = "linux") {
            assert!(mem.rss_bytes.unwrap() > 0);
            assert!(mem.peak_rss_bytes.unwrap() >= mem.rss_bytes.unwrap());
        }
    }
}
