use std::collections::BTreeSet;

use bigtop_store::build::Error;
use bigtop_store::build::{builtin, Builder, FailureKind};
use bigtop_store::core::derivation::{Derivation, OutputName};
use bigtop_store::core::hash::HashAlgo;
use bigtop_store::core::nar;

use crate::{build_out, direct_store, fill, plain, sh, strays, TestResult};

fn write_file(store: &bigtop_store::Store, name: &str, text: &str) -> Derivation {
    let mut d = Derivation::new(name, "builtin", builtin::WRITE_FILE);
    d.env.insert("text".into(), text.into());
    fill(store, &mut d);
    d
}

#[test]
fn a_written_file_is_registered_with_its_deriver_and_rebuilds_as_a_no_op() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let d = write_file(&store, "greeting", "hello\n");
    let drv = store.add_derivation(&d)?;
    let out = build_out(&store, plain(), &d)?;
    assert_eq!(std::fs::read_to_string(store.physical(&out))?, "hello\n");
    let info = store.path_info(&out)?.expect("registered");
    assert_eq!(info.deriver.as_ref(), Some(&drv));
    assert_eq!(store.derivation_outputs(&drv)?[&OutputName::out()], out);
    // Built: the plan is empty and says so.
    let plan = Builder::new(&store)
        .options(plain())
        .dry_run(&[(drv.clone(), BTreeSet::new())])?;
    assert!(plan.is_empty());
    assert_eq!(plan.already_valid, vec![drv]);
    Ok(())
}

/// A builtin output and the same file written by a builder process are
/// the same archive.
#[test]
fn a_builtin_output_is_the_nar_a_process_would_write() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let text = "line one\nline two with $dollar and \"quotes\"\n";
    let builtin_out = build_out(&store, plain(), &write_file(&store, "t", text))?;
    let mut by_process = sh(&store, "t", "printf '%s' \"$text\" > $out", &[]);
    by_process.env.insert("text".into(), text.into());
    fill(&store, &mut by_process);
    let process_out = build_out(&store, plain(), &by_process)?;
    let a = store.path_info(&builtin_out)?.unwrap();
    let b = store.path_info(&process_out)?.unwrap();
    assert_eq!(a.nar_hash, b.nar_hash);
    assert_eq!(
        nar::hash_path(&store.physical(&builtin_out), HashAlgo::Sha256)?,
        nar::hash_path(&store.physical(&process_out), HashAlgo::Sha256)?
    );
    Ok(())
}

#[test]
fn an_executable_script_and_its_references() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let dep_drv = write_file(&store, "dep", "data");
    let dep = build_out(&store, plain(), &dep_drv)?;
    let dep_drv_path = store.add_derivation(&dep_drv)?;
    let mut d = Derivation::new("script", "builtin", builtin::WRITE_FILE);
    d.env.insert(
        "text".into(),
        format!("#!/bin/sh\ncat {}\n", store.store_dir().display(&dep)),
    );
    d.env.insert("executable".into(), "1".into());
    d.input_drvs
        .insert(dep_drv_path, BTreeSet::from([OutputName::out()]));
    fill(&store, &mut d);
    let out = build_out(&store, plain(), &d)?;
    let out_file = store.physical(&out);
    let out_text = std::process::Command::new(&out_file).output()?;
    assert_eq!(out_text.stdout, b"data");
    assert_eq!(store.references(&out)?, BTreeSet::from([dep]));
    Ok(())
}

#[test]
fn a_symlink_join_merges_trees_and_names_both_sides_of_a_conflict() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let a = sh(&store, "a", "PATH=/bin:/usr/bin; mkdir -p $out/bin $out/share/a; echo a > $out/bin/a; echo x > $out/share/a/x", &[]);
    let b = sh(
        &store,
        "b",
        "PATH=/bin:/usr/bin; mkdir -p $out/bin; echo b > $out/bin/b",
        &[],
    );
    let c = sh(
        &store,
        "c",
        "PATH=/bin:/usr/bin; mkdir -p $out/bin; echo c > $out/bin/a",
        &[],
    );
    let mut outs = Vec::new();
    let mut drvs = Vec::new();
    for d in [&a, &b, &c] {
        outs.push(build_out(&store, plain(), d)?);
        drvs.push(store.add_derivation(d)?);
    }
    let join = |which: &[usize]| {
        let mut d = Derivation::new("env", "builtin", builtin::SYMLINK_JOIN);
        let paths: Vec<String> = which
            .iter()
            .map(|&i| store.store_dir().display(&outs[i]).to_string())
            .collect();
        d.env.insert("paths".into(), paths.join(" "));
        for &i in which {
            d.input_drvs
                .insert(drvs[i].clone(), BTreeSet::from([OutputName::out()]));
        }
        fill(&store, &mut d);
        d
    };
    let env = build_out(&store, plain(), &join(&[0, 1]))?;
    let root = store.physical(&env);
    assert_eq!(std::fs::read_to_string(root.join("bin/a"))?, "a\n");
    assert_eq!(std::fs::read_to_string(root.join("bin/b"))?, "b\n");
    assert_eq!(
        std::fs::read_link(root.join("bin/b"))?,
        store.store_dir().display(&outs[1]).to_string() + "/bin/b"
    );
    assert!(std::fs::symlink_metadata(root.join("bin"))?.is_dir());
    assert_eq!(
        store.references(&env)?,
        BTreeSet::from([outs[0].clone(), outs[1].clone()])
    );
    // a and c both provide bin/a.
    let err = build_out(&store, plain(), &join(&[0, 2])).unwrap_err();
    let Error::BuildFailed(failures) = &err else {
        panic!("{err}")
    };
    let FailureKind::Builtin(why) = &failures[0].kind else {
        panic!("{err}")
    };
    assert!(
        why.contains("bin/a")
            && why.contains(&outs[0].to_string())
            && why.contains(&outs[2].to_string()),
        "{why}"
    );
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

