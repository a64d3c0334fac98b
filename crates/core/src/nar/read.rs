//! Reading NARs: a validating streaming parser and an unpacker.

use std::ffi::CString;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::walk::{self, DirStack};
use super::{check_entry_name, check_symlink_target, padding, MAGIC};

/// Longest entry name accepted: Linux's `NAME_MAX`.
pub const MAX_NAME_LEN: u64 = 255;
/// Longest symlink target accepted: Linux's `PATH_MAX` less the NUL.
pub const MAX_TARGET_LEN: u64 = 4095;
/// Deepest directory nesting archived or accepted. Trees are walked and
/// unpacked by directory descriptors, so `PATH_MAX` is no limit (a
/// builder can nest thousands of levels); this one bounds what hostile
/// input makes the parser keep (a name per level).
pub const MAX_DEPTH: usize = 16 * 1024;
/// Longest keyword (`(`, `type`, `directory`, …) worth reading.
const MAX_TOKEN_LEN: u64 = 64;

/// Receives the contents of a NAR, in archive order.
///
/// `name` is `None` for the root node and the entry's name inside the
/// innermost open directory otherwise. A sink error stops the parse and is
/// reported with the path of the node being delivered.
pub trait NarSink {
    /// A directory begins; its entries follow until
    /// [`end_directory`](Self::end_directory).
    fn directory(&mut self, name: Option<&[u8]>) -> io::Result<()>;
    /// The innermost open directory ends.
    fn end_directory(&mut self) -> io::Result<()>;
    /// A regular file. `contents` yields exactly `size` bytes; whatever
    /// the sink does not read is skipped.
    fn file(
        &mut self,
        name: Option<&[u8]>,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()>;
    /// A symlink.
    fn symlink(&mut self, name: Option<&[u8]>, target: &[u8]) -> io::Result<()>;
}

/// Why a NAR was rejected. Offsets count bytes from the start of the archive.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The input ended inside the archive.
    #[error("NAR ends early, at byte {offset}")]
    Truncated {
        /// Where the input ended.
        offset: u64,
    },
    /// Reading the input failed.
    #[error("cannot read the NAR at byte {offset}")]
    Io {
        /// Where reading failed.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A keyword other than the one the format requires here.
    #[error("expected {expected} at byte {offset} of the NAR, found `{found}`")]
    Unexpected {
        /// What the format allows here.
        expected: &'static str,
        /// What was there (shortened when long).
        found: String,
        /// Where.
        offset: u64,
    },
    /// A string longer than anything valid in its place.
    #[error("NAR {what} at byte {offset} claims {len} bytes, more than the {max} allowed")]
    TooLong {
        /// What the string is.
        what: &'static str,
        /// The length it claims.
        len: u64,
        /// The limit.
        max: u64,
        /// Where.
        offset: u64,
    },
    /// A string's padding holds non-zero bytes.
    #[error("NAR padding at byte {offset} is not zero")]
    BadPadding {
        /// Where.
        offset: u64,
    },
    /// An entry name that would escape its directory or is not a name.
    #[error("NAR entry `{name}` in `{dir}` is invalid: {reason}")]
    BadName {
        /// The name, lossily decoded.
        name: String,
        /// The directory it is in.
        dir: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// Entries out of order or repeated: two archives could describe one
    /// tree, and a repeated name could replace what was written before.
    #[error("NAR entry `{name}` in `{dir}` does not sort after `{previous}` (entries must be sorted and unique)")]
    Unsorted {
        /// The entry.
        name: String,
        /// The entry before it.
        previous: String,
        /// The directory.
        dir: String,
    },
    /// A symlink with an empty target or a NUL in it.
    #[error("NAR symlink `{path}` has an invalid target: {reason}")]
    BadTarget {
        /// The symlink.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// Directories nested deeper than [`MAX_DEPTH`].
    #[error("NAR directories nest deeper than {MAX_DEPTH} levels at `{path}`")]
    TooDeep {
        /// Where.
        path: String,
    },
    /// The sink refused a node (for [`restore`], writing it failed).
    #[error("cannot unpack `{path}`")]
    Sink {
        /// The node's path inside the archive.
        path: String,
        /// The sink's error.
        #[source]
        source: io::Error,
    },
}

struct Parser<'r, R> {
    r: &'r mut R,
    offset: u64,
    /// Names of the open directories below the root.
    path: Vec<Vec<u8>>,
}

fn lossy(bytes: &[u8]) -> String {
    const SHOW: usize = 80;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOW)]);
    if bytes.len() > SHOW {
        format!("{text}…")
    } else {
        text.into_owned()
    }
}

