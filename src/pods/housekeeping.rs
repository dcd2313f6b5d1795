//! Housekeeping: the eviction manager's round. Measures the node (memory, the root
//! filesystem, pids) and the running pods (cgroup memory and pids, disk used by logs and
//! emptyDirs), and says which pods to evict and why (see [`super::eviction`] for the rules).
//!
//! Invariants: reads only (`/proc`, cgroup files, the pods' own directories); at most one pod
//! per round for node pressure, as the kubelet does, so the node can settle before the next.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use super::admission::{self, Rejection};
use super::eviction::{self, PodUsage, Pressure};
use super::metadata::PodKey;
use super::{cgroups, qos};
use crate::config::{Signal, Thresholds};
use crate::node::machine;
use crate::quantity;
use crate::stats::cgroup;

/// Where housekeeping looks.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The agent's root directory (`<root>/pods/<uid>`), whose filesystem is nodefs.
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
}

/// Bytes allocated under `path`, not following symlinks nor crossing into other filesystems
/// (a tmpfs emptyDir is memory, not disk).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(root) = fs::symlink_metadata(path) else {
        return 0;
    };
    let device = root.dev();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if meta.dev() != device {
            continue;
        }
        total += meta.blocks() * 512;
        if meta.is_dir()
            && let Ok(entries) = fs::read_dir(&dir)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}

fn empty_dirs(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir
        .join("pods")
        .join(uid)
        .join("volumes/kubernetes.io~empty-dir")
}

/// The emptyDir of `pod` over its `sizeLimit`, with the eviction it earns.
fn empty_dir_over_limit(paths: &Paths, pod: &Pod) -> Option<Rejection> {
    let uid = pod.metadata.uid.as_deref()?;
    for volume in pod.spec.as_ref()?.volumes.iter().flatten() {
        let Some(dir) = &volume.empty_dir else {
            continue;
        };
        if dir.medium.as_deref() == Some("Memory") {
            continue;
        }
        let Some(limit) = &dir.size_limit else {
            continue;
        };
        let Some(limit_bytes) = quantity::parse(&limit.0).map(|m| m.0 / 1000) else {
            continue;
        };
        let used = disk_usage(&empty_dirs(&paths.root_dir, uid).join(&volume.name));
        if i128::from(used) > limit_bytes {
            return Some(Rejection {
                reason: "Evicted".into(),
                message: eviction::empty_dir_message(&volume.name, &limit.0),
            });
        }
    }
    None
}

fn usage(paths: &Paths, pod: &Pod, containers: Vec<(String, String)>) -> PodUsage {
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let cgroup = cgroups::pod_cgroup(qos::class(&spec), &uid);
    let requests = admission::requests(&spec);
    let request = |name: &str| {
        requests
            .get(name)
            .map_or(0, |m| u64::try_from(*m / 1000).unwrap_or(0))
    };
    let disk = disk_usage(&empty_dirs(&paths.root_dir, &uid))
        + disk_usage(&paths.pod_logs_dir.join(PodKey::of(pod).log_dir_name()));
    PodUsage {
        uid,
        priority: spec.priority.unwrap_or(0),
        memory_bytes: cgroup::memory(&cgroup).map_or(0, |m| m.working_set_bytes),
        memory_request: request("memory"),
        disk_bytes: disk,
        disk_request: request("ephemeral-storage"),
        pids: cgroup::number("pids", &cgroup, "pids.current").unwrap_or(0),
        containers: containers
            .into_iter()
            .map(|(name, id)| {
                let used =
                    cgroup::memory(&format!("{cgroup}/{id}")).map_or(0, |m| m.working_set_bytes);
                (name, used)
            })
            .collect(),
    }
}

/// The first node signal under its hard threshold, if any.
pub fn pressure(paths: &Paths, thresholds: &Thresholds) -> Option<Pressure> {
    let check = |signal: Signal, available: u64, capacity: u64| {
        let threshold = thresholds.get(signal)?.of(capacity);
        (available < threshold).then_some(Pressure {
            signal,
            threshold_bytes: threshold,
            available_bytes: available,
        })
    };
    let memory = machine::memory_usage()
        .and_then(|m| check(Signal::MemoryAvailable, m.available_bytes, m.total_bytes));
    let nodefs = machine::fs_usage(&machine::existing_ancestor(&paths.root_dir)).and_then(|fs| {
        check(
            Signal::NodefsAvailable,
            fs.available_bytes,
            fs.capacity_bytes,
        )
    });
    let pids = machine::pid_usage()
        .and_then(|p| check(Signal::PidAvailable, p.max.saturating_sub(p.in_use), p.max));
    memory.or(nodefs).or(pids)
}

/// The signal upstream counts emptyDir `sizeLimit` evictions under.
pub const EMPTY_DIR_LIMIT: &str = "emptydirfs.limit";

/// A pod to evict: its UID, the failure it gets, and the eviction signal behind it.
pub type Eviction = (String, Rejection, &'static str);

/// One round: the pods to evict. `running` lists each running pod with its containers'
/// (name, runtime ID).
pub fn round(
    paths: &Paths,
    thresholds: &Thresholds,
    running: Vec<(&Pod, Vec<(String, String)>)>,
) -> Vec<Eviction> {
    let mut evict: Vec<Eviction> = running
        .iter()
        .filter_map(|(pod, _)| {
            Some((
                pod.metadata.uid.clone()?,
                empty_dir_over_limit(paths, pod)?,
                EMPTY_DIR_LIMIT,
            ))
        })
        .collect();
    if let Some(pressure) = pressure(paths, thresholds) {
        let usages: Vec<PodUsage> = running
            .into_iter()
            .filter(|(pod, _)| {
                !evict
                    .iter()
                    .any(|(uid, _, _)| pod.metadata.uid.as_deref() == Some(uid))
            })
            .map(|(pod, containers)| usage(paths, pod, containers))
            .collect();
        if let Some(victim) = eviction::pick(&pressure, &usages) {
            evict.push((
                victim.uid.clone(),
                Rejection {
                    reason: "Evicted".into(),
                    message: eviction::node_message(&pressure, victim),
                },
                pressure.signal.name(),
            ));
        }
    }
    evict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_files_but_not_symlink_targets() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("a"), vec![1u8; 64 * 1024]).expect("file");
        fs::create_dir(tmp.path().join("sub")).expect("dir");
        fs::write(tmp.path().join("sub/b"), vec![1u8; 64 * 1024]).expect("file");
        std::os::unix::fs::symlink("/usr", tmp.path().join("link")).expect("link");
        let used = disk_usage(tmp.path());
        assert!(used >= 128 * 1024, "{used}");
        assert!(
            used < 1 << 20,
            "the symlink's target is not counted: {used}"
        );
    }
}
