//! The system profile: numbered generations, each a toplevel kept alive as
//! a root of the machine's store, and the one the machine boots into.
//!
//! As Nix lays out profiles: `ROOT/bigtop/var/profiles/system-N-link`
//! points at generation N's toplevel (its logical store path, so the link
//! reads the same inside the machine), and `profiles/system` points at
//! the generation activated at boot. Each generation is also the store's
//! direct root `system-N`, so collecting garbage never takes a toplevel a
//! generation names. What runs now is `ROOT/run/current-system`; what the
//! machine booted, `ROOT/run/booted-system`.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bigtop_core::StorePath;
use serde::Serialize;

use crate::error::Error;
use crate::fs::{create_dirs, io_err, replace_symlink, sync_parent};
use crate::machine::Machine;

/// A generation of the system profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Its number: generations are numbered from 1, never reused.
    pub number: u64,
    /// When it was made.
    pub created: SystemTime,
    /// Its toplevel.
    pub toplevel: StorePath,
}

/// A generation as `generations` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationInfo {
    /// Its number.
    pub number: u64,
    /// When it was made, RFC 3339.
    pub date: String,
    /// Its toplevel (the logical store path).
    pub toplevel: String,
    /// The system's name, from its manifest.
    pub name: Option<String>,
    /// The release it was built from, when its manifest names one.
    pub release: Option<String>,
    /// It is what runs now (`/run/current-system`).
    pub current: bool,
    /// It is what the machine booted (`/run/booted-system`).
    pub booted: bool,
    /// It is the profile's generation, activated at the next boot.
    pub default: bool,
}

/// Which generations `delete-generations` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// All but the newest N.
    Newest(u64),
    /// Those made more than this long ago.
    YoungerThan(Duration),
}

