//! The sandbox: one trivial build (`/bin/sh -c 'echo i > $out'`) from
//! creating its build dir to reaping it, sandboxed and as a plain
//! `std::process::Command`. Removing the scratch dirs is not timed
//! (`sandbox-bench` times it apart and prints medians).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

use bigtop_benches::sandbox::TrivialBuilds;

fn trivial_build(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let builds = TrivialBuilds::new(tmp.path()).expect("store layout");
    // Outside the timing: the shared namespaces are made once per process.
    builds.sandboxed(usize::MAX).expect("first build");
    builds.clean(usize::MAX).expect("clean");

    let mut group = c.benchmark_group("sandbox");
    let mut next = 0;
    type Run = fn(&TrivialBuilds, usize) -> Result<(), Box<dyn std::error::Error>>;
    let runs: [(&str, Run); 2] = [
        ("sh_echo_sandboxed", TrivialBuilds::sandboxed),
        ("sh_echo_plain_command", TrivialBuilds::plain),
    ];
    for (name, run) in runs {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    next += 1;
                    let t = Instant::now();
                    run(&builds, next).expect("build");
                    total += t.elapsed();
                    builds.clean(next).expect("clean");
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, trivial_build);
criterion_main!(benches);
