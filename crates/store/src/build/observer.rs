//! Progress of a build: events for the embedder to render.

use std::io::Write;
use std::sync::Mutex;

use bigtop_core::StorePath;

use super::plan::Plan;
use super::BuildFailure;

/// Receives what happens while a plan runs. Every method has an empty
/// default, so an observer implements only what it renders. Calls come
/// from several threads.
pub trait BuildObserver: Send + Sync {
    /// The plan, before anything starts.
    fn planned(&self, _plan: &Plan) {}
    /// A job started: a build (`drv`) or a fetch (the path).
    fn started(&self, _path: &StorePath, _what: Activity) {}
    /// A line of a build's log (without its newline).
    fn log_line(&self, _drv: &StorePath, _line: &str) {}
    /// A job finished: a build's outputs are registered, or a path fetched.
    fn finished(&self, _path: &StorePath, _outputs: &[StorePath]) {}
    /// A job failed.
    fn failed(&self, _failure: &BuildFailure) {}
    /// Fetching `path` failed (reported through [`failed`](Self::failed)):
    /// it is fetched from another substituter, or built from its
    /// derivation, instead.
    fn fell_back(&self, _path: &StorePath) {}
    /// Counts after each change: jobs done, running and left.
    fn progress(&self, _done: usize, _running: usize, _remaining: usize) {}
}

/// What a started job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activity {
    /// Runs a builder process.
    Build,
    /// Runs a builtin builder in-process.
    Builtin,
    /// Copies a path from a substituter.
    Fetch,
    /// Downloads a fixed output (`builtin:fetchurl`).
    Download,
    /// Rebuilds valid outputs to compare them.
    Check,
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl BuildObserver for Silent {}

/// Plain lines, one per event (`building …`, `built …`, log lines
/// prefixed with the derivation's name): for examples, tests and output
/// that is not a terminal.
#[derive(Debug)]
pub struct TextRenderer<W: Write + Send> {
    out: Mutex<W>,
    logs: bool,
}

impl<W: Write + Send> TextRenderer<W> {
    /// Writes to `out`; with `logs`, also every log line.
    pub fn new(out: W, logs: bool) -> Self {
        TextRenderer {
            out: Mutex::new(out),
            logs,
        }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    fn line(&self, text: std::fmt::Arguments<'_>) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // Progress output is best effort: a closed pipe must not fail a build.
        let _ = writeln!(out, "{text}");
    }
}

impl<W: Write + Send> BuildObserver for TextRenderer<W> {
    fn planned(&self, plan: &Plan) {
        if !plan.is_empty() {
            self.line(format_args!("{}", plan.to_string().trim_end()));
        }
    }

    fn started(&self, path: &StorePath, what: Activity) {
        let verb = match what {
            Activity::Build | Activity::Builtin => "building",
            Activity::Fetch => "fetching",
            Activity::Check => "checking",
            Activity::Download => "downloading",
        };
        self.line(format_args!("{verb} {path}"));
    }

    fn log_line(&self, drv: &StorePath, line: &str) {
        if self.logs {
            let name = drv.name().strip_suffix(".drv").unwrap_or(drv.name());
            self.line(format_args!("{name}> {line}"));
        }
    }

    fn finished(&self, path: &StorePath, _outputs: &[StorePath]) {
        self.line(format_args!("done {path}"));
    }

    fn failed(&self, failure: &BuildFailure) {
        self.line(format_args!("error: {failure}"));
    }

    fn fell_back(&self, path: &StorePath) {
        self.line(format_args!(
            "fetching {path} failed: trying another substituter, or building it"
        ));
    }
}
