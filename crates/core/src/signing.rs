//! Ed25519 keys and signatures over store path metadata, in Nix's text forms.
//!
//! A binary cache signs the metadata of every path it serves; a client that
//! trusts the cache's public key can then use the cache's archive instead of
//! building the path itself. bigtop's keys, signatures and the text they
//! sign are those of Nix, so a cache signed by either is usable by both.
//!
//! ## What is signed: the fingerprint
//!
//! A signature covers one line of text, the path's *fingerprint*
//! (see [`fingerprint`] and [`NarInfo::fingerprint`](crate::narinfo::NarInfo::fingerprint)):
//!
//! ```text
//! 1;<full store path>;<NAR hash>;<NAR size>;<references>
//! ```
//!
//! - `1` is the version of the format;
//! - the store path is the full path, store dir included;
//! - the NAR hash is in typed form, `sha256:<base 32>` or `blake3:<base 32>`
//!   (the [`Display`](std::fmt::Display) form of [`Hash`](struct@Hash));
//! - the NAR size is in decimal bytes;
//! - the references are full store paths, sorted as text (byte-wise) and
//!   joined by `,`; empty when there are none.
//!
//! Everything that identifies the contents of the path is covered: altering
//! the path, the NAR hash, the NAR size or the references invalidates every
//! signature. How the archive is stored (URL, compression, file hash and
//! size), the deriver and the content address are not covered, as in Nix:
//! the archive is checked against the signed NAR hash after it is
//! downloaded, whatever its URL.
//!
//! ## Text forms
//!
//! As Nix writes them (`nix-store --generate-binary-cache-key`), each is a
//! key name, a colon and standard base 64 with padding:
//!
//! | value | form |
//! |---|---|
//! | [`SecretKey`] | `<name>:<base64 of 64 bytes: the 32-byte seed, then the 32-byte public key>` |
//! | [`PublicKey`] | `<name>:<base64 of the 32-byte public key>` |
//! | [`Signature`] | `<name of the key that made it>:<base64 of the 64-byte signature>` |
//!
//! A key name (conventionally `<cache host name>-<number>`) must not be
//! empty and must not contain `:` or control characters.
//!
//! ```
//! use bigtop_core::signing::{PublicKey, SecretKey, TrustedKeys};
//! let secret = SecretKey::generate("cache.example.org-1")?;
//! let public: PublicKey = secret.public().to_string().parse()?;
//! let signature = secret.sign(b"some fingerprint");
//! assert!(public.verify(b"some fingerprint", &signature));
//! assert!(!public.verify(b"another fingerprint", &signature));
//!
//! let trusted: TrustedKeys = "cache.example.org-1:x/l0oOoUcMgwRTkka8kMN+aO8yxjARH2QDIIDk4fdD8=".parse()?;
//! assert!(trusted.get("cache.example.org-1").is_some());
//! # Ok::<(), bigtop_core::signing::ParseError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use data_encoding::BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::hash::Hash;
use crate::store_path::{StoreDir, StorePath};

/// Bytes in a secret key's seed.
pub const SEED_BYTES: usize = 32;
/// Bytes in a public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Bytes in the secret key text form: the seed, then the public key.
pub const SECRET_KEY_BYTES: usize = SEED_BYTES + PUBLIC_KEY_BYTES;
/// Bytes in a signature.
pub const SIGNATURE_BYTES: usize = 64;

/// Which of the three text forms an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextKind {
    /// A [`SecretKey`].
    SecretKey,
    /// A [`PublicKey`].
    PublicKey,
    /// A [`Signature`].
    Signature,
}

impl fmt::Display for TextKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextKind::SecretKey => "secret key",
            TextKind::PublicKey => "public key",
            TextKind::Signature => "signature",
        })
    }
}

