//! Narinfo: the metadata a binary cache serves for each store path.
//!
//! A binary cache is plain files: for each path, `<digest>.narinfo` says
//! where its archive is, how it is compressed, what it hashes to, what it
//! refers to and who signed it. The text form is Nix's, one `Key: value`
//! per line, so bigtop reads Nix caches and Nix reads bigtop's:
//!
//! ```text
//! StorePath: /nix/store/fvg5vr8gqb5fk5aaixhrck9fxmxj7phz-a
//! URL: nar/15np3b9i71bby1i7v3fxjnxga0wrmqbn96rbqkan8k7w3s02b9gh.nar
//! Compression: none
//! FileHash: sha256:15np3b9i71bby1i7v3fxjnxga0wrmqbn96rbqkan8k7w3s02b9gh
//! FileSize: 168
//! NarHash: sha256:15np3b9i71bby1i7v3fxjnxga0wrmqbn96rbqkan8k7w3s02b9gh
//! NarSize: 168
//! References: w320iz5b4848q2l7a7x8mw2vymm22ddg-b
//! Sig: test.example.org-1:IQAxXkoOs2sn1tnSLSMhBubIkSVPuF8xLRZPwnGrfVP6+vw7uT6WKNp/jP1W8kuRsneCPpSam+N6YIdwHuGlDw==
//! CA: text:sha256:0ria265d02a3h3jf5v0l0wn54lq6f767hlgdyw9fz5sr65x2fa8c
//! ```
//!
//! | key | value | |
//! |---|---|---|
//! | `StorePath` | the full store path | required |
//! | `URL` | where the archive is, relative to the cache | required |
//! | `Compression` | `xz`, `zstd`, `none`, … | optional |
//! | `FileHash`, `FileSize` | hash and size of the (compressed) file | optional |
//! | `NarHash`, `NarSize` | hash and size of the uncompressed NAR | required |
//! | `References` | base names, separated by spaces; may be empty | always printed |
//! | `Deriver` | base name of the `.drv` that built the path | optional |
//! | `Sig` | a [`Signature`]; one line per signature | repeated |
//! | `CA` | a [`ContentAddress`] | optional |
//!
//! Fields print in that order, each line ending in `\n`; absent optional
//! fields are left out. References print sorted as text, as Nix prints
//! them. Hashes print in typed form (`sha256:<base 32>`) and parse in typed
//! or SRI form.
//!
//! Parsing is as lenient as Nix where that is harmless: unknown keys are
//! ignored (newer writers may add some), empty lines are skipped, the final
//! newline may be missing and `Deriver: unknown-deriver` (written by old
//! Nix versions) means no deriver. A line without `:`, a known key given
//! twice (except `Sig`), an invalid number, hash, path, signature or
//! content address, or a missing required field is a [`ParseError`].
//!
//! ```
//! use bigtop_core::narinfo::NarInfo;
//! use bigtop_core::signing::{SecretKey, TrustedKeys};
//! use bigtop_core::{Hash, HashAlgo, StoreDir};
//!
//! let dir = StoreDir::default();
//! let path = dir.parse_path("/bigtop/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12")?;
//! let nar_hash = Hash::digest(HashAlgo::Blake3, b"the archive");
//! let mut info = NarInfo::new(path, "nar/hello.nar.zst", nar_hash, 4096);
//! info.compression = Some("zstd".into());
//!
//! let key = SecretKey::generate("cache.example.org-1")?;
//! info.sign(&dir, &key);
//! let text = info.to_text(&dir);
//! assert!(text.starts_with("StorePath: /bigtop/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12\n"));
//!
//! let parsed = NarInfo::parse(&dir, &text)?;
//! assert_eq!(parsed, info);
//! let trusted: TrustedKeys = [key.public()].into_iter().collect();
//! assert_eq!(parsed.verify(&dir, &trusted)?.name(), "cache.example.org-1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

