//! Reference scanning: which store paths does a build output mention?
//!
//! A store path refers to another when the other's 32-character digest
//! occurs anywhere in its files — text or binary — or in its symlink
//! targets. Builds record references by scanning their outputs for the
//! digests of the candidates that could be referenced (the build's input
//! closure and its own outputs); a reference is never declared by hand, so
//! it cannot be forgotten.
//!
//! The scan looks for runs of 32 base-32 characters and checks each run
//! against the candidates. It tests the *last* byte of a 32-byte window
//! first and, on a byte outside the alphabet, skips the whole window past
//! it: most bytes of most files are looked at once or not at all. Inside
//! long base-32 runs, each step checks one new byte and a bit filter before
//! any hash lookup, so even such input scans at hundreds of MiB/s.
//!
//! ```
//! use bigtop_store::scan::ReferenceScanner;
//! use bigtop_store::core::StorePath;
//! let libc: StorePath = "0bgd045z0d4icpbc2yyz4gx48ak44la0-libc-2.39".parse()?;
//! let mut scanner = ReferenceScanner::new([&libc]);
//! scanner.feed(b"\x7fELF...\0/bigtop/store/0bgd045z0d4icpbc2yyz4gx48ak44la0-libc-2.39/lib\0");
//! assert!(scanner.found().contains(&libc));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use bigtop_core::base32::ALPHABET;
use bigtop_core::nar::walk::{Cursor, Kind};
use bigtop_core::store_path::DIGEST_CHARS;
use bigtop_core::StorePath;

/// Whether each byte is in Nix's base-32 alphabet.
const IS_B32: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        t[ALPHABET[i] as usize] = true;
        i += 1;
    }
    t
};

/// Bytes read per step when scanning files.
const BUF: usize = 1 << 20;
/// Log2 of the prefilter's largest size in bits (2^20 bits: 128 KiB).
const FILTER_BITS: u32 = 20;
/// Log2 of its smallest size (4 Kibit: 512 bytes).
const MIN_FILTER_BITS: u32 = 12;

/// Finds which candidate paths' digests occur in streams of bytes.
///
/// Feed it any number of streams: [`feed`](Self::feed) parts of one
/// stream in order (matches across part boundaries are found), and
/// [`end_stream`](Self::end_stream) between streams so that the end of
/// one and the start of the next do not form a match.
#[derive(Debug, Clone)]
pub struct ReferenceScanner {
    candidates: HashMap<[u8; DIGEST_CHARS], usize>,
    paths: Vec<StorePath>,
    found: Vec<bool>,
    /// Indexes of the candidates found since [`take_found`](Self::take_found),
    /// so that forgetting them costs what was found, not every candidate.
    hits: Vec<usize>,
    filter: Box<[u64]>,
    /// Log2 of the filter's size in bits.
    filter_bits: u32,
    /// The tail of the stream so far that could start a match.
    carry: Vec<u8>,
}

