//! Build directories: each worker's private directory under
//! `<state>/builds`, lent to one build at a time and emptied in between.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::FailureKind;
use crate::fs::remove_tree;
use crate::store::Store;

static BUILD_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A worker's build directory: made on its first process build, emptied
/// after each (so that the next build finds it as new), removed with the
/// worker. Making and removing a directory per build costs a disk-backed
/// state dir a block allocation and a discard each time.
#[derive(Default)]
pub(crate) struct BuildDirSlot(Option<PathBuf>);

impl BuildDirSlot {
    /// The directory for one build; emptied again when the loan ends.
    pub(crate) fn lend(&mut self, store: &Store) -> Result<LentDir<'_>, FailureKind> {
        if self.0.is_none() {
            let base = private_builds_dir(store)
                .map_err(|e| FailureKind::Setup(crate::error::Chain(&e).to_string()))?;
            let n = BUILD_COUNTER.fetch_add(1, Ordering::Relaxed);
            // The handle's id first: GC removes the directories of dead ones.
            let dir = base.join(format!("{}-{n}", store.process));
            {
                use std::os::unix::fs::DirBuilderExt;
                fs::DirBuilder::new().mode(0o700).create(&dir)
            }
            .map_err(|e| {
                FailureKind::Setup(format!("cannot create build dir `{}`: {e}", dir.display()))
            })?;
            self.0 = Some(dir);
        }
        Ok(LentDir(self))
    }
}

/// `<state>/builds`, made if missing, and mode 0700: a builder can open
/// its own build dir to everyone, and must not thereby open it to anyone.
pub(crate) fn private_builds_dir(store: &Store) -> Result<PathBuf, crate::error::Error> {
    use std::os::unix::fs::PermissionsExt;
    let dir = store.state_dir().join("builds");
    let err = crate::error::io_err("make private", dir.clone());
    fs::create_dir_all(&dir).map_err(crate::error::io_err("create", &dir))?;
    let meta = fs::symlink_metadata(&dir).map_err(crate::error::io_err("read", &dir))?;
    if !meta.is_dir() {
        return Err(err(std::io::Error::other("not a directory")));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(dir)
}

impl Drop for BuildDirSlot {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            // Builders may leave read-only directories: the store's removal
            // walk makes each writable before emptying it.
            let _ = remove_tree(&dir);
        }
    }
}

/// A build directory lent to one build.
pub(crate) struct LentDir<'a>(&'a mut BuildDirSlot);

impl LentDir<'_> {
    pub(crate) fn path(&self) -> &Path {
        self.0 .0.as_deref().expect("a lent build dir exists")
    }
}

impl Drop for LentDir<'_> {
    fn drop(&mut self) {
        let Some(dir) = &self.0 .0 else { return };
        // The builder may have changed the directory's mode as well as its
        // contents; anything that cannot be undone costs a new directory.
        let emptied = fs::read_dir(dir).and_then(|entries| {
            for e in entries {
                remove_tree(&e?.path())?;
            }
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        });
        if emptied.is_err() {
            let _ = remove_tree(dir);
            self.0 .0 = None;
        }
    }
}
