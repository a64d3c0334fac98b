//! Cryptographic digests and their text forms.
//!
//! bigtop hashes with blake3; sha256 is there for interoperability with Nix
//! (`nix hash path`, fetchers pinned by sha256, narinfo from Nix caches).
//! A [`Hash`](struct@Hash) prints in four forms:
//!
//! | form | example | use |
//! |---|---|---|
//! | typed (the [`Display`](std::fmt::Display) form) | `blake3:0mdq…` | narinfo, derivations |
//! | SRI | `blake3-47DEQpj8…=` | what users pin in definitions |
//! | base 32 | `0mdq…` | Nix's `--base32` |
//! | hex | `e3b0c442…` | debugging, other tools |
//!
//! ```
//! use bigtop_core::hash::{Hash, HashAlgo};
//! let h = Hash::digest(HashAlgo::Sha256, b"");
//! assert_eq!(h.to_sri(), "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
//! assert_eq!(h.to_string(), "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
//! assert_eq!("sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".parse::<Hash>()?, h);
//! # Ok::<(), bigtop_core::hash::ParseError>(())
//! ```

use std::fmt;
use std::io;
use std::str::FromStr;

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use sha2::Digest as _;
use thiserror::Error;

use crate::base32;

/// A hash algorithm bigtop knows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HashAlgo {
    /// BLAKE3 with 256 bits of output: bigtop's own.
    Blake3,
    /// SHA-256: Nix's, for interoperability.
    Sha256,
}

impl HashAlgo {
    /// The algorithm's name in text forms (`blake3`, `sha256`).
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Blake3 => "blake3",
            HashAlgo::Sha256 => "sha256",
        }
    }

    /// Digest length in bytes.
    pub const fn digest_len(self) -> usize {
        32
    }

    /// Every algorithm, in order.
    pub const ALL: [HashAlgo; 2] = [HashAlgo::Blake3, HashAlgo::Sha256];
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        HashAlgo::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| ParseError::UnknownAlgo {
                input: s.to_owned(),
            })
    }
}

/// A 256-bit BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Blake3Digest(pub [u8; 32]);

impl Blake3Digest {
    /// Hashes `data` in one go.
    pub fn of(data: &[u8]) -> Self {
        Blake3Digest(*blake3::hash(data).as_bytes())
    }

    /// The digest's bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Blake3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blake3Digest({})", base32::encode(&self.0))
    }
}

impl From<Blake3Digest> for Hash {
    fn from(d: Blake3Digest) -> Hash {
        Hash::new(HashAlgo::Blake3, d.0)
    }
}

/// A digest together with the algorithm that made it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash {
    algo: HashAlgo,
    bytes: [u8; 32],
}

/// Why a hash text did not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The algorithm name is not one bigtop knows.
    #[error("unknown hash algorithm `{input}` (expected `blake3` or `sha256`)")]
    UnknownAlgo {
        /// The name given.
        input: String,
    },
    /// The text names no algorithm and none was implied.
    #[error("hash `{input}` names no algorithm (write it as `blake3-…` or `sha256:…`)")]
    MissingAlgo {
        /// The whole text.
        input: String,
    },
    /// The digest part is not base 32, hex or base 64 of the right length.
    #[error("hash `{input}` is not a {algo} digest in base 32 ({b32} characters), hex ({hex}) or base 64 ({b64})", b32 = base32::encoded_len(algo.digest_len()), hex = algo.digest_len() * 2, b64 = algo.digest_len().div_ceil(3) * 4)]
    BadLength {
        /// The whole text.
        input: String,
        /// The algorithm it claims.
        algo: HashAlgo,
    },
    /// The digest part is not valid in the encoding its length implies.
    #[error("hash `{input}` is not valid {encoding}: {detail}")]
    BadCharacter {
        /// The whole text.
        input: String,
        /// The encoding its length implied.
        encoding: &'static str,
        /// What the decoder found wrong.
        detail: String,
    },
}

impl Hash {
    /// A hash from its algorithm and raw bytes.
    pub const fn new(algo: HashAlgo, bytes: [u8; 32]) -> Hash {
        Hash { algo, bytes }
    }

    /// Hashes `data` in one go.
    pub fn digest(algo: HashAlgo, data: &[u8]) -> Hash {
        let mut h = Hasher::new(algo);
        h.update(data);
        h.finish()
    }

