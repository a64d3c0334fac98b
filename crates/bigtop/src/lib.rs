//! bigtop: packages and machine configuration in one typed Rust model,
//! built into a content-addressed store and switched onto machines
//! atomically, with rollback.
//!
//! This crate is the facade: it re-exports the four parts and holds the
//! [`cli`] that turns a program into a command-line tool.
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`core`] | `bigtop-core` | digests, store paths, NAR, derivations, narinfo, signatures, closures, the machine manifest |
//! | [`store`] | `bigtop-store` | the local store, planner, sandboxed builder, GC (binary caches next) |
//! | [`eval`] | `bigtop-eval` | the typed DSL: packages and package sets, sources, the module system with typed options, services, the system toplevel, fleets |
//! | [`realise`] | | evaluated packages into a store: sources imported, derivations added, built |
//! | [`activate`] | `bigtop-activate` | generations, atomic switch, readiness gate, rollback, s6 and systemd, containers (deploys over SSH next) |
//! | [`serve`] | | a store served over HTTP as a read-only binary cache (`bigtop cache serve`) |
//!
//! A machine's configuration is modules whose options are Rust structs;
//! typed keys define and read them, so a misspelled option or a value of
//! the wrong type does not compile:
//!
//! ```
//! use bigtop::eval::drv::Platform;
//! use bigtop::eval::fleet::{Fleet, Machine};
//! use bigtop::eval::module::{force, lazy, Module};
//! use bigtop::eval::set::PackageSet;
//! use bigtop::eval::system::{ETC, SERVICES};
//! use bigtop::eval::{trivial, Options};
//!
//! /// A greeter's options.
//! #[derive(Options, Clone)]
//! struct Hello {
//!     /// Whether to greet.
//!     enable: bool,
//!     /// What it says.
//!     #[option(default = "hello")]
//!     greeting: String,
//! }
//!
//! let hello = Hello::at("services.hello");
//! let module = Module::new("hello", |m| {
//!     m.options::<Hello>("services.hello");
//!     m.when(move |c| c.read(hello.enable), move |m| {
//!         m.set(ETC.entry("hello.conf").text, lazy(move |c| Ok(c.read(hello.greeting)? + "\n")));
//!         m.set(SERVICES.entry("hello").argv, ["/bin/sh", "-c", "cat /etc/hello.conf; sleep 1000"]);
//!     });
//! });
//! let release = PackageSet::new(Platform::default())
//!     .add("motd", |a| trivial::write_text(a.platform(), "motd", "hi\n"))
//!     .eval();
//! let fleet = Fleet::new(Platform::default())
//!     .release("2026.11", release)
//!     .module(module)
//!     .machine(Machine::new("web1", "2026.11").module(Module::new("web1", |m| {
//!         m.set(hello.enable, true);
//!         m.set(hello.greeting, force("hello from web1"));
//!     })));
//! let machines = fleet.eval();
//! let web1 = machines.machine("web1")?;
//! assert_eq!(web1.config.read(hello.greeting)?, "hello from web1");
//! // Its toplevel: every store path known, nothing built yet.
//! println!("{}", web1.toplevel.drv);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A program that depends on this crate alone gets the derive's code
//! written against `bigtop::eval` (it reads the program's manifest); one
//! that renames the dependency says where it is:
//!
//! ```
//! use bigtop::eval::module::{Config, Module};
//! #[derive(bigtop::eval::Options)]
//! #[options(crate = "bigtop::eval")]
//! struct Motd {
//!     /// What it says.
//!     #[option(default = "hi")]
//!     text: String,
//! }
//! let motd = Motd::at("motd");
//! let m = Module::new("m", |m| {
//!     m.options::<Motd>("motd");
//! });
//! assert_eq!(Config::eval(&[m], None)?.read(motd.text)?, "hi");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Building writes outputs into the store; what nothing roots is garbage
//! to the next collection, so a tool that keeps what it built roots it:
//! `store.add_root(name, &built.path(&drv.out())?)` after
//! [`realise::realise`] (as `bigtop build -o` does).
//!
//! The formats alone:
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
pub mod serve;
