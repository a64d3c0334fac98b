//! The whole product on its embedded defaults, end to end: evaluate the
//! example fleet, build one machine into a store, boot it as a container,
//! show its services answering, change one option and switch (printing
//! the plan first: what restarts and why), roll back, stop.
//!
//! ```text
//! cargo run --release -p bigtop --example quickstart [ROOT]
//! ```
//!
//! ROOT is the machine's root directory (default: a new temporary
//! directory, removed at the end); its store is `ROOT/bigtop/store`.
//! Runs as root or as any user (a user namespace then maps the user to
//! root inside the container).

#[path = "fleet/definition.rs"]
mod definition;
#[path = "fleet/modules.rs"]
mod modules;

use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bigtop::activate::container::{Network, Options as ContainerOptions};
use bigtop::activate::engine::{Mode, Observer, Options, Step};
use bigtop::activate::plan::Plan;
use bigtop::activate::Machine;
use bigtop::eval::drv::Platform;
use bigtop::eval::fleet::Fleet;
use bigtop::eval::module::{force, Module};
use bigtop::store::build::{BuildOptions, Builder, TextRenderer};

/// Prints the engine's progress.
struct Say;

impl Observer for Say {
    fn planned(&self, plan: &Plan) {
        print!("{}", bigtop::cli::system::render_plan(plan));
    }
    fn step_done(&self, step: Step) {
        println!("    done: {}", format!("{step:?}").to_lowercase());
    }
    fn ready(&self, service: &str, after: Duration) {
        println!("    ready: {service} after {} ms", after.as_millis());
    }
}

