//! `derivation add` and `show-derivation`, run as a user runs them:
//! derivations written as JSON by "another tool". The helpers here serve
//! the build tests too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use bigtop::core::derivation::{Derivation, DerivationOutput, OutputName};
use bigtop::core::{StoreDir, StorePath};
use bigtop::store::build::host_system;
use bigtop::store::Store;
use serde_json::{json, Value};

use crate::{bigtop, Result};

/// The binary, pointed at one store.
pub(crate) struct Cli {
    /// `--store DIR` or `--store-dir DIR`.
    pub(crate) store_args: Vec<String>,
    /// Where commands run (and relative out-links land).
    pub(crate) cwd: PathBuf,
    /// The logical store dir.
    pub(crate) dir: StoreDir,
    /// Opens the same store through the library.
    pub(crate) open: Box<dyn Fn() -> Result<Store>>,
}

impl Cli {
    /// A chroot store in `tmp/s`: logical `/bigtop/store`, builds sandboxed.
    pub(crate) fn chroot(tmp: &Path) -> Result<Cli> {
        let base = tmp.join("s");
        Ok(Cli {
            store_args: vec!["--store".into(), base.to_str().ok_or("path")?.into()],
            cwd: tmp.to_owned(),
            dir: StoreDir::default(),
            open: Box::new(move || Ok(Store::open_chroot(&base)?)),
        })
    }

    /// A store at its logical path, `tmp/store`, where unsandboxed builders
    /// can write.
    pub(crate) fn direct(tmp: &Path) -> Result<Cli> {
        let logical = tmp.join("store").to_str().ok_or("path")?.to_owned();
        let dir = StoreDir::new(&logical)?;
        let for_open = dir.clone();
        Ok(Cli {
            store_args: vec!["--store-dir".into(), logical],
            cwd: tmp.to_owned(),
            dir,
            open: Box::new(move || Ok(Store::builder().store_dir(for_open.clone()).open()?)),
        })
    }

    pub(crate) fn run(&self, args: &[&str], stdin: &[u8]) -> Result<Output> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.store_args.iter().map(String::as_str));
        bigtop(&all, stdin, &self.cwd)
    }

    /// Runs and expects success; returns standard output.
    pub(crate) fn ok(&self, args: &[&str], stdin: &[u8]) -> Result<String> {
        let out = self.run(args, stdin)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("{args:?} failed: {stderr}").into());
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs and expects exit status 1 and nothing on standard output;
    /// returns standard error.
    pub(crate) fn fails(&self, args: &[&str], stdin: &[u8]) -> Result<String> {
        let out = self.run(args, stdin)?;
        let (stdout, stderr) = (
            String::from_utf8(out.stdout)?,
            String::from_utf8(out.stderr)?,
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert_eq!(stdout, "", "{args:?}");
        Ok(stderr)
    }

    /// `derivation add --json` of one derivation: its `.drv` path (full)
    /// and its `out` (full).
    pub(crate) fn add(&self, drv: &Value) -> Result<(String, String)> {
        let out: Value = serde_json::from_str(
            &self.ok(&["derivation", "add", "--json"], drv.to_string().as_bytes())?,
        )?;
        let full = |v: &Value| -> Result<String> {
            Ok(format!(
                "{}/{}",
                self.dir.as_str(),
                v.as_str().ok_or("not a string")?
            ))
        };
        Ok((full(&out["drv"])?, full(&out["outputs"]["out"])?))
    }

    pub(crate) fn path(&self, full: &str) -> Result<StorePath> {
        Ok(self.dir.parse_path(full)?)
    }

    pub(crate) fn valid(&self, full: &str) -> Result<bool> {
        Ok((self.open)()?.is_valid(&self.path(full)?)?)
    }

    /// The contents of an output, read from where the store keeps it.
    pub(crate) fn read(&self, full: &str) -> Result<String> {
        let store = (self.open)()?;
        Ok(fs::read_to_string(store.physical(&self.path(full)?))?)
    }
}

/// A `/bin/sh -c SCRIPT` derivation in JSON, its output left to compute;
/// `inputs` are `.drv` paths whose `out` it uses.
pub(crate) fn sh(name: &str, script: &str, inputs: &[&str]) -> Value {
    let input_drvs: serde_json::Map<String, Value> = inputs
        .iter()
        .map(|d| (d.to_string(), json!(["out"])))
        .collect();
    json!({
        "name": name,
        "system": host_system(),
        "builder": "/bin/sh",
        "args": ["-c", script],
        "outputs": {"out": "deferred"},
        "input_drvs": input_drvs,
    })
}

