//! Binary caches in Nix's layout: `nix-cache-info`, `<digest>.narinfo`
//! and `nar/<file hash>.nar[.xz|.zst]`, signed with ed25519 over Nix's
//! fingerprint, so that a cache bigtop writes is one Nix reads and the
//! other way round.
//!
//! A [`BinaryCache`] is a transport (a directory, [`FileCache`]; HTTP,
//! [`HttpCache`]; [`open`] picks one by URL) that gets and puts files. [`upload`] writes closures into
//! one; [`fetch`] substitutes closures from one into a store, checking
//! every narinfo's signature against trusted keys, that it is about the
//! path asked for, and every NAR's size and hashes while it streams, so
//! that nothing unchecked is ever registered.
//!
//! ```
//! use bigtop_store::cache::{fetch, upload, Compression, FetchOptions, FileCache, UploadOptions};
//! use bigtop_store::Store;
//! use bigtop_core::{SecretKey, TrustedKeys};
//! # let tmp = tempfile::tempdir()?;
//! let from = Store::open_chroot(tmp.path().join("a"))?;
//! let path = from.add_text("hello", b"hello\n", &Default::default())?;
//! let cache = FileCache::open(tmp.path().join("cache"))?;
//! let key = SecretKey::generate("cache.example.org-1")?;
//! let options = UploadOptions { compression: Compression::Zstd, key: Some(key.clone()) };
//! upload(&from, &cache, &[path.clone()], &options)?;
//!
//! let to = Store::open_chroot(tmp.path().join("b"))?;
//! let trusted: TrustedKeys = [key.public()].into_iter().collect();
//! fetch(&to, &cache, &[path.clone()], &FetchOptions::trusting(trusted))?;
//! assert!(to.is_valid(&path)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod file;
mod http;
mod memo;
mod substituter;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, Read, Write};

use bigtop_core::hash::{HashAlgo, HashingWriter};
use bigtop_core::narinfo::NarInfo;
use bigtop_core::signing::{SecretKey, TrustedKeys};
use bigtop_core::StorePath;
use thiserror::Error;

use crate::{PathInfo, Store};

pub use file::FileCache;
pub use http::HttpCache;
pub use memo::NarinfoMemo;
pub use substituter::CacheSubstituter;

/// What can go wrong with a binary cache.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Reading or writing the cache failed.
    #[error("cache `{cache}`: cannot {action} `{file}`")]
    Io {
        /// The cache.
        cache: String,
        /// What was being done.
        action: &'static str,
        /// The file in the cache.
        file: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The cache holds something that is not what it claims or what was
    /// asked for.
    #[error("cache `{cache}`: {reason}")]
    Bad {
        /// The cache.
        cache: String,
        /// What is wrong.
        reason: String,
    },
    /// The cache does not have a path asked for.
    #[error("cache `{cache}` does not have `{path}`")]
    Missing {
        /// The cache.
        cache: String,
        /// The path.
        path: String,
    },
    /// A narinfo without a signature from a trusted key.
    #[error("cache `{cache}`: `{path}` is not signed by a trusted key (signed by: {}; trusted: {})", list(.seen), list(.trusted))]
    Untrusted {
        /// The cache.
        cache: String,
        /// The path.
        path: String,
        /// The names of the keys that signed it.
        seen: Vec<String>,
        /// The names of the trusted keys.
        trusted: Vec<String>,
    },
    /// The store refused what the cache sent, or could not be read.
    #[error("cache `{cache}`: `{path}`")]
    Store {
        /// The cache.
        cache: String,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: Box<crate::Error>,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// How NAR files are compressed in a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Stored as they are.
    None,
    /// xz: what Nix writes by default.
    Xz,
    /// zstd: far faster to write and read at a similar size.
    #[default]
    Zstd,
}

impl Compression {
    /// Its name in a narinfo's `Compression:` field.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }

    /// The compression a narinfo names (an absent field means bzip2 to
    /// Nix, which bigtop does not read).
    pub fn parse(name: &str) -> Option<Compression> {
        match name {
            "none" => Some(Compression::None),
            "xz" => Some(Compression::Xz),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The extension of a NAR file in this compression (`.zst`, `.xz`,
    /// or none), after `.nar`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
        }
    }

    /// A reader of the uncompressed bytes of `r`.
    fn decoder<'a>(self, r: impl Read + Send + 'a) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            // Only the .xz format (not legacy .lzma), concatenated streams
            // as `xz` writes them, in bounded memory: a header may ask for
            // any dictionary size.
            Compression::Xz => {
                let stream = liblzma::stream::Stream::new_stream_decoder(
                    XZ_MEMORY,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(io::Error::other)?;
                Box::new(liblzma::read::XzDecoder::new_stream(r, stream))
            }
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        })
    }
}

/// The most memory an xz stream may need to be read: enough for `xz -9e`
/// (a 64 MiB dictionary), which Nix never exceeds.
const XZ_MEMORY: u64 = 80 << 20;

/// `nix-cache-info`: what a cache says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// The store dir its paths are for (`StoreDir:`).
    pub store_dir: String,
    /// Whether clients may ask for many paths at once (`WantMassQuery:`).
    pub want_mass_query: bool,
    /// Lower is tried first (`Priority:`).
    pub priority: u32,
}

