//! `bigtop system …`: a machine's generations, switched, rolled back,
//! verified; and `bigtop container …`: machines booted on this host.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use bigtop_activate::container::{Network, Options as ContainerOptions};
use bigtop_activate::engine::{Mode, Observer, Options, Step};
use bigtop_activate::generations::Keep;
use bigtop_activate::machine::BackendKind;
use bigtop_activate::plan::{EtcAction, Plan, ServiceAction};
use bigtop_activate::Machine;
use clap::{Args, Subcommand};
use thiserror::Error;

/// `bigtop system …`
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Add TOPLEVEL as a generation and activate it now.
    Switch(ActivateArgs),
    /// Add TOPLEVEL as a generation, activated at the next boot; change
    /// nothing running.
    Boot(ActivateArgs),
    /// Activate TOPLEVEL without adding a generation (a reboot returns to
    /// the profile's).
    Test(ActivateArgs),
    /// Print what `switch TOPLEVEL` would do, and why; change nothing.
    DryActivate(ActivateArgs),
    /// Switch back to the previous generation (or generation N).
    Rollback {
        #[command(flatten)]
        #[allow(missing_docs)]
        machine: MachineArgs,
        /// The generation to go back to.
        #[arg(long, value_name = "N")]
        to: Option<u64>,
        #[command(flatten)]
        #[allow(missing_docs)]
        options: SwitchOptions,
    },
    /// List the generations: number, date, toplevel, name, release, and
    /// which runs, which booted, which boots next.
    Generations {
        #[command(flatten)]
        #[allow(missing_docs)]
        machine: MachineArgs,
    },
    /// Delete old generations (never the running one or the one that
    /// boots next); their toplevels stop being GC roots.
    DeleteGenerations {
        #[command(flatten)]
        #[allow(missing_docs)]
        machine: MachineArgs,
        /// Keep the newest N.
        #[arg(
            long,
            value_name = "N",
            conflicts_with = "older_than",
            required_unless_present = "older_than"
        )]
        keep: Option<u64>,
        /// Delete those older than this (`30d`, `12h`, `90m`).
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
    },
    /// Report drift from the running generation (managed /etc files
    /// changed by hand, services down, users missing); exit 1 if any.
    Verify {
        #[command(flatten)]
        #[allow(missing_docs)]
        machine: MachineArgs,
    },
    /// The running generation and every service's state and readiness.
    Status {
        #[command(flatten)]
        #[allow(missing_docs)]
        machine: MachineArgs,
    },
    /// Print a service's log (`ROOT/var/log/SERVICE/current`).
    Logs {
        #[command(flatten)]
        #[allow(missing_docs)]
        machine: MachineArgs,
        /// The service.
        service: String,
        /// Keep printing what it logs.
        #[arg(short, long)]
        follow: bool,
    },
}

/// The machine a command works on.
#[derive(Debug, Clone, Args)]
pub struct MachineArgs {
    /// The machine's root directory (`/` for this host).
    #[arg(long, value_name = "ROOT", default_value = "/")]
    pub root: PathBuf,
    /// Its service manager: `s6` (services in ROOT/run/service) or
    /// `systemd` (this host's systemd; root `/` only).
    #[arg(long, default_value = "s6")]
    pub backend: BackendKind,
}

impl MachineArgs {
    fn open(&self) -> Result<Machine, Error> {
        Ok(Machine::open(&self.root)?.with_backend(self.backend))
    }
}

/// How a switch goes.
#[derive(Debug, Clone, Args)]
pub struct SwitchOptions {
    /// Switch to a system built from an older release than the running
    /// one.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Keep the new state when a service fails its readiness check,
    /// instead of rolling back (for debugging).
    #[arg(long)]
    pub no_rollback: bool,
    /// Fail at once if another activation runs, instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
}

/// A system to activate.
#[derive(Debug, Clone, Args)]
pub struct ActivateArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub machine: MachineArgs,
    /// The toplevel: a store path in the machine's store, or a link to
    /// one (`result`).
    pub toplevel: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub options: SwitchOptions,
}

/// `bigtop container …`
#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Boot ROOT as a container and activate the generation it boots.
    Start {
        /// The machine's root directory.
        root: PathBuf,
        /// Its name and host name (default: its system's name).
        #[arg(long)]
        name: Option<String>,
        /// `host`, `private` (own network, loopback up) or `none`.
        #[arg(long, default_value = "private")]
        network: Network,
    },
    /// Stop the container of ROOT: its services stop, then it ends.
    Stop {
        /// The machine's root directory.
        root: PathBuf,
    },
    /// Run a command inside the container of ROOT; exit with its status.
    Exec {
        /// The machine's root directory.
        root: PathBuf,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Whether the container of ROOT runs, and as what.
    Status {
        /// The machine's root directory.
        root: PathBuf,
    },
}

