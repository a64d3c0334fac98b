//! A binary cache as a substituter of the planner and builder.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

use bigtop_core::narinfo::NarInfo;
use bigtop_core::StorePath;

use super::{
    nar_file, path_info_of, read_cache_info, read_narinfo, BinaryCache, CacheError, FetchOptions,
    NarinfoMemo,
};
use crate::build::{Substitutable, Substituter};
use crate::error::Error;
use crate::Store;

/// How many narinfos are looked up at once.
const LOOKUPS_AT_ONCE: usize = 8;

/// A binary cache the planner asks for the paths it would otherwise
/// build: a path is substitutable when the cache has a narinfo for it
/// that is about it and (unless signatures are not required) signed by a
/// trusted key. A cache that cannot be reached, or lacks or cannot vouch
/// for a path, offers nothing, and the path is built: the plan says so.
/// The builder streams the NAR through its decompressor into the store's
/// unpacker, which checks its hash and size.
pub struct CacheSubstituter<C> {
    cache: C,
    name: String,
    options: FetchOptions,
    store_dir: bigtop_core::StoreDir,
    /// What `query` found, for `nar`.
    found: Mutex<HashMap<StorePath, NarInfo>>,
    /// Why the cache could not be used, if it could not (for messages).
    unusable: Mutex<Option<String>>,
    /// Where misses are remembered, if anywhere.
    memo: Option<Arc<NarinfoMemo>>,
    /// Its `nix-cache-info`'s priority, once read and found fit: set, the
    /// cache is usable and its info is not read again.
    priority: Mutex<Option<u32>>,
}

impl<C: BinaryCache> CacheSubstituter<C> {
    /// `cache` as a substituter of `store`, trusting what `options` say.
    pub fn new(store: &Store, cache: C, options: FetchOptions) -> Self {
        CacheSubstituter {
            name: cache.describe(),
            cache,
            options,
            store_dir: store.store_dir().clone(),
            found: Mutex::default(),
            unusable: Mutex::default(),
            memo: None,
            priority: Mutex::default(),
        }
    }

    /// Remembers in `memo` the paths the cache lacks, and does not ask
    /// for them again while the memo remembers.
    pub fn remembering_misses(mut self, memo: Arc<NarinfoMemo>) -> Self {
        self.memo = Some(memo);
        self
    }

    /// The cache's priority (its `nix-cache-info`'s `Priority:`; lower is
    /// asked first), or `None` when it cannot be used.
    pub fn priority(&self) -> Option<u32> {
        if !self.usable() {
            return None;
        }
        *self.priority.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the cache offered nothing, when it could not be used at all (no
    /// `nix-cache-info`, another store dir, unreachable).
    pub fn unusable(&self) -> Option<String> {
        self.unusable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn usable(&self) -> bool {
        let mut why = self.unusable.lock().unwrap_or_else(|e| e.into_inner());
        if why.is_some() {
            return false;
        }
        // Read once: every level of a plan asks again, and over HTTP each
        // read is a round trip.
        if self
            .priority
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return true;
        }
        let problem = match read_cache_info(&self.cache) {
            Ok(Some(info)) if info.store_dir == self.store_dir.as_str() => {
                *self.priority.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.priority);
                return true;
            }
            Ok(Some(info)) => format!(
                "it holds paths of `{}`, not of `{}`",
                info.store_dir, self.store_dir
            ),
            Ok(None) => "it has no `nix-cache-info`".to_owned(),
            Err(e) => e.to_string(),
        };
        *why = Some(problem);
        false
    }
}

impl<C: BinaryCache> Substituter for CacheSubstituter<C> {
    fn name(&self) -> &str {
        &self.name
    }

    fn query(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, Substitutable>, Error> {
        let mut out = BTreeMap::new();
        if !self.usable() {
            return Ok(out);
        }
        // Looked up on a few connections at once: over HTTP each lookup
        // is a round trip. What the cache lacked a moment ago is not
        // asked for again.
        let known_missing: BTreeSet<&StorePath> = match &self.memo {
            Some(memo) => memo.missing(&self.name, paths).into_iter().collect(),
            None => BTreeSet::new(),
        };
        let paths: Vec<&StorePath> = paths
            .iter()
            .filter(|p| !known_missing.contains(p))
            .collect();
        let lookups = std::sync::Mutex::new(Vec::with_capacity(paths.len()));
        let misses = std::sync::Mutex::new(Vec::new());
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..LOOKUPS_AT_ONCE.min(paths.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(p) = paths.get(i) else { break };
                    // Missing, untrusted, malformed or unreadable: not
                    // offered, and built instead.
                    match read_narinfo(&self.store_dir, &self.cache, p, &self.options) {
                        Ok(n) => lookups.lock().unwrap_or_else(|e| e.into_inner()).push(n),
                        Err(CacheError::Missing { .. }) => {
                            misses.lock().unwrap_or_else(|e| e.into_inner()).push(*p)
                        }
                        Err(_) => {}
                    }
                });
            }
        });
        let lookups = lookups.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(memo) = &self.memo {
            let misses = misses.into_inner().unwrap_or_else(|e| e.into_inner());
            let found: Vec<&StorePath> = lookups.iter().map(|n| &n.store_path).collect();
            // A memo that cannot be written only costs round trips later.
            let _ = memo.record(&self.name, &misses, &found);
        }
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        for narinfo in lookups {
            let p = narinfo.store_path.clone();
            let info = path_info_of(&narinfo, &self.store_dir, &self.options.trusted);
            let download_size = narinfo.file_size.unwrap_or(narinfo.nar_size);
            found.insert(p.clone(), narinfo);
            out.insert(
                p,
                Substitutable {
                    // A content address that gives the path is checked
                    // against the contents before the path is registered.
                    vouched: !info.signatures.is_empty() || info.ca.is_some(),
                    info,
                    download_size,
                },
            );
        }
        Ok(out)
    }

    fn nar(&self, path: &StorePath) -> Result<Box<dyn BufRead + Send + '_>, Error> {
        let narinfo = self
            .found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
            .ok_or_else(|| Error::NotValid { path: path.clone() })?;
        // The store's error knows nothing of caches (they are built on
        // it): what went wrong is said in words, the cache named.
        let bad = |reason: String| Error::BadMetadata {
            path: path.to_string(),
            reason: format!("from cache `{}`: {reason}", self.name),
        };
        let (compression, _, raw) =
            nar_file(&self.cache, &narinfo).map_err(|e| bad(e.to_string()))?;
        // A stream that would never end (or never produce) is cut where
        // no honest compressed NAR of the signed size reaches.
        let decoder = compression
            .decoder(raw.take(super::compressed_limit(&narinfo)))
            .map_err(|e| bad(format!("cannot decompress: {e}")))?;
        // At most one byte past what the NAR claims is decompressed.
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            decoder.take(narinfo.nar_size.saturating_add(1)),
        )))
    }
}
