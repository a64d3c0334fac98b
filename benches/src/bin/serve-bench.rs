//! `serve-bench`: a load generator for `bigtop cache serve` (or any
//! binary cache over HTTP). Each of THREADS threads keeps one connection
//! alive and asks in a loop; `benches/cache-serve.sh` runs it.
//!
//! ```text
//! serve-bench narinfo URL PATHS THREADS SECONDS
//!     GET <digest>.narinfo for the store paths listed in PATHS (one a
//!     line), round and round, for SECONDS; print requests per second
//!     and latency percentiles
//! serve-bench nar URL PATHS THREADS ROUNDS
//!     GET each path's narinfo then the NAR it names, whole, every path
//!     ROUNDS times over THREADS threads; print NAR and wire megabytes
//!     per second
//! ```

use std::error::Error;
use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: serve-bench narinfo URL PATHS THREADS SECONDS | nar URL PATHS THREADS ROUNDS";

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[&str]) -> Result {
    match args {
        ["narinfo", url, paths, threads, seconds] => narinfo(
            url,
            &digests(paths)?,
            threads.parse()?,
            Duration::from_secs_f64(seconds.parse()?),
        ),
        ["nar", url, paths, threads, rounds] => {
            let digests = digests(paths)?;
            let rounds: usize = rounds.parse()?;
            let all: Vec<String> = (0..rounds).flat_map(|_| digests.iter().cloned()).collect();
            nar(url, &all, threads.parse()?, rounds)
        }
        _ => Err(USAGE.into()),
    }
}

/// The digests of the store paths listed in the file `paths`.
fn digests(paths: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(paths)?;
    let out: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let base = l.trim().rsplit('/').next().unwrap_or(l);
            base.split('-').next().unwrap_or(base).to_owned()
        })
        .collect();
    if out.is_empty() {
        return Err(format!("no store paths in `{paths}`").into());
    }
    Ok(out)
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(600)))
            .build(),
    )
}

fn narinfo(url: &str, digests: &[String], threads: usize, length: Duration) -> Result {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let latencies = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| -> Result {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result {
                    let agent = agent();
                    let mut mine = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let d = &digests[next.fetch_add(1, Ordering::Relaxed) % digests.len()];
                        let t = Instant::now();
                        let text = agent
                            .get(&format!("{url}/{d}.narinfo"))
                            .call()?
                            .body_mut()
                            .read_to_string()?;
                        mine.push(t.elapsed());
                        if !text.starts_with("StorePath: ") {
                            return Err(format!("`{d}.narinfo`: {text}").into());
                        }
                    }
                    latencies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(mine);
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(length);
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().map_err(|_| "a worker panicked")??;
        }
        Ok(())
    })?;
    let took = started.elapsed();
    let mut l = latencies.into_inner().unwrap_or_else(|e| e.into_inner());
    l.sort();
    let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize];
    println!(
        "narinfo: {} requests over {threads} connections in {took:.1?}: {:.0} requests/s; latency p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        l.len(),
        l.len() as f64 / took.as_secs_f64(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

/// Counts what is read.
struct Counted(u64);

impl io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn nar(url: &str, digests: &[String], threads: usize, rounds: usize) -> Result {
    let next = AtomicUsize::new(0);
    let nar_bytes = AtomicUsize::new(0);
    let wire_bytes = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| -> Result {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result {
                    let agent = agent();
                    loop {
                        let Some(d) = digests.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return Ok(());
                        };
                        let text = agent
                            .get(&format!("{url}/{d}.narinfo"))
                            .call()?
                            .body_mut()
                            .read_to_string()?;
                        let field = |key: &str| {
                            text.lines()
                                .find_map(|l| l.strip_prefix(key))
                                .ok_or_else(|| format!("`{d}.narinfo` has no `{key}`"))
                        };
                        let size: usize = field("NarSize: ")?.parse()?;
                        let nar = field("URL: ")?;
                        let mut counted = Counted(0);
                        let r = agent.get(&format!("{url}/{nar}")).call()?;
                        io::copy(&mut r.into_body().into_reader(), &mut counted)?;
                        nar_bytes.fetch_add(size, Ordering::Relaxed);
                        wire_bytes.fetch_add(counted.0 as usize, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a worker panicked")??;
        }
        Ok(())
    })?;
    let took = started.elapsed().as_secs_f64();
    let mib = |n: &AtomicUsize| n.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
    println!(
        "nar: {} paths ({rounds} rounds) over {threads} connections in {took:.2} s: {:.0} MiB of NAR ({:.0} MiB/s), {:.0} MiB on the wire ({:.0} MiB/s)",
        digests.len() / rounds.max(1),
        mib(&nar_bytes),
        mib(&nar_bytes) / took,
        mib(&wire_bytes),
        mib(&wire_bytes) / took,
    );
    Ok(())
}
