//! A fleet of two customers, each with web, application and database
//! machines, configured from the service modules in
//! `examples/fleet/modules.rs` and per-machine data files in
//! `examples/fleet/data/`, with a customer override and one machine
//! pinned to last year's release. Every machine is evaluated (on every
//! core), every toplevel built into a chroot store — from builtin
//! builders only — and what each machine runs is printed. A second run
//! builds nothing.
//!
//! ```text
//! cargo run -p bigtop --example fleet [STORE_PARENT_DIR]
//! ```

#[path = "fleet/modules.rs"]
mod modules;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bigtop::eval::drv::Platform;
use bigtop::eval::fleet::{Fleet, Machine};
use bigtop::eval::module::{force, Format, Module, PLATFORM};
use bigtop::eval::set::{PackageSet, Pkgs};
use bigtop::eval::trivial::{self, TreeEntry};
use bigtop::store::build::{BuildOptions, Builder};
use bigtop::store::Store;

/// A release of the package set: the programs the services run. (Small
/// scripts, so that the example builds in a blink; `examples/packages.rs`
/// builds real C programs.)
fn release(platform: &Platform, version: &'static str) -> Pkgs {
    let program = move |name: &'static str| {
        move |a: &bigtop::eval::set::Args| {
            let script = format!(
                "#!/bin/sh\necho \"{name} {version} starting with $*\"\nexec sleep infinity\n"
            );
            trivial::write_tree(
                a.platform(),
                &format!("{name}-{version}"),
                [TreeEntry::File {
                    path: format!("bin/{name}"),
                    text: script.into(),
                    executable: true,
                }],
            )
        }
    };
    PackageSet::new(platform.clone())
        .add("webserver", program("webserver"))
        .add("shop", program("shop"))
        .add("db", program("db"))
        .eval()
}

fn main() -> Result<(), Box<dyn Error>> {
    let parent = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bigtop-fleet"));
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fleet/data");
    let platform = Platform::default();

    // A customer override: Globex caps its database below what the
    // inventory says, and greets its operators its own way.
    let globex = Module::new("customer/globex", |m| {
        m.define("services.db.max_connections", force(150));
        m.define(
            "etc.motd.text",
            "Globex production. Changes go through CAB.\n",
        );
    });
    let acme = Module::new("customer/acme", |m| {
        m.define("services.shop.database", "acme-db1:5432");
    });
    let web = Module::new("role/web", |m| {
        m.define("services.web.enable", true);
        m.define("services.shop.enable", true);
    });
    let db = Module::new("role/db", |m| {
        m.define("services.db.enable", true);
    });
    let machine = |name: &str, release: &str, role: &str, customer: &Module| {
        let m = Machine::new(name, release)
            .tag(role)
            .tag(customer.name().trim_start_matches("customer/"))
            .module(customer.clone());
        // The inventory's data about the machine, if it has any.
        let file = data.join(format!("{name}.toml"));
        match std::fs::read_to_string(&file) {
            Ok(text) => Module::data(
                &format!("examples/fleet/data/{name}.toml"),
                Format::Toml,
                &text,
                PLATFORM,
            )
            .map(|d| m.module(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(m),
            Err(e) => Err(bigtop::eval::module::Error::Data {
                file: file.display().to_string(),
                reason: e.to_string(),
            }),
        }
    };
    let fleet = Fleet::new(platform.clone())
        .release("2025.11", release(&platform, "1.4"))
        .release("2026.11", release(&platform, "2.0"))
        .module(modules::base())
        .module(modules::web_server())
        .module(modules::shop())
        .module(modules::database())
        .tag_module("web", web)
        .tag_module("db", db)
        .machine(machine("acme-web1", "2026.11", "web", &acme)?)
        .machine(machine("acme-db1", "2026.11", "db", &acme)?)
        // Acme's old shop front stays on last year's release until they
        // choose to move it.
        .machine(machine("acme-legacy", "2025.11", "web", &acme)?)
        .machine(machine("globex-web1", "2026.11", "web", &globex)?)
        .machine(machine("globex-db1", "2026.11", "db", &globex)?);

    let start = Instant::now();
    let evaluated = fleet.eval();
    println!(
        "evaluated {} machines in {:.1} ms",
        evaluated.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    let mut tops = Vec::new();
    let mut names = Vec::new();
    for (name, r) in &evaluated {
        match r {
            Ok(m) => {
                let services: Vec<&String> = m.toplevel.manifest["services"]
                    .as_object()
                    .map(|o| o.keys().collect())
                    .unwrap_or_default();
                println!(
                    "{name} ({}): {} services: {}",
                    m.config.get::<String>("fleet.release")?,
                    services.len(),
                    services
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                tops.push(m.toplevel.drv.clone());
                names.push(name.as_str());
            }
            Err(e) => return Err(format!("{name}: {e}").into()),
        }
    }
    // Who set Globex's database size, at which priority.
    if let Ok(g) = &evaluated["globex-db1"] {
        println!("globex-db1 services.db.max_connections:");
        for d in g.config.definitions("services.db.max_connections")? {
            println!("  {} {}", if d.wins { "*" } else { " " }, d.shown);
        }
    }

    let store = Store::open_chroot(&parent)?;
    let builder = Builder::new(&store).options(BuildOptions {
        max_jobs: 2,
        ..BuildOptions::default()
    });
    let start = Instant::now();
    let built = bigtop::realise::realise(&store, &builder, &tops)?;
    println!(
        "built {} derivations in {:.1} ms",
        built.report.built,
        start.elapsed().as_secs_f64() * 1e3
    );
    for (name, t) in names.iter().zip(&tops) {
        println!(
            "{name} -> {}",
            store.store_dir().full(&built.path(&t.out())?)
        );
    }
    let web1 = names
        .iter()
        .position(|n| *n == "acme-web1")
        .ok_or("no acme-web1")?;
    let web1 = store.physical(&built.path(&tops[web1].out())?);
    print!(
        "acme-web1 /etc/web/vhosts.conf:\n{}",
        std::fs::read_to_string(web1.join("etc/web/vhosts.conf"))?
    );
    Ok(())
}
