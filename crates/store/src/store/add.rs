//! Adding paths, the store's one way to write: staged under a temporary
//! name, canonicalized, made durable, renamed into place, then registered
//! with their references in one transaction. `Store::add_*`, imports,
//! builds and (later) substitutions all write through an [`AddBatch`].
//!
//! Whatever happens to the process, the store never holds a registered
//! path whose files are missing or half-written: files are synced before
//! the rename and the renames are synced before the registration commits.
//! A crash in between leaves unregistered files, which
//! [`verify`](crate::Store::verify) reports and repairs.
//!
//! Adds are batched ([`AddBatch`]): a thousand small paths cost two file
//! system syncs and one database transaction, not a thousand of each.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bigtop_core::content_address::{ContentAddress, ContentAddressMethod};
use bigtop_core::derivation::{Derivation, OutputName};
use bigtop_core::hash::{Hash, HashAlgo, Hasher};
use bigtop_core::{nar, StorePath};
use rusqlite::{params, OptionalExtension};

use crate::db::now;
use crate::error::{io_err, Error};
use crate::fs::{canonicalize, copy_filtered, remove_tree, write_text};
use crate::store::lock::LockSet;
use crate::store::{PathInfo, Store};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A path being added: where it is staged (or its bytes, for texts that
/// are only written once they are known to be missing).
#[derive(Debug)]
struct Pending {
    info: PathInfo,
    contents: Staged,
}

#[derive(Debug)]
enum Staged {
    /// Bytes to write as a single read-only file.
    Text(Vec<u8>),
    /// A tree already written under a temporary name in the store.
    Tree(PathBuf),
    /// A tree a build wrote at its final place, holding its lock: nothing
    /// to move, and not valid until registered.
    InPlace(PathBuf),
}

impl Staged {
    /// What to remove if the batch fails.
    fn scratch(&self) -> Option<&PathBuf> {
        match self {
            Staged::Text(_) => None,
            Staged::Tree(p) | Staged::InPlace(p) => Some(p),
        }
    }
}

/// A set of paths added together: one sync, one transaction.
///
/// Nothing is visible until [`commit`](Self::commit); dropping the batch
/// removes what it staged.
#[derive(Debug)]
#[must_use = "nothing is added until the batch is committed"]
pub struct AddBatch<'s> {
    store: &'s Store,
    pending: Vec<Pending>,
    /// `(drv, output, path)` rows recorded with the registration.
    drv_outputs: Vec<(StorePath, OutputName, StorePath)>,
    /// The derivations added, for the store's plans once committed.
    derivations: Vec<(StorePath, Arc<Derivation>)>,
    /// The output names of derivations added to this batch or looked up
    /// as inputs, so that each is found once.
    output_names: HashMap<StorePath, BTreeSet<OutputName>>,
    /// `(drv, input, outputs)`: inputs not known when `drv` was added,
    /// checked at commit, when the whole batch is known.
    unchecked_inputs: Vec<(StorePath, StorePath, BTreeSet<OutputName>)>,
}

impl Drop for AddBatch<'_> {
    fn drop(&mut self) {
        for p in &self.pending {
            if let Some(tmp) = p.contents.scratch() {
                let _ = remove_tree(tmp);
            }
        }
    }
}

/// A [`BufRead`] that hashes exactly the bytes its consumer consumes, so
/// that a NAR can be unpacked and hashed in one pass, however far ahead
/// the underlying reader buffers.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: BufRead> HashingReader<R> {
    pub(crate) fn new(inner: R, algo: HashAlgo) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(algo),
            count: 0,
        }
    }

    pub(crate) fn finish(self) -> (Hash, u64, R) {
        (self.hasher.finish(), self.count, self.inner)
    }
}

impl<R: BufRead> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for HashingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        if let Ok(buf) = self.inner.fill_buf() {
            self.hasher.update(&buf[..n.min(buf.len())]);
        }
        self.count += n as u64;
        self.inner.consume(n);
    }
}

