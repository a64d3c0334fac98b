//! Garbage collection: roots, temporary roots, and deleting what nothing
//! keeps alive.
//!
//! **Roots** are symlinks in `<state>/gcroots/`: *direct* ones point at a
//! store path; *indirect* ones live in `gcroots/auto/` and point at a
//! symlink elsewhere (a `result` link, a profile) that points into the
//! store, and die with it. **Temporary roots** are rows in the database
//! owned by a running process (each open [`Store`] handle): builds and adds
//! register what they use *before* checking it is valid.
//!
//! **Collection** never walks the live store. The database keeps the set
//! of registered paths that nothing refers to (maintained by triggers as
//! references come and go); collection starts there, deletes what is not
//! rooted, and follows the references of what it deleted. Its cost grows
//! with the garbage, not with the store.
//!
//! **Concurrency**: the collector deletes a path in a write transaction
//! that first checks, inside the same transaction, that no temporary root
//! and no root made through the API names it and nothing refers to it.
//! (API roots are recorded in the database as well as on disk, so a root
//! made while a path was temporarily rooted stays visible to that check
//! after the temporary root is gone.) A builder commits its temporary root
//! before it looks the path up, so either the collector sees the root or
//! the builder sees the path gone — SQLite's write lock orders the two.
//! The collector only *tries* each path's lock and skips paths being
//! added, so it never waits on a builder, nor a builder on it.
//!
//! Paths that refer to each other in a cycle (outputs of one derivation
//! referring to each other) are never "unreferenced": the `full` option
//! adds a mark-and-sweep pass that takes them, at the cost of walking the
//! live store.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bigtop_core::StorePath;
use rusqlite::{params, OptionalExtension};

use crate::error::{io_err, Error};
use crate::fs::{lexically_normal, remove_tree};
use crate::store::lock::LockSet;
use crate::store::Store;

/// A path's references other than itself, with their ids.
const REFERENCES_OTHER_THAN_SELF: &str =
    "SELECT v.id, v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference
     WHERE r.referrer = ?1 AND r.reference != ?1";

/// What to collect.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Stop once this many bytes have been freed (checked every few paths,
    /// so a little more may be freed). Default: no limit.
    pub max_freed: Option<u64>,
    /// Report what would be deleted, delete nothing. Default: off.
    pub dry_run: bool,
    /// After the usual collection, also mark everything reachable from the
    /// roots and sweep the rest, which takes paths that refer to each other
    /// in a cycle. Costs a walk of the live store. Default: off.
    pub full: bool,
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// The paths deleted (or, in a dry run, that would be).
    pub deleted: Vec<StorePath>,
    /// Bytes freed on disk (in a dry run: the NAR sizes that would be).
    pub freed_bytes: u64,
}

impl Store {
    fn roots_dir(&self) -> PathBuf {
        self.state_dir().join("gcroots")
    }

    /// Makes `path` a direct root named `name` (a symlink in the roots
    /// folder), replacing a root of that name.
    pub fn add_root(&self, name: &str, path: &StorePath) -> Result<PathBuf, Error> {
        if name.is_empty() || name.contains('/') || name == "auto" || name.starts_with('.') {
            return Err(Error::BadStream {
                reason: format!("root name `{name}` must be a plain file name other than `auto`"),
            });
        }
        let link = self.roots_dir().join(name);
        replace_symlink(&self.store_dir().full(path), &link)?;
        self.record_root(&link, path)?;
        Ok(link)
    }

    /// Records a root in the database, after its symlink exists. The
    /// collector checks this table in the same transaction that deletes a
    /// path, so a root made while the path was temporarily rooted is seen
    /// even if the temporary root is gone by then.
    fn record_root(&self, link: &Path, path: &StorePath) -> Result<(), Error> {
        self.db()
            .execute(
                "INSERT OR REPLACE INTO Roots (link, path) VALUES (?1, ?2)",
                params![link.to_string_lossy(), path.to_string()],
            )
            .map(|_| ())
            .map_err(self.db_err())
    }

