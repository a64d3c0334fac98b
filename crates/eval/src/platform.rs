//! The platform evaluation is for: the store dir and the system, part of
//! every path's identity. Its own module because sources, derivations and
//! package sets all take one, and none of them may depend on the others
//! to get it.

use bigtop_core::StoreDir;

/// Where evaluated paths live and which platform builds them: part of
/// every path's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// The logical store dir. Default: `/bigtop/store`.
    pub store_dir: StoreDir,
    /// The system builds run on, e.g. `x86_64-linux`. Default: this host's.
    pub system: String,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            store_dir: StoreDir::default(),
            system: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        }
    }
}