use crate::content_address::{self, ContentAddress};
use crate::hash::{self, Hash};
use crate::signing::{self, SecretKey, Signature, TrustedKeys, VerifyError};
use crate::store_path::{self, StoreDir, StorePath};

/// The metadata of one store path in a binary cache.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NarInfo {
    /// The path this is about (`StorePath:`).
    pub store_path: StorePath,
    /// Where the archive is, relative to the cache root (`URL:`). Must not
    /// contain a newline; printing does not check.
    pub url: String,
    /// How the archive file is compressed (`Compression:`), if said. Must
    /// not contain a newline; printing does not check.
    pub compression: Option<String>,
    /// Hash of the archive file as stored (`FileHash:`).
    pub file_hash: Option<Hash>,
    /// Size in bytes of the archive file as stored (`FileSize:`).
    pub file_size: Option<u64>,
    /// Hash of the uncompressed NAR (`NarHash:`).
    pub nar_hash: Hash,
    /// Size in bytes of the uncompressed NAR (`NarSize:`).
    pub nar_size: u64,
    /// The paths this path refers to, possibly itself (`References:`).
    pub references: BTreeSet<StorePath>,
    /// The derivation that built the path (`Deriver:`), if known.
    pub deriver: Option<StorePath>,
    /// Signatures over the path's [fingerprint](NarInfo::fingerprint)
    /// (`Sig:`, one line each), in file order.
    pub signatures: Vec<Signature>,
    /// The content address, for paths named by their contents (`CA:`).
    pub ca: Option<ContentAddress>,
}

/// Why a narinfo text was rejected. Line numbers count from 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A non-empty line with no `:` after its key.
    #[error("line {line} of narinfo, `{text}`, is not `<key>: <value>`")]
    MissingColon {
        /// The line number.
        line: usize,
        /// The whole line.
        text: String,
    },
    /// A single-valued key given a second time.
    #[error("line {line} of narinfo gives `{key}` a second time, as `{value}`")]
    Duplicate {
        /// The line number of the second occurrence.
        line: usize,
        /// The key.
        key: &'static str,
        /// The second value.
        value: String,
    },
    /// A size that is not a decimal number that fits in 64 bits.
    #[error("line {line} of narinfo: `{key}` value `{value}` is not a decimal number of bytes")]
    BadNumber {
        /// The line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
    },
    /// A store path (full for `StorePath`, a base name for `References`
    /// and `Deriver`) that does not parse.
    #[error("line {line} of narinfo: `{key}` value `{value}` is not a valid store path")]
    BadPath {
        /// The line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// The offending path (for `References`, the one bad entry).
        value: String,
        /// Why it was rejected.
        #[source]
        source: store_path::ParseError,
    },
    /// A hash that does not parse.
    #[error("line {line} of narinfo: `{key}` value `{value}` is not a valid hash")]
    BadHash {
        /// The line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// Why it was rejected.
        #[source]
        source: hash::ParseError,
    },
    /// A signature that does not parse.
    #[error("line {line} of narinfo: `{key}` value `{value}` is not a valid signature")]
    BadSignature {
        /// The line number.
        line: usize,
        /// The key (`Sig`).
        key: &'static str,
        /// The value given.
        value: String,
        /// Why it was rejected.
        #[source]
        source: signing::ParseError,
    },
    /// A content address that does not parse.
    #[error("line {line} of narinfo: `{key}` value `{value}` is not a valid content address")]
    BadContentAddress {
        /// The line number.
        line: usize,
        /// The key (`CA`).
        key: &'static str,
        /// The value given.
        value: String,
        /// Why it was rejected (boxed: it nests a hash error and is rare).
        #[source]
        source: Box<content_address::ParseError>,
    },
    /// A required key is absent.
    #[error("narinfo has no `{key}` line")]
    Missing {
        /// The key.
        key: &'static str,
    },
}

