//! Process builds in the sandbox ([`crate::sandbox`]): the build's view of
//! the store is its input closure, its build dir is `/build`, and its
//! outputs are written in a scratch root beside the store, then moved
//! under temporary names in the store for staging.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use bigtop_core::derivation::{Derivation, OutputName};
use bigtop_core::StorePath;

use super::build_dir::{private_builds_dir, LentDir};
use super::environment::environment;
use super::log::{LogSink, PumpEnd};
use super::{BuildOptions, FailureKind};
use crate::error::{Chain, Error};
use crate::fs::{canonicalize, remove_tree};
use crate::sandbox::{self, SandboxSpec};
use crate::store::Store;

/// Where builders see their build directory.
const BUILD_DIR_INSIDE: &str = "/build";

static CHROOT_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn available() -> Result<(), super::Error> {
    sandbox::check_available().map_err(|e| super::Error::SandboxUnavailable(Chain(&e).to_string()))
}

/// `/bin/sh` and what it needs, found once per process.
fn default_paths() -> Result<&'static [(PathBuf, PathBuf)], String> {
    static PATHS: OnceLock<Result<Vec<(PathBuf, PathBuf)>, String>> = OnceLock::new();
    PATHS
        .get_or_init(|| sandbox::default_extra_paths().map_err(|e| Chain(&e).to_string()))
        .as_ref()
        .map(|v| v.as_slice())
        .map_err(Clone::clone)
}

/// The scratch root of one build, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

/// A scratch root and a private build dir for one sandboxed run outside a
/// build (a program run in its closure), named as this handle's leftovers
/// so that the collector removes them if the process dies; both removed
/// when dropped.
#[derive(Debug)]
pub struct RunDirs {
    /// For [`SandboxSpec::chroot_dir`].
    pub chroot_dir: PathBuf,
    /// For [`SandboxSpec::build_dir`]: made, empty, in a private parent.
    pub build_dir: PathBuf,
}

impl Drop for RunDirs {
    fn drop(&mut self) {
        let _ = remove_tree(&self.build_dir);
        let _ = remove_tree(&self.chroot_dir);
    }
}

impl Store {
    /// Makes the directories for one sandboxed run labelled `label`.
    pub fn sandbox_run_dirs(&self, label: &str) -> Result<RunDirs, Error> {
        let n = CHROOT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}-{label}", self.process);
        let dirs = RunDirs {
            chroot_dir: self.root().join(format!(".chroot-{name}")),
            build_dir: private_builds_dir(self)?.join(&name),
        };
        std::fs::create_dir(&dirs.build_dir)
            .map_err(crate::error::io_err("create", &dirs.build_dir))?;
        Ok(dirs)
    }
}

/// Runs `d` in the sandbox; returns its exit status and, for each output,
/// where it now is (its own physical path, or a temporary name when
/// `check`ing; a path that does not exist if the builder did not make it).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn run(
    store: &Store,
    options: &BuildOptions,
    d: &Derivation,
    outputs: &BTreeMap<OutputName, StorePath>,
    closure: &BTreeSet<StorePath>,
    build_dir: &LentDir<'_>,
    jobserver: Option<[RawFd; 2]>,
    check: bool,
    log: &mut LogSink<'_>,
) -> Result<(std::process::ExitStatus, BTreeMap<OutputName, PathBuf>), (FailureKind, ())> {
    let setup = |why: String| (FailureKind::Setup(why), ());
    let extra: Vec<(PathBuf, PathBuf)> = match &options.sandbox_paths {
        Some(p) => p.clone(),
        None => default_paths().map_err(setup)?.to_vec(),
    };
    // Impurities are visible: the log says which host paths the build saw.
    log.note(&format!(
        "bigtop: host paths in the sandbox: {}",
        extra
            .iter()
            .map(|(_, inside)| inside.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let n = CHROOT_COUNTER.fetch_add(1, Ordering::Relaxed);
    let scratch = Scratch(
        store
            .root()
            .join(format!(".chroot-{}-{n}-{}", store.process, d.name)),
    );
    let store_dir = store.store_dir().as_path().to_owned();
    // Inside, the pool's ends are descriptors 3 and 4.
    let env = environment(
        store,
        options,
        d,
        outputs,
        BUILD_DIR_INSIDE,
        jobserver.map(|_| [3, 4]),
    );
    let (reader, writer) =
        std::io::pipe().map_err(|e| setup(format!("cannot make a pipe: {e}")))?;
    let err_writer = writer
        .try_clone()
        .map_err(|e| setup(format!("cannot make a pipe: {e}")))?;
    let spec = SandboxSpec {
        program: d.builder.clone(),
        args: d.args.clone(),
        env,
        build_dir: build_dir.path().to_owned(),
        build_dir_inside: PathBuf::from(BUILD_DIR_INSIDE),
        store_dir: store_dir.clone(),
        store_root: store.root().to_owned(),
        chroot_dir: scratch.0.clone(),
        inputs: closure.iter().map(|p| p.to_string()).collect(),
        outputs: outputs.values().map(|p| p.to_string()).collect(),
        extra_paths: extra,
        network: d.is_fixed_output(),
        stdout: OwnedFd::from(writer),
        stderr: OwnedFd::from(err_writer),
        inherit: jobserver.map(Vec::from).unwrap_or_default(),
        uid: sandbox::DEFAULT_UID,
        gid: sandbox::DEFAULT_GID,
    };
    let child = sandbox::spawn(&spec).map_err(|e| setup(Chain(&e).to_string()))?;
    // The spec holds the pipe's write ends: the log ends once they close.
    drop(spec);
    // The builder is the sandbox's init: when it exits, the kernel kills
    // everything else inside, so the log ends no later than the build;
    // killing it on an interrupt takes the whole namespace along.
    let interrupt = options.interrupt.as_ref();
    if log.pump_until(&reader, None, None, interrupt) == PumpEnd::Interrupted {
        child.kill().map_err(|e| setup(Chain(&e).to_string()))?;
        log.pump(&reader);
    }
    let status = child.wait().map_err(|e| setup(Chain(&e).to_string()))?;
    // Move what was made out of the scratch root before it goes.
    let inside = scratch
        .0
        .join(store_dir.strip_prefix("/").unwrap_or(&store_dir));
    let mut written: BTreeMap<OutputName, PathBuf> = BTreeMap::new();
    // A failed build's outputs never reach the store, not even to be
    // removed there: they go with the scratch root.
    for (name, path) in outputs.iter().filter(|_| status.success()) {
        let at = inside.join(path.to_string());
        // To its own path (not valid, and locked by this build), or beside
        // the valid one when checking.
        let tmp = if check {
            store.temp_name(path.name())
        } else {
            store.physical(path)
        };
        if std::fs::symlink_metadata(&at).is_ok() {
            // Canonical (read-only, ours, no setuid bits) while still in
            // the private scratch root: nobody but us can have opened
            // anything in it, and nobody can once it is in the store.
            canonicalize(&at, store.owner()).map_err(|e| {
                for w in written.values() {
                    let _ = remove_tree(w);
                }
                setup(Chain(&e).to_string())
            })?;
            let _ = remove_tree(&tmp);
            std::fs::rename(&at, &tmp).map_err(|e| {
                for w in written.values() {
                    let _ = remove_tree(w);
                }
                setup(format!("cannot move output `{}`: {e}", at.display()))
            })?;
        }
        written.insert(name.clone(), tmp);
    }
    drop(scratch);
    Ok((status, written))
}
