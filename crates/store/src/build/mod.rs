//! Building: planning what to build or fetch, then doing it in parallel,
//! hermetically.
//!
//! [`plan()`] classifies every derivation reachable from the targets
//! (valid, substitutable, to build); a [`Builder`] runs the plan with at
//! most [`BuildOptions::max_jobs`] builds at once, longest chains first.
//! Each process build gets a private build directory, a clean environment
//! (the derivation's variables plus `out` and the other outputs, `TMPDIR`
//! and friends, `HOME=/homeless-shelter`, `PATH=/path-not-set` unless
//! given, `BIGTOP_STORE`, `BIGTOP_BUILD_CORES`, and `MAKEFLAGS` naming
//! the run's jobserver, so that a plain `make` shares
//! [`BuildOptions::cores`] with every other build), a compressed log in
//! the state dir, and, on Linux, a sandbox in which only its input closure
//! is visible. Fixed-output derivations may use the network; the builtin
//! `builtin:fetchurl` (see [`fetch`]) downloads one in-process. Outputs are canonicalized, scanned for references, hashed and
//! registered atomically with their deriver (outputs that refer to each
//! other in a cycle fail the build); a failed or killed build leaves
//! nothing registered and no temporary files.
//!
//! ```no_run
//! use bigtop_store::build::{BuildOptions, Builder, TextRenderer};
//! use bigtop_store::core::derivation::{Derivation, DerivationOutput, OutputName};
//! use bigtop_store::Store;
//!
//! let store = Store::open_chroot("/tmp/demo")?;
//! let mut d = Derivation::new("hello", "x86_64-linux", "builtin:write-file");
//! d.env.insert("text".into(), "hello\n".into());
//! d.outputs.insert(OutputName::out(), DerivationOutput::Deferred);
//! d.fill_output_paths(store.store_dir(), |_| None)?;
//! let drv = store.add_derivation(&d)?;
//! let progress = TextRenderer::new(std::io::stderr(), true);
//! let report = Builder::new(&store)
//!     .options(BuildOptions::default())
//!     .observer(&progress)
//!     .build(&[(drv, Default::default())])?;
//! println!("{:?}", report.outputs);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod build_dir;
mod builder;
pub mod builtin;
mod environment;
mod error;
mod in_sandbox;
mod interrupt;
mod jobserver;
mod log;
pub mod observer;
pub mod plan;
mod process;

/// The builtin `builtin:fetchurl`, one of the [`builtin`] builders (moved
/// there; still reachable here).
pub use builtin::fetch;

use std::fmt;
use std::path::PathBuf;

use bigtop_core::derivation::OutputName;
use bigtop_core::hash::Hash;
use bigtop_core::StorePath;

pub use builder::{BuildReport, Builder, CheckResult, FETCH_TRIES};
pub use error::Error;
pub use in_sandbox::RunDirs;
pub use interrupt::Interrupt;
pub use observer::{Activity, BuildObserver, Silent, TextRenderer};
pub use plan::{plan, Job, JobKind, Plan, Reason, Substitutable, Substituter};

/// Whether process builds run in a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Sandboxing {
    /// Always; where namespaces are unavailable, builds fail with an error
    /// saying why.
    #[default]
    Required,
    /// Without any isolation: the caller's explicit choice. The store must
    /// be at its logical path, since builders write their outputs there.
    Disabled,
}

/// How a [`Builder`] builds.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Builds, fetches and downloads running at once (builtins do not
    /// count).
    pub max_jobs: usize,
    /// The CPU budget shared by all builds of a run: each process build
    /// holds one token of a GNU make jobserver of this many (so fewer
    /// process builds than `max_jobs` run if `cores` is smaller), and the
    /// `make` inside takes the others for its extra jobs (see `MAKEFLAGS`
    /// in the [module docs](self)). Also given as `BIGTOP_BUILD_CORES`.
    pub cores: usize,
    /// After a failure, go on with everything that does not depend on it;
    /// otherwise running builds finish and nothing new starts.
    pub keep_going: bool,
    /// Sandboxing of process builds.
    pub sandbox: Sandboxing,
    /// Host paths made visible read-only in the sandbox, as `(host path,
    /// path inside)`; `None` means `/bin/sh` with what it needs to run.
    /// Each build records the ones it had in its log.
    pub sandbox_paths: Option<Vec<(PathBuf, PathBuf)>>,
    /// Rebuild targets whose outputs are valid and report whether the
    /// result is bit-identical.
    pub check: bool,
    /// The platform builds run on; derivations for another one fail.
    pub system: String,
    /// Lines of log kept for a failure's report.
    pub log_lines: usize,
    /// A switch that stops the run: running builds are killed and cleaned
    /// up, nothing new starts, and the run fails with
    /// [`Error::Interrupted`]. Default: none.
    pub interrupt: Option<Interrupt>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        BuildOptions {
            max_jobs: cpus,
            cores: cpus,
            keep_going: false,
            sandbox: Sandboxing::Required,
            sandbox_paths: None,
            check: false,
            system: host_system(),
            log_lines: 25,
            interrupt: None,
        }
    }
}

