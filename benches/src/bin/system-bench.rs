//! `system-bench`: the module system and the system toplevel at scale.
//!
//! ```text
//! system-bench toplevel N [STORE_PARENT]   a machine with N services (each
//!                      with options of its own, an /etc file, a restart
//!                      trigger, a user): evaluate, make the toplevel, build
//!                      it into a fresh store, then build it again (no-op)
//! system-bench fleet M N                    M machines of N services each,
//!                      one release: evaluate the fleet (every core)
//! system-bench eval N                       only evaluate the N-service
//!                      machine's configuration (every option, every
//!                      assertion): the side compared with NixOS's
//!                      module system
//! system-bench nix N LIB                    print the same machine for
//!                      `lib.evalModules` of nixpkgs' `lib` at LIB (the
//!                      same options, types, defaults, conditions and
//!                      definitions); `benches/compare-nix-modules.sh`
//!                      times both
//! ```
//!
//! Each phase is timed in process and printed in milliseconds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use bigtop_eval::drv::{Drv, Platform};
use bigtop_eval::fleet::{Fleet, Machine};
use bigtop_eval::module::{lazy, types, Config, Module};
use bigtop_eval::set::PackageSet;
use bigtop_eval::system;
use bigtop_eval::text;
use bigtop_eval::trivial::{self, TreeEntry};
use bigtop_store::build::{BuildOptions, Builder};
use bigtop_store::Store;

