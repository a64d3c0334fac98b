//! `build-bench`: the builder benchmarks, one measured command per run.
//! `benches/compare-nix-build.sh` times these side by side with
//! `nix-build` (the expressions in `benches/nix/` make the same graphs).
//!
//! ```text
//! build-bench init --store DIR [--no-sandbox]
//!     create an empty store (what the timed commands then fill)
//! build-bench trivial N --store DIR [--no-sandbox] [-j J] [--sandbox-paths nix|sh]
//!     add N derivations `/bin/sh -c 'echo i > $out'` plus one that depends
//!     on all of them (its arguments name every output; it writes N) and
//!     build them; run again on the built store, a no-op rebuild
//! build-bench builtin N --store DIR
//!     the same shape with `builtin:write-file` derivations (text `i`)
//! build-bench spawn N --dir DIR [-j J]
//!     no store: N processes `/bin/sh -c 'echo i > $out'`, J at a time,
//!     each writing its own file in DIR
//! ```
//!
//! Adding the derivations is bigtop's evaluation: its time and the build's
//! are printed apart, in one line. `--no-sandbox` uses a store whose
//! logical dir is its physical one (`DIR/store`, state in `DIR/var`), as
//! unsandboxed builders write their outputs at their logical paths; the
//! sandboxed store is a chroot store (`DIR/bigtop/store`). Sandboxed builds
//! see `/bin /lib /lib64 /usr` of the host, like `nix-build` with those as
//! `extra-sandbox-paths` (`--sandbox-paths sh`: only `/bin/sh` and its
//! libraries, the library's default). Jobs default to 2.

use std::collections::{BTreeSet, HashMap};
use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bigtop_core::derivation::{Derivation, DerivationOutput, DrvHash, OutputName};
use bigtop_core::{StoreDir, StorePath};
use bigtop_store::build::{builtin, host_system, BuildOptions, Builder, Sandboxing};
use bigtop_store::Store;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const USAGE: &str = "usage: build-bench init --store DIR [--no-sandbox]\n\
       build-bench trivial N --store DIR [--no-sandbox] [-j J] [--sandbox-paths nix|sh]\n\
       build-bench builtin N --store DIR\n\
       build-bench spawn N --dir DIR [-j J]";

