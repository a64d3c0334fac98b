//! The activation engine: `switch`, `boot`, `test`, `dry-activate` and
//! `rollback`, as a plan then idempotent steps, journaled, with a health
//! gate that rolls back.
//!
//! An activation takes the machine's lock, finishes an activation a
//! crash interrupted (the journal), plans, writes the journal (the plan's
//! target and where it came from), then runs its steps in order:
//!
//! 1. `stop`: services gone or restarting stop, dependents first (gone
//!    ones are uninstalled);
//! 2. `accounts`: users and groups (`/etc/passwd`, `group`, `shadow`);
//! 3. `etc`: the `/etc/static` swap and the managed files;
//! 4. `steps`: the activation steps, inside the machine;
//! 5. `services`: every service installed from the new toplevel, then
//!    starts (dependencies first) and reloads;
//! 6. `current`: `ROOT/run/current-system` points at the new toplevel;
//! 7. `ready`: each started or restarted service passes its readiness
//!    check, or the machine is rolled back to where it was.
//!
//! Every step can run twice: a later activation that finds the journal
//! plans again from the journal's source to its target, against what
//! runs by then, and runs every step.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bigtop_core::manifest::{compare_releases, Manifest};
use serde::{Deserialize, Serialize};

use crate::error::{Error, NotReady};
use crate::etc::{Backup, Etc};
use crate::fs::{io_err, read_optional, write_atomic};
use crate::machine::BackendKind;
use crate::machine::{Machine, System};
use crate::plan::{self, Observed, Plan, ServiceAction};
use crate::services::s6::S6;
use crate::services::systemd::Systemd;
use crate::services::{tail, Backend};

/// How long a service gets to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a service without a readiness check gets to come up.
const UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a service without a readiness check must stay up once it
/// is.
const SETTLE: Duration = Duration::from_millis(200);

/// What an activation does with generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Adds a generation, makes it the one booted, activates it now.
    Switch,
    /// Adds a generation and makes it the one booted; changes nothing
    /// running.
    Boot,
    /// Activates without adding a generation: a reboot returns to the
    /// profile's.
    Test,
}

/// A step of an activation, as the journal and observers name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Services gone or restarting stopped.
    Stop,
    /// Users and groups written.
    Accounts,
    /// /etc switched.
    Etc,
    /// Activation steps run.
    Steps,
    /// Services installed, started and reloaded.
    Services,
    /// `run/current-system` switched.
    Current,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 6] = [
        Step::Stop,
        Step::Accounts,
        Step::Etc,
        Step::Steps,
        Step::Services,
        Step::Current,
    ];
}

/// Told of an activation's progress; what a CLI renders, and what the
/// crash trials use to stop one at a given point.
pub trait Observer {
    /// The plan is made and journaled; nothing has changed yet.
    fn planned(&self, _plan: &Plan) {}
    /// A step is done.
    fn step_done(&self, _step: Step) {}
    /// A service passed its readiness check.
    fn ready(&self, _service: &str, _after: Duration) {}
}

/// An observer that observes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;
impl Observer for Quiet {}

/// How to activate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Allow a system built from an older release than the running one.
    pub allow_downgrade: bool,
    /// Roll back when a service fails its readiness check (default);
    /// `false` keeps the new state for debugging.
    pub rollback_on_failure: bool,
    /// How long to wait for another activation's lock; `None` fails at
    /// once, naming the holder.
    pub lock_wait: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            allow_downgrade: false,
            rollback_on_failure: true,
            lock_wait: Some(Duration::from_secs(600)),
        }
    }
}

/// What an activation did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The plan carried out (for `boot`, the plan that the next boot
    /// will carry out, against what runs now).
    pub plan: Plan,
    /// The generation added or selected, if any.
    pub generation: Option<u64>,
    /// Files of /etc that were in the way, and where they went.
    pub backups: Vec<Backup>,
    /// How long each started or restarted service took to be ready.
    pub ready_ms: BTreeMap<String, u128>,
    /// An interrupted activation this one finished first.
    pub recovered: Option<String>,
}