/// Why a key, a signature or a key name was rejected.
///
/// For secret keys the `input` shows only the key name, followed by
/// `:<redacted>`, so that an error message never leaks a secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// There is no `:` between the name and the base 64.
    #[error("{kind} `{input}` is not `<name>:<base64>`")]
    MissingColon {
        /// Which form was being parsed.
        kind: TextKind,
        /// The text given.
        input: String,
    },
    /// The key name is empty or has a forbidden character.
    #[error("{kind} `{input}` has an invalid key name: {reason}")]
    BadName {
        /// Which form was being parsed or made.
        kind: TextKind,
        /// The text given (or, when making a key, the name).
        input: String,
        /// Which rule the name breaks.
        reason: &'static str,
    },
    /// The part after the name is not standard, padded base 64.
    #[error("{kind} `{input}` is not valid base 64 after the key name")]
    BadBase64 {
        /// Which form was being parsed.
        kind: TextKind,
        /// The text given.
        input: String,
        /// What the decoder found.
        #[source]
        source: data_encoding::DecodeError,
    },
    /// The base 64 decodes to the wrong number of bytes.
    #[error("{kind} `{input}` holds {actual} bytes where {expected} are expected")]
    BadLength {
        /// Which form was being parsed.
        kind: TextKind,
        /// The text given.
        input: String,
        /// The bytes this form holds.
        expected: usize,
        /// The bytes found.
        actual: usize,
    },
    /// The public key bytes are not a point on the curve.
    #[error("{kind} `{input}` is not a valid ed25519 public key")]
    BadPublicKey {
        /// Which form was being parsed.
        kind: TextKind,
        /// The text given.
        input: String,
    },
    /// A secret key whose second half is not the public key of its seed:
    /// a corrupted or hand-assembled key file.
    #[error("secret key `{input}` embeds a public key that does not match its seed")]
    MismatchedPublicKey {
        /// The key's name, the secret redacted.
        input: String,
    },
}

/// Checks a key name: not empty, no `:`, no control characters.
fn check_name(
    kind: TextKind,
    name: &str,
    input: impl FnOnce() -> String,
) -> Result<(), ParseError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.contains(':') {
        "it contains `:`"
    } else if name.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(ParseError::BadName {
        kind,
        input: input(),
        reason,
    })
}

/// What an error may show of a secret key's text: its name only.
fn redact(s: &str) -> String {
    match s.rsplit_once(':') {
        Some((name, _)) => format!("{name}:<redacted>"),
        None => "<redacted>".to_owned(),
    }
}

/// Splits `<name>:<base64>` and decodes exactly `N` bytes. `shown` is what
/// errors may show of `s`.
fn parse_text<'s, const N: usize>(
    kind: TextKind,
    s: &'s str,
    shown: &dyn Fn() -> String,
) -> Result<(&'s str, [u8; N]), ParseError> {
    // Key files end in a newline, which Nix's decoder skips.
    let s = s.trim_end();
    // Base 64 never holds `:`, so the last one ends the name; splitting there
    // lets a name with a `:` be reported as such.
    let (name, b64) = s.rsplit_once(':').ok_or_else(|| ParseError::MissingColon {
        kind,
        input: shown(),
    })?;
    check_name(kind, name, shown)?;
    let bytes = BASE64
        .decode(b64.as_bytes())
        .map_err(|source| ParseError::BadBase64 {
            kind,
            input: shown(),
            source,
        })?;
    let array = <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| ParseError::BadLength {
        kind,
        input: shown(),
        expected: N,
        actual: bytes.len(),
    })?;
    Ok((name, array))
}

/// An ed25519 secret key with its name: what a binary cache signs with.
///
/// Its [`Display`](fmt::Display) form is the secret key file's contents;
/// its [`Debug`](fmt::Debug) form shows only the name and public key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// A new random key from the operating system's generator.
    pub fn generate(name: &str) -> Result<SecretKey, ParseError> {
        check_name(TextKind::SecretKey, name, || name.to_owned())?;
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::generate(&mut rand_core::OsRng),
        })
    }

    /// The key with a given 32-byte seed: deterministic, for tests and for
    /// keys derived elsewhere.
    pub fn from_seed(name: &str, seed: [u8; SEED_BYTES]) -> Result<SecretKey, ParseError> {
        check_name(TextKind::SecretKey, name, || name.to_owned())?;
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public half, with the same name.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `message` (normally a [`fingerprint`]).
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature {
            name: self.name.clone(),
            bytes: self.key.sign(message).to_bytes(),
        }
    }
}

