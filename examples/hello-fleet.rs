//! Evaluation alone, on embedded defaults: evaluate a small fleet — a
//! release of packages, a service module, two machines — into
//! derivations, compute every store path without touching a store, and
//! print each machine's toplevel and the build graph in the order a
//! builder would run it.
//!
//! ```text
//! cargo run --release -p bigtop --example hello-fleet
//! ```
//!
//! `examples/fleet.rs` is the same flow at a larger scale, built into a
//! store; `examples/packages.rs` builds real C packages.

use std::collections::BTreeSet;
use std::error::Error;
use std::time::Instant;

use bigtop::core::StorePath;
use bigtop::eval::drv::{Drv, Platform};
use bigtop::eval::fleet::{Fleet, Machine};
use bigtop::eval::module::{lazy, types, Module};
use bigtop::eval::set::PackageSet;
use bigtop::eval::text;
use bigtop::eval::trivial::{self, TreeEntry};

/// The hello service: an option to enable it and its greeting, and what
/// it puts on the machine when enabled.
fn hello_module() -> Module {
    Module::new("hello", |m| {
        m.option("services.hello.enable", types::bool(), |o| {
            o.default(false).description("Whether to greet.");
        });
        m.option("services.hello.greeting", types::single_line_str(), |o| {
            o.default("Hello, world").description("What it says.");
        });
        m.when(
            |c| c.get("services.hello.enable"),
            |m| {
                m.define(
                    "etc.\"hello.conf\".text",
                    lazy(|c| {
                        Ok(format!(
                            "greeting = {}\n",
                            c.get::<String>("services.hello.greeting")?
                        ))
                    }),
                );
                m.define(
                    "system.services.hello.argv",
                    lazy(|c| {
                        let hello: Drv = c.pkgs()?.get("hello")?;
                        Ok(vec![text!("{}/bin/hello", hello), text!("/etc/hello.conf")])
                    }),
                );
                m.define(
                    "system.services.hello.restart_triggers",
                    lazy(|c| Ok(vec![c.get::<String>("etc.\"hello.conf\".text")?])),
                );
                m.define(
                    "system.packages",
                    lazy(|c| Ok(vec![c.pkgs()?.get("hello")?])),
                );
            },
        );
    })
}

/// `drv` and everything it needs, dependencies first.
fn build_order(drv: &Drv, seen: &mut BTreeSet<StorePath>, out: &mut Vec<Drv>) {
    if !seen.insert(drv.drv_path().clone()) {
        return;
    }
    for input in drv.input_derivations() {
        build_order(input, seen, out);
    }
    out.push(drv.clone());
}

fn main() -> Result<(), Box<dyn Error>> {
    let platform = Platform::default();
    let release = PackageSet::new(platform.clone())
        .add("hello", |a| {
            trivial::write_tree(
                a.platform(),
                "hello-2.12.1",
                [TreeEntry::File {
                    path: "bin/hello".into(),
                    text: "#!/bin/sh\nwhile read -r key _ value; do [ \"$key\" = greeting ] && echo \"$value\"; done < \"$1\"\n".into(),
                    executable: true,
                }],
            )
        })
        .eval();
    let greeter = Module::new("role/greeter", |m| {
        m.define("services.hello.enable", true);
    });
    let fleet = Fleet::new(platform)
        .release("2026.11", release)
        .module(hello_module())
        .module(Module::new("motd", |m| {
            m.define("etc.motd.text", "Managed by bigtop.\n");
        }))
        .tag_module("greeter", greeter)
        .machine(Machine::new("web1", "2026.11").tag("greeter"))
        .machine(
            Machine::new("db1", "2026.11").module(Module::new("db1", |m| {
                m.define("services.hello.greeting", "Hello from the database");
                m.define("services.hello.enable", true);
            })),
        );

    let start = Instant::now();
    let machines = fleet.eval();
    println!(
        "evaluated {} machines in {:.1} ms (no store touched)",
        machines.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    for (name, m) in &machines {
        let m = m.as_ref().map_err(|e| format!("{name}: {e}"))?;
        let top = &m.toplevel;
        println!("\n{name}: {}", text!("{}", top.drv).as_str());
        println!(
            "  greeting: {}",
            m.config.get::<String>("services.hello.greeting")?
        );
        let mut order = Vec::new();
        build_order(&top.drv, &mut BTreeSet::new(), &mut order);
        println!("  build order ({} derivations):", order.len());
        for (i, d) in order.iter().enumerate() {
            println!(
                "  {:>2}. {} -> {}",
                i + 1,
                top.drv.platform().store_dir.full(d.drv_path()),
                text!("{}", d).as_str()
            );
        }
    }
    Ok(())
}
