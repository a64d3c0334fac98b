//! Fixtures shared by bigtop's benchmarks: deterministic trees to hash,
//! and the store shapes ([`shapes`]) written alike for bigtop and for Nix.

pub mod sandbox;
pub mod shapes;

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// The shape of a benchmark tree.
#[derive(Debug, Clone, Copy)]
pub struct TreeShape {
    /// Number of small files, spread over directories of 1,000.
    pub small_files: usize,
    /// Size of each small file in bytes.
    pub small_size: usize,
    /// Number of big files, at the root.
    pub big_files: usize,
    /// Size of each big file in bytes.
    pub big_size: usize,
}

impl TreeShape {
    /// The tree of the NAR-hashing target: 20,000 files of 1 KiB plus 8
    /// files of 64 MiB (532 MiB in all).
    pub const ISSUE: TreeShape = TreeShape {
        small_files: 20_000,
        small_size: 1024,
        big_files: 8,
        big_size: 64 << 20,
    };

    /// Total bytes of file contents.
    pub fn bytes(&self) -> u64 {
        (self.small_files * self.small_size + self.big_files * self.big_size) as u64
    }
}

/// Fills `buf` with bytes from a xorshift generator: incompressible
/// enough, deterministic, and much faster to make than to hash.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// Creates the tree at `root`, which must not exist.
pub fn make_tree(root: &Path, shape: TreeShape) -> io::Result<()> {
    fs::create_dir(root)?;
    let mut buf = vec![0u8; shape.small_size];
    for i in 0..shape.small_files {
        let dir = root.join(format!("d{:03}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir(&dir)?;
        }
        fill(&mut buf, i as u64);
        fs::write(dir.join(format!("f{i:05}")), &buf)?;
    }
    let mut block = vec![0u8; 1 << 20];
    for i in 0..shape.big_files {
        let mut f = io::BufWriter::new(fs::File::create(root.join(format!("big{i}")))?);
        let mut left = shape.big_size;
        let mut n = 0;
        while left > 0 {
            let len = left.min(block.len());
            fill(&mut block[..len], (i as u64) << 32 | n);
            f.write_all(&block[..len])?;
            left -= len;
            n += 1;
        }
        f.flush()?;
    }
    Ok(())
}
