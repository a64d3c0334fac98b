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
use bigtop::eval::system::{ETC, PACKAGES, SERVICES};
use bigtop::eval::trivial::{self, TreeEntry};
use bigtop::eval::{text, Options};

/// The hello service's options.
#[derive(Options, Debug, Clone)]
struct Hello {
    /// Whether to greet.
    enable: bool,
    /// What it says.
    #[option(ty = types::single_line_str(), default = "Hello, world")]
    greeting: String,
}

/// The hello service: its options under `services.hello`, and what it
/// puts on the machine when enabled.
fn hello_module() -> Module {
    Module::new("hello", |m| {
        let hello = m.options::<Hello>("services.hello");
        let conf = ETC.entry("hello.conf").text;
        m.when(
            move |c| c.read(hello.enable),
            move |m| {
                m.set(
                    conf,
                    lazy(move |c| Ok(format!("greeting = {}\n", c.read(hello.greeting)?))),
                );
                let svc = SERVICES.entry("hello");
                m.set(
                    svc.argv,
                    lazy(|c| {
                        let hello: Drv = c.pkgs()?.get("hello")?;
                        Ok(vec![text!("{}/bin/hello", hello), text!("/etc/hello.conf")])
                    }),
                );
                m.set(
                    svc.restart_triggers,
                    lazy(move |c| Ok(vec![c.read(conf)?.unwrap_or_default()])),
                );
                m.set(PACKAGES, lazy(|c| Ok(vec![c.pkgs()?.get("hello")?])));
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
    let hello = Hello::at("services.hello");
    let greeter = Module::new("role/greeter", |m| {
        m.set(hello.enable, true);
    });
    let fleet = Fleet::new(platform)
        .release("2026.11", release)
        .module(hello_module())
        .module(Module::new("motd", |m| {
            m.set(ETC.entry("motd").text, "Managed by bigtop.\n");
        }))
        .tag_module("greeter", greeter)
        .machine(Machine::new("web1", "2026.11").tag("greeter"))
        .machine(
            Machine::new("db1", "2026.11").module(Module::new("db1", |m| {
                m.set(hello.greeting, "Hello from the database");
                m.set(hello.enable, true);
            })),
        );

    let start = Instant::now();
    let machines = fleet.eval();
    println!(
        "evaluated {} machines in {:.1} ms (no store touched)",
        machines.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    for name in machines.keys() {
        let m = machines.machine(name)?;
        let top = &m.toplevel;
        println!("\n{name}: {}", top.drv);
        println!("  greeting: {}", m.config.read(hello.greeting)?);
        let mut order = Vec::new();
        build_order(&top.drv, &mut BTreeSet::new(), &mut order);
        println!("  build order ({} derivations):", order.len());
        for (i, d) in order.iter().enumerate() {
            println!(
                "  {:>2}. {} -> {}",
                i + 1,
                top.drv.platform().store_dir.full(d.drv_path()),
                d
            );
        }
    }
    Ok(())
}
