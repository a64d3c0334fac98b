//! bigtop-activate: switching machines to a built system, and back.
//!
//! Status: a skeleton. This crate will hold profiles and generations, the
//! activation engine, service-manager backends (systemd, s6), health
//! checks and rollback, and deploy targets. It never builds: it takes
//! store paths that [`bigtop_store`] has already made valid.
//!
//! ```
//! let dir = bigtop_activate::store::core::StoreDir::default();
//! assert!(dir.as_str().starts_with('/'));
//! ```
#![deny(missing_docs)]

pub use bigtop_store as store;
