//! The command line: the `bigtop` binary's commands, reusable by fleet
//! programs that embed them.
//!
//! Every command that prints data takes `--json`. Errors print as a chain
//! (`error: …` then `caused by: …`) and exit with status 1; usage errors
//! (a bad `--max-freed`, a missing argument) exit with status 2, as clap
//! reports them. The store commands live in [`store`]; derivations as
//! JSON in [`derivation`]; building and build logs in [`build`], with
//! progress rendered by [`progress`].
//!
//! ```
//! use bigtop::cli::{Cli, Command};
//! use clap::Parser;
//! let cli = Cli::try_parse_from(["bigtop", "hash", "path", ".", "--algo", "sha256", "--base32"])?;
//! assert!(matches!(cli.command, Command::Hash(_)));
//! # Ok::<(), clap::Error>(())
//! ```

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use thiserror::Error;

use bigtop_core::hash::HashAlgo;
use bigtop_core::nar;
use bigtop_core::signing::SecretKey;

pub mod build;
pub mod derivation;
pub mod progress;
pub mod store;

pub use build::{BuildArgs, LogArgs};
pub use derivation::{DerivationAddArgs, DerivationCommand, ShowDerivationArgs};
pub use store::{StoreArgs, StoreCommand, WhyDependsArgs};

/// `bigtop`: store-level commands.
#[derive(Debug, Parser)]
#[command(
    name = "bigtop",
    version,
    about = "bigtop: typed packages and machines, built into a content-addressed store"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
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
}

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
    /// Print a JSON object with every form and the NAR size.
    #[arg(long)]
    pub json: bool,
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