impl CacheInfo {
    /// Parses the file's text; unknown keys are ignored, as Nix does.
    pub fn parse(text: &str) -> Result<CacheInfo, String> {
        let mut store_dir = None;
        let mut want_mass_query = false;
        let mut priority = 50;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| format!("`{line}` is not `<key>: <value>`"))?;
            let v = v.trim();
            match k.trim() {
                "StoreDir" => store_dir = Some(v.to_owned()),
                "WantMassQuery" => want_mass_query = v == "1",
                "Priority" => {
                    priority = v
                        .parse()
                        .map_err(|_| format!("`Priority: {v}` is not a number"))?
                }
                _ => {}
            }
        }
        Ok(CacheInfo {
            store_dir: store_dir.ok_or("it has no `StoreDir`")?,
            want_mass_query,
            priority,
        })
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        format!(
            "StoreDir: {}\nWantMassQuery: {}\nPriority: {}\n",
            self.store_dir,
            u8::from(self.want_mass_query),
            self.priority
        )
    }
}

/// What is put into a cache: bytes, or a whole file read from its
/// start. Either can be read again, so a transport may retry a put.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Contents<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// The file's contents, from its start whatever its offset.
    File(&'a std::fs::File),
}

/// A binary cache's files, wherever they are kept.
pub trait BinaryCache: Send + Sync {
    /// How messages name it (its URL).
    fn describe(&self) -> String;

    /// The file `name` (a path relative to the cache, already checked
    /// to stay inside it), or `None` when the cache does not have it.
    fn get(&self, name: &str) -> Result<Option<Box<dyn Read + Send>>, CacheError>;

    /// Whether the cache has the file `name`.
    fn has(&self, name: &str) -> Result<bool, CacheError>;

    /// Stores `data` as the file `name`, whole or not at all: a reader
    /// never sees half of it. It is durable once [`flush`](Self::flush)
    /// returns.
    fn put(&self, name: &str, data: Contents<'_>) -> Result<(), CacheError>;

    /// Makes what was put durable (a transport whose writes are durable
    /// when they return has nothing to do).
    fn flush(&self) -> Result<(), CacheError> {
        Ok(())
    }
}

/// A boxed cache is one too (what [`open`] gives).
impl<T: BinaryCache + ?Sized> BinaryCache for Box<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn get(&self, name: &str) -> Result<Option<Box<dyn Read + Send>>, CacheError> {
        (**self).get(name)
    }
    fn has(&self, name: &str) -> Result<bool, CacheError> {
        (**self).has(name)
    }
    fn put(&self, name: &str, data: Contents<'_>) -> Result<(), CacheError> {
        (**self).put(name, data)
    }
    fn flush(&self) -> Result<(), CacheError> {
        (**self).flush()
    }
}

/// The cache at `url`: `file:///DIR` or `http(s)://…`.
pub fn open(url: &str) -> Result<Box<dyn BinaryCache>, CacheError> {
    if url.starts_with("file://") {
        Ok(Box::new(FileCache::from_url(url)?))
    } else if url.starts_with("http://") || url.starts_with("https://") {
        Ok(Box::new(HttpCache::new(url)?))
    } else {
        Err(CacheError::Bad {
            cache: url.to_owned(),
            reason: "not a cache URL bigtop knows (`file://`, `http://`, `https://`)".into(),
        })
    }
}

/// The name of a file a narinfo points to, if it stays inside the cache:
/// relative, no `.` or `..` or empty components, and only characters
/// that mean themselves in a file name and in a URL (no `%` escapes a
/// server would decode into `..`, no `#`). One query may follow (`?…`,
/// of letters, digits and `=&_.-`), as harmonia's `nar/<hash>.nar?hash=…`
/// does: an HTTP cache is sent it, a directory ignores it.
fn checked_name(url: &str) -> Option<&str> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let ok = !path.is_empty()
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-=".contains(&b))
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && query
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=&_.-".contains(&b));
    ok.then_some(url)
}

/// The narinfo file of `path`.
fn narinfo_name(path: &StorePath) -> String {
    format!("{}.narinfo", path.digest())
}

/// Hears how a copy goes, to render progress. Every method has an empty
/// default; calls come from several threads.
pub trait CopyObserver: Send + Sync {
    /// What is to be copied: paths and their NAR bytes (uncompressed).
    /// A fetch finds its closure as it goes, and tells the totals again
    /// each time they grow.
    fn planned(&self, _paths: usize, _nar_bytes: u64) {}
    /// `n` more NAR bytes went through (often: per buffer).
    fn bytes(&self, _n: u64) {}
    /// A path is through (uploaded, or fetched and staged).
    fn copied(&self, _path: &StorePath) {}
}

/// A [`CopyObserver`] that renders nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl CopyObserver for Quiet {}

/// Counts what passes into `observer` as it goes.
pub(crate) struct Counting<'o, T> {
    pub(crate) inner: T,
    pub(crate) observer: &'o dyn CopyObserver,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.observer.bytes(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observer.bytes(n as u64);
        Ok(n)
    }
}

/// Counted as consumed, so that nothing read ahead of the reader counts.
impl<R: io::BufRead> io::BufRead for Counting<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, n: usize) {
        self.observer.bytes(n as u64);
        self.inner.consume(n);
    }
}

/// How to write into a cache.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// How NARs are compressed.
    pub compression: Compression,
    /// Signs each narinfo, when given.
    pub key: Option<SecretKey>,
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// The paths copied, in the order they were.
    pub copied: Vec<StorePath>,
    /// Paths of the closures the other side already had.
    pub present: usize,
    /// Uncompressed NAR bytes copied.
    pub nar_bytes: u64,
    /// Bytes of NAR files as stored in the cache (compressed); over SSH,
    /// of the export stream sent (the NARs and their records).
    pub file_bytes: u64,
}

/// Writes the closures of `roots` into `cache`: each path the cache lacks
/// gets its NAR, compressed, and then its narinfo (signed with
/// `options.key`), so that a narinfo is never seen before its NAR.
pub fn upload(
    store: &Store,
    cache: &dyn BinaryCache,
    roots: &[StorePath],
    options: &UploadOptions,
) -> Result<CopyReport, CacheError> {
    upload_observed(store, cache, roots, options, &Quiet)
}

