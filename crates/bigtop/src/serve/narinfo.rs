//! A path's narinfo, made from what the store records and signed as it
//! is asked for.
//!
//! Nix's narinfo and fingerprint say the NAR's SHA-256; a bigtop store
//! records BLAKE3. For such a path the SHA-256 is computed once, by
//! dumping the NAR (checked against the recorded hash and size on the
//! way), and kept in memory for the path's recorded hash, a bounded
//! number of paths at a time. Requests for a path whose hash is being
//! computed wait for that one computation: a fleet asking for a new
//! release at once dumps each path once, not once per machine.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use bigtop_core::hash::{Hash, HashAlgo, HashingWriter};
use bigtop_core::narinfo::NarInfo;
use bigtop_core::signing::SecretKey;
use bigtop_core::StorePath;
use bigtop_store::cache::Compression;
use bigtop_store::{PathInfo, Store};

use super::nar::Checked;
use super::route::nar_url;
use super::Error;

/// The SHA-256 of a path's NAR, for the recorded hash it was computed
/// under; `None` until computed.
type Slot = Arc<Mutex<Option<(Hash, Hash)>>>;

/// SHA-256s of NARs whose recorded hash is another algorithm's.
#[derive(Debug)]
pub(crate) struct Sha256s {
    slots: Mutex<Slots>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Slots {
    by_path: HashMap<StorePath, Slot>,
    /// Oldest first: the first to go when full.
    order: VecDeque<StorePath>,
}

impl Sha256s {
    /// Keeps at most `capacity` paths' hashes.
    pub(crate) fn new(capacity: usize) -> Sha256s {
        Sha256s {
            slots: Mutex::new(Slots::default()),
            capacity: capacity.max(1),
        }
    }

    /// How many paths' hashes are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_path
            .len()
    }

    fn slot(&self, path: &StorePath) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.by_path.get(path) {
            return slot.clone();
        }
        while slots.by_path.len() >= self.capacity {
            let Some(old) = slots.order.pop_front() else {
                break;
            };
            slots.by_path.remove(&old);
        }
        let slot = Slot::default();
        slots.by_path.insert(path.clone(), slot.clone());
        slots.order.push_back(path.clone());
        slot
    }

    /// The SHA-256 of `info.path`'s NAR. Blocks: dumps the NAR unless it
    /// was computed before for the same recorded hash.
    pub(crate) fn get(&self, store: &Store, info: &PathInfo) -> Result<Hash, Error> {
        if info.nar_hash.algo() == HashAlgo::Sha256 {
            return Ok(info.nar_hash);
        }
        let slot = self.slot(&info.path);
        // Held while computing: others asking for this path wait for it.
        let mut kept = slot.lock().unwrap_or_else(PoisonError::into_inner);
        match *kept {
            Some((recorded, sha256)) if recorded == info.nar_hash => Ok(sha256),
            _ => {
                let sha256 = compute(store, info)?;
                *kept = Some((info.nar_hash, sha256));
                Ok(sha256)
            }
        }
    }
}

/// Dumps `info.path`'s NAR to hash it with SHA-256, checking it against
/// the recorded hash and size.
fn compute(store: &Store, info: &PathInfo) -> Result<Hash, Error> {
    let path = &info.path;
    let sha256 = HashingWriter::new(io::sink(), HashAlgo::Sha256);
    let mut checked = Checked::new(sha256, info.nar_hash.algo(), info.nar_size);
    let dumped = bigtop_core::nar::dump_path(&store.physical(path), &mut checked);
    let over = checked.over;
    let (recorded, size, sha256) = checked.finish();
    match dumped {
        Err(_) if over => Err(Error::Changed { path: path.clone() }),
        Err(source) => Err(Error::Dump {
            path: path.clone(),
            source: Box::new(source),
        }),
        Ok(_) if recorded != info.nar_hash || size != info.nar_size => {
            Err(Error::Changed { path: path.clone() })
        }
        Ok(_) => Ok(sha256.finish().0),
    }
}

/// The narinfo text of `info`, its NAR hash given as `sha256`, its NAR
/// named for `compression`, signed with `key` if given.
pub(crate) fn text(
    store: &Store,
    info: &PathInfo,
    sha256: Hash,
    compression: Compression,
    key: Option<&SecretKey>,
) -> String {
    let dir = store.store_dir();
    let url = nar_url(info.path.digest(), &info.nar_hash, compression);
    let mut narinfo = NarInfo::new(info.path.clone(), url, sha256, info.nar_size);
    narinfo.compression = Some(compression.name().to_owned());
    narinfo.references = info.references.clone();
    narinfo.deriver = info.deriver.clone();
    // Nix reads only the hash algorithms it knows in `CA:` (as upload
    // writes it).
    narinfo.ca = info.ca.filter(|ca| ca.hash.algo() != HashAlgo::Blake3);
    // Signatures the store holds were made over the fingerprint with the
    // recorded hash: they stand for this narinfo only when that is the
    // SHA-256 it says.
    if info.nar_hash == sha256 {
        narinfo.signatures = info.signatures.clone();
    }
    if let Some(key) = key {
        narinfo.sign(dir, key);
    }
    narinfo.to_text(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_sha256_is_computed_once_per_recorded_hash_and_the_cache_stays_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_chroot(tmp.path()).unwrap();
        let paths: Vec<_> = (0..3)
            .map(|i| {
                store
                    .add_text(
                        &format!("f{i}"),
                        format!("file {i}").as_bytes(),
                        &BTreeSet::new(),
                    )
                    .unwrap()
            })
            .collect();
        let sha256s = Sha256s::new(2);
        let info = store.path_info(&paths[0]).unwrap().unwrap();
        assert_eq!(info.nar_hash.algo(), HashAlgo::Blake3);
        let want = bigtop_core::nar::hash_path(&store.physical(&paths[0]), HashAlgo::Sha256)
            .unwrap()
            .0;
        assert_eq!(sha256s.get(&store, &info).unwrap(), want);
        // Kept: the file is gone, the hash is still known.
        let physical = store.physical(&paths[0]);
        use std::os::unix::fs::PermissionsExt;
        let dir = physical.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_file(&physical).unwrap();
        assert_eq!(sha256s.get(&store, &info).unwrap(), want);
        // A recorded hash that differs is not answered from the cache, and
        // a NAR that does not match is refused.
        let mut other = store.path_info(&paths[1]).unwrap().unwrap();
        other.nar_hash = Hash::digest(HashAlgo::Blake3, b"something else");
        assert!(matches!(
            sha256s.get(&store, &other),
            Err(Error::Changed { .. })
        ));
        for p in &paths[1..] {
            let info = store.path_info(p).unwrap().unwrap();
            sha256s.get(&store, &info).unwrap();
        }
        assert_eq!(sha256s.len(), 2);
        assert!(matches!(
            sha256s.get(&store, &info),
            Err(Error::Dump { .. })
        ));
    }
}
