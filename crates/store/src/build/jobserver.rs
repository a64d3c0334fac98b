//! One CPU budget for every build a [`Builder`](super::Builder) runs: a
//! GNU make jobserver.
//!
//! The pool is a pipe holding one byte per core. The scheduler takes a
//! byte before it starts a process build and puts it back when the build
//! ends: that byte is the build's own slot. The pipe's two ends are passed
//! to every builder (as descriptors 3 and 4 in the sandbox) and announced
//! in `MAKEFLAGS`,
//! so a plain `make` (without `-j`, which would make it ignore the pool)
//! inside any build takes a byte for each extra job it runs. Two parallel
//! `make` builds therefore share `cores` between them instead of running
//! `cores` jobs each. Other jobserver clients (cargo, ninja ≥ 1.13, …)
//! honour the same variable.
//!
//! A builder killed while holding bytes loses them. The scheduler
//! refills the pool whenever no build is running, so a loss never
//! outlives the builds that could have returned it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// The pool of tokens shared by a run's builds.
#[derive(Debug)]
pub(crate) struct Jobserver {
    /// The pipe's ends, blocking, as builders inherit them.
    read: OwnedFd,
    write: OwnedFd,
    /// A second, non-blocking open of the read end for the scheduler:
    /// `O_NONBLOCK` belongs to an open file description, and setting it
    /// on the one the builders share would break make's blocking reads.
    poll: File,
    tokens: usize,
}

impl Jobserver {
    /// A pool of `tokens` (at least one).
    pub(crate) fn new(tokens: usize) -> io::Result<Jobserver> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let poll = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", read.as_raw_fd()))?;
        let js = Jobserver {
            read,
            write,
            poll,
            tokens: tokens.max(1),
        };
        js.put(js.tokens)?;
        Ok(js)
    }

    /// Takes a token if one is free, without waiting.
    pub(crate) fn try_acquire(&self) -> bool {
        let mut b = [0u8; 1];
        loop {
            match (&self.poll).read(&mut b) {
                Ok(1) => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => return false,
            }
        }
    }

    /// Returns a token taken with [`try_acquire`](Self::try_acquire).
    pub(crate) fn release(&self) {
        // A full pipe cannot happen: it never holds more than `tokens`.
        let _ = self.put(1);
    }

    /// Empties the pool and fills it again: call only when no build holds
    /// a token, to recover those lost with killed builders.
    pub(crate) fn refill(&self) -> io::Result<()> {
        let mut buf = [0u8; 512];
        while matches!((&self.poll).read(&mut buf), Ok(n) if n > 0) {}
        self.put(self.tokens)
    }

    fn put(&self, n: usize) -> io::Result<()> {
        let mut w = File::from(self.write.try_clone()?);
        w.write_all(&vec![b'+'; n])
    }

    /// The pool's ends: read, write.
    pub(crate) fn fds(&self) -> [RawFd; 2] {
        [self.read.as_raw_fd(), self.write.as_raw_fd()]
    }

    /// `MAKEFLAGS` for a builder that has the pool's ends as `fds` (both
    /// spellings of the option, for make before and after 4.2).
    pub(crate) fn makeflags([r, w]: [RawFd; 2]) -> String {
        format!(" -j --jobserver-fds={r},{w} --jobserver-auth={r},{w}")
    }
}

#[cfg(test)]
mod tests {
    use super::Jobserver;

    #[test]
    fn tokens_are_taken_returned_and_refilled() {
        let js = Jobserver::new(2).unwrap();
        assert!(js.try_acquire());
        assert!(js.try_acquire());
        assert!(!js.try_acquire(), "only two");
        js.release();
        assert!(js.try_acquire());
        // Both lost (as with killed builders): a refill restores them.
        js.refill().unwrap();
        assert!(js.try_acquire());
        assert!(js.try_acquire());
        assert!(!js.try_acquire());
    }
}
