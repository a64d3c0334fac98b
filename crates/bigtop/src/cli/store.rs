//! `bigtop store …` and `bigtop why-depends`: the local store from the
//! command line.
//!
//! Text output shows full logical store paths
//! (`/bigtop/store/<digest>-<name>`); JSON output shows store paths in
//! their serde form, the base name (`<digest>-<name>`). Every command
//! takes either form back, or the physical path of a chroot store's path,
//! or a path inside a store path (which names that store path). `.` and
//! `..` are applied first, lexically, as `cd` does: `<store>/A/../B` names
//! `B`.
//!
//! A symlink outside the store whose links lead into it, such as the
//! out-link `bigtop build -o result` makes, names the store path it
//! leads to. The link is read, not followed on the host: a chroot store's
//! out-link points at the logical path (`/bigtop/store/…`), which exists
//! only inside builds, and is mapped through the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bigtop_core::{StoreDir, StorePath};
use bigtop_store::{GcOptions, GcReport, PathInfo, Store, VerifyOptions, VerifyReport};
use clap::{Args, Subcommand};
use serde::Serialize;

use thiserror::Error;

use super::GlobalArgs;

/// Why a `bigtop store` command (or `why-depends`) failed; the other
/// command groups that open a store wrap it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration file.
    #[error(transparent)]
    Config(#[from] Box<super::config::Error>),
    /// A substituter or trusted key (of `store verify --repair`).
    #[error(transparent)]
    Substituter(#[from] Box<super::config::SubstituterError>),
    /// A store could not be opened or created.
    #[error("cannot open the store at `{dir}`")]
    OpenStore {
        /// The store's root (`--store DIR`, or the default chosen).
        dir: PathBuf,
        /// Why.
        #[source]
        source: Box<bigtop_store::Error>,
    },
    /// No `--store` was given and there is no default store.
    #[error("no store to use: `/bigtop` is not writable and neither `$XDG_DATA_HOME` nor `$HOME` is set; pass `--store DIR`")]
    NoDefaultStore,
    /// `--store-dir` is not a valid store dir.
    #[error("invalid store dir `{input}`")]
    StoreDir {
        /// The argument.
        input: String,
        /// Why.
        #[source]
        source: bigtop_core::store_path::ParseError,
    },
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
    /// Reading a file failed.
    #[error("cannot read `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing to standard output failed.
    #[error("cannot write to standard output")]
    Stdout(#[source] io::Error),
    /// A file to add has a name that is not a valid store path name.
    #[error("cannot add `{path}`: its file name is not a valid store path name")]
    AddName {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: bigtop_core::store_path::ParseError,
    },
    /// A file to add has no file name (`/`).
    #[error("cannot add `{path}`: it has no file name to name its store path after")]
    NoName {
        /// The file.
        path: PathBuf,
    },
    /// A directory to add holds the store itself.
    #[error("cannot add `{path}`: it holds the store `{store}`")]
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
    #[error("store `{store}` is broken: {missing} missing, {corrupt} corrupt, {unregistered} unregistered entries; `bigtop store verify --repair` repairs it")]
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
    #[error("refusing to write an export stream to a terminal: redirect standard output to a file or pipe")]
    ExportToTerminal,
}

impl From<bigtop_store::Error> for Error {
    fn from(e: bigtop_store::Error) -> Self {
        Error::Store(Box::new(e))
    }
}

impl Error {
    /// Whether the reader of standard output went away (`… | head`),
    /// which is not a failure of the command.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Stdout(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Which store a command works on: global flags, given before or after
/// the command.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// Use the chroot store rooted at DIR (paths in DIR/bigtop/store, state
    /// in DIR/bigtop/var). Default: the system store `/bigtop/store` if
    /// `/bigtop` exists and is writable, else a chroot store rooted at
    /// `$XDG_DATA_HOME/bigtop` (or `~/.local/share/bigtop`).
    #[arg(long, value_name = "DIR", global = true)]
    pub store: Option<PathBuf>,
    /// The logical store dir, part of every path's identity (default
    /// `/bigtop/store`). Without `--store`, the store's paths are kept in
    /// it (state beside it, in `var`), so that unsandboxed builders can
    /// write there; with `--store DIR`, in DIR under its path.
    #[arg(long, value_name = "PATH", global = true)]
    pub store_dir: Option<String>,
}

impl StoreArgs {
    /// Opens the store these arguments name, creating it if needed.
    pub fn open(&self) -> Result<Store, Error> {
        let Some(logical) = &self.store_dir else {
            return match &self.store {
                Some(dir) => open_chroot(dir),
                None => open_default(),
            };
        };
        let dir = StoreDir::new(logical).map_err(|source| Error::StoreDir {
            input: logical.clone(),
            source,
        })?;
        let (builder, at) = match &self.store {
            Some(base) => (Store::builder().store_dir(dir).chroot(base), base.clone()),
            None => (Store::builder().store_dir(dir), PathBuf::from(logical)),
        };
        builder.open().map_err(|source| Error::OpenStore {
            dir: at,
            source: Box::new(source),
        })
    }
}

fn open_chroot(dir: &Path) -> Result<Store, Error> {
    Store::open_chroot(dir).map_err(|source| Error::OpenStore {
        dir: dir.to_owned(),
        source: Box::new(source),
    })
}

fn open_default() -> Result<Store, Error> {
    let system = Path::new("/bigtop");
    if system.is_dir() && rustix::fs::access(system, rustix::fs::Access::WRITE_OK).is_ok() {
        return Store::builder().open().map_err(|source| Error::OpenStore {
            dir: system.to_owned(),
            source: Box::new(source),
        });
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        // The XDG spec says to ignore a relative value.
        .filter(|d| d.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })
        .ok_or(Error::NoDefaultStore)?;
    open_chroot(&data.join("bigtop"))
}

/// `bigtop store …`
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum StoreCommand {
    /// Add files or directories as sources, each named after its file name;
    /// print their store paths.
    Add(AddArgs),
    /// Show what the store records about paths.
    PathInfo(PathInfoArgs),
    /// Print the closure of paths (them and all they refer to), sorted.
    Requisites(PathsArgs),
    /// Print the paths that refer to any of the given paths, sorted.
    Referrers(PathsArgs),
    /// Delete every path that no root keeps alive; print what was deleted.
    Gc(GcArgs),
    /// Delete exactly the given paths, refusing (and deleting nothing) if
    /// any is still alive.
    Delete(PathsArgs),
    /// Check the store against its database; exit 1 if anything is broken
    /// and `--repair` was not given. What interrupted operations left
    /// behind is garbage, not breakage: it is removed and reported.
    Verify(VerifyArgs),
    /// Write the closure of paths to standard output as one binary stream.
    Export(ExportArgs),
    /// Add every path of an export stream read from standard input, or none.
    Import(ImportArgs),
    /// List the garbage collector roots: each link and the path it keeps.
    Roots(RootsArgs),
    /// Serve this store on standard input and output to a `bigtop copy
    /// --to/--from ssh://…` on another machine, which runs this over
    /// `ssh`. The other side is trusted as far as its login is: what it
    /// sends is checked as any import is, not for signatures.
    Serve(ServeArgs),
}

/// Arguments of `bigtop store add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The files or directories to add.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Arguments of the commands that take store paths.
#[derive(Debug, Args)]
pub struct PathsArgs {
    /// Store paths: full, physical, or base names (`..` is applied
    /// lexically: `<store>/A/../B` is B), or symlinks into the store such
    /// as out-links (read and mapped through the store, so a chroot
    /// store's links to logical paths work).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
}

/// Arguments of `bigtop store path-info`.
#[derive(Debug, Args)]
pub struct PathInfoArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub paths: PathsArgs,
    /// Also print the total NAR size of each path's closure.
    #[arg(long)]
    pub closure_size: bool,
}

/// Arguments of `bigtop store gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Stop once this many bytes are freed: an integer, optionally followed
    /// by K, M, G or T (powers of 1024).
    #[arg(long, value_name = "BYTES")]
    pub max_freed: Option<ByteSize>,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also mark what the roots reach and sweep the rest, taking paths
    /// that refer to each other in a cycle (walks the whole live store).
    #[arg(long)]
    pub full: bool,
}

