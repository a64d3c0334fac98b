//! Package sets: laziness, overlays, overrides, cycles, releases side by
//! side.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bigtop_eval::drv::{Drv, DrvBuilder, Platform, Str};
use bigtop_eval::set::{Args, PackageSet};
use bigtop_eval::{text, Error};

use crate::TestResult;

/// A package `name-version` whose script names each of `deps`.
fn pkg(a: &Args, name: &str, version: &str, deps: &[&str]) -> Result<Drv, Error> {
    let mut script = Str::from("echo");
    for d in deps {
        script.push(text!(" {}", a.get(d)?));
    }
    script.push(" > $out");
    DrvBuilder::new(format!("{name}-{version}"))
        .builder("/bin/sh")
        .arg("-c")
        .arg(script)
        .build(a.platform())
}

fn base() -> PackageSet {
    PackageSet::new(Platform::default())
        .add("zlib", |a| pkg(a, "zlib", "1.3", &[]))
        .add("openssl", |a| pkg(a, "openssl", "3.0", &["zlib"]))
        .add("curl", |a| pkg(a, "curl", "8.5", &["openssl", "zlib"]))
        .add("git", |a| pkg(a, "git", "2.43", &["curl", "zlib"]))
        .add("python", |a| pkg(a, "python", "3.12", &["openssl"]))
        .add("jq", |a| pkg(a, "jq", "1.7", &[]))
}

fn paths(set: &PackageSet) -> Result<BTreeMap<String, String>, Error> {
    let pkgs = set.eval();
    pkgs.all()
        .into_iter()
        .map(|(n, d)| Ok((n, d?.drv_path().to_string())))
        .collect()
}

#[test]
fn an_overlay_replacing_a_library_changes_exactly_its_dependents() -> TestResult {
    let before = paths(&base())?;
    let patched = base().overlay(|o| {
        o.add("openssl", |a| {
            // Built on what it replaces, as an overlay usually is.
            let old = a.prev()?;
            DrvBuilder::new("openssl-3.0")
                .builder("/bin/sh")
                .arg("-c")
                .arg(text!("cp {} $out; echo patched >> $out", old))
                .build(a.platform())
        });
    });
    let after = paths(&patched)?;
    let changed: Vec<&String> = before.keys().filter(|n| before[*n] != after[*n]).collect();
    insta::assert_snapshot!(
        changed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        @r"
    curl
    git
    openssl
    python
    "
    );
    // The replaced package is built from the old one.
    let pkgs = patched.eval();
    let openssl = pkgs.get("openssl")?;
    assert_eq!(
        openssl.input_derivations()[0].drv_path().to_string(),
        before["openssl"]
    );
    Ok(())
}

#[test]
fn a_package_is_evaluated_once_on_first_use() -> TestResult {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let set = base().add("counted", move |a| {
        counted.fetch_add(1, Ordering::SeqCst);
        pkg(a, "counted", "1", &["zlib"])
    });
    let pkgs = set.eval();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "nothing is evaluated up front"
    );
    let first = pkgs.get("counted")?;
    let second = pkgs.clone().get("counted")?;
    assert_eq!(first, second);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[test]
fn override_replaces_an_input_and_override_of_an_unknown_input_is_named() -> TestResult {
    let pkgs = base().eval();
    let curl = pkgs.get("curl")?;
    let other_zlib = DrvBuilder::new("zlib-ng-2.1")
        .builder("/bin/sh")
        .build(pkgs.platform())?;
    let curl2 = curl.override_inputs([("zlib", other_zlib.clone())])?;
    assert_ne!(curl2.drv_path(), curl.drv_path());
    assert!(curl2.input_derivations().contains(&other_zlib));
    // The set is unchanged.
    assert_eq!(pkgs.get("curl")?, curl);
    let err = curl.override_inputs([("zlb", other_zlib)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`curl` takes no input `zlb` (it takes: `openssl`, `zlib`)"
    );
    Ok(())
}

#[test]
fn a_cycle_is_reported_with_its_chain() -> TestResult {
    let set = base()
        .add("a", |a| pkg(a, "a", "1", &["b"]))
        .add("b", |a| pkg(a, "b", "1", &["c"]))
        .add("c", |a| pkg(a, "c", "1", &["a"]));
    let err = set.eval().get("a").unwrap_err();
    assert_eq!(
        err.to_string(),
        "packages depend on each other: a -> b -> c -> a"
    );
    // What does not touch the cycle is fine.
    assert!(set.eval().get("git").is_ok());
    Ok(())
}

#[test]
fn a_missing_package_suggests_close_names() -> TestResult {
    let set = base().add("app", |a| pkg(a, "app", "1", &["opensll"]));
    let err = set.eval().get("app").unwrap_err();
    let mut chain = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        src = s.source();
    }
    assert_eq!(
        chain,
        "in package `app`: no package `opensll` in this package set; did you mean `openssl`?"
    );
    Ok(())
}

