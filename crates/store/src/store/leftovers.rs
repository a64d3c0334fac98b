//! What store handles that died left behind: their rows (temporary roots,
//! locks) and their half-made files. Every operation that must not trip
//! over a crash's remains (adding, building, collecting, verifying) asks
//! here first, so this sits under all of them.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

use super::Store;
use crate::error::{io_err, Error};
use crate::fs::remove_tree;

impl Store {
    /// Drops the temporary roots and locks of handles that are gone, and
    /// removes what the ones found dead now left half-made (their scratch
    /// roots, build dirs, staged trees): a handle that ends normally
    /// leaves nothing and removes its own row, so a row found dead is a
    /// crash, and this is the first to know. Returns the ids alive.
    pub(crate) fn clean_processes(&self) -> Result<Vec<i64>, Error> {
        let (alive, removed) = {
            let mut conn = self.db();
            crate::liveness::clean(&mut conn, self.state_dir(), |e| self.db_err()(e))?
        };
        if !removed.is_empty() {
            self.remove_leftovers_of(|id| removed.contains(&id))?;
        }
        Ok(alive)
    }

    /// Removes what handles that died left half-made: staged trees
    /// (`.tmp-<id>-…`) and sandbox roots (`.chroot-<id>-…`) in the store
    /// dir, build dirs (`<id>-…`) in the state dir. None of it was ever
    /// registered; a process killed mid-build cannot clean up itself.
    /// Returns what was removed, each with the bytes it freed.
    pub(crate) fn remove_leftovers(&self) -> Result<Vec<(PathBuf, u64)>, Error> {
        let live: HashSet<i64> = self.clean_processes()?.into_iter().collect();
        self.remove_leftovers_of(|id| !live.contains(&id))
    }

    /// Removes the leftovers of the handles `dead` says are dead.
    fn remove_leftovers_of(
        &self,
        dead: impl Fn(i64) -> bool,
    ) -> Result<Vec<(PathBuf, u64)>, Error> {
        let dead = |rest: &str| {
            rest.split('-')
                .next()
                .and_then(|id| id.parse::<i64>().ok())
                .is_some_and(&dead)
        };
        let mut removed = Vec::new();
        let builds = self.state_dir().join("builds");
        for (dir, prefixes) in [
            (self.root().to_owned(), &[".tmp-", ".chroot-"][..]),
            (builds, &[""][..]),
        ] {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read", &dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err("read", &dir))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let stale = prefixes
                    .iter()
                    .any(|p| name.strip_prefix(p).is_some_and(&dead));
                if stale {
                    let path = entry.path();
                    let freed = remove_tree(&path).map_err(io_err("delete", &path))?;
                    removed.push((path, freed));
                }
            }
        }
        Ok(removed)
    }
}
