//! Planning: from target derivations to the least work that realises them.
//!
//! Every derivation reachable from the targets is classified: its wanted
//! outputs are already valid (nothing to do, and its inputs are not even
//! read), all of them can be fetched from a [`Substituter`], or it must be
//! built. Only the last kind makes the planner look at its inputs, so an
//! already-built graph costs one batched database lookup per level, not a
//! read of every `.drv`.
//!
//! The result is a [`Plan`]: a dependency graph of fetch and build jobs,
//! each with the reason it is there, the counts and download size that a
//! dry run prints, and the critical path. Jobs carry a priority — the
//! length of the longest chain of jobs that waits on them — which the
//! builder uses to start long chains first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use bigtop_core::derivation::{Derivation, OutputName};
use bigtop_core::StorePath;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::error::Error;
use crate::store::{PathInfo, Store};

/// A place that can provide store paths without building them (a binary
/// cache, another store).
pub trait Substituter: Send + Sync {
    /// A name for messages, e.g. the cache's URL.
    fn name(&self) -> &str;

    /// Which of `paths` it can provide, with their metadata. Paths it does
    /// not have are left out.
    fn query(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, Substitutable>, Error>;

    /// The NAR of `path` (one it said it has), streamed.
    fn nar(&self, path: &StorePath) -> Result<Box<dyn std::io::BufRead + Send + '_>, Error>;
}

/// What a substituter says about a path it can provide.
#[derive(Debug, Clone)]
pub struct Substitutable {
    /// The path's metadata: NAR hash and size, references, deriver.
    pub info: PathInfo,
    /// Bytes to download (the compressed size, for a cache).
    pub download_size: u64,
    /// Whether the substituter vouches for `info` (a trusted key signed
    /// it, or it is a store on this machine). When it does not, the
    /// contents are scanned for references it failed to declare before
    /// the path is registered.
    pub vouched: bool,
}

/// Another local store used as a substituter: paths valid there are
/// copied as NARs (what `store export | store import` does, path by path).
impl Substituter for Store {
    fn name(&self) -> &str {
        self.root().to_str().unwrap_or("a local store")
    }

    fn query(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, Substitutable>, Error> {
        let mut out = BTreeMap::new();
        for p in self.valid_among(paths)? {
            if let Some(info) = self.path_info(&p)? {
                let download_size = info.nar_size;
                out.insert(
                    p,
                    Substitutable {
                        info,
                        download_size,
                        vouched: true,
                    },
                );
            }
        }
        Ok(out)
    }

    fn nar(&self, path: &StorePath) -> Result<Box<dyn std::io::BufRead + Send + '_>, Error> {
        let source = self.physical(path);
        // A pipe from a dumping thread: constant memory for any size.
        let (reader, mut writer) =
            std::io::pipe().map_err(crate::error::io_err("pipe", &source))?;
        std::thread::spawn(move || {
            let _ = bigtop_core::nar::dump_path(&source, &mut writer);
        });
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 16, reader)))
    }
}

/// What a job does.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum JobKind {
    /// Run a derivation's builder.
    Build {
        /// The `.drv` path.
        drv: StorePath,
        /// The derivation.
        derivation: Arc<Derivation>,
        /// The outputs the targets need (all of them, for a target).
        wanted: BTreeSet<OutputName>,
    },
    /// Copy a path from a substituter.
    Fetch {
        /// The path.
        path: StorePath,
        /// Index of the substituter in the builder's list.
        substituter: usize,
        /// What the substituter said about it.
        info: Box<Substitutable>,
    },
}

/// Why a job is in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// These outputs are not valid and no substituter has them.
    OutputsMissing(Vec<OutputName>),
    /// A determinism check was asked for: the outputs are valid.
    Check,
    /// The path is missing and a substituter has it.
    Substitutable,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::OutputsMissing(outs) => {
                let names: Vec<&str> = outs.iter().map(|o| o.as_str()).collect();
                write!(f, "outputs {} are not valid", names.join(", "))
            }
            Reason::Check => f.write_str("rebuilt to check determinism"),
            Reason::Substitutable => f.write_str("missing, and a substituter has it"),
        }
    }
}

