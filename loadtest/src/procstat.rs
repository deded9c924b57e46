//! CPU time and memory of a local process, from Linux `/proc/<pid>/stat` and `status`.

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// User + system CPU time since the process started, in seconds.
    pub cpu_s: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    // Linux reports 100 on every architecture we run on; sysconf says so authoritatively.
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// Reads process `pid` now; `None` when it is gone (or this is not Linux).
pub fn read(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ticks = cpu_ticks(&stat)?;
    Some(ProcSample {
        cpu_s: ticks as f64 / ticks_per_second(),
        rss_bytes: rss(&status)?,
    })
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn rss(status: &str) -> Option<u64> {
    crate::host::kib_field(status, "VmRSS:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 50 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(rss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2 << 20));
    }

    #[test]
    fn reads_this_process() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let me = read(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
        // Burn a little CPU and see the counter move forward (never backward).
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(read(std::process::id()).unwrap().cpu_s >= me.cpu_s);
        assert!(read(u32::MAX).is_none());
    }
}
