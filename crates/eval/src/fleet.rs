//! Fleets: many machines, each pinned to a release of the package set,
//! configured by fleet-wide, tag-wide and their own modules and data.
//!
//! [`Fleet::eval`] evaluates every machine on every core. Machines pinned
//! to one release share its [`Pkgs`], so each package derivation is
//! evaluated once for the whole fleet. Each machine gets its toplevel or
//! all of its errors: one broken machine does not hide the others'.
//!
//! ```
//! use bigtop_eval::drv::Platform;
//! use bigtop_eval::fleet::{Fleet, Machine};
//! use bigtop_eval::module::Module;
//! use bigtop_eval::set::PackageSet;
//! let release = PackageSet::new(Platform::default()).eval();
//! let motd = Module::new("motd", |m| {
//!     m.define("etc.motd.text", "managed by bigtop\n");
//! });
//! let fleet = Fleet::new(Platform::default())
//!     .release("2026.11", release)
//!     .module(motd)
//!     .machine(Machine::new("web1", "2026.11").tag("web"))
//!     .machine(Machine::new("db1", "2026.11").tag("db"));
//! let built = fleet.eval();
//! assert_eq!(built["web1"].as_ref().map(|m| m.toplevel.manifest["name"].clone()).ok(), Some("web1".into()));
//! # Ok::<(), bigtop_eval::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::module::{self, Config, Errors, Module, PLATFORM};
use crate::platform::Platform;
use crate::set::Pkgs;
use crate::system::{self, Toplevel};

/// One machine: its name, tags, release, and its own modules and data.
#[derive(Debug, Clone)]
pub struct Machine {
    name: String,
    release: String,
    tags: BTreeSet<String>,
    modules: Vec<Module>,
}

impl Machine {
    /// The machine `name`, pinned to the release `release`.
    pub fn new(name: impl Into<String>, release: impl Into<String>) -> Self {
        Machine {
            name: name.into(),
            release: release.into(),
            tags: BTreeSet::new(),
            modules: Vec::new(),
        }
    }

    /// Adds a tag: modules of the tag apply to it.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// Adds a module of its own.
    pub fn module(mut self, m: Module) -> Self {
        self.modules.push(m);
        self
    }

    /// Adds a data document (TOML or JSON, by extension) of its own, at
    /// [`PLATFORM`] priority.
    pub fn data_file(self, path: &Path) -> Result<Self, module::Error> {
        Ok(self.module(Module::data_file(path)?))
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The release it is pinned to.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// Its tags.
    pub fn tags(&self) -> &BTreeSet<String> {
        &self.tags
    }
}

/// An evaluated machine.
pub struct Evaluated {
    /// Its configuration (every option, queryable).
    pub config: Config,
    /// Its toplevel.
    pub toplevel: Toplevel,
}

/// A fleet: releases, modules for every machine or for a tag, machines.
#[derive(Clone)]
pub struct Fleet {
    platform: Platform,
    releases: BTreeMap<String, Pkgs>,
    everywhere: Vec<Module>,
    by_tag: Vec<(String, Module)>,
    machines: Vec<Machine>,
}

impl Fleet {
    /// An empty fleet whose toplevels are built for `platform`.
    pub fn new(platform: Platform) -> Self {
        Fleet {
            platform,
            releases: BTreeMap::new(),
            everywhere: Vec::new(),
            by_tag: Vec::new(),
            machines: Vec::new(),
        }
    }

    /// Adds a release: a package set, evaluated, under a name machines
    /// are pinned to.
    pub fn release(mut self, name: impl Into<String>, pkgs: Pkgs) -> Self {
        self.releases.insert(name.into(), pkgs);
        self
    }

    /// Adds a module applied to every machine.
    pub fn module(mut self, m: Module) -> Self {
        self.everywhere.push(m);
        self
    }

    /// Adds a module applied to every machine tagged `tag`.
    pub fn tag_module(mut self, tag: impl Into<String>, m: Module) -> Self {
        self.by_tag.push((tag.into(), m));
        self
    }

    /// Adds a machine.
    pub fn machine(mut self, m: Machine) -> Self {
        self.machines.push(m);
        self
    }

    /// The machines.
    pub fn machines(&self) -> &[Machine] {
        &self.machines
    }

    /// Every machine's modules, in the order their definitions count:
    /// the base system, the machine's identity, fleet-wide modules,
    /// tag modules, its own.
    fn modules_of(&self, m: &Machine) -> Vec<Module> {
        let name = m.name.clone();
        let release = m.release.clone();
        let tags: Vec<String> = m.tags.iter().cloned().collect();
        let mut out = vec![
            system::module(),
            Module::new(format!("fleet/machine/{}", m.name), move |b| {
                b.define("system.name", module::priority(PLATFORM, name.as_str()));
                b.option("fleet.release", module::types::str(), |o| {
                    o.description("The release the machine is pinned to.");
                });
                b.option(
                    "fleet.tags",
                    module::types::list(module::types::str()),
                    |o| {
                        o.description("The machine's tags.");
                    },
                );
                b.define("fleet.release", release.as_str());
                b.define(
                    "system.release",
                    module::priority(PLATFORM, release.as_str()),
                );
                b.define("fleet.tags", tags.clone());
            }),
        ];
        out.extend(self.everywhere.iter().cloned());
        out.extend(
            self.by_tag
                .iter()
                .filter(|(t, _)| m.tags.contains(t))
                .map(|(_, x)| x.clone()),
        );
        out.extend(m.modules.iter().cloned());
        out
    }

