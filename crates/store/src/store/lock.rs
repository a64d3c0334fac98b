//! Per-path locks between processes.
//!
//! Two processes adding or building the same path must do the work once:
//! the first takes the path's lock and works; the second waits for the
//! lock and then finds the path valid. The garbage collector takes the
//! locks of what it deletes inside its own transaction, skipping paths
//! someone holds, so collection never waits on, or stops, a builder.
//!
//! A lock is a row of the `Locks` table naming its holder — one
//! [`LockSet`] — and the process it belongs to. Taking the locks of a
//! batch of ten thousand paths is one transaction, not ten thousand file
//! operations. A set takes all of its locks or none and waits without
//! holding any, so sets cannot deadlock. Rows of a process that has exited
//! go with its `Processes` row, which any waiter (and every collection)
//! removes once the process is gone.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bigtop_core::StorePath;
use rusqlite::params;

use super::Store;
use crate::db;
use crate::error::Error;

static NEXT_OWNER: AtomicI64 = AtomicI64::new(1);

/// Locks held on some store paths; all released when dropped.
#[derive(Debug)]
#[must_use = "the locks are released when this is dropped"]
pub struct LockSet<'s> {
    store: &'s Store,
    /// Unique among the sets of every handle: the handle's id (never
    /// reused, unlike a pid, and the same in every PID namespace) in the
    /// high bits.
    owner: i64,
    held: bool,
    /// The paths held, as JSON arrays (one per successful call): releasing
    /// by path finds each row through the primary key, where releasing by
    /// owner would scan every lock in flight.
    names: Vec<String>,
    /// Paths taken one at a time (by the collector).
    singles: Vec<String>,
}

impl<'s> LockSet<'s> {
    /// An empty set.
    pub(crate) fn new(store: &'s Store) -> LockSet<'s> {
        let n = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
        LockSet {
            store,
            owner: (store.process << 32) | (n & 0xffff_ffff),
            held: false,
            names: Vec::new(),
            singles: Vec::new(),
        }
    }

    /// Waits until it holds the locks on all of `paths`.
    pub(crate) fn lock_all<'a>(
        &mut self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<(), Error> {
        self.lock_all_rooting(paths, [])
    }

    /// Waits until it holds the locks on all of `paths`, and in the same
    /// transaction makes `temp_roots` temporary roots of the store handle
    /// (one commit instead of two for a batch).
    pub(crate) fn lock_all_rooting<'a>(
        &mut self,
        paths: impl IntoIterator<Item = &'a StorePath>,
        temp_roots: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<(), Error> {
        self.lock_all_beside(paths, temp_roots, &[])
    }

    /// [`lock_all_rooting`](Self::lock_all_rooting), counting locks held
    /// by the sets in `beside` (the caller's others) as taken.
    pub(crate) fn lock_all_beside<'a>(
        &mut self,
        paths: impl IntoIterator<Item = &'a StorePath>,
        temp_roots: impl IntoIterator<Item = &'a StorePath>,
        beside: &[LockSet<'_>],
    ) -> Result<(), Error> {
        let ours = format!(
            "[{}]",
            beside
                .iter()
                .map(|l| l.owner.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let names: Vec<String> = paths.into_iter().map(|p| p.to_string()).collect();
        let roots: Vec<String> = temp_roots.into_iter().map(|p| p.to_string()).collect();
        if names.is_empty() && roots.is_empty() {
            // Nothing to lock or root (a batch of valid paths): no
            // transaction at all.
            return Ok(());
        }
        let wanted = db::json_array(&names);
        let roots = if roots.is_empty() {
            String::new()
        } else {
            db::json_array(&roots)
        };
        let mut wait = Duration::from_millis(2);
        loop {
            let taken = {
                let mut conn = self.store.volatile_db();
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(self.store.db_err())?;
                // Whole sets in one statement each: per-row statements
                // cost more than the rows for a batch of thousands.
                let taken = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO Locks (path, process, owner)
                         SELECT value, ?1, ?2 FROM json_each(?3)",
                    )
                    .and_then(|mut s| s.execute(params![self.store.process, self.owner, wanted]))
                    .map_err(self.store.db_err())?;
                // Fewer rows than names: some were held, by us or another set.
                let blocked = taken < names.len()
                    && tx
                        .prepare_cached(
                            "SELECT EXISTS (SELECT 1 FROM Locks WHERE owner != ?1
                               AND owner NOT IN (SELECT value FROM json_each(?3))
                               AND path IN (SELECT value FROM json_each(?2)))",
                        )
                        .and_then(|mut s| {
                            s.query_row(params![self.owner, wanted, ours], |r| r.get(0))
                        })
                        .map_err(self.store.db_err())?;
                if !blocked && !roots.is_empty() {
                    self.store.insert_temp_roots(&tx, &roots)?;
                }
                if blocked {
                    // Take nothing while waiting: no set holds some locks
                    // while waiting for others, so none can deadlock.
                    drop(tx);
                    false
                } else {
                    tx.commit().map_err(self.store.db_err())?;
                    true
                }
            };
            if taken {
                self.held = true;
                self.names.push(wanted);
                return Ok(());
            }
            // A holder that died leaves rows until its process row goes.
            self.store.clean_processes()?;
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(100));
        }
    }

