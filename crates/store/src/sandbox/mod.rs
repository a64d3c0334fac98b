//! Runs one build process inside Linux namespaces, cheaply enough to start
//! thousands of builds in a row.
//!
//! A sandboxed builder sees a root that holds only its input closure (each
//! input bind-mounted read-only at its logical store path), the outputs it
//! creates, its build directory, a minimal `/dev`, a private `/proc`, and
//! three small files in `/etc`. Everything but the build directory and the
//! store directory is read-only. It has no network unless asked (fixed-output
//! derivations), and it is PID 1 of its own PID namespace, so every process
//! it starts dies with it.
//!
//! # Why it is fast
//!
//! Creating a network namespace costs milliseconds, and a user namespace
//! needs its maps written from outside. Both are created **once per
//! concurrent sandbox** (per build uid/gid pair), not once per build: a
//! parked child makes a pair, the parent keeps `/proc/PID/ns/{user,net}`
//! open and lets the child die, and the pair goes to a pool. Each sandbox
//! leases a pair no running sandbox holds, joins it with `setns` and
//! creates only the cheap namespaces (mount, PID, IPC, UTS) afresh; the
//! pair returns to the pool once its builder is reaped (and with it, as
//! PID 1, everything it started). Builds running at once therefore never
//! share a loopback interface or abstract Unix sockets; builds one after
//! the other may reuse one, empty of processes by then.
//!
//! The two children a spawn needs (one to join the namespaces, one to be
//! PID 1 of the new PID namespace) are started like `posix_spawn` starts
//! its child: `clone(CLONE_VM | CLONE_VFORK)` on a stack of their own, so
//! no page table is copied however large the parent is, and the parent
//! learns through shared memory whether the builder was executed or which
//! step failed.
//!
//! # Safety of the children
//!
//! The parent is multi-threaded. Between `clone` and `execve` the children
//! only make system calls on data prepared before the `clone` (every path
//! as a `CString`, every mount as a prepared step, `argv` and `envp` as pointer
//! arrays): they never allocate, take a lock, or unwind. All signals are
//! blocked in the parent around the `clone`, so no handler of the parent
//! runs on the children's stacks; the builder resets every disposition to
//! the default and unblocks them just before `execve`.
//!
//! ```no_run
//! use std::path::PathBuf;
//! use bigtop_store::sandbox::{self, SandboxSpec};
//!
//! let (stdout_r, stdout_w) = std::io::pipe()?;
//! let (stderr_r, stderr_w) = std::io::pipe()?;
//! let spec = SandboxSpec {
//!     program: "/bin/sh".into(),
//!     args: vec!["-c".into(), "echo hello > $out".into()],
//!     env: vec![("out".into(), "/bigtop/store/00000000000000000000000000000000-hello".into())],
//!     build_dir: PathBuf::from("/tmp/b/build"),
//!     build_dir_inside: PathBuf::from("/build"),
//!     store_dir: PathBuf::from("/bigtop/store"),
//!     store_root: PathBuf::from("/bigtop/store"),
//!     chroot_dir: PathBuf::from("/bigtop/store/.chroot-1"),
//!     inputs: vec![],
//!     outputs: vec!["00000000000000000000000000000000-hello".into()],
//!     extra_paths: sandbox::default_extra_paths()?,
//!     network: false,
//!     stdout: stdout_w.into(),
//!     stderr: stderr_w.into(),
//!     inherit: Vec::new(),
//!     uid: sandbox::DEFAULT_UID,
//!     gid: sandbox::DEFAULT_GID,
//! };
//! let child = sandbox::spawn(&spec)?;
//! drop(spec); // closes our write ends, so the readers see the end
//! # drop((stdout_r, stderr_r));
//! assert!(child.wait()?.success());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod child;
mod host;
mod namespaces;
mod root;
mod seccomp;
mod spawn;

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use host::{default_extra_paths, libraries_of};
pub use namespaces::check_available;
pub use spawn::{spawn, Sandboxed};

/// The builder's uid inside the sandbox unless told otherwise (Nix's
/// `nixbld` convention).
pub const DEFAULT_UID: u32 = 1000;
/// The builder's gid inside the sandbox unless told otherwise.
pub const DEFAULT_GID: u32 = 100;

