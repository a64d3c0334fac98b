//! Writing NARs: from a tree on disk, or from events.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, Scope, ScopedJoinHandle};

use thiserror::Error;

use super::walk::{self, Cursor, Kind};
use super::{check_entry_name, check_symlink_target, padding, NarSink, MAGIC, MAX_DEPTH};
use crate::hash::{Hash, HashAlgo, Hasher};

/// Why a tree could not be archived.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DumpError {
    /// Reading a file, directory or symlink failed.
    #[error("cannot read `{path}`")]
    Read {
        /// The path being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The tree holds something a NAR cannot represent.
    #[error("cannot archive `{path}`: it is a {kind}, and a NAR holds only regular files, directories and symlinks")]
    UnsupportedType {
        /// The path.
        path: PathBuf,
        /// What it is (socket, fifo, device…).
        kind: &'static str,
    },
    /// A file changed (size, or what the name points at) while it was being
    /// read, so the archive would not describe any state it was ever in.
    #[error("file `{path}` changed while being archived (it had {expected} bytes)")]
    Changed {
        /// The file.
        path: PathBuf,
        /// The size seen before reading.
        expected: u64,
    },
    /// Directories nest deeper than a NAR reader accepts.
    #[error("cannot archive `{path}`: directories nest deeper than {MAX_DEPTH} levels")]
    TooDeep {
        /// The directory past the limit.
        path: PathBuf,
    },
    /// Writing the archive failed.
    #[error("cannot write the archive")]
    Write(#[source] io::Error),
}

/// Where the archive's bytes go while a tree is walked.
trait Out {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// Copies exactly `size` bytes of `file` (at `path`) into the archive.
    fn put_file(&mut self, path: Named<'_>, file: &mut File, size: u64) -> Result<(), DumpError>;

    fn put_str(&mut self, s: &[u8]) -> io::Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s)?;
        self.put(&[0u8; 8][..padding(s.len() as u64)])
    }
}

/// The path of the node being archived, made only for an error: deep in
/// a tree it is long, and most nodes never need it.
type Named<'a> = &'a dyn Fn() -> PathBuf;

