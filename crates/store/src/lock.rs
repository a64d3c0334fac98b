//! Per-path locks between processes.
//!
//! Two processes adding or building the same path must do the work once:
//! the first takes the path's lock and works; the second waits on the lock
//! and then finds the path valid. The garbage collector only *tries* a
//! path's lock and skips paths someone holds, so collection never waits
//! on, or stops, a builder.
//!
//! A path's lock is one byte of one shared file, `<state>/locks/paths.lock`,
//! at an offset taken from the path's digest, held with an open-file-
//! description byte-range lock (`F_OFD_SETLKW`). Locking a path is then one
//! system call, with no file to create or remove per path, and the kernel
//! releases every lock of a holder that exits, however it exits. Each
//! [`LockSet`] opens the file afresh, so two sets conflict even inside one
//! process; sets take their locks in offset order, so they cannot deadlock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use bigtop_core::StorePath;

use crate::error::{io_err, Error};

/// Locks held on some store paths; all released when dropped.
#[derive(Debug)]
#[must_use = "the locks are released when this is dropped"]
pub struct LockSet {
    file: File,
    path: PathBuf,
    held: Vec<i64>,
}

/// Where a path's lock byte lies: all 160 bits of the digest folded into
/// 63. Two paths share a byte only by a 2^-63 chance, and sharing would
/// only make one wait for the other.
fn offset(path: &StorePath) -> i64 {
    let d = &path.digest().0;
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&d[r]);
        u64::from_le_bytes(b)
    };
    ((word(0..8) ^ word(8..16) ^ word(16..20).rotate_left(32)) >> 1) as i64
}

impl LockSet {
    /// An empty set on the store's lock file in `locks` (the folder).
    pub(crate) fn new(locks: &Path) -> Result<LockSet, Error> {
        let path = locks.join("paths.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open the lock file", &path))?;
        Ok(LockSet {
            file,
            path,
            held: Vec::new(),
        })
    }

    fn fcntl(&self, at: i64, kind: libc::c_short, wait: bool) -> io::Result<bool> {
        // SAFETY: an all-zero `flock` is valid; the fields set below
        // describe one byte of the file.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = at;
        fl.l_len = 1;
        let cmd = if wait {
            libc::F_OFD_SETLKW
        } else {
            libc::F_OFD_SETLK
        };
        loop {
            // SAFETY: a valid descriptor and a valid `flock` for this command.
            let r = unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &mut fl) };
            if r == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => return Ok(false),
                _ => return Err(e),
            }
        }
    }

    /// Waits for the locks on `paths`, taken in offset order.
    pub(crate) fn lock_all<'a>(
        &mut self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<(), Error> {
        let mut offsets: Vec<i64> = paths.into_iter().map(offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        for at in offsets {
            if self.held.binary_search(&at).is_ok() {
                continue;
            }
            self.fcntl(at, libc::F_WRLCK as libc::c_short, true)
                .map_err(io_err("lock", &self.path))?;
            let i = self.held.partition_point(|&h| h < at);
            self.held.insert(i, at);
        }
        Ok(())
    }

    /// Takes the lock on `path` if nobody else holds it.
    pub(crate) fn try_lock(&mut self, path: &StorePath) -> Result<bool, Error> {
        let at = offset(path);
        if self.held.binary_search(&at).is_ok() {
            return Ok(true);
        }
        let got = self
            .fcntl(at, libc::F_WRLCK as libc::c_short, false)
            .map_err(io_err("lock", &self.path))?;
        if got {
            let i = self.held.partition_point(|&h| h < at);
            self.held.insert(i, at);
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_second_holder_waits_until_the_first_lets_go() {
        let tmp = tempfile::tempdir().unwrap();
        let path: StorePath = "00bgd045z0d4icpbc2yyz4gx48ak44la-x".parse().unwrap();
        let other: StorePath = "11bgd045z0d4icpbc2yyz4gx48ak44la-y".parse().unwrap();
        let mut first = LockSet::new(tmp.path()).unwrap();
        first.lock_all([&path]).unwrap();
        // Another set, even in this process, cannot take it; other paths are free.
        let mut probe = LockSet::new(tmp.path()).unwrap();
        assert!(!probe.try_lock(&path).unwrap());
        assert!(probe.try_lock(&other).unwrap());
        let released = Arc::new(AtomicBool::new(false));
        let (dir, p, r) = (tmp.path().to_owned(), path.clone(), released.clone());
        let waiter = std::thread::spawn(move || {
            let mut set = LockSet::new(&dir).unwrap();
            set.lock_all([&p]).unwrap();
            // Only possible once the first holder let go.
            assert!(r.load(Ordering::SeqCst), "got the lock while it was held");
            set
        });
        std::thread::sleep(Duration::from_millis(50));
        released.store(true, Ordering::SeqCst);
        drop(first);
        let second = waiter.join().unwrap();
        assert!(!probe.try_lock(&path).unwrap());
        drop(second);
        assert!(probe.try_lock(&path).unwrap());
    }
}
