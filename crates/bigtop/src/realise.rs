//! From evaluated packages to built store paths: the sources they name
//! are imported, their derivations added, and the builder runs — the step
//! between `bigtop-eval` (which never touches a store) and
//! `bigtop-store`.
//!
//! ```no_run
//! use bigtop::eval::drv::Platform;
//! use bigtop::eval::trivial;
//! use bigtop::store::build::Builder;
//! use bigtop::store::Store;
//! let store = Store::open_chroot("/tmp/bigtop-demo")?;
//! let motd = trivial::write_text(&Platform::default(), "motd", "welcome\n")?;
//! let built = bigtop::realise::realise(&store, &Builder::new(&store), &[motd.clone()])?;
//! println!("{}", store.store_dir().full(&built.path(&motd.out())?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;

use bigtop_core::closure::ReferenceGraph;
use bigtop_core::derivation::OutputName;
use bigtop_core::{ContentAddress, ContentAddressMethod, StorePath};
use bigtop_eval::drv::{closure_of, Drv, Output};
use bigtop_eval::source::Source;
use bigtop_store::build::{BuildReport, Builder};
use bigtop_store::{PathInfo, Store};
use thiserror::Error;

/// Why realising failed, naming the package or source.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A source could not be read (or changed since it was evaluated).
    #[error("cannot import source `{}`", source_path.display())]
    Source {
        /// The source's root.
        source_path: std::path::PathBuf,
        /// Why.
        #[source]
        source: bigtop_eval::Error,
    },
    /// The store refused something.
    #[error(transparent)]
    Store(#[from] bigtop_store::Error),
    /// Building failed (the error names each derivation that failed).
    #[error(transparent)]
    Build(#[from] bigtop_store::build::Error),
    /// The store computed another `.drv` path than evaluation did: a bug
    /// in one of the two, never a user's error.
    #[error("derivation `{name}`: evaluated as `{evaluated}`, added as `{added}`")]
    DrvPathMismatch {
        /// The derivation.
        name: String,
        /// The path evaluation computed.
        evaluated: StorePath,
        /// The path the store computed.
        added: StorePath,
    },
    /// An output asked of the result was not built.
    #[error("`{0}` was not among the outputs realised")]
    NotRealised(String),
    /// A built program could not be run in the sandbox.
    #[error("cannot run `{program}` in the sandbox")]
    Run {
        /// The program, as its logical path.
        program: String,
        /// Why.
        #[source]
        source: bigtop_store::sandbox::SandboxError,
    },
    /// The pipes for a built program's output could not be made.
    #[error("cannot make the pipes for the output of `{program}`")]
    Pipe {
        /// The program, as its logical path.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What [`realise`] built.
#[derive(Debug)]
pub struct Realised {
    /// The builder's report.
    pub report: BuildReport,
}

impl Realised {
    /// The store path of an output of one of the roots (outputs of
    /// input-addressed and fixed derivations are known in advance; this
    /// checks that it was built).
    pub fn path(&self, output: &Output) -> Result<StorePath, Error> {
        self.report
            .outputs
            .get(output.drv().drv_path())
            .and_then(|outs| outs.get(output.name()))
            .cloned()
            .ok_or_else(|| Error::NotRealised(format!("{output:?}")))
    }
}

/// Imports the sources and adds the derivations `roots` need, in one
/// batch: afterwards every `.drv` of their closure is in the store.
pub fn add(store: &Store, roots: &[Drv]) -> Result<(), Error> {
    let drvs = closure_of(roots);
    let sources: BTreeMap<StorePath, Source> = drvs
        .iter()
        .flat_map(|d| d.input_sources())
        .map(|s| (s.path().clone(), s.clone()))
        .collect();
    let missing: Vec<&Source> = {
        let valid = store.valid_among(sources.keys())?;
        sources
            .values()
            .filter(|s| !valid.contains(s.path()))
            .collect()
    };
    let mut batch = store.batch();
    for src in missing {
        add_source(&mut batch, src)?;
    }
    for d in &drvs {
        let added = batch.add_derivation(d.derivation())?;
        if &added != d.drv_path() {
            return Err(Error::DrvPathMismatch {
                name: d.name().to_owned(),
                evaluated: d.drv_path().clone(),
                added,
            });
        }
    }
    batch.commit()?;
    Ok(())
}

/// Streams a source's NAR into the batch: one thread writes it (reading
/// the tree again and checking it still hashes the same), the store
/// unpacks and checks it.
fn add_source(batch: &mut bigtop_store::AddBatch<'_>, src: &Source) -> Result<(), Error> {
    let mut info = PathInfo::new(
        src.path().clone(),
        *src.nar_hash(),
        src.nar_size(),
        BTreeSet::new(),
    );
    info.ca = Some(ContentAddress::new(
        ContentAddressMethod::Recursive,
        *src.nar_hash(),
    ));
    let (reader, writer) = std::io::pipe().map_err(|e| Error::Source {
        source_path: src.root().to_owned(),
        source: bigtop_eval::Error::Source {
            path: src.root().to_owned(),
            source: e,
        },
    })?;
    std::thread::scope(|s| {
        let w = s.spawn(move || src.write_nar(writer));
        let added = batch.add_nar(info, &mut BufReader::new(reader));
        let written = w.join().unwrap_or_else(|_| {
            Err(bigtop_eval::Error::Source {
                path: src.root().to_owned(),
                source: std::io::Error::other("the NAR writer panicked"),
            })
        });
        // The reader's complaint (a short or changed stream) is the
        // writer's error, said better.
        written.map_err(|e| Error::Source {
            source_path: src.root().to_owned(),
            source: e,
        })?;
        added.map_err(Error::Store)
    })
}

/// Adds what `roots` need and builds every output of each with `builder`.
pub fn realise(store: &Store, builder: &Builder<'_>, roots: &[Drv]) -> Result<Realised, Error> {
    add(store, roots)?;
    let targets: Vec<(StorePath, BTreeSet<OutputName>)> = roots
        .iter()
        .map(|d| (d.drv_path().clone(), BTreeSet::new()))
        .collect();
    let report = builder.build(&targets)?;
    Ok(Realised { report })
}

/// What [`run`] gives back.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// How the program ended.
    pub status: std::process::ExitStatus,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

/// Runs `program` (a file inside the built store path `path`, e.g.
/// `bin/hello`, or `""` when the path is the program) with `args`, in a sandbox that shows exactly the runtime
/// closure of `path` at the store's logical paths (and `/bin/sh` with the
/// C library, as builds see them), without network: how a program built
/// into a chroot store runs on the machine building it.
pub fn run(
    store: &Store,
    path: &StorePath,
    program: &str,
    args: &[&str],
) -> Result<RunOutput, Error> {
    use bigtop_store::sandbox::{self, SandboxSpec};
    use std::io::Read;
    let dir = store.store_dir();
    let program = if program.is_empty() {
        dir.full(path)
    } else {
        format!("{}/{program}", dir.full(path))
    };
    let sandbox_err = |source| Error::Run {
        program: program.clone(),
        source,
    };
    let closure = store.closure([path])?;
    let extra_paths = sandbox::default_extra_paths().map_err(sandbox_err)?;
    let io = |source| Error::Pipe {
        program: program.clone(),
        source,
    };
    let (mut out_r, out_w) = std::io::pipe().map_err(io)?;
    let (mut err_r, err_w) = std::io::pipe().map_err(io)?;
    // Named as the collector expects leftovers of a dead handle to be.
    let dirs = store.sandbox_run_dirs("run")?;
    let spec = SandboxSpec {
        program: program.clone(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![
            ("PATH".into(), "/path-not-set".into()),
            ("HOME".into(), "/homeless-shelter".into()),
        ],
        build_dir: dirs.build_dir.clone(),
        build_dir_inside: "/build".into(),
        store_dir: dir.as_path().to_owned(),
        store_root: store.root().to_owned(),
        chroot_dir: dirs.chroot_dir.clone(),
        inputs: closure.iter().map(|p| p.to_string()).collect(),
        outputs: Vec::new(),
        extra_paths,
        network: false,
        stdout: out_w.into(),
        stderr: err_w.into(),
        inherit: Vec::new(),
        uid: sandbox::DEFAULT_UID,
        gid: sandbox::DEFAULT_GID,
    };
    let child = sandbox::spawn(&spec).map_err(sandbox_err);
    drop(spec);
    let child = child?;
    let (stdout, stderr) = std::thread::scope(|s| {
        let e = s.spawn(move || {
            let mut v = Vec::new();
            let _ = err_r.read_to_end(&mut v);
            v
        });
        let mut o = Vec::new();
        let _ = out_r.read_to_end(&mut o);
        (o, e.join().unwrap_or_default())
    });
    let status = child.wait().map_err(sandbox_err);
    drop(dirs);
    Ok(RunOutput {
        status: status?,
        stdout,
        stderr,
    })
}

/// The runtime closure of built outputs: every store path they refer to,
/// directly or not, themselves included — what a machine receives with
/// them. The counterpart of
/// [`BuildClosure`](bigtop_eval::closure::BuildClosure) for tests, once
/// built (in a temp store).
#[derive(Debug, Clone)]
pub struct RuntimeClosure {
    roots: Vec<StorePath>,
    paths: BTreeSet<StorePath>,
    /// The references between the paths.
    graph: ReferenceGraph,
}

impl RuntimeClosure {
    /// The runtime closure of `outputs` (valid paths of `store`).
    pub fn of(store: &Store, outputs: &[StorePath]) -> Result<RuntimeClosure, Error> {
        let paths = store.closure(outputs)?;
        let mut nodes = Vec::with_capacity(paths.len());
        for p in &paths {
            nodes.push((p.clone(), store.references(p)?));
        }
        Ok(RuntimeClosure {
            roots: outputs.to_vec(),
            paths,
            // A closure holds whatever its paths refer to.
            graph: ReferenceGraph::new_lenient(nodes),
        })
    }

    /// The paths.
    pub fn paths(&self) -> &BTreeSet<StorePath> {
        &self.paths
    }

    /// Whether a path named `name` (or `name-<version>`) is in it.
    pub fn contains_named(&self, name: &str) -> bool {
        self.paths
            .iter()
            .any(|p| bigtop_eval::closure::is_named(p.name(), name))
    }

    /// Sorted names (the part after the hash), one a line: a snapshot that
    /// changes only when what a machine receives does.
    pub fn render_names(&self) -> String {
        let names: BTreeSet<&str> = self.paths.iter().map(|p| p.name()).collect();
        names.into_iter().map(|n| format!("{n}\n")).collect()
    }

    /// A shortest chain of references from a root to a path named `name`
    /// (or `name-<version>`).
    pub fn why(&self, name: &str) -> Option<Vec<StorePath>> {
        self.graph
            .shortest_chain(&self.roots, |p| {
                bigtop_eval::closure::is_named(p.name(), name)
            })
            // Every root is in its own closure.
            .ok()
            .flatten()
    }

    /// `Ok` if no path named `name` is in it; otherwise the chain of
    /// references that pulls it in, rendered.
    pub fn check_excludes(&self, name: &str) -> Result<(), String> {
        match self.why(name) {
            None => Ok(()),
            Some(chain) => Err(bigtop_eval::closure::chain_message(
                &format!("the runtime closure contains `{name}`, referred to through"),
                chain.iter().map(|p| p.to_string()),
            )),
        }
    }

    /// Panics, printing why, if a path named `name` is in it.
    #[track_caller]
    pub fn assert_excludes(&self, name: &str) {
        if let Err(why) = self.check_excludes(name) {
            panic!("{why}");
        }
    }
}
