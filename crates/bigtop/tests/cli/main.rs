//! The `bigtop` binary, run as a user runs it.

mod build;
mod derivation;
mod paths;
mod serve;
mod ssh;

use std::collections::BTreeSet;
use std::error::Error;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bigtop::core::{HashAlgo, StorePath};
use bigtop::store::Store;
use serde_json::Value;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

fn bigtop(args: &[&str], stdin: &[u8], cwd: &Path) -> Result<Output> {
    // The machine's and the user's configuration files, and the memo of
    // caches' misses, are the test's own (in its directory), never the
    // host's.
    let mut child = Command::new(env!("CARGO_BIN_EXE_bigtop"))
        .args(args)
        .current_dir(cwd)
        .env("BIGTOP_CONF_DIR", cwd.join(".etc-bigtop"))
        .env("XDG_CONFIG_HOME", cwd.join(".config"))
        .env("XDG_CACHE_HOME", cwd.join(".cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().ok_or("stdin")?.write_all(stdin)?;
    Ok(child.wait_with_output()?)
}

/// A process's peak resident memory in bytes, from the text of its
/// `/proc/PID/status` (`VmHWM`); `None` when it has none (a zombie).
fn vm_hwm(status: &str) -> Option<i64> {
    let kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn ok(out: Output) -> Result<Vec<u8>> {
    if !out.status.success() {
        return Err(format!("bigtop failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(out.stdout)
}

fn tree(root: &Path) -> Result {
    fs::create_dir_all(root.join("bin"))?;
    fs::write(root.join("bin/run"), "#!/bin/sh\nexit 0\n")?;
    fs::set_permissions(root.join("bin/run"), fs::Permissions::from_mode(0o755))?;
    fs::write(root.join("data"), vec![7u8; 3000])?;
    std::os::unix::fs::symlink("bin/run", root.join("link"))?;
    Ok(())
}

#[test]
fn nar_dump_and_restore_round_trip() -> Result {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    tree(&src)?;
    let nar = ok(bigtop(
        &["nar", "dump", src.to_str().ok_or("path")?],
        b"",
        tmp.path(),
    )?)?;
    let mut expected = Vec::new();
    bigtop::core::nar::dump_path(&src, &mut expected)?;
    assert_eq!(nar, expected);
    ok(bigtop(&["nar", "restore", "copy"], &nar, tmp.path())?)?;
    let again = ok(bigtop(&["nar", "dump", "copy"], b"", tmp.path())?)?;
    assert_eq!(again, nar);
    Ok(())
}

#[test]
fn nar_restore_rejects_bad_input_and_names_it() -> Result {
    let tmp = tempfile::tempdir()?;
    let out = bigtop(&["nar", "restore", "dest"], b"not a nar at all", tmp.path())?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("cannot unpack into `dest`"), "{err}");
    assert!(err.contains("expected the NAR magic"), "{err}");
    assert!(!tmp.path().join("dest").exists());
    let out = bigtop(&["nar", "dump", "missing"], b"", tmp.path())?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)?.contains("cannot read `missing`"));
    Ok(())
}

#[test]
fn hash_path_forms_agree_with_each_other() -> Result {
    let tmp = tempfile::tempdir()?;
    tree(&tmp.path().join("t"))?;
    let text = |args: &[&str]| -> Result<String> {
        Ok(String::from_utf8(ok(bigtop(args, b"", tmp.path())?)?)?
            .trim()
            .to_owned())
    };
    let json: serde_json::Value =
        serde_json::from_str(&text(&["hash", "path", "t", "--algo", "sha256", "--json"])?)?;
    assert_eq!(json["algo"], "sha256");
    assert_eq!(
        text(&["hash", "path", "t", "--algo", "sha256"])?,
        json["sri"]
    );
    assert_eq!(
        text(&["hash", "path", "t", "--algo", "sha256", "--base32"])?,
        json["base32"]
    );
    assert_eq!(
        text(&["hash", "path", "t", "--algo", "sha256", "--hex"])?,
        json["hex"]
    );
    let mut nar = Vec::new();
    bigtop::core::nar::dump_path(&tmp.path().join("t"), &mut nar)?;
    assert_eq!(json["nar_size"], nar.len() as u64);
    assert!(text(&["hash", "path", "t"])?.starts_with("blake3-"));
    // A path that is not UTF-8 is shown lossily, not a crash.
    let odd = std::ffi::OsStr::from_bytes(b"t\xff");
    fs::create_dir(tmp.path().join(odd))?;
    let out = Command::new(env!("CARGO_BIN_EXE_bigtop"))
        .args(["hash".as_ref(), "path".as_ref(), odd, "--json".as_ref()])
        .current_dir(tmp.path())
        .output()?;
    let json: serde_json::Value = serde_json::from_slice(&ok(out)?)?;
    assert_eq!(json["path"], "t\u{fffd}");
    Ok(())
}

#[test]
fn hash_path_sha256_equals_nix_hash_path() -> Result {
    let tmp = tempfile::tempdir()?;
    tree(&tmp.path().join("t"))?;
    let ours = ok(bigtop(
        &["hash", "path", "t", "--algo", "sha256", "--base32"],
        b"",
        tmp.path(),
    )?)?;
    let theirs = Command::new("nix")
        .args(["hash", "path", "--type", "sha256", "--base32", "t"])
        .env(
            "NIX_CONFIG",
            "build-users-group =\nsandbox = false\nexperimental-features = nix-command",
        )
        .current_dir(tmp.path())
        .output()
        .map_err(|e| format!("cannot run nix (apt-get install nix-bin): {e}"))?;
    assert!(
        theirs.status.success(),
        "{}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert_eq!(ours, theirs.stdout);
    Ok(())
}

#[test]
fn key_generate_writes_a_usable_pair_once() -> Result {
    let tmp = tempfile::tempdir()?;
    let out = ok(bigtop(
        &["key", "generate", "cache-1", "--json"],
        b"",
        tmp.path(),
    )?)?;
    let json: serde_json::Value = serde_json::from_slice(&out)?;
    let secret: bigtop::core::SecretKey = fs::read_to_string(tmp.path().join("cache-1.secret"))?
        .trim()
        .parse()?;
    let public: bigtop::core::PublicKey = fs::read_to_string(tmp.path().join("cache-1.public"))?
        .trim()
        .parse()?;
    assert_eq!(json["public_key"], public.to_string());
    assert_eq!(secret.public(), public);
    assert!(public.verify(b"msg", &secret.sign(b"msg")));
    let mode = fs::metadata(tmp.path().join("cache-1.secret"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // Never overwrites a key.
    let before = fs::read(tmp.path().join("cache-1.secret"))?;
    let out = bigtop(&["key", "generate", "cache-1"], b"", tmp.path())?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)?.contains("cannot write `cache-1.secret`"));
    assert_eq!(fs::read(tmp.path().join("cache-1.secret"))?, before);

    let out = bigtop(&["key", "generate", "bad:name"], b"", tmp.path())?;
    assert!(String::from_utf8(out.stderr)?.contains("invalid key name `bad:name`"));
    Ok(())
}

/// The key's name names its files: `../escaped` wrote `../escaped.secret`,
/// outside the current directory.
#[test]
fn key_generate_refuses_a_name_that_is_not_a_plain_file_name() -> Result {
    let tmp = tempfile::tempdir()?;
    let cwd = tmp.path().join("work");
    fs::create_dir_all(cwd.join("sub"))?;
    let absolute = tmp.path().join("abs");
    let absolute = absolute.to_str().ok_or("path")?;
    for name in ["../escaped", "sub/key", absolute, "", ".", ".."] {
        let out = bigtop(&["key", "generate", name], b"", &cwd)?;
        assert_eq!(out.status.code(), Some(1), "{name:?}");
        let err = String::from_utf8(out.stderr)?;
        assert!(
            err.contains(&format!(
                "invalid key name `{name}`: it names the key files"
            )),
            "{name:?}: {err}"
        );
    }
    let left: Vec<_> = walk(tmp.path())?;
    assert_eq!(left, [cwd.clone(), cwd.join("sub")], "files were written");
    Ok(())
}

/// Every file and directory under `dir`, sorted.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.push(path.clone());
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// A chroot store in a temporary directory, driven through the binary.
struct TestStore {
    /// The `--store` directory.
    dir: PathBuf,
}

impl TestStore {
    fn new(parent: &Path, name: &str) -> TestStore {
        TestStore {
            dir: parent.join(name),
        }
    }

    /// Runs `bigtop ARGS --store DIR` in the store's parent directory.
    fn run(&self, args: &[&str], stdin: &[u8]) -> Result<Output> {
        let mut all = args.to_vec();
        all.extend(["--store", self.dir.to_str().ok_or("store dir")?]);
        bigtop(&all, stdin, self.dir.parent().ok_or("parent")?)
    }

    /// Runs and expects success; returns standard output.
    fn ok(&self, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8(ok(self.run(args, b"")?)?)?)
    }

    /// Runs and expects exit status 1; returns standard output and error.
    fn fails(&self, args: &[&str]) -> Result<(String, String)> {
        let out = self.run(args, b"")?;
        let (stdout, stderr) = (
            String::from_utf8(out.stdout)?,
            String::from_utf8(out.stderr)?,
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        Ok((stdout, stderr))
    }

    /// Opens the store through the library. Drop it before running the
    /// binary: an open handle's temporary roots keep paths alive.
    fn open(&self) -> Result<Store> {
        Ok(Store::open_chroot(&self.dir)?)
    }

    fn valid(&self, p: &StorePath) -> Result<bool> {
        Ok(self.open()?.is_valid(p)?)
    }

    /// Where `p` lives on disk.
    fn physical(&self, p: &StorePath) -> PathBuf {
        self.dir.join("bigtop/store").join(p.to_string())
    }
}

fn full(p: &StorePath) -> String {
    format!("/bigtop/store/{p}")
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// lib ← mid ← app, lib ← tool, and other alone.
struct Graph {
    lib: StorePath,
    mid: StorePath,
    app: StorePath,
    tool: StorePath,
    other: StorePath,
}

fn graph(store: &TestStore) -> Result<Graph> {
    let s = store.open()?;
    let none = BTreeSet::new();
    let lib = s.add_text("lib", b"a library", &none)?;
    let mid = s.add_text(
        "mid",
        format!("uses {}", full(&lib)).as_bytes(),
        &BTreeSet::from([lib.clone()]),
    )?;
    let app = s.add_text(
        "app",
        format!("uses {}", full(&mid)).as_bytes(),
        &BTreeSet::from([mid.clone()]),
    )?;
    let tool = s.add_text(
        "tool",
        format!("uses {}", full(&lib)).as_bytes(),
        &BTreeSet::from([lib.clone()]),
    )?;
    let other = s.add_text("other", b"unrelated", &none)?;
    Ok(Graph {
        lib,
        mid,
        app,
        tool,
        other,
    })
}

fn json_paths(v: &Value) -> Result<Vec<String>> {
    v.as_array()
        .ok_or("not an array")?
        .iter()
        .map(|p| Ok(p.as_str().ok_or("not a string")?.to_owned()))
        .collect()
}

#[test]
fn store_add_then_path_info_shows_what_was_added() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = TestStore::new(tmp.path(), "s");
    fs::write(tmp.path().join("hello.txt"), "hello\n")?;
    tree(&tmp.path().join("pkg"))?;

    let added = store.ok(&["store", "add", "hello.txt", "pkg"])?;
    let added = lines(&added);
    assert_eq!(added.len(), 2, "{added:?}");
    let hello = StorePath::from_base_name(
        added[0]
            .strip_prefix("/bigtop/store/")
            .ok_or("not a full path")?,
    )?;
    let pkg = StorePath::from_base_name(
        added[1]
            .strip_prefix("/bigtop/store/")
            .ok_or("not a full path")?,
    )?;
    assert_eq!(hello.name(), "hello.txt");
    assert_eq!(pkg.name(), "pkg");
    assert_eq!(fs::read(store.physical(&hello))?, b"hello\n");
    assert_eq!(
        fs::read(store.physical(&pkg).join("data"))?,
        vec![7u8; 3000]
    );

    // JSON: one record per path, in the order asked; each path form accepted.
    let pkg_physical = store.physical(&pkg);
    let json: Value = serde_json::from_str(&store.ok(&[
        "store",
        "path-info",
        &full(&hello),
        pkg_physical.to_str().ok_or("path")?,
        "--json",
    ])?)?;
    let records = json.as_array().ok_or("not an array")?;
    assert_eq!(records.len(), 2);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    for (record, (p, src)) in records.iter().zip([(&hello, "hello.txt"), (&pkg, "pkg")]) {
        let (hash, size) = bigtop::core::nar::hash_path(&tmp.path().join(src), HashAlgo::Blake3)?;
        assert_eq!(record["path"], p.to_string());
        assert_eq!(record["nar_hash"], hash.to_string());
        assert_eq!(record["nar_size"], size);
        assert_eq!(record["references"], serde_json::json!([]));
        assert_eq!(record["deriver"], Value::Null);
        assert_eq!(record["signatures"], serde_json::json!([]));
        assert_eq!(record["ca"], format!("fixed:r:{hash}"));
        let registered = record["registration_time"].as_u64().ok_or("time")?;
        assert!(registered.abs_diff(now.as_secs()) < 600, "{registered}");
        assert!(record.get("closure_size").is_none());
    }

    // Text, by base name, with the closure size.
    let text = store.ok(&["store", "path-info", &hello.to_string(), "--closure-size"])?;
    let (hash, size) =
        bigtop::core::nar::hash_path(&tmp.path().join("hello.txt"), HashAlgo::Blake3)?;
    assert_eq!(lines(&text)[0], full(&hello));
    assert!(text.contains(&format!("NAR hash:      {hash}\n")), "{text}");
    assert!(text.contains(&format!("NAR size:      {size}\n")), "{text}");
    assert!(text.contains(&format!("closure size:  {size}\n")), "{text}");
    assert!(text.contains("references:    none\n"), "{text}");
    assert!(
        text.contains(&format!("CA:            fixed:r:{hash}\n")),
        "{text}"
    );

    // Adding the same file again gives the same path.
    assert_eq!(
        store.ok(&["store", "add", "hello.txt"])?.trim(),
        full(&hello)
    );
    Ok(())
}

#[test]
fn store_add_rejects_a_bad_name_naming_the_file_and_adds_nothing() -> Result {
    let tmp = tempfile::tempdir()?;
    // The temporary dir's own name starts with `.`: work in one with a valid name.
    let work = tmp.path().join("work");
    fs::create_dir(&work)?;
    let store = TestStore::new(&work, "s");
    fs::write(work.join("fine.txt"), "ok")?;
    fs::write(work.join("has space"), "x")?;
    fs::write(work.join(".hidden"), "x")?;
    let (stdout, err) = store.fails(&["store", "add", "fine.txt", "has space"])?;
    assert_eq!(stdout, "");
    assert!(err.contains("cannot add `has space`"), "{err}");
    assert!(err.contains("only the characters"), "{err}");
    let (_, err) = store.fails(&["store", "add", ".hidden"])?;
    assert!(err.contains("cannot add `.hidden`"), "{err}");
    assert!(err.contains("starts with `.`"), "{err}");
    let (_, err) = store.fails(&["store", "add", "missing.txt"])?;
    assert!(err.contains("`missing.txt`"), "{err}");
    // A directory holding the store would copy into itself.
    let (_, err) = store.fails(&["store", "add", "."])?;
    assert!(err.contains("cannot add `.`: it holds the store"), "{err}");
    assert!(store.open()?.all_valid_paths()?.is_empty());
    Ok(())
}

#[test]
fn requisites_referrers_and_why_depends_follow_the_graph() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = TestStore::new(tmp.path(), "s");
    let g = graph(&store)?;

    let sorted = |paths: &[&StorePath]| -> Vec<String> {
        let set: BTreeSet<&StorePath> = paths.iter().copied().collect();
        set.into_iter().map(full).collect()
    };
    let out = store.ok(&["store", "requisites", &full(&g.app)])?;
    assert_eq!(lines(&out), sorted(&[&g.app, &g.mid, &g.lib]));
    let out = store.ok(&[
        "store",
        "requisites",
        &g.app.to_string(),
        &g.other.to_string(),
    ])?;
    assert_eq!(lines(&out), sorted(&[&g.app, &g.mid, &g.lib, &g.other]));
    let json: Value =
        serde_json::from_str(&store.ok(&["store", "requisites", &full(&g.mid), "--json"])?)?;
    let expected: BTreeSet<String> = [&g.mid, &g.lib].iter().map(|p| p.to_string()).collect();
    assert_eq!(json_paths(&json)?, expected.into_iter().collect::<Vec<_>>());

    let out = store.ok(&["store", "referrers", &full(&g.lib)])?;
    assert_eq!(lines(&out), sorted(&[&g.mid, &g.tool]));
    let out = store.ok(&["store", "referrers", &full(&g.app)])?;
    assert_eq!(out, "");

    let out = store.ok(&["why-depends", &full(&g.app), &full(&g.lib)])?;
    assert_eq!(
        lines(&out),
        [
            full(&g.app),
            format!("-> {}", full(&g.mid)),
            format!("-> {}", full(&g.lib))
        ]
    );
    let json: Value = serde_json::from_str(&store.ok(&[
        "why-depends",
        &full(&g.app),
        &full(&g.lib),
        "--json",
    ])?)?;
    assert_eq!(
        json_paths(&json)?,
        [g.app.to_string(), g.mid.to_string(), g.lib.to_string()]
    );
    let (stdout, err) = store.fails(&["why-depends", &full(&g.lib), &full(&g.app)])?;
    assert_eq!(stdout, "");
    assert!(
        err.contains(&format!(
            "`{}` does not depend on `{}`",
            full(&g.lib),
            full(&g.app)
        )),
        "{err}"
    );
    let (_, err) = store.fails(&["why-depends", &full(&g.app), &full(&g.other)])?;
    assert!(err.contains("does not depend on"), "{err}");

    // The closure size is the sum of the closure's NAR sizes.
    let s = store.open()?;
    let expected: u64 = [&g.app, &g.mid, &g.lib]
        .iter()
        .map(|p| Ok(s.path_info(p)?.ok_or("not valid")?.nar_size))
        .sum::<Result<u64>>()?;
    drop(s);
    let json: Value = serde_json::from_str(&store.ok(&[
        "store",
        "path-info",
        &full(&g.app),
        "--closure-size",
        "--json",
    ])?)?;
    assert_eq!(json[0]["closure_size"], expected);
    assert_eq!(
        json[0]["references"],
        serde_json::json!([g.mid.to_string()])
    );

    // Bad input is named.
    let (_, err) = store.fails(&["store", "requisites", "nonsense"])?;
    assert!(err.contains("`nonsense` is not a store path"), "{err}");
    Ok(())
}

#[test]
fn gc_dry_run_deletes_nothing_and_gc_keeps_what_a_root_holds() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = TestStore::new(tmp.path(), "s");
    let g = graph(&store)?;
    let link = store.open()?.add_root("app", &g.app)?;
    let all = [&g.app, &g.mid, &g.lib, &g.tool, &g.other];

    let roots = store.ok(&["store", "roots"])?;
    assert_eq!(
        lines(&roots),
        [format!("{} -> {}", link.display(), full(&g.app))]
    );
    let json: Value = serde_json::from_str(&store.ok(&["store", "roots", "--json"])?)?;
    assert_eq!(json[link.to_str().ok_or("link")?], g.app.to_string());

    // The garbage: tool and other; lib is kept by mid, which app keeps.
    let garbage: BTreeSet<&StorePath> = BTreeSet::from([&g.tool, &g.other]);
    let dry = store.ok(&["store", "gc", "--dry-run"])?;
    let mut expected: Vec<String> = garbage.iter().map(|p| full(p)).collect();
    expected.push("2 paths would be deleted, freeing ".to_owned());
    let got = lines(&dry);
    assert_eq!(got.len(), 3, "{dry}");
    assert_eq!(got[..2], expected[..2]);
    assert!(got[2].starts_with(&expected[2]), "{dry}");
    for p in all {
        assert!(store.valid(p)? && store.physical(p).exists(), "{p}");
    }
    ok(store.run(&["store", "gc", "--dry-run", "--max-freed", "1K"], b"")?)?;

    let json: Value = serde_json::from_str(&store.ok(&["store", "gc", "--json"])?)?;
    assert_eq!(
        json_paths(&json["deleted"])?,
        garbage.iter().map(|p| p.to_string()).collect::<Vec<_>>()
    );
    assert!(json["freed_bytes"].as_u64().ok_or("freed_bytes")? > 0);
    for p in all {
        let kept = !garbage.contains(p);
        assert_eq!(store.valid(p)?, kept, "{p}");
        assert_eq!(store.physical(p).exists(), kept, "{p}");
    }

    // Nothing left to collect.
    let again = store.ok(&["store", "gc"])?;
    assert_eq!(lines(&again), ["0 paths deleted, 0 bytes freed"]);
    Ok(())
}

#[test]
fn gc_rejects_a_bad_max_freed_naming_it() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = TestStore::new(tmp.path(), "s");
    let g = graph(&store)?;
    for bad in ["1x", "1.5G", "+3"] {
        let out = store.run(&["store", "gc", "--max-freed", bad], b"")?;
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8(out.stderr)?;
        assert!(
            err.contains(&format!("invalid byte count `{bad}`")),
            "{err}"
        );
    }
    assert!(store.valid(&g.other)?, "a rejected command collected");
    Ok(())
}

#[test]
fn delete_refuses_live_paths_and_deletes_a_leaf() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = TestStore::new(tmp.path(), "s");
    let g = graph(&store)?;
    store.open()?.add_root("tool", &g.tool)?;

    let (stdout, err) = store.fails(&["store", "delete", &full(&g.lib)])?;
    assert_eq!(stdout, "");
    assert!(err.contains(&format!("cannot delete `{}`", g.lib)), "{err}");
    assert!(err.contains("referred to by"), "{err}");
    let (_, err) = store.fails(&["store", "delete", &full(&g.tool)])?;
    assert!(err.contains("root"), "{err}");
    // One live path among several: none is deleted.
    let (_, err) = store.fails(&["store", "delete", &full(&g.other), &full(&g.mid)])?;
    assert!(
        err.contains(&format!("referred to by `{}`", g.app)),
        "{err}"
    );
    for p in [&g.lib, &g.tool, &g.other, &g.mid] {
        assert!(store.valid(p)? && store.physical(p).exists(), "{p}");
    }

    let out = store.ok(&["store", "delete", &full(&g.app)])?;
    let out = lines(&out);
    assert_eq!(out[0], full(&g.app));
    assert!(out[1].starts_with("1 path deleted, "), "{out:?}");
    assert!(!store.valid(&g.app)? && !store.physical(&g.app).exists());
    assert!(store.valid(&g.mid)?);
    // With app gone, mid is a leaf.
    let json: Value =
        serde_json::from_str(&store.ok(&["store", "delete", &g.mid.to_string(), "--json"])?)?;
    assert_eq!(json_paths(&json["deleted"])?, [g.mid.to_string()]);
    Ok(())
}

