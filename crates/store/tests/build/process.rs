use std::collections::{BTreeMap, BTreeSet};

use bigtop_store::build::Error;
use bigtop_store::build::{BuildOptions, Builder, FailureKind, TextRenderer};
use bigtop_store::core::content_address::{ContentAddress, ContentAddressMethod};
use bigtop_store::core::derivation::{DerivationOutput, OutputName};
use bigtop_store::core::hash::{Hash, HashAlgo};

use crate::{build_out, direct_store, fill, plain, sh, strays, TestResult};

#[test]
fn a_chain_of_builds_sees_its_inputs_and_records_references() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let a = sh(&store, "a", "echo from-a > $out", &[]);
    let a_drv = store.add_derivation(&a)?;
    let b = sh(
        &store,
        "b",
        "read x < $in0; echo \"$x and b, via $in0\" > $out",
        &[],
    );
    let mut b = b;
    b.input_drvs
        .insert(a_drv.clone(), BTreeSet::from([OutputName::out()]));
    let a_out = a
        .output_path(store.store_dir(), &OutputName::out())
        .unwrap();
    b.env
        .insert("in0".into(), store.store_dir().display(&a_out).to_string());
    fill(&store, &mut b);
    let b_out = build_out(&store, plain(), &b)?;
    let text = std::fs::read_to_string(store.physical(&b_out))?;
    assert!(text.starts_with("from-a and b, via "), "{text}");
    assert_eq!(store.references(&b_out)?, BTreeSet::from([a_out.clone()]));
    assert!(store.is_valid(&a_out)?);
    Ok(())
}

#[test]
fn the_environment_is_clean_and_documented() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let mut d = sh(&store, "env", "/usr/bin/env > $out", &[]);
    d.env.insert("custom".into(), "value".into());
    fill(&store, &mut d);
    let out = build_out(
        &store,
        BuildOptions {
            cores: 3,
            ..plain()
        },
        &d,
    )?;
    let text = std::fs::read_to_string(store.physical(&out))?;
    let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let names: BTreeSet<&str> = vars.keys().copied().collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "BIGTOP_BUILD_CORES",
            "BIGTOP_BUILD_TOP",
            "BIGTOP_STORE",
            "HOME",
            "MAKEFLAGS",
            "PATH",
            "PWD",
            "TEMP",
            "TEMPDIR",
            "TMP",
            "TMPDIR",
            "custom",
            "out",
        ]),
        "{text}"
    );
    assert_eq!(vars["HOME"], "/homeless-shelter");
    assert_eq!(vars["PATH"], "/path-not-set");
    assert_eq!(vars["BIGTOP_BUILD_CORES"], "3");
    assert!(vars["MAKEFLAGS"].contains("--jobserver-auth="), "{text}");
    assert_eq!(vars["out"], store.store_dir().display(&out).to_string());
    // The build dir is gone.
    assert!(!std::path::Path::new(vars["TMPDIR"]).exists());
    Ok(())
}

#[test]
fn a_failed_build_reports_status_and_log_tail_and_leaves_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let d = sh(
        &store,
        "fails",
        "i=1; while [ $i -le 40 ]; do echo line $i; i=$((i+1)); done; echo half > $out; echo x > $TMPDIR/x; echo oops >&2; exit 3",
        &[],
    );
    let drv = store.add_derivation(&d)?;
    let err = Builder::new(&store)
        .options(BuildOptions {
            log_lines: 5,
            ..plain()
        })
        .build(&[(drv.clone(), BTreeSet::new())])
        .unwrap_err();
    let Error::BuildFailed(failures) = &err else {
        panic!("{err}")
    };
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].path, drv);
    assert!(matches!(&failures[0].kind, FailureKind::Exited(s) if s == "exit code 3"));
    assert_eq!(
        failures[0].log_tail,
        ["line 37", "line 38", "line 39", "line 40", "oops"]
    );
    let text = err.to_string();
    assert!(
        text.contains("failed with exit code 3") && text.contains("> oops"),
        "{text}"
    );
    // Nothing registered, nothing left in the store or the build dirs.
    let out = d
        .output_path(store.store_dir(), &OutputName::out())
        .unwrap();
    assert!(!store.is_valid(&out)?);
    assert_eq!(strays(&store), Vec::<String>::new());
    let builds = store.state_dir().join("builds");
    assert_eq!(std::fs::read_dir(&builds)?.count(), 0);
    // The whole log is kept.
    let log = store.read_log(&drv)?.expect("a log");
    assert!(log.starts_with("line 1\n") && log.contains("oops"), "{log}");
    Ok(())
}

