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
//! system-bench fleet-json M [THREADS]       M machines of 20 service
//!                      modules each (typed options, overrides at force
//!                      and default priority, conditions): evaluate every
//!                      machine's configuration on THREADS threads (every
//!                      core by default) and print them as JSON
//! system-bench fleet-nix M LIB              the same fleet for
//!                      `lib.evalModules`, as a Nix expression whose JSON
//!                      value is byte for byte what fleet-json prints;
//!                      `benches/compare-nix-modules.sh` times both
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
use std::collections::BTreeMap;

use bigtop_eval::module::{default, force, lazy, types, Config, Module, Opt};
use bigtop_eval::set::PackageSet;
use bigtop_eval::system;
use bigtop_eval::text;
use bigtop_eval::trivial::{self, TreeEntry};
use bigtop_eval::Options;
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

/// NixOS's module system's side of `system::module`: the same options,
/// types and defaults (and the /etc default it defines), bound as `base`
/// in a `let` that has `opt`, `req`, `sub`, `types` and `mkDefault`.
const NIX_BASE: &str = r#"  base = { config, ... }: {
    options.system.name = req (types.strMatching "^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$");
    options.system.release = opt (types.nullOr types.singleLineStr) null;
    options.system.packages = opt (types.listOf types.package) [];
    options.etc = opt (types.attrsOf (sub { text = opt (types.nullOr types.lines) null; source = opt (types.nullOr types.path) null; mode = opt (types.strMatching "^[0-7]{4}$") "0444"; user = opt types.nonEmptyStr "root"; group = opt types.nonEmptyStr "root"; })) {};
    options.users.users = opt (types.attrsOf (sub { uid = opt (types.nullOr (types.ints.between 0 4294967294)) null; group = opt types.nonEmptyStr "nogroup"; home = opt types.path "/var/empty"; shell = opt types.path "/usr/sbin/nologin"; system = opt types.bool true; description = opt types.singleLineStr ""; })) {};
    options.users.groups = opt (types.attrsOf (sub { gid = opt (types.nullOr (types.ints.between 0 4294967294)) null; })) {};
    options.system.activation = opt (types.attrsOf (sub { script = req types.lines; after = opt (types.listOf types.str) []; })) {};
    options.system.services = opt (types.attrsOf (sub {
      enable = opt types.bool true; description = opt types.singleLineStr ""; argv = req (types.listOf types.str);
      environment = opt (types.attrsOf types.str) {}; working_directory = opt (types.nullOr types.path) null;
      user = opt types.nonEmptyStr "root"; group = opt types.nonEmptyStr "root";
      requires = opt (types.listOf types.str) []; after = opt (types.listOf types.str) [];
      restart = opt (types.enum [ "always" "on-failure" "never" ]) "on-failure"; restart_delay_ms = opt types.ints.unsigned 1000;
      reload = opt (types.nullOr (types.listOf types.str)) null; on_change = opt (types.enum [ "restart" "reload" "nothing" ]) "restart";
      restart_triggers = opt (types.listOf types.str) [];
      ready = opt (types.nullOr (sub { tcp_port = opt (types.nullOr types.port) null; command = opt (types.nullOr (types.listOf types.str)) null; timeout_ms = opt types.ints.unsigned 30000; notify = opt types.bool false; })) null;
      limits = opt (sub { open_files = opt (types.nullOr (types.ints.between 0 4294967295)) null; processes = opt (types.nullOr (types.ints.between 0 4294967295)) null; }) {};
      systemd = opt (sub { unit = opt (types.attrsOf types.singleLineStr) {}; service = opt (types.attrsOf types.singleLineStr) {}; }) {};
    })) {};
    config.etc."nsswitch.conf".text = mkDefault "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nservices: files\n";
  };
"#;

