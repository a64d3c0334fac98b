//! The NAR archive format, byte for byte as Nix writes it.
//!
//! A NAR ("Nix ARchive") serialises one file system object — a regular
//! file, a symlink or a directory tree — deterministically: no timestamps,
//! owners or permissions beyond "executable", directory entries sorted by
//! the bytes of their names. Its hash is what names a store path's contents.
//!
//! ## Format
//!
//! Every token is a *string*: a 64-bit little-endian length, the bytes, and
//! zero bytes up to the next multiple of 8. An archive is
//!
//! ```text
//! archive   = "nix-archive-1" node
//! node      = "(" "type" ( regular | symlink | directory ) ")"
//! regular   = "regular" [ "executable" "" ] "contents" <bytes>
//! symlink   = "symlink" "target" <target>
//! directory = "directory" { "entry" "(" "name" <name> "node" node ")" }
//! ```
//!
//! Entry names are non-empty, not `.` or `..`, free of `/` and NUL, and
//! strictly increasing within a directory.
//!
//! ## What this module offers
//!
//! * [`dump_path`] writes the NAR of a tree to any [`Write`](std::io::Write);
//!   [`hash_path`] hashes it, streaming through a bounded buffer and, for
//!   trees bigger than one buffer, reading and hashing on two threads.
//! * [`parse`] reads a NAR from a [`BufRead`](std::io::BufRead) into a
//!   [`NarSink`], checking every rule above and rejecting hostile input;
//!   it never reads past the end of the archive, so NARs can be embedded
//!   in a larger stream. [`restore`] unpacks into a new directory and
//!   writes nothing outside it.
//! * [`NarEncoder`] writes a NAR from events (a [`NarSink`] too), so a
//!   parse re-encodes to the same bytes.
//! * [`walk`] is how all of these go through a tree: by directory
//!   descriptors, never by whole paths, so trees nested past `PATH_MAX`
//!   (up to [`MAX_DEPTH`] levels) are archived and unpacked like any
//!   other; its [`walk::remove_tree`] removes what a failed unpack left,
//!   and serves the store for the same job.
//!
//! Unpacking (and removing what it made) is the one place bigtop-core
//! writes to a file system: it is the inverse of reading a tree to hash
//! it, and keeping both halves of the format together lets one test suite
//! hold them to each other.
//!
//! ```
//! use bigtop_core::nar;
//! use bigtop_core::hash::HashAlgo;
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("hello"), "Hello, world!\n")?;
//! let mut archive = Vec::new();
//! nar::dump_path(dir.path(), &mut archive)?;
//! let (hash, size) = nar::hash_path(dir.path(), HashAlgo::Sha256)?;
//! assert_eq!(size, archive.len() as u64);
//! let copy = dir.path().join("copy");
//! nar::restore(&mut &archive[..], &copy)?;
//! assert_eq!(std::fs::read_to_string(copy.join("hello"))?, "Hello, world!\n");
//! # let _ = hash;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod read;
pub mod walk;
mod write;

pub use read::{parse, restore, NarSink, ReadError, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN};
pub use write::{dump_path, hash_file_bytes, hash_path, DumpError, EncodeError, NarEncoder};

/// The first string of every NAR.
pub const MAGIC: &[u8] = b"nix-archive-1";

/// Checks a directory entry name: non-empty, not `.`/`..`, no `/` or NUL.
/// Returns the rule it breaks.
pub fn check_entry_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("it is empty")
    } else if name == b"." || name == b".." {
        Err("`.` and `..` are not allowed")
    } else if name.contains(&b'/') {
        Err("it contains `/`")
    } else if name.contains(&0) {
        Err("it contains NUL")
    } else {
        Ok(())
    }
}

/// Checks a symlink target: non-empty, no NUL, at most
/// [`MAX_TARGET_LEN`] bytes. Returns the rule it breaks.
pub fn check_symlink_target(target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        Err("it is empty")
    } else if target.contains(&0) {
        Err("it contains NUL")
    } else if target.len() as u64 > MAX_TARGET_LEN {
        Err("it is longer than 4095 bytes")
    } else {
        Ok(())
    }
}

/// Number of zero bytes that follow a string of `len` bytes.
pub(crate) const fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

#[cfg(test)]
mod tests;
