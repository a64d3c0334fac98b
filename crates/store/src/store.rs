//! The store handle: layout, opening, queries and temporary roots, and
//! what every operation builds on: the write transaction ([`add`]), the
//! per-path locks ([`lock`]) and the clean-up of dead handles' leftovers.
//!
//! Operations (`gc`, `verify`, `export`, the builder) are files beside this
//! one that use it and the helpers (`fs`, `db`), never each other: import
//! writes through an [`add::AddBatch`] as the builder does, rather than
//! through another operation.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bigtop_core::derivation::{Derivation, OutputName};
use bigtop_core::signing::Signature;
use bigtop_core::{ContentAddress, Hash, StoreDir, StorePath, StorePathDigest};
use rusqlite::{params, Connection, OptionalExtension};

pub mod add;
mod leftovers;
pub mod lock;

use crate::db::{self, json_array};
use crate::error::{io_err, Error};
use crate::fs::lexically_normal;

/// Everything the store records about a valid path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PathInfo {
    /// The path.
    pub path: StorePath,
    /// Hash of its NAR.
    pub nar_hash: Hash,
    /// Size of its NAR in bytes.
    pub nar_size: u64,
    /// The paths it refers to (itself included, if it does).
    pub references: BTreeSet<StorePath>,
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// When it was registered, in seconds since the Unix epoch.
    pub registration_time: u64,
    /// Signatures over its fingerprint.
    #[serde(serialize_with = "as_texts")]
    pub signatures: Vec<Signature>,
    /// Its content address, if it is content-addressed.
    pub ca: Option<ContentAddress>,
}

fn as_texts<S: serde::Serializer>(sigs: &[Signature], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(sigs.iter().map(|sig| sig.to_string()))
}

impl PathInfo {
    /// Info for a path about to be added: no deriver, signatures or
    /// content address, registered now.
    pub fn new(
        path: StorePath,
        nar_hash: Hash,
        nar_size: u64,
        references: BTreeSet<StorePath>,
    ) -> Self {
        PathInfo {
            path,
            nar_hash,
            nar_size,
            references,
            deriver: None,
            registration_time: 0,
            signatures: Vec::new(),
            ca: None,
        }
    }
}

/// A derivation's recorded outputs: name → (path, whether it is valid).
pub type RecordedOutputs = BTreeMap<OutputName, (StorePath, bool)>;

/// Builds a [`Store`] with non-default settings.
#[derive(Debug, Clone)]
pub struct StoreBuilder {
    dir: StoreDir,
    root: Option<PathBuf>,
    state: Option<PathBuf>,
}

impl StoreBuilder {
    /// The logical store dir. Default: `/bigtop/store`.
    pub fn store_dir(mut self, dir: StoreDir) -> Self {
        self.dir = dir;
        self
    }

    /// Where the store's paths physically live. Default: the logical dir.
    pub fn physical_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// Where the database, roots, locks and logs live. Default: `var`
    /// beside the physical store dir (`/bigtop/var` for `/bigtop/store`).
    pub fn state_dir(mut self, state: impl Into<PathBuf>) -> Self {
        self.state = Some(state.into());
        self
    }

    /// A chroot store: the logical dir appears under `base` (e.g.
    /// `base/bigtop/store`), with its state in `base/bigtop/var`.
    pub fn chroot(mut self, base: impl AsRef<Path>) -> Self {
        let root = base
            .as_ref()
            .join(self.dir.as_str().trim_start_matches('/'));
        self.state = Some(root.with_file_name("var"));
        self.root = Some(root);
        self
    }

