//! `build` and `log`, run as a user runs them: derivations added as
//! JSON, built with and without the sandbox.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use bigtop::core::content_address::{ContentAddress, ContentAddressMethod};
use bigtop::core::derivation::DerivationOutput;
use bigtop::core::hash::{Hash, HashAlgo};
use bigtop::store::build::host_system;

use crate::derivation::{lines, sh, Cli};
use crate::Result;

/// a, and b that reads a's output and echoes to its log.
fn small_graph(cli: &Cli) -> Result<(String, String, String)> {
    let (a_drv, a_out) = cli.add(&sh("a", "echo from-a > $out", &[]))?;
    let b = sh(
        "b",
        &format!("read x < {a_out}; echo \"$x, and b from {a_out}\" > $out; echo b-says-hello"),
        &[&a_drv],
    );
    let (b_drv, b_out) = cli.add(&b)?;
    Ok((b_drv, a_out, b_out))
}

/// Builds the small graph, with an out-link; checks outputs, the log and
/// that the link is a root.
fn build_small_graph(cli: &Cli, extra: &[&str]) -> Result {
    let (b_drv, a_out, b_out) = small_graph(cli)?;
    let mut args = vec!["build", &b_drv, "--out-link", "result"];
    args.extend(extra);
    let out = cli.run(&args, b"")?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8(out.stdout)?, format!("{b_out}\n"));
    assert!(stderr.contains("2 derivations will be built"), "{stderr}");
    assert!(stderr.contains(&format!("built {b_drv}")), "{stderr}");
    if extra.contains(&"-L") {
        assert!(stderr.contains("\nb> b-says-hello\n"), "{stderr}");
    } else {
        assert!(!stderr.contains("b-says-hello"), "{stderr}");
    }
    assert_eq!(cli.read(&b_out)?, format!("from-a, and b from {a_out}\n"));
    assert!(cli.valid(&a_out)?);
    assert_eq!(fs::read_link(cli.cwd.join("result"))?, Path::new(&b_out));

    let log = cli.ok(&["log", &b_drv], b"")?;
    assert!(log.contains("b-says-hello\n"), "{log}");
    assert_eq!(cli.ok(&["log", &b_out], b"")?, log);

    // Built already: nothing to do, same answer.
    let again = cli.run(&["build", &b_drv], b"")?;
    assert_eq!(String::from_utf8(again.stdout)?, format!("{b_out}\n"));
    assert!(!String::from_utf8(again.stderr)?.contains("building"));

    // The link is a root: a collection keeps b and what b refers to.
    let roots = cli.ok(&["store", "roots"], b"")?;
    assert!(roots.contains(&format!("-> {b_out}")), "{roots}");
    let deleted = cli.ok(&["store", "gc"], b"")?;
    assert!(
        !deleted.contains(&b_out) && !deleted.contains(&a_out),
        "{deleted}"
    );
    assert!(cli.valid(&b_out)? && cli.valid(&a_out)?);
    assert_eq!(cli.read(&b_out)?, format!("from-a, and b from {a_out}\n"));
    Ok(())
}

#[test]
fn build_without_the_sandbox_in_a_store_at_its_logical_path() -> Result {
    let tmp = tempfile::tempdir()?;
    build_small_graph(
        &Cli::direct(tmp.path())?,
        &["--no-sandbox", "-j", "2", "-L"],
    )
}

#[test]
fn build_in_the_sandbox_in_a_chroot_store() -> Result {
    let tmp = tempfile::tempdir()?;
    build_small_graph(&Cli::chroot(tmp.path())?, &["--cores", "1"])
}

#[test]
fn no_sandbox_in_a_chroot_store_is_refused_before_building() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let (b_drv, a_out, _) = small_graph(&cli)?;
    let err = cli.fails(&["build", &b_drv, "--no-sandbox"], b"")?;
    assert!(err.contains("without the sandbox"), "{err}");
    assert!(err.contains("drop `--no-sandbox`"), "{err}");
    assert!(!cli.valid(&a_out)?);
    Ok(())
}

