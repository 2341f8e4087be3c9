//! CPU time of processes from `/proc`, so that a figure can say where its time
//! went (server, controller, Docker engine) and not just how long it took.

use std::time::Duration;

use crate::error::{BenchError, Result};

/// User + system CPU time a process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(BenchError::io(format!("reading {path}")))?;
    let ticks = parse_cpu_ticks(&stat)
        .ok_or_else(|| BenchError::Setup(format!("cannot read CPU times from {path}")))?;
    Ok(Duration::from_secs_f64(ticks as f64 / ticks_per_second()))
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line; the command
/// name in parentheses may hold spaces, so fields are counted after its `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// The pid of the oldest process named `name` (e.g. `dockerd`), if any.
pub fn find_process(name: &str) -> Option<u32> {
    let mut found: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .collect();
    found.sort_unstable();
    found.first().copied()
}

/// CPU used by a set of processes between two points in time.
pub struct CpuMeter {
    start: Vec<(u32, Duration)>,
}

impl CpuMeter {
    /// Starts counting for the processes given (missing ones count as zero).
    pub fn start(pids: &[Option<u32>]) -> CpuMeter {
        CpuMeter {
            start: pids
                .iter()
                .flatten()
                .filter_map(|&pid| cpu_time(pid).ok().map(|t| (pid, t)))
                .collect(),
        }
    }

    /// Milliseconds of CPU each process used since `start`, in the order given
    /// there (NaN for a process that could not be read).
    pub fn elapsed_ms(&self, pids: &[Option<u32>]) -> Vec<f64> {
        pids.iter()
            .map(|pid| {
                let Some(pid) = pid else { return f64::NAN };
                let before = self.start.iter().find(|(p, _)| p == pid).map(|(_, t)| *t);
                match (before, cpu_time(*pid)) {
                    (Some(b), Ok(now)) => now.saturating_sub(b).as_secs_f64() * 1000.0,
                    _ => f64::NAN,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_past_a_name_with_spaces() {
        let stat =
            "1234 (tokio rt) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert!(cpu_time(std::process::id()).is_ok());
    }
}
