//! Switching a booted machine: exactly what changed restarts or reloads,
//! the rest keeps its processes, and a rollback restores the old
//! configuration.

use std::collections::BTreeMap;

use bigtop::activate::engine::{Mode, Options, Quiet};
use bigtop::activate::plan::ServiceAction;
use bigtop::activate::Machine;
use bigtop::eval::module::ModuleBuilder;

use crate::{build, cmdline, pids, run_in, Booted, Result};

/// A tiny HTTP server on 127.0.0.1:`port`, in Perl (which every Debian
/// has).
fn http(port: u16, body: &str) -> Vec<String> {
    let script = format!(
        "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1:{port}', Listen => 5, ReuseAddr => 1) or die \"listen: $!\"; \
         while (my $c = $s->accept) {{ print $c \"HTTP/1.0 200 OK\\r\\n\\r\\n{body}\\n\"; close $c }}"
    );
    vec!["/usr/bin/perl".into(), "-e".into(), script]
}

/// A service that sleeps: `version` is its length in seconds, which
/// its command line shows.
fn sleeper(m: &mut ModuleBuilder, name: &str, version: &str) {
    m.define(
        &format!("system.services.{name}.argv"),
        vec!["/bin/sleep", version],
    );
}

/// The first system, with `app` at `app_version`.
fn v1(m: &mut ModuleBuilder) {
    system(m, "1001");
    m.define("etc.motd.text", "v1\n");
}

fn system(m: &mut ModuleBuilder, app_version: &str) {
    sleeper(m, "db", "1001");
    sleeper(m, "app", app_version);
    m.define("system.services.app.requires", vec!["db"]);
    m.define("system.services.web.argv", http(8080, "v1"));
    m.define("system.services.web.ready.tcp_port", 8080);
    sleeper(m, "proxy", "1001");
    m.define("system.services.proxy.on_change", "reload");
    m.define(
        "system.services.proxy.reload",
        vec!["/bin/sh", "-c", "echo reloaded >> /var/log/proxy-reloads"],
    );
}

#[test]
fn a_switch_restarts_exactly_what_changed_and_a_rollback_restores_it() -> Result {
    let booted = Booted::new()?;
    let m = &booted.machine;
    let first = build(m, v1)?;
    let report = m.activate(&first, Mode::Switch, &Options::default(), &Quiet)?;
    assert_eq!(report.generation, Some(1));
    // Dependencies first; those free to start, by name.
    assert_eq!(report.plan.start_order, ["db", "proxy", "web", "app"]);
    let before = pids(m)?;
    assert_eq!(before.len(), 4, "{before:?}");
    let (_, page) = run_in(
        m,
        &[
            "perl",
            "-MIO::Socket::INET",
            "-e",
            "print IO::Socket::INET->new('127.0.0.1:8080')->getlines",
        ],
    )?;
    assert!(page.ends_with("v1\n"), "{page}");
    assert_eq!(run_in(m, &["cat", "/etc/motd"])?.1, "v1\n");

    // v2: app's command changes, proxy's environment (it reloads), a new
    // service; db and web as they were; motd changes.
    let second = build(m, |m| {
        system(m, "1002");
        m.define("system.services.proxy.environment.MODE", "fast");
        sleeper(m, "cache", "1002");
        m.define("etc.motd.text", "v2\n");
    })?;
    let plan = m.dry_activate(&second)?;
    let actions: BTreeMap<&str, (ServiceAction, String)> = plan
        .services
        .iter()
        .map(|c| (c.name.as_str(), (c.action, c.reasons.join("; "))))
        .collect();
    assert_eq!(
        actions["app"],
        (ServiceAction::Restart, "argv changed".into())
    );
    assert_eq!(
        actions["proxy"],
        (ServiceAction::Reload, "environment changed (MODE)".into())
    );
    assert_eq!(
        actions["cache"],
        (ServiceAction::Start, "new service".into())
    );
    assert_eq!(actions.len(), 3, "{actions:?}");
    assert_eq!(pids(m)?, before, "a dry run touches nothing");

    let report = m.activate(&second, Mode::Switch, &Options::default(), &Quiet)?;
    assert_eq!(report.generation, Some(2));
    let after = pids(m)?;
    for same in ["db", "web", "proxy"] {
        assert_eq!(after[same], before[same], "{same} keeps its process");
    }
    assert_ne!(after["app"], before["app"]);
    assert!(cmdline(m, after["app"])?.contains("sleep 1002"));
    assert!(after.contains_key("cache"));
    let reloads = std::fs::read_to_string(m.path("/var/log/proxy-reloads"))?;
    assert_eq!(reloads, "reloaded\n");
    assert_eq!(run_in(m, &["cat", "/etc/motd"])?.1, "v2\n");

    // Back to generation 1: app runs its old command, cache is gone.
    let report = m.rollback(None, &Options::default(), &Quiet)?;
    assert_eq!(report.generation, Some(1));
    let back = pids(m)?;
    assert!(!back.contains_key("cache"), "{back:?}");
    assert!(cmdline(m, back["app"])?.contains("sleep 1001"));
    assert_eq!(back["db"], before["db"]);
    assert_eq!(run_in(m, &["cat", "/etc/motd"])?.1, "v1\n");
    let gens = m.list_generations()?;
    assert_eq!(gens.len(), 2);
    assert!(gens[0].current && gens[0].default && !gens[1].current);
    Ok(())
}