/// Removes a path's files as a user would, behind the store's back.
fn remove_by_hand(physical: &Path) -> Result {
    for (cmd, args) in [("chmod", ["-R", "u+w"]), ("rm", ["-rf", "--"])] {
        let status = Command::new(cmd).args(args).arg(physical).status()?;
        assert!(status.success(), "{cmd} failed");
    }
    assert!(!physical.exists());
    Ok(())
}

#[test]
fn verify_finds_a_missing_path_and_repair_fixes_the_store() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = TestStore::new(tmp.path(), "s");
    let g = graph(&store)?;
    let clean = store.ok(&["store", "verify", "--check-contents"])?;
    assert_eq!(
        lines(&clean),
        ["5 paths checked: 0 missing, 0 corrupt, 0 unregistered entries"]
    );

    remove_by_hand(&store.physical(&g.mid))?;
    let (stdout, err) = store.fails(&["store", "verify"])?;
    assert!(
        stdout.contains(&format!("missing: {}\n", full(&g.mid))),
        "{stdout}"
    );
    assert!(err.contains("is broken: 1 missing"), "{err}");
    let out = store.run(&["store", "verify", "--json"], b"")?;
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json_paths(&json["missing"])?, [g.mid.to_string()]);

    // Repair unregisters mid and app, which refers to it; the rest stays.
    let repaired = store.ok(&["store", "verify", "--repair", "--json"])?;
    let json: Value = serde_json::from_str(&repaired)?;
    let expected: BTreeSet<String> = [&g.mid, &g.app].iter().map(|p| p.to_string()).collect();
    assert_eq!(
        json_paths(&json["unregistered_paths"])?,
        expected.into_iter().collect::<Vec<_>>()
    );
    assert!(!store.valid(&g.mid)? && !store.valid(&g.app)?);
    assert!(!store.physical(&g.app).exists());
    assert!(store.valid(&g.lib)? && store.valid(&g.tool)?);
    let again = store.ok(&["store", "verify", "--check-contents"])?;
    assert_eq!(
        lines(&again),
        ["3 paths checked: 0 missing, 0 corrupt, 0 unregistered entries"]
    );
    Ok(())
}

