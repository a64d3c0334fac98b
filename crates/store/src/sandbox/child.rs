//! The sandbox's children, and every `unsafe` step they take between
//! `clone` and `execve`: joining the shared namespaces, cloning the
//! builder, applying the root layout, entering it, and executing. Also
//! the parked child that holds a new namespace pair while its maps are
//! written, and the stacks the children run on.
//!
//! The rules for code here (see the [module docs](super)): system calls
//! only, on data prepared before the `clone`; no allocation, no lock, no
//! unwinding.

use std::ffi::{c_void, CString};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use super::root::{MountAttr, Op};
use super::seccomp;
use super::{errno, SandboxError};

/// Where the children are, written by them, read by the parent after the
/// `vfork`-style `clone` returned.
#[derive(Default)]
pub(super) struct Report {
    /// The builder's pid (in the parent's PID namespace), once cloned.
    pub(super) pid: AtomicI32,
    /// The [`Step`] that failed, or 0.
    pub(super) step: AtomicU32,
    /// Which [`Op`] failed, for [`Step::Mount`].
    pub(super) index: AtomicU32,
    /// The failed call's errno.
    pub(super) errno: AtomicI32,
    /// The descriptor of [`Op::OpenTree`], in the builder's table.
    pub(super) tree: AtomicI32,
}

