//! File-system helpers every layer shares: canonical store files,
//! removal of read-only trees, copies, lexical path normalization.
//!
//! They know nothing of the database or of a [`Store`](crate::Store)
//! handle, so the store and each operation on it can use them.

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bigtop_core::nar;

use crate::error::{io_err, Error};

/// Access and modification time of every store file: the epoch plus one
/// second, as in Nix (zero would read as "unset" to some tools).
const MTIME_ONE: rustix::fs::Timestamps = rustix::fs::Timestamps {
    last_access: rustix::fs::Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    },
    last_modification: rustix::fs::Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    },
};

/// Removes a tree that canonicalization made read-only, returning the
/// bytes it occupied on disk (what a collection reports as freed).
///
/// The walk goes by directory descriptors and keeps its own stack: a
/// builder can nest directories past `PATH_MAX`, and thousands deep.
pub(crate) fn remove_tree(path: &Path) -> io::Result<u64> {
    nar::walk::remove_tree(path)
}

/// Canonicalizes a staged tree: read-only, no setuid/setgid/sticky bits,
/// executable only where the owner could execute, mtime 1 (the epoch plus
/// one second, as Nix does, so that builds do not depend on when their
/// inputs arrived), and owned by the store's owner (`owner`, or this
/// process's user when `None`): a file of another user is given to the
/// owner when this process is root, and refused otherwise.
///
/// Each directory is done after what it holds, and every change is made
/// relative to the descriptor of the directory it is in, so that neither
/// the length of paths nor the depth of the tree matters.
pub(crate) fn canonicalize(path: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    use rustix::fs::{statat, AtFlags, FileType, CWD};
    let me = rustix::process::geteuid();
    let (uid, gid) = owner.unwrap_or((me.as_raw(), rustix::process::getegid().as_raw()));
    let fix = |dir: BorrowedFd<'_>,
               name: &CStr,
               st: &rustix::fs::Stat,
               shown: &dyn Fn() -> PathBuf|
     -> Result<(), Error> {
        let t = FileType::from_raw_mode(st.st_mode);
        // Whoever owns a file can make it writable again: anything not
        // owned by the store's owner (a file another user slipped into a
        // build's output) is taken over, or refused where this process
        // cannot.
        if st.st_uid != uid || (me.is_root() && st.st_gid != gid) {
            if !me.is_root() {
                return Err(io_err("canonicalize", shown())(io::Error::other(format!(
                    "owned by uid {} instead of the store's owner (uid {uid})",
                    st.st_uid
                ))));
            }
            rustix::fs::chownat(
                dir,
                name,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err("change the owner of", shown())(e.into()))?;
        }
        if t != FileType::Symlink {
            let exec = t == FileType::Directory || st.st_mode & 0o100 != 0;
            let mode = if exec { 0o555 } else { 0o444 };
            if st.st_mode & 0o7777 != mode {
                rustix::fs::chmodat(
                    dir,
                    name,
                    rustix::fs::Mode::from_raw_mode(mode),
                    AtFlags::empty(),
                )
                .map_err(|e| io_err("set permissions of", shown())(e.into()))?;
            }
        }
        rustix::fs::utimensat(dir, name, &MTIME_ONE, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err("set the time of", shown())(e.into()))?;
        Ok(())
    };
    let root = || path.to_owned();
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io_err("read", path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path contains NUL",
        ))
    })?;
    let root_st =
        statat(CWD, &c, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| io_err("read", path)(e.into()))?;
    if FileType::from_raw_mode(root_st.st_mode) == FileType::Directory {
        let mut cursor = nar::walk::Cursor::open(path).map_err(io_err("read", path))?;
        // What each directory on the way down was when entered.
        let mut entered: Vec<rustix::fs::Stat> = Vec::new();
        loop {
            match cursor.next_entry() {
                Some(e) => {
                    let st = statat(cursor.fd(), &e.name, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|err| io_err("read", cursor.path(Some(&e.name)))(err.into()))?;
                    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                        cursor
                            .enter(&e.name)
                            .map_err(|err| io_err("read", cursor.path(Some(&e.name)))(err))?;
                        entered.push(st);
                    } else {
                        fix(cursor.fd(), &e.name, &st, &|| cursor.path(Some(&e.name)))?;
                    }
                }
                None => {
                    let left = cursor
                        .leave()
                        .map_err(|err| io_err("read", cursor.path(None))(err))?;
                    let Some(name) = left else { break };
                    let st = entered.pop().expect("one per directory entered");
                    fix(cursor.fd(), &name, &st, &|| cursor.path(Some(&name)))?;
                }
            }
        }
    }
    fix(CWD, &c, &root_st, &root)
}