pub(crate) fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn derivation_add_computes_the_paths_the_library_computes() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let mut v = sh("hello", "echo hello > $out", &[]);
    v["env"] = json!({"greeting": "hi"});
    let printed = cli.ok(&["derivation", "add"], v.to_string().as_bytes())?;

    let dir = StoreDir::default();
    let mut d = Derivation::new("hello", &host_system(), "/bin/sh");
    d.args = vec!["-c".into(), "echo hello > $out".into()];
    d.env.insert("greeting".into(), "hi".into());
    d.outputs
        .insert(OutputName::out(), DerivationOutput::Deferred);
    d.fill_output_paths(&dir, |_| None)?;
    let drv = d.drv_path(&dir)?;
    assert_eq!(lines(&printed), [dir.full(&drv)]);
    assert!(cli.valid(&dir.full(&drv))?);
    assert_eq!((cli.open)()?.read_derivation(&drv)?, d);

    // `{"input-addressed": ""}` is the same as "deferred", and adding
    // again changes nothing.
    v["outputs"]["out"] = json!({"input-addressed": ""});
    let (again, out) = cli.add(&v)?;
    assert_eq!(again, dir.full(&drv));
    let expected = d.output_path(&dir, &OutputName::out()).ok_or("out")?;
    assert_eq!(out, dir.full(&expected));
    Ok(())
}

#[test]
fn derivation_add_takes_a_batch_that_depends_on_itself_in_any_order() -> Result {
    let tmp = tempfile::tempdir()?;
    // Learn the paths one at a time in one store…
    let one = Cli::chroot(&tmp.path().join("one"))?;
    fs::create_dir(&one.cwd)?;
    let a = sh("a", "echo a > $out", &[]);
    let (a_drv, a_out) = one.add(&a)?;
    let b = sh(
        "b",
        &format!("read x < {a_out}; echo $x-b > $out"),
        &[&a_drv],
    );
    let (b_drv, _) = one.add(&b)?;
    let c = sh("c", "echo c > $out", &[&a_drv, &b_drv]);
    let (c_drv, _) = one.add(&c)?;

    // …then add them all at once, dependents first, in another.
    let batch = Cli::chroot(&tmp.path().join("batch"))?;
    fs::create_dir(&batch.cwd)?;
    let input = json!([c, b, a]).to_string();
    let printed = batch.ok(&["derivation", "add"], input.as_bytes())?;
    assert_eq!(lines(&printed), [&c_drv, &b_drv, &a_drv]);
    for p in [&a_drv, &b_drv, &c_drv] {
        assert!(batch.valid(p)?, "{p}");
    }
    let json: Value =
        serde_json::from_str(&batch.ok(&["derivation", "add", "--json"], input.as_bytes())?)?;
    assert_eq!(json.as_array().ok_or("array")?.len(), 3);
    assert_eq!(
        format!(
            "{}/{}",
            batch.dir.as_str(),
            json[2]["outputs"]["out"].as_str().ok_or("out")?
        ),
        a_out
    );
    Ok(())
}

