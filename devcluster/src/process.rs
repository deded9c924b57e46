//! Starting and stopping the control-plane processes.
//!
//! Each component runs in its own process group with its output appended to a log file, so it
//! outlives the command that started it (`cargo xtask up` returns, the cluster stays up) and can
//! be stopped as a group, children included, without leaving orphans. Pids are recorded in the
//! endpoints file together with the program path, so a recycled pid is never signalled.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A process devcluster started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRecord {
    /// Component name (`etcd`, `kube-apiserver` …).
    pub component: String,
    /// Process id, also its process-group id.
    pub pid: u32,
    /// The program that was started.
    pub program: PathBuf,
    /// Its log file.
    pub log: PathBuf,
}

impl ProcessRecord {
    /// Whether the recorded process is still running (and is still the program we started).
    pub fn is_alive(&self) -> bool {
        let exe = fs::read_link(format!("/proc/{}/exe", self.pid));
        match exe {
            Ok(path) => {
                // A zombie has no exe link; a recycled pid points at another program. A binary
                // rebuilt while running shows as "<path> (deleted)".
                let exe = path.to_string_lossy();
                let exe = exe.trim_end_matches(" (deleted)");
                let ours = fs::canonicalize(&self.program).unwrap_or_else(|_| self.program.clone());
                Path::new(exe) == ours
            }
            Err(_) => false,
        }
    }

    /// Stops the process group: SIGTERM, then SIGKILL after `grace`. Waits until no process of
    /// the group is left running.
    pub fn stop(&self, grace: Duration) {
        // Only signal a group we started: the leader must still be our program, or (leader gone)
        // the group must still have members.
        if !self.is_alive() && group_members(self.pid).is_empty() {
            return;
        }
        let group = Pid::from_raw(self.pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if group_members(self.pid).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !group_members(self.pid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Pids of the running (not zombie) processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // After the parenthesised command name: state, ppid, pgrp, ...
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let pgrp: u32 = fields.nth(1)?.parse().ok()?;
            (pgrp == pgid && state != "Z" && state != "X").then_some(pid)
        })
        .collect()
}

/// A process being started: the child handle lets devcluster notice a crash during startup.
#[derive(Debug)]
pub struct Started {
    /// The record kept in the endpoints file.
    pub record: ProcessRecord,
    child: Child,
    component: String,
}

impl Started {
    /// Fails with the last log lines when the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(Error::ProcessExited {
                component: self.component.clone(),
                status: status.to_string(),
                tail: tail_of(&self.record.log, 25),
                log: self.record.log.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// Standard output and error for a process that appends both to `log` (its directory created).
pub fn log_outputs(log: &Path) -> Result<(fs::File, fs::File)> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io("opening", log))?;
    let err = out.try_clone().map_err(Error::io("opening", log))?;
    Ok((out, err))
}

/// Starts `program` in its own process group, appending its output to `log`.
pub fn spawn(component: &str, program: &Path, args: &[String], log: &Path) -> Result<Started> {
    spawn_with_env(component, program, args, &[], log)
}

/// [`spawn`] with extra environment variables.
pub fn spawn_with_env(
    component: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<Started> {
    let (out, err) = log_outputs(log)?;
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            component: component.to_owned(),
            program: program.to_path_buf(),
            source,
        })?;
    Ok(Started {
        record: ProcessRecord {
            component: component.to_string(),
            pid: child.id(),
            program: program.to_path_buf(),
            log: log.to_path_buf(),
        },
        child,
        component: component.to_owned(),
    })
}

/// The last `lines` lines of a log file (at most the last 64 KiB are read).
pub fn tail_of(path: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        fs::write(&log, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail_of(&log, 2), "c\nd");
        assert!(tail_of(&dir.path().join("missing"), 2).contains("no log"));
    }

    #[test]
    fn spawned_group_is_stopped_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        // A shell that starts a grandchild: stopping the group must end both.
        let mut started = spawn(
            "test",
            Path::new("/bin/sh"),
            &["-c".into(), "sleep 30 & echo started; wait".into()],
            &log,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        started.check_running().unwrap();
        assert!(started.record.is_alive());
        assert_eq!(
            group_members(started.record.pid).len(),
            2,
            "the shell and its sleep"
        );
        started.record.stop(Duration::from_secs(2));
        let _ = started.child.wait();
        assert!(!started.record.is_alive());
        // No `sleep 30` is left in the group.
        assert_eq!(group_members(started.record.pid), Vec::<u32>::new());
    }

    #[test]
    fn crash_during_start_is_reported_with_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("crash.log");
        let mut started = spawn(
            "crasher",
            Path::new("/bin/sh"),
            &["-c".into(), "echo boom-reason; exit 3".into()],
            &log,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let err = started.check_running().unwrap_err().to_string();
        assert!(err.contains("crasher exited"), "{err}");
        assert!(err.contains("boom-reason"), "{err}");
    }
}
