//! The bootstrap: the shell, core utilities and C compiler that packages
//! build with, taken from the host explicitly and visibly.
//!
//! Building from source needs tools that were not built from source
//! here. [`host`] imports them into the store as one source tree: each
//! program with the shared libraries it needs (found by asking the
//! program's dynamic loader, as `ldd` does), the C compiler with its
//! internal programs, C runtime files and headers, laid out like the
//! host's `/usr` so that the compiler finds its parts relative to itself,
//! and a `cc` wrapper that points it at that tree (`--sysroot`). The tree
//! is content-addressed like any source: another host with other tool
//! versions gives another path, and every package built with it changes —
//! what a build depends on is never hidden.
//!
//! What this means for reproducibility: the tools' *bytes* are pinned
//! (by hash), but where they came from is the host's distribution, so two
//! machines agree on paths only if they have the same tool versions. The
//! programs run with the host's dynamic loader and C library (the sandbox
//! provides those two at their host paths, recorded in every build log).
//! The seam to a pinned toolchain is [`Stdenv::new`]: give it a shell and
//! tool trees made by fixed-output fetches of tarballs (or built by a
//! previous stage) instead, and nothing of the host is left but the
//! kernel.
//!
//! ```no_run
//! use bigtop::eval::drv::Platform;
//! use bigtop::eval::package::Package;
//! let boot = bigtop::bootstrap::host(&Platform::default())?;
//! let hello = Package::new("hello").version("1.0").build(&boot.stdenv)?;
//! # let _ = hello;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bigtop_eval::drv::{Platform, Str};
use bigtop_eval::package::Stdenv;
use bigtop_eval::source::{Kind, Source, SourceBuilder, SourceFs};
use bigtop_eval::text;
use thiserror::Error;

/// Why the bootstrap could not be made, naming the tool or path.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A program the bootstrap needs is not on this host.
    #[error("the bootstrap needs `{program}`, which is not in {searched}: install it (on Debian: {hint})")]
    Missing {
        /// The program.
        program: String,
        /// Where it was looked for.
        searched: String,
        /// What provides it.
        hint: &'static str,
    },
    /// A host file could not be read.
    #[error("cannot read `{}` for the bootstrap", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The shared libraries of a program could not be found.
    #[error("cannot find the libraries of `{}`", path.display())]
    Libraries {
        /// The program.
        path: PathBuf,
        /// Why.
        #[source]
        source: bigtop_store::sandbox::SandboxError,
    },
    /// The compiler would not say where its parts are.
    #[error("`{program}` did not say where its {what} is: {reason}")]
    Compiler {
        /// The compiler.
        program: String,
        /// What was asked.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Evaluation failed (hashing the tree, writing the stdenv).
    #[error(transparent)]
    Eval(#[from] bigtop_eval::Error),
}

/// Where host programs are looked for.
const SEARCH: [&str; 4] = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// The programs the generic builder and ordinary makefiles use, with the
/// Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("sh", "dash"),
    ("cat", "coreutils"),
    ("chmod", "coreutils"),
    ("cp", "coreutils"),
    ("env", "coreutils"),
    ("head", "coreutils"),
    ("install", "coreutils"),
    ("ln", "coreutils"),
    ("ls", "coreutils"),
    ("mkdir", "coreutils"),
    ("mv", "coreutils"),
    ("rm", "coreutils"),
    ("rmdir", "coreutils"),
    ("sort", "coreutils"),
    ("touch", "coreutils"),
    ("tr", "coreutils"),
    ("uname", "coreutils"),
    ("grep", "grep"),
    ("sed", "sed"),
    ("tar", "tar"),
    ("gzip", "gzip"),
    ("make", "make"),
    ("patch", "patch"),
    // The package builder checks that built programs find their libraries.
    ("readelf", "binutils"),
];

/// The directory, inside the tree, holding every program's shared
/// libraries by the names the loader asks for.
const LIBS: &str = "usr/lib/bigtop-bootstrap";

/// A bootstrap: the imported tree and the stdenv that builds with it.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The host tools, one store tree.
    pub tools: Source,
    /// Packages built with the bootstrap tools: `sh` runs the builder,
    /// `bin` is on `PATH`, `cc` is the C compiler.
    pub stdenv: Stdenv,
}

/// Imports the host's tools (see the [module docs](self)) and makes the
/// stdenv that uses them.
pub fn host(platform: &Platform) -> Result<Bootstrap, Error> {
    let mut t = HostTree::default();
    for (program, hint) in TOOLS {
        let host = find(program, hint)?;
        t.program(&host, &Path::new("usr/bin").join(program))?;
    }
    c_toolchain(&mut t)?;
    // The host's usr-merged top level, so that absolute paths inside the
    // tree (in linker scripts, under --sysroot) resolve within it.
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        t.entries
            .insert(PathBuf::from(link), Node::Link(PathBuf::from(target)));
    }
    let tools = t.source(platform, "bootstrap-tools")?;
    let stdenv = Stdenv::new(platform, text!("{}/usr/bin/sh", tools), [Str::from(&tools)])?
        .with_env("LD_LIBRARY_PATH", text!("{}/{LIBS}", tools))
        .with_env("CC", text!("{}/usr/bin/cc", tools));
    Ok(Bootstrap { tools, stdenv })
}

