//! Walking trees by directory descriptors: the file-system half of
//! archiving and unpacking, public so that a store removes, canonicalizes
//! and scans trees the same way.
//!
//! Every operation is relative to the descriptor of the directory it
//! happens in (`openat`, `mkdirat`, `fstatat`, …), so the length of a
//! path never matters: a builder can nest directories far past
//! `PATH_MAX`, and such a tree can still be archived, unpacked and
//! removed. Nothing recurses, so depth costs heap, not stack; and only
//! the deepest [`MAX_OPEN`] directories keep a descriptor open, so depth
//! does not run into the limit on open files either. A directory whose
//! descriptor was closed is reopened as `..` of its child and checked to
//! be the same directory (device and inode) as before.
//!
//! That return through `..` assumes nobody moves the directories of the
//! tree while it is walked: true of what these walks are for (a dead
//! builder's output or scratch, a read-only store path, a tree being
//! unpacked under a fresh name). A tree that is moved anyway makes the
//! walk fail, never wander off.
//!
//! ```
//! use bigtop_core::nar::walk::{Cursor, Kind};
//! let dir = tempfile::tempdir()?;
//! std::fs::create_dir(dir.path().join("sub"))?;
//! std::fs::write(dir.path().join("sub/file"), "x")?;
//! let mut cursor = Cursor::open(dir.path())?;
//! let mut seen = Vec::new();
//! loop {
//!     match cursor.next_entry() {
//!         Some(e) => {
//!             seen.push(cursor.path(Some(&e.name)));
//!             if e.kind == Kind::Dir {
//!                 cursor.enter(&e.name)?;
//!             }
//!         }
//!         None if cursor.leave()?.is_some() => {}
//!         None => break,
//!     }
//! }
//! assert_eq!(seen, [dir.path().join("sub"), dir.path().join("sub/file")]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Directories of one walk that keep a descriptor open, at most: the
/// deepest ones, where the walk spends its time. Shallower ones are
/// reopened through `..` when the walk returns to them.
pub const MAX_OPEN: usize = 32;

/// What a directory entry is, from the directory itself or, where the
/// file system does not say, from `fstatat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
    /// Something else.
    Unknown,
}

impl Kind {
    /// The kind given by the file type bits of `st_mode`.
    pub fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFCHR => Kind::CharDevice,
            _ => Kind::Unknown,
        }
    }

    fn from_dirent(t: u8) -> Option<Kind> {
        Some(match t {
            libc::DT_DIR => Kind::Dir,
            libc::DT_REG => Kind::File,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_FIFO => Kind::Fifo,
            libc::DT_SOCK => Kind::Socket,
            libc::DT_BLK => Kind::BlockDevice,
            libc::DT_CHR => Kind::CharDevice,
            _ => return None,
        })
    }

    /// How a message names it ("socket", "fifo", …).
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "regular file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::BlockDevice => "block device",
            Kind::CharDevice => "character device",
            Kind::Unknown => "file of unknown type",
        }
    }
}

