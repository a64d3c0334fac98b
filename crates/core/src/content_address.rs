//! Content addresses: how a path's contents determine its name.
//!
//! The text form is Nix's, as found in narinfo `CA:` fields:
//! `fixed:r:sha256:<base32>` (a tree, hashed as a NAR), `fixed:sha256:<base32>`
//! (a single flat file) and `text:sha256:<base32>` (a text file with
//! references, like a `.drv`). bigtop writes blake3 in the same places.
//!
//! ```
//! use bigtop_core::content_address::{ContentAddress, ContentAddressMethod};
//! let ca: ContentAddress = "fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73".parse()?;
//! assert_eq!(ca.method, ContentAddressMethod::Recursive);
//! assert_eq!(ca.to_string(), "fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
//! # Ok::<(), bigtop_core::content_address::ParseError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::hash::{self, Hash, HashAlgo};

/// What a content hash covers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ContentAddressMethod {
    /// The bytes of a single regular, non-executable file.
    Flat,
    /// The NAR serialisation of a tree (file, directory or symlink).
    Recursive,
    /// The bytes of a text file that may refer to other store paths.
    Text,
}

impl ContentAddressMethod {
    /// The prefix before the algorithm in text forms: `fixed:`, `fixed:r:`
    /// or `text:`.
    pub const fn prefix(self) -> &'static str {
        match self {
            ContentAddressMethod::Flat => "fixed:",
            ContentAddressMethod::Recursive => "fixed:r:",
            ContentAddressMethod::Text => "text:",
        }
    }
}

/// A content address: the method and the expected hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentAddress {
    /// What the hash covers.
    pub method: ContentAddressMethod,
    /// The hash.
    pub hash: Hash,
}

/// Why a content address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// No `fixed:`, `fixed:r:` or `text:` prefix.
    #[error("content address `{input}` does not start with `fixed:`, `fixed:r:` or `text:`")]
    BadMethod {
        /// The whole text.
        input: String,
    },
    /// The hash after the method is invalid.
    #[error("content address `{input}` has an invalid hash")]
    BadHash {
        /// The whole text.
        input: String,
        /// Why the hash was rejected.
        #[source]
        source: hash::ParseError,
    },
}

impl ContentAddress {
    /// A content address from its parts.
    pub const fn new(method: ContentAddressMethod, hash: Hash) -> Self {
        ContentAddress { method, hash }
    }

    /// The hash algorithm.
    pub fn algo(&self) -> HashAlgo {
        self.hash.algo()
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.method.prefix(), self.hash)
    }
}

impl FromStr for ContentAddress {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        use ContentAddressMethod as M;
        // Longest prefix first: `fixed:r:` before `fixed:`.
        let (method, rest) = [M::Recursive, M::Flat, M::Text]
            .into_iter()
            .find_map(|m| s.strip_prefix(m.prefix()).map(|rest| (m, rest)))
            .ok_or_else(|| ParseError::BadMethod {
                input: s.to_owned(),
            })?;
        let hash = Hash::parse(rest, None).map_err(|source| ParseError::BadHash {
            input: s.to_owned(),
            source,
        })?;
        Ok(ContentAddress { method, hash })
    }
}

crate::serde_as_text!(ContentAddress);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_unknown_methods_and_hashes() {
        assert!(matches!(
            "fixed:x:sha256:00".parse::<ContentAddress>(),
            Err(ParseError::BadHash { .. })
        ));
        assert_eq!(
            "nar:sha256:00".parse::<ContentAddress>(),
            Err(ParseError::BadMethod {
                input: "nar:sha256:00".into()
            })
        );
    }

    proptest! {
        #[test]
        fn round_trips(bytes in any::<[u8; 32]>(), m in 0..3u8, sha in any::<bool>()) {
            let method = [ContentAddressMethod::Flat, ContentAddressMethod::Recursive, ContentAddressMethod::Text][m as usize];
            let algo = if sha { HashAlgo::Sha256 } else { HashAlgo::Blake3 };
            let ca = ContentAddress::new(method, Hash::new(algo, bytes));
            prop_assert_eq!(ca.to_string().parse::<ContentAddress>().unwrap(), ca);
        }
    }
}