impl Store {
    /// A new, empty batch of additions.
    pub fn batch(&self) -> AddBatch<'_> {
        AddBatch {
            store: self,
            pending: Vec::new(),
            drv_outputs: Vec::new(),
            derivations: Vec::new(),
            output_names: HashMap::new(),
            unchecked_inputs: Vec::new(),
        }
    }

    /// Adds a text file (builtin builders, `.drv` files) referring to
    /// `references`; returns its path.
    pub fn add_text(
        &self,
        name: &str,
        text: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, Error> {
        let mut b = self.batch();
        let p = b.add_text(name, text, references)?;
        b.commit()?;
        Ok(p)
    }

    /// Adds a file or tree from disk as a source (no references), keeping
    /// what `filter` accepts; returns its path.
    pub fn add_path(
        &self,
        name: &str,
        src: &Path,
        filter: &dyn Fn(&Path) -> bool,
    ) -> Result<StorePath, Error> {
        let mut b = self.batch();
        let p = b.add_path(name, src, filter)?;
        b.commit()?;
        Ok(p)
    }

    /// Adds a path from its NAR, checking it against `info`.
    pub fn add_nar(&self, info: PathInfo, nar: &mut impl BufRead) -> Result<(), Error> {
        let mut b = self.batch();
        b.add_nar(info, nar)?;
        b.commit().map(|_| ())
    }

    /// Adds one derivation (see [`AddBatch::add_derivation`](AddBatch::add_derivation)).
    pub fn add_derivation(&self, drv: &Derivation) -> Result<StorePath, Error> {
        let mut b = self.batch();
        let p = b.add_derivation(drv)?;
        b.commit()?;
        Ok(p)
    }

    /// The owner paths must have, where this process can set it: the
    /// store directory's owner, when running as root.
    pub(crate) fn owner(&self) -> Option<(u32, u32)> {
        *self.owner.get_or_init(|| self.find_owner())
    }

    fn find_owner(&self) -> Option<(u32, u32)> {
        let me = rustix::process::geteuid();
        if !me.is_root() {
            return None;
        }
        let meta = fs::metadata(self.root()).ok()?;
        let owner = (meta.uid(), meta.gid());
        // Files this process creates are its own already.
        (owner != (me.as_raw(), rustix::process::getegid().as_raw())).then_some(owner)
    }

    pub(crate) fn temp_name(&self, name: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root()
            .join(format!(".tmp-{}-{n}-{name}", self.process))
    }
}

