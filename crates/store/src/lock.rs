//! Per-path locks between processes.
//!
//! Two processes adding or building the same path must do the work once:
//! the first takes the path's lock and works; the second waits on the lock
//! and then finds the path valid. The garbage collector only *tries* a
//! path's lock and skips paths someone holds, so collection never waits
//! on, or stops, a builder.
//!
//! Locks are `flock`s on files in `<state>/locks/`, released by the kernel
//! when their holder exits, however it exits.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use bigtop_core::StorePath;

use crate::error::{io_err, Error};

/// A held lock on one store path; released when dropped.
#[derive(Debug)]
#[must_use = "the lock is released when this is dropped"]
pub struct PathLock {
    _file: File,
}

fn open(locks: &Path, path: &StorePath) -> Result<(File, std::path::PathBuf), Error> {
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

impl PathLock {
    /// Waits for the lock on `path`.
    pub(crate) fn acquire(locks: &Path, path: &StorePath) -> Result<PathLock, Error> {
        let (f, file) = open(locks, path)?;
        f.lock().map_err(io_err("lock", &file))?;
        Ok(PathLock { _file: f })
    }

    /// Takes the lock on `path` if nobody holds it.
    pub(crate) fn try_acquire(locks: &Path, path: &StorePath) -> Result<Option<PathLock>, Error> {
        let (f, file) = open(locks, path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(PathLock { _file: f })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(io_err("lock", &file)(e)),
        }
    }
}