/// Arguments of `bigtop store verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Re-hash every path and compare with its record (reads the whole store).
    #[arg(long)]
    pub check_contents: bool,
    /// Fetch broken paths again from the substituters (checked against
    /// the hashes this store recorded, or, for a build a trusted key
    /// signed with the same references but other bytes, against its own,
    /// then recorded); unregister and delete the ones none has, with
    /// every path that refers to them; delete unregistered entries.
    #[arg(long)]
    pub repair: bool,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub substituters: super::config::SubstituterArgs,
}

/// Arguments of `bigtop store export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Store paths whose closure to export.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
}

/// Arguments of `bigtop store import`.
#[derive(Debug, Args)]
pub struct ImportArgs {}

/// Arguments of `bigtop store serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {}

/// Arguments of `bigtop store roots`.
#[derive(Debug, Args)]
pub struct RootsArgs {}

/// Arguments of `bigtop why-depends`.
#[derive(Debug, Args)]
pub struct WhyDependsArgs {
    /// The path that depends.
    pub from: String,
    /// The path it may depend on.
    pub to: String,
}

/// A byte count on the command line: an integer, optionally followed by
/// `K`, `M`, `G` or `T` (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Why a byte count did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid byte count `{text}`: {reason}")]
pub struct ByteSizeError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(text: &str) -> Result<Self, ByteSizeError> {
        let bad = |reason| ByteSizeError {
            text: text.to_owned(),
            reason,
        };
        let (digits, shift) = match text.as_bytes().last() {
            Some(b'K') => (&text[..text.len() - 1], 10),
            Some(b'M') => (&text[..text.len() - 1], 20),
            Some(b'G') => (&text[..text.len() - 1], 30),
            Some(b'T') => (&text[..text.len() - 1], 40),
            _ => (text, 0),
        };
        // `u64::from_str` takes a leading `+`; a byte count does not.
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(
                "expected an integer, optionally followed by K, M, G or T (powers of 1024)",
            ));
        }
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .map(ByteSize)
            .ok_or_else(|| bad("more than 2^64 - 1 bytes"))
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn format_utc(secs: u64) -> String {
    const DAYS_PER_400_YEARS: u64 = 146_097;
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let (mut days, time) = (secs / 86_400, secs % 86_400);
    // The calendar repeats every 400 years, so at most 400 steps remain.
    let mut year = 1970 + days / DAYS_PER_400_YEARS * 400;
    days %= DAYS_PER_400_YEARS;
    loop {
        let len = if leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let february = if leap(year) { 29 } else { 28 };
    let mut month = 1;
    for len in [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    format!(
        "{year:04}-{month:02}-{:02} {:02}:{:02}:{:02} UTC",
        days + 1,
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// Standard output, buffered; every failure is [`Error::Stdout`].
pub(crate) struct Out(BufWriter<io::StdoutLock<'static>>);

impl Out {
    pub(crate) fn new() -> Self {
        Out(BufWriter::new(io::stdout().lock()))
    }

    pub(crate) fn line(&mut self, text: impl fmt::Display) -> Result<(), Error> {
        writeln!(self.0, "{text}").map_err(Error::Stdout)
    }

    pub(crate) fn json(&mut self, value: &impl Serialize) -> Result<(), Error> {
        serde_json::to_writer(&mut self.0, value)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(self.0))
            .map_err(Error::Stdout)
    }

    /// JSON indented for people to read.
    pub(crate) fn pretty_json(&mut self, value: &impl Serialize) -> Result<(), Error> {
        serde_json::to_writer_pretty(&mut self.0, value)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(self.0))
            .map_err(Error::Stdout)
    }

    /// Bytes as they are.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.0.write_all(bytes).map_err(Error::Stdout)
    }

    pub(crate) fn finish(mut self) -> Result<(), Error> {
        self.0.flush().map_err(Error::Stdout)
    }
}

fn parse_paths(store: &Store, inputs: &[String]) -> Result<Vec<StorePath>, Error> {
    inputs
        .iter()
        .map(|input| parse_path(store, input))
        .collect()
}

/// A store path given on the command line: every command's path
/// arguments are read here.
pub(crate) fn parse_path(store: &Store, input: &str) -> Result<StorePath, Error> {
    store
        .resolve_user_path(input)
        .map_err(|source| Error::UserPath {
            input: input.to_owned(),
            source: Box::new(source),
        })
}

/// Prints paths, full in text, as base names in JSON.
fn print_paths<'a>(
    store: &Store,
    paths: impl IntoIterator<Item = &'a StorePath>,
    json: bool,
) -> Result<(), Error> {
    let mut out = Out::new();
    if json {
        out.json(&paths.into_iter().collect::<Vec<_>>())?;
    } else {
        for p in paths {
            out.line(store.store_dir().display(p))?;
        }
    }
    out.finish()
}

/// Runs one `bigtop store` command.
pub fn run(command: StoreCommand, global: &GlobalArgs) -> Result<(), Error> {
    match command {
        StoreCommand::Add(args) => add(&args, global),
        StoreCommand::PathInfo(args) => path_info(&args, global),
        StoreCommand::Requisites(args) => {
            let store = global.store.open()?;
            let paths = parse_paths(&store, &args.paths)?;
            print_paths(&store, &store.closure(&paths)?, global.json)
        }
        StoreCommand::Referrers(args) => {
            let store = global.store.open()?;
            let mut referrers = BTreeSet::new();
            for p in parse_paths(&store, &args.paths)? {
                referrers.extend(store.referrers(&p)?);
            }
            print_paths(&store, &referrers, global.json)
        }
        StoreCommand::Gc(args) => {
            let store = global.store.open()?;
            let report = store.collect_garbage(&GcOptions {
                max_freed: args.max_freed.map(|b| b.0),
                dry_run: args.dry_run,
                full: args.full,
            })?;
            print_gc_report(&store, &report, args.dry_run, global.json)
        }
        StoreCommand::Delete(args) => {
            let store = global.store.open()?;
            let paths = parse_paths(&store, &args.paths)?;
            let report = store.delete_paths(&paths)?;
            print_gc_report(&store, &report, false, global.json)
        }
        StoreCommand::Verify(args) => verify(&args, global),
        StoreCommand::Export(args) => {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                return Err(Error::ExportToTerminal);
            }
            let store = global.store.open()?;
            let paths = parse_paths(&store, &args.paths)?;
            store.export(&paths, &mut BufWriter::new(stdout.lock()))?;
            Ok(())
        }
        StoreCommand::Import(ImportArgs {}) => {
            let store = global.store.open()?;
            let imported = store.import(&mut io::stdin().lock())?;
            print_paths(&store, &imported, global.json)
        }
        StoreCommand::Serve(ServeArgs {}) => {
            let store = global.store.open()?;
            // Large buffers: an export or import streams through them.
            let mut input = io::BufReader::with_capacity(256 * 1024, io::stdin().lock());
            let mut output = BufWriter::with_capacity(256 * 1024, io::stdout().lock());
            bigtop_store::remote::serve(&store, &mut input, &mut output)?;
            Ok(())
        }
        StoreCommand::Roots(RootsArgs {}) => {
            let store = global.store.open()?;
            let roots = store.roots()?;
            let mut out = Out::new();
            if global.json {
                let map: BTreeMap<String, &StorePath> = roots
                    .iter()
                    .map(|(link, p)| (link.to_string_lossy().into_owned(), p))
                    .collect();
                out.json(&map)?;
            } else {
                for (link, p) in &roots {
                    out.line(format_args!(
                        "{} -> {}",
                        link.display(),
                        store.store_dir().display(p)
                    ))?;
                }
            }
            out.finish()
        }
    }
}

