//! Verifying the store against its database, and repairing it.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use bigtop_core::{nar, StorePath};

use crate::build::Substituter;
use crate::error::{io_err, Error};
use crate::fs::remove_physical;
use crate::store::lock::LockSet;
use crate::store::Store;

/// What became of a broken path a substituter was asked for.
enum Refetch {
    /// Its files are back.
    Done,
    /// No substituter could give it.
    Unavailable,
    /// It is no longer registered (collected meanwhile).
    Gone,
}

/// What to check.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Re-hash every path and compare with its recorded NAR hash (slow:
    /// reads the whole store). Default: only check that paths exist.
    pub check_contents: bool,
    /// Fetch broken paths again from substituters (see
    /// [`Store::verify_with`]); unregister the ones none has (with every
    /// path that refers to them, which would otherwise refer to nothing);
    /// delete unregistered entries.
    /// Default: report only (leftovers of processes that are gone are
    /// removed either way: see [`VerifyReport::garbage`]).
    pub repair: bool,
}

/// What verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Registered paths checked.
    pub checked: usize,
    /// Registered paths whose files are gone.
    pub missing: Vec<StorePath>,
    /// Registered paths whose contents no longer hash to the record.
    pub corrupt: Vec<StorePath>,
    /// Entries in the store directory that are not registered (left by a
    /// crash, or put there by hand), by file name.
    pub unregistered: Vec<String>,
    /// With repair: the paths unregistered.
    pub unregistered_paths: Vec<StorePath>,
    /// With repair: the broken paths fetched again from a substituter,
    /// whole and as recorded.
    pub refetched: Vec<StorePath>,
    /// What interrupted adds and builds of processes that are gone left
    /// behind (staged trees and sandbox roots in the store dir, build dirs
    /// in the state dir), removed by this verification. Never registered,
    /// so garbage rather than damage: the next collection would remove
    /// it as well, and it does not make the store unclean.
    pub garbage: Vec<PathBuf>,
    /// Bytes the garbage occupied on disk.
    pub garbage_bytes: u64,
}

impl VerifyReport {
    /// Whether everything checked out: nothing missing, corrupt or
    /// unregistered (garbage does not count).
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty() && self.unregistered.is_empty()
    }
}

impl Store {
    /// Checks every registered path against the files, and the files
    /// against the registrations. Removes what processes that are gone
    /// left half-made, with or without repair (reported as garbage).
    pub fn verify(&self, options: VerifyOptions) -> Result<VerifyReport, Error> {
        self.verify_with(options, &[])
    }

