//! A store for tests whose logical dir is its physical one, so that what
//! is built runs here.

use std::error::Error;
use std::path::Path;

use bigtop::core::StoreDir;
use bigtop::eval::drv::Platform;
use bigtop::store::Store;

/// A store in `tmp`, and the platform that evaluates for it.
pub fn direct(tmp: &Path) -> Result<(Store, Platform), Box<dyn Error>> {
    let dir = StoreDir::new(&tmp.join("store").to_string_lossy())?;
    let store = Store::builder()
        .store_dir(dir.clone())
        .state_dir(tmp.join("var"))
        .open()?;
    Ok((
        store,
        Platform {
            store_dir: dir,
            ..Platform::default()
        },
    ))
}
