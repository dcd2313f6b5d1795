//! Atomic writer: publishes a volume's whole set of files at once, as the kubelet's AtomicWriter
//! does, so a reader sees either the old files or the new ones, never a mix.
//!
//! ```text
//!   <dir>/..2026_11_26_09_30_00.123456789/   the files of one version (real files and dirs)
//!   <dir>/..data -> ..2026_11_26_09_30_00.123456789   swapped by rename(2): the atomic step
//!   <dir>/<name> -> ..data/<name>              one link per top-level entry, made once
//! ```
//!
//! Invariants: every path is checked by [`check_path`] before anything is written (relative, no
//! `..` element, no empty element), so nothing outside `dir` is ever created; an unchanged set of
//! files changes nothing on disk; after a swap the previous version directory is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path};

use k8s_openapi::jiff::Timestamp;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One file of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// The files of a volume, by relative path.
pub type Files = BTreeMap<String, File>;

/// Why a path cannot be a volume file's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("invalid path {0:?}: must be relative")]
    Absolute(String),
    #[error("invalid path {0:?}: must not contain '..'")]
    Parent(String),
    #[error("invalid path {0:?}: must not start with '..'")]
    Hidden(String),
    #[error("invalid path {0:?}: must not be empty or contain empty elements")]
    Empty(String),
}

/// Checks a path given by a user (an item `path`, a `subPath`): relative, inside its volume, and
/// not one of the writer's own `..` names.
pub fn check_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() || path.split('/').any(str::is_empty) {
        return Err(PathError::Empty(path.to_owned()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.to_owned()));
    }
    if Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(PathError::Parent(path.to_owned()));
    }
    if path.starts_with("..") {
        return Err(PathError::Hidden(path.to_owned()));
    }
    Ok(())
}

/// Who may read the files besides their owner (the pod's `fsGroup`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ownership {
    pub fs_group: Option<u32>,
}