/// The store path name for `src`: its file name (of the directory itself
/// for `.` and `..`).
fn store_name(src: &Path) -> Result<String, Error> {
    let name = match src.file_name() {
        Some(n) => n.to_owned(),
        None => fs::canonicalize(src)
            .map_err(|source| Error::Read {
                path: src.to_owned(),
                source,
            })?
            .file_name()
            .ok_or_else(|| Error::NoName {
                path: src.to_owned(),
            })?
            .to_owned(),
    };
    // A name that is not UTF-8 keeps its replacement characters, which
    // the name rules then reject.
    let name = name.to_string_lossy().into_owned();
    bigtop_core::store_path::validate_name(&name).map_err(|source| Error::AddName {
        path: src.to_owned(),
        source,
    })?;
    Ok(name)
}

fn add(args: &AddArgs, global: &GlobalArgs) -> Result<(), Error> {
    let named = args
        .paths
        .iter()
        .map(|src| Ok((store_name(src)?, src)))
        .collect::<Result<Vec<_>, Error>>()?;
    let store = global.store.open()?;
    // A tree holding the store would be copied into itself without end.
    let root = fs::canonicalize(store.root()).map_err(|source| Error::Read {
        path: store.root().to_owned(),
        source,
    })?;
    // One batch: all of them are added, or none.
    let mut batch = store.batch();
    for (name, src) in &named {
        if fs::canonicalize(src).is_ok_and(|s| root.starts_with(s)) {
            return Err(Error::AddHoldsStore {
                path: src.to_path_buf(),
                store: store.root().to_owned(),
            });
        }
        batch.add_path(name, src, &|_| true)?;
    }
    let paths = batch.commit()?;
    print_paths(&store, &paths, global.json)
}

