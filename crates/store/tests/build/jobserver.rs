//! `cores` is one budget for all concurrent builds: two `make` builds
//! running at once share it through the jobserver, in the sandbox and out.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bigtop_store::build::{BuildOptions, Builder, Sandboxing};
use bigtop_store::core::derivation::{Derivation, OutputName};
use bigtop_store::Store;

use super::{direct_store, fill, plain, sh, TestResult};

/// Each job records when it ran; jobs take long enough that any overlap
/// the budget allows shows.
const MAKEFILE: &str = ".PHONY: all a b c d\n\
all: a b c d\n\
a b c d:\n\
\t@s=$$(date +%s.%N); sleep 0.4; echo $$s $$(date +%s.%N) > $(out)/$@\n";

/// A build that runs `make` (without `-j`: the jobserver gives the
/// parallelism) on [`MAKEFILE`].
fn make_drv(store: &Store, name: &str) -> Derivation {
    let mut d = sh(
        store,
        name,
        "printf '%s' \"$makefile\" > Makefile && mkdir $out && make",
        &[],
    );
    d.env.insert("makefile".into(), MAKEFILE.into());
    d.env.insert("PATH".into(), "/usr/bin:/bin".into());
    fill(store, &mut d);
    d
}

/// The most jobs running at one time, across the outputs' records.
fn max_overlap(outputs: &[PathBuf]) -> Result<usize, Box<dyn std::error::Error>> {
    let mut events: Vec<(f64, i32)> = Vec::new();
    for out in outputs {
        for e in std::fs::read_dir(out)? {
            let text = std::fs::read_to_string(e?.path())?;
            let (s, t) = text.trim().split_once(' ').ok_or("a start and an end")?;
            // Ends sort before starts at the same instant.
            events.push((s.parse()?, 1));
            events.push((t.parse()?, -1));
        }
    }
    assert_eq!(events.len(), 2 * 4 * outputs.len(), "every job ran");
    events.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    Ok(max as usize)
}

fn two_makes(store: &Store, options: BuildOptions) -> Result<usize, Box<dyn std::error::Error>> {
    let a = store.add_derivation(&make_drv(store, "make-a"))?;
    let b = store.add_derivation(&make_drv(store, "make-b"))?;
    let report = Builder::new(store)
        .options(options)
        .build(&[(a.clone(), BTreeSet::new()), (b.clone(), BTreeSet::new())])?;
    let outs: Vec<PathBuf> = [a, b]
        .iter()
        .map(|d| store.physical(&report.outputs[d][&OutputName::out()]))
        .collect();
    max_overlap(&outs)
}

#[test]
fn two_parallel_makes_share_the_cores_unsandboxed() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let options = BuildOptions {
        max_jobs: 2,
        cores: 3,
        ..plain()
    };
    // Three at once: both makes run (one slot each) and one of them got
    // the third token; never four or more, as `make -j3` twice would do.
    assert_eq!(two_makes(&store, options)?, 3);
    Ok(())
}

#[test]
fn two_parallel_makes_share_the_cores_in_the_sandbox() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let paths: Vec<(PathBuf, PathBuf)> = ["/usr", "/lib", "/lib64", "/bin"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| (p.into(), p.into()))
        .collect();
    let options = BuildOptions {
        max_jobs: 2,
        cores: 3,
        sandbox: Sandboxing::Required,
        sandbox_paths: Some(paths),
        ..plain()
    };
    assert_eq!(two_makes(&store, options)?, 3);
    Ok(())
}

#[test]
fn one_core_runs_one_job_at_a_time() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let options = BuildOptions {
        max_jobs: 2,
        cores: 1,
        ..plain()
    };
    assert_eq!(two_makes(&store, options)?, 1);
    Ok(())
}
