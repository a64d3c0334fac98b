//! `eval-bench`: evaluating a synthetic package set, and the same set as
//! a Nix expression for `nix-instantiate` (`benches/compare-nix-eval.sh`
//! times both).
//!
//! ```text
//! eval-bench run N     build a package set of N packages and evaluate
//!                      every package to its .drv and output paths
//!                      (`Pkgs::all`: on every core)
//! eval-bench raw N     the same derivations made directly, no set
//! eval-bench nix N     print the same set as a Nix expression: a list of
//!                      `derivation` calls (import it, map drvPath)
//! ```
//!
//! Package i depends on 3–10 of the packages before it (fewer for the
//! first few), chosen by a fixed pseudo-random sequence, and has a few
//! variables and phases; its dependencies appear in a variable as their
//! output paths, as Nix's string context would put them.

use std::process::ExitCode;
use std::time::Instant;

use bigtop_eval::drv::{Drv, DrvBuilder, Platform, Str};
use bigtop_eval::set::PackageSet;
use bigtop_eval::text;

/// The dependencies of package `i`: distinct, sorted, all below `i`.
fn deps(i: usize) -> Vec<usize> {
    if i == 0 {
        return Vec::new();
    }
    // A fixed LCG per package, so both sides make the same graph.
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    let want = (3 + next() % 8).min(i);
    let mut out: Vec<usize> = Vec::with_capacity(want);
    while out.len() < want {
        let d = next() % i;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out.sort_unstable();
    out
}

const BUILD: &str = "make -j$NIX_BUILD_CORES all";
const INSTALL: &str = "make install PREFIX=$out";
const CONFIGURE: &str = "--prefix=$out --enable-shared --disable-static";
const SYSTEM: &str = "x86_64-linux";

/// Package `i`, naming `deps` (its dependencies' outputs).
fn package(i: usize, deps: Str, platform: &Platform) -> Result<Drv, bigtop_eval::Error> {
    DrvBuilder::new(format!("p{i}"))
        .builder("/bin/sh")
        .args(["-c", "eval \"$buildPhase\" && eval \"$installPhase\""])
        .env("version", "1.0")
        .env("buildPhase", BUILD)
        .env("installPhase", INSTALL)
        .env("configureFlags", CONFIGURE)
        .env("deps", deps)
        .build(platform)
}

fn run(n: usize) -> Result<(), bigtop_eval::Error> {
    let start = Instant::now();
    let platform = Platform {
        system: SYSTEM.into(),
        ..Platform::default()
    };
    let mut set = PackageSet::new(platform);
    for i in 0..n {
        set = set.add(format!("p{i}"), move |a| {
            let mut inputs = Str::default();
            for (k, d) in deps(i).into_iter().enumerate() {
                if k > 0 {
                    inputs.push(" ");
                }
                inputs.push(a.get(&format!("p{d}"))?);
            }
            package(i, inputs, a.platform())
        });
    }
    let built = start.elapsed();
    let pkgs = set.eval();
    // Every package, on every core (the set's own parallel evaluation).
    let mut outputs = 0;
    for (_, d) in pkgs.all() {
        outputs += d?.outputs().count();
    }
    let total = start.elapsed();
    // The top package's path, so a reader can compare runs.
    let top = pkgs.get(&format!("p{}", n - 1))?;
    println!(
        "{n} packages, {outputs} outputs: set {:.1} ms, evaluated in {:.1} ms in all; last {}",
        built.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        text!("{}", top).as_str()
    );
    // The process ends here: freeing 10,000 derivations one by one is
    // not evaluation (Nix's evaluator does not free its heap at exit
    // either), so the timed process does not do it.
    std::mem::forget(pkgs);
    Ok(())
}

/// The same derivations made directly, without a package set: what the
/// set's laziness and memoization cost on top.
fn raw(n: usize) -> Result<(), bigtop_eval::Error> {
    let start = Instant::now();
    let platform = Platform {
        system: SYSTEM.into(),
        ..Platform::default()
    };
    let mut made: Vec<Drv> = Vec::with_capacity(n);
    for i in 0..n {
        let mut inputs = Str::default();
        for (k, d) in deps(i).into_iter().enumerate() {
            if k > 0 {
                inputs.push(" ");
            }
            inputs.push(&made[d]);
        }
        let d = package(i, inputs, &platform)?;
        made.push(d);
    }
    println!(
        "{n} derivations without a set: {:.1} ms; last {}",
        start.elapsed().as_secs_f64() * 1e3,
        text!("{}", made[n - 1]).as_str()
    );
    // As in `run`: the process ends, nothing is freed one by one.
    std::mem::forget(made);
    Ok(())
}

fn nix(n: usize) {
    let quote = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('$', "\\$")
    };
    println!("let");
    println!("  mk = name: deps: derivation {{");
    println!("    inherit name deps;");
    println!("    system = \"{SYSTEM}\";");
    println!("    builder = \"/bin/sh\";");
    println!(
        "    args = [ \"-c\" \"{}\" ];",
        quote("eval \"$buildPhase\" && eval \"$installPhase\"")
    );
    println!("    version = \"1.0\";");
    println!("    buildPhase = \"{}\";", quote(BUILD));
    println!("    installPhase = \"{}\";", quote(INSTALL));
    println!("    configureFlags = \"{}\";", quote(CONFIGURE));
    println!("  }};");
    for i in 0..n {
        let ds: Vec<String> = deps(i).into_iter().map(|d| format!("p{d}")).collect();
        println!("  p{i} = mk \"p{i}\" [ {} ];", ds.join(" "));
    }
    println!("in [");
    for i in 0..n {
        println!("  p{i}");
    }
    println!("]");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = args
        .get(1)
        .and_then(|s| s.replace('_', "").parse::<usize>().ok());
    match (args.first().map(String::as_str), n) {
        (Some("run"), Some(n)) if n > 0 => match run(n) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        (Some("raw"), Some(n)) if n > 0 => match raw(n) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        (Some("nix"), Some(n)) if n > 0 => {
            nix(n);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: eval-bench run N | eval-bench nix N");
            ExitCode::FAILURE
        }
    }
}