/// A path's record, with its closure size when asked.
#[derive(Serialize)]
struct PathInfoJson<'a> {
    #[serde(flatten)]
    info: &'a PathInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    closure_size: Option<u64>,
}

fn path_info(args: &PathInfoArgs, global: &GlobalArgs) -> Result<(), Error> {
    let store = global.store.open()?;
    let mut records = Vec::new();
    for p in parse_paths(&store, &args.paths.paths)? {
        let info = store
            .path_info(&p)?
            .ok_or_else(|| bigtop_store::Error::NotValid { path: p.clone() })?;
        let closure_size = if args.closure_size {
            Some(store.closure_size(std::slice::from_ref(&p))?)
        } else {
            None
        };
        records.push((info, closure_size));
    }
    let mut out = Out::new();
    if global.json {
        let json: Vec<PathInfoJson<'_>> = records
            .iter()
            .map(|(info, closure_size)| PathInfoJson {
                info,
                closure_size: *closure_size,
            })
            .collect();
        out.json(&json)?;
        return out.finish();
    }
    let dir = store.store_dir();
    let none = || "none".to_owned();
    for (i, (info, closure_size)) in records.iter().enumerate() {
        if i > 0 {
            out.line("")?;
        }
        out.line(dir.display(&info.path))?;
        out.line(format_args!("  NAR hash:      {}", info.nar_hash))?;
        out.line(format_args!("  NAR size:      {}", info.nar_size))?;
        if let Some(size) = closure_size {
            out.line(format_args!("  closure size:  {size}"))?;
        }
        if info.references.is_empty() {
            out.line("  references:    none")?;
        }
        for (j, r) in info.references.iter().enumerate() {
            let label = if j == 0 { "references:" } else { "" };
            out.line(format_args!("  {label:<14} {}", dir.display(r)))?;
        }
        let deriver = info.deriver.as_ref().map(|d| dir.full(d));
        out.line(format_args!(
            "  deriver:       {}",
            deriver.unwrap_or_else(none)
        ))?;
        out.line(format_args!(
            "  registered:    {}",
            format_utc(info.registration_time)
        ))?;
        if info.signatures.is_empty() {
            out.line("  signatures:    none")?;
        }
        for (j, s) in info.signatures.iter().enumerate() {
            let label = if j == 0 { "signatures:" } else { "" };
            out.line(format_args!("  {label:<14} {s}"))?;
        }
        let ca = info.ca.map(|c| c.to_string());
        out.line(format_args!("  CA:            {}", ca.unwrap_or_else(none)))?;
    }
    out.finish()
}

