//! Real packages built from sources kept in `examples/packages/`: a
//! shared C library, a program linked against it, a script wrapped with
//! its runtime dependencies and a configuration file made from a serde
//! value — evaluated, planned, built in the sandbox with the host's
//! tools imported as the bootstrap, and run.
//!
//! ```text
//! cargo run -p bigtop --example packages [STORE_PARENT_DIR]
//! ```
//!
//! The store is a chroot store in `STORE_PARENT_DIR` (default
//! `target/bigtop-packages`): its paths are `/bigtop/store/…` wherever it
//! physically lives, so the programs built into it run in a sandbox that
//! shows them there (`bigtop::realise::run`). A second run builds
//! nothing.

use std::error::Error;
use std::path::{Path, PathBuf};

use bigtop::eval::drv::Platform;
use bigtop::eval::package::{Package, Phase};
use bigtop::eval::set::PackageSet;
use bigtop::eval::source::SourceBuilder;
use bigtop::eval::{text, trivial};
use bigtop::store::build::{BuildOptions, Builder, TextRenderer};
use bigtop::store::Store;

fn main() -> Result<(), Box<dyn Error>> {
    let parent = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bigtop-packages"));
    let store = Store::open_chroot(&parent)?;
    let platform = Platform::default();
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packages");

    // Evaluation: pure, no store. The stdenv and the sources' directory
    // are values of the set: each recipe takes them from its arguments,
    // as nixpkgs' `callPackage` passes `stdenv`.
    let boot = bigtop::bootstrap::host(&platform)?;
    let set = PackageSet::new(platform.clone())
        .stdenv(boot.stdenv)
        .value("sources", sources)
        .add("greet", |a| {
            let src = a.value::<PathBuf>("sources")?.join("greet");
            Package::new("greet")
                .version("1.0")
                .src(&SourceBuilder::new(src).gitignore().build(a.platform())?)
                .description("A shared library that greets")
                .license("MIT")
                .build(&a.stdenv()?)
        })
        .add("hello", |a| {
            let greet = a.get("greet")?;
            let src = a.value::<PathBuf>("sources")?.join("hello");
            // A library input: its rpath is added and its presence in the
            // runtime closure is checked after the build.
            Package::new("hello")
                .version("1.0")
                .src(&SourceBuilder::new(src).gitignore().build(a.platform())?)
                .build_input(&greet)
                .env("GREET", &greet)
                .description("Says hello through libgreet")
                .build(&a.stdenv()?)
        })
        .add("config", |a| {
            let value = serde_json::json!({"owner": "platform team", "port": 8080});
            trivial::write_json(a.platform(), "report.json", &value)
        })
        .add("report", |a| {
            let (hello, config) = (a.get("hello")?, a.get("config")?);
            let file = a.value::<PathBuf>("sources")?.join("report/report.sh");
            let body = std::fs::read_to_string(&file).map_err(|e| bigtop::eval::Error::Source {
                path: file,
                source: e,
            })?;
            let script = text!(
                "PATH={}/bin:$PATH\nCONFIG={}\nOWNER='platform team'\n{}",
                hello,
                config,
                body
            );
            trivial::write_script(a.platform(), "report", "/bin/sh", script)
        })
        .add("smoke-test", |a| {
            // A package whose build runs another: the check phase runs
            // hello in the sandbox.
            let hello = a.get("hello")?;
            Package::new("hello-smoke-test")
                .phase(Phase::Unpack, "")
                .do_check(true)
                .phase(
                    Phase::Check,
                    text!("{}/bin/hello sandbox > greeting", hello),
                )
                .phase(Phase::Install, "mkdir -p $out && cp greeting $out/")
                .build(&a.stdenv()?)
        });
    let pkgs = set.eval();
    let roots = vec![pkgs.get("report")?, pkgs.get("smoke-test")?];

    // Plan, build, show.
    let renderer = TextRenderer::new(std::io::stderr(), false);
    let builder = Builder::new(&store)
        .options(BuildOptions {
            max_jobs: 2,
            ..BuildOptions::default()
        })
        .observer(&renderer);
    // The renderer prints the plan, then each build.
    let built = bigtop::realise::realise(&store, &builder, &roots)?;
    println!("built {} derivations", built.report.built);
    // What a build made is garbage to the next `bigtop store gc` unless
    // something roots it: a GC root per output, as `bigtop build -o` does.
    for d in &roots {
        store.add_root(&format!("example-{}", d.name()), &built.path(&d.out())?)?;
    }
    let full = |p: &bigtop::core::StorePath| store.store_dir().full(p);
    for d in &roots {
        println!("{} -> {}", d.name(), full(&built.path(&d.out())?));
    }
    let report = built.path(&roots[0].out())?;
    println!("runtime closure of report:");
    let runtime = bigtop::realise::RuntimeClosure::of(&store, std::slice::from_ref(&report))?;
    for p in runtime.paths() {
        println!("  {}", full(p));
    }
    // The compiler built it; the machine does not receive it.
    runtime.assert_excludes("bootstrap-tools");
    let greeting = std::fs::read_to_string(
        store
            .physical(&built.path(&roots[1].out())?)
            .join("greeting"),
    )?;
    print!("in the sandbox: {greeting}");
    // The report script, run where it sees only its runtime closure.
    let out = bigtop::realise::run(&store, &report, "", &[])?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        return Err(format!("report failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}
