//! What a builder is given: its derivation with the output placeholders
//! filled in, and its complete environment. Process builds, sandboxed or
//! not, and the builtins all start from these.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use bigtop_core::derivation::{placeholder, Derivation, OutputName};
use bigtop_core::StorePath;

use super::jobserver::Jobserver;
use super::BuildOptions;
use crate::store::Store;

/// `HOME` of every build: a path that does not exist, so that nothing
/// reads or writes a home directory.
pub(crate) const NO_HOME: &str = "/homeless-shelter";

/// `PATH` when the derivation gives none: nothing is found by name.
pub(crate) const NO_PATH: &str = "/path-not-set";

/// The complete environment of a build: the derivation's variables, then
/// the documented ones (which win).
pub(crate) fn environment(
    store: &Store,
    options: &BuildOptions,
    derivation: &Derivation,
    outputs: &BTreeMap<OutputName, StorePath>,
    build_dir: &str,
    jobserver: Option<[RawFd; 2]>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = derivation.env.clone();
    env.entry("PATH".into()).or_insert_with(|| NO_PATH.into());
    for (name, path) in outputs {
        env.insert(
            name.as_str().to_owned(),
            store.store_dir().display(path).to_string(),
        );
    }
    for var in [
        "TMPDIR",
        "TEMPDIR",
        "TMP",
        "TEMP",
        "BIGTOP_BUILD_TOP",
        "PWD",
    ] {
        env.insert(var.into(), build_dir.into());
    }
    env.insert("HOME".into(), NO_HOME.into());
    env.insert(
        "BIGTOP_STORE".into(),
        store.store_dir().as_path().display().to_string(),
    );
    env.insert(
        "BIGTOP_BUILD_CORES".into(),
        options.cores.max(1).to_string(),
    );
    if let Some(fds) = jobserver {
        env.insert("MAKEFLAGS".into(), Jobserver::makeflags(fds));
    }
    env.into_iter().collect()
}

/// Replacements of the derivation's own output placeholders by the paths.
pub(crate) fn placeholders(
    store: &Store,
    outputs: &BTreeMap<OutputName, StorePath>,
) -> BTreeMap<String, String> {
    outputs
        .iter()
        .map(|(o, p)| (placeholder(o), store.store_dir().display(p).to_string()))
        .collect()
}

/// Shared by process builds: the derivation with its placeholders filled.
/// Borrowed when it has none (most derivations: a copy per build is
/// what a small builtin would mostly cost).
pub(crate) fn with_placeholders<'d>(
    store: &Store,
    derivation: &'d Derivation,
    outputs: &BTreeMap<OutputName, StorePath>,
) -> std::borrow::Cow<'d, Derivation> {
    let replacements = placeholders(store, outputs);
    let has = |s: &String| replacements.keys().any(|p| s.contains(p.as_str()));
    if !has(&derivation.builder)
        && !derivation.args.iter().any(has)
        && !derivation.env.values().any(has)
    {
        return std::borrow::Cow::Borrowed(derivation);
    }
    let mut d = derivation.clone();
    d.substitute(&replacements);
    std::borrow::Cow::Owned(d)
}
