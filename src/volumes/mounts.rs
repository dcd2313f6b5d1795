//! Mounts on the host: tmpfs for memory-backed volumes, bind mounts for subPaths, and removing
//! every mount under a pod's directory when the pod goes (also after an agent restart, since the
//! kernel's mount table, not memory, says what is mounted).

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The mount points at or below `dir`, deepest first (so nested ones go before their parents).
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(byte) = u8::from_str_radix(&code, 8) {
                out.push(byte as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(mounts_under(path)?.iter().any(|p| p == path))
}

/// Mounts a tmpfs at `dir` (created if needed) unless one is there already.
pub fn tmpfs(dir: &Path, size_bytes: Option<u64>, mode: u32) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    if is_mount_point(dir)? {
        return Ok(());
    }
    let mut options = format!("mode={mode:o}");
    if let Some(size) = size_bytes {
        options.push_str(&format!(",size={size}"));
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(io::Error::from)
}

/// Bind-mounts what `source` (an `O_PATH` descriptor) refers to onto `target`, creating
/// `target` as a file or a directory to match. Going through `/proc/self/fd` binds the object
/// that was checked, not whatever a path might lead to by the time of the mount.
pub fn bind_fd(source: &impl AsRawFd, is_dir: bool, target: &Path) -> io::Result<()> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    if is_mount_point(target)? {
        umount2(target, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    if is_dir {
        fs::create_dir_all(target)?;
    } else if !target.exists() {
        fs::File::create(target)?;
    }
    let from = PathBuf::from(format!("/proc/self/fd/{}", source.as_raw_fd()));
    mount(
        Some(&from),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// Unmounts everything at or below `dir`, then removes `dir`. Lazy unmounts (`MNT_DETACH`), so
/// a mount a process still holds open cannot keep the pod's directory from going.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    for point in mounts_under(dir)? {
        match umount2(&point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(err) => return Err(io::Error::from(err)),
        }
    }
    // Never recurse into something still mounted: a subPath bind of a hostPath would lead the
    // removal into the host's own files.
    if let Some(left) = mounts_under(dir)?.first() {
        return Err(io::Error::other(format!(
            "{} is still mounted",
            left.display()
        )));
    }
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/var/lib/a\040b"), "/var/lib/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
