//! Builtin builders: derivations built in-process, with no process and no
//! sandbox to start. A system is mostly small files; these cost
//! microseconds. Their outputs go through the same staging, scanning,
//! hashing and registration as a process's, so a builtin output is
//! indistinguishable from the same files written by a builder process.
//!
//! | `builder` | environment | output `out` |
//! |---|---|---|
//! | `builtin:write-file` | `text`, optional `executable` = `1` | a file holding `text` (mode 0555 if executable) |
//! | `builtin:symlink-join` | `paths`: store paths separated by spaces | a tree of directories whose files are symlinks into `paths`; two paths providing the same file is an error naming both |
//! | `builtin:copy` | `src`: a store path | a copy of `src` |
//! | `builtin:write-tree` | `entries`: a JSON array of `{"path", "text", "executable"}` (files) and `{"path", "link"}` (symlinks) | a directory holding them, parents made; a path given twice, inside a file, or leaving the tree is an error naming it |
//! | `builtin:fetchurl` | `url` (or `urls`: mirrors separated by spaces), optional `executable` = `1`; fixed-output only | the file at the URL (`file://`, `http://`, `https://`), see [`fetch`] |
//!
//! Every store path a builtin reads must be one of the derivation's inputs.
//! All but `builtin:fetchurl` run on the scheduling thread; a fetch may
//! take minutes and runs beside the process builds, counted among them.

pub mod fetch;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bigtop_core::derivation::{Derivation, OutputName};
use bigtop_core::StorePath;
use thiserror::Error;

use crate::store::Store;

use fetch::FETCH_URL;

pub use bigtop_core::derivation::builtins::{COPY, SYMLINK_JOIN, WRITE_FILE, WRITE_TREE};