    /// [`verify`](Self::verify); with repair, each broken path is first
    /// asked of `substituters` in order, and one that has it replaces the
    /// broken files with its NAR, checked against the hash and size this
    /// store recorded (not what the substituter says). Only paths none can
    /// give back are unregistered, with their referrers.
    pub fn verify_with(
        &self,
        options: VerifyOptions,
        substituters: &[&dyn Substituter],
    ) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        let valid = self.all_valid_paths()?;
        report.checked = valid.len();
        for path in &valid {
            let physical = self.physical(path);
            if fs::symlink_metadata(&physical).is_err() {
                report.missing.push(path.clone());
                continue;
            }
            if options.check_contents {
                let info = self
                    .path_info(path)?
                    .ok_or_else(|| Error::NotValid { path: path.clone() })?;
                let (hash, size) = nar::hash_path(&physical, info.nar_hash.algo())?;
                if hash != info.nar_hash || size != info.nar_size {
                    report.corrupt.push(path.clone());
                }
            }
        }
        self.clean_processes()?;
        // Before listing the store dir, so that what the collector would
        // remove anyway is not reported as unregistered entries.
        for (path, bytes) in self.remove_leftovers()? {
            report.garbage.push(path);
            report.garbage_bytes += bytes;
        }
        report.garbage.sort();
        let live_temp = self.live_temp_prefixes()?;
        let locked = self.locked_names()?;
        for entry in fs::read_dir(self.root()).map_err(io_err("read", self.root()))? {
            let entry = entry.map_err(io_err("read", self.root()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // What running processes are writing: staged trees, sandbox
            // roots, and outputs an unsandboxed build writes in place
            // (locked while it runs).
            if live_temp.iter().any(|p| name.starts_with(p.as_str())) || locked.contains(&name) {
                continue;
            }
            let registered = StorePath::from_base_name(&name).is_ok_and(|p| valid.contains(&p));
            if !registered {
                report.unregistered.push(name);
            }
        }
        report.unregistered.sort();
        if options.repair {
            let mut broken: Vec<StorePath> = Vec::new();
            for path in report.missing.iter().chain(&report.corrupt) {
                // A path that cannot be fetched, for whatever reason, is
                // repaired as it would be without substituters.
                match self.refetch(path, substituters) {
                    Ok(Refetch::Done) => report.refetched.push(path.clone()),
                    Ok(Refetch::Gone) => {}
                    Ok(Refetch::Unavailable) | Err(_) => broken.push(path.clone()),
                }
            }
            if !broken.is_empty() {
                report.unregistered_paths = self.unregister_with_referrers(&broken)?;
            }
            for name in &report.unregistered {
                remove_physical(&self.root().join(name))?;
            }
            for p in &report.unregistered_paths {
                remove_physical(&self.physical(p))?;
            }
        }
        Ok(report)
    }

    /// Puts `path`'s files back from the first of `substituters` that has
    /// them: as recorded, or, when the substituter vouches for a build of
    /// the path with other bytes but the same references (a build that is
    /// not bit for bit reproducible), as it has them, its hash and
    /// signatures then recorded. A substituter that fails is passed over.
    fn refetch(
        &self,
        path: &StorePath,
        substituters: &[&dyn Substituter],
    ) -> Result<Refetch, Error> {
        if substituters.is_empty() {
            return Ok(Refetch::Unavailable);
        }
        // No build or collection touches it meanwhile; one that came
        // first may have collected it since it was found broken.
        let mut locks = LockSet::new(self);
        locks.lock_all([path])?;
        let Some(recorded) = self.path_info(path)? else {
            return Ok(Refetch::Gone);
        };
        let wanted = BTreeSet::from([path.clone()]);
        for s in substituters {
            let Some(offered) = s.query(&wanted).ok().and_then(|mut o| o.remove(path)) else {
                continue;
            };
            // As recorded (the hash is checked in the store's algorithm,
            // which may not be the substituter's); else, if the
            // substituter vouches for its own build of the path with the
            // same references, as it has it.
            let mut candidates = vec![recorded.clone()];
            if offered.vouched
                && offered.info.references == recorded.references
                && recorded.ca.is_none()
                && offered.info.nar_hash != recorded.nar_hash
            {
                let mut theirs = recorded.clone();
                theirs.nar_hash = offered.info.nar_hash;
                theirs.nar_size = offered.info.nar_size;
                theirs.signatures = offered.info.signatures.clone();
                candidates.push(theirs);
            }
            let staged = candidates.into_iter().find_map(|info| {
                s.nar(path)
                    .and_then(|mut nar| crate::store::add::stage_nar(self, &info, &mut *nar))
                    .ok()
                    .map(|tmp| (info, tmp))
            });
            let Some((info, tmp)) = staged else { continue };
            let same = info == recorded;
            let physical = self.physical(path);
            // The broken files go aside first (a directory cannot be
            // renamed over), and come back if the new ones cannot take
            // their place.
            let aside = self.temp_name("broken");
            let had = fs::symlink_metadata(&physical).is_ok();
            if had {
                if let Err(e) = fs::rename(&physical, &aside) {
                    let _ = crate::fs::remove_tree(&tmp);
                    return Err(io_err("move aside", &physical)(e));
                }
            }
            if let Err(e) = fs::rename(&tmp, &physical) {
                if had {
                    let _ = fs::rename(&aside, &physical);
                }
                let _ = crate::fs::remove_tree(&tmp);
                return Err(io_err("put back", &physical)(e));
            }
            // The new files are in place: nothing after this may count the
            // repair as failed (which would unregister the path). What
            // cannot be removed now is a leftover the collector removes
            // by its temporary name.
            if had {
                let _ = remove_physical(&aside);
            }
            let synced = fs::File::open(self.root())
                .and_then(|root| rustix::fs::syncfs(&root).map_err(std::io::Error::from));
            // After the files are on disk: a crash (or a failed sync)
            // leaves the old record, and the next verify finds the
            // path's bytes do not match it and fetches it again.
            if !same && synced.is_ok() {
                let _ = self.record_contents(&info);
            }
            return Ok(Refetch::Done);
        }
        Ok(Refetch::Unavailable)
    }

    /// Records `info`'s NAR hash, size and signatures for its path.
    fn record_contents(&self, info: &crate::PathInfo) -> Result<(), Error> {
        let sigs: Vec<String> = info.signatures.iter().map(|s| s.to_string()).collect();
        self.db()
            .execute(
                "UPDATE ValidPaths SET nar_hash = ?1, nar_size = ?2, signatures = ?3 WHERE path = ?4",
                rusqlite::params![
                    info.nar_hash.to_string(),
                    info.nar_size as i64,
                    sigs.join(" "),
                    info.path.to_string()
                ],
            )
            .map_err(self.db_err())?;
        Ok(())
    }

    /// Prefixes of temporary names that live handles may be writing.
    fn live_temp_prefixes(&self) -> Result<Vec<String>, Error> {
        let conn = self.db();
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM Processes")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(self.db_err())?;
        Ok(ids
            .into_iter()
            .flat_map(|id| [format!(".tmp-{id}-"), format!(".chroot-{id}-")])
            .collect())
    }

    /// Store entries locked by running processes.
    fn locked_names(&self) -> Result<std::collections::HashSet<String>, Error> {
        let conn = self.db();
        conn.prepare("SELECT path FROM Locks")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(self.db_err())
    }

    /// Unregisters `paths` and everything that refers to them.
    fn unregister_with_referrers(&self, paths: &[StorePath]) -> Result<Vec<StorePath>, Error> {
        let doomed: BTreeSet<StorePath> = self.reverse_closure(paths)?;
        let mut conn = self.db();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        for p in &doomed {
            tx.execute(
                "DELETE FROM Refs WHERE referrer = (SELECT id FROM ValidPaths WHERE path = ?1)",
                [p.to_string()],
            )
            .map_err(self.db_err())?;
        }
        for p in &doomed {
            tx.execute("DELETE FROM ValidPaths WHERE path = ?1", [p.to_string()])
                .map_err(self.db_err())?;
        }
        tx.commit().map_err(self.db_err())?;
        Ok(doomed.into_iter().collect())
    }
}
