//! Fetchers: fixed-output derivations that download a file or a tarball
//! (`file://`, `http://`, `https://`), named by the content they must
//! have. The store's `builtin:fetchurl` does the download and checks the
//! hash; a different URL for the same content changes no path.
//!
//! A fetch needs its expected hash. Without one ([`FetchUrl::unpinned`]),
//! the derivation carries a placeholder hash of zeros, and building it
//! fails with the hash it got — what Nix prints as `got:` — to pin:
//!
//! ```
//! use bigtop_eval::drv::Platform;
//! use bigtop_eval::fetch::FetchUrl;
//! let p = Platform::default();
//! let src = FetchUrl::tarball("https://example.org/hello-2.12.tar.gz")
//!     .sha256("sha256-jZkUKv2SV28wsM18tCqNxoCZmLxdYH2Idh9RLibH2yA=")?
//!     .build(&p)?;
//! assert_eq!(src.name(), "hello-2.12.tar.gz");
//! let again = FetchUrl::tarball("https://mirror.example/hello-2.12.tar.gz")
//!     .name("hello-2.12.tar.gz")
//!     .sha256("sha256-jZkUKv2SV28wsM18tCqNxoCZmLxdYH2Idh9RLibH2yA=")?
//!     .build(&p)?;
//! // Same content, same path: the URL is not part of it.
//! assert_eq!(src.out().path(), again.out().path());
//! # Ok::<(), bigtop_eval::Error>(())
//! ```

use bigtop_core::derivation::builtins::FETCH_URL;
use bigtop_core::hash::{Hash, HashAlgo};
use bigtop_core::{ContentAddress, ContentAddressMethod};

use crate::drv::{Drv, DrvBuilder};
use crate::platform::Platform;
use crate::Error;

/// A download under construction.
#[derive(Debug, Clone)]
#[must_use = "a fetch is made by `build`"]
pub struct FetchUrl {
    urls: Vec<String>,
    name: Option<String>,
    hash: Option<Hash>,
    executable: bool,
    unpack: bool,
}

impl FetchUrl {
    /// The file at `url`, as is (its flat hash is expected).
    pub fn file(url: impl Into<String>) -> Self {
        FetchUrl {
            urls: vec![url.into()],
            name: None,
            hash: None,
            executable: false,
            unpack: false,
        }
    }

    /// The tarball at `url` (tar or gzip-compressed tar), unpacked; one
    /// top directory is stripped. Its recursive (NAR) hash is expected.
    pub fn tarball(url: impl Into<String>) -> Self {
        FetchUrl {
            unpack: true,
            ..FetchUrl::file(url)
        }
    }

    /// Another URL for the same content, tried after the others.
    pub fn mirror(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// The store path's name. Default: the last segment of the first URL.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The expected hash, in any form `Hash::parse` reads (SRI
    /// `sha256-…`, `sha256:…` in base 32 or hex, `blake3:…`).
    pub fn sha256(self, hash: &str) -> Result<Self, Error> {
        let h = Hash::parse(hash, Some(HashAlgo::Sha256)).map_err(|e| Error::BadHash {
            url: self.urls[0].clone(),
            hash: hash.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(self.hash(h))
    }

    /// The expected hash.
    pub fn hash(mut self, hash: Hash) -> Self {
        self.hash = Some(hash);
        self
    }

    /// No hash yet: building fails and prints the one to pin.
    pub fn unpinned(mut self) -> Self {
        self.hash = None;
        self
    }

    /// Makes the downloaded file executable.
    pub fn executable(mut self) -> Self {
        self.executable = true;
        self
    }

    /// The fixed-output derivation.
    pub fn build(self, platform: &Platform) -> Result<Drv, Error> {
        let name = match &self.name {
            Some(n) => n.clone(),
            None => default_name(&self.urls[0]),
        };
        let method = if self.unpack {
            ContentAddressMethod::Recursive
        } else {
            ContentAddressMethod::Flat
        };
        // Zeros: a hash nothing has, so the build reports what it got.
        let hash = self
            .hash
            .unwrap_or_else(|| Hash::new(HashAlgo::Sha256, [0; 32]));
        let mut d = DrvBuilder::new(name)
            .builder(FETCH_URL)
            .fixed_output(ContentAddress::new(method, hash));
        d = if self.urls.len() == 1 {
            d.env("url", self.urls[0].clone())
        } else {
            d.env("urls", self.urls.join(" "))
        };
        if self.executable {
            d = d.env("executable", "1");
        }
        if self.unpack {
            d = d.env("unpack", "1");
        }
        d.build(platform)
    }
}

/// `hello-2.12.tar.gz` from `https://host/path/hello-2.12.tar.gz?x=1`.
fn default_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-._?=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match cleaned.trim_start_matches('.') {
        "" => "download".to_owned(),
        n => n.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_last_path_segment() {
        assert_eq!(
            default_name("https://h/a/hello-2.12.tar.gz?x=1"),
            "hello-2.12.tar.gz"
        );
        assert_eq!(default_name("file:///srv/f%20g"), "f_20g");
        assert_eq!(default_name("https://h/"), "h");
        assert_eq!(default_name("https://h/.hidden"), "hidden");
    }
}