/// [`upload`], telling `observer` how it goes.
pub fn upload_observed(
    store: &Store,
    cache: &dyn BinaryCache,
    roots: &[StorePath],
    options: &UploadOptions,
    observer: &dyn CopyObserver,
) -> Result<CopyReport, CacheError> {
    let name = cache.describe();
    let store_err = |path: &StorePath, e: crate::Error| CacheError::Store {
        cache: name.clone(),
        path: path.to_string(),
        source: Box::new(e),
    };
    ensure_cache_info(store, cache)?;
    for root in roots {
        if !store.is_valid(root).map_err(|e| store_err(root, e))? {
            return Err(store_err(
                root,
                crate::Error::NotValid { path: root.clone() },
            ));
        }
    }
    let closure: Vec<StorePath> = store
        .closure(roots)
        .map_err(|e| CacheError::Store {
            cache: name.clone(),
            path: format!("the closure of {} paths", roots.len()),
            source: Box::new(e),
        })?
        .into_iter()
        .collect();
    // What the cache lacks, asked on many connections at once (over HTTP
    // each is a round trip, and nothing to compute).
    let missing = in_parallel(LOOKUPS_AT_ONCE, &closure, |path| {
        if cache.has(&narinfo_name(path))? {
            return Ok(None);
        }
        store
            .path_info(path)
            .map_err(|e| store_err(path, e))?
            .ok_or_else(|| store_err(path, crate::Error::NotValid { path: path.clone() }))
            .map(Some)
    })?;
    observer.planned(
        missing.iter().flatten().count(),
        missing.iter().flatten().map(|i| i.nar_size).sum(),
    );
    // NARs first, several at once (compressing is the work), each made
    // durable before any narinfo naming one is written.
    let uploaded = in_parallel(AT_ONCE, &missing, |info| match info {
        None => Ok(None),
        Some(info) => {
            let up = upload_one(store, cache, info, options, observer)?;
            observer.copied(&info.path);
            Ok(Some(up))
        }
    })?;
    cache.flush()?;
    let mut report = CopyReport::default();
    let mut narinfos = Vec::new();
    for (path, up) in closure.iter().zip(uploaded) {
        match up {
            None => report.present += 1,
            Some((narinfo, nar_size, file_size)) => {
                narinfos.push((path, narinfo));
                report.copied.push(path.clone());
                report.nar_bytes += nar_size;
                report.file_bytes += file_size;
            }
        }
    }
    in_parallel(AT_ONCE, &narinfos, |(path, text)| {
        cache.put(&narinfo_name(path), Contents::Bytes(text.as_bytes()))
    })?;
    cache.flush()?;
    Ok(report)
}

/// How many paths are compressed or sent at once.
const AT_ONCE: usize = 4;

/// How many narinfos are looked up at once.
const LOOKUPS_AT_ONCE: usize = 16;

