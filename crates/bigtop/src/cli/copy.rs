//! `bigtop copy`: closures between the local store and binary caches, or
//! another machine's store over SSH.

use std::io;
use std::path::PathBuf;

use bigtop_core::signing::{PublicKey, TrustedKeys};
use bigtop_store::cache::{self, CacheError, Compression, CopyReport, FetchOptions, UploadOptions};
use bigtop_store::remote::{self, RemoteError, SshOptions, SshStore};
use clap::Args;
use thiserror::Error;

use super::store::{parse_path, Error as StoreError};
use super::GlobalArgs;

/// `bigtop copy --to URL PATH…` / `bigtop copy --from URL PATH…`
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Write the closures of PATHS into the cache at URL (`file:///DIR`,
    /// or `http(s)://…` that takes `PUT`), or into the store of another
    /// machine (`ssh://[user@]host[:port]`, which runs `bigtop store
    /// serve` there).
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "from",
        required_unless_present = "from"
    )]
    pub to: Option<String>,
    /// Substitute the closures of PATHS from the cache at URL into the
    /// store, or copy them from another machine's store (`ssh://…`).
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
    /// With `ssh://`: the bigtop to run on the other machine.
    #[arg(long, value_name = "PATH", default_value = "bigtop")]
    pub remote_program: String,
    /// With `ssh://`: the other machine's store, as its `--store DIR`
    /// (default: its default store). This side's `--store-dir`, if given,
    /// is passed on too: both must agree.
    #[arg(long, value_name = "DIR")]
    pub remote_store: Option<String>,
    /// With `ssh://`: an argument for `ssh`, before the host; repeatable
    /// (`--ssh-option=-i --ssh-option=KEY`). Those in `$BIGTOP_SSH_OPTS`
    /// (split at whitespace) come first.
    #[arg(long = "ssh-option", value_name = "ARG", allow_hyphen_values = true)]
    pub ssh_options: Vec<String>,
    /// With `--to`: sign what is uploaded with this secret key file (Nix's
    /// `NAME:base64` format, as `bigtop key generate` writes).
    #[arg(long, value_name = "KEYFILE", conflicts_with = "from")]
    pub sign: Option<PathBuf>,
    /// With `--to`: how NARs are compressed (`zstd`, the default; `xz`,
    /// `none`).
    #[arg(long, value_parser = parse_compression, conflicts_with = "from")]
    pub compression: Option<Compression>,
    /// With `--from`: public keys (`NAME:base64`) whose signatures are
    /// trusted; repeatable, or several separated by whitespace. Replaces
    /// the configuration files' `trusted-public-keys`.
    #[arg(
        long = "trusted-public-keys",
        alias = "trusted-public-key",
        value_name = "KEY",
        conflicts_with = "to"
    )]
    pub trusted_public_keys: Vec<String>,
    /// With `--from`: take paths whatever signs them (Nix's
    /// `require-sigs = false`); their contents are scanned for
    /// undeclared references.
    #[arg(long, conflicts_with = "to")]
    pub no_require_sigs: bool,
    /// Store paths (or paths into them) whose closures are copied.
    #[arg(required = true)]
    pub paths: Vec<String>,
}

/// `--compression`'s value.
pub(super) fn parse_compression(s: &str) -> Result<Compression, String> {
    Compression::parse(s).ok_or_else(|| format!("`{s}` is not one of zstd, xz, none"))
}

/// Why `bigtop copy` failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The store or a path argument.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cache.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A configuration file.
    #[error(transparent)]
    Config(#[from] super::config::Error),
    /// The remote store.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A flag about binary caches' signatures was given for an SSH copy.
    #[error("`{flag}` is for binary caches: over SSH the other side is trusted as far as its login, and nothing is signed or checked for signatures")]
    NotForSsh {
        /// The flag.
        flag: &'static str,
    },
    /// The key file could not be read or parsed.
    #[error(transparent)]
    Key(#[from] super::key::Error),
    /// A trusted public key did not parse.
    #[error("trusted public key `{key}`: {reason}")]
    PublicKey {
        /// The key as given.
        key: String,
        /// Why.
        reason: String,
    },
    /// Writing to standard output failed.
    #[error("cannot write to standard output")]
    Stdout(#[source] io::Error),
}

impl Error {
    /// Whether the reader of standard output went away.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            Error::Store(e) => e.is_broken_pipe(),
            Error::Stdout(e) => e.kind() == io::ErrorKind::BrokenPipe,
            _ => false,
        }
    }
}

fn open_cache(url: &str) -> Result<Box<dyn cache::BinaryCache>, Error> {
    Ok(cache::open(url)?)
}

