//! Fleets: releases, tags, shared package derivations, per-machine errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bigtop_eval::drv::{Drv, Platform};
use bigtop_eval::fleet::{Fleet, Machine};
use bigtop_eval::module::{lazy, Module};
use bigtop_eval::set::PackageSet;
use bigtop_eval::{text, trivial};

use crate::TestResult;

/// A release whose `app` says `version`; `calls` counts how often its
/// recipe runs.
fn release(version: &'static str, calls: Arc<AtomicUsize>) -> bigtop_eval::set::Pkgs {
    PackageSet::new(Platform::default())
        .add("app", move |a| {
            calls.fetch_add(1, Ordering::SeqCst);
            trivial::write_script(
                a.platform(),
                "app",
                "/bin/sh",
                format!("echo app {version}; exec sleep 1000\n"),
            )
        })
        .eval()
}

fn app_service() -> Module {
    Module::new("app-service", |m| {
        m.define(
            "system.services.app.argv",
            lazy(|c| {
                let app: Drv = c.pkgs()?.get("app")?;
                Ok(vec![text!("{}", app)])
            }),
        );
    })
}

fn fleet(new_version: &'static str, calls: Arc<AtomicUsize>) -> Fleet {
    let web_tag = Module::new("tag/web", |m| {
        m.define("etc.role.text", "web\n");
    });
    Fleet::new(Platform::default())
        .release("2025.11", release("1.0", Arc::new(AtomicUsize::new(0))))
        .release("2026.11", release(new_version, calls))
        .module(app_service())
        .tag_module("web", web_tag)
        .machine(Machine::new("web1", "2026.11").tag("web"))
        .machine(Machine::new("web2", "2026.11").tag("web"))
        .machine(Machine::new("db1", "2026.11").tag("db"))
        .machine(Machine::new("legacy", "2025.11").tag("web"))
}

#[test]
fn machines_share_their_release_and_a_pinned_machine_keeps_its_paths() -> TestResult {
    let calls = Arc::new(AtomicUsize::new(0));
    let a = fleet("2.0", calls.clone()).eval();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "`app` is evaluated once for 3 machines"
    );
    let top = |r: &std::collections::BTreeMap<String, Result<bigtop_eval::fleet::Evaluated, _>>,
               m: &str| {
        r[m].as_ref()
            .map(|e| e.toplevel.drv.drv_path().clone())
            .map_err(|e: &bigtop_eval::module::Errors| e.to_string())
    };
    for m in ["web1", "web2", "db1", "legacy"] {
        top(&a, m)?;
    }
    let web1 = a["web1"].as_ref().map_err(|e| e.to_string())?;
    assert_eq!(web1.config.get::<Vec<String>>("fleet.tags")?, ["web"]);
    assert_eq!(web1.config.get::<String>("etc.role.text")?, "web\n");
    let db1 = a["db1"].as_ref().map_err(|e| e.to_string())?;
    assert!(db1.config.get::<String>("etc.role.text").is_err());

    // A new build of the current release moves every machine on it, and
    // not the one pinned to last year's.
    let b = fleet("2.1", Arc::new(AtomicUsize::new(0))).eval();
    for m in ["web1", "web2", "db1"] {
        assert_ne!(top(&a, m)?, top(&b, m)?, "{m}");
    }
    assert_eq!(top(&a, "legacy")?, top(&b, "legacy")?);
    Ok(())
}

#[test]
fn a_broken_machine_reports_all_its_errors_and_hides_nobody_elses() -> TestResult {
    let broken = Module::new("broken", |m| {
        m.define("system.services.app.user", "ghost");
        m.define("etc.motd.txt", "typo\n");
    });
    let r = fleet("2.0", Arc::new(AtomicUsize::new(0)))
        .machine(Machine::new("bad", "2026.11").module(broken))
        .machine(Machine::new("orphan", "2024.05"))
        .machine(Machine::new("web1", "2026.11"))
        .eval();
    let errs = r["bad"].as_ref().err().expect("bad fails");
    let text = errs.to_string();
    assert!(
        text.contains("`etc.motd.txt`") && text.contains("did you mean `etc.motd.text`"),
        "{text}"
    );
    assert!(text.contains("runs as user `ghost`"), "{text}");
    let orphan = r["orphan"]
        .as_ref()
        .err()
        .expect("orphan fails")
        .to_string();
    assert!(
        orphan.contains("release `2024.05`") && orphan.contains("`2025.11`, `2026.11`"),
        "{orphan}"
    );
    let twice = r["web1"]
        .as_ref()
        .err()
        .expect("two machines named web1")
        .to_string();
    assert!(twice.contains("2 machines named `web1`"), "{twice}");
    for ok in ["web2", "db1", "legacy"] {
        assert!(r[ok].is_ok(), "{ok}");
    }
    Ok(())
}

#[test]
fn a_panicking_module_fails_its_machine_only() {
    let boom = Module::new("boom", |m| {
        m.define(
            "etc.x.text",
            lazy(|_| -> Result<String, _> { panic!("kaboom") }),
        );
    });
    let r = fleet("2.0", Arc::new(AtomicUsize::new(0)))
        .machine(Machine::new("boom", "2026.11").module(boom))
        .eval();
    let e = r["boom"].as_ref().err().expect("it panicked").to_string();
    assert!(e.contains("panicked: kaboom"), "{e}");
    assert!(r["web1"].is_ok());
}

#[test]
fn each_manifest_names_its_release_and_reads_back_typed() -> TestResult {
    let fleet = fleet("2.0", Arc::new(AtomicUsize::new(0))).eval();
    for (machine, release) in [("web1", "2026.11"), ("legacy", "2025.11")] {
        let e = fleet[machine].as_ref().map_err(|e| e.to_string())?;
        let m: bigtop_core::manifest::Manifest =
            serde_json::from_value(e.toplevel.manifest.clone())?;
        assert_eq!(m.version, bigtop_core::manifest::FORMAT_VERSION);
        assert_eq!(m.name, machine);
        assert_eq!(m.release.as_deref(), Some(release));
        assert!(m.services.contains_key("app"), "{m:?}");
        assert!(m.etc["role"].hash.as_ref().is_some_and(|h| !h.is_empty()));
    }
    Ok(())
}

#[test]
fn one_machine_is_read_by_name_and_a_package_typo_names_option_module_and_machine() -> TestResult {
    let calls = Arc::new(AtomicUsize::new(0));
    let r = fleet("2.0", calls).eval();
    let web1 = r.machine("web1")?;
    assert!(web1.toplevel.manifest["services"]["app"].is_object());
    let e = r
        .machine("web3")
        .err()
        .expect("no such machine")
        .to_string();
    assert!(e.contains("no machine `web3`"), "{e}");
    assert!(e.contains("did you mean"), "{e}");

    let typo = Module::new("app-typo", |m| {
        m.define(
            "system.services.app.argv",
            lazy(|c| {
                let app: Drv = c.pkgs()?.get("ap")?;
                Ok(vec![text!("{}", app)])
            }),
        );
    });
    let r = Fleet::new(Platform::default())
        .release("r", release("1.0", Arc::new(AtomicUsize::new(0))))
        .module(typo)
        .machine(Machine::new("web1", "r"))
        .eval();
    let e = r.machine("web1").err().expect("a typo").to_string();
    for want in [
        "no package `ap`",
        "did you mean `app`",
        "system.services.app.argv",
        "app-typo",
        "web1",
    ] {
        assert!(e.contains(want), "{want:?} missing in: {e}");
    }
    Ok(())
}
