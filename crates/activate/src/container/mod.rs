//! Containers: a machine root booted on this host, in its own namespaces,
//! with s6-svscan as its init.
//!
//! What NixOS containers and systemd-nspawn are for NixOS: a real machine
//! for tests, for trying bigtop, and for users' CI. A container has its
//! own mount, PID, UTS and IPC namespaces (a network namespace unless
//! `--network host`, and a user namespace when started by a user other
//! than root, mapping that user to root inside). Its root is ROOT itself,
//! with:
//!
//! - `ROOT/bigtop/store` read-only at `/bigtop/store` (the same logical
//!   paths the system was built for);
//! - the host's `/usr` read-only (and `/bin`, `/lib`… as the host has
//!   them): the system's own programs come from its store, but the
//!   shell and the s6 tools the rendered services use come from the
//!   host until bigtop packages them;
//! - its own `/proc`, a minimal `/dev` (null, zero, full, random,
//!   urandom, tty, a private devpts and shm), a tmpfs `/tmp`;
//! - `ROOT/etc`, `ROOT/run`, `ROOT/var` as they are, so that the host
//!   sees what the machine runs (`ROOT/run/current-system`) and drives
//!   its services (`s6-svc` on `ROOT/run/service` works from outside).
//!
//! PID 1 is `s6-svscan /run/service`, which supervises the services and
//! reaps orphans; `/run` is emptied at each boot, as a tmpfs would be.
//! The host's processes that start, stop and enter containers never
//! stay inside: `start` returns once init runs, and a container lives on
//! without them.
//!
//! Containers started as root share the host's user ids: a process that
//! is root inside is root outside (as NixOS's imperative containers
//! are). Run untrusted services in containers started by an unprivileged
//! user, or on their own machine.

mod child;

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::fs::{create_dirs, io_err, read_optional, write_atomic};
use crate::machine::Machine;

use child::{Boot, Enter, Op};

/// A container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// The host's network: services listen on the host's interfaces.
    Host,
    /// A network of its own with only loopback, up.
    Private,
    /// A network of its own with nothing up, not even loopback.
    None,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(Network::Host),
            "private" => Ok(Network::Private),
            "none" => Ok(Network::None),
            _ => Err(format!(
                "network `{s}` is not one of `host`, `private`, `none`"
            )),
        }
    }
}

/// How to start a container.
#[derive(Debug, Clone)]
pub struct Options {
    /// Its name (and host name). Default: the name of the system the
    /// profile boots, else the root's file name.
    pub name: Option<String>,
    /// Its network. Default: [`Network::Private`].
    pub network: Network,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: None,
            network: Network::Private,
        }
    }
}

/// A running container, as recorded in `ROOT/run/bigtop/container.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Its name.
    pub name: String,
    /// Its init's process id on the host.
    pub pid: u32,
    /// When its init started, in clock ticks since the host booted: tells
    /// the container's init from a later process given the same id.
    pub start_ticks: u64,
    /// Its network.
    pub network: Network,
    /// When it was started, RFC 3339.
    pub started: String,
    /// It runs in a user namespace (started unprivileged).
    pub user_namespace: bool,
    /// Its user ids on the host, when it has a user namespace: root is
    /// the user who started it; other ids exist only if that user has
    /// subordinate ids (`/etc/subuid`) and `newuidmap` granted them.
    #[serde(default)]
    pub uid_map: Vec<IdRange>,
    /// Its group ids on the host, likewise.
    #[serde(default)]
    pub gid_map: Vec<IdRange>,
}

/// A range of ids inside a user namespace and where it lies outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// The first id inside.
    pub inside: u32,
    /// The first id on the host.
    pub host: u32,
    /// How many.
    pub count: u32,
}