/// Keys in print order.
const STORE_PATH: &str = "StorePath";
const URL: &str = "URL";
const COMPRESSION: &str = "Compression";
const FILE_HASH: &str = "FileHash";
const FILE_SIZE: &str = "FileSize";
const NAR_HASH: &str = "NarHash";
const NAR_SIZE: &str = "NarSize";
const REFERENCES: &str = "References";
const DERIVER: &str = "Deriver";
const SIG: &str = "Sig";
const CA: &str = "CA";

/// What old Nix versions write when the deriver is not known.
const UNKNOWN_DERIVER: &str = "unknown-deriver";

/// One `Key: value` line being parsed.
struct Line<'a> {
    number: usize,
    key: &'static str,
    value: &'a str,
}

impl<'a> Line<'a> {
    /// Stores the parsed value in `slot`, which must still be empty.
    fn set<T>(
        &self,
        slot: &mut Option<T>,
        parse: impl FnOnce(&Self) -> Result<T, ParseError>,
    ) -> Result<(), ParseError> {
        if slot.is_some() {
            return Err(ParseError::Duplicate {
                line: self.number,
                key: self.key,
                value: self.value.to_owned(),
            });
        }
        *slot = Some(parse(self)?);
        Ok(())
    }

    fn number(&self) -> Result<u64, ParseError> {
        // `u64::from_str` would also take a leading `+`; a narinfo size is
        // digits only.
        let digits = !self.value.is_empty() && self.value.bytes().all(|b| b.is_ascii_digit());
        digits
            .then(|| self.value.parse().ok())
            .flatten()
            .ok_or_else(|| ParseError::BadNumber {
                line: self.number,
                key: self.key,
                value: self.value.to_owned(),
            })
    }

    fn hash(&self) -> Result<Hash, ParseError> {
        Hash::parse(self.value, None).map_err(|source| ParseError::BadHash {
            line: self.number,
            key: self.key,
            value: self.value.to_owned(),
            source,
        })
    }

    fn bad_path(&self, value: &str, source: store_path::ParseError) -> ParseError {
        ParseError::BadPath {
            line: self.number,
            key: self.key,
            value: value.to_owned(),
            source,
        }
    }

    fn base_name(&self, value: &str) -> Result<StorePath, ParseError> {
        StorePath::from_base_name(value).map_err(|e| self.bad_path(value, e))
    }
}

impl NarInfo {
    /// A narinfo with the required fields, no references, no signatures
    /// and no optional fields.
    pub fn new(
        store_path: StorePath,
        url: impl Into<String>,
        nar_hash: Hash,
        nar_size: u64,
    ) -> Self {
        NarInfo {
            store_path,
            url: url.into(),
            compression: None,
            file_hash: None,
            file_size: None,
            nar_hash,
            nar_size,
            references: BTreeSet::new(),
            deriver: None,
            signatures: Vec::new(),
            ca: None,
        }
    }

