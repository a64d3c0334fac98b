//! Builds in the sandbox, in a chroot store (logical `/bigtop/store`,
//! physical in a temp dir): the store's paths appear at their logical
//! paths, and only the input closure is visible.

use std::collections::BTreeSet;

use bigtop_store::build::{BuildOptions, Builder};
use bigtop_store::core::derivation::OutputName;
use bigtop_store::Store;

use crate::{build_out, fill, sh, strays, TestResult};

fn sandboxed() -> BuildOptions {
    BuildOptions {
        max_jobs: 2,
        ..BuildOptions::default()
    }
}

#[test]
fn a_sandboxed_build_sees_its_inputs_at_their_logical_paths_and_nothing_else() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    assert_ne!(store.root(), store.store_dir().as_path());
    let unrelated = store.add_text("unrelated", b"secret", &BTreeSet::new())?;
    let a = sh(&store, "a", "echo from-a > $out", &[]);
    let a_drv = store.add_derivation(&a)?;
    let a_out = a
        .output_path(store.store_dir(), &OutputName::out())
        .unwrap();
    let mut b = sh(
        &store,
        "b",
        "read x < $in0; for p in $BIGTOP_STORE/*; do echo \"seen $p\"; done > $out; echo \"$x\" >> $out; \
         if read y < $BIGTOP_STORE/$hidden; then echo leaked >> $out; fi",
        &[],
    );
    b.input_drvs
        .insert(a_drv, BTreeSet::from([OutputName::out()]));
    b.env
        .insert("in0".into(), store.store_dir().display(&a_out).to_string());
    b.env.insert("hidden".into(), unrelated.to_string());
    fill(&store, &mut b);
    let b_out = build_out(&store, sandboxed(), &b)?;
    let text = std::fs::read_to_string(store.physical(&b_out))?;
    let dir = store.store_dir();
    // Its own output and its input, nothing else (the shell sorts the glob).
    let mut seen = [
        dir.display(&a_out).to_string(),
        dir.display(&b_out).to_string(),
    ];
    seen.sort();
    assert_eq!(
        text,
        format!("seen {}\nseen {}\nfrom-a\n", seen[0], seen[1]),
        "{text}"
    );
    // It names itself and its input: both references are found.
    assert_eq!(store.references(&b_out)?, BTreeSet::from([a_out, b_out]));
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

#[test]
fn a_chroot_store_opened_by_a_relative_path_builds_in_the_sandbox() -> TestResult {
    // Relative to the test's working directory, which the builder is not in.
    let tmp = tempfile::tempdir_in(".")?;
    let relative = tmp
        .path()
        .strip_prefix(std::env::current_dir()?)
        .unwrap_or(tmp.path());
    assert!(relative.is_relative(), "{}", relative.display());
    let store = Store::open_chroot(relative)?;
    assert!(store.root().is_absolute() && store.state_dir().is_absolute());
    let d = sh(&store, "rel", "echo hi > $out", &[]);
    let out = build_out(&store, sandboxed(), &d)?;
    assert_eq!(std::fs::read_to_string(store.physical(&out))?, "hi\n");
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

#[test]
fn the_log_records_the_host_paths_a_build_saw() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let d = sh(&store, "x", "echo > $out", &[]);
    let drv = store.add_derivation(&d)?;
    Builder::new(&store)
        .options(sandboxed())
        .build(&[(drv.clone(), BTreeSet::new())])?;
    let log = store.read_log(&drv)?.unwrap();
    assert!(
        log.starts_with("bigtop: host paths in the sandbox: /bin/sh"),
        "{log}"
    );
    Ok(())
}

#[test]
fn a_failed_sandboxed_build_leaves_no_scratch_behind() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let d = sh(&store, "bad", "echo half > $out; exit 2", &[]);
    let err = build_out(&store, sandboxed(), &d).unwrap_err();
    assert!(err.to_string().contains("exit code 2"), "{err}");
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

#[test]
fn outputs_referring_to_each_other_are_refused_sandboxed() -> TestResult {
    let tmp = tempfile::tempdir()?;
    crate::outputs_in_a_cycle_are_refused(&Store::open_chroot(tmp.path())?, sandboxed())
}

