//! `activate-bench`: the activation engine at scale, with real s6
//! processes in real containers.
//!
//! ```text
//! activate-bench plan N K            a system of N services of which K
//!                                    change: the plan (pure diff), median
//!                                    of 1,000 runs
//! activate-bench plans M N K         M machines of N services, K changing
//!                                    on each: every machine's plan
//!                                    (`dry-activate` without its reads)
//! activate-bench switch N K [RUNS]   a booted container running N
//!                                    services; switch to K changed and
//!                                    back, RUNS times: wall time until the
//!                                    changed services are up (no readiness
//!                                    check: each must stay up 200 ms),
//!                                    and the plan with its observation
//! activate-bench boot N [RUNS]       a container with N services that
//!                                    answer on TCP (tiny Perl servers
//!                                    with readiness checks): start to
//!                                    all-ready
//! ```
//!
//! Times are printed in milliseconds, as medians.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bigtop::activate::container::{Network, Options as ContainerOptions};
use bigtop::activate::engine::{Mode, Options, Quiet};
use bigtop::activate::plan::{self, Observed};
use bigtop::activate::Machine;
use bigtop::core::manifest::Manifest;
use bigtop::eval::drv::Platform;
use bigtop::eval::module::{Config, Module, ModuleBuilder};
use bigtop::eval::system;
use bigtop::store::build::{BuildOptions, Builder, Sandboxing};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// `n` sleeping services; those below `changed` run version `v`.
fn sleepers(m: &mut ModuleBuilder, n: usize, changed: usize, v: u32) {
    for i in 0..n {
        let secs = if i < changed { 100_000 + v } else { 100_000 };
        m.define(
            &format!("system.services.s{i:03}.argv"),
            vec!["/bin/sleep".to_owned(), secs.to_string()],
        );
        if i % 10 != 0 {
            // Chains of ten: each after the one before.
            m.define(
                &format!("system.services.s{i:03}.after"),
                vec![format!("s{:03}", i - 1)],
            );
        }
        m.define(
            &format!("etc.\"s{i:03}.conf\".text"),
            format!("port {}\n", 10_000 + i),
        );
    }
}

/// `n` services answering on TCP, each with its readiness check.
fn servers(m: &mut ModuleBuilder, n: usize) {
    for i in 0..n {
        let port = 20_000 + i;
        let script = format!(
            "my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1:{port}', Listen => 5, ReuseAddr => 1) or die $!; \
             while (my $c = $s->accept) {{ print $c \"ok\\n\"; close $c }}"
        );
        m.define(
            &format!("system.services.web{i:02}.argv"),
            vec![
                "/usr/bin/perl".to_owned(),
                "-MIO::Socket::INET".into(),
                "-e".into(),
                script,
            ],
        );
        m.define(
            &format!("system.services.web{i:02}.ready.tcp_port"),
            port as i64,
        );
    }
}

fn config(name: &str, body: impl FnOnce(&mut ModuleBuilder)) -> Result<Config> {
    let host = Module::new("host", move |m| {
        m.import(&system::module());
        m.define("system.name", name);
        body(m);
    });
    Ok(Config::eval(&[host], None)?)
}

fn manifest(cfg: &Config) -> Result<Manifest> {
    let top = system::toplevel(cfg, &Platform::default())?;
    Ok(serde_json::from_value(top.manifest)?)
}

/// Builds the system into the machine's store; its toplevel.
fn build(m: &Machine, cfg: &Config) -> Result<String> {
    let top = system::toplevel(cfg, &Platform::default())?;
    let builder = Builder::new(m.store()).options(BuildOptions {
        sandbox: Sandboxing::Disabled,
        ..BuildOptions::default()
    });
    let built = bigtop::realise::realise(m.store(), &builder, std::slice::from_ref(&top.drv))?;
    Ok(m.store().store_dir().full(&built.path(&top.drv.out())?))
}

/// Prints how long each step took, with `ACTIVATE_BENCH_STEPS=1`.
struct Steps(std::cell::Cell<Instant>);

impl bigtop::activate::engine::Observer for Steps {
    fn planned(&self, _: &bigtop::activate::plan::Plan) {
        self.lap("plan");
    }
    fn step_done(&self, step: bigtop::activate::engine::Step) {
        self.lap(&format!("{step:?}"));
    }
}

