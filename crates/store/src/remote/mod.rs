//! Copying closures between this store and another machine's, over SSH.
//!
//! The local side runs the system's `ssh` client, which runs `bigtop store
//! serve` on the other machine ([`SshStore`]); the two speak a small
//! protocol over the remote program's standard input and output, and the
//! remote's standard error is kept for error messages. [`copy_to`] sends
//! the closures of some paths, [`copy_from`] fetches them; [`serve`] is
//! the other end. Only what the receiving side lacks moves, in one export
//! stream ([`crate::export`]) that both sides stream through a few
//! buffers: memory stays bounded whatever the size of the paths.
//!
//! ```
//! use bigtop_store::remote::{SshOptions, SshStore};
//! let mut options = SshOptions::default();
//! options.ssh_args = vec!["-i".into(), "/etc/bigtop/deploy-key".into()];
//! options.remote_store = Some("/srv/bigtop".into());
//! let remote = SshStore::new("ssh://deploy@web1.example.org:2222", options)?;
//! let command = remote.command();
//! let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
//! assert_eq!(
//!     args,
//!     ["-i", "/etc/bigtop/deploy-key", "-p", "2222", "--", "deploy@web1.example.org",
//!      "bigtop store serve --store /srv/bigtop"]
//! );
//! # Ok::<(), bigtop_store::remote::RemoteError>(())
//! ```
//!
//! # The protocol
//!
//! Every message is a sequence of the export stream's strings (a 64-bit
//! little-endian length, the bytes, zero padding to 8); numbers are
//! decimal strings and paths base names (`<digest>-<name>`). Each side
//! first says who it is, without waiting for the other:
//!
//! ```text
//! serve:  "bigtop-serve" <version> <store dir>
//! client: "bigtop-serve" <version>
//! ```
//!
//! A different version on either side ends the session with an error that
//! names both; so does a different store dir, since a path's store dir is
//! part of its identity. Then the client asks, one operation at a time:
//!
//! ```text
//! "valid" <n> <path>…        → "ok" <n> <path>…   which of them are valid
//! "closure" <n> <path>…      → "ok" <n> { <path> <NAR hash> <NAR size> <n> <reference>… }…
//! "import" <export stream>   → "ok" <n> <path>…   all of it registered, or none
//! "export" <n> <path>…       → "ok" <export stream of exactly those paths>
//! "quit"
//! ```
//!
//! Any of them may be answered `"error" <message>` instead of `"ok"`,
//! after which the server ends the session. The paths a query names
//! become temporary roots of the serving process, so that what it said
//! was valid stays valid until the import or export that follows.
//!
//! # Trust
//!
//! Over SSH the other side is as trusted as the login that reaches it, as
//! with Nix's `ssh://` stores and a trusted user: no signature is
//! required of what it sends, and what it records (signatures, deriver,
//! content address) is kept. What it sends is still checked as every
//! import is: each NAR against its hash and size as it streams, each
//! content address against the path and its contents, and each path's
//! contents scanned for references it does not declare. A stream that
//! breaks off, because the other side was killed or the connection lost,
//! registers nothing: the import's batch is never committed, and a
//! killed importer's staged trees are the store's leftovers, removed by
//! the next `verify` or collection.
//!
//! A remote that ends mid-stream makes this side's writes to ssh fail
//! with `EPIPE`, which becomes the error: Rust programs ignore `SIGPIPE`,
//! and an embedder that restored its default action is killed by it
//! instead.

mod serve;
mod ssh;

use std::fmt;

use thiserror::Error;

pub use serve::serve;
pub use ssh::{copy_from, copy_from_observed, copy_to, copy_to_observed, SshOptions, SshStore};

/// The first string of each side's greeting.
const MAGIC: &str = "bigtop-serve";
/// The protocol version this bigtop speaks; both sides must speak the
/// same one.
pub const PROTOCOL_VERSION: u64 = 1;
/// The most paths one request may name.
const MAX_PATHS: u64 = 1 << 24;

