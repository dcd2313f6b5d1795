//! Cgroups: where a pod's containers live in the cgroup tree (the kubelet's QoS layout
//! with the cgroupfs driver), and removing a pod's cgroups once the pod is gone.
//!
//! ```text
//! /kubepods/pod<uid>                 Guaranteed
//! /kubepods/burstable/pod<uid>       Burstable
//! /kubepods/besteffort/pod<uid>      BestEffort
//! ```
//! The runtime creates these directories as it places containers; the runtime removes each
//! container's own cgroup, but not the pod's, which is ours to remove.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub const ROOT: &str = "/kubepods";
const CGROUP_FS: &str = "/sys/fs/cgroup";

pub fn pod_cgroup(qos_class: &str, uid: &str) -> String {
    match qos_class {
        "Guaranteed" => format!("{ROOT}/pod{uid}"),
        "Burstable" => format!("{ROOT}/burstable/pod{uid}"),
        _ => format!("{ROOT}/besteffort/pod{uid}"),
    }
}

/// Every directory that holds `cgroup` in the mounted hierarchies (one per cgroup v1
/// controller, or the single v2 tree).
fn directories(cgroup: &str) -> Vec<PathBuf> {
    let relative = cgroup.trim_start_matches('/');
    let Ok(mounts) = fs::read_dir(CGROUP_FS) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = mounts
        .filter_map(Result::ok)
        .map(|m| m.path().join(relative))
        .filter(|p| p.is_dir())
        .collect();
    let v2 = Path::new(CGROUP_FS).join(relative);
    if v2.is_dir() && !dirs.contains(&v2) {
        dirs.push(v2);
    }
    dirs
}

/// Removes a pod's cgroup (and any empty children left by the runtime) in every
/// hierarchy. A cgroup that still has processes stays and is reported.
pub fn remove(cgroup: &str) -> io::Result<()> {
    let mut first_error = None;
    for dir in directories(cgroup) {
        if let Err(err) = remove_tree(&dir)
            && first_error.is_none()
        {
            first_error = Some(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_layout() {
        assert_eq!(pod_cgroup("Guaranteed", "u"), "/kubepods/podu");
        assert_eq!(pod_cgroup("Burstable", "u"), "/kubepods/burstable/podu");
        assert_eq!(pod_cgroup("BestEffort", "u"), "/kubepods/besteffort/podu");
    }
}