#[test]
fn dry_run_prints_the_plan_and_builds_nothing() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let (b_drv, a_out, b_out) = small_graph(&cli)?;
    let plan = cli.ok(&["build", &b_drv, "--dry-run", "--out-link", "result"], b"")?;
    assert!(plan.starts_with("2 derivations will be built:\n"), "{plan}");
    let b_base = cli.path(&b_drv)?.to_string();
    assert!(
        plan.contains(&format!("  {b_base}  (outputs out are not valid)")),
        "{plan}"
    );
    let json: Value =
        serde_json::from_str(&cli.ok(&["build", &b_drv, "--dry-run", "--json"], b"")?)?;
    assert_eq!(json["build"][1]["drv"], b_base.as_str());
    assert!(!cli.valid(&a_out)? && !cli.valid(&b_out)?);
    assert!(!cli.cwd.join("result").exists());
    Ok(())
}

#[test]
fn a_failed_build_exits_1_with_its_log_tail_and_registers_nothing() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let (bad_drv, bad_out) = cli.add(&sh(
        "bad",
        "echo half > $out; echo it-went-wrong; exit 3",
        &[],
    ))?;
    let (good_drv, good_out) = cli.add(&sh("good", "echo > $out", &[]))?;
    let mut after = Vec::new();
    for i in 0..3 {
        after.push(
            cli.add(&sh(&format!("after{i}"), "echo > $out", &[&bad_drv]))?
                .0,
        );
    }
    let mut args = vec!["build", "--keep-going", &good_drv];
    args.extend(after.iter().map(String::as_str));
    let err = cli.fails(&args, b"")?;
    assert!(
        err.contains(&format!(
            "failed {bad_drv}: builder failed with exit code 3"
        )),
        "{err}"
    );
    assert!(err.contains("  > it-went-wrong"), "{err}");
    assert!(
        err.contains("error: 1 build failed (3 dependent jobs not attempted):"),
        "{err}"
    );
    // The dependents are counted, not listed one by one.
    assert_eq!(
        err.lines().filter(|l| l.starts_with("failed ")).count(),
        1,
        "{err}"
    );
    let summary = &err[err.find("error:").ok_or("no error line")?..];
    assert!(!summary.contains("after"), "{err}");
    assert!(!cli.valid(&bad_out)?);
    // --keep-going: what did not depend on the failure was built.
    assert!(cli.valid(&good_out)?);
    // The log is kept for a failure too.
    assert!(cli.ok(&["log", &bad_drv], b"")?.contains("it-went-wrong"));
    Ok(())
}

#[test]
fn check_tells_a_deterministic_build_from_one_that_is_not() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let (same_drv, same_out) = cli.add(&sh("same", "echo fixed > $out", &[]))?;
    cli.ok(&["build", &same_drv], b"")?;
    let out = cli.run(&["build", &same_drv, "--check"], b"")?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8(out.stdout)?, format!("{same_out}\n"));
    assert!(
        stderr.contains(&format!("checked {same_out}: identical")),
        "{stderr}"
    );

    let (random_drv, random_out) = cli.add(&sh(
        "random",
        "read -r x < /dev/urandom; echo \"$x\" > $out",
        &[],
    ))?;
    cli.ok(&["build", &random_drv], b"")?;
    let err = cli.fails(&["build", &random_drv, "--check"], b"")?;
    assert!(err.contains("1 output is not deterministic"), "{err}");
    assert!(err.contains(&random_out), "{err}");
    Ok(())
}