/// An entry of the directory a [`Cursor`] is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name in the directory.
    pub name: CString,
    /// What it is.
    pub kind: Kind,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`, retried on `EINTR`.
/// `dir` may be `AT_FDCWD`.
pub(crate) fn open_at(
    dir: RawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `name` is NUL-terminated; the result is a new descriptor
        // that nothing else owns.
        let r = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        };
        match cvt(r) {
            // SAFETY: just opened, owned by nobody else.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Opens the directory `name` in `dir` without following a symlink.
fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `dir` may be `AT_FDCWD`.
pub(crate) fn stat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated and `st` has room for a `stat`.
    cvt(unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is open and `st` has room for a `stat`.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// The target of the symlink `name` in `dir` (`AT_FDCWD` allowed).
pub(crate) fn read_link_at(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `name` is NUL-terminated and `buf` has `buf.len()` bytes.
        let n = unsafe {
            libc::readlinkat(
                dir,
                name.as_ptr(),
                buf.as_mut_ptr().cast::<libc::c_char>(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // A full buffer may have cut the target short: try a bigger one.
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// The entries of the directory open at `fd` (which stays open), sorted
/// by the bytes of their names.
fn list(fd: BorrowedFd<'_>) -> io::Result<Vec<Entry>> {
    // `fdopendir` takes over the descriptor it is given and `closedir`
    // closes it: hand it a duplicate.
    let dup = fd.try_clone_to_owned()?;
    // SAFETY: `dup` is an open directory descriptor; on success the
    // stream owns it, and `dup` lets go of it below.
    let dirp = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if dirp.is_null() {
        return Err(io::Error::last_os_error());
    }
    let _ = dup.into_raw_fd();
    struct Stream(*mut libc::DIR);
    impl Drop for Stream {
        fn drop(&mut self) {
            // SAFETY: opened by fdopendir above and closed only here.
            unsafe { libc::closedir(self.0) };
        }
    }
    let stream = Stream(dirp);
    let mut entries = Vec::new();
    loop {
        // readdir reports an error only through errno, and the end of the
        // directory by leaving errno alone.
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream.0` is an open directory stream.
        let ent = unsafe { libc::readdir(stream.0) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(0) {
                break;
            }
            return Err(e);
        }
        // SAFETY: readdir returned a valid entry whose name is
        // NUL-terminated; it stays valid until the next readdir, and the
        // name is copied before that.
        let (name, t) = unsafe { (CStr::from_ptr((*ent).d_name.as_ptr()), (*ent).d_type) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let kind = match Kind::from_dirent(t) {
            Some(k) => k,
            None => Kind::from_mode(stat_at(fd.as_raw_fd(), name)?.st_mode),
        };
        entries.push(Entry {
            name: name.to_owned(),
            kind,
        });
    }
    drop(stream);
    entries.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(entries)
}

/// One directory of a walk.
#[derive(Debug)]
struct Level {
    /// Its name in its parent (empty for the root).
    name: CString,
    /// Open while it is among the deepest [`MAX_OPEN`].
    fd: Option<OwnedFd>,
    /// Device and inode, taken when its descriptor is closed, to check
    /// what `..` reopens.
    id: Option<(u64, u64)>,
}

/// The directories from the root of a walk to where it is, entered and
/// left by name: what both reading a tree ([`Cursor`]) and making one
/// (unpacking, copying) need.
#[derive(Debug)]
pub struct DirStack {
    root: PathBuf,
    levels: Vec<Level>,
    /// Levels below this index have had their descriptors closed.
    open_from: usize,
}

impl DirStack {
    /// Starts at the directory `root` (not following a symlink).
    pub fn open(root: &Path) -> io::Result<DirStack> {
        let c = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        let fd = open_dir_at(libc::AT_FDCWD, &c)?;
        Ok(DirStack {
            root: root.to_owned(),
            levels: vec![Level {
                name: CString::default(),
                fd: Some(fd),
                id: None,
            }],
            open_from: 0,
        })
    }