/// `f` of each item, on up to `threads` threads; the results in the
/// items' order, or the first error.
fn in_parallel<T: Sync, R: Send>(
    threads: usize,
    items: &[T],
    f: impl Fn(&T) -> Result<R, CacheError> + Sync,
) -> Result<Vec<R>, CacheError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<std::sync::Mutex<Option<Result<R, CacheError>>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.min(items.len()) {
            s.spawn(|| loop {
                // After a failure, nothing new starts.
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                if r.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    for r in results {
        // An item not started because another failed has no result: that
        // error comes first in the items' order or is returned below.
        if let Some(r) = r.into_inner().unwrap_or_else(|e| e.into_inner()) {
            out.push(r?);
        }
    }
    Ok(out)
}

fn ensure_cache_info(store: &Store, cache: &dyn BinaryCache) -> Result<(), CacheError> {
    let want = store.store_dir().as_str();
    match read_cache_info(cache)? {
        Some(info) if info.store_dir == want => Ok(()),
        Some(info) => Err(CacheError::Bad {
            cache: cache.describe(),
            reason: format!(
                "it holds paths of `{}`, not of this store's `{want}`",
                info.store_dir
            ),
        }),
        None => {
            let info = CacheInfo {
                store_dir: want.to_owned(),
                want_mass_query: true,
                priority: 40,
            };
            cache.put("nix-cache-info", Contents::Bytes(info.to_text().as_bytes()))
        }
    }
}

fn read_cache_info(cache: &dyn BinaryCache) -> Result<Option<CacheInfo>, CacheError> {
    let Some(mut r) = cache.get("nix-cache-info")? else {
        return Ok(None);
    };
    let text = read_small(cache, "nix-cache-info", &mut r)?;
    CacheInfo::parse(&text)
        .map(Some)
        .map_err(|why| CacheError::Bad {
            cache: cache.describe(),
            reason: format!("`nix-cache-info`: {why}"),
        })
}

/// The most a narinfo or `nix-cache-info` may hold.
const SMALL_FILE: u64 = 1 << 20;

/// A small text file of the cache: at most [`SMALL_FILE`] bytes, or an
/// error (a longer one is not cut short and parsed as if whole).
fn read_small(cache: &dyn BinaryCache, name: &str, r: &mut dyn Read) -> Result<String, CacheError> {
    let mut text = String::new();
    r.take(SMALL_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|source| CacheError::Io {
            cache: cache.describe(),
            action: "read",
            file: name.to_owned(),
            source,
        })?;
    if text.len() as u64 > SMALL_FILE {
        return Err(CacheError::Bad {
            cache: cache.describe(),
            reason: format!("`{name}` is longer than {SMALL_FILE} bytes"),
        });
    }
    Ok(text)
}

/// Compresses `info.path`'s NAR into the cache; its narinfo's text, the
/// NAR's size and the file's size.
fn upload_one(
    store: &Store,
    cache: &dyn BinaryCache,
    info: &PathInfo,
    options: &UploadOptions,
    observer: &dyn CopyObserver,
) -> Result<(String, u64, u64), CacheError> {
    let name = cache.describe();
    let path = &info.path;
    let io = |action: &'static str, file: &str| {
        let (cache, file) = (name.clone(), file.to_owned());
        move |source| CacheError::Io {
            cache,
            action,
            file,
            source,
        }
    };
    // The compressed NAR goes to a temporary file first: its name in the
    // cache is its hash. It is kept in the store (on its disk, not in a
    // `/tmp` that may be memory), under a name no one else can take.
    let tmp =
        file::TempFile::new_in(store.root()).map_err(io("create a temporary file for", "a NAR"))?;
    let file_writer = HashingWriter::new(tmp.file(), HashAlgo::Sha256);
    let (nar_hash, nar_size, file_writer, changed) = {
        let compressor =
            Compressor::new(options.compression, file_writer).map_err(io("compress", "a NAR"))?;
        // Nix's narinfo says the NAR's SHA-256; the store may record it
        // with another algorithm, checked too.
        let nar = HashingWriter::new(compressor, HashAlgo::Sha256);
        let mut recorded = Counting {
            inner: HashingWriter::new(nar, info.nar_hash.algo()),
            observer,
        };
        bigtop_core::nar::dump_path(&store.physical(path), &mut recorded).map_err(|e| {
            CacheError::Store {
                cache: name.clone(),
                path: path.to_string(),
                source: Box::new(crate::Error::from(e)),
            }
        })?;
        let (recorded_hash, _, nar) = recorded.inner.finish();
        let (hash, size, compressor) = nar.finish();
        let changed = recorded_hash != info.nar_hash;
        (
            hash,
            size,
            compressor.finish().map_err(io("compress", "a NAR"))?,
            changed,
        )
    };
    let (file_hash, file_size, _) = file_writer.finish();
    // What the store recorded is what the cache must say: a path changed
    // on disk since is not copied.
    if changed || nar_size != info.nar_size {
        return Err(CacheError::Bad {
            cache: name,
            reason: format!(
                "`{path}` in the store no longer matches its recorded hash and size: run `bigtop store verify`"
            ),
        });
    }
    let url = format!(
        "nar/{}.nar{}",
        file_hash.to_base32(),
        options.compression.extension()
    );
    cache.put(&url, Contents::File(tmp.file()))?;
    let mut narinfo = NarInfo::new(path.clone(), url, nar_hash, nar_size);
    narinfo.compression = Some(options.compression.name().to_owned());
    narinfo.file_hash = Some(file_hash);
    narinfo.file_size = Some(file_size);
    narinfo.references = info.references.clone();
    narinfo.deriver = info.deriver.clone();
    // Signatures the path already has (from its builder or the cache it
    // came from) go along, as Nix's copy does; each covers the same
    // fingerprint, so a reader checks them against its own keys.
    narinfo.signatures = info.signatures.clone();
    // Nix reads only the hash algorithms it knows in `CA:`; bigtop's own
    // content addresses (BLAKE3) are left out, and the path is trusted by
    // its signature instead, as an input-addressed one is.
    narinfo.ca = info.ca.filter(|ca| ca.hash.algo() != HashAlgo::Blake3);
    if let Some(key) = &options.key {
        narinfo.signatures.retain(|s| s.name() != key.name());
        narinfo.sign(store.store_dir(), key);
    }
    Ok((narinfo.to_text(store.store_dir()), nar_size, file_size))
}

/// A compressing writer of any [`Compression`], finished explicitly:
/// what [`upload`] writes NAR files with, for a server that compresses
/// NARs as it sends them.
///
/// ```
/// use std::io::Write;
/// use bigtop_store::cache::{Compression, Compressor};
/// let mut c = Compressor::new(Compression::Zstd, Vec::new())?;
/// c.write_all(&[0; 4096])?;
/// let compressed = c.finish()?;
/// assert!(compressed.len() < 4096);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Compressor<W: Write>(CompressorKind<W>);

enum CompressorKind<W: Write> {
    None(W),
    Xz(liblzma::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> std::fmt::Debug for Compressor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.0 {
            CompressorKind::None(_) => "none",
            CompressorKind::Xz(_) => "xz",
            CompressorKind::Zstd(_) => "zstd",
        };
        f.debug_tuple("Compressor").field(&name).finish()
    }
}

impl<W: Write> Compressor<W> {
    /// Compresses what is written into `w`: xz at level 6 (as `xz` and
    /// Nix write it; its encoder holds about 94 MiB), zstd at level 3
    /// (a few MiB).
    pub fn new(c: Compression, w: W) -> io::Result<Self> {
        Ok(Compressor(match c {
            Compression::None => CompressorKind::None(w),
            Compression::Xz => CompressorKind::Xz(liblzma::write::XzEncoder::new(w, 6)),
            Compression::Zstd => CompressorKind::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
        }))
    }

    /// [`new`](Self::new), for exactly `size` bytes: zstd sizes its
    /// window and tables to them and records the size in the frame, xz
    /// takes a dictionary no bigger than them, so that a small NAR's
    /// encoder holds kilobytes, not megabytes (a NAR of 8 MiB or more
    /// still costs xz its 94 MiB). Writing another number of bytes makes
    /// zstd's [`finish`](Self::finish) fail.
    ///
    /// ```
    /// use std::io::Write;
    /// use bigtop_store::cache::{Compression, Compressor};
    /// let mut c = Compressor::with_size(Compression::Zstd, Vec::new(), 5)?;
    /// c.write_all(b"hello")?;
    /// assert_eq!(zstd::decode_all(&c.finish()?[..])?, b"hello");
    /// let mut wrong = Compressor::with_size(Compression::Zstd, Vec::new(), 6)?;
    /// wrong.write_all(b"hello")?;
    /// assert!(wrong.finish().is_err());
    ///
    /// let mut c = Compressor::with_size(Compression::Xz, Vec::new(), 5)?;
    /// c.write_all(b"hello")?;
    /// let mut text = Vec::new();
    /// std::io::Read::read_to_end(&mut liblzma::read::XzDecoder::new(&c.finish()?[..]), &mut text)?;
    /// assert_eq!(text, b"hello");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn with_size(c: Compression, w: W, size: u64) -> io::Result<Self> {
        Ok(match c {
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(w, 3)?;
                e.set_pledged_src_size(Some(size))?;
                Compressor(CompressorKind::Zstd(e))
            }
            Compression::Xz => {
                use liblzma::stream::{Check, Filters, LzmaOptions, Stream};
                // Level 6's dictionary is 8 MiB; xz's smallest is 4 KiB.
                let dict = size.clamp(4 << 10, 8 << 20) as u32;
                let stream = LzmaOptions::new_preset(6)
                    .and_then(|mut options| {
                        options.dict_size(dict);
                        let mut filters = Filters::new();
                        filters.lzma2(&options);
                        Stream::new_stream_encoder(&filters, Check::Crc64)
                    })
                    .map_err(io::Error::other)?;
                Compressor(CompressorKind::Xz(liblzma::write::XzEncoder::new_stream(
                    w, stream,
                )))
            }
            Compression::None => Compressor::new(c, w)?,
        })
    }

    /// Writes the end of the compressed stream and gives the writer back.
    /// A stream never finished is not a whole one, and a decompressor
    /// says so.
    pub fn finish(self) -> io::Result<W> {
        match self.0 {
            CompressorKind::None(w) => Ok(w),
            CompressorKind::Xz(e) => e.finish(),
            CompressorKind::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            CompressorKind::None(w) => w.write(buf),
            CompressorKind::Xz(e) => e.write(buf),
            CompressorKind::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            CompressorKind::None(w) => w.flush(),
            CompressorKind::Xz(e) => e.flush(),
            CompressorKind::Zstd(e) => e.flush(),
        }
    }
}

