//! /etc: the toplevel's `etc/` behind one symlink, and the managed files
//! that point into it.
//!
//! `ROOT/etc/static` points at the active toplevel's `etc/`, so one
//! rename switches the contents of every linked file at once. Each
//! managed file is a symlink to `/etc/static/<path>`, or, when it has a
//! mode or an owner, a copy written under a temporary name and renamed.
//! A record of the managed files (`etc.json` in the activation state)
//! says what bigtop made: a stale one is removed, a file bigtop did not
//! make is never touched, and one in the way of a declared file is moved
//! to `<path>.bigtop-backup` rather than overwritten.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use bigtop_core::manifest::{EtcEntry, Manifest};
use bigtop_core::{Hash, HashAlgo};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::fs::{
    create_dirs, entry, io_err, read_optional, replace_symlink, write_atomic, write_atomic_with,
    Entry, IoError,
};

/// What bigtop made at one path of /etc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Made {
    /// A symlink to `/etc/static/<path>`.
    Link,
    /// A copy, with the blake3 hash of its contents.
    Copy {
        /// The hash of what was written.
        hash: String,
    },
}

/// The record of managed files, by path below /etc.
pub type Record = BTreeMap<String, Made>;

/// Who owns the copied files: the machine's users and groups, which a
/// user namespace may number differently on the host.
pub trait Owners {
    /// The uid and gid of `user` and `group` as the host sees them.
    fn host_ids(&self, user: &str, group: &str) -> Result<(u32, u32), Error>;
    /// Gives `file` (a path on the host) to `user` and `group`.
    fn chown(&self, file: &Path, user: &str, group: &str) -> Result<(), Error>;
}

/// The /etc of a machine.
#[derive(Debug)]
pub struct Etc {
    /// `ROOT/etc`.
    dir: PathBuf,
    /// The record's file.
    record_file: PathBuf,
    /// The logical store dir and where it is on the host, to read what a
    /// `source` entry links to.
    store: Option<(PathBuf, PathBuf)>,
}

/// A file that was in the way, and where it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backup {
    /// Its path below /etc.
    pub path: String,
    /// Where it is now, below /etc.
    pub moved_to: String,
}

impl Etc {
    /// The /etc at `dir` (`ROOT/etc`), with its record in `state_dir`.
    pub fn new(dir: PathBuf, state_dir: &Path) -> Etc {
        Etc {
            dir,
            record_file: state_dir.join("etc.json"),
            store: None,
        }
    }

    /// The same, reading store paths that `source` entries name from
    /// `physical`, where the logical store dir `logical` is on the host.
    pub fn with_store(mut self, logical: PathBuf, physical: PathBuf) -> Etc {
        self.store = Some((logical, physical));
        self
    }

    /// The declared contents of `path`: the toplevel's file, or what its
    /// symlink (a `source` entry) points at. A link into the logical
    /// store is read from the machine's store on the host.
    fn read_source(&self, static_host: &Path, path: &str) -> Result<Vec<u8>, IoError> {
        let mut file = static_host.join(path);
        for _ in 0..8 {
            let Ok(target) = std::fs::read_link(&file) else {
                break;
            };
            let target = file.parent().map_or(target.clone(), |p| p.join(&target));
            file = match &self.store {
                Some((logical, physical)) => match target.strip_prefix(logical) {
                    Ok(rest) => physical.join(rest),
                    Err(_) => target,
                },
                None => target,
            };
        }
        fs::read(&file).map_err(io_err("read", &file))
    }

    /// The managed files, as last recorded.
    pub fn record(&self) -> Result<Record, Error> {
        match read_optional(&self.record_file)? {
            None => Ok(Record::new()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Record {
                path: self.record_file.clone(),
                reason: e.to_string(),
            }),
        }
    }

