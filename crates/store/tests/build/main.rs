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

use bigtop_store::build::{BuildOptions, Builder, Error, FailureKind, Sandboxing};
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

/// A `sh` derivation without inputs whose outputs are `names` (each in
/// the builder's environment under its name).
pub fn sh_outputs(store: &Store, name: &str, script: &str, names: &[&str]) -> Derivation {
    let mut d = sh(store, name, script, &[]);
    d.outputs = names
        .iter()
        .map(|n| (OutputName::new(n).unwrap(), DerivationOutput::Deferred))
        .collect();
    fill(store, &mut d);
    d
}

/// Regression (issue 13, point 8): outputs of one derivation that referred
/// to each other were registered, and then `store export` could not order
/// them and `gc` never collected them. Such a build now fails naming the
/// outputs of the cycle, two or more, and leaves nothing behind; an output
/// that refers to itself, or to another one way, is still built.
pub fn outputs_in_a_cycle_are_refused(store: &Store, options: BuildOptions) -> TestResult {
    let cases: [(&str, &[&str], &str); 2] = [
        (
            "pair",
            &["out", "dev"],
            "echo $dev > $out; echo $out > $dev",
        ),
        (
            "triple",
            &["out", "dev", "lib"],
            "echo $dev > $out; echo $lib > $dev; echo $out > $lib",
        ),
    ];
    for (name, outputs, script) in cases {
        let d = sh_outputs(store, name, script, outputs);
        let drv = store.add_derivation(&d)?;
        let err = Builder::new(store)
            .options(options.clone())
            .build(&[(drv.clone(), BTreeSet::new())])
            .expect_err("a cycle among outputs is refused");
        let Error::BuildFailed(failures) = &err else {
            panic!("{err}")
        };
        assert_eq!(failures.len(), 1, "{err}");
        let FailureKind::OutputCycle(cycle) = &failures[0].kind else {
            panic!("{err}")
        };
        let mut named: Vec<&str> = cycle.iter().map(OutputName::as_str).collect();
        named.sort_unstable();
        let mut expected = outputs.to_vec();
        expected.sort_unstable();
        assert_eq!(named, expected, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "cycle detected in the references of the outputs of `{drv}`"
            )),
            "{text}"
        );
        for o in outputs {
            assert!(text.contains(&format!("`{o}` -> ")), "{text}");
            let path = d
                .output_path(store.store_dir(), &OutputName::new(o)?)
                .unwrap();
            assert!(!store.is_valid(&path)?, "{path} was registered");
        }
        assert_eq!(strays(store), Vec::<String>::new());
    }

    // Itself, and the other one way: fine.
    let d = sh_outputs(
        store,
        "oneway",
        "echo $out $dev > $out; echo $dev > $dev",
        &["out", "dev"],
    );
    let out = build_out(store, options, &d)?;
    let dev = d
        .output_path(store.store_dir(), &OutputName::new("dev")?)
        .unwrap();
    assert_eq!(
        store.references(&out)?,
        BTreeSet::from([out.clone(), dev.clone()])
    );
    assert_eq!(store.references(&dev)?, BTreeSet::from([dev]));
    Ok(())
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
) -> Result<StorePath, bigtop_store::build::Error> {
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
