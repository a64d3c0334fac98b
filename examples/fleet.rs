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

#[path = "fleet/definition.rs"]
mod definition;
#[path = "fleet/modules.rs"]
mod modules;

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use bigtop::eval::drv::Platform;
use bigtop::eval::system;
use bigtop::store::build::{BuildOptions, Builder};
use bigtop::store::Store;

fn main() -> Result<(), Box<dyn Error>> {
    let parent = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bigtop-fleet"));
    let platform = Platform::default();
    let fleet = definition::fleet(&platform)?;

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
                    m.config.read(system::RELEASE)?.unwrap_or_default(),
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
    // Who set Globex's database size, at which priority: the typed key
    // has the dotted path queries and the command line use.
    let g = evaluated.machine("globex-db1")?;
    let path = modules::DB.max_connections.path();
    println!(
        "globex-db1 {path} = {}:",
        g.config.read(modules::DB.max_connections)?
    );
    for d in g.config.definitions(path)? {
        println!("  {} {}", if d.wins { "*" } else { " " }, d.shown);
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
        let path = built.path(&t.out())?;
        println!("{name} -> {}", path.display_in(store.store_dir()));
        // Rooted, so that `bigtop store gc` keeps what was built.
        store.add_root(&format!("fleet-{name}"), &path)?;
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
