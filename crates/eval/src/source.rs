//! Sources: a local file or directory as a content-addressed input.
//!
//! A [`Source`] is named by the NAR hash of what its filters keep (the
//! same path `bigtop store add` gives the same tree), so an edit to a file
//! the filters drop — an ignored build product, an editor's backup —
//! changes no path at all. Filters, applied in this order:
//!
//! * [`exclude`](SourceBuilder::exclude): glob patterns relative to the
//!   source's root; a matching directory is not entered;
//! * [`gitignore`](SourceBuilder::gitignore): what git would ignore, from
//!   the `.gitignore` files of the enclosing repository down to each
//!   directory, and the `.git` directory itself;
//! * [`filter`](SourceBuilder::filter): any predicate on the relative
//!   path and the kind of entry;
//! * [`include`](SourceBuilder::include): when given, only files and
//!   symlinks matching one of these globs are kept, with the directories
//!   that lead to them.
//!
//! Trees are read through [`SourceFs`], the real file system unless a test
//! hands in a [`MemFs`].
//!
//! ```
//! use std::sync::Arc;
//! use bigtop_eval::drv::Platform;
//! use bigtop_eval::source::{MemFs, SourceBuilder};
//! let fs = Arc::new(MemFs::default());
//! fs.file("/src/hello.c", b"int main() { return 0; }\n");
//! fs.file("/src/hello.o", b"\x7fELF...");
//! let src = SourceBuilder::new("/src")
//!     .exclude("*.o")
//!     .fs(fs.clone())
//!     .build(&Platform::default())?;
//! fs.file("/src/hello.o", b"rebuilt");
//! let again = SourceBuilder::new("/src").exclude("*.o").fs(fs).build(&Platform::default())?;
//! assert_eq!(src.path(), again.path());
//! # Ok::<(), bigtop_eval::Error>(())
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use bigtop_core::hash::{Hash, HashAlgo, HashingWriter};
use bigtop_core::nar::NarEncoder;
use bigtop_core::{StoreDir, StorePath};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::platform::Platform;
use crate::Error;

/// What an entry of a source tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File {
        /// Whether its owner may execute it.
        executable: bool,
        /// Its size in bytes.
        size: u64,
    },
    /// A directory.
    Directory,
    /// A symbolic link (not followed).
    Symlink,
}

/// How evaluation reads source trees.
pub trait SourceFs: Send + Sync {
    /// What `path` is, without following a final symlink. Anything other
    /// than a file, directory or symlink is an error.
    fn kind(&self, path: &Path) -> io::Result<Kind>;
    /// The names in directory `path`, in any order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// The contents of file `path`.
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + '_>>;
    /// The target of symlink `path`.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
}

/// The host's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFs;

impl SourceFs for HostFs {
    fn kind(&self, path: &Path) -> io::Result<Kind> {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::symlink_metadata(path)?;
        let t = m.file_type();
        if t.is_symlink() {
            Ok(Kind::Symlink)
        } else if t.is_dir() {
            Ok(Kind::Directory)
        } else if t.is_file() {
            Ok(Kind::File {
                executable: m.permissions().mode() & 0o100 != 0,
                size: m.len(),
            })
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a file, directory or symlink",
            ))
        }
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(std::fs::File::open(path)?))
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(path)
    }
}

#[derive(Debug, Clone)]
enum MemEntry {
    File(Vec<u8>, bool),
    Link(PathBuf),
    Dir,
}

/// An in-memory tree, for tests: parents are created as needed.
#[derive(Debug, Default)]
pub struct MemFs(Mutex<BTreeMap<PathBuf, MemEntry>>);