/// How to substitute from a cache.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// The keys whose signatures make a narinfo trusted.
    pub trusted: TrustedKeys,
    /// Whether a narinfo must be signed by one of them (Nix's
    /// `require-sigs`).
    pub require_sigs: bool,
}

impl FetchOptions {
    /// Trusting `keys`, requiring signatures.
    pub fn trusting(keys: TrustedKeys) -> FetchOptions {
        FetchOptions {
            trusted: keys,
            require_sigs: true,
        }
    }
}

/// Substitutes the closures of `roots` from `cache` into `store`: the
/// paths the store lacks, references before referrers. Each narinfo must
/// be about the path asked for and (unless `require_sigs` is off) signed
/// by a trusted key; each NAR is decompressed as it streams into the
/// store's unpacker, which checks its size and hash, and the file's size
/// is checked too. The closure is registered in one batch, whole or not
/// at all.
pub fn fetch(
    store: &Store,
    cache: &dyn BinaryCache,
    roots: &[StorePath],
    options: &FetchOptions,
) -> Result<CopyReport, CacheError> {
    fetch_observed(store, cache, roots, options, &Quiet)
}

/// [`fetch`], telling `observer` how it goes.
pub fn fetch_observed(
    store: &Store,
    cache: &dyn BinaryCache,
    roots: &[StorePath],
    options: &FetchOptions,
    observer: &dyn CopyObserver,
) -> Result<CopyReport, CacheError> {
    let name = cache.describe();
    let info = read_cache_info(cache)?.ok_or_else(|| CacheError::Bad {
        cache: name.clone(),
        reason: "it has no `nix-cache-info`: is it a binary cache?".into(),
    })?;
    if info.store_dir != store.store_dir().as_str() {
        return Err(CacheError::Bad {
            cache: name,
            reason: format!(
                "it holds paths of `{}`, not of this store's `{}`",
                info.store_dir,
                store.store_dir()
            ),
        });
    }
    // Each worker takes a path, asks for its narinfo, queues the
    // references it has not seen, and streams the NAR into a staged tree:
    // looking up the closure and downloading it overlap, many paths at
    // once. Nothing is registered until all are staged (below), so the
    // order they arrive in does not matter. After a failure no new path
    // starts, and every tree staged so far is removed.
    let seen: BTreeSet<StorePath> = roots.iter().cloned().collect();
    let walk = Walk {
        state: std::sync::Mutex::new(WalkState {
            queue: seen.iter().cloned().collect(),
            seen,
            ..WalkState::default()
        }),
        wake: std::sync::Condvar::new(),
    };
    std::thread::scope(|s| {
        for _ in 0..FETCHES_AT_ONCE {
            s.spawn(|| walk.work(store, cache, options, observer));
        }
    });
    let state = walk.state.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = state.failed {
        return Err(e);
    }
    let mut staged = state.staged;
    let mut report = CopyReport {
        present: state.present,
        ..CopyReport::default()
    };
    let infos: BTreeMap<StorePath, NarInfo> = staged
        .iter()
        .map(|(p, (n, _))| (p.clone(), n.clone()))
        .collect();
    let order = references_first(&infos);
    let staged: Vec<(StorePath, Staged)> = order
        .into_iter()
        .map(|p| {
            let (_, s) = staged.remove(&p).expect("staged");
            (p, s)
        })
        .collect();
    let mut batch = store.batch();
    let mut unverified = false;
    for (path, staged) in staged {
        let narinfo = &infos[&path];
        unverified |= staged.info.signatures.is_empty() || staged.info.ca.is_some();
        let (info, tmp) = staged.into_parts();
        batch.add_built(info, tmp);
        report.nar_bytes += narinfo.nar_size;
        report.file_bytes += narinfo.file_size.unwrap_or(narinfo.nar_size);
        report.copied.push(path);
    }
    let whole = |e| CacheError::Store {
        cache: name.clone(),
        path: format!("{} paths", report.copied.len()),
        source: Box::new(e),
    };
    // References no trusted key vouched for are checked against the
    // contents, as an import's are: an undeclared one would let the
    // collector delete a path still in use. So are content addresses.
    if unverified {
        let imported = report.copied.iter().cloned().collect();
        store
            .check_staged_contents(&batch, &imported)
            .map_err(whole)?;
    }
    batch.commit().map_err(whole)?;
    Ok(report)
}

