//! Integration tests of the local store, as one binary. Crash and
//! concurrency tests run this same binary again as child processes (the
//! `child_*` entry points, ignored unless called so).

mod basics;
mod cache;
mod cache_faults;
mod crash;
mod gc;
mod hostile;
mod memory;
mod remote;

use std::collections::BTreeSet;
use std::error::Error;

use bigtop_store::core::StorePath;
use bigtop_store::Store;

pub type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

/// Adds a text path whose contents mention each of `refs`, as a build
/// output would.
pub fn text(store: &Store, name: &str, body: &str, refs: &[&StorePath]) -> Result<StorePath> {
    let mut contents = body.to_owned();
    for r in refs {
        contents.push('\n');
        contents.push_str(&store.store_dir().full(r));
    }
    let refs: BTreeSet<StorePath> = refs.iter().map(|r| (*r).clone()).collect();
    Ok(store.add_text(name, contents.as_bytes(), &refs)?)
}

/// Every registered path exists, and refers only to registered paths.
pub fn assert_consistent(store: &Store) -> Result {
    let valid = store.all_valid_paths()?;
    for p in &valid {
        assert!(
            store.physical(p).symlink_metadata().is_ok(),
            "registered path {p} is missing"
        );
        for r in store.references(p)? {
            assert!(valid.contains(&r), "{p} refers to unregistered {r}");
        }
    }
    Ok(())
}

/// Makes `dir` (which must not exist) holding `depth` directories named
/// `dd`, each in the one before, with a file `leaf` in the last; read-only,
/// as canonicalization leaves a tree. By descriptors: at 2,000 levels the
/// path is three times `PATH_MAX`.
pub fn deep_tree(dir: &std::path::Path, depth: usize) -> Result {
    use rustix::fs::{chmodat, mkdirat, openat, AtFlags, Mode, OFlags};
    std::fs::create_dir(dir)?;
    let open = |at: &std::os::fd::OwnedFd| {
        openat(
            at,
            "dd",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let mut fds = Vec::new();
    let mut here: std::os::fd::OwnedFd = std::fs::File::open(dir)?.into();
    for _ in 0..depth {
        mkdirat(&here, "dd", Mode::from_raw_mode(0o755))?;
        let next = open(&here)?;
        // Read-only from the bottom up, below: keep the parent for that,
        // a few at a time.
        fds.push(here);
        if fds.len() > 64 {
            let parent = fds.remove(0);
            chmodat(&parent, "dd", Mode::from_raw_mode(0o555), AtFlags::empty())?;
        }
        here = next;
    }
    let leaf = openat(
        &here,
        "leaf",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o444),
    )?;
    drop(leaf);
    for parent in fds {
        chmodat(&parent, "dd", Mode::from_raw_mode(0o555), AtFlags::empty())?;
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o555))?;
    Ok(())
}

/// Removes a tree with the system's tools, whatever its depth: cleanup
/// that does not rest on the code under test.
pub fn force_remove(path: &std::path::Path) {
    let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
        let _ = std::process::Command::new(cmd).args(args).status();
    };
    run("chmod", &["-R".as_ref(), "u+w".as_ref(), path.as_os_str()]);
    run("rm", &["-rf".as_ref(), path.as_os_str()]);
}

/// Removes its tree with [`force_remove`] when dropped: a temporary
/// directory's own removal gives up on trees thousands deep.
pub struct RemoveOnDrop(pub std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        force_remove(&self.0);
    }
}