    fn write_record(&self, record: &Record) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Record {
            path: self.record_file.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.record_file, &bytes, 0o644)?;
        Ok(())
    }

    /// For the plan: the declared paths where a file exists that bigtop
    /// did not make, and the managed paths changed or removed by hand.
    pub fn observe(&self, new: &Manifest) -> Result<(BTreeSet<String>, BTreeSet<String>), Error> {
        let record = self.record()?;
        let mut unmanaged = BTreeSet::new();
        for path in new.etc.keys() {
            let state = self.state_of(path)?;
            // A link into /etc/static is ours even if a crash kept it
            // out of the record.
            if !record.contains_key(path) && !matches!(state, State::Missing | State::OurLink) {
                unmanaged.insert(path.clone());
            }
        }
        Ok((unmanaged, self.drifted(&record)?))
    }

    /// The managed paths whose file is no longer what bigtop made.
    pub fn drifted(&self, record: &Record) -> Result<BTreeSet<String>, Error> {
        let mut out = BTreeSet::new();
        for (path, made) in record {
            if !self.is_as_made(path, made)? {
                out.insert(path.clone());
            }
        }
        Ok(out)
    }

    fn is_as_made(&self, path: &str, made: &Made) -> Result<bool, Error> {
        Ok(match (made, self.state_of(path)?) {
            (Made::Link, State::OurLink) => true,
            (Made::Copy { hash }, State::File) => {
                let bytes = read_optional(&self.dir.join(path))?.unwrap_or_default();
                &content_hash(&bytes) == hash
            }
            _ => false,
        })
    }

    fn state_of(&self, path: &str) -> Result<State, Error> {
        Ok(match entry(&self.dir.join(path))? {
            Entry::Missing => State::Missing,
            Entry::Symlink(target) if target == static_target(path) => State::OurLink,
            Entry::Symlink(_) => State::OtherLink,
            Entry::File { .. } => State::File,
            Entry::Dir | Entry::Other => State::Other,
        })
    }

    /// Makes /etc what `new` declares, the toplevel's `etc/` being at
    /// `static_dir` as the machine sees it (`/bigtop/store/…/etc`) and at
    /// `static_host` on the host. `owner` gives the uid and gid of a
    /// user and group name (accounts are applied before /etc). Returns
    /// the files moved aside.
    pub fn apply(
        &self,
        new: &Manifest,
        static_dir: &Path,
        static_host: &Path,
        owner: &dyn Owners,
    ) -> Result<Vec<Backup>, Error> {
        create_dirs(&self.dir)?;
        let old = self.record()?;
        // Record what may be ours before making it: a crash part way
        // leaves a record that covers every file made so far, so the next
        // run removes or keeps them instead of taking them for a user's.
        let mut union = old.clone();
        for (path, e) in &new.etc {
            let made = if e.is_copied() {
                Made::Copy {
                    hash: content_hash(&self.read_source(static_host, path)?),
                }
            } else {
                Made::Link
            };
            union.entry(path.clone()).or_insert(made);
        }
        if union != old {
            self.write_record(&union)?;
        }
        replace_symlink(static_dir, &self.dir.join("static"))?;

        let mut backups = Vec::new();
        let mut record = Record::new();
        for (path, e) in &new.etc {
            let made = self.apply_one(path, e, static_host, old.get(path), owner, &mut backups)?;
            record.insert(path.clone(), made);
        }
        for (path, made) in &old {
            if new.etc.contains_key(path) {
                continue;
            }
            match self.state_of(path)? {
                State::Missing => {}
                _ if self.is_as_made(path, made)? => {
                    crate::fs::remove_file(&self.dir.join(path))?;
                    self.remove_empty_parents(path);
                }
                // Changed by hand since: kept, under another name.
                _ => backups.push(self.move_aside(path)?),
            }
        }
        self.write_record(&record)?;
        Ok(backups)
    }

    fn apply_one(
        &self,
        path: &str,
        e: &EtcEntry,
        static_host: &Path,
        was: Option<&Made>,
        owner: &dyn Owners,
        backups: &mut Vec<Backup>,
    ) -> Result<Made, Error> {
        let file = self.dir.join(path);
        if let Some(parent) = file.parent() {
            create_dirs(parent)?;
        }
        let state = self.state_of(path)?;
        // In the way: a file bigtop did not make, or one it made and
        // someone changed since.
        let ours = match was {
            Some(m) => self.is_as_made(path, m)?,
            None => state == State::OurLink,
        };
        if state != State::Missing && !ours {
            backups.push(self.move_aside(path)?);
        }
        if e.is_copied() {
            let bytes = self.read_source(static_host, path)?;
            let mode = u32::from_str_radix(&e.mode, 8).map_err(|_| Error::Record {
                path: file.clone(),
                reason: format!("mode `{}` is not octal", e.mode),
            })?;
            let (uid, gid) = owner.host_ids(&e.user, &e.group)?;
            let hash = content_hash(&bytes);
            let owned = entry(&file)? == Entry::File { uid, gid, mode };
            if was == Some(&Made::Copy { hash: hash.clone() }) && ours && owned {
                return Ok(Made::Copy { hash });
            }
            // Owner and mode are set before the rename: the copy never
            // appears with the wrong ones.
            write_atomic_with(&file, &bytes, mode, |tmp| {
                owner.chown(tmp, &e.user, &e.group)
            })?;
            Ok(Made::Copy { hash })
        } else {
            if self.state_of(path)? != State::OurLink {
                replace_symlink(&static_target(path), &file)?;
            }
            Ok(Made::Link)
        }
    }

    /// Moves the file at `path` to `<path>.bigtop-backup` (or `-1`, `-2`,
    /// … if that is taken).
    fn move_aside(&self, path: &str) -> Result<Backup, Error> {
        let from = self.dir.join(path);
        let mut moved_to = format!("{path}.bigtop-backup");
        let mut n = 0;
        while entry(&self.dir.join(&moved_to))? != Entry::Missing {
            n += 1;
            moved_to = format!("{path}.bigtop-backup-{n}");
        }
        crate::fs::rename(&from, &self.dir.join(&moved_to))?;
        Ok(Backup {
            path: path.to_owned(),
            moved_to,
        })
    }

    fn remove_empty_parents(&self, path: &str) {
        let mut p = Path::new(path).parent();
        while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
            if !crate::fs::remove_empty_dir(&self.dir.join(dir)) {
                break;
            }
            p = dir.parent();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Missing,
    OurLink,
    OtherLink,
    File,
    Other,
}

