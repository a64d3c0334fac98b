//! bigtop-core: the pure formats every other part of bigtop stands on.
//!
//! A tree is archived as a NAR and hashed; a package is a [`Derivation`]
//! whose output paths follow from its text; a binary cache describes a path
//! with a signed [`NarInfo`]; closures are walks over a [`ReferenceGraph`].
//!
//! ```
//! use bigtop_core::derivation::{Derivation, DerivationOutput, OutputName};
//! use bigtop_core::{nar, HashAlgo, NarInfo, ReferenceGraph, SecretKey, StoreDir, TrustedKeys};
//!
//! let dir = StoreDir::default();
//! // A derivation and the path its output will have, before anything is built.
//! let mut drv = Derivation::new("hello", "x86_64-linux", "/bin/sh");
//! drv.args = vec!["-c".into(), "echo hello > $out".into()];
//! drv.outputs.insert(OutputName::out(), DerivationOutput::Deferred);
//! drv.fill_output_paths(&dir, |_input| None)?;
//! let out = drv.output_path(&dir, &OutputName::out()).expect("input-addressed");
//!
//! // Once built, its contents are described by their NAR hash and size…
//! let built = tempfile::tempdir()?;
//! std::fs::write(built.path().join("hello"), "hello\n")?;
//! let (nar_hash, nar_size) = nar::hash_path(built.path(), HashAlgo::Blake3)?;
//!
//! // …which a binary cache publishes in a signed narinfo.
//! let key = SecretKey::generate("cache.example.org-1")?;
//! let mut info = NarInfo::new(out.clone(), format!("nar/{}.nar", nar_hash.to_base32()), nar_hash, nar_size);
//! info.sign(&dir, &key);
//! let mut trusted = TrustedKeys::new();
//! trusted.insert(key.public());
//! info.verify(&dir, &trusted)?;
//!
//! // Closures are graph walks over references.
//! let graph = ReferenceGraph::new([(out.clone(), Vec::new())])?;
//! assert_eq!(graph.closure([&out])?.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Nothing here touches a store, a database or the network: digests and
//! their text forms ([`hash`], [`base32`]), store paths ([`store_path`]),
//! content addresses ([`content_address`]), the NAR format ([`nar`]: the
//! only file-system access, reading a tree to archive it, unpacking one,
//! and removing one, all by directory descriptors),
//! derivations and their `.drv` form ([`derivation`]), binary cache
//! metadata ([`narinfo`]) and its signatures ([`signing`]), the
//! algorithms over reference graphs ([`closure`]), and the system
//! manifest activation reads ([`manifest`]).
#![deny(missing_docs)]

/// Serializes a type as its text form (`Display`) and deserializes it
/// through `FromStr`, so JSON shows what users see on the command line.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_text;

pub mod base32;
pub mod closure;
pub mod content_address;
pub mod derivation;
pub mod hash;
pub mod manifest;
pub mod nar;
pub mod narinfo;
pub mod signing;
pub mod store_path;

pub use closure::{CycleError, ReferenceGraph};
pub use content_address::{ContentAddress, ContentAddressMethod};
pub use derivation::Derivation;
pub use hash::{Blake3Digest, Hash, HashAlgo, Hasher};
pub use narinfo::NarInfo;
pub use signing::{PublicKey, SecretKey, Signature, TrustedKeys};
pub use store_path::{StoreDir, StorePath, StorePathDigest};
