//! File-system steps every part of activation takes: files replaced by a
//! rename after their bytes are on disk, symlinks swapped in one rename —
//! and never a symlink followed on the way.
//!
//! Activation writes a machine's files from the host, as root, while the
//! machine runs: a process in a container (root inside it) can replace
//! `/etc/web` or `/run/service/x` with a symlink to a host directory
//! between two activations, or during one. So every helper here opens the
//! directory it works in with `openat2(RESOLVE_NO_SYMLINKS)` — no
//! component of the path may be a symlink — and acts on the final name
//! relative to that descriptor, without following it either (`O_NOFOLLOW`,
//! `renameat`, `unlinkat`, `symlinkat`, `fchownat(AT_SYMLINK_NOFOLLOW)`).
//! A machine's root must therefore be given as a path without symlinks
//! ([`Machine::open`](crate::Machine::open) canonicalizes it).

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, CWD};

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
        source: explain(source),
    }
}

/// `ELOOP` from a refused symlink, said as what it means.
fn explain(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::other(
            "a symlink is on the way, and activation follows none (something in the machine may have planted it)",
        )
    } else {
        e
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

/// Opens the directory `dir`, refusing a symlink anywhere in its path.
pub fn open_dir(dir: &Path) -> Result<OwnedFd, IoError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    rustix::fs::openat2(
        CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS,
    )
    .map_err(|e| io_err("open", dir)(e.into()))
}

/// The directory holding `path`, opened without following symlinks, and
/// the final name.
fn parent(path: &Path) -> Result<(OwnedFd, &OsStr), IoError> {
    let name = path.file_name().ok_or_else(|| IoError {
        action: "use",
        path: path.to_owned(),
        source: io::Error::other("not a file name"),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    Ok((open_dir(dir)?, name))
}

/// Creates the temporary file `path` is written under, in `dir` (its
/// directory, opened), with `mode`; a leftover of an earlier crash is
/// removed first.
fn create_temp(dir: &OwnedFd, path: &Path, mode: u32) -> Result<(PathBuf, fs::File), IoError> {
    let tmp_path = temp_name(path);
    let tmp = tmp_path.file_name().expect("a file name");
    let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
    let fd = rustix::fs::openat(
        dir,
        tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| io_err("create", &tmp_path)(e.into()))?;
    Ok((tmp_path, fs::File::from(fd)))
}

/// Replaces `path` with `bytes` (mode `mode`): written to a temporary name,
/// synced, renamed over it, and the directory synced, so that a crash
/// leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IoError> {
    write_atomic_with(path, bytes, mode, |_| Ok::<(), IoError>(()))
}

/// As [`write_atomic`], without syncing anything: for `/run`, which a
/// reboot empties (and activation rewrites), where waiting for the disk
/// only costs time — a thousand syncs for a first activation of 200
/// services.
pub fn write_volatile(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IoError> {
    let (dir, name) = parent(path)?;
    let (tmp_path, mut f) = create_temp(&dir, path, mode)?;
    let tmp = tmp_path.file_name().expect("a file name");
    let written = f
        .write_all(bytes)
        .map_err(io_err("write", &tmp_path))
        .and_then(|()| {
            rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))
                .map_err(|e| io_err("set the mode of", &tmp_path)(e.into()))
        });
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(&dir, tmp, AtFlags::empty());
        return Err(e);
    }
    rustix::fs::renameat(&dir, tmp, &dir, name).map_err(|e| {
        let _ = rustix::fs::unlinkat(&dir, tmp, AtFlags::empty());
        io_err("rename into", path)(e.into())
    })
}