    /// The algorithm.
    pub const fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.algo.digest_len()]
    }

    /// Nix's base-32 form without the algorithm.
    pub fn to_base32(&self) -> String {
        base32::encode(self.as_bytes())
    }

    /// Lower-case hex without the algorithm.
    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(self.as_bytes())
    }

    /// Base 64 without the algorithm.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.as_bytes())
    }

    /// The SRI form, `blake3-<base64>`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, self.to_base64())
    }

    /// Parses an SRI text (`sha256-<base64>`).
    pub fn parse_sri(s: &str) -> Result<Hash, ParseError> {
        let (algo, digest) = s.split_once('-').ok_or_else(|| ParseError::MissingAlgo {
            input: s.to_owned(),
        })?;
        let algo: HashAlgo = algo.parse()?;
        Self::decode_base64(s, algo, digest)
    }

    /// Parses any of the forms: SRI, `algo:digest` with the digest in base
    /// 32, hex or base 64, or a bare digest when `implied` names the
    /// algorithm (as a `--algo` flag or a narinfo field does).
    pub fn parse(s: &str, implied: Option<HashAlgo>) -> Result<Hash, ParseError> {
        if let Some((algo, digest)) = s.split_once(':') {
            let algo: HashAlgo = algo.parse()?;
            return Self::decode_any(s, algo, digest);
        }
        // No bare digest form holds `-`: this is SRI, known algorithm or not.
        if s.contains('-') {
            return Self::parse_sri(s);
        }
        match implied {
            Some(algo) => Self::decode_any(s, algo, s),
            None => Err(ParseError::MissingAlgo {
                input: s.to_owned(),
            }),
        }
    }

    fn decode_any(input: &str, algo: HashAlgo, digest: &str) -> Result<Hash, ParseError> {
        let len = algo.digest_len();
        let bytes = if digest.len() == base32::encoded_len(len) {
            base32::decode(digest).map_err(|e| ParseError::BadCharacter {
                input: input.to_owned(),
                encoding: "base 32",
                detail: e.to_string(),
            })?
        } else if digest.len() == len * 2 {
            HEXLOWER_PERMISSIVE
                .decode(digest.as_bytes())
                .map_err(|e| ParseError::BadCharacter {
                    input: input.to_owned(),
                    encoding: "hex",
                    detail: e.to_string(),
                })?
        } else {
            return Self::decode_base64(input, algo, digest);
        };
        Ok(Self::from_slice(algo, &bytes))
    }

    fn decode_base64(input: &str, algo: HashAlgo, digest: &str) -> Result<Hash, ParseError> {
        if digest.len() != algo.digest_len().div_ceil(3) * 4 {
            return Err(ParseError::BadLength {
                input: input.to_owned(),
                algo,
            });
        }
        let bytes = BASE64
            .decode(digest.as_bytes())
            .map_err(|e| ParseError::BadCharacter {
                input: input.to_owned(),
                encoding: "base 64",
                detail: e.to_string(),
            })?;
        if bytes.len() != algo.digest_len() {
            return Err(ParseError::BadLength {
                input: input.to_owned(),
                algo,
            });
        }
        Ok(Self::from_slice(algo, &bytes))
    }

    fn from_slice(algo: HashAlgo, bytes: &[u8]) -> Hash {
        let mut out = [0u8; 32];
        out[..bytes.len()].copy_from_slice(bytes);
        Hash { algo, bytes: out }
    }
}