    /// Drops recorded roots whose symlink is gone or points elsewhere.
    fn reconcile_roots(&self, on_disk: &BTreeMap<PathBuf, StorePath>) -> Result<(), Error> {
        let conn = self.db();
        let rows: Vec<(String, String)> = conn
            .prepare("SELECT link, path FROM Roots")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(self.db_err())?;
        for (link, path) in rows {
            let current = match on_disk.get(Path::new(&link)) {
                Some(p) => Some(p.clone()),
                // Indirect roots are found through their auto entry; look
                // at the link itself for those.
                None => fs::read_link(&link)
                    .ok()
                    .and_then(|t| t.to_str().and_then(|t| self.parse_user_path(t).ok())),
            };
            if current.map(|p| p.to_string()) != Some(path) {
                conn.execute("DELETE FROM Roots WHERE link = ?1 AND path = (SELECT path FROM Roots WHERE link = ?1)", [&link])
                    .map_err(self.db_err())?;
            }
        }
        Ok(())
    }

    /// Makes the symlink `link` (anywhere, e.g. a `result` link) point at
    /// `path` and keeps `path` alive for as long as `link` points at it: an
    /// indirect root, as Nix's auto roots.
    pub fn add_indirect_root(&self, link: &Path, path: &StorePath) -> Result<(), Error> {
        self.check_indirect_root(link)?;
        let link = std::path::absolute(link).map_err(io_err("resolve", link))?;
        replace_symlink(&self.store_dir().full(path), &link)?;
        let id = bigtop_core::Hash::digest(
            bigtop_core::HashAlgo::Blake3,
            link.as_os_str().as_encoded_bytes(),
        );
        let auto = self.roots_dir().join("auto").join(&id.to_base32()[..32]);
        replace_symlink(link.to_str().unwrap_or_default(), &auto)?;
        self.record_root(&link, path)
    }

    /// Fails if `link` cannot be an indirect root: if it lies in the store
    /// directory, logical or physical, however spelled (with `..`, through
    /// a symlinked directory), where it would be an entry the store does
    /// not know. [`add_indirect_root`](Self::add_indirect_root) checks
    /// this; a caller that makes its links after long work (a build's
    /// out-links) can check first.
    pub fn check_indirect_root(&self, link: &Path) -> Result<(), Error> {
        let refuse = |store: &Path| {
            Err(Error::RootInStore {
                link: link.to_owned(),
                store: store.to_owned(),
            })
        };
        let absolute = std::path::absolute(link).map_err(io_err("resolve", link))?;
        let normal = lexically_normal(&absolute);
        for dir in [self.store_dir().as_path(), self.root()] {
            if normal.starts_with(lexically_normal(dir)) {
                return refuse(dir);
            }
        }
        // Where the link's directory really is, as the kernel resolves it
        // when making the link (symlinks, then `..`).
        let real_parent = absolute.parent().and_then(|p| fs::canonicalize(p).ok());
        if let (Some(parent), Ok(root)) = (real_parent, fs::canonicalize(self.root())) {
            if parent.starts_with(&root) {
                return refuse(self.root());
            }
        }
        Ok(())
    }

    /// Removes the direct root `name`.
    pub fn remove_root(&self, name: &str) -> Result<(), Error> {
        let link = self.roots_dir().join(name);
        fs::remove_file(&link).map_err(io_err("remove", &link))?;
        self.db()
            .execute(
                "DELETE FROM Roots WHERE link = ?1",
                [link.to_string_lossy()],
            )
            .map(|_| ())
            .map_err(self.db_err())
    }

    /// Every root: the symlink that holds it and the path it keeps alive.
    /// Indirect roots whose link is gone or points elsewhere are dropped.
    pub fn roots(&self) -> Result<BTreeMap<PathBuf, StorePath>, Error> {
        let mut out = BTreeMap::new();
        self.scan_roots(&self.roots_dir(), &mut out)?;
        Ok(out)
    }

