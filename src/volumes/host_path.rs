//! hostPath: the `type` check a hostPath volume asks for, done before any container starts,
//! with upstream's messages (`hostPath type check failed: PATH is not a directory`).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

/// Checks (and for the `OrCreate` types, creates) `path` as `kind` demands; the error is the
/// FailedMount message.
pub fn check(path: &Path, kind: Option<&str>) -> Result<(), String> {
    let shown = path.display();
    let failed = |what: &str| format!("hostPath type check failed: {shown} is not a {what}");
    let meta = || fs::metadata(path);
    match kind.unwrap_or("") {
        "" => Ok(()),
        "DirectoryOrCreate" => match meta() {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(failed("directory")),
            Err(e) if e.kind() == ErrorKind::NotFound => fs::create_dir_all(path)
                .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o755)))
                .map_err(|e| format!("creating hostPath directory {shown}: {e}")),
            Err(e) => Err(format!("hostPath {shown}: {e}")),
        },
        "FileOrCreate" => match meta() {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(failed("file")),
            Err(e) if e.kind() == ErrorKind::NotFound => fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .and_then(|_| fs::set_permissions(path, fs::Permissions::from_mode(0o644)))
                .map_err(|e| format!("creating hostPath file {shown}: {e}")),
            Err(e) => Err(format!("hostPath {shown}: {e}")),
        },
        kind @ ("Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice") => {
            let m = meta()
                .map_err(|_| format!("hostPath type check failed: {shown} does not exist"))?;
            let t = m.file_type();
            let (ok, what) = match kind {
                "Directory" => (t.is_dir(), "directory"),
                "File" => (t.is_file(), "file"),
                "Socket" => (t.is_socket(), "socket"),
                "CharDevice" => (t.is_char_device(), "character device"),
                _ => (t.is_block_device(), "block device"),
            };
            if ok { Ok(()) } else { Err(failed(what)) }
        }
        other => Err(format!("hostPath {shown}: unknown type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_checked_and_created_as_asked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("d");
        let file = tmp.path().join("f");
        assert!(check(&dir, Some("Directory")).is_err(), "missing");
        check(&dir, Some("DirectoryOrCreate")).expect("created");
        assert!(dir.is_dir());
        check(&dir, Some("Directory")).expect("a directory now");
        check(&file, Some("FileOrCreate")).expect("created");
        assert!(file.is_file());
        assert_eq!(
            check(&file, Some("Directory")),
            Err(format!(
                "hostPath type check failed: {} is not a directory",
                file.display()
            ))
        );
        assert!(check(&dir, Some("File")).is_err());
        assert!(
            check(&dir, Some("FileOrCreate")).is_err(),
            "a directory is not a file"
        );
        assert!(check(&file, Some("Socket")).is_err());
        assert!(check(Path::new("/dev/null"), Some("CharDevice")).is_ok());
        assert!(check(&file, Some("Bogus")).is_err());
        assert!(
            check(&tmp.path().join("anything"), None).is_ok(),
            "no type, no check"
        );
    }
}
