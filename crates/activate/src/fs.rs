//! File-system steps every part of activation takes: files replaced by a
//! rename after their bytes are on disk, symlinks swapped in one rename.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An I/O error and the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} `{path}`")]
pub struct IoError {
    /// What was being done (`write`, `rename`, …).
    pub action: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// Why it failed.
    #[source]
    pub source: io::Error,
}

/// A closure turning an `io::Error` into an [`IoError`] about `path`.
pub fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> IoError + 'p {
    move |source| IoError {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The temporary name a file is written under before its rename: in the
/// same directory (so the rename is atomic), hidden, and unique to this
/// process.
pub fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.bigtop-{}", std::process::id()))
}

/// Replaces `path` with `bytes` (mode `mode`): written to a temporary name,
/// synced, renamed over it, and the directory synced, so that a crash
/// leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IoError> {
    let tmp = temp_name(path);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.set_permissions(fs::Permissions::from_mode(mode)))
        .and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", &tmp)(e));
    }
    rename(&tmp, path)?;
    sync_parent(path)
}

/// Points the symlink `link` at `target`, replacing what is there in one
/// rename (a reader sees the old target or the new one).
pub fn replace_symlink(target: &Path, link: &Path) -> Result<(), IoError> {
    let tmp = temp_name(link);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err("create", &tmp))?;
    rename(&tmp, link)?;
    sync_parent(link)
}

/// Renames `from` to `to`, removing `from` if that fails.
pub fn rename(from: &Path, to: &Path) -> Result<(), IoError> {
    fs::rename(from, to).map_err(|e| {
        let _ = fs::remove_file(from);
        io_err("rename into", to)(e)
    })
}

/// Syncs the directory holding `path`, so that a rename into it survives
/// a crash.
pub fn sync_parent(path: &Path) -> Result<(), IoError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

/// Creates `dir` and its parents (mode 0755).
pub fn create_dirs(dir: &Path) -> Result<(), IoError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))
}

/// Reads `path`, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, IoError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("passwd");
        fs::write(&p, "old")?;
        write_atomic(&p, b"new", 0o640)?;
        assert_eq!(fs::read_to_string(&p)?, "new");
        assert_eq!(fs::metadata(&p)?.permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn a_symlink_is_swapped_in_place() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let l = dir.path().join("static");
        replace_symlink(Path::new("/a"), &l)?;
        replace_symlink(Path::new("/b"), &l)?;
        assert_eq!(fs::read_link(&l)?, Path::new("/b"));
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }
}