impl<R: BufRead> Parser<'_, R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut done = 0;
        while done < buf.len() {
            match self.r.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(ReadError::Truncated {
                        offset: self.offset + done as u64,
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ReadError::Io {
                        offset: self.offset + done as u64,
                        source,
                    })
                }
            }
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, ReadError> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn pad(&mut self, len: u64) -> Result<(), ReadError> {
        let n = padding(len);
        let mut b = [0u8; 8];
        let at = self.offset;
        self.fill(&mut b[..n])?;
        if b.iter().any(|&x| x != 0) {
            return Err(ReadError::BadPadding { offset: at });
        }
        Ok(())
    }

    fn string(&mut self, max: u64, what: &'static str) -> Result<Vec<u8>, ReadError> {
        let at = self.offset;
        let len = self.u64()?;
        if len > max {
            return Err(ReadError::TooLong {
                what,
                len,
                max,
                offset: at,
            });
        }
        let mut s = vec![0u8; len as usize];
        self.fill(&mut s)?;
        self.pad(len)?;
        Ok(s)
    }

    fn token(&mut self, expected: &'static str) -> Result<Vec<u8>, ReadError> {
        let at = self.offset;
        self.string(MAX_TOKEN_LEN, "keyword").map_err(|e| match e {
            ReadError::TooLong { len, .. } => ReadError::Unexpected {
                expected,
                found: format!("a string of {len} bytes"),
                offset: at,
            },
            e => e,
        })
    }

    fn expect(&mut self, want: &'static [u8], expected: &'static str) -> Result<(), ReadError> {
        let at = self.offset;
        let got = self.token(expected)?;
        if got != want {
            return Err(ReadError::Unexpected {
                expected,
                found: lossy(&got),
                offset: at,
            });
        }
        Ok(())
    }

    fn display(&self, name: Option<&[u8]>) -> String {
        let mut out = String::from("/");
        for part in self.path.iter().map(|p| p.as_slice()).chain(name) {
            if out.len() > 1 {
                out.push('/');
            }
            out.push_str(&String::from_utf8_lossy(part));
        }
        out
    }

    /// Names the node only when the sink fails: a deep tree has long
    /// paths, and every node would pay for its own.
    fn sink_err<'a>(&'a self, name: Option<&'a [u8]>) -> impl FnOnce(io::Error) -> ReadError + 'a {
        move |source| ReadError::Sink {
            path: self.display(name),
            source,
        }
    }

    /// Parses one node up to its closing `)`, or, for a directory, up to
    /// its type (the caller reads the entries). Returns whether a directory
    /// was opened.
    fn node(&mut self, sink: &mut dyn NarSink, name: Option<&[u8]>) -> Result<bool, ReadError> {
        self.expect(b"(", "`(`")?;
        self.expect(b"type", "`type`")?;
        let at = self.offset;
        let kind = self.token("a node type")?;
        match kind.as_slice() {
            b"regular" => {
                let mut tag_at = self.offset;
                let mut tag = self.token("`executable` or `contents`")?;
                let executable = tag == b"executable";
                if executable {
                    self.expect(b"", "an empty string after `executable`")?;
                    tag_at = self.offset;
                    tag = self.token("`contents`")?;
                }
                if tag != b"contents" {
                    return Err(ReadError::Unexpected {
                        expected: "`contents`",
                        found: lossy(&tag),
                        offset: tag_at,
                    });
                }
                let size = self.u64()?;
                let start = self.offset;
                let mut contents = Contents {
                    r: &mut *self.r,
                    left: size,
                    failed: None,
                };
                let delivered = sink.file(name, executable, size, &mut contents);
                // Skip what the sink left unread, so the parse goes on.
                let drained = if delivered.is_ok() {
                    io::copy(&mut contents, &mut io::sink()).map(|_| ())
                } else {
                    Ok(())
                };
                let (left, failed) = (contents.left, contents.failed.take());
                self.offset = start + (size - left);
                match failed {
                    Some(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(ReadError::Truncated {
                            offset: self.offset,
                        })
                    }
                    Some(source) => {
                        return Err(ReadError::Io {
                            offset: self.offset,
                            source,
                        })
                    }
                    None => {}
                }
                delivered.map_err(self.sink_err(name))?;
                drained.map_err(|source| ReadError::Io {
                    offset: self.offset,
                    source,
                })?;
                self.pad(size)?;
                self.expect(b")", "`)` after file contents")?;
                Ok(false)
            }
            b"symlink" => {
                self.expect(b"target", "`target`")?;
                let target = self.string(MAX_TARGET_LEN, "symlink target")?;
                if let Err(reason) = check_symlink_target(&target) {
                    return Err(ReadError::BadTarget {
                        path: self.display(name),
                        reason,
                    });
                }
                sink.symlink(name, &target).map_err(self.sink_err(name))?;
                self.expect(b")", "`)` after a symlink target")?;
                Ok(false)
            }
            b"directory" => {
                if self.path.len() >= MAX_DEPTH {
                    return Err(ReadError::TooDeep {
                        path: self.display(name),
                    });
                }
                sink.directory(name).map_err(self.sink_err(name))?;
                Ok(true)
            }
            other => Err(ReadError::Unexpected {
                expected: "`regular`, `symlink` or `directory`",
                found: lossy(other),
                offset: at,
            }),
        }
    }

    fn archive(&mut self, sink: &mut dyn NarSink) -> Result<(), ReadError> {
        self.expect(MAGIC, "the NAR magic `nix-archive-1`")?;
        if !self.node(sink, None)? {
            return Ok(());
        }
        // The last entry name of each open directory, root first.
        let mut last: Vec<Option<Vec<u8>>> = vec![None];
        while let Some(previous) = last.last_mut() {
            let at = self.offset;
            let tag = self.token("`entry` or `)`")?;
            match tag.as_slice() {
                b")" => {
                    last.pop();
                    sink.end_directory().map_err(self.sink_err(None))?;
                    if !last.is_empty() {
                        self.path.pop();
                        self.expect(b")", "`)` closing a directory entry")?;
                    }
                }
                b"entry" => {
                    self.expect(b"(", "`(` opening an entry")?;
                    self.expect(b"name", "`name`")?;
                    let name = self.string(MAX_NAME_LEN, "entry name")?;
                    if let Err(reason) = check_entry_name(&name) {
                        return Err(ReadError::BadName {
                            name: lossy(&name),
                            dir: self.display(None),
                            reason,
                        });
                    }
                    if let Some(prev) = previous {
                        if name <= *prev {
                            return Err(ReadError::Unsorted {
                                name: lossy(&name),
                                previous: lossy(prev),
                                dir: self.display(None),
                            });
                        }
                    }
                    *previous = Some(name.clone());
                    self.expect(b"node", "`node`")?;
                    if self.node(sink, Some(&name))? {
                        self.path.push(name);
                        last.push(None);
                    } else {
                        self.expect(b")", "`)` closing an entry")?;
                    }
                }
                other => {
                    return Err(ReadError::Unexpected {
                        expected: "`entry` or `)`",
                        found: lossy(other),
                        offset: at,
                    })
                }
            }
        }
        Ok(())
    }
}