fn static_target(path: &str) -> PathBuf {
    Path::new("/etc/static").join(path)
}

fn content_hash(bytes: &[u8]) -> String {
    Hash::digest(HashAlgo::Blake3, bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    struct Fixture {
        _dir: tempfile::TempDir,
        etc: Etc,
        etc_dir: PathBuf,
        static_host: PathBuf,
    }

    fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let etc_dir = dir.path().join("etc");
        let static_host = dir.path().join("toplevel/etc");
        fs::create_dir_all(&static_host)?;
        let etc = Etc::new(etc_dir.clone(), dir.path());
        Ok(Fixture {
            _dir: dir,
            etc,
            etc_dir,
            static_host,
        })
    }

    fn entry(mode: &str) -> EtcEntry {
        EtcEntry {
            mode: mode.into(),
            user: "root".into(),
            group: "root".into(),
            hash: Some("h".into()),
            source: None,
        }
    }

    /// Every file belongs to whoever runs the test.
    struct Me;

    impl Owners for Me {
        fn host_ids(&self, _: &str, _: &str) -> Result<(u32, u32), Error> {
            Ok((
                rustix::process::getuid().as_raw(),
                rustix::process::getgid().as_raw(),
            ))
        }
        fn chown(&self, file: &Path, user: &str, group: &str) -> Result<(), Error> {
            let (u, g) = self.host_ids(user, group)?;
            crate::fs::lchown(file, u, g).map_err(Error::from)
        }
    }

    #[test]
    fn files_are_linked_or_copied_and_stale_ones_removed() -> TestResult {
        let f = fixture()?;
        fs::create_dir_all(f.static_host.join("ssh"))?;
        fs::write(f.static_host.join("ssh/sshd_config"), "Port 22\n")?;
        fs::write(f.static_host.join("secret"), "s3cret\n")?;
        let mut m = Manifest::new("web1");
        m.etc.insert("ssh/sshd_config".into(), entry("0444"));
        m.etc.insert("secret".into(), entry("0600"));
        let static_dir = Path::new("/bigtop/store/x-system/etc");
        assert!(f.etc.apply(&m, static_dir, &f.static_host, &Me)?.is_empty());
        assert_eq!(
            fs::read_link(f.etc_dir.join("ssh/sshd_config"))?,
            Path::new("/etc/static/ssh/sshd_config")
        );
        assert_eq!(fs::read_link(f.etc_dir.join("static"))?, static_dir);
        let secret = f.etc_dir.join("secret");
        assert_eq!(fs::read_to_string(&secret)?, "s3cret\n");
        assert_eq!(fs::metadata(&secret)?.permissions().mode() & 0o777, 0o600);

        // An unmanaged file is never touched; a dropped entry goes.
        fs::write(f.etc_dir.join("hosts"), "127.0.0.1 localhost\n")?;
        m.etc.remove("ssh/sshd_config");
        f.etc.apply(&m, static_dir, &f.static_host, &Me)?;
        assert!(
            !f.etc_dir.join("ssh").exists(),
            "an emptied directory goes too"
        );
        assert_eq!(
            fs::read_to_string(f.etc_dir.join("hosts"))?,
            "127.0.0.1 localhost\n"
        );
        assert_eq!(f.etc.record()?.len(), 1);
        Ok(())
    }

    #[test]
    fn a_file_in_the_way_is_moved_aside_and_drift_is_seen() -> TestResult {
        let f = fixture()?;
        fs::write(f.static_host.join("motd"), "welcome\n")?;
        fs::create_dir_all(&f.etc_dir)?;
        fs::write(f.etc_dir.join("motd"), "mine\n")?;
        let mut m = Manifest::new("web1");
        m.etc.insert("motd".into(), entry("0444"));
        let (unmanaged, drifted) = f.etc.observe(&m)?;
        assert_eq!(unmanaged, BTreeSet::from(["motd".to_owned()]));
        assert!(drifted.is_empty());
        let static_dir = Path::new("/bigtop/store/x-system/etc");
        let backups = f.etc.apply(&m, static_dir, &f.static_host, &Me)?;
        assert_eq!(backups[0].moved_to, "motd.bigtop-backup");
        assert_eq!(
            fs::read_to_string(f.etc_dir.join("motd.bigtop-backup"))?,
            "mine\n"
        );

        // Edited by hand: seen as drift, and kept aside when replaced.
        fs::remove_file(f.etc_dir.join("motd"))?;
        fs::write(f.etc_dir.join("motd"), "edited\n")?;
        let (_, drifted) = f.etc.observe(&m)?;
        assert_eq!(drifted, BTreeSet::from(["motd".to_owned()]));
        let backups = f.etc.apply(&m, static_dir, &f.static_host, &Me)?;
        assert_eq!(backups[0].moved_to, "motd.bigtop-backup-1");
        assert!(f.etc.drifted(&f.etc.record()?)?.is_empty());
        Ok(())
    }
}