/// The C compiler: the driver, its internal programs and files, the
/// assembler and linker, the C library's startup files and headers, and a
/// `cc` that runs the driver on this tree.
fn c_toolchain(t: &mut HostTree) -> Result<(), Error> {
    let gcc = find("gcc", "gcc")?;
    let ask = |arg: &str, what: &'static str| -> Result<PathBuf, Error> {
        let out = std::process::Command::new(&gcc)
            .arg(arg)
            .output()
            .map_err(|e| Error::Compiler {
                program: gcc.display().to_string(),
                what,
                reason: e.to_string(),
            })?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || !text.starts_with('/') {
            return Err(Error::Compiler {
                program: gcc.display().to_string(),
                what,
                reason: format!("`{} {arg}` printed `{text}`", gcc.display()),
            });
        }
        Ok(PathBuf::from(text))
    };
    let cc1 = ask("-print-prog-name=cc1", "cc1")?;
    let internal = cc1
        .parent()
        .map(Path::to_owned)
        .ok_or_else(|| Error::Compiler {
            program: gcc.display().to_string(),
            what: "cc1",
            reason: format!("`{}` has no directory", cc1.display()),
        })?;
    // The driver where the host has it: it finds `cc1` and its files
    // relative to itself.
    t.program(&gcc, &mirror(&gcc))?;
    for name in ["cc1", "collect2", "lto-wrapper"] {
        let p = internal.join(name);
        if p.exists() {
            t.program(&p, &mirror(&p))?;
        }
    }
    for entry in read_dir(&internal)? {
        let name = entry.to_string_lossy();
        let p = internal.join(&entry);
        let wanted = name.starts_with("crt")
            || name.starts_with("libgcc")
            || name == "liblto_plugin.so"
            || name == "include";
        if wanted {
            t.tree(&p, &mirror(&p))?;
        }
    }
    for (tool, hint) in [("as", "binutils"), ("ld", "binutils")] {
        let p = find(tool, hint)?;
        t.program(&p, &Path::new("usr/bin").join(tool))?;
    }
    // The C library's pieces a link needs, where its linker script says.
    let libc = ask("-print-file-name=libc.so", "libc.so")?;
    let libc_dir = std::fs::canonicalize(&libc)
        .map_err(read_err(&libc))?
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    for name in [
        "crt1.o",
        "crti.o",
        "crtn.o",
        "Scrt1.o",
        "libc.so",
        "libc.so.6",
        "libc_nonshared.a",
        "libm.so",
        "libm.so.6",
        "libmvec.so.1",
        // What gcc's own `libgcc_s.so` script names.
        "libgcc_s.so.1",
    ] {
        let p = libc_dir.join(name);
        if p.exists() {
            t.file(&p, &mirror(&p))?;
        }
    }
    // Named by the C library's linker script (resolved under --sysroot).
    let loader = Path::new("/lib64/ld-linux-x86-64.so.2");
    if loader.exists() {
        t.file(loader, Path::new("usr/lib64/ld-linux-x86-64.so.2"))?;
    }
    t.tree(Path::new("/usr/include"), Path::new("usr/include"))?;
    // The wrapper finds the tree from its own path: the tree cannot name
    // its own store path.
    let driver = mirror(&gcc);
    let wrapper = format!(
        "#!/bin/sh\n\
         top=${{0%/usr/bin/cc}}\n\
         LD_LIBRARY_PATH=\"$top/{LIBS}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\"\n\
         export LD_LIBRARY_PATH\n\
         exec \"$top/{}\" --sysroot=\"$top\" \"$@\"\n",
        driver.display()
    );
    t.entries.insert(
        PathBuf::from("usr/bin/cc"),
        Node::Bytes(wrapper.into_bytes(), true),
    );
    Ok(())
}

/// `/usr/bin/x` as `usr/bin/x`: the host's place, inside the tree.
fn mirror(host: &Path) -> PathBuf {
    host.strip_prefix("/").unwrap_or(host).to_owned()
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Read {
        path: path.to_owned(),
        source,
    }
}

fn read_dir(dir: &Path) -> Result<Vec<OsString>, Error> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(read_err(dir))? {
        names.push(e.map_err(read_err(dir))?.file_name());
    }
    names.sort();
    Ok(names)
}

/// The program `name` on this host, its symlinks resolved.
fn find(name: &str, hint: &'static str) -> Result<PathBuf, Error> {
    SEARCH
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .ok_or_else(|| Error::Missing {
            program: name.to_owned(),
            searched: SEARCH.join(", "),
            hint,
        })
}