#[test]
fn a_service_that_never_becomes_ready_rolls_the_switch_back() -> Result {
    let booted = Booted::new()?;
    let m = &booted.machine;
    let first = build(m, v1)?;
    m.activate(&first, Mode::Switch, &Options::default(), &Quiet)?;
    let before = pids(m)?;
    let broken = build(m, |m| {
        v1(m);
        // Listens on the wrong port: its check never passes.
        m.define("system.services.api.argv", http(9090, "api"));
        m.define("system.services.api.ready.tcp_port", 9091);
        m.define("system.services.api.ready.timeout_ms", 500);
        m.define("etc.motd.text", bigtop::eval::module::force("broken\n"));
    })?;
    let e = m
        .activate(&broken, Mode::Switch, &Options::default(), &Quiet)
        .expect_err("api never listens on 9091");
    let text = e.to_string();
    assert!(
        text.contains("service `api` did not become ready: TCP port 9091"),
        "{text}"
    );
    assert!(text.contains("rolled back to"), "{text}");
    // Back where it was: the old generation boots, api is gone, the rest
    // kept their processes.
    assert_eq!(m.current_system()?, Some(m.system(&first)?.toplevel));
    assert_eq!(m.default_generation()?, Some(1));
    let after = pids(m)?;
    assert_eq!(after, before);
    assert_eq!(run_in(m, &["cat", "/etc/motd"])?.1, "v1\n");

    // One that exits at once, with no check: caught by staying up.
    let crashing = build(m, |m| {
        v1(m);
        m.define(
            "system.services.oops.argv",
            vec!["/bin/sh", "-c", "echo no config file; exit 1"],
        );
    })?;
    let e = m
        .activate(&crashing, Mode::Switch, &Options::default(), &Quiet)
        .expect_err("oops exits");
    let text = e.to_string();
    assert!(
        text.contains("service `oops` did not become ready: it did not stay up"),
        "{text}"
    );
    assert!(text.contains("no config file"), "the log's tail: {text}");
    assert_eq!(pids(m)?, before);
    Ok(())
}

#[test]
fn an_older_release_needs_allow_downgrade() -> Result {
    let booted = Booted::new()?;
    let m = &booted.machine;
    let release = |r: &'static str| {
        move |c: &mut ModuleBuilder| {
            v1(c);
            c.define("system.release", r);
        }
    };
    let new = build(m, release("2026.11"))?;
    let old = build(m, release("2025.11"))?;
    m.activate(&new, Mode::Switch, &Options::default(), &Quiet)?;
    let e = m
        .activate(&old, Mode::Switch, &Options::default(), &Quiet)
        .expect_err("a downgrade");
    assert!(
        e.to_string()
            .contains("release `2025.11` is older than the running `2026.11`"),
        "{e}"
    );
    assert_eq!(
        m.generations()?.len(),
        1,
        "a refused switch adds no generation"
    );
    let allowed = Options {
        allow_downgrade: true,
        ..Options::default()
    };
    let report = m.activate(&old, Mode::Switch, &allowed, &Quiet)?;
    assert_eq!(report.plan.release_from.as_deref(), Some("2026.11"));
    assert_eq!(report.plan.release_to.as_deref(), Some("2025.11"));
    Ok(())
}

/// Ten machines side by side on this host, each booted and switched.
#[test]
fn ten_containers_run_side_by_side() -> Result {
    let machines: Vec<Booted> = (0..10).map(|_| Booted::new()).collect::<Result<_>>()?;
    for b in &machines {
        let top = build(&b.machine, v1)?;
        b.machine
            .activate(&top, Mode::Switch, &Options::default(), &Quiet)?;
    }
    for b in &machines {
        // Each has its own network: all ten listen on 8080.
        let (_, page) = run_in(
            &b.machine,
            &[
                "perl",
                "-MIO::Socket::INET",
                "-e",
                "print IO::Socket::INET->new('127.0.0.1:8080')->getlines",
            ],
        )?;
        assert!(page.ends_with("v1\n"), "{page}");
        assert_eq!(pids(&b.machine)?.len(), 4);
    }
    Ok(())
}

