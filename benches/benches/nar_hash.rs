//! NAR hashing of the issue's tree (20,000 × 1 KiB + 8 × 64 MiB), warm
//! page cache. The side-by-side comparison with `nix hash path` and `cat`
//! is `benches/compare-nix.sh`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use bigtop_benches::{make_tree, TreeShape};
use bigtop_core::hash::HashAlgo;
use bigtop_core::nar;

fn nar_hash(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("tree");
    let shape = TreeShape::ISSUE;
    make_tree(&root, shape).expect("make tree");
    let mut group = c.benchmark_group("nar_hash");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(shape.bytes()));
    for algo in [HashAlgo::Blake3, HashAlgo::Sha256] {
        group.bench_function(algo.name(), |b| {
            b.iter(|| nar::hash_path(&root, algo).expect("hash"))
        });
    }
    group.bench_function("dump_to_sink", |b| {
        b.iter(|| nar::dump_path(&root, std::io::sink()).expect("dump"))
    });
    group.finish();
}

criterion_group!(benches, nar_hash);
criterion_main!(benches);