impl Container {
    /// Its init's namespaces, to join in this order: the user namespace
    /// first (when it has one), then, `all` or not, its network one (when
    /// it has its own), and with `all` its mount, UTS, IPC and PID ones.
    fn namespaces(&self, all: bool) -> Result<Vec<OwnedFd>, Error> {
        let mut kinds = Vec::new();
        if self.user_namespace {
            kinds.push("user");
        }
        if all {
            kinds.extend(["mnt", "uts", "ipc"]);
        }
        if self.network != Network::Host {
            kinds.push("net");
        }
        if all {
            kinds.push("pid");
        }
        kinds
            .into_iter()
            .map(|k| {
                let p = PathBuf::from(format!("/proc/{}/ns/{k}", self.pid));
                fs::File::open(&p)
                    .map(OwnedFd::from)
                    .map_err(|e| io_err("open", &p)(e).into())
            })
            .collect()
    }

    /// The host's uid for `uid` inside (itself without a user namespace).
    pub fn host_uid(&self, uid: u32) -> Option<u32> {
        to_host(self.user_namespace, &self.uid_map, uid)
    }

    /// The host's gid for `gid` inside.
    pub fn host_gid(&self, gid: u32) -> Option<u32> {
        to_host(self.user_namespace, &self.gid_map, gid)
    }
}

fn to_host(userns: bool, map: &[IdRange], id: u32) -> Option<u32> {
    if !userns {
        return Some(id);
    }
    map.iter()
        .find(|r| id >= r.inside && id - r.inside < r.count)
        .map(|r| r.host + (id - r.inside))
}

impl Machine {
    /// In the store's state, which the machine cannot write: a record a
    /// machine could forge would make the host enter any process's
    /// namespaces.
    fn container_record(&self) -> PathBuf {
        self.state_dir().join("container.json")
    }

