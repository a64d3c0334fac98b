//! bigtop-store: the local store and everything that writes to it.
//!
//! Status: a skeleton. This crate will hold the local store (files plus
//! SQLite metadata), adding paths, reference scanning, garbage collection,
//! verification, locks, substituters and binary caches, copying closures,
//! the planner, and the parallel sandboxed builder. It depends only on
//! [`bigtop_core`], whose formats it stores.
//!
//! ```
//! // Everything the store will hold is named by bigtop-core's types today:
//! let dir = bigtop_store::core::StoreDir::default();
//! assert_eq!(dir.as_str(), "/bigtop/store");
//! ```
#![deny(missing_docs)]

pub use bigtop_core as core;