/// One job of a plan.
#[derive(Debug, Clone)]
pub struct Job {
    /// What it does.
    pub kind: JobKind,
    /// Why it is needed.
    pub reason: Reason,
    /// Jobs that must finish first (indexes into [`Plan::jobs`]).
    pub deps: Vec<usize>,
    /// Jobs waiting on this one.
    pub dependents: Vec<usize>,
    /// The number of jobs on the longest chain from this one to a target,
    /// itself included: the builder starts the highest first.
    pub priority: u32,
}

impl Job {
    /// The path that names the job: the `.drv` of a build, the fetched path.
    pub fn path(&self) -> &StorePath {
        match &self.kind {
            JobKind::Build { drv, .. } => drv,
            JobKind::Fetch { path, .. } => path,
        }
    }
}

/// What to do to realise some targets. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The jobs, dependencies before dependents.
    pub jobs: Vec<Job>,
    /// Targets (`.drv` paths) whose wanted outputs are valid already.
    pub already_valid: Vec<StorePath>,
    /// The longest chain of jobs, first to last.
    pub critical_path: Vec<usize>,
}

impl Plan {
    /// How many derivations will be built.
    pub fn build_count(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| matches!(j.kind, JobKind::Build { .. }))
            .count()
    }

    /// How many paths will be fetched.
    pub fn fetch_count(&self) -> usize {
        self.jobs.len() - self.build_count()
    }

    /// Bytes to download for the fetches.
    pub fn download_size(&self) -> u64 {
        self.jobs
            .iter()
            .map(|j| match &j.kind {
                JobKind::Fetch { info, .. } => info.download_size,
                JobKind::Build { .. } => 0,
            })
            .sum()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// "these 12 derivations will be built: … / these 40 paths will be
/// fetched (31.0 MiB): …", as a dry run prints it.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "nothing to build or fetch");
        }
        let builds = self.build_count();
        if builds > 0 {
            writeln!(
                f,
                "{} {} will be built:",
                builds,
                if builds == 1 {
                    "derivation"
                } else {
                    "derivations"
                }
            )?;
            for j in &self.jobs {
                if let JobKind::Build { drv, .. } = &j.kind {
                    writeln!(f, "  {drv}  ({})", j.reason)?;
                }
            }
        }
        let fetches = self.fetch_count();
        if fetches > 0 {
            writeln!(
                f,
                "{} {} will be fetched ({}):",
                fetches,
                if fetches == 1 { "path" } else { "paths" },
                human_bytes(self.download_size())
            )?;
            for j in &self.jobs {
                if let JobKind::Fetch { path, .. } = &j.kind {
                    writeln!(f, "  {path}")?;
                }
            }
        }
        if self.critical_path.len() > 1 {
            writeln!(f, "critical path: {} jobs", self.critical_path.len())?;
        }
        Ok(())
    }
}

/// `31.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Plans the realisation of `targets` (`.drv` paths, each with the outputs
/// wanted; an empty set means all). With `check`, targets whose outputs
/// are valid are built again (their inputs are not).
pub fn plan(
    store: &Store,
    targets: &[(StorePath, BTreeSet<OutputName>)],
    substituters: &[&dyn Substituter],
    check: bool,
) -> Result<Plan, Error> {
    plan_avoiding(store, targets, substituters, check, &BTreeSet::new())
}

/// [`plan`], not asking for a path the substituter whose fetch of it
/// failed (`avoid`: path and index of the substituter): another may have
/// it; else it is built, when it is the output of a derivation (and so
/// is what refers to it).
pub(crate) fn plan_avoiding(
    store: &Store,
    targets: &[(StorePath, BTreeSet<OutputName>)],
    substituters: &[&dyn Substituter],
    check: bool,
    avoid: &BTreeSet<(StorePath, usize)>,
) -> Result<Plan, Error> {
    Planner {
        store,
        substituters,
        avoid,
        jobs: Vec::new(),
        build_of: HashMap::new(),
        fetch_of: HashMap::new(),
    }
    .run(targets, check)
}

struct Planner<'a> {
    store: &'a Store,
    substituters: &'a [&'a dyn Substituter],
    avoid: &'a BTreeSet<(StorePath, usize)>,
    jobs: Vec<Job>,
    build_of: HashMap<StorePath, usize>,
    fetch_of: HashMap<StorePath, usize>,
}

