//! Trivial builders: files, scripts and symlink trees made by the store's
//! builtin builders (no process, no sandbox), and small shell commands.
//!
//! ```
//! use bigtop_eval::drv::Platform;
//! use bigtop_eval::{text, trivial};
//! let p = Platform::default();
//! let conf = trivial::write_json(&p, "app.json", &serde_json::json!({"port": 8080}))?;
//! let run = trivial::write_script(&p, "run-app", "/bin/sh", text!("exec app --config {}\n", conf))?;
//! // The script names the configuration: building it needs it.
//! assert_eq!(run.input_derivations(), [conf]);
//! # Ok::<(), bigtop_eval::Error>(())
//! ```

use bigtop_core::derivation::builtins::{SYMLINK_JOIN, WRITE_FILE, WRITE_TREE};

use crate::drv::{Context, Drv, DrvBuilder, Interpolate, Str};
use crate::platform::Platform;
use crate::Error;

/// A file holding `text`.
///
/// ```
/// # use bigtop_eval::{drv::Platform, trivial};
/// let motd = trivial::write_text(&Platform::default(), "motd", "welcome\n")?;
/// assert_eq!(motd.derivation().env["text"], "welcome\n");
/// # Ok::<(), bigtop_eval::Error>(())
/// ```
pub fn write_text(p: &Platform, name: &str, text: impl Into<Str>) -> Result<Drv, Error> {
    DrvBuilder::new(name)
        .builder(WRITE_FILE)
        .env("text", text)
        .build(p)
}

/// An executable file: `#!interpreter` then `body`. The interpreter is
/// usually a package's program (`text!("{}/bin/bash", bash)`), which makes
/// that package a dependency of the script.
pub fn write_script(
    p: &Platform,
    name: &str,
    interpreter: impl Into<Str>,
    body: impl Into<Str>,
) -> Result<Drv, Error> {
    let mut text = Str::from("#!");
    text.push(interpreter.into());
    text.push("\n");
    text.push(body.into());
    DrvBuilder::new(name)
        .builder(WRITE_FILE)
        .env("text", text)
        .env("executable", "1")
        .build(p)
}

/// `value` as pretty-printed JSON (with a final newline).
pub fn write_json<T: serde::Serialize + ?Sized>(
    p: &Platform,
    name: &str,
    value: &T,
) -> Result<Drv, Error> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::Serialize {
        name: name.to_owned(),
        format: "JSON",
        reason: e.to_string(),
    })?;
    text.push('\n');
    write_text(p, name, text)
}

/// `value` as TOML.
///
/// ```
/// # use bigtop_eval::{drv::Platform, trivial};
/// #[derive(serde::Serialize)]
/// struct Server { port: u16 }
/// let conf = trivial::write_toml(&Platform::default(), "server.toml", &Server { port: 80 })?;
/// assert_eq!(conf.derivation().env["text"], "port = 80\n");
/// # Ok::<(), bigtop_eval::Error>(())
/// ```
pub fn write_toml<T: serde::Serialize + ?Sized>(
    p: &Platform,
    name: &str,
    value: &T,
) -> Result<Drv, Error> {
    let text = toml::to_string(value).map_err(|e| Error::Serialize {
        name: name.to_owned(),
        format: "TOML",
        reason: e.to_string(),
    })?;
    write_text(p, name, text)
}

/// One tree of symlinks into every one of `paths` (a profile, nixpkgs'
/// `symlinkJoin`/`buildEnv`); two paths providing the same file fail the
/// build, naming both.
///
/// ```
/// # use bigtop_eval::{drv::Platform, trivial};
/// let p = Platform::default();
/// let a = trivial::write_script(&p, "a", "/bin/sh", "echo a\n")?;
/// let b = trivial::write_script(&p, "b", "/bin/sh", "echo b\n")?;
/// let env = trivial::symlink_join(&p, "tools", [&a, &b])?;
/// assert_eq!(env.input_derivations().len(), 2);
/// # Ok::<(), bigtop_eval::Error>(())
/// ```
pub fn symlink_join<I>(p: &Platform, name: &str, paths: I) -> Result<Drv, Error>
where
    I: IntoIterator,
    I::Item: Interpolate,
{
    DrvBuilder::new(name)
        .builder(SYMLINK_JOIN)
        .env("paths", Str::join(paths, " "))
        .build(p)
}

/// A small process derivation: `shell -c script`, with `$out` to write;
/// add variables to the builder returned, then `build` it. `shell` is a
/// program the build can run: a bootstrap or package shell
/// (`text!("{}/bin/sh", sh)`), or `/bin/sh`, which the sandbox provides.
///
/// ```
/// # use bigtop_eval::{drv::Platform, trivial};
/// let p = Platform::default();
/// let date = trivial::run_command("build-info", "/bin/sh", "echo built > $out")
///     .env("LANG", "C")
///     .build(&p)?;
/// assert_eq!(date.derivation().args, ["-c", "echo built > $out"]);
/// # Ok::<(), bigtop_eval::Error>(())
/// ```
pub fn run_command(name: &str, shell: impl Into<Str>, script: impl Into<Str>) -> DrvBuilder {
    DrvBuilder::new(name).builder(shell).arg("-c").arg(script)
}

/// One entry of [`write_tree`]: a file or a symlink at a path relative to
/// the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEntry {
    /// A file holding `text`.
    File {
        /// Where, relative to the tree (`etc/hosts`).
        path: String,
        /// Its contents.
        text: Str,
        /// Mode 0555 instead of 0444.
        executable: bool,
    },
    /// A symlink to `target` (usually a store path, which the tree then
    /// depends on).
    Link {
        /// Where, relative to the tree.
        path: String,
        /// What it points to.
        target: Str,
    },
}

/// A directory of files and symlinks, made in one builtin step: the
/// system toplevel's `/etc` and links. Paths must be relative, distinct,
/// and not inside one another (the build fails naming the first that is
/// not).
///
/// ```
/// # use bigtop_eval::{drv::Platform, trivial::{self, TreeEntry}, text};
/// let p = Platform::default();
/// let motd = trivial::write_text(&p, "motd", "welcome\n")?;
/// let etc = trivial::write_tree(&p, "etc", [
///     TreeEntry::File { path: "hostname".into(), text: "web1\n".into(), executable: false },
///     TreeEntry::Link { path: "motd".into(), target: text!("{}", motd) },
/// ])?;
/// assert_eq!(etc.input_derivations(), [motd]);
/// # Ok::<(), bigtop_eval::Error>(())
/// ```
pub fn write_tree(
    p: &Platform,
    name: &str,
    entries: impl IntoIterator<Item = TreeEntry>,
) -> Result<Drv, Error> {
    let mut ctx = Context::default();
    let mut items = Vec::new();
    for e in entries {
        items.push(match e {
            TreeEntry::File {
                path,
                text,
                executable,
            } => {
                let (text, c) = text.into_parts();
                ctx.extend(&c);
                serde_json::json!({"path": path, "text": text, "executable": executable})
            }
            TreeEntry::Link { path, target } => {
                let (target, c) = target.into_parts();
                ctx.extend(&c);
                serde_json::json!({"path": path, "link": target})
            }
        });
    }
    // JSON escaping leaves store paths as they are, so the context still
    // names every path in the text.
    let json = serde_json::Value::Array(items).to_string();
    DrvBuilder::new(name)
        .builder(WRITE_TREE)
        .env("entries", Str::from_parts(json, ctx))
        .build(p)
}