impl Machine {
    /// Every generation, oldest first.
    pub fn generations(&self) -> Result<Vec<Generation>, Error> {
        let dir = self.profiles_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &dir)(e).into()),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read", &dir))?;
            let name = entry.file_name();
            let Some(number) = name.to_str().and_then(link_number) else {
                continue;
            };
            let link = entry.path();
            let Some(toplevel) = self.link_target(&link)? else {
                continue;
            };
            let created = fs::symlink_metadata(&link)
                .and_then(|m| m.modified())
                .map_err(io_err("read", &link))?;
            out.push(Generation {
                number,
                created,
                toplevel,
            });
        }
        out.sort_by_key(|g| g.number);
        Ok(out)
    }

    /// The generation the profile points at: the one activated at boot.
    pub fn default_generation(&self) -> Result<Option<u64>, Error> {
        let link = self.profiles_dir().join("system");
        let target = match fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &link)(e).into()),
        };
        Ok(target.to_str().and_then(link_number))
    }

    /// Generation `number`, if it exists.
    pub fn generation(&self, number: u64) -> Result<Option<Generation>, Error> {
        Ok(self.generations()?.into_iter().find(|g| g.number == number))
    }

    /// Adds `toplevel` as a new generation and returns its number; if the
    /// newest generation already is `toplevel`, returns that one instead
    /// (switching to the same system twice makes one generation). Does
    /// not change which one boots.
    pub fn add_generation(&self, toplevel: &StorePath) -> Result<u64, Error> {
        let existing = self.generations()?;
        if let Some(last) = existing.last() {
            if &last.toplevel == toplevel {
                return Ok(last.number);
            }
        }
        let number = existing.last().map_or(1, |g| g.number + 1);
        // The root first: a crash between the two leaves a root without a
        // generation (a leak `delete-generations` clears), never a
        // generation whose toplevel a collector may take.
        self.store()
            .add_root(&format!("system-{number}"), toplevel)
            .map_err(|source| Error::Store {
                root: self.root().to_owned(),
                source: Box::new(source),
            })?;
        let dir = self.profiles_dir();
        create_dirs(&dir)?;
        let target = self.store().store_dir().full(toplevel);
        replace_symlink(
            Path::new(&target),
            &dir.join(format!("system-{number}-link")),
        )?;
        Ok(number)
    }

    /// Makes generation `number` the one activated at boot.
    pub fn set_default_generation(&self, number: u64) -> Result<(), Error> {
        if self.generation(number)?.is_none() {
            return Err(Error::NoGeneration {
                root: self.root().to_owned(),
                number,
            });
        }
        replace_symlink(
            Path::new(&format!("system-{number}-link")),
            &self.profiles_dir().join("system"),
        )?;
        Ok(())
    }

    /// Deletes the generations `keep` does not keep, never the profile's
    /// nor the running one; returns the numbers deleted. Their toplevels
    /// stop being roots: the next collection may take them.
    pub fn delete_generations(&self, keep: Keep) -> Result<Vec<u64>, Error> {
        // Not while an activation picks its generation.
        let _lock = self.lock("delete-generations", Some(Duration::from_secs(600)))?;
        let all = self.generations()?;
        let default = self.default_generation()?;
        let running = self.current_system()?;
        let now = SystemTime::now();
        let newest_kept: Vec<u64> = match keep {
            Keep::Newest(n) => all
                .iter()
                .rev()
                .take(n as usize)
                .map(|g| g.number)
                .collect(),
            Keep::YoungerThan(age) => all
                .iter()
                .filter(|g| now.duration_since(g.created).unwrap_or_default() <= age)
                .map(|g| g.number)
                .collect(),
        };
        let mut deleted = Vec::new();
        for g in &all {
            let protected = Some(g.number) == default
                || running.as_ref() == Some(&g.toplevel)
                || newest_kept.contains(&g.number);
            if protected {
                continue;
            }
            let link = self
                .profiles_dir()
                .join(format!("system-{}-link", g.number));
            fs::remove_file(&link).map_err(io_err("remove", &link))?;
            sync_parent(&link)?;
            self.drop_root(g.number)?;
            deleted.push(g.number);
        }
        // Roots left by a crash between making a root and its link.
        let numbers: Vec<u64> = all.iter().map(|g| g.number).collect();
        for (link, _) in self.store().roots().map_err(|source| Error::Store {
            root: self.root().to_owned(),
            source: Box::new(source),
        })? {
            let orphan = link
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("system-"))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| !numbers.contains(n));
            if let Some(n) = orphan {
                self.drop_root(n)?;
            }
        }
        Ok(deleted)
    }

    fn drop_root(&self, number: u64) -> Result<(), Error> {
        match self.store().remove_root(&format!("system-{number}")) {
            Ok(()) => Ok(()),
            Err(bigtop_store::Error::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(source) => Err(Error::Store {
                root: self.root().to_owned(),
                source: Box::new(source),
            }),
        }
    }

    /// What runs now. Read from activation's own record (in the store's
    /// state, which the machine cannot write), not from the
    /// `ROOT/run/current-system` link it publishes for tools.
    pub fn current_system(&self) -> Result<Option<StorePath>, Error> {
        self.link_target(&self.state_dir().join("current-system"))
    }

    /// What the machine booted (published as `ROOT/run/booted-system`).
    pub fn booted_system(&self) -> Result<Option<StorePath>, Error> {
        self.link_target(&self.state_dir().join("booted-system"))
    }

    /// Records `toplevel` as `name` (`current-system` or
    /// `booted-system`): in activation's record, and as `ROOT/run/<name>`
    /// for a deploy tool to read what the machine runs. What runs now is
    /// a root of the store, generation or not.
    pub fn set_run_link(&self, name: &str, toplevel: &StorePath) -> Result<(), Error> {
        let target = self.store().store_dir().full(toplevel);
        if name == "current-system" {
            self.store()
                .add_root(name, toplevel)
                .map_err(|source| Error::Store {
                    root: self.root().to_owned(),
                    source: Box::new(source),
                })?;
        }
        replace_symlink(Path::new(&target), &self.state_dir().join(name))?;
        let run = self.path("/run");
        create_dirs(&run)?;
        replace_symlink(Path::new(&target), &run.join(name))?;
        Ok(())
    }

    /// Every generation with what its manifest says, for `generations`.
    pub fn list_generations(&self) -> Result<Vec<GenerationInfo>, Error> {
        let current = self.current_system()?;
        let booted = self.booted_system()?;
        let default = self.default_generation()?;
        let mut out = Vec::new();
        for g in self.generations()? {
            let (name, release) = match self.system_at(&g.toplevel) {
                Ok(s) => (Some(s.manifest.name), s.manifest.release),
                // A generation whose toplevel is gone or unreadable is
                // still listed, so that it can be deleted.
                Err(_) => (None, None),
            };
            out.push(GenerationInfo {
                number: g.number,
                date: crate::time::rfc3339(g.created),
                toplevel: self.store().store_dir().full(&g.toplevel),
                name,
                release,
                current: current.as_ref() == Some(&g.toplevel),
                booted: booted.as_ref() == Some(&g.toplevel),
                default: default == Some(g.number),
            });
        }
        Ok(out)
    }

    /// The store path a symlink points at, `None` if there is no link.
    fn link_target(&self, link: &Path) -> Result<Option<StorePath>, Error> {
        let target = match crate::fs::entry(link)? {
            crate::fs::Entry::Symlink(t) => t,
            crate::fs::Entry::Missing => return Ok(None),
            _ => {
                return Err(Error::NotAToplevel {
                    toplevel: link.display().to_string(),
                    reason: "not a symlink".into(),
                })
            }
        };
        let text = target.to_string_lossy();
        self.store()
            .parse_user_path(&text)
            .map(Some)
            .map_err(|_| Error::NotAToplevel {
                toplevel: text.into_owned(),
                reason: format!("`{}` points outside the store", link.display()),
            })
    }
}

/// The generation a profile link's name (`system-N-link`) stands for.
fn link_number(name: &str) -> Option<u64> {
    name.strip_prefix("system-")?
        .strip_suffix("-link")?
        .parse()
        .ok()
}