#[test]
fn check_mode_tells_a_deterministic_build_from_one_that_is_not() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let same = sh(&store, "same", "echo fixed > $out", &[]);
    let random = sh(
        &store,
        "random",
        "read -r x < /dev/urandom; echo \"$x\" > $out",
        &[],
    );
    for (d, identical) in [(&same, true), (&random, false)] {
        let drv = store.add_derivation(d)?;
        let targets = [(drv.clone(), BTreeSet::new())];
        Builder::new(&store).options(sandboxed()).build(&targets)?;
        let before = store.path_info(
            &d.output_path(store.store_dir(), &OutputName::out())
                .unwrap(),
        )?;
        let report = Builder::new(&store)
            .options(BuildOptions {
                check: true,
                ..sandboxed()
            })
            .build(&targets)?;
        assert_eq!(report.checks.len(), 1);
        assert_eq!(report.checks[0].identical(), identical, "{}", d.name);
        // The registered output is untouched.
        let after = store.path_info(&report.checks[0].path)?;
        assert_eq!(before.map(|i| i.nar_hash), after.map(|i| i.nar_hash));
    }
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

/// `verify --repair` from another handle while builds run leaves their
/// work alone: a sandbox's scratch root and an unsandboxed build's
/// output, both unregistered while the build runs.
#[test]
fn verify_leaves_running_builds_alone() -> TestResult {
    let host: Vec<(std::path::PathBuf, std::path::PathBuf)> = ["/bin", "/usr", "/lib", "/lib64"]
        .into_iter()
        .filter(|p| std::path::Path::new(p).exists())
        .map(|p| (p.into(), p.into()))
        .collect();
    for in_sandbox in [true, false] {
        let tmp = tempfile::tempdir()?;
        let store = if in_sandbox {
            Store::open_chroot(tmp.path())?
        } else {
            crate::direct_store(tmp.path())
        };
        let mut d = sh(
            &store,
            "slow",
            "mkdir $out; /bin/sleep 1; echo done > $out/f",
            &[],
        );
        d.env.insert("PATH".into(), "/bin:/usr/bin".into());
        fill(&store, &mut d);
        let options = if in_sandbox {
            BuildOptions {
                sandbox_paths: Some(host.clone()),
                ..sandboxed()
            }
        } else {
            crate::plain()
        };
        let root = store.root().to_owned();
        let verified = std::thread::scope(|s| {
            let build = s.spawn(|| build_out(&store, options, &d));
            // Until the build's work shows in the store dir.
            let busy = |n: &str| n.starts_with(".chroot-") || n.ends_with("-slow");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !std::fs::read_dir(&root)
                .map(|r| r.flatten().any(|e| busy(&e.file_name().to_string_lossy())))
                .unwrap_or(false)
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the build never started"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let other = if in_sandbox {
                Store::open_chroot(tmp.path())
            } else {
                Ok(crate::direct_store(tmp.path()))
            };
            let report = other.and_then(|o| {
                o.verify(bigtop_store::VerifyOptions {
                    repair: true,
                    ..Default::default()
                })
            });
            (report, build.join().expect("no panic"))
        });
        let (report, built) = verified;
        assert!(report?.unregistered.is_empty(), "sandboxed: {in_sandbox}");
        let out = built?;
        assert_eq!(
            std::fs::read_to_string(store.physical(&out).join("f"))?,
            "done\n"
        );
    }
    Ok(())
}

#[test]
fn what_a_sandboxed_builder_leaves_running_dies_with_it() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    // Only /bin/sh is inside: a subshell spinning forever, holding the
    // log's pipe. The build ends when the builder does.
    let d = sh(
        &store,
        "spinner",
        "(while :; do :; done) & echo started; echo > $out",
        &[],
    );
    let drv = store.add_derivation(&d)?;
    build_out(&store, sandboxed(), &d)?;
    let log = store.read_log(&drv)?.unwrap();
    assert!(log.ends_with("\nstarted\n"), "{log}");
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

/// The host's programs, for builders that need more than `/bin/sh`.
fn host_paths() -> Vec<(std::path::PathBuf, std::path::PathBuf)> {
    ["/bin", "/usr", "/lib", "/lib64"]
        .into_iter()
        .filter(|p| std::path::Path::new(p).exists())
        .map(|p| (p.into(), p.into()))
        .collect()
}

/// Runs `script` under `/bin/sh` as `nobody` (uid and gid 65534, no
/// supplementary groups); returns whether it exited 0.
fn as_nobody(script: &str) -> bool {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("setpriv (util-linux) runs")
        .success()
}