/// The journal: an activation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    /// What ran before (`None`: nothing).
    from: Option<String>,
    /// The toplevel being activated.
    to: String,
    /// Steps done so far.
    done: Vec<Step>,
    /// The generation that becomes the default once it is done.
    #[serde(default)]
    generation: Option<u64>,
}

impl Machine {
    fn journal_file(&self) -> PathBuf {
        self.state_dir().join("journal.json")
    }

    fn read_journal(&self) -> Result<Option<Journal>, Error> {
        let file = self.journal_file();
        let Some(bytes) = read_optional(&file)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Record {
                path: file,
                reason: e.to_string(),
            })
    }

    /// Forgets an activation that will not be finished: its journal and
    /// the root that kept its target alive.
    fn drop_journal(&self) {
        let _ = crate::fs::remove_file(&self.journal_file());
        let _ = self.store().remove_root("activating");
    }

    fn write_journal(&self, j: &Journal) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(j).map_err(|e| Error::Record {
            path: self.journal_file(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.journal_file(), &bytes, 0o644)?;
        Ok(())
    }

    /// The machine's /etc, as activation manages it.
    pub(crate) fn etc(&self) -> Etc {
        Etc::new(self.path("/etc"), &self.state_dir()).with_store(
            self.store().store_dir().as_path().to_owned(),
            self.store().root().to_owned(),
        )
    }

    /// The service manager of this machine.
    pub fn services(&self) -> Box<dyn Backend> {
        match self.backend() {
            BackendKind::S6 => Box::new(S6::new(self.path("/run/service"), self.path("/var/log"))),
            BackendKind::Systemd => Box::new(Systemd::new(self.root())),
        }
    }

    /// What running `toplevel` would change, touching nothing.
    pub fn dry_activate(&self, toplevel: &str) -> Result<Plan, Error> {
        let new = self.system(toplevel)?;
        let old = self.running_system()?;
        let observed = self.observe(&new.manifest)?;
        Ok(plan::diff(
            old.as_ref().map(|s| &s.manifest),
            &new.manifest,
            &observed,
        ))
    }

    /// The system running now, if any.
    pub fn running_system(&self) -> Result<Option<System>, Error> {
        match self.current_system()? {
            Some(p) => self.system_at(&p).map(Some),
            None => Ok(None),
        }
    }

    fn observe(&self, new: &Manifest) -> Result<Observed, Error> {
        let (etc_unmanaged, etc_drifted) = self.etc().observe(new)?;
        let running = self
            .services()
            .states()?
            .into_iter()
            .filter(|(_, s)| s.up)
            .map(|(n, _)| n)
            .collect();
        Ok(Observed {
            running,
            etc_unmanaged,
            etc_drifted,
        })
    }

    /// Activates `toplevel` as `mode` says.
    pub fn activate(
        &self,
        toplevel: &str,
        mode: Mode,
        options: &Options,
        observer: &dyn Observer,
    ) -> Result<Report, Error> {
        let _lock = self.lock(&format!("{mode:?}").to_lowercase(), options.lock_wait)?;
        self.check_operator()?;
        let recovered = self.recover_or_give_up(observer);
        let new = self.system(toplevel)?;
        let old = self.running_system()?;
        if let (Some(old), false) = (&old, options.allow_downgrade) {
            if let (Some(from), Some(to)) = (&old.manifest.release, &new.manifest.release) {
                if compare_releases(to, from).is_lt() {
                    return Err(Error::Downgrade {
                        from: from.clone(),
                        to: to.clone(),
                    });
                }
            }
        }
        // A new generation is only a link and a root until it is the
        // default, which happens once it runs and is ready (or, for
        // `boot`, at once: nothing runs it now).
        let generation = match mode {
            Mode::Switch | Mode::Boot => Some(self.add_generation(&new.toplevel)?),
            Mode::Test => None,
        };
        if mode == Mode::Boot {
            if let Some(n) = generation {
                self.set_default_generation(n)?;
            }
            let plan = self.dry_activate(toplevel)?;
            return Ok(Report {
                plan,
                generation,
                backups: Vec::new(),
                ready_ms: BTreeMap::new(),
                recovered,
            });
        }
        self.switch_to(old.as_ref(), &new, generation, options, observer)
            .map(|mut report| {
                report.recovered = recovered;
                report
            })
    }

    /// Runs the activation from `old` to `new`, gate included; on
    /// success makes `generation` the default. The caller holds the lock.
    fn switch_to(
        &self,
        old: Option<&System>,
        new: &System,
        generation: Option<u64>,
        options: &Options,
        observer: &dyn Observer,
    ) -> Result<Report, Error> {
        match self.run_activation(old, new, generation, observer) {
            Ok(mut report) => {
                report.generation = generation;
                Ok(report)
            }
            Err(e) => Err(self.after_failure(e, old, new, options)),
        }
    }

    /// Host root must not activate a machine whose container a user
    /// started in a user namespace: that machine's files belong to the
    /// user, who is root inside it and can plant what root outside would
    /// then trust. Its owner activates it.
    fn check_operator(&self) -> Result<(), Error> {
        if let Some(c) = self.container()? {
            let owner = c.uid_map.first().map(|r| r.host);
            let me = rustix::process::geteuid().as_raw();
            if c.user_namespace && owner.is_some_and(|o| o != me) {
                return Err(Error::Container {
                    root: self.root().to_owned(),
                    reason: format!(
                        "its container runs in a user namespace started by uid {}: activate it as that user",
                        owner.unwrap_or_default()
                    ),
                });
            }
        }
        Ok(())
    }

    /// What an activation that failed part way (a step, a service
    /// manager, a file) leaves: by default the machine goes back to
    /// `old` through the same engine; with `--no-rollback`, or when there
    /// is nothing to go back to, it stays as the failure left it and the
    /// journal is dropped, so that the next activation starts from what
    /// runs instead of retrying this one.
    fn after_failure(
        &self,
        e: Error,
        old: Option<&System>,
        new: &System,
        options: &Options,
    ) -> Error {
        let rolled_back = match old {
            Some(old) if options.rollback_on_failure => Some(
                self.run_activation(Some(new), old, None, &Quiet)
                    .map(|_| self.store().store_dir().full(&old.toplevel)),
            ),
            _ => {
                self.drop_journal();
                None
            }
        };
        let (rolled_back, rollback_error) = match rolled_back {
            None => (None, None),
            Some(Ok(to)) => (Some(to), None),
            Some(Err(r)) => (None, Some(r.to_string())),
        };
        match e {
            Error::NotReady { failure, .. } => Error::NotReady {
                failure,
                rolled_back,
                rollback_error,
            },
            e => Error::Failed {
                source: Box::new(e),
                rolled_back,
                rollback_error,
            },
        }
    }

    /// Switches to generation `to` (default: the one before the
    /// profile's) and makes it the one booted.
    pub fn rollback(
        &self,
        to: Option<u64>,
        options: &Options,
        observer: &dyn Observer,
    ) -> Result<Report, Error> {
        let gens = self.generations()?;
        let default = self.default_generation()?;
        let target = match to {
            Some(n) => gens.iter().find(|g| g.number == n),
            None => gens
                .iter()
                .rev()
                .find(|g| default.is_none_or(|d| g.number < d)),
        };
        let Some(target) = target else {
            return Err(Error::NoGeneration {
                root: self.root().to_owned(),
                number: to.unwrap_or(default.unwrap_or(1).saturating_sub(1)),
            });
        };
        let number = target.number;
        let toplevel = target.toplevel.clone();
        let _lock = self.lock("rollback", options.lock_wait)?;
        self.check_operator()?;
        let recovered = self.recover_or_give_up(observer);
        let new = self.system_at(&toplevel)?;
        let old = self.running_system()?;
        let mut report = self.switch_to(old.as_ref(), &new, Some(number), options, observer)?;
        report.recovered = recovered;
        Ok(report)
    }

    /// Finishes an activation a crash interrupted; the toplevel it
    /// finished, if there was one. The caller holds the lock.
    fn recover(&self, observer: &dyn Observer) -> Result<Option<String>, Error> {
        let Some(j) = self.read_journal()? else {
            return Ok(None);
        };
        let new = self.system(&j.to)?;
        let old = match &j.from {
            Some(f) => Some(self.system(f)?),
            None => None,
        };
        // Gate included: finished means running and ready.
        self.run_activation(old.as_ref(), &new, j.generation, observer)?;
        Ok(Some(j.to))
    }

    /// Finishes an interrupted activation before a new one; if it cannot
    /// be finished, gives it up (the new activation plans from what runs,
    /// and every step is idempotent), so that one broken activation does
    /// not block every later one. What happened, for the report.
    fn recover_or_give_up(&self, observer: &dyn Observer) -> Option<String> {
        match self.recover(observer) {
            Ok(done) => done.map(|t| format!("finished the interrupted activation of {t}")),
            Err(e) => {
                self.drop_journal();
                Some(format!("gave up the interrupted activation: {e}"))
            }
        }
    }

    /// Finishes an interrupted activation, if the journal holds one:
    /// what `status` and a container's boot do before anything else.
    pub fn finish_interrupted(&self, observer: &dyn Observer) -> Result<Option<String>, Error> {
        let _lock = self.lock("recover", Some(Duration::from_secs(600)))?;
        self.recover(observer)
    }

    /// What a machine does at boot, once its init runs: finishes an
    /// interrupted activation, then activates the generation the profile
    /// boots (adding none) and records it as booted. Its number, or
    /// `None` for a machine with no generation yet.
    pub fn boot_activate(&self, observer: &dyn Observer) -> Result<Option<u64>, Error> {
        self.finish_interrupted(observer)?;
        let Some(n) = self.default_generation()? else {
            return Ok(None);
        };
        let g = self.generation(n)?.ok_or_else(|| Error::NoGeneration {
            root: self.root().to_owned(),
            number: n,
        })?;
        let toplevel = self.store().store_dir().full(&g.toplevel);
        let options = Options {
            allow_downgrade: true,
            ..Options::default()
        };
        self.activate(&toplevel, Mode::Test, &options, observer)?;
        self.set_run_link("booted-system", &g.toplevel)?;
        Ok(Some(n))
    }

    /// Plans from `old` to `new` against what runs, journals, and runs
    /// every step. The caller holds the lock.
    fn run_activation(
        &self,
        old: Option<&System>,
        new: &System,
        generation: Option<u64>,
        observer: &dyn Observer,
    ) -> Result<Report, Error> {
        let dir = self.store().store_dir().clone();
        let observed = self.observe(&new.manifest)?;
        let plan = plan::diff(old.map(|s| &s.manifest), &new.manifest, &observed);
        // Accounts are checked before anything changes: a fixed id that
        // collides fails the activation here, not half way.
        crate::users::plan(
            &self.path("/etc"),
            &self.state_dir(),
            &new.manifest.users,
            &new.manifest.groups,
        )?;
        let mut journal = Journal {
            from: old.map(|s| dir.full(&s.toplevel)),
            to: dir.full(&new.toplevel),
            done: Vec::new(),
            generation,
        };
        // The target stays alive while the journal names it, whether or
        // not a generation does (`test`).
        self.store()
            .add_root("activating", &new.toplevel)
            .map_err(|source| Error::Store {
                root: self.root().to_owned(),
                source: Box::new(source),
            })?;
        self.write_journal(&journal)?;
        observer.planned(&plan);
        let services = self.services();
        let top_host = self.physical(&new.toplevel);
        let mut backups = Vec::new();
        for step in Step::ALL {
            match step {
                Step::Stop => {
                    for name in &plan.stop_order {
                        let gone = plan
                            .services
                            .iter()
                            .any(|c| &c.name == name && c.action == ServiceAction::Stop);
                        if gone {
                            services.remove(name, STOP_TIMEOUT)?;
                        } else {
                            services.stop(name, STOP_TIMEOUT)?;
                        }
                    }
                }
                Step::Accounts => {
                    crate::users::apply(
                        &self.path("/etc"),
                        &self.state_dir(),
                        &new.manifest.users,
                        &new.manifest.groups,
                    )?;
                }
                Step::Etc => {
                    let owner = MachineOwners {
                        machine: self,
                        ids: crate::users::Accounts::read(&self.path("/etc"), &self.state_dir())?
                            .ids(),
                        container: self.container()?,
                    };
                    let etc = self.etc();
                    let static_dir = PathBuf::from(dir.full(&new.toplevel)).join("etc");
                    backups =
                        etc.apply(&new.manifest, &static_dir, &top_host.join("etc"), &owner)?;
                }
                Step::Steps => {
                    for name in &new.manifest.activation.order {
                        self.run_step(new, name)?;
                    }
                }
                Step::Services => {
                    for name in new.manifest.services.keys() {
                        services.install(name, &top_host.join("s6").join(name))?;
                    }
                    services.commit()?;
                    for name in &plan.start_order {
                        services.start(name)?;
                    }
                    let inside =
                        |argv: &[String]| self.run_inside(argv, &[("PATH", "/usr/bin:/bin")]);
                    for name in &plan.reload_order {
                        services.reload(name, &inside)?;
                    }
                }
                Step::Current => self.set_run_link("current-system", &new.toplevel)?,
            }
            journal.done.push(step);
            self.write_journal(&journal)?;
            observer.step_done(step);
        }
        // The journal stays until the services are ready: a crash during
        // the gate is finished (gate included) by the next activation,
        // and a failed gate is rolled back by the caller.
        let ready = self
            .health_gate(&plan, &new.manifest)
            .map_err(|failure| Error::NotReady {
                failure: Box::new(failure),
                rolled_back: None,
                rollback_error: None,
            })?;
        for (s, ms) in &ready {
            observer.ready(s, Duration::from_millis(*ms as u64));
        }
        if let Some(n) = generation {
            self.set_default_generation(n)?;
        }
        let file = self.journal_file();
        crate::fs::remove_file(&file)?;
        crate::fs::sync_parent(&file)?;
        let _ = self.store().remove_root("activating");
        Ok(Report {
            plan,
            generation,
            backups,
            ready_ms: ready,
            recovered: None,
        })
    }

    fn run_step(&self, system: &System, name: &str) -> Result<(), Error> {
        let dir = self.store().store_dir();
        let script = format!("{}/activation/{name}", dir.full(&system.toplevel));
        let path = format!("{}/bin:/usr/bin:/bin:/usr/sbin:/sbin", system.manifest.sw);
        let (code, output) = self.run_inside(&["/bin/sh".into(), script], &[("PATH", &path)])?;
        if code != Some(0) {
            return Err(Error::StepFailed {
                step: name.to_owned(),
                status: code.map_or("killed by a signal".into(), |c| format!("exit status {c}")),
                output: tail(&output, 20),
            });
        }
        Ok(())
    }

    /// Runs `argv` inside the machine (its container, or the host when
    /// the root is `/`) with only `env`; its exit code and its output.
    pub fn run_inside(
        &self,
        argv: &[String],
        env: &[(&str, &str)],
    ) -> Result<(Option<i32>, String), Error> {
        let (r, w) = std::io::pipe().map_err(io_err("create a pipe for", self.root()))?;
        // Read while it runs: a command that prints more than a pipe holds
        // would otherwise wait on us while we wait on it. Kept to the last
        // 1 MiB, which is all a report shows.
        let reader = std::thread::spawn(move || {
            let mut r = r;
            let mut kept: Vec<u8> = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 1 << 20 {
                    kept.drain(..kept.len() - (1 << 20));
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        });
        let status = if self.root() == Path::new("/") {
            let mut cmd = std::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .env_clear()
                .envs(env.iter().copied())
                .current_dir("/")
                .stdin(std::process::Stdio::null())
                .stdout(
                    w.try_clone()
                        .map_err(io_err("duplicate a pipe for", self.root()))?,
                )
                .stderr(w);
            let status = cmd.status().map_err(io_err("run", Path::new(&argv[0])))?;
            drop(cmd);
            status
        } else {
            let null =
                std::fs::File::open("/dev/null").map_err(io_err("open", Path::new("/dev/null")))?;
            let err = w
                .try_clone()
                .map_err(io_err("duplicate a pipe for", self.root()))?;
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self.exec_in_container(
                argv,
                &env,
                [OwnedFd::from(null), OwnedFd::from(w), OwnedFd::from(err)],
            )?
        };
        let out = reader.join().unwrap_or_default();
        Ok((status.code(), out))
    }

    /// Waits for each started or restarted service to be ready; the
    /// first that is not, with its log's tail.
    fn health_gate(&self, plan: &Plan, new: &Manifest) -> Result<BTreeMap<String, u128>, NotReady> {
        let services = self.services();
        let mut ready = BTreeMap::new();
        let gate_start = Instant::now();
        let check_of = |name: &str| new.services.get(name).and_then(|s| s.service.ready.clone());
        // Services without a check are up once they stay up: one that
        // exits at once would look up for a moment, then restart in a
        // loop. They are waited for together, and looked at once after.
        let unchecked: Vec<&str> = plan
            .start_order
            .iter()
            .map(String::as_str)
            .filter(|n| check_of(n).is_none())
            .collect();
        if !unchecked.is_empty() {
            if !services
                .wait_up_all(&unchecked, UP_TIMEOUT)
                .unwrap_or(false)
            {
                let states = services.states().unwrap_or_default();
                let down = unchecked
                    .iter()
                    .find(|n| !states.get(**n).is_some_and(|s| s.up))
                    .unwrap_or(&unchecked[0]);
                return Err(not_ready(&*services, down, "the service is up".to_owned()));
            }
            let up_at = services.states().unwrap_or_default();
            let elapsed = gate_start.elapsed().as_millis();
            for n in &unchecked {
                ready.insert(n.to_string(), elapsed);
            }
            // Counted from when they are all up: one that came up only
            // after restarting must stay up as long as the others.
            std::thread::sleep(SETTLE);
            let states = services.states().unwrap_or_default();
            for name in &unchecked {
                let then = up_at.get(*name).and_then(|s| s.pid);
                let same = states.get(*name).is_some_and(|s| s.up && s.pid == then);
                if !same {
                    let check = format!(
                        "it did not stay up for {} ms (no readiness check is declared)",
                        SETTLE.as_millis()
                    );
                    return Err(not_ready(&*services, name, check));
                }
            }
        }
        for name in &plan.start_order {
            let Some(r) = check_of(name) else { continue };
            let start = Instant::now();
            let deadline = start + Duration::from_millis(r.timeout_ms);
            let up = services
                .wait_up_all(&[name.as_str()], Duration::from_millis(r.timeout_ms))
                .unwrap_or(false);
            let mut described = Vec::new();
            if let Some(p) = r.tcp_port {
                described.push(format!("TCP port {p} on 127.0.0.1 accepts"));
            }
            if let Some(c) = &r.command {
                described.push(format!("`{}` exits 0", c.join(" ")));
            }
            let mut ok = false;
            while up && !ok && Instant::now() < deadline {
                ok = self.check_passes(&r);
                if !ok {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            if !ok {
                return Err(not_ready(&*services, name, described.join(" and ")));
            }
            ready.insert(name.clone(), start.elapsed().as_millis());
        }
        Ok(ready)
    }

    /// Whether a readiness check passes now: its port accepts and its
    /// command exits 0, inside the machine.
    pub(crate) fn check_passes(&self, r: &bigtop_core::manifest::Ready) -> bool {
        r.tcp_port.is_none_or(|p| self.port_open(p))
            && r.command.as_ref().is_none_or(|c| {
                self.run_inside(c, &[("PATH", "/usr/bin:/bin")])
                    .is_ok_and(|(code, _)| code == Some(0))
            })
    }

    /// Whether something accepts on 127.0.0.1:`port` inside the machine
    /// (in its network namespace, for a container with its own).
    pub(crate) fn port_open(&self, port: u16) -> bool {
        match self.container() {
            Ok(Some(_)) => self.container_port_open(port).unwrap_or(false),
            _ => TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .is_ok(),
        }
    }
}

/// The machine's accounts, as owners of the /etc files it copies.
struct MachineOwners<'m> {
    machine: &'m Machine,
    ids: crate::users::Ids,
    container: Option<crate::container::Container>,
}

impl MachineOwners<'_> {
    fn inside(&self, user: &str, group: &str) -> Result<(u32, u32), Error> {
        match (self.ids.uid(user), self.ids.gid(group)) {
            (Some(u), Some(g)) => Ok((u, g)),
            _ => Err(Error::Record {
                path: self.machine.path("/etc/passwd"),
                reason: format!("no user `{user}` or group `{group}` to own a file"),
            }),
        }
    }
}

impl crate::etc::Owners for MachineOwners<'_> {
    fn host_ids(&self, user: &str, group: &str) -> Result<(u32, u32), Error> {
        let (u, g) = self.inside(user, group)?;
        match &self.container {
            None => Ok((u, g)),
            Some(c) => match (c.host_uid(u), c.host_gid(g)) {
                (Some(hu), Some(hg)) => Ok((hu, hg)),
                _ => Err(Error::Container {
                    root: self.machine.root().to_owned(),
                    reason: format!(
                        "user `{user}` ({u}) or group `{group}` ({g}) does not exist in its user namespace: give the user who starts it subordinate ids (/etc/subuid, /etc/subgid) and install newuidmap"
                    ),
                }),
            },
        }
    }

    fn chown(&self, file: &Path, user: &str, group: &str) -> Result<(), Error> {
        let privileged = rustix::process::geteuid().is_root();
        match &self.container {
            // An unprivileged user cannot give a file to its subordinate
            // ids from outside; root inside the container can.
            Some(c) if c.user_namespace && !privileged => {
                let inside = file
                    .strip_prefix(self.machine.root())
                    .map(|p| Path::new("/").join(p))
                    .map_err(|_| Error::Container {
                        root: self.machine.root().to_owned(),
                        reason: format!("`{}` is not in the machine", file.display()),
                    })?;
                let (u, g) = self.inside(user, group)?;
                let argv = [
                    "chown".to_owned(),
                    format!("{u}:{g}"),
                    inside.to_string_lossy().into_owned(),
                ];
                let (code, out) = self
                    .machine
                    .run_inside(&argv, &[("PATH", "/usr/bin:/bin")])?;
                if code != Some(0) {
                    return Err(Error::Container {
                        root: self.machine.root().to_owned(),
                        reason: format!(
                            "cannot give `{}` to {user}:{group}: {out}",
                            inside.display()
                        ),
                    });
                }
                Ok(())
            }
            _ => {
                let (u, g) = self.host_ids(user, group)?;
                Ok(crate::fs::lchown(file, u, g)?)
            }
        }
    }
}

fn not_ready(services: &dyn Backend, name: &str, check: String) -> NotReady {
    NotReady {
        service: name.to_owned(),
        check,
        log_tail: services.log_tail(name, 20),
    }
}