    /// The directory the walk is in.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.levels
            .last()
            .and_then(|l| l.fd.as_ref())
            .expect("the current directory is always open")
            .as_fd()
    }

    /// How far below the root the walk is (0 at the root).
    pub fn depth(&self) -> usize {
        self.levels.len() - 1
    }

    /// Enters the directory `name` of the current one (not following a
    /// symlink).
    pub fn enter(&mut self, name: &CStr) -> io::Result<()> {
        let fd = open_dir_at(self.fd().as_raw_fd(), name)?;
        self.levels.push(Level {
            name: name.to_owned(),
            fd: Some(fd),
            id: None,
        });
        while self.levels.len() - self.open_from > MAX_OPEN {
            let level = &mut self.levels[self.open_from];
            if let Some(fd) = level.fd.take() {
                let st = stat_fd(fd.as_fd())?;
                level.id = Some((st.st_dev as u64, st.st_ino as u64));
            }
            self.open_from += 1;
        }
        Ok(())
    }

    /// Leaves the current directory for its parent; returns the name of
    /// the directory left, or `None` (staying) at the root.
    pub fn leave(&mut self) -> io::Result<Option<CString>> {
        if self.levels.len() == 1 {
            return Ok(None);
        }
        let parent = self.levels.len() - 2;
        if self.levels[parent].fd.is_none() {
            let fd = open_dir_at(self.fd().as_raw_fd(), c"..")?;
            let st = stat_fd(fd.as_fd())?;
            if self.levels[parent].id != Some((st.st_dev as u64, st.st_ino as u64)) {
                return Err(io::Error::other(format!(
                    "`{}` was moved while being walked",
                    self.path_at(parent + 1, None).display()
                )));
            }
            self.levels[parent].fd = Some(fd);
            self.open_from = parent;
        }
        let left = self.levels.pop().expect("not at the root");
        Ok(Some(left.name))
    }

    /// The path of `name` in the current directory (of the current
    /// directory itself for `None`), for messages: it may be too long to
    /// use.
    pub fn path(&self, name: Option<&CStr>) -> PathBuf {
        self.path_at(self.levels.len(), name)
    }

    fn path_at(&self, levels: usize, name: Option<&CStr>) -> PathBuf {
        let mut p = self.root.clone();
        for l in &self.levels[1..levels] {
            p.push(OsStr::from_bytes(l.name.to_bytes()));
        }
        if let Some(name) = name {
            p.push(OsStr::from_bytes(name.to_bytes()));
        }
        p
    }
}

/// Reads a tree one entry at a time, in the order of name bytes within
/// each directory, the caller deciding which directories to
/// [`enter`](Self::enter). Entries of the directories on the way down are
/// kept in memory, not their descriptors.
#[derive(Debug)]
pub struct Cursor {
    dirs: DirStack,
    /// Per level, the entries not yet given, last first.
    pending: Vec<Vec<Entry>>,
}

impl Cursor {
    /// Starts at the directory `root` (not following a symlink), listing it.
    pub fn open(root: &Path) -> io::Result<Cursor> {
        let dirs = DirStack::open(root)?;
        let mut entries = list(dirs.fd())?;
        entries.reverse();
        Ok(Cursor {
            dirs,
            pending: vec![entries],
        })
    }

    /// The next entry of the current directory, or `None` when it has no
    /// more.
    pub fn next_entry(&mut self) -> Option<Entry> {
        self.pending.last_mut().and_then(Vec::pop)
    }

    /// Enters the directory `name` of the current one (not following a
    /// symlink), listing it.
    pub fn enter(&mut self, name: &CStr) -> io::Result<()> {
        self.dirs.enter(name)?;
        match list(self.dirs.fd()) {
            Ok(mut entries) => {
                entries.reverse();
                self.pending.push(entries);
                Ok(())
            }
            Err(e) => {
                // Back where the caller was, whatever else fails.
                let _ = self.dirs.leave();
                Err(e)
            }
        }
    }

    /// Leaves the current directory (whatever entries it has left) for its
    /// parent; returns the name of the directory left, or `None` at the
    /// root.
    pub fn leave(&mut self) -> io::Result<Option<CString>> {
        let left = self.dirs.leave()?;
        if left.is_some() {
            self.pending.pop();
        }
        Ok(left)
    }

    /// The directory the cursor is in.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.dirs.fd()
    }

    /// How far below the root the cursor is (0 at the root).
    pub fn depth(&self) -> usize {
        self.dirs.depth()
    }

    /// See [`DirStack::path`].
    pub fn path(&self, name: Option<&CStr>) -> PathBuf {
        self.dirs.path(name)
    }
}

