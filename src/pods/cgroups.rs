//! Cgroups: where a pod's containers live in the cgroup tree (the kubelet's QoS layout
//! with the cgroupfs driver), and removing a pod's cgroups once the pod is gone.
//!
//! ```text
//! /kubepods/pod<uid>                 Guaranteed
//! /kubepods/burstable/pod<uid>       Burstable
//! /kubepods/besteffort/pod<uid>      BestEffort
//! ```
//! We create the pod's cgroup before its sandbox and give it the pod's totals (cpu shares,
//! and a CFS quota and memory limit when every container has one), so the pod as a whole is
//! held to what it asked for, as the kubelet's pod cgroups do; BestEffort pods share the
//! minimum cpu weight. The runtime places each container in a child of it and removes that
//! child, but not the pod's cgroup, which is ours to remove.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::qos::PodResources;

pub const ROOT: &str = "/kubepods";
const CGROUP_FS: &str = "/sys/fs/cgroup";

pub fn pod_cgroup(qos_class: &str, uid: &str) -> String {
    match qos_class {
        "Guaranteed" => format!("{ROOT}/pod{uid}"),
        "Burstable" => format!("{ROOT}/burstable/pod{uid}"),
        _ => format!("{ROOT}/besteffort/pod{uid}"),
    }
}

/// A value for one cgroup file of one controller (cgroup v1 names, with the v2 equivalents).
/// Only on hosts with that v1 controller mounted: on a cgroup v2 host a missing
/// `/sys/fs/cgroup/<controller>` must not be created (it would become a cgroup of that name),
/// and the runtime's own container limits still apply there.
fn write(controller: &str, cgroup: &str, file: &str, value: &str) -> io::Result<()> {
    let root = Path::new(CGROUP_FS).join(controller);
    if !root.join("tasks").exists() {
        return Ok(());
    }
    let dir = root.join(cgroup.trim_start_matches('/'));
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(file), value)
}

/// Creates the pod's cgroup (cgroup v1 controllers cpu and memory) with the pod's totals.
pub fn configure_pod(qos_class: &str, uid: &str, resources: &PodResources) -> io::Result<()> {
    if qos_class == "BestEffort" {
        // Upstream: the BestEffort tier gets the smallest cpu weight there is.
        write("cpu", &format!("{ROOT}/besteffort"), "cpu.shares", "2")?;
    }
    write_totals(&pod_cgroup(qos_class, uid), resources)
}

/// Brings an existing pod cgroup to new totals (an in-place resize).
pub fn update_pod(qos_class: &str, uid: &str, resources: &PodResources) -> io::Result<()> {
    if qos_class == "BestEffort" {
        return Ok(());
    }
    write_totals(&pod_cgroup(qos_class, uid), resources)
}

/// The pod's cpu shares, CFS quota and memory limit; a limit the totals lack is lifted (-1).
fn write_totals(cgroup: &str, resources: &PodResources) -> io::Result<()> {
    let shares = super::container::cpu_shares(Some(resources.milli_cpu_request));
    write("cpu", cgroup, "cpu.shares", &shares.to_string())?;
    let quota = match resources.milli_cpu_limit {
        Some(limit) => {
            write("cpu", cgroup, "cpu.cfs_period_us", "100000")?;
            super::container::cpu_quota(limit)
        }
        None => -1,
    };
    write("cpu", cgroup, "cpu.cfs_quota_us", &quota.to_string())?;
    let memory = resources.memory_limit.unwrap_or(-1);
    write(
        "memory",
        cgroup,
        "memory.limit_in_bytes",
        &memory.to_string(),
    )
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
