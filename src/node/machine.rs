//! Machine: what the node is (identity, kernel, OS, CPUs, memory, huge pages) and how much
//! of it is in use (memory, filesystem and process-ID headroom).
//!
//! Parsing is kept apart from reading so that the formats of `/proc` and `/etc` files are
//! unit-tested; the readers only open the files.

use std::fs;
use std::path::{Path, PathBuf};

/// Static facts about the machine, read once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
    /// In Kubernetes' GOARCH spelling (`amd64`, `arm64`).
    pub architecture: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Huge page pools as (resource name, bytes), e.g. (`hugepages-2Mi`, 0).
    pub hugepages: Vec<(String, u64)>,
}

/// Memory as the eviction signal `memory.available` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// A filesystem's size and headroom, from statvfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// Process-ID headroom: the kernel's limit and the tasks that exist now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidUsage {
    pub max: u64,
    pub in_use: u64,
}

impl Machine {
    /// Reads the machine's facts. Files that a machine may lack (no DMI on a microVM, no
    /// machine-id in a minimal image) give empty strings, as they do for the kubelet.
    pub fn read() -> Self {
        let text = |path: &str| {
            fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            machine_id: first_non_empty(&[
                text("/etc/machine-id"),
                text("/var/lib/dbus/machine-id"),
            ]),
            system_uuid: text("/sys/class/dmi/id/product_uuid"),
            boot_id: text("/proc/sys/kernel/random/boot_id"),
            kernel_version: text("/proc/sys/kernel/osrelease"),
            os_image: os_image(&fs::read_to_string("/etc/os-release").unwrap_or_default()),
            architecture: kubernetes_arch(std::env::consts::ARCH).to_owned(),
            cpus: fs::read_to_string("/sys/devices/system/cpu/online")
                .ok()
                .and_then(|s| count_cpu_list(&s))
                .unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
                }),
            memory_bytes: parse_meminfo(&meminfo).map_or(0, |m| m.total_bytes),
            hugepages: read_hugepages(Path::new("/sys/kernel/mm/hugepages")),
        }
    }
}

fn first_non_empty(candidates: &[String]) -> String {
    candidates
        .iter()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_default()
}

/// The `PRETTY_NAME` of os-release, e.g. `Debian GNU/Linux 12 (bookworm)`.
pub fn os_image(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".to_owned())
}

/// Rust's architecture names in Kubernetes' (Go's) spelling.
pub fn kubernetes_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Counts a kernel CPU list such as `0-3,8,10-11`.
pub fn count_cpu_list(list: &str) -> Option<u32> {
    let mut count = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        count += match part.split_once('-') {
            Some((lo, hi)) => {
                hi.parse::<u32>()
                    .ok()?
                    .checked_sub(lo.parse::<u32>().ok()?)?
                    + 1
            }
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
    }
    (count > 0).then_some(count)
}

/// `MemTotal` and `MemAvailable` from /proc/meminfo.
pub fn parse_meminfo(meminfo: &str) -> Option<MemoryUsage> {
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024)
        })
    };
    Some(MemoryUsage {
        total_bytes: field("MemTotal")?,
        available_bytes: field("MemAvailable")?,
    })
}

fn read_hugepages(dir: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut pools: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let page_bytes = hugepage_size(&name)?;
            let pages: u64 = fs::read_to_string(entry.path().join("nr_hugepages"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((hugepage_resource(page_bytes), pages * page_bytes))
        })
        .collect();
    pools.sort();
    pools
}

/// The page size of a sysfs pool directory such as `hugepages-2048kB`.
pub fn hugepage_size(dir_name: &str) -> Option<u64> {
    let kib: u64 = dir_name
        .strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The resource name of a huge page size: `hugepages-2Mi`, `hugepages-1Gi`.
pub fn hugepage_resource(page_bytes: u64) -> String {
    const UNITS: &[(&str, u64)] = &[("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    let (unit, size) = UNITS
        .iter()
        .find(|(_, size)| page_bytes.is_multiple_of(*size))
        .copied()
        .unwrap_or(("", 1));
    format!("hugepages-{}{unit}", page_bytes / size)
}

/// Current memory usage.
pub fn memory_usage() -> Option<MemoryUsage> {
    parse_meminfo(&fs::read_to_string("/proc/meminfo").ok()?)
}

/// The nearest existing ancestor of `path` (itself if it exists): a directory that may not
/// exist yet lives on that ancestor's filesystem.
pub fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// Size and headroom of the filesystem holding `path`.
pub fn fs_usage(path: &Path) -> Option<FsUsage> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let fragment = stat.fragment_size() as u64;
    Some(FsUsage {
        capacity_bytes: stat.blocks() as u64 * fragment,
        available_bytes: stat.blocks_available() as u64 * fragment,
        inodes: stat.files() as u64,
        inodes_free: stat.files_available() as u64,
    })
}

/// Process-ID headroom, as the kubelet computes `pid.available`: the lower of `pid_max`
/// and `threads-max`, against the number of tasks (threads) in existence.
pub fn pid_usage() -> Option<PidUsage> {
    let number = |path: &str| fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
    let max = match (
        number("/proc/sys/kernel/pid_max"),
        number("/proc/sys/kernel/threads-max"),
    ) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(PidUsage {
        max,
        in_use: tasks_in_loadavg(&fs::read_to_string("/proc/loadavg").ok()?)?,
    })
}

/// The total task count in /proc/loadavg (`0.00 0.01 0.05 2/345 6789` gives 345).
pub fn tasks_in_loadavg(loadavg: &str) -> Option<u64> {
    loadavg
        .split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_image_from_os_release() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n";
        assert_eq!(os_image(debian), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(os_image("NAME=x\n"), "Linux");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24610144 kB\nMemFree:        22000000 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(MemoryUsage {
                total_bytes: 24610144 * 1024,
                available_bytes: 23000000 * 1024
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn hugepage_names() {
        assert_eq!(hugepage_size("hugepages-2048kB"), Some(2 << 20));
        assert_eq!(hugepage_resource(2 << 20), "hugepages-2Mi");
        assert_eq!(hugepage_resource(1 << 30), "hugepages-1Gi");
        assert_eq!(hugepage_resource(64 << 10), "hugepages-64Ki");
        assert_eq!(hugepage_size("nr_hugepages"), None);
    }

    #[test]
    fn loadavg_tasks() {
        assert_eq!(tasks_in_loadavg("0.00 0.01 0.05 2/345 6789\n"), Some(345));
        assert_eq!(tasks_in_loadavg("garbage"), None);
    }

    #[test]
    fn arch_names() {
        assert_eq!(kubernetes_arch("x86_64"), "amd64");
        assert_eq!(kubernetes_arch("aarch64"), "arm64");
        assert_eq!(kubernetes_arch("riscv64"), "riscv64");
    }

    #[test]
    fn reads_this_machine() {
        let machine = Machine::read();
        assert!(machine.cpus >= 1);
        assert!(machine.memory_bytes > 0);
        assert!(!machine.kernel_version.is_empty());
        assert!(fs_usage(Path::new("/")).is_some_and(|fs| fs.capacity_bytes >= fs.available_bytes));
        assert!(pid_usage().is_some_and(|p| p.max > p.in_use && p.in_use > 0));
    }
}
