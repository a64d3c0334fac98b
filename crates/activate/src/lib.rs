//! bigtop-activate: switching machines to a built system, and back.
//!
//! A machine is a root directory (`/` on a real machine, any directory
//! for a container or a test): its store (the chroot store rooted there,
//! so the paths inside the system are the logical `/bigtop/store/…`), its
//! profile of generations, its `etc`, `run` and `var`. This crate never
//! builds: it takes store paths that [`bigtop_store`] has already made
//! valid in the machine's store.
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