/// The same machine for NixOS's module system: the system options as
/// `system::module` declares them, one module per service as `services`
/// writes them, forced whole.
fn nix(n: usize, lib: &str) {
    let quote = |s: &str| format!("{s:?}");
    println!("let");
    println!("  lib = import {};", quote(lib));
    println!("  inherit (lib) mkOption mkIf mkDefault types;");
    println!("  opt = type: default: mkOption {{ inherit type default; }};");
    println!("  req = type: mkOption {{ inherit type; }};");
    println!("  tool = derivation {{ name = \"tool\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"mkdir -p $out/bin\" ]; }};");
    println!("  sub = options: types.submodule {{ inherit options; }};");
    print!("{NIX_BASE}");
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

/// The service modules of the fleet comparison: how many, and what each
/// has: five typed options, a service, a user, a firewall port and an
/// /etc file, all under `enable`, and an environment variable under a
/// second condition.
const FLEET_MODULES: usize = 20;

/// The options of one service module of the fleet comparison.
#[derive(Options, Clone)]
struct FleetService {
    /// Whether it runs.
    enable: bool,
    /// Its port (each module defaults it to its own, at default priority).
    #[option(ty = types::port(), required)]
    port: u16,
    /// How many workers.
    #[option(ty = types::between(1, 64), default = 4)]
    workers: u32,
    /// How much it logs.
    #[option(ty = types::one_of_str(["debug", "info", "warn"]), default = "info")]
    log_level: String,
    /// More arguments.
    extra_args: Vec<String>,
}

const FIREWALL: Opt<Vec<u16>> = Opt::new("networking.firewall.allowed_tcp_ports");

fn fleet_modules() -> Vec<Module> {
    let mut out = vec![
        system::module(),
        Module::new("firewall", |m| {
            m.option(FIREWALL.path(), types::list(types::port()), |o| {
                o.default(Vec::<u16>::new())
                    .description("TCP ports open to everyone, sorted.")
                    .apply(|mut v: Vec<u16>| {
                        v.sort_unstable();
                        v
                    });
            });
        }),
    ];
    for i in 0..FLEET_MODULES {
        out.push(Module::new(format!("svc{i}"), move |m| {
            let name = format!("svc{i}");
            let svc = m.options::<FleetService>(&format!("services.{name}"));
            m.set(svc.port, default(10_000 + i as u16));
            let conf = system::ETC.entry(&format!("{name}/{name}.conf")).text;
            let unit = system::SERVICES.entry(&name);
            let user = system::USERS.entry(&name);
            m.when(
                move |c| c.read(svc.enable),
                move |m| {
                    m.set(
                        unit.argv,
                        lazy(move |c| {
                            let s = c.read(svc)?;
                            let mut argv = vec![
                                format!("/bin/svc{i}"),
                                format!("--port={}", s.port),
                                format!("--workers={}", s.workers),
                                format!("--log={}", s.log_level),
                            ];
                            argv.extend(s.extra_args);
                            Ok(argv)
                        }),
                    );
                    m.set(unit.user, name.as_str());
                    m.set(
                        unit.restart_triggers,
                        lazy(move |c| Ok(vec![c.read(conf)?.unwrap_or_default()])),
                    );
                    m.set(user.group, "nogroup");
                    m.set(user.description, format!("{name} service"));
                    m.set(FIREWALL, lazy(move |c| Ok(vec![c.read(svc.port)?])));
                    m.set(
                        conf,
                        lazy(move |c| {
                            let s = c.read(svc)?;
                            Ok(format!(
                                "port = {}\nworkers = {}\nlog = {}\n",
                                s.port, s.workers, s.log_level
                            ))
                        }),
                    );
                },
            );
            m.when(
                move |c| Ok(c.read(svc.enable)? && c.read(svc.log_level)? == "debug"),
                move |m| {
                    m.set(
                        unit.environment,
                        [("DEBUG", "1")].into_iter().collect::<BTreeMap<_, _>>(),
                    );
                },
            );
        }));
    }
    out
}

/// Machine `j` of the fleet comparison: most services on, one port
/// forced, one service's workers at default priority, one logging more.
fn fleet_machine(j: usize) -> Module {
    Module::new(format!("m{j}"), move |m| {
        let svc = |i: usize| FleetService::at(&format!("services.svc{}", i % FLEET_MODULES));
        m.set(system::NAME, format!("m{j}"));
        for i in (0..FLEET_MODULES).filter(|i| !(i + j).is_multiple_of(5)) {
            m.set(svc(i).enable, true);
        }
        m.set(svc(j).port, force(20_000 + (j % 40_000) as u16));
        m.set(svc(j + 1).workers, default((j % 8 + 1) as u32));
        m.set(svc(j + 2).log_level, "debug");
        m.set(svc(j + 3).extra_args, ["--verbose"]);
    })
}

/// What the comparison prints of a machine: its /etc, users, services
/// and firewall, as JSON.
fn fleet_view(cfg: &Config) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let mut o = serde_json::Map::new();
    o.insert("etc".into(), cfg.value(system::ETC.path())?.to_json());
    o.insert("firewall".into(), cfg.value(FIREWALL.path())?.to_json());
    o.insert(
        "services".into(),
        cfg.value(system::SERVICES.path())?.to_json(),
    );
    o.insert("users".into(), cfg.value(system::USERS.path())?.to_json());
    Ok(serde_json::Value::Object(o))
}