/// Regression: `store verify` exited 1, calling the store broken, for
/// what interrupted adds leave behind (`.tmp-<id>-…` of a handle that is
/// gone, sandbox roots, build dirs), which the next `gc` removes anyway.
/// It now removes them, lists them apart as garbage and exits 0.
#[test]
fn verify_removes_leftovers_of_interrupted_adds_as_garbage_and_exits_0() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = TestStore::new(tmp.path(), "s");
    let g = graph(&store)?;
    // No handle of this fresh store has had this id (ids only grow).
    let dead = 4_194_305;
    let root = store.dir.join("bigtop/store");
    let builds = store.dir.join("bigtop/var/builds");
    let made = [
        root.join(format!(".tmp-{dead}-1-app")),
        root.join(format!(".chroot-{dead}-2-build")),
        builds.join(format!("{dead}-3-build")),
    ];
    for dir in &made {
        fs::create_dir_all(dir.join("sub"))?;
        fs::write(dir.join("sub/file"), "half written")?;
    }
    let text = store.ok(&["store", "verify"])?;
    for d in &made {
        assert!(!d.exists(), "{} is left", d.display());
        let line = format!("garbage, removed: {}", d.display());
        assert!(lines(&text).contains(&line.as_str()), "{text}");
    }
    let summary = lines(&text).last().copied().unwrap_or_default();
    assert!(
        summary.starts_with("5 paths checked: 0 missing, 0 corrupt, 0 unregistered entries; 3 leftovers of interrupted operations removed, "),
        "{summary}"
    );

    fs::create_dir_all(root.join(format!(".tmp-{dead}-4-again")))?;
    let json: Value = serde_json::from_str(&store.ok(&["store", "verify", "--json"])?)?;
    assert_eq!(json["garbage"].as_array().map(Vec::len), Some(1), "{json}");
    assert!(json["garbage_bytes"].is_u64(), "{json}");
    assert_eq!(json["missing"].as_array().map(Vec::len), Some(0), "{json}");
    assert_eq!(
        json["unregistered"].as_array().map(Vec::len),
        Some(0),
        "{json}"
    );
    assert!(store.valid(&g.app)?);
    Ok(())
}