#[test]
fn out_links_follow_nix_naming_and_never_replace_a_file() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let mut two = sh("two", "echo > $out; echo > $dev", &[]);
    two["outputs"]["dev"] = json!("deferred");
    let (two_drv, two_out) = cli.add(&two)?;
    let (one_drv, one_out) = cli.add(&sh("one", "echo > $out", &[]))?;

    fs::write(cli.cwd.join("r-2"), "precious")?;
    let err = cli.fails(&["build", &two_drv, &one_drv, "-o", "r"], b"")?;
    assert!(err.contains("refusing to replace `r-2`"), "{err}");
    assert_eq!(fs::read_to_string(cli.cwd.join("r-2"))?, "precious");
    assert!(
        !cli.valid(&one_out)?,
        "nothing is built when a link is in the way"
    );
    fs::remove_file(cli.cwd.join("r-2"))?;

    let printed = cli.ok(
        &["build", &format!("{two_drv}^*"), &one_drv, "-o", "r"],
        b"",
    )?;
    let printed = lines(&printed);
    assert_eq!(printed.len(), 3, "{printed:?}");
    assert_eq!(printed[1], two_out);
    assert_eq!(fs::read_link(cli.cwd.join("r"))?, Path::new(&two_out));
    assert_eq!(fs::read_link(cli.cwd.join("r-dev"))?, Path::new(printed[0]));
    assert_eq!(fs::read_link(cli.cwd.join("r-2"))?, Path::new(&one_out));

    // One output asked for: one path, one link.
    let dev = cli.ok(&["build", &format!("{two_drv}^dev"), "--json"], b"")?;
    let dev: Value = serde_json::from_str(&dev)?;
    assert_eq!(dev[0]["outputs"].as_object().ok_or("object")?.len(), 1);
    let err = cli.fails(&["build", &format!("{two_drv}^lib")], b"")?;
    assert!(err.contains("has no output `lib`"), "{err}");
    Ok(())
}

#[test]
fn build_and_log_name_what_they_cannot_use() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let (drv, out) = cli.add(&sh("x", "echo > $out", &[]))?;
    let err = cli.fails(&["log", &drv], b"")?;
    assert!(err.contains(&format!("no build log for `{drv}`")), "{err}");
    let err = cli.fails(&["log", &out], b"")?;
    assert!(err.contains("is not valid in the store"), "{err}");
    // Built, and printed nothing: an empty log.
    let (quiet, _) = cli.add(&json!({
        "name": "quiet",
        "system": host_system(),
        "builder": "builtin:write-file",
        "env": {"text": "hi"},
        "outputs": {"out": "deferred"},
    }))?;
    cli.ok(&["build", &quiet], b"")?;
    assert_eq!(cli.ok(&["log", &quiet], b"")?, "");

    fs::write(tmp.path().join("src.txt"), "source")?;
    let src = cli.ok(&["store", "add", "src.txt"], b"")?;
    let src = src.trim();
    let err = cli.fails(&["log", src], b"")?;
    assert!(err.contains("has no recorded deriver"), "{err}");
    let err = cli.fails(&["build", src], b"")?;
    assert!(err.contains("is not a derivation"), "{err}");
    let err = cli.fails(&["build", &format!("{drv}^no/pe")], b"")?;
    assert!(err.contains("invalid output name"), "{err}");
    Ok(())
}

/// An out-link inside the store dir was made there: an entry the store
/// does not know, which `verify` reports. Refused before building,
/// however the store dir is spelled. (The logical dir is checked by the
/// store's tests, in a store whose logical dir is not the host's.)
#[test]
fn an_out_link_inside_the_store_dir_is_refused() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let (drv, out) = cli.add(&sh("x", "echo > $out", &[]))?;
    std::os::unix::fs::symlink("s/bigtop/store", tmp.path().join("store-link"))?;
    fs::create_dir(tmp.path().join("sub"))?;
    let physical = tmp.path().join("s/bigtop/store/evil");
    for link in [
        physical.to_str().ok_or("path")?,
        "s/bigtop/store/evil",
        "sub/../s/bigtop/store/evil",
        "store-link/evil",
    ] {
        let err = cli.fails(&["build", &drv, "-o", link], b"")?;
        assert!(
            err.contains(&format!(
                "cannot make `{link}` a root: it is inside the store directory"
            )),
            "{link}: {err}"
        );
    }
    assert!(!cli.valid(&out)?, "nothing is built");
    let verify = cli.ok(&["store", "verify"], b"")?;
    assert!(verify.contains("0 unregistered entries"), "{verify}");
    assert!(fs::symlink_metadata(&physical).is_err());
    Ok(())
}

