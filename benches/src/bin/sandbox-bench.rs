//! `sandbox-bench [N]`: runs N (default 2,000) trivial builds
//! (`/bin/sh -c 'echo i > $out'`) sandboxed and N as plain processes, in
//! a temp dir, and prints the median and 90th percentile of each, and of
//! removing a sandboxed build's scratch dirs.

use std::error::Error;
use std::time::{Duration, Instant};

use bigtop_benches::sandbox::TrivialBuilds;

fn percentile(times: &mut [Duration], p: usize) -> Duration {
    times.sort();
    times[(times.len() * p / 100).min(times.len() - 1)]
}

fn report(what: &str, times: &mut [Duration]) {
    let median = percentile(times, 50);
    let p90 = percentile(times, 90);
    println!(
        "{what:<28} median {:>8.1} µs   p90 {:>8.1} µs",
        median.as_secs_f64() * 1e6,
        p90.as_secs_f64() * 1e6
    );
}

fn main() -> Result<(), Box<dyn Error>> {
    let n: usize = std::env::args().nth(1).map_or(Ok(2_000), |a| a.parse())?;
    let tmp = tempfile::tempdir()?;
    let builds = TrivialBuilds::new(tmp.path())?;
    // The first build creates the shared user and network namespaces.
    let first = Instant::now();
    builds.sandboxed(usize::MAX)?;
    println!(
        "first sandboxed build (creates the shared namespaces): {:?}",
        first.elapsed()
    );
    builds.clean(usize::MAX)?;

    let (mut sandboxed, mut cleaning, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    let wall = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        builds.sandboxed(i)?;
        sandboxed.push(t.elapsed());
        let t = Instant::now();
        builds.clean(i)?;
        cleaning.push(t.elapsed());
    }
    let sandboxed_wall = wall.elapsed();
    let wall = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        builds.plain(i)?;
        plain.push(t.elapsed());
        builds.clean(i)?;
    }
    let plain_wall = wall.elapsed();
    println!("{n} builds each");
    report("sandboxed spawn+wait", &mut sandboxed);
    report("sandbox scratch removal", &mut cleaning);
    report("plain Command spawn+wait", &mut plain);
    println!(
        "wall, including removal: sandboxed {:.2} s, plain {:.2} s",
        sandboxed_wall.as_secs_f64(),
        plain_wall.as_secs_f64()
    );
    Ok(())
}
