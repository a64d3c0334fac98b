//! The shapes of the store benchmarks, written the same way into a bigtop
//! store and into a Nix database dump, so that both sides do the same work.
//!
//! A *flat* set of `n` paths has no references (what registering many
//! small sources looks like). A *graph* of `n` paths gives path `i` a few
//! references to earlier paths (see [`graph_references`]): a chain
//! `i → i-1` holds every path in the closure of the last one, and the
//! other edges make the walk meet every path several times, as a real
//! system closure does.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bigtop_core::{base32, nar, Hash, HashAlgo, Hasher, StorePath};
use bigtop_store::Store;

/// Bytes in each path's file.
pub const FILE_SIZE: usize = 128;

/// Paths added per batch when populating a store: each path of a batch
/// holds an open lock file until the batch commits, so a batch must stay
/// well under the process's file descriptor limit.
pub const POPULATE_BATCH: usize = 4096;

/// The shapes a generator can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// No references.
    Flat,
    /// [`graph_references`].
    Graph,
}

impl Shape {
    /// The indices that path `i` refers to.
    pub fn references(self, i: usize) -> Vec<usize> {
        match self {
            Shape::Flat => Vec::new(),
            Shape::Graph => graph_references(i),
        }
    }
}

/// The references of path `i` in a graph: the previous two paths, the
/// path at half its index and one pseudo-random earlier path, without
/// repeats (about 3.6 per path on average).
pub fn graph_references(i: usize) -> Vec<usize> {
    if i == 0 {
        return Vec::new();
    }
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    let refs: BTreeSet<usize> = [
        Some(i - 1),
        i.checked_sub(2),
        Some(i / 2),
        Some((x % i as u64) as usize),
    ]
    .into_iter()
    .flatten()
    .collect();
    refs.into_iter().collect()
}

/// The name of path `i` of a set whose names start with `prefix`.
pub fn name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:06}")
}

/// The contents of path `i`: [`FILE_SIZE`] bytes of printable text,
/// different for every `i`.
pub fn contents(i: usize) -> Vec<u8> {
    let mut out = format!("bigtop store benchmark, path {i}\n");
    let mut x = (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    while out.len() < FILE_SIZE - 1 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(base32::ALPHABET[(x % 32) as usize] as char);
    }
    out.push('\n');
    out.into_bytes()
}

/// The SHA-256 hash and the size of the NAR of a single regular file
/// holding `bytes`, as Nix records them.
pub fn nar_sha256_of_file(bytes: &[u8]) -> (Hash, u64) {
    let mut hasher = Hasher::new(HashAlgo::Sha256);
    let mut counter = CountingWriter {
        inner: &mut hasher,
        count: 0,
    };
    let mut enc = nar::NarEncoder::new(&mut counter);
    enc.file(None, false, bytes.len() as u64, &mut &bytes[..])
        .and_then(|()| enc.finish().map(|_| ()))
        .expect("a NAR of one file always encodes into a hasher");
    let size = counter.count;
    (hasher.finish(), size)
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `n` files named and filled as the paths of a set starting with
/// `prefix` into `dir` (created if missing), for `nix-store --add`.
pub fn write_files(dir: &Path, prefix: &str, n: usize) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for i in 0..n {
        fs::write(dir.join(name(prefix, i)), contents(i))?;
    }
    Ok(())
}

/// Adds `n` paths of `shape` to `store` as text files, in batches of
/// [`POPULATE_BATCH`], references first; returns them in index order.
pub fn populate(
    store: &Store,
    shape: Shape,
    prefix: &str,
    n: usize,
) -> Result<Vec<StorePath>, bigtop_store::Error> {
    let mut paths: Vec<StorePath> = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + POPULATE_BATCH).min(n);
        let mut batch = store.batch();
        for i in start..end {
            let refs: BTreeSet<StorePath> = shape
                .references(i)
                .into_iter()
                .map(|r| paths[r].clone())
                .collect();
            paths.push(batch.add_text(&name(prefix, i), &contents(i), &refs)?);
        }
        batch.commit()?;
        start = end;
    }
    Ok(paths)
}

/// The Nix store path (under `/nix/store`) standing for path `i` of a set
/// starting with `prefix`: its digest is the first 160 bits of a SHA-256
/// of the name, in Nix's base 32, so it is valid for Nix and stable.
pub fn nix_path(prefix: &str, i: usize) -> String {
    let name = name(prefix, i);
    let h = Hash::digest(HashAlgo::Sha256, format!("bigtop-bench:{name}").as_bytes());
    format!("/nix/store/{}-{name}", base32::encode(&h.as_bytes()[..20]))
}

/// Writes the `nix-store --load-db` dump of `n` paths of `shape` to `out`:
/// per path, as `nix-store --dump-db` prints it in Nix 2.8, its full path,
/// its NAR hash (SHA-256, hex), its NAR size, its deriver (empty), its
/// number of references, and one line per reference.
///
/// With `files`, also writes each path's file where a chroot store rooted
/// at `files` keeps it (`files/nix/store/…`, read-only, as Nix leaves it),
/// so that Nix's collector, which walks the store directory, finds them.
pub fn write_nix_dump(
    out: &mut impl Write,
    shape: Shape,
    prefix: &str,
    n: usize,
    files: Option<&Path>,
) -> io::Result<()> {
    let store_dir = files.map(|root| root.join("nix/store"));
    if let Some(dir) = &store_dir {
        fs::create_dir_all(dir)?;
    }
    let mut entry = String::new();
    for i in 0..n {
        let path = nix_path(prefix, i);
        let bytes = contents(i);
        let (hash, size) = nar_sha256_of_file(&bytes);
        let refs = shape.references(i);
        entry.clear();
        let _ = writeln!(entry, "{path}\n{}\n{size}\n\n{}", hash.to_hex(), refs.len());
        for r in refs {
            let _ = writeln!(entry, "{}", nix_path(prefix, r));
        }
        out.write_all(entry.as_bytes())?;
        if let Some(dir) = &store_dir {
            let file = dir.join(&path["/nix/store/".len()..]);
            fs::write(&file, &bytes)?;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o444))?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_references_point_backwards_without_repeats() {
        for i in 0..5000 {
            let refs = graph_references(i);
            assert!(refs.iter().all(|&r| r < i), "path {i}: {refs:?}");
            let unique: BTreeSet<_> = refs.iter().collect();
            assert_eq!(unique.len(), refs.len());
            if i > 0 {
                assert!(refs.contains(&(i - 1)), "the chain holds the closure");
            }
        }
    }

    #[test]
    fn nix_paths_parse_as_store_paths() {
        let p = nix_path("g", 7);
        let base = p.strip_prefix("/nix/store/").expect("prefix");
        StorePath::from_base_name(base).expect("a valid base name");
    }

    #[test]
    fn nar_size_of_a_small_file() {
        // Nix records 120 for a 3-byte file (`nix-store --dump-db`).
        assert_eq!(nar_sha256_of_file(b"hi\n").1, 120);
        assert_eq!(
            nar_sha256_of_file(b"hi\n").0.to_hex(),
            "10551daed7fa467d0b58826e7eb9a0f2af7d693de319f2ef775fffcda244b9f6"
        );
    }

    #[test]
    fn contents_are_small_and_distinct() {
        assert_eq!(contents(0).len(), FILE_SIZE);
        assert_ne!(contents(1), contents(2));
    }
}
