//! bigtop-core: the pure formats every other part of bigtop stands on.
//!
//! Nothing here touches a store, a database or the network. It holds the
//! digests and their text forms ([`hash`], [`base32`]), store paths
//! ([`store_path`]), content addresses ([`content_address`]).
#![deny(missing_docs)]

pub mod base32;
pub mod content_address;
pub mod derivation;
pub mod hash;
pub mod nar;
pub mod store_path;

pub use content_address::{ContentAddress, ContentAddressMethod};
pub use hash::{Blake3Digest, Hash, HashAlgo, Hasher};
pub use store_path::{StoreDir, StorePath, StorePathDigest};