/// Copies `src` to `dst` (which must not exist), keeping only what
/// `filter` accepts (given paths relative to the root of the copy).
///
/// Both trees are walked by directory descriptors, so neither the length
/// of paths nor the depth of the tree matters.
pub(crate) fn copy_filtered(
    src: &Path,
    dst: &Path,
    filter: &dyn Fn(&Path) -> bool,
) -> Result<(), Error> {
    use rustix::fs::{statat, AtFlags, CWD};
    let no_nul = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| {
            io_err("read", p)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path contains NUL",
            ))
        })
    };
    let (c_src, c_dst) = (no_nul(src)?, no_nul(dst)?);
    let st = statat(CWD, &c_src, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io_err("read", src)(e.into()))?;
    let kind = nar::walk::Kind::from_mode(st.st_mode);
    if kind != nar::walk::Kind::Dir {
        return copy_leaf(CWD, &c_src, kind, CWD, &c_dst, &|| src.to_owned(), &|| {
            dst.to_owned()
        });
    }
    fs::create_dir(dst).map_err(io_err("create", dst))?;
    let mut from = nar::walk::Cursor::open(src).map_err(io_err("read", src))?;
    let mut to = nar::walk::DirStack::open(dst).map_err(io_err("read", dst))?;
    let mut rel = PathBuf::new();
    loop {
        match from.next_entry() {
            Some(e) => {
                let child = rel.join(std::ffi::OsStr::from_bytes(e.name.to_bytes()));
                if !filter(&child) {
                    continue;
                }
                if e.kind == nar::walk::Kind::Dir {
                    rustix::fs::mkdirat(to.fd(), &e.name, rustix::fs::Mode::from_raw_mode(0o755))
                        .map_err(|err| io_err("create", to.path(Some(&e.name)))(err.into()))?;
                    from.enter(&e.name)
                        .map_err(|err| io_err("read", from.path(Some(&e.name)))(err))?;
                    to.enter(&e.name)
                        .map_err(|err| io_err("read", to.path(Some(&e.name)))(err))?;
                    rel = child;
                } else {
                    copy_leaf(
                        from.fd(),
                        &e.name,
                        e.kind,
                        to.fd(),
                        &e.name,
                        &|| from.path(Some(&e.name)),
                        &|| to.path(Some(&e.name)),
                    )?;
                }
            }
            None => {
                let left = from
                    .leave()
                    .map_err(|err| io_err("read", from.path(None))(err))?;
                if left.is_none() {
                    return Ok(());
                }
                to.leave()
                    .map_err(|err| io_err("read", to.path(None))(err))?;
                rel.pop();
            }
        }
    }
}

/// Copies the symlink or regular file `name` in `from` to `to_name` in
/// `to` (either directory `CWD`, for paths); anything else is refused.
fn copy_leaf(
    from: BorrowedFd<'_>,
    name: &CStr,
    kind: nar::walk::Kind,
    to: BorrowedFd<'_>,
    to_name: &CStr,
    shown_from: &dyn Fn() -> PathBuf,
    shown_to: &dyn Fn() -> PathBuf,
) -> Result<(), Error> {
    use rustix::fs::{Mode, OFlags};
    match kind {
        nar::walk::Kind::Symlink => {
            let target = rustix::fs::readlinkat(from, name, Vec::new())
                .map_err(|e| io_err("read", shown_from())(e.into()))?;
            rustix::fs::symlinkat(target.as_c_str(), to, to_name)
                .map_err(|e| io_err("create", shown_to())(e.into()))
        }
        nar::walk::Kind::File => {
            let mut input = File::from(
                rustix::fs::openat(
                    from,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err("read", shown_from())(e.into()))?,
            );
            let meta = input.metadata().map_err(io_err("read", shown_from()))?;
            // Only the owner's execute bit survives canonicalization.
            let mode = if meta.mode() & 0o100 != 0 {
                0o755
            } else {
                0o644
            };
            let mut output = File::from(
                rustix::fs::openat(
                    to,
                    to_name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::from_raw_mode(mode),
                )
                .map_err(|e| io_err("create", shown_to())(e.into()))?,
            );
            io::copy(&mut input, &mut output).map_err(io_err("copy", shown_from()))?;
            Ok(())
        }
        other => Err(Error::Dump(nar::DumpError::UnsupportedType {
            path: shown_from(),
            kind: other.describe(),
        })),
    }
}

/// Writes a text path in place: created read-only and exclusive, its time
/// and owner set through the open handle. Anything at the name is a
/// leftover of a crash (the path is not valid and we hold its lock).
pub(crate) fn write_text(
    dest: &Path,
    bytes: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    write_file_canonical(dest, bytes, false, owner)
}

/// [`write_text`], executable or not: the file is created as
/// canonicalization would leave it (mode, time, owner), so that nothing
/// needs to look at it again.
pub(crate) fn write_file_canonical(
    dest: &Path,
    bytes: &[u8],
    executable: bool,
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let create = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o555 } else { 0o444 })
            .open(dest)
    };
    let mut file = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            remove_tree(dest).map_err(io_err("remove the invalid", dest))?;
            create()
        }
        r => r,
    }
    .map_err(io_err("create", dest))?;
    file.write_all(bytes).map_err(io_err("write", dest))?;
    rustix::fs::futimens(&file, &MTIME_ONE)
        .map_err(|e| io_err("set the time of", dest)(e.into()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(io_err("change the owner of", dest))?;
    }
    Ok(())
}

/// Removes what a path occupies on disk, for repair.
pub(crate) fn remove_physical(path: &Path) -> Result<(), Error> {
    remove_tree(path)
        .map(|_| ())
        .map_err(io_err("delete", path))
}

/// `path` with `.` and `..` applied lexically (`a/b/../c` is `a/c`, `/..`
/// is `/`), without repeated or trailing slashes.
pub(crate) fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                // A relative path keeps the `..`s that lead above it.
                _ => out.push(".."),
            },
            c => out.push(c),
        }
    }
    out
}
