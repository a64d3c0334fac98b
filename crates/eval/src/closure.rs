//! Closures computed without building, for tests that assert on what a
//! definition generates.
//!
//! [`BuildClosure`] is everything needed to build some derivations: every
//! derivation and every source, reached through inputs. It renders as
//! stable, sorted text for `insta` snapshots (with or without the hashes),
//! and answers "why does this need that" with the chain of derivations.
//! Every query counts sources as well as derivations: a toolchain that
//! enters as an imported tree (the host bootstrap) is in the closure as
//! much as one built from source, and a test that excludes it must see
//! it.
//!
//! ```
//! use bigtop_eval::closure::BuildClosure;
//! use bigtop_eval::drv::Platform;
//! use bigtop_eval::{text, trivial};
//! let p = Platform::default();
//! let gcc = trivial::write_text(&p, "gcc-13", "a compiler")?;
//! let app = trivial::write_text(&p, "app", text!("built with {}", gcc))?;
//! let closure = BuildClosure::of([&app]);
//! assert_eq!(closure.render_names(), "app\ngcc-13\n");
//! let why = closure.why("gcc-13").expect("it is in");
//! assert_eq!(why.iter().map(|n| n.name()).collect::<Vec<_>>(), ["app", "gcc-13"]);
//! assert!(closure.check_excludes("gcc").is_err());
//! # Ok::<(), bigtop_eval::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use bigtop_core::closure::ReferenceGraph;
use bigtop_core::StorePath;

use crate::drv::{closure_of, Drv};
use crate::source::Source;

/// Every derivation and source needed to build some roots.
#[derive(Debug, Clone)]
pub struct BuildClosure {
    roots: Vec<Drv>,
    /// Inputs before their dependents.
    drvs: Vec<Drv>,
    sources: BTreeMap<StorePath, Source>,
}

impl BuildClosure {
    /// The closure of `roots`.
    pub fn of<'a>(roots: impl IntoIterator<Item = &'a Drv>) -> Self {
        let roots: Vec<Drv> = roots.into_iter().cloned().collect();
        let drvs = closure_of(&roots);
        let sources = drvs
            .iter()
            .flat_map(|d| d.input_sources())
            .map(|s| (s.path().clone(), s.clone()))
            .collect();
        BuildClosure {
            roots,
            drvs,
            sources,
        }
    }

    /// The derivations, inputs first.
    pub fn derivations(&self) -> &[Drv] {
        &self.drvs
    }

    /// The sources, by path.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.sources.values()
    }

    /// Whether a derivation or source named `name` (exactly, or
    /// `name-<version>`) is in it.
    pub fn contains_named(&self, name: &str) -> bool {
        self.drvs.iter().any(|d| is_named(d.name(), name))
            || self
                .sources
                .values()
                .any(|s| is_named(s.path().name(), name))
    }

    /// Sorted names of its derivations and sources, one a line: a
    /// snapshot that changes only when what is built or imported changes,
    /// not when a hash does.
    pub fn render_names(&self) -> String {
        let names: BTreeSet<&str> = self
            .drvs
            .iter()
            .map(|d| d.name())
            .chain(self.sources.values().map(|s| s.path().name()))
            .collect();
        names.into_iter().fold(String::new(), |mut s, n| {
            s.push_str(n);
            s.push('\n');
            s
        })
    }

    /// Every derivation (`.drv` path and outputs) and source, sorted by
    /// name then path: a snapshot that changes with any hash.
    pub fn render(&self) -> String {
        let mut drvs: Vec<&Drv> = self.drvs.iter().collect();
        drvs.sort_by(|a, b| (a.name(), a.drv_path()).cmp(&(b.name(), b.drv_path())));
        let mut s = String::new();
        for d in drvs {
            let _ = writeln!(s, "{} {}", d.name(), d.drv_path());
            for o in d.outputs() {
                let _ = writeln!(s, "  {} {}", o.name(), o.path());
            }
        }
        let mut srcs: Vec<&Source> = self.sources.values().collect();
        srcs.sort_by(|a, b| (a.path().name(), a.path()).cmp(&(b.path().name(), b.path())));
        for src in srcs {
            let _ = writeln!(s, "source {}", src.path());
        }
        s
    }

    /// A shortest chain from a root to a derivation or source named
    /// `name`: why the closure holds it (what `nix why-depends` prints).
    pub fn why(&self, name: &str) -> Option<Vec<Node>> {
        // Derivations and sources as one graph of their paths, searched
        // by the store's why-depends: inputs are visited in path order,
        // as a derivation keeps them.
        let mut nodes: BTreeMap<&StorePath, Node> = self
            .drvs
            .iter()
            .map(|d| (d.drv_path(), Node::Drv(d.clone())))
            .collect();
        nodes.extend(
            self.sources
                .iter()
                .map(|(p, src)| (p, Node::Source(src.clone()))),
        );
        let graph = ReferenceGraph::new_lenient(
            self.drvs
                .iter()
                .map(|d| {
                    let inputs = d
                        .input_derivations()
                        .iter()
                        .map(|i| i.drv_path().clone())
                        .chain(d.input_sources().iter().map(|s| s.path().clone()))
                        .collect::<Vec<_>>();
                    (d.drv_path().clone(), inputs)
                })
                .chain(self.sources.keys().map(|p| (p.clone(), Vec::new()))),
        );
        let chain = graph
            .shortest_chain(self.roots.iter().map(Drv::drv_path), |p| {
                nodes.get(p).is_some_and(|n| is_named(n.name(), name))
            })
            // Every root is in its own closure.
            .ok()
            .flatten()?;
        Some(chain.iter().map(|p| nodes[p].clone()).collect())
    }

    /// `Ok` if no derivation or source named `name` is in it; otherwise
    /// the chain that pulls it in, rendered.
    pub fn check_excludes(&self, name: &str) -> Result<(), String> {
        match self.why(name) {
            None => Ok(()),
            Some(chain) => Err(chain_message(
                &format!("the closure contains `{name}`, needed through"),
                chain.iter().map(|n| format!("{} ({})", n.name(), n.path())),
            )),
        }
    }

    /// Panics, printing why, if a derivation or source named `name` is
    /// in it.
    #[track_caller]
    pub fn assert_excludes(&self, name: &str) {
        if let Err(why) = self.check_excludes(name) {
            panic!("{why}");
        }
    }
}

/// A step of a chain through a build closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A derivation.
    Drv(Drv),
    /// A source (files imported into the store, as the bootstrap's
    /// tools are).
    Source(Source),
}

impl Node {
    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            Node::Drv(d) => d.name(),
            Node::Source(s) => s.path().name(),
        }
    }

    /// Its path: the `.drv`'s, or the source's.
    pub fn path(&self) -> &StorePath {
        match self {
            Node::Drv(d) => d.drv_path(),
            Node::Source(s) => s.path(),
        }
    }
}

/// `headline:` and the chain, one step a line, each indented one more
/// level: how closure assertions explain themselves.
pub fn chain_message(headline: &str, steps: impl IntoIterator<Item = String>) -> String {
    let mut out = format!("{headline}:");
    for (i, step) in steps.into_iter().enumerate() {
        out.push('\n');
        out.push_str(&"  ".repeat(i + 1));
        out.push_str(&step);
    }
    out
}

/// Whether a package or path named `n` is the one called `name`: `name`
/// exactly, or `name-<version>` (a version starts with a digit).
pub fn is_named(n: &str, name: &str) -> bool {
    n == name
        || n.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
}