#[test]
fn verify_check_contents_finds_a_changed_file() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = TestStore::new(tmp.path(), "s");
    let g = graph(&store)?;
    let physical = store.physical(&g.other);
    fs::set_permissions(&physical, fs::Permissions::from_mode(0o644))?;
    fs::write(&physical, "changed")?;
    // Existence alone looks fine; the contents do not.
    ok(store.run(&["store", "verify"], b"")?)?;
    let (stdout, err) = store.fails(&["store", "verify", "--check-contents"])?;
    assert!(
        stdout.contains(&format!("corrupt: {}\n", full(&g.other))),
        "{stdout}"
    );
    assert!(err.contains("1 corrupt"), "{err}");
    Ok(())
}

#[test]
fn export_then_import_gives_the_same_paths() -> Result {
    let tmp = tempfile::tempdir()?;
    let from = TestStore::new(tmp.path(), "from");
    let into = TestStore::new(tmp.path(), "into");
    let g = graph(&from)?;
    tree(&tmp.path().join("pkg"))?;
    let pkg = from.ok(&["store", "add", "pkg"])?.trim().to_owned();

    let stream = ok(from.run(&["store", "export", &full(&g.app), &pkg], b"")?)?;
    let imported = ok(into.run(&["store", "import"], &stream)?)?;
    let imported: BTreeSet<String> = String::from_utf8(imported)?
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: BTreeSet<String> = [full(&g.app), full(&g.mid), full(&g.lib), pkg.clone()]
        .into_iter()
        .collect();
    assert_eq!(imported, expected);

    let info = |s: &TestStore| -> Result<Value> {
        let mut args = vec!["store", "path-info", "--json"];
        args.extend(expected.iter().map(String::as_str));
        Ok(serde_json::from_str(&s.ok(&args)?)?)
    };
    let (a, b) = (info(&from)?, info(&into)?);
    for (x, y) in a
        .as_array()
        .ok_or("array")?
        .iter()
        .zip(b.as_array().ok_or("array")?)
    {
        for field in [
            "path",
            "nar_hash",
            "nar_size",
            "references",
            "deriver",
            "ca",
        ] {
            assert_eq!(x[field], y[field], "{field} of {}", x["path"]);
        }
    }
    assert_eq!(b.as_array().ok_or("array")?.len(), 4);
    ok(into.run(&["store", "verify", "--check-contents"], b"")?)?;
    // Importing again changes nothing.
    ok(into.run(&["store", "import", "--json"], &stream)?)?;
    Ok(())
}