#[test]
fn derivation_add_names_bad_input_and_writes_nothing() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let good = sh("good", "echo > $out", &[]);
    let mut d = Derivation::new("good", &host_system(), "/bin/sh");
    d.args = vec!["-c".into(), "echo > $out".into()];
    d.outputs
        .insert(OutputName::out(), DerivationOutput::Deferred);
    d.fill_output_paths(&cli.dir, |_| None)?;
    let good_drv = cli.dir.full(&d.drv_path(&cli.dir)?);

    let mut no_system = sh("broken", "true", &[]);
    no_system.as_object_mut().ok_or("object")?.remove("system");
    let err = cli.fails(
        &["derivation", "add"],
        json!([good, no_system]).to_string().as_bytes(),
    )?;
    assert!(
        err.contains("derivation `broken` (input [1]) is not in the JSON form of a derivation"),
        "{err}"
    );
    assert!(err.contains("missing field `system`"), "{err}");

    let mut typo = good.clone();
    typo["argz"] = json!([]);
    let err = cli.fails(&["derivation", "add"], typo.to_string().as_bytes())?;
    assert!(err.contains("unknown field `argz`"), "{err}");

    let missing = "/bigtop/store/00000000000000000000000000000000-gone.drv";
    let orphan = sh("orphan", "true", &[missing]);
    let err = cli.fails(
        &["derivation", "add"],
        json!([good, orphan]).to_string().as_bytes(),
    )?;
    assert!(err.contains(&format!("derivation `orphan` (input [1]) needs `{missing}`, which is neither valid in the store nor in this batch")), "{err}");

    let bad_name = sh("a b", "true", &[]);
    let err = cli.fails(
        &["derivation", "add"],
        json!([good, bad_name]).to_string().as_bytes(),
    )?;
    assert!(
        err.contains("derivation `a b` (input [1]) is invalid"),
        "{err}"
    );

    let mut claims = good.clone();
    claims["outputs"]["out"] = json!({"input-addressed": "00000000000000000000000000000000-good"});
    let err = cli.fails(&["derivation", "add"], claims.to_string().as_bytes())?;
    assert!(
        err.contains("derivation `good` gives output `out` the path"),
        "{err}"
    );

    let err = cli.fails(&["derivation", "add"], b"{\"name\": ")?;
    assert!(err.contains("standard input is not JSON"), "{err}");
    let err = cli.fails(&["derivation", "add"], b"")?;
    assert!(err.contains("no derivations on standard input"), "{err}");

    // The good derivation came in every batch, and none was written.
    assert!(!cli.valid(&good_drv)?);
    Ok(())
}

/// `input_drvs: {"<x>.drv": ["dev"]}` of an `x` without `dev` was
/// accepted, and failed only when built.
#[test]
fn derivation_add_refuses_an_input_output_that_does_not_exist() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let (in_store, _) = cli.add(&sh("in-store", "echo > $out", &[]))?;
    let lib = sh("lib", "echo > $out", &[]);
    // Its `.drv` path, learnt from another store: the paths are the same.
    let other = tmp.path().join("other");
    fs::create_dir(&other)?;
    let (lib_drv, _) = Cli::chroot(&other)?.add(&lib)?;
    for (input, batch) in [(&in_store, vec![]), (&lib_drv, vec![lib.clone()])] {
        let mut app = sh("app", "echo > $out", &[input]);
        app["input_drvs"][input.as_str()] = json!(["out", "dev"]);
        let mut all = batch.clone();
        all.push(app);
        let err = cli.fails(&["derivation", "add"], json!(all).to_string().as_bytes())?;
        let input = cli.path(input)?;
        assert!(
            err.contains(&format!(
                "needs output `dev` of `{input}`, which has no such output (it has: `out`)"
            )),
            "{err}"
        );
        assert!(err.contains("-app.drv`"), "{err}");
    }
    assert!(!cli.valid(&lib_drv)?, "a refused batch writes nothing");
    Ok(())
}

#[test]
fn show_derivation_output_adds_back_to_the_same_paths() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let (a_drv, a_out) = cli.add(&sh("a", "echo a > $out", &[]))?;
    let mut b = sh("b", &format!("read x < {a_out}; echo $x > $out"), &[&a_drv]);
    b["outputs"]["dev"] = json!("deferred");
    let (b_drv, _) = cli.add(&b)?;

    let shown = cli.ok(&["show-derivation", &b_drv], b"")?;
    let json: Value = serde_json::from_str(&shown)?;
    assert_eq!(json[0]["name"], "b");
    assert_eq!(
        cli.ok(&["derivation", "add"], shown.as_bytes())?,
        format!("{b_drv}\n")
    );
    assert_eq!(cli.ok(&["derivation", "show", &b_drv], b"")?, shown);

    // The whole graph, into a store that has none of it.
    let all = cli.ok(&["show-derivation", "--recursive", &b_drv], b"")?;
    let other = Cli::chroot(&tmp.path().join("other"))?;
    fs::create_dir(&other.cwd)?;
    assert_eq!(
        other.ok(&["derivation", "add"], all.as_bytes())?,
        format!("{a_drv}\n{b_drv}\n")
    );
    let err = cli.fails(&["show-derivation", "nonsense"], b"")?;
    assert!(err.contains("`nonsense` is not a store path"), "{err}");
    Ok(())
}
