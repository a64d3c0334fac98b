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

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use thiserror::Error;

use crate::seccomp;

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
    #[error("Sandboxing is unavailable: {what} failed{hint}")]
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
    #[error("Invalid sandbox spec: {field} `{value}` {reason}")]
    InvalidSpec {
        /// The field (`inputs`, `env`, …).
        field: &'static str,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The sandbox's root could not be laid out on the host.
    #[error("Cannot {action} `{path}` for the sandbox")]
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
    #[error("Sandbox setup failed: cannot {step}")]
    Setup {
        /// The step, with the paths it concerned.
        step: String,
        /// The error of the system call.
        #[source]
        source: io::Error,
    },
    /// The builder could not be executed.
    #[error("Cannot execute `{program}` in the sandbox")]
    Exec {
        /// The builder, as seen inside.
        program: String,
        /// The error of `execve`.
        #[source]
        source: io::Error,
    },
    /// Waiting for or signalling the sandbox failed.
    #[error("Cannot {action} sandboxed process {pid}")]
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
    #[error("Cannot find the libraries of `{path}`: {reason}")]
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

// ---------------------------------------------------------------------------
// The shared user and network namespaces

/// A user namespace mapping one build uid/gid to the caller's, and a
/// network namespace owned by it with only `lo`, up.
#[derive(Debug)]
struct SharedNamespaces {
    user: OwnedFd,
    net: OwnedFd,
    /// Whether the builder may call `setgroups` (only when the maps were
    /// written with `CAP_SETGID`, i.e. by root): then it drops the
    /// caller's supplementary groups.
    setgroups: bool,
}

/// Namespace pairs not in use, by (uid, gid) inside.
type NamespacePool = Mutex<HashMap<(u32, u32), Vec<SharedNamespaces>>>;

fn pool() -> &'static NamespacePool {
    static POOL: OnceLock<NamespacePool> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// A namespace pair lent to one sandbox: no other sandbox uses it until
/// this one is over, so builds running at once never share a loopback.
/// A pair goes back to the pool when its sandbox is over (its PID 1 reaped,
/// so nothing lives in it any more) and serves a later build: making a
/// network namespace costs milliseconds, so each is made once per
/// concurrent build, not once per build.
#[derive(Debug)]
struct Lease {
    key: (u32, u32),
    ns: Option<SharedNamespaces>,
}

impl Lease {
    fn ns(&self) -> &SharedNamespaces {
        self.ns
            .as_ref()
            .expect("a lease holds its pair until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(ns) = self.ns.take() {
            let mut pool = pool().lock().unwrap_or_else(|p| p.into_inner());
            pool.entry(self.key).or_default().push(ns);
        }
    }
}

fn lease_namespaces(uid: u32, gid: u32) -> Result<Lease, SandboxError> {
    let free = pool()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(&(uid, gid))
        .and_then(Vec::pop);
    let ns = match free {
        Some(ns) => ns,
        None => create_namespaces(uid, gid)?,
    };
    Ok(Lease {
        key: (uid, gid),
        ns: Some(ns),
    })
}

/// Signals that the parked child brought `lo` up (1) or failed (errno).
extern "C" fn parked_child(arg: *mut c_void) -> libc::c_int {
    // SAFETY (whole function): a fork-like child of a multi-threaded
    // process; only system calls on the stack and on `arg`.
    let ready_w = arg as usize as RawFd;
    let status: i32 = if unsafe { loopback_up() } { 0 } else { errno() };
    let bytes = status.to_ne_bytes();
    unsafe {
        libc::write(ready_w, bytes.as_ptr().cast(), bytes.len());
        loop {
            libc::pause();
        }
    }
}

/// Brings up `lo` in the current network namespace, as a fresh one has it
/// down and builds (test suites) use 127.0.0.1.
unsafe fn loopback_up() -> bool {
    let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if sock < 0 {
        return false;
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[0] = b'l' as libc::c_char;
    req.name[1] = b'o' as libc::c_char;
    req.flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    let ok = libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req as *mut IfReq) == 0;
    libc::close(sock);
    ok
}

/// `struct ifreq` with the `ifr_flags` member of its union.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn unavailable(what: &'static str, source: io::Error) -> SandboxError {
    let mut hint = String::new();
    for (file, bad) in [
        ("/proc/sys/user/max_user_namespaces", "0"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1",
        ),
    ] {
        if let Ok(value) = fs::read_to_string(file) {
            if value.trim() == bad {
                hint.push_str(&format!(" ({file} is {bad}: user namespaces are disabled)"));
            }
        }
    }
    SandboxError::Unavailable { what, hint, source }
}