/// Builds `machine` of `fleet` into the machine's store; its toplevel.
fn build(fleet: &Fleet, name: &str, m: &Machine) -> Result<String, Box<dyn Error>> {
    let machine = fleet
        .machines()
        .iter()
        .find(|x| x.name() == name)
        .ok_or("no such machine")?;
    let evaluated = fleet.eval_machine(machine)?;
    let renderer = TextRenderer::new(std::io::stdout(), false);
    let builder = Builder::new(m.store())
        .options(BuildOptions::default())
        .observer(&renderer);
    let start = Instant::now();
    let built = bigtop::realise::realise(
        m.store(),
        &builder,
        std::slice::from_ref(&evaluated.toplevel.drv),
    )?;
    let top = m
        .store()
        .store_dir()
        .full(&built.path(&evaluated.toplevel.drv.out())?);
    println!(
        "  built {} derivations in {:.1} ms: {top}",
        built.report.built,
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(top)
}

/// Uploads the closure of `top` from `m`'s store into a signed binary
/// cache in `dir`, then builds the same machine into a second, empty
/// store that has the cache as substituter: it fetches, and builds
/// nothing. What a build machine and a fleet do with a real cache.
fn publish_and_fetch(
    fleet: &Fleet,
    name: &str,
    m: &Machine,
    top: &str,
    dir: &std::path::Path,
) -> Result<(), Box<dyn Error>> {
    use bigtop::core::{SecretKey, TrustedKeys};
    use bigtop::store::cache::{
        upload, CacheSubstituter, Compression, FetchOptions, FileCache, UploadOptions,
    };
    let key = SecretKey::generate("quickstart-1")?;
    let cache = FileCache::open(dir.join("cache"))?;
    let start = Instant::now();
    let up = upload(
        m.store(),
        &cache,
        &[m.store().parse_user_path(top)?],
        &UploadOptions {
            compression: Compression::Zstd,
            key: Some(key.clone()),
        },
    )?;
    println!(
        "  uploaded {} paths ({:.1} MiB of NARs, {:.1} MiB compressed) to {}, signed by {}, in {:.1} ms",
        up.copied.len(),
        up.nar_bytes as f64 / 1048576.0,
        up.file_bytes as f64 / 1048576.0,
        cache.dir().display(),
        key.name(),
        start.elapsed().as_secs_f64() * 1e3
    );
    let second = Machine::open(dir.join("second"))?;
    let trusted: TrustedKeys = [key.public()].into_iter().collect();
    let sub = CacheSubstituter::new(second.store(), cache, FetchOptions::trusting(trusted));
    let machine = fleet
        .machines()
        .iter()
        .find(|x| x.name() == name)
        .ok_or("no such machine")?;
    let evaluated = fleet.eval_machine(machine)?;
    let builder = Builder::new(second.store())
        .options(BuildOptions::default())
        .substituter(&sub);
    let start = Instant::now();
    let built = bigtop::realise::realise(
        second.store(),
        &builder,
        std::slice::from_ref(&evaluated.toplevel.drv),
    )?;
    println!(
        "  a second machine's empty store: {} paths fetched, {} derivations built, in {:.1} ms",
        built.report.fetched,
        built.report.built,
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// The main process of each service.
fn pids(m: &Machine) -> Result<BTreeMap<String, u32>, Box<dyn Error>> {
    Ok(m.services()
        .states()?
        .into_iter()
        .filter_map(|(n, s)| Some((n, s.pid?)))
        .collect())
}

/// Fetches `http://127.0.0.1:PORT/` inside the machine.
fn fetch(m: &Machine, port: u16) -> Result<String, Box<dyn Error>> {
    let script = format!(
        "my $s = IO::Socket::INET->new('127.0.0.1:{port}') or die \"connect: $!\\n\"; print $s->getlines"
    );
    let argv = ["perl", "-MIO::Socket::INET", "-e", &script].map(String::from);
    let (code, out) = m.run_inside(&argv, &[("PATH", "/usr/bin:/bin")])?;
    if code != Some(0) {
        return Err(format!("fetching port {port}: {out}").into());
    }
    Ok(out.lines().last().unwrap_or_default().to_owned())
}

fn main() -> Result<(), Box<dyn Error>> {
    let (root, _temp) = match std::env::args().nth(1) {
        Some(r) => (PathBuf::from(r), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("bigtop-quickstart-")
                .tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    let platform = Platform::default();
    let name = "acme-web1";

    println!("1. evaluate the example fleet");
    let start = Instant::now();
    let fleet = definition::fleet(&platform)?;
    let all = fleet.eval();
    for n in all.keys() {
        let e = all.machine(n)?;
        println!(
            "  {n}: release {}, services {:?}",
            e.config
                .read(bigtop::eval::system::RELEASE)?
                .unwrap_or_default(),
            e.toplevel.manifest["services"]
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        );
    }
    println!(
        "  {} machines in {:.1} ms",
        all.len(),
        start.elapsed().as_secs_f64() * 1e3
    );

    println!(
        "2. build {name} into the store of the machine at {}",
        root.display()
    );
    let machine = Machine::open(&root)?;
    let first = build(&fleet, name, &machine)?;

    println!("   publish it to a signed binary cache; a second machine fetches it");
    let elsewhere = tempfile::Builder::new()
        .prefix("bigtop-quickstart-cache-")
        .tempdir()?;
    publish_and_fetch(&fleet, name, &machine, &first, elsewhere.path())?;

    println!("3. boot it as a container");
    machine.activate(&first, Mode::Boot, &Options::default(), &Say)?;
    let start = Instant::now();
    let container = machine.start_container(&ContainerOptions {
        name: None,
        network: Network::Private,
    })?;
    machine.boot_activate(&Say)?;
    println!(
        "  container {} (init pid {}) booted and activated in {:.1} ms",
        container.name,
        container.pid,
        start.elapsed().as_secs_f64() * 1e3
    );
    // Stop the container however the rest goes.
    let result = (|| -> Result<(), Box<dyn Error>> {
        let before = pids(&machine)?;
        for (service, pid) in &before {
            println!("  {service} runs as pid {pid}");
        }
        println!(
            "  http://127.0.0.1:8080/ answers: {}",
            fetch(&machine, 8080)?
        );
        println!(
            "  http://127.0.0.1:8000/ answers: {}",
            fetch(&machine, 8000)?
        );

        println!("4. change one option (the shop's database) and switch");
        let changed = definition::fleet(&platform)?.module(Module::new("change", |m| {
            m.set(modules::SHOP.database, force("acme-db2:5432"));
        }));
        let second = build(&changed, name, &machine)?;
        println!("  the plan, as `bigtop system dry-activate --json` prints it:");
        let plan = machine.dry_activate(&second)?;
        println!("{}", serde_json::to_string_pretty(&plan.services)?);
        let report = machine.activate(&second, Mode::Switch, &Options::default(), &Say)?;
        let after = pids(&machine)?;
        for (service, pid) in &after {
            let same = if before.get(service) == Some(pid) {
                "kept"
            } else {
                "restarted"
            };
            println!("  {service}: pid {pid} ({same})");
        }
        println!(
            "  generation {}; the shop still answers: {}",
            report.generation.unwrap_or_default(),
            fetch(&machine, 8000)?
        );

        println!("5. roll back");
        let report = machine.rollback(None, &Options::default(), &Say)?;
        println!(
            "  back on generation {}, shop pid {}",
            report.generation.unwrap_or_default(),
            pids(&machine)?.get("shop").copied().unwrap_or_default()
        );
        for g in machine.list_generations()? {
            println!(
                "  generation {} {} release {} {}{}",
                g.number,
                g.date,
                g.release.as_deref().unwrap_or("-"),
                g.toplevel,
                if g.current { " (current)" } else { "" }
            );
        }
        Ok(())
    })();
    println!("6. stop the container");
    machine.stop_container(Duration::from_secs(10))?;
    println!("  stopped");
    result
}