    /// Opens the store, creating it if it does not exist.
    pub fn open(self) -> Result<Store, Error> {
        // Absolute from here on: builders run in other directories and the
        // sandbox mounts these paths, so a relative root would point
        // elsewhere (or nowhere) once a build starts.
        let absolute = |p: PathBuf| std::path::absolute(&p).map_err(io_err("resolve", &p));
        let root = absolute(self.root.unwrap_or_else(|| self.dir.as_path().to_owned()))?;
        let state = match self.state {
            Some(s) => absolute(s)?,
            None => root.with_file_name("var"),
        };
        for d in [
            &root,
            &state.join("db"),
            &state.join("gcroots/auto"),
            &state.join("logs"),
        ] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        let db_file = state.join("db/db.sqlite");
        let mut conn = db::open(&db_file, &self.dir)?;
        let (process, alive) = crate::liveness::register(&mut conn, &state, |source| Error::Db {
            path: db_file.clone(),
            source,
        })?;
        Ok(Store {
            dir: self.dir,
            root,
            state,
            db_file,
            conn: Mutex::new(conn),
            added: Mutex::new(HashMap::new()),
            owner: std::sync::OnceLock::new(),
            process,
            alive: Some(alive),
        })
    }
}

/// A local store: paths on disk plus their metadata.
///
/// Safe to share between threads, and to use from many processes at once.
#[derive(Debug)]
pub struct Store {
    dir: StoreDir,
    root: PathBuf,
    state: PathBuf,
    db_file: PathBuf,
    conn: Mutex<Connection>,
    /// This handle's row in `Processes`, which owns its temporary roots and
    /// locks, and names its scratch files; unique for the store's life.
    pub(crate) process: i64,
    /// The lock that tells others this handle is alive.
    alive: Option<crate::liveness::Alive>,
    /// Derivations this handle added and no plan has read yet: planning
    /// what was just added (what a fleet program does) need not read and
    /// parse every `.drv` back. A `.drv`'s contents never change, so an
    /// entry cannot go stale; it is only used for a path found valid.
    pub(crate) added: Mutex<HashMap<StorePath, Arc<Derivation>>>,
    /// Who must own the store's files, when not this process (asked once).
    pub(crate) owner: std::sync::OnceLock<Option<(u32, u32)>>,
}

/// At most this many derivations wait in [`Store::added`]: past it, plans
/// read the rest from disk.
pub(crate) const ADDED_KEPT: usize = 100_000;

impl Drop for Store {
    fn drop(&mut self) {
        // Temporary roots live as long as the handle; a crash leaves the
        // row behind, and the next cleaner drops it once the lock is free.
        if let (Ok(conn), Some(alive)) = (self.conn.get_mut(), self.alive.take()) {
            crate::liveness::unregister(conn, &self.state, self.process, alive);
        }
    }
}

impl Store {
    /// A builder, for chroot stores and other settings.
    pub fn builder() -> StoreBuilder {
        StoreBuilder {
            dir: StoreDir::default(),
            root: None,
            state: None,
        }
    }

    /// Opens (creating if needed) a chroot store under `base` with the
    /// default logical store dir.
    pub fn open_chroot(base: impl AsRef<Path>) -> Result<Store, Error> {
        Store::builder().chroot(base).open()
    }

    /// The logical store dir.
    pub fn store_dir(&self) -> &StoreDir {
        &self.dir
    }

    /// The physical store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Where `path` lives on disk.
    pub fn physical(&self, path: &StorePath) -> PathBuf {
        self.root.join(path.to_string())
    }

