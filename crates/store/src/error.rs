//! The store's errors: each names the path, file or input it is about.

use std::io;
use std::path::PathBuf;

use bigtop_core::{ContentAddress, Hash, StorePath};
use thiserror::Error;

/// Why a store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("cannot {action} `{path}`")]
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
    #[error("store database `{path}` failed")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer bigtop.
    #[error("store database `{path}` has schema version {found}, newer than the {supported} this bigtop knows: upgrade bigtop to open it")]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// The database describes another logical store dir's paths.
    #[error("store database `{database}` belongs to the store dir `{recorded}`, not `{opened}`: open it with `{recorded}`, or give `{opened}` a state dir of its own")]
    StoreDirMismatch {
        /// The database file.
        database: PathBuf,
        /// The store dir it records.
        recorded: String,
        /// The store dir it was opened for.
        opened: String,
    },
    /// A store path was asked about that is not registered.
    #[error("path `{path}` is not valid in the store")]
    NotValid {
        /// The path.
        path: StorePath,
    },
    /// A derivation is not well formed.
    #[error("derivation `{name}` is not valid")]
    BadDerivation {
        /// Its `.drv` name or path.
        name: String,
        /// What is wrong.
        #[source]
        source: bigtop_core::derivation::Error,
    },
    /// A `.drv` file in the store does not parse.
    #[error("cannot read derivation `{path}`")]
    DerivationFile {
        /// The `.drv` path.
        path: StorePath,
        /// Why.
        #[source]
        source: bigtop_core::derivation::ParseError,
    },
    /// A derivation to build is not in the store.
    #[error("derivation `{drv}` is not valid in the store (add it first)")]
    MissingDerivation {
        /// The `.drv` path.
        drv: StorePath,
    },
    /// An output was asked for that the derivation does not have.
    #[error("derivation `{drv}` has no output `{output}`")]
    NoSuchOutput {
        /// The `.drv` path.
        drv: StorePath,
        /// The output asked for.
        output: bigtop_core::derivation::OutputName,
    },
    /// A derivation needs an output that its input derivation does not have.
    #[error("derivation `{drv}` needs output `{output}` of `{input}`, which has no such output (it has: {have})")]
    MissingInputOutput {
        /// The `.drv` path of the derivation that needs it.
        drv: String,
        /// The input derivation.
        input: StorePath,
        /// The output it does not have.
        output: bigtop_core::derivation::OutputName,
        /// The outputs it has, each in backticks.
        have: String,
    },
    /// An input source is neither valid nor substitutable.
    #[error("input `{input}` of `{drv}` is not valid and no substituter has it")]
    MissingInput {
        /// The `.drv` path.
        drv: StorePath,
        /// The missing input.
        input: StorePath,
    },
    /// The derivations depend on each other in a cycle.
    #[error("dependency cycle through `{path}`")]
    DependencyCycle {
        /// A path on the cycle.
        path: StorePath,
    },
    /// A path refers to one that is neither registered nor being added.
    #[error("path `{path}` refers to `{reference}`, which is not valid in the store")]
    MissingReference {
        /// The referrer.
        path: StorePath,
        /// The missing reference.
        reference: StorePath,
    },
    /// A root was asked for inside the store directory, where it would be
    /// an entry the store does not know.
    #[error("cannot make `{link}` a root: it is inside the store directory `{store}`, which holds only store paths")]
    RootInStore {
        /// The link asked for.
        link: PathBuf,
        /// The store directory it is in (logical or physical).
        store: PathBuf,
    },
    /// A user gave a symlink that leads out of the store.
    #[error("symlink `{link}` leads to `{target}`, which is not in the store `{store_dir}`")]
    LinkOutsideStore {
        /// The path given.
        link: PathBuf,
        /// Where its links lead.
        target: PathBuf,
        /// The logical store dir.
        store_dir: String,
    },
    /// Contents did not hash to what was claimed.
    #[error("contents of `{path}` do not match: expected {expected}, got {got}")]
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
    /// A path's content address names another path than the path.
    #[error("content address `{ca}` of `{path}` gives the path `{implied}`, not `{path}`")]
    ContentAddressMismatch {
        /// The path that claimed it.
        path: StorePath,
        /// The claim.
        ca: ContentAddress,
        /// The path the claim gives.
        implied: StorePath,
    },
    /// A path claims a content address that no path like it can have.
    #[error("content address `{ca}` of `{path}` cannot hold: {reason}")]
    ContentAddressUnfit {
        /// The path that claimed it.
        path: StorePath,
        /// The claim.
        ca: ContentAddress,
        /// Why it cannot hold.
        reason: &'static str,
    },
    /// A path's contents refer to a path that its references leave out,
    /// which the collector would then delete while it is still in use.
    #[error("contents of `{path}` refer to `{reference}`, which its references leave out")]
    UndeclaredReference {
        /// The referrer.
        path: StorePath,
        /// The reference found in its contents.
        reference: StorePath,
    },
    /// A path that is still alive was asked to be deleted.
    #[error("cannot delete `{path}`: it is still alive ({reason})")]
    StillAlive {
        /// The path.
        path: StorePath,
        /// Why (a root, a referrer, a running process).
        reason: String,
    },
    /// A NAR could not be read or unpacked.
    #[error("cannot unpack the NAR of `{path}`")]
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
    #[error("store database holds invalid metadata for `{path}`: {reason}")]
    BadMetadata {
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An export stream is malformed.
    #[error("invalid export stream: {reason}")]
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

/// An error with its causes, `: `-separated, for the places that keep a
/// failure as text (a build failure's reason): the cause is often the
/// part that says what to do.
pub(crate) struct Chain<'a>(pub(crate) &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl Error {
    /// Whether fetching again may succeed where this failed: what came
    /// over the network was cut, corrupt or not what was claimed. Not a
    /// local failure (a full disk while unpacking, the database): trying
    /// again would only download it all again to fail the same way.
    pub(crate) fn worth_fetching_again(&self) -> bool {
        match self {
            Error::Nar { source, .. } => {
                !matches!(source, bigtop_core::nar::ReadError::Sink { .. })
            }
            Error::HashMismatch { .. } | Error::SizeMismatch { .. } | Error::BadMetadata { .. } => {
                true
            }
            _ => false,
        }
    }
}

/// `f`, tried up to `tries` times in all while `again` says its error may
/// pass another time: after 200 ms, then twice as long each time.
pub(crate) fn retrying<T, E>(
    tries: u32,
    again: impl Fn(&E) -> bool,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut wait = std::time::Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match f() {
            Err(e) if attempt < tries && again(&e) => {
                std::thread::sleep(wait);
                wait *= 2;
                attempt += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_cut_is_worth_fetching_again_and_a_full_disk_is_not() {
        let path: StorePath = "00000000000000000000000000000000-x"
            .parse()
            .expect("a store path");
        let nar = |source| Error::Nar {
            path: path.clone(),
            source,
        };
        assert!(nar(bigtop_core::nar::ReadError::Truncated { offset: 8 }).worth_fetching_again());
        let full = bigtop_core::nar::ReadError::Sink {
            path: "x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(!nar(full).worth_fetching_again());
        assert!(!Error::NotValid { path }.worth_fetching_again());
    }
}