/// Waits for a file the builder writes to show up somewhere below `dir`
/// on the host; returns its path.
fn wait_for_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let found = walk(dir).into_iter().find(|p| p.ends_with(name));
        if let Some(p) = found {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{name}` never appeared below `{}`",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// Issue 13, points 1 and 2: while a build runs, its outputs and build dir
/// sit on the host, made by a builder that (when bigtop runs as root) is
/// root there. A setuid copy of a shell in them was a root shell for any
/// local user, and a world-writable output let any user add files to what
/// was then registered. The builder tries both and waits; another user
/// must reach nothing, and the setuid bit must never be set.
#[test]
fn other_users_cannot_reach_a_running_build_and_setuid_bits_never_stick() -> TestResult {
    let tmp = tempfile::tempdir()?;
    // Other users must be able to reach the store itself, as on a host.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let store = Store::open_chroot(tmp.path())?;
    let mut d = sh(
        &store,
        "setuid",
        "mkdir $out; cp /bin/sh $out/sh; \
         if chmod 4755 $out/sh 2> $out/chmod-error; then echo > $out/chmod-allowed; fi; \
         install -m 2755 /bin/sh $out/sh2 2> $out/install-error || true; \
         chmod 777 $out /build; echo secret > /build/secret; chmod 666 /build/secret; \
         echo ready > $out/ready; \
         i=0; while [ ! -e /build/go ] && [ $i -lt 600 ]; do /bin/sleep 0.1; i=$((i+1)); done",
        &[],
    );
    d.env.insert("PATH".into(), "/bin:/usr/bin".into());
    fill(&store, &mut d);
    let options = BuildOptions {
        sandbox_paths: Some(host_paths()),
        ..sandboxed()
    };
    let root = store.root().to_owned();
    let builds = store.state_dir().join("builds");
    let (checked, built) = std::thread::scope(|s| {
        let build = s.spawn(|| build_out(&store, options, &d));
        let ready = wait_for_file(&root, "ready");
        let out = ready.parent().expect("in the output").to_owned();
        let secret = wait_for_file(&builds, "secret");
        let checked = (|| -> TestResult {
            use std::os::unix::fs::MetadataExt;
            let mode = std::fs::metadata(out.join("sh"))?.mode();
            assert_eq!(mode & 0o6000, 0, "a setuid bit was set: {mode:o}");
            assert!(!out.join("chmod-allowed").exists());
            let why = std::fs::read_to_string(out.join("chmod-error"))?;
            assert!(why.contains("not permitted"), "{why}");
            if let Ok(m) = std::fs::metadata(out.join("sh2")) {
                assert_eq!(m.mode() & 0o6000, 0, "install set {:o}", m.mode());
            }
            // The scratch root is private; so are the build dirs.
            let scratch = out
                .ancestors()
                .find(|a| a.parent() == Some(root.as_path()))
                .expect("below the store root");
            assert_eq!(std::fs::metadata(scratch)?.mode() & 0o777, 0o700);
            assert_eq!(std::fs::metadata(&builds)?.mode() & 0o777, 0o700);
            if rustix::process::geteuid().is_root() {
                let q = |p: &std::path::Path| format!("'{}'", p.display());
                // Sanity: nobody can reach the store root itself.
                assert!(as_nobody(&format!("ls {} > /dev/null", q(&root))));
                assert!(!as_nobody(&format!("ls {} > /dev/null", q(&out))));
                assert!(!as_nobody(&format!("{} -c 'id -u'", q(&out.join("sh")))));
                assert!(!as_nobody(&format!(
                    "echo x > {}",
                    q(&out.join("intruder"))
                )));
                assert!(!as_nobody(&format!("cat {}", q(&secret))));
                assert!(!out.join("intruder").exists());
            } else {
                eprintln!("not root: no other user to try the scratch area as");
            }
            Ok(())
        })();
        std::fs::write(secret.with_file_name("go"), "")?;
        let built = build.join().expect("no panic");
        Ok::<_, Box<dyn std::error::Error>>((checked, built))
    })?;
    checked?;
    let out = store.physical(&built?);
    use std::os::unix::fs::MetadataExt;
    for p in walk(&out) {
        let m = std::fs::symlink_metadata(&p)?;
        assert_eq!(m.mode() & 0o7022, 0, "{} is {:o}", p.display(), m.mode());
        assert_eq!(m.uid(), rustix::process::geteuid().as_raw());
    }
    Ok(())
}

/// Issue 13, point 2: a file in an output owned by another user stays
/// changeable by that user after registration. Canonicalization gives
/// every file to the store's owner, also when that owner is this process's
/// own user (here: root, whose builds were left alone before).
#[test]
fn outputs_are_given_to_the_store_owner_even_when_that_is_this_user() -> TestResult {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: a builder cannot give files to another user");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let store = crate::direct_store(tmp.path());
    let mut d = sh(
        &store,
        "foreign",
        "mkdir $out; echo x > $out/f; chown 65534:65534 $out/f $out",
        &[],
    );
    d.env.insert("PATH".into(), "/bin:/usr/bin".into());
    fill(&store, &mut d);
    let out = store.physical(&build_out(&store, crate::plain(), &d)?);
    use std::os::unix::fs::MetadataExt;
    for p in [out.join("f"), out] {
        let m = std::fs::symlink_metadata(&p)?;
        assert_eq!((m.uid(), m.gid()), (0, 0), "{}", p.display());
    }
    Ok(())
}

/// Regression (issue 13, point 10): a sandbox error became the failure's
/// text without its cause, so a missing builder said "Cannot execute"
/// and not why.
#[test]
fn a_missing_builder_in_the_sandbox_is_named_with_why() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let mut d = sh(&store, "nobuilder", "", &[]);
    d.builder = "/no/such/builder".into();
    fill(&store, &mut d);
    let err = build_out(&store, sandboxed(), &d).unwrap_err().to_string();
    assert!(
        err.contains("cannot execute `/no/such/builder` in the sandbox: No such file"),
        "{err}"
    );
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

/// `mkdir -p` of 2,000 levels of `dd/` below `$1`: a path three times
/// `PATH_MAX` (coreutils goes down one level at a time).
pub(crate) const NEST: &str =
    "nest() { p=dd; i=1; while [ $i -lt 2000 ]; do p=$p/dd; i=$((i+1)); done; \
                    mkdir -p \"$1/$p\" && chmod -R a-w \"$1\"; }; ";

/// Entries left in the store's build dirs.
fn build_dirs(store: &Store) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(store.state_dir().join("builds"))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// Removes what a failed test leaves, whatever its depth (a temporary
/// directory's own removal gives up on such trees).
pub(crate) struct RemoveOnDrop(pub(crate) std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(&self.0)
            .status();
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&self.0)
            .status();
    }
}

/// Issue 13: an output nested past `PATH_MAX` could not be canonicalized
/// or removed (`File name too long`): the build failed and left its
/// scratch root, and the output, unregistered, in the store. It is
/// canonicalized, scanned, hashed and registered like any other, and
/// goes again like any other.
#[test]
fn a_builder_may_nest_directories_past_path_max() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let _cleanup = RemoveOnDrop(tmp.path().to_owned());
    let store = Store::open_chroot(tmp.path())?;
    let script = format!("{NEST}mkdir $out && echo $out > $out/self && nest $out");
    let mut d = sh(&store, "deep", &script, &[]);
    d.env.insert("PATH".into(), "/bin:/usr/bin".into());
    fill(&store, &mut d);
    let options = BuildOptions {
        sandbox_paths: Some(host_paths()),
        ..sandboxed()
    };
    let out = build_out(&store, options, &d)?;
    assert!(store.is_valid(&out)?);
    assert_eq!(store.references(&out)?, BTreeSet::from([out.clone()]));
    assert_eq!(strays(&store), Vec::<String>::new());
    assert_eq!(build_dirs(&store), Vec::<std::path::PathBuf>::new());
    let report = store.verify(bigtop_store::VerifyOptions {
        check_contents: true,
        repair: false,
    })?;
    assert!(report.is_clean(), "{report:?}");
    // A new handle: the one that built the path keeps it alive.
    drop(store);
    let store = Store::open_chroot(tmp.path())?;
    store.delete_paths([&out])?;
    assert!(!store.physical(&out).exists());
    Ok(())
}

/// The same tree in the output and the build dir of a build that fails:
/// nothing is left, neither scratch root nor output nor build dir.
#[test]
fn a_failed_build_nesting_directories_past_path_max_leaves_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let _cleanup = RemoveOnDrop(tmp.path().to_owned());
    let store = Store::open_chroot(tmp.path())?;
    let script = format!("{NEST}mkdir $out /build/t && nest $out && nest /build/t && exit 3");
    let mut d = sh(&store, "deep-fail", &script, &[]);
    d.env.insert("PATH".into(), "/bin:/usr/bin".into());
    fill(&store, &mut d);
    let options = BuildOptions {
        sandbox_paths: Some(host_paths()),
        ..sandboxed()
    };
    let err = build_out(&store, options, &d).unwrap_err();
    assert!(err.to_string().contains("exit code 3"), "{err}");
    assert_eq!(strays(&store), Vec::<String>::new());
    assert_eq!(build_dirs(&store), Vec::<std::path::PathBuf>::new());
    Ok(())
}