/// A chroot store's out-link points at the logical path, which does not
/// exist on the host: store commands read the link and map its target
/// through the store.
#[test]
fn store_commands_take_an_out_link_of_a_chroot_store() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let (b_drv, a_out, b_out) = small_graph(&cli)?;
    cli.ok(&["build", &b_drv, "-o", "result"], b"")?;
    assert_eq!(fs::read_link(tmp.path().join("result"))?, Path::new(&b_out));
    assert!(!Path::new(&b_out).exists(), "the link's target is logical");
    std::os::unix::fs::symlink("result", tmp.path().join("again"))?;
    let absolute = tmp.path().join("result");
    let mut closure = [a_out.clone(), b_out.clone()];
    closure.sort();
    for link in [
        "result",
        "./result",
        "again",
        absolute.to_str().ok_or("path")?,
    ] {
        let out = cli.ok(&["store", "requisites", link], b"")?;
        assert_eq!(lines(&out), closure, "{link}");
    }
    let info: Value =
        serde_json::from_str(&cli.ok(&["store", "path-info", "--json", "result"], b"")?)?;
    assert_eq!(info[0]["path"], cli.path(&b_out)?.to_string());
    let chain = cli.ok(&["why-depends", "result", &a_out], b"")?;
    assert_eq!(lines(&chain), [b_out.clone(), format!("-> {a_out}")]);
    assert!(cli.ok(&["log", "result"], b"")?.contains("b-says-hello"));

    // A link that leads out of the store names no store path.
    std::os::unix::fs::symlink("/etc/hostname", tmp.path().join("elsewhere"))?;
    let err = cli.fails(&["store", "path-info", "elsewhere"], b"")?;
    assert!(err.contains("`elsewhere` is not a store path"), "{err}");
    assert!(err.contains("/etc/hostname"), "{err}");
    Ok(())
}