/// Removes the file, symlink or tree at `path`, making each directory
/// writable before emptying it (store trees are read-only); returns the
/// bytes it occupied on disk. Nothing there is not an error.
pub fn remove_tree(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let st = match stat_at(libc::AT_FDCWD, &c) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut bytes = st.st_blocks as u64 * 512;
    if Kind::from_mode(st.st_mode) != Kind::Dir {
        std::fs::remove_file(path)?;
        return Ok(bytes);
    }
    make_searchable(libc::AT_FDCWD, &c, st.st_mode)?;
    let mut cursor = Cursor::open(path)?;
    loop {
        match cursor.next_entry() {
            Some(e) => {
                let dir = cursor.fd().as_raw_fd();
                let st = stat_at(dir, &e.name)?;
                bytes += st.st_blocks as u64 * 512;
                if Kind::from_mode(st.st_mode) == Kind::Dir {
                    make_searchable(dir, &e.name, st.st_mode)?;
                    cursor.enter(&e.name)?;
                } else {
                    unlink_at(dir, &e.name, 0)?;
                }
            }
            None => match cursor.leave()? {
                Some(name) => unlink_at(cursor.fd().as_raw_fd(), &name, libc::AT_REMOVEDIR)?,
                None => break,
            },
        }
    }
    drop(cursor);
    std::fs::remove_dir(path)?;
    Ok(bytes)
}

/// Gives the owner of directory `name` in `dir` read, write and search
/// permission, if it lacks any.
fn make_searchable(dir: RawFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    if mode & 0o700 == 0o700 {
        return Ok(());
    }
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::fchmodat(dir, name.as_ptr(), 0o755, 0) }).map(drop)
}

fn unlink_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(root: &Path, depth: usize) {
        let mut p = root.to_owned();
        for _ in 0..depth {
            p.push("d");
        }
        std::fs::create_dir_all(p).unwrap();
    }

    /// However deep the walk, at most [`MAX_OPEN`] descriptors are held,
    /// and the way back up reaches the root.
    #[test]
    fn descriptors_stay_bounded_and_the_way_back_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        chain(tmp.path(), 200);
        let mut dirs = DirStack::open(tmp.path()).unwrap();
        for _ in 0..200 {
            dirs.enter(c"d").unwrap();
            let open = dirs.levels.iter().filter(|l| l.fd.is_some()).count();
            assert!(open <= MAX_OPEN, "{open} descriptors open");
        }
        assert_eq!(dirs.depth(), 200);
        while dirs.leave().unwrap().is_some() {}
        assert_eq!(dirs.depth(), 0);
        let st = stat_fd(dirs.fd()).unwrap();
        let root = std::fs::metadata(tmp.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (st.st_dev as u64, st.st_ino as u64),
            (root.dev(), root.ino())
        );
    }

    /// `..` of a directory moved away is not its parent in the walk: the
    /// walk stops instead of going on somewhere else.
    #[test]
    fn a_directory_moved_while_walked_stops_the_walk() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        chain(&root, 2 * MAX_OPEN);
        let mut dirs = DirStack::open(&root).unwrap();
        for _ in 0..2 * MAX_OPEN {
            dirs.enter(c"d").unwrap();
        }
        std::fs::rename(root.join("d/d"), tmp.path().join("moved")).unwrap();
        let err = loop {
            match dirs.leave() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("walked back to the root through a moved directory"),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("was moved"), "{err}");
    }

    /// Read-only directories (as canonicalization leaves them), deeper
    /// than `PATH_MAX` allows a path to reach, are removed.
    #[test]
    fn remove_tree_empties_read_only_trees_past_path_max() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        std::fs::create_dir(&root).unwrap();
        let mut dirs = DirStack::open(&root).unwrap();
        for _ in 0..3000 {
            // SAFETY: an open directory and a NUL-terminated name.
            cvt(unsafe { libc::mkdirat(dirs.fd().as_raw_fd(), c"ddd".as_ptr(), 0o755) }).unwrap();
            dirs.enter(c"ddd").unwrap();
        }
        let f = open_at(
            dirs.fd().as_raw_fd(),
            c"f",
            libc::O_WRONLY | libc::O_CREAT,
            0o444,
        )
        .unwrap();
        drop(f);
        while dirs.leave().unwrap().is_some() {
            // SAFETY: an open directory and a NUL-terminated name.
            cvt(unsafe { libc::fchmodat(dirs.fd().as_raw_fd(), c"ddd".as_ptr(), 0o555, 0) })
                .unwrap();
        }
        drop(dirs);
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o555)).unwrap();
        assert!(remove_tree(&root).unwrap() > 0);
        assert!(!root.exists());
        assert_eq!(remove_tree(&root).unwrap(), 0, "nothing there is no error");
    }
}
