//! bigtop-activate: switching machines to a built system, and back.
//!
//! A machine is a root directory (`/` on a real machine, any directory
//! for a container or a test): its store (the chroot store rooted there,
//! so the paths inside the system are the logical `/bigtop/store/…`), its
//! profile of generations, its `etc`, `run` and `var`. This crate never
//! builds: it takes store paths that [`bigtop_store`] has already made
//! valid in the machine's store, and reads their `manifest.json`
//! ([`bigtop_core::manifest`]).
//!
//! - [`Machine`]: opens a root; its [`generations`] (profile links that
//!   are roots of its store), its activation lock;
//! - [`plan`]: what moving from one system to another does and why — a
//!   typed value, printed by `dry-activate --json`;
//! - [`engine`]: `switch`, `boot`, `test`, `rollback`, as journaled,
//!   idempotent steps ([`etc`], [`users`], activation steps, [`services`]),
//!   with a readiness gate that rolls back;
//! - [`container`]: a root booted on this host in its own namespaces with
//!   s6-svscan as init — the machine every test and the quickstart use;
//! - [`inspect`]: `status` and `verify` (drift).
//!
//! ```
//! use bigtop_activate::plan::{diff, Observed, ServiceAction};
//! use bigtop_core::manifest::{Manifest, ManifestService, OnChange, Restart, Service};
//!
//! let service = |argv: &str| {
//!     let service = Service {
//!         name: "web".into(), description: String::new(), argv: vec![argv.into()],
//!         environment: Default::default(), working_directory: None,
//!         user: "root".into(), group: "root".into(), requires: vec![], after: vec![],
//!         restart: Restart::OnFailure, restart_delay_ms: 1000, reload: None,
//!         on_change: OnChange::Restart, restart_triggers: vec![], ready: None,
//!         limits: Default::default(), systemd_unit: Default::default(),
//!         systemd_service: Default::default(),
//!     };
//!     ManifestService { hash: argv.into(), service }
//! };
//! let mut old = Manifest::new("web1");
//! old.services.insert("web".into(), service("/bin/web-1"));
//! let mut new = old.clone();
//! new.services.insert("web".into(), service("/bin/web-2"));
//!
//! // What a switch would do, given that `web` runs: restart it, and why.
//! let running = Observed { running: ["web".to_owned()].into(), ..Observed::default() };
//! let plan = diff(Some(&old), &new, &running);
//! assert_eq!(plan.services[0].action, ServiceAction::Restart);
//! assert_eq!(plan.services[0].reasons, ["argv changed"]);
//! assert_eq!(plan.start_order, ["web"]);
//! ```
#![deny(missing_docs)]

pub use bigtop_store as store;

pub mod container;
pub mod engine;
pub mod error;
pub mod etc;
pub mod fs;
pub mod generations;
pub mod inspect;
pub mod machine;
pub mod plan;
pub mod services;
pub mod time;
pub mod users;

pub use engine::{Mode, Observer, Options, Report};
pub use error::Error;
pub use generations::{Generation, GenerationInfo, Keep};
pub use machine::{ActivationLock, Machine, System};
pub use plan::{Observed, Plan};
