//! Settings read from configuration files, below the command line.
//!
//! Two files, both optional, both TOML with the same keys:
//!
//! 1. the machine's, `/etc/bigtop/bigtop.toml` (the folder is
//!    `$BIGTOP_CONF_DIR` when that is set);
//! 2. the user's, `$XDG_CONFIG_HOME/bigtop/bigtop.toml` (or
//!    `~/.config/bigtop/bigtop.toml`).
//!
//! A key set in a later file replaces the earlier file's value, and a flag
//! on the command line replaces both; the `extra-` keys add to a list
//! instead of replacing it. Every setting is also a flag:
//!
//! | key | flag | meaning |
//! |---|---|---|
//! | `substituters` | `--substituters` | binary caches to fetch from, in order of their priority (`Priority:` of their `nix-cache-info`, or `?priority=N` on the URL) |
//! | `extra-substituters` | | more, added to `substituters` |
//! | `trusted-public-keys` | `--trusted-public-keys` | keys (`NAME:base64`) whose signatures are trusted |
//! | `extra-trusted-public-keys` | | more, added |
//! | `require-sigs` | `--no-require-sigs` | whether a path must be signed by a trusted key (default `true`) |
//! | `narinfo-cache-negative-ttl` | `--narinfo-cache-negative-ttl` | seconds a cache's miss is remembered (default 3600; 0: never) |
//! | `max-jobs` | `--max-jobs` | builds at once |
//! | `cores` | `--cores` | CPUs all builds share |
//!
//! ```toml
//! substituters = ["https://cache.example.org", "file:///srv/cache?priority=10"]
//! trusted-public-keys = ["cache.example.org-1:8Hn…="]
//! narinfo-cache-negative-ttl = 600
//! ```
//!
//! A key bigtop does not know, or a value of the wrong type, is an error
//! naming the file: a typo must not pass silently.

use std::path::PathBuf;

use serde::Deserialize;
use thiserror::Error;

/// One file's settings: what it sets, nothing else.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Layer {
    /// `substituters`.
    pub substituters: Option<Vec<String>>,
    /// `extra-substituters`.
    pub extra_substituters: Option<Vec<String>>,
    /// `trusted-public-keys`.
    pub trusted_public_keys: Option<Vec<String>>,
    /// `extra-trusted-public-keys`.
    pub extra_trusted_public_keys: Option<Vec<String>>,
    /// `require-sigs`.
    pub require_sigs: Option<bool>,
    /// `narinfo-cache-negative-ttl`, in seconds.
    pub narinfo_cache_negative_ttl: Option<u64>,
    /// `max-jobs`.
    pub max_jobs: Option<u32>,
    /// `cores`.
    pub cores: Option<u32>,
}

/// The settings in effect: the files' layers merged, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Binary caches to fetch from.
    pub substituters: Vec<String>,
    /// Keys whose signatures are trusted.
    pub trusted_public_keys: Vec<String>,
    /// Whether paths must be signed by a trusted key.
    pub require_sigs: bool,
    /// Seconds a miss is remembered.
    pub narinfo_cache_negative_ttl: u64,
    /// Builds at once, if set.
    pub max_jobs: Option<u32>,
    /// CPUs all builds share, if set.
    pub cores: Option<u32>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            substituters: Vec::new(),
            trusted_public_keys: Vec::new(),
            require_sigs: true,
            narinfo_cache_negative_ttl: 3600,
            max_jobs: None,
            cores: None,
            files: Vec::new(),
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// It exists but cannot be read.
    #[error("configuration file `{file}`: cannot read it")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not TOML with the known keys and types.
    #[error("configuration file `{file}`: {reason}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
}

impl Config {
    /// The machine's file, then the user's, each if it exists.
    pub fn load() -> Result<Config, Error> {
        Config::load_files(&default_files())
    }

    /// `files` in order (later ones win), each if it exists.
    pub fn load_files(files: &[PathBuf]) -> Result<Config, Error> {
        let mut config = Config::default();
        for file in files {
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(Error::Read {
                        file: file.clone(),
                        source,
                    })
                }
            };
            let layer: Layer = toml::from_str(&text).map_err(|e| Error::Parse {
                file: file.clone(),
                reason: e.to_string().trim_end().to_owned(),
            })?;
            config.apply(layer);
            config.files.push(file.clone());
        }
        Ok(config)
    }

    /// Puts `layer` over what is set.
    pub fn apply(&mut self, layer: Layer) {
        if let Some(s) = layer.substituters {
            self.substituters = s;
        }
        self.substituters
            .extend(layer.extra_substituters.unwrap_or_default());
        if let Some(k) = layer.trusted_public_keys {
            self.trusted_public_keys = k;
        }
        self.trusted_public_keys
            .extend(layer.extra_trusted_public_keys.unwrap_or_default());
        if let Some(r) = layer.require_sigs {
            self.require_sigs = r;
        }
        if let Some(t) = layer.narinfo_cache_negative_ttl {
            self.narinfo_cache_negative_ttl = t;
        }
        if layer.max_jobs.is_some() {
            self.max_jobs = layer.max_jobs;
        }
        if layer.cores.is_some() {
            self.cores = layer.cores;
        }
    }
}