#[test]
fn import_of_a_truncated_stream_fails_and_registers_nothing() -> Result {
    let tmp = tempfile::tempdir()?;
    let from = TestStore::new(tmp.path(), "from");
    let into = TestStore::new(tmp.path(), "into");
    let g = graph(&from)?;
    tree(&tmp.path().join("pkg"))?;
    let pkg = from.ok(&["store", "add", "pkg"])?.trim().to_owned();
    let stream = ok(from.run(&["store", "export", &full(&g.app), &pkg], b"")?)?;
    assert!(stream.len() > 3000);

    // Cut in the magic, in metadata, inside the big file's NAR, before `end`.
    let data = stream
        .windows(3000)
        .position(|w| w.iter().all(|&b| b == 7))
        .ok_or("the data file is not in the stream")?;
    for cut in [4, 60, data + 1500, stream.len() - 8] {
        let out = into.run(&["store", "import"], &stream[..cut])?;
        let err = String::from_utf8(out.stderr)?;
        assert_eq!(out.status.code(), Some(1), "cut at {cut}: {err}");
        assert!(out.stdout.is_empty(), "cut at {cut}");
        assert!(into.open()?.all_valid_paths()?.is_empty(), "cut at {cut}");
        let left: Vec<_> = fs::read_dir(into.dir.join("bigtop/store"))?.collect();
        assert!(left.is_empty(), "cut at {cut} left {left:?}");
    }
    ok(into.run(&["store", "verify"], b"")?)?;
    Ok(())
}