impl fmt::Display for SecretKey {
    /// The key file's text: `<name>:<base64 of seed and public key>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            self.name,
            BASE64.encode(&self.key.to_keypair_bytes())
        )
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .field(
                "public",
                &BASE64.encode(self.key.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

impl FromStr for SecretKey {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<SecretKey, ParseError> {
        let kind = TextKind::SecretKey;
        let (name, bytes) = parse_text::<SECRET_KEY_BYTES>(kind, s, &|| redact(s))?;
        let mut seed = [0u8; SEED_BYTES];
        seed.copy_from_slice(&bytes[..SEED_BYTES]);
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[SEED_BYTES..] {
            return Err(ParseError::MismatchedPublicKey { input: redact(s) });
        }
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }
}

/// An ed25519 public key with its name: what a client trusts.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// A public key from its name and 32 bytes, checking both.
    pub fn new(name: &str, bytes: [u8; PUBLIC_KEY_BYTES]) -> Result<PublicKey, ParseError> {
        let kind = TextKind::PublicKey;
        check_name(kind, name, || name.to_owned())?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| ParseError::BadPublicKey {
            kind,
            input: format!("{name}:{}", BASE64.encode(&bytes)),
        })?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        self.key.as_bytes()
    }

    /// Whether `signature` was made over `message` by the secret half of
    /// this key: the names must match and the signature must verify.
    ///
    /// Verification is strict (it rejects weak keys and malleable
    /// signatures), which every signature made by Nix or bigtop passes.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        signature.name == self.name
            && self
                .key
                .verify_strict(
                    message,
                    &ed25519_dalek::Signature::from_bytes(&signature.bytes),
                )
                .is_ok()
    }
}

impl fmt::Display for PublicKey {
    /// The key file's text: `<name>:<base64 of the public key>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<PublicKey, ParseError> {
        let kind = TextKind::PublicKey;
        let (name, bytes) = parse_text::<PUBLIC_KEY_BYTES>(kind, s, &|| s.to_owned())?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| ParseError::BadPublicKey {
            kind,
            input: s.to_owned(),
        })?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }
}

/// A signature and the name of the key that made it, as found in a
/// narinfo's `Sig:` lines.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature {
    name: String,
    bytes: [u8; SIGNATURE_BYTES],
}

impl Signature {
    /// A signature from the signing key's name and 64 bytes, checking the
    /// name.
    pub fn new(name: &str, bytes: [u8; SIGNATURE_BYTES]) -> Result<Signature, ParseError> {
        check_name(TextKind::Signature, name, || name.to_owned())?;
        Ok(Signature {
            name: name.to_owned(),
            bytes,
        })
    }

    /// The name of the key that made the signature.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signature's 64 bytes.
    pub fn as_bytes(&self) -> &[u8; SIGNATURE_BYTES] {
        &self.bytes
    }
}

impl fmt::Display for Signature {
    /// `<key name>:<base64 of the signature>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(&self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl FromStr for Signature {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Signature, ParseError> {
        let (name, bytes) =
            parse_text::<SIGNATURE_BYTES>(TextKind::Signature, s, &|| s.to_owned())?;
        Ok(Signature {
            name: name.to_owned(),
            bytes,
        })
    }
}

/// The public keys a client trusts, by name (Nix's `trusted-public-keys`).
///
/// Its [`FromStr`] form is that setting's value: public keys separated by
/// whitespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    by_name: BTreeMap<String, PublicKey>,
}

impl TrustedKeys {
    /// No trusted keys.
    pub fn new() -> TrustedKeys {
        TrustedKeys::default()
    }

    /// Trusts `key`, returning the key of the same name it replaces.
    pub fn insert(&mut self, key: PublicKey) -> Option<PublicKey> {
        self.by_name.insert(key.name.clone(), key)
    }

    /// Stops trusting the key called `name`, returning it.
    pub fn remove(&mut self, name: &str) -> Option<PublicKey> {
        self.by_name.remove(name)
    }

    /// The trusted key called `name`.
    pub fn get(&self, name: &str) -> Option<&PublicKey> {
        self.by_name.get(name)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The trusted keys in name order.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.by_name.values()
    }

