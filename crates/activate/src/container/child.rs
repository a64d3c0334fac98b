//! The code that runs in a container's processes between `clone` and
//! `execve`: all of it `unsafe`, all of it system calls on data prepared
//! before the `clone`.
//!
//! The parent may be multi-threaded, so a child of its `clone` (a copy
//! of one thread) must not allocate, take a lock or unwind: another
//! thread may have held the allocator's lock at the moment of the copy.
//! Every path is a `CString` made beforehand, `argv` and `envp` are
//! pointer arrays, and a failure is reported as two integers (the step
//! and `errno`) through a pipe, then `_exit`.

use std::ffi::CString;
use std::os::fd::RawFd;

/// One step of building a container's root, before `pivot_root`.
#[derive(Debug)]
pub(super) enum Op {
    /// `mount(2)`.
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// `mkdir(2)`; an existing directory is fine.
    Mkdir { path: CString, mode: libc::mode_t },
    /// An empty file to bind a device over; an existing one is fine.
    Touch { path: CString },
    /// `symlink(2)`; an existing entry is fine.
    Symlink { target: CString, link: CString },
}

/// Everything the init child needs, prepared before `clone`.
#[derive(Debug)]
pub(super) struct Boot {
    pub ops: Vec<Op>,
    /// The new root, on the host.
    pub root: CString,
    pub hostname: Vec<u8>,
    /// Bring up `lo` (a private network namespace has it down).
    pub loopback: bool,
    /// Read one byte from it before anything (the parent writes it once
    /// the user namespace's maps are set), or -1.
    pub wait_fd: RawFd,
    /// Where a failure is reported (close-on-exec: an `execve` that
    /// succeeds closes it, which the parent reads as success).
    pub report_fd: RawFd,
    /// Standard output and error of init (the container's log).
    pub log_fd: RawFd,
    pub dev_null: CString,
    pub program: CString,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
}

/// Everything a process entering a running container needs.
#[derive(Debug)]
pub(super) struct Enter {
    /// Namespace descriptors of the container's init, user first.
    pub namespaces: Vec<RawFd>,
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub report_fd: RawFd,
    /// Candidate paths of the program, tried in order (`PATH` lookup).
    pub programs: Vec<CString>,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
}

/// Steps reported on failure, after the index of a failed [`Op`].
pub(super) mod step {
    pub const WAIT: u32 = 10_000;
    pub const SETSID: u32 = 10_001;
    pub const HOSTNAME: u32 = 10_002;
    pub const LOOPBACK: u32 = 10_003;
    pub const PIVOT: u32 = 10_004;
    pub const STDIO: u32 = 10_005;
    pub const EXEC: u32 = 10_006;
    pub const SETNS: u32 = 10_007;
    pub const FORK: u32 = 10_008;
}

/// Writes `(step, errno)` to `fd` and exits.
///
/// # Safety
///
/// Only in a child after `clone`: `_exit` ends the process it runs in.
unsafe fn fail(fd: RawFd, step: u32) -> ! {
    let errno = *libc::__errno_location();
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&step.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(fd, buf.as_ptr().cast(), buf.len());
    libc::_exit(127)
}

/// Every signal back to its default and unblocked, as a new program
/// expects (Rust ignores `SIGPIPE`; the parent may block signals around
/// the `clone`).
///
/// # Safety
///
/// Only in a child after `clone`, just before `execve`.
unsafe fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
}

/// Marks every descriptor above the standard three close-on-exec: none
/// of the host's may reach a program inside (Rust opens everything
/// close-on-exec, but a library or an embedder may not have).
///
/// # Safety
///
/// Only in a child after `clone`, just before `execve`.
unsafe fn close_the_rest() {
    libc::syscall(
        libc::SYS_close_range,
        3 as libc::c_uint,
        libc::c_uint::MAX,
        libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
    );
}

/// Runs `op`; `false` with `errno` set when it fails.
///
/// # Safety
///
/// Only in the init child, in its own mount namespace; the strings are
/// alive (prepared before `clone`).
unsafe fn apply(op: &Op) -> bool {
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    match op {
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => {
            libc::mount(
                ptr(source),
                target.as_ptr(),
                ptr(fstype),
                *flags,
                ptr(data).cast(),
            ) == 0
        }
        Op::Mkdir { path, mode } => {
            libc::mkdir(path.as_ptr(), *mode) == 0 || *libc::__errno_location() == libc::EEXIST
        }
        Op::Touch { path } => {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            );
            fd >= 0 && libc::close(fd) == 0
        }
        Op::Symlink { target, link } => {
            libc::symlink(target.as_ptr(), link.as_ptr()) == 0
                || *libc::__errno_location() == libc::EEXIST
        }
    }
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Brings up `lo` in this network namespace.
///
/// # Safety
///
/// System calls on a stack buffer only.
unsafe fn loopback_up() -> bool {
    let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if sock < 0 {
        return false;
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[0] = b'l' as libc::c_char;
    req.name[1] = b'o' as libc::c_char;
    let ok = libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req as *mut IfReq) == 0;
    libc::close(sock);
    ok
}

