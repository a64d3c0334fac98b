//! bigtop: packages and machine configuration in one typed Rust model,
//! built into a content-addressed store and switched onto machines
//! atomically, with rollback.
//!
//! This crate is the facade: it re-exports the four parts and holds the
//! [`cli`] that turns a program into a command-line tool.
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`core`] | `bigtop-core` | digests, store paths, NAR, derivations, narinfo, signatures, closures |
//! | [`store`] | `bigtop-store` | the local store, builder, caches (in progress) |
//! | [`eval`] | `bigtop-eval` | the typed DSL: packages, sources, package sets (modules, services, fleets in progress) |
//! | [`realise`] | | evaluated packages into a store: sources imported, derivations added, built |
//! | [`activate`] | `bigtop-activate` | generations, switching, rollback, deploys (in progress) |
//!
//! ```
//! use bigtop::core::derivation::{Derivation, DerivationOutput, OutputName};
//! use bigtop::core::StoreDir;
//! let dir = StoreDir::default();
//! let mut drv = Derivation::new("hello", "x86_64-linux", "/bin/sh");
//! drv.args = vec!["-c".into(), "echo hello > $out".into()];
//! drv.outputs.insert(OutputName::out(), DerivationOutput::Deferred);
//! drv.fill_output_paths(&dir, |_| None)?;
//! println!("{}", dir.display(&drv.output_path(&dir, &OutputName::out()).unwrap()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub use bigtop_activate as activate;
pub use bigtop_core as core;
pub use bigtop_eval as eval;
pub use bigtop_store as store;

pub mod bootstrap;
pub mod cli;
pub mod realise;
