//! bigtop-store: the local store — where every build lands and what every
//! machine runs from.
//!
//! A [`Store`] is a logical [`StoreDir`](bigtop_core::StoreDir) (part of
//! every path's identity), a physical directory holding the paths (the
//! logical dir itself, or elsewhere for a *chroot store*), and a state
//! directory holding the SQLite database, GC roots, locks and logs.
//!
//! Its promise: it never holds a registered path that is half-written,
//! missing, or that refers to an unregistered path, whatever happens to the
//! process. Paths are staged under temporary names, canonicalized, synced,
//! renamed into place and only then registered ([`add`]); the collector
//! coordinates with adders through temporary roots and per-path locks
//! ([`gc`], [`lock`]); [`Store::verify`] checks the promise and repairs
//! what a crash left behind.
//!
//! ```
//! use std::collections::BTreeSet;
//! use bigtop_store::Store;
//!
//! let tmp = tempfile::tempdir()?;
//! let store = Store::open_chroot(tmp.path())?;
//! let lib = store.add_text("lib.txt", b"a library", &BTreeSet::new())?;
//! let app_text = format!("uses {}", store.store_dir().display(&lib));
//! let app = store.add_text("app.txt", app_text.as_bytes(), &BTreeSet::from([lib.clone()]))?;
//! assert_eq!(store.closure(&[app.clone()])?, BTreeSet::from([app.clone(), lib.clone()]));
//! assert!(store.physical(&app).starts_with(tmp.path()));
//!
//! // Nothing roots them, so a collection takes both.
//! drop(store);
//! let store = Store::open_chroot(tmp.path())?;
//! let report = store.collect_garbage(&Default::default())?;
//! assert_eq!(report.deleted.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod build;
pub mod cache;
mod db;
pub mod error;
pub mod export;
mod fs;
pub mod gc;
mod liveness;
mod pidfd;
pub mod remote;
pub mod sandbox;
pub mod scan;
mod store;
pub mod verify;

pub use bigtop_core as core;

pub use add::AddBatch;
pub use db::SCHEMA_VERSION;
pub use error::Error;
pub use gc::{GcOptions, GcReport};
pub use scan::ReferenceScanner;
pub use store::{add, lock};
pub use store::{PathInfo, RecordedOutputs, Store, StoreBuilder};
pub use verify::{VerifyOptions, VerifyReport};