    /// Evaluates one machine.
    pub fn eval_machine(&self, m: &Machine) -> Result<Evaluated, Errors> {
        self.eval_machine_unnamed(m).map_err(|e| Errors {
            machine: Some(m.name.clone()),
            ..e
        })
    }

    fn eval_machine_unnamed(&self, m: &Machine) -> Result<Evaluated, Errors> {
        let Some(pkgs) = self.releases.get(&m.release) else {
            return Err(Errors {
                machine: None,
                errors: vec![module::Error::msg(format!(
                    "machine `{}` is pinned to the release `{}`, which the fleet does not have (it has: {})",
                    m.name,
                    m.release,
                    self.releases
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))],
                warnings: Vec::new(),
            });
        };
        let config = Config::eval(&self.modules_of(m), Some(pkgs.clone()))?;
        let toplevel = system::toplevel(&config, &self.platform).map_err(|e| Errors {
            machine: None,
            errors: vec![e],
            warnings: config.warnings().to_vec(),
        })?;
        Ok(Evaluated { config, toplevel })
    }

    /// Every machine, on every core: by name, its evaluation or all of
    /// its errors. Machines that share a name are reported, under that
    /// name, as an error.
    pub fn eval(&self) -> Evaluations {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &self.machines {
            *seen.entry(&m.name).or_default() += 1;
        }
        let results = crate::par::on_every_core(&self.machines, |m| {
            if seen[m.name.as_str()] > 1 {
                return Err(Errors {
                    machine: None,
                    errors: vec![module::Error::msg(format!(
                        "the fleet has {} machines named `{}`",
                        seen[m.name.as_str()],
                        m.name
                    ))],
                    warnings: Vec::new(),
                });
            }
            self.eval_machine(m)
        });
        self.machines
            .iter()
            .zip(results)
            .map(|(m, r)| {
                // A module's code that panics fails its machine, not the
                // fleet.
                let r = r.unwrap_or_else(|why| {
                    Err(Errors {
                        machine: None,
                        errors: vec![module::Error::msg(format!(
                            "evaluating machine `{}` panicked: {why}",
                            m.name
                        ))],
                        warnings: Vec::new(),
                    })
                });
                (m.name.clone(), r)
            })
            .collect::<BTreeMap<_, _>>()
            .into()
    }
}

/// Every machine's evaluation, by name: what [`Fleet::eval`] gives. A
/// map (it dereferences to one), with [`Evaluations::machine`] for the
/// one machine a test or a tool looks at.
pub struct Evaluations(BTreeMap<String, Result<Evaluated, Errors>>);

impl std::fmt::Debug for Evaluations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let v = match v {
                    Ok(e) => format!("ok: {}", e.toplevel.drv.drv_path()),
                    Err(e) => format!("{} errors", e.errors.len()),
                };
                (k, v)
            }))
            .finish()
    }
}

impl Evaluations {
    /// The machine `name`'s evaluation, or its errors; a name the fleet
    /// does not have is an error naming the closest ones.
    pub fn machine(&self, name: &str) -> Result<&Evaluated, Errors> {
        match self.0.get(name) {
            Some(Ok(e)) => Ok(e),
            Some(Err(e)) => Err(e.clone()),
            None => Err(Errors {
                machine: None,
                errors: vec![module::Error::msg(format!(
                    "the fleet has no machine `{name}`{}",
                    crate::error::did_you_mean(&crate::error::closest(
                        name,
                        self.0.keys().map(String::as_str)
                    ))
                ))],
                warnings: Vec::new(),
            }),
        }
    }

    /// The map itself.
    pub fn into_inner(self) -> BTreeMap<String, Result<Evaluated, Errors>> {
        self.0
    }
}

impl From<BTreeMap<String, Result<Evaluated, Errors>>> for Evaluations {
    fn from(m: BTreeMap<String, Result<Evaluated, Errors>>) -> Self {
        Evaluations(m)
    }
}

impl std::ops::Deref for Evaluations {
    type Target = BTreeMap<String, Result<Evaluated, Errors>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl IntoIterator for Evaluations {
    type Item = (String, Result<Evaluated, Errors>);
    type IntoIter = std::collections::btree_map::IntoIter<String, Result<Evaluated, Errors>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Evaluations {
    type Item = (&'a String, &'a Result<Evaluated, Errors>);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Result<Evaluated, Errors>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
