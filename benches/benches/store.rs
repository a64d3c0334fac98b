//! The store: registering a batch of 1,000 small text paths into a fresh
//! store, and the closure of the top of a 10,000-path graph (the shapes of
//! `bigtop_benches::shapes`). The side-by-side comparison with `nix-store`
//! at the sizes is `benches/compare-nix-store.sh`.

use std::collections::BTreeSet;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use bigtop_benches::shapes::{self, Shape};
use bigtop_store::Store;

const REGISTER: usize = 1_000;
const GRAPH: usize = 10_000;

fn register(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.sample_size(10);
    group.throughput(Throughput::Elements(REGISTER as u64));
    // Every iteration gets a fresh store, and the stores are deleted only
    // at the end: on an ext4 without a journal, creating files soon after
    // many were deleted is several times slower.
    let mut kept = Vec::new();
    group.bench_function("register_1000_batch", |b| {
        b.iter_batched(
            || {
                let tmp = tempfile::tempdir().expect("temp dir");
                let store = Store::open_chroot(tmp.path()).expect("open store");
                (tmp, store)
            },
            |(tmp, store)| {
                let mut batch = store.batch();
                for i in 0..REGISTER {
                    batch
                        .add_text(
                            &shapes::name("f", i),
                            &shapes::contents(i),
                            &BTreeSet::new(),
                        )
                        .expect("stage");
                }
                batch.commit().expect("commit");
                kept.push(tmp);
                // Closed outside the timing.
                store
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    drop(kept);
}

fn closure(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = Store::open_chroot(tmp.path()).expect("open store");
    let paths = shapes::populate(&store, Shape::Graph, "g", GRAPH).expect("populate");
    let top = paths.last().expect("a top path").clone();
    assert_eq!(
        store
            .closure(std::slice::from_ref(&top))
            .expect("closure")
            .len(),
        GRAPH
    );
    let mut group = c.benchmark_group("store");
    group.sample_size(20);
    group.throughput(Throughput::Elements(GRAPH as u64));
    group.bench_function("closure_10000_graph", |b| {
        b.iter(|| store.closure(std::slice::from_ref(&top)).expect("closure"))
    });
    group.finish();
}

criterion_group!(benches, register, closure);
criterion_main!(benches);
