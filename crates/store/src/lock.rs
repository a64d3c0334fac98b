//! Per-path locks between processes.
//!
//! Two processes adding or building the same path must do the work once:
//! the first takes the path's lock and works; the second waits on the lock
//! and then finds the path valid. The garbage collector only *tries* a
//! path's lock and skips paths someone holds, so collection never waits
//! on, or stops, a builder.
//!
//! Locks are `flock`s on files in `<state>/locks/`, released by the kernel
//! when their holder exits, however it exits. A holder removes the file
//! when it is done, so the folder holds only the locks in use; a waiter
//! that wakes holding a removed file (another has replaced it) starts over.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bigtop_core::StorePath;

use crate::error::{io_err, Error};

/// A held lock on one store path; released when dropped.
#[derive(Debug)]
#[must_use = "the lock is released when this is dropped"]
pub struct PathLock {
    /// Holds the `flock`: closing it releases the lock.
    #[allow(dead_code)]
    file: File,
    path: PathBuf,
}

fn open(locks: &Path, path: &StorePath) -> Result<(File, PathBuf), Error> {
    let file = locks.join(format!("{}.lock", path.digest()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&file)
        .map_err(io_err("open the lock", &file))?;
    Ok((f, file))
}

/// Whether the locked file is still the one at its path (it may have been
/// removed by the holder this process waited for).
fn still_current(f: &File, file: &Path) -> io::Result<bool> {
    let held = f.metadata()?;
    match fs::metadata(file) {
        Ok(now) => Ok(now.ino() == held.ino() && now.dev() == held.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl PathLock {
    /// Waits for the lock on `path`.
    pub(crate) fn acquire(locks: &Path, path: &StorePath) -> Result<PathLock, Error> {
        loop {
            let (f, file) = open(locks, path)?;
            f.lock().map_err(io_err("lock", &file))?;
            if still_current(&f, &file).map_err(io_err("lock", &file))? {
                return Ok(PathLock {
                    file: f,
                    path: file,
                });
            }
        }
    }

    /// Takes the lock on `path` if nobody holds it.
    pub(crate) fn try_acquire(locks: &Path, path: &StorePath) -> Result<Option<PathLock>, Error> {
        loop {
            let (f, file) = open(locks, path)?;
            match f.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(io_err("lock", &file)(e)),
            }
            if still_current(&f, &file).map_err(io_err("lock", &file))? {
                return Ok(Some(PathLock {
                    file: f,
                    path: file,
                }));
            }
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Removed while still held: a waiter holding this file then sees
        // it is no longer current and starts over on a fresh one.
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_second_holder_waits_and_lock_files_do_not_pile_up() {
        let tmp = tempfile::tempdir().unwrap();
        let path: StorePath = "00bgd045z0d4icpbc2yyz4gx48ak44la-x".parse().unwrap();
        let first = PathLock::acquire(tmp.path(), &path).unwrap();
        assert!(PathLock::try_acquire(tmp.path(), &path).unwrap().is_none());
        let released = Arc::new(AtomicBool::new(false));
        let (dir, p, r) = (tmp.path().to_owned(), path.clone(), released.clone());
        let waiter = std::thread::spawn(move || {
            let lock = PathLock::acquire(&dir, &p).unwrap();
            // Only possible once the first holder let go.
            assert!(r.load(Ordering::SeqCst), "got the lock while it was held");
            lock
        });
        std::thread::sleep(Duration::from_millis(50));
        released.store(true, Ordering::SeqCst);
        drop(first);
        let second = waiter.join().unwrap();
        // The second holder works on a current file, and only one exists.
        assert!(still_current(&second.file, &second.path).unwrap());
        assert!(PathLock::try_acquire(tmp.path(), &path).unwrap().is_none());
        drop(second);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