    /// The container running this machine, if one does.
    pub fn container(&self) -> Result<Option<Container>, Error> {
        let file = self.container_record();
        let Some(bytes) = read_optional(&file)? else {
            return Ok(None);
        };
        let c: Container = serde_json::from_slice(&bytes).map_err(|e| Error::Record {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        // Its init, still, and rooted at this machine's root (a pid
        // reused by another process fails one or the other).
        let same_root = || {
            use std::os::unix::fs::MetadataExt;
            let (Ok(inside), Ok(root)) = (
                fs::metadata(format!("/proc/{}/root", c.pid)),
                fs::metadata(self.root()),
            ) else {
                return false;
            };
            (inside.dev(), inside.ino()) == (root.dev(), root.ino())
        };
        Ok((alive(c.pid, c.start_ticks) && same_root()).then_some(c))
    }

    /// Boots the machine as a container: returns once its init runs and
    /// supervises `/run/service` (services are started by activation).
    pub fn start_container(&self, options: &Options) -> Result<Container, Error> {
        // One start at a time, and none during an activation: a second
        // start would empty /run under the first.
        let _lock = self.lock("container start", Some(Duration::from_secs(600)))?;
        if let Some(c) = self.container()? {
            return Err(Error::Container {
                root: self.root().to_owned(),
                reason: format!("it already runs as container `{}` (pid {})", c.name, c.pid),
            });
        }
        let svscan = find_program("s6-svscan").ok_or_else(|| Error::Container {
            root: self.root().to_owned(),
            reason: "s6-svscan is not on PATH: install s6".into(),
        })?;
        let name = match &options.name {
            Some(n) => n.clone(),
            None => self.default_name()?,
        };
        if name.is_empty() || name.len() > 64 || name.contains(['/', '\0']) {
            return Err(Error::Container {
                root: self.root().to_owned(),
                reason: format!("`{name}` is not a host name"),
            });
        }
        self.prepare_root()?;
        let log = crate::fs::open_append(&self.path("/var/log/container.log"))?;
        let unprivileged = rustix::process::geteuid().as_raw() != 0;
        let (report_r, report_w) = pipe()?;
        let (wait_r, wait_w) = if unprivileged {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let ops = self.root_ops()?;
        let argv_c = [
            c"s6-svscan".to_owned(),
            CString::new("/run/service").expect("no NUL"),
        ];
        let env_c = [CString::new("PATH=/usr/bin:/bin:/usr/sbin:/sbin").expect("no NUL")];
        let boot = Boot {
            ops,
            root: cstring(self.root().as_os_str())?,
            hostname: name.as_bytes().to_vec(),
            loopback: options.network == Network::Private,
            wait_fd: wait_r.as_ref().map_or(-1, |f| f.as_raw_fd()),
            report_fd: report_w.as_raw_fd(),
            log_fd: log.as_raw_fd(),
            dev_null: CString::new("/dev/null").expect("no NUL"),
            program: cstring(svscan.as_os_str())?,
            argv: pointers(&argv_c),
            envp: pointers(&env_c),
        };
        let mut flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
        if options.network != Network::Host {
            flags |= libc::CLONE_NEWNET;
        }
        if unprivileged {
            flags |= libc::CLONE_NEWUSER;
        }
        let pid = fork_like(flags, || {
            // SAFETY: the child of a fork-like clone with the namespaces
            // `boot` expects, and `boot` was prepared before it.
            unsafe { child::boot(&boot) }
        })
        .map_err(|e| Error::Container {
            root: self.root().to_owned(),
            reason: format!("cannot create its namespaces: {e}"),
        })?;
        drop(report_w);
        let (mut uid_map, mut gid_map) = (Vec::new(), Vec::new());
        if let Some(w) = wait_w {
            let mapped = write_id_maps(pid).and_then(|(u, g)| {
                (uid_map, gid_map) = (u, g);
                rustix::io::write(&w, &[1])
                    .map(|_| ())
                    .map_err(io::Error::from)
            });
            if let Err(e) = mapped {
                kill_and_reap(pid);
                return Err(Error::Container {
                    root: self.root().to_owned(),
                    reason: format!("cannot map its user namespace: {e}"),
                });
            }
        }
        drop(wait_r);
        if let Some((step, errno)) = read_report(report_r) {
            reap(pid);
            return Err(Error::Container {
                root: self.root().to_owned(),
                reason: format!(
                    "booting failed at {}: {}",
                    describe_step(&boot, step),
                    io::Error::from_raw_os_error(errno)
                ),
            });
        }
        let Some(ticks) = start_ticks(pid) else {
            kill_and_reap(pid);
            return Err(Error::Container {
                root: self.root().to_owned(),
                reason: format!(
                    "its init (pid {pid}) ended at once: see `{}`",
                    self.path("/var/log/container.log").display()
                ),
            });
        };
        let container = Container {
            name,
            pid,
            start_ticks: ticks,
            network: options.network,
            started: crate::time::rfc3339(std::time::SystemTime::now()),
            user_namespace: unprivileged,
            uid_map,
            gid_map,
        };
        let record = serde_json::to_vec_pretty(&container).map_err(|e| Error::Record {
            path: self.container_record(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.container_record(), &record, 0o644)?;
        // Ready once s6-svscan listens on its control pipe.
        let control = self.path("/run/service/.s6-svscan/control");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !crate::fs::fifo_has_reader(&control) {
            if !alive(pid, container.start_ticks) || Instant::now() > deadline {
                kill_and_reap(pid);
                let _ = crate::fs::remove_file(&self.container_record());
                return Err(Error::Container {
                    root: self.root().to_owned(),
                    reason: format!(
                        "its init (s6-svscan) did not start: see `{}`",
                        self.path("/var/log/container.log").display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(container)
    }

    /// Stops the container: s6-svscan brings every service down and
    /// exits, which ends the container; after `timeout`, its processes
    /// are killed.
    pub fn stop_container(&self, timeout: Duration) -> Result<bool, Error> {
        // Not in the middle of an activation.
        let _lock = self.lock("container stop", Some(Duration::from_secs(600)))?;
        let Some(c) = self.container()? else {
            return Ok(false);
        };
        // Pinned: the scan directory must be the machine's own.
        let asked = crate::fs::Pinned::new(&self.path("/run/service")).is_ok_and(|scan| {
            std::process::Command::new("s6-svscanctl")
                .arg("-t")
                .arg(scan.path())
                .status()
                .is_ok_and(|s| s.success())
        });
        let deadline = Instant::now() + if asked { timeout } else { Duration::ZERO };
        while alive(c.pid, c.start_ticks) && Instant::now() < deadline {
            reap_if_child(c.pid);
            std::thread::sleep(Duration::from_millis(5));
        }
        if alive(c.pid, c.start_ticks) {
            // Killing a PID namespace's init kills every process in it.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(c.pid as i32).expect("a pid above 0"),
                rustix::process::Signal::KILL,
            );
            while alive(c.pid, c.start_ticks) {
                reap_if_child(c.pid);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // Dead now; a zombie of ours until reaped.
        reap_if_child(c.pid);
        let _ = fs::remove_file(self.container_record());
        Ok(true)
    }

    /// Runs `argv` inside the running container (its namespaces, its
    /// root, `PATH` searched inside) with `env` only, and `stdio` as its
    /// standard input, output and error; waits for it.
    pub fn exec_in_container(
        &self,
        argv: &[String],
        env: &[(String, String)],
        stdio: [OwnedFd; 3],
    ) -> Result<ExitStatus, Error> {
        let not_running = || Error::Container {
            root: self.root().to_owned(),
            reason: "it is not running: start its container first".into(),
        };
        let c = self.container()?.ok_or_else(not_running)?;
        let Some(program) = argv.first() else {
            return Err(Error::Container {
                root: self.root().to_owned(),
                reason: "no command to run".into(),
            });
        };
        let namespaces = c.namespaces(true)?;
        // The container may have died between the record and the open.
        if !alive(c.pid, c.start_ticks) {
            return Err(not_running());
        }
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or("/usr/bin:/bin:/usr/sbin:/sbin", |(_, v)| v.as_str());
        let programs: Vec<CString> = if program.contains('/') {
            vec![cstring(OsStr::new(program))?]
        } else {
            path_var
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cstring(OsStr::new(&format!("{d}/{program}"))))
                .collect::<Result<_, _>>()?
        };
        let argv_c: Vec<CString> = argv
            .iter()
            .map(|a| cstring(OsStr::new(a)))
            .collect::<Result<_, _>>()?;
        let env_c: Vec<CString> = env
            .iter()
            .map(|(k, v)| cstring(OsStr::new(&format!("{k}={v}"))))
            .collect::<Result<_, _>>()?;
        let [stdin, stdout, stderr] = stdio;
        let (report_r, report_w) = pipe()?;
        let enter = Enter {
            namespaces: namespaces.iter().map(|f| f.as_raw_fd()).collect(),
            stdin: stdin.as_raw_fd(),
            stdout: stdout.as_raw_fd(),
            stderr: stderr.as_raw_fd(),
            report_fd: report_w.as_raw_fd(),
            programs,
            argv: pointers(&argv_c),
            envp: pointers(&env_c),
        };
        let pid = fork_like(0, || {
            // SAFETY: the child of a fork-like clone; `enter` was
            // prepared before it.
            unsafe { child::enter(&enter) }
        })
        .map_err(io_err("fork to enter", self.root()))?;
        drop(report_w);
        drop((stdin, stdout, stderr));
        let report = read_report(report_r);
        let status = reap(pid);
        if let Some((step, errno)) = report {
            return Err(Error::Container {
                root: self.root().to_owned(),
                reason: format!(
                    "cannot run `{program}` inside: {} ({})",
                    io::Error::from_raw_os_error(errno),
                    match step {
                        child::step::SETNS => "joining its namespaces",
                        child::step::EXEC => "executing it",
                        _ => "starting it",
                    }
                ),
            });
        }
        Ok(status)
    }

    /// Whether something accepts connections on 127.0.0.1:`port` in the
    /// container's network (the host's, for `--network host`).
    pub fn container_port_open(&self, port: u16) -> Result<bool, Error> {
        let c = self.container()?.ok_or_else(|| Error::Container {
            root: self.root().to_owned(),
            reason: "it is not running".into(),
        })?;
        let fds = c.namespaces(false)?;
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        // A child joins the namespaces: a multi-threaded process cannot
        // join a user namespace, and a thread of ours joining only the
        // network one needs privileges an unprivileged owner lacks there.
        let pid = fork_like(0, || {
            // SAFETY: the child of a fork-like clone; `raw` was made
            // before it.
            unsafe { child::probe_tcp(&raw, port) }
        })
        .map_err(io_err("fork to probe", self.root()))?;
        let status = reap(pid);
        match status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(Error::Container {
                root: self.root().to_owned(),
                reason: format!("cannot join its namespaces to probe port {port}"),
            }),
        }
    }

    fn default_name(&self) -> Result<String, Error> {
        if let Some(n) = self.default_generation()? {
            if let Some(g) = self.generation(n)? {
                if let Ok(s) = self.system_at(&g.toplevel) {
                    return Ok(s.manifest.name);
                }
            }
        }
        Ok(self
            .root()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bigtop".into()))
    }

    /// The directories a boot needs; `/run` emptied, as a tmpfs would be.
    fn prepare_root(&self) -> Result<(), Error> {
        let run = self.path("/run");
        for name in crate::fs::names(&run)? {
            crate::fs::remove_tree(&run.join(name))?;
        }
        for d in [
            "/run/service",
            "/run/bigtop",
            "/etc",
            "/var/log",
            "/tmp",
            "/proc",
            "/dev",
            "/usr",
            "/root",
            "/bigtop/store",
        ] {
            create_dirs(&self.path(d))?;
        }
        // As the host has them: a link (`/bin -> usr/bin`) or a directory
        // bound read-only.
        for d in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(d);
            let inside = self.path(d);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() && fs::symlink_metadata(&inside).is_err() => {
                    let target = fs::read_link(&host).map_err(io_err("read", &host))?;
                    std::os::unix::fs::symlink(&target, &inside)
                        .map_err(io_err("create", &inside))?;
                }
                Ok(m) if m.file_type().is_symlink() => {}
                Ok(m) if m.is_dir() => create_dirs(&inside)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// The mounts that make ROOT the container's root.
    fn root_ops(&self) -> Result<Vec<Op>, Error> {
        let c = |p: &Path| cstring(p.as_os_str());
        let root = self.root();
        let ro =
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        let mut ops = vec![
            // Nothing mounted here reaches the host.
            Op::Mount {
                source: None,
                target: c(Path::new("/"))?,
                fstype: None,
                flags: libc::MS_REC | libc::MS_PRIVATE,
                data: None,
            },
            Op::Mount {
                source: Some(c(root)?),
                target: c(root)?,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            },
        ];
        let bind_ro = |from: &Path, to: &Path, ops: &mut Vec<Op>| -> Result<(), Error> {
            ops.push(Op::Mount {
                source: Some(c(from)?),
                target: c(to)?,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            });
            ops.push(Op::Mount {
                source: None,
                target: c(to)?,
                fstype: None,
                flags: ro,
                data: None,
            });
            Ok(())
        };
        let store = self.store().root().to_owned();
        bind_ro(&store, &store, &mut ops)?;
        // The store's database, the profile and activation's records:
        // read-only inside, so that nothing in the machine can forge a
        // generation, a journal or a record activation trusts.
        let state = self.store().state_dir().to_owned();
        bind_ro(&state, &state, &mut ops)?;
        bind_ro(Path::new("/usr"), &self.path("/usr"), &mut ops)?;
        for d in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(d);
            if fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir()) {
                bind_ro(&host, &self.path(d), &mut ops)?;
            }
        }
        let tmpfs = |target: &Path, data: &str, flags| -> Result<Op, Error> {
            Ok(Op::Mount {
                source: Some(CString::new("tmpfs").expect("no NUL")),
                target: c(target)?,
                fstype: Some(CString::new("tmpfs").expect("no NUL")),
                flags,
                data: Some(CString::new(data).expect("no NUL")),
            })
        };
        ops.push(Op::Mount {
            source: Some(CString::new("proc").expect("no NUL")),
            target: c(&self.path("/proc"))?,
            fstype: Some(CString::new("proc").expect("no NUL")),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: None,
        });
        let dev = self.path("/dev");
        ops.push(tmpfs(
            &dev,
            "mode=755,size=64k",
            libc::MS_NOSUID | libc::MS_NOEXEC,
        )?);
        for d in ["null", "zero", "full", "random", "urandom", "tty"] {
            let target = dev.join(d);
            ops.push(Op::Touch { path: c(&target)? });
            ops.push(Op::Mount {
                source: Some(c(&Path::new("/dev").join(d))?),
                target: c(&target)?,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            });
        }
        ops.push(Op::Mkdir {
            path: c(&dev.join("pts"))?,
            mode: 0o755,
        });
        ops.push(Op::Mount {
            source: Some(CString::new("devpts").expect("no NUL")),
            target: c(&dev.join("pts"))?,
            fstype: Some(CString::new("devpts").expect("no NUL")),
            flags: libc::MS_NOSUID | libc::MS_NOEXEC,
            data: Some(CString::new("newinstance,ptmxmode=0666,mode=620").expect("no NUL")),
        });
        ops.push(Op::Mkdir {
            path: c(&dev.join("shm"))?,
            mode: 0o1777,
        });
        ops.push(tmpfs(
            &dev.join("shm"),
            "mode=1777",
            libc::MS_NOSUID | libc::MS_NODEV,
        )?);
        for (link, target) in [
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            ops.push(Op::Symlink {
                target: c(Path::new(target))?,
                link: c(&dev.join(link))?,
            });
        }
        ops.push(tmpfs(
            &self.path("/tmp"),
            "mode=1777",
            libc::MS_NOSUID | libc::MS_NODEV,
        )?);
        Ok(ops)
    }
}

fn describe_step(boot: &Boot, step: u32) -> String {
    use child::step;
    match step {
        step::WAIT => "waiting for its user namespace".into(),
        step::SETSID => "setsid".into(),
        step::HOSTNAME => "setting its host name".into(),
        step::LOOPBACK => "bringing up loopback".into(),
        step::PIVOT => "pivoting into its root".into(),
        step::STDIO => "opening its standard streams".into(),
        step::EXEC => "executing s6-svscan".into(),
        i => match boot.ops.get(i as usize) {
            Some(Op::Mount { target, fstype, .. }) => format!(
                "mounting {}{}",
                target.to_string_lossy(),
                fstype
                    .as_ref()
                    .map(|f| format!(" ({})", f.to_string_lossy()))
                    .unwrap_or_default()
            ),
            Some(Op::Mkdir { path, .. }) | Some(Op::Touch { path }) => {
                format!("making {}", path.to_string_lossy())
            }
            Some(Op::Symlink { link, .. }) => format!("linking {}", link.to_string_lossy()),
            None => format!("step {i}"),
        },
    }
}

/// The null-terminated array of pointers `execve` takes; the strings
/// must outlive it.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|c| c.as_ptr())
        .chain([std::ptr::null()])
        .collect()
}

fn cstring(s: &OsStr) -> Result<CString, Error> {
    CString::new(s.as_bytes()).map_err(|_| Error::Container {
        root: PathBuf::from(s),
        reason: "a path or argument holds a NUL byte".into(),
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    // std's pipes are close-on-exec.
    let (r, w) = io::pipe().map_err(io_err("create a pipe for", Path::new("the container")))?;
    Ok((OwnedFd::from(r), OwnedFd::from(w)))
}

/// Forks with `flags` (namespaces to create) by a raw `clone`, which,
/// unlike `fork`, can make the child PID 1 of a new PID namespace. The
/// child runs `child`, which must not return. Signals are blocked
/// around the `clone`, so no handler of the parent runs in the child
/// before it resets them.
fn fork_like(flags: libc::c_int, child: impl FnOnce()) -> io::Result<u32> {
    // SAFETY: a full signal set and the old mask live on this stack; the
    // clone without CLONE_VM gives the child its own copy of the memory,
    // like fork, and the child runs only `child`, which ends in execve or
    // _exit.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if pid == 0 {
            child();
            libc::_exit(127);
        }
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(err);
        }
        Ok(pid as u32)
    }
}

/// Reads the child's failure report: `None` when the pipe closed empty
/// (the child executed its program).
fn read_report(r: OwnedFd) -> Option<(u32, i32)> {
    let mut f = fs::File::from(r);
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (got == buf.len()).then(|| {
        let step = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
        let errno = i32::from_ne_bytes(buf[4..].try_into().expect("4 bytes"));
        (step, errno)
    })
}

/// Maps root inside to the user who starts the container and, when the
/// user has subordinate ids and `newuidmap`/`newgidmap` are installed
/// (the `uidmap` package), ids 1… to those, so that services can run as
/// their own users; else root is the only id inside.
fn write_id_maps(pid: u32) -> io::Result<(Vec<IdRange>, Vec<IdRange>)> {
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    let own = |id| IdRange {
        inside: 0,
        host: id,
        count: 1,
    };
    let user = user_name(uid);
    let sub = |file: &str, id: u32| subordinate(file, user.as_deref(), id);
    if let (Some(u), Some(g), Some(newuidmap), Some(newgidmap)) = (
        sub("/etc/subuid", uid),
        sub("/etc/subgid", gid),
        find_program("newuidmap"),
        find_program("newgidmap"),
    ) {
        let run = |program: &Path, id: u32, (start, count): (u32, u32)| -> io::Result<()> {
            let status = std::process::Command::new(program)
                .arg(pid.to_string())
                .args([
                    "0",
                    &id.to_string(),
                    "1",
                    "1",
                    &start.to_string(),
                    &count.to_string(),
                ])
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "{} failed: {status}",
                    program.display()
                )))
            }
        };
        run(&newuidmap, uid, u)?;
        run(&newgidmap, gid, g)?;
        let range = |(start, count)| IdRange {
            inside: 1,
            host: start,
            count,
        };
        return Ok((vec![own(uid), range(u)], vec![own(gid), range(g)]));
    }
    fs::write(format!("/proc/{pid}/uid_map"), format!("0 {uid} 1\n"))?;
    fs::write(format!("/proc/{pid}/setgroups"), "deny\n")?;
    fs::write(format!("/proc/{pid}/gid_map"), format!("0 {gid} 1\n"))?;
    Ok((vec![own(uid)], vec![own(gid)]))
}

/// The name of the user `uid`, from the host's `/etc/passwd`.
fn user_name(uid: u32) -> Option<String> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// The first subordinate range of `user` (by name or number) in `file`,
/// at most 65535 ids (the ids a system uses).
fn subordinate(file: &str, user: Option<&str>, id: u32) -> Option<(u32, u32)> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let who = f.next()?;
        if Some(who) != user && who != id.to_string() {
            return None;
        }
        let start = f.next()?.parse().ok()?;
        let count: u32 = f.next()?.parse().ok()?;
        (count > 0).then_some((start, count.min(65_535)))
    })
}

/// Waits for our child `pid`; its exit status.
fn reap(pid: u32) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid out-pointer.
    while unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) } < 0 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    ExitStatus::from_raw(status)
}

/// Reaps `pid` if it is our child and has exited (the container was
/// started by this process); nothing otherwise.
fn reap_if_child(pid: u32) {
    let mut status = 0;
    // SAFETY: a non-blocking waitpid with a valid out-pointer.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
}

fn kill_and_reap(pid: u32) {
    // SAFETY: our child, which has not been reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    reap(pid);
}

/// The start time of `pid` (field 22 of `/proc/PID/stat`), and whether
/// it is a zombie.
fn stat(pid: u32) -> Option<(u64, bool)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start
    // after the last `)`.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let zombie = fields.first() == Some(&"Z") || fields.first() == Some(&"X");
    Some((fields.get(19)?.parse().ok()?, zombie))
}

fn start_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|(t, _)| t)
}

fn alive(pid: u32, start: u64) -> bool {
    matches!(stat(pid), Some((t, false)) if t == start)
}

/// Where `name` is on this host's `PATH`.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
