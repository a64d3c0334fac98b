//! `bigtop build` and `bigtop log`: building derivations from the command
//! line, and reading what their builders printed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use bigtop_core::derivation::OutputName;
use bigtop_core::{StoreDir, StorePath};
use bigtop_store::build::{
    builtin, BuildOptions, BuildReport, Builder, FailureKind, Interrupt, JobKind, Plan, Sandboxing,
};
use bigtop_store::Store;
use clap::Args;
use serde::Serialize;

use thiserror::Error;

use super::derivation::{self, derivation_of};
use super::progress::Progress;
use super::store::{self, Out};
use super::GlobalArgs;

/// Why `bigtop build` or `bigtop log` failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening the store, reading paths or printing failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A substituter or a trusted key.
    #[error(transparent)]
    Substituter(#[from] super::config::SubstituterError),
    /// A configuration file.
    #[error(transparent)]
    Config(#[from] super::config::Error),
    /// Naming a target's derivation failed.
    #[error(transparent)]
    Derivation(#[from] derivation::Error),
    /// The signal handling of a build could not be set up.
    #[error("cannot set up the handling of SIGINT, SIGTERM and SIGHUP")]
    Signals(#[source] std::io::Error),
    /// A signal stopped the build: its builds were killed and cleaned up.
    #[error("interrupted by signal {signal}: running builds were stopped and their work removed")]
    Interrupted {
        /// The signal's number.
        signal: i32,
    },
    /// A path given as a derivation is not a `.drv`.
    #[error("`{input}` is not a derivation (`.drv`): build takes derivations (`bigtop store path-info` names a path's deriver)")]
    NotDerivation {
        /// The argument.
        input: String,
    },
    /// An output named after `^` is not a valid output name.
    #[error("invalid output name in `{input}`")]
    BadOutputName {
        /// The argument.
        input: String,
        /// Why.
        #[source]
        source: bigtop_core::store_path::ParseError,
    },
    /// A derivation has no build log in this store.
    #[error("no build log for `{drv}`: it has not been built by this store")]
    NoLog {
        /// The `.drv`.
        drv: String,
    },
    /// Builds must be sandboxed and this machine cannot.
    #[error("cannot sandbox builds on this machine: {reason}; pass `--no-sandbox` to build without isolation")]
    NoSandbox {
        /// Why.
        reason: String,
    },
    /// `--no-sandbox` with a store that is not at its logical path.
    #[error("cannot build `{drv}` without the sandbox: unsandboxed builders write outputs at their logical paths, and this store keeps `{logical}` in `{physical}`; drop `--no-sandbox`, or use a store at its logical path (`--store-dir DIR` without `--store`)")]
    UnsandboxedChroot {
        /// A derivation that would run a builder process.
        drv: String,
        /// The logical store dir.
        logical: PathBuf,
        /// Where the store keeps it.
        physical: PathBuf,
    },
    /// An out-link would replace something that is not a symlink.
    #[error("refusing to replace `{path}` with an out-link: it exists and is not a symlink")]
    OutLinkInTheWay {
        /// The file in the way.
        path: PathBuf,
    },
    /// Builds failed (each was reported on standard error as it failed).
    #[error("{failed} build{} failed{}{details}", if *.failed == 1 { "" } else { "s" }, skipped_text(*.skipped))]
    BuildFailed {
        /// How many builds failed.
        failed: usize,
        /// Per failure, the derivation and why (on more lines where why
        /// takes them).
        details: String,
        /// How many jobs were not attempted because a dependency failed.
        skipped: usize,
    },
    /// `--check` rebuilt outputs that differ from the registered ones.
    #[error("{count} output{} not deterministic: a rebuild differs from the registered output{details}", if *.count == 1 { " is" } else { "s are" })]
    NotDeterministic {
        /// How many outputs differ.
        count: usize,
        /// One line per output: the path, its deriver, both hashes.
        details: String,
    },
}

fn skipped_text(skipped: usize) -> String {
    match skipped {
        0 => ":".to_owned(),
        1 => " (1 dependent job not attempted):".to_owned(),
        n => format!(" ({n} dependent jobs not attempted):"),
    }
}

impl From<bigtop_store::Error> for Error {
    fn from(e: bigtop_store::Error) -> Self {
        Error::Store(e.into())
    }
}

impl Error {
    /// Whether the reader of standard output went away (`… | head`),
    /// which is not a failure of the command.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            Error::Store(e) => e.is_broken_pipe(),
            Error::Derivation(e) => e.is_broken_pipe(),
            _ => false,
        }
    }
}

/// Arguments of `bigtop build`. With `--json`, it prints the targets and
/// their output paths (the plan, with `--dry-run`) as JSON.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// `.drv` paths, each optionally followed by the outputs wanted:
    /// `DRV^out,dev` (default: all of them, also written `DRV^*`).
    #[arg(required = true, value_name = "DRV[^OUTPUTS]")]
    pub targets: Vec<String>,
    /// Print what would be built or fetched; build nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Builder processes running at once (default: the number of CPUs).
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_jobs: Option<u32>,
    /// The CPUs all builds share, told to each builder as
    /// `BIGTOP_BUILD_CORES` (default and 0: all of them).
    #[arg(long, value_name = "N")]
    pub cores: Option<u32>,
    /// After a failure, go on building everything that does not depend on
    /// it.
    #[arg(short, long)]
    pub keep_going: bool,
    /// Rebuild targets whose outputs are valid and fail unless the result
    /// is bit-identical (needs the sandbox).
    #[arg(long, conflicts_with = "no_sandbox")]
    pub check: bool,
    /// Run builders without any isolation. The store must be at its
    /// logical path (`--store-dir` without `--store`), since builders
    /// write their outputs there.
    #[arg(long)]
    pub no_sandbox: bool,
    /// Make PATH a symlink to the output and a garbage collector root; more
    /// outputs get `PATH-<output>`, later targets `PATH-2`, `PATH-3`… (as
    /// `nix build` names them). An existing file that is not a symlink is
    /// never replaced, and PATH may not be in the store dir. The link
    /// points at the logical path: with a chroot store (`--store DIR`)
    /// that path exists only inside builds, but every command that takes
    /// a store path takes the link and maps it through the store.
    #[arg(short, long, value_name = "PATH")]
    pub out_link: Option<PathBuf>,
    /// Show every line of every build's log on standard error, prefixed
    /// by the derivation's name.
    #[arg(short = 'L', long)]
    pub print_build_logs: bool,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub substituters: super::config::SubstituterArgs,
}