impl MemFs {
    fn put(&self, path: &Path, e: MemEntry) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for a in path.ancestors().skip(1) {
            m.insert(a.to_owned(), MemEntry::Dir);
        }
        m.insert(path.to_owned(), e);
    }

    /// Writes a (non-executable) file.
    pub fn file(&self, path: impl AsRef<Path>, contents: &[u8]) {
        self.put(path.as_ref(), MemEntry::File(contents.to_vec(), false));
    }

    /// Writes an executable file.
    pub fn executable(&self, path: impl AsRef<Path>, contents: &[u8]) {
        self.put(path.as_ref(), MemEntry::File(contents.to_vec(), true));
    }

    /// Makes a symlink.
    pub fn symlink(&self, path: impl AsRef<Path>, target: impl Into<PathBuf>) {
        self.put(path.as_ref(), MemEntry::Link(target.into()));
    }

    /// Makes an (empty) directory.
    pub fn dir(&self, path: impl AsRef<Path>) {
        self.put(path.as_ref(), MemEntry::Dir);
    }

    /// Removes a file, link or directory with all it holds.
    pub fn remove(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|p, _| !p.starts_with(path));
    }

    fn get(&self, path: &Path) -> io::Result<MemEntry> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such entry"))
    }
}

impl SourceFs for MemFs {
    fn kind(&self, path: &Path) -> io::Result<Kind> {
        Ok(match self.get(path)? {
            MemEntry::File(c, x) => Kind::File {
                executable: x,
                size: c.len() as u64,
            },
            MemEntry::Link(_) => Kind::Symlink,
            MemEntry::Dir => Kind::Directory,
        })
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Ok(m.keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(|n| n.to_owned()))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + '_>> {
        match self.get(path)? {
            MemEntry::File(c, _) => Ok(Box::new(io::Cursor::new(c))),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file")),
        }
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        match self.get(path)? {
            MemEntry::Link(t) => Ok(t),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a symlink")),
        }
    }
}

type Predicate = Arc<dyn Fn(&Path, Kind) -> bool + Send + Sync>;

/// A source under construction: a root and its filters.
#[derive(Clone)]
#[must_use = "a source is made by `build`"]
pub struct SourceBuilder {
    root: PathBuf,
    name: Option<String>,
    include: Vec<String>,
    exclude: Vec<String>,
    gitignore: bool,
    predicate: Option<Predicate>,
    fs: Arc<dyn SourceFs>,
}

impl fmt::Debug for SourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceBuilder")
            .field("root", &self.root)
            .field("name", &self.name)
            .field("include", &self.include)
            .field("exclude", &self.exclude)
            .field("gitignore", &self.gitignore)
            .field("filter", &self.predicate.is_some())
            .finish()
    }
}

impl SourceBuilder {
    /// The file or directory at `root` (relative paths are taken from
    /// the current directory).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SourceBuilder {
            root: root.into(),
            name: None,
            include: Vec::new(),
            exclude: Vec::new(),
            gitignore: false,
            predicate: None,
            fs: Arc::new(HostFs),
        }
    }

    /// The store path's name. Default: the root's file name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Keeps only files and symlinks matching one of the `include` globs
    /// (and the directories leading to them).
    pub fn include(mut self, glob: impl Into<String>) -> Self {
        self.include.push(glob.into());
        self
    }

    /// Drops whatever matches this glob (`*.o`, `target`, `docs/**`).
    pub fn exclude(mut self, glob: impl Into<String>) -> Self {
        self.exclude.push(glob.into());
        self
    }

    /// Drops what git would ignore, and `.git`.
    pub fn gitignore(mut self) -> Self {
        self.gitignore = true;
        self
    }

    /// Keeps only what `keep(relative path, kind)` accepts; a directory
    /// it rejects is not entered.
    pub fn filter(mut self, keep: impl Fn(&Path, Kind) -> bool + Send + Sync + 'static) -> Self {
        self.predicate = Some(Arc::new(keep));
        self
    }

    /// Reads the tree through `fs` instead of the host's file system.
    pub fn fs(mut self, fs: Arc<dyn SourceFs>) -> Self {
        self.fs = fs;
        self
    }

    /// Reads and hashes what the filters keep.
    pub fn build(self, platform: &Platform) -> Result<Source, Error> {
        let root = if self.root.is_absolute() {
            self.root.clone()
        } else {
            std::env::current_dir()
                .map_err(|source| Error::Source {
                    path: self.root.clone(),
                    source,
                })?
                .join(&self.root)
        };
        let root = normalize(&root);
        let name = match &self.name {
            Some(n) => n.clone(),
            None => root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "source".into()),
        };
        let selection = Selection::new(&self, &root)?;
        let mut hasher = HashingWriter::new(io::sink(), HashAlgo::Blake3);
        selection.encode(&root, &mut hasher)?;
        let (nar_hash, nar_size, _) = hasher.finish();
        let path = platform
            .store_dir
            .make_source_path(&name, &nar_hash, [], false)
            .map_err(|source| Error::BadName {
                name: name.clone(),
                source,
            })?;
        Ok(Source(Arc::new(SourceNode {
            root,
            path,
            nar_hash,
            nar_size,
            store_dir: platform.store_dir.clone(),
            selection,
        })))
    }
}