/// What to run and what it may see. Every path field is absolute.
#[derive(Debug)]
pub struct SandboxSpec {
    /// The builder, as a path inside the sandbox (`/bin/sh`, a store path).
    /// It is executed directly: no `PATH` search.
    pub program: String,
    /// Arguments after `argv[0]` (which is `program`).
    pub args: Vec<String>,
    /// The builder's complete environment; nothing is inherited.
    pub env: Vec<(String, String)>,
    /// Host directory (existing, empty, writable) that the builder sees at
    /// `build_dir_inside`. Its parent must be closed to other users (mode
    /// 0700): the builder can open the directory itself to everyone.
    pub build_dir: PathBuf,
    /// Where the builder sees its build directory (e.g. `/build`); its
    /// working directory. `/tmp` is a symlink to it (unless it is `/tmp`).
    pub build_dir_inside: PathBuf,
    /// The logical store directory (e.g. `/bigtop/store`): where the store
    /// is seen inside.
    pub store_dir: PathBuf,
    /// The host directory holding the store paths (the same as `store_dir`
    /// unless the store is a chroot store).
    pub store_root: PathBuf,
    /// Host scratch directory for the sandbox's root, on the same file
    /// system as `store_root`. Created if missing, and made mode 0700 (the
    /// outputs are written below it); the caller removes it after
    /// [`Sandboxed::wait`].
    pub chroot_dir: PathBuf,
    /// Base names (`<digest>-<name>`) of the store paths the builder may
    /// read: its input closure. Each must exist under `store_root`.
    pub inputs: Vec<String>,
    /// Base names of the paths the builder is expected to create in the
    /// store directory. After it exits they are at
    /// `chroot_dir/<store_dir>/<name>` on the host, for the caller to move.
    pub outputs: Vec<String>,
    /// `(host path, path inside)` pairs made visible read-only, files or
    /// directories (see [`default_extra_paths`]). Repeated pairs are
    /// mounted once; of two pairs with the same inside path, the later
    /// one is seen.
    pub extra_paths: Vec<(PathBuf, PathBuf)>,
    /// Share the host's network namespace (fixed-output derivations only).
    /// Then the host's `/etc/resolv.conf` and `/etc/services` are visible
    /// too, if they exist.
    pub network: bool,
    /// Where the builder's standard output goes (e.g. a pipe's write end).
    /// Drop the spec after [`spawn`] so that the reader sees the end.
    pub stdout: OwnedFd,
    /// Where the builder's standard error goes.
    pub stderr: OwnedFd,
    /// Descriptors the builder inherits, as 3, 4, … in this order (a
    /// jobserver's pipe ends); every other descriptor is closed. The
    /// caller keeps them open until [`spawn`] returns.
    pub inherit: Vec<RawFd>,
    /// The builder's uid inside ([`DEFAULT_UID`]). It is mapped to the
    /// calling process's effective uid: files the builder creates are owned
    /// by the caller on the host.
    pub uid: u32,
    /// The builder's gid inside ([`DEFAULT_GID`]), mapped to the caller's
    /// effective gid.
    pub gid: u32,
}

/// Why a sandbox could not be prepared, started, waited for or killed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The kernel does not let this process create or join the namespaces.
    #[error("sandboxing is unavailable: {what} failed{hint}")]
    Unavailable {
        /// The operation that failed (`clone(CLONE_NEWUSER | CLONE_NEWNET)`, …).
        what: &'static str,
        /// What may be the cause (a sysctl and its value), or empty.
        hint: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A field of the spec cannot be honoured.
    #[error("invalid sandbox spec: {field} `{value}` {reason}")]
    InvalidSpec {
        /// The field (`inputs`, `env`, …).
        field: &'static str,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The sandbox's root could not be laid out on the host.
    #[error("cannot {action} `{path}` for the sandbox")]
    Prepare {
        /// What was being done (`create`, `stat`, `write`, …).
        action: &'static str,
        /// The host path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A step of the sandbox's setup failed inside the new namespaces.
    #[error("sandbox setup failed: cannot {step}")]
    Setup {
        /// The step, with the paths it concerned.
        step: String,
        /// The error of the system call.
        #[source]
        source: io::Error,
    },
    /// The builder could not be executed.
    #[error("cannot execute `{program}` in the sandbox")]
    Exec {
        /// The builder, as seen inside.
        program: String,
        /// The error of `execve`.
        #[source]
        source: io::Error,
    },
    /// Waiting for or signalling the sandbox failed.
    #[error("cannot {action} sandboxed process {pid}")]
    Process {
        /// `wait for`, `kill`, …
        action: &'static str,
        /// Its pid on the host.
        pid: i32,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The dynamic loader could not list a program's libraries.
    #[error("cannot find the libraries of `{path}`: {reason}")]
    Libraries {
        /// The program.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn prep_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Prepare {
        action,
        path: path.to_owned(),
        source,
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
