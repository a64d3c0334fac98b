//! `bigtop hash …`: the hashes of files and trees, in every text form.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use bigtop_core::hash::HashAlgo;
use bigtop_core::nar;
use clap::{Args, Subcommand, ValueEnum};
use thiserror::Error;

/// `bigtop hash …`
#[derive(Debug, Subcommand)]
pub enum HashCommand {
    /// Print the hash of the NAR of PATH (with sha256, what `nix hash path` prints).
    Path(HashPathArgs),
}

/// Arguments of `bigtop hash path`.
#[derive(Debug, Args)]
pub struct HashPathArgs {
    /// The file, directory or symlink to hash.
    pub path: PathBuf,
    /// Hash algorithm.
    #[arg(long, value_enum, default_value_t = Algo::Blake3)]
    pub algo: Algo,
    /// Print Nix's base-32 form.
    #[arg(long, group = "format")]
    pub base32: bool,
    /// Print the SRI form, `blake3-<base64>` (the default, like `nix hash path`).
    #[arg(long, group = "format")]
    pub sri: bool,
    /// Print hex.
    #[arg(long, group = "format")]
    pub hex: bool,
}

/// A hash algorithm on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Algo {
    /// BLAKE3 (bigtop's own).
    Blake3,
    /// SHA-256 (Nix's).
    Sha256,
}

impl From<Algo> for HashAlgo {
    fn from(a: Algo) -> HashAlgo {
        match a {
            Algo::Blake3 => HashAlgo::Blake3,
            Algo::Sha256 => HashAlgo::Sha256,
        }
    }
}

/// Why a `bigtop hash` command failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the tree failed.
    #[error(transparent)]
    Dump(#[from] nar::DumpError),
    /// Writing to standard output failed.
    #[error("cannot write to standard output")]
    Stdout(#[source] io::Error),
}

impl Error {
    /// Whether the reader of standard output went away (`… | head`),
    /// which is not a failure of the command.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Stdout(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Runs a `bigtop hash` command; `json` is the global `--json`.
pub fn run(command: HashCommand, json: bool) -> Result<(), Error> {
    match command {
        HashCommand::Path(args) => hash_path(&args, json),
    }
}

fn hash_path(args: &HashPathArgs, json: bool) -> Result<(), Error> {
    let (hash, size) = nar::hash_path(&args.path, args.algo.into())?;
    let mut out = BufWriter::new(io::stdout().lock());
    let text = if json {
        serde_json::json!({
            "path": args.path.to_string_lossy(),
            "algo": hash.algo().name(),
            "sri": hash.to_sri(),
            "base32": hash.to_base32(),
            "hex": hash.to_hex(),
            "nar_size": size,
        })
        .to_string()
    } else if args.base32 {
        hash.to_base32()
    } else if args.hex {
        hash.to_hex()
    } else {
        hash.to_sri()
    };
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(Error::Stdout)
}