/// As [`write_atomic`], with `before_rename` run on the temporary file's
/// path (to change its owner) before it takes the place of `path`.
pub fn write_atomic_with<E: From<IoError>>(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    before_rename: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let (dir, name) = parent(path)?;
    // Private until its owner is set; its mode comes last.
    let (tmp_path, mut f) = create_temp(&dir, path, 0o600)?;
    let tmp = tmp_path.file_name().expect("a file name");
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| E::from(io_err("write", &tmp_path)(e)))
        .and_then(|()| before_rename(&tmp_path))
        .and_then(|()| {
            rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))
                .map_err(|e| E::from(io_err("set the mode of", &tmp_path)(e.into())))
        });
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(&dir, tmp, AtFlags::empty());
        return Err(e);
    }
    rustix::fs::renameat(&dir, tmp, &dir, name).map_err(|e| {
        let _ = rustix::fs::unlinkat(&dir, tmp, AtFlags::empty());
        io_err("rename into", path)(e.into())
    })?;
    rustix::fs::fsync(&dir).map_err(|e| io_err("sync", path)(e.into()).into())
}

/// Points the symlink `link` at `target`, replacing what is there in one
/// rename (a reader sees the old target or the new one).
pub fn replace_symlink(target: &Path, link: &Path) -> Result<(), IoError> {
    let (dir, name) = parent(link)?;
    let tmp_path = temp_name(link);
    let tmp = tmp_path.file_name().expect("a file name");
    let _ = rustix::fs::unlinkat(&dir, tmp, AtFlags::empty());
    rustix::fs::symlinkat(target, &dir, tmp).map_err(|e| io_err("create", &tmp_path)(e.into()))?;
    rustix::fs::renameat(&dir, tmp, &dir, name).map_err(|e| {
        let _ = rustix::fs::unlinkat(&dir, tmp, AtFlags::empty());
        io_err("rename into", link)(e.into())
    })?;
    rustix::fs::fsync(&dir).map_err(|e| io_err("sync", link)(e.into()))
}

/// Renames `from` to `to`.
pub fn rename(from: &Path, to: &Path) -> Result<(), IoError> {
    let (from_dir, from_name) = parent(from)?;
    let (to_dir, to_name) = parent(to)?;
    rustix::fs::renameat(&from_dir, from_name, &to_dir, to_name)
        .map_err(|e| io_err("rename", from)(e.into()))
}

/// Removes the file (or symlink) `path`; `Ok(false)` if there was none.
pub fn remove_file(path: &Path) -> Result<bool, IoError> {
    let (dir, name) = parent(path)?;
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(io_err("remove", path)(e.into())),
    }
}

/// Removes the empty directory `path`; `false` if it is not there or
/// not empty.
pub fn remove_empty_dir(path: &Path) -> bool {
    parent(path)
        .is_ok_and(|(dir, name)| rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR).is_ok())
}

/// Removes `path` and everything under it, following no symlink.
pub fn remove_tree(path: &Path) -> Result<(), IoError> {
    let (dir, name) = parent(path)?;
    // Through the pinned descriptor: std's walk below it uses openat and
    // unlinkat, and never follows a symlink it meets.
    let pinned = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    match fs::symlink_metadata(&pinned) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Ok(m) if !m.is_dir() => remove_file(path).map(|_| ()),
        _ => fs::remove_dir_all(&pinned).map_err(io_err("remove", path)),
    }
}

/// Syncs the directory holding `path`, so that a rename into it survives
/// a crash.
pub fn sync_parent(path: &Path) -> Result<(), IoError> {
    let (dir, _) = parent(path)?;
    rustix::fs::fsync(&dir).map_err(|e| io_err("sync", path)(e.into()))
}

/// Creates `dir` and its parents (mode 0755), refusing to go through a
/// symlink.
pub fn create_dirs(dir: &Path) -> Result<(), IoError> {
    let mut fd = if dir.is_absolute() {
        open_dir(Path::new("/"))?
    } else {
        open_dir(Path::new("."))?
    };
    let mut at = PathBuf::new();
    for c in dir.components() {
        let Component::Normal(name) = c else {
            at.push(c);
            continue;
        };
        at.push(name);
        match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io_err("create", &at)(e.into())),
        }
        fd = rustix::fs::openat(
            &fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", &at)(e.into()))?;
    }
    Ok(())
}

