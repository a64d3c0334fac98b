//! `bigtop key …`: signing keys in Nix's key-file format.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bigtop_core::signing::SecretKey;
use clap::Subcommand;
use thiserror::Error;

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
    },
}

/// Why a `bigtop key` command failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A key name was rejected.
    #[error("invalid key name `{name}`")]
    KeyName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: bigtop_core::signing::ParseError,
    },
    /// A key name cannot name the key's files.
    #[error("invalid key name `{name}`: it names the key files (`NAME.secret`, `NAME.public`), so it must be a file name, not empty, `.` or `..`, and without `/`")]
    KeyFileName {
        /// The name.
        name: String,
    },
    /// Writing a key file failed.
    #[error("cannot write `{path}`")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A secret key file could not be read.
    #[error("cannot read secret key file `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A secret key file does not hold a key in Nix's format.
    #[error("secret key file `{path}` holds no secret key")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: bigtop_core::signing::ParseError,
    },
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

/// Runs a `bigtop key` command; `json` is the global `--json`.
pub fn run(command: KeyCommand, json: bool) -> Result<(), Error> {
    match command {
        KeyCommand::Generate {
            name,
            secret_file,
            public_file,
        } => generate(
            &name,
            &secret_file.replace("{name}", &name),
            &public_file.replace("{name}", &name),
            json,
        ),
    }
}

/// The secret key in the file at `path` (Nix's `NAME:base64`, as
/// `bigtop key generate` and `nix-store --generate-binary-cache-key`
/// write it).
pub fn read_secret_key(path: &Path) -> Result<SecretKey, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    text.trim().parse().map_err(|source| Error::Parse {
        path: path.to_owned(),
        source,
    })
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

fn generate(name: &str, secret_file: &str, public_file: &str, json: bool) -> Result<(), Error> {
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