fn read_err(path: Named<'_>) -> impl FnOnce(io::Error) -> DumpError + '_ {
    move |source| DumpError::Read {
        path: path(),
        source,
    }
}

/// Writes the node `name` in the directory `dir` (or, for `AT_FDCWD`, at
/// the path `name`), which is not a directory and is of kind `kind` as
/// its directory or `lstat` gave it.
fn leaf(
    out: &mut impl Out,
    dir: RawFd,
    name: &CStr,
    kind: Kind,
    path: Named<'_>,
) -> Result<(), DumpError> {
    let w = DumpError::Write;
    out.put_str(b"(").map_err(w)?;
    out.put_str(b"type").map_err(w)?;
    match kind {
        Kind::Symlink => {
            let target = walk::read_link_at(dir, name).map_err(read_err(path))?;
            out.put_str(b"symlink").map_err(w)?;
            out.put_str(b"target").map_err(w)?;
            out.put_str(&target).map_err(w)?;
        }
        Kind::File => {
            // Open without following a symlink and without blocking on a
            // FIFO, then describe what was opened: a file swapped for
            // something else since the directory was read is caught, never
            // archived.
            let fd = walk::open_at(
                dir,
                name,
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                0,
            )
            .map_err(read_err(path))?;
            let mut file = File::from(fd);
            let meta = file.metadata().map_err(read_err(path))?;
            if !meta.is_file() {
                return Err(DumpError::Changed {
                    path: path(),
                    expected: 0,
                });
            }
            out.put_str(b"regular").map_err(w)?;
            // Nix looks at the owner's execute bit only.
            if meta.permissions().mode() & 0o100 != 0 {
                out.put_str(b"executable").map_err(w)?;
                out.put_str(b"").map_err(w)?;
            }
            out.put_str(b"contents").map_err(w)?;
            let size = meta.len();
            out.put(&size.to_le_bytes()).map_err(w)?;
            if size > 0 {
                out.put_file(path, &mut file, size)?;
            }
            // A file that grew while being read would be archived cut short.
            if read_some(&mut file, &mut [0u8; 1]).map_err(read_err(path))? != 0 {
                return Err(DumpError::Changed {
                    path: path(),
                    expected: size,
                });
            }
            out.put(&[0u8; 8][..padding(size)]).map_err(w)?;
        }
        other => {
            return Err(DumpError::UnsupportedType {
                path: path(),
                kind: other.describe(),
            })
        }
    }
    out.put_str(b")").map_err(w)
}

/// Archives the tree at `path`. The walk goes by directory descriptors
/// and keeps its own stack: neither the length of paths nor the depth of
/// the tree is limited by anything but [`MAX_DEPTH`].
fn dump_root(out: &mut impl Out, path: &Path) -> Result<(), DumpError> {
    let w = DumpError::Write;
    let root = || path.to_owned();
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        read_err(&root)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path contains NUL",
        ))
    })?;
    let kind = walk::stat_at(libc::AT_FDCWD, &c)
        .map(|st| Kind::from_mode(st.st_mode))
        .map_err(read_err(&root))?;
    out.put_str(MAGIC).map_err(w)?;
    if kind != Kind::Dir {
        return leaf(out, libc::AT_FDCWD, &c, kind, &root);
    }
    out.put_str(b"(").map_err(w)?;
    out.put_str(b"type").map_err(w)?;
    out.put_str(b"directory").map_err(w)?;
    let mut cursor = Cursor::open(path).map_err(read_err(&root))?;
    loop {
        match cursor.next_entry() {
            Some(e) => {
                out.put_str(b"entry").map_err(w)?;
                out.put_str(b"(").map_err(w)?;
                out.put_str(b"name").map_err(w)?;
                out.put_str(e.name.to_bytes()).map_err(w)?;
                out.put_str(b"node").map_err(w)?;
                if e.kind == Kind::Dir {
                    if cursor.depth() + 1 >= MAX_DEPTH {
                        return Err(DumpError::TooDeep {
                            path: cursor.path(Some(&e.name)),
                        });
                    }
                    out.put_str(b"(").map_err(w)?;
                    out.put_str(b"type").map_err(w)?;
                    out.put_str(b"directory").map_err(w)?;
                    cursor.enter(&e.name).map_err(|source| DumpError::Read {
                        path: cursor.path(Some(&e.name)),
                        source,
                    })?;
                } else {
                    let dir = cursor.fd().as_raw_fd();
                    leaf(out, dir, &e.name, e.kind, &|| cursor.path(Some(&e.name)))?;
                    // Closes the entry.
                    out.put_str(b")").map_err(w)?;
                }
            }
            None => {
                // Closes the directory node, then the entry holding it.
                out.put_str(b")").map_err(w)?;
                let left = cursor.leave().map_err(|source| DumpError::Read {
                    path: cursor.path(None),
                    source,
                })?;
                if left.is_none() {
                    return Ok(());
                }
                out.put_str(b")").map_err(w)?;
            }
        }
    }
}

/// Size of the buffers file contents are read through.
const BUF: usize = 256 * 1024;

struct WriteOut<W: Write> {
    w: W,
    buf: Vec<u8>,
    written: u64,
}

impl<W: Write> Out for WriteOut<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len() as u64;
        self.w.write_all(bytes)
    }

    fn put_file(&mut self, path: Named<'_>, file: &mut File, size: u64) -> Result<(), DumpError> {
        if self.buf.is_empty() {
            self.buf = vec![0; BUF];
        }
        let mut left = size;
        while left > 0 {
            let want = left.min(BUF as u64) as usize;
            let n = read_some(file, &mut self.buf[..want]).map_err(read_err(path))?;
            if n == 0 {
                return Err(DumpError::Changed {
                    path: path(),
                    expected: size,
                });
            }
            self.w.write_all(&self.buf[..n]).map_err(DumpError::Write)?;
            left -= n as u64;
        }
        self.written += size;
        Ok(())
    }
}

