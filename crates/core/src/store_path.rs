//! Store directories and store paths.
//!
//! A store path is `<store dir>/<digest>-<name>`: a 160-bit digest printed
//! in Nix's base 32 (32 characters) and a human-readable name. The logical
//! store dir is folded into every digest, so the same definition gives the
//! same path on every machine that uses the same store dir, and different
//! paths in stores that are mounted elsewhere.
//!
//! ## How a digest is made
//!
//! Every path is named by a *fingerprint*, a line of text
//!
//! ```text
//! <kind>:<algo>:<hex of inner hash>:<store dir>:<name>
//! ```
//!
//! hashed with blake3 and truncated to its first 20 bytes (blake3 is an
//! extendable-output function, so a prefix is as strong as any 160-bit
//! hash). The kinds are those of Nix:
//!
//! | kind | inner hash | made by |
//! |---|---|---|
//! | `text[:<ref>…]` | hash of the file's bytes | [`StoreDir::make_text_path`] (`.drv` files, builtin text) |
//! | `source[:<ref>…][:self]` | NAR hash of the tree | [`StoreDir::make_source_path`] (added sources, recursive fixed outputs) |
//! | `output:<output name>` | derivation hash modulo, or a fixed-output fingerprint | [`StoreDir::make_output_path`], [`StoreDir::make_fixed_output_path`] |
//!
//! References (`<ref>`) are full store paths, sorted, so that two paths
//! with the same contents but different references differ.
//!
//! ```
//! use bigtop_core::store_path::{StoreDir, StorePath};
//! let dir = StoreDir::default();
//! let path = dir.parse_path("/bigtop/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12")?;
//! assert_eq!(path.name(), "hello-2.12");
//! assert_eq!(dir.display(&path).to_string(), "/bigtop/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12");
//! # Ok::<(), bigtop_core::store_path::ParseError>(())
//! ```

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use thiserror::Error;

use crate::base32;
use crate::hash::Hash;

/// Bytes in a store path digest.
pub const DIGEST_BYTES: usize = 20;
/// Characters in the printed digest.
pub const DIGEST_CHARS: usize = 32;
/// Longest allowed name, as in Nix.
pub const MAX_NAME_LEN: usize = 211;

/// The default logical store directory.
pub const DEFAULT_STORE_DIR: &str = "/bigtop/store";

/// The 160-bit digest that identifies a store path.
///
/// Ordered as its text is: Nix's base 32 writes the bytes as one
/// little-endian number, most significant digit first, in an alphabet in
/// ASCII order, so comparing the bytes from the last one to the first
/// gives the order of the printed digests (and of `ls` in a store).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct StorePathDigest(pub [u8; DIGEST_BYTES]);

impl Ord for StorePathDigest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.iter().rev().cmp(other.0.iter().rev())
    }
}

impl PartialOrd for StorePathDigest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl StorePathDigest {
    /// Parses the 32-character base-32 form.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.len() != DIGEST_CHARS {
            return Err(ParseError::BadDigest {
                input: s.to_owned(),
            });
        }
        let bytes = base32::decode(s).map_err(|_| ParseError::BadDigest {
            input: s.to_owned(),
        })?;
        let mut out = [0u8; DIGEST_BYTES];
        out.copy_from_slice(&bytes);
        Ok(StorePathDigest(out))
    }
}

impl StorePathDigest {
    /// The digest's base-32 text, without allocating.
    fn encode(&self) -> [u8; DIGEST_CHARS] {
        let mut text = [0u8; DIGEST_CHARS];
        base32::encode_into(&self.0, &mut text);
        text
    }
}

impl fmt::Display for StorePathDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The alphabet is ASCII.
        f.write_str(std::str::from_utf8(&self.encode()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for StorePathDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePathDigest({self})")
    }
}

