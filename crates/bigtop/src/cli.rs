//! The command line: the `bigtop` binary's commands, reusable by fleet
//! programs that embed them.
//!
//! This module parses and dispatches; each command group lives in its own
//! module with its own error type: archives in [`nar`], hashes in
//! [`hash`], signing keys in [`key`], the store in [`store`], derivations
//! as JSON in [`derivation`], building and build logs in [`build`],
//! binary caches in [`copy`] and [`cache`] (serving one), with progress
//! rendered by [`progress`].
//!
//! The global flags (`--store`, `--store-dir`, `--json`) go anywhere on
//! the line, before or after the command, as `nix --store` does; like
//! Nix's, a command that opens no store (`nar`, `hash`, `key`) accepts
//! and ignores the store flags, and a flag given twice takes its last
//! value. Every command that prints data takes `--json`; one that writes
//! a stream (`nar dump`, `store export`, `log`) refuses it, as a usage
//! error. Errors print as a chain
//! (`error: …` then `caused by: …`) and exit with status 1; usage errors
//! (a bad `--max-freed`, a missing argument) exit with status 2, as clap
//! reports them.
//!
//! ```
//! use bigtop::cli::{Cli, Command};
//! use clap::Parser;
//! let cli = Cli::try_parse_from(["bigtop", "hash", "path", ".", "--algo", "sha256", "--base32"])?;
//! assert!(matches!(cli.command, Command::Hash(_)));
//! # Ok::<(), clap::Error>(())
//! ```

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use thiserror::Error;

pub mod build;
pub mod cache;
pub mod config;
pub mod copy;
pub mod derivation;
pub mod hash;
pub mod key;
pub mod nar;
pub mod progress;
pub mod store;
pub mod system;

pub use build::{BuildArgs, LogArgs};
pub use cache::{CacheCommand, ServeArgs};
pub use copy::CopyArgs;
pub use derivation::{DerivationAddArgs, DerivationCommand, ShowDerivationArgs};
pub use hash::{Algo, HashCommand, HashPathArgs};
pub use key::KeyCommand;
pub use nar::NarCommand;
pub use store::{StoreArgs, StoreCommand, WhyDependsArgs};
pub use system::{ContainerCommand, SystemCommand};