/// `/etc/bigtop/bigtop.toml` (or under `$BIGTOP_CONF_DIR`), then
/// `$XDG_CONFIG_HOME/bigtop/bigtop.toml` (or `~/.config/…`).
pub fn default_files() -> Vec<PathBuf> {
    let system = std::env::var_os("BIGTOP_CONF_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/etc/bigtop"), PathBuf::from);
    let mut files = vec![system.join("bigtop.toml")];
    if let Some(dir) = user_dir("XDG_CONFIG_HOME", ".config") {
        files.push(dir.join("bigtop/bigtop.toml"));
    }
    files
}

/// `$VAR` if set to an absolute path, else `~/<fallback>`.
pub(crate) fn user_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|h| h.is_absolute())
                .map(|h| h.join(fallback))
        })
}

/// Where a cache's misses are remembered:
/// `$XDG_CACHE_HOME/bigtop/narinfo-misses.sqlite` (or `~/.cache/…`).
pub fn memo_file() -> Option<PathBuf> {
    user_dir("XDG_CACHE_HOME", ".cache").map(|d| d.join("bigtop/narinfo-misses.sqlite"))
}

/// Splits list flags the way Nix's options are written: each argument
/// may hold several values separated by whitespace; an argument that is
/// empty (or only whitespace) sets the empty list. `None` when the flag
/// was not given.
pub fn words(args: &[String]) -> Option<Vec<String>> {
    (!args.is_empty()).then(|| {
        args.iter()
            .flat_map(|a| a.split_whitespace())
            .map(str::to_owned)
            .collect()
    })
}

/// The flags that choose substituters and how far to trust them, shared
/// by the commands that fetch (`build`, `store verify --repair`); each
/// replaces its configuration files' setting.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SubstituterArgs {
    /// Binary caches to fetch from instead of building (`file:///DIR`,
    /// `http(s)://…`, `?priority=N` to order them), asked by priority;
    /// repeatable, or several in one argument separated by whitespace (as
    /// Nix's option); `''` for none. A cache that is down or lacks a path
    /// leaves it to be built; a fetch that fails three times too.
    #[arg(long, value_name = "URL")]
    pub substituters: Vec<String>,
    /// Public keys (`NAME:base64`) whose signatures make a cache's
    /// narinfo trusted; repeatable, or several separated by whitespace.
    #[arg(
        long = "trusted-public-keys",
        alias = "trusted-public-key",
        value_name = "KEY"
    )]
    pub trusted_public_keys: Vec<String>,
    /// Take what the substituters hold whatever signs it (the contents
    /// are then scanned for undeclared references).
    #[arg(long, conflicts_with = "require_sigs")]
    pub no_require_sigs: bool,
    /// Require signatures by a trusted key even if a configuration file
    /// says `require-sigs = false`.
    #[arg(long)]
    pub require_sigs: bool,
    /// Seconds a cache's miss is remembered, so that it is not asked
    /// again (0: not remembered); default 3600.
    #[arg(long, value_name = "SECONDS")]
    pub narinfo_cache_negative_ttl: Option<u64>,
}

/// A substituter the command line or a configuration file names.
pub type CacheSubstituter =
    bigtop_store::cache::CacheSubstituter<Box<dyn bigtop_store::cache::BinaryCache>>;

/// Why the substituters could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SubstituterError {
    /// A URL that is no cache.
    #[error(transparent)]
    Cache(#[from] bigtop_store::cache::CacheError),
    /// A trusted public key that does not parse.
    #[error("trusted public key `{key}`")]
    TrustedKey {
        /// The key as given.
        key: String,
        /// Why.
        #[source]
        source: bigtop_core::signing::ParseError,
    },
}

