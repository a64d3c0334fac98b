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

// The derive names this crate by its path, inside it as well as outside.
extern crate self as bigtop_eval;

/// Derives a struct of module options: each named field is an option of
/// the field's Rust type ([`module::OptionValue`]), its doc comment the
/// option's description.
///
/// For `struct Web` it generates `WebKey`, a `Copy` struct holding the
/// typed key of each field (`web.port: Opt<u16>`; a field that is itself
/// a struct of options has its key struct), `Web::at(path)` giving the
/// keys at a path, and `OptionValue`, `FromValue` and `IntoValue` for
/// `Web`, so that `ModuleBuilder::options::<Web>(path)` declares the
/// options and `Config::read(web)` reads them back as a `Web`. Used as the
/// element of a map or list, the struct is a submodule.
///
/// Fields take `#[option(…)]`:
///
/// * `default = EXPR`: the default, checked against the field's type
///   (without it, `bool` defaults to `false`, `Vec` and maps to empty,
///   `Option` to `None`, a struct of options to its fields' defaults, and
///   other types need a definition where they are read);
/// * `required`: no default, even where the type has one;
/// * `ty = EXPR`: the option type, where the Rust type says too little
///   (`types::port()`, `types::matching(…)`);
/// * `example = EXPR`, `default_text = "…"`: for the documentation;
/// * `apply = FN`: a function of the field's type applied to the merged
///   value;
/// * `read_only`, `internal`: see [`module::OptionDecl`];
/// * `default_key`: in a map of these, the field defaults to the entry's
///   key;
/// * `rename = "name"`: the option's name, where it is not the field's.
///
/// The generated code names this crate as `bigtop_eval`, or as
/// `bigtop::eval` in a crate that depends on the `bigtop` facade and not
/// on this crate; `#[options(crate = "path")]` on the struct names it
/// where neither holds (a renamed dependency). A field that is itself a
/// struct of options is declared as its fields, each an option of its own
/// (its doc comment is not kept), unless it has attributes of its own.
///
/// ```
/// use std::collections::BTreeMap;
/// use bigtop_eval::module::{force, Config, Module};
/// use bigtop_eval::Options;
///
/// #[derive(Options, Debug, Clone, PartialEq)]
/// struct Vhost {
///     /// The directory served.
///     root: String,
/// }
///
/// #[derive(Options, Debug, Clone, PartialEq)]
/// struct Web {
///     /// Whether to run the web server.
///     enable: bool,
///     /// The port it listens on.
///     #[option(default = 80, ty = bigtop_eval::module::types::port())]
///     port: u16,
///     /// The sites it serves, by host name.
///     vhosts: BTreeMap<String, Vhost>,
/// }
///
/// let web = Web::at("services.web");
/// let module = Module::new("web", |m| {
///     m.options::<Web>("services.web");
/// });
/// let host = Module::new("host", |m| {
///     m.import(&module);
///     m.set(web.enable, true);
///     m.set(web.port, 8080);
///     m.set(web.port, force(8443));
///     m.set(web.vhosts.entry("example.com").root, "/srv/www");
/// });
/// let cfg = Config::eval(&[host], None)?;
/// let w: Web = cfg.read(web)?;
/// assert_eq!(w.port, 8443);
/// assert_eq!(w.vhosts["example.com"].root, "/srv/www");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub use bigtop_eval_derive::Options;
