//! An activation killed with SIGKILL after each of its steps, each a
//! separate trial: the next activation finishes it, and the machine ends
//! exactly as a clean switch leaves it, never a mix of the two systems.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use bigtop::activate::engine::{Mode, Observer, Options, Quiet, Step};
use bigtop::activate::plan::Plan;
use bigtop::activate::Machine;
use bigtop::eval::module::ModuleBuilder;

use crate::{build, run_in, Booted, Result};

const ROOT_VAR: &str = "BIGTOP_TRIAL_ROOT";
const TOPLEVEL_VAR: &str = "BIGTOP_TRIAL_TOPLEVEL";
const KILL_VAR: &str = "BIGTOP_TRIAL_KILL_AFTER";

fn sleeper(m: &mut ModuleBuilder, name: &str, seconds: &str) {
    m.define(
        &format!("system.services.{name}.argv"),
        vec!["/bin/sleep", seconds],
    );
}

fn old(m: &mut ModuleBuilder) {
    sleeper(m, "db", "1001");
    sleeper(m, "app", "1001");
    sleeper(m, "legacy", "1001");
    m.define("system.services.app.requires", vec!["db"]);
    m.define("etc.motd.text", "old\n");
    m.define("etc.\"app/old.conf\".text", "gone soon\n");
    m.define("users.users.olduser.group", "nogroup");
    m.define("system.activation.mark.script", "echo old > /var/lib-mark");
}

fn new(m: &mut ModuleBuilder) {
    sleeper(m, "db", "1001");
    sleeper(m, "app", "1002");
    sleeper(m, "cache", "1002");
    m.define("system.services.app.requires", vec!["db"]);
    m.define("etc.motd.text", "new\n");
    m.define("etc.\"app/new.conf\".text", "port 80\n");
    m.define("etc.secret.text", "s3cret\n");
    m.define("etc.secret.mode", "0600");
    m.define("users.users.newuser.group", "newgroup");
    m.define(
        "users.groups.newgroup",
        bigtop::eval::module::Value::Map(BTreeMap::new()),
    );
    m.define("system.activation.mark.script", "echo new > /var/lib-mark");
}

/// Kills its own process after a given step.
struct KillAfter(String);

impl KillAfter {
    fn kill(&self, at: &str) {
        if self.0 == at {
            // SAFETY: kill(2) on our own process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

impl Observer for KillAfter {
    fn planned(&self, _: &Plan) {
        self.kill("planned");
    }
    fn step_done(&self, step: Step) {
        self.kill(&format!("{step:?}"));
    }
}

#[test]
#[ignore = "entry point for a child process of the crash trials"]
fn activate_and_die() -> Result {
    let m = Machine::open(std::env::var(ROOT_VAR)?)?;
    let kill = KillAfter(std::env::var(KILL_VAR)?);
    m.activate(
        &std::env::var(TOPLEVEL_VAR)?,
        Mode::Switch,
        &Options::default(),
        &kill,
    )?;
    Err("the trial was not killed".into())
}

/// What a machine is, for comparing two: its /etc (links, contents,
/// modes), accounts, the running services and what they run, its
/// current system and what activation steps did.
fn snapshot(m: &Machine) -> Result<BTreeMap<String, String>> {
    let mut s = BTreeMap::new();
    walk(&m.path("/etc"), "etc", &mut s)?;
    for f in ["passwd", "group", "shadow"] {
        // The shadow's dates are the day's: the same in both machines.
        s.insert(
            format!("accounts/{f}"),
            std::fs::read_to_string(m.path(&format!("/etc/{f}")))?,
        );
    }
    for (name, state) in m.services().states()? {
        let run = std::fs::read_to_string(m.path(&format!("/run/service/{name}/run")))?;
        s.insert(
            format!("service/{name}"),
            format!("up={} run={run}", state.up),
        );
    }
    let current = m
        .current_system()?
        .map(|p| p.to_string())
        .unwrap_or_default();
    s.insert("current".into(), current);
    s.insert("mark".into(), run_in(m, &["cat", "/var/lib-mark"])?.1);
    Ok(s)
}

fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, String>) -> Result {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = format!("{rel}/{name}");
        if matches!(name.as_str(), "passwd" | "group" | "shadow") || name.starts_with('.') {
            continue;
        }
        let meta = std::fs::symlink_metadata(e.path())?;
        let what = if meta.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(e.path())?.display())
        } else if meta.is_dir() {
            walk(&e.path(), &rel, out)?;
            continue;
        } else {
            format!(
                "{:o} {}",
                meta.permissions().mode() & 0o7777,
                std::fs::read_to_string(e.path())?
            )
        };
        out.insert(rel, what);
    }
    Ok(())
}

#[test]
fn an_activation_killed_after_any_step_is_finished_by_the_next() -> Result {
    // The state a clean switch leaves, on a machine of its own.
    let reference = Booted::new()?;
    let r = &reference.machine;
    let first = build(r, old)?;
    r.activate(&first, Mode::Switch, &Options::default(), &Quiet)?;
    let second = build(r, new)?;
    r.activate(&second, Mode::Switch, &Options::default(), &Quiet)?;
    let expected = snapshot(r)?;
    drop(reference);

    let points = [
        "planned", "Stop", "Accounts", "Etc", "Steps", "Services", "Current",
    ];
    for point in points {
        let booted = Booted::new()?;
        let m = &booted.machine;
        let first = build(m, old)?;
        m.activate(&first, Mode::Switch, &Options::default(), &Quiet)?;
        let second = build(m, new)?;
        let status = std::process::Command::new(std::env::current_exe()?)
            .args([
                "--ignored",
                "--exact",
                "crash::activate_and_die",
                "--nocapture",
            ])
            .env(ROOT_VAR, m.root())
            .env(TOPLEVEL_VAR, &second)
            .env(KILL_VAR, point)
            .output()?;
        assert_eq!(
            status.status.signal(),
            Some(libc::SIGKILL),
            "killed after {point}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let status = m.status()?;
        assert!(status.interrupted, "after {point}: the journal is there");
        // What the next activation does first.
        let finished = m.finish_interrupted(&Quiet)?;
        assert_eq!(finished.as_deref(), Some(second.as_str()), "after {point}");
        let got = snapshot(m)?;
        for (k, v) in &expected {
            assert_eq!(got.get(k), Some(v), "after {point}: {k}");
        }
        assert_eq!(
            got.len(),
            expected.len(),
            "after {point}: {:?}",
            got.keys().collect::<Vec<_>>()
        );
        assert!(m.verify()?.is_empty(), "after {point}");
    }
    Ok(())
}