/// The processes (host pids) whose environment holds `MARK=mark`.
fn marked(mark: &str) -> Vec<u32> {
    let needle = format!("MARK={mark}\0");
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        if std::time::Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Issue 13, point 4: a `bigtop build` ended by SIGINT, SIGTERM, SIGHUP or
/// SIGKILL left its builders running (they have their own session, so a
/// terminal's Ctrl-C missed them too), with their scratch roots and build
/// dirs, and `verify` failed until `--repair`. Now the builders die with
/// bigtop; a caught signal cleans up before bigtop exits with 128 + the
/// signal, and what a SIGKILL leaves is garbage the next verify removes.
#[test]
fn a_killed_build_takes_its_builders_and_their_scratch_along() -> Result {
    for (sig, name) in [
        (libc::SIGINT, "int"),
        (libc::SIGTERM, "term"),
        (libc::SIGHUP, "hup"),
        (libc::SIGKILL, "kill"),
    ] {
        let tmp = tempfile::tempdir()?;
        let cli = Cli::chroot(tmp.path())?;
        let mark = format!("{}-{name}", std::process::id());
        let mut d = sh(
            &format!("spin-{name}"),
            "mkdir $out; (while :; do :; done) & while :; do :; done",
            &[],
        );
        d["env"] = json!({ "MARK": mark });
        let (drv, _) = cli.add(&d)?;
        let mut args = vec!["build".to_owned(), drv.clone()];
        args.extend(cli.store_args.iter().cloned());
        let bigtop = std::process::Command::new(env!("CARGO_BIN_EXE_bigtop"))
            .args(&args)
            .current_dir(&cli.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        wait_until("both builder processes run", || marked(&mark).len() >= 2)?;
        // SAFETY: sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(bigtop.id() as i32, sig) }, 0);
        let out = bigtop.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        if sig == libc::SIGKILL {
            assert_eq!(out.status.signal(), Some(sig), "{name}");
        } else {
            assert_eq!(out.status.code(), Some(128 + sig), "{name}: {stderr}");
            assert!(stderr.contains("interrupted by signal"), "{name}: {stderr}");
        }
        wait_until("the builders are gone", || marked(&mark).is_empty())?;
        let store_root = tmp.path().join("s/bigtop/store");
        let builds = tmp.path().join("s/bigtop/var/builds");
        // Scratch roots, staged trees and unregistered outputs in the
        // store dir; any build dir.
        let leftovers = || -> Vec<String> {
            let names = |d: &Path| -> Vec<String> {
                fs::read_dir(d)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            };
            let mut left: Vec<String> = names(&store_root)
                .into_iter()
                .filter(|n| {
                    n.starts_with(".chroot-")
                        || n.starts_with(".tmp-")
                        || n.ends_with(&format!("-spin-{name}"))
                })
                .collect();
            left.extend(names(&builds));
            left
        };
        if sig != libc::SIGKILL {
            assert_eq!(leftovers(), Vec::<String>::new(), "{name}");
        } else {
            // Nothing could clean up; the next build does, first thing.
            assert_ne!(leftovers(), Vec::<String>::new(), "{name}");
            let (next, _) = cli.add(&sh("next", "echo next > $out", &[]))?;
            cli.ok(&["build", &next], b"")?;
            assert_eq!(
                leftovers(),
                Vec::<String>::new(),
                "{name}: after the next build"
            );
        }
        // Whatever is left is garbage: verify removes it and passes.
        let verify = cli.run(&["store", "verify"], b"")?;
        assert!(
            verify.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        assert_eq!(leftovers(), Vec::<String>::new(), "{name}");
    }
    Ok(())
}

/// Regression (issue 13, point 10): a failure was cut to its first line,
/// so a fixed output's hash mismatch lost the two hashes, and a missing
/// hash the one to pin, both when it happened and in the summary.
#[test]
fn a_fixed_output_hash_mismatch_shows_both_hashes_and_the_hint() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let content = b"fetched bytes\n";
    let got = Hash::digest(HashAlgo::Sha256, content).to_sri();
    let fixed = |name: &str, hash: Hash| -> Result<String> {
        let mut d = sh(name, "printf 'fetched bytes\\n' > $out", &[]);
        d["outputs"]["out"] = serde_json::to_value(DerivationOutput::Fixed(ContentAddress::new(
            ContentAddressMethod::Flat,
            hash,
        )))?;
        Ok(cli.add(&d)?.0)
    };

    let wrong = Hash::digest(HashAlgo::Sha256, b"something else");
    let drv = fixed("wrong", wrong)?;
    let err = cli.fails(&["build", &drv], b"")?;
    let specified = format!("specified: {}", wrong.to_sri());
    let got_line = format!("got: {got}");
    for part in [&specified, &got_line] {
        // Once as it failed, once in the summary.
        assert_eq!(err.matches(part.as_str()).count(), 2, "{part}: {err}");
    }

    let unpinned = fixed("unpinned", Hash::new(HashAlgo::Sha256, [0; 32]))?;
    let err = cli.fails(&["build", &unpinned], b"")?;
    assert!(err.contains("has no hash pinned yet"), "{err}");
    let hint = format!("pin it (for a fetch: `.sha256(\"{got}\")`)");
    for part in [&got_line, &hint] {
        assert_eq!(err.matches(part.as_str()).count(), 2, "{part}: {err}");
    }
    Ok(())
}

/// Regression (issue 13, point 10): a registration that the database
/// refused (a full disk) said only "store database … failed", without
/// SQLite's reason. A trigger stands in for the full disk: it fails the
/// registration, and only it, with a message of its own.
#[test]
fn a_registration_failure_shows_the_database_cause() -> Result {
    let tmp = tempfile::tempdir()?;
    let cli = Cli::chroot(tmp.path())?;
    let (drv, out) = cli.add(&json!({
        "name": "note",
        "system": host_system(),
        "builder": "builtin:write-file",
        "env": {"text": "hi"},
        "outputs": {"out": "deferred"},
    }))?;
    let db = rusqlite::Connection::open(tmp.path().join("s/bigtop/var/db/db.sqlite"))?;
    db.execute_batch(
        "CREATE TRIGGER TestDiskFull BEFORE INSERT ON ValidPaths BEGIN
             SELECT RAISE(ABORT, 'test trigger: database or disk is full');
         END;",
    )?;
    drop(db);
    let err = cli.fails(&["build", &drv], b"")?;
    let cause = "test trigger: database or disk is full";
    assert!(err.contains("store database `"), "{err}");
    // Once as it failed, once in the summary.
    assert_eq!(err.matches(cause).count(), 2, "{err}");
    assert!(!cli.valid(&out)?);
    Ok(())
}

/// A derivation writing `text`, built in a store in `tmp/a` and copied,
/// signed, into the cache `tmp/cache`.
struct Signed {
    drv: Value,
    out: String,
    cache: String,
    secret: std::path::PathBuf,
    public: String,
}

fn signed_in_a_cache(tmp: &Path, name: &str, text: &str) -> Result<Signed> {
    let a = Cli::chroot(&tmp.join("a").tap_mkdir()?)?;
    let drv = json!({
        "name": name,
        "system": host_system(),
        "builder": "builtin:write-file",
        "env": {"text": text},
        "outputs": {"out": "deferred"},
    });
    let (drv_path, out) = a.add(&drv)?;
    a.ok(&["build", &drv_path], b"")?;
    crate::bigtop(&["key", "generate", "c-1"], b"", tmp)?;
    let cache = format!("file://{}", tmp.join("cache").display());
    let secret = tmp.join("c-1.secret");
    a.ok(
        &[
            "copy",
            "--to",
            &cache,
            "--sign",
            secret.to_str().ok_or("path")?,
            &out,
        ],
        b"",
    )?;
    let public = fs::read_to_string(tmp.join("c-1.public"))?;
    Ok(Signed {
        drv,
        out,
        cache,
        secret,
        public,
    })
}

/// `bigtop build --substituters`: what a signed cache holds is fetched,
/// not built; without the key it is built.
#[test]
fn build_fetches_from_a_trusted_substituter_and_builds_without_one() -> Result {
    let tmp = tempfile::tempdir()?;
    for d in ["b", "c"] {
        fs::create_dir(tmp.path().join(d))?;
    }
    let Signed {
        drv,
        out,
        cache,
        secret: _,
        public,
    } = signed_in_a_cache(tmp.path(), "cached", "from the cache")?;

    let b = Cli::chroot(&tmp.path().join("b"))?;
    let (drv_b, _) = b.add(&drv)?;
    let plan: Value = serde_json::from_str(&b.ok(
        &[
            "build",
            "--dry-run",
            "--json",
            "--substituters",
            &cache,
            "--trusted-public-key",
            public.trim(),
            &drv_b,
        ],
        b"",
    )?)?;
    assert_eq!(plan["fetch"].as_array().map(Vec::len), Some(1), "{plan}");
    assert_eq!(plan["build"].as_array().map(Vec::len), Some(0), "{plan}");
    b.ok(
        &[
            "build",
            "--substituters",
            &cache,
            "--trusted-public-key",
            public.trim(),
            &drv_b,
        ],
        b"",
    )?;
    let store = (b.open)()?;
    let path = store.store_dir().parse_path(&out)?;
    assert_eq!(fs::read_to_string(store.physical(&path))?, "from the cache");
    // Without the key, the cache offers nothing: it would be built.
    let c = Cli::chroot(&tmp.path().join("c"))?;
    let (drv_c, _) = c.add(&drv)?;
    let plan: Value = serde_json::from_str(&c.ok(
        &[
            "build",
            "--dry-run",
            "--json",
            "--substituters",
            &cache,
            &drv_c,
        ],
        b"",
    )?)?;
    assert_eq!(plan["build"].as_array().map(Vec::len), Some(1), "{plan}");
    Ok(())
}

/// Substituters and keys come from the machine's configuration file, the
/// user's replaces what it sets, a flag replaces both (`''`: none); a
/// mistyped key is an error naming the file.
#[test]
fn configuration_files_set_substituters_and_flags_override_them() -> Result {
    let tmp = tempfile::tempdir()?;
    let Signed {
        drv,
        out,
        cache,
        secret,
        public,
    } = signed_in_a_cache(tmp.path(), "configured", "from the configured cache")?;
    let a = Cli::chroot(&tmp.path().join("a"))?;

    let b_dir = tmp.path().join("b").tap_mkdir()?;
    let b = Cli::chroot(&b_dir)?;
    let (drv_b, _) = b.add(&drv)?;
    let plan = |extra: &[&str]| -> Result<(usize, usize)> {
        let mut args = vec!["build", "--dry-run", "--json"];
        args.extend(extra);
        args.push(&drv_b);
        let plan: Value = serde_json::from_str(&b.ok(&args, b"")?)?;
        Ok((
            plan["fetch"].as_array().map_or(0, Vec::len),
            plan["build"].as_array().map_or(0, Vec::len),
        ))
    };
    // Nothing configured: built.
    assert_eq!(plan(&[])?, (0, 1));
    // The machine's file names the cache, the user's trusts its key.
    let etc = b_dir.join(".etc-bigtop").tap_mkdir()?;
    fs::write(
        etc.join("bigtop.toml"),
        format!("substituters = [\"{cache}\"]\ntrusted-public-keys = [\"other-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n"),
    )?;
    assert_eq!(plan(&[])?, (0, 1), "the machine's key is not the cache's");
    let user = b_dir.join(".config/bigtop").tap_mkdir()?;
    fs::write(
        user.join("bigtop.toml"),
        format!("trusted-public-keys = [\"{}\"]\n", public.trim()),
    )?;
    assert_eq!(plan(&[])?, (1, 0));
    // Flags replace the files: no substituters at all, or an untrusting
    // key list.
    assert_eq!(plan(&["--substituters", ""])?, (0, 1));
    assert_eq!(
        plan(&[
            "--trusted-public-keys",
            "x-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        ])?,
        (0, 1)
    );
    b.ok(&["build", &drv_b], b"")?;
    let store = (b.open)()?;
    let path = store.store_dir().parse_path(&out)?;
    assert_eq!(
        fs::read_to_string(store.physical(&path))?,
        "from the configured cache"
    );

    // Two caches with the path: the one of lower priority is asked first,
    // whatever the order given; `?priority=` on a URL overrides what the
    // cache says of itself.
    let second = format!("file://{}", tmp.path().join("second").display());
    a.ok(
        &[
            "copy",
            "--to",
            &second,
            "--sign",
            secret.to_str().ok_or("path")?,
            &out,
        ],
        b"",
    )?;
    fs::write(
        tmp.path().join("second/nix-cache-info"),
        "StoreDir: /bigtop/store\nWantMassQuery: 1\nPriority: 10\n",
    )?;
    let c = Cli::chroot(&tmp.path().join("c").tap_mkdir()?)?;
    let (drv_c, _) = c.add(&drv)?;
    let from = |extra: &[&str]| -> Result<String> {
        let mut args = vec![
            "build",
            "--dry-run",
            "--json",
            "--trusted-public-keys",
            public.trim(),
        ];
        args.extend(extra);
        args.push(&drv_c);
        let plan: Value = serde_json::from_str(&c.ok(&args, b"")?)?;
        Ok(plan["fetch"][0]["from"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    };
    assert_eq!(
        from(&["--substituters", &format!("{cache} {second}")])?,
        second
    );
    let first = format!("{cache}?priority=5");
    assert_eq!(
        from(&["--substituters", &format!("{first} {second}")])?,
        cache
    );

    // A typo in a file: an error naming the file and the key.
    fs::write(user.join("bigtop.toml"), "substituter = []\n")?;
    let failed = b.run(&["build", "--dry-run", &drv_b], b"")?;
    let err = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{err}");
    assert!(
        err.contains(".config/bigtop/bigtop.toml") && err.contains("substituter"),
        "{err}"
    );
    Ok(())
}

/// `mkdir -p`, returning the path.
trait TapMkdir: Sized {
    fn tap_mkdir(self) -> Result<Self>;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Result<Self> {
        fs::create_dir_all(&self)?;
        Ok(self)
    }
}