impl AddBatch<'_> {
    /// Stages a text file; returns the path it will have.
    pub fn add_text(
        &mut self,
        name: &str,
        text: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, Error> {
        let dir = self.store.store_dir();
        let content = Hash::digest(HashAlgo::Blake3, text);
        let path = dir.make_text_path(name, &content, references)?;
        // The NAR of a single regular file, hashed without building it.
        let mut h = Hasher::new(HashAlgo::Blake3);
        let mut enc = nar::NarEncoder::new(&mut h);
        enc.file(None, false, text.len() as u64, &mut &text[..])
            .map_err(|e| io_err("hash", dir.full(&path))(io::Error::other(e)))?;
        enc.finish()
            .map_err(|e| io_err("hash", dir.full(&path))(io::Error::other(e)))?;
        let nar_size = nar_size_of_file(text.len() as u64);
        let mut info = PathInfo::new(path.clone(), h.finish(), nar_size, references.clone());
        info.ca = Some(ContentAddress::new(ContentAddressMethod::Text, content));
        self.pending.push(Pending {
            info,
            contents: Staged::Text(text.to_vec()),
        });
        Ok(path)
    }

    /// Copies a file or tree from disk (keeping what `filter` accepts, given
    /// paths relative to `src`) and stages it as a source; returns its path.
    pub fn add_path(
        &mut self,
        name: &str,
        src: &Path,
        filter: &dyn Fn(&Path) -> bool,
    ) -> Result<StorePath, Error> {
        bigtop_core::store_path::validate_name(name)?;
        let tmp = self.store.temp_name(name);
        let staged = copy_filtered(src, &tmp, filter)
            .and_then(|()| canonicalize(&tmp, self.store.owner()))
            .and_then(|()| Ok(nar::hash_path(&tmp, HashAlgo::Blake3)?));
        let (nar_hash, nar_size) = match staged {
            Ok(h) => h,
            Err(e) => {
                let _ = remove_tree(&tmp);
                return Err(e);
            }
        };
        let path = self
            .store
            .store_dir()
            .make_source_path(name, &nar_hash, [], false)?;
        let mut info = PathInfo::new(path.clone(), nar_hash, nar_size, BTreeSet::new());
        info.ca = Some(ContentAddress::new(
            ContentAddressMethod::Recursive,
            nar_hash,
        ));
        self.pending.push(Pending {
            info,
            contents: Staged::Tree(tmp),
        });
        Ok(path)
    }

    /// Unpacks a NAR and stages it as `info.path`, checking that it hashes
    /// to `info.nar_hash` and has `info.nar_size` bytes.
    pub fn add_nar(&mut self, info: PathInfo, nar: &mut impl BufRead) -> Result<(), Error> {
        let tmp = stage_nar(self.store, &info, nar)?;
        self.pending.push(Pending {
            info,
            contents: Staged::Tree(tmp),
        });
        Ok(())
    }

    /// Stages a derivation's `.drv` (referring to its input derivations
    /// and sources, as in Nix) and records the paths of its outputs that
    /// are known, so that "outputs of this derivation" is answered from
    /// the database; returns the `.drv` path.
    ///
    /// Every output it needs of an input derivation must exist: inputs in
    /// the store or added earlier to this batch are checked here, the
    /// others (added later to this batch) by [`commit`](Self::commit).
    pub fn add_derivation(&mut self, drv: &Derivation) -> Result<StorePath, Error> {
        let dir = self.store.store_dir().clone();
        let name = format!("{}.drv", drv.name);
        drv.validate().map_err(|source| Error::BadDerivation {
            name: name.clone(),
            source,
        })?;
        let mut later = Vec::new();
        for (input, wanted) in &drv.input_drvs {
            match self.output_names_of(input)? {
                Some(have) => check_input_outputs(
                    || drv.drv_path(&dir).map_or(name.clone(), |p| p.to_string()),
                    input,
                    wanted,
                    have,
                )?,
                None => later.push((input.clone(), wanted.clone())),
            }
        }
        let refs: BTreeSet<StorePath> = drv
            .input_drvs
            .keys()
            .chain(&drv.input_srcs)
            .cloned()
            .collect();
        let path = self.add_text(&name, drv.to_text(&dir).as_bytes(), &refs)?;
        self.output_names
            .insert(path.clone(), drv.outputs.keys().cloned().collect());
        self.unchecked_inputs.extend(
            later
                .into_iter()
                .map(|(input, wanted)| (path.clone(), input, wanted)),
        );
        for out in drv.outputs.keys() {
            if let Some(p) = drv.output_path(&dir, out) {
                self.drv_outputs.push((path.clone(), out.clone(), p));
            }
        }
        let room = crate::store::ADDED_KEPT.saturating_sub(self.derivations.len());
        if room > 0 && self.store.added_len() < room {
            self.derivations.push((path.clone(), Arc::new(drv.clone())));
        }
        Ok(path)
    }

    /// The output names of the derivation `drv`: added to this batch,
    /// kept by the store handle, or read from its `.drv`; `None` if it is
    /// not valid and not (yet) in this batch.
    fn output_names_of(&mut self, drv: &StorePath) -> Result<Option<&BTreeSet<OutputName>>, Error> {
        if !self.output_names.contains_key(drv) {
            let kept = self
                .store
                .added
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(drv)
                .map(|d| d.outputs.keys().cloned().collect());
            let names = match kept {
                Some(names) => names,
                None if self.store.is_valid(drv)? => self
                    .store
                    .read_derivation(drv)?
                    .outputs
                    .into_keys()
                    .collect(),
                None => return Ok(None),
            };
            self.output_names.insert(drv.clone(), names);
        }
        Ok(self.output_names.get(drv))
    }

    /// Checks the inputs [`add_derivation`](Self::add_derivation) could not.
    fn check_later_inputs(&mut self) -> Result<(), Error> {
        for (drv, input, wanted) in std::mem::take(&mut self.unchecked_inputs) {
            // One still unknown is neither valid nor in the batch: the
            // registration refuses the reference to it.
            if let Some(have) = self.output_names_of(&input)? {
                check_input_outputs(|| drv.to_string(), &input, &wanted, have)?;
            }
        }
        Ok(())
    }

    /// Stages a tree a build wrote at `tmp` (in the store's physical root,
    /// so that it can be renamed into place, or at its own physical path,
    /// whose lock the caller holds), already canonicalized and described by
    /// `info`.
    pub(crate) fn add_built(&mut self, info: PathInfo, tmp: PathBuf) {
        let contents = if tmp == self.store.physical(&info.path) {
            Staged::InPlace(tmp)
        } else {
            Staged::Tree(tmp)
        };
        self.pending.push(Pending { info, contents });
    }

    /// Records that `drv` built `output` at `path` (with the registration).
    pub(crate) fn record_output(&mut self, drv: StorePath, output: OutputName, path: StorePath) {
        self.drv_outputs.push((drv, output, path));
    }

    /// The paths staged so far.
    pub fn paths(&self) -> impl Iterator<Item = &StorePath> {
        self.pending.iter().map(|p| &p.info.path)
    }

    /// The staged trees so far, each with what it claims to be: for
    /// checks of their contents before the batch commits.
    pub(crate) fn staged_trees(&self) -> impl Iterator<Item = (&PathInfo, &Path)> {
        self.pending.iter().filter_map(|p| match &p.contents {
            Staged::Tree(tmp) => Some((&p.info, tmp.as_path())),
            Staged::Text(_) | Staged::InPlace(_) => None,
        })
    }

    /// Makes every staged path valid, or none of them.
    pub fn commit(self) -> Result<Vec<StorePath>, Error> {
        self.commit_holding(&mut [])
    }

    /// [`commit`](Self::commit) for paths whose locks the caller already
    /// holds in `held` (builds lock their outputs before they start): the
    /// registration releases those too, in the same transaction.
    pub(crate) fn commit_holding(
        mut self,
        held: &mut [LockSet<'_>],
    ) -> Result<Vec<StorePath>, Error> {
        // Before anything is taken: on error, dropping the batch removes
        // what it staged.
        self.check_later_inputs()?;
        let store = self.store;
        let pending = std::mem::take(&mut self.pending);
        let outputs = std::mem::take(&mut self.drv_outputs);
        let mut newly = BTreeSet::new();
        let result = commit(store, &pending, &outputs, held, &mut newly);
        if result.is_ok() {
            // Plans need what was just made valid; a derivation that was
            // valid already (evaluated again) is either built or read back
            // then, and keeping it would only cost memory.
            let mut kept = std::mem::take(&mut self.derivations);
            kept.retain(|(p, _)| newly.contains(p));
            store.keep_added(kept);
        }
        if result.is_err() {
            for p in &pending {
                if let Some(tmp) = p.contents.scratch() {
                    let _ = remove_tree(tmp);
                }
            }
        }
        result
    }
}

/// Fails unless the input derivation `input`, which has the outputs
/// `have`, has every output in `wanted`; `drv` names the derivation that
/// needs them (computed only for the error).
fn check_input_outputs(
    drv: impl FnOnce() -> String,
    input: &StorePath,
    wanted: &BTreeSet<OutputName>,
    have: &BTreeSet<OutputName>,
) -> Result<(), Error> {
    match wanted.iter().find(|o| !have.contains(*o)) {
        None => Ok(()),
        Some(output) => Err(Error::MissingInputOutput {
            drv: drv(),
            input: input.clone(),
            output: output.clone(),
            have: have
                .iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Unpacks a NAR under a temporary name in the store, checking it against
/// `info` (hash and size) and canonicalizing it; returns the staged tree.
/// Nothing is left behind on error.
pub(crate) fn stage_nar(
    store: &Store,
    info: &PathInfo,
    nar: &mut (impl BufRead + ?Sized),
) -> Result<PathBuf, Error> {
    let tmp = store.temp_name(info.path.name());
    let mut reader = HashingReader::new(nar, info.nar_hash.algo());
    let unpacked = nar::restore(&mut reader, &tmp).map_err(|source| Error::Nar {
        path: info.path.clone(),
        source,
    });
    let (got, size, _) = reader.finish();
    let checked = unpacked.and_then(|()| {
        if got != info.nar_hash {
            Err(Error::HashMismatch {
                path: info.path.clone(),
                expected: info.nar_hash,
                got,
            })
        } else if size != info.nar_size {
            Err(Error::SizeMismatch {
                path: info.path.clone(),
                expected: info.nar_size,
                got: size,
            })
        } else {
            canonicalize(&tmp, store.owner())
        }
    });
    if let Err(e) = checked {
        let _ = remove_tree(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// NAR size of a single regular file of `len` bytes.
fn nar_size_of_file(len: u64) -> u64 {
    // magic, "(", "type", "regular", "contents", length, data, padding, ")"
    let s = |n: u64| 8 + n.div_ceil(8) * 8;
    s(13) + s(1) + s(4) + s(7) + s(8) + 8 + len.div_ceil(8) * 8 + s(1)
}

fn sync_store(store: &Store) -> Result<(), Error> {
    let dir = File::open(store.root()).map_err(io_err("open", store.root()))?;
    rustix::fs::syncfs(&dir).map_err(|e| io_err("sync", store.root())(e.into()))
}

fn commit(
    store: &Store,
    pending: &[Pending],
    drv_outputs: &[(StorePath, OutputName, StorePath)],
    held: &mut [LockSet<'_>],
    newly: &mut BTreeSet<StorePath>,
) -> Result<Vec<StorePath>, Error> {
    if pending.is_empty() {
        for l in held.iter_mut() {
            l.release()?;
        }
        return Ok(Vec::new());
    }
    let mut paths: Vec<&StorePath> = pending.iter().map(|p| &p.info.path).collect();
    // Keep every path of the batch, and everything it refers to, alive
    // before looking at what is valid: the collector then either sees the
    // root or has unregistered the path first, never neither.
    let referenced: BTreeSet<&StorePath> =
        pending.iter().flat_map(|p| &p.info.references).collect();
    paths.sort();
    paths.dedup();
    store.add_temp_roots(paths.iter().copied().chain(referenced.iter().copied()))?;
    // Only what is not valid yet needs a lock: re-adding what is there
    // (derivations evaluated again, say) costs one query, not a lock row
    // taken and released per path.
    let valid_before = store.valid_among(paths.iter().copied())?;
    let mut locks = LockSet::new(store);
    locks.lock_all_beside(
        paths.iter().copied().filter(|p| !valid_before.contains(*p)),
        std::iter::empty(),
        held,
    )?;
    let valid = if valid_before.len() == paths.len() {
        valid_before
    } else {
        store.valid_among(paths.iter().copied())?
    };

    // Write texts in place and collect staged trees, then sync once. A
    // crash before registration leaves only unregistered files behind.
    let owner = store.owner();
    let mut trees: Vec<(&Pending, &PathBuf)> = Vec::new();
    let mut written: Vec<PathBuf> = Vec::new();
    let mut registered: Vec<&PathInfo> = Vec::new();
    let mut seen = BTreeSet::new();
    let placing = (|| {
        for p in pending {
            if valid.contains(&p.info.path) || !seen.insert(&p.info.path) {
                // Already there (or staged twice): the copy is not needed.
                if let Staged::Tree(tmp) = &p.contents {
                    remove_tree(tmp).map_err(io_err("remove", tmp))?;
                }
                continue;
            }
            registered.push(&p.info);
            match &p.contents {
                Staged::Tree(tmp) => trees.push((p, tmp)),
                Staged::InPlace(dest) => written.push(dest.clone()),
                Staged::Text(bytes) => {
                    let dest = store.physical(&p.info.path);
                    written.push(dest.clone());
                    write_text(&dest, bytes, owner)?;
                }
            }
        }
        if registered.is_empty() {
            return record_outputs(store, drv_outputs, &mut locks, held);
        }
        sync_store(store)?;
        if !trees.is_empty() {
            for (p, tmp) in &trees {
                let dest = store.physical(&p.info.path);
                // Left by a crash before registration: not valid, and we hold the lock.
                remove_tree(&dest).map_err(io_err("remove the invalid", &dest))?;
                fs::rename(tmp, &dest).map_err(io_err("rename into", &dest))?;
                written.push(dest);
            }
            sync_store(store)?;
        }
        register(
            store,
            registered.iter().copied(),
            drv_outputs,
            &mut locks,
            held,
        )
    })();
    if placing.is_err() {
        for dest in &written {
            let _ = remove_tree(dest);
        }
    }
    placing?;
    drop(locks);
    newly.extend(registered.iter().map(|i| i.path.clone()));
    Ok(pending.iter().map(|p| p.info.path.clone()).collect())
}

/// Records derivation outputs when every path was valid already, and lets
/// the locks go.
fn record_outputs(
    store: &Store,
    drv_outputs: &[(StorePath, OutputName, StorePath)],
    locks: &mut LockSet<'_>,
    held: &mut [LockSet<'_>],
) -> Result<(), Error> {
    register(store, std::iter::empty(), drv_outputs, locks, held)
}

/// Registers paths whose files are in place, with their references, in
/// one transaction; a reference to a path neither valid nor in the set
/// fails the whole set.
pub(crate) fn register<'a>(
    store: &Store,
    infos: impl Iterator<Item = &'a PathInfo> + Clone,
    drv_outputs: &[(StorePath, OutputName, StorePath)],
    locks: &mut LockSet<'_>,
    held: &mut [LockSet<'_>],
) -> Result<(), Error> {
    let mut conn = store.db();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(store.db_err())?;
    let time = now();
    let mut ids: HashMap<&StorePath, i64> = HashMap::new();
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO ValidPaths (path, nar_hash, nar_size, deriver, registration_time, signatures, ca)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(store.db_err())?;
        for info in infos.clone() {
            let sigs: Vec<String> = info.signatures.iter().map(|s| s.to_string()).collect();
            insert
                .execute(params![
                    info.path.to_string(),
                    info.nar_hash.to_string(),
                    info.nar_size as i64,
                    info.deriver.as_ref().map(|d| d.to_string()),
                    if info.registration_time == 0 {
                        time
                    } else {
                        info.registration_time
                    } as i64,
                    sigs.join(" "),
                    info.ca.map(|c| c.to_string()),
                ])
                .map_err(store.db_err())?;
            ids.insert(&info.path, tx.last_insert_rowid());
        }
        let mut lookup = tx
            .prepare_cached("SELECT id FROM ValidPaths WHERE path = ?1")
            .map_err(store.db_err())?;
        let mut edge = tx
            .prepare_cached("INSERT OR IGNORE INTO Refs (referrer, reference) VALUES (?1, ?2)")
            .map_err(store.db_err())?;
        for info in infos {
            let from = ids[&info.path];
            for r in &info.references {
                let to = match ids.get(r) {
                    Some(&id) => id,
                    None => lookup
                        .query_row([r.to_string()], |row| row.get::<_, i64>(0))
                        .optional()
                        .map_err(store.db_err())?
                        .ok_or_else(|| Error::MissingReference {
                            path: info.path.clone(),
                            reference: r.clone(),
                        })?,
                };
                edge.execute(params![from, to]).map_err(store.db_err())?;
            }
        }
    }
    if !drv_outputs.is_empty() {
        // One statement for the whole set: re-adding derivations that are
        // there already (evaluating again) changes no row and costs no
        // statement per output.
        let mut rows = String::with_capacity(drv_outputs.len() * 120);
        rows.push('[');
        for (i, (drv, output, path)) in drv_outputs.iter().enumerate() {
            if i > 0 {
                rows.push(',');
            }
            use std::fmt::Write as _;
            // Base names and output names hold no character JSON escapes.
            let _ = write!(rows, "[\"{drv}\",\"{}\",\"{path}\"]", output.as_str());
        }
        rows.push(']');
        tx.prepare_cached(
            "INSERT INTO DerivationOutputs (drv, output, path)
             SELECT v.id, j.value ->> 1, j.value ->> 2
             FROM json_each(?1) j JOIN ValidPaths v ON v.path = j.value ->> 0
             WHERE true
             ON CONFLICT (drv, output) DO UPDATE SET path = excluded.path
               WHERE path != excluded.path",
        )
        .and_then(|mut st| st.execute([&rows]))
        .map_err(store.db_err())?;
        // A derivation that is not valid got no row: an error.
        let missing: Option<String> = tx
            .prepare_cached(
                "SELECT j.value ->> 0 FROM json_each(?1) j
                 WHERE NOT EXISTS (SELECT 1 FROM ValidPaths v WHERE v.path = j.value ->> 0)
                 LIMIT 1",
            )
            .and_then(|mut st| st.query_row([&rows], |r| r.get(0)).optional())
            .map_err(store.db_err())?;
        if let Some(drv) = missing {
            let path = drv_outputs
                .iter()
                .map(|(d, _, _)| d)
                .find(|d| d.to_string() == drv)
                .cloned()
                .unwrap_or_else(|| drv_outputs[0].0.clone());
            return Err(Error::NotValid { path });
        }
    }
    // The locks go in the same commit as the paths they protected.
    locks.release_in(&tx)?;
    for l in held.iter() {
        l.release_in(&tx)?;
    }
    tx.commit().map_err(store.db_err())?;
    locks.released();
    for l in held.iter_mut() {
        l.released();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use bigtop_core::content_address::{ContentAddress, ContentAddressMethod};
    use bigtop_core::derivation::{Derivation, DerivationOutput, OutputName};
    use bigtop_core::hash::{Hash, HashAlgo};

    use crate::Store;

    /// What a plan takes from the handle is what it would read from disk.
    #[test]
    fn an_added_derivation_is_kept_as_its_file_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_chroot(tmp.path()).unwrap();
        let dir = store.store_dir().clone();
        let src = store.add_text("src", b"s", &BTreeSet::new()).unwrap();
        let mut fixed = Derivation::new("fixed", "x86_64-linux", "builtin:fetchurl");
        fixed.outputs.insert(
            OutputName::out(),
            DerivationOutput::Fixed(ContentAddress {
                method: ContentAddressMethod::Recursive,
                hash: Hash::digest(HashAlgo::Sha256, b"x"),
            }),
        );
        fixed.env.insert("url".into(), "file:///dev/null".into());
        let mut floating = Derivation::new("floating", "x86_64-linux", "/bin/sh");
        floating.outputs.insert(
            OutputName::out(),
            DerivationOutput::Floating {
                method: ContentAddressMethod::Recursive,
                algo: HashAlgo::Blake3,
            },
        );
        let mut b = store.batch();
        let fixed_drv = b.add_derivation(&fixed).unwrap();
        let floating_drv = b.add_derivation(&floating).unwrap();
        let mut multi = Derivation::new("multi", "x86_64-linux", "/bin/sh");
        multi.args = vec!["-c".into(), "quotes \" and \\ and\nnewlines\t".into()];
        multi.env.insert("k".into(), "v \"q\"".into());
        multi.input_srcs.insert(src);
        multi
            .input_drvs
            .insert(fixed_drv.clone(), BTreeSet::from([OutputName::out()]));
        multi
            .input_drvs
            .insert(floating_drv.clone(), BTreeSet::from([OutputName::out()]));
        for o in ["out", "dev", "doc"] {
            multi
                .outputs
                .insert(OutputName::new(o).unwrap(), DerivationOutput::Deferred);
        }
        let mut plain = Derivation::new("plain", "x86_64-linux", "/bin/sh");
        plain
            .outputs
            .insert(OutputName::out(), DerivationOutput::Deferred);
        plain.fill_output_paths(&dir, |_| None).unwrap();
        let multi_drv = b.add_derivation(&multi).unwrap();
        let plain_drv = b.add_derivation(&plain).unwrap();
        b.commit().unwrap();
        let all = [fixed_drv, floating_drv, multi_drv, plain_drv];
        let taken: BTreeMap<_, _> = all
            .iter()
            .map(|p| (p.clone(), store.take_derivation(p).unwrap()))
            .collect();
        assert_eq!(store.added_len(), 0, "a plan takes what it uses");
        for p in &all {
            assert_eq!(*taken[p], store.read_derivation(p).unwrap(), "{p}");
        }
    }
}
