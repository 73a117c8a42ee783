//! Memory of a process, for the tests that bound what a hostile client can make the relay hold.

/// The resident memory (`VmRSS`) of a process (`None`: this one), in bytes, from
/// `/proc/<pid>/status`; `None` if it cannot be read (the process is gone).
pub fn vm_rss_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