    /// The first of `signatures` that a trusted key made over `message`.
    ///
    /// `path` (the full store path the signatures are about) only names the
    /// path in errors. Fails when there are no signatures, when every
    /// signature is by an untrusted key, or when no signature by a trusted
    /// key verifies.
    pub fn verify<'s>(
        &self,
        path: &str,
        message: &[u8],
        signatures: &'s [Signature],
    ) -> Result<&'s Signature, VerifyError> {
        if signatures.is_empty() {
            return Err(VerifyError::Unsigned {
                path: path.to_owned(),
            });
        }
        let mut failed = Vec::new();
        for sig in signatures {
            if let Some(key) = self.get(&sig.name) {
                if key.verify(message, sig) {
                    return Ok(sig);
                }
                failed.push(sig.name.clone());
            }
        }
        if failed.is_empty() {
            let mut keys: Vec<String> = signatures.iter().map(|s| s.name.clone()).collect();
            keys.sort();
            keys.dedup();
            return Err(VerifyError::Untrusted {
                path: path.to_owned(),
                keys,
            });
        }
        failed.sort();
        failed.dedup();
        Err(VerifyError::Invalid {
            path: path.to_owned(),
            keys: failed,
        })
    }
}

impl FromIterator<PublicKey> for TrustedKeys {
    fn from_iter<I: IntoIterator<Item = PublicKey>>(keys: I) -> TrustedKeys {
        let mut out = TrustedKeys::new();
        out.extend(keys);
        out
    }
}

impl Extend<PublicKey> for TrustedKeys {
    fn extend<I: IntoIterator<Item = PublicKey>>(&mut self, keys: I) {
        for key in keys {
            self.insert(key);
        }
    }
}

impl FromStr for TrustedKeys {
    type Err = ParseError;
    /// Public keys separated by whitespace, as in `nix.conf`.
    fn from_str(s: &str) -> Result<TrustedKeys, ParseError> {
        s.split_whitespace().map(str::parse).collect()
    }
}

/// Why a path's signatures were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The path has no signatures at all.
    #[error("path `{path}` has no signatures")]
    Unsigned {
        /// The full store path.
        path: String,
    },
    /// Every signature is by a key that is not trusted.
    #[error("path `{path}` is signed only by untrusted keys: {}", backticked(keys))]
    Untrusted {
        /// The full store path.
        path: String,
        /// The names of the keys that signed it, sorted.
        keys: Vec<String>,
    },
    /// Signatures by trusted keys exist, but none matches the metadata: it
    /// was altered after signing, or the signature is corrupt.
    #[error(
        "path `{path}` has signatures by trusted keys {} that do not verify: its path, NAR hash, NAR size or references differ from what was signed",
        backticked(keys)
    )]
    Invalid {
        /// The full store path.
        path: String,
        /// The names of the trusted keys whose signatures failed, sorted.
        keys: Vec<String>,
    },
}