#[test]
fn two_releases_evaluate_side_by_side_and_share_what_is_identical() -> TestResult {
    let last_year = base();
    let this_year = base().overlay(|o| {
        o.add("curl", |a| pkg(a, "curl", "8.6", &["openssl", "zlib"]));
    });
    let (old, new) = (last_year.eval(), this_year.eval());
    assert_eq!(old.get("openssl")?, new.get("openssl")?);
    assert_ne!(old.get("git")?, new.get("git")?);
    assert_eq!(old.get("curl")?.name(), "curl-8.5");
    assert_eq!(new.get("curl")?.name(), "curl-8.6");
    // The old release's paths are exactly what they were.
    assert_eq!(paths(&last_year)?, paths(&base())?);
    Ok(())
}

#[test]
fn all_evaluates_on_every_core_and_a_cycle_across_threads_is_an_error_not_a_hang() -> TestResult {
    // Each recipe waits before asking for the other, so that with two
    // threads each holds one package while asking for the other's.
    let slow = |me: &'static str, other: &'static str| {
        move |a: &Args| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            pkg(a, me, "1", &[other])
        }
    };
    let set = base().add("a", slow("a", "b")).add("b", slow("b", "a"));
    let all = set.eval().all();
    for name in ["a", "b"] {
        let err = all[name].as_ref().unwrap_err();
        let mut text = err.to_string();
        let mut src = std::error::Error::source(err);
        while let Some(s) = src {
            text.push_str(&s.to_string());
            src = s.source();
        }
        assert!(text.contains("depend on each other"), "{name}: {text}");
    }
    // Everything else evaluated, identical to one thread's evaluation.
    assert_eq!(
        all["git"].as_ref().map_err(|e| e.to_string())?,
        &base().eval().get("git")?
    );
    assert_eq!(all.len(), base().names().len() + 2);
    Ok(())
}

/// Regression: a recipe that panics while the whole set is evaluated on
/// every core is that package's error; it used to vanish from the result
/// with the worker thread that ran it.
#[test]
fn a_panicking_recipe_is_its_packages_error_in_a_whole_set() {
    let set = bigtop_eval::set::PackageSet::new(bigtop_eval::drv::Platform::default())
        .add("fine", |a| {
            bigtop_eval::trivial::write_text(a.platform(), "fine", "ok")
        })
        .add(
            "broken",
            |_| -> Result<bigtop_eval::drv::Drv, bigtop_eval::Error> { panic!("no such file") },
        );
    let all = set.eval().all();
    assert_eq!(all.len(), 2);
    assert!(all["fine"].is_ok());
    let e = all["broken"].as_ref().expect_err("it panicked");
    let Error::InPackage { name, source } = e else {
        panic!("expected the package's error, got {e}");
    };
    assert_eq!(name, "broken");
    assert_eq!(source.to_string(), "its recipe panicked: no such file");
}

/// Regression: rayon's threads outlive a call. A recipe that panicked
/// used to leave its package on its thread's stack of packages being
/// evaluated, so asking again on that thread reported a cycle instead of
/// running the recipe (and panicking) again.
#[test]
fn asking_again_for_a_package_whose_recipe_panicked_runs_it_again() {
    let pkgs = PackageSet::new(Platform::default())
        .add("broken", |_| -> Result<Drv, Error> {
            panic!("no such file")
        })
        .eval();
    for _ in 0..3 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pkgs.get("broken")));
        match r {
            Err(_) => {}
            Ok(got) => panic!("expected the recipe to panic again, got {got:?}"),
        }
    }
}

