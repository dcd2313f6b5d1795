//! Cgroup readings (v1 hierarchy, as this agent lays pods out): CPU time and memory of one
//! cgroup, the figures both the eviction manager and the stats endpoints use.
//!
//! Invariants: reads only; a cgroup that is gone or a file that does not parse is `None`,
//! never an error, since cgroups come and go under the reader.

use std::fs;
use std::path::{Path, PathBuf};

const CGROUP_FS: &str = "/sys/fs/cgroup";

fn file(controller: &str, cgroup: &str, name: &str) -> PathBuf {
    Path::new(CGROUP_FS)
        .join(controller)
        .join(cgroup.trim_start_matches('/'))
        .join(name)
}

/// A number in a cgroup file.
pub fn number(controller: &str, cgroup: &str, name: &str) -> Option<u64> {
    fs::read_to_string(file(controller, cgroup, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Memory of a cgroup and everything under it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage_bytes: u64,
    /// Usage less inactive file cache: what the kubelet evicts and reports on.
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
}

/// `memory.usage_in_bytes` with `memory.stat`'s hierarchical totals.
pub fn memory(cgroup: &str) -> Option<Memory> {
    let usage = number("memory", cgroup, "memory.usage_in_bytes")?;
    let stat = fs::read_to_string(file("memory", cgroup, "memory.stat")).ok()?;
    Some(memory_from(usage, &stat))
}

/// The figures from a usage and a v1 `memory.stat` text.
pub fn memory_from(usage: u64, stat: &str) -> Memory {
    let total = |key: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Memory {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(total("total_inactive_file")),
        rss_bytes: total("total_rss"),
        page_faults: total("total_pgfault"),
        major_page_faults: total("total_pgmajfault"),
    }
}

/// CPU time used by a cgroup and everything under it, in nanoseconds.
pub fn cpu_nanos(cgroup: &str) -> Option<u64> {
    number("cpuacct", cgroup, "cpuacct.usage")
}

/// The processes of a cgroup or of the first of its descendants that has any (a pod's
/// processes live in its containers' cgroups).
pub fn first_process(controller: &str, cgroup: &str) -> Option<u32> {
    let mut stack = vec![
        Path::new(CGROUP_FS)
            .join(controller)
            .join(cgroup.trim_start_matches('/')),
    ];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs"))
            && let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok())
        {
            return Some(pid);
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    None
}

/// The cgroup (relative to the hierarchy root) this process is in, for one v1 controller.
pub fn of_process(pid: &str, controller: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_is_usage_less_inactive_file() {
        let stat = "cache 100\nrss 5\ntotal_rss 4096\ntotal_inactive_file 1000\n\
                    total_pgfault 7\ntotal_pgmajfault 2\ninactive_file 3\n";
        assert_eq!(
            memory_from(10_000, stat),
            Memory {
                usage_bytes: 10_000,
                working_set_bytes: 9_000,
                rss_bytes: 4096,
                page_faults: 7,
                major_page_faults: 2,
            }
        );
        // Inactive cache larger than usage (racing reads) gives zero, not a wrap.
        assert_eq!(memory_from(10, stat).working_set_bytes, 0);
    }
}