/// Why a store path, name or store dir was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The digest part is not 32 base-32 characters.
    #[error("store path digest `{input}` is not 32 characters of Nix base 32")]
    BadDigest {
        /// The digest text.
        input: String,
    },
    /// The base name has no `-` after the digest.
    #[error("store path base name `{input}` is not `<32-character digest>-<name>`")]
    BadBaseName {
        /// The base name.
        input: String,
    },
    /// The name part breaks Nix's naming rules.
    #[error("store path name `{input}` is invalid: {reason}")]
    BadName {
        /// The name.
        input: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A full path does not lie directly in the store dir.
    #[error("path `{input}` is not in the store `{store_dir}`")]
    NotInStore {
        /// The path.
        input: String,
        /// The store dir it was checked against.
        store_dir: String,
    },
    /// A store dir that is not an absolute, normalized path.
    #[error("store directory `{input}` is invalid: {reason}")]
    BadStoreDir {
        /// The directory given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Checks a store path name against Nix's rules.
pub fn validate_name(name: &str) -> Result<(), ParseError> {
    let bad = |reason| {
        Err(ParseError::BadName {
            input: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 211 characters");
    }
    if name.starts_with('.') {
        return bad("it starts with `.`");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
    {
        return bad("only the characters A-Z a-z 0-9 + - . _ ? = are allowed");
    }
    Ok(())
}

/// A store path without its directory: digest and name.
///
/// Ordered as their base names are as text (digest, then name), like a
/// store directory listing. Its [`Display`](fmt::Display) and serde forms are the base name
/// `<digest>-<name>`; use [`StoreDir::display`] for the full path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    digest: StorePathDigest,
    name: Box<str>,
}

impl StorePath {
    /// A store path from a digest and a name, checking the name.
    pub fn new(digest: StorePathDigest, name: &str) -> Result<Self, ParseError> {
        validate_name(name)?;
        Ok(StorePath {
            digest,
            name: name.into(),
        })
    }

    /// Parses a base name, `<digest>-<name>`.
    pub fn from_base_name(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::BadBaseName {
            input: s.to_owned(),
        };
        if s.len() < DIGEST_CHARS + 2 || s.as_bytes()[DIGEST_CHARS] != b'-' {
            return Err(bad());
        }
        let (digest, name) = (&s[..DIGEST_CHARS], &s[DIGEST_CHARS + 1..]);
        let digest = StorePathDigest::parse(digest)?;
        StorePath::new(digest, name)
    }

    /// The digest.
    pub fn digest(&self) -> &StorePathDigest {
        &self.digest
    }

    /// The name after the digest.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a derivation file (its name ends in `.drv`).
    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }

    /// Its full path in the store `dir`, for printing: `Display` prints
    /// only the base name (`<digest>-<name>`), which names it in any
    /// store.
    ///
    /// ```
    /// use bigtop_core::{StoreDir, StorePath};
    /// let p = StorePath::from_base_name("00bgd045z0d4icpbc2yyz4gx48ak44la-hello-1.0")?;
    /// let dir = StoreDir::new("/bigtop/store")?;
    /// assert_eq!(p.to_string(), "00bgd045z0d4icpbc2yyz4gx48ak44la-hello-1.0");
    /// assert_eq!(
    ///     p.display_in(&dir).to_string(),
    ///     "/bigtop/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello-1.0"
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn display_in<'a>(&'a self, dir: &'a StoreDir) -> DisplayPath<'a> {
        dir.display(self)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Printed for every row a batch registers: no format machinery.
        let digest = self.digest.encode();
        f.write_str(std::str::from_utf8(&digest).map_err(|_| fmt::Error)?)?;
        f.write_str("-")?;
        f.write_str(&self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl FromStr for StorePath {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        StorePath::from_base_name(s)
    }
}

crate::serde_as_text!(StorePath);

/// The logical store directory: part of every path's identity.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct StoreDir(Box<str>);

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir(DEFAULT_STORE_DIR.into())
    }
}

impl StoreDir {
    /// A store dir from an absolute path without `.`/`..` components,
    /// duplicate or trailing slashes.
    pub fn new(dir: &str) -> Result<Self, ParseError> {
        let bad = |reason| {
            Err(ParseError::BadStoreDir {
                input: dir.to_owned(),
                reason,
            })
        };
        if !dir.starts_with('/') {
            return bad("it must be absolute");
        }
        if dir.len() == 1 {
            return bad("it must not be `/`");
        }
        if dir.ends_with('/') {
            return bad("it must not end in `/`");
        }
        if dir[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return bad("it must be normalized (no empty, `.` or `..` components)");
        }
        if dir.contains(['\0', ':', '\n']) {
            return bad("it must not contain NUL, `:` or a newline");
        }
        Ok(StoreDir(dir.into()))
    }

    /// The directory as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory as a path.
    pub fn as_path(&self) -> &Path {
        Path::new(&*self.0)
    }

    /// Parses a full store path, `<store dir>/<digest>-<name>`, with nothing
    /// after it.
    pub fn parse_path(&self, s: &str) -> Result<StorePath, ParseError> {
        match self.parse_path_prefix(s)? {
            (path, "") => Ok(path),
            _ => Err(ParseError::NotInStore {
                input: s.to_owned(),
                store_dir: self.0.to_string(),
            }),
        }
    }

    /// Parses a path inside the store, `<store dir>/<digest>-<name>[/rest]`,
    /// returning the store path and the rest (empty or starting with `/`).
    pub fn parse_path_prefix<'s>(&self, s: &'s str) -> Result<(StorePath, &'s str), ParseError> {
        let rest = s
            .strip_prefix(&*self.0)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| ParseError::NotInStore {
                input: s.to_owned(),
                store_dir: self.0.to_string(),
            })?;
        let (base, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        Ok((StorePath::from_base_name(base)?, tail))
    }

    /// The full path of `path` in this store, for printing.
    pub fn display<'a>(&'a self, path: &'a StorePath) -> DisplayPath<'a> {
        DisplayPath { dir: self, path }
    }

    /// The full path of `path` as an owned string.
    pub fn full(&self, path: &StorePath) -> String {
        self.display(path).to_string()
    }

    /// Makes a store path from its fingerprint (see the module docs).
    pub fn make_store_path(
        &self,
        kind: &str,
        inner: &Hash,
        name: &str,
    ) -> Result<StorePath, ParseError> {
        validate_name(name)?;
        // `<kind>:<algo>:<hex digest>:<store dir>:<name>`, hashed as it is
        // written (every evaluated derivation makes several of these).
        let mut h = blake3::Hasher::new();
        let mut hex = [0u8; 128];
        let digest_bytes = inner.as_bytes();
        let hex = &mut hex[..digest_bytes.len() * 2];
        for (i, b) in digest_bytes.iter().enumerate() {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            hex[2 * i] = DIGITS[usize::from(b >> 4)];
            hex[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        for part in [
            kind.as_bytes(),
            b":",
            inner.algo().name().as_bytes(),
            b":",
            hex,
            b":",
            self.0.as_bytes(),
            b":",
            name.as_bytes(),
        ] {
            h.update(part);
        }
        let full = h.finalize();
        let mut digest = [0u8; DIGEST_BYTES];
        digest.copy_from_slice(&full.as_bytes()[..DIGEST_BYTES]);
        Ok(StorePath {
            digest: StorePathDigest(digest),
            name: name.into(),
        })
    }

    fn kind_with_refs<'a>(
        &self,
        kind: &str,
        refs: impl IntoIterator<Item = &'a StorePath>,
    ) -> String {
        let mut refs: Vec<&StorePath> = refs.into_iter().collect();
        refs.sort();
        refs.dedup();
        let mut out = String::with_capacity(kind.len() + refs.len() * (self.0.len() + 64));
        out.push_str(kind);
        for r in refs {
            use fmt::Write as _;
            let _ = write!(out, ":{}", self.display(r));
        }
        out
    }

    /// The path of a text file (a `.drv`, a builtin text) whose bytes hash
    /// to `content` and that refers to `references`.
    pub fn make_text_path<'a>(
        &self,
        name: &str,
        content: &Hash,
        references: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<StorePath, ParseError> {
        self.make_store_path(&self.kind_with_refs("text", references), content, name)
    }

    /// The path of a tree added by content: its NAR hash, its references to
    /// other paths and whether it refers to itself.
    pub fn make_source_path<'a>(
        &self,
        name: &str,
        nar_hash: &Hash,
        references: impl IntoIterator<Item = &'a StorePath>,
        self_reference: bool,
    ) -> Result<StorePath, ParseError> {
        let mut kind = self.kind_with_refs("source", references);
        if self_reference {
            kind.push_str(":self");
        }
        self.make_store_path(&kind, nar_hash, name)
    }

    /// The path of output `output` of an input-addressed derivation named
    /// `drv_name` whose hash modulo is `drv_hash`. The output `out` is named
    /// like the derivation; any other gets `-<output>` appended.
    pub fn make_output_path(
        &self,
        drv_hash: &Hash,
        output: &str,
        drv_name: &str,
    ) -> Result<StorePath, ParseError> {
        self.make_store_path(
            &format!("output:{output}"),
            drv_hash,
            &output_path_name(drv_name, output),
        )
    }

    /// The path of a fixed-output derivation's output, from the expected
    /// content alone: how it is fetched does not matter.
    pub fn make_fixed_output_path(
        &self,
        name: &str,
        ca: &crate::content_address::ContentAddress,
    ) -> Result<StorePath, ParseError> {
        use crate::content_address::ContentAddressMethod as M;
        match ca.method {
            // A recursive hash is a NAR hash: the same path as adding the
            // tree by content, so a fetched source and a local copy coincide.
            M::Recursive => self.make_source_path(name, &ca.hash, [], false),
            M::Text => self.make_text_path(name, &ca.hash, []),
            M::Flat => {
                let inner = Hash::digest(
                    crate::hash::HashAlgo::Blake3,
                    format!("fixed:out:{ca}:").as_bytes(),
                );
                self.make_store_path("output:out", &inner, name)
            }
        }
    }
}

/// The store path name of output `output` of a derivation named `drv_name`.
pub fn output_path_name(drv_name: &str, output: &str) -> String {
    if output == "out" {
        drv_name.to_owned()
    } else {
        format!("{drv_name}-{output}")
    }
}

impl FromStr for StoreDir {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        StoreDir::new(s)
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full store path for printing, from [`StoreDir::display`].
#[derive(Clone, Copy, Debug)]
pub struct DisplayPath<'a> {
    dir: &'a StoreDir,
    path: &'a StorePath,
}

impl fmt::Display for DisplayPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dir.0, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashAlgo;
    use proptest::prelude::*;

    const BASE: &str = "00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12";

    #[test]
    fn parses_and_prints() {
        let dir = StoreDir::default();
        let p = StorePath::from_base_name(BASE).unwrap();
        assert_eq!(p.to_string(), BASE);
        assert_eq!(dir.full(&p), format!("/bigtop/store/{BASE}"));
        let inside = format!("/bigtop/store/{BASE}/bin/hello");
        let (q, rest) = dir.parse_path_prefix(&inside).unwrap();
        assert_eq!((q, rest), (p.clone(), "/bin/hello"));
        assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{BASE}\""));
        assert_eq!(
            serde_json::from_str::<StorePath>(&format!("\"{BASE}\"")).unwrap(),
            p
        );
    }

    #[test]
    fn rejects_bad_names() {
        let d = "00bgd045z0d4icpbc2yyz4gx48ak44la";
        for (name, reason) in [
            ("", "it is empty"),
            (".hidden", "it starts with `.`"),
            (
                "a b",
                "only the characters A-Z a-z 0-9 + - . _ ? = are allowed",
            ),
            (
                "a/b",
                "only the characters A-Z a-z 0-9 + - . _ ? = are allowed",
            ),
            (
                "é",
                "only the characters A-Z a-z 0-9 + - . _ ? = are allowed",
            ),
        ] {
            let base = format!("{d}-{name}");
            let err = StorePath::from_base_name(&base).unwrap_err();
            if name.is_empty() {
                assert!(matches!(err, ParseError::BadBaseName { .. }), "{err}");
            } else {
                assert_eq!(
                    err,
                    ParseError::BadName {
                        input: name.into(),
                        reason
                    }
                );
            }
        }
        let long = "a".repeat(212);
        assert!(StorePath::from_base_name(&format!("{d}-{long}")).is_err());
        assert!(StorePath::from_base_name(&format!("{d}-{}", &long[1..])).is_ok());
        let err = StorePath::from_base_name("00bgd045z0d4icpbc2yyz4gx48ak44le-x").unwrap_err();
        assert!(
            err.to_string().contains("00bgd045z0d4icpbc2yyz4gx48ak44le"),
            "{err}"
        );
    }

    #[test]
    fn rejects_paths_outside_the_store_and_bad_dirs() {
        let dir = StoreDir::default();
        assert!(matches!(
            dir.parse_path(&format!("/nix/store/{BASE}")),
            Err(ParseError::NotInStore { .. })
        ));
        assert!(matches!(
            dir.parse_path(&format!("/bigtop/store/{BASE}/bin")),
            Err(ParseError::NotInStore { .. })
        ));
        for bad in ["relative", "/", "/a/", "/a//b", "/a/./b", "/a/../b"] {
            assert!(StoreDir::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_dir_is_part_of_identity() {
        let h = Hash::digest(HashAlgo::Blake3, b"contents");
        let a = StoreDir::default().make_text_path("x", &h, []).unwrap();
        let b = StoreDir::new("/other/store")
            .unwrap()
            .make_text_path("x", &h, [])
            .unwrap();
        assert_ne!(a, b);
        // Stable across releases: a change here changes every path of every user.
        assert_eq!(a.to_string(), "w814gfsy9lsx3g6hfah7g0lwsyd4ap4n-x");
    }

    proptest! {
        #[test]
        fn base_name_round_trips(digest in any::<[u8; 20]>(), name in "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,60}") {
            let p = StorePath::new(StorePathDigest(digest), &name).unwrap();
            prop_assert_eq!(StorePath::from_base_name(&p.to_string()).unwrap(), p.clone());
            let dir = StoreDir::default();
            prop_assert_eq!(dir.parse_path(&dir.full(&p)).unwrap(), p);
        }

        #[test]
        fn order_is_text_order(a in any::<[u8; 20]>(), b in any::<[u8; 20]>(), na in "[a-z]{1,3}", nb in "[a-z]{1,3}") {
            let pa = StorePath::new(StorePathDigest(a), &na).unwrap();
            let pb = StorePath::new(StorePathDigest(b), &nb).unwrap();
            prop_assert_eq!(pa.cmp(&pb), pa.to_string().cmp(&pb.to_string()));
            prop_assert_eq!(pa == pb, a == b && na == nb);
        }
    }
}