/// Regression: `AddBatch::commit` skipped a staged tree whose path was
/// already valid without deleting it, so adding (or importing) a path
/// twice left `.tmp-<pid>-…` in the store dir, and `verify` then failed a
/// store nobody touched.
#[test]
fn adding_a_path_twice_leaves_no_stray_files() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = TestStore::new(tmp.path(), "s");
    fs::write(tmp.path().join("hello.txt"), "hello\n")?;
    let first = store.ok(&["store", "add", "hello.txt"])?;
    assert_eq!(store.ok(&["store", "add", "hello.txt"])?, first);
    let entries = fs::read_dir(store.dir.join("bigtop/store"))?.count();
    assert_eq!(entries, 1);
    ok(store.run(&["store", "verify"], b"")?)?;
    Ok(())
}

/// Regression: `--store R` and `--store R --store-dir /bigtop/other` keep
/// their state in the same `R/bigtop/var`, so they shared one database;
/// `verify --repair` in the second unregistered the first's paths as
/// missing, and the next repair in the first deleted their files. The
/// second store dir is now refused, naming both dirs and the database.
#[test]
fn a_second_store_dir_on_one_database_is_refused_and_deletes_nothing() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = TestStore::new(tmp.path(), "s");
    fs::write(tmp.path().join("hello.txt"), "hello\n")?;
    let added = store.ok(&["store", "add", "hello.txt"])?;
    let path = StorePath::from_base_name(
        added
            .trim()
            .strip_prefix("/bigtop/store/")
            .ok_or("not in /bigtop/store")?,
    )?;

    let other = ["--store-dir", "/bigtop/other"];
    let verify_other = [&["store", "verify", "--repair"][..], &other].concat();
    let out = store.run(&verify_other, b"")?;
    // The first store's own repair is what deleted the files.
    let mine = store.run(&["store", "verify", "--repair"], b"")?;
    assert!(store.valid(&path)?, "{path} was unregistered");
    assert!(store.physical(&path).exists(), "{path} was deleted");
    ok(mine)?;

    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    for part in [
        "`/bigtop/store`",
        "`/bigtop/other`",
        "s/bigtop/var/db/db.sqlite",
    ] {
        assert!(err.contains(part), "{err}");
    }
    let add_other = [&["store", "add", "hello.txt"][..], &other].concat();
    assert_eq!(store.run(&add_other, b"")?.status.code(), Some(1));
    assert!(!store
        .dir
        .join("bigtop/other")
        .join(path.to_string())
        .exists());
    Ok(())
}

