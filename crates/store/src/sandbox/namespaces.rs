//! The shared user and network namespaces: made once per concurrent
//! sandbox by a parked child, kept open, and lent to one sandbox at a
//! time (see "Why it is fast" in the [module docs](super)).

use std::collections::HashMap;
use std::ffi::c_void;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use super::child::{parked_child, Stacks};
use super::root::MountAttr;
use super::{errno, SandboxError, DEFAULT_GID, DEFAULT_UID};
use crate::pidfd;

/// A user namespace mapping one build uid/gid to the caller's, and a
/// network namespace owned by it with only `lo`, up.
#[derive(Debug)]
pub(super) struct SharedNamespaces {
    pub(super) user: OwnedFd,
    pub(super) net: OwnedFd,
    /// Whether the builder may call `setgroups` (only when the maps were
    /// written with `CAP_SETGID`, i.e. by root): then it drops the
    /// caller's supplementary groups.
    pub(super) setgroups: bool,
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
pub(super) struct Lease {
    key: (u32, u32),
    ns: Option<SharedNamespaces>,
}

impl Lease {
    pub(super) fn ns(&self) -> &SharedNamespaces {
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

pub(super) fn lease_namespaces(uid: u32, gid: u32) -> Result<Lease, SandboxError> {
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

pub(super) fn unavailable(what: &'static str, source: io::Error) -> SandboxError {
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
    // SAFETY: pipe2 writes two descriptors into `fds`, which holds two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(unavailable("pipe2", io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    let (mut ready_r, ready_w) =
        unsafe { (fs::File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let stack = Stacks::new(1)?;
    // Fork-like (no CLONE_VM): the child parks while we write its maps.
    // SAFETY: the child runs `parked_child` on its own stack, which lives
    // until the child is killed and reaped below; `arg` is a descriptor
    // number, not a pointer.
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
    // SAFETY: kill only sends a signal, to the parked child we cloned and
    // have not reaped, so the pid is still ours.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let _ = pidfd::wait(pid, 0);
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
    // SAFETY: with an invalid descriptor and a null attribute the call
    // fails before it reads anything.
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
