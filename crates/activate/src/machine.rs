//! A machine: a root directory, its store, and the one lock that lets a
//! single activation run on it at a time.

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bigtop_core::manifest::{Manifest, FORMAT_VERSION};
use bigtop_core::StorePath;
use bigtop_store::Store;
use rustix::fs::FlockOperation;

use crate::error::Error;
use crate::fs::{create_dirs, io_err};

/// A machine, by its root directory: `/` on a real machine, any directory
/// for a container or a test.
///
/// Everything activation reads and writes is under the root: the store
/// (the chroot store rooted there: paths in `ROOT/bigtop/store`, state in
/// `ROOT/bigtop/var`), the profile, `ROOT/etc`, `ROOT/run` and `ROOT/var`.
#[derive(Debug)]
pub struct Machine {
    root: PathBuf,
    store: Store,
    backend: BackendKind,
}

/// Which service manager runs a machine's services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// s6: the toplevel's `s6/` directories in `ROOT/run/service`.
    #[default]
    S6,
    /// systemd: the toplevel's units in `ROOT/etc/systemd/system`,
    /// driven with `systemctl` (a host booted with systemd, root `/`).
    Systemd,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "s6" => Ok(BackendKind::S6),
            "systemd" => Ok(BackendKind::Systemd),
            _ => Err(format!("backend `{s}` is not one of `s6`, `systemd`")),
        }
    }
}

/// A built system in a machine's store: its toplevel and its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    /// The toplevel store path.
    pub toplevel: StorePath,
    /// Its `manifest.json`.
    pub manifest: Manifest,
}

impl Machine {
    /// Opens the machine rooted at `root`, creating its store if needed.
    pub fn open(root: impl AsRef<Path>) -> Result<Machine, Error> {
        // Without symlinks: every write under the root refuses to follow
        // one (see `fs`), so the root's own path must have none.
        create_dirs(root.as_ref()).or_else(|_| {
            std::fs::create_dir_all(root.as_ref()).map_err(io_err("create", root.as_ref()))
        })?;
        let root =
            std::fs::canonicalize(root.as_ref()).map_err(io_err("resolve", root.as_ref()))?;
        let store = Store::builder()
            .chroot(&root)
            .open()
            .map_err(|source| Error::Store {
                root: root.clone(),
                source: Box::new(source),
            })?;
        let machine = Machine {
            root,
            store,
            backend: BackendKind::default(),
        };
        create_dirs(&machine.state_dir())?;
        Ok(machine)
    }

    /// The same machine with its services run by `backend`.
    pub fn with_backend(mut self, backend: BackendKind) -> Machine {
        self.backend = backend;
        self
    }

    /// Which service manager runs its services.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The machine's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `ROOT/<path>`, for an absolute path as the machine sees it.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// Where activation keeps its records: the lock, the journal, the
    /// managed /etc files and the accounts.
    pub fn state_dir(&self) -> PathBuf {
        self.store.state_dir().join("activate")
    }

    /// The folder of the system profile's generation links.
    pub fn profiles_dir(&self) -> PathBuf {
        self.store.state_dir().join("profiles")
    }

    /// Where a store path lives on the host.
    pub fn physical(&self, path: &StorePath) -> PathBuf {
        self.store.physical(path)
    }

    /// Reads the system whose toplevel is `toplevel` (a store path, as the
    /// machine sees it, or a path on the host into the machine's store)
    /// from the machine's store. It must be valid there: activation never
    /// builds or fetches.
    pub fn system(&self, toplevel: &str) -> Result<System, Error> {
        let path = self
            .store
            .parse_user_path(toplevel)
            .or_else(|_| {
                // A link on the host into the store (`result`), or a path
                // under the physical store dir.
                let resolved = fs::canonicalize(toplevel).map_err(|e| e.to_string())?;
                let rel = resolved
                    .strip_prefix(self.store.root())
                    .map_err(|_| "not in the machine's store".to_owned())?;
                let first = rel.components().next().ok_or("the store dir itself")?;
                let logical = format!(
                    "{}/{}",
                    self.store.store_dir().as_str(),
                    first.as_os_str().to_string_lossy()
                );
                self.store
                    .parse_user_path(&logical)
                    .map_err(|e| e.to_string())
            })
            .map_err(|reason| Error::NotAToplevel {
                toplevel: toplevel.to_owned(),
                reason: reason.to_string(),
            })?;
        self.system_at(&path)
    }