impl fmt::Display for Hash {
    /// The typed form, `algo:<base32>`, as Nix writes it in narinfo files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Printed for every input of every derivation hashed: no
        // allocation (a 32-byte digest is 52 base-32 characters).
        let bytes = self.as_bytes();
        let mut text = [0u8; 52];
        let text = &mut text[..base32::encoded_len(bytes.len())];
        base32::encode_into(bytes, text);
        f.write_str(self.algo.name())?;
        f.write_str(":")?;
        f.write_str(std::str::from_utf8(text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

impl FromStr for Hash {
    type Err = ParseError;
    /// Accepts the typed form or SRI; a bare digest needs [`Hash::parse`].
    fn from_str(s: &str) -> Result<Hash, ParseError> {
        Hash::parse(s, None)
    }
}

crate::serde_as_text!(Hash);

/// An incremental hasher for any [`HashAlgo`]; also an [`io::Write`] sink so
/// that a NAR can be streamed straight into it.
#[derive(Clone)]
pub enum Hasher {
    /// BLAKE3.
    Blake3(Box<blake3::Hasher>),
    /// SHA-256.
    Sha256(sha2::Sha256),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algo: HashAlgo) -> Hasher {
        match algo {
            HashAlgo::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            HashAlgo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        match self {
            Hasher::Blake3(_) => HashAlgo::Blake3,
            Hasher::Sha256(_) => HashAlgo::Sha256,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Blake3(h) => {
                h.update(data);
            }
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Hash {
        match self {
            Hasher::Blake3(h) => Hash::new(HashAlgo::Blake3, *h.finalize().as_bytes()),
            Hasher::Sha256(h) => Hash::new(HashAlgo::Sha256, h.finalize().into()),
        }
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes and counts what passes through it on the way to
/// `inner` (`io::sink()` to only hash).
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W> std::fmt::Debug for HashingWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashingWriter")
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<W: io::Write> HashingWriter<W> {
    /// Hashes with `algo` what is written to `inner`.
    pub fn new(inner: W, algo: HashAlgo) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(algo),
            written: 0,
        }
    }

    /// The hash and size of what was written, and the inner writer.
    pub fn finish(self) -> (Hash, u64, W) {
        (self.hasher.finish(), self.written, self.inner)
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_forms_of_known_digests() {
        let h = Hash::digest(HashAlgo::Blake3, b"");
        assert_eq!(
            h.to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            h.to_sri(),
            "blake3-rxNJufX5oaagQE3qNtzJSZvLJcmtwRK3zJqTyuQfMmI="
        );
        for text in [
            h.to_string(),
            h.to_sri(),
            format!("blake3:{}", h.to_hex()),
            format!("blake3:{}", h.to_base64()),
        ] {
            assert_eq!(text.parse::<Hash>().unwrap(), h, "{text}");
        }
        assert_eq!(
            Hash::parse(&h.to_base32(), Some(HashAlgo::Blake3)).unwrap(),
            h
        );
    }

    #[test]
    fn rejections_show_the_input() {
        let err = "md5:abc".parse::<Hash>().unwrap_err();
        assert_eq!(
            err,
            ParseError::UnknownAlgo {
                input: "md5".into()
            }
        );
        let err = "sha256:abc".parse::<Hash>().unwrap_err();
        assert_eq!(
            err,
            ParseError::BadLength {
                input: "sha256:abc".into(),
                algo: HashAlgo::Sha256
            }
        );
        assert!(err.to_string().contains("`sha256:abc`"), "{err}");
        let bad32 = format!("sha256:{}", "e".repeat(52));
        assert!(matches!(
            bad32.parse::<Hash>(),
            Err(ParseError::BadCharacter {
                encoding: "base 32",
                ..
            })
        ));
        let badhex = format!("blake3:{}", "g".repeat(64));
        assert!(matches!(
            badhex.parse::<Hash>(),
            Err(ParseError::BadCharacter {
                encoding: "hex",
                ..
            })
        ));
        assert!(matches!(
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73".parse::<Hash>(),
            Err(ParseError::MissingAlgo { .. })
        ));
        assert!(matches!(
            "sha256-AAAA".parse::<Hash>(),
            Err(ParseError::BadLength { .. })
        ));
        assert_eq!(
            "sha512-AAAA".parse::<Hash>(),
            Err(ParseError::UnknownAlgo {
                input: "sha512".into()
            })
        );
        let padded = format!("sha256:z{}", "0".repeat(51));
        let err = padded.parse::<Hash>().unwrap_err().to_string();
        assert!(err.contains("non-zero padding bits"), "{err}");
    }

    proptest! {
        #[test]
        fn every_form_round_trips(bytes in any::<[u8; 32]>(), sha in any::<bool>()) {
            let algo = if sha { HashAlgo::Sha256 } else { HashAlgo::Blake3 };
            let h = Hash::new(algo, bytes);
            prop_assert_eq!(h.to_string().parse::<Hash>().unwrap(), h);
            prop_assert_eq!(Hash::parse_sri(&h.to_sri()).unwrap(), h);
            prop_assert_eq!(Hash::parse(&h.to_hex(), Some(algo)).unwrap(), h);
            prop_assert_eq!(Hash::parse(&h.to_base32(), Some(algo)).unwrap(), h);
        }
    }
}
