//! A binary cache in a local directory: `file:///DIR`.

use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{checked_name, BinaryCache, CacheError, Contents};

/// A binary cache kept in a directory (Nix's `file://` store).
#[derive(Debug, Clone)]
pub struct FileCache {
    dir: PathBuf,
}

impl FileCache {
    /// The cache in `dir`. Nothing is created until something is put:
    /// reading a cache that does not exist fails on its missing
    /// `nix-cache-info`, and leaves no empty folder behind.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileCache, CacheError> {
        let dir = std::path::absolute(dir.into()).map_err(|source| CacheError::Io {
            cache: "file://".into(),
            action: "resolve",
            file: String::new(),
            source,
        })?;
        Ok(FileCache { dir })
    }

    /// The cache a `file:///DIR` URL names.
    pub fn from_url(url: &str) -> Result<FileCache, CacheError> {
        let dir = url.strip_prefix("file://").ok_or_else(|| CacheError::Bad {
            cache: url.to_owned(),
            reason: "not a `file://` URL".into(),
        })?;
        // Options after `?` (`?compression=xz`) are the caller's.
        FileCache::open(dir.split('?').next().unwrap_or(dir))
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf, CacheError> {
        self.relative(name).map(|n| self.dir.join(n))
    }

    /// `name` checked, without the query a narinfo's URL may carry.
    fn relative<'n>(&self, name: &'n str) -> Result<&'n str, CacheError> {
        checked_name(name)
            .map(|n| n.split('?').next().unwrap_or(n))
            .ok_or_else(|| CacheError::Bad {
                cache: self.describe(),
                reason: format!("`{name}` is not a file name inside the cache"),
            })
    }

    /// Opens `relative` inside the cache through no symbolic link at all
    /// (in any component: a cache's files are plain files in plain
    /// folders) and without blocking on a FIFO: whoever can write the
    /// cache must not be able to make a reader read elsewhere or hang.
    fn open_beneath(&self, relative: &str, flags: rustix::fs::OFlags) -> io::Result<File> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let dir = rustix::fs::open(
            &self.dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::NONBLOCK | OFlags::CLOEXEC
        };
        let fd = match rustix::fs::openat2(
            &dir,
            relative,
            flags,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        ) {
            // Before Linux 5.6, or under a filter that forbids it: each
            // component opened in turn, none through a symbolic link.
            Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {
                open_by_components(dir, relative, flags)?
            }
            r => r?,
        };
        Ok(File::from(fd))
    }

    fn io(&self, action: &'static str, name: &str) -> impl FnOnce(io::Error) -> CacheError {
        let (cache, file) = (self.describe(), name.to_owned());
        move |source| CacheError::Io {
            cache,
            action,
            file,
            source,
        }
    }
}