    /// Reads the system whose toplevel is the store path `path`.
    pub fn system_at(&self, path: &StorePath) -> Result<System, Error> {
        let shown = self.store.store_dir().full(path);
        let valid = self.store.is_valid(path).map_err(|source| Error::Store {
            root: self.root.clone(),
            source: Box::new(source),
        })?;
        if !valid {
            return Err(Error::NotAToplevel {
                toplevel: shown,
                reason: "not valid in the machine's store (copy its closure there first)".into(),
            });
        }
        let file = self.physical(path).join("manifest.json");
        let text = fs::read_to_string(&file).map_err(|e| Error::NotAToplevel {
            toplevel: shown.clone(),
            reason: format!("cannot read its manifest.json: {e}"),
        })?;
        let manifest = parse_manifest(&text).map_err(|reason| Error::Manifest {
            toplevel: shown,
            reason,
        })?;
        Ok(System {
            toplevel: path.clone(),
            manifest,
        })
    }

    /// Takes the machine's activation lock: waits for a holder to finish
    /// when `wait`, else fails naming it.
    pub fn lock(&self, what: &str, wait: Option<Duration>) -> Result<ActivationLock, Error> {
        let path = self.state_dir().join("lock");
        let mut file = crate::fs::open_lock_file(&path)?;
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    if deadline.is_some_and(|d| Instant::now() < d) {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    return Err(Error::Locked {
                        root: self.root.clone(),
                        holder: holder.trim().to_owned(),
                    });
                }
                Err(e) => return Err(io_err("lock", &path)(e.into()).into()),
            }
        }
        // Who holds it, for the message a second activation shows.
        let me = format!(
            "`{what}` (pid {} on {}, since {})",
            std::process::id(),
            hostname(),
            crate::time::rfc3339(std::time::SystemTime::now())
        );
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(me.as_bytes()));
        written.map_err(io_err("write", &path))?;
        Ok(ActivationLock { _file: file })
    }
}

/// Held while an activation runs on a machine; released when dropped (or
/// when its process dies, however it dies).
#[derive(Debug)]
pub struct ActivationLock {
    _file: fs::File,
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Parses a manifest, refusing a format newer than this bigtop reads
/// before reading any of its fields.
pub fn parse_manifest(text: &str) -> Result<Manifest, String> {
    #[derive(serde::Deserialize)]
    struct Version {
        version: u32,
    }
    let v: Version = serde_json::from_str(text).map_err(|e| format!("no format version: {e}"))?;
    if v.version > FORMAT_VERSION {
        return Err(format!(
            "format version {} is newer than the {FORMAT_VERSION} this bigtop reads; activate it with a newer bigtop",
            v.version
        ));
    }
    let m: Manifest = serde_json::from_str(text).map_err(|e| e.to_string())?;
    // Names become paths on the machine: the evaluator checks them, and
    // so does the engine, which must not trust a manifest it did not
    // make.
    let plain = |n: &str| !n.is_empty() && !n.starts_with('.') && !n.contains(['/', '\0']);
    for name in m.services.keys().chain(m.activation.steps.keys()) {
        if !plain(name) {
            return Err(format!(
                "`{}` cannot name a service or step",
                name.escape_debug()
            ));
        }
    }
    for path in m.etc.keys() {
        let ok = !path.starts_with('/')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        if !ok {
            return Err(format!(
                "`etc.{}` is not a path below /etc",
                path.escape_debug()
            ));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_manifest_format_is_refused_by_its_version() {
        let text = format!(
            r#"{{"version": {}, "name": "web1", "services": {{"x": "a shape we do not know"}}}}"#,
            FORMAT_VERSION + 1
        );
        let e = parse_manifest(&text).unwrap_err();
        assert!(e.contains("newer than the 1"), "{e}");
        assert!(parse_manifest(r#"{"name": "x"}"#)
            .unwrap_err()
            .contains("no format version"));
        let ok = parse_manifest(r#"{"version": 1, "name": "web1"}"#).unwrap();
        assert_eq!(ok.name, "web1");
        let escape = r#"{"version": 1, "name": "x", "etc": {"../../root/.ssh/authorized_keys": {"mode": "0444", "user": "root", "group": "root", "hash": "h"}}}"#;
        assert!(parse_manifest(escape)
            .unwrap_err()
            .contains("not a path below /etc"));
    }
}