/// How many paths a fetch looks up and streams at once.
const FETCHES_AT_ONCE: usize = 8;

/// The closure walk of a fetch, shared by its workers.
struct Walk {
    state: std::sync::Mutex<WalkState>,
    /// Signalled when a path is queued, or a worker ends its path.
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct WalkState {
    /// Paths to look at.
    queue: Vec<StorePath>,
    /// Every path queued so far.
    seen: BTreeSet<StorePath>,
    /// Paths being worked on.
    busy: usize,
    /// Paths the store had.
    present: usize,
    /// The paths fetched, with their narinfos.
    staged: BTreeMap<StorePath, (NarInfo, Staged)>,
    /// Paths and NAR bytes found missing so far (for the observer).
    planned: (usize, u64),
    failed: Option<CacheError>,
}

impl Walk {
    fn work(
        &self,
        store: &Store,
        cache: &dyn BinaryCache,
        options: &FetchOptions,
        observer: &dyn CopyObserver,
    ) {
        let lock = || self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let path = {
                let mut state = lock();
                loop {
                    if state.failed.is_some() {
                        return;
                    }
                    if let Some(p) = state.queue.pop() {
                        state.busy += 1;
                        break p;
                    }
                    if state.busy == 0 {
                        // Nothing queued and no one who could queue more.
                        self.wake.notify_all();
                        return;
                    }
                    state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            };
            // A panic (in a decoder, an observer) fails the fetch like an
            // error: the other workers must not wait for this one for ever.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.one(store, cache, options, observer, &path)
            }))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(CacheError::Bad {
                    cache: cache.describe(),
                    reason: format!("fetching `{path}` panicked: {what}"),
                })
            });
            let mut state = lock();
            state.busy -= 1;
            match result {
                Ok(None) => state.present += 1,
                Ok(Some((narinfo, staged))) => {
                    observer.copied(&path);
                    state.staged.insert(path, (narinfo, staged));
                }
                Err(e) => {
                    state.failed.get_or_insert(e);
                }
            }
            self.wake.notify_all();
        }
    }

    /// Looks `path` up and fetches it, queueing its references; `None`
    /// when the store has it.
    fn one(
        &self,
        store: &Store,
        cache: &dyn BinaryCache,
        options: &FetchOptions,
        observer: &dyn CopyObserver,
        path: &StorePath,
    ) -> Result<Option<(NarInfo, Staged)>, CacheError> {
        let valid = store.is_valid(path).map_err(|e| CacheError::Store {
            cache: cache.describe(),
            path: path.to_string(),
            source: Box::new(e),
        })?;
        if valid {
            return Ok(None);
        }
        let narinfo = read_narinfo(store.store_dir(), cache, path, options)?;
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut queued = false;
            for r in &narinfo.references {
                if state.seen.insert(r.clone()) {
                    state.queue.push(r.clone());
                    queued = true;
                }
            }
            state.planned.0 += 1;
            state.planned.1 += narinfo.nar_size;
            observer.planned(state.planned.0, state.planned.1);
            if queued {
                self.wake.notify_all();
            }
            // Another path failed meanwhile: the fetch is over, and this
            // one is not downloaded for nothing (the first error is the
            // one reported).
            if state.failed.is_some() {
                return Err(CacheError::Bad {
                    cache: cache.describe(),
                    reason: "stopped".into(),
                });
            }
        }
        let staged = fetch_retrying(store, cache, &narinfo, options, observer)?;
        Ok(Some((narinfo, staged)))
    }
}

/// A NAR unpacked under a temporary name, removed unless taken.
struct Staged {
    info: PathInfo,
    tmp: Option<std::path::PathBuf>,
}

impl Staged {
    fn into_parts(mut self) -> (PathInfo, std::path::PathBuf) {
        let tmp = self.tmp.take().expect("taken once");
        (self.info.clone(), tmp)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = &self.tmp {
            let _ = crate::fs::remove_tree(tmp);
        }
    }
}

/// [`fetch_one`], tried again (from the start: nothing is resumed) when
/// it fails, up to [`TRIES`] times in all: a connection dropped mid-NAR
/// or a stalled server costs a retry, not the whole copy. A path the
/// cache lacks is not retried.
fn fetch_retrying(
    store: &Store,
    cache: &dyn BinaryCache,
    narinfo: &NarInfo,
    options: &FetchOptions,
    observer: &dyn CopyObserver,
) -> Result<Staged, CacheError> {
    let again = |e: &CacheError| match e {
        CacheError::Missing { .. } => false,
        // A local failure (a full disk, the database) would only repeat
        // after another download.
        CacheError::Store { source, .. } => source.worth_fetching_again(),
        _ => true,
    };
    crate::error::retrying(TRIES, again, || {
        fetch_one(store, cache, narinfo, options, observer)
    })
}