/// Why a `bigtop system` or `bigtop container` command failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The activation engine failed.
    #[error(transparent)]
    Activate(#[from] bigtop_activate::Error),
    /// `--older-than` is not an age.
    #[error("`{0}` is not an age: use a number and d, h or m (`30d`)")]
    Age(String),
    /// `verify` found drift (reported already).
    #[error("the machine at `{0}` differs from its generation")]
    Drift(PathBuf),
    /// `container exec`'s command failed (its status is the exit code).
    #[error("the command exited with status {0}")]
    Command(i32),
    /// `journalctl` could not be run (`system logs --backend systemd`).
    #[error("cannot run journalctl")]
    Journalctl(#[source] io::Error),
    /// Writing to standard output failed.
    #[error("cannot write to standard output")]
    Stdout(#[source] io::Error),
}

impl Error {
    /// Whether the reader of standard output went away.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Stdout(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

fn out(text: &str) -> Result<(), Error> {
    let mut o = io::stdout().lock();
    o.write_all(text.as_bytes())
        .and_then(|()| o.flush())
        .map_err(Error::Stdout)
}

fn json(v: &impl serde::Serialize) -> Result<(), Error> {
    out(&(serde_json::to_string_pretty(v).expect("plain data") + "\n"))
}

/// Prints each step as it is done, on standard error.
struct Progress;

impl Observer for Progress {
    fn planned(&self, plan: &Plan) {
        eprint!("{}", render_plan(plan));
    }
    fn step_done(&self, step: Step) {
        eprintln!("  done: {}", format!("{step:?}").to_lowercase());
    }
    fn ready(&self, service: &str, after: Duration) {
        eprintln!("  ready: {service} ({} ms)", after.as_millis());
    }
}

/// The plan as an operator reads it.
pub fn render_plan(plan: &Plan) -> String {
    let mut s = String::new();
    let release = match (&plan.release_from, &plan.release_to) {
        (Some(a), Some(b)) if a != b => format!(" (release {a} → {b})"),
        (_, Some(b)) => format!(" (release {b})"),
        _ => String::new(),
    };
    let _ = writeln!(s, "plan for {}{release}:", plan.name);
    if plan.is_empty() {
        let _ = writeln!(s, "  nothing changes");
    }
    for c in &plan.services {
        let verb = match c.action {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
            ServiceAction::Reload => "reload",
            ServiceAction::Keep => "keep",
        };
        let _ = writeln!(s, "  {verb:<8} {:<20} {}", c.name, c.reasons.join("; "));
    }
    if plan.unchanged > 0 {
        let _ = writeln!(s, "  {} services unchanged", plan.unchanged);
    }
    for e in &plan.etc {
        let verb = match e.action {
            EtcAction::Add => "add",
            EtcAction::Update => "update",
            EtcAction::Remove => "remove",
        };
        let backup = if e.backup {
            " (the file there is kept as .bigtop-backup)"
        } else {
            ""
        };
        let _ = writeln!(s, "  {verb:<8} /etc/{:<15} {}{backup}", e.path, e.reason);
    }
    for (kind, list) in [("user", &plan.users), ("group", &plan.groups)] {
        for a in list {
            let _ = writeln!(s, "  {kind:<8} {:<20} {}", a.name, a.reason);
        }
    }
    for st in &plan.steps {
        let _ = writeln!(s, "  step     {:<20} {}", st.name, st.reason);
    }
    for w in &plan.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
    s
}

fn options(o: &SwitchOptions) -> Options {
    Options {
        allow_downgrade: o.allow_downgrade,
        rollback_on_failure: !o.no_rollback,
        lock_wait: if o.no_wait {
            None
        } else {
            Some(Duration::from_secs(3600))
        },
    }
}

fn age(s: &str) -> Result<Duration, Error> {
    let bad = || Error::Age(s.to_owned());
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3600,
        "m" => 60,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(n * secs))
}

/// Runs a `bigtop system` command; `as_json` is the global `--json`.
pub fn run(command: SystemCommand, as_json: bool) -> Result<(), Error> {
    let observer: &dyn Observer = if as_json {
        &bigtop_activate::engine::Quiet
    } else {
        &Progress
    };
    match command {
        SystemCommand::Switch(a) => activate(a, Mode::Switch, as_json, observer),
        SystemCommand::Boot(a) => activate(a, Mode::Boot, as_json, observer),
        SystemCommand::Test(a) => activate(a, Mode::Test, as_json, observer),
        SystemCommand::DryActivate(a) => {
            let m = a.machine.open()?;
            let plan = m.dry_activate(&a.toplevel)?;
            if as_json {
                json(&plan)
            } else {
                out(&render_plan(&plan))
            }
        }
        SystemCommand::Rollback {
            machine,
            to,
            options: o,
        } => {
            let m = machine.open()?;
            let report = m.rollback(to, &options(&o), observer)?;
            if as_json {
                json(&report)
            } else {
                out(&format!(
                    "rolled back to generation {}\n",
                    report.generation.unwrap_or_default()
                ))
            }
        }
        SystemCommand::Generations { machine } => {
            let m = machine.open()?;
            let list = m.list_generations()?;
            if as_json {
                return json(&list);
            }
            let mut s = String::new();
            for g in &list {
                let mut marks = Vec::new();
                for (on, mark) in [
                    (g.current, "current"),
                    (g.booted, "booted"),
                    (g.default, "boots next"),
                ] {
                    if on {
                        marks.push(mark);
                    }
                }
                let _ = writeln!(
                    s,
                    "{:>4}  {}  {}  {}  {}{}",
                    g.number,
                    g.date,
                    g.name.as_deref().unwrap_or("?"),
                    g.release.as_deref().unwrap_or("-"),
                    g.toplevel,
                    if marks.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", marks.join(", "))
                    }
                );
            }
            out(&s)
        }
        SystemCommand::DeleteGenerations {
            machine,
            keep,
            older_than,
        } => {
            let m = machine.open()?;
            let keep = match (keep, older_than) {
                (Some(n), _) => Keep::Newest(n),
                (None, Some(a)) => Keep::YoungerThan(age(&a)?),
                (None, None) => Keep::Newest(u64::MAX),
            };
            let deleted = m.delete_generations(keep)?;
            if as_json {
                json(&deleted)
            } else {
                out(&deleted
                    .iter()
                    .map(|n| format!("deleted generation {n}\n"))
                    .collect::<String>())
            }
        }
        SystemCommand::Verify { machine } => {
            let m = machine.open()?;
            let drift = m.verify()?;
            if as_json {
                json(&drift)?;
            } else {
                let mut s = String::new();
                for p in &drift.etc {
                    let _ = writeln!(s, "/etc/{p}: changed or removed by hand");
                }
                for p in &drift.services_down {
                    let _ = writeln!(s, "service {p}: not running");
                }
                for p in &drift.users_missing {
                    let _ = writeln!(s, "user {p}: missing from /etc/passwd");
                }
                for p in &drift.groups_missing {
                    let _ = writeln!(s, "group {p}: missing from /etc/group");
                }
                out(&s)?;
            }
            if drift.is_empty() {
                Ok(())
            } else {
                Err(Error::Drift(machine.root))
            }
        }
        SystemCommand::Status { machine } => {
            let m = machine.open()?;
            // An interrupted activation is finished first, so that what
            // status reports is a state the machine is meant to be in.
            if let Some(t) = m.finish_interrupted(observer)? {
                eprintln!("finished an interrupted activation of {t}");
            }
            let status = m.status()?;
            if as_json {
                return json(&status);
            }
            let mut s = String::new();
            let _ = writeln!(
                s,
                "{} (generation {}, release {})\n  {}",
                status.name.as_deref().unwrap_or("(nothing runs)"),
                status.generation.map_or("-".to_owned(), |g| g.to_string()),
                status.release.as_deref().unwrap_or("-"),
                status.current.as_deref().unwrap_or("-")
            );
            if status.interrupted {
                let _ = writeln!(
                    s,
                    "  an interrupted activation is pending: the next switch finishes it"
                );
            }
            for (name, st) in &status.services {
                let state = match st.state {
                    Some(x) if x.up => format!("up (pid {})", x.pid.unwrap_or(0)),
                    Some(_) => "down".to_owned(),
                    None => "not installed".to_owned(),
                };
                let ready = match st.ready {
                    Some(true) => ", ready",
                    Some(false) => ", not ready",
                    None => "",
                };
                let _ = writeln!(s, "  {name:<20} {state}{ready}");
            }
            out(&s)
        }
        SystemCommand::Logs {
            machine,
            service,
            follow,
        } => logs(&machine, &service, follow),
    }
}

fn activate(
    a: ActivateArgs,
    mode: Mode,
    as_json: bool,
    observer: &dyn Observer,
) -> Result<(), Error> {
    let m = a.machine.open()?;
    let report = m.activate(&a.toplevel, mode, &options(&a.options), observer)?;
    if as_json {
        return json(&report);
    }
    let mut s = String::new();
    if let Some(r) = &report.recovered {
        let _ = writeln!(s, "finished an interrupted activation of {r}");
    }
    for b in &report.backups {
        let _ = writeln!(
            s,
            "/etc/{} was in the way: kept as /etc/{}",
            b.path, b.moved_to
        );
    }
    let _ = match (mode, report.generation) {
        (Mode::Boot, Some(g)) => writeln!(s, "generation {g} boots next"),
        (_, Some(g)) => writeln!(s, "switched to generation {g}"),
        (_, None) => writeln!(s, "activated {} (not a generation)", a.toplevel),
    };
    out(&s)
}

fn logs(machine: &MachineArgs, service: &str, follow: bool) -> Result<(), Error> {
    if machine.backend == BackendKind::Systemd {
        let mut cmd = std::process::Command::new("journalctl");
        cmd.args(["-u", &format!("{service}.service"), "--no-pager"]);
        if follow {
            cmd.arg("-f");
        }
        let status = cmd.status().map_err(Error::Journalctl)?;
        return match status.code() {
            Some(0) => Ok(()),
            c => Err(Error::Command(c.unwrap_or(1))),
        };
    }
    let m = machine.open()?;
    let file = m.path("/var/log").join(service).join("current");
    let io_err = |e| {
        Error::Activate(bigtop_activate::Error::Io(bigtop_activate::fs::IoError {
            action: "read",
            path: file.clone(),
            source: e,
        }))
    };
    let mut offset = 0u64;
    let mut inode = 0u64;
    loop {
        use std::io::{Read, Seek};
        use std::os::unix::fs::MetadataExt;
        let mut f = std::fs::File::open(&file).map_err(io_err)?;
        let meta = f.metadata().map_err(io_err)?;
        // s6-log rotates `current` away: a new file starts from its top.
        if meta.ino() != inode || meta.len() < offset {
            inode = meta.ino();
            offset = 0;
        }
        f.seek(io::SeekFrom::Start(offset)).map_err(io_err)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io_err)?;
        offset += buf.len() as u64;
        let mut o = io::stdout().lock();
        o.write_all(&buf)
            .and_then(|()| o.flush())
            .map_err(Error::Stdout)?;
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs a `bigtop container` command.
pub fn run_container(command: ContainerCommand, as_json: bool) -> Result<(), Error> {
    match command {
        ContainerCommand::Start {
            root,
            name,
            network,
        } => {
            let m = Machine::open(&root)?;
            let c = m.start_container(&ContainerOptions { name, network })?;
            let observer: &dyn Observer = if as_json {
                &bigtop_activate::engine::Quiet
            } else {
                &Progress
            };
            let booted = m.boot_activate(observer)?;
            if as_json {
                return json(&c);
            }
            out(&format!(
                "container {} runs (pid {}){}\n",
                c.name,
                c.pid,
                booted.map_or(String::new(), |g| format!(", generation {g} activated"))
            ))
        }
        ContainerCommand::Stop { root } => {
            let m = Machine::open(&root)?;
            let stopped = m.stop_container(Duration::from_secs(30))?;
            if as_json {
                return json(&stopped);
            }
            out(if stopped {
                "stopped\n"
            } else {
                "not running\n"
            })
        }
        ContainerCommand::Exec { root, command } => {
            let m = Machine::open(&root)?;
            let dup = |fd: i32| -> Result<std::os::fd::OwnedFd, Error> {
                // SAFETY: 0, 1 and 2 are open for the life of the process.
                let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                b.try_clone_to_owned().map_err(Error::Stdout)
            };
            let env = [
                (
                    "PATH".to_owned(),
                    "/run/current-system/sw/bin:/usr/bin:/bin:/usr/sbin:/sbin".to_owned(),
                ),
                (
                    "TERM".to_owned(),
                    std::env::var("TERM").unwrap_or_else(|_| "dumb".into()),
                ),
                ("HOME".to_owned(), "/root".to_owned()),
            ];
            let status = m.exec_in_container(&command, &env, [dup(0)?, dup(1)?, dup(2)?])?;
            match status.code() {
                Some(0) => Ok(()),
                Some(c) => Err(Error::Command(c)),
                None => Err(Error::Command(
                    128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0),
                )),
            }
        }
        ContainerCommand::Status { root } => {
            let m = Machine::open(&root)?;
            let c = m.container()?;
            if as_json {
                return json(&c);
            }
            out(&match c {
                Some(c) => format!(
                    "container {} runs (pid {}, network {:?}, since {})\n",
                    c.name, c.pid, c.network, c.started
                ),
                None => "not running\n".to_owned(),
            })
        }
    }
}