/// The container's init: builds its root, pivots into it and executes
/// the supervisor. Never returns.
///
/// # Safety
///
/// Only in the child of a `clone` that made new mount, PID, UTS and IPC
/// namespaces (and maybe user and network ones), with `b` prepared
/// before the `clone` and not touched since.
pub(super) unsafe fn boot(b: &Boot) -> ! {
    if b.wait_fd >= 0 {
        let mut byte = 0u8;
        if libc::read(b.wait_fd, (&mut byte as *mut u8).cast(), 1) != 1 {
            fail(b.report_fd, step::WAIT);
        }
    }
    if libc::setsid() < 0 {
        fail(b.report_fd, step::SETSID);
    }
    for (i, op) in b.ops.iter().enumerate() {
        if !apply(op) {
            fail(b.report_fd, i as u32);
        }
    }
    if libc::sethostname(b.hostname.as_ptr().cast(), b.hostname.len()) != 0 {
        fail(b.report_fd, step::HOSTNAME);
    }
    if b.loopback && !loopback_up() {
        fail(b.report_fd, step::LOOPBACK);
    }
    // pivot_root(".", "."): the old root stacks under the new one and is
    // detached at once, so no directory for it is needed in the root.
    let dot = c".".as_ptr();
    if libc::chdir(b.root.as_ptr()) != 0
        || libc::syscall(libc::SYS_pivot_root, dot, dot) != 0
        || libc::umount2(dot, libc::MNT_DETACH) != 0
        || libc::chdir(c"/".as_ptr()) != 0
    {
        fail(b.report_fd, step::PIVOT);
    }
    let null = libc::open(b.dev_null.as_ptr(), libc::O_RDWR);
    if null < 0
        || libc::dup2(null, 0) < 0
        || libc::dup2(b.log_fd, 1) < 0
        || libc::dup2(b.log_fd, 2) < 0
    {
        fail(b.report_fd, step::STDIO);
    }
    close_the_rest();
    reset_signals();
    libc::execve(b.program.as_ptr(), b.argv.as_ptr(), b.envp.as_ptr());
    fail(b.report_fd, step::EXEC)
}

/// A process in a running container: joins its namespaces, then forks
/// (joining a PID namespace takes effect for children only) and waits
/// for the child, exiting with its status. Never returns.
///
/// # Safety
///
/// Only in the child of a fork-like `clone` of a process whose `e` was
/// prepared before it.
pub(super) unsafe fn enter(e: &Enter) -> ! {
    // Not dumpable: a process inside must not be able to ptrace this one,
    // which still holds descriptors of the host, once it joins.
    libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong);
    for fd in &e.namespaces {
        if libc::setns(*fd, 0) != 0 {
            fail(e.report_fd, step::SETNS);
        }
    }
    let pid = libc::syscall(
        libc::SYS_clone,
        libc::SIGCHLD as libc::c_ulong,
        0usize,
        0usize,
        0usize,
        0usize,
    );
    if pid < 0 {
        fail(e.report_fd, step::FORK);
    }
    if pid == 0 {
        // The command: dies with the process that waits for it.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if libc::chdir(c"/".as_ptr()) != 0
            || libc::dup2(e.stdin, 0) < 0
            || libc::dup2(e.stdout, 1) < 0
            || libc::dup2(e.stderr, 2) < 0
        {
            fail(e.report_fd, step::STDIO);
        }
        close_the_rest();
        reset_signals();
        for p in &e.programs {
            libc::execve(p.as_ptr(), e.argv.as_ptr(), e.envp.as_ptr());
        }
        fail(e.report_fd, step::EXEC);
    }
    let mut status = 0;
    while libc::waitpid(pid as libc::pid_t, &mut status, 0) < 0 {
        if *libc::__errno_location() != libc::EINTR {
            libc::_exit(127);
        }
    }
    if libc::WIFEXITED(status) {
        libc::_exit(libc::WEXITSTATUS(status))
    }
    // Killed by a signal: die of it too, so the caller sees the same
    // (the signal is blocked since the clone: unblock it first).
    let sig = libc::WTERMSIG(status);
    libc::signal(sig, libc::SIG_DFL);
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigaddset(&mut set, sig);
    libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    libc::kill(libc::getpid(), sig);
    libc::_exit(128 + sig)
}

/// Joins `namespaces` (user first, then network) and tries to connect
/// to 127.0.0.1:`port`; exits 0 if something accepts, 1 if not, 2 if
/// the namespaces cannot be joined. Never returns.
///
/// # Safety
///
/// Only in the child of a fork-like `clone`; the descriptors were opened
/// before it.
pub(super) unsafe fn probe_tcp(namespaces: &[RawFd], port: u16) -> ! {
    for fd in namespaces {
        if libc::setns(*fd, 0) != 0 {
            libc::_exit(2);
        }
    }
    let sock = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
    if sock < 0 {
        libc::_exit(2);
    }
    // A listener with a full backlog must not hold the probe for minutes.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    libc::setsockopt(
        sock,
        libc::SOL_SOCKET,
        libc::SO_SNDTIMEO,
        (&timeout as *const libc::timeval).cast(),
        std::mem::size_of::<libc::timeval>() as libc::socklen_t,
    );
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    let ok = libc::connect(
        sock,
        (&addr as *const libc::sockaddr_in).cast(),
        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
    ) == 0;
    libc::_exit(if ok { 0 } else { 1 })
}