/// `.` and `..` resolved lexically, so that names and ancestors are those
/// the user meant.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The compiled filters of a source.
struct Selection {
    include: Option<globset::GlobSet>,
    exclude: globset::GlobSet,
    /// `.gitignore` matchers of the repository above the root, outermost
    /// first (deeper directories' are added while walking).
    ignores: Option<Vec<Gitignore>>,
    predicate: Option<Predicate>,
    fs: Arc<dyn SourceFs>,
}

impl Selection {
    fn new(b: &SourceBuilder, root: &Path) -> Result<Selection, Error> {
        let globs = |patterns: &[String]| -> Result<globset::GlobSet, Error> {
            let mut set = globset::GlobSetBuilder::new();
            for p in patterns {
                let g = globset::GlobBuilder::new(p)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| Error::Pattern {
                        root: root.to_owned(),
                        pattern: p.clone(),
                        reason: e.kind().to_string(),
                    })?;
                set.add(g);
            }
            set.build().map_err(|e| Error::Pattern {
                root: root.to_owned(),
                pattern: patterns.join(" "),
                reason: e.to_string(),
            })
        };
        let ignores = if b.gitignore {
            let mut found = Vec::new();
            // From the repository's top (the nearest ancestor with `.git`)
            // down to the root's parent: git applies all of them.
            let top = root
                .ancestors()
                .find(|a| b.fs.kind(&a.join(".git")).is_ok());
            if let Some(top) = top {
                let mut chain: Vec<&Path> = root
                    .ancestors()
                    .skip(1)
                    .take_while(|a| a.starts_with(top))
                    .collect();
                chain.reverse();
                for dir in chain {
                    if let Some(g) = load_gitignore(&*b.fs, dir)? {
                        found.push(g);
                    }
                }
            }
            Some(found)
        } else {
            None
        };
        Ok(Selection {
            include: if b.include.is_empty() {
                None
            } else {
                Some(globs(&b.include)?)
            },
            exclude: globs(&b.exclude)?,
            ignores,
            predicate: b.predicate.clone(),
            fs: b.fs.clone(),
        })
    }

    /// Whether `rel` (of `kind`, at `abs`) is dropped before `include`.
    fn dropped(&self, rel: &Path, abs: &Path, kind: Kind, ignores: &[Gitignore]) -> bool {
        if self.exclude.is_match(rel) {
            return true;
        }
        if self.ignores.is_some() {
            if kind == Kind::Directory && abs.file_name() == Some(".git".as_ref()) {
                return true;
            }
            // The deepest `.gitignore` with an opinion decides.
            for g in ignores.iter().rev() {
                let m = g.matched(abs, kind == Kind::Directory);
                if m.is_ignore() {
                    return true;
                }
                if m.is_whitelist() {
                    break;
                }
            }
        }
        if let Some(p) = &self.predicate {
            if !p(rel, kind) {
                return true;
            }
        }
        false
    }

    /// Encodes the root as a NAR into `w`.
    fn encode(&self, root: &Path, w: impl Write) -> Result<(), Error> {
        let mut nar = NarEncoder::new(w);
        let kind = self.fs.kind(root).map_err(read_err(root))?;
        let mut ignores = self.ignores.clone().unwrap_or_default();
        match kind {
            Kind::Directory => {
                nar.directory(None).map_err(|e| unstorable(root, e))?;
                self.encode_dir(&mut nar, root, Path::new(""), &mut ignores)?;
                nar.end_directory().map_err(|e| unstorable(root, e))?;
            }
            _ => self.encode_leaf(&mut nar, root, None, kind)?,
        }
        let mut w = nar.finish().map_err(|e| unstorable(root, e))?;
        w.flush().map_err(read_err(root))
    }

    /// Encodes what is kept of directory `abs` (with `include`, a
    /// directory is kept for what it holds).
    fn encode_dir<W: Write>(
        &self,
        nar: &mut NarEncoder<W>,
        abs: &Path,
        rel: &Path,
        ignores: &mut Vec<Gitignore>,
    ) -> Result<(), Error> {
        let pushed = self.enter(abs, ignores)?;
        let mut names = self.fs.read_dir(abs).map_err(read_err(abs))?;
        // NAR order: by the bytes of the name.
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let child = abs.join(&name);
            let child_rel = rel.join(&name);
            let kind = self.fs.kind(&child).map_err(|source| Error::Unstorable {
                path: child.clone(),
                reason: source.to_string(),
            })?;
            if self.dropped(&child_rel, &child, kind, ignores) {
                continue;
            }
            match kind {
                Kind::Directory => {
                    if self.include.is_some() && !self.keeps_any(&child, &child_rel, ignores)? {
                        continue;
                    }
                    nar.directory(Some(name.as_bytes()))
                        .map_err(|e| unstorable(&child, e))?;
                    self.encode_dir(nar, &child, &child_rel, ignores)?;
                    nar.end_directory().map_err(|e| unstorable(&child, e))?;
                }
                _ => {
                    if let Some(inc) = &self.include {
                        if !inc.is_match(&child_rel) {
                            continue;
                        }
                    }
                    self.encode_leaf(nar, &child, Some(name.as_bytes()), kind)?;
                }
            }
        }
        if pushed {
            ignores.pop();
        }
        Ok(())
    }

    /// Adds directory `abs`'s `.gitignore` (when ignoring as git does);
    /// returns whether there was one, to pop on leaving.
    fn enter(&self, abs: &Path, ignores: &mut Vec<Gitignore>) -> Result<bool, Error> {
        if self.ignores.is_none() {
            return Ok(false);
        }
        Ok(match load_gitignore(&*self.fs, abs)? {
            Some(g) => {
                ignores.push(g);
                true
            }
            None => false,
        })
    }

    /// Whether directory `abs` keeps any file under `include`.
    fn keeps_any(
        &self,
        abs: &Path,
        rel: &Path,
        ignores: &mut Vec<Gitignore>,
    ) -> Result<bool, Error> {
        let pushed = self.enter(abs, ignores)?;
        let mut found = false;
        for name in self.fs.read_dir(abs).map_err(read_err(abs))? {
            let child = abs.join(&name);
            let child_rel = rel.join(&name);
            let Ok(kind) = self.fs.kind(&child) else {
                continue;
            };
            if self.dropped(&child_rel, &child, kind, ignores) {
                continue;
            }
            found = match kind {
                Kind::Directory => self.keeps_any(&child, &child_rel, ignores)?,
                _ => self
                    .include
                    .as_ref()
                    .is_none_or(|inc| inc.is_match(&child_rel)),
            };
            if found {
                break;
            }
        }
        if pushed {
            ignores.pop();
        }
        Ok(found)
    }

    fn encode_leaf<W: Write>(
        &self,
        nar: &mut NarEncoder<W>,
        abs: &Path,
        name: Option<&[u8]>,
        kind: Kind,
    ) -> Result<(), Error> {
        match kind {
            Kind::File { executable, size } => {
                let mut r = self.fs.open(abs).map_err(read_err(abs))?;
                nar.file(name, executable, size, &mut r)
                    .map_err(|e| unstorable(abs, e))
            }
            Kind::Symlink => {
                let target = self.fs.read_link(abs).map_err(read_err(abs))?;
                nar.symlink(name, target.as_os_str().as_bytes())
                    .map_err(|e| unstorable(abs, e))
            }
            Kind::Directory => unreachable!("directories are walked"),
        }
    }
}