    /// Parses a path given by a user: a bare base name (`<digest>-<name>`),
    /// or a full logical path or physical path of this store. A path
    /// inside a store path (`<store>/<digest>-<name>/bin/tool`) names that
    /// store path.
    ///
    /// `.` and `..` are applied first, lexically, as a shell's `cd` does:
    /// `<store>/A/../B` names `B`, the path it spells, never `A`; a path
    /// that leads out of the store dir, or to the dir itself, names no
    /// store path. Looks at nothing on disk.
    pub fn parse_user_path(&self, s: &str) -> Result<StorePath, Error> {
        let trimmed = s.trim_end_matches('/');
        if !trimmed.is_empty() && !trimmed.contains('/') {
            return Ok(StorePath::from_base_name(trimmed)?);
        }
        let normal = lexically_normal(Path::new(s));
        // The root is absolute but may hold `..` (`--store ../s`).
        for dir in [self.dir.as_path(), &lexically_normal(&self.root)] {
            let first = normal
                .strip_prefix(dir)
                .ok()
                .and_then(|rest| rest.components().next());
            if let Some(std::path::Component::Normal(base)) = first {
                // Not UTF-8 cannot be a base name; the lossy form says why.
                return Ok(StorePath::from_base_name(&base.to_string_lossy())?);
            }
        }
        Err(bigtop_core::store_path::ParseError::NotInStore {
            input: s.to_owned(),
            store_dir: self.dir.to_string(),
        }
        .into())
    }

    /// [`parse_user_path`](Self::parse_user_path), for a path given on a
    /// command line: a relative path is also taken from the current
    /// directory, and a symlink outside the store whose links lead into
    /// it (at its logical or physical path) names the store path they
    /// lead to. That is how an out-link of a chroot store is read: it
    /// points at the logical path (`/bigtop/store/…`), which exists only
    /// inside builds, and is mapped through the store instead of followed
    /// on the host. A bare base name is always taken as one.
    pub fn resolve_user_path(&self, s: &str) -> Result<StorePath, Error> {
        /// Links followed at most, as the collector follows roots.
        const MAX_LINKS: usize = 8;
        let parsed = self.parse_user_path(s);
        if parsed.is_ok() || s.is_empty() {
            return parsed;
        }
        let Ok(mut at) = std::path::absolute(s) else {
            return parsed;
        };
        let in_store = |p: &Path| p.to_str().and_then(|t| self.parse_user_path(t).ok());
        if let Some(p) = in_store(&at) {
            return Ok(p);
        }
        let mut followed = false;
        for _ in 0..MAX_LINKS {
            let Ok(target) = fs::read_link(&at) else {
                break;
            };
            followed = true;
            // Relative to the link's directory; absolute stays as it is.
            at = at
                .parent()
                .map_or_else(|| target.clone(), |dir| dir.join(&target));
            if let Some(p) = in_store(&at) {
                return Ok(p);
            }
        }
        if followed {
            return Err(Error::LinkOutsideStore {
                link: PathBuf::from(s),
                target: lexically_normal(&at),
                store_dir: self.dir.to_string(),
            });
        }
        parsed
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: every
        // write is a transaction that SQLite rolls back if unfinished.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection, with commits that are not made durable until the
    /// guard drops: for rows that mean something only while this process
    /// lives (locks, temporary roots), which a crash ends anyway. In WAL
    /// mode the database stays consistent, and the next durable commit
    /// syncs these frames too; what is saved is an fsync per lock.
    pub(crate) fn volatile_db(&self) -> VolatileDb<'_> {
        let conn = self.db();
        // Failing to relax only costs the fsync.
        let _ = conn.execute_batch("PRAGMA synchronous = NORMAL");
        VolatileDb(conn)
    }