/// Why copying to or from a remote store failed. Every variant names the
/// remote (its `ssh://` URL).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The URL is not `ssh://[user@]host[:port]`.
    #[error("`{url}` is not a remote store URL: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The ssh client could not be started.
    #[error("cannot run `{program}` to reach `{host}`")]
    Spawn {
        /// The ssh program.
        program: String,
        /// The remote.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// ssh could not log in (no route, refused, a host key that does
    /// not match, no accepted key).
    #[error("cannot reach `{host}` over SSH ({status}){}", said(.stderr))]
    Connect {
        /// The remote.
        host: String,
        /// How ssh ended.
        status: Status,
        /// What ssh and the remote printed on standard error.
        stderr: String,
    },
    /// The remote shell could not find the remote program.
    #[error("the remote program `{program}` was not found on `{host}`: install bigtop there or give its path (`--remote-program`){}", said(.stderr))]
    ProgramMissing {
        /// The remote.
        host: String,
        /// The program that was run.
        program: String,
        /// What the remote printed on standard error.
        stderr: String,
    },
    /// The remote program does not speak the protocol (not a bigtop, or
    /// something printed before it on standard output).
    #[error("`{program}` on `{host}` did not answer as `bigtop store serve` ({status}): {reason}{}", said(.stderr))]
    NotBigtop {
        /// The remote.
        host: String,
        /// The program that was run.
        program: String,
        /// What came instead.
        reason: String,
        /// How ssh ended.
        status: Status,
        /// What the remote printed on standard error.
        stderr: String,
    },
    /// The two sides speak different protocol versions.
    #[error("`{host}` speaks version {remote} of the bigtop store protocol, this bigtop version {local}: install the same bigtop on both sides")]
    Version {
        /// The remote.
        host: String,
        /// The remote's version.
        remote: u64,
        /// Ours.
        local: u64,
    },
    /// The remote store's paths are of another store dir.
    #[error("the store on `{host}` has the store dir `{remote}`, this one `{local}`: a path of one is not a path of the other")]
    StoreDir {
        /// The remote.
        host: String,
        /// The remote's store dir.
        remote: String,
        /// Ours.
        local: String,
    },
    /// The session ended before the copy did: the remote was killed, the
    /// connection lost, or the remote failed and said so on standard
    /// error.
    #[error("`{host}` ended the session while {during} ({status}){}", said(.stderr))]
    Ended {
        /// The remote.
        host: String,
        /// What was being done.
        during: &'static str,
        /// How ssh ended.
        status: Status,
        /// What the remote printed on standard error.
        stderr: String,
        /// What failed on this side when it did.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The remote store refused what was asked (an import it rejected, a
    /// path it does not have).
    #[error("the store on `{host}` refused: {message}")]
    Refused {
        /// The remote.
        host: String,
        /// Its error, as it rendered it.
        message: String,
    },
    /// The remote answered something the protocol does not allow.
    #[error("`{host}` broke the bigtop store protocol: {reason}")]
    Protocol {
        /// The remote.
        host: String,
        /// What was wrong.
        reason: String,
    },
    /// The local store failed, or refused what the remote sent.
    #[error("copying with `{host}`: the local store failed")]
    Store {
        /// The remote.
        host: String,
        /// Why.
        #[source]
        source: Box<crate::Error>,
    },
}

/// How the ssh process ended, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// It exited with this code (255 is ssh's own failure; otherwise the
    /// remote command's status).
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
    /// It did not end in time after the channel broke, and was killed.
    Killed,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited(code) => write!(f, "exit status {code}"),
            Status::Signaled(signal) => write!(f, "killed by signal {signal}"),
            Status::Killed => write!(f, "still running, killed"),
        }
    }
}

/// `: it printed: …` with what the remote printed, or nothing.
fn said(stderr: &str) -> String {
    let text = stderr.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("; it printed: {text}")
    }
}
