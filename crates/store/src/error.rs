//! The store's errors: each names the path, file or input it is about.

use std::io;
use std::path::PathBuf;

use bigtop_core::{Hash, StorePath};
use thiserror::Error;

/// Why a store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("Cannot {action} `{path}`")]
    Io {
        /// What was being done (`create`, `read`, `rename`, …).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The database failed.
    #[error("Store database `{path}` failed")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer bigtop.
    #[error("Store database `{path}` has schema version {found}, newer than the {supported} this bigtop knows: upgrade bigtop to open it")]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// A store path was asked about that is not registered.
    #[error("Path `{path}` is not valid in the store")]
    NotValid {
        /// The path.
        path: StorePath,
    },
    /// A path refers to one that is neither registered nor being added.
    #[error("Path `{path}` refers to `{reference}`, which is not valid in the store")]
    MissingReference {
        /// The referrer.
        path: StorePath,
        /// The missing reference.
        reference: StorePath,
    },
    /// Contents did not hash to what was claimed.
    #[error("Contents of `{path}` do not match: expected {expected}, got {got}")]
    HashMismatch {
        /// The path being added.
        path: StorePath,
        /// The claimed hash.
        expected: Hash,
        /// The hash of what arrived.
        got: Hash,
    },
    /// A NAR's size did not match what was claimed.
    #[error("NAR of `{path}` has {got} bytes, but {expected} were claimed")]
    SizeMismatch {
        /// The path being added.
        path: StorePath,
        /// The claimed size.
        expected: u64,
        /// The size that arrived.
        got: u64,
    },
    /// A path that is still alive was asked to be deleted.
    #[error("Cannot delete `{path}`: it is still alive ({reason})")]
    StillAlive {
        /// The path.
        path: StorePath,
        /// Why (a root, a referrer, a running process).
        reason: String,
    },
    /// A NAR could not be read or unpacked.
    #[error("Cannot unpack the NAR of `{path}`")]
    Nar {
        /// The path being added.
        path: StorePath,
        /// Why.
        #[source]
        source: bigtop_core::nar::ReadError,
    },
    /// A tree could not be archived or hashed.
    #[error(transparent)]
    Dump(#[from] bigtop_core::nar::DumpError),
    /// A path name or store dir was invalid.
    #[error(transparent)]
    StorePath(#[from] bigtop_core::store_path::ParseError),
    /// Stored metadata did not parse (a corrupt or foreign database).
    #[error("Store database holds invalid metadata for `{path}`: {reason}")]
    BadMetadata {
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An export stream is malformed.
    #[error("Invalid export stream: {reason}")]
    BadStream {
        /// What is wrong, with the path it concerns.
        reason: String,
    },
}

/// Builds the `map_err` closure for an I/O error on `path`.
pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