fn backticked(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text a signature covers for a path (see the module docs):
/// `1;<full path>;<NAR hash>;<NAR size>;<full references, sorted, joined by ','>`.
pub fn fingerprint<'a>(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &Hash,
    nar_size: u64,
    references: impl IntoIterator<Item = &'a StorePath>,
) -> String {
    // Sorted as text, as Nix sorts them, whatever order the caller gives.
    let mut refs: Vec<String> = references.into_iter().map(|r| store_dir.full(r)).collect();
    refs.sort_unstable();
    refs.dedup();
    format!(
        "1;{};{nar_hash};{nar_size};{}",
        store_dir.display(path),
        refs.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashAlgo;
    use crate::narinfo::NarInfo;
    use crate::store_path::StorePathDigest;
    use proptest::prelude::*;

    const NAME: &str = "cache.example.org-1";

    fn key() -> SecretKey {
        SecretKey::from_seed(NAME, [7; 32]).unwrap()
    }

    fn path(byte: u8, name: &str) -> StorePath {
        StorePath::new(StorePathDigest([byte; 20]), name).unwrap()
    }

    fn info() -> NarInfo {
        let mut info = NarInfo::new(
            path(1, "hello-2.12"),
            "nar/hello.nar",
            Hash::digest(HashAlgo::Sha256, b"nar"),
            1234,
        );
        info.references = [path(2, "glibc-2.40"), path(1, "hello-2.12")].into();
        info
    }

    fn trusting(keys: &[&SecretKey]) -> TrustedKeys {
        keys.iter().map(|k| k.public()).collect()
    }

    #[test]
    fn key_and_signature_text_round_trips() {
        let secret = key();
        let text = secret.to_string();
        assert!(text.starts_with("cache.example.org-1:"), "{text}");
        assert_eq!(text.parse::<SecretKey>().unwrap(), secret);
        let public = secret.public();
        assert_eq!(public.name(), NAME);
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        let sig = secret.sign(b"message");
        assert_eq!(sig.name(), NAME);
        assert_eq!(sig.to_string().parse::<Signature>().unwrap(), sig);
        assert!(public.verify(b"message", &sig));
        assert!(!public.verify(b"massage", &sig));
        // The same seed under another name is another key for verification.
        let renamed = SecretKey::from_seed("other-1", [7; 32]).unwrap();
        assert!(!renamed.public().verify(b"message", &sig));
    }

    #[test]
    fn generated_keys_differ_and_work() {
        let a = SecretKey::generate(NAME).unwrap();
        let b = SecretKey::generate(NAME).unwrap();
        assert_ne!(a, b);
        assert!(a.public().verify(b"x", &a.sign(b"x")));
        assert!(!b.public().verify(b"x", &a.sign(b"x")));
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let secret = key();
        let text = secret.to_string();
        let b64 = text.rsplit_once(':').unwrap().1;
        assert!(!format!("{secret:?}").contains(b64));
        // Flip the last public-key byte so the halves no longer match.
        let mut bytes = BASE64.decode(b64.as_bytes()).unwrap();
        bytes[63] ^= 1;
        let bad = format!("{NAME}:{}", BASE64.encode(&bytes));
        let err = bad.parse::<SecretKey>().unwrap_err();
        assert_eq!(
            err,
            ParseError::MismatchedPublicKey {
                input: format!("{NAME}:<redacted>")
            }
        );
        assert!(!err.to_string().contains(&BASE64.encode(&bytes)), "{err}");
    }

    #[test]
    fn rejects_missing_colon() {
        assert_eq!(
            "abc".parse::<PublicKey>(),
            Err(ParseError::MissingColon {
                kind: TextKind::PublicKey,
                input: "abc".into()
            })
        );
        assert_eq!(
            "abc".parse::<SecretKey>(),
            Err(ParseError::MissingColon {
                kind: TextKind::SecretKey,
                input: "<redacted>".into()
            })
        );
        assert!(matches!(
            "abc".parse::<Signature>(),
            Err(ParseError::MissingColon { .. })
        ));
    }

    #[test]
    fn rejects_bad_names() {
        let public_b64 = BASE64.encode(key().public().as_bytes());
        let cases = [
            ("", "it is empty"),
            ("a:b", "it contains `:`"),
            ("a\nb", "it contains a control character"),
        ];
        for (name, reason) in cases {
            let text = format!("{name}:{public_b64}");
            assert_eq!(
                text.parse::<PublicKey>(),
                Err(ParseError::BadName {
                    kind: TextKind::PublicKey,
                    input: text.clone(),
                    reason
                }),
                "{name:?}"
            );
            assert!(matches!(
                SecretKey::from_seed(name, [0; 32]),
                Err(ParseError::BadName { reason: r, .. }) if r == reason
            ));
            assert!(SecretKey::generate(name).is_err());
            assert!(Signature::new(name, [0; 64]).is_err());
            assert!(PublicKey::new(name, *key().public().as_bytes()).is_err());
        }
        let err = format!(":{public_b64}").parse::<PublicKey>().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("public key `:{public_b64}` has an invalid key name: it is empty")
        );
    }

    #[test]
    fn rejects_bad_base64() {
        for text in [
            "k:not base64!",
            "k:AAAA=",
            "k:AB==", // non-zero trailing bits
        ] {
            assert!(
                matches!(
                    text.parse::<PublicKey>(),
                    Err(ParseError::BadBase64 { ref input, .. }) if input == text
                ),
                "{text}"
            );
            assert!(matches!(
                text.parse::<Signature>(),
                Err(ParseError::BadBase64 { .. })
            ));
            assert!(matches!(
                text.parse::<SecretKey>(),
                Err(ParseError::BadBase64 { ref input, .. }) if input == "k:<redacted>"
            ));
        }
    }

    #[test]
    fn rejects_wrong_lengths() {
        let b64 = |n: usize| format!("k:{}", BASE64.encode(&vec![0u8; n]));
        assert_eq!(
            b64(31).parse::<PublicKey>(),
            Err(ParseError::BadLength {
                kind: TextKind::PublicKey,
                input: b64(31),
                expected: 32,
                actual: 31
            })
        );
        assert_eq!(
            b64(32).parse::<SecretKey>(),
            Err(ParseError::BadLength {
                kind: TextKind::SecretKey,
                input: "k:<redacted>".into(),
                expected: 64,
                actual: 32
            })
        );
        assert_eq!(
            b64(65).parse::<Signature>(),
            Err(ParseError::BadLength {
                kind: TextKind::Signature,
                input: b64(65),
                expected: 64,
                actual: 65
            })
        );
        let err = b64(0).parse::<Signature>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "signature `k:` holds 0 bytes where 64 are expected"
        );
    }

    #[test]
    fn rejects_public_keys_off_the_curve() {
        // Not every 32-byte string is a compressed point; take the first
        // small one that is not.
        let bytes = (0u8..=255)
            .map(|i| {
                let mut b = [0u8; 32];
                b[0] = i;
                b
            })
            .find(|b| VerifyingKey::from_bytes(b).is_err())
            .expect("some small value is not a point");
        let text = format!("k:{}", BASE64.encode(&bytes));
        assert_eq!(
            text.parse::<PublicKey>(),
            Err(ParseError::BadPublicKey {
                kind: TextKind::PublicKey,
                input: text.clone()
            })
        );
        assert!(matches!(
            PublicKey::new("k", bytes),
            Err(ParseError::BadPublicKey { .. })
        ));
    }

    #[test]
    fn fingerprint_sorts_references_as_text() {
        let dir = StoreDir::default();
        // Base 32 puts the first digest byte at the end of the text: the
        // order must follow the text, not the bytes.
        let mut first = [0u8; 20];
        first[0] = 1;
        let mut last = [0u8; 20];
        last[19] = 1;
        let a = StorePath::new(StorePathDigest(first), "a").unwrap();
        let b = StorePath::new(StorePathDigest(last), "b").unwrap();
        assert!(a < b && a.to_string() < b.to_string(), "{a} {b}");
        let nar_hash = Hash::digest(HashAlgo::Sha256, b"");
        assert_eq!(
            fingerprint(&dir, &a, &nar_hash, 42, [&b, &a, &b]),
            format!(
                "1;{};sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;42;{},{}",
                dir.full(&a),
                dir.full(&a),
                dir.full(&b)
            )
        );
        assert_eq!(
            fingerprint(&dir, &a, &nar_hash, 0, []),
            format!(
                "1;{};sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;0;",
                dir.full(&a)
            )
        );
    }

    #[test]
    fn signed_narinfo_verifies() {
        let dir = StoreDir::default();
        let mut info = info();
        info.sign(&dir, &key());
        let sig = info.verify(&dir, &trusting(&[&key()])).unwrap();
        assert_eq!(sig.name(), NAME);
        // Fields outside the fingerprint may change.
        info.url = "nar/elsewhere.nar.xz".into();
        info.compression = Some("xz".into());
        assert!(info.verify(&dir, &trusting(&[&key()])).is_ok());
    }

    #[test]
    fn altered_narinfo_fails() {
        let dir = StoreDir::default();
        let mut signed = info();
        signed.sign(&dir, &key());
        let trusted = trusting(&[&key()]);
        type Alteration = (&'static str, fn(&mut NarInfo));
        let alterations: [Alteration; 5] = [
            ("nar hash", |i| {
                i.nar_hash = Hash::digest(HashAlgo::Sha256, b"other")
            }),
            ("nar size", |i| i.nar_size += 1),
            ("added reference", |i| {
                i.references.insert(path(3, "evil"));
            }),
            ("removed reference", |i| {
                i.references.remove(&path(2, "glibc-2.40"));
            }),
            ("path", |i| i.store_path = path(9, "hello-2.12")),
        ];
        for (what, alter) in alterations {
            let mut info = signed.clone();
            alter(&mut info);
            let err = info.verify(&dir, &trusted).unwrap_err();
            assert_eq!(
                err,
                VerifyError::Invalid {
                    path: dir.full(&info.store_path),
                    keys: vec![NAME.into()]
                },
                "{what}"
            );
            assert!(err.to_string().contains("do not verify"), "{err}");
        }
        // Another store dir is another path.
        let other = StoreDir::new("/other/store").unwrap();
        assert!(matches!(
            signed.verify(&other, &trusted),
            Err(VerifyError::Invalid { .. })
        ));
    }

    #[test]
    fn untrusted_and_missing_signatures_fail() {
        let dir = StoreDir::default();
        let mut info = info();
        let full = dir.full(&info.store_path);
        assert_eq!(
            info.verify(&dir, &trusting(&[&key()])),
            Err(VerifyError::Unsigned { path: full.clone() })
        );
        let b = SecretKey::from_seed("b-1", [2; 32]).unwrap();
        let a = SecretKey::from_seed("a-1", [1; 32]).unwrap();
        info.sign(&dir, &b);
        info.sign(&dir, &a);
        let err = info.verify(&dir, &trusting(&[&key()])).unwrap_err();
        assert_eq!(
            err,
            VerifyError::Untrusted {
                path: full.clone(),
                keys: vec!["a-1".into(), "b-1".into()]
            }
        );
        assert_eq!(
            err.to_string(),
            format!("path `{full}` is signed only by untrusted keys: `a-1`, `b-1`")
        );
        assert_eq!(
            info.verify(&dir, &TrustedKeys::new()),
            Err(VerifyError::Untrusted {
                path: full,
                keys: vec!["a-1".into(), "b-1".into()]
            })
        );
        // One trusted signature among untrusted ones is enough.
        assert_eq!(info.verify(&dir, &trusting(&[&b])).unwrap().name(), "b-1");
    }

    #[test]
    fn a_trusted_name_with_another_key_fails() {
        let dir = StoreDir::default();
        let mut info = info();
        let impostor = SecretKey::from_seed(NAME, [8; 32]).unwrap();
        info.sign(&dir, &impostor);
        assert!(matches!(
            info.verify(&dir, &trusting(&[&key()])),
            Err(VerifyError::Invalid { .. })
        ));
    }

    #[test]
    fn signing_again_replaces_the_signature_of_the_same_key() {
        let dir = StoreDir::default();
        let mut info = info();
        let other = SecretKey::from_seed("other-1", [3; 32]).unwrap();
        info.sign(&dir, &key());
        info.sign(&dir, &other);
        info.nar_size = 99;
        info.sign(&dir, &key());
        let names: Vec<&str> = info.signatures.iter().map(Signature::name).collect();
        assert_eq!(names, ["other-1", NAME]);
        assert!(info.verify(&dir, &trusting(&[&key()])).is_ok());
        assert!(info.verify(&dir, &trusting(&[&other])).is_err());
    }

    #[test]
    fn trusted_keys_parse_like_nix_conf() {
        let a = SecretKey::from_seed("a-1", [1; 32]).unwrap().public();
        let b = SecretKey::from_seed("b-1", [2; 32]).unwrap().public();
        let trusted: TrustedKeys = format!("  {a}\n\t{b} ").parse().unwrap();
        assert_eq!(trusted.len(), 2);
        assert_eq!(trusted.get("b-1"), Some(&b));
        assert_eq!(trusted.iter().collect::<Vec<_>>(), [&a, &b]);
        assert!("".parse::<TrustedKeys>().unwrap().is_empty());
        assert!(format!("{a} junk").parse::<TrustedKeys>().is_err());
    }

    proptest! {
        #[test]
        fn text_forms_round_trip(
            seed in any::<[u8; 32]>(),
            sig in proptest::collection::vec(any::<u8>(), 64),
            name in "[A-Za-z0-9][A-Za-z0-9.+_ -]{0,30}",
        ) {
            let secret = SecretKey::from_seed(&name, seed).unwrap();
            prop_assert_eq!(secret.to_string().parse::<SecretKey>().unwrap(), secret.clone());
            let public = secret.public();
            prop_assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
            let sig = Signature::new(&name, sig.try_into().unwrap()).unwrap();
            prop_assert_eq!(sig.to_string().parse::<Signature>().unwrap(), sig);
        }
    }
}