/// A file's contents inside the archive: exactly `left` more bytes.
struct Contents<'r, R> {
    r: &'r mut R,
    left: u64,
    /// The first error from the underlying reader, kept so that the parser
    /// reports a truncated archive as such even when the sink swallowed it.
    failed: Option<io::Error>,
}

impl<R: BufRead> Read for Contents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        loop {
            match self.r.read(&mut buf[..want]) {
                Ok(0) => {
                    self.failed = Some(io::ErrorKind::UnexpectedEof.into());
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "NAR ends inside a file",
                    ));
                }
                Ok(n) => {
                    self.left -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let kind = e.kind();
                    self.failed = Some(e);
                    return Err(io::Error::new(kind, "reading the NAR failed"));
                }
            }
        }
    }
}

/// Parses a NAR from `r` into `sink`, checking every rule of the format.
///
/// Reads exactly the archive and nothing after it, so the caller can go on
/// reading the stream. Strings are bounded before they are allocated and
/// file contents stream through the sink, so hostile lengths cannot
/// exhaust memory.
pub fn parse<R: BufRead>(r: &mut R, sink: &mut dyn NarSink) -> Result<(), ReadError> {
    Parser {
        r,
        offset: 0,
        path: Vec::new(),
    }
    .archive(sink)
}

/// Unpacks into a new directory tree at `dest`, creating each node
/// relative to its directory's descriptor, so that no path is ever
/// longer than a name.
struct Unpacker {
    dest: PathBuf,
    /// The directories from `dest` to the one being filled.
    dirs: Option<DirStack>,
    buf: Vec<u8>,
    /// `dest` exists because of this unpacker (and is removed on failure).
    created_root: bool,
}