/// Reads `path`, or `None` if it does not exist. A symlink is refused.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, IoError> {
    let (dir, name) = match parent(path) {
        Ok(p) => p,
        Err(e) if e.source.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match rustix::fs::openat(
        &dir,
        name,
        // Non-blocking: a FIFO planted there must not hang the open.
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut regular(fd, path)?, &mut bytes)
                .map_err(io_err("read", path))?;
            Ok(Some(bytes))
        }
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(io_err("read", path)(e.into())),
    }
}

/// What is at a path, not following a final symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Nothing.
    Missing,
    /// A symlink, with its target.
    Symlink(PathBuf),
    /// A regular file: its owner, group and mode.
    File {
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// A directory.
    Dir,
    /// Anything else.
    Other,
}

/// What is at `path`.
pub fn entry(path: &Path) -> Result<Entry, IoError> {
    let (dir, name) = match parent(path) {
        Ok(p) => p,
        Err(e) if e.source.kind() == io::ErrorKind::NotFound => return Ok(Entry::Missing),
        Err(e) => return Err(e),
    };
    let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(Entry::Missing),
        Err(e) => return Err(io_err("look at", path)(e.into())),
    };
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFLNK => {
            let target = rustix::fs::readlinkat(&dir, name, Vec::new())
                .map_err(|e| io_err("read", path)(e.into()))?;
            Entry::Symlink(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
        }
        libc::S_IFREG => Entry::File {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        },
        libc::S_IFDIR => Entry::Dir,
        _ => Entry::Other,
    })
}

/// Changes the owner of `path` itself (a symlink's own, if it is one).
pub fn lchown(path: &Path, uid: u32, gid: u32) -> Result<(), IoError> {
    let (dir, name) = parent(path)?;
    rustix::fs::chownat(
        &dir,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("change the owner of", path)(e.into()))
}

/// Opens `path` to read and write, creating it: a lock file. A symlink
/// is refused, and so is anything but a regular file.
pub fn open_lock_file(path: &Path) -> Result<fs::File, IoError> {
    let (dir, name) = parent(path)?;
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| io_err("open", path)(e.into()))?;
    regular(fd, path)
}

/// `fd` as a file if it is a regular one (not a FIFO a reader would
/// block on, not a device).
fn regular(fd: OwnedFd, path: &Path) -> Result<fs::File, IoError> {
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err("look at", path)(e.into()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io_err("open", path)(io::Error::other("not a regular file")));
    }
    Ok(fs::File::from(fd))
}

/// Opens `path` to append to it, creating it; a symlink is refused.
pub fn open_append(path: &Path) -> Result<fs::File, IoError> {
    let (dir, name) = parent(path)?;
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| io_err("open", path)(e.into()))?;
    let f = regular(fd, path)?;
    // Blocking again for the writer that inherits it.
    rustix::fs::fcntl_setfl(&f, OFlags::APPEND).map_err(|e| io_err("open", path)(e.into()))?;
    Ok(f)
}