/// A module declaring and running `n` services, each as a module of its
/// own would: an enable flag and a port option, a config file in /etc
/// rendered from them, a user, and the service with the config file as
/// its restart trigger.
fn services(n: usize) -> Vec<Module> {
    (0..n)
        .map(|i| {
            Module::new(format!("svc{i}"), move |m| {
                let name = format!("svc{i}");
                m.option(&format!("services.{name}.enable"), types::bool(), |o| {
                    o.default(false);
                });
                m.option(&format!("services.{name}.port"), types::port(), |o| {
                    o.default(10_000 + i as i64);
                });
                let (enable, port) = (
                    format!("services.{name}.enable"),
                    format!("services.{name}.port"),
                );
                let file = format!(r#"etc."{name}/{name}.conf".text"#);
                m.when(
                    move |c| c.get(&enable),
                    |m| {
                        let port2 = port.clone();
                        m.define(
                            &file,
                            lazy(move |c| Ok(format!("port = {}\n", c.get::<u16>(&port2)?))),
                        );
                        m.define(&format!("users.users.{name}.group"), "nogroup");
                        let conf = file.clone();
                        m.define(
                            &format!("system.services.{name}.argv"),
                            lazy(move |c| {
                                let tool: Drv = c.pkgs()?.get("tool")?;
                                Ok(vec![
                                    text!("{}/bin/tool", tool),
                                    text!("--config=/etc/{}/{}.conf", name, name),
                                    text!("--port={}", c.get::<u16>(&port)?),
                                ])
                            }),
                        );
                        m.define(
                            &format!("system.services.svc{i}.restart_triggers"),
                            lazy(move |c| Ok(vec![c.get::<String>(&conf)?])),
                        );
                        m.define(&format!("system.services.svc{i}.user"), format!("svc{i}"));
                        m.define(
                            &format!("system.services.svc{i}.environment.INDEX"),
                            i.to_string(),
                        );
                    },
                );
            })
        })
        .collect()
}

fn enable_all(n: usize) -> Module {
    Module::new("host", move |m| {
        for i in 0..n {
            m.define(&format!("services.svc{i}.enable"), true);
        }
    })
}

fn release(p: &Platform) -> bigtop_eval::set::Pkgs {
    PackageSet::new(p.clone())
        .add("tool", |a| {
            trivial::write_tree(
                a.platform(),
                "tool",
                [TreeEntry::File {
                    path: "bin/tool".into(),
                    text: "#!/bin/sh\nexec sleep infinity\n".into(),
                    executable: true,
                }],
            )
        })
        .eval()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn toplevel(n: usize, parent: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let parent = parent.unwrap_or_else(|| tmp.path().to_owned());
    let p = Platform::default();
    let pkgs = release(&p);
    let mut modules = vec![system::module(), enable_all(n)];
    modules.push(Module::new("name", |m| {
        m.define("system.name", "bench");
    }));
    modules.extend(services(n));

    let t = Instant::now();
    let cfg = Config::eval(&modules, Some(pkgs)).map_err(|e| e.to_string())?;
    let eval = ms(t);
    let t = Instant::now();
    let top = system::toplevel(&cfg, &p)?;
    let make = ms(t);
    let count = top.manifest["services"].as_object().map_or(0, |o| o.len());

    let store = Store::open_chroot(&parent)?;
    let builder = Builder::new(&store).options(BuildOptions {
        max_jobs: 2,
        ..BuildOptions::default()
    });
    // As users build: add what evaluation made, plan, build.
    let build = || -> Result<(f64, usize), Box<dyn std::error::Error>> {
        let t = Instant::now();
        let r = bigtop::realise::realise(&store, &builder, std::slice::from_ref(&top.drv))?;
        Ok((ms(t), r.report.built))
    };
    let (first, built) = build()?;
    let (again, rebuilt) = build()?;
    println!(
        "{count} services: evaluate {eval:.1} ms, toplevel {make:.1} ms, build {first:.1} ms ({built} derivations), build again {again:.1} ms ({rebuilt} built)"
    );
    Ok(())
}

fn eval_only(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let p = Platform::default();
    let t = Instant::now();
    let mut modules = vec![system::module(), enable_all(n)];
    modules.push(Module::new("name", |m| {
        m.define("system.name", "bench");
    }));
    modules.extend(services(n));
    let cfg = Config::eval(&modules, Some(release(&p))).map_err(|e| e.to_string())?;
    let services = system::services(&cfg)?;
    println!("{} services evaluated in {:.1} ms", services.len(), ms(t));
    // As the timed peer's process does not free its heap at exit.
    std::mem::forget(cfg);
    Ok(())
}

/// The same machine for NixOS's module system: the system options as
/// `system::module` declares them, one module per service as `services`
/// writes them, forced whole.
fn nix(n: usize, lib: &str) {
    let quote = |s: &str| format!("{s:?}");
    println!("let");
    println!("  lib = import {};", quote(lib));
    println!("  inherit (lib) mkOption mkIf types;");
    println!("  opt = type: default: mkOption {{ inherit type default; }};");
    println!("  req = type: mkOption {{ inherit type; }};");
    println!("  tool = derivation {{ name = \"tool\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"mkdir -p $out/bin\" ]; }};");
    println!("  sub = options: types.submodule {{ inherit options; }};");
    println!("  base = {{ config, ... }}: {{");
    println!("    options.system.name = req (types.strMatching \"^[a-zA-Z0-9]([a-zA-Z0-9-]{{0,61}}[a-zA-Z0-9])?$\");");
    println!("    options.system.packages = opt (types.listOf types.package) [];");
    println!("    options.etc = opt (types.attrsOf (sub {{ text = opt (types.nullOr types.lines) null; source = opt (types.nullOr types.path) null; mode = opt (types.strMatching \"^[0-7]{{4}}$\") \"0444\"; user = opt types.nonEmptyStr \"root\"; group = opt types.nonEmptyStr \"root\"; }})) {{}};");
    println!("    options.users.users = opt (types.attrsOf (sub {{ uid = opt (types.nullOr types.ints.unsigned) null; group = opt types.nonEmptyStr \"nogroup\"; home = opt types.path \"/var/empty\"; shell = opt types.path \"/usr/sbin/nologin\"; system = opt types.bool true; description = opt types.singleLineStr \"\"; }})) {{}};");
    println!("    options.users.groups = opt (types.attrsOf (sub {{ gid = opt (types.nullOr types.ints.unsigned) null; }})) {{}};");
    println!("    options.system.activation = opt (types.attrsOf (sub {{ script = req types.lines; after = opt (types.listOf types.str) []; }})) {{}};");
    println!("    options.system.services = opt (types.attrsOf (sub {{");
    println!("      enable = opt types.bool true; description = opt types.singleLineStr \"\"; argv = req (types.listOf types.str);");
    println!("      environment = opt (types.attrsOf types.str) {{}}; working_directory = opt (types.nullOr types.path) null;");
    println!(
        "      user = opt types.nonEmptyStr \"root\"; group = opt types.nonEmptyStr \"root\";"
    );
    println!("      requires = opt (types.listOf types.str) []; after = opt (types.listOf types.str) [];");
    println!("      restart = opt (types.enum [ \"always\" \"on-failure\" \"never\" ]) \"on-failure\"; restart_delay_ms = opt types.ints.unsigned 1000;");
    println!("      reload = opt (types.nullOr (types.listOf types.str)) null; on_change = opt (types.enum [ \"restart\" \"reload\" \"nothing\" ]) \"restart\";");
    println!("      restart_triggers = opt (types.listOf types.str) [];");
    println!("      ready = opt (types.nullOr (sub {{ tcp_port = opt (types.nullOr types.port) null; command = opt (types.nullOr (types.listOf types.str)) null; timeout_ms = opt types.ints.unsigned 30000; }})) null;");
    println!("    }})) {{}};");
    println!("  }};");
    println!("  svc = i: {{ config, ... }}: let name = \"svc${{toString i}}\"; cfg = config.services.${{name}}; conf = \"${{name}}/${{name}}.conf\"; in {{");
    println!("    options.services.${{name}} = {{ enable = opt types.bool false; port = opt types.port (10000 + i); }};");
    println!("    config = mkIf cfg.enable {{");
    println!("      etc.${{conf}}.text = \"port = ${{toString cfg.port}}\\n\";");
    println!("      users.users.${{name}}.group = \"nogroup\";");
    println!("      system.services.${{name}} = {{");
    println!("        argv = [ \"${{tool}}/bin/tool\" \"--config=/etc/${{conf}}\" \"--port=${{toString cfg.port}}\" ];");
    println!("        restart_triggers = [ config.etc.${{conf}}.text ];");
    println!("        user = name;");
    println!("        environment.INDEX = toString i;");
    println!("      }};");
    println!("    }};");
    println!("  }};");
    print!("  host = {{ system.name = \"bench\";");
    for i in 0..n {
        print!(" services.svc{i}.enable = true;");
    }
    println!(" }};");
    println!("  c = (lib.evalModules {{ modules = [ base host ] ++ map svc (lib.range 0 {}); }}).config;", n.saturating_sub(1));
    println!("in builtins.deepSeq {{ inherit (c) etc system users; }} (builtins.length (builtins.attrNames c.system.services))");
}

fn fleet(machines: usize, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let p = Platform::default();
    let mut f = Fleet::new(p.clone()).release("r", release(&p));
    for m in services(n) {
        f = f.module(m);
    }
    f = f.module(enable_all(n));
    for i in 0..machines {
        f = f.machine(Machine::new(format!("m{i}"), "r"));
    }
    let t = Instant::now();
    let r = f.eval();
    let took = ms(t);
    let ok = r.values().filter(|m| m.is_ok()).count();
    if let Some((name, Err(e))) = r.iter().find(|(_, m)| m.is_err()) {
        return Err(format!("{name}: {e}").into());
    }
    println!(
        "{ok} machines of {n} services: evaluated (toplevels included) in {took:.1} ms, {:.2} ms per machine",
        took / machines as f64
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<usize>().ok());
    let r = match (args.first().map(String::as_str), num(1), num(2)) {
        (Some("toplevel"), Some(n), _) => toplevel(n, args.get(2).map(PathBuf::from)),
        (Some("fleet"), Some(m), Some(n)) => fleet(m, n),
        (Some("eval"), Some(n), _) => eval_only(n),
        (Some("nix"), Some(n), _) if args.len() == 3 => {
            nix(n, &args[2]);
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: system-bench toplevel N [STORE_PARENT] | system-bench fleet MACHINES N"
            );
            return ExitCode::FAILURE;
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
