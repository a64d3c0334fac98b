//! Spawning a sandbox and the handle on its running builder.

use std::ffi::{c_void, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path};
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use super::child::{join_and_clone, ChildSetup, Report, Stacks, Step, STEPS};
use super::namespaces::{lease_namespaces, unavailable, Lease};
use super::root::{c_path, c_string, prepare_root, Op};
use super::seccomp;
use super::{errno, SandboxError, SandboxSpec};
use crate::pidfd;

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
        match pidfd::send_signal(self.pidfd.as_fd(), libc::SIGKILL) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(self.process_err("kill", e)),
            _ => Ok(()),
        }
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
        let reaped = pidfd::wait(self.pid, flags).map_err(|e| self.process_err("wait for", e))?;
        if reaped.is_some() {
            *status = reaped;
        }
        Ok(reaped)
    }

    fn process_err(&self, action: &'static str, source: io::Error) -> SandboxError {
        SandboxError::Process {
            action,
            pid: self.pid,
            source,
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
    // SAFETY: getpid has no preconditions.
    let parent =
        pidfd::open(unsafe { libc::getpid() }).map_err(|source| SandboxError::Process {
            action: "open a pidfd of",
            pid: std::process::id() as i32,
            source,
        })?;
    let setup = ChildSetup {
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

    // SAFETY: the first child runs `join_and_clone` on its own stack with
    // `setup`, which outlives it (a vfork-style clone returns only once
    // the child has exited); every signal is blocked around the clone so
    // that no handler of ours runs on the child's stack.
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
            &setup as *const ChildSetup as *mut c_void,
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
    let raw = pidfd::wait(first, 0)
        .ok()
        .flatten()
        .map_or(0, ExitStatusExt::into_raw);
    drop(stacks);

    let pid = setup.report.pid.load(Ordering::Acquire);
    let step = setup.report.step.load(Ordering::Acquire);
    if step != 0 {
        if pid > 0 {
            let _ = pidfd::wait(pid, 0);
        }
        return Err(setup_error(spec, &setup, step));
    }
    if pid <= 0 {
        return Err(SandboxError::Setup {
            step: format!("start the builder (first child ended with {raw:#x})"),
            source: io::Error::other("no builder pid reported"),
        });
    }
    let pidfd = match pidfd::open(pid) {
        Ok(fd) => fd,
        Err(source) => {
            // SAFETY: kill only sends a signal, to the builder we cloned
            // and have not reaped, so the pid is still ours.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = pidfd::wait(pid, 0);
            return Err(SandboxError::Process {
                action: "open a pidfd of",
                pid,
                source,
            });
        }
    };
    Ok(Sandboxed {
        pid,
        pidfd,
        status: Mutex::new(None),
        _namespaces: lease,
    })
}

fn setup_error(spec: &SandboxSpec, setup: &ChildSetup, step: u32) -> SandboxError {
    let source = io::Error::from_raw_os_error(setup.report.errno.load(Ordering::Relaxed));
    let index = setup.report.index.load(Ordering::Relaxed) as usize;
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
        Step::Mount => setup
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