/// Whether a process reads the FIFO at `path` (opening it for writing
/// without blocking succeeds only then): how `s6-svok` tells that a
/// supervisor listens on its control pipe.
pub fn fifo_has_reader(path: &Path) -> bool {
    let Ok((dir, name)) = parent(path) else {
        return false;
    };
    rustix::fs::openat(
        &dir,
        name,
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .is_ok()
}

/// A directory pinned for a program we run: opened without following a
/// symlink, and named by `/proc/self/fd/N`, which the program (inheriting
/// the descriptor) resolves to that very directory however the path is
/// changed meanwhile. Kept open as long as this value lives.
#[derive(Debug)]
pub struct Pinned {
    _fd: OwnedFd,
    path: PathBuf,
}

impl Pinned {
    /// Pins `dir`.
    pub fn new(dir: &Path) -> Result<Pinned, IoError> {
        let fd = open_dir(dir)?;
        // Without close-on-exec: the program must inherit it.
        let inherited = rustix::io::dup(&fd).map_err(|e| io_err("pin", dir)(e.into()))?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", inherited.as_raw_fd()));
        Ok(Pinned {
            _fd: inherited,
            path,
        })
    }

    /// The path that names the pinned directory in a child process.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The names in the directory `dir` (none if it does not exist).
pub fn names(dir: &Path) -> Result<Vec<String>, IoError> {
    let fd = match open_dir(dir) {
        Ok(fd) => fd,
        Err(e) if e.source.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let pinned = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let mut out = Vec::new();
    for e in fs::read_dir(&pinned).map_err(io_err("read", dir))? {
        out.push(
            e.map_err(io_err("read", dir))?
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() -> TestResult {
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
    fn a_symlink_is_swapped_in_place() -> TestResult {
        let dir = tempfile::tempdir()?;
        let l = dir.path().join("static");
        replace_symlink(Path::new("/a"), &l)?;
        replace_symlink(Path::new("/b"), &l)?;
        assert_eq!(fs::read_link(&l)?, Path::new("/b"));
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    /// A machine's process puts a FIFO where activation reads or appends:
    /// refused at once, not waited on for ever.
    #[test]
    fn a_planted_fifo_is_refused_not_waited_on() -> TestResult {
        let dir = tempfile::tempdir()?;
        let fifo = dir.path().join("record.json");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )?;
        let e = read_optional(&fifo).unwrap_err();
        assert_eq!(e.source.to_string(), "not a regular file", "{e}");
        assert!(open_append(&fifo).is_err());
        assert!(open_lock_file(&fifo).is_err());
        Ok(())
    }

    /// A machine's process plants symlinks to a host directory: no write
    /// goes through them, and the host directory is left as it was.
    #[test]
    fn planted_symlinks_are_never_followed() -> TestResult {
        let dir = tempfile::tempdir()?;
        let host = dir.path().join("host-etc");
        fs::create_dir(&host)?;
        fs::write(host.join("passwd"), "host's own\n")?;
        let machine_etc = dir.path().join("machine/etc");
        fs::create_dir_all(&machine_etc)?;
        std::os::unix::fs::symlink(&host, machine_etc.join("web"))?;
        std::os::unix::fs::symlink(host.join("passwd"), machine_etc.join("passwd"))?;

        let through = machine_etc.join("web/passwd");
        let e = write_atomic(&through, b"pwned\n", 0o644).unwrap_err();
        assert!(format!("{:?}", e.source).contains("symlink"), "{e:?}");
        assert!(replace_symlink(Path::new("/x"), &through).is_err());
        assert!(create_dirs(&machine_etc.join("web/sub")).is_err());
        assert!(remove_file(&through).is_err());
        assert!(open_append(&machine_etc.join("passwd")).is_err());
        assert!(read_optional(&machine_etc.join("passwd")).is_err());
        assert!(lchown(&through, 0, 0).is_err());
        // The leaf link itself is replaced, not written through.
        write_atomic(&machine_etc.join("passwd"), b"machine's\n", 0o644)?;
        assert_eq!(fs::read_to_string(host.join("passwd"))?, "host's own\n");
        assert_eq!(fs::read_dir(&host)?.count(), 1);
        // A tree with a link to the host inside loses the link only.
        let tree = dir.path().join("machine/run/svc");
        fs::create_dir_all(&tree)?;
        std::os::unix::fs::symlink(&host, tree.join("escape"))?;
        remove_tree(&tree)?;
        assert!(!tree.exists());
        assert_eq!(fs::read_to_string(host.join("passwd"))?, "host's own\n");
        Ok(())
    }
}