#[test]
fn a_builtin_may_not_read_what_is_not_its_input() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let secret = build_out(&store, plain(), &write_file(&store, "secret", "s"))?;
    let mut d = Derivation::new("copy", "builtin", builtin::COPY);
    d.env
        .insert("src".into(), store.store_dir().display(&secret).to_string());
    fill(&store, &mut d);
    let err = build_out(&store, plain(), &d).unwrap_err().to_string();
    assert!(
        err.contains("is not a store path among the derivation's inputs"),
        "{err}"
    );
    Ok(())
}

#[test]
fn builtins_ready_together_fail_and_succeed_independently() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let mut targets = Vec::new();
    let mut good = Vec::new();
    for i in 0..6 {
        let mut d = write_file(&store, &format!("f{i}"), &format!("{i}\n"));
        if i == 3 {
            // No `text`: this one fails inside the round.
            d.env.clear();
            fill(&store, &mut d);
        } else {
            good.push(
                d.output_path(store.store_dir(), &OutputName::out())
                    .ok_or("known")?,
            );
        }
        targets.push((store.add_derivation(&d)?, BTreeSet::new()));
    }
    let options = bigtop_store::build::BuildOptions {
        keep_going: true,
        ..plain()
    };
    let err = Builder::new(&store)
        .options(options)
        .build(&targets)
        .unwrap_err();
    let Error::BuildFailed(failures) = &err else {
        return Err(format!("unexpected: {err}").into());
    };
    assert_eq!(failures.len(), 1, "{err}");
    assert!(err.to_string().contains("`text`"), "{err}");
    assert_eq!(store.valid_among(good.iter())?.len(), 5);
    assert_eq!(strays(&store), Vec::<String>::new());
    // The round's locks went with its registration: building the failed
    // one again fails again at once instead of waiting for its lock.
    let again = Builder::new(&store)
        .options(plain())
        .build(&targets[3..4])
        .unwrap_err();
    assert!(again.to_string().contains("`text`"), "{again}");
    Ok(())
}

fn write_tree(store: &bigtop_store::Store, entries: serde_json::Value) -> Derivation {
    let mut d = Derivation::new("tree", "builtin", builtin::WRITE_TREE);
    d.env.insert("entries".into(), entries.to_string());
    fill(store, &mut d);
    d
}

/// A tree of files and links made in-process is the archive a builder
/// process makes of the same tree, and refers to what it links to.
#[test]
fn a_written_tree_is_the_nar_a_process_would_write() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let dep_drv = write_file(&store, "dep", "data");
    let dep = build_out(&store, plain(), &dep_drv)?;
    let dep_path = store.store_dir().display(&dep).to_string();
    let mut d = write_tree(
        &store,
        serde_json::json!([
            {"path": "etc/motd", "text": "hello\n"},
            {"path": "etc/ssh/sshd_config", "text": "Port 22\n"},
            {"path": "bin/start", "text": "#!/bin/sh\nexit 0\n", "executable": true},
            {"path": "etc/data", "link": dep_path},
        ]),
    );
    d.input_drvs.insert(
        store.add_derivation(&dep_drv)?,
        BTreeSet::from([OutputName::out()]),
    );
    fill(&store, &mut d);
    let out = build_out(&store, plain(), &d)?;
    let root = store.physical(&out);
    assert_eq!(std::fs::read_to_string(root.join("etc/motd"))?, "hello\n");
    assert_eq!(
        std::fs::read_link(root.join("etc/data"))?.to_str(),
        Some(dep_path.as_str())
    );
    assert!(std::process::Command::new(root.join("bin/start"))
        .status()?
        .success());
    assert_eq!(store.references(&out)?, BTreeSet::from([dep.clone()]));

    let mut by_process = sh(
        &store,
        "tree",
        "PATH=/bin:/usr/bin; mkdir -p $out/etc/ssh $out/bin; printf 'hello\\n' > $out/etc/motd; \
         printf 'Port 22\\n' > $out/etc/ssh/sshd_config; printf '#!/bin/sh\\nexit 0\\n' > $out/bin/start; \
         chmod +x $out/bin/start; ln -s $dep $out/etc/data",
        &[],
    );
    by_process.env.insert("dep".into(), dep_path);
    fill(&store, &mut by_process);
    let process_out = build_out(&store, plain(), &by_process)?;
    assert_eq!(
        nar::hash_path(&root, HashAlgo::Sha256)?,
        nar::hash_path(&store.physical(&process_out), HashAlgo::Sha256)?
    );
    Ok(())
}