/// `machines` machines of the fleet comparison on `threads` threads,
/// printed as one JSON object by machine name (the bytes `nix-instantiate
/// --eval --strict --json` prints for the same fleet).
fn fleet_json(machines: usize, threads: usize) -> Result<(), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let shared = fleet_modules();
    let chunk = machines.div_ceil(threads.max(1)).max(1);
    let ids: Vec<usize> = (0..machines).collect();
    let parts: Vec<Result<Vec<(String, serde_json::Value)>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|c| {
                let shared = &shared;
                s.spawn(move || {
                    c.iter()
                        .map(|&j| {
                            let mut modules = shared.clone();
                            modules.push(fleet_machine(j));
                            let cfg =
                                Config::eval(&modules, None).map_err(|e| format!("m{j}: {e}"))?;
                            let v = fleet_view(&cfg).map_err(|e| format!("m{j}: {e}"))?;
                            Ok((format!("m{j}"), v))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect()
    });
    let mut all = serde_json::Map::new();
    for p in parts {
        all.extend(p?);
    }
    // As `nix-instantiate --json` prints it: no newline after.
    print!("{}", serde_json::Value::Object(all));
    eprintln!(
        "{machines} machines on {threads} threads: {:.1} ms, {:.3} ms per machine",
        ms(t),
        ms(t) / machines as f64
    );
    Ok(())
}

/// The same fleet for `lib.evalModules`, printed as a Nix expression
/// whose `--json` value is what `fleet_json` prints.
fn fleet_nix(machines: usize, lib: &str) {
    println!("let");
    println!("  lib = import {lib:?};");
    println!("  inherit (lib) mkOption mkIf mkDefault mkForce types;");
    println!("  opt = type: default: mkOption {{ inherit type default; }};");
    println!("  req = type: mkOption {{ inherit type; }};");
    println!("  sub = options: types.submodule {{ inherit options; }};");
    print!("{NIX_BASE}");
    println!("  firewall = {{ options.networking.firewall.allowed_tcp_ports = mkOption {{ type = types.listOf types.port; default = []; apply = lib.sort (a: b: a < b); }}; }};");
    println!("  svc = i: {{ config, ... }}: let name = \"svc${{toString i}}\"; cfg = config.services.${{name}}; conf = \"${{name}}/${{name}}.conf\"; in {{");
    println!("    options.services.${{name}} = {{");
    println!("      enable = opt types.bool false; port = req types.port; workers = opt (types.ints.between 1 64) 4;");
    println!("      log_level = opt (types.enum [ \"debug\" \"info\" \"warn\" ]) \"info\"; extra_args = opt (types.listOf types.str) [];");
    println!("    }};");
    println!("    config = lib.mkMerge [");
    println!("      {{ services.${{name}}.port = mkDefault (10000 + i); }}");
    println!("      (mkIf cfg.enable {{");
    println!("        system.services.${{name}} = {{");
    println!("          argv = [ \"/bin/${{name}}\" \"--port=${{toString cfg.port}}\" \"--workers=${{toString cfg.workers}}\" \"--log=${{cfg.log_level}}\" ] ++ cfg.extra_args;");
    println!("          user = name;");
    println!("          restart_triggers = [ config.etc.${{conf}}.text ];");
    println!("        }};");
    println!("        users.users.${{name}} = {{ group = \"nogroup\"; description = \"${{name}} service\"; }};");
    println!("        networking.firewall.allowed_tcp_ports = [ cfg.port ];");
    println!("        etc.${{conf}}.text = \"port = ${{toString cfg.port}}\\nworkers = ${{toString cfg.workers}}\\nlog = ${{cfg.log_level}}\\n\";");
    println!("      }})");
    println!("      (mkIf (cfg.enable && cfg.log_level == \"debug\") {{ system.services.${{name}}.environment.DEBUG = \"1\"; }})");
    println!("    ];");
    println!("  }};");
    println!("  machine = j: let s = i: \"svc${{toString (lib.mod i {FLEET_MODULES})}}\"; in {{");
    println!("    system.name = \"m${{toString j}}\";");
    println!("    services = lib.mkMerge ([");
    println!("      {{ ${{s j}}.port = mkForce (20000 + lib.mod j 40000); }}");
    println!("      {{ ${{s (j + 1)}}.workers = mkDefault (lib.mod j 8 + 1); }}");
    println!("      {{ ${{s (j + 2)}}.log_level = \"debug\"; }}");
    println!("      {{ ${{s (j + 3)}}.extra_args = [ \"--verbose\" ]; }}");
    println!("    ] ++ map (i: {{ ${{s i}}.enable = true; }}) (lib.filter (i: lib.mod (i + j) 5 != 0) (lib.range 0 {})));", FLEET_MODULES - 1);
    println!("  }};");
    println!("  view = j: let c = (lib.evalModules {{ modules = [ base firewall (machine j) ] ++ map svc (lib.range 0 {}); }}).config; in", FLEET_MODULES - 1);
    println!("    {{ etc = c.etc; firewall = c.networking.firewall.allowed_tcp_ports; services = c.system.services; users = c.users.users; }};");
    println!("in lib.listToAttrs (map (j: {{ name = \"m${{toString j}}\"; value = view j; }}) (lib.range 0 {}))", machines.saturating_sub(1));
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<usize>().ok());
    let r = match (args.first().map(String::as_str), num(1), num(2)) {
        (Some("toplevel"), Some(n), _) => toplevel(n, args.get(2).map(PathBuf::from)),
        (Some("fleet"), Some(m), Some(n)) => fleet(m, n),
        (Some("eval"), Some(n), _) => eval_only(n),
        (Some("fleet-json"), Some(m), t) => fleet_json(
            m,
            t.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        ),
        (Some("fleet-nix"), Some(m), _) if args.len() == 3 => {
            fleet_nix(m, &args[2]);
            Ok(())
        }
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