#[test]
fn a_missing_output_fails_the_build() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let d = sh(&store, "lazy", "true", &[]);
    let err = build_out(&store, plain(), &d).unwrap_err();
    assert!(
        err.to_string().contains("did not produce output `out`"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_missing_builder_is_named() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let mut d = sh(&store, "nobuilder", "", &[]);
    d.builder = "/no/such/builder".into();
    fill(&store, &mut d);
    let err = build_out(&store, plain(), &d).unwrap_err().to_string();
    assert!(
        err.contains("cannot run builder `/no/such/builder`: No such file"),
        "{err}"
    );
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

#[test]
fn a_builder_gets_the_default_sigpipe() -> TestResult {
    // `yes` dies of SIGPIPE once `head` exits, as it does outside; with
    // SIGPIPE ignored (Rust's own setting, inherited unless reset) it
    // would exit 1 on EPIPE instead. Its status is the output.
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let mut d = sh(
        &store,
        "sigpipe",
        "{ /usr/bin/yes; echo $? > $out; } | /usr/bin/head -n1 > /dev/null",
        &[],
    );
    fill(&store, &mut d);
    let out = build_out(&store, plain(), &d)?;
    // 128 + SIGPIPE (13).
    assert_eq!(std::fs::read_to_string(store.physical(&out))?.trim(), "141");
    Ok(())
}

#[test]
fn keep_going_builds_what_does_not_depend_on_a_failure() -> TestResult {
    for keep_going in [false, true] {
        let tmp = tempfile::tempdir()?;
        let store = direct_store(tmp.path());
        // The failing build has the longer chain behind it, so it starts first.
        let bad = sh(&store, "bad", "exit 1", &[]);
        let bad_drv = store.add_derivation(&bad)?;
        let mut after = sh(&store, "after-bad", "echo > $out", &[]);
        after
            .input_drvs
            .insert(bad_drv.clone(), BTreeSet::from([OutputName::out()]));
        fill(&store, &mut after);
        let after_drv = store.add_derivation(&after)?;
        let good = sh(&store, "good", "echo good > $out", &[]);
        let good_drv = store.add_derivation(&good)?;
        let err = Builder::new(&store)
            .options(BuildOptions {
                keep_going,
                max_jobs: 1,
                ..plain()
            })
            .build(&[
                (after_drv.clone(), BTreeSet::new()),
                (good_drv.clone(), BTreeSet::new()),
            ])
            .unwrap_err();
        let Error::BuildFailed(failures) = &err else {
            panic!("{err}")
        };
        let good_out = good
            .output_path(store.store_dir(), &OutputName::out())
            .unwrap();
        assert_eq!(
            store.is_valid(&good_out)?,
            keep_going,
            "keep_going = {keep_going}"
        );
        assert!(failures
            .iter()
            .any(|f| f.path == after_drv && matches!(f.kind, FailureKind::DependencyFailed(_))));
        assert!(
            err.to_string().contains("1 dependent jobs not attempted"),
            "{err}"
        );
    }
    Ok(())
}

#[test]
fn a_fixed_output_is_checked_against_its_hash() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let content = b"fetched bytes\n";
    let fixed = |hash: Hash| {
        let mut d = sh(&store, "fetched", "printf 'fetched bytes\\n' > $out", &[]);
        d.outputs.insert(
            OutputName::out(),
            DerivationOutput::Fixed(ContentAddress::new(ContentAddressMethod::Flat, hash)),
        );
        fill(&store, &mut d);
        d
    };
    let right = Hash::digest(HashAlgo::Sha256, content);
    let out = build_out(&store, plain(), &fixed(right))?;
    let info = store.path_info(&out)?.unwrap();
    assert_eq!(info.ca.map(|c| c.hash), Some(right));
    let wrong = Hash::digest(HashAlgo::Sha256, b"something else");
    let err = build_out(&store, plain(), &fixed(wrong))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hash mismatch in fixed-output derivation"),
        "{err}"
    );
    assert!(
        err.contains(&format!("specified: {}", wrong.to_sri())),
        "{err}"
    );
    assert!(err.contains(&format!("got: {}", right.to_sri())), "{err}");
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

#[test]
fn outputs_referring_to_each_other_are_refused_unsandboxed() -> TestResult {
    let tmp = tempfile::tempdir()?;
    crate::outputs_in_a_cycle_are_refused(&direct_store(tmp.path()), plain())
}

#[test]
fn progress_is_rendered_as_lines() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let d = sh(
        &store,
        "talk",
        "echo hello from the builder; echo > $out",
        &[],
    );
    let drv = store.add_derivation(&d)?;
    let renderer = TextRenderer::new(Vec::new(), true);
    Builder::new(&store)
        .options(plain())
        .observer(&renderer)
        .build(&[(drv.clone(), BTreeSet::new())])?;
    let text = String::from_utf8(renderer.into_inner())?;
    assert!(text.contains("1 derivation will be built"), "{text}");
    assert!(text.contains(&format!("building {drv}")), "{text}");
    assert!(text.contains("talk> hello from the builder"), "{text}");
    assert!(text.contains(&format!("done {drv}")), "{text}");
    Ok(())
}

