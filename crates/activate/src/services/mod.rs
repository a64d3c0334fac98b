//! Service managers: what the activation engine asks of one (install a
//! rendered service, start, stop, remove, report), and the backends that
//! answer: [`s6`] (the default; real processes in every test).

pub mod s6;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    fn install(&self, name: &str, rendered: &Path) -> Result<(), Error>;
    /// Starts `name` (installed).
    fn start(&self, name: &str) -> Result<(), Error>;
    /// Stops `name` and waits until it is down; kills it after
    /// `timeout`. Nothing if it is not installed.
    fn stop(&self, name: &str, timeout: Duration) -> Result<(), Error>;
    /// Stops and uninstalls `name`.
    fn remove(&self, name: &str, timeout: Duration) -> Result<(), Error>;
    /// Waits until `name` is up, at most `timeout`; whether it is.
    fn wait_up(&self, name: &str, timeout: Duration) -> Result<bool, Error>;
    /// The command that reloads `name` inside the machine, if it has one.
    fn reload_script(&self, name: &str) -> Option<PathBuf>;
    /// Where its log is, on the host.
    fn log_file(&self, name: &str) -> PathBuf;
}