/// A derivation met while planning, with the outputs wanted from it and
/// the build job that needs it (if a job does).
struct Wanted {
    drv: StorePath,
    outputs: BTreeSet<OutputName>,
    needed_by: Option<usize>,
    target: bool,
}

impl Planner<'_> {
    fn run(
        mut self,
        targets: &[(StorePath, BTreeSet<OutputName>)],
        check: bool,
    ) -> Result<Plan, Error> {
        let mut already_valid = Vec::new();
        let mut frontier: Vec<Wanted> = targets
            .iter()
            .map(|(drv, outs)| Wanted {
                drv: drv.clone(),
                outputs: outs.clone(),
                needed_by: None,
                target: true,
            })
            .collect();
        // Level by level, so each level's lookups are one query.
        while !frontier.is_empty() {
            let drvs: Vec<&StorePath> = frontier.iter().map(|w| &w.drv).collect();
            let recorded = self.store.derivation_outputs_many(drvs.iter().copied())?;
            let mut next = Vec::new();
            let mut unknown = Vec::new();
            for w in frontier {
                if self.join_known(&w) {
                    continue;
                }
                // Fast path: recorded outputs, all valid.
                if let Some(outs) = recorded.get(&w.drv) {
                    let done = if w.outputs.is_empty() {
                        !outs.is_empty() && outs.values().all(|(_, valid)| *valid)
                    } else {
                        w.outputs
                            .iter()
                            .all(|o| outs.get(o).is_some_and(|(_, valid)| *valid))
                    };
                    if done && !(check && w.target) {
                        if w.target {
                            already_valid.push(w.drv.clone());
                        }
                        continue;
                    }
                }
                unknown.push(w);
            }
            self.classify_level(unknown, check, &mut next, &mut already_valid)?;
            frontier = next;
        }
        // Edges were pushed as found; a job reached through several of
        // its outputs appears more than once.
        for job in &mut self.jobs {
            job.deps.sort_unstable();
            job.deps.dedup();
            job.dependents.sort_unstable();
            job.dependents.dedup();
        }
        let mut plan = Plan {
            jobs: self.jobs,
            already_valid,
            critical_path: Vec::new(),
        };
        order(&mut plan)?;
        Ok(plan)
    }

    /// When `w`'s derivation has a build job already: widens what is
    /// wanted of it, adds the edge, and says so.
    fn join_known(&mut self, w: &Wanted) -> bool {
        let Some(&job) = self.build_of.get(&w.drv) else {
            return false;
        };
        if let JobKind::Build { wanted, .. } = &mut self.jobs[job].kind {
            wanted.extend(w.outputs.iter().cloned());
        }
        if let Some(by) = w.needed_by {
            self.edge(job, by);
        }
        true
    }

    /// Classifies the derivations of one level not known to be done: the
    /// validity of the derivations, of their outputs and of their sources
    /// is asked in one query each for the whole level, and each
    /// derivation is read once.
    fn classify_level(
        &mut self,
        level: Vec<Wanted>,
        check: bool,
        next: &mut Vec<Wanted>,
        already_valid: &mut Vec<StorePath>,
    ) -> Result<(), Error> {
        if level.is_empty() {
            return Ok(());
        }
        let dir = self.store.store_dir().clone();
        let valid_drvs = self.store.valid_among(level.iter().map(|w| &w.drv))?;
        let mut read: HashMap<StorePath, Arc<Derivation>> = HashMap::new();
        for w in &level {
            if !valid_drvs.contains(&w.drv) {
                return Err(Error::MissingDerivation { drv: w.drv.clone() });
            }
            if !read.contains_key(&w.drv) {
                let d = self.store.take_derivation(&w.drv)?;
                read.insert(w.drv.clone(), d);
            }
        }
        let outputs: Vec<StorePath> = read
            .values()
            .flat_map(|d| {
                d.outputs
                    .keys()
                    .filter_map(|o| d.output_path(&dir, o))
                    .collect::<Vec<_>>()
            })
            .collect();
        let valid = self.store.valid_among(&outputs)?;
        let srcs: BTreeSet<&StorePath> = read.values().flat_map(|d| &d.input_srcs).collect();
        let valid_srcs = if srcs.is_empty() {
            BTreeSet::new()
        } else {
            self.store.valid_among(srcs)?
        };
        for w in level {
            // Met earlier in this level (a job now).
            if self.join_known(&w) {
                continue;
            }
            let derivation = read[&w.drv].clone();
            self.classify(
                w,
                derivation,
                &valid,
                &valid_srcs,
                check,
                next,
                already_valid,
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn classify(
        &mut self,
        w: Wanted,
        derivation: Arc<Derivation>,
        valid: &BTreeSet<StorePath>,
        valid_srcs: &BTreeSet<StorePath>,
        check: bool,
        next: &mut Vec<Wanted>,
        already_valid: &mut Vec<StorePath>,
    ) -> Result<(), Error> {
        let dir = self.store.store_dir().clone();
        let wanted: BTreeSet<OutputName> = if w.outputs.is_empty() {
            derivation.outputs.keys().cloned().collect()
        } else {
            for o in &w.outputs {
                if !derivation.outputs.contains_key(o) {
                    return Err(Error::NoSuchOutput {
                        drv: w.drv.clone(),
                        output: o.clone(),
                    });
                }
            }
            w.outputs.clone()
        };
        let known: BTreeMap<&OutputName, StorePath> = wanted
            .iter()
            .filter_map(|o| derivation.output_path(&dir, o).map(|p| (o, p)))
            .collect();
        let missing: Vec<OutputName> = wanted
            .iter()
            .filter(|o| known.get(o).is_none_or(|p| !valid.contains(p)))
            .cloned()
            .collect();
        if missing.is_empty() && !(check && w.target) {
            if w.target {
                already_valid.push(w.drv);
            }
            return Ok(());
        }
        // Every missing output known and substitutable: fetch, do not build.
        if !missing.is_empty() && missing.iter().all(|o| known.contains_key(o)) {
            let paths: BTreeSet<StorePath> = missing.iter().map(|o| known[o].clone()).collect();
            if let Some(fetches) = self.fetch_closure(&paths)? {
                if let Some(by) = w.needed_by {
                    for f in fetches {
                        self.edge(f, by);
                    }
                }
                return Ok(());
            }
        }
        let reason = if missing.is_empty() {
            Reason::Check
        } else {
            Reason::OutputsMissing(missing)
        };
        let job = self.push(Job {
            kind: JobKind::Build {
                drv: w.drv.clone(),
                derivation: derivation.clone(),
                wanted,
            },
            reason,
            deps: Vec::new(),
            dependents: Vec::new(),
            priority: 0,
        });
        self.build_of.insert(w.drv, job);
        if let Some(by) = w.needed_by {
            self.edge(job, by);
        }
        // Input sources: valid, or fetched first.
        let absent: BTreeSet<StorePath> = derivation
            .input_srcs
            .difference(valid_srcs)
            .cloned()
            .collect();
        if !absent.is_empty() {
            match self.fetch_closure(&absent)? {
                Some(fetches) => {
                    for f in fetches {
                        self.edge(f, job);
                    }
                }
                None => {
                    let missing = absent.into_iter().next().expect("not empty");
                    return Err(Error::MissingInput {
                        drv: self.jobs[job].path().clone(),
                        input: missing,
                    });
                }
            }
        }
        for (input, outs) in &derivation.input_drvs {
            next.push(Wanted {
                drv: input.clone(),
                outputs: outs.clone(),
                needed_by: Some(job),
                target: false,
            });
        }
        Ok(())
    }

    /// Fetch jobs for `paths` and the missing part of their closure, if the
    /// substituters have all of it; the jobs for `paths` themselves.
    fn fetch_closure(&mut self, paths: &BTreeSet<StorePath>) -> Result<Option<Vec<usize>>, Error> {
        if self.substituters.is_empty() {
            return Ok(None);
        }
        let mut found: BTreeMap<StorePath, (usize, Substitutable)> = BTreeMap::new();
        let mut todo: BTreeSet<StorePath> = paths
            .iter()
            .filter(|p| !self.fetch_of.contains_key(*p))
            .cloned()
            .collect();
        while !todo.is_empty() {
            let mut offered = BTreeMap::new();
            for (i, s) in self.substituters.iter().enumerate() {
                let left: BTreeSet<StorePath> = todo
                    .iter()
                    .filter(|p| {
                        !offered.contains_key(*p) && !self.avoid.contains(&((*p).clone(), i))
                    })
                    .cloned()
                    .collect();
                if offered.len() == todo.len() {
                    break;
                }
                // All left are ones this substituter failed to give.
                if left.is_empty() {
                    continue;
                }
                for (p, sub) in s.query(&left)? {
                    offered.insert(p, (i, sub));
                }
            }
            if offered.len() < todo.len() {
                return Ok(None);
            }
            let refs: BTreeSet<StorePath> = offered
                .values()
                .flat_map(|(_, s)| s.info.references.iter().cloned())
                .filter(|r| !found.contains_key(r) && !offered.contains_key(r))
                .filter(|r| !self.fetch_of.contains_key(r))
                .collect();
            found.extend(offered);
            let valid = self.store.valid_among(&refs)?;
            todo = refs.difference(&valid).cloned().collect();
        }
        for (path, (substituter, sub)) in &found {
            let job = self.push(Job {
                kind: JobKind::Fetch {
                    path: path.clone(),
                    substituter: *substituter,
                    info: Box::new(sub.clone()),
                },
                reason: Reason::Substitutable,
                deps: Vec::new(),
                dependents: Vec::new(),
                priority: 0,
            });
            self.fetch_of.insert(path.clone(), job);
        }
        // A fetched path's references are registered first.
        for (path, (_, sub)) in &found {
            let job = self.fetch_of[path];
            for r in &sub.info.references {
                if let Some(&dep) = self.fetch_of.get(r) {
                    if dep != job {
                        self.edge(dep, job);
                    }
                }
            }
        }
        Ok(Some(paths.iter().map(|p| self.fetch_of[p]).collect()))
    }

    fn push(&mut self, job: Job) -> usize {
        self.jobs.push(job);
        self.jobs.len() - 1
    }

    /// `dependent` waits for `dep` (duplicates are removed at the end: a
    /// search here would make a job with many inputs quadratic).
    fn edge(&mut self, dep: usize, dependent: usize) {
        self.jobs[dependent].deps.push(dep);
        self.jobs[dep].dependents.push(dependent);
    }
}

/// Sorts the jobs dependencies first, sets priorities and the critical
/// path; fails on a cycle (which content addressing rules out, but a store
/// written by hand might hold).
fn order(plan: &mut Plan) -> Result<(), Error> {
    let n = plan.jobs.len();
    let mut graph: DiGraph<(), ()> = DiGraph::with_capacity(n, n);
    for _ in 0..n {
        graph.add_node(());
    }
    for (i, j) in plan.jobs.iter().enumerate() {
        for &d in &j.deps {
            graph.add_edge(NodeIndex::new(d), NodeIndex::new(i), ());
        }
    }
    let sorted =
        petgraph::algo::toposort(&graph, None).map_err(|cycle| Error::DependencyCycle {
            path: plan.jobs[cycle.node_id().index()].path().clone(),
        })?;
    // Renumber in dependency order.
    let mut new_index = vec![0; n];
    for (new, old) in sorted.iter().enumerate() {
        new_index[old.index()] = new;
    }
    let mut jobs: Vec<Option<Job>> = std::mem::take(&mut plan.jobs)
        .into_iter()
        .map(Some)
        .collect();
    plan.jobs = sorted
        .iter()
        .map(|old| {
            let mut j = jobs[old.index()].take().expect("each job once");
            j.deps.iter_mut().for_each(|d| *d = new_index[*d]);
            j.dependents.iter_mut().for_each(|d| *d = new_index[*d]);
            j
        })
        .collect();
    // Longest chain to a target, computed from the targets back.
    for i in (0..n).rev() {
        let below = plan.jobs[i]
            .dependents
            .iter()
            .map(|&d| plan.jobs[d].priority)
            .max()
            .unwrap_or(0);
        plan.jobs[i].priority = below + 1;
    }
    if let Some(start) = (0..n).max_by_key(|&i| (plan.jobs[i].priority, std::cmp::Reverse(i))) {
        let mut at = start;
        plan.critical_path.push(at);
        while let Some(&next) = plan.jobs[at]
            .dependents
            .iter()
            .max_by_key(|&&d| (plan.jobs[d].priority, std::cmp::Reverse(d)))
        {
            plan.critical_path.push(next);
            at = next;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(31 * 1024 * 1024 + 1), "31.0 MiB");
    }
}
