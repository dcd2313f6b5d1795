//! Container log rotation (`--container-log-max-size`, `--container-log-max-files`), as the
//! kubelet's log manager does it: a running container's log over the size is renamed to
//! `<attempt>.log.<UTC time>`, the runtime is asked to reopen its log (CRI
//! `ReopenContainerLog`), and the oldest rotated files go so that at most `max_files` files
//! (the live one included) remain. Unlike upstream, rotated files are not compressed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    /// At least 2: the live file and one rotated.
    pub max_files: usize,
}

/// The live log of a container: the highest `<attempt>.log` in its directory.
pub fn live_log(container_dir: &Path) -> Option<PathBuf> {
    fs::read_dir(container_dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let attempt: u64 = name.strip_suffix(".log")?.parse().ok()?;
            Some((attempt, e.path()))
        })
        .max()
        .map(|(_, path)| path)
}

/// Rotated files of `live`, oldest first (their suffixes sort by time).
fn rotated(live: &Path) -> Vec<PathBuf> {
    let Some(dir) = live.parent() else {
        return Vec::new();
    };
    let prefix = format!(
        "{}.",
        live.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Renames `live` away when it is over the size; returns whether it did (the caller then has
/// the runtime reopen the log).
pub fn rotate_if_large(live: &Path, limits: Limits, now: Timestamp) -> io::Result<bool> {
    if fs::metadata(live)?.len() <= limits.max_bytes {
        return Ok(false);
    }
    let stamp = now.strftime("%Y%m%d-%H%M%S").to_string();
    let mut target = PathBuf::from(format!("{}.{stamp}", live.display()));
    // Two rotations in one second (a tiny limit): keep both.
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{}.{stamp}.{n}", live.display()));
        n += 1;
    }
    fs::rename(live, &target)?;
    Ok(true)
}

/// Removes the oldest rotated files beyond the limit.
pub fn prune(live: &Path, limits: Limits) -> io::Result<()> {
    let old = rotated(live);
    let keep = limits.max_files.saturating_sub(1);
    for file in old.iter().take(old.len().saturating_sub(keep)) {
        fs::remove_file(file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_log_is_rotated_and_old_ones_pruned() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        fs::write(dir.join("0.log"), "old attempt").expect("file");
        fs::write(dir.join("1.log"), "x".repeat(100)).expect("file");
        let live = live_log(dir).expect("a live log");
        assert_eq!(live, dir.join("1.log"));
        let limits = Limits {
            max_bytes: 50,
            max_files: 2,
        };
        let t0: Timestamp = "2026-11-26T10:00:00Z".parse().expect("time");
        assert!(rotate_if_large(&live, limits, t0).expect("rotate"));
        assert!(!live.exists(), "renamed away; the runtime reopens it");
        fs::write(&live, "x".repeat(100)).expect("reopened and written");
        let t1: Timestamp = "2026-11-26T10:00:10Z".parse().expect("time");
        assert!(rotate_if_large(&live, limits, t1).expect("rotate"));
        fs::write(&live, "small").expect("reopened");
        assert!(!rotate_if_large(&live, limits, t1).expect("no rotation"));
        prune(&live, limits).expect("prune");
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["0.log", "1.log", "1.log.20261126-100010"]);
    }
}
