//! Stopping a build from outside: a signal handler, a deploy tool's
//! cancel button.
//!
//! Every running build waits on the interrupt's pipe beside its log and
//! its process; once fired, each kills its builder (a sandboxed builder's
//! whole PID namespace, an unsandboxed one's process group), cleans up its
//! scratch and build dirs and reports itself interrupted, and nothing new
//! starts. [`Builder::build`](super::Builder::build) then fails with
//! [`Error::Interrupted`](super::Error::Interrupted).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A switch that interrupts the builds given it; cheap to clone, and
/// every clone is the same switch.
#[derive(Debug, Clone)]
pub struct Interrupt(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    fired: AtomicBool,
    /// Readable once fired, and for good: nothing ever reads it.
    read: OwnedFd,
    write: OwnedFd,
}

impl Interrupt {
    /// A switch not yet fired.
    pub fn new() -> io::Result<Interrupt> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors, owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Interrupt(Arc::new(Inner {
            fired: AtomicBool::new(false),
            read,
            write,
        })))
    }

    /// Interrupts every build using this switch, now and later. Only a
    /// flag and a one-byte write: safe to call from a signal handler.
    pub fn fire(&self) {
        if !self.0.fired.swap(true, Ordering::SeqCst) {
            // SAFETY: writes one byte from a live buffer to our own pipe.
            unsafe { libc::write(self.0.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }
    }

    /// Whether [`fire`](Self::fire) was called.
    pub fn fired(&self) -> bool {
        self.0.fired.load(Ordering::SeqCst)
    }

    /// Becomes readable, and stays so, once fired: for `poll`.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.read.as_fd()
    }
}