/// An I/O failure reading `path` of a source tree.
fn read_err(path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Source { path, source }
}

fn unstorable(path: &Path, e: bigtop_core::nar::EncodeError) -> Error {
    Error::Unstorable {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// The matcher of `dir/.gitignore`, if there is one.
fn load_gitignore(fs: &dyn SourceFs, dir: &Path) -> Result<Option<Gitignore>, Error> {
    let file = dir.join(".gitignore");
    if !matches!(fs.kind(&file), Ok(Kind::File { .. })) {
        return Ok(None);
    }
    let mut text = Vec::new();
    fs.open(&file)
        .and_then(|mut r| r.read_to_end(&mut text))
        .map_err(|source| Error::Source {
            path: file.clone(),
            source,
        })?;
    let mut b = GitignoreBuilder::new(dir);
    for line in String::from_utf8_lossy(&text).lines() {
        b.add_line(Some(file.clone()), line)
            .map_err(|e| Error::Pattern {
                root: file.clone(),
                pattern: line.to_owned(),
                reason: e.to_string(),
            })?;
    }
    b.build().map(Some).map_err(|e| Error::Pattern {
        root: file.clone(),
        pattern: String::new(),
        reason: e.to_string(),
    })
}

/// A content-addressed source: a local tree, filtered, named by its NAR
/// hash. Cheap to clone; equal when the store paths are.
#[derive(Clone)]
pub struct Source(Arc<SourceNode>);

struct SourceNode {
    root: PathBuf,
    path: StorePath,
    nar_hash: Hash,
    nar_size: u64,
    store_dir: StoreDir,
    selection: Selection,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({} from {})", self.0.path, self.0.root.display())
    }
}

impl PartialEq for Source {
    fn eq(&self, other: &Self) -> bool {
        self.0.path == other.0.path
    }
}

impl Eq for Source {}

impl Source {
    /// Its store path.
    pub fn path(&self) -> &StorePath {
        &self.0.path
    }

    /// Its full store path.
    pub fn full_path(&self) -> String {
        self.0.store_dir.full(&self.0.path)
    }

    /// Where it is read from.
    pub fn root(&self) -> &Path {
        &self.0.root
    }

    /// The blake3 hash of its NAR.
    pub fn nar_hash(&self) -> &Hash {
        &self.0.nar_hash
    }

    /// The size of its NAR.
    pub fn nar_size(&self) -> u64 {
        self.0.nar_size
    }

    /// Writes its NAR (what was hashed, read again) to `w`, for a store to
    /// add. An edit since evaluation is an error, not a silently different
    /// path.
    pub fn write_nar(&self, w: impl Write) -> Result<(), Error> {
        let mut check = HashingWriter::new(w, HashAlgo::Blake3);
        self.0.selection.encode(&self.0.root, &mut check)?;
        if check.finish().0 != self.0.nar_hash {
            return Err(Error::Source {
                path: self.0.root.clone(),
                source: io::Error::other("it changed since it was evaluated"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_root_is_named_after_its_last_component() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), Path::new("/a/c/d"));
    }
}