/// Arguments of `bigtop log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// A `.drv` path, or an output path (the log of its deriver).
    #[arg(value_name = "PATH")]
    pub path: String,
}

/// Parses `DRV`, `DRV^out,dev` or `DRV^*`; an empty set means all outputs.
fn parse_target(store: &Store, input: &str) -> Result<(StorePath, BTreeSet<OutputName>), Error> {
    let (path, outputs) = match input.split_once('^') {
        Some((p, o)) => (p, Some(o)),
        None => (input, None),
    };
    let drv = super::store::parse_path(store, path)?;
    if !drv.is_derivation() {
        return Err(Error::NotDerivation {
            input: input.to_owned(),
        });
    }
    let wanted = match outputs {
        None | Some("*") => BTreeSet::new(),
        Some(list) => list
            .split(',')
            .map(|o| {
                OutputName::new(o).map_err(|source| Error::BadOutputName {
                    input: input.to_owned(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok((drv, wanted))
}

/// Runs `bigtop build`.
pub fn build(args: &BuildArgs, global: &GlobalArgs) -> Result<(), Error> {
    // First, before any thread starts: threads inherit the blocked mask,
    // and one that did not would die of the signal, builders running on.
    let interrupt = Interrupt::new().map_err(Error::Signals)?;
    let caught = catch_signals(&interrupt).map_err(Error::Signals)?;
    let store = global.store.open()?;
    let targets = args
        .targets
        .iter()
        .map(|t| parse_target(&store, t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = BuildOptions {
        keep_going: args.keep_going,
        check: args.check,
        sandbox: if args.no_sandbox {
            Sandboxing::Disabled
        } else {
            Sandboxing::Required
        },
        interrupt: Some(interrupt),
        ..BuildOptions::default()
    };
    let config = super::config::Config::load()?;
    if let Some(j) = args.max_jobs.or(config.max_jobs) {
        options.max_jobs = j.max(1) as usize;
    }
    if let Some(c) = args.cores.or(config.cores).filter(|&c| c > 0) {
        options.cores = c as usize;
    }
    let progress = Progress::stderr(store.store_dir().clone(), args.print_build_logs);
    let substituters = args.substituters.open(&store, &config)?;
    let mut builder = Builder::new(&store).options(options).observer(&progress);
    for s in &substituters {
        builder = builder.substituter(s);
    }
    if args.dry_run {
        let plan = builder.dry_run(&targets)?;
        let names: Vec<String> = substituters
            .iter()
            .map(|s| bigtop_store::build::Substituter::name(s).to_owned())
            .collect();
        return print_plan(&plan, &names, global.json);
    }
    if args.no_sandbox {
        refuse_unsandboxed_chroot(&store, &builder.dry_run(&targets)?)?;
    }
    if let Some(link) = &args.out_link {
        // Before building: a build that cannot deliver its links should
        // say so before it spends an hour.
        check_out_links(&store, link, &targets)?;
    }
    let result = builder.build(&targets);
    progress.finish();
    let signal = caught.load(Ordering::SeqCst);
    let report = result.map_err(|e| build_error(store.store_dir(), e, signal))?;
    // In target order (out-links are numbered by it), not the report's.
    let outputs: Vec<(&StorePath, BTreeMap<OutputName, StorePath>)> = targets
        .iter()
        .map(|(drv, _)| (drv, report.outputs.get(drv).cloned().unwrap_or_default()))
        .collect();
    if args.check {
        check_results(&store, &report, &targets)?;
    }
    if let Some(link) = &args.out_link {
        for (i, (_, outs)) in outputs.iter().enumerate() {
            for (name, path) in outs {
                store.add_indirect_root(&out_link_name(link, i, name), path)?;
            }
        }
    }
    let dir = store.store_dir();
    let mut out = Out::new();
    if global.json {
        let json: Vec<BuiltJson<'_>> = outputs
            .iter()
            .map(|(drv, outs)| BuiltJson {
                drv,
                outputs: outs,
                identical: args.check.then(|| {
                    report
                        .checks
                        .iter()
                        .filter(|c| &c.drv == *drv)
                        .filter_map(|c| {
                            let name = outs.iter().find(|(_, p)| **p == c.path)?.0;
                            Some((name, c.identical()))
                        })
                        .collect()
                }),
            })
            .collect();
        out.json(&json)?;
    } else {
        for (_, outs) in &outputs {
            for path in outs.values() {
                out.line(dir.display(path))?;
            }
        }
    }
    Ok(out.finish()?)
}

/// What `build --json` prints for each target.
#[derive(Serialize)]
struct BuiltJson<'a> {
    drv: &'a StorePath,
    outputs: &'a BTreeMap<OutputName, StorePath>,
    /// With `--check`: for each output rebuilt, whether it came out the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    identical: Option<BTreeMap<&'a OutputName, bool>>,
}

/// `result`, `result-dev`, `result-2`, `result-2-dev`: `nix build`'s names.
fn out_link_name(base: &Path, target: usize, output: &OutputName) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    if target > 0 {
        name.push(format!("-{}", target + 1));
    }
    if output.as_str() != "out" {
        name.push(format!("-{output}"));
    }
    PathBuf::from(name)
}

/// Fails if any link the build would make is in the store dir, or in
/// the way: an existing file or directory that is not a symlink.
fn check_out_links(
    store: &Store,
    base: &Path,
    targets: &[(StorePath, BTreeSet<OutputName>)],
) -> Result<(), Error> {
    // Every link is beside `base`: one check covers the usual case, even
    // where a derivation cannot be read below.
    store.check_indirect_root(base)?;
    for (i, (drv, wanted)) in targets.iter().enumerate() {
        let names: Vec<OutputName> = if wanted.is_empty() {
            // One that cannot be read is reported by the planner, better.
            match store.read_derivation(drv) {
                Ok(d) => d.outputs.into_keys().collect(),
                Err(_) => continue,
            }
        } else {
            wanted.iter().cloned().collect()
        };
        for name in names {
            let link = out_link_name(base, i, &name);
            store.check_indirect_root(&link)?;
            if fs::symlink_metadata(&link).is_ok_and(|m| !m.file_type().is_symlink()) {
                return Err(Error::OutLinkInTheWay { path: link });
            }
        }
    }
    Ok(())
}

/// Unsandboxed builders write their outputs at their logical paths: in a
/// chroot store those are elsewhere, so any process build would fail.
fn refuse_unsandboxed_chroot(store: &Store, plan: &Plan) -> Result<(), Error> {
    let logical = store.store_dir().as_path();
    if store.root() == logical {
        return Ok(());
    }
    let process_build = plan.jobs.iter().find_map(|j| match &j.kind {
        JobKind::Build {
            drv, derivation, ..
        } if !builtin::is_builtin(derivation) => Some(drv),
        _ => None,
    });
    match process_build {
        Some(drv) => Err(Error::UnsandboxedChroot {
            drv: store.store_dir().full(drv),
            logical: logical.to_owned(),
            physical: store.root().to_owned(),
        }),
        None => Ok(()),
    }
}

/// The CLI's form of a build error: failures were shown as they happened,
/// so the error summarises; a missing sandbox says how to do without.
/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every
/// thread it starts later) and starts one that waits for them: the first
/// fires `interrupt` and is recorded in what this returns. Builds then stop
/// and clean up before the process exits, where the default action would
/// have ended bigtop at once and left its builders running.
fn catch_signals(interrupt: &Interrupt) -> std::io::Result<Arc<AtomicI32>> {
    let set = block_stop_signals()?;
    let caught = Arc::new(AtomicI32::new(0));
    let (interrupt, record) = (interrupt.clone(), caught.clone());
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: waits for a signal of `set`, writing only `sig`.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                let _ = record.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
                interrupt.fire();
            }
        })?;
    Ok(caught)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every
/// thread it starts, which must come after); the set, for `sigwait`.
pub(super) fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: the set is initialized by sigemptyset before use; the mask
    // change concerns this thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

/// The CLI's form of a build error; `signal` is the one caught, if the
/// builds were interrupted.
fn build_error(dir: &StoreDir, e: bigtop_store::build::Error, signal: i32) -> Error {
    match e {
        bigtop_store::build::Error::BuildFailed(failures) => {
            let (skipped, failed): (Vec<_>, Vec<_>) = failures
                .iter()
                .partition(|f| matches!(f.kind, FailureKind::DependencyFailed(_)));
            let mut text = String::new();
            for f in &failed {
                // A reason's further lines are indented under its first.
                let _ = write!(
                    text,
                    "\n  {}: {}",
                    dir.display(&f.path),
                    super::progress::reason(f).replace('\n', "\n  ")
                );
            }
            Error::BuildFailed {
                failed: failed.len(),
                details: text,
                skipped: skipped.len(),
            }
        }
        bigtop_store::build::Error::SandboxUnavailable(reason) => Error::NoSandbox { reason },
        bigtop_store::build::Error::Store(e) => e.into(),
        bigtop_store::build::Error::Interrupted => Error::Interrupted { signal },
    }
}

/// With `--check`: says on standard error what was compared, and fails
/// if any output came out different.
fn check_results(
    store: &Store,
    report: &BuildReport,
    targets: &[(StorePath, BTreeSet<OutputName>)],
) -> Result<(), Error> {
    let dir = store.store_dir();
    let checked: BTreeSet<&StorePath> = report.checks.iter().map(|c| &c.drv).collect();
    for (drv, _) in targets {
        if !checked.contains(drv) {
            eprintln!(
                "not checked {}: its outputs were not valid, so it was built for the first time",
                dir.display(drv)
            );
        }
    }
    let mut differ = String::new();
    let mut n = 0;
    for c in &report.checks {
        if c.identical() {
            eprintln!("checked {}: identical", dir.display(&c.path));
        } else {
            n += 1;
            let _ = write!(
                differ,
                "\n  {} (built by {}): registered {}, rebuilt {}",
                dir.display(&c.path),
                dir.display(&c.drv),
                c.expected.to_sri(),
                c.got.to_sri()
            );
        }
    }
    if n > 0 {
        return Err(Error::NotDeterministic {
            count: n,
            details: differ,
        });
    }
    Ok(())
}

/// `--dry-run`: the plan as `Plan`'s text, or as JSON (each fetch with
/// the substituter it comes from, of `substituters` in the builder's
/// order).
fn print_plan(plan: &Plan, substituters: &[String], json: bool) -> Result<(), Error> {
    let mut out = Out::new();
    if json {
        let mut build = Vec::new();
        let mut fetch = Vec::new();
        for j in &plan.jobs {
            match &j.kind {
                JobKind::Build { drv, .. } => build.push(serde_json::json!({
                    "drv": drv,
                    "reason": j.reason.to_string(),
                })),
                JobKind::Fetch {
                    path,
                    info,
                    substituter,
                } => fetch.push(serde_json::json!({
                    "path": path,
                    "download_size": info.download_size,
                    "from": substituters.get(*substituter),
                })),
                _ => {}
            }
        }
        out.json(&serde_json::json!({
            "build": build,
            "fetch": fetch,
            "already_valid": plan.already_valid,
        }))?;
    } else {
        for line in plan.to_string().lines() {
            out.line(line)?;
        }
    }
    Ok(out.finish()?)
}

/// Runs `bigtop log`.
pub fn log(args: &LogArgs, global: &GlobalArgs) -> Result<(), Error> {
    let store = global.store.open()?;
    let drv = derivation_of(&store, &args.path)?;
    let text = match store.read_log(&drv)? {
        Some(text) => text,
        None => {
            // Built, and silent (no file is kept for an empty log): the
            // log is empty. Otherwise it was never built here.
            let outputs = store.derivation_outputs(&drv)?;
            if outputs.is_empty() || store.valid_among(outputs.values())?.len() < outputs.len() {
                return Err(Error::NoLog {
                    drv: store.store_dir().full(&drv),
                });
            }
            String::new()
        }
    };
    let mut out = Out::new();
    out.raw(text.as_bytes())?;
    Ok(out.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_links_are_named_as_nix_build_names_them() {
        let out = OutputName::out();
        let dev = OutputName::new("dev").expect("valid");
        let base = Path::new("dir/result");
        assert_eq!(out_link_name(base, 0, &out), Path::new("dir/result"));
        assert_eq!(out_link_name(base, 0, &dev), Path::new("dir/result-dev"));
        assert_eq!(out_link_name(base, 1, &out), Path::new("dir/result-2"));
        assert_eq!(out_link_name(base, 2, &dev), Path::new("dir/result-3-dev"));
    }

    #[test]
    fn a_missing_sandbox_says_how_to_build_without_it() {
        let e = build_error(
            &StoreDir::default(),
            bigtop_store::build::Error::SandboxUnavailable("no user namespaces".into()),
            0,
        );
        assert_eq!(
            e.to_string(),
            "cannot sandbox builds on this machine: no user namespaces; pass `--no-sandbox` to build without isolation"
        );
    }
}