/// A recipe that evaluates a whole set (parallel work inside a package
/// that other parallel jobs wait for) finishes, with every result. Its
/// thread must not take one of the waiting jobs while it holds the
/// package, or that job waits on its own thread for ever; rayon's
/// stealing order makes that rare, so this test guards the path rather
/// than reproducing the hang reliably (`Pkgs::all` avoids it by
/// construction).
#[test]
fn a_recipe_evaluating_a_whole_set_does_not_wait_on_itself() -> TestResult {
    let mut inner = PackageSet::new(Platform::default());
    for i in 0..200 {
        inner = inner.add(format!("i{i}"), move |a| {
            // Slow enough that idle threads steal some of the work.
            std::thread::sleep(std::time::Duration::from_millis(1));
            bigtop_eval::trivial::write_text(a.platform(), &format!("i{i}"), "x")
        });
    }
    let inner = inner.eval();
    let mut outer = PackageSet::new(Platform::default()).add("shared", move |a| {
        let n = inner.all().values().filter(|r| r.is_ok()).count();
        bigtop_eval::trivial::write_text(a.platform(), "shared", n.to_string())
    });
    for o in 0..32 {
        outer = outer.add(format!("o{o}"), move |a| {
            pkg(a, &format!("o{o}"), "1", &["shared"])
        });
        // Packages that need nothing keep other threads free to steal.
        outer = outer.add(format!("free{o}"), move |a| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            pkg(a, &format!("free{o}"), "1", &[])
        });
    }
    let outer = outer.eval();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(outer.all());
    });
    let all = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .map_err(|_| "evaluating the set hung")?;
    for (name, r) in &all {
        r.as_ref().map_err(|e| format!("{name}: {e}"))?;
    }
    assert_eq!(all.len(), 65);
    Ok(())
}

#[test]
fn recipes_take_the_stdenv_and_other_values_from_the_set_and_an_overlay_replaces_them() -> TestResult
{
    use bigtop_eval::package::{Package, Phase, Stdenv};
    let p = Platform::default();
    let plain = Stdenv::new(&p, "/bin/sh", Vec::<Str>::new())?;
    let set = PackageSet::new(p.clone())
        .stdenv(plain.clone())
        .value("greeting", String::from("hello"))
        .add("greet", |a| {
            let greeting = a.value::<String>("greeting")?;
            Package::new("greet")
                .version("1")
                .phase(Phase::Install, format!("echo {greeting} > $out"))
                .build(&a.stdenv()?)
        })
        .add("app", |a| {
            let greet = a.get("greet")?;
            Package::new("app")
                .version("1")
                .phase(Phase::Install, text!("cat {}/ > $out", greet))
                .build(&a.stdenv()?)
        });
    let v1 = set.eval();
    // The same package built with the stdenv given by hand: the set's
    // stdenv is the one recipes got.
    let by_hand = Package::new("greet")
        .version("1")
        .phase(Phase::Install, "echo hello > $out")
        .build(&plain)?;
    assert_eq!(v1.get("greet")?.drv_path(), by_hand.drv_path());

    // An overlay replacing the stdenv rebuilds every package with it.
    let debug = plain.with_env("NIX_DEBUG", "1");
    let v2 = set.clone().overlay(|o| {
        o.stdenv(debug);
    });
    let v2 = v2.eval();
    assert_ne!(v1.get("greet")?.drv_path(), v2.get("greet")?.drv_path());
    assert_ne!(v1.get("app")?.drv_path(), v2.get("app")?.drv_path());

    // A value not given, or asked for as another type, is named.
    let missing = PackageSet::new(p.clone())
        .value("greeting", 1u32)
        .add("x", |a| {
            let _ = a.value::<String>("greetng")?;
            unreachable!("the value does not exist")
        })
        .add("y", |a| {
            let _ = a.value::<String>("greeting")?;
            unreachable!("the value is not a string")
        })
        .add("z", |a| Package::new("z").build(&a.stdenv()?))
        .eval();
    let chain = |e: Error| {
        let mut out = e.to_string();
        let mut at: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = at {
            out.push_str(": ");
            out.push_str(&s.to_string());
            at = s.source();
        }
        out
    };
    let e = chain(missing.get("x").expect_err("no such value"));
    assert!(
        e.contains("no value `greetng`") && e.contains("did you mean `greeting`"),
        "{e}"
    );
    let e = chain(missing.get("y").expect_err("wrong type"));
    assert!(
        e.contains("`greeting` of this package set is not a `alloc::string::String`"),
        "{e}"
    );
    let e = chain(missing.get("z").expect_err("no stdenv"));
    assert!(e.contains("no value `stdenv`"), "{e}");
    Ok(())
}
