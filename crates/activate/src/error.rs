//! What can go wrong when activating a machine.

use std::path::PathBuf;

use crate::fs::IoError;

/// An activation error: each names the machine, system, file or service
/// it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The machine's store cannot be opened or read.
    #[error("the store of the machine at `{root}`")]
    Store {
        /// The machine's root.
        root: PathBuf,
        /// The store's error.
        #[source]
        source: Box<bigtop_store::Error>,
    },
    /// A path given as a toplevel is not one the machine can activate.
    #[error("`{toplevel}` is not a system toplevel in the machine's store: {reason}")]
    NotAToplevel {
        /// The path as given.
        toplevel: String,
        /// Why not.
        reason: String,
    },
    /// A toplevel's manifest cannot be read.
    #[error("the manifest of `{toplevel}`: {reason}")]
    Manifest {
        /// The toplevel.
        toplevel: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another activation holds the machine's lock.
    #[error("another activation is running on the machine at `{root}`: {holder}")]
    Locked {
        /// The machine's root.
        root: PathBuf,
        /// Who holds the lock, as it wrote itself into the lock file.
        holder: String,
    },
    /// A generation that does not exist.
    #[error("the machine at `{root}` has no generation {number}")]
    NoGeneration {
        /// The machine's root.
        root: PathBuf,
        /// The generation asked for.
        number: u64,
    },
    /// A record of activation's state is unreadable or wrong.
    #[error("`{path}`: {reason}")]
    Record {
        /// The record (or the file it describes).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A container cannot be started, entered or stopped.
    #[error("the container of the machine at `{root}`: {reason}")]
    Container {
        /// The machine's root.
        root: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] IoError),
}
