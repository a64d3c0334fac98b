//! The example fleet's web machine, booted and switched: what a change
//! restarts, what it reloads, what it leaves alone; and the quickstart,
//! which does the same from a user's first command.

use bigtop::activate::engine::{Mode, Options, Quiet};
use bigtop::activate::Machine;
use bigtop::eval::drv::Platform;
use bigtop::eval::fleet::Fleet;
use bigtop::eval::module::{force, Module};
use bigtop::store::build::Builder;

use crate::{definition, example, pids, run_in, Booted, Result};

fn build(fleet: &Fleet, m: &Machine) -> Result<String> {
    let machine = fleet
        .machines()
        .iter()
        .find(|x| x.name() == "acme-web1")
        .ok_or("no acme-web1")?;
    let top = fleet.eval_machine(machine)?.toplevel;
    let built = bigtop::realise::realise(
        m.store(),
        &Builder::new(m.store()),
        std::slice::from_ref(&top.drv),
    )?;
    Ok(m.store().store_dir().full(&built.path(&top.drv.out())?))
}

fn get(m: &Machine, port: u16) -> Result<String> {
    let script = format!("print IO::Socket::INET->new('127.0.0.1:{port}')->getlines");
    let (_, out) = run_in(m, &["perl", "-MIO::Socket::INET", "-e", &script])?;
    Ok(out.lines().last().unwrap_or_default().to_owned())
}

#[test]
fn the_fleet_examples_web_machine_restarts_the_shop_and_reloads_the_web_server() -> Result {
    let booted = Booted::new()?;
    let m = &booted.machine;
    let platform = Platform::default();
    let first = build(&definition::fleet(&platform)?, m)?;
    m.activate(&first, Mode::Switch, &Options::default(), &Quiet)?;
    let before = pids(m)?;
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(get(m, 8080)?, "webserver 2.0");
    assert_eq!(get(m, 8000)?, "shop 2.0");

    // The shop moves to another database (its environment changes: it
    // restarts); a second virtual host changes the web server's
    // configuration (its restart trigger: it reloads, as it declares).
    let changed = definition::fleet(&platform)?.module(Module::new("change", |c| {
        c.define("services.shop.database", force("acme-db2:5432"));
        c.define(
            "services.web.vhosts.\"admin.acme.example\".upstream",
            "127.0.0.1:8000",
        );
    }));
    let second = build(&changed, m)?;
    let report = m.activate(&second, Mode::Switch, &Options::default(), &Quiet)?;
    assert_eq!(report.plan.start_order, ["shop"]);
    assert_eq!(report.plan.reload_order, ["web"]);
    let after = pids(m)?;
    assert_ne!(after["shop"], before["shop"]);
    assert_eq!(after["web"], before["web"], "reloaded, not restarted");
    let log = std::fs::read_to_string(m.path("/var/log/web/current"))?;
    assert!(log.contains("webserver: reloaded"), "{log}");
    assert_eq!(
        run_in(m, &["grep", "-c", "vhost", "/etc/web/vhosts.conf"])?.1,
        "2\n"
    );

    // Back: the shop restarts with the old database, the web server
    // reloads the old configuration, still the same process.
    m.rollback(None, &Options::default(), &Quiet)?;
    let back = pids(m)?;
    assert_eq!(back["web"], before["web"]);
    assert_ne!(back["shop"], after["shop"]);
    let (_, env) = run_in(
        m,
        &[
            "sh",
            "-c",
            &format!("tr '\\0' '\\n' < /proc/{}/environ", back["shop"]),
        ],
    )?;
    assert!(env.contains("DATABASE=acme-db1:5432"), "{env}");
    assert_eq!(
        run_in(m, &["grep", "-c", "vhost", "/etc/web/vhosts.conf"])?.1,
        "1\n"
    );
    Ok(())
}

/// The README's first command, end to end.
#[test]
fn the_quickstart_runs_end_to_end() -> Result {
    let out = example::run(&example::example("quickstart")?, &[])?;
    for line in [
        "answers: webserver 2.0",
        "answers: shop 2.0",
        "\"action\": \"restart\"",
        "environment changed (DATABASE)",
        "shop: pid",
        "(restarted)",
        "back on generation 1",
        "stopped",
    ] {
        assert!(out.contains(line), "`{line}` missing from:\n{out}");
    }
    let web = out.lines().find(|l| l.starts_with("  web: pid"));
    assert!(web.is_some_and(|l| l.ends_with("(kept)")), "{out}");
    Ok(())
}
