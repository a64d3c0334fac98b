//! System toplevels built for real: the tree the builtins make, the
//! rendered services run as processes, and the fleet example.

#[path = "../support/example.rs"]
mod example;
#[path = "../support/store.rs"]
mod support;

use std::error::Error;
use std::path::Path;

use bigtop::eval::drv::Platform;
use bigtop::eval::module::{Config, Module};
use bigtop::eval::system;
use bigtop::eval::trivial::{self, TreeEntry};
use bigtop::store::build::{BuildOptions, Builder, Sandboxing};
use bigtop::store::Store;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

fn store(tmp: &Path) -> Result<(Store, Platform)> {
    support::direct(tmp)
}

/// The toplevel is built from builtins alone, holds what the manifest
/// says, and its s6 `run` script starts the service with exactly its
/// environment, in its directory.
#[test]
fn a_built_toplevel_holds_etc_units_s6_dirs_and_runs_its_services() -> Result {
    let tmp = tempfile::tempdir()?;
    let (store, p) = store(tmp.path())?;
    let tool = trivial::write_tree(
        &p,
        "greeter",
        [TreeEntry::File {
            path: "bin/greeter".into(),
            text: "#!/bin/sh\necho \"greeting=$GREETING pwd=$(pwd) args=$*\"\nenv | sort\n".into(),
            executable: true,
        }],
    )?;
    let t = tool.clone();
    let host = Module::new("host", move |m| {
        m.import(&system::module());
        m.define("system.name", "box1");
        m.define("system.packages", vec![t.clone()]);
        m.define("etc.motd.text", "hi\n");
        m.define(r#"etc."ssl/certs".source"#, "/etc/ssl/certs");
        m.define(
            "system.services.greeter.argv",
            vec![
                bigtop::eval::text!("{}/bin/greeter", t),
                "it's".into(),
                "$HOME".into(),
            ],
        );
        m.define(
            "system.services.greeter.environment.GREETING",
            "hello world",
        );
        m.define("system.services.greeter.working_directory", "/tmp");
        m.define("system.activation.hello.script", "echo activated");
        m.define(
            "system.services.whoami.argv",
            vec!["/bin/sh", "-c", "echo \"$(id -un) $(id -gn)\""],
        );
        m.define("system.services.whoami.user", "nobody");
        m.define("system.services.whoami.group", "nogroup");
        m.define("users.users.nobody.group", "nogroup");
    });
    let cfg = Config::eval(&[host], None)?;
    let top = system::toplevel(&cfg, &p)?;
    let builder = Builder::new(&store).options(BuildOptions {
        sandbox: Sandboxing::Disabled,
        ..BuildOptions::default()
    });
    let built = bigtop::realise::realise(&store, &builder, std::slice::from_ref(&top.drv))?;
    // The toplevel, its `sw`, and the package.
    assert_eq!(built.report.built, 3);
    let root = store.physical(&built.path(&top.drv.out())?);
    assert_eq!(std::fs::read_to_string(root.join("etc/motd"))?, "hi\n");
    assert_eq!(
        std::fs::read_link(root.join("etc/ssl/certs"))?,
        Path::new("/etc/ssl/certs")
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("manifest.json"))?)?;
    assert_eq!(manifest, top.manifest);
    assert!(root.join("systemd/greeter.service").is_file());
    assert!(root.join("sw/bin/greeter").exists());
    // The package the service runs is a reference of the toplevel.
    let refs = store.references(&built.path(&top.drv.out())?)?;
    assert!(refs.iter().any(|r| r.name() == "greeter"), "{refs:?}");

    // The s6 run script, run as s6-supervise would run it.
    let out = std::process::Command::new(root.join("s6/greeter/run"))
        .env("LEAKED", "from the caller")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("greeting=hello world pwd=/tmp args=it's $HOME")
    );
    let env: Vec<&str> = lines
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
        .collect();
    assert_eq!(env, ["GREETING=hello world"]);
    // A service of another user runs as that user and group, through the
    // real s6 tools (CI installs s6; changing identity needs root).
    let out = std::process::Command::new(root.join("s6/whoami/run")).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let root_user = std::process::Command::new("id").arg("-u").output()?.stdout == b"0\n";
    if root_user {
        assert!(out.status.success(), "{stdout}");
        assert_eq!(stdout, "nobody nogroup\n");
    } else {
        // Not root: s6-applyuidgid itself refuses, which still shows the
        // script reaches it with the right account.
        assert!(!out.status.success(), "{stdout}");
        assert!(stdout.contains("s6-applyuidgid"), "{stdout}");
    }
    // The activation step runs.
    let step = std::process::Command::new(root.join("activation/hello")).output()?;
    assert_eq!(String::from_utf8(step.stdout)?, "activated\n");
    Ok(())
}

/// The example itself, twice: `cargo test` builds examples beside the
/// test binaries.
#[test]
fn the_fleet_example_builds_every_machine_and_then_nothing() -> Result {
    let exe = example::example("fleet")?;
    let tmp = tempfile::tempdir()?;
    let run = || example::run(&exe, &[tmp.path()]);
    let first = run()?;
    for want in [
        "evaluated 5 machines",
        "acme-legacy (2025.11): 2 services: shop, web",
        "acme-db1 (2026.11): 1 services: db",
        "* 150 at priority 50 in module `customer/globex`",
        "200 at priority 900 in module `examples/fleet/data/globex-db1.toml`",
        "built 15 derivations",
        "listen 8080\nvhost shop.acme.example -> \"127.0.0.1:8000\" tls=true\n",
    ] {
        assert!(first.contains(want), "missing {want:?} in:\n{first}");
    }
    let second = run()?;
    assert!(second.contains("built 0 derivations"), "{second}");
    Ok(())
}

/// The hello-fleet example: a pure evaluation of a small fleet, which
/// shares the release's package between its machines.
#[test]
fn the_hello_fleet_example_evaluates_a_fleet_without_a_store() -> Result {
    let out = example::run(&example::example("hello-fleet")?, &[])?;
    assert!(out.starts_with("evaluated 2 machines"), "{out}");
    for want in [
        "greeting: Hello from the database",
        "greeting: Hello, world",
        "build order (3 derivations)",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // Both machines build the same hello.
    let hello: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("-hello-2.12.1.drv"))
        .collect();
    assert_eq!(hello.len(), 2, "{out}");
    assert_eq!(hello[0], hello[1]);
    Ok(())
}