impl Steps {
    fn lap(&self, what: &str) {
        eprintln!(
            "  {what}: {:.1} ms",
            self.0.get().elapsed().as_secs_f64() * 1e3
        );
        self.0.set(Instant::now());
    }
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn plan(n: usize, k: usize) -> Result {
    let old = manifest(&config("box", |m| sleepers(m, n, k, 1))?)?;
    let new = manifest(&config("box", |m| sleepers(m, n, k, 2))?)?;
    let observed = Observed {
        running: old.services.keys().cloned().collect(),
        ..Observed::default()
    };
    let mut times = Vec::new();
    let mut changes = 0;
    for _ in 0..1000 {
        let start = Instant::now();
        let p = plan::diff(Some(&old), &new, &observed);
        times.push(start.elapsed());
        changes = p.services.len();
    }
    println!(
        "plan {n} services, {changes} changing: {:.3} ms (median of 1000)",
        median(times)
    );
    Ok(())
}

fn plans(machines: usize, n: usize, k: usize) -> Result {
    // One system per machine name (the names differ, so the manifests do).
    let mut pairs = Vec::with_capacity(machines);
    let (old, new) = (
        manifest(&config("box", |m| sleepers(m, n, k, 1))?)?,
        manifest(&config("box", |m| sleepers(m, n, k, 2))?)?,
    );
    for i in 0..machines {
        let mut o = old.clone();
        let mut w = new.clone();
        o.name = format!("m{i}");
        w.name = format!("m{i}");
        pairs.push((o, w));
    }
    let observed: Vec<Observed> = pairs
        .iter()
        .map(|(o, _)| Observed {
            running: o.services.keys().cloned().collect(),
            ..Observed::default()
        })
        .collect();
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut total = 0;
        for ((o, w), obs) in pairs.iter().zip(&observed) {
            total += plan::diff(Some(o), w, obs).services.len();
        }
        times.push(start.elapsed());
        assert_eq!(total, machines * k);
    }
    println!(
        "plans for {machines} machines of {n} services ({k} changing each): {:.1} ms (median of 5)",
        median(times)
    );
    // As `dry-activate` starts: from the two manifests' JSON text.
    let texts: Vec<(String, String)> = pairs
        .iter()
        .map(|(o, w)| Ok((serde_json::to_string(o)?, serde_json::to_string(w)?)))
        .collect::<Result<_>>()?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        for ((o, w), obs) in texts.iter().zip(&observed) {
            let o = bigtop::activate::machine::parse_manifest(o)?;
            let w = bigtop::activate::machine::parse_manifest(w)?;
            std::hint::black_box(plan::diff(Some(&o), &w, obs));
        }
        times.push(start.elapsed());
    }
    println!(
        "  the same from the manifests' JSON (parsed, then diffed): {:.1} ms (median of 5)",
        median(times)
    );
    Ok(())
}

fn switch(n: usize, k: usize, runs: usize) -> Result {
    let dir = tempfile::tempdir()?;
    let m = Machine::open(dir.path())?;
    let a = build(&m, &config("box", |c| sleepers(c, n, k, 1))?)?;
    let b = build(&m, &config("box", |c| sleepers(c, n, k, 2))?)?;
    m.start_container(&ContainerOptions {
        name: Some("bench".into()),
        network: Network::Private,
    })?;
    let result = (|| -> Result {
        let start = Instant::now();
        let trace = std::env::var_os("ACTIVATE_BENCH_STEPS").is_some();
        let steps = Steps(std::cell::Cell::new(Instant::now()));
        let observer: &dyn bigtop::activate::engine::Observer = if trace { &steps } else { &Quiet };
        m.activate(&a, Mode::Switch, &Options::default(), observer)?;
        println!(
            "first activation of {n} services: {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        let (mut switches, mut dry) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let target = if i % 2 == 0 { &b } else { &a };
            let start = Instant::now();
            let p = m.dry_activate(target)?;
            dry.push(start.elapsed());
            assert_eq!(p.start_order.len(), k);
            let start = Instant::now();
            steps.0.set(Instant::now());
            let report = m.activate(target, Mode::Switch, &Options::default(), observer)?;
            switches.push(start.elapsed());
            assert_eq!(report.plan.start_order.len(), k);
        }
        println!(
            "switch {n} services, {k} restarting, until ready: {:.1} ms (median of {runs}); dry-activate with its reads: {:.1} ms",
            median(switches),
            median(dry)
        );
        Ok(())
    })();
    m.stop_container(Duration::from_secs(30))?;
    result
}

fn boot(n: usize, runs: usize) -> Result {
    let dir = tempfile::tempdir()?;
    let m = Machine::open(dir.path())?;
    let top = build(&m, &config("box", |c| servers(c, n))?)?;
    m.activate(&top, Mode::Boot, &Options::default(), &Quiet)?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        m.start_container(&ContainerOptions {
            name: Some("bench".into()),
            network: Network::Private,
        })?;
        let booted = m.boot_activate(&Quiet);
        times.push(start.elapsed());
        m.stop_container(Duration::from_secs(30))?;
        booted?;
    }
    println!(
        "boot a container with {n} TCP services to all-ready: {:.1} ms (median of {runs})",
        median(times)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let r = match args.first().map(String::as_str) {
        Some("plan") => plan(num(1, 200), num(2, 10)),
        Some("plans") => plans(num(1, 1000), num(2, 50), num(3, 5)),
        Some("switch") => switch(num(1, 200), num(2, 10), num(3, 10)),
        Some("boot") => boot(num(1, 20), num(2, 10)),
        _ => {
            eprintln!(
                "usage: activate-bench plan N K | plans M N K | switch N K [RUNS] | boot N [RUNS]"
            );
            return ExitCode::from(2);
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
