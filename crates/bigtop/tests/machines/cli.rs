//! `bigtop system` and `bigtop container` as an operator runs them.

use std::process::{Command, Output};

use bigtop::activate::Machine;
use bigtop::eval::module::ModuleBuilder;

use crate::{build, run_in, Result};

fn bigtop(args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_bigtop"))
        .args(args)
        .output()?)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn system(m: &mut ModuleBuilder, version: &str) {
    m.define("system.services.app.argv", vec!["/bin/sleep", version]);
    m.define("etc.motd.text", format!("{version}\n"));
}

#[test]
fn a_machine_is_driven_from_the_command_line() -> Result {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_str().ok_or("a UTF-8 temp dir")?;
    let m = Machine::open(root)?;
    let first = build(&m, |m| system(m, "1001"))?;
    let second = build(&m, |m| system(m, "1002"))?;
    // An /etc file nobody declared, and one in the way of a declared one.
    std::fs::create_dir_all(m.path("/etc"))?;
    std::fs::write(m.path("/etc/hosts"), "127.0.0.1 localhost\n")?;
    std::fs::write(m.path("/etc/motd"), "the admin's own\n")?;

    // Booting a machine with a generation activates it.
    ok(&bigtop(&["system", "boot", "--root", root, &first])?);
    let started = ok(&bigtop(&["container", "start", root, "--name", "web1"])?);
    assert!(started.contains("container web1 runs"), "{started}");
    assert!(started.contains("generation 1 activated"), "{started}");
    let status: serde_json::Value = serde_json::from_str(&ok(&bigtop(&[
        "--json", "system", "status", "--root", root,
    ])?))?;
    assert_eq!(status["generation"], 1);
    assert_eq!(status["services"]["app"]["state"]["up"], true);
    assert_eq!(
        std::fs::read_to_string(m.path("/etc/hosts"))?,
        "127.0.0.1 localhost\n"
    );
    assert_eq!(
        std::fs::read_to_string(m.path("/etc/motd.bigtop-backup"))?,
        "the admin's own\n"
    );

    // The plan, as JSON, before the switch.
    let plan: serde_json::Value = serde_json::from_str(&ok(&bigtop(&[
        "system",
        "dry-activate",
        "--root",
        root,
        &second,
        "--json",
    ])?))?;
    assert_eq!(plan["services"][0]["name"], "app");
    assert_eq!(plan["services"][0]["action"], "restart");
    assert_eq!(plan["services"][0]["reasons"][0], "argv changed");
    assert_eq!(plan["etc"][0]["path"], "motd");

    // Two switches at once: the second waits for the first.
    let a = Command::new(env!("CARGO_BIN_EXE_bigtop"))
        .args(["system", "switch", "--root", root, &second])
        .spawn()?;
    let b = Command::new(env!("CARGO_BIN_EXE_bigtop"))
        .args(["system", "switch", "--root", root, &second])
        .spawn()?;
    assert!(a.wait_with_output()?.status.success());
    assert!(b.wait_with_output()?.status.success());
    let gens: serde_json::Value = serde_json::from_str(&ok(&bigtop(&[
        "system",
        "generations",
        "--root",
        root,
        "--json",
    ])?))?;
    assert_eq!(
        gens.as_array().map(Vec::len),
        Some(2),
        "one generation for one system: {gens}"
    );

    // A held lock: `--no-wait` fails naming the holder.
    {
        let _held = m.lock("an operator's test", None)?;
        let out = bigtop(&["system", "switch", "--no-wait", "--root", root, &first])?;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("another activation is running"), "{err}");
        assert!(err.contains("an operator's test"), "{err}");
    }

    // Drift: a managed file edited by hand, a service stopped.
    ok(&bigtop(&["system", "verify", "--root", root])?);
    std::fs::remove_file(m.path("/etc/motd"))?;
    std::fs::write(m.path("/etc/motd"), "edited\n")?;
    let out = bigtop(&["system", "verify", "--root", root])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/etc/motd: changed or removed by hand"));

    // Inside: the host name and the new motd link.
    let out = bigtop(&[
        "container",
        "exec",
        root,
        "--",
        "sh",
        "-c",
        "hostname; exit 3",
    ])?;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web1\n");
    assert_eq!(run_in(&m, &["readlink", "/etc/static"])?.0, Some(0));

    ok(&bigtop(&["system", "rollback", "--root", root])?);
    let gens: serde_json::Value = serde_json::from_str(&ok(&bigtop(&[
        "system",
        "generations",
        "--root",
        root,
        "--json",
    ])?))?;
    assert_eq!(gens[0]["current"], true);
    assert_eq!(gens[0]["default"], true);
    let deleted = ok(&bigtop(&[
        "system",
        "delete-generations",
        "--root",
        root,
        "--keep",
        "1",
    ])?);
    assert!(
        deleted.is_empty(),
        "generation 1 runs, generation 2 is the newest: {deleted}"
    );

    ok(&bigtop(&["container", "stop", root])?);
    assert_eq!(
        ok(&bigtop(&["container", "status", root])?),
        "not running\n"
    );
    Ok(())
}