    /// Parses narinfo text whose `StorePath` lies in `store_dir`.
    pub fn parse(store_dir: &StoreDir, text: &str) -> Result<NarInfo, ParseError> {
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        // `Some(None)` is `Deriver: unknown-deriver`: given, but no deriver.
        let mut deriver: Option<Option<StorePath>> = None;
        let mut signatures = Vec::new();
        let mut ca = None;

        for (index, text) in text.lines().enumerate() {
            if text.is_empty() {
                continue;
            }
            let number = index + 1;
            let (key, value) = text
                .split_once(':')
                .ok_or_else(|| ParseError::MissingColon {
                    line: number,
                    text: text.to_owned(),
                })?;
            let value = value.strip_prefix(' ').unwrap_or(value);
            let known = [
                STORE_PATH,
                URL,
                COMPRESSION,
                FILE_HASH,
                FILE_SIZE,
                NAR_HASH,
                NAR_SIZE,
                REFERENCES,
                DERIVER,
                SIG,
                CA,
            ];
            let Some(key) = known.into_iter().find(|k| *k == key) else {
                continue;
            };
            let line = Line { number, key, value };
            match key {
                STORE_PATH => line.set(&mut store_path, |l| {
                    store_dir
                        .parse_path(l.value)
                        .map_err(|e| l.bad_path(l.value, e))
                })?,
                URL => line.set(&mut url, |l| Ok(l.value.to_owned()))?,
                COMPRESSION => line.set(&mut compression, |l| Ok(l.value.to_owned()))?,
                FILE_HASH => line.set(&mut file_hash, Line::hash)?,
                FILE_SIZE => line.set(&mut file_size, Line::number)?,
                NAR_HASH => line.set(&mut nar_hash, Line::hash)?,
                NAR_SIZE => line.set(&mut nar_size, Line::number)?,
                REFERENCES => line.set(&mut references, |l| {
                    l.value
                        .split_ascii_whitespace()
                        .map(|r| l.base_name(r))
                        .collect::<Result<BTreeSet<_>, _>>()
                })?,
                DERIVER => line.set(&mut deriver, |l| match l.value {
                    UNKNOWN_DERIVER => Ok(None),
                    v => l.base_name(v).map(Some),
                })?,
                SIG => signatures.push(line.value.parse().map_err(|source| {
                    ParseError::BadSignature {
                        line: number,
                        key,
                        value: value.to_owned(),
                        source,
                    }
                })?),
                CA => line.set(&mut ca, |l| {
                    l.value
                        .parse()
                        .map_err(|source| ParseError::BadContentAddress {
                            line: l.number,
                            key: l.key,
                            value: l.value.to_owned(),
                            source: Box::new(source),
                        })
                })?,
                _ => unreachable!("every known key has an arm"),
            }
        }

        let missing = |key| ParseError::Missing { key };
        Ok(NarInfo {
            store_path: store_path.ok_or_else(|| missing(STORE_PATH))?,
            url: url.ok_or_else(|| missing(URL))?,
            compression,
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or_else(|| missing(NAR_HASH))?,
            nar_size: nar_size.ok_or_else(|| missing(NAR_SIZE))?,
            references: references.unwrap_or_default(),
            deriver: deriver.flatten(),
            signatures,
            ca,
        })
    }

    /// The narinfo text, for printing or writing (see [`NarInfo::to_text`]).
    pub fn display<'a>(&'a self, store_dir: &'a StoreDir) -> DisplayNarInfo<'a> {
        DisplayNarInfo {
            info: self,
            store_dir,
        }
    }

    /// The narinfo text as a string.
    pub fn to_text(&self, store_dir: &StoreDir) -> String {
        self.display(store_dir).to_string()
    }

    /// The text that signatures cover (see [`signing`]):
    /// `1;<full path>;<NAR hash>;<NAR size>;<full references, sorted, joined by ','>`.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        signing::fingerprint(
            store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Signs the fingerprint with `key`, replacing any signature by a key
    /// of the same name.
    pub fn sign(&mut self, store_dir: &StoreDir, key: &SecretKey) {
        let signature = key.sign(self.fingerprint(store_dir).as_bytes());
        self.signatures.retain(|s| s.name() != key.name());
        self.signatures.push(signature);
    }

    /// The first signature that a trusted key made over this narinfo's
    /// fingerprint; an error naming the path and the keys otherwise.
    pub fn verify(
        &self,
        store_dir: &StoreDir,
        trusted: &TrustedKeys,
    ) -> Result<&Signature, VerifyError> {
        trusted.verify(
            &store_dir.full(&self.store_path),
            self.fingerprint(store_dir).as_bytes(),
            &self.signatures,
        )
    }
}

/// A narinfo's text form, from [`NarInfo::display`].
#[derive(Clone, Copy, Debug)]
pub struct DisplayNarInfo<'a> {
    info: &'a NarInfo,
    store_dir: &'a StoreDir,
}

