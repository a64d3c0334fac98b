//! `bigtop nar …`: NAR archives of files and trees, byte for byte as Nix
//! writes them.

use std::io;
use std::path::PathBuf;

use bigtop_core::nar;
use clap::Subcommand;
use thiserror::Error;

/// `bigtop nar …`
#[derive(Debug, Subcommand)]
pub enum NarCommand {
    /// Write the NAR of PATH to standard output.
    Dump {
        /// The file, directory or symlink to archive.
        path: PathBuf,
    },
    /// Unpack a NAR read from standard input into DIR, which must not exist.
    Restore {
        /// Where to unpack.
        dir: PathBuf,
    },
}

/// Why a `bigtop nar` command failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Archiving a tree failed (writing it out included).
    #[error(transparent)]
    Dump(#[from] nar::DumpError),
    /// Unpacking a NAR failed.
    #[error("cannot unpack into `{dir}`")]
    Restore {
        /// The destination.
        dir: PathBuf,
        /// Why.
        #[source]
        source: nar::ReadError,
    },
}

impl Error {
    /// Whether the reader of standard output went away (`… | head`),
    /// which is not a failure of the command.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Dump(nar::DumpError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Runs a `bigtop nar` command.
pub fn run(command: NarCommand) -> Result<(), Error> {
    match command {
        NarCommand::Dump { path } => {
            nar::dump_path(&path, io::stdout().lock())?;
            Ok(())
        }
        NarCommand::Restore { dir } => {
            let mut stdin = io::stdin().lock();
            nar::restore(&mut stdin, &dir).map_err(|source| Error::Restore { dir, source })
        }
    }
}