#[test]
fn store_dir_without_store_keeps_the_store_at_its_logical_path() -> Result {
    let tmp = tempfile::tempdir()?;
    fs::write(tmp.path().join("hello.txt"), "hello\n")?;
    let logical = tmp.path().join("store");
    let logical = logical.to_str().ok_or("path")?;
    let added = ok(bigtop(
        &["store", "add", "hello.txt", "--store-dir", logical],
        b"",
        tmp.path(),
    )?)?;
    let added = String::from_utf8(added)?;
    let path = added.trim();
    assert!(path.starts_with(&format!("{logical}/")), "{path}");
    assert_eq!(fs::read_to_string(path)?, "hello\n");
    assert!(tmp.path().join("var/db").is_dir());

    let out = bigtop(
        &["store", "roots", "--store-dir", "relative"],
        b"",
        tmp.path(),
    )?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("invalid store dir `relative`"), "{err}");
    Ok(())
}

/// Issue 13: a builder can nest directories past `PATH_MAX`, and `store
/// verify --repair` failed (`File name too long`) on such a tree, left by
/// an interrupted build or unregistered in the store dir. It removes both.
#[test]
fn verify_repair_removes_trees_nested_past_path_max() -> Result {
    let tmp = tempfile::tempdir()?;
    /// A failed run would leave trees the temporary directory cannot remove.
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chmod")
                .args(["-R", "u+w"])
                .arg(self.0)
                .status();
            let _ = std::process::Command::new("rm")
                .arg("-rf")
                .arg(self.0)
                .status();
        }
    }
    let _cleanup = Cleanup(tmp.path());
    let store = TestStore::new(tmp.path(), "s");
    let g = graph(&store)?;
    let dead = 4_194_305;
    let root = store.dir.join("bigtop/store");
    let leftover = root.join(format!(".tmp-{dead}-1-deep"));
    let stray = root.join("stray-deep");
    for dir in [&leftover, &stray] {
        // 2,000 levels of `dd`: a path three times PATH_MAX.
        let made = std::process::Command::new("sh")
            .args([
                "-c",
                "p=dd; i=1; while [ $i -lt 2000 ]; do p=$p/dd; i=$((i+1)); done; \
                 mkdir -p \"$1/$p\" && chmod -R a-w \"$1\"",
                "sh",
            ])
            .arg(dir)
            .status()?;
        assert!(made.success());
    }
    let text = store.ok(&["store", "verify", "--repair"])?;
    assert!(
        lines(&text).contains(&format!("unregistered: {}", stray.display()).as_str()),
        "{text}"
    );
    assert!(
        lines(&text).contains(&format!("garbage, removed: {}", leftover.display()).as_str()),
        "{text}"
    );
    assert!(!leftover.exists() && !stray.exists());
    let again = store.ok(&["store", "verify", "--check-contents"])?;
    assert_eq!(
        lines(&again),
        ["5 paths checked: 0 missing, 0 corrupt, 0 unregistered entries"]
    );
    assert!(store.valid(&g.app)?);
    Ok(())
}

#[test]
fn global_flags_go_before_or_after_the_command() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = tmp.path().join("s");
    let store = store.to_str().ok_or("store dir")?;
    fs::write(tmp.path().join("a.txt"), "a\n")?;
    fs::write(tmp.path().join("b.txt"), "b\n")?;
    let run = |args: &[&str]| -> Result<String> {
        Ok(String::from_utf8(ok(bigtop(args, b"", tmp.path())?)?)?)
    };

    // `--store` and `--json` before the command group, between it and its
    // command, and after: all name the same store and print JSON.
    let before: Value = serde_json::from_str(&run(&[
        "--store", store, "--json", "store", "add", "a.txt",
    ])?)?;
    let between: Value = serde_json::from_str(&run(&[
        "store", "--store", store, "add", "--json", "b.txt",
    ])?)?;
    let after: Value = serde_json::from_str(&run(&[
        "store",
        "requisites",
        "--json",
        "--store",
        store,
        before[0].as_str().ok_or("a path")?,
        between[0].as_str().ok_or("a path")?,
    ])?)?;
    assert_eq!(json_paths(&before)?.len(), 1, "{before}");
    assert_eq!(json_paths(&after)?.len(), 2, "{after}");
    for v in [&before, &between] {
        assert!(json_paths(&after)?.contains(&json_paths(v)?[0]), "{after}");
    }
    // `--store-dir` too: a store at another logical dir.
    let other = tmp.path().join("other");
    let other_dir = other.join("store");
    let printed = run(&[
        "--store-dir",
        other_dir.to_str().ok_or("dir")?,
        "store",
        "add",
        "a.txt",
    ])?;
    assert!(
        printed.starts_with(&format!("{}/", other_dir.display())),
        "{printed}"
    );
    Ok(())
}

#[test]
fn json_is_refused_by_a_command_that_writes_a_stream() -> Result {
    let tmp = tempfile::tempdir()?;
    fs::write(tmp.path().join("a.txt"), "a\n")?;
    for args in [
        &["--json", "nar", "dump", "a.txt"][..],
        &["nar", "dump", "a.txt", "--json"][..],
        &["store", "export", "--json", "x"][..],
        &["log", "--json", "x"][..],
    ] {
        let out = bigtop(args, b"", tmp.path())?;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8(out.stderr)?;
        assert!(
            err.starts_with("error: `bigtop ") && err.contains("has no JSON form: drop `--json`"),
            "{args:?}: {err}"
        );
    }
    Ok(())
}