/// The remote store at an `ssh://` URL, reached as the arguments and
/// `$BIGTOP_SSH_OPTS` say.
fn ssh_store(url: &str, args: &CopyArgs, global: &GlobalArgs) -> Result<SshStore, Error> {
    let refused = [
        ("--sign", args.sign.is_some()),
        ("--compression", args.compression.is_some()),
        (
            "--trusted-public-keys",
            !args.trusted_public_keys.is_empty(),
        ),
        ("--no-require-sigs", args.no_require_sigs),
    ];
    if let Some((flag, _)) = refused.iter().find(|(_, given)| *given) {
        return Err(Error::NotForSsh { flag });
    }
    let mut options = SshOptions::default();
    // As Nix's `NIX_SSHOPTS`: whitespace-separated, no quoting.
    if let Some(env) = std::env::var_os("BIGTOP_SSH_OPTS") {
        options
            .ssh_args
            .extend(env.to_string_lossy().split_whitespace().map(str::to_owned));
    }
    options.ssh_args.extend(args.ssh_options.iter().cloned());
    options.remote_program = args.remote_program.clone();
    options.remote_store = args.remote_store.clone();
    options.remote_store_dir = global.store.store_dir.clone();
    Ok(SshStore::new(url, options)?)
}

/// Runs `bigtop copy`.
pub fn copy(args: &CopyArgs, global: &GlobalArgs) -> Result<(), Error> {
    let ssh_url = |url: &Option<String>| url.as_ref().filter(|u| u.starts_with("ssh://")).cloned();
    // The remote is checked before the store is opened: a bad URL is a
    // mistake in the command, whatever the store.
    let remote = match ssh_url(&args.to).or_else(|| ssh_url(&args.from)) {
        Some(url) => Some(ssh_store(&url, args, global)?),
        None => None,
    };
    let store = global.store.open()?;
    let paths = args
        .paths
        .iter()
        .map(|p| parse_path(&store, p))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(remote) = remote {
        let bar = super::progress::CopyBar::stderr();
        let (direction, report) = if args.to.is_some() {
            (
                "to",
                remote::copy_to_observed(&store, &remote, &paths, &bar),
            )
        } else {
            (
                "from",
                remote::copy_from_observed(&store, &remote, &paths, &bar),
            )
        };
        bar.finish();
        let report = report?;
        return print_report(
            direction,
            ("remote", remote.describe()),
            STREAM,
            &report,
            global.json,
        );
    }
    let (direction, url, report) = match (&args.to, &args.from) {
        (Some(url), _) => {
            let key = args
                .sign
                .as_deref()
                .map(super::key::read_secret_key)
                .transpose()?;
            let options = UploadOptions {
                compression: args.compression.unwrap_or_default(),
                key,
            };
            let bar = super::progress::CopyBar::stderr();
            let cache = open_cache(url)?;
            let report = cache::upload_observed(&store, &cache, &paths, &options, &bar);
            bar.finish();
            let report = report?;
            // As the cache names itself: without a password in its URL.
            ("to", cache.describe(), report)
        }
        (None, Some(url)) => {
            let config = super::config::Config::load()?;
            let keys = super::config::words(&args.trusted_public_keys)
                .unwrap_or(config.trusted_public_keys);
            let mut trusted = TrustedKeys::new();
            for k in &keys {
                let key = k.parse::<PublicKey>().map_err(|e| Error::PublicKey {
                    key: k.clone(),
                    reason: e.to_string(),
                })?;
                trusted.insert(key);
            }
            let options = FetchOptions {
                trusted,
                require_sigs: !args.no_require_sigs && config.require_sigs,
            };
            let bar = super::progress::CopyBar::stderr();
            let cache = open_cache(url)?;
            let report = cache::fetch_observed(&store, &cache, &paths, &options, &bar);
            bar.finish();
            let report = report?;
            ("from", cache.describe(), report)
        }
        (None, None) => unreachable!("clap requires --to or --from"),
    };
    print_report(
        direction,
        ("cache", &url),
        CACHE_FILES,
        &report,
        global.json,
    )
}

/// How a copy's second count of bytes is named: its JSON key, and the
/// words after the number in the text.
type BytesNamed = (&'static str, &'static str);

/// A cache's: the bytes of its (compressed) NAR files.
const CACHE_FILES: BytesNamed = ("file_bytes", "in the cache's files");

/// An SSH copy's: the bytes of the stream.
const STREAM: BytesNamed = ("stream_bytes", "bytes streamed");

/// Prints what a copy did, to or from `place` (the JSON key naming it,
/// and its URL); `report.file_bytes` is named as `bytes` says.
fn print_report(
    direction: &str,
    place: (&str, &str),
    bytes: BytesNamed,
    report: &CopyReport,
    json: bool,
) -> Result<(), Error> {
    let (key, url) = place;
    let out = if json {
        let mut value = serde_json::json!({
            "direction": direction,
            key: url,
            "copied": report.copied.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "present": report.present,
            "nar_bytes": report.nar_bytes,
        });
        value[bytes.0] = report.file_bytes.into();
        value.to_string() + "\n"
    } else {
        format!(
            "copied {} paths {direction} {url} ({} NAR bytes, {} {}); {} already there\n",
            report.copied.len(),
            report.nar_bytes,
            report.file_bytes,
            bytes.1,
            report.present
        )
    };
    use std::io::Write as _;
    io::stdout()
        .write_all(out.as_bytes())
        .map_err(Error::Stdout)
}
