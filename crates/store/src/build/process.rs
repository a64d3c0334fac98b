//! Running a builder process, with its log, in the sandbox unless that is
//! disabled.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use bigtop_core::derivation::{Derivation, OutputName};
use bigtop_core::StorePath;

use super::build_dir::BuildDirSlot;
use super::environment::{environment, with_placeholders};
use super::jobserver::Jobserver;
use super::log::{LogSink, PumpEnd};
use super::observer::BuildObserver;
use super::{BuildFailure, BuildOptions, FailureKind, Sandboxing};
use crate::fs::remove_tree;
use crate::pidfd;
use crate::store::Store;

/// Runs the builder of `derivation` and returns where each output was
/// written (for the caller to stage). `closure` is every store path the
/// builder may see.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    store: &Store,
    options: &BuildOptions,
    drv: &StorePath,
    derivation: &Derivation,
    outputs: &BTreeMap<OutputName, StorePath>,
    closure: &BTreeSet<StorePath>,
    check: bool,
    observer: &dyn BuildObserver,
    jobserver: Option<&Jobserver>,
    build_dir: &mut BuildDirSlot,
) -> Result<BTreeMap<OutputName, PathBuf>, BuildFailure> {
    let fail = |kind: FailureKind, log_tail: Vec<String>| BuildFailure {
        path: drv.clone(),
        kind,
        log_tail,
    };
    let d = with_placeholders(store, derivation, outputs);
    let build_dir = build_dir.lend(store).map_err(|k| fail(k, Vec::new()))?;
    let mut log = LogSink::new(store, drv, observer, options.log_lines);
    match options.sandbox {
        Sandboxing::Disabled => {
            if check {
                return Err(fail(
                    FailureKind::Setup(
                        "a check rebuilds valid outputs elsewhere, which needs the sandbox".into(),
                    ),
                    Vec::new(),
                ));
            }
            let logical = store.store_dir().as_path();
            if store.root() != logical {
                return Err(fail(
                    FailureKind::Setup(format!(
                        "an unsandboxed build writes its outputs at their logical paths, but this \
                         store keeps `{}` in `{}`: enable the sandbox",
                        logical.display(),
                        store.root().display()
                    )),
                    Vec::new(),
                ));
            }
            let mut written = BTreeMap::new();
            for (name, path) in outputs {
                let at = store.physical(path);
                // A crash's leftover: not valid, and we hold its lock.
                remove_tree(&at).map_err(|e| {
                    fail(
                        FailureKind::Setup(format!("cannot remove `{}`: {e}", at.display())),
                        Vec::new(),
                    )
                })?;
                written.insert(name.clone(), at);
            }
            let env = environment(
                store,
                options,
                &d,
                outputs,
                &build_dir.path().display().to_string(),
                jobserver.map(Jobserver::fds),
            );
            let inherit = jobserver.map(Jobserver::fds);
            let status = spawn_plain(
                &d,
                &env,
                build_dir.path(),
                inherit,
                &mut log,
                options.interrupt.as_ref(),
            );
            let tail = log.finish();
            match status {
                Ok(s) if s.success() => Ok(written),
                Ok(s) => {
                    for at in written.values() {
                        let _ = remove_tree(at);
                    }
                    Err(fail(failed(options, s), tail))
                }
                Err(e) => Err(fail(FailureKind::Setup(e), tail)),
            }
        }
        Sandboxing::Required => {
            let inherit = jobserver.map(Jobserver::fds);
            super::in_sandbox::run(
                store, options, &d, outputs, closure, &build_dir, inherit, check, &mut log,
            )
            .map_err(|(kind, _)| fail(kind, Vec::new()))
            .and_then(|(status, written)| {
                let tail = log.finish();
                if status.success() {
                    Ok(written)
                } else {
                    for at in written.values() {
                        let _ = remove_tree(at);
                    }
                    Err(fail(failed(options, status), tail))
                }
            })
        }
    }
}

/// Why a builder that did not succeed failed: interrupted (killed by us),
/// or its own exit status.
fn failed(options: &BuildOptions, status: std::process::ExitStatus) -> FailureKind {
    if options
        .interrupt
        .as_ref()
        .is_some_and(super::Interrupt::fired)
    {
        FailureKind::Interrupted
    } else {
        FailureKind::Exited(exit_text(status))
    }
}