/// `bigtop`: store-level commands.
#[derive(Debug, Parser)]
#[command(
    name = "bigtop",
    version,
    about = "bigtop: typed packages and machines, built into a content-addressed store"
)]
pub struct Cli {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The flags every command takes, before or after its name.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON (store paths as base names) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Write and unpack NAR archives.
    #[command(subcommand)]
    Nar(NarCommand),
    /// Hash files and trees.
    #[command(subcommand)]
    Hash(HashCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Query and maintain the local store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Print a shortest chain of references from FROM to TO, one path per
    /// line; exit 1 if FROM does not depend on TO.
    WhyDepends(WhyDependsArgs),
    /// Create derivations from their JSON form, and show them.
    #[command(subcommand)]
    Derivation(DerivationCommand),
    /// Print derivations as JSON, in the form `derivation add` reads.
    ShowDerivation(ShowDerivationArgs),
    /// Build derivations and print their output paths, one per line.
    Build(BuildArgs),
    /// Print the build log of a derivation, or of an output's deriver.
    Log(LogArgs),
    /// Copy closures to a binary cache (`--to URL`, signed with `--sign`)
    /// or substitute them from one (`--from URL`, signatures checked), or
    /// between this store and another machine's (`ssh://[user@]host[:port]`).
    Copy(CopyArgs),
    /// Serve the store as a binary cache over HTTP.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Switch a machine to a built system, roll it back, list its
    /// generations, check it for drift.
    #[command(subcommand)]
    System(SystemCommand),
    /// Boot a machine root as a container on this host, stop it, run
    /// commands in it.
    #[command(subcommand)]
    Container(ContainerCommand),
}

/// Why a command failed: the error of its command group.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// `bigtop nar …`
    #[error(transparent)]
    Nar(#[from] nar::Error),
    /// `bigtop hash …`
    #[error(transparent)]
    Hash(#[from] hash::Error),
    /// `bigtop key …`
    #[error(transparent)]
    Key(#[from] key::Error),
    /// `bigtop store …` and `bigtop why-depends`.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// `bigtop derivation …` and `bigtop show-derivation`.
    #[error(transparent)]
    Derivation(#[from] derivation::Error),
    /// `bigtop build` and `bigtop log`.
    #[error(transparent)]
    Build(#[from] build::Error),
    /// `bigtop system …` and `bigtop container …`.
    #[error(transparent)]
    System(#[from] system::Error),
    /// `bigtop copy`.
    #[error(transparent)]
    Copy(#[from] copy::Error),
    /// `bigtop cache …`.
    #[error(transparent)]
    Cache(#[from] cache::Error),
    /// `--json` was given to a command that writes a stream, not data.
    #[error("`bigtop {command}` writes {what}, which has no JSON form: drop `--json`")]
    NoJson {
        /// The command.
        command: &'static str,
        /// What it writes.
        what: &'static str,
    },
}

impl Error {
    /// Whether the reader of standard output went away (`bigtop nar dump
    /// x | head`), which is not a failure of the command.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            Error::Nar(e) => e.is_broken_pipe(),
            Error::Hash(e) => e.is_broken_pipe(),
            Error::Key(e) => e.is_broken_pipe(),
            Error::Store(e) => e.is_broken_pipe(),
            Error::Derivation(e) => e.is_broken_pipe(),
            Error::Build(e) => e.is_broken_pipe(),
            Error::System(e) => e.is_broken_pipe(),
            Error::Copy(e) => e.is_broken_pipe(),
            Error::Cache(e) => e.is_broken_pipe(),
            Error::NoJson { .. } => false,
        }
    }

    /// The exit status: 2 for a usage error (as clap exits), 128 + the
    /// signal that stopped a build (as a shell reports a process the
    /// signal ended), else 1.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::NoJson { .. } => ExitCode::from(2),
            Error::System(system::Error::Command(code)) => ExitCode::from(*code as u8),
            Error::Build(build::Error::Interrupted { signal }) => {
                ExitCode::from(128 + *signal as u8)
            }
            _ => ExitCode::FAILURE,
        }
    }
}

/// Runs the command line of the current process and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", render_error(&e));
            e.exit_code()
        }
    }
}

/// An error and its causes, one per line.
pub fn render_error(e: &dyn std::error::Error) -> String {
    let mut out = format!("error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    out
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<(), Error> {
    let global = &cli.global;
    let no_json = |command, what| {
        if global.json {
            Err(Error::NoJson { command, what })
        } else {
            Ok(())
        }
    };
    match cli.command {
        Command::Nar(command) => {
            no_json("nar", "a NAR archive or files")?;
            Ok(nar::run(command)?)
        }
        Command::Hash(command) => Ok(hash::run(command, global.json)?),
        Command::Key(command) => Ok(key::run(command, global.json)?),
        Command::Store(StoreCommand::Export(args)) => {
            no_json("store export", "an export stream")?;
            Ok(store::run(StoreCommand::Export(args), global)?)
        }
        Command::Store(StoreCommand::Serve(args)) => {
            no_json("store serve", "the store protocol")?;
            Ok(store::run(StoreCommand::Serve(args), global)?)
        }
        Command::Store(command) => Ok(store::run(command, global)?),
        Command::WhyDepends(args) => Ok(store::why_depends(&args, global)?),
        Command::Derivation(DerivationCommand::Add(args)) => Ok(derivation::add(&args, global)?),
        Command::Derivation(DerivationCommand::Show(args)) | Command::ShowDerivation(args) => {
            Ok(derivation::show(&args, global)?)
        }
        Command::Build(args) => Ok(build::build(&args, global)?),
        Command::Copy(args) => Ok(copy::copy(&args, global)?),
        Command::Cache(command) => Ok(cache::run(command, global)?),
        Command::Log(args) => {
            no_json("log", "a build log")?;
            Ok(build::log(&args, global)?)
        }
        Command::System(SystemCommand::Logs {
            machine,
            service,
            follow,
        }) => {
            no_json("system logs", "a service's log")?;
            Ok(system::run(
                SystemCommand::Logs {
                    machine,
                    service,
                    follow,
                },
                false,
            )?)
        }
        Command::System(command) => Ok(system::run(command, global.json)?),
        Command::Container(command) => Ok(system::run_container(command, global.json)?),
    }
}