/// How often a NAR is fetched before its path fails: as often as the
/// builder fetches one.
pub const TRIES: u32 = crate::build::FETCH_TRIES;

/// `path`'s narinfo from the cache, checked: it exists, parses, is about
/// `path` and is signed as `options` require.
fn read_narinfo(
    store_dir: &bigtop_core::StoreDir,
    cache: &dyn BinaryCache,
    path: &StorePath,
    options: &FetchOptions,
) -> Result<NarInfo, CacheError> {
    let name = cache.describe();
    let file = narinfo_name(path);
    let Some(mut r) = cache.get(&file)? else {
        return Err(CacheError::Missing {
            cache: name,
            path: store_dir.display(path).to_string(),
        });
    };
    let text = read_small(cache, &file, &mut r)?;
    let narinfo = NarInfo::parse(store_dir, &text).map_err(|e| CacheError::Bad {
        cache: name.clone(),
        reason: format!("`{file}`: {e}"),
    })?;
    if narinfo.store_path != *path {
        return Err(CacheError::Bad {
            cache: name,
            reason: format!(
                "`{file}` is about `{}`, not the `{path}` asked for",
                narinfo.store_path
            ),
        });
    }
    // A content address that gives the very path asked for vouches for it
    // as a signature would (as Nix takes such paths unsigned): its
    // contents are checked against it before they are registered.
    if options.require_sigs
        && narinfo.verify(store_dir, &options.trusted).is_err()
        && content_address_of(&narinfo, store_dir).is_none()
    {
        return Err(CacheError::Untrusted {
            cache: name,
            path: store_dir.display(path).to_string(),
            seen: narinfo
                .signatures
                .iter()
                .map(|s| s.name().to_owned())
                .collect(),
            trusted: options
                .trusted
                .iter()
                .map(|k| k.name().to_owned())
                .collect(),
        });
    }
    Ok(narinfo)
}

/// The paths of `infos`, each after those of its references among them
/// (a depth-first walk with its own stack: a chain of many thousand
/// paths must not overflow the thread's).
fn references_first(infos: &BTreeMap<StorePath, NarInfo>) -> Vec<StorePath> {
    let mut out = Vec::with_capacity(infos.len());
    let mut done: BTreeSet<&StorePath> = BTreeSet::new();
    for root in infos.keys() {
        if !done.insert(root) {
            continue;
        }
        // Each entry: a path and its references not yet visited.
        let mut stack = vec![(root, infos[root].references.iter())];
        while let Some((path, refs)) = stack.last_mut() {
            let (path, next) = (*path, refs.next());
            match next {
                Some(r) => {
                    if r != path && infos.contains_key(r) && done.insert(r) {
                        let (r, info) = infos.get_key_value(r).expect("checked");
                        stack.push((r, info.references.iter()));
                    }
                }
                None => {
                    out.push(path.clone());
                    stack.pop();
                }
            }
        }
    }
    out
}

/// What the store records of a path a narinfo describes: only the
/// signatures that a trusted key made over it are kept (the others are
/// not covered by anything the reader checked).
fn path_info_of(
    narinfo: &NarInfo,
    store_dir: &bigtop_core::StoreDir,
    trusted: &TrustedKeys,
) -> PathInfo {
    let mut info = PathInfo::new(
        narinfo.store_path.clone(),
        narinfo.nar_hash,
        narinfo.nar_size,
        narinfo.references.clone(),
    );
    info.deriver = narinfo.deriver.clone();
    // `CA:` is not covered by the signature (Nix's fingerprint is the
    // path, NAR hash and size, and references): it is taken only when it
    // gives the path's very name, and the contents are checked against it
    // before anything is registered.
    info.ca = content_address_of(narinfo, store_dir);
    let fingerprint = narinfo.fingerprint(store_dir);
    info.signatures = narinfo
        .signatures
        .iter()
        .filter(|s| {
            trusted
                .get(s.name())
                .is_some_and(|k| k.verify(fingerprint.as_bytes(), s))
        })
        .cloned()
        .collect();
    info
}

/// The NAR file a narinfo points to, opened: its compression, its name in
/// the cache, and the raw (compressed, unbounded) stream. Refused when the
/// compression is one bigtop does not read or the name leaves the cache.
pub(crate) fn nar_file<'n>(
    cache: &dyn BinaryCache,
    narinfo: &'n NarInfo,
) -> Result<(Compression, &'n str, Box<dyn Read + Send>), CacheError> {
    let bad = |reason: String| CacheError::Bad {
        cache: cache.describe(),
        reason: format!("`{}`: {reason}", narinfo.store_path),
    };
    let compression = match narinfo.compression.as_deref() {
        Some(c) => {
            Compression::parse(c).ok_or_else(|| bad(format!("unknown compression `{c}`")))?
        }
        None => {
            return Err(bad(
                "no `Compression` (bzip2 to Nix), which bigtop does not read".into(),
            ))
        }
    };
    let url = checked_name(&narinfo.url)
        .ok_or_else(|| bad(format!("its URL `{}` leaves the cache", narinfo.url)))?;
    let raw = cache.get(url)?.ok_or_else(|| CacheError::Missing {
        cache: cache.describe(),
        path: url.to_owned(),
    })?;
    Ok((compression, url, raw))
}

/// The most bytes of a NAR's compressed file that are read: one past its
/// claimed size, and never past what a compressed NAR of its signed size
/// could take (`FileSize` is not signed: a cache could claim any). A
/// stream that produces nothing for ever (empty zstd frames, xz padding)
/// or goes on past the NAR therefore ends.
pub(crate) fn compressed_limit(narinfo: &NarInfo) -> u64 {
    // zstd and xz add well under 1% to what does not compress.
    let most = narinfo
        .nar_size
        .saturating_add(narinfo.nar_size / 64)
        .saturating_add(1 << 20);
    narinfo
        .file_size
        .map_or(most, |n| n.saturating_add(1).min(most))
}