/// Why a builtin builder failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BuiltinError {
    /// The builder is `builtin:…` but not one of ours.
    #[error(
        "unknown builtin builder `{0}` (known: {WRITE_FILE}, {WRITE_TREE}, {SYMLINK_JOIN}, {COPY}, {FETCH_URL})"
    )]
    Unknown(String),
    /// A variable the builtin needs is missing.
    #[error("`{builtin}` needs the environment variable `{var}`")]
    MissingVar {
        /// The builder.
        builtin: &'static str,
        /// The variable.
        var: &'static str,
    },
    /// Builtins make one output, `out`.
    #[error("`{0}` makes exactly one output, `out`")]
    Outputs(&'static str),
    /// A path read is not an input of the derivation.
    #[error("`{0}` is not a store path among the derivation's inputs")]
    NotAnInput(String),
    /// Two joined paths provide the same file.
    #[error("`{file}` is provided by both `{first}` and `{second}`")]
    Conflict {
        /// The file, relative to the joined tree.
        file: String,
        /// The first provider.
        first: String,
        /// The second.
        second: String,
    },
    /// A tree's `entries` that cannot be made.
    #[error("`{WRITE_TREE}`: {0}")]
    Tree(String),
    /// A fetching builtin used by a derivation that is not fixed-output.
    #[error("`{0}` may only build a fixed-output derivation (one with an expected hash)")]
    NotFixedOutput(&'static str),
    /// Every URL failed: each with why.
    #[error("cannot fetch {}", fetch_errors(.0))]
    Fetch(Vec<(String, String)>),
    /// A fetched tarball could not be unpacked.
    #[error("cannot unpack what `{url}` gave: {reason}")]
    Unpack {
        /// Where it came from.
        url: String,
        /// Why (not a tarball, a broken one, an entry outside the output).
        reason: String,
    },
    /// The file system failed.
    #[error("cannot {action} `{path}`")]
    Io {
        /// What was being done.
        action: &'static str,
        /// To which path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

fn fetch_errors(errors: &[(String, String)]) -> String {
    errors
        .iter()
        .map(|(url, why)| format!("`{url}` ({why})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BuiltinError + 'a {
    move |source| BuiltinError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Whether `derivation` is built in-process.
pub fn is_builtin(derivation: &Derivation) -> bool {
    derivation.builder.starts_with("builtin:")
}

/// Whether `derivation` is a builtin quick enough to run on the
/// scheduling thread (all but fetches).
pub(crate) fn is_inline(derivation: &Derivation) -> bool {
    is_builtin(derivation) && derivation.builder != FETCH_URL
}

/// A single-file output whose bytes a builtin wrote itself, canonical
/// already: staging need not read it back to hash and scan it.
pub(crate) struct Written {
    pub(crate) contents: Vec<u8>,
    pub(crate) executable: bool,
}

/// Builds `derivation` into `staging` (where each output is to be
/// written); `closure` holds the store paths it may read; `note` receives
/// lines for the build log.
pub(crate) fn run(
    store: &Store,
    derivation: &Derivation,
    outputs: &BTreeMap<OutputName, StorePath>,
    staging: &BTreeMap<OutputName, PathBuf>,
    closure: &BTreeSet<StorePath>,
    note: &mut dyn FnMut(&str),
) -> Result<Option<Written>, BuiltinError> {
    let d = super::environment::with_placeholders(store, derivation, outputs);
    let builtin: &'static str = match d.builder.as_str() {
        WRITE_FILE => WRITE_FILE,
        WRITE_TREE => WRITE_TREE,
        SYMLINK_JOIN => SYMLINK_JOIN,
        COPY => COPY,
        FETCH_URL => FETCH_URL,
        other => return Err(BuiltinError::Unknown(other.to_owned())),
    };
    let out = match (staging.len(), staging.get(&OutputName::out())) {
        (1, Some(out)) => out,
        _ => return Err(BuiltinError::Outputs(builtin)),
    };
    let var = |name: &'static str| {
        d.env
            .get(name)
            .ok_or(BuiltinError::MissingVar { builtin, var: name })
    };
    // An input given by its logical path, checked and found on disk.
    let input = |text: &str| -> Result<PathBuf, BuiltinError> {
        let (path, rest) = store
            .store_dir()
            .parse_path_prefix(text)
            .map_err(|_| BuiltinError::NotAnInput(text.to_owned()))?;
        if !rest.is_empty() || !closure.contains(&path) {
            return Err(BuiltinError::NotAnInput(text.to_owned()));
        }
        Ok(store.physical(&path))
    };
    let result = match builtin {
        WRITE_FILE => {
            let executable = d.env.get("executable").is_some_and(|v| v == "1");
            let text = var("text")?.as_bytes();
            return match crate::fs::write_file_canonical(out, text, executable, store.owner()) {
                Ok(()) => Ok(Some(Written {
                    contents: text.to_vec(),
                    executable,
                })),
                Err(e) => {
                    let _ = crate::fs::remove_tree(out);
                    Err(store_error("write", out)(e))
                }
            };
        }
        SYMLINK_JOIN => {
            let mut providers: BTreeMap<PathBuf, String> = BTreeMap::new();
            fs::create_dir(out).map_err(io_err("create", out))?;
            let mut r = Ok(());
            for p in var("paths")?.split_whitespace() {
                let physical = input(p)?;
                r = join(out, &physical, Path::new(p), &mut providers);
                if r.is_err() {
                    break;
                }
            }
            r
        }
        COPY => {
            let src = input(var("src")?)?;
            // By descriptors: an input may nest directories past PATH_MAX.
            crate::fs::copy_filtered(&src, out, &|_| true).map_err(store_error("copy", &src))
        }
        WRITE_TREE => write_tree(out, var("entries")?),
        FETCH_URL => fetch::fetch(&d, out, note),
        _ => unreachable!("matched above"),
    };
    if result.is_err() {
        let _ = crate::fs::remove_tree(out);
    }
    result.map(|()| None)
}

/// Adds the tree at `physical` (logically `logical`) to the joined tree
/// `out`: directories are made, files and symlinks become symlinks to the
/// logical path of what provides them.
///
/// Depth first and in name order, as a recursion would go, but on a stack
/// of its own: an input can nest directories thousands deep (the paths
/// then fail, cleanly, at `PATH_MAX`; a recursion overflowed the stack).
fn join(
    out: &Path,
    physical: &Path,
    logical: &Path,
    providers: &mut BTreeMap<PathBuf, String>,
) -> Result<(), BuiltinError> {
    let meta = fs::metadata(physical).map_err(io_err("read", physical))?;
    if !meta.is_dir() {
        // Only trees can be merged: a joined path must be a directory.
        return Err(BuiltinError::NotAnInput(format!(
            "{} (a symlink join needs directories)",
            logical.display()
        )));
    }
    let names = |dir: &Path| -> Result<std::vec::IntoIter<std::ffi::OsString>, BuiltinError> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(io_err("read", dir))?;
        names.sort();
        Ok(names.into_iter())
    };
    let mut stack = vec![(PathBuf::new(), names(physical)?)];
    while let Some((rel, pending)) = stack.last_mut() {
        let Some(name) = pending.next() else {
            stack.pop();
            continue;
        };
        let rel_child = rel.join(name);
        let target = out.join(&rel_child);
        let here = physical.join(&rel_child);
        let is_dir = fs::metadata(&here).map(|m| m.is_dir()).unwrap_or(false);
        if is_dir {
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(conflict(&rel_child, providers, logical));
                }
                Err(_) => {
                    fs::create_dir(&target).map_err(io_err("create", &target))?;
                    providers.insert(rel_child.clone(), logical.display().to_string());
                }
            }
            let below = names(&here)?;
            stack.push((rel_child, below));
        } else {
            if fs::symlink_metadata(&target).is_ok() {
                return Err(conflict(&rel_child, providers, logical));
            }
            std::os::unix::fs::symlink(logical.join(&rel_child), &target)
                .map_err(io_err("link", &target))?;
            providers.insert(rel_child, logical.display().to_string());
        }
    }
    Ok(())
}

fn conflict(rel: &Path, providers: &BTreeMap<PathBuf, String>, second: &Path) -> BuiltinError {
    BuiltinError::Conflict {
        file: rel.display().to_string(),
        first: providers.get(rel).cloned().unwrap_or_default(),
        second: second.display().to_string(),
    }
}

/// One entry of `builtin:write-tree`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeEntry {
    path: String,
    text: Option<String>,
    #[serde(default)]
    executable: bool,
    link: Option<String>,
}