#[derive(Clone, Copy)]
#[repr(u32)]
pub(super) enum Step {
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

pub(super) const STEPS: [Step; 17] = [
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
pub(super) struct ChildSetup {
    pub(super) user_fd: RawFd,
    /// -1 to keep the host's network namespace.
    pub(super) net_fd: RawFd,
    pub(super) ops: Vec<Op>,
    pub(super) root: CString,
    pub(super) build_dir_inside: CString,
    pub(super) stdout: RawFd,
    pub(super) stderr: RawFd,
    pub(super) inherit: Vec<RawFd>,
    pub(super) setgroups: bool,
    pub(super) program: CString,
    /// Null-terminated; points into `_strings`.
    pub(super) argv: Vec<*const libc::c_char>,
    /// Null-terminated; points into `_strings`.
    pub(super) envp: Vec<*const libc::c_char>,
    pub(super) _strings: Vec<CString>,
    pub(super) builder_stack: *mut c_void,
    /// The system call filter; points into `_filter`.
    pub(super) seccomp: seccomp::Program,
    pub(super) _filter: Vec<seccomp::Instruction>,
    /// A pidfd of this process, which the builder polls once it has asked
    /// to be killed with its parent: if we died before, nobody kills it.
    pub(super) parent: RawFd,
    pub(super) report: Report,
}

/// Records the failed step and ends the child. Never returns.
///
/// # Safety
///
/// Called only in a sandbox child, after `clone`: it writes the report
/// the parent shares with it and calls `_exit`, which must not run in the
/// parent.
unsafe fn fail(setup: &ChildSetup, step: Step, index: usize) -> ! {
    setup.report.errno.store(errno(), Ordering::Relaxed);
    setup.report.index.store(index as u32, Ordering::Relaxed);
    setup.report.step.store(step as u32, Ordering::Release);
    libc::_exit(127)
}

const NAMESPACE_FLAGS: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// First child: joins the shared namespaces (which a multi-threaded
/// process cannot), then clones the builder as a sibling (`CLONE_PARENT`),
/// PID 1 of a new PID namespace, so that the parent reaps it.
pub(super) extern "C" fn join_and_clone(arg: *mut c_void) -> libc::c_int {
    // SAFETY (whole function): `arg` is the parent's `ChildSetup`, alive and
    // untouched until this child exits; only system calls follow.
    unsafe {
        let setup = &*(arg as *const ChildSetup);
        if libc::setns(setup.user_fd, libc::CLONE_NEWUSER) != 0 {
            fail(setup, Step::JoinUser, 0);
        }
        if setup.net_fd >= 0 && libc::setns(setup.net_fd, libc::CLONE_NEWNET) != 0 {
            fail(setup, Step::JoinNet, 0);
        }
        let pid = libc::clone(
            builder,
            setup.builder_stack,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT | NAMESPACE_FLAGS,
            arg,
        );
        if pid < 0 {
            fail(setup, Step::Clone, 0);
        }
        setup.report.pid.store(pid, Ordering::Release);
        0
    }
}

/// Second child, PID 1 of its namespace: mounts its root, enters it and
/// executes the builder.
extern "C" fn builder(arg: *mut c_void) -> libc::c_int {
    // SAFETY (whole function): as in `join_and_clone`.
    unsafe {
        let setup = &*(arg as *const ChildSetup);
        // Our parent is the thread that spawned us: a bigtop killed
        // outright (SIGKILL) takes the builder, and with it the whole PID
        // namespace, along.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            fail(setup, Step::ParentDeath, 0);
        }
        let mut parent = libc::pollfd {
            fd: setup.parent,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut parent, 1, 0) != 0 {
            // Gone already (or unknowable): never run unsupervised.
            fail(setup, Step::ParentDeath, 0);
        }
        for (i, op) in setup.ops.iter().enumerate() {
            if !op.apply(&setup.report.tree) {
                fail(setup, Step::Mount, i);
            }
        }
        let host = b"localhost";
        if libc::sethostname(host.as_ptr().cast(), host.len()) != 0 {
            fail(setup, Step::Hostname, 0);
        }
        if libc::chdir(setup.root.as_ptr()) != 0 {
            fail(setup, Step::EnterRoot, 0);
        }
        // The old root ends stacked on the new one, and is detached at once.
        let dot = c".".as_ptr();
        if libc::syscall(libc::SYS_pivot_root, dot, dot) != 0 {
            fail(setup, Step::PivotRoot, 0);
        }
        if libc::umount2(dot, libc::MNT_DETACH) != 0 {
            fail(setup, Step::DetachOldRoot, 0);
        }
        if libc::chdir(setup.build_dir_inside.as_ptr()) != 0 {
            fail(setup, Step::EnterBuildDir, 0);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0 {
            fail(setup, Step::OpenNull, 0);
        }
        // Copied above every target first, so that no dup2 below clobbers
        // a descriptor still to be placed.
        let first_free = 3 + setup.inherit.len() as libc::c_int;
        let out = libc::fcntl(setup.stdout, libc::F_DUPFD_CLOEXEC, first_free);
        let err = libc::fcntl(setup.stderr, libc::F_DUPFD_CLOEXEC, first_free);
        if out < 0
            || err < 0
            || libc::dup2(null, 0) < 0
            || libc::dup2(out, 1) < 0
            || libc::dup2(err, 2) < 0
        {
            fail(setup, Step::Stdio, 0);
        }
        for (i, &fd) in setup.inherit.iter().enumerate() {
            let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first_free);
            // dup2 clears close-on-exec on the target.
            if copy < 0 || libc::dup2(copy, 3 + i as libc::c_int) < 0 {
                fail(setup, Step::Stdio, 0);
            }
        }
        if libc::close_range(first_free as libc::c_uint, libc::c_uint::MAX, 0) != 0 {
            fail(setup, Step::Stdio, 0);
        }
        if libc::setsid() < 0 {
            fail(setup, Step::Session, 0);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(setup, Step::NoNewPrivs, 0);
        }
        if !setup.seccomp.install() {
            fail(setup, Step::Seccomp, 0);
        }
        if setup.setgroups && libc::setgroups(0, std::ptr::null()) != 0 {
            fail(setup, Step::Groups, 0);
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
            setup.program.as_ptr(),
            setup.argv.as_ptr(),
            setup.envp.as_ptr(),
        );
        fail(setup, Step::Exec, 0)
    }
}

/// Two stacks for the children, each above a guard page.
pub(super) struct Stacks {
    base: *mut c_void,
    len: usize,
}

const STACK_SIZE: usize = 256 * 1024;
const GUARD_SIZE: usize = 4096;

impl Stacks {
    pub(super) fn new(count: usize) -> Result<Stacks, SandboxError> {
        let len = count * (GUARD_SIZE + STACK_SIZE);
        // SAFETY: a fresh anonymous mapping, aliasing nothing; checked
        // against MAP_FAILED before use.
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
            // SAFETY: `i < count`, so the guard page is inside the mapping,
            // and protecting it only takes pages no stack uses.
            let guard = unsafe { base.cast::<u8>().add(i * (GUARD_SIZE + STACK_SIZE)) };
            // SAFETY: as above.
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
    pub(super) fn top(&self, i: usize) -> *mut c_void {
        // SAFETY: for `i < count` the top of stack `i` is inside or one
        // past the end of the mapping; no memory is touched here.
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
        // SAFETY: our own mapping, whose children have exited (the
        // vfork-style clones return only then), so nothing runs on it.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Signals that the parked child brought `lo` up (1) or failed (errno).
pub(super) extern "C" fn parked_child(arg: *mut c_void) -> libc::c_int {
    // SAFETY (whole function): a fork-like child of a multi-threaded
    // process; only system calls on the stack and on `arg`.
    let ready_w = arg as usize as RawFd;
    // SAFETY: see above.
    let status: i32 = if unsafe { loopback_up() } { 0 } else { errno() };
    let bytes = status.to_ne_bytes();
    // SAFETY: see above; `ready_w` is the pipe's write end, open here.
    unsafe {
        libc::write(ready_w, bytes.as_ptr().cast(), bytes.len());
        loop {
            libc::pause();
        }
    }
}

/// Brings up `lo` in the current network namespace, as a fresh one has it
/// down and builds (test suites) use 127.0.0.1.
///
/// # Safety
///
/// Only system calls on a stack buffer, so a child after `clone` may call
/// it; the caller must be in the network namespace it means to change.
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

impl Op {
    /// Runs in the builder child: system calls only. `tree` holds the
    /// descriptor of [`Op::OpenTree`].
    ///
    /// # Safety
    ///
    /// Called only in a sandbox child, in its own mount namespace: the
    /// mounts it makes would change the parent's view otherwise. The
    /// strings it points at were prepared before `clone` and are alive.
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
}

impl seccomp::Program {
    /// Installs the filter on the calling thread and what it starts.
    /// Needs `no_new_privs` unless the caller has `CAP_SYS_ADMIN`. Only a
    /// system call, so a `vfork`-style child may call it.
    ///
    /// # Safety
    ///
    /// The instructions the program points at are alive.
    unsafe fn install(&self) -> bool {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            self as *const seccomp::Program,
            0,
            0,
        ) == 0
    }
}