#[test]
fn a_killed_builder_fails_its_build_and_leaves_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let d = sh(
        &store,
        "killed",
        "mkdir $out; echo partial > $out/f; kill -9 $$",
        &[],
    );
    let err = build_out(&store, plain(), &d).unwrap_err().to_string();
    assert!(err.contains("killed by signal 9"), "{err}");
    assert_eq!(strays(&store), Vec::<String>::new());
    let builds = store.state_dir().join("builds");
    assert_eq!(
        std::fs::read_dir(&builds)?.count(),
        0,
        "no build dir is left"
    );
    Ok(())
}

#[test]
fn what_a_builder_leaves_running_is_killed_and_does_not_hold_the_build() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    // The sleeper keeps the log's pipe open: without the kill, the build
    // would wait for it (here: forever, as far as the test is concerned).
    let d = sh(
        &store,
        "leaves",
        "/bin/sleep 100000 & echo $! > $out; echo started",
        &[],
    );
    let drv = store.add_derivation(&d)?;
    let out = build_out(&store, plain(), &d)?;
    let pid: u32 = std::fs::read_to_string(store.physical(&out))?
        .trim()
        .parse()?;
    // Killed with its group (then reaped by whoever inherited it).
    let gone = (0..200).any(|_| {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        if alive {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        !alive
    });
    assert!(gone, "the builder's sleeper {pid} is still running");
    assert_eq!(store.read_log(&drv)?.as_deref(), Some("started\n"));
    Ok(())
}