/// `x86_64-linux` and the like: the platform this process runs on.
pub fn host_system() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// A fixed output whose content is not the one its derivation specifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashMismatch {
    /// The output.
    pub output: OutputName,
    /// The hash in the derivation.
    pub specified: Hash,
    /// The hash of what was fetched.
    pub got: Hash,
}

/// A job that failed.
#[derive(Debug, Clone)]
pub struct BuildFailure {
    /// The `.drv` (or the fetched path).
    pub path: StorePath,
    /// What went wrong.
    pub kind: FailureKind,
    /// The last lines of its log.
    pub log_tail: Vec<String>,
}

/// What went wrong with a job. A reason kept as text holds the error
/// and its causes, `: `-separated (the cause often says what to do).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum FailureKind {
    /// The builder exited unsuccessfully ("exit code 1", "killed by signal 9").
    Exited(String),
    /// The builder did not create this output.
    OutputMissing(OutputName),
    /// An output cannot be stored (special files, unreadable).
    BadOutput(OutputName, String),
    /// Outputs refer to each other in a cycle: each to the next, the last
    /// to the first (self-references are fine).
    OutputCycle(Vec<OutputName>),
    /// A fixed output's content is not the one specified.
    FixedOutputMismatch(Box<HashMismatch>),
    /// The derivation is for another platform.
    WrongSystem {
        /// Its `system`.
        wanted: String,
        /// Ours.
        here: String,
    },
    /// Content-addressed floating outputs are not built yet.
    FloatingOutput(OutputName),
    /// A builtin builder failed.
    Builtin(String),
    /// Fetching from a substituter failed.
    Fetch(String),
    /// The build could not be set up (build dir, sandbox, locks).
    Setup(String),
    /// The outputs could not be registered.
    Register(String),
    /// A dependency failed, so this was not attempted.
    DependencyFailed(StorePath),
    /// The run was interrupted while this was being built.
    Interrupted,
}

impl BuildFailure {
    /// What went wrong, whole (a hash mismatch takes several lines),
    /// without the log tail: for a renderer that shows the log apart.
    /// The `Display` form is this, then the log tail.
    pub fn message(&self) -> impl fmt::Display + '_ {
        Message(self)
    }
}

/// [`BuildFailure::message`].
struct Message<'a>(&'a BuildFailure);

impl fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message())?;
        if !self.log_tail.is_empty() {
            write!(f, "\nlast {} log lines:", self.log_tail.len())?;
            for l in &self.log_tail {
                write!(f, "\n  > {l}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.0.path;
        match &self.0.kind {
            FailureKind::Exited(status) => write!(f, "builder for `{p}` failed with {status}")?,
            FailureKind::OutputMissing(o) => {
                write!(f, "builder for `{p}` did not produce output `{o}`")?
            }
            FailureKind::BadOutput(o, why) => write!(f, "output `{o}` of `{p}`: {why}")?,
            FailureKind::OutputCycle(cycle) => {
                let chain: Vec<String> = cycle
                    .iter()
                    .chain(cycle.first())
                    .map(|o| format!("`{o}`"))
                    .collect();
                write!(
                    f,
                    "cycle detected in the references of the outputs of `{p}`: {}; an output may refer to itself, and to another output only one way",
                    chain.join(" -> ")
                )?
            }
            // All zeros: the placeholder of a fetch given no hash yet.
            FailureKind::FixedOutputMismatch(m) if m.specified.as_bytes().iter().all(|&b| b == 0) => {
                write!(
                    f,
                    "fixed-output derivation `{p}` (output `{}`) has no hash pinned yet:\n       got: {}\n  pin it (for a fetch: `.sha256(\"{}\")`)",
                    m.output,
                    m.got.to_sri(),
                    m.got.to_sri()
                )?
            }
            FailureKind::FixedOutputMismatch(m) => write!(
                f,
                "hash mismatch in fixed-output derivation `{p}` (output `{}`):\n  specified: {}\n       got: {}",
                m.output,
                m.specified.to_sri(),
                m.got.to_sri()
            )?,
            FailureKind::WrongSystem { wanted, here } => write!(
                f,
                "`{p}` is for `{wanted}`, and this machine builds for `{here}`"
            )?,
            FailureKind::FloatingOutput(o) => write!(
                f,
                "`{p}`: output `{o}` is content-addressed (floating); such outputs are not built yet"
            )?,
            FailureKind::Builtin(why) => write!(f, "builtin builder of `{p}` failed: {why}")?,
            FailureKind::Fetch(why) => write!(f, "cannot fetch `{p}`: {why}")?,
            FailureKind::Setup(why) => write!(f, "cannot build `{p}`: {why}")?,
            FailureKind::Register(why) => write!(f, "cannot register outputs of `{p}`: {why}")?,
            FailureKind::DependencyFailed(d) => {
                write!(f, "`{p}` was not built: its dependency `{d}` failed")?
            }
            FailureKind::Interrupted => write!(f, "build of `{p}` was interrupted")?,
        }
        Ok(())
    }
}

/// Fails with a clear error when this machine cannot sandbox builds.
pub fn sandbox_available() -> Result<(), Error> {
    in_sandbox::available()
}