fn print_gc_report(
    store: &Store,
    report: &GcReport,
    dry_run: bool,
    json: bool,
) -> Result<(), Error> {
    let mut out = Out::new();
    if json {
        out.json(report)?;
        return out.finish();
    }
    for p in &report.deleted {
        out.line(store.store_dir().display(p))?;
    }
    let (n, bytes) = (report.deleted.len(), report.freed_bytes);
    let s = if n == 1 { "" } else { "s" };
    if dry_run {
        out.line(format_args!(
            "{n} path{s} would be deleted, freeing {bytes} bytes of NAR"
        ))?;
    } else {
        out.line(format_args!("{n} path{s} deleted, {bytes} bytes freed"))?;
    }
    out.finish()
}

fn verify(args: &VerifyArgs, global: &GlobalArgs) -> Result<(), Error> {
    let store = global.store.open()?;
    let substituters = if args.repair {
        let config = super::config::Config::load().map_err(Box::new)?;
        args.substituters.open(&store, &config).map_err(Box::new)?
    } else {
        Vec::new()
    };
    let substituters: Vec<&dyn bigtop_store::build::Substituter> = substituters
        .iter()
        .map(|s| s as &dyn bigtop_store::build::Substituter)
        .collect();
    let report: VerifyReport = store.verify_with(
        VerifyOptions {
            check_contents: args.check_contents,
            repair: args.repair,
        },
        &substituters,
    )?;
    let mut out = Out::new();
    if global.json {
        out.json(&report)?;
    } else {
        let dir = store.store_dir();
        for p in &report.missing {
            out.line(format_args!("missing: {}", dir.display(p)))?;
        }
        for p in &report.corrupt {
            out.line(format_args!("corrupt: {}", dir.display(p)))?;
        }
        for name in &report.unregistered {
            out.line(format_args!(
                "unregistered: {}",
                store.root().join(name).display()
            ))?;
        }
        for p in &report.refetched {
            out.line(format_args!("repaired, fetched again: {}", dir.display(p)))?;
        }
        for p in &report.unregistered_paths {
            out.line(format_args!("repaired, unregistered: {}", dir.display(p)))?;
        }
        for p in &report.garbage {
            out.line(format_args!("garbage, removed: {}", p.display()))?;
        }
        // Garbage is not damage: it gets its own clause, outside the count
        // of what is broken.
        let garbage = match report.garbage.len() {
            0 => String::new(),
            n => format!(
                "; {n} leftover{} of interrupted operations removed, {} bytes freed",
                if n == 1 { "" } else { "s" },
                report.garbage_bytes
            ),
        };
        out.line(format_args!(
            "{} paths checked: {} missing, {} corrupt, {} unregistered entries{}{garbage}",
            report.checked,
            report.missing.len(),
            report.corrupt.len(),
            report.unregistered.len(),
            if args.repair && !report.is_clean() {
                " (repaired)"
            } else {
                ""
            }
        ))?;
    }
    out.finish()?;
    if report.is_clean() || args.repair {
        Ok(())
    } else {
        Err(Error::Broken {
            store: store.root().to_owned(),
            missing: report.missing.len(),
            corrupt: report.corrupt.len(),
            unregistered: report.unregistered.len(),
        })
    }
}