#[test]
fn a_long_log_is_kept_whole_and_compressed_and_a_short_one_plain() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    // About 600 KiB, across many pipe reads; the last line has no newline.
    let long = sh(
        &store,
        "long",
        "i=0; while [ $i -lt 40000 ]; do echo \"line $i of the long log\"; i=$((i+1)); done; \
         printf 'no newline'; echo > $out",
        &[],
    );
    let short = sh(&store, "short", "echo one; echo two >&2; echo > $out", &[]);
    let long_drv = store.add_derivation(&long)?;
    let short_drv = store.add_derivation(&short)?;
    build_out(&store, plain(), &long)?;
    build_out(&store, plain(), &short)?;
    let mut expected: String = (0..40000)
        .map(|i| format!("line {i} of the long log\n"))
        .collect();
    expected.push_str("no newline");
    assert_eq!(store.read_log(&long_drv)?.as_deref(), Some(&*expected));
    assert_eq!(store.read_log(&short_drv)?.as_deref(), Some("one\ntwo\n"));
    let logs = store.state_dir().join("logs");
    let files: Vec<(String, u64)> = walk(&logs)
        .into_iter()
        .map(|p| {
            (
                p.to_string_lossy().into_owned(),
                p.metadata().unwrap().len(),
            )
        })
        .collect();
    let (gz, plain_files): (Vec<_>, Vec<_>) = files.iter().partition(|(p, _)| p.ends_with(".gz"));
    assert_eq!((gz.len(), plain_files.len()), (1, 1), "{files:?}");
    assert!(gz[0].1 < expected.len() as u64 / 4, "{files:?}");
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Issue 13, point 4, through the library: firing the run's interrupt
/// kills a running unsandboxed builder's process group and a sandboxed
/// builder's namespace, removes their work and fails the run with
/// `Error::Interrupted`; nothing is registered.
#[test]
fn an_interrupt_stops_running_builds_and_removes_their_work() -> TestResult {
    use bigtop_store::build::{Interrupt, Sandboxing};
    for sandbox in [Sandboxing::Disabled, Sandboxing::Required] {
        let tmp = tempfile::tempdir()?;
        let store = crate::direct_store(tmp.path());
        let store = if sandbox == Sandboxing::Required {
            drop(store);
            bigtop_store::Store::open_chroot(tmp.path().join("chroot"))?
        } else {
            store
        };
        let d = sh(
            &store,
            "spin",
            "echo started > $out; (while :; do :; done) & while :; do :; done",
            &[],
        );
        let out = store.physical(
            &d.output_path(
                store.store_dir(),
                &bigtop_store::core::derivation::OutputName::out(),
            )
            .ok_or("an output path")?,
        );
        let interrupt = Interrupt::new()?;
        let options = BuildOptions {
            sandbox,
            interrupt: Some(interrupt.clone()),
            ..crate::plain()
        };
        let root = store.root().to_owned();
        let result = std::thread::scope(|s| {
            let build = s.spawn(|| build_out(&store, options, &d));
            // Until the builder has started: its output (unsandboxed) or
            // its scratch root (sandboxed) shows.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !out.exists()
                && !std::fs::read_dir(&root)
                    .map(|r| {
                        r.flatten()
                            .any(|e| e.file_name().to_string_lossy().starts_with(".chroot-"))
                    })
                    .unwrap_or(false)
            {
                assert!(std::time::Instant::now() < deadline, "never started");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            interrupt.fire();
            build.join().expect("no panic")
        });
        assert!(
            matches!(result, Err(bigtop_store::build::Error::Interrupted)),
            "{sandbox:?}: {result:?}"
        );
        assert!(!out.exists(), "{sandbox:?}: the output is left");
        assert_eq!(crate::strays(&store), Vec::<String>::new(), "{sandbox:?}");
        let builds = store.state_dir().join("builds");
        assert_eq!(
            std::fs::read_dir(&builds).map(|r| r.count()).unwrap_or(0),
            0,
            "{sandbox:?}: build dirs are left"
        );
    }
    Ok(())
}

/// Issue 13, point 3: `store gc` during a build removed the `.drv`s it
/// was building from (nothing else roots them), and the build then
/// failed to register its outputs, which name their deriver. The `.drv`s
/// of a run, and what they refer to, are temporary roots while it runs.
#[test]
fn a_collection_during_a_build_keeps_the_derivations_it_builds() -> TestResult {
    let tmp = tempfile::tempdir()?;
    // Added by another process, as `bigtop derivation add` does: the
    // adder's temporary roots end with it.
    let adder = direct_store(tmp.path());
    let a = sh(&adder, "a", "echo a > $out", &[]);
    let a_drv = adder.add_derivation(&a)?;
    // Waits, busily (only the shell's builtins are at hand), for `go` in
    // its build dir.
    let b = sh(
        &adder,
        "b",
        "while [ ! -e go ]; do :; done; read x < $in0; echo $x-b > $out",
        &[&a_drv],
    );
    let b_drv = adder.add_derivation(&b)?;
    drop(adder);
    let store = direct_store(tmp.path());
    let builds = store.state_dir().join("builds");
    let (collected, built) = std::thread::scope(|s| {
        // The `.drv` path only, as `bigtop build` takes it: this handle
        // has not added (nor rooted) it.
        let build = s.spawn(|| {
            Builder::new(&store)
                .options(plain())
                .build(&[(b_drv.clone(), BTreeSet::new())])
                .map(|r| r.outputs[&b_drv][&OutputName::out()].clone())
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let dir = loop {
            let dir = std::fs::read_dir(&builds)
                .ok()
                .and_then(|mut r| r.next())
                .and_then(|e| e.ok())
                .map(|e| e.path());
            match dir {
                // b's build dir, once a's build (in the same worker) is done.
                Some(d) if store.is_valid(&build_out_path(&store, &a)).unwrap_or(false) => break d,
                _ if std::time::Instant::now() > deadline => panic!("b never started"),
                _ => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        let other = bigtop_store::Store::builder()
            .store_dir(store.store_dir().clone())
            .open();
        let collected = other.and_then(|o| o.collect_garbage(&Default::default()));
        std::fs::write(dir.join("go"), "")?;
        Ok::<_, Box<dyn std::error::Error>>((collected, build.join().expect("no panic")))
    })?;
    let collected = collected?;
    assert!(
        !collected.deleted.contains(&a_drv) && !collected.deleted.contains(&b_drv),
        "{:?}",
        collected.deleted
    );
    let out = built?;
    assert_eq!(std::fs::read_to_string(store.physical(&out))?, "a-b\n");
    assert_eq!(store.path_info(&out)?.ok_or("valid")?.deriver, Some(b_drv));
    Ok(())
}

fn build_out_path(
    store: &bigtop_store::Store,
    d: &bigtop_store::core::derivation::Derivation,
) -> bigtop_store::core::StorePath {
    d.output_path(store.store_dir(), &OutputName::out())
        .expect("filled")
}

/// Issue 13, without the sandbox: the builder writes its output nested
/// past `PATH_MAX` at its final place in the store and in its build dir.
/// A success registers it; a failure leaves neither output nor build dir.
#[test]
fn an_unsandboxed_output_nested_past_path_max_registers_or_goes() -> TestResult {
    use crate::sandboxed::{RemoveOnDrop, NEST};
    let tmp = tempfile::tempdir()?;
    let _cleanup = RemoveOnDrop(tmp.path().to_owned());
    let store = direct_store(tmp.path());
    let deep = |name: &str, script: &str| {
        let mut d = sh(&store, name, &format!("{NEST}{script}"), &[]);
        d.env.insert("PATH".into(), "/bin:/usr/bin".into());
        fill(&store, &mut d);
        d
    };
    let ok = deep("deep-ok", "mkdir $out && nest $out");
    let out = build_out(&store, plain(), &ok)?;
    assert!(store.is_valid(&out)?);
    let failing = deep(
        "deep-fails",
        "mkdir $out $TMPDIR/t && nest $out && nest $TMPDIR/t && exit 3",
    );
    let err = build_out(&store, plain(), &failing).unwrap_err();
    assert!(err.to_string().contains("exit code 3"), "{err}");
    assert_eq!(strays(&store), Vec::<String>::new());
    let builds: Vec<_> = std::fs::read_dir(store.state_dir().join("builds"))?.collect();
    assert!(builds.is_empty(), "{builds:?}");
    Ok(())
}