    pub(crate) fn db_err(&self) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        move |source| Error::Db {
            path: self.db_file.clone(),
            source,
        }
    }

    /// Whether `path` is registered.
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, Error> {
        let conn = self.db();
        let mut stmt = conn
            .prepare_cached("SELECT 1 FROM ValidPaths WHERE path = ?1")
            .map_err(self.db_err())?;
        stmt.exists([path.to_string()]).map_err(self.db_err())
    }

    /// The valid path whose digest is `digest`, if there is one: how a
    /// binary cache's `<digest>.narinfo` names a path (Nix's
    /// `queryPathFromHashPart`).
    pub fn valid_path_with_digest(
        &self,
        digest: &StorePathDigest,
    ) -> Result<Option<StorePath>, Error> {
        // Base names are `<digest>-<name>`, and `.` follows `-` in ASCII:
        // the range is that digest's paths, found through the index.
        let (from, to) = (format!("{digest}-"), format!("{digest}."));
        let conn = self.db();
        let name: Option<String> = conn
            .prepare_cached(
                "SELECT path FROM ValidPaths WHERE path > ?1 AND path < ?2 ORDER BY path LIMIT 1",
            )
            .and_then(|mut s| s.query_row([from, to], |r| r.get(0)).optional())
            .map_err(self.db_err())?;
        name.map(|n| {
            StorePath::from_base_name(&n).map_err(|e| Error::BadMetadata {
                path: n.clone(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// What the store records about `path`, or `None` if it is not valid.
    pub fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, Error> {
        let conn = self.db();
        type Row = (
            i64,
            String,
            i64,
            Option<String>,
            i64,
            String,
            Option<String>,
        );
        let row: Option<Row> = conn
            .prepare_cached(
                "SELECT id, nar_hash, nar_size, deriver, registration_time, signatures, ca
                 FROM ValidPaths WHERE path = ?1",
            )
            .and_then(|mut s| {
                s.query_row([path.to_string()], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })
                .optional()
            })
            .map_err(self.db_err())?;
        let Some((id, nar_hash, nar_size, deriver, time, sigs, ca)) = row else {
            return Ok(None);
        };
        let bad = |reason: String| Error::BadMetadata {
            path: path.to_string(),
            reason,
        };
        let references = self.references_of(&conn, id)?;
        Ok(Some(PathInfo {
            path: path.clone(),
            nar_hash: nar_hash
                .parse()
                .map_err(|e| bad(format!("NAR hash: {e}")))?,
            nar_size: nar_size as u64,
            references,
            deriver: deriver
                .map(|d| StorePath::from_base_name(&d))
                .transpose()
                .map_err(|e| bad(format!("deriver: {e}")))?,
            registration_time: time as u64,
            signatures: sigs
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("signature: {e}")))?,
            ca: ca
                .map(|c| c.parse())
                .transpose()
                .map_err(|e| bad(format!("content address: {e}")))?,
        }))
    }

    fn references_of(&self, conn: &Connection, id: i64) -> Result<BTreeSet<StorePath>, Error> {
        let mut stmt = conn
            .prepare_cached("SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference WHERE r.referrer = ?1")
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map([id], |r| r.get::<_, String>(0))
            .map_err(self.db_err())?;
        parse_paths(rows, self)
    }

    fn id_of(&self, conn: &Connection, path: &StorePath) -> Result<i64, Error> {
        conn.prepare_cached("SELECT id FROM ValidPaths WHERE path = ?1")
            .and_then(|mut s| s.query_row([path.to_string()], |r| r.get(0)).optional())
            .map_err(self.db_err())?
            .ok_or_else(|| Error::NotValid { path: path.clone() })
    }

    /// The paths `path` refers to.
    pub fn references(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, Error> {
        let conn = self.db();
        let id = self.id_of(&conn, path)?;
        self.references_of(&conn, id)
    }

    /// The valid paths that refer to `path`.
    pub fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, Error> {
        let conn = self.db();
        let id = self.id_of(&conn, path)?;
        let mut stmt = conn
            .prepare_cached("SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.referrer WHERE r.reference = ?1")
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map([id], |r| r.get::<_, String>(0))
            .map_err(self.db_err())?;
        parse_paths(rows, self)
    }

    /// Walks the reference graph in SQLite (a recursive query), from
    /// `roots` forward (`referrer → reference`) or backward.
    fn walk<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a StorePath>,
        forward: bool,
    ) -> Result<BTreeSet<StorePath>, Error> {
        let conn = self.db();
        let ids = roots
            .into_iter()
            .map(|p| self.id_of(&conn, p))
            .collect::<Result<Vec<_>, _>>()?;
        let (from, to) = if forward {
            ("referrer", "reference")
        } else {
            ("reference", "referrer")
        };
        let sql = format!(
            "WITH RECURSIVE walk(id) AS (
                 SELECT value FROM json_each(?1)
                 UNION SELECT r.{to} FROM Refs r JOIN walk ON r.{from} = walk.id
             )
             SELECT v.path FROM walk JOIN ValidPaths v ON v.id = walk.id"
        );
        let ids_json = format!(
            "[{}]",
            ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(self.db_err())?;
        let rows = stmt
            .query_map([ids_json], |r| r.get::<_, String>(0))
            .map_err(self.db_err())?;
        parse_paths(rows, self)
    }

    /// The closure of `roots`: them and everything they refer to, transitively.
    pub fn closure<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<BTreeSet<StorePath>, Error> {
        self.walk(roots, true)
    }

    /// The reverse closure: `roots` and every path that refers to them,
    /// transitively.
    pub fn reverse_closure<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<BTreeSet<StorePath>, Error> {
        self.walk(roots, false)
    }

    /// Total NAR size of the closure of `roots`.
    pub fn closure_size<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<u64, Error> {
        let closure: Vec<String> = self.closure(roots)?.iter().map(|p| p.to_string()).collect();
        let conn = self.db();
        let mut stmt = conn
            .prepare_cached("SELECT sum(nar_size) FROM ValidPaths WHERE path IN (SELECT value FROM json_each(?1))")
            .map_err(self.db_err())?;
        let json = json_array(&closure);
        let sum: Option<i64> = stmt
            .query_row([json], |r| r.get(0))
            .map_err(self.db_err())?;
        Ok(sum.unwrap_or(0) as u64)
    }

    /// A shortest chain of references from `from` to `to` (both included),
    /// or `None` if `from` does not depend on `to`. Ties go to the smaller
    /// path, so the answer is stable.
    pub fn why_depends(
        &self,
        from: &StorePath,
        to: &StorePath,
    ) -> Result<Option<Vec<StorePath>>, Error> {
        let conn = self.db();
        let start = self.id_of(&conn, from)?;
        let goal = self.id_of(&conn, to)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.reference FROM Refs r JOIN ValidPaths v ON v.id = r.reference
                 WHERE r.referrer = ?1 ORDER BY v.path",
            )
            .map_err(self.db_err())?;
        let mut parent: HashMap<i64, i64> = HashMap::from([(start, start)]);
        let mut queue = VecDeque::from([start]);
        while let Some(id) = queue.pop_front() {
            if id == goal {
                break;
            }
            let next: Vec<i64> = stmt
                .query_map([id], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(self.db_err())?;
            for n in next {
                if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(n) {
                    e.insert(id);
                    queue.push_back(n);
                }
            }
        }
        if !parent.contains_key(&goal) {
            return Ok(None);
        }
        let mut chain = vec![goal];
        while let Some(&p) = chain.last().and_then(|c| parent.get(c)) {
            if p == *chain.last().expect("non-empty") {
                break;
            }
            chain.push(p);
        }
        chain.reverse();
        let mut by_id = conn
            .prepare_cached("SELECT path FROM ValidPaths WHERE id = ?1")
            .map_err(self.db_err())?;
        chain
            .into_iter()
            .map(|id| {
                let s: String = by_id.query_row([id], |r| r.get(0)).map_err(self.db_err())?;
                StorePath::from_base_name(&s).map_err(Error::from)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Records the outputs of a derivation (the `.drv` must be valid).
    pub fn register_derivation_outputs(
        &self,
        drv: &StorePath,
        outputs: &BTreeMap<OutputName, StorePath>,
    ) -> Result<(), Error> {
        let mut conn = self.db();
        let id = self.id_of(&conn, drv)?;
        let tx = conn.transaction().map_err(self.db_err())?;
        for (name, path) in outputs {
            tx.execute(
                "INSERT OR REPLACE INTO DerivationOutputs (drv, output, path) VALUES (?1, ?2, ?3)",
                params![id, name.as_str(), path.to_string()],
            )
            .map_err(self.db_err())?;
        }
        tx.commit().map_err(self.db_err())
    }

    /// The outputs recorded for a derivation.
    pub fn derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<OutputName, StorePath>, Error> {
        let conn = self.db();
        let id = self.id_of(&conn, drv)?;
        let mut stmt = conn
            .prepare_cached("SELECT output, path FROM DerivationOutputs WHERE drv = ?1")
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map([id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(self.db_err())?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (name, path) = row.map_err(self.db_err())?;
            let bad = |reason: String| Error::BadMetadata {
                path: drv.to_string(),
                reason,
            };
            out.insert(
                OutputName::new(&name).map_err(|e| bad(e.to_string()))?,
                StorePath::from_base_name(&path).map_err(|e| bad(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Where the build log of `drv` is kept: gzip-compressed when it was
    /// big, plain text when small (not worth a compressor per build).
    pub(crate) fn log_file(&self, drv: &StorePath, compressed: bool) -> PathBuf {
        let name = drv.to_string();
        // Two-character fan-out, so that no directory holds every log.
        let file = if compressed {
            format!("{}.gz", &name[2..])
        } else {
            name[2..].to_owned()
        };
        self.state.join("logs").join(&name[..2]).join(file)
    }

    /// The build log of `drv`, if it was built here and printed something.
    pub fn read_log(&self, drv: &StorePath) -> Result<Option<String>, Error> {
        use std::io::Read;
        for compressed in [false, true] {
            let path = self.log_file(drv, compressed);
            let mut file = match fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open", &path)(e)),
            };
            let mut text = Vec::new();
            if compressed {
                flate2::read::MultiGzDecoder::new(file).read_to_end(&mut text)
            } else {
                file.read_to_end(&mut text)
            }
            .map_err(io_err("read", &path))?;
            return Ok(Some(String::from_utf8_lossy(&text).into_owned()));
        }
        Ok(None)
    }

    /// The derivation `drv`, from what this handle added if it is there
    /// (taking it: a plan reads each derivation once), else read from its
    /// file. The caller has checked that `drv` is valid.
    pub(crate) fn take_derivation(&self, drv: &StorePath) -> Result<Arc<Derivation>, Error> {
        let added = self
            .added
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(drv);
        match added {
            Some(d) => Ok(d),
            None => self.read_derivation(drv).map(Arc::new),
        }
    }

    pub(crate) fn added_len(&self) -> usize {
        self.added.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Keeps committed derivations for the next plan, up to the bound.
    pub(crate) fn keep_added(&self, derivations: Vec<(StorePath, Arc<Derivation>)>) {
        let mut added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        for (path, d) in derivations {
            if added.len() >= ADDED_KEPT {
                break;
            }
            added.insert(path, d);
        }
    }

    /// Reads and parses the `.drv` file `drv`.
    pub fn read_derivation(&self, drv: &StorePath) -> Result<Derivation, Error> {
        let file = self.physical(drv);
        let text = fs::read_to_string(&file).map_err(io_err("read", &file))?;
        Derivation::parse(&self.dir, &text).map_err(|source| Error::DerivationFile {
            path: drv.clone(),
            source,
        })
    }

    /// Which of `paths` are registered, in one query.
    pub fn valid_among<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<BTreeSet<StorePath>, Error> {
        let names = json_array(paths.into_iter().map(|p| p.to_string()));
        let conn = self.db();
        let mut stmt = conn
            .prepare_cached(
                "SELECT path FROM ValidPaths WHERE path IN (SELECT value FROM json_each(?1))",
            )
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map([names], |r| r.get::<_, String>(0))
            .map_err(self.db_err())?;
        parse_paths(rows, self)
    }

    /// The recorded outputs of each of `drvs` (those with any), with
    /// whether each output path is valid: one query for a whole set, which
    /// is all planning an already-built graph costs.
    pub fn derivation_outputs_many<'a>(
        &self,
        drvs: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<HashMap<StorePath, RecordedOutputs>, Error> {
        let names = json_array(drvs.into_iter().map(|p| p.to_string()));
        let conn = self.db();
        let mut stmt = conn
            .prepare_cached(
                "SELECT d.path, o.output, o.path,
                        EXISTS (SELECT 1 FROM ValidPaths v WHERE v.path = o.path)
                 FROM json_each(?1) j
                 JOIN ValidPaths d ON d.path = j.value
                 JOIN DerivationOutputs o ON o.drv = d.id",
            )
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map([names], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })
            .map_err(self.db_err())?;
        let mut out: HashMap<StorePath, RecordedOutputs> = HashMap::new();
        for row in rows {
            let (drv, name, path, valid) = row.map_err(self.db_err())?;
            let bad = |reason: String| Error::BadMetadata {
                path: drv.clone(),
                reason,
            };
            let name = OutputName::new(&name).map_err(|e| bad(e.to_string()))?;
            let path = StorePath::from_base_name(&path).map_err(|e| bad(e.to_string()))?;
            let drv = StorePath::from_base_name(&drv).map_err(|e| bad(e.to_string()))?;
            out.entry(drv).or_default().insert(name, (path, valid));
        }
        Ok(out)
    }

    /// The derivation recorded as having built `path`, if any.
    pub fn deriver(&self, path: &StorePath) -> Result<Option<StorePath>, Error> {
        Ok(self
            .path_info(path)?
            .ok_or_else(|| Error::NotValid { path: path.clone() })?
            .deriver)
    }

    /// Keeps `paths` alive for as long as this handle is open, even if no
    /// root reaches them. Builders call this *before* checking that their
    /// inputs are valid: the collector either sees the root or has already
    /// unregistered the path, never neither.
    pub fn add_temp_roots<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<(), Error> {
        let names = json_array(paths.into_iter().map(|p| p.to_string()));
        let mut conn = self.volatile_db();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        self.insert_temp_roots(&tx, &names)?;
        tx.commit().map_err(self.db_err())
    }

    /// Inside `tx`, makes the paths named by the JSON array `names`
    /// temporary roots of this handle: one statement for the whole set.
    pub(crate) fn insert_temp_roots(
        &self,
        tx: &rusqlite::Transaction<'_>,
        names: &str,
    ) -> Result<(), Error> {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO TempRoots (process, path) SELECT ?1, value FROM json_each(?2)",
        )
        .and_then(|mut s| s.execute(params![self.process, names]))
        .map_err(self.db_err())?;
        Ok(())
    }

    /// Every valid path, sorted.
    pub fn all_valid_paths(&self) -> Result<BTreeSet<StorePath>, Error> {
        let conn = self.db();
        let mut stmt = conn
            .prepare_cached("SELECT path FROM ValidPaths")
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.db_err())?;
        parse_paths(rows, self)
    }
}

fn parse_paths(
    rows: impl Iterator<Item = rusqlite::Result<String>>,
    store: &Store,
) -> Result<BTreeSet<StorePath>, Error> {
    rows.map(|r| {
        let s = r.map_err(store.db_err())?;
        StorePath::from_base_name(&s).map_err(|e| Error::BadMetadata {
            path: s.clone(),
            reason: e.to_string(),
        })
    })
    .collect()
}

/// See [`Store::volatile_db`].
pub(crate) struct VolatileDb<'a>(MutexGuard<'a, Connection>);

impl std::ops::Deref for VolatileDb<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl std::ops::DerefMut for VolatileDb<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.0
    }
}

impl Drop for VolatileDb<'_> {
    fn drop(&mut self) {
        // Every other commit stays durable. Should this fail, the next
        // open connection is FULL again; this one would have to be
        // replaced, and a failed PRAGMA on a healthy connection does not
        // happen short of memory exhaustion.
        let _ = self.0.execute_batch("PRAGMA synchronous = FULL");
    }
}
