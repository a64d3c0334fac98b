//! `bigtop cache …`: the store as a binary cache for others.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bigtop_store::cache::Compression;
use clap::{Args, Subcommand};
use thiserror::Error;

use super::store::Error as StoreError;
use super::GlobalArgs;
use crate::serve;

/// `bigtop cache …`
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum CacheCommand {
    /// Serve the store over HTTP as a read-only binary cache that bigtop
    /// (`copy --from`) and Nix (`substituters`) read, until stopped.
    /// Prints the address it listens on first.
    Serve(ServeArgs),
}

/// `bigtop cache serve --listen ADDR`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on, and only there (`127.0.0.1:8080`,
    /// `[::]:80`; port 0 picks a free port, printed at startup).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Sign each narinfo with this secret key file (Nix's `NAME:base64`
    /// format, as `bigtop key generate` writes).
    #[arg(long, value_name = "KEYFILE")]
    pub sign: Option<PathBuf>,
    /// How NARs are compressed as they are sent (`zstd`, `xz`, `none`):
    /// the one compression served, whatever a client asks.
    #[arg(long, default_value = "zstd", value_parser = super::copy::parse_compression)]
    pub compression: Compression,
    /// The cache's priority in `nix-cache-info` (lower is tried first).
    #[arg(long, default_value_t = 30)]
    pub priority: u32,
    /// NARs sent at once at most, each holding a thread and a
    /// compressor's state (up to 3 MiB for zstd, 94 MiB for xz); a
    /// request for another waits its turn. Default: 64.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_nar_streams: Option<u32>,
    /// How long a request for a NAR waits for its turn before it is
    /// answered 503 with `Retry-After`. Default: 30.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub nar_wait: Option<Duration>,
    /// How long a client may take no bytes of an answer before its
    /// connection is closed (freeing its NAR's turn). Default: 60.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub send_timeout: Option<Duration>,
    /// NARs hashed at once at most to answer narinfos (a store that
    /// records BLAKE3 hashes each path's NAR with SHA-256 once, for Nix);
    /// more wait their turn. Default: twice the CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_hash_jobs: Option<u32>,
}

/// A duration given in seconds, fractions allowed (`0.5`, `60`).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0)
        .and_then(|n| Duration::try_from_secs_f64(n).ok())
        .ok_or_else(|| format!("`{s}` is not a positive number of seconds"))
}

/// Why a `bigtop cache` command failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key file could not be read or parsed.
    #[error(transparent)]
    Key(#[from] super::key::Error),
    /// The server could not start.
    #[error(transparent)]
    Serve(#[from] serve::Error),
    /// Writing to standard output failed.
    #[error("cannot write to standard output")]
    Stdout(#[source] io::Error),
    /// The handling of SIGINT, SIGTERM and SIGHUP could not be set up.
    #[error("cannot set up the handling of SIGINT, SIGTERM and SIGHUP")]
    Signals(#[source] io::Error),
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

/// Runs a `bigtop cache` command.
pub fn run(command: CacheCommand, global: &GlobalArgs) -> Result<(), Error> {
    match command {
        CacheCommand::Serve(args) => serve(&args, global),
    }
}

fn serve(args: &ServeArgs, global: &GlobalArgs) -> Result<(), Error> {
    let key = args
        .sign
        .as_deref()
        .map(super::key::read_secret_key)
        .transpose()?;
    // SIGINT, SIGTERM and SIGHUP stop the server cleanly (responses under
    // way finish): blocked here, before any thread starts, so that every
    // thread inherits the mask and only the one that waits for them gets
    // them.
    let signals = super::build::block_stop_signals().map_err(Error::Signals)?;
    let store = global.store.open()?;
    let store_dir = store.store_dir().to_string();
    let defaults = serve::Options::default();
    let options = serve::Options {
        compression: args.compression,
        key,
        priority: args.priority,
        max_nar_streams: args
            .max_nar_streams
            .map_or(defaults.max_nar_streams, |n| n as usize),
        nar_wait: args.nar_wait.unwrap_or(defaults.nar_wait),
        send_timeout: args.send_timeout.unwrap_or(defaults.send_timeout),
        max_hash_jobs: args
            .max_hash_jobs
            .map_or(defaults.max_hash_jobs, |n| n as usize),
        // What the server cannot serve is said and served around, not fatal.
        on_error: Some(Arc::new(|e: &serve::Error| {
            let mut text = format!("warning: {e}");
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!("\n  caused by: {s}"));
                source = s.source();
            }
            eprintln!("{text}");
        })),
        ..defaults
    };
    let server = serve::Server::bind(Arc::new(store), args.listen, options)?;
    let addr = server.local_addr();
    let line = if global.json {
        serde_json::json!({
            "listen": addr.to_string(),
            "url": format!("http://{addr}"),
            "store_dir": store_dir,
        })
        .to_string()
    } else {
        format!("serving {store_dir} at http://{addr}")
    };
    // Printed (and flushed: a line) once listening, so that a script can
    // wait for it and read the port.
    writeln!(io::stdout(), "{line}").map_err(Error::Stdout)?;
    let handle = server.shutdown_handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: waits for a signal of `signals`, writing only `sig`.
            if unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
                eprintln!("signal {sig}: finishing the responses under way");
                handle.shutdown();
            }
        })
        .map_err(Error::Signals)?;
    server.run();
    Ok(())
}