#[test]
fn a_tree_with_a_bad_entry_fails_naming_it_and_leaves_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let cases = [
        (
            serde_json::json!([{"path": "a", "text": "1"}, {"path": "a", "text": "2"}]),
            "`a` is given twice",
        ),
        (
            serde_json::json!([{"path": "a", "text": "1"}, {"path": "a/b", "text": "2"}]),
            "`a/b` is inside `a`",
        ),
        (
            serde_json::json!([{"path": "../x", "text": "1"}]),
            "`../x` is not a relative path",
        ),
        (
            serde_json::json!([{"path": "/etc/x", "text": "1"}]),
            "`/etc/x` is not a relative path",
        ),
        (
            serde_json::json!([{"path": "x", "text": "1", "link": "/y"}]),
            "exactly one of",
        ),
        (serde_json::json!({"path": "x"}), "not a list of entries"),
    ];
    for (entries, why) in cases {
        let d = write_tree(&store, entries);
        let err = build_out(&store, plain(), &d).unwrap_err().to_string();
        assert!(err.contains(why), "{why}: {err}");
        let out = d
            .output_path(store.store_dir(), &OutputName::out())
            .expect("input-addressed");
        assert!(!store.physical(&out).exists(), "{why}: a tree was left");
    }
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

/// Issue 13: `builtin:copy` recursed by path, so an input nested past
/// `PATH_MAX` (which a build can now register) could not be copied. It is
/// copied whole: the copy has the input's NAR hash.
#[test]
fn copy_takes_an_input_nested_past_path_max() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let _cleanup = crate::sandboxed::RemoveOnDrop(tmp.path().to_owned());
    let store = direct_store(tmp.path());
    let src = tmp.path().join("src");
    let made = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            &format!("{}mkdir \"$1\" && nest \"$1\"", crate::sandboxed::NEST),
            "sh",
        ])
        .arg(&src)
        .status()?;
    assert!(made.success());
    let input = store.add_path("deep", &src, &|_| true)?;
    let mut d = Derivation::new("copy", "builtin", builtin::COPY);
    d.env
        .insert("src".into(), store.store_dir().display(&input).to_string());
    d.input_srcs.insert(input.clone());
    fill(&store, &mut d);
    let out = build_out(&store, plain(), &d)?;
    let hash = |p| store.path_info(p).map(|i| i.map(|i| i.nar_hash));
    assert_eq!(hash(&out)?, hash(&input)?);
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

/// Issue 13: `builtin:symlinkJoin` of an input nested past `PATH_MAX`
/// ends cleanly, however it ends: no crash, and nothing left but
/// registered paths.
#[test]
fn a_join_of_an_input_nested_past_path_max_ends_cleanly() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let _cleanup = crate::sandboxed::RemoveOnDrop(tmp.path().to_owned());
    let store = direct_store(tmp.path());
    let src = tmp.path().join("src");
    let made = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            &format!("{}mkdir \"$1\" && nest \"$1\"", crate::sandboxed::NEST),
            "sh",
        ])
        .arg(&src)
        .status()?;
    assert!(made.success());
    let input = store.add_path("deep", &src, &|_| true)?;
    let mut d = Derivation::new("env", "builtin", builtin::SYMLINK_JOIN);
    d.env.insert(
        "paths".into(),
        store.store_dir().display(&input).to_string(),
    );
    d.input_srcs.insert(input.clone());
    fill(&store, &mut d);
    // Its links would need targets longer than a symlink may hold: today
    // it fails, at `PATH_MAX`.
    if let Err(e) = build_out(&store, plain(), &d) {
        assert!(e.to_string().contains("cannot"), "{e}");
    }
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}