impl ReferenceScanner {
    /// A scanner for the digests of `candidates`.
    pub fn new<'a>(candidates: impl IntoIterator<Item = &'a StorePath>) -> Self {
        let candidates: Vec<&StorePath> = candidates.into_iter().collect();
        // About 64 bits per candidate keeps false positives near 1.5%; a
        // build's few inputs need a small filter, cheap to make per output.
        let filter_bits = (candidates.len().max(1) * 64)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(MIN_FILTER_BITS, FILTER_BITS);
        let mut scanner = ReferenceScanner {
            candidates: HashMap::with_capacity(candidates.len()),
            paths: Vec::with_capacity(candidates.len()),
            found: Vec::with_capacity(candidates.len()),
            hits: Vec::new(),
            filter: vec![0u64; (1 << filter_bits) / 64].into_boxed_slice(),
            filter_bits,
            carry: Vec::with_capacity(DIGEST_CHARS),
        };
        for path in candidates {
            let mut text = [0u8; DIGEST_CHARS];
            text.copy_from_slice(path.digest().to_string().as_bytes());
            let b = scanner.bit(&text);
            scanner.filter[b / 64] |= 1 << (b % 64);
            if let std::collections::hash_map::Entry::Vacant(e) = scanner.candidates.entry(text) {
                e.insert(scanner.paths.len());
                scanner.paths.push(path.clone());
                scanner.found.push(false);
            }
        }
        scanner
    }

    /// Scans `window` in full (it is contiguous stream bytes).
    fn scan(&mut self, window: &[u8]) {
        let n = window.len();
        let mut i = 0;
        // Bytes before `checked` (and from `i` on) are known to be base 32,
        // so inside a long run each step checks one new byte, not 32.
        let mut checked = 0;
        'outer: while i + DIGEST_CHARS <= n {
            let mut j = i + DIGEST_CHARS - 1;
            while j >= checked.max(i) {
                if !IS_B32[window[j] as usize] {
                    // No window starting at or before j can match.
                    i = j + 1;
                    checked = i;
                    continue 'outer;
                }
                if j == 0 {
                    break;
                }
                j -= 1;
            }
            checked = i + DIGEST_CHARS;
            let key: &[u8; DIGEST_CHARS] =
                window[i..i + DIGEST_CHARS].try_into().expect("32 bytes");
            if self.maybe(key) {
                if let Some(&k) = self.candidates.get(key) {
                    if !self.found[k] {
                        self.found[k] = true;
                        self.hits.push(k);
                    }
                }
            }
            i += 1;
        }
    }

    /// The prefilter's bit for a digest text.
    fn bit(&self, key: &[u8; DIGEST_CHARS]) -> usize {
        let v = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
        (v.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.filter_bits)) as usize
    }

    /// Whether `key` may be a candidate: a one-bit-per-hash filter that
    /// rejects almost every non-candidate without hashing 32 bytes, which
    /// is what keeps text made only of base-32 characters fast.
    fn maybe(&self, key: &[u8; DIGEST_CHARS]) -> bool {
        let b = self.bit(key);
        self.filter[b / 64] & (1 << (b % 64)) != 0
    }

    /// Feeds the next bytes of the current stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.candidates.is_empty() || bytes.is_empty() {
            return;
        }
        // Windows that start in the carried tail and end in this part:
        // the tail is under 32 bytes, so they end within its first 31.
        if !self.carry.is_empty() {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(&bytes[..bytes.len().min(DIGEST_CHARS - 1)]);
            self.scan(&joined);
            if bytes.len() < DIGEST_CHARS - 1 {
                // This part is all in `joined`; keep what may still start a match.
                joined.drain(..joined.len().saturating_sub(DIGEST_CHARS - 1));
                self.carry = joined;
                return;
            }
        }
        self.scan(bytes);
        self.carry
            .extend_from_slice(&bytes[bytes.len().saturating_sub(DIGEST_CHARS - 1)..]);
    }

    /// Ends the current stream.
    pub fn end_stream(&mut self) {
        self.carry.clear();
    }

    /// Scans the file, symlink or tree at `path`: file contents and symlink
    /// targets (not followed). The walk goes by directory descriptors, so
    /// neither the length of paths nor the depth of the tree matters.
    pub fn scan_path(&mut self, path: &Path) -> io::Result<()> {
        use rustix::fs::{statat, AtFlags, FileType, CWD};
        let mut buf = Vec::new();
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path contains NUL"))?;
        let t = FileType::from_raw_mode(statat(CWD, &c, AtFlags::SYMLINK_NOFOLLOW)?.st_mode);
        if t != FileType::Directory {
            let kind = match t {
                FileType::Symlink => Kind::Symlink,
                FileType::RegularFile => Kind::File,
                _ => return Ok(()),
            };
            return self.scan_leaf(CWD, &c, kind, &mut buf);
        }
        let mut cursor = Cursor::open(path)?;
        loop {
            match cursor.next_entry() {
                Some(e) if e.kind == Kind::Dir => cursor.enter(&e.name)?,
                Some(e) => self.scan_leaf(cursor.fd(), &e.name, e.kind, &mut buf)?,
                None if cursor.leave()?.is_some() => {}
                None => return Ok(()),
            }
        }
    }

    /// Scans the symlink or file `name` in `dir`; anything else holds no
    /// references.
    fn scan_leaf(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        kind: Kind,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        use rustix::fs::{Mode, OFlags};
        match kind {
            Kind::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
                self.feed(target.as_bytes());
                self.end_stream();
            }
            Kind::File => {
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let mut file = File::from(fd);
                let len = file.metadata()?.len();
                if len == 0 {
                    return Ok(());
                }
                // Sized to the file, up to BUF: zeroing a whole buffer for a
                // few bytes would cost more than scanning them.
                let want = usize::try_from(len).map_or(BUF, |n| n.saturating_add(1).min(BUF));
                if buf.len() < want {
                    buf.resize(want, 0);
                }
                loop {
                    let n = match file.read(buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    self.feed(&buf[..n]);
                }
                self.end_stream();
            }
            _ => {}
        }
        Ok(())
    }

    /// The candidates found so far, sorted.
    pub fn found(&self) -> BTreeSet<StorePath> {
        self.paths
            .iter()
            .zip(&self.found)
            .filter(|(_, f)| **f)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// The candidates found so far, sorted, forgetting them: the scanner
    /// then serves the next path as if new. Costs what was found, not the
    /// number of candidates, so one scanner over a whole store's paths can
    /// scan many paths in turn.
    pub fn take_found(&mut self) -> BTreeSet<StorePath> {
        self.end_stream();
        let mut out = BTreeSet::new();
        for k in self.hits.drain(..) {
            self.found[k] = false;
            out.insert(self.paths[k].clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path(digest_seed: u8, name: &str) -> StorePath {
        let d = blake3_like(digest_seed);
        StorePath::new(bigtop_core::StorePathDigest(d), name).unwrap()
    }

    fn blake3_like(seed: u8) -> [u8; 20] {
        let h = bigtop_core::Hash::digest(bigtop_core::HashAlgo::Blake3, &[seed]);
        h.as_bytes()[..20].try_into().unwrap()
    }

    #[test]
    fn finds_digests_in_binary_and_text() {
        let a = path(1, "a");
        let b = path(2, "b");
        let c = path(3, "c");
        let mut s = ReferenceScanner::new([&a, &b, &c]);
        let mut data = vec![0u8, 255, 7];
        data.extend_from_slice(a.to_string().as_bytes());
        data.extend_from_slice(b"\0\0 and ");
        data.extend_from_slice(&c.digest().to_string().as_bytes()[..31]);
        s.feed(&data);
        assert_eq!(s.found(), BTreeSet::from([a]));
    }

    #[test]
    fn adjacent_base32_runs_still_match() {
        // The digest is inside a longer run of base-32 characters.
        let a = path(1, "a");
        let mut s = ReferenceScanner::new([&a]);
        let text = format!("zzzz{}zzzz", a.digest());
        s.feed(text.as_bytes());
        assert!(s.found().contains(&a));
    }

    #[test]
    fn streams_do_not_join() {
        let a = path(1, "a");
        let d = a.digest().to_string();
        let mut s = ReferenceScanner::new([&a]);
        s.feed(&d.as_bytes()[..10]);
        s.end_stream();
        s.feed(&d.as_bytes()[10..]);
        assert!(s.found().is_empty());
    }

    #[test]
    fn take_found_forgets_what_it_returns() {
        let a = path(1, "a");
        let b = path(2, "b");
        let mut s = ReferenceScanner::new([&a, &b]);
        s.feed(a.to_string().as_bytes());
        s.feed(a.to_string().as_bytes());
        assert_eq!(s.take_found(), BTreeSet::from([a.clone()]));
        assert!(s.found().is_empty());
        s.feed(b.to_string().as_bytes());
        assert_eq!(s.take_found(), BTreeSet::from([b]));
        assert!(s.take_found().is_empty());
    }

    #[test]
    fn scans_trees_and_symlink_targets() {
        let a = path(1, "a");
        let b = path(2, "b");
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::os::unix::fs::symlink(format!("/bigtop/store/{a}/bin"), tmp.path().join("d/link"))
            .unwrap();
        // b's digest straddles the 1 MiB read boundary.
        let mut big = vec![b'.'; BUF - 10];
        big.extend_from_slice(b.to_string().as_bytes());
        std::fs::write(tmp.path().join("big"), &big).unwrap();
        let mut s = ReferenceScanner::new([&a, &b]);
        s.scan_path(tmp.path()).unwrap();
        assert_eq!(s.found(), BTreeSet::from([a, b]));
    }

    proptest! {
        /// Inside long base-32 runs the scan checks one new byte per step;
        /// a digest anywhere in such a run must still be found.
        #[test]
        fn digests_inside_base32_runs_are_found(run in "[0-9a-df-np-sv-z]{0,150}", at in 0usize..150, noise in "[^0-9a-z]{0,3}") {
            let a = path(7, "y");
            let at = at.min(run.len());
            let text = format!("{noise}{}{}{}{noise}", &run[..at], a.digest(), &run[at..]);
            let mut s = ReferenceScanner::new([&a]);
            s.feed(text.as_bytes());
            prop_assert!(s.found().contains(&a));
        }

        #[test]
        fn any_split_finds_the_same(noise in proptest::collection::vec(any::<u8>(), 0..200), at in 0usize..200, splits in proptest::collection::vec(1usize..64, 1..8)) {
            let a = path(9, "x");
            let mut data = noise.clone();
            let at = at.min(data.len());
            data.splice(at..at, a.digest().to_string().into_bytes());
            let mut whole = ReferenceScanner::new([&a]);
            whole.feed(&data);
            prop_assert!(whole.found().contains(&a));
            let mut parts = ReferenceScanner::new([&a]);
            let mut rest = &data[..];
            for s in splits.iter().cycle() {
                if rest.is_empty() { break; }
                let n = (*s).min(rest.len());
                parts.feed(&rest[..n]);
                rest = &rest[n..];
            }
            prop_assert_eq!(parts.found(), whole.found());
        }
    }
}