/// The narinfo's `CA:`, when it gives the path's very name (its name and
/// references included): a claim the contents can then be checked
/// against. Any other claim is worth nothing.
fn content_address_of(
    narinfo: &NarInfo,
    store_dir: &bigtop_core::StoreDir,
) -> Option<bigtop_core::ContentAddress> {
    let ca = narinfo.ca?;
    let mut info = PathInfo::new(
        narinfo.store_path.clone(),
        narinfo.nar_hash,
        narinfo.nar_size,
        narinfo.references.clone(),
    );
    info.ca = Some(ca);
    crate::export::check_ca_path(store_dir, &info).ok()?;
    Some(ca)
}

/// A reader that counts what passes through it.
struct CountingReader<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Streams one NAR from the cache into a staged tree of `store`, checked
/// (its NAR hash and size while it unpacks, its file's size after): the
/// path's record and where it is staged.
fn fetch_one(
    store: &Store,
    cache: &dyn BinaryCache,
    narinfo: &NarInfo,
    options: &FetchOptions,
    observer: &dyn CopyObserver,
) -> Result<Staged, CacheError> {
    let name = cache.describe();
    let path = &narinfo.store_path;
    let bad = |reason: String| CacheError::Bad {
        cache: name.clone(),
        reason: format!("`{path}`: {reason}"),
    };
    let (compression, url, raw) = nar_file(cache, narinfo)?;
    let limit = compressed_limit(narinfo);
    // The compressed file's hash (`FileHash`) is not checked: every byte
    // unpacked is checked against the NAR hash, which is what the
    // signature covers, so a file that hashes otherwise but unpacks to
    // the right NAR is harmless, and one that does not is refused anyway.
    // Hashing it too would cost a third of a fetch's hashing.
    let mut counted = CountingReader {
        inner: raw.take(limit),
        read: 0,
    };
    let info = path_info_of(narinfo, store.store_dir(), &options.trusted);
    let tmp = {
        // At most one byte more than the NAR claims is ever decompressed:
        // a stream that would expand further is refused, not unpacked.
        let decoder = compression
            .decoder(&mut counted)
            .map_err(|e| bad(format!("cannot decompress: {e}")))?;
        let mut nar = BufReader::new(Counting {
            inner: decoder.take(narinfo.nar_size.saturating_add(1)),
            observer,
        });
        crate::store::add::stage_nar(store, &info, &mut nar).map_err(|e| CacheError::Store {
            cache: name.clone(),
            path: path.to_string(),
            source: Box::new(e),
        })?
    };
    let staged = Staged {
        info,
        tmp: Some(tmp),
    };
    // The rest of the file (a decoder may stop before its end) counts
    // for its hash and size too.
    io::copy(&mut counted, &mut io::sink()).map_err(|source| CacheError::Io {
        cache: name.clone(),
        action: "read",
        file: url.to_owned(),
        source,
    })?;
    if counted.read >= limit {
        return Err(bad(format!(
            "its file has more bytes than a compressed NAR of {} bytes could ({limit})",
            narinfo.nar_size
        )));
    }
    match narinfo.file_size {
        Some(want) if want != counted.read => {
            return Err(bad(format!(
                "its file has {} bytes, not {want}",
                counted.read
            )))
        }
        _ => {}
    }
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bigtop_core::hash::{Hash, HashAlgo};

    /// A path whose digest spells `n` in Nix's base-32 alphabet.
    fn path(n: usize) -> StorePath {
        const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
        let mut digest = [b'0'; 32];
        let mut rest = n;
        for c in digest.iter_mut().rev() {
            *c = ALPHABET[rest % 32];
            rest /= 32;
        }
        let digest = std::str::from_utf8(&digest).expect("ASCII");
        StorePath::from_base_name(&format!("{digest}-p")).expect("a store path")
    }

    #[test]
    fn a_chain_far_deeper_than_the_stack_is_ordered_references_first() {
        // Each path refers to the one before it; a recursive walk from the
        // last would need 100,000 frames.
        let n = 100_000;
        let infos: BTreeMap<StorePath, NarInfo> = (0..n)
            .map(|i| {
                let mut info =
                    NarInfo::new(path(i), "nar/x.nar", Hash::digest(HashAlgo::Sha256, b""), 0);
                info.references = (i > 0).then(|| path(i - 1)).into_iter().collect();
                // A path may name itself; it comes first regardless.
                info.references.insert(path(i));
                (path(i), info)
            })
            .collect();
        let order = references_first(&infos);
        assert_eq!(order, (0..n).map(path).collect::<Vec<_>>());
    }

    #[test]
    fn names_that_could_leave_the_cache_are_refused() {
        for ok in [
            "nar/1abc.nar.zst",
            "x.narinfo",
            "log/abc-hello.drv",
            "a/b_c+d=e",
            "nar/1abc.nar?hash=0xyz",
        ] {
            assert_eq!(checked_name(ok), Some(ok));
        }
        for bad in [
            "",
            "/etc/passwd",
            "nar/../x",
            "nar/./x",
            "nar//x",
            "nar/%2e%2e/x",
            "nar/x?y/../z",
            "nar/x?y%2e",
            "nar/x?y#z",
            "nar/x#y",
            "?hash=x",
            "nar\\x",
            "nar/x\0",
            "nar/ x",
            "https://elsewhere/x",
        ] {
            assert_eq!(checked_name(bad), None, "{bad:?}");
        }
    }
}