impl SubstituterArgs {
    /// How far caches are trusted: flags over `config`.
    pub fn fetch_options(
        &self,
        config: &Config,
    ) -> Result<bigtop_store::cache::FetchOptions, SubstituterError> {
        let mut trusted = bigtop_core::signing::TrustedKeys::new();
        let keys =
            words(&self.trusted_public_keys).unwrap_or_else(|| config.trusted_public_keys.clone());
        for k in &keys {
            trusted.insert(k.parse().map_err(|source| SubstituterError::TrustedKey {
                key: k.clone(),
                source,
            })?);
        }
        Ok(bigtop_store::cache::FetchOptions {
            trusted,
            require_sigs: if self.no_require_sigs {
                false
            } else {
                self.require_sigs || config.require_sigs
            },
        })
    }

    /// The substituters of `store`, lowest priority first (a cache that
    /// cannot be used last; ties in the order given), remembering misses
    /// for the configured time.
    pub fn open(
        &self,
        store: &bigtop_store::Store,
        config: &Config,
    ) -> Result<Vec<CacheSubstituter>, SubstituterError> {
        let fetch = self.fetch_options(config)?;
        let urls = words(&self.substituters).unwrap_or_else(|| config.substituters.clone());
        let ttl = self
            .narinfo_cache_negative_ttl
            .unwrap_or(config.narinfo_cache_negative_ttl);
        // Misses are remembered where the user's caches are; a memo that
        // cannot be opened only costs round trips.
        let memo = (ttl > 0 && !urls.is_empty())
            .then(memo_file)
            .flatten()
            .and_then(|f| {
                bigtop_store::cache::NarinfoMemo::open(f, std::time::Duration::from_secs(ttl)).ok()
            })
            .map(std::sync::Arc::new);
        let mut substituters = urls
            .iter()
            .map(|url| {
                let cache = bigtop_store::cache::open(url)?;
                let mut s = bigtop_store::cache::CacheSubstituter::new(store, cache, fetch.clone());
                if let Some(memo) = &memo {
                    s = s.remembering_misses(memo.clone());
                }
                Ok((url_priority(url), s))
            })
            .collect::<Result<Vec<_>, SubstituterError>>()?;
        // Ordering asks each cache without a `?priority=` for its
        // `nix-cache-info` now: only when there is an order to find.
        if substituters.len() > 1 {
            substituters.sort_by_cached_key(|(given, s)| {
                given.or_else(|| s.priority()).unwrap_or(u32::MAX)
            });
        }
        Ok(substituters.into_iter().map(|(_, s)| s).collect())
    }
}

/// The `priority=N` of a URL's query (`…?priority=10`), as Nix reads it.
fn url_priority(url: &str) -> Option<u32> {
    url.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix("priority="))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let f = dir.join(name);
        std::fs::write(&f, text).expect("write");
        f
    }

    #[test]
    fn later_files_replace_what_they_set_and_extra_keys_add() {
        let tmp = tempfile::tempdir().expect("tmp");
        let system = write(
            tmp.path(),
            "system.toml",
            "substituters = [\"file:///a\"]\ntrusted-public-keys = [\"a-1:x\"]\nmax-jobs = 4\n",
        );
        let user = write(
            tmp.path(),
            "user.toml",
            "extra-substituters = [\"file:///b\"]\ntrusted-public-keys = [\"b-1:y\"]\nnarinfo-cache-negative-ttl = 0\n",
        );
        let missing = tmp.path().join("none.toml");
        let c = Config::load_files(&[system.clone(), missing, user.clone()]).expect("load");
        assert_eq!(c.substituters, ["file:///a", "file:///b"]);
        assert_eq!(c.trusted_public_keys, ["b-1:y"]);
        assert_eq!(c.max_jobs, Some(4));
        assert_eq!(c.narinfo_cache_negative_ttl, 0);
        assert!(c.require_sigs);
        assert_eq!(c.files, [system, user]);
    }

    #[test]
    fn an_unknown_key_or_a_wrong_type_names_the_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        for (text, want) in [
            ("substituter = [\"file:///a\"]\n", "substituter"),
            ("require-sigs = \"no\"\n", "require-sigs"),
            ("substituters = \"file:///a\"\n", "substituters"),
        ] {
            let f = write(tmp.path(), "bad.toml", text);
            let e = Config::load_files(std::slice::from_ref(&f)).expect_err(text);
            let msg = e.to_string();
            assert!(msg.contains("bad.toml") && msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn list_flags_split_on_whitespace_and_empty_means_none() {
        assert_eq!(words(&[]), None);
        assert_eq!(words(&["".into()]), Some(vec![]));
        assert_eq!(
            words(&["file:///a  http://b\thttp://c".into(), "file:///d".into()]),
            Some(vec![
                "file:///a".into(),
                "http://b".into(),
                "http://c".into(),
                "file:///d".into()
            ])
        );
    }
}
