//! What a request's path asks for. Names are parsed, never joined to a
//! file-system path: a digest is 32 characters of Nix's base 32, a NAR's
//! name is that digest and the NAR's recorded hash, so nothing a client
//! sends can name a file outside the store, or anything but a store path.

use bigtop_core::base32;
use bigtop_core::{Hash, StorePathDigest};
use bigtop_store::cache::Compression;

/// A request the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/nix-cache-info`
    CacheInfo,
    /// `/<digest>.narinfo`
    NarInfo(StorePathDigest),
    /// `/nar/<digest>-<recorded NAR hash>.nar[.zst|.xz]`
    Nar {
        /// The path's digest.
        digest: StorePathDigest,
        /// The bytes of the NAR hash the store recorded when the narinfo
        /// was made: a path deleted and added again with other contents
        /// since is not served under a stale narinfo.
        nar_hash: Vec<u8>,
        /// As the name's extension says.
        compression: Compression,
    },
}

/// Why a path is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a file a binary cache has (404).
    NotFound,
    /// Shaped as a narinfo's or NAR's name, but not a valid one (400).
    BadName,
}

/// The longest base-32 hash text (SHA-512's): a bound before decoding.
const MAX_HASH_CHARS: usize = 103;

/// The route of a request's path (as sent, not percent-decoded: a valid
/// name has nothing to decode).
pub(crate) fn parse(path: &str) -> Result<Route, Refusal> {
    let Some(name) = path.strip_prefix('/') else {
        return Err(Refusal::NotFound);
    };
    if name == "nix-cache-info" {
        return Ok(Route::CacheInfo);
    }
    if let Some(digest) = name.strip_suffix(".narinfo") {
        if digest.contains('/') {
            return Err(Refusal::NotFound);
        }
        return StorePathDigest::parse(digest)
            .map(Route::NarInfo)
            .map_err(|_| Refusal::BadName);
    }
    if let Some(file) = name.strip_prefix("nar/") {
        return parse_nar(file).ok_or(Refusal::BadName);
    }
    Err(Refusal::NotFound)
}

fn parse_nar(file: &str) -> Option<Route> {
    let (stem, compression) = [
        (".nar.zst", Compression::Zstd),
        (".nar.xz", Compression::Xz),
        (".nar", Compression::None),
    ]
    .into_iter()
    .find_map(|(ext, c)| file.strip_suffix(ext).map(|stem| (stem, c)))?;
    let (digest, hash) = stem.split_once('-')?;
    if hash.len() > MAX_HASH_CHARS {
        return None;
    }
    Some(Route::Nar {
        digest: StorePathDigest::parse(digest).ok()?,
        nar_hash: base32::decode(hash).ok()?,
        compression,
    })
}

/// The name a narinfo gives the NAR of the path with `digest`, whose
/// recorded NAR hash is `nar_hash`, relative to the cache.
pub(crate) fn nar_url(digest: &StorePathDigest, nar_hash: &Hash, c: Compression) -> String {
    format!("nar/{digest}-{}.nar{}", nar_hash.to_base32(), c.extension())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bigtop_core::HashAlgo;

    const DIGEST: &str = "0c0s3cb0lrmq5k1yhjl5i8dqjz5f9gbi";

    #[test]
    fn a_nar_url_parses_back_to_its_route_in_every_compression() {
        let digest = StorePathDigest::parse(DIGEST).unwrap();
        let hash = Hash::digest(HashAlgo::Blake3, b"nar");
        for c in [Compression::None, Compression::Zstd, Compression::Xz] {
            let url = nar_url(&digest, &hash, c);
            assert_eq!(
                parse(&format!("/{url}")),
                Ok(Route::Nar {
                    digest,
                    nar_hash: hash.as_bytes().to_vec(),
                    compression: c
                }),
                "{url}"
            );
        }
    }

    #[test]
    fn known_files_parse_and_everything_else_is_refused() {
        assert_eq!(parse("/nix-cache-info"), Ok(Route::CacheInfo));
        assert_eq!(
            parse(&format!("/{DIGEST}.narinfo")),
            Ok(Route::NarInfo(StorePathDigest::parse(DIGEST).unwrap()))
        );
        let not_found = [
            "",
            "/",
            "nix-cache-info",
            "/nix-cache-info/",
            "/../../etc/passwd",
            "/etc/passwd",
            "/log/x.drv",
            "/../etc/passwd.narinfo",
            &format!("/x/{DIGEST}.narinfo"),
            &format!("/{DIGEST}"),
        ];
        for p in not_found {
            assert_eq!(parse(p), Err(Refusal::NotFound), "{p:?}");
        }
        let h = "1".repeat(52);
        let bad = [
            "/.narinfo".to_owned(),
            format!("/{}.narinfo", &DIGEST[1..]),
            format!("/{}e.narinfo", &DIGEST[1..]),
            "/nar/..%2f..".to_owned(),
            "/nar/../../etc/passwd".to_owned(),
            format!("/nar/{DIGEST}.nar"),
            format!("/nar/{DIGEST}-{h}.nar.gz"),
            format!("/nar/{DIGEST}-{h}e.nar"),
            format!("/nar/{DIGEST}-{}.nar", "1".repeat(200)),
            format!("/nar/x/{DIGEST}-{h}.nar"),
            format!("/nar/{DIGEST}-{h}.nar/"),
        ];
        for p in &bad {
            assert_eq!(parse(p), Err(Refusal::BadName), "{p:?}");
        }
    }
}