fn create_namespaces(uid: u32, gid: u32) -> Result<SharedNamespaces, SandboxError> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(unavailable("pipe2", io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    let (mut ready_r, ready_w) =
        unsafe { (fs::File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let stack = Stacks::new(1)?;
    // Fork-like (no CLONE_VM): the child parks while we write its maps.
    let pid = unsafe {
        libc::clone(
            parked_child,
            stack.top(0),
            libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::SIGCHLD,
            ready_w.as_raw_fd() as usize as *mut c_void,
        )
    };
    if pid < 0 {
        return Err(unavailable(
            "clone(CLONE_NEWUSER | CLONE_NEWNET)",
            io::Error::last_os_error(),
        ));
    }
    drop(ready_w);
    let result = configure_namespaces(pid, uid, gid, &mut ready_r);
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 && errno() == libc::EINTR {}
    }
    result
}

fn configure_namespaces(
    pid: i32,
    uid: u32,
    gid: u32,
    ready_r: &mut fs::File,
) -> Result<SharedNamespaces, SandboxError> {
    let mut status = [0u8; 4];
    ready_r
        .read_exact(&mut status)
        .map_err(|e| unavailable("starting the namespace holder", e))?;
    let status = i32::from_ne_bytes(status);
    if status != 0 {
        return Err(unavailable(
            "bringing up `lo` in the new network namespace",
            io::Error::from_raw_os_error(status),
        ));
    }
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    fs::write(proc.join("uid_map"), format!("{uid} {euid} 1\n"))
        .map_err(|e| unavailable("writing the uid map", e))?;
    let gid_map = format!("{gid} {egid} 1\n");
    // Only a writer with CAP_SETGID may leave setgroups allowed.
    let setgroups = match fs::write(proc.join("gid_map"), &gid_map) {
        Ok(()) => true,
        Err(_) => {
            fs::write(proc.join("setgroups"), "deny")
                .map_err(|e| unavailable("writing `deny` to setgroups", e))?;
            fs::write(proc.join("gid_map"), &gid_map)
                .map_err(|e| unavailable("writing the gid map", e))?;
            false
        }
    };
    let open = |name: &str| {
        fs::File::open(proc.join("ns").join(name))
            .map(OwnedFd::from)
            .map_err(|e| unavailable("opening the namespace", e))
    };
    Ok(SharedNamespaces {
        user: open("user")?,
        net: open("net")?,
        setgroups,
    })
}

/// Checks that this process can create and join the namespaces a sandbox
/// needs, and that the kernel has the system calls it uses (5.12 or newer).
/// The error names what is missing.
pub fn check_available() -> Result<(), SandboxError> {
    // Into the pool: the first build finds it made.
    drop(lease_namespaces(DEFAULT_UID, DEFAULT_GID)?);
    // An invalid call: ENOSYS tells the system call is missing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            0,
            std::ptr::null::<MountAttr>(),
            0,
        )
    };
    if r < 0 && errno() == libc::ENOSYS {
        return Err(unavailable(
            "mount_setattr (Linux 5.12 or newer)",
            io::Error::from_raw_os_error(libc::ENOSYS),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Host programs made visible inside

/// `/bin/sh` of the host, with its dynamic loader and the shared libraries
/// it needs, as `(host path, path inside)` pairs for
/// [`SandboxSpec::extra_paths`]: enough for a host shell to run inside.
pub fn default_extra_paths() -> Result<Vec<(PathBuf, PathBuf)>, SandboxError> {
    let sh = Path::new("/bin/sh");
    let host = fs::canonicalize(sh).map_err(prep_err("resolve", sh))?;
    let mut paths = vec![(host, sh.to_owned())];
    paths.extend(libraries_of(sh)?);
    Ok(paths)
}

/// The dynamic loader and shared libraries a host program needs, as
/// `(host path, path inside)` pairs (the inside path is the one the loader
/// asks for). Empty for a static program. The loader named in the ELF
/// header (`PT_INTERP`) is asked with `--list`.
pub fn libraries_of(program: &Path) -> Result<Vec<(PathBuf, PathBuf)>, SandboxError> {
    let lib_err = |reason: String| SandboxError::Libraries {
        path: program.to_owned(),
        reason,
    };
    let elf = fs::read(program).map_err(prep_err("read", program))?;
    let Some(interp) = elf_interpreter(&elf).map_err(|r| lib_err(r.to_owned()))? else {
        return Ok(Vec::new());
    };
    let out = std::process::Command::new(&interp)
        .arg("--list")
        .arg(program)
        .env_clear()
        .output()
        .map_err(|e| lib_err(format!("cannot run `{}`: {e}", interp.display())))?;
    if !out.status.success() {
        return Err(lib_err(format!(
            "`{} --list` failed ({}): {}",
            interp.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut inside: Vec<PathBuf> = vec![interp];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/…/libc.so.6 (0x…)`, `/lib64/ld-….so.2 (0x…)`,
        // or `linux-vdso.so.1 (0x…)`, which is no file.
        let target = line.split("=>").last().unwrap_or("").trim();
        if target.starts_with("not found") {
            return Err(lib_err(format!("the loader says: {}", line.trim())));
        }
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') && !inside.iter().any(|p| p == Path::new(path)) {
            inside.push(PathBuf::from(path));
        }
    }
    inside
        .into_iter()
        .map(|p| {
            let host = fs::canonicalize(&p).map_err(prep_err("resolve", &p))?;
            Ok((host, p))
        })
        .collect()
}

/// The `PT_INTERP` of an ELF file, if it has one.
fn elf_interpreter(elf: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    if elf.len() < 0x40 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file");
    }
    let wide = match elf[4] {
        1 => false,
        2 => true,
        _ => return Err("unknown ELF class"),
    };
    let little = match elf[5] {
        1 => true,
        2 => false,
        _ => return Err("unknown ELF byte order"),
    };
    let num = |at: usize, len: usize| -> Option<u64> {
        let bytes = elf.get(at..at.checked_add(len)?)?;
        let mut v = 0u64;
        for i in 0..len {
            let b = if little { bytes[len - 1 - i] } else { bytes[i] };
            v = (v << 8) | u64::from(b);
        }
        Some(v)
    };
    let truncated = "truncated ELF header";
    let (phoff, phentsize, phnum) = if wide {
        (num(0x20, 8), num(0x36, 2), num(0x38, 2))
    } else {
        (num(0x1c, 4), num(0x2a, 2), num(0x2c, 2))
    };
    let (phoff, phentsize, phnum) = (
        phoff.ok_or(truncated)? as usize,
        phentsize.ok_or(truncated)? as usize,
        phnum.ok_or(truncated)? as usize,
    );
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        const PT_INTERP: u64 = 3;
        if num(ph, 4).ok_or(truncated)? != PT_INTERP {
            continue;
        }
        let (offset, size) = if wide {
            (num(ph + 8, 8), num(ph + 32, 8))
        } else {
            (num(ph + 4, 4), num(ph + 16, 4))
        };
        let (offset, size) = (
            offset.ok_or(truncated)? as usize,
            size.ok_or(truncated)? as usize,
        );
        let bytes = elf
            .get(offset..offset.saturating_add(size))
            .ok_or("PT_INTERP beyond the end of the file")?;
        let bytes = bytes.split(|b| *b == 0).next().unwrap_or(bytes);
        return Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(bytes))));
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// The plan the children follow

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// One step of the builder's file system setup, prepared before the
/// `clone`.
enum Op {
    /// `mount(2)`.
    Mount {
        src: CString,
        dst: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// `mount_setattr(2)`: read-only (or writable again) in one call for a
    /// whole tree, where `mount(MS_REMOUNT)` takes one call per mount and
    /// must repeat every locked flag of the source.
    SetAttr {
        path: CString,
        recursive: bool,
        set: u64,
        clear: u64,
    },
    /// `open_tree(OPEN_TREE_CLONE)`: a detached bind mount of a host
    /// directory that the root's tmpfs is about to cover, kept for
    /// [`Op::MoveTree`].
    OpenTree { path: CString },
    /// `move_mount(2)` of the tree [`Op::OpenTree`] detached.
    MoveTree { dst: CString },
    /// A directory; one that exists already is no error.
    Mkdir { path: CString },
    /// An empty file, a mount point for a file; one that exists already
    /// is no error.
    Touch { path: CString },
    /// A new file with these contents.
    Write { path: CString, contents: Vec<u8> },
    /// A symbolic link.
    Symlink { target: CString, path: CString },
}

impl Op {
    fn bind(src: &Path, dst: &Path) -> Result<Op, SandboxError> {
        Ok(Op::Mount {
            src: c_path(src)?,
            dst: c_path(dst)?,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        })
    }

    /// Runs in the builder child: system calls only. `tree` holds the
    /// descriptor of [`Op::OpenTree`].
    unsafe fn apply(&self, tree: &AtomicI32) -> bool {
        match self {
            Op::Mount {
                src,
                dst,
                fstype,
                flags,
                data,
            } => {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                    *flags,
                    data.as_ref()
                        .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
                ) == 0
            }
            Op::SetAttr {
                path,
                recursive,
                set,
                clear,
            } => {
                let attr = MountAttr {
                    attr_set: *set,
                    attr_clr: *clear,
                    propagation: 0,
                    userns_fd: 0,
                };
                let flags = if *recursive { libc::AT_RECURSIVE } else { 0 };
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    flags,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                ) == 0
            }
            Op::OpenTree { path } => {
                const OPEN_TREE_CLONE: libc::c_long = 1;
                let fd = libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_long,
                );
                tree.store(fd as i32, Ordering::Relaxed);
                fd >= 0
            }
            Op::MoveTree { dst } => {
                const MOVE_MOUNT_F_EMPTY_PATH: libc::c_long = 4;
                libc::syscall(
                    libc::SYS_move_mount,
                    tree.load(Ordering::Relaxed),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    dst.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                ) == 0
            }
            Op::Mkdir { path } => libc::mkdir(path.as_ptr(), 0o755) == 0 || errno() == libc::EEXIST,
            // mknod, not open: an existing file may already be a bind mount
            // of a host file, which must never be opened for writing.
            Op::Touch { path } => {
                libc::mknod(path.as_ptr(), libc::S_IFREG | 0o644, 0) == 0 || errno() == libc::EEXIST
            }
            Op::Write { path, contents } => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    0o644,
                );
                if fd < 0 {
                    return false;
                }
                // Small files on a tmpfs: written whole, or it is an error.
                let written = libc::write(fd, contents.as_ptr().cast(), contents.len());
                libc::close(fd);
                written == contents.len() as isize
            }
            Op::Symlink { target, path } => libc::symlink(target.as_ptr(), path.as_ptr()) == 0,
        }
    }

    fn describe(&self) -> String {
        let show = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Op::Mount {
                src,
                dst,
                fstype: Some(fstype),
                ..
            } => format!("mount {} `{}` on `{}`", show(fstype), show(src), show(dst)),
            Op::Mount { src, dst, .. } => {
                format!("bind-mount `{}` on `{}`", show(src), show(dst))
            }
            Op::SetAttr {
                path, set, clear, ..
            } => format!(
                "make `{}` {}",
                show(path),
                if set & MOUNT_ATTR_RDONLY != 0 {
                    "read-only"
                } else if clear & MOUNT_ATTR_RDONLY != 0 {
                    "writable"
                } else {
                    "nosuid and nodev"
                }
            ),
            Op::OpenTree { path } => format!("clone the mount tree of `{}`", show(path)),
            Op::MoveTree { dst } => format!("move the store tree onto `{}`", show(dst)),
            Op::Mkdir { path } => format!("create directory `{}`", show(path)),
            Op::Touch { path } | Op::Write { path, .. } => {
                format!("create file `{}`", show(path))
            }
            Op::Symlink { target, path } => {
                format!("create symlink `{}` -> `{}`", show(path), show(target))
            }
        }
    }
}

/// Where the children are, written by them, read by the parent after the
/// `vfork`-style `clone` returned.
#[derive(Default)]
struct Report {
    /// The builder's pid (in the parent's PID namespace), once cloned.
    pid: AtomicI32,
    /// The [`Step`] that failed, or 0.
    step: AtomicU32,
    /// Which [`Op`] failed, for [`Step::Mount`].
    index: AtomicU32,
    /// The failed call's errno.
    errno: AtomicI32,
    /// The descriptor of [`Op::OpenTree`], in the builder's table.
    tree: AtomicI32,
}

#[derive(Clone, Copy)]
#[repr(u32)]
enum Step {
    JoinUser = 1,
    JoinNet,
    Clone,
    Mount,
    Hostname,
    EnterRoot,
    PivotRoot,
    DetachOldRoot,
    EnterBuildDir,
    OpenNull,
    Stdio,
    Session,
    NoNewPrivs,
    Seccomp,
    ParentDeath,
    Groups,
    Exec,
}

const STEPS: [Step; 17] = [
    Step::JoinUser,
    Step::JoinNet,
    Step::Clone,
    Step::Mount,
    Step::Hostname,
    Step::EnterRoot,
    Step::PivotRoot,
    Step::DetachOldRoot,
    Step::EnterBuildDir,
    Step::OpenNull,
    Step::Stdio,
    Step::Session,
    Step::NoNewPrivs,
    Step::Seccomp,
    Step::ParentDeath,
    Step::Groups,
    Step::Exec,
];

/// Everything the children need, owned by the parent's `spawn` frame,
/// which is suspended while they use it.
struct Plan {
    user_fd: RawFd,
    /// -1 to keep the host's network namespace.
    net_fd: RawFd,
    ops: Vec<Op>,
    root: CString,
    build_dir_inside: CString,
    stdout: RawFd,
    stderr: RawFd,
    inherit: Vec<RawFd>,
    setgroups: bool,
    program: CString,
    /// Null-terminated; points into `_strings`.
    argv: Vec<*const libc::c_char>,
    /// Null-terminated; points into `_strings`.
    envp: Vec<*const libc::c_char>,
    _strings: Vec<CString>,
    builder_stack: *mut c_void,
    /// The system call filter; points into `_filter`.
    seccomp: seccomp::Program,
    _filter: Vec<seccomp::Instruction>,
    /// A pidfd of this process, which the builder polls once it has asked
    /// to be killed with its parent: if we died before, nobody kills it.
    parent: RawFd,
    report: Report,
}

/// Records the failed step and ends the child. Never returns.
unsafe fn fail(plan: &Plan, step: Step, index: usize) -> ! {
    plan.report.errno.store(errno(), Ordering::Relaxed);
    plan.report.index.store(index as u32, Ordering::Relaxed);
    plan.report.step.store(step as u32, Ordering::Release);
    libc::_exit(127)
}

const NAMESPACE_FLAGS: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// First child: joins the shared namespaces (which a multi-threaded
/// process cannot), then clones the builder as a sibling (`CLONE_PARENT`),
/// PID 1 of a new PID namespace, so that the parent reaps it.
extern "C" fn join_and_clone(arg: *mut c_void) -> libc::c_int {
    // SAFETY (whole function): `arg` is the parent's `Plan`, alive and
    // untouched until this child exits; only system calls follow.
    unsafe {
        let plan = &*(arg as *const Plan);
        if libc::setns(plan.user_fd, libc::CLONE_NEWUSER) != 0 {
            fail(plan, Step::JoinUser, 0);
        }
        if plan.net_fd >= 0 && libc::setns(plan.net_fd, libc::CLONE_NEWNET) != 0 {
            fail(plan, Step::JoinNet, 0);
        }
        let pid = libc::clone(
            builder,
            plan.builder_stack,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT | NAMESPACE_FLAGS,
            arg,
        );
        if pid < 0 {
            fail(plan, Step::Clone, 0);
        }
        plan.report.pid.store(pid, Ordering::Release);
        0
    }
}

/// Second child, PID 1 of its namespace: mounts its root, enters it and
/// executes the builder.
extern "C" fn builder(arg: *mut c_void) -> libc::c_int {
    // SAFETY (whole function): as in `join_and_clone`.
    unsafe {
        let plan = &*(arg as *const Plan);
        // Our parent is the thread that spawned us: a bigtop killed
        // outright (SIGKILL) takes the builder, and with it the whole PID
        // namespace, along.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            fail(plan, Step::ParentDeath, 0);
        }
        let mut parent = libc::pollfd {
            fd: plan.parent,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut parent, 1, 0) != 0 {
            // Gone already (or unknowable): never run unsupervised.
            fail(plan, Step::ParentDeath, 0);
        }
        for (i, op) in plan.ops.iter().enumerate() {
            if !op.apply(&plan.report.tree) {
                fail(plan, Step::Mount, i);
            }
        }
        let host = b"localhost";
        if libc::sethostname(host.as_ptr().cast(), host.len()) != 0 {
            fail(plan, Step::Hostname, 0);
        }
        if libc::chdir(plan.root.as_ptr()) != 0 {
            fail(plan, Step::EnterRoot, 0);
        }
        // The old root ends stacked on the new one, and is detached at once.
        let dot = c".".as_ptr();
        if libc::syscall(libc::SYS_pivot_root, dot, dot) != 0 {
            fail(plan, Step::PivotRoot, 0);
        }
        if libc::umount2(dot, libc::MNT_DETACH) != 0 {
            fail(plan, Step::DetachOldRoot, 0);
        }
        if libc::chdir(plan.build_dir_inside.as_ptr()) != 0 {
            fail(plan, Step::EnterBuildDir, 0);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0 {
            fail(plan, Step::OpenNull, 0);
        }
        // Copied above every target first, so that no dup2 below clobbers
        // a descriptor still to be placed.
        let first_free = 3 + plan.inherit.len() as libc::c_int;
        let out = libc::fcntl(plan.stdout, libc::F_DUPFD_CLOEXEC, first_free);
        let err = libc::fcntl(plan.stderr, libc::F_DUPFD_CLOEXEC, first_free);
        if out < 0
            || err < 0
            || libc::dup2(null, 0) < 0
            || libc::dup2(out, 1) < 0
            || libc::dup2(err, 2) < 0
        {
            fail(plan, Step::Stdio, 0);
        }
        for (i, &fd) in plan.inherit.iter().enumerate() {
            let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first_free);
            // dup2 clears close-on-exec on the target.
            if copy < 0 || libc::dup2(copy, 3 + i as libc::c_int) < 0 {
                fail(plan, Step::Stdio, 0);
            }
        }
        if libc::close_range(first_free as libc::c_uint, libc::c_uint::MAX, 0) != 0 {
            fail(plan, Step::Stdio, 0);
        }
        if libc::setsid() < 0 {
            fail(plan, Step::Session, 0);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(plan, Step::NoNewPrivs, 0);
        }
        if !plan.seccomp.install() {
            fail(plan, Step::Seccomp, 0);
        }
        if plan.setgroups && libc::setgroups(0, std::ptr::null()) != 0 {
            fail(plan, Step::Groups, 0);
        }
        libc::umask(0o022);
        // Handlers die with execve but ignored signals stay ignored, and
        // the parent's mask (all blocked) would be inherited.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=libc::SIGRTMAX() {
            libc::sigaction(sig, &default, std::ptr::null_mut());
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
        fail(plan, Step::Exec, 0)
    }
}

/// Two stacks for the children, each above a guard page.
struct Stacks {
    base: *mut c_void,
    len: usize,
}

const STACK_SIZE: usize = 256 * 1024;
const GUARD_SIZE: usize = 4096;

impl Stacks {
    fn new(count: usize) -> Result<Stacks, SandboxError> {
        let len = count * (GUARD_SIZE + STACK_SIZE);
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(SandboxError::Setup {
                step: "map the children's stacks".into(),
                source: io::Error::last_os_error(),
            });
        }
        let stacks = Stacks { base, len };
        for i in 0..count {
            let guard = unsafe { base.cast::<u8>().add(i * (GUARD_SIZE + STACK_SIZE)) };
            if unsafe { libc::mprotect(guard.cast(), GUARD_SIZE, libc::PROT_NONE) } != 0 {
                return Err(SandboxError::Setup {
                    step: "protect the children's stack guards".into(),
                    source: io::Error::last_os_error(),
                });
            }
        }
        Ok(stacks)
    }

    /// The top of stack `i` (stacks grow down).
    fn top(&self, i: usize) -> *mut c_void {
        unsafe {
            self.base
                .cast::<u8>()
                .add((i + 1) * (GUARD_SIZE + STACK_SIZE))
                .cast()
        }
    }
}

impl Drop for Stacks {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.base, self.len) };
    }
}

// ---------------------------------------------------------------------------
// Spawning

/// A running sandboxed builder. Dropping it before it was waited for kills
/// the sandbox and reaps it.
#[derive(Debug)]
pub struct Sandboxed {
    pid: i32,
    /// Signals through it cannot hit a recycled pid.
    pidfd: OwnedFd,
    status: Mutex<Option<ExitStatus>>,
    /// Declared last: returned to the pool only after `Drop` has killed
    /// and reaped the builder.
    _namespaces: Lease,
}

impl Sandboxed {
    /// The builder's pid in the caller's PID namespace (it is 1 inside).
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Kills the whole sandbox: the builder gets `SIGKILL`, and the kernel
    /// kills every other process of its PID namespace with it. Killing a
    /// sandbox that has already ended is no error. Safe to call from
    /// another thread while one is in [`wait`](Self::wait).
    pub fn kill(&self) -> Result<(), SandboxError> {
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r != 0 && errno() != libc::ESRCH {
            return Err(self.process_err("kill"));
        }
        Ok(())
    }

    /// Waits for the builder to exit. When this returns, every process of
    /// the sandbox is gone. Later calls return the same status.
    pub fn wait(&self) -> Result<ExitStatus, SandboxError> {
        self.wait_flags(0)
            .map(|s| s.expect("a blocking wait returns a status"))
    }

    /// The exit status if the builder has exited, without blocking.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, SandboxError> {
        self.wait_flags(libc::WNOHANG)
    }

    fn wait_flags(&self, flags: libc::c_int) -> Result<Option<ExitStatus>, SandboxError> {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(s) = *status {
            return Ok(Some(s));
        }
        let mut raw = 0;
        loop {
            let r = unsafe { libc::waitpid(self.pid, &mut raw, flags) };
            if r == self.pid {
                let s = ExitStatus::from_raw(raw);
                *status = Some(s);
                return Ok(Some(s));
            }
            if r == 0 {
                return Ok(None);
            }
            if errno() != libc::EINTR {
                return Err(self.process_err("wait for"));
            }
        }
    }

    fn process_err(&self, action: &'static str) -> SandboxError {
        SandboxError::Process {
            action,
            pid: self.pid,
            source: io::Error::last_os_error(),
        }
    }
}

impl Drop for Sandboxed {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(None)) {
            let _ = self.kill();
            let _ = self.wait();
        }
    }
}

fn c_path(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SandboxError::InvalidSpec {
        field: "path",
        value: path.display().to_string(),
        reason: "contains a NUL byte",
    })
}

fn c_string(field: &'static str, s: &str) -> Result<CString, SandboxError> {
    CString::new(s).map_err(|_| SandboxError::InvalidSpec {
        field,
        value: s.to_owned(),
        reason: "contains a NUL byte",
    })
}

/// `path` (absolute) as a path under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn check_absolute(field: &'static str, path: &Path) -> Result<(), SandboxError> {
    let clean = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if clean {
        Ok(())
    } else {
        Err(SandboxError::InvalidSpec {
            field,
            value: path.display().to_string(),
            reason: "is not an absolute path without `.` and `..`",
        })
    }
}

fn check_name(field: &'static str, name: &str) -> Result<(), SandboxError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(SandboxError::InvalidSpec {
            field,
            value: name.to_owned(),
            reason: "is not a store path base name",
        });
    }
    Ok(())
}

/// The host's device nodes given to every sandbox (those that exist).
fn devices() -> &'static [&'static str] {
    static DEVICES: OnceLock<Vec<&'static str>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        ["null", "zero", "full", "random", "urandom", "tty"]
            .into_iter()
            .filter(|d| {
                fs::metadata(Path::new("/dev").join(d))
                    .is_ok_and(|m| m.file_type().is_char_device())
            })
            .collect()
    })
}

/// Creates an empty mount point on the host for `host` at `at`: a
/// directory for a directory, a file otherwise.
fn host_mount_point(host: &Path, at: &Path) -> Result<(), SandboxError> {
    let meta = fs::metadata(host).map_err(prep_err("stat", host))?;
    if meta.is_dir() {
        fs::create_dir(at).map_err(prep_err("create", at))
    } else {
        fs::File::create(at)
            .map(drop)
            .map_err(prep_err("create", at))
    }
}

/// Makes `dir` (or checks it is) a directory of ours that no other user
/// can enter. The outputs are written below it: a builder may make them
/// setuid (where the filter misses a way) or world-writable, and nobody
/// else may reach them before they are canonicalized.
fn private_dir(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(prep_err("create", dir)(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(prep_err("stat", dir))?;
    if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(SandboxError::InvalidSpec {
            field: "chroot_dir",
            value: dir.display().to_string(),
            reason: "is not a directory of this user",
        });
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(prep_err("make private", dir))?;
    }
    Ok(())
}

/// Refuses a directory the builder sees (and may `chmod`) whose parent
/// lets other users in: they could then reach what the builder puts there.
fn check_private_parent(field: &'static str, dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(dir);
    let meta = fs::metadata(parent).map_err(prep_err("stat", parent))?;
    if meta.mode() & 0o077 != 0 {
        return Err(SandboxError::InvalidSpec {
            field,
            value: dir.display().to_string(),
            reason: "is in a directory other users can enter (it must be mode 0700)",
        });
    }
    Ok(())
}

/// The steps that build the root on a tmpfs inside the sandbox.
struct RootPlan<'a> {
    root: &'a Path,
    ops: Vec<Op>,
    /// Directories created (or about to be) below the root.
    dirs: std::collections::HashSet<PathBuf>,
}

impl RootPlan<'_> {
    /// Creates `inside` (absolute, as seen inside) and its parents.
    fn dir(&mut self, inside: &Path) -> Result<PathBuf, SandboxError> {
        let at = under(self.root, inside);
        if at != self.root && !self.dirs.contains(&at) {
            if let Some(parent) = inside.parent() {
                self.dir(parent)?;
            }
            self.ops.push(Op::Mkdir { path: c_path(&at)? });
            self.dirs.insert(at.clone());
        }
        Ok(at)
    }

    /// Binds `host` at `inside`, creating the mount point.
    fn bind(&mut self, host: &Path, inside: &Path) -> Result<(), SandboxError> {
        let meta = fs::metadata(host).map_err(prep_err("stat", host))?;
        let at = if meta.is_dir() {
            self.dir(inside)?
        } else {
            if let Some(parent) = inside.parent() {
                self.dir(parent)?;
            }
            let at = under(self.root, inside);
            self.ops.push(Op::Touch { path: c_path(&at)? });
            at
        };
        self.ops.push(Op::bind(host, &at)?);
        Ok(())
    }

    fn write(&mut self, inside: &str, contents: String) -> Result<(), SandboxError> {
        let at = under(self.root, Path::new(inside));
        self.ops.push(Op::Write {
            path: c_path(&at)?,
            contents: contents.into_bytes(),
        });
        Ok(())
    }

    fn symlink(&mut self, target: &str, inside: &str) -> Result<(), SandboxError> {
        let at = under(self.root, Path::new(inside));
        self.ops.push(Op::Symlink {
            target: c_string("symlink", target)?,
            path: c_path(&at)?,
        });
        Ok(())
    }
}

/// Prepares the host side (the store dir, with a mount point for each
/// input) and lists the steps the builder child takes, in order.
///
/// The root itself is a tmpfs mounted on `chroot_dir` inside the sandbox:
/// its directories, `/etc` files and mount points cost a microsecond each
/// there, against tens on the host's disk (where the caller would also
/// have to delete them), and the kernel frees it with the mount namespace.
/// Only the store dir is on the host, since the outputs must stay there.
fn prepare_root(spec: &SandboxSpec) -> Result<Vec<Op>, SandboxError> {
    let root = spec.chroot_dir.as_path();
    private_dir(root)?;
    check_private_parent("build_dir", &spec.build_dir)?;
    let host_store = under(root, &spec.store_dir);
    fs::create_dir_all(&host_store).map_err(prep_err("create", &host_store))?;
    for name in &spec.inputs {
        let host = spec.store_root.join(name);
        let at = host_store.join(name);
        let meta = fs::symlink_metadata(&host).map_err(prep_err("stat input", &host))?;
        if meta.file_type().is_symlink() {
            // A bind mount would follow it; a copy is as read-only.
            let target = fs::read_link(&host).map_err(prep_err("read", &host))?;
            symlink(&target, &at).map_err(prep_err("create", &at))?;
        } else {
            host_mount_point(&host, &at)?;
        }
    }

    let mut plan = RootPlan {
        root,
        ops: vec![
            // Taken before the tmpfs hides it.
            Op::OpenTree {
                path: c_path(&host_store)?,
            },
            Op::Mount {
                src: c"root".into(),
                dst: c_path(root)?,
                fstype: Some(c"tmpfs".into()),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(c"mode=0755,size=4m".into()),
            },
        ],
        dirs: Default::default(),
    };
    let store = plan.dir(&spec.store_dir)?;
    plan.ops.push(Op::MoveTree {
        dst: c_path(&store)?,
    });
    for name in &spec.inputs {
        let host = spec.store_root.join(name);
        if !fs::symlink_metadata(&host).is_ok_and(|m| m.file_type().is_symlink()) {
            plan.ops.push(Op::bind(&host, &store.join(name))?);
        }
    }

    let mut extras: Vec<(PathBuf, PathBuf)> = spec.extra_paths.clone();
    if spec.network {
        for file in ["/etc/resolv.conf", "/etc/services"] {
            if Path::new(file).exists() {
                extras.push((file.into(), file.into()));
            }
        }
    }
    plan.dir(Path::new("/etc"))?;
    let (uid, gid) = (spec.uid, spec.gid);
    plan.write(
        "/etc/passwd",
        format!(
            "bigtop:x:{uid}:{gid}:bigtop build user:{}:/noshell\n\
             nobody:x:65534:65534:nobody:/:/noshell\n",
            spec.build_dir_inside.display()
        ),
    )?;
    plan.write("/etc/group", format!("bigtop:x:{gid}:\nnogroup:x:65534:\n"))?;
    plan.write("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n".into())?;
    for (i, (host, inside)) in extras.iter().enumerate() {
        // The same library may come with two programs.
        if !extras[..i].contains(&(host.clone(), inside.clone())) {
            plan.bind(host, inside)?;
        }
    }

    for name in devices() {
        let dev = Path::new("/dev").join(name);
        plan.bind(&dev, &dev)?;
    }
    for (target, link) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        plan.symlink(target, link)?;
    }
    let shm = plan.dir(Path::new("/dev/shm"))?;
    let proc = plan.dir(Path::new("/proc"))?;
    let build = plan.dir(&spec.build_dir_inside)?;
    if !plan.dirs.contains(&under(root, Path::new("/tmp"))) {
        let inside = spec.build_dir_inside.to_string_lossy();
        plan.symlink(&inside, "/tmp")?;
    }

    // Everything so far read-only (device nodes too: the builder owns the
    // host's when the caller is root, and could chmod them), then the
    // store dir writable again.
    plan.ops.push(Op::SetAttr {
        path: c_path(root)?,
        recursive: true,
        set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
        clear: 0,
    });
    plan.ops.push(Op::SetAttr {
        path: c_path(&store)?,
        recursive: false,
        set: 0,
        clear: MOUNT_ATTR_RDONLY,
    });
    plan.ops.push(Op::bind(&spec.build_dir, &build)?);
    // Writable, so no setuid bit counts there (the store dir keeps the
    // root's nosuid; the filter refuses setting such bits anyway).
    plan.ops.push(Op::SetAttr {
        path: c_path(&build)?,
        recursive: false,
        set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        clear: 0,
    });
    let nodev_nosuid = libc::MS_NOSUID | libc::MS_NODEV;
    plan.ops.push(Op::Mount {
        src: c"shm".into(),
        dst: c_path(&shm)?,
        fstype: Some(c"tmpfs".into()),
        flags: nodev_nosuid,
        data: Some(c"mode=1777,size=50%".into()),
    });
    plan.ops.push(Op::Mount {
        src: c"proc".into(),
        dst: c_path(&proc)?,
        fstype: Some(c"proc".into()),
        flags: nodev_nosuid | libc::MS_NOEXEC,
        data: None,
    });
    Ok(plan.ops)
}

fn check_spec(spec: &SandboxSpec) -> Result<(), SandboxError> {
    check_absolute("build_dir", &spec.build_dir)?;
    check_absolute("build_dir_inside", &spec.build_dir_inside)?;
    check_absolute("store_dir", &spec.store_dir)?;
    check_absolute("store_root", &spec.store_root)?;
    check_absolute("chroot_dir", &spec.chroot_dir)?;
    if spec.store_dir == Path::new("/") || spec.build_dir_inside == Path::new("/") {
        return Err(SandboxError::InvalidSpec {
            field: "store_dir",
            value: "/".into(),
            reason: "cannot be the root",
        });
    }
    for (_, inside) in &spec.extra_paths {
        check_absolute("extra_paths", inside)?;
    }
    for name in &spec.inputs {
        check_name("inputs", name)?;
    }
    for name in &spec.outputs {
        check_name("outputs", name)?;
        if spec.inputs.contains(name) {
            return Err(SandboxError::InvalidSpec {
                field: "outputs",
                value: name.clone(),
                reason: "is also an input",
            });
        }
    }
    if !spec.program.starts_with('/') {
        return Err(SandboxError::InvalidSpec {
            field: "program",
            value: spec.program.clone(),
            reason: "is not an absolute path",
        });
    }
    for (key, _) in &spec.env {
        if key.is_empty() || key.contains('=') {
            return Err(SandboxError::InvalidSpec {
                field: "env",
                value: key.clone(),
                reason: "is not a variable name",
            });
        }
    }
    Ok(())
}

/// Starts `spec.program` in a new sandbox and returns at once: when this
/// returns `Ok`, the builder has been executed (an `execve` failure is an
/// error here, not an exit status).
///
/// The builder dies with the *thread* that called this (`PR_SET_PDEATHSIG`,
/// so that nothing outlives a killed process): keep that thread alive
/// until the sandbox is over, e.g. by waiting on it there.
pub fn spawn(spec: &SandboxSpec) -> Result<Sandboxed, SandboxError> {
    check_spec(spec)?;
    let lease = lease_namespaces(spec.uid, spec.gid)?;
    let ns = lease.ns();
    let ops = prepare_root(spec)?;

    let mut strings = Vec::with_capacity(1 + spec.args.len() + spec.env.len());
    let program = c_string("program", &spec.program)?;
    strings.push(program.clone());
    for arg in &spec.args {
        strings.push(c_string("args", arg)?);
    }
    let argc = strings.len();
    for (key, value) in &spec.env {
        strings.push(c_string("env", &format!("{key}={value}"))?);
    }
    let pointers = |s: &[CString]| -> Vec<*const libc::c_char> {
        s.iter()
            .map(|c| c.as_ptr())
            .chain([std::ptr::null()])
            .collect()
    };
    let argv = pointers(&strings[..argc]);
    let envp = pointers(&strings[argc..]);

    let stacks = Stacks::new(2)?;
    let filter = seccomp::filter();
    let parent = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if parent < 0 {
        return Err(SandboxError::Process {
            action: "open a pidfd of",
            pid: std::process::id() as i32,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: pidfd_open returned a fresh descriptor.
    let parent = unsafe { OwnedFd::from_raw_fd(parent as RawFd) };
    let plan = Plan {
        user_fd: ns.user.as_raw_fd(),
        net_fd: if spec.network { -1 } else { ns.net.as_raw_fd() },
        ops,
        root: c_path(&spec.chroot_dir)?,
        build_dir_inside: c_path(&spec.build_dir_inside)?,
        stdout: spec.stdout.as_raw_fd(),
        inherit: spec.inherit.clone(),
        stderr: spec.stderr.as_raw_fd(),
        setgroups: ns.setgroups,
        program,
        argv,
        envp,
        _strings: strings,
        builder_stack: stacks.top(1),
        seccomp: seccomp::Program::new(&filter),
        _filter: filter,
        parent: parent.as_raw_fd(),
        report: Report::default(),
    };

    let first = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // Returns once the first child has exited, which it does once the
        // builder has executed or failed (both are vfork-style clones).
        let pid = libc::clone(
            join_and_clone,
            stacks.top(0),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &plan as *const Plan as *mut c_void,
        );
        let clone_errno = errno();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(unavailable(
                "clone(CLONE_VM | CLONE_VFORK)",
                io::Error::from_raw_os_error(clone_errno),
            ));
        }
        pid
    };
    let mut raw = 0;
    while unsafe { libc::waitpid(first, &mut raw, 0) } < 0 && errno() == libc::EINTR {}
    drop(stacks);

    let pid = plan.report.pid.load(Ordering::Acquire);
    let step = plan.report.step.load(Ordering::Acquire);
    if step != 0 {
        if pid > 0 {
            while unsafe { libc::waitpid(pid, &mut raw, 0) } < 0 && errno() == libc::EINTR {}
        }
        return Err(setup_error(spec, &plan, step));
    }
    if pid <= 0 {
        return Err(SandboxError::Setup {
            step: format!("start the builder (first child ended with {raw:#x})"),
            source: io::Error::other("no builder pid reported"),
        });
    }
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let source = io::Error::last_os_error();
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut raw, 0);
        }
        return Err(SandboxError::Process {
            action: "open a pidfd of",
            pid,
            source,
        });
    }
    Ok(Sandboxed {
        pid,
        // SAFETY: pidfd_open returned a fresh descriptor.
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) },
        status: Mutex::new(None),
        _namespaces: lease,
    })
}

fn setup_error(spec: &SandboxSpec, plan: &Plan, step: u32) -> SandboxError {
    let source = io::Error::from_raw_os_error(plan.report.errno.load(Ordering::Relaxed));
    let index = plan.report.index.load(Ordering::Relaxed) as usize;
    let Some(step) = STEPS.into_iter().find(|s| *s as u32 == step) else {
        return SandboxError::Setup {
            step: format!("step {step}"),
            source,
        };
    };
    let root = spec.chroot_dir.display();
    let step = match step {
        Step::Exec => {
            return SandboxError::Exec {
                program: spec.program.clone(),
                source,
            }
        }
        Step::JoinUser => "join the shared user namespace".to_owned(),
        Step::JoinNet => "join the shared network namespace".to_owned(),
        Step::Clone => "clone the builder into new mount, PID, IPC and UTS namespaces".to_owned(),
        Step::Mount => plan
            .ops
            .get(index)
            .map_or_else(|| format!("mount step {index}"), Op::describe),
        Step::Hostname => "set the host name".to_owned(),
        Step::EnterRoot => format!("enter `{root}`"),
        Step::PivotRoot => format!("pivot_root to `{root}`"),
        Step::DetachOldRoot => "detach the old root".to_owned(),
        Step::EnterBuildDir => format!(
            "enter the build directory `{}`",
            spec.build_dir_inside.display()
        ),
        Step::OpenNull => "open `/dev/null` for standard input".to_owned(),
        Step::Stdio => "set up standard input, output and error".to_owned(),
        Step::Session => "start a new session".to_owned(),
        Step::NoNewPrivs => "set no_new_privs".to_owned(),
        Step::Seccomp => "install the system call filter".to_owned(),
        Step::ParentDeath => "tie the builder's life to bigtop's".to_owned(),
        Step::Groups => "drop the supplementary groups".to_owned(),
    };
    SandboxError::Setup { step, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_of_the_running_test() {
        let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = elf_interpreter(&exe).unwrap();
        // Test binaries are dynamically linked on the platforms CI runs.
        assert!(interp.is_some_and(|p| p.is_absolute()));
    }

    #[test]
    fn rejects_what_is_not_elf() {
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), Err("not an ELF file"));
    }
}
