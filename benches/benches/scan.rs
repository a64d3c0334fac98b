//! Reference scanning throughput: every build output is scanned for the
//! digests of its possible references, so the scan must keep up with the
//! disk. Three inputs of 64 MiB each, 2,000 candidate paths: random bytes
//! (a binary), English-like text, and the worst case for the skip trick —
//! nothing but base-32 characters, where every window must be looked up.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use bigtop_core::{Hash, HashAlgo, StorePath, StorePathDigest};
use bigtop_store::ReferenceScanner;

const SIZE: usize = 64 << 20;

fn candidates() -> Vec<StorePath> {
    (0..2000u32)
        .map(|i| {
            let h = Hash::digest(HashAlgo::Blake3, &i.to_le_bytes());
            let digest: [u8; 20] = h.as_bytes()[..20].try_into().expect("20 bytes");
            StorePath::new(StorePathDigest(digest), "dep").expect("valid name")
        })
        .collect()
}

fn inputs(paths: &[StorePath]) -> Vec<(&'static str, Vec<u8>)> {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let binary: Vec<u8> = (0..SIZE).map(|_| next() as u8).collect();
    let words = [
        "the ", "store ", "path ", "/lib ", "linker\n", "0.1 ", "bigtop ",
    ];
    let mut text = Vec::with_capacity(SIZE);
    while text.len() < SIZE {
        text.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
    }
    text.truncate(SIZE);
    let alphabet = bigtop_core::base32::ALPHABET;
    let mut base32: Vec<u8> = (0..SIZE)
        .map(|_| alphabet[(next() % 32) as usize])
        .collect();
    // A few real references in each, so the scan has something to find.
    for (i, input) in [&mut text, &mut base32].into_iter().enumerate() {
        for (j, p) in paths.iter().take(10).enumerate() {
            let at = (j + 1) * (SIZE / 12) + i;
            input[at..at + 32].copy_from_slice(p.digest().to_string().as_bytes());
        }
    }
    vec![("binary", binary), ("text", text), ("base32-only", base32)]
}

fn scan(c: &mut Criterion) {
    let paths = candidates();
    let mut group = c.benchmark_group("reference_scan");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(SIZE as u64));
    for (name, input) in inputs(&paths) {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut scanner = ReferenceScanner::new(&paths);
                for chunk in input.chunks(1 << 20) {
                    scanner.feed(chunk);
                }
                scanner.found()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
