//! A path's narinfo, made from what the store records and signed as it
//! is asked for.
//!
//! Nix's narinfo and fingerprint say the NAR's SHA-256; a bigtop store
//! records BLAKE3. For such a path the SHA-256 is computed once, by
//! dumping the NAR (checked against the recorded hash and size on the
//! way), and kept in memory for the path's recorded hash, a bounded
//! number of paths at a time. Requests for a path whose hash is being
//! computed wait for that one computation, without holding a thread: a
//! fleet asking for a new release at once dumps each path once, not
//! once per machine. At most a set number of NARs are hashed at once,
//! whatever the requests: one who asks for many paths (or cycles through
//! more than are kept, to have them hashed again) gets them one
//! computation slot at a time.
//!
//! A computation runs in a task of its own, not in the request's: it
//! goes on when the client stops waiting (bigtop's waits 60 seconds for
//! an answer to begin, then tries again), and its result is kept, so the
//! next request for the path is answered at once.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use bigtop_core::hash::{Hash, HashAlgo, HashingWriter};
use bigtop_core::narinfo::NarInfo;
use bigtop_core::signing::SecretKey;
use bigtop_core::StorePath;
use bigtop_store::cache::Compression;
use bigtop_store::{PathInfo, Store};
use tokio::sync::Semaphore;

use super::nar::Checked;
use super::route::nar_url;
use super::Error;

/// The recorded hash of a path's NAR and the SHA-256 computed under it;
/// `None` until computed. Locked while computing, asynchronously, so
/// that those waiting for it hold no thread.
type Slot = Arc<tokio::sync::Mutex<Option<(Hash, Hash)>>>;