/// `bigtop key …`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate an ed25519 key pair in Nix's key-file format (`NAME:base64`).
    Generate {
        /// The key's name, e.g. `cache.example.org-1`: a file name (no
        /// `/`, not `.` or `..`), since it names the key files.
        name: String,
        /// Where to write the secret key (created with mode 0600, never overwritten).
        #[arg(long, default_value_t = String::from("{name}.secret"))]
        secret_file: String,
        /// Where to write the public key (never overwritten).
        #[arg(long, default_value_t = String::from("{name}.public"))]
        public_file: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Why a command failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Archiving or hashing a tree failed.
    #[error(transparent)]
    Dump(#[from] nar::DumpError),
    /// Unpacking a NAR failed.
    #[error("Cannot unpack into `{dir}`")]
    Restore {
        /// The destination.
        dir: PathBuf,
        /// Why.
        #[source]
        source: nar::ReadError,
    },
    /// A key name was rejected.
    #[error("Invalid key name `{name}`")]
    KeyName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: bigtop_core::signing::ParseError,
    },
    /// A key name cannot name the key's files.
    #[error("Invalid key name `{name}`: it names the key files (`NAME.secret`, `NAME.public`), so it must be a file name, not empty, `.` or `..`, and without `/`")]
    KeyFileName {
        /// The name.
        name: String,
    },
    /// Writing a file failed.
    #[error("Cannot write `{path}`")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The signal handling of a build could not be set up.
    #[error("Cannot set up the handling of SIGINT, SIGTERM and SIGHUP")]
    Signals(#[source] io::Error),
    /// A signal stopped the build: its builds were killed and cleaned up.
    #[error("Interrupted by signal {signal}: running builds were stopped and their work removed")]
    Interrupted {
        /// The signal's number.
        signal: i32,
    },
    /// Writing to standard output failed.
    #[error("Cannot write to standard output")]
    Stdout(#[source] io::Error),
    /// Reading a file failed.
    #[error("Cannot read `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A store could not be opened or created.
    #[error("Cannot open the store at `{dir}`")]
    OpenStore {
        /// The store's root (`--store DIR`, or the default chosen).
        dir: PathBuf,
        /// Why.
        #[source]
        source: Box<bigtop_store::Error>,
    },
    /// No `--store` was given and there is no default store.
    #[error("No store to use: `/bigtop` is not writable and neither `$XDG_DATA_HOME` nor `$HOME` is set; pass `--store DIR`")]
    NoDefaultStore,
    /// A store operation failed (the error names its path). Boxed: store
    /// errors are large, and every result of the CLI carries this type.
    #[error(transparent)]
    Store(Box<bigtop_store::Error>),
    /// A command-line argument is not a store path.
    #[error("`{input}` is not a store path")]
    UserPath {
        /// The argument.
        input: String,
        /// Why.
        #[source]
        source: Box<bigtop_store::Error>,
    },
    /// A file to add has a name that is not a valid store path name.
    #[error("Cannot add `{path}`: its file name is not a valid store path name")]
    AddName {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: bigtop_core::store_path::ParseError,
    },
    /// A file to add has no file name (`/`).
    #[error("Cannot add `{path}`: it has no file name to name its store path after")]
    NoName {
        /// The file.
        path: PathBuf,
    },
    /// A directory to add holds the store itself.
    #[error("Cannot add `{path}`: it holds the store `{store}`")]
    AddHoldsStore {
        /// The directory.
        path: PathBuf,
        /// The physical store directory.
        store: PathBuf,
    },
    /// `why-depends` found no chain of references.
    #[error("`{from}` does not depend on `{to}`")]
    NotDependent {
        /// The path that was asked about.
        from: String,
        /// The path it does not depend on.
        to: String,
    },
    /// `store verify` found problems and was not asked to repair them.
    #[error("Store `{store}` is broken: {missing} missing, {corrupt} corrupt, {unregistered} unregistered entries; `bigtop store verify --repair` repairs it")]
    Broken {
        /// The physical store directory.
        store: PathBuf,
        /// How many registered paths are missing.
        missing: usize,
        /// How many registered paths no longer hash to their record.
        corrupt: usize,
        /// How many entries in the store directory are not registered.
        unregistered: usize,
    },
    /// `store export` was asked to write binary to a terminal.
    #[error("Refusing to write an export stream to a terminal: redirect standard output to a file or pipe")]
    ExportToTerminal,
    /// `--store-dir` is not a valid store dir.
    #[error("Invalid store dir `{input}`")]
    StoreDir {
        /// The argument.
        input: String,
        /// Why.
        #[source]
        source: bigtop_core::store_path::ParseError,
    },
    /// Reading standard input failed.
    #[error("Cannot read standard input")]
    Stdin(#[source] io::Error),
    /// `derivation add` was given nothing.
    #[error("No derivations on standard input: expected a JSON derivation or an array of them")]
    NoDerivations,
    /// Standard input is not JSON at all.
    #[error("Standard input is not JSON")]
    NotJson(#[source] serde_json::Error),
    /// A derivation's JSON does not have the derivation form.
    #[error("Derivation {which} is not in the JSON form of a derivation")]
    DerivationJson {
        /// The derivation: its name and index in the input.
        which: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A derivation breaks a rule of derivations.
    #[error("Derivation {which} is invalid")]
    InvalidDerivation {
        /// The derivation: its name and index in the input.
        which: String,
        /// Why.
        #[source]
        source: bigtop_core::derivation::Error,
    },
    /// A derivation gives an output path other than the one it determines.
    #[error("Derivation {which} gives output `{output}` the path `{given}`, but its inputs determine `{computed}` (leave it empty to have it computed)")]
    WrongOutputPath {
        /// The derivation: its name and index in the input.
        which: String,
        /// The output.
        output: bigtop_core::derivation::OutputName,
        /// The path given.
        given: String,
        /// The path computed, or `deferred`.
        computed: String,
    },
    /// An input derivation is neither in the store nor in the batch.
    #[error("Derivation {which} needs `{input}`, which is neither valid in the store nor in this batch{hint}")]
    UnknownInput {
        /// The derivation: its name and index in the input.
        which: String,
        /// The input `.drv`.
        input: String,
        /// A likelier path, if the batch has one of that name.
        hint: String,
    },
    /// An input source is not valid in the store.
    #[error("Derivation {which} needs source `{input}`, which is not valid in the store")]
    MissingSource {
        /// The derivation: its name and index in the input.
        which: String,
        /// The input source.
        input: String,
    },
    /// An input derivation in the store could not be read.
    #[error("Derivation {which} needs `{input}`, which cannot be read")]
    InputDerivation {
        /// The derivation: its name and index in the input.
        which: String,
        /// The input `.drv`.
        input: String,
        /// Why.
        #[source]
        source: Box<bigtop_store::Error>,
    },
    /// A path given as a derivation is not a `.drv`.
    #[error("`{input}` is not a derivation (`.drv`): build takes derivations (`bigtop store path-info` names a path's deriver)")]
    NotDerivation {
        /// The argument.
        input: String,
    },
    /// An output named after `^` is not a valid output name.
    #[error("Invalid output name in `{input}`")]
    BadOutputName {
        /// The argument.
        input: String,
        /// Why.
        #[source]
        source: bigtop_core::store_path::ParseError,
    },
    /// An output path has no recorded deriver.
    #[error("`{path}` has no recorded deriver (it was added, not built)")]
    NoDeriver {
        /// The path.
        path: String,
    },
    /// A derivation has no build log in this store.
    #[error("No build log for `{drv}`: it has not been built by this store")]
    NoLog {
        /// The `.drv`.
        drv: String,
    },
    /// Builds must be sandboxed and this machine cannot.
    #[error("Cannot sandbox builds on this machine: {reason}; pass `--no-sandbox` to build without isolation")]
    NoSandbox {
        /// Why.
        reason: String,
    },
    /// `--no-sandbox` with a store that is not at its logical path.
    #[error("Cannot build `{drv}` without the sandbox: unsandboxed builders write outputs at their logical paths, and this store keeps `{logical}` in `{physical}`; drop `--no-sandbox`, or use a store at its logical path (`--store-dir DIR` without `--store`)")]
    UnsandboxedChroot {
        /// A derivation that would run a builder process.
        drv: String,
        /// The logical store dir.
        logical: PathBuf,
        /// Where the store keeps it.
        physical: PathBuf,
    },
    /// An out-link would replace something that is not a symlink.
    #[error("Refusing to replace `{path}` with an out-link: it exists and is not a symlink")]
    OutLinkInTheWay {
        /// The file in the way.
        path: PathBuf,
    },
    /// Builds failed (each was reported on standard error as it failed).
    #[error("{failed} build{} failed{}{details}", if *.failed == 1 { "" } else { "s" }, skipped_text(*.skipped))]
    BuildFailed {
        /// How many builds failed.
        failed: usize,
        /// Per failure, the derivation and why (on more lines where why
        /// takes them).
        details: String,
        /// How many jobs were not attempted because a dependency failed.
        skipped: usize,
    },
    /// `--check` rebuilt outputs that differ from the registered ones.
    #[error("{count} output{} not deterministic: a rebuild differs from the registered output{details}", if *.count == 1 { " is" } else { "s are" })]
    NotDeterministic {
        /// How many outputs differ.
        count: usize,
        /// One line per output: the path, its deriver, both hashes.
        details: String,
    },
}

fn skipped_text(skipped: usize) -> String {
    match skipped {
        0 => ":".to_owned(),
        1 => " (1 dependent job not attempted):".to_owned(),
        n => format!(" ({n} dependent jobs not attempted):"),
    }
}

impl From<bigtop_store::Error> for Error {
    fn from(e: bigtop_store::Error) -> Self {
        Error::Store(Box::new(e))
    }
}

/// Runs the command line of the current process and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`bigtop nar dump x | head`) is not a failure.
        Err(Error::Stdout(e)) | Err(Error::Dump(nar::DumpError::Write(e)))
            if e.kind() == io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", render_error(&e));
            match e {
                // As a shell reports a process the signal ended.
                Error::Interrupted { signal } => ExitCode::from(128 + signal as u8),
                _ => ExitCode::FAILURE,
            }
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
    match cli.command {
        Command::Nar(NarCommand::Dump { path }) => {
            let stdout = io::stdout().lock();
            nar::dump_path(&path, stdout)?;
            Ok(())
        }
        Command::Nar(NarCommand::Restore { dir }) => {
            let mut stdin = io::stdin().lock();
            nar::restore(&mut stdin, &dir).map_err(|source| Error::Restore { dir, source })
        }
        Command::Hash(HashCommand::Path(args)) => hash_path(&args),
        Command::Key(KeyCommand::Generate {
            name,
            secret_file,
            public_file,
            json,
        }) => generate_key(
            &name,
            &secret_file.replace("{name}", &name),
            &public_file.replace("{name}", &name),
            json,
        ),
        Command::Store(command) => store::run(command),
        Command::WhyDepends(args) => store::why_depends(&args),
        Command::Derivation(DerivationCommand::Add(args)) => derivation::add(&args),
        Command::Derivation(DerivationCommand::Show(args)) | Command::ShowDerivation(args) => {
            derivation::show(&args)
        }
        Command::Build(args) => build::build(&args),
        Command::Log(args) => build::log(&args),
    }
}

fn hash_path(args: &HashPathArgs) -> Result<(), Error> {
    let (hash, size) = nar::hash_path(&args.path, args.algo.into())?;
    let mut out = BufWriter::new(io::stdout().lock());
    let text = if args.json {
        let v = serde_json::json!({
            "path": args.path.to_string_lossy(),
            "algo": hash.algo().name(),
            "sri": hash.to_sri(),
            "base32": hash.to_base32(),
            "hex": hash.to_hex(),
            "nar_size": size,
        });
        v.to_string()
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

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(err)
}

fn generate_key(name: &str, secret_file: &str, public_file: &str, json: bool) -> Result<(), Error> {
    // The default files are `{name}.secret` and `{name}.public`: a name
    // with a `/` would write them elsewhere than the current directory.
    if matches!(name, "" | "." | "..") || name.contains('/') {
        return Err(Error::KeyFileName {
            name: name.to_owned(),
        });
    }
    let secret = SecretKey::generate(name).map_err(|source| Error::KeyName {
        name: name.to_owned(),
        source,
    })?;
    let public = secret.public();
    let (secret_path, public_path) = (Path::new(secret_file), Path::new(public_file));
    write_new(secret_path, &secret.to_string(), 0o600)?;
    if let Err(e) = write_new(public_path, &public.to_string(), 0o644) {
        // Leave no half-made pair behind.
        let _ = std::fs::remove_file(secret_path);
        return Err(e);
    }
    let mut out = io::stdout().lock();
    let text = if json {
        serde_json::json!({
            "name": name,
            "public_key": public.to_string(),
            "secret_file": secret_path,
            "public_file": public_path,
        })
        .to_string()
    } else {
        format!("{public}\nsecret key written to {secret_file}, public key to {public_file}")
    };
    writeln!(out, "{text}").map_err(Error::Stdout)
}
