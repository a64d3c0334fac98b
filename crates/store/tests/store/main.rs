//! Integration tests of the local store, as one binary. Crash and
//! concurrency tests run this same binary again as child processes (the
//! `child_*` entry points, ignored unless called so).

mod basics;
mod crash;
mod gc;
mod hostile;
mod memory;

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