fn read_some(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Writes the NAR of the tree at `path` (not following a symlink at the
/// root) to `w`, returning the archive's size in bytes.
///
/// File contents stream through a fixed buffer: memory does not grow with
/// file size. The tree is walked by directory descriptors ([`walk`]):
/// paths may be longer than `PATH_MAX`, and directories may nest up to
/// [`MAX_DEPTH`] levels without costing stack.
pub fn dump_path(path: &Path, w: impl Write) -> Result<u64, DumpError> {
    let mut out = WriteOut {
        w: BufWriter::with_capacity(64 * 1024, w),
        buf: Vec::new(),
        written: 0,
    };
    dump_root(&mut out, path)?;
    out.w.flush().map_err(DumpError::Write)?;
    Ok(out.written)
}

/// Bytes per chunk handed from the reading thread to the hashing thread.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the two threads.
const DEPTH: usize = 4;

/// Hashes the archive as it is produced. Until the archive outgrows one
/// chunk, everything happens on the calling thread (a small file costs no
/// thread start); past that, a second thread hashes full chunks while this
/// one goes on reading, so reading and hashing overlap on two cores.
struct HashOut<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    /// Initialized bytes (at most CHUNK); `filled` of them are archive.
    chunk: Vec<u8>,
    filled: usize,
    total: u64,
    inline: Option<Hasher>,
    worker: Option<Worker<'scope>>,
}

struct Worker<'scope> {
    full: SyncSender<(Vec<u8>, usize)>,
    empty: Receiver<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    handle: ScopedJoinHandle<'scope, Hasher>,
}