/// "exit code 2", "killed by signal 9".
pub(crate) fn exit_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// Spawns the builder without a sandbox, in its own process group (so that
/// what it leaves running dies with it), copying its output to `log`.
fn spawn_plain(
    d: &Derivation,
    env: &[(String, String)],
    dir: &Path,
    inherit: Option<[RawFd; 2]>,
    log: &mut LogSink<'_>,
    interrupt: Option<&super::Interrupt>,
) -> Result<std::process::ExitStatus, String> {
    let (reader, writer) = std::io::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let pid = posix_spawn(d, env, dir, writer.as_raw_fd(), inherit.unwrap_or([-1, -1]))
        .map_err(|e| format!("cannot run builder `{}`: {e}", d.builder))?;
    // Our copy of the write end must go, or the log never ends.
    drop(writer);
    let pidfd = pidfd::open(pid).ok();
    // Whether the builder has exited, without reaping it: while it is a
    // zombie its group id cannot be reused, so the kill below reaches only
    // what it left running (which would otherwise keep the log open).
    let exited = |flags: libc::c_int| {
        // SAFETY: waitid writes only into `info`, a plain C struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | flags,
            )
        };
        // With WNOHANG and nothing to report, waitid leaves the pid 0.
        // SAFETY: `info` is initialized (zeroed, then written by waitid).
        r == 0 && unsafe { info.si_pid() } == pid
    };
    // One thread reads the log and notices the exit; usually the log ends
    // first (the builder's exit closes it).
    let ended = log.pump_until(
        &reader,
        pidfd.as_ref().map(std::os::fd::AsFd::as_fd),
        Some(&mut || exited(libc::WNOHANG)),
        interrupt,
    );
    // Exited with the log still open, or interrupted: the group goes.
    if ended != PumpEnd::End {
        // SAFETY: killpg only sends a signal to the group the builder led.
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
        log.pump(&reader);
    }
    let status = pidfd::wait(pid, 0).map(|s| s.expect("a blocking wait returns a status"));
    if ended == PumpEnd::End {
        // What it left running is killed all the same (it may not hold
        // the log, but it must not outlive its build).
        // SAFETY: as above; after reaping, the group may be empty.
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
    }
    status.map_err(|e| format!("cannot wait for builder: {e}"))
}

/// Starts the builder with `posix_spawn`, which glibc implements with
/// `CLONE_VM | CLONE_VFORK`: unlike `fork` (what `Command` falls back to
/// as soon as descriptors must be passed), it does not copy this
/// process's page tables, which for a builder process with a big heap
/// costs more than the builder itself. Standard input is `/dev/null`,
/// output and error go to `out`, the builder leads a new process group
/// and `jobserver`'s descriptors (unless -1) stay open at their numbers.
fn posix_spawn(
    d: &Derivation,
    env: &[(String, String)],
    dir: &Path,
    out: RawFd,
    jobserver: [RawFd; 2],
) -> std::io::Result<libc::pid_t> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |s: &[u8]| {
        CString::new(s).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a NUL byte in the builder, an argument or the environment",
            )
        })
    };
    let program = cstr(d.builder.as_bytes())?;
    let mut strings = vec![program.clone()];
    for a in &d.args {
        strings.push(cstr(a.as_bytes())?);
    }
    let argc = strings.len();
    for (k, v) in env {
        strings.push(cstr(format!("{k}={v}").as_bytes())?);
    }
    let mut argv: Vec<*mut libc::c_char> = strings[..argc]
        .iter()
        .map(|c| c.as_ptr() as *mut _)
        .collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = strings[argc..]
        .iter()
        .map(|c| c.as_ptr() as *mut _)
        .collect();
    envp.push(std::ptr::null_mut());
    let dir = cstr(dir.as_os_str().as_bytes())?;
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(r))
        }
    };
    // SAFETY: the attribute and action objects are initialized before use
    // and destroyed on every path; every pointer handed over (program,
    // argv, envp, dir, "/dev/null") outlives the call.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(e);
        }
        let result = (|| {
            check(libc::posix_spawn_file_actions_addopen(
                &mut actions,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(&mut actions, out, 1))?;
            check(libc::posix_spawn_file_actions_adddup2(&mut actions, out, 2))?;
            for fd in jobserver.into_iter().filter(|&fd| fd >= 0) {
                // Onto itself: glibc then clears close-on-exec, and the
                // builder finds the pool at the numbers MAKEFLAGS gives.
                check(libc::posix_spawn_file_actions_adddup2(&mut actions, fd, fd))?;
            }
            check(libc::posix_spawn_file_actions_addchdir_np(
                &mut actions,
                dir.as_ptr(),
            ))?;
            check(libc::posix_spawnattr_setpgroup(&mut attr, 0))?;
            // Rust ignores SIGPIPE; a builder expects the default, and an
            // empty signal mask.
            let mut default: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut default);
            libc::sigaddset(&mut default, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &default))?;
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut mask);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &mask))?;
            check(libc::posix_spawnattr_setflags(
                &mut attr,
                (libc::POSIX_SPAWN_SETPGROUP
                    | libc::POSIX_SPAWN_SETSIGDEF
                    | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short,
            ))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            ))?;
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result
    }
}