fn write_tree(out: &Path, entries: &str) -> Result<(), BuiltinError> {
    let entries: Vec<TreeEntry> = serde_json::from_str(entries)
        .map_err(|e| BuiltinError::Tree(format!("`entries` is not a list of entries: {e}")))?;
    // Checked before anything is written: a bad entry leaves no tree.
    let mut kinds: BTreeMap<&str, bool> = BTreeMap::new();
    for e in &entries {
        let p = e.path.as_str();
        if p.is_empty()
            || p.starts_with('/')
            || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(BuiltinError::Tree(format!(
                "`{p}` is not a relative path inside the tree"
            )));
        }
        if e.text.is_some() == e.link.is_some() {
            return Err(BuiltinError::Tree(format!(
                "`{p}` needs exactly one of `text` and `link`"
            )));
        }
        if kinds.insert(p, false).is_some() {
            return Err(BuiltinError::Tree(format!("`{p}` is given twice")));
        }
    }
    for p in kinds.keys() {
        let mut parent = *p;
        while let Some((head, _)) = parent.rsplit_once('/') {
            if kinds.contains_key(head) {
                return Err(BuiltinError::Tree(format!(
                    "`{p}` is inside `{head}`, which is a file or a link"
                )));
            }
            parent = head;
        }
    }
    fs::create_dir(out).map_err(io_err("create", out))?;
    for e in &entries {
        let target = out.join(&e.path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        match (&e.text, &e.link) {
            (Some(text), _) => {
                use std::os::unix::fs::PermissionsExt as _;
                fs::write(&target, text).map_err(io_err("write", &target))?;
                let mode = if e.executable { 0o555 } else { 0o444 };
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err("chmod", &target))?;
            }
            (None, Some(link)) => {
                std::os::unix::fs::symlink(link, &target).map_err(io_err("link", &target))?
            }
            (None, None) => unreachable!("checked above"),
        }
    }
    Ok(())
}

/// A store error met by a builtin, as the builtin's: a file operation stays
/// one (with its own action and path); anything else is told, causes
/// included, as `action` on `path` failing.
fn store_error(action: &'static str, path: &Path) -> impl FnOnce(crate::Error) -> BuiltinError {
    let path = path.to_owned();
    move |e| match e {
        crate::Error::Io {
            action,
            path,
            source,
        } => BuiltinError::Io {
            action,
            path,
            source,
        },
        other => BuiltinError::Io {
            action,
            path,
            source: io::Error::other(crate::error::Chain(&other).to_string()),
        },
    }
}