/// SHA-256s of NARs whose recorded hash is another algorithm's.
#[derive(Debug)]
pub(crate) struct Sha256s {
    slots: Mutex<Slots>,
    capacity: usize,
    /// A permit per NAR being hashed.
    jobs: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct Slots {
    by_path: HashMap<StorePath, Slot>,
    /// Oldest first: the first to go when full.
    order: VecDeque<StorePath>,
}

impl Sha256s {
    /// Keeps at most `capacity` paths' hashes (and those being computed
    /// or waited for), and computes at most `jobs` at once.
    pub(crate) fn new(capacity: usize, jobs: usize) -> Sha256s {
        Sha256s {
            slots: Mutex::new(Slots::default()),
            capacity: capacity.max(1),
            jobs: Arc::new(Semaphore::new(jobs.max(1))),
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
        // Slots being computed or waited for are not dropped: a request
        // for their path meanwhile would compute it again.
        let mut in_use = 0;
        while slots.by_path.len() >= self.capacity && in_use < slots.order.len() {
            let Some(old) = slots.order.pop_front() else {
                break;
            };
            if slots
                .by_path
                .get(&old)
                .is_some_and(|s| Arc::strong_count(s) > 1)
            {
                slots.order.push_back(old);
                in_use += 1;
            } else {
                slots.by_path.remove(&old);
            }
        }
        let slot = Slot::default();
        slots.by_path.insert(path.clone(), slot.clone());
        slots.order.push_back(path.clone());
        slot
    }

    /// The SHA-256 of `info.path`'s NAR: the one kept if it was computed
    /// for the same recorded hash, or else `compute`'s (which blocks; run
    /// on a blocking thread, one of the computation slots taken).
    pub(crate) async fn get(
        &self,
        info: &PathInfo,
        compute: impl FnOnce() -> Result<Hash, Error> + Send + 'static,
    ) -> Result<Hash, Error> {
        let recorded = info.nar_hash;
        if recorded.algo() == HashAlgo::Sha256 {
            return Ok(recorded);
        }
        let slot = self.slot(&info.path);
        let known = move |kept: &Option<(Hash, Hash)>| {
            kept.filter(|(r, _)| *r == recorded)
                .map(|(_, sha256)| sha256)
        };
        if let Some(sha256) = slot.try_lock().ok().and_then(|kept| known(&kept)) {
            return Ok(sha256);
        }
        let jobs = self.jobs.clone();
        let what = format!("{}.narinfo", info.path.digest());
        // A task of its own: dropping the request (its client gave up)
        // neither stops the computation nor loses its result.
        let computing = tokio::spawn({
            let what = what.clone();
            async move {
                // Held while computing: others asking for this path wait
                // for this computation.
                let mut kept = slot.lock().await;
                if let Some(sha256) = known(&kept) {
                    return Ok(sha256);
                }
                // Never closed.
                let _job = jobs.acquire().await;
                let sha256 = tokio::task::spawn_blocking(compute)
                    .await
                    .map_err(|source| Error::Task { what, source })??;
                *kept = Some((recorded, sha256));
                Ok(sha256)
            }
        });
        computing
            .await
            .map_err(|source| Error::Task { what, source })?
    }
}

/// Dumps `info.path`'s NAR to hash it with SHA-256, checking it against
/// the recorded hash and size. Blocks.
pub(crate) fn compute(store: &Store, info: &PathInfo) -> Result<Hash, Error> {
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

/// A SHA-256 that makes `info`'s narinfo as long as the real one does,
/// for `HEAD`, which says the length but computes no hash: the text
/// depends on the hash's value only through its base 32 (52 characters
/// for any SHA-256) and the signature made over it (64 bytes for any),
/// and through whether it is the recorded hash (which brings the store's
/// signatures), which a stand-in is exactly when the real one is.
pub(crate) fn stand_in(info: &PathInfo) -> Hash {
    if info.nar_hash.algo() == HashAlgo::Sha256 {
        info.nar_hash
    } else {
        Hash::digest(HashAlgo::Sha256, b"")
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
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;
    use tokio::task::JoinSet;

    /// A runtime as the server's, with at most `blocking` blocking
    /// threads.
    fn runtime(blocking: usize) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(blocking)
            .enable_time()
            .build()
            .unwrap()
    }

    /// `info`'s SHA-256 as the server asks for it.
    fn get(
        rt: &tokio::runtime::Runtime,
        sha256s: &Sha256s,
        store: &Arc<Store>,
        info: &PathInfo,
    ) -> Result<Hash, Error> {
        let (store, i) = (store.clone(), info.clone());
        rt.block_on(sha256s.get(info, move || compute(&store, &i)))
    }

    /// Info of a path that is not in any store, recorded with BLAKE3.
    fn fake(name: &str) -> PathInfo {
        let path = StorePath::from_base_name(&format!("{}-{name}", "0".repeat(32))).unwrap();
        let hash = Hash::digest(HashAlgo::Blake3, name.as_bytes());
        PathInfo::new(path, hash, 1, BTreeSet::new())
    }

    #[test]
    fn a_sha256_is_computed_once_per_recorded_hash_and_the_cache_stays_bounded() {
        let rt = runtime(4);
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_chroot(tmp.path()).unwrap());
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
        let sha256s = Sha256s::new(2, 2);
        let info = store.path_info(&paths[0]).unwrap().unwrap();
        assert_eq!(info.nar_hash.algo(), HashAlgo::Blake3);
        let want = bigtop_core::nar::hash_path(&store.physical(&paths[0]), HashAlgo::Sha256)
            .unwrap()
            .0;
        assert_eq!(get(&rt, &sha256s, &store, &info).unwrap(), want);
        // Kept: the file is gone, the hash is still known.
        let physical = store.physical(&paths[0]);
        use std::os::unix::fs::PermissionsExt;
        let dir = physical.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_file(&physical).unwrap();
        assert_eq!(get(&rt, &sha256s, &store, &info).unwrap(), want);
        // A recorded hash that differs is not answered from the cache, and
        // a NAR that does not match is refused.
        let mut other = store.path_info(&paths[1]).unwrap().unwrap();
        other.nar_hash = Hash::digest(HashAlgo::Blake3, b"something else");
        assert!(matches!(
            get(&rt, &sha256s, &store, &other),
            Err(Error::Changed { .. })
        ));
        for p in &paths[1..] {
            let info = store.path_info(p).unwrap().unwrap();
            get(&rt, &sha256s, &store, &info).unwrap();
        }
        assert_eq!(sha256s.len(), 2);
        assert!(matches!(
            get(&rt, &sha256s, &store, &info),
            Err(Error::Dump { .. })
        ));
    }

    /// Requests for a path being hashed used to wait on blocking threads:
    /// enough of them took every thread, and lookups for any other path
    /// stalled until the hash was done.
    #[test]
    fn requests_for_a_path_being_hashed_wait_for_it_without_holding_a_thread() {
        // Two blocking threads: the computation takes one; a waiter that
        // held the other would leave none.
        let rt = runtime(2);
        let sha256s = Arc::new(Sha256s::new(16, 4));
        let info = fake("slow");
        let want = Hash::digest(HashAlgo::Sha256, b"the NAR");
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        rt.block_on(async {
            let mut requests = JoinSet::new();
            for _ in 0..8 {
                let (s, info) = (sha256s.clone(), info.clone());
                let (calls, released) = (calls.clone(), released.clone());
                requests.spawn(async move {
                    let compute = move || {
                        calls.fetch_add(1, SeqCst);
                        let _ = released.lock().unwrap().recv();
                        Ok(want)
                    };
                    s.get(&info, compute).await
                });
            }
            // (Waiters that held both threads would leave none for the
            // computation itself.)
            let started = async {
                while calls.load(SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            let started = tokio::time::timeout(Duration::from_secs(10), started).await;
            assert!(started.is_ok(), "the computation never started");
            // The other requests are waiting by now.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let lookup = tokio::task::spawn_blocking(|| "found");
            let lookup = tokio::time::timeout(Duration::from_secs(10), lookup).await;
            assert_eq!(lookup.ok().map(Result::unwrap), Some("found"));
            release.send(()).unwrap();
            while let Some(got) = requests.join_next().await {
                assert_eq!(got.unwrap().unwrap(), want);
            }
        });
        assert_eq!(calls.load(SeqCst), 1);
    }

    #[test]
    fn at_most_the_set_number_of_nars_are_hashed_at_once() {
        let rt = runtime(16);
        let sha256s = Arc::new(Sha256s::new(16, 2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        rt.block_on(async {
            let mut requests = JoinSet::new();
            for i in 0..6 {
                let (s, info) = (sha256s.clone(), fake(&format!("p{i}")));
                let (running, most) = (running.clone(), most.clone());
                requests.spawn(async move {
                    let compute = move || {
                        most.fetch_max(running.fetch_add(1, SeqCst) + 1, SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        running.fetch_sub(1, SeqCst);
                        Ok(Hash::digest(HashAlgo::Sha256, b"nar"))
                    };
                    s.get(&info, compute).await
                });
            }
            while let Some(got) = requests.join_next().await {
                got.unwrap().unwrap();
            }
        });
        assert_eq!(most.load(SeqCst), 2);
    }

    /// bigtop's client gives up on an answer that has not begun in 60
    /// seconds, and tries again: a computation that stopped with the
    /// request would start over on each try, and a NAR that takes
    /// longer to hash would never get its narinfo.
    #[test]
    fn a_hash_goes_on_when_its_request_is_dropped_and_is_kept() {
        let rt = runtime(4);
        let sha256s = Sha256s::new(16, 2);
        let info = fake("big");
        let want = Hash::digest(HashAlgo::Sha256, b"the NAR");
        let calls = Arc::new(AtomicUsize::new(0));
        let compute = |calls: Arc<AtomicUsize>| {
            move || {
                calls.fetch_add(1, SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                Ok(want)
            }
        };
        rt.block_on(async {
            let first = sha256s.get(&info, compute(calls.clone()));
            let gave_up = tokio::time::timeout(Duration::from_millis(50), first).await;
            assert!(gave_up.is_err(), "answered in 50 ms");
            // The retry waits for the computation under way.
            let again = sha256s.get(&info, compute(calls.clone())).await;
            assert_eq!(again.unwrap(), want);
        });
        assert_eq!(calls.load(SeqCst), 1);
    }

    #[test]
    fn a_stand_in_hash_makes_a_narinfo_as_long_as_the_real_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_chroot(tmp.path()).unwrap();
        let lib = store.add_text("lib", b"lib", &BTreeSet::new()).unwrap();
        let app = store
            .add_text("app", b"app", &BTreeSet::from([lib.clone()]))
            .unwrap();
        let mut info = store.path_info(&app).unwrap().unwrap();
        info.deriver =
            Some(StorePath::from_base_name(&format!("{}-app.drv", "1".repeat(32))).unwrap());
        let key = SecretKey::generate("cache.example.org-1").unwrap();
        for key in [None, Some(&key)] {
            for c in [Compression::Zstd, Compression::None] {
                let stand_in = text(&store, &info, stand_in(&info), c, key).len();
                for data in [&b""[..], b"x", b"the NAR"] {
                    let real = Hash::digest(HashAlgo::Sha256, data);
                    assert_eq!(text(&store, &info, real, c, key).len(), stand_in);
                }
            }
        }
    }
}