/// Makes `dir` hold exactly `files`; returns whether anything changed.
pub fn write(dir: &Path, files: &Files, ownership: Ownership) -> io::Result<bool> {
    for path in files.keys() {
        check_path(path).map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
    }
    fs::create_dir_all(dir)?;
    let current = fs::read_link(dir.join(DATA)).ok();
    if let Some(version) = &current
        && same_contents(&dir.join(version), files, ownership)?
    {
        return Ok(false);
    }

    let version = format!("..{}", Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f"));
    let version_dir = dir.join(&version);
    fs::create_dir(&version_dir)?;
    set_group(&version_dir, ownership, 0o755)?;
    for (path, file) in files {
        let target = version_dir.join(path);
        if let Some(parent) = target.parent() {
            create_dirs(&version_dir, parent, ownership)?;
        }
        let mut out = fs::File::create(&target)?;
        out.write_all(&file.data)?;
        out.sync_all()?;
        set_group(&target, ownership, file.mode)?;
    }

    // The swap: `..data_tmp` then rename over `..data`, which replaces the link atomically.
    let tmp = dir.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&version, &tmp)?;
    fs::rename(&tmp, dir.join(DATA))?;

    let wanted: BTreeSet<&str> = files.keys().filter_map(|p| p.split('/').next()).collect();
    for name in &wanted {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA).join(name), &link)?;
        }
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") || wanted.contains(name.as_str()) {
            continue;
        }
        // Only the links this writer made: anything else in the directory is left alone.
        if entry.file_type()?.is_symlink() {
            fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = current
        && old != Path::new(&version)
    {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

/// Creates `dir` and its parents below `root` with the volume's directory mode.
fn create_dirs(root: &Path, dir: &Path, ownership: Ownership) -> io::Result<()> {
    if dir == root || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(root, parent, ownership)?;
    }
    fs::create_dir(dir)?;
    set_group(dir, ownership, 0o755)
}

/// Applies `mode`, and with an fsGroup makes the group own the path and read it, as upstream's
/// volume ownership for read-only volumes does (files `| 0440`, directories `| 0550` + setgid).
fn set_group(path: &Path, ownership: Ownership, mode: u32) -> io::Result<()> {
    let is_dir = path.is_dir();
    let mode = match ownership.fs_group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))?;
            if is_dir { mode | 0o2550 } else { mode | 0o440 }
        }
        None => mode,
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Whether `version_dir` already holds exactly `files` (contents and modes).
fn same_contents(version_dir: &Path, files: &Files, ownership: Ownership) -> io::Result<bool> {
    let mut present = Vec::new();
    if let Err(err) = list_files(version_dir, version_dir, &mut present) {
        return if err.kind() == ErrorKind::NotFound {
            Ok(false)
        } else {
            Err(err)
        };
    }
    if present.len() != files.len() {
        return Ok(false);
    }
    for (path, file) in files {
        let full = version_dir.join(path);
        let Ok(meta) = fs::metadata(&full) else {
            return Ok(false);
        };
        let want_mode = match ownership.fs_group {
            Some(_) => file.mode | 0o440,
            None => file.mode,
        };
        if meta.permissions().mode() & 0o7777 != want_mode || meta.len() != file.data.len() as u64 {
            return Ok(false);
        }
        if fs::read(&full)? != file.data {
            return Ok(false);
        }
    }
    Ok(true)
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            list_files(root, &entry.path(), out)?;
        } else {
            let relative = entry.path();
            let relative = relative.strip_prefix(root).unwrap_or(&relative);
            out.push(relative.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str, u32)]) -> Files {
        list.iter()
            .map(|(p, d, m)| {
                (
                    (*p).to_owned(),
                    File {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    fn read(dir: &Path, path: &str) -> String {
        fs::read_to_string(dir.join(path)).expect("reading a volume file")
    }

    #[test]
    fn paths_must_stay_inside_the_volume() {
        assert!(check_path("a/b.conf").is_ok());
        assert!(check_path("..a").is_err());
        assert!(check_path("../etc/passwd").is_err());
        assert!(check_path("a/../../x").is_err());
        assert!(check_path("/etc/passwd").is_err());
        assert!(check_path("a//b").is_err());
        assert!(check_path("").is_err());
    }

    #[test]
    fn files_are_published_through_data_and_replaced_whole() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("vol");
        let first = files(&[("a", "1", 0o644), ("sub/b", "2", 0o600)]);
        assert!(write(&dir, &first, Ownership::default()).expect("write"));
        assert_eq!(read(&dir, "a"), "1");
        assert_eq!(read(&dir, "sub/b"), "2");
        assert!(
            fs::symlink_metadata(dir.join("a"))
                .expect("link")
                .is_symlink()
        );
        let mode = fs::metadata(dir.join("sub/b"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let version = fs::read_link(dir.join(DATA)).expect("..data");

        // The same files again: nothing changes, not even the version directory.
        assert!(!write(&dir, &first, Ownership::default()).expect("rewrite"));
        assert_eq!(fs::read_link(dir.join(DATA)).expect("..data"), version);

        // A new set: `a` changes, `sub` goes, `c` comes; the old version is gone.
        let second = files(&[("a", "one", 0o644), ("c", "3", 0o644)]);
        assert!(write(&dir, &second, Ownership::default()).expect("update"));
        assert_eq!(read(&dir, "a"), "one");
        assert_eq!(read(&dir, "c"), "3");
        assert!(fs::symlink_metadata(dir.join("sub")).is_err());
        assert!(!dir.join(&version).exists());
        let names: BTreeSet<String> = fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            4,
            "..data, one version and two links: {names:?}"
        );
    }

    #[test]
    fn a_bad_path_writes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("vol");
        let bad = files(&[("ok", "1", 0o644), ("../escape", "x", 0o644)]);
        assert!(write(&dir, &bad, Ownership::default()).is_err());
        assert!(!tmp.path().join("escape").exists());
        assert!(
            !dir.exists(),
            "nothing is created before every path is checked"
        );
    }
}