#[test]
fn a_failing_step_names_itself_and_no_rollback_keeps_the_new_state() -> Result {
    let booted = Booted::new()?;
    let m = &booted.machine;
    let first = build(m, v1)?;
    m.activate(&first, Mode::Switch, &Options::default(), &Quiet)?;
    let failing = build(m, |c| {
        v1(c);
        c.define(
            "system.activation.migrate.script",
            "echo migrating v2; echo no disk >&2; exit 3",
        );
    })?;
    let e = m
        .activate(&failing, Mode::Switch, &Options::default(), &Quiet)
        .expect_err("the step fails");
    let text = crate::chain(&e);
    assert!(
        text.contains("activation step `migrate` failed (exit status 3)"),
        "{text}"
    );
    assert!(
        text.contains("migrating v2") && text.contains("no disk"),
        "{text}"
    );
    assert!(text.contains("rolled back to"), "{text}");
    assert_eq!(m.current_system()?, Some(m.system(&first)?.toplevel));
    assert_eq!(m.default_generation()?, Some(1));

    // A service that is not ready, kept for debugging.
    let broken = build(m, |c| {
        v1(c);
        c.define("system.services.api.argv", http(9092, "api"));
        c.define("system.services.api.ready.tcp_port", 9093);
        c.define("system.services.api.ready.timeout_ms", 300);
    })?;
    let keep = Options {
        rollback_on_failure: false,
        ..Options::default()
    };
    let e = m
        .activate(&broken, Mode::Switch, &keep, &Quiet)
        .expect_err("api is never ready");
    assert!(e.to_string().contains("left in the new state"), "{e}");
    assert_eq!(m.current_system()?, Some(m.system(&broken)?.toplevel));
    assert!(pids(m)?.contains_key("api"));
    Ok(())
}

#[test]
fn deleted_generations_stop_keeping_their_toplevels_alive() -> Result {
    let booted = Booted::new()?;
    let m = &booted.machine;
    // Built through a store handle of its own: a handle keeps what it
    // built alive (temporary roots) for as long as it is open.
    let builder = Machine::open(m.root())?;
    let tops: Vec<String> = ["1", "2", "3"]
        .iter()
        .map(|v| {
            build(&builder, |c| {
                v1(c);
                c.define("etc.version.text", *v);
            })
        })
        .collect::<Result<_>>()?;
    drop(builder);
    for t in &tops {
        m.activate(t, Mode::Switch, &Options::default(), &Quiet)?;
    }
    let paths: Vec<_> = tops
        .iter()
        .map(|t| m.system(t).map(|s| s.toplevel))
        .collect::<std::result::Result<_, _>>()?;
    let gc = bigtop::store::GcOptions::default();
    m.store().collect_garbage(&gc)?;
    for p in &paths {
        assert!(
            m.store().is_valid(p)?,
            "every generation keeps its toplevel"
        );
    }
    assert_eq!(
        m.delete_generations(bigtop::activate::Keep::Newest(1))?,
        [1, 2]
    );
    let report = m.store().collect_garbage(&gc)?;
    assert!(report.deleted.contains(&paths[0]) && report.deleted.contains(&paths[1]));
    assert!(m.store().is_valid(&paths[2])?);
    assert_eq!(m.generations()?.len(), 1);
    Ok(())
}

#[test]
fn limits_are_set_soft_and_hard_under_s6() -> Result {
    let booted = Booted::new()?;
    let m = &booted.machine;
    let top = build(m, |m| {
        sleeper(m, "limited", "1001");
        let s = bigtop::eval::system::SERVICES.entry("limited");
        // Above the usual hard limit of open files (4096): s6-softlimit
        // alone could not.
        m.set(s.limits.open_files, 8192);
        m.set(s.limits.processes, 333);
    })?;
    m.activate(&top, Mode::Switch, &Options::default(), &Quiet)?;
    let pid = pids(m)?["limited"];
    let (_, limits) = run_in(m, &["cat", &format!("/proc/{pid}/limits")])?;
    let row = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert!(
        row("Max open files").starts_with("Max open files 8192 8192"),
        "{limits}"
    );
    assert!(
        row("Max processes").starts_with("Max processes 333 333"),
        "{limits}"
    );
    Ok(())
}
