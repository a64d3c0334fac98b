//! The systemd backend, as far as it can be checked without a host booted
//! with systemd: every rendered unit passes the real `systemd-analyze
//! verify`, and a plan's `systemctl` calls come in the right order. A
//! switch through systemctl itself is not run here (see the README).

use std::process::Command;

use bigtop::activate::plan::{diff, Observed};
use bigtop::activate::services::systemd::calls;
use bigtop::core::manifest::Manifest;
use bigtop::eval::module::{Config, Module, ModuleBuilder};
use bigtop::eval::system;
use bigtop::eval::trivial;
use bigtop::store::build::{BuildOptions, Builder, Sandboxing};

use crate::Result;

#[path = "../support/store.rs"]
mod support;

fn services(m: &mut ModuleBuilder, tool: &bigtop::eval::drv::Drv, version: &str) {
    m.define("system.services.db.argv", vec!["/bin/sleep", "1000"]);
    m.define(
        "system.services.app.argv",
        vec![
            bigtop::eval::text!("{}", tool),
            "100% $HOME \"quoted\" it's".into(),
            version.into(),
        ],
    );
    m.define("system.services.app.requires", vec!["db"]);
    m.define(
        "system.services.app.environment.GREETING",
        "hello $USER 50%",
    );
    m.define("system.services.app.working_directory", "/tmp");
    m.define("system.services.app.user", "app");
    m.define("system.services.app.group", "app");
    m.define("users.users.app.group", "app");
    m.define(
        "users.groups.app",
        bigtop::eval::module::Value::Map(Default::default()),
    );
    m.define("system.services.web.argv", vec!["/bin/sleep", "1000"]);
    m.define("system.services.web.after", vec!["app"]);
    m.define("system.services.web.on_change", "reload");
    m.define("system.services.web.reload", vec!["/bin/kill", "-HUP", "1"]);
    m.define("system.services.web.restart", "always");
    // What a NixOS user ports: a target to start after, limits, systemd
    // settings bigtop has no option for, readiness.
    let web = system::SERVICES.entry("web");
    m.set(web.after, ["app", "network-online.target"]);
    m.set(web.limits.open_files, 65536);
    m.set(web.limits.processes, 512);
    m.set(web.systemd.service.entry("ProtectSystem"), "strict");
    m.set(web.systemd.unit.entry("StartLimitBurst"), "5");
    let db = system::SERVICES.entry("db");
    m.set(
        db.ready,
        Some(system::ReadyOptions {
            tcp_port: Some(5432),
            command: Some(vec!["/bin/true".into()]),
            timeout_ms: 5000,
            notify: false,
        }),
    );
}

#[test]
fn every_rendered_unit_passes_systemd_analyze_verify() -> Result {
    let tmp = tempfile::tempdir()?;
    let (store, platform) = support::direct(tmp.path())?;
    let tool = trivial::write_script(&platform, "app", "/bin/sh", "exec sleep 1000\n")?;
    let t = tool.clone();
    let host = Module::new("host", move |m| {
        m.import(&system::module());
        m.define("system.name", "web1");
        services(m, &t, "1");
    });
    let cfg = Config::eval(&[host], None)?;
    let top = system::toplevel(&cfg, &platform)?;
    let builder = Builder::new(&store).options(BuildOptions {
        sandbox: Sandboxing::Disabled,
        ..BuildOptions::default()
    });
    let built = bigtop::realise::realise(&store, &builder, std::slice::from_ref(&top.drv))?;
    let units = store.physical(&built.path(&top.drv.out())?).join("systemd");
    let mut names: Vec<String> = std::fs::read_dir(&units)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    assert_eq!(names, ["app.service", "db.service", "web.service"]);
    for name in &names {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(units.join(name))
            // Dependencies are found beside the unit.
            .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))
            .output()?;
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // What systemd-analyze accepted holds what was asked for.
    let web = std::fs::read_to_string(units.join("web.service"))?;
    for line in [
        "After=app.service network-online.target",
        "StartLimitBurst=5",
        "LimitNOFILE=65536",
        "LimitNPROC=512",
        "ProtectSystem=strict",
    ] {
        assert!(web.lines().any(|l| l == line), "{line} missing in\n{web}");
    }
    let db = std::fs::read_to_string(units.join("db.service"))?;
    for line in [
        r#"ExecStartPost=/bin/sh -c "until nc -z 127.0.0.1 5432; do sleep 0.1; done""#,
        r#"ExecStartPost=/bin/sh -c "until '/bin/true'; do sleep 0.1; done""#,
        "TimeoutStartSec=5000ms",
    ] {
        assert!(db.lines().any(|l| l == line), "{line} missing in\n{db}");
    }
    // The check is real: a unit naming a program that is not there fails.
    let broken = tmp.path().join("broken.service");
    std::fs::write(&broken, "[Service]\nExecStart=/nonexistent/program\n")?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&broken)
        .output()?;
    assert!(!out.status.success());
    Ok(())
}

fn manifest(version: &str, web_flag: bool) -> Result<Manifest> {
    let platform = bigtop::eval::drv::Platform::default();
    let tool = trivial::write_script(&platform, "app", "/bin/sh", "exec sleep 1000\n")?;
    let version = version.to_owned();
    let host = Module::new("host", move |m| {
        m.import(&system::module());
        m.define("system.name", "web1");
        services(m, &tool, &version);
        if web_flag {
            m.define("system.services.web.environment.FLAG", "1");
        }
    });
    let cfg = Config::eval(&[host], None)?;
    Ok(serde_json::from_value(
        system::toplevel(&cfg, &platform)?.manifest,
    )?)
}

#[test]
fn a_plan_becomes_systemctl_calls_in_dependency_order() -> Result {
    let (old, new) = (manifest("1", false)?, manifest("2", true)?);
    let running = Observed {
        running: ["app", "db", "web"].map(String::from).into(),
        ..Observed::default()
    };
    let first = calls(&diff(None, &old, &Observed::default()));
    let words = |c: &[Vec<String>]| -> Vec<String> { c.iter().map(|c| c[1..].join(" ")).collect() };
    assert_eq!(
        words(&first),
        [
            "daemon-reload",
            "start db.service",
            "start app.service",
            "start web.service"
        ]
    );
    let switch = calls(&diff(Some(&old), &new, &running));
    assert_eq!(
        words(&switch),
        [
            "stop app.service",
            "daemon-reload",
            "start app.service",
            "reload web.service"
        ]
    );
    assert!(switch.iter().all(|c| c[0] == "systemctl"));
    Ok(())
}
