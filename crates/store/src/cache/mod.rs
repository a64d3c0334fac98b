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
mod substituter;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, Read, Write};

use bigtop_core::hash::{Hash, HashAlgo, Hasher, HashingWriter};
use bigtop_core::narinfo::NarInfo;
use bigtop_core::signing::{SecretKey, TrustedKeys};
use bigtop_core::StorePath;
use thiserror::Error;

use crate::{PathInfo, Store};

pub use file::FileCache;
pub use http::HttpCache;
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

    fn extension(self) -> &'static str {
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
            Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        })
    }
}

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
    fn put(&self, name: &str, data: &mut dyn Read) -> Result<(), CacheError>;

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
    fn put(&self, name: &str, data: &mut dyn Read) -> Result<(), CacheError> {
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
/// relative, no `..`, no empty or odd components.
fn checked_name(url: &str) -> Option<&str> {
    let ok = !url.is_empty()
        && !url.starts_with('/')
        && url
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(['\0', '\\']));
    ok.then_some(url)
}

/// The narinfo file of `path`.
fn narinfo_name(path: &StorePath) -> String {
    format!("{}.narinfo", path.digest())
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
    let name = cache.describe();
    let store_err = |path: &StorePath, e: crate::Error| CacheError::Store {
        cache: name.clone(),
        path: path.to_string(),
        source: Box::new(e),
    };
    ensure_cache_info(store, cache)?;
    let closure: Vec<StorePath> = store
        .closure(roots)
        .map_err(|e| store_err(&roots[0], e))?
        .into_iter()
        .collect();
    // NARs first, several at once (compressing is the work), each made
    // durable before any narinfo naming one is written.
    let uploaded = in_parallel(&closure, |path| {
        if cache.has(&narinfo_name(path))? {
            return Ok(None);
        }
        let info = store
            .path_info(path)
            .map_err(|e| store_err(path, e))?
            .ok_or_else(|| store_err(path, crate::Error::NotValid { path: path.clone() }))?;
        upload_one(store, cache, &info, options).map(Some)
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
    in_parallel(&narinfos, |(path, text)| {
        cache.put(&narinfo_name(path), &mut text.as_bytes())
    })?;
    cache.flush()?;
    Ok(report)
}

/// How many paths are compressed or sent at once.
const AT_ONCE: usize = 4;

/// `f` of each item, on up to [`AT_ONCE`] threads; the results in the
/// items' order, or the first error.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, CacheError> + Sync,
) -> Result<Vec<R>, CacheError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<std::sync::Mutex<Option<Result<R, CacheError>>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..AT_ONCE.min(items.len()) {
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
            cache.put("nix-cache-info", &mut info.to_text().as_bytes())
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

/// A small text file of the cache, at most 1 MiB.
fn read_small(cache: &dyn BinaryCache, name: &str, r: &mut dyn Read) -> Result<String, CacheError> {
    let mut text = String::new();
    r.take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|source| CacheError::Io {
            cache: cache.describe(),
            action: "read",
            file: name.to_owned(),
            source,
        })?;
    Ok(text)
}

/// Compresses `info.path`'s NAR into the cache; its narinfo's text, the
/// NAR's size and the file's size.
fn upload_one(
    store: &Store,
    cache: &dyn BinaryCache,
    info: &PathInfo,
    options: &UploadOptions,
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
    // cache is its hash.
    let mut tmp = file::TempFile::new().map_err(io("create a temporary file for", "a NAR"))?;
    let file_writer = HashingWriter::new(tmp.file(), HashAlgo::Sha256);
    let (nar_hash, nar_size, file_writer, changed) = {
        let compressor =
            Compressor::new(options.compression, file_writer).map_err(io("compress", "a NAR"))?;
        // Nix's narinfo says the NAR's SHA-256; the store may record it
        // with another algorithm, checked too.
        let nar = HashingWriter::new(compressor, HashAlgo::Sha256);
        let mut recorded = HashingWriter::new(nar, info.nar_hash.algo());
        bigtop_core::nar::dump_path(&store.physical(path), &mut recorded).map_err(|e| {
            CacheError::Store {
                cache: name.clone(),
                path: path.to_string(),
                source: Box::new(crate::Error::from(e)),
            }
        })?;
        let (recorded_hash, _, nar) = recorded.finish();
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
    tmp.rewind().map_err(io("read", "a NAR"))?;
    cache.put(&url, &mut tmp.file())?;
    let mut narinfo = NarInfo::new(path.clone(), url, nar_hash, nar_size);
    narinfo.compression = Some(options.compression.name().to_owned());
    narinfo.file_hash = Some(file_hash);
    narinfo.file_size = Some(file_size);
    narinfo.references = info.references.clone();
    narinfo.deriver = info.deriver.clone();
    // Nix reads only the hash algorithms it knows in `CA:`; bigtop's own
    // content addresses (BLAKE3) are left out, and the path is trusted by
    // its signature instead, as an input-addressed one is.
    narinfo.ca = info.ca.filter(|ca| ca.hash.algo() != HashAlgo::Blake3);
    if let Some(key) = &options.key {
        narinfo.sign(store.store_dir(), key);
    }
    Ok((narinfo.to_text(store.store_dir()), nar_size, file_size))
}

/// A compressing writer of any [`Compression`], finished explicitly.
enum Compressor<W: Write> {
    None(W),
    Xz(liblzma::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    fn new(c: Compression, w: W) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Compressor::None(w),
            // Level 6, as `xz` and Nix use.
            Compression::Xz => Compressor::Xz(liblzma::write::XzEncoder::new(w, 6)),
            Compression::Zstd => Compressor::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(w) => Ok(w),
            Compressor::Xz(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Xz(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Xz(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
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
/// store's unpacker, which checks its size and hash, and its file hash
/// and size are checked too. The closure is registered in one batch, whole
/// or not at all.
pub fn fetch(
    store: &Store,
    cache: &dyn BinaryCache,
    roots: &[StorePath],
    options: &FetchOptions,
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
    let store_err = |path: &StorePath, e: crate::Error| CacheError::Store {
        cache: name.clone(),
        path: path.to_string(),
        source: Box::new(e),
    };
    // Every missing path of the closures, with its narinfo.
    let mut infos: BTreeMap<StorePath, NarInfo> = BTreeMap::new();
    let mut present = BTreeSet::new();
    let mut todo: Vec<StorePath> = roots.to_vec();
    while let Some(path) = todo.pop() {
        if infos.contains_key(&path) || present.contains(&path) {
            continue;
        }
        if store.is_valid(&path).map_err(|e| store_err(&path, e))? {
            present.insert(path);
            continue;
        }
        let narinfo = read_narinfo(store.store_dir(), cache, &path, options)?;
        todo.extend(narinfo.references.iter().filter(|r| **r != path).cloned());
        infos.insert(path, narinfo);
    }
    let mut report = CopyReport {
        present: present.len(),
        ..CopyReport::default()
    };
    // Several NARs stream and unpack at once; the closure is then
    // registered in one batch, whole or not at all, with one database
    // transaction and one or two file-system syncs.
    let order = references_first(&infos);
    let staged = in_parallel(&order, |path| Ok(fetch_one(store, cache, &infos[path])))?;
    let mut batch = store.batch();
    let mut first_error = None;
    for (path, r) in order.into_iter().zip(staged) {
        match r {
            // In the batch even when another failed: dropping the batch
            // removes what it staged.
            Ok((info, tmp)) => {
                batch.add_built(info, tmp);
                let narinfo = &infos[&path];
                report.nar_bytes += narinfo.nar_size;
                report.file_bytes += narinfo.file_size.unwrap_or(narinfo.nar_size);
                report.copied.push(path);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    batch.commit().map_err(|e| CacheError::Store {
        cache: name.clone(),
        path: format!("{} paths", report.copied.len()),
        source: Box::new(e),
    })?;
    Ok(report)
}

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
    if options.require_sigs && narinfo.verify(store_dir, &options.trusted).is_err() {
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

/// The paths of `infos`, each after those of its references among them.
fn references_first(infos: &BTreeMap<StorePath, NarInfo>) -> Vec<StorePath> {
    let mut out = Vec::with_capacity(infos.len());
    let mut done: BTreeSet<&StorePath> = BTreeSet::new();
    fn visit<'a>(
        p: &'a StorePath,
        infos: &'a BTreeMap<StorePath, NarInfo>,
        done: &mut BTreeSet<&'a StorePath>,
        out: &mut Vec<StorePath>,
    ) {
        if !done.insert(p) {
            return;
        }
        for r in &infos[p].references {
            if r != p && infos.contains_key(r) {
                visit(r, infos, done, out);
            }
        }
        out.push(p.clone());
    }
    for p in infos.keys() {
        visit(p, infos, &mut done, &mut out);
    }
    out
}

/// What the store records of a path a narinfo describes.
fn path_info_of(narinfo: &NarInfo) -> PathInfo {
    let mut info = PathInfo::new(
        narinfo.store_path.clone(),
        narinfo.nar_hash,
        narinfo.nar_size,
        narinfo.references.clone(),
    );
    info.deriver = narinfo.deriver.clone();
    // `CA:` is not covered by the signature (Nix's fingerprint is the
    // path, NAR hash and size, and references): a cache could claim any
    // content address, so none is taken from it.
    info.ca = None;
    info.signatures = narinfo.signatures.clone();
    info
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    read: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Streams one NAR from the cache into a staged tree of `store`, checked
/// (its NAR hash and size while it unpacks, its file's hash and size
/// after): the path's record and where it is staged.
fn fetch_one(
    store: &Store,
    cache: &dyn BinaryCache,
    narinfo: &NarInfo,
) -> Result<(PathInfo, std::path::PathBuf), CacheError> {
    let name = cache.describe();
    let path = &narinfo.store_path;
    let bad = |reason: String| CacheError::Bad {
        cache: name.clone(),
        reason: format!("`{path}`: {reason}"),
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
        cache: name.clone(),
        path: url.to_owned(),
    })?;
    let algo = narinfo
        .file_hash
        .as_ref()
        .map_or(HashAlgo::Sha256, Hash::algo);
    // Never more than one byte past the file's claimed size is read.
    let limit = narinfo.file_size.map_or(u64::MAX, |n| n.saturating_add(1));
    let mut counted = HashingReader {
        inner: raw.take(limit),
        hasher: Hasher::new(algo),
        read: 0,
    };
    let info = path_info_of(narinfo);
    let tmp = {
        // At most one byte more than the NAR claims is ever decompressed:
        // a stream that would expand further is refused, not unpacked.
        let decoder = compression
            .decoder(&mut counted)
            .map_err(|e| bad(format!("cannot decompress: {e}")))?;
        let mut nar = BufReader::new(decoder.take(narinfo.nar_size.saturating_add(1)));
        crate::store::add::stage_nar(store, &info, &mut nar).map_err(|e| CacheError::Store {
            cache: name.clone(),
            path: path.to_string(),
            source: Box::new(e),
        })?
    };
    let discard = |e: CacheError| {
        let _ = crate::fs::remove_tree(&tmp);
        e
    };
    // The rest of the file (a decoder may stop before its end) counts
    // for its hash and size too.
    io::copy(&mut counted, &mut io::sink())
        .map_err(|source| CacheError::Io {
            cache: name.clone(),
            action: "read",
            file: url.to_owned(),
            source,
        })
        .map_err(discard)?;
    let file_hash = std::mem::replace(&mut counted.hasher, Hasher::new(algo)).finish();
    if let Some(want) = &narinfo.file_hash {
        if *want != file_hash {
            return Err(discard(bad(format!(
                "its file hashes to {file_hash}, not {want}"
            ))));
        }
    }
    if let Some(want) = narinfo.file_size {
        if want != counted.read {
            return Err(discard(bad(format!(
                "its file has {} bytes, not {want}",
                counted.read
            ))));
        }
    }
    Ok((info, tmp))
}