    /// Inside the caller's transaction, takes the lock on `path` if nobody
    /// else holds it.
    pub(crate) fn try_lock_in(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        path: &str,
    ) -> Result<bool, Error> {
        let mut take = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO Locks (path, process, owner) VALUES (?1, ?2, ?3)",
            )
            .map_err(self.store.db_err())?;
        if take
            .execute(params![path, self.store.process, self.owner])
            .map_err(self.store.db_err())?
            == 1
        {
            self.held = true;
            self.singles.push(path.to_owned());
            return Ok(true);
        }
        let owner: i64 = tx
            .prepare_cached("SELECT owner FROM Locks WHERE path = ?1")
            .and_then(|mut s| s.query_row([path], |r| r.get(0)))
            .map_err(self.store.db_err())?;
        Ok(owner == self.owner)
    }
}

impl LockSet<'_> {
    /// Releases the locks inside the caller's transaction (the one that
    /// registers what they protected); once it commits, call
    /// [`released`](Self::released).
    pub(crate) fn release_in(&self, tx: &rusqlite::Connection) -> Result<(), Error> {
        let singles = (!self.singles.is_empty()).then(|| db::json_array(&self.singles));
        for names in self.names.iter().chain(&singles) {
            tx.prepare_cached(
                "DELETE FROM Locks WHERE owner = ?1
                   AND path IN (SELECT value FROM json_each(?2))",
            )
            .and_then(|mut s| s.execute(params![self.owner, names]))
            .map_err(self.store.db_err())?;
        }
        Ok(())
    }

    /// Lets every lock of the set go now.
    pub(crate) fn release(&mut self) -> Result<(), Error> {
        if self.held {
            self.release_in(&self.store.volatile_db())?;
            self.held = false;
            self.names.clear();
            self.singles.clear();
        }
        Ok(())
    }

    /// Records that a committed [`release_in`](Self::release_in) released
    /// the locks, so that dropping the set has nothing left to do.
    pub(crate) fn released(&mut self) {
        self.held = false;
        self.names.clear();
        self.singles.clear();
    }
}

impl Drop for LockSet<'_> {
    fn drop(&mut self) {
        if self.held {
            let _ = self.release_in(&self.store.volatile_db());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_second_holder_waits_until_the_first_lets_go() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let path: StorePath = "00bgd045z0d4icpbc2yyz4gx48ak44la-x".parse().unwrap();
        let store = Store::open_chroot(&dir).unwrap();
        let mut first = LockSet::new(&store);
        first.lock_all([&path]).unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let (p, r) = (path.clone(), released.clone());
        // Another process's view: its own handle, in a thread.
        let waiter = std::thread::spawn(move || {
            let other = Store::open_chroot(&dir).unwrap();
            let mut set = LockSet::new(&other);
            set.lock_all([&p]).unwrap();
            // Only possible once the first holder let go.
            assert!(r.load(Ordering::SeqCst), "got the lock while it was held");
        });
        std::thread::sleep(Duration::from_millis(50));
        released.store(true, Ordering::SeqCst);
        drop(first);
        waiter.join().unwrap();
        // Everything was released.
        let n: i64 = store
            .db()
            .query_row("SELECT count(*) FROM Locks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