/// Runs `bigtop why-depends`.
pub fn why_depends(args: &WhyDependsArgs, global: &GlobalArgs) -> Result<(), Error> {
    let store = global.store.open()?;
    let from = parse_path(&store, &args.from)?;
    let to = parse_path(&store, &args.to)?;
    let dir = store.store_dir();
    let chain = store
        .why_depends(&from, &to)?
        .ok_or_else(|| Error::NotDependent {
            from: dir.full(&from),
            to: dir.full(&to),
        })?;
    let mut out = Out::new();
    if global.json {
        out.json(&chain)?;
    } else {
        for (i, p) in chain.iter().enumerate() {
            let arrow = if i == 0 { "" } else { "-> " };
            out.line(format_args!("{arrow}{}", dir.display(p)))?;
        }
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_take_integers_and_binary_suffixes() {
        let ok = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(ok("0"), Ok(0));
        assert_eq!(ok("1234"), Ok(1234));
        assert_eq!(ok("1K"), Ok(1024));
        assert_eq!(ok("2M"), Ok(2 << 20));
        assert_eq!(ok("3G"), Ok(3 << 30));
        assert_eq!(ok("4T"), Ok(4 << 40));
        assert_eq!(ok("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn byte_sizes_reject_anything_else_naming_it() {
        for text in [
            "", "1x", "K", "+1", "-1", "1.5G", "1k", "1KB", " 1", "1 K", "2T0",
        ] {
            let err = text.parse::<ByteSize>().unwrap_err();
            assert_eq!(err.text, text);
            assert!(err.to_string().contains(&format!("`{text}`")), "{err}");
        }
        for text in ["16777216T", "18446744073709551616"] {
            let err = text.parse::<ByteSize>().unwrap_err();
            assert_eq!(err.reason, "more than 2^64 - 1 bytes", "{text}");
        }
    }

    #[test]
    fn registration_times_print_as_utc_dates() {
        // Expected values from `date -u -d @SECS`.
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_704_067_199), "2023-12-31 23:59:59 UTC");
        assert_eq!(format_utc(4_102_444_800), "2100-01-01 00:00:00 UTC");
        assert_eq!(format_utc(253_402_300_799), "9999-12-31 23:59:59 UTC");
        // A corrupt record prints something, quickly.
        assert!(format_utc(u64::MAX).ends_with(" UTC"));
    }
}
