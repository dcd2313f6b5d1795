//! subPath: mounting one path inside a volume instead of the whole volume, without ever letting
//! the path (or a symlink a container planted in a writable volume) lead outside the volume.
//!
//! How: the path is checked as text ([`check_path`]), then opened with `openat2(2)` and
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` relative to the volume's directory, so the kernel
//! refuses any resolution that would leave it, symlinks included; missing directories are made
//! the same way, one element at a time. The descriptor is then bind-mounted to a directory of the
//! pod's own (`volume-subpaths/<volume>/<container>/<index>`) which is what the runtime mounts
//! into the container: the object checked is the object mounted (upstream's `safe_open`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, mkdirat};

use super::atomic::check_path;
use super::mounts;

/// Why a subPath cannot be mounted; the message goes into the container's
/// `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid subPath {path:?}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("subPath {path:?} leads outside its volume")]
    Escapes { path: String },
    #[error("preparing subPath {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn beneath(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Opens `path` below `root` (`O_PATH`), making missing directories on the way with the
/// volume directory's own mode, as upstream does (so an fsGroup can write to them too).
fn open_beneath(root: &OwnedFd, path: &str) -> Result<OwnedFd, Errno> {
    match openat2(root.as_fd(), path, beneath(OFlag::O_PATH)) {
        Err(Errno::ENOENT) => {}
        other => return other,
    }
    let mut dir = openat2(
        root.as_fd(),
        ".",
        beneath(OFlag::O_PATH | OFlag::O_DIRECTORY),
    )?;
    let mode = Mode::from_bits_truncate(fstat(root.as_fd())?.st_mode & 0o7777);
    for element in path.split('/') {
        match mkdirat(dir.as_fd(), element, mode) {
            // The umask narrowed it: set it through a descriptor of the new directory itself.
            Ok(()) => {
                let made = openat2(
                    dir.as_fd(),
                    element,
                    beneath(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW),
                )?;
                fchmod(made.as_fd(), mode)?;
            }
            Err(Errno::EEXIST) => {}
            Err(err) => return Err(err),
        }
        dir = openat2(
            dir.as_fd(),
            element,
            beneath(OFlag::O_PATH | OFlag::O_DIRECTORY),
        )?;
    }
    Ok(dir)
}

/// Binds `sub_path` of the volume at `volume_dir` onto `target` and returns `target`, the path
/// to hand to the runtime.
pub fn prepare(volume_dir: &Path, sub_path: &str, target: &Path) -> Result<PathBuf, Error> {
    let invalid = |reason: String| Error::Invalid {
        path: sub_path.to_owned(),
        reason,
    };
    check_path(sub_path).map_err(|e| invalid(e.to_string()))?;
    let io_error = |source: io::Error| Error::Io {
        path: sub_path.to_owned(),
        source,
    };
    let root = open(
        volume_dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error(e.into()))?;
    let fd = open_beneath(&root, sub_path).map_err(|errno| match errno {
        Errno::EXDEV | Errno::ELOOP => Error::Escapes {
            path: sub_path.to_owned(),
        },
        other => io_error(other.into()),
    })?;
    let is_dir = fstat(fd.as_fd())
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
        .map_err(|e| io_error(e.into()))?;
    mounts::bind_fd(&fd, is_dir, target).map_err(io_error)?;
    Ok(target.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn paths_and_symlinks_cannot_leave_the_volume() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let volume = tmp.path().join("vol");
        fs::create_dir_all(volume.join("data")).expect("volume");
        fs::write(tmp.path().join("secret"), "host file").expect("outside file");
        symlink("../secret", volume.join("link-out")).expect("symlink");
        symlink("/etc", volume.join("abs-link")).expect("symlink");
        let root_fd =
            open(&volume, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).expect("open volume");

        assert!(open_beneath(&root_fd, "data").is_ok());
        assert!(matches!(
            open_beneath(&root_fd, "link-out"),
            Err(Errno::EXDEV)
        ));
        assert!(open_beneath(&root_fd, "abs-link/passwd").is_err());
        // A missing path is made as directories inside the volume, with the volume's mode
        // (the umask does not narrow it).
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&volume, fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        open_beneath(&root_fd, "new/deeper").expect("created");
        assert!(volume.join("new/deeper").is_dir());
        let mode = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
        };
        assert_eq!(mode(&volume.join("new")), 0o777);
        assert_eq!(mode(&volume.join("new/deeper")), 0o777);
        // Creating through an escaping link fails and makes nothing outside.
        assert!(open_beneath(&root_fd, "abs-link/nodus-test-dir").is_err());
        assert!(!Path::new("/etc/nodus-test-dir").exists());

        let target = tmp.path().join("target");
        assert!(matches!(
            prepare(&volume, "../secret", &target),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            prepare(&volume, "link-out", &target),
            Err(Error::Escapes { .. })
        ));
        assert!(!target.exists(), "nothing is bound after a refusal");
    }

    #[test]
    fn a_sub_path_is_bound_to_the_target() {
        if !root() {
            eprintln!("skipped: bind mounts need root");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let volume = tmp.path().join("vol");
        fs::create_dir_all(volume.join("conf")).expect("volume");
        fs::write(volume.join("conf/app.conf"), "x=1").expect("file");
        let target = tmp.path().join("subpaths/vol/app/0");
        let bound = prepare(&volume, "conf/app.conf", &target).expect("bind");
        assert_eq!(fs::read_to_string(&bound).expect("read"), "x=1");
        mounts::remove_dir(tmp.path()).expect("unmount and remove");
        assert!(!tmp.path().exists());
    }
}