#[test]
fn copy_moves_a_signed_closure_through_a_file_cache_and_refuses_an_untrusted_one() -> Result {
    let tmp = tempfile::tempdir()?;
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let cache = format!("file://{}", tmp.path().join("cache").display());
    ok(bigtop(&["key", "generate", "cache-1"], b"", tmp.path())?)?;
    fs::write(tmp.path().join("src.txt"), "hello cache\n")?;
    let added = ok(bigtop(
        &[
            "store",
            "add",
            "--store",
            a.to_str().ok_or("path")?,
            "src.txt",
        ],
        b"",
        tmp.path(),
    )?)?;
    let path = String::from_utf8(added)?.trim().to_owned();
    let up = ok(bigtop(
        &[
            "copy",
            "--store",
            a.to_str().ok_or("path")?,
            "--to",
            &cache,
            "--sign",
            "cache-1.secret",
            "--json",
            &path,
        ],
        b"",
        tmp.path(),
    )?)?;
    let up: Value = serde_json::from_slice(&up)?;
    assert_eq!(up["copied"].as_array().map(Vec::len), Some(1), "{up}");
    let public = fs::read_to_string(tmp.path().join("cache-1.public"))?;
    let b_store = b.to_str().ok_or("path")?;
    // Under a key it does not trust: refused, named.
    let out = bigtop(
        &[
            "copy",
            "--store",
            b_store,
            "--from",
            &cache,
            "--trusted-public-key",
            "other-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            &path,
        ],
        b"",
        tmp.path(),
    )?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not signed by a trusted key") && err.contains("cache-1"),
        "{err}"
    );
    let down = ok(bigtop(
        &[
            "copy",
            "--store",
            b_store,
            "--from",
            &cache,
            "--trusted-public-key",
            public.trim(),
            &path,
        ],
        b"",
        tmp.path(),
    )?)?;
    assert!(String::from_utf8(down)?.starts_with("copied 1 paths from"));
    let copied = Store::open_chroot(&b)?;
    let p = copied.store_dir().parse_path(&path)?;
    assert_eq!(fs::read_to_string(copied.physical(&p))?, "hello cache\n");

    // Its file damaged, `store verify --repair` fetches it again from the
    // cache the configuration names.
    let file = copied.physical(&p);
    fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    fs::write(&file, "damaged\n")?;
    let etc = tmp.path().join(".etc-bigtop");
    fs::create_dir_all(&etc)?;
    fs::write(
        etc.join("bigtop.toml"),
        format!(
            "substituters = [\"{cache}\"]\ntrusted-public-keys = [\"{}\"]\n",
            public.trim()
        ),
    )?;
    let repaired = ok(bigtop(
        &[
            "store",
            "verify",
            "--check-contents",
            "--repair",
            "--store",
            b_store,
        ],
        b"",
        tmp.path(),
    )?)?;
    let repaired = String::from_utf8(repaired)?;
    assert!(repaired.contains("repaired, fetched again"), "{repaired}");
    assert_eq!(fs::read_to_string(copied.physical(&p))?, "hello cache\n");
    Ok(())
}

/// Options of one direction of `bigtop copy` given with the other are a
/// usage error, not silently ignored.
#[test]
fn copy_refuses_options_of_the_other_direction() -> Result {
    let tmp = tempfile::tempdir()?;
    for args in [
        &["copy", "--from", "file:///x", "--sign", "k", "p"][..],
        &["copy", "--from", "file:///x", "--compression", "xz", "p"],
        &[
            "copy",
            "--to",
            "file:///x",
            "--trusted-public-keys",
            "k-1:x",
            "p",
        ],
        &["copy", "--to", "file:///x", "--no-require-sigs", "p"],
    ] {
        let out = bigtop(args, b"", tmp.path())?;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// On a terminal, `bigtop copy` draws its progress (paths and bytes, with
/// a bar) on standard error, and erases it before the summary.
#[test]
fn copy_draws_a_progress_bar_on_a_terminal() -> Result {
    let tmp = tempfile::tempdir()?;
    let a = tmp.path().join("a");
    fs::write(tmp.path().join("src.txt"), "x".repeat(100_000))?;
    let added = ok(bigtop(
        &[
            "store",
            "add",
            "--store",
            a.to_str().ok_or("path")?,
            "src.txt",
        ],
        b"",
        tmp.path(),
    )?)?;
    let path = String::from_utf8(added)?.trim().to_owned();
    let cache = format!("file://{}", tmp.path().join("cache").display());
    // `script` gives the command a pseudo-terminal and copies what it
    // writes there to its own output.
    let command = format!(
        "{} copy --store {} --to {cache} {path}",
        env!("CARGO_BIN_EXE_bigtop"),
        a.display()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(tmp.path())
        .env("BIGTOP_CONF_DIR", tmp.path().join(".etc-bigtop"))
        .env("XDG_CONFIG_HOME", tmp.path().join(".config"))
        .env("XDG_CACHE_HOME", tmp.path().join(".cache"))
        .env("COLUMNS", "80")
        .output()?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("[0/1 paths]"), "{shown:?}");
    assert!(
        shown.contains("[1/1 paths]") && shown.contains('#'),
        "{shown:?}"
    );
    assert!(shown.contains("\r\x1b[Kcopied 1 paths to"), "{shown:?}");
    Ok(())
}