impl BinaryCache for FileCache {
    fn describe(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    fn get(&self, name: &str) -> Result<Option<Box<dyn Read + Send>>, CacheError> {
        let relative = self.relative(name)?;
        let f = match self.open_beneath(relative, rustix::fs::OFlags::RDONLY) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io("open", name)(e)),
        };
        let meta = f.metadata().map_err(self.io("look at", name))?;
        if !meta.is_file() {
            return Err(CacheError::Bad {
                cache: self.describe(),
                reason: format!("`{name}` is not a regular file"),
            });
        }
        Ok(Some(Box::new(f)))
    }

    fn has(&self, name: &str) -> Result<bool, CacheError> {
        // An empty file is what a crash can leave of one renamed into
        // place before it reached the disk: not a file the cache has, so
        // that the next upload writes it again.
        let relative = self.relative(name)?;
        match self
            .open_beneath(relative, rustix::fs::OFlags::PATH)
            .and_then(|f| f.metadata())
        {
            Ok(m) => Ok(m.is_file() && m.len() > 0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io("look at", name)(e)),
        }
    }

    fn put(&self, name: &str, data: Contents<'_>) -> Result<(), CacheError> {
        let dest = self.path(name)?;
        let parent = dest.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent).map_err(self.io("create the folder of", name))?;
        // Written where it is read: through no symbolic link (reads follow
        // none, so what went elsewhere could never be read back).
        let relative = self.relative(name)?;
        let mut at = self.dir.clone();
        for part in relative
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            at.push(part);
            let meta = fs::symlink_metadata(&at).map_err(self.io("look at", name))?;
            if !meta.is_dir() {
                return Err(CacheError::Bad {
                    cache: self.describe(),
                    reason: format!("`{name}`: `{part}` is not a folder (a symbolic link?)"),
                });
            }
        }
        // Written beside it, then renamed over: a reader sees the old file
        // or the whole new one. Synced by `flush`, once for many files:
        // an upload flushes its NARs before it writes the narinfos that
        // name them.
        let tmp = parent.join(format!(".tmp-{}-{}", std::process::id(), unique()));
        let mut created = false;
        let result = (|| {
            // A new file, never one already there (or a symbolic link
            // someone placed under that name).
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)?;
            created = true;
            match data {
                Contents::Bytes(b) => io::Write::write_all(&mut f, b)?,
                Contents::File(mut from) => {
                    from.rewind()?;
                    io::copy(&mut from, &mut f)?;
                }
            }
            fs::rename(&tmp, &dest)
        })();
        if result.is_err() && created {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(self.io("write", name))
    }

    fn flush(&self) -> Result<(), CacheError> {
        let dir = File::open(&self.dir).map_err(self.io("open", "."))?;
        rustix::fs::syncfs(&dir).map_err(|e| self.io("sync", ".")(e.into()))
    }
}

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Opens `relative` under `dir` one component at a time, none through a
/// symbolic link: what `openat2(RESOLVE_NO_SYMLINKS)` does, for kernels
/// without it.
fn open_by_components(
    dir: std::os::fd::OwnedFd,
    relative: &str,
    flags: rustix::fs::OFlags,
) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let mut at = dir;
    let mut parts = relative.split('/').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            return Ok(rustix::fs::openat(
                &at,
                part,
                flags | OFlags::NOFOLLOW,
                Mode::empty(),
            )?);
        }
        at = rustix::fs::openat(
            &at,
            part,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty name"))
}

/// A temporary file with no name (`O_TMPFILE`): no one can open it, put
/// something under its name first, or find it left behind after a
/// crash. Where a NAR is compressed before its hash (its name in the
/// cache) is known.
pub(super) struct TempFile {
    file: File,
}

impl TempFile {
    /// One in the folder `dir` (which must be on a file system that
    /// supports unnamed files, as ext4, xfs, btrfs and tmpfs do).
    pub(super) fn new_in(dir: &Path) -> io::Result<TempFile> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir)?;
        Ok(TempFile { file })
    }

    pub(super) fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_openat2_no_component_is_followed_through_a_symlink() -> io::Result<()> {
        use rustix::fs::{Mode, OFlags};
        let scratch = tempfile::tempdir()?;
        let tmp = scratch.path();
        fs::create_dir_all(tmp.join("cache/real"))?;
        fs::write(tmp.join("cache/real/x"), b"inside")?;
        fs::write(tmp.join("outside"), b"outside")?;
        std::os::unix::fs::symlink(tmp.join("cache/real"), tmp.join("cache/link"))?;
        std::os::unix::fs::symlink(tmp.join("outside"), tmp.join("cache/real/y"))?;
        let dir = || {
            rustix::fs::open(
                tmp.join("cache"),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let read = |name: &str| -> io::Result<Vec<u8>> {
            let fd = open_by_components(dir()?, name, OFlags::RDONLY | OFlags::CLOEXEC)?;
            let mut out = Vec::new();
            File::from(fd).read_to_end(&mut out)?;
            Ok(out)
        };
        assert_eq!(read("real/x")?, b"inside");
        assert!(read("link/x").is_err(), "a symlinked folder was followed");
        assert!(read("real/y").is_err(), "a symlinked file was followed");
        Ok(())
    }
}
