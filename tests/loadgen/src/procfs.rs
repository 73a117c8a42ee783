//! Process figures from `/proc`: CPU time, memory, bytes written to storage.
//!
//! Read for the server under test (by its pid) and for the generator itself, so that the
//! benchmark can say what a scenario cost the server and whether the generator kept up.

use std::io;
use std::path::Path;
use std::time::Instant;

/// Clock ticks per second, the unit of `utime`/`stime` in `/proc/PID/stat`.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User plus system CPU seconds the process has used so far (all its threads):
/// `(utime + stime) / clock ticks` from `/proc/PID/stat`.
///
/// # Errors
/// When the process does not exist (any more) or the file does not parse.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu(&stat)
        .map(|ticks| ticks as f64 / clock_ticks())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc/PID/stat"))
}

fn parse_stat_cpu(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of a process, in KiB: (`VmRSS`, `VmHWM` = peak RSS) from `/proc/PID/status`.
///
/// # Errors
/// When the process does not exist (any more) or the file lacks the fields.
pub fn memory_kib(pid: u32) -> io::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no VmRSS/VmHWM in /proc/PID/status",
        )),
    }
}

/// Bytes the process caused to be sent to the storage layer (`write_bytes` of `/proc/PID/io`,
/// all threads).
///
/// # Errors
/// When the process does not exist (any more) or the file lacks the field.
pub fn write_bytes(pid: u32) -> io::Result<u64> {
    let io_text = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io_text
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no write_bytes in /proc/PID/io"))
}

/// Total size of the regular files under `path` (a store directory or a single file).
pub fn dir_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| dir_size(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Pins the calling process (and threads it creates later) to one CPU core.
///
/// # Errors
/// When the kernel refuses (e.g. the core does not exist).
pub fn pin_to_core(core: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A CPU-time stopwatch for one process.
#[derive(Debug, Clone, Copy)]
pub struct CpuWatch {
    pid: u32,
    cpu0: f64,
    wall0: Instant,
}

impl CpuWatch {
    /// Starts measuring `pid` now.
    pub fn start(pid: u32) -> Self {
        CpuWatch {
            pid,
            cpu0: cpu_seconds(pid).unwrap_or(0.0),
            wall0: Instant::now(),
        }
    }

    /// (CPU seconds used since the start, wall seconds since the start).
    pub fn read(&self) -> (f64, f64) {
        let cpu = cpu_seconds(self.pid).unwrap_or(self.cpu0) - self.cpu0;
        (cpu, self.wall0.elapsed().as_secs_f64())
    }
}

/// A CPU-time stopwatch for several processes (the relays of a cluster, or its nats-servers),
/// summed.
#[derive(Debug, Clone)]
pub struct GroupCpuWatch(Vec<CpuWatch>);

impl GroupCpuWatch {
    /// Starts measuring every process of `pids` now.
    pub fn start(pids: &[u32]) -> Self {
        GroupCpuWatch(pids.iter().map(|&pid| CpuWatch::start(pid)).collect())
    }

    /// Whether it measures no process at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (CPU seconds all of them used since the start, wall seconds since the start).
    pub fn read(&self) -> (f64, f64) {
        let mut wall = 0.0;
        let mut cpu = 0.0;
        for w in &self.0 {
            let (c, t) = w.read();
            cpu += c;
            wall = t;
        }
        (cpu, wall)
    }
}

/// Summed (`VmRSS`, `VmHWM`) of several processes, KiB; processes that are gone count zero.
pub fn memory_kib_sum(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|&pid| memory_kib(pid).ok())
        .fold((0, 0), |(r, h), (r2, h2)| (r + r2, h + h2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(stat), Some(300));
    }

    #[test]
    fn reads_own_figures() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_ok());
        let (rss, hwm) = memory_kib(pid).expect("own memory");
        assert!(rss > 0 && hwm >= rss);
    }
}
