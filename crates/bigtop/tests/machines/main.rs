//! Machines switched for real: systems built into a machine's store,
//! booted as containers, switched, rolled back, with real s6 processes.

mod attacks;
mod cli;
mod crash;
#[path = "../../../../examples/fleet/definition.rs"]
mod definition;
#[path = "../support/example.rs"]
mod example;
mod fleet;
#[path = "../../../../examples/fleet/modules.rs"]
mod modules;
mod switch;
mod systemd;

use std::error::Error;

use bigtop::activate::container::{Network, Options as ContainerOptions};
use bigtop::activate::Machine;
use bigtop::eval::drv::Platform;
use bigtop::eval::module::{Config, Module};
use bigtop::eval::system;
use bigtop::store::build::{BuildOptions, Builder, Sandboxing};

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

/// A machine in a temp dir, booted as a container with its own network.
struct Booted {
    _dir: tempfile::TempDir,
    machine: Machine,
}

impl Booted {
    fn new() -> Result<Booted> {
        let dir = tempfile::tempdir()?;
        let machine = Machine::open(dir.path())?;
        machine.start_container(&ContainerOptions {
            name: Some("box1".into()),
            network: Network::Private,
        })?;
        Ok(Booted { _dir: dir, machine })
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = self
            .machine
            .stop_container(std::time::Duration::from_secs(10));
    }
}

/// Builds the system `modules` make into the machine's store; its
/// toplevel, as the machine sees it.
fn build(
    machine: &Machine,
    modules: impl FnOnce(&mut bigtop::eval::module::ModuleBuilder),
) -> Result<String> {
    let host = Module::new("host", move |m| {
        m.import(&system::module());
        m.define("system.name", "box1");
        modules(m);
    });
    let cfg = Config::eval(&[host], None)?;
    let platform = Platform::default();
    let top = system::toplevel(&cfg, &platform)?;
    let store = machine.store();
    let builder = Builder::new(store).options(BuildOptions {
        sandbox: Sandboxing::Disabled,
        ..BuildOptions::default()
    });
    let built = bigtop::realise::realise(store, &builder, std::slice::from_ref(&top.drv))?;
    Ok(store.store_dir().full(&built.path(&top.drv.out())?))
}

/// Runs `argv` in the machine; its exit code and output.
fn run_in(m: &Machine, argv: &[&str]) -> Result<(Option<i32>, String)> {
    let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    Ok(m.run_inside(&argv, &[("PATH", "/usr/bin:/bin")])?)
}

/// The command line of process `pid` of the machine.
fn cmdline(m: &Machine, pid: u32) -> Result<String> {
    let (_, out) = run_in(m, &["cat", &format!("/proc/{pid}/cmdline")])?;
    Ok(out.replace('\0', " ").trim().to_owned())
}

/// An error and its causes, as the command line prints them.
fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!("\ncaused by: {s}"));
        source = s.source();
    }
    out
}

/// The main process of each service of the machine.
fn pids(m: &Machine) -> Result<std::collections::BTreeMap<String, u32>> {
    Ok(m.services()
        .states()?
        .into_iter()
        .filter_map(|(n, s)| Some((n, s.pid?)))
        .collect())
}
