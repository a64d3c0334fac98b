//! A binary cache in a local directory: `file:///DIR`.

use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{checked_name, BinaryCache, CacheError};

/// A binary cache kept in a directory (Nix's `file://` store).
#[derive(Debug, Clone)]
pub struct FileCache {
    dir: PathBuf,
}

impl FileCache {
    /// The cache in `dir`, created (with its `nar/` folder) if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileCache, CacheError> {
        let dir = std::path::absolute(dir.into()).map_err(|source| CacheError::Io {
            cache: "file://".into(),
            action: "resolve",
            file: String::new(),
            source,
        })?;
        let cache = FileCache { dir };
        fs::create_dir_all(cache.dir.join("nar")).map_err(|source| CacheError::Io {
            cache: cache.describe(),
            action: "create",
            file: "nar".into(),
            source,
        })?;
        Ok(cache)
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
        checked_name(name)
            .map(|n| self.dir.join(n))
            .ok_or_else(|| CacheError::Bad {
                cache: self.describe(),
                reason: format!("`{name}` is not a file name inside the cache"),
            })
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
        match File::open(self.path(name)?) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("open", name)(e)),
        }
    }

    fn has(&self, name: &str) -> Result<bool, CacheError> {
        match fs::symlink_metadata(self.path(name)?) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io("look at", name)(e)),
        }
    }

    fn put(&self, name: &str, data: &mut dyn Read) -> Result<(), CacheError> {
        let dest = self.path(name)?;
        let parent = dest.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent).map_err(self.io("create the folder of", name))?;
        // Written beside it, then renamed over: a reader sees the old file
        // or the whole new one. Synced by `flush`, once for many files:
        // an upload flushes its NARs before it writes the narinfos that
        // name them.
        let tmp = parent.join(format!(".tmp-{}-{}", std::process::id(), unique()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            io::copy(data, &mut f)?;
            fs::rename(&tmp, &dest)
        })();
        if result.is_err() {
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

/// A temporary file, removed when dropped: where a NAR is compressed
/// before its hash (its name in the cache) is known.
pub(super) struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    pub(super) fn new() -> io::Result<TempFile> {
        let path =
            std::env::temp_dir().join(format!("bigtop-nar-{}-{}", std::process::id(), unique()));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempFile { path, file })
    }

    pub(super) fn file(&self) -> &File {
        &self.file
    }

    pub(super) fn rewind(&mut self) -> io::Result<()> {
        self.file.rewind()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