/// An entry of the tree being assembled.
#[derive(Debug, Clone)]
enum Node {
    Dir,
    /// A host file, copied.
    File(PathBuf),
    /// Bytes made here, and whether executable.
    Bytes(Vec<u8>, bool),
    Link(PathBuf),
}

/// A tree assembled from host files at chosen places.
#[derive(Debug, Default)]
struct HostTree {
    entries: BTreeMap<PathBuf, Node>,
}

impl HostTree {
    fn file(&mut self, host: &Path, at: &Path) -> Result<(), Error> {
        let real = std::fs::canonicalize(host).map_err(read_err(host))?;
        self.entries.insert(at.to_owned(), Node::File(real));
        Ok(())
    }

    /// A program and every shared library it loads (but the loader, which
    /// the sandbox provides), the libraries by the names asked for.
    fn program(&mut self, host: &Path, at: &Path) -> Result<(), Error> {
        self.file(host, at)?;
        let libs =
            bigtop_store::sandbox::libraries_of(host).map_err(|source| Error::Libraries {
                path: host.to_owned(),
                source,
            })?;
        for (real, asked) in libs {
            let Some(name) = asked.file_name() else {
                continue;
            };
            if name.to_string_lossy().starts_with("ld-linux") {
                continue;
            }
            self.entries
                .insert(Path::new(LIBS).join(name), Node::File(real));
        }
        Ok(())
    }

    /// A host directory, whole: symlinks to files are copied as files,
    /// relative symlinks within it are kept.
    fn tree(&mut self, host: &Path, at: &Path) -> Result<(), Error> {
        let meta = std::fs::symlink_metadata(host).map_err(read_err(host))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(host).map_err(read_err(host))?;
            if target.is_relative() && !target.starts_with("..") {
                self.entries.insert(at.to_owned(), Node::Link(target));
                return Ok(());
            }
            return match std::fs::metadata(host) {
                Ok(m) if m.is_dir() => {
                    self.tree(&std::fs::canonicalize(host).map_err(read_err(host))?, at)
                }
                Ok(_) => self.file(host, at),
                // A dangling link: nothing to copy.
                Err(_) => Ok(()),
            };
        }
        if !meta.is_dir() {
            return self.file(host, at);
        }
        self.entries.insert(at.to_owned(), Node::Dir);
        for name in read_dir(host)? {
            self.tree(&host.join(&name), &at.join(&name))?;
        }
        Ok(())
    }

    /// The tree as a source named `name`.
    fn source(self, platform: &Platform, name: &str) -> Result<Source, Error> {
        let root = PathBuf::from("/").join(name);
        let fs = MappedFs::new(&root, self.entries);
        Ok(SourceBuilder::new(&root).fs(Arc::new(fs)).build(platform)?)
    }
}

/// A [`SourceFs`] over a [`HostTree`]: directories are implied by the
/// entries under them.
struct MappedFs {
    nodes: BTreeMap<PathBuf, Node>,
}

impl MappedFs {
    fn new(root: &Path, entries: BTreeMap<PathBuf, Node>) -> MappedFs {
        let mut nodes = BTreeMap::new();
        nodes.insert(root.to_owned(), Node::Dir);
        for (rel, node) in entries {
            let abs = root.join(&rel);
            for a in abs.ancestors().skip(1) {
                if a.starts_with(root) {
                    nodes.entry(a.to_owned()).or_insert(Node::Dir);
                }
            }
            nodes.insert(abs, node);
        }
        MappedFs { nodes }
    }

    fn node(&self, path: &Path) -> io::Result<&Node> {
        self.nodes
            .get(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in the bootstrap tree"))
    }
}

impl SourceFs for MappedFs {
    fn kind(&self, path: &Path) -> io::Result<Kind> {
        use std::os::unix::fs::PermissionsExt;
        Ok(match self.node(path)? {
            Node::Dir => Kind::Directory,
            Node::Link(_) => Kind::Symlink,
            Node::Bytes(b, x) => Kind::File {
                executable: *x,
                size: b.len() as u64,
            },
            Node::File(host) => {
                let m = std::fs::metadata(host)?;
                Kind::File {
                    executable: m.permissions().mode() & 0o100 != 0,
                    size: m.len(),
                }
            }
        })
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        Ok(self
            .nodes
            .range(path.to_owned()..)
            .skip(1)
            .take_while(|(p, _)| p.starts_with(path))
            .filter(|(p, _)| p.parent() == Some(path))
            .filter_map(|(p, _)| p.file_name().map(|n| n.to_owned()))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + '_>> {
        match self.node(path)? {
            Node::File(host) => Ok(Box::new(std::fs::File::open(host)?)),
            Node::Bytes(b, _) => Ok(Box::new(io::Cursor::new(b.as_slice()))),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file")),
        }
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        match self.node(path)? {
            Node::Link(t) => Ok(t.clone()),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a symlink")),
        }
    }
}