/// The host paths `nix-build` is given as `extra-sandbox-paths`.
const NIX_SANDBOX_PATHS: [&str; 4] = ["/bin", "/lib", "/lib64", "/usr"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match Args::parse(&args).and_then(|a| a.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Init,
    Trivial,
    Builtin,
    Spawn,
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    n: usize,
    dir: PathBuf,
    sandbox: bool,
    jobs: usize,
    /// `/bin /lib /lib64 /usr` (as Nix is given) rather than the default.
    nix_paths: bool,
}

fn count(s: &str) -> Result<usize> {
    s.replace('_', "")
        .parse()
        .map_err(|e| format!("`{s}` is not a count: {e}").into())
}

impl Args {
    fn parse(args: &[String]) -> Result<Args> {
        let mut it = args.iter().map(String::as_str);
        let mode = match it.next() {
            Some("init") => Mode::Init,
            Some("trivial") => Mode::Trivial,
            Some("builtin") => Mode::Builtin,
            Some("spawn") => Mode::Spawn,
            _ => return Err(USAGE.into()),
        };
        let mut a = Args {
            mode,
            n: 0,
            dir: PathBuf::new(),
            sandbox: true,
            jobs: 2,
            nix_paths: true,
        };
        if mode != Mode::Init {
            a.n = count(it.next().ok_or(USAGE)?)?;
        }
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("`{flag}` needs a value"));
            match flag {
                "--store" if mode != Mode::Spawn => a.dir = value()?.into(),
                "--dir" if mode == Mode::Spawn => a.dir = value()?.into(),
                "--no-sandbox" if matches!(mode, Mode::Init | Mode::Trivial) => a.sandbox = false,
                "-j" if matches!(mode, Mode::Trivial | Mode::Spawn) => {
                    a.jobs = count(value()?)?.max(1)
                }
                "--sandbox-paths" if mode == Mode::Trivial => {
                    a.nix_paths = match value()? {
                        "nix" => true,
                        "sh" => false,
                        other => return Err(format!("unknown sandbox paths `{other}`").into()),
                    }
                }
                _ => return Err(format!("unexpected `{flag}`\n{USAGE}").into()),
            }
        }
        if a.dir.as_os_str().is_empty() {
            return Err(USAGE.into());
        }
        Ok(a)
    }

    fn run(&self) -> Result<()> {
        match self.mode {
            Mode::Init => {
                self.open()?;
                Ok(())
            }
            Mode::Trivial | Mode::Builtin => self.build(),
            Mode::Spawn => self.spawn(),
        }
    }

    /// The store at `dir`: a chroot store when sandboxed, else one whose
    /// logical dir is its physical `dir/store`.
    fn open(&self) -> Result<Store> {
        // Absolute: the sandbox rejects a relative build dir, and a chroot
        // store opened at a relative path gives it one.
        fs::create_dir_all(&self.dir)?;
        let dir = fs::canonicalize(&self.dir)?;
        if self.sandbox || self.mode == Mode::Builtin {
            return Ok(Store::open_chroot(&dir)?);
        }
        let root = dir.join("store");
        let text = root.to_str().ok_or("the store dir is not UTF-8")?;
        Ok(Store::builder().store_dir(StoreDir::new(text)?).open()?)
    }

    fn build(&self) -> Result<()> {
        let start = Instant::now();
        let store = self.open()?;
        let opened = start.elapsed();
        let t = Instant::now();
        let top = add_graph(&store, self.mode, self.n)?;
        let added = t.elapsed();

        let sandbox_paths = (self.sandbox && self.nix_paths).then(|| {
            NIX_SANDBOX_PATHS
                .iter()
                .map(|p| (PathBuf::from(p), PathBuf::from(p)))
                .collect()
        });
        let options = BuildOptions {
            max_jobs: self.jobs,
            sandbox: if self.sandbox {
                Sandboxing::Required
            } else {
                Sandboxing::Disabled
            },
            sandbox_paths,
            ..BuildOptions::default()
        };
        let t = Instant::now();
        let report = Builder::new(&store)
            .options(options)
            .build(&[(top.clone(), BTreeSet::new())])?;
        let built = t.elapsed();

        // The top output says how many outputs it was given.
        let out = report.outputs[&top]
            .get(&OutputName::out())
            .ok_or("the top derivation has no `out`")?;
        let text = fs::read_to_string(store.physical(out))?;
        if text.trim() != self.n.to_string() {
            return Err(format!("the top output holds `{}`, not {}", text.trim(), self.n).into());
        }
        let what = match (self.mode, self.sandbox) {
            (Mode::Builtin, _) => "builtin".to_owned(),
            (_, true) => format!("trivial, sandboxed, {} jobs", self.jobs),
            (_, false) => format!("trivial, unsandboxed, {} jobs", self.jobs),
        };
        println!(
            "{} derivations ({what}): open {}, add {}, build {} ({} built); total {}",
            self.n + 1,
            ms(opened),
            ms(added),
            ms(built),
            report.built,
            ms(start.elapsed()),
        );
        Ok(())
    }

    /// N plain processes, `jobs` at a time, no store.
    fn spawn(&self) -> Result<()> {
        fs::create_dir_all(&self.dir)?;
        let dir = fs::canonicalize(&self.dir)?;
        let next = AtomicUsize::new(0);
        let start = Instant::now();
        std::thread::scope(|s| -> Result<()> {
            let workers: Vec<_> = (0..self.jobs)
                .map(|_| {
                    s.spawn(|| -> std::result::Result<(), String> {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= self.n {
                                return Ok(());
                            }
                            spawn_one(&dir, i)?;
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().map_err(|_| "a spawning thread panicked")??;
            }
            Ok(())
        })?;
        println!(
            "{} processes, {} at a time: {}",
            self.n,
            self.jobs,
            ms(start.elapsed())
        );
        Ok(())
    }
}

fn spawn_one(dir: &Path, i: usize) -> std::result::Result<(), String> {
    let out = dir.join(format!("out-{i}"));
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("echo {i} > $out"))
        .env_clear()
        .env("out", &out)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    if !status.success() {
        return Err(format!("/bin/sh for {i} failed: {status}"));
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Adds N derivations and one depending on them all, in one batch: what
/// `nix-build` does when it instantiates `benches/nix/trivial.nix`.
/// Returns the top `.drv`.
fn add_graph(store: &Store, mode: Mode, n: usize) -> Result<StorePath> {
    let dir = store.store_dir().clone();
    let system = host_system();
    let out = OutputName::out();
    let builtin = mode == Mode::Builtin;
    let mut batch = store.batch();
    let mut hashes: HashMap<StorePath, DrvHash> = HashMap::with_capacity(n);
    let mut top = if builtin {
        let mut d = Derivation::new("builtin-all", &system, builtin::WRITE_FILE);
        d.env.insert("text".into(), format!("{n}\n"));
        d
    } else {
        // `sh -c SCRIPT a1 … aN` has $0 = a1 and N - 1 more arguments.
        let mut d = Derivation::new("trivial-all", &system, "/bin/sh");
        d.args = vec!["-c".into(), "echo $(($# + 1)) > $out".into()];
        d
    };
    for i in 0..n {
        let mut d = if builtin {
            let mut d = Derivation::new(&format!("builtin-{i}"), &system, builtin::WRITE_FILE);
            d.env.insert("text".into(), format!("{i}\n"));
            d
        } else {
            let mut d = Derivation::new(&format!("trivial-{i}"), &system, "/bin/sh");
            d.args = vec!["-c".into(), format!("echo {i} > $out")];
            d
        };
        d.outputs.insert(out.clone(), DerivationOutput::Deferred);
        let h = d.fill_output_paths(&dir, |_| None)?;
        let drv = batch.add_derivation(&d)?;
        if !builtin {
            let path = d
                .output_path(&dir, &out)
                .ok_or("an output without a path")?;
            top.args.push(dir.display(&path).to_string());
        }
        top.input_drvs
            .insert(drv.clone(), BTreeSet::from([out.clone()]));
        hashes.insert(drv, h);
    }
    top.outputs.insert(out.clone(), DerivationOutput::Deferred);
    top.fill_output_paths(&dir, |p| hashes.get(p).copied())?;
    let top = batch.add_derivation(&top)?;
    batch.commit()?;
    Ok(top)
}
