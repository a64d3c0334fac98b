//! The systemd backend: the toplevel's units linked into
//! `/etc/systemd/system`, `systemctl daemon-reload`, then the plan's
//! stops, starts and reloads as `systemctl` calls.
//!
//! It needs a host booted with systemd (the machine root is `/`):
//! systemd cannot be driven in a root it does not run. What can be
//! checked without one is checked by the tests: the calls a plan makes
//! ([`calls`]) and every rendered unit, with `systemd-analyze verify`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::fs::{create_dirs, io_err, replace_symlink};
use crate::plan::{Plan, ServiceAction};

use super::{Backend, Inside, ServiceState};

/// The systemd backend of the machine rooted at `/`.
#[derive(Debug)]
pub struct Systemd {
    root: PathBuf,
    units: PathBuf,
    /// A unit changed since the last `daemon-reload`.
    dirty: AtomicBool,
}

fn unit(name: &str) -> String {
    format!("{name}.service")
}

/// The `systemctl` calls carrying out the service part of `plan`, in
/// order: stops (dependents first), one `daemon-reload` once the new
/// units are linked, starts (dependencies first), reloads.
pub fn calls(plan: &Plan) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for name in &plan.stop_order {
        out.push(vec!["systemctl".into(), "stop".into(), unit(name)]);
    }
    out.push(vec!["systemctl".into(), "daemon-reload".into()]);
    for name in &plan.start_order {
        out.push(vec!["systemctl".into(), "start".into(), unit(name)]);
    }
    for name in &plan.reload_order {
        out.push(vec!["systemctl".into(), "reload".into(), unit(name)]);
    }
    debug_assert!(plan
        .services
        .iter()
        .all(|c| c.action != ServiceAction::Keep || !plan.start_order.contains(&c.name)));
    out
}

impl Systemd {
    /// The backend for the machine at `root`, whose units go to
    /// `root/etc/systemd/system`.
    pub fn new(root: &Path) -> Systemd {
        Systemd {
            root: root.to_owned(),
            units: root.join("etc/systemd/system"),
            dirty: AtomicBool::new(false),
        }
    }

    fn systemctl(&self, args: &[&str]) -> Result<String, Error> {
        let service = args
            .last()
            .map(|a| a.trim_end_matches(".service"))
            .unwrap_or_default();
        if self.root != Path::new("/") {
            return Err(Error::Service {
                service: service.to_owned(),
                reason: format!(
                    "systemd drives only the host it runs (root `/`), not `{}`: use the s6 backend there",
                    self.root.display()
                ),
            });
        }
        let out = Command::new("systemctl")
            .args(args)
            .output()
            .map_err(|e| Error::Service {
                service: service.to_owned(),
                reason: format!("cannot run systemctl: {e}"),
            })?;
        if !out.status.success() {
            return Err(Error::Service {
                service: service.to_owned(),
                reason: format!(
                    "`systemctl {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn reload_if_dirty(&self) -> Result<(), Error> {
        if self.dirty.swap(false, Ordering::SeqCst) {
            self.systemctl(&["daemon-reload"])?;
        }
        Ok(())
    }

    /// The units bigtop linked: symlinks into a store.
    fn linked(&self) -> Result<Vec<String>, Error> {
        let entries = match fs::read_dir(&self.units) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &self.units)(e).into()),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(io_err("read", &self.units))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = fs::read_link(e.path()).is_ok_and(|t| {
                t.starts_with("/bigtop/store") && t.to_string_lossy().contains("/systemd/")
            });
            if let (Some(n), true) = (name.strip_suffix(".service"), ours) {
                out.push(n.to_owned());
            }
        }
        Ok(out)
    }
}

impl Backend for Systemd {
    fn states(&self) -> Result<BTreeMap<String, ServiceState>, Error> {
        let mut out = BTreeMap::new();
        for name in self.linked()? {
            let text = self.systemctl(&["show", "--property=ActiveState,MainPID", &unit(&name)])?;
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                    .unwrap_or_default()
                    .to_owned()
            };
            let pid = field("MainPID").parse::<u32>().ok().filter(|p| *p > 0);
            out.insert(
                name,
                ServiceState {
                    up: field("ActiveState") == "active",
                    pid,
                },
            );
        }
        Ok(out)
    }

    fn install(&self, name: &str, rendered: &Path) -> Result<(), Error> {
        create_dirs(&self.units)?;
        // `rendered` is the toplevel's `s6/<name>`; its unit is beside.
        let toplevel = rendered.parent().and_then(Path::parent).unwrap_or(rendered);
        let target = toplevel.join("systemd").join(unit(name));
        let link = self.units.join(unit(name));
        if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            replace_symlink(&target, &link)?;
            self.dirty.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    fn start(&self, name: &str) -> Result<(), Error> {
        self.reload_if_dirty()?;
        self.systemctl(&["start", &unit(name)]).map(|_| ())
    }

    fn stop(&self, name: &str, _timeout: Duration) -> Result<(), Error> {
        // The unit's own TimeoutStopSec applies.
        self.systemctl(&["stop", &unit(name)]).map(|_| ())
    }

    fn remove(&self, name: &str, timeout: Duration) -> Result<(), Error> {
        self.stop(name, timeout)?;
        let link = self.units.join(unit(name));
        match fs::remove_file(&link) {
            Ok(()) => self.dirty.store(true, Ordering::SeqCst),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &link)(e).into()),
        }
        self.reload_if_dirty()
    }

    fn commit(&self) -> Result<(), Error> {
        self.reload_if_dirty()
    }

    fn wait_up_all(&self, names: &[&str], timeout: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + timeout;
        // One unit a call: `is-active A B` succeeds when any one is.
        let units: Vec<String> = names.iter().map(|n| unit(n)).collect();
        loop {
            let all = units
                .iter()
                .all(|u| self.systemctl(&["is-active", "--quiet", u]).is_ok());
            if all {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn reload(&self, name: &str, _inside: &Inside<'_>) -> Result<(), Error> {
        self.reload_if_dirty()?;
        self.systemctl(&["reload", &unit(name)]).map(|_| ())
    }

    fn log_tail(&self, name: &str, lines: usize) -> Vec<String> {
        Command::new("journalctl")
            .args([
                "-u",
                &unit(name),
                "-n",
                &lines.to_string(),
                "--no-pager",
                "-o",
                "cat",
            ])
            .output()
            .map(|o| super::tail(&String::from_utf8_lossy(&o.stdout), lines))
            .unwrap_or_default()
    }
}
