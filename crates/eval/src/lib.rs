//! bigtop-eval: the typed model users write their packages and their
//! machines in.
//!
//! Evaluation is pure: it computes every store path from [`bigtop_core`]
//! types alone, without a store, so this crate never depends on
//! `bigtop-store` (a test in the `bigtop` crate enforces it). What it
//! produces — [`Drv`](drv::Drv) values, each a derivation with its `.drv`
//! path and output paths, and [`Source`](source::Source)s to import —
//! is what a store adds and builds.
//!
//! * [`platform`]: the store dir and system every path is computed for;
//! * [`drv`]: strings that carry the outputs they name ([`Str`](drv::Str),
//!   [`text!`]), typed outputs, the raw derivation builder;
//! * [`source`]: local trees as content-addressed inputs, filtered;
//! * [`fetch`]: downloads and tarballs, pinned by hash;
//! * [`trivial`]: files, scripts, JSON/TOML, symlink trees;
//! * [`package`]: the package builder (phases, hooks, outputs, metadata)
//!   and the [`Stdenv`](package::Stdenv) it builds with;
//! * [`set`]: package sets, evaluated lazily, with overlays and overrides;
//! * [`closure`]: closures computed without building, for tests;
//! * [`module`]: the module system — typed options, merged by type and
//!   priority, evaluated lazily;
//! * [`system`]: services, /etc, users, activation steps and the system
//!   toplevel;
//! * [`fleet`]: machines pinned to releases, evaluated together.
//!
//! ```
//! use bigtop_eval::drv::Platform;
//! use bigtop_eval::set::PackageSet;
//! use bigtop_eval::{text, trivial};
//! let pkgs = PackageSet::new(Platform::default())
//!     .add("motd", |a| trivial::write_text(a.platform(), "motd", "welcome\n"))
//!     .add("login", |a| {
//!         let motd = a.get("motd")?;
//!         trivial::write_script(a.platform(), "login", "/bin/sh", text!("cat {}\n", motd))
//!     })
//!     .eval();
//! let login = pkgs.get("login")?;
//! assert_eq!(login.closure().len(), 2);
//! # Ok::<(), bigtop_eval::Error>(())
//! ```
#![deny(missing_docs)]

pub use bigtop_core as core;

pub mod closure;
pub mod drv;
mod error;
pub mod fetch;
pub mod fleet;
pub mod module;
pub mod package;
mod par;
pub mod platform;
pub mod set;
pub mod source;
pub mod system;
pub mod trivial;

pub use error::Error;
