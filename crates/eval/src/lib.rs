//! bigtop-eval: the typed model users write their fleet in.
//!
//! Status: a skeleton. This crate will hold the derivation and package
//! builders, builtin builders, sources and fetchers, package sets and
//! overlays, the module system, services, the system toplevel and fleets.
//! Evaluation is pure: it computes every store path of a fleet from
//! [`bigtop_core`] types alone, without a store, so this crate never
//! depends on `bigtop-store` (a test in the `bigtop` crate enforces it).
//!
//! ```
//! use bigtop_eval::core::derivation::{Derivation, DerivationOutput, OutputName};
//! let mut drv = Derivation::new("hello", "x86_64-linux", "/bin/sh");
//! drv.outputs.insert(OutputName::out(), DerivationOutput::Deferred);
//! assert!(drv.validate().is_ok());
//! ```
#![deny(missing_docs)]

pub use bigtop_core as core;
