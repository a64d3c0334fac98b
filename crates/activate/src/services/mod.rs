//! Service managers: what the activation engine asks of one (install a
//! rendered service, start, stop, remove, report), and the backends that
//! answer: [`s6`] (the default; real processes in every test) and
//! [`systemd`] (units and `systemctl`, on a host booted with systemd).

pub mod s6;
pub mod systemd;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::error::Error;

/// What a service manager says of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ServiceState {
    /// It runs.
    pub up: bool,
    /// Its main process, as the machine numbers it.
    pub pid: Option<u32>,
}

/// A service manager, as the engine drives it. Every method is
/// idempotent: an interrupted activation redoes them.
pub trait Backend: std::fmt::Debug {
    /// Every service it supervises.
    fn states(&self) -> Result<BTreeMap<String, ServiceState>, Error>;
    /// Makes `name` the service rendered in `rendered` (the toplevel's
    /// directory for it, on the host), without starting or stopping it.
    /// The manager may see it only after [`commit`](Backend::commit).
    fn install(&self, name: &str, rendered: &Path) -> Result<(), Error>;
    /// Makes the manager pick up every service installed so far (one
    /// rescan, one `daemon-reload`), and waits until it has.
    fn commit(&self) -> Result<(), Error>;
    /// Starts `name` (installed).
    fn start(&self, name: &str) -> Result<(), Error>;
    /// Stops `name` and waits until it is down; kills it after
    /// `timeout`. Nothing if it is not installed.
    fn stop(&self, name: &str, timeout: Duration) -> Result<(), Error>;
    /// Stops and uninstalls `name`.
    fn remove(&self, name: &str, timeout: Duration) -> Result<(), Error>;
    /// Waits until every one of `names` is up, at most `timeout`; whether
    /// they are.
    fn wait_up_all(&self, names: &[&str], timeout: Duration) -> Result<bool, Error>;
    /// Makes `name` reload its configuration; `inside` runs a command
    /// inside the machine (its exit code and output).
    fn reload(&self, name: &str, inside: &Inside<'_>) -> Result<(), Error>;
    /// The last `lines` lines of its log.
    fn log_tail(&self, name: &str, lines: usize) -> Vec<String>;
}

/// Runs a command inside the machine: its exit code (`None`: killed)
/// and its output.
pub type Inside<'a> = dyn Fn(&[String]) -> Result<(Option<i32>, String), Error> + 'a;

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> Vec<String> {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}
