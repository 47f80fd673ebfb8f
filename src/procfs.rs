//! Memory figures from Linux's `/proc`, for the memory tests and benchmarks.

/// A kB field (`VmRSS:`, `VmHWM:`) of `/proc/<pid>/status`, or of this process
/// with `pid = None`; `None` where `/proc` is missing or lacks the field.
pub fn status_kb(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    std::fs::read_to_string(path).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    })
}
