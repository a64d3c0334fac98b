//! The planner and the builder against real stores: builtin and process
//! builds, failures, fixed outputs, substitution, logs.

mod builtins;
mod fetch;
mod jobserver;
mod planning;
mod process;
mod sandboxed;

use std::collections::BTreeSet;
use std::path::Path;

use bigtop_store::build::{BuildOptions, Builder, Sandboxing};
use bigtop_store::core::derivation::{Derivation, DerivationOutput, OutputName};
use bigtop_store::core::{StoreDir, StorePath};
use bigtop_store::Store;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A store whose logical dir is its physical dir (inside `tmp`), so that
/// unsandboxed builders can write their outputs where they belong.
pub fn direct_store(tmp: &Path) -> Store {
    let dir = tmp.join("store");
    Store::builder()
        .store_dir(StoreDir::new(dir.to_str().unwrap()).unwrap())
        .open()
        .unwrap()
}

/// Unsandboxed options: these tests are about the builder, not isolation.
pub fn plain() -> BuildOptions {
    BuildOptions {
        sandbox: Sandboxing::Disabled,
        max_jobs: 2,
        ..BuildOptions::default()
    }
}

/// A `/bin/sh -c SCRIPT` derivation with `env`, inputs, outputs filled in.
pub fn sh(store: &Store, name: &str, script: &str, inputs: &[&StorePath]) -> Derivation {
    let mut d = Derivation::new(name, &bigtop_store::build::host_system(), "/bin/sh");
    d.args = vec!["-c".into(), script.into()];
    for (i, input) in inputs.iter().enumerate() {
        d.input_drvs
            .insert((*input).clone(), BTreeSet::from([OutputName::out()]));
        let out = store.derivation_outputs(input).unwrap()[&OutputName::out()].clone();
        d.env.insert(
            format!("in{i}"),
            store.store_dir().display(&out).to_string(),
        );
    }
    fill(store, &mut d);
    d
}

/// Fills output paths, reading input derivations' hashes from the store.
pub fn fill(store: &Store, d: &mut Derivation) {
    if d.outputs.is_empty() {
        d.outputs
            .insert(OutputName::out(), DerivationOutput::Deferred);
    }
    let dir = store.store_dir().clone();
    d.fill_output_paths(&dir, |p| drv_hash(store, p)).unwrap();
}

fn drv_hash(store: &Store, p: &StorePath) -> Option<bigtop_store::core::derivation::DrvHash> {
    let input = store.read_derivation(p).ok()?;
    input
        .hash_modulo(store.store_dir(), |q| drv_hash(store, q))
        .ok()
}

/// Builds one derivation; returns its `out`.
pub fn build_out(
    store: &Store,
    options: BuildOptions,
    d: &Derivation,
) -> Result<StorePath, bigtop_store::Error> {
    let drv = store.add_derivation(d)?;
    let report = Builder::new(store)
        .options(options)
        .build(&[(drv.clone(), BTreeSet::new())])?;
    Ok(report.outputs[&drv][&OutputName::out()].clone())
}

/// Paths in the store dir that are not registered (temporary names,
/// half-written outputs): what a failure must never leave.
pub fn strays(store: &Store) -> Vec<String> {
    let valid: BTreeSet<String> = store
        .all_valid_paths()
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    std::fs::read_dir(store.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !valid.contains(n))
        .collect()
}