    fn scan_roots(&self, dir: &Path, out: &mut BTreeMap<PathBuf, StorePath>) -> Result<(), Error> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read", dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read", dir))?;
            let link = entry.path();
            let t = entry.file_type().map_err(io_err("read", &link))?;
            if t.is_dir() {
                self.scan_roots(&link, out)?;
            } else if t.is_symlink() {
                // Follow a short chain of links until one points into the store.
                let mut at = link.clone();
                for _ in 0..8 {
                    let Ok(target) = fs::read_link(&at) else {
                        break;
                    };
                    let target = at.parent().map(|p| p.join(&target)).unwrap_or(target);
                    if let Some(path) = target.to_str().and_then(|t| self.parse_user_path(t).ok()) {
                        out.insert(at.clone(), path);
                        break;
                    }
                    at = target;
                }
                let is_auto = link.parent() == Some(&self.roots_dir().join("auto"));
                if is_auto && !out.contains_key(&at) {
                    // The link it stood for is gone: so is the root.
                    let _ = fs::remove_file(&link);
                }
            }
        }
        Ok(())
    }

    /// Deletes every registered path that no root, temporary root or other
    /// path keeps alive.
    pub fn collect_garbage(&self, options: &GcOptions) -> Result<GcReport, Error> {
        self.clean_processes()?;
        let leftovers: u64 = if options.dry_run {
            0
        } else {
            self.remove_leftovers()?
                .iter()
                .map(|(_, bytes)| bytes)
                .sum()
        };
        let on_disk = self.roots()?;
        self.reconcile_roots(&on_disk)?;
        let roots: HashSet<String> = on_disk.into_values().map(|p| p.to_string()).collect();
        let mut report = GcReport::default();
        let conn = self.db();
        let mut queue: VecDeque<(i64, String)> = conn
            .prepare("SELECT v.id, v.path FROM Unreferenced u JOIN ValidPaths v ON v.id = u.id ORDER BY v.path")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(self.db_err())?;
        drop(conn);
        let mut dead: HashSet<i64> = HashSet::new();
        while !queue.is_empty() {
            if options.max_freed.is_some_and(|m| report.freed_bytes >= m) {
                break;
            }
            // Small batches when a limit is set, so it is not overshot by much.
            let size = if options.max_freed.is_some() { 8 } else { 256 };
            if !options.dry_run {
                let mut locks = LockSet::new(self);
                let deleted =
                    self.unregister_some(&mut queue, &roots, &mut dead, size, &mut locks)?;
                for (path, _) in deleted {
                    let physical = self.physical(&path);
                    report.freed_bytes +=
                        remove_tree(&physical).map_err(io_err("delete", &physical))?;
                    report.deleted.push(path);
                }
                continue;
            }
            let batch: Vec<(i64, String)> = queue.drain(..queue.len().min(size)).collect();
            let mut chosen = Vec::new();
            for (id, name) in batch {
                if roots.contains(&name) || dead.contains(&id) {
                    continue;
                }
                chosen.push((id, StorePath::from_base_name(&name)?));
            }
            let (deleted, next) = self.simulate_delete(&chosen, &dead)?;
            for (id, path, nar_size) in deleted {
                dead.insert(id);
                report.freed_bytes += nar_size;
                report.deleted.push(path);
            }
            queue.extend(next);
        }
        if options.full && options.max_freed.is_none_or(|m| report.freed_bytes < m) {
            self.sweep_unreachable(&roots, options.dry_run, &mut report)?;
        }
        report.deleted.sort();
        report.freed_bytes += leftovers;
        Ok(report)
    }

    /// Mark and sweep: deletes every valid path that no root, temporary
    /// root, recorded root or lock reaches. What is unreachable has only
    /// unreachable referrers, so the whole set goes in one transaction.
    fn sweep_unreachable(
        &self,
        roots: &HashSet<String>,
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<(), Error> {
        let mut locks = LockSet::new(self);
        let mut conn = self.db();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        let seeds: Vec<String> = roots.iter().cloned().collect();
        // Inside the write transaction, nothing can gain a root or a
        // referrer between the mark and the sweep.
        let dead: Vec<(i64, String, i64)> = tx
            .prepare(
                "WITH RECURSIVE live(id) AS (
                     SELECT v.id FROM ValidPaths v
                     WHERE v.path IN (SELECT value FROM json_each(?1))
                        OR v.path IN (SELECT path FROM TempRoots)
                        OR v.path IN (SELECT path FROM Roots)
                        OR v.path IN (SELECT path FROM Locks)
                     UNION SELECT r.reference FROM Refs r JOIN live ON r.referrer = live.id
                 )
                 SELECT id, path, nar_size FROM ValidPaths WHERE id NOT IN (SELECT id FROM live)",
            )
            .and_then(|mut s| {
                s.query_map([crate::db::json_array(&seeds)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .map_err(self.db_err())?;
        if dry_run {
            // The first pass deleted nothing, so what it counted is still
            // valid and unreachable, and is among `dead`: count it once.
            let counted: HashSet<String> = report.deleted.iter().map(|p| p.to_string()).collect();
            for (_, name, size) in dead {
                if counted.contains(&name) {
                    continue;
                }
                report.deleted.push(StorePath::from_base_name(&name)?);
                report.freed_bytes += size as u64;
            }
            return Ok(());
        }
        for (id, name, _) in &dead {
            if !locks.try_lock_in(&tx, name)? {
                // Unreachable yet locked cannot happen (locks seed the
                // mark); refuse rather than delete under a holder.
                return Err(Error::StillAlive {
                    path: StorePath::from_base_name(name)?,
                    reason: "locked during the sweep".into(),
                });
            }
            tx.execute("DELETE FROM Refs WHERE referrer = ?1", [id])
                .map_err(self.db_err())?;
        }
        for (id, _, _) in &dead {
            tx.execute("DELETE FROM ValidPaths WHERE id = ?1", [id])
                .map_err(self.db_err())?;
        }
        tx.commit().map_err(self.db_err())?;
        drop(conn);
        for (_, name, _) in dead {
            let path = StorePath::from_base_name(&name)?;
            let physical = self.physical(&path);
            report.freed_bytes += remove_tree(&physical).map_err(io_err("delete", &physical))?;
            report.deleted.push(path);
        }
        Ok(())
    }

    /// Unregisters paths from the front of `queue` in one transaction,
    /// until `limit` are gone or the queue is empty. A path goes only if,
    /// inside the transaction, nothing refers to it and no root or
    /// temporary root names it, and if nobody holds its lock. References
    /// left unreferenced join the queue, so a whole chain of garbage goes
    /// in one transaction. Returns the paths with their NAR sizes.
    fn unregister_some(
        &self,
        queue: &mut VecDeque<(i64, String)>,
        roots: &HashSet<String>,
        dead: &mut HashSet<i64>,
        limit: usize,
        locks: &mut LockSet,
    ) -> Result<Vec<(StorePath, u64)>, Error> {
        let mut conn = self.db();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        let mut deleted = Vec::new();
        {
            let mut check = tx
                .prepare_cached(
                    "SELECT v.nar_size FROM ValidPaths v JOIN Unreferenced u ON u.id = v.id
                     WHERE v.id = ?1
                       AND NOT EXISTS (SELECT 1 FROM TempRoots t WHERE t.path = v.path)
                       AND NOT EXISTS (SELECT 1 FROM Roots r WHERE r.path = v.path)",
                )
                .map_err(self.db_err())?;
            let mut refs = tx
                .prepare_cached(REFERENCES_OTHER_THAN_SELF)
                .map_err(self.db_err())?;
            let mut unreferenced = tx
                .prepare_cached("SELECT 1 FROM Unreferenced WHERE id = ?1")
                .map_err(self.db_err())?;
            let mut drop_refs = tx
                .prepare_cached("DELETE FROM Refs WHERE referrer = ?1")
                .map_err(self.db_err())?;
            let mut drop_path = tx
                .prepare_cached("DELETE FROM ValidPaths WHERE id = ?1")
                .map_err(self.db_err())?;
            while deleted.len() < limit {
                let Some((id, name)) = queue.pop_front() else {
                    break;
                };
                if roots.contains(&name) || dead.contains(&id) {
                    continue;
                }
                let path = StorePath::from_base_name(&name)?;
                if !locks.try_lock_in(&tx, &name)? {
                    continue;
                }
                let Some(size): Option<i64> = check
                    .query_row([id], |r| r.get(0))
                    .optional()
                    .map_err(self.db_err())?
                else {
                    continue;
                };
                let references: Vec<(i64, String)> = refs
                    .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect())
                    .map_err(self.db_err())?;
                drop_refs.execute([id]).map_err(self.db_err())?;
                drop_path.execute([id]).map_err(self.db_err())?;
                dead.insert(id);
                for (rid, rpath) in references {
                    if unreferenced.exists([rid]).map_err(self.db_err())? {
                        queue.push_back((rid, rpath));
                    }
                }
                deleted.push((path, size as u64));
            }
        }
        tx.commit().map_err(self.db_err())?;
        Ok(deleted)
    }

    /// What [`unregister_some`](Self::unregister_some) would do to
    /// `chosen`, given the paths already counted dead.
    #[allow(clippy::type_complexity)]
    fn simulate_delete(
        &self,
        chosen: &[(i64, StorePath)],
        dead: &HashSet<i64>,
    ) -> Result<(Vec<(i64, StorePath, u64)>, Vec<(i64, String)>), Error> {
        let conn = self.db();
        let mut deleted = Vec::new();
        let mut next = Vec::new();
        let mut now_dead: HashSet<i64> = dead.clone();
        let mut info = conn
            .prepare_cached(
                "SELECT v.nar_size FROM ValidPaths v
                 WHERE v.id = ?1 AND NOT EXISTS (SELECT 1 FROM TempRoots t WHERE t.path = v.path)
                       AND NOT EXISTS (SELECT 1 FROM Roots r WHERE r.path = v.path)",
            )
            .map_err(self.db_err())?;
        let mut refs = conn
            .prepare_cached(REFERENCES_OTHER_THAN_SELF)
            .map_err(self.db_err())?;
        let mut referrers = conn
            .prepare_cached("SELECT referrer FROM Refs WHERE reference = ?1 AND referrer != ?1")
            .map_err(self.db_err())?;
        for (id, path) in chosen {
            let Some(size): Option<i64> = info
                .query_row([id], |r| r.get(0))
                .optional()
                .map_err(self.db_err())?
            else {
                continue;
            };
            now_dead.insert(*id);
            deleted.push((*id, path.clone(), size as u64));
            let references: Vec<(i64, String)> = refs
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(self.db_err())?;
            for (rid, rpath) in references {
                let live_referrers: Vec<i64> = referrers
                    .query_map([rid], |r| r.get(0))
                    .and_then(|rows| rows.collect())
                    .map_err(self.db_err())?;
                if live_referrers.iter().all(|r| now_dead.contains(r)) {
                    next.push((rid, rpath));
                }
            }
        }
        Ok((deleted, next))
    }

    /// Deletes exactly `paths`, refusing (and deleting nothing) if any of
    /// them is a root, temporarily rooted, or referred to by a path not
    /// being deleted.
    pub fn delete_paths<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<GcReport, Error> {
        self.clean_processes()?;
        let wanted: BTreeSet<&StorePath> = paths.into_iter().collect();
        let roots = self.roots()?;
        for p in &wanted {
            if let Some((link, _)) = roots.iter().find(|(_, r)| r == p) {
                return Err(Error::StillAlive {
                    path: (*p).clone(),
                    reason: format!("root `{}`", link.display()),
                });
            }
            for r in self.referrers(p)? {
                if r != **p && !wanted.contains(&r) {
                    return Err(Error::StillAlive {
                        path: (*p).clone(),
                        reason: format!("referred to by `{r}`"),
                    });
                }
            }
        }
        let mut locks = LockSet::new(self);
        locks.lock_all(wanted.iter().copied())?;
        {
            let mut conn = self.db();
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(self.db_err())?;
            for p in &wanted {
                let held: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM TempRoots WHERE path = ?1)
                             OR EXISTS (SELECT 1 FROM Roots WHERE path = ?1)",
                        [p.to_string()],
                        |r| r.get(0),
                    )
                    .map_err(self.db_err())?;
                if held {
                    return Err(Error::StillAlive {
                        path: (*p).clone(),
                        reason: "held by a running process or a root made meanwhile".into(),
                    });
                }
                tx.execute(
                    "DELETE FROM Refs WHERE referrer = (SELECT id FROM ValidPaths WHERE path = ?1)",
                    params![p.to_string()],
                )
                .map_err(self.db_err())?;
            }
            for p in &wanted {
                tx.execute(
                    "DELETE FROM ValidPaths WHERE path = ?1",
                    params![p.to_string()],
                )
                .map_err(|source| match source {
                    rusqlite::Error::SqliteFailure(e, _)
                        if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        Error::StillAlive {
                            path: (*p).clone(),
                            reason: "referred to by a path registered meanwhile".into(),
                        }
                    }
                    source => self.db_err()(source),
                })?;
            }
            tx.commit().map_err(self.db_err())?;
        }
        let mut report = GcReport::default();
        for p in wanted {
            let physical = self.physical(p);
            report.freed_bytes += remove_tree(&physical).map_err(io_err("delete", &physical))?;
            report.deleted.push(p.clone());
        }
        drop(locks);
        Ok(report)
    }
}

/// Points `link` at `target`, atomically replacing what was there.
fn replace_symlink(target: &str, link: &Path) -> Result<(), Error> {
    let tmp = link.with_file_name(format!(
        ".tmp-{}-{}",
        std::process::id(),
        link.file_name().and_then(|n| n.to_str()).unwrap_or("root")
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err("create", &tmp))?;
    fs::rename(&tmp, link).map_err(io_err("create", link))
}
