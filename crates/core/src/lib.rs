//! bigtop-core: the pure formats every other part of bigtop stands on.
//!
//! Nothing here touches a store, a database or the network. It holds the
//! digests and their text forms ([`hash`], [`base32`]), store paths
//! ([`store_path`]), content addresses ([`content_address`]), binary cache
//! metadata ([`narinfo`]) and its signatures ([`signing`]), and the
//! algorithms over reference graphs ([`closure`]).
#![deny(missing_docs)]

pub mod base32;
pub mod closure;
pub mod content_address;
pub mod derivation;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod signing;
pub mod store_path;

pub use closure::{CycleError, ReferenceGraph};
pub use content_address::{ContentAddress, ContentAddressMethod};
pub use hash::{Blake3Digest, Hash, HashAlgo, Hasher};
pub use narinfo::NarInfo;
pub use signing::{PublicKey, SecretKey, Signature, TrustedKeys};
pub use store_path::{StoreDir, StorePath, StorePathDigest};