impl fmt::Display for DisplayNarInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.info;
        writeln!(
            f,
            "{STORE_PATH}: {}",
            self.store_dir.display(&info.store_path)
        )?;
        writeln!(f, "{URL}: {}", info.url)?;
        if let Some(compression) = &info.compression {
            writeln!(f, "{COMPRESSION}: {compression}")?;
        }
        if let Some(hash) = &info.file_hash {
            writeln!(f, "{FILE_HASH}: {hash}")?;
        }
        if let Some(size) = info.file_size {
            writeln!(f, "{FILE_SIZE}: {size}")?;
        }
        writeln!(f, "{NAR_HASH}: {}", info.nar_hash)?;
        writeln!(f, "{NAR_SIZE}: {}", info.nar_size)?;
        // `StorePath` order is text order, so this is the line Nix writes.
        let references: Vec<String> = info.references.iter().map(|r| r.to_string()).collect();
        writeln!(f, "{REFERENCES}: {}", references.join(" "))?;
        if let Some(deriver) = &info.deriver {
            writeln!(f, "{DERIVER}: {deriver}")?;
        }
        for signature in &info.signatures {
            writeln!(f, "{SIG}: {signature}")?;
        }
        if let Some(ca) = &info.ca {
            writeln!(f, "{CA}: {ca}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content_address::ContentAddressMethod;
    use crate::hash::HashAlgo;
    use crate::store_path::StorePathDigest;
    use proptest::prelude::*;

    /// A narinfo written by Nix 2.8 (`nix copy --to file://…`), as in
    /// `tests/fixtures/narinfo`.
    const NIX: &str = "\
StorePath: /nix/store/fvg5vr8gqb5fk5aaixhrck9fxmxj7phz-a
URL: nar/15np3b9i71bby1i7v3fxjnxga0wrmqbn96rbqkan8k7w3s02b9gh.nar
Compression: none
FileHash: sha256:15np3b9i71bby1i7v3fxjnxga0wrmqbn96rbqkan8k7w3s02b9gh
FileSize: 168
NarHash: sha256:15np3b9i71bby1i7v3fxjnxga0wrmqbn96rbqkan8k7w3s02b9gh
NarSize: 168
References: w320iz5b4848q2l7a7x8mw2vymm22ddg-b
Sig: bigtop-test-fixture-1:0YTwnI7eRFFkH1Cqb/E/qLibDuBYdgauF/grI99cq+awSeRD6Ug033jnNpcp4/QMfBaDP+7tKQyu36rrtT+VDg==
CA: text:sha256:0ria265d02a3h3jf5v0l0wn54lq6f767hlgdyw9fz5sr65x2fa8c
";

    const MINIMAL: &str = "\
StorePath: /bigtop/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12
URL: nar/x.nar
NarHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73
NarSize: 120
";

    fn nix_dir() -> StoreDir {
        StoreDir::new("/nix/store").unwrap()
    }

    fn path(byte: u8, name: &str) -> StorePath {
        StorePath::new(StorePathDigest([byte; 20]), name).unwrap()
    }

    fn parse(text: &str) -> Result<NarInfo, ParseError> {
        NarInfo::parse(&StoreDir::default(), text)
    }

    /// `MINIMAL` with `line` added at the end.
    fn with(line: &str) -> String {
        format!("{MINIMAL}{line}\n")
    }

    /// A narinfo with every field, for snapshots.
    fn full_example() -> NarInfo {
        let mut info = NarInfo::new(
            path(1, "hello-2.12"),
            "nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz",
            Hash::digest(HashAlgo::Sha256, b"the nar"),
            226_560,
        );
        info.compression = Some("xz".into());
        info.file_hash = Some(Hash::digest(HashAlgo::Sha256, b"the compressed nar"));
        info.file_size = Some(50_088);
        info.references = [path(2, "glibc-2.40"), path(1, "hello-2.12")].into();
        info.deriver = Some(path(3, "hello-2.12.drv"));
        info.ca = Some(ContentAddress::new(
            ContentAddressMethod::Recursive,
            Hash::digest(HashAlgo::Blake3, b"the nar"),
        ));
        info
    }

    #[test]
    fn parses_and_reprints_what_nix_writes() {
        let dir = nix_dir();
        let info = NarInfo::parse(&dir, NIX).unwrap();
        assert_eq!(
            info.store_path.to_string(),
            "fvg5vr8gqb5fk5aaixhrck9fxmxj7phz-a"
        );
        assert_eq!(
            info.url,
            "nar/15np3b9i71bby1i7v3fxjnxga0wrmqbn96rbqkan8k7w3s02b9gh.nar"
        );
        assert_eq!(info.compression.as_deref(), Some("none"));
        assert_eq!(info.file_size, Some(168));
        assert_eq!(info.file_hash, Some(info.nar_hash));
        assert_eq!(info.nar_size, 168);
        assert_eq!(
            info.references,
            ["w320iz5b4848q2l7a7x8mw2vymm22ddg-b".parse().unwrap()].into()
        );
        assert_eq!(info.deriver, None);
        assert_eq!(info.signatures.len(), 1);
        assert_eq!(info.signatures[0].name(), "bigtop-test-fixture-1");
        assert_eq!(
            info.ca.map(|ca| ca.method),
            Some(ContentAddressMethod::Text)
        );
        assert_eq!(info.to_text(&dir), NIX);
    }

    #[test]
    fn prints_empty_references_and_omits_absent_fields() {
        let info = parse(MINIMAL).unwrap();
        let text = info.to_text(&StoreDir::default());
        assert_eq!(text, format!("{}References: \n", MINIMAL));
        assert_eq!(parse(&text).unwrap(), info);
    }

    #[test]
    fn hashes_parse_in_sri_form_and_print_typed() {
        let text = MINIMAL.replace(
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        );
        let info = parse(&text).unwrap();
        assert_eq!(info, parse(MINIMAL).unwrap());
        assert!(info
            .to_text(&StoreDir::default())
            .contains("NarHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\n"));
    }

    #[test]
    fn leniencies() {
        let minimal = parse(MINIMAL).unwrap();
        // Unknown keys are ignored, whatever their value.
        assert_eq!(parse(&with("System: x86_64-linux")).unwrap(), minimal);
        assert_eq!(parse(&with("Future:")).unwrap(), minimal);
        // Empty lines, a missing final newline and CRLF line ends.
        assert_eq!(parse(&format!("\n{MINIMAL}\n\n")).unwrap(), minimal);
        assert_eq!(parse(MINIMAL.trim_end()).unwrap(), minimal);
        assert_eq!(parse(&MINIMAL.replace('\n', "\r\n")).unwrap(), minimal);
        // Old Nix's placeholder for an unknown deriver.
        assert_eq!(parse(&with("Deriver: unknown-deriver")).unwrap(), minimal);
        // Repeated spaces between references.
        let refs = with(&format!(
            "References:  {}   {} ",
            path(2, "b"),
            path(1, "a")
        ));
        assert_eq!(
            parse(&refs).unwrap().references,
            [path(1, "a"), path(2, "b")].into()
        );
        // A repeated reference counts once.
        let refs = with(&format!("References: {} {}", path(1, "a"), path(1, "a")));
        assert_eq!(parse(&refs).unwrap().references.len(), 1);
    }

    #[test]
    fn sigs_may_repeat_and_keep_their_order() {
        let a = crate::signing::SecretKey::from_seed("a-1", [1; 32]).unwrap();
        let b = crate::signing::SecretKey::from_seed("b-1", [2; 32]).unwrap();
        let text = format!("{MINIMAL}Sig: {}\nSig: {}\n", b.sign(b"x"), a.sign(b"x"));
        let info = parse(&text).unwrap();
        let names: Vec<&str> = info.signatures.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["b-1", "a-1"]);
        assert_eq!(parse(&info.to_text(&StoreDir::default())).unwrap(), info);
    }

    #[test]
    fn rejects_a_line_without_colon() {
        let err = parse(&with("garbage")).unwrap_err();
        assert_eq!(
            err,
            ParseError::MissingColon {
                line: 5,
                text: "garbage".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "line 5 of narinfo, `garbage`, is not `<key>: <value>`"
        );
    }

    #[test]
    fn rejects_duplicated_keys() {
        let err = parse(&with("NarSize: 121")).unwrap_err();
        assert_eq!(
            err,
            ParseError::Duplicate {
                line: 5,
                key: "NarSize",
                value: "121".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "line 5 of narinfo gives `NarSize` a second time, as `121`"
        );
        for line in [
            "URL: other",
            "StorePath: /bigtop/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12",
            "References: \nReferences: ",
            "Deriver: unknown-deriver\nDeriver: unknown-deriver",
            "CA: fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\nCA: fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            "Compression: xz\nCompression: xz",
            "FileSize: 1\nFileSize: 1",
        ] {
            assert!(
                matches!(parse(&with(line)), Err(ParseError::Duplicate { .. })),
                "{line}"
            );
        }
    }

    #[test]
    fn rejects_bad_numbers() {
        for value in ["12x", "", "-1", "+5", " 5", "18446744073709551616"] {
            let text = MINIMAL.replace("NarSize: 120", &format!("NarSize: {value}"));
            assert_eq!(
                parse(&text),
                Err(ParseError::BadNumber {
                    line: 4,
                    key: "NarSize",
                    value: value.into()
                }),
                "{value:?}"
            );
        }
        assert_eq!(
            parse(&with("FileSize: 1.5")).unwrap_err().to_string(),
            "line 5 of narinfo: `FileSize` value `1.5` is not a decimal number of bytes"
        );
    }

    #[test]
    fn rejects_bad_paths() {
        let outside = "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12";
        let text = MINIMAL.replace(
            "/bigtop/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12",
            outside,
        );
        let err = parse(&text).unwrap_err();
        assert!(
            matches!(&err, ParseError::BadPath { line: 1, key: "StorePath", value, source: store_path::ParseError::NotInStore { .. } } if value == outside),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("line 1 of narinfo: `StorePath` value `{outside}` is not a valid store path")
        );
        let good = path(1, "a");
        let err = parse(&with(&format!("References: {good} not-a-path"))).unwrap_err();
        assert!(
            matches!(&err, ParseError::BadPath { line: 5, key: "References", value, .. } if value == "not-a-path"),
            "{err:?}"
        );
        let err = parse(&with(&format!("Deriver: /bigtop/store/{good}"))).unwrap_err();
        assert!(
            matches!(
                &err,
                ParseError::BadPath {
                    line: 5,
                    key: "Deriver",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_bad_hashes_signatures_and_content_addresses() {
        let err = parse(&with("FileHash: sha256:abc")).unwrap_err();
        assert!(
            matches!(&err, ParseError::BadHash { line: 5, key: "FileHash", value, .. } if value == "sha256:abc"),
            "{err:?}"
        );
        // A bare digest names no algorithm.
        let bare = MINIMAL.replace("NarHash: sha256:", "NarHash: ");
        assert!(matches!(
            parse(&bare),
            Err(ParseError::BadHash {
                line: 3,
                key: "NarHash",
                source: hash::ParseError::MissingAlgo { .. },
                ..
            })
        ));
        let err = parse(&with("Sig: nocolon")).unwrap_err();
        assert!(
            matches!(&err, ParseError::BadSignature { line: 5, key: "Sig", value, .. } if value == "nocolon"),
            "{err:?}"
        );
        let err = parse(&with("CA: nar:sha256:x")).unwrap_err();
        assert!(
            matches!(&err, ParseError::BadContentAddress { line: 5, key: "CA", value, .. } if value == "nar:sha256:x"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "line 5 of narinfo: `CA` value `nar:sha256:x` is not a valid content address"
        );
    }

    #[test]
    fn rejects_missing_required_fields() {
        for key in ["StorePath", "URL", "NarHash", "NarSize"] {
            let text: String = MINIMAL
                .lines()
                .filter(|l| !l.starts_with(&format!("{key}:")))
                .map(|l| format!("{l}\n"))
                .collect();
            let err = parse(&text).unwrap_err();
            assert_eq!(err, ParseError::Missing { key }, "{key}");
            assert_eq!(err.to_string(), format!("narinfo has no `{key}` line"));
        }
    }

    #[test]
    fn snapshot_printed() {
        insta::assert_snapshot!(full_example().to_text(&StoreDir::default()));
    }

    #[test]
    fn snapshot_signed() {
        let dir = StoreDir::default();
        let mut info = full_example();
        let key = crate::signing::SecretKey::from_seed("cache.example.org-1", [7; 32]).unwrap();
        info.sign(&dir, &key);
        let text = info.to_text(&dir);
        insta::assert_snapshot!(format!(
            "# fingerprint\n{}\n# public key\n{}\n# narinfo\n{text}",
            info.fingerprint(&dir),
            key.public()
        ));
        assert_eq!(NarInfo::parse(&dir, &text).unwrap(), info);
    }

    fn arb_path() -> impl Strategy<Value = StorePath> {
        (any::<[u8; 20]>(), "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,20}")
            .prop_map(|(d, name)| StorePath::new(StorePathDigest(d), &name).unwrap())
    }

    fn arb_hash() -> impl Strategy<Value = Hash> {
        (any::<[u8; 32]>(), any::<bool>()).prop_map(|(bytes, sha)| {
            Hash::new(
                if sha {
                    HashAlgo::Sha256
                } else {
                    HashAlgo::Blake3
                },
                bytes,
            )
        })
    }

    prop_compose! {
        fn arb_narinfo()(
            store_path in arb_path(),
            url in "[!-~]([ -~]{0,40}[!-~])?",
            compression in proptest::option::of("[a-z0-9]{1,6}"),
            file_hash in proptest::option::of(arb_hash()),
            file_size in proptest::option::of(any::<u64>()),
            nar_hash in arb_hash(),
            nar_size in any::<u64>(),
            references in proptest::collection::btree_set(arb_path(), 0..5),
            deriver in proptest::option::of(arb_path()),
            signatures in proptest::collection::vec(("[A-Za-z0-9.-]{1,20}", proptest::collection::vec(any::<u8>(), 64)), 0..3),
            ca in proptest::option::of((0..3usize, arb_hash())),
        ) -> NarInfo {
            let mut info = NarInfo::new(store_path, url, nar_hash, nar_size);
            info.compression = compression;
            info.file_hash = file_hash;
            info.file_size = file_size;
            info.references = references;
            info.deriver = deriver;
            info.signatures = signatures
                .into_iter()
                .map(|(name, bytes)| Signature::new(&name, bytes.try_into().unwrap()).unwrap())
                .collect();
            info.ca = ca.map(|(m, hash)| {
                let methods = [ContentAddressMethod::Flat, ContentAddressMethod::Recursive, ContentAddressMethod::Text];
                ContentAddress::new(methods[m], hash)
            });
            info
        }
    }

    proptest! {
        #[test]
        fn round_trips(info in arb_narinfo()) {
            let dir = StoreDir::default();
            let text = info.to_text(&dir);
            let parsed = NarInfo::parse(&dir, &text).unwrap();
            prop_assert_eq!(&parsed, &info);
            prop_assert_eq!(parsed.to_text(&dir), text);
        }
    }
}