impl<'scope> HashOut<'scope, '_> {
    /// Makes `n` bytes after `filled` writable.
    fn room(&mut self, n: usize) {
        if self.chunk.len() < self.filled + n {
            self.chunk.resize(self.filled + n, 0);
        }
    }

    /// Hands the full chunk to the hashing thread, starting it the first time.
    fn ship(&mut self) {
        if self.filled == 0 {
            return;
        }
        if self.worker.is_none() {
            let mut hasher = self
                .inline
                .take()
                .expect("no worker means an inline hasher");
            let (full, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(DEPTH);
            let (empty_tx, empty) = mpsc::sync_channel::<Vec<u8>>(DEPTH + 1);
            let handle = self.scope.spawn(move || {
                for (chunk, len) in full_rx {
                    hasher.update(&chunk[..len]);
                    // The reader may have finished and dropped its end.
                    let _ = empty_tx.try_send(chunk);
                }
                hasher
            });
            self.worker = Some(Worker {
                full,
                empty,
                spare: (0..DEPTH).map(|_| vec![0u8; CHUNK]).collect(),
                handle,
            });
        }
        let worker = self.worker.as_mut().expect("started above");
        let next = match worker.spare.pop() {
            Some(buf) => buf,
            // The hasher only stops early by panicking; a fresh buffer lets
            // `finish` surface that panic instead of hanging here.
            None => worker.empty.recv().unwrap_or_else(|_| vec![0u8; CHUNK]),
        };
        let full = std::mem::replace(&mut self.chunk, next);
        let _ = worker.full.send((full, self.filled));
        self.filled = 0;
    }

    fn finish(mut self) -> Hash {
        if let Some(hasher) = self.inline.as_mut() {
            hasher.update(&self.chunk[..self.filled]);
            return self.inline.take().expect("checked above").finish();
        }
        self.ship();
        let worker = self.worker.take().expect("no inline hasher means a worker");
        drop(worker.full);
        match worker.handle.join() {
            Ok(hasher) => hasher.finish(),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Out for HashOut<'_, '_> {
    fn put(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        self.total += bytes.len() as u64;
        while !bytes.is_empty() {
            let n = bytes.len().min(CHUNK - self.filled);
            self.room(n);
            self.chunk[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == CHUNK {
                self.ship();
            }
        }
        Ok(())
    }

    fn put_file(&mut self, path: Named<'_>, file: &mut File, size: u64) -> Result<(), DumpError> {
        // Read straight into the chunk: no copy between reading and hashing.
        let mut left = size;
        while left > 0 {
            let want = left.min((CHUNK - self.filled) as u64) as usize;
            self.room(want);
            let n = read_some(file, &mut self.chunk[self.filled..self.filled + want])
                .map_err(read_err(path))?;
            if n == 0 {
                return Err(DumpError::Changed {
                    path: path(),
                    expected: size,
                });
            }
            self.filled += n;
            left -= n as u64;
            if self.filled == CHUNK {
                self.ship();
            }
        }
        self.total += size;
        Ok(())
    }
}

/// Hashes the NAR of the tree at `path` without writing it anywhere,
/// returning the hash and the archive's size.
///
/// Memory is bounded (a few one-MiB chunks). Past the first MiB of archive,
/// one thread reads while another hashes. The tree is walked as by
/// [`dump_path`].
pub fn hash_path(path: &Path, algo: HashAlgo) -> Result<(Hash, u64), DumpError> {
    thread::scope(|scope| {
        let mut out = HashOut {
            scope,
            // Grown as the archive needs it: a small file's hash does not
            // pay for zeroing a whole chunk.
            chunk: Vec::new(),
            filled: 0,
            total: 0,
            inline: Some(Hasher::new(algo)),
            worker: None,
        };
        dump_root(&mut out, path)?;
        let total = out.total;
        Ok((out.finish(), total))
    })
}

/// Hashes the NAR of a single regular file with `contents`, returning the
/// hash and the archive's size: what [`hash_path`] gives for such a file,
/// for a writer that has the bytes in hand and need not read them back.
pub fn hash_file_bytes(contents: &[u8], executable: bool, algo: HashAlgo) -> (Hash, u64) {
    let mut nar = NarEncoder::new(crate::hash::HashingWriter::new(io::sink(), algo));
    let mut reader = contents;
    let done = nar
        .file(None, executable, contents.len() as u64, &mut reader)
        .and_then(|()| nar.finish());
    // Writing to memory with the exact size given cannot fail.
    let (hash, size, _) = done.expect("a file NAR in memory").finish();
    (hash, size)
}

/// Why an event could not be encoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// An entry name breaks the NAR rules.
    #[error("invalid entry name `{}`: {reason}", String::from_utf8_lossy(name))]
    BadName {
        /// The name.
        name: Vec<u8>,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A symlink target a NAR cannot hold.
    #[error(
        "invalid symlink target `{}`: {reason}",
        String::from_utf8_lossy(target)
    )]
    BadTarget {
        /// The target.
        target: Vec<u8>,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// Entries were not given in strictly increasing name order.
    #[error(
        "entry `{}` does not sort after `{}`",
        String::from_utf8_lossy(name),
        String::from_utf8_lossy(previous)
    )]
    Unsorted {
        /// The entry given.
        name: Vec<u8>,
        /// The entry before it.
        previous: Vec<u8>,
    },
    /// The event does not fit where it was given (an entry without a name,
    /// a second root, closing a directory that is not open, finishing
    /// before the root is complete).
    #[error("NAR event out of place: {0}")]
    OutOfPlace(&'static str),
    /// A file's reader gave fewer bytes than its announced size.
    #[error("file contents ended after {got} of {size} bytes")]
    ShortContents {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        size: u64,
    },
    /// Writing failed.
    #[error("cannot write the archive")]
    Io(#[from] io::Error),
}

/// Writes a NAR from events, checking that they form a valid archive.
///
/// Also a [`NarSink`], so [`parse`](super::parse) into an encoder copies an
/// archive, and its bytes come out identical.
#[derive(Debug)]
pub struct NarEncoder<W: Write> {
    w: W,
    /// For each open directory, the last entry name given in it.
    open: Vec<Option<Vec<u8>>>,
    /// The root node has been written completely.
    root_done: bool,
    /// The magic and the root node have begun.
    started: bool,
}

impl<W: Write> NarEncoder<W> {
    /// An encoder that writes to `w`; the magic is written with the root.
    pub fn new(w: W) -> Self {
        NarEncoder {
            w,
            open: Vec::new(),
            root_done: false,
            started: false,
        }
    }

    fn s(&mut self, s: &[u8]) -> io::Result<()> {
        self.w.write_all(&(s.len() as u64).to_le_bytes())?;
        self.w.write_all(s)?;
        self.w.write_all(&[0u8; 8][..padding(s.len() as u64)])
    }

    /// Checks where a node may go and writes what precedes it.
    fn begin(&mut self, name: Option<&[u8]>, kind: &[u8]) -> Result<(), EncodeError> {
        if self.root_done {
            return Err(EncodeError::OutOfPlace("the root node is already complete"));
        }
        match (self.open.last_mut(), name) {
            (None, None) if !self.started => {
                self.started = true;
                self.s(MAGIC)?;
            }
            (None, _) => return Err(EncodeError::OutOfPlace("only the root node has no name")),
            (Some(_), None) => {
                return Err(EncodeError::OutOfPlace("a directory entry needs a name"))
            }
            (Some(last), Some(name)) => {
                check_entry_name(name).map_err(|reason| EncodeError::BadName {
                    name: name.to_vec(),
                    reason,
                })?;
                if let Some(previous) = last {
                    if name <= previous.as_slice() {
                        return Err(EncodeError::Unsorted {
                            name: name.to_vec(),
                            previous: previous.clone(),
                        });
                    }
                }
                *last = Some(name.to_vec());
                self.s(b"entry")?;
                self.s(b"(")?;
                self.s(b"name")?;
                self.s(name)?;
                self.s(b"node")?;
            }
        }
        self.s(b"(")?;
        self.s(b"type")?;
        self.s(kind)?;
        Ok(())
    }

    /// Closes a node, and its entry if it is one.
    fn end(&mut self) -> Result<(), EncodeError> {
        self.s(b")")?;
        if self.open.is_empty() {
            self.root_done = true;
        } else {
            self.s(b")")?;
        }
        Ok(())
    }

    /// A regular file of `size` bytes read from `contents`.
    pub fn file(
        &mut self,
        name: Option<&[u8]>,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> Result<(), EncodeError> {
        self.begin(name, b"regular")?;
        if executable {
            self.s(b"executable")?;
            self.s(b"")?;
        }
        self.s(b"contents")?;
        self.w.write_all(&size.to_le_bytes())?;
        let copied = io::copy(&mut contents.take(size), &mut self.w)?;
        if copied != size {
            return Err(EncodeError::ShortContents { got: copied, size });
        }
        self.w.write_all(&[0u8; 8][..padding(size)])?;
        self.end()
    }

    /// A symlink to `target`.
    pub fn symlink(&mut self, name: Option<&[u8]>, target: &[u8]) -> Result<(), EncodeError> {
        check_symlink_target(target).map_err(|reason| EncodeError::BadTarget {
            target: target.to_vec(),
            reason,
        })?;
        self.begin(name, b"symlink")?;
        self.s(b"target")?;
        self.s(target)?;
        self.end()
    }

    /// Opens a directory; entries follow until [`end_directory`](Self::end_directory).
    pub fn directory(&mut self, name: Option<&[u8]>) -> Result<(), EncodeError> {
        self.begin(name, b"directory")?;
        self.open.push(None);
        Ok(())
    }

    /// Closes the innermost open directory.
    pub fn end_directory(&mut self) -> Result<(), EncodeError> {
        if self.open.pop().is_none() {
            return Err(EncodeError::OutOfPlace("no directory is open"));
        }
        self.end()
    }

    /// Finishes the archive and returns the writer.
    pub fn finish(mut self) -> Result<W, EncodeError> {
        if !self.root_done {
            return Err(EncodeError::OutOfPlace(
                "the archive was finished before its root node",
            ));
        }
        self.w.flush()?;
        Ok(self.w)
    }
}

impl<W: Write> NarSink for NarEncoder<W> {
    fn directory(&mut self, name: Option<&[u8]>) -> io::Result<()> {
        NarEncoder::directory(self, name).map_err(io::Error::other)
    }
    fn end_directory(&mut self) -> io::Result<()> {
        NarEncoder::end_directory(self).map_err(io::Error::other)
    }
    fn file(
        &mut self,
        name: Option<&[u8]>,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        NarEncoder::file(self, name, executable, size, contents).map_err(io::Error::other)
    }
    fn symlink(&mut self, name: Option<&[u8]>, target: &[u8]) -> io::Result<()> {
        NarEncoder::symlink(self, name, target).map_err(io::Error::other)
    }
}
