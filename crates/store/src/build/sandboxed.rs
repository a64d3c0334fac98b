//! TEMPORARY: replaced when the sandbox module lands.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use bigtop_core::derivation::{Derivation, OutputName};
use bigtop_core::StorePath;

use super::process::BuildDir;
use super::run::LogSink;
use super::{BuildOptions, FailureKind};
use crate::error::Error;
use crate::store::Store;

pub(crate) fn available() -> Result<(), Error> {
    Err(Error::SandboxUnavailable("not integrated yet".into()))
}

pub(crate) fn run(
    _store: &Store,
    _options: &BuildOptions,
    _d: &Derivation,
    _outputs: &BTreeMap<OutputName, StorePath>,
    _closure: &BTreeSet<StorePath>,
    _build_dir: &BuildDir,
    _log: &mut LogSink<'_>,
) -> Result<(std::process::ExitStatus, BTreeMap<OutputName, PathBuf>), (FailureKind, ())> {
    Err((FailureKind::Setup("sandbox not integrated".into()), ()))
}