impl Unpacker {
    /// Where the node `name` goes: a directory descriptor and a name in
    /// it, or `AT_FDCWD` and `dest` for the root.
    fn target(&self, name: Option<&[u8]>) -> io::Result<(RawFd, CString)> {
        let no_nul = |b: &[u8]| {
            CString::new(b)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
        };
        match (&self.dirs, name) {
            (Some(dirs), Some(name)) => Ok((dirs.fd().as_raw_fd(), no_nul(name)?)),
            (None, None) => Ok((libc::AT_FDCWD, no_nul(self.dest.as_os_str().as_bytes())?)),
            _ => Err(io::Error::other("a node out of place")),
        }
    }
}

impl NarSink for Unpacker {
    fn directory(&mut self, name: Option<&[u8]>) -> io::Result<()> {
        let (dir, name) = self.target(name)?;
        // SAFETY: `name` is NUL-terminated.
        if unsafe { libc::mkdirat(dir, name.as_ptr(), 0o777) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.created_root = true;
        match &mut self.dirs {
            Some(dirs) => dirs.enter(&name)?,
            None => self.dirs = Some(DirStack::open(&self.dest)?),
        }
        Ok(())
    }

    fn end_directory(&mut self) -> io::Result<()> {
        if let Some(dirs) = &mut self.dirs {
            dirs.leave()?;
        }
        Ok(())
    }

    fn file(
        &mut self,
        name: Option<&[u8]>,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let (dir, name) = self.target(name)?;
        // O_CREAT|O_EXCL never follows a symlink and never opens something
        // that already exists.
        let fd = walk::open_at(
            dir,
            &name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            if executable { 0o777 } else { 0o666 },
        )?;
        let mut file = std::fs::File::from(fd);
        self.created_root = true;
        if size > 0 {
            if self.buf.is_empty() {
                self.buf = vec![0; 256 * 1024];
            }
            loop {
                let n = contents.read(&mut self.buf)?;
                if n == 0 {
                    break;
                }
                file.write_all(&self.buf[..n])?;
            }
            // Writing back starts now, while the rest of the archive is
            // unpacked, rather than all at once when the store syncs
            // before it registers the path: that sync then finds little
            // left to write. It only starts the writes, never waits for
            // them, and a failure here costs nothing but that head start.
            // SAFETY: a valid open descriptor; no memory is passed.
            unsafe {
                libc::sync_file_range(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0,
                    0,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        Ok(())
    }

    fn symlink(&mut self, name: Option<&[u8]>, target: &[u8]) -> io::Result<()> {
        let (dir, name) = self.target(name)?;
        let target = CString::new(target)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a target"))?;
        // SAFETY: both strings are NUL-terminated.
        if unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.created_root = true;
        Ok(())
    }
}

/// Unpacks the NAR read from `r` at `dest`, which must not exist yet (its
/// parent must). Every node is created fresh — directories with `mkdir`,
/// files with `O_EXCL` — under a directory this call made, and names are
/// checked first, so nothing is written outside `dest`, whatever the
/// archive holds. On error, whatever was unpacked is removed again.
pub fn restore<R: BufRead>(r: &mut R, dest: &Path) -> Result<(), ReadError> {
    let mut unpacker = Unpacker {
        dest: dest.to_owned(),
        dirs: None,
        buf: Vec::new(),
        created_root: false,
    };
    let result = parse(r, &mut unpacker);
    if result.is_err() && unpacker.created_root {
        // Whatever the walk holds open goes before the tree does.
        drop(unpacker);
        let _ = walk::remove_tree(dest);
    }
    result
}
