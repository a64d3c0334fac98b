//! The main job on its embedded defaults: evaluate a small fleet definition
//! into derivations, compute every store path without touching a store, and
//! print the build graph in the order a builder would run it.
//!
//! Today this uses bigtop-core directly; as bigtop-eval, the store and the
//! activation engine land, this example grows into the full flow
//! (evaluate → plan → build → switch) on the same definition.
//!
//! ```text
//! cargo run --release -p bigtop --example hello-fleet
//! ```

use std::collections::HashMap;
use std::error::Error;

use bigtop::core::content_address::{ContentAddress, ContentAddressMethod};
use bigtop::core::derivation::{Derivation, DerivationOutput, DrvHash, OutputName};
use bigtop::core::hash::Hash;
use bigtop::core::{ReferenceGraph, StoreDir, StorePath};

/// Evaluated derivations by `.drv` path, with their hashes modulo: what
/// bigtop-eval memoizes so every package is evaluated once.
#[derive(Default)]
struct Evaluation {
    drvs: HashMap<StorePath, Derivation>,
    hashes: HashMap<StorePath, DrvHash>,
}

impl Evaluation {
    fn add(&mut self, dir: &StoreDir, mut drv: Derivation) -> Result<StorePath, Box<dyn Error>> {
        let h = drv.fill_output_paths(dir, |input| self.hashes.get(input).copied())?;
        let path = drv.drv_path(dir)?;
        self.hashes.insert(path.clone(), h);
        self.drvs.insert(path.clone(), drv);
        Ok(path)
    }

    /// A shell-script package whose inputs are visible to the script as
    /// environment variables (`$hello` for an input named `hello`).
    fn package(
        &self,
        dir: &StoreDir,
        name: &str,
        script: &str,
        inputs: &[(&str, &StorePath)],
    ) -> Derivation {
        let mut drv = Derivation::new(name, "x86_64-linux", "/bin/sh");
        drv.args = vec!["-c".into(), script.into()];
        drv.outputs
            .insert(OutputName::out(), DerivationOutput::Deferred);
        for (var, input) in inputs {
            drv.input_drvs
                .entry((*input).clone())
                .or_default()
                .insert(OutputName::out());
            if let Some(path) = self.drvs[*input].output_path(dir, &OutputName::out()) {
                drv.env.insert((*var).into(), dir.full(&path));
            }
        }
        drv
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = StoreDir::default();
    let mut eval = Evaluation::default();

    // A source tarball, pinned by its hash: how it is fetched does not
    // change anything downstream.
    let mut src = Derivation::new("hello-2.12.1.tar.gz", "x86_64-linux", "builtin:fetchurl");
    src.env.insert(
        "url".into(),
        "https://ftp.gnu.org/gnu/hello/hello-2.12.1.tar.gz".into(),
    );
    src.outputs.insert(
        OutputName::out(),
        DerivationOutput::Fixed(ContentAddress::new(
            ContentAddressMethod::Flat,
            "sha256-jZkUKv2SV28wsM18tCqNxoCZmLxdYH2Idh9RLibH2yA=".parse::<Hash>()?,
        )),
    );
    let src = eval.add(&dir, src)?;
    let hello = eval.package(
        &dir,
        "hello-2.12.1",
        "tar xf $src && ./configure --prefix=$out && make install",
        &[("src", &src)],
    );
    let hello = eval.add(&dir, hello)?;
    let motd = eval.package(&dir, "etc-motd", "echo 'Managed by bigtop' > $out", &[]);
    let motd = eval.add(&dir, motd)?;
    let system = eval.package(
        &dir,
        "system-web-01",
        "mkdir -p $out && ln -s $hello $motd $out/",
        &[("hello", &hello), ("motd", &motd)],
    );
    let system = eval.add(&dir, system)?;

    // The build graph: derivations and the derivations they need.
    let graph = ReferenceGraph::new(eval.drvs.iter().map(|(path, drv)| {
        (
            path.clone(),
            drv.input_drvs.keys().cloned().collect::<Vec<_>>(),
        )
    }))?;
    println!("build order ({} derivations):", graph.len());
    for drv_path in graph.topo_order()? {
        let drv = &eval.drvs[&drv_path];
        for name in drv.outputs.keys() {
            let out = drv
                .output_path(&dir, name)
                .ok_or("output path not known before building")?;
            println!("  {:<24} {}", drv.name, dir.display(&out));
        }
    }
    println!(
        "\n{}:\n{}",
        dir.display(&system),
        eval.drvs[&system].to_text(&dir)
    );
    Ok(())
}
