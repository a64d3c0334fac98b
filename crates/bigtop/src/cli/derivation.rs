//! `bigtop derivation add` and `bigtop show-derivation`: derivations in
//! their JSON form, so that tools in any language can create them.
//!
//! The JSON form is the serde form of [`Derivation`]:
//!
//! ```json
//! {
//!   "name": "hello",
//!   "system": "x86_64-linux",
//!   "builder": "/bin/sh",
//!   "args": ["-c", "echo hello > $out"],
//!   "env": {"greeting": "hello"},
//!   "outputs": {"out": "deferred"},
//!   "input_drvs": {"<digest>-lib.drv": ["out"]},
//!   "input_srcs": ["<digest>-builder.sh"]
//! }
//! ```
//!
//! On input, `args`, `env`, `input_drvs` and `input_srcs` may be left out
//! (empty), store paths may be full (`/bigtop/store/<digest>-<name>`) or
//! base names, and an input-addressed output whose path is to be computed
//! is written `"deferred"` or `{"input-addressed": ""}`. A path that is
//! given must be the one computed: a derivation cannot claim another's
//! outputs. Unknown fields are errors, so that a typo is not silently
//! dropped.
//!
//! A batch (a JSON array) may hold derivations that are inputs of others
//! in the same batch, in any order, named by their `.drv` paths (what
//! `show-derivation --recursive` prints). A derivation's `.drv` path
//! follows from its inputs' paths, so derivations cannot name each other
//! in a cycle; a tool that generates a graph adds it a level at a time,
//! reading each level's paths from `derivation add --json`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{self, Read};

use bigtop_core::derivation::{Derivation, DerivationOutput, DrvHash, OutputName};
use bigtop_core::StorePath;
use bigtop_store::Store;
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::Value;

use thiserror::Error;

use super::store::{self, Out};
use super::GlobalArgs;

/// Why `bigtop derivation …` or `bigtop show-derivation` failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening the store, reading paths or printing failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Reading standard input failed.
    #[error("cannot read standard input")]
    Stdin(#[source] io::Error),
    /// `derivation add` was given nothing.
    #[error("no derivations on standard input: expected a JSON derivation or an array of them")]
    NoDerivations,
    /// Standard input is not JSON at all.
    #[error("standard input is not JSON")]
    NotJson(#[source] serde_json::Error),
    /// A derivation's JSON does not have the derivation form.
    #[error("derivation {which} is not in the JSON form of a derivation")]
    DerivationJson {
        /// The derivation: its name and index in the input.
        which: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A derivation breaks a rule of derivations.
    #[error("derivation {which} is invalid")]
    InvalidDerivation {
        /// The derivation: its name and index in the input.
        which: String,
        /// Why.
        #[source]
        source: bigtop_core::derivation::Error,
    },
    /// A derivation gives an output path other than the one it determines.
    #[error("derivation {which} gives output `{output}` the path `{given}`, but its inputs determine `{computed}` (leave it empty to have it computed)")]
    WrongOutputPath {
        /// The derivation: its name and index in the input.
        which: String,
        /// The output.
        output: OutputName,
        /// The path given.
        given: String,
        /// The path computed, or `deferred`.
        computed: String,
    },
    /// An input derivation is neither in the store nor in the batch.
    #[error("derivation {which} needs `{input}`, which is neither valid in the store nor in this batch{hint}")]
    UnknownInput {
        /// The derivation: its name and index in the input.
        which: String,
        /// The input `.drv`.
        input: String,
        /// A likelier path, if the batch has one of that name.
        hint: String,
    },
    /// An input source is not valid in the store.
    #[error("derivation {which} needs source `{input}`, which is not valid in the store")]
    MissingSource {
        /// The derivation: its name and index in the input.
        which: String,
        /// The input source.
        input: String,
    },
    /// An input derivation in the store could not be read.
    #[error("derivation {which} needs `{input}`, which cannot be read")]
    InputDerivation {
        /// The derivation: its name and index in the input.
        which: String,
        /// The input `.drv`.
        input: String,
        /// Why.
        #[source]
        source: Box<bigtop_store::Error>,
    },
    /// An output path has no recorded deriver.
    #[error("`{path}` has no recorded deriver (it was added, not built)")]
    NoDeriver {
        /// The path.
        path: String,
    },
}

impl From<bigtop_store::Error> for Error {
    fn from(e: bigtop_store::Error) -> Self {
        Error::Store(e.into())
    }
}

impl Error {
    /// Whether the reader of standard output went away (`… | head`),
    /// which is not a failure of the command.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_broken_pipe())
    }
}

/// `bigtop derivation …`
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum DerivationCommand {
    /// Read derivations as JSON from standard input (one object or an
    /// array), compute their output paths, add their `.drv` files to the
    /// store, all or none, and print their paths in input order.
    Add(DerivationAddArgs),
    /// Print derivations as JSON (the same as `bigtop show-derivation`).
    Show(ShowDerivationArgs),
}

/// Arguments of `bigtop derivation add`. With `--json`, it prints for
/// each derivation its `.drv` path and its output paths (`null` where not
/// known before building).
#[derive(Debug, Args)]
pub struct DerivationAddArgs {}

/// Arguments of `bigtop show-derivation`.
#[derive(Debug, Args)]
pub struct ShowDerivationArgs {
    /// `.drv` paths, or output paths (whose deriver is shown).
    #[arg(required = true, value_name = "DRV")]
    pub paths: Vec<String>,
    /// Also show every input derivation, inputs before the derivations
    /// that use them.
    #[arg(short, long)]
    pub recursive: bool,
}

/// The fields of a derivation's JSON form.
const FIELDS: [&str; 8] = [
    "name",
    "system",
    "builder",
    "args",
    "env",
    "outputs",
    "input_drvs",
    "input_srcs",
];

/// One derivation of the input, while its paths are worked out.
struct Item {
    /// How errors name it: `` `hello` `` or `` `hello` (input [2]) ``.
    which: String,
    derivation: Derivation,
    /// The output paths the input gave, to check against the computed ones.
    given: BTreeMap<OutputName, StorePath>,
}

/// Runs `bigtop derivation add`.
pub fn add(_args: &DerivationAddArgs, global: &GlobalArgs) -> Result<(), Error> {
    let mut text = String::new();
    io::stdin()
        .lock()
        .read_to_string(&mut text)
        .map_err(Error::Stdin)?;
    if text.trim().is_empty() {
        return Err(Error::NoDerivations);
    }
    let value: Value = serde_json::from_str(&text).map_err(Error::NotJson)?;
    let store = global.store.open()?;
    let (values, single) = match value {
        Value::Array(items) => (items, false),
        other => (vec![other], true),
    };
    let mut items = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        items.push(item_from_json(&store, v, (!single).then_some(i))?);
    }
    let added = resolve(&store, items)?;
    // One batch: every `.drv` is added, or none.
    let mut batch = store.batch();
    let mut seen = BTreeSet::new();
    for (path, derivation) in &added {
        if seen.insert(path) {
            batch.add_derivation(derivation)?;
        }
    }
    batch.commit()?;
    let dir = store.store_dir();
    let mut out = Out::new();
    if global.json {
        let json: Vec<AddedJson<'_>> = added
            .iter()
            .map(|(drv, d)| AddedJson {
                drv,
                outputs: d
                    .outputs
                    .keys()
                    .map(|o| (o, d.output_path(dir, o)))
                    .collect(),
            })
            .collect();
        if single {
            out.json(&json[0])?;
        } else {
            out.json(&json)?;
        }
    } else {
        for (drv, _) in &added {
            out.line(dir.display(drv))?;
        }
    }
    Ok(out.finish()?)
}

/// What `derivation add --json` prints for each derivation.
#[derive(Serialize)]
struct AddedJson<'a> {
    drv: &'a StorePath,
    outputs: BTreeMap<&'a OutputName, Option<StorePath>>,
}

/// The name errors give an input: its `name` if it has one, and its index
/// in an array.
fn describe(v: &Value, index: Option<usize>) -> String {
    let name = v.get("name").and_then(Value::as_str);
    match (name, index) {
        (Some(n), Some(i)) => format!("`{n}` (input [{i}])"),
        (Some(n), None) => format!("`{n}`"),
        (None, Some(i)) => format!("input [{i}]"),
        (None, None) => "on standard input".to_owned(),
    }
}

/// Turns one JSON value into a derivation, applying the input conveniences
/// of the [module docs](self).
fn item_from_json(store: &Store, mut v: Value, index: Option<usize>) -> Result<Item, Error> {
    let which = describe(&v, index);
    let bad = |reason: String| Error::DerivationJson {
        which: which.clone(),
        source: serde::de::Error::custom(reason),
    };
    let Some(obj) = v.as_object_mut() else {
        return Err(bad("expected a JSON object".into()));
    };
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown field `{k}`, expected one of {}",
            FIELDS.map(|f| format!("`{f}`")).join(", ")
        )));
    }
    for (field, empty) in [
        ("args", Value::Array(Vec::new())),
        ("env", Value::Object(Default::default())),
        ("input_drvs", Value::Object(Default::default())),
        ("input_srcs", Value::Array(Vec::new())),
    ] {
        obj.entry(field).or_insert(empty);
    }
    // Full and physical paths become the base names serde reads.
    let base = |s: &str| match store.parse_user_path(s) {
        Ok(p) => p.to_string(),
        Err(_) => s.to_owned(),
    };
    if let Some(Value::Object(drvs)) = obj.get_mut("input_drvs") {
        *drvs = std::mem::take(drvs)
            .into_iter()
            .map(|(k, v)| (base(&k), v))
            .collect();
    }
    if let Some(Value::Array(srcs)) = obj.get_mut("input_srcs") {
        for s in srcs.iter_mut() {
            if let Value::String(text) = s {
                *text = base(text);
            }
        }
    }
    if let Some(Value::Object(outputs)) = obj.get_mut("outputs") {
        for kind in outputs.values_mut() {
            let Some(Value::String(path)) = kind.get_mut("input-addressed") else {
                continue;
            };
            if path.is_empty() {
                *kind = Value::String("deferred".into());
            } else {
                *path = base(path);
            }
        }
    }
    let derivation: Derivation =
        serde_json::from_value(v).map_err(|source| Error::DerivationJson {
            which: which.clone(),
            source,
        })?;
    let given = derivation
        .outputs
        .iter()
        .filter_map(|(o, kind)| match kind {
            DerivationOutput::InputAddressed(p) => Some((o.clone(), p.clone())),
            _ => None,
        })
        .collect();
    Ok(Item {
        which,
        derivation,
        given,
    })
}

/// Computes every item's output paths and `.drv` path, in input order.
/// Items may be inputs of each other in any order: each waits until the
/// inputs it names are known, from the store or from the batch.
fn resolve(store: &Store, mut items: Vec<Item>) -> Result<Vec<(StorePath, Derivation)>, Error> {
    let dir = store.store_dir().clone();
    let mut hashes = DrvHashes::new(store);
    let sources: BTreeSet<&StorePath> = items
        .iter()
        .flat_map(|it| &it.derivation.input_srcs)
        .collect();
    let valid_sources = store.valid_among(sources.iter().copied())?;
    let inputs: BTreeSet<&StorePath> = items
        .iter()
        .flat_map(|it| it.derivation.input_drvs.keys())
        .collect();
    let in_store = store.valid_among(inputs.iter().copied())?;
    for it in &items {
        if let Some(src) = it
            .derivation
            .input_srcs
            .iter()
            .find(|s| !valid_sources.contains(*s))
        {
            return Err(Error::MissingSource {
                which: it.which.clone(),
                input: dir.full(src),
            });
        }
    }
    let mut done: Vec<Option<StorePath>> = vec![None; items.len()];
    // Items waiting for a `.drv` of the batch, by that path.
    let mut waiting: HashMap<StorePath, Vec<usize>> = HashMap::new();
    let mut queue: VecDeque<usize> = (0..items.len()).collect();
    while let Some(i) = queue.pop_front() {
        let it = &mut items[i];
        let mut blocked = None;
        for input in it.derivation.input_drvs.keys() {
            if hashes.known(input) {
                continue;
            }
            if in_store.contains(input) {
                hashes
                    .read_from_store(input)
                    .map_err(|source| Error::InputDerivation {
                        which: it.which.clone(),
                        input: dir.full(input),
                        source: Box::new(source),
                    })?;
                continue;
            }
            blocked = Some(input.clone());
            break;
        }
        if let Some(input) = blocked {
            waiting.entry(input).or_default().push(i);
            continue;
        }
        let h = it
            .derivation
            .fill_output_paths(&dir, |p| hashes.get(p))
            .map_err(|source| Error::InvalidDerivation {
                which: it.which.clone(),
                source,
            })?;
        for (output, given) in &it.given {
            let computed = it.derivation.output_path(&dir, output);
            if computed.as_ref() != Some(given) {
                return Err(Error::WrongOutputPath {
                    which: it.which.clone(),
                    output: output.clone(),
                    given: dir.full(given),
                    computed: computed.map_or_else(|| "deferred".to_owned(), |p| dir.full(&p)),
                });
            }
        }
        let path = it
            .derivation
            .drv_path(&dir)
            .map_err(|source| Error::InvalidDerivation {
                which: it.which.clone(),
                source,
            })?;
        hashes.insert(path.clone(), h);
        if let Some(woken) = waiting.remove(&path) {
            queue.extend(woken);
        }
        done[i] = Some(path);
    }
    // Whatever still waits names a `.drv` that nothing provides.
    let mut stuck: Vec<(usize, StorePath)> = waiting
        .into_iter()
        .flat_map(|(input, who)| who.into_iter().map(move |i| (i, input.clone())))
        .collect();
    stuck.sort();
    if let Some((i, input)) = stuck.into_iter().next() {
        // A path of the right name in the batch suggests a stale reference.
        let hint = done
            .iter()
            .flatten()
            .find(|p| p.name() == input.name())
            .map(|p| format!(" (this batch makes `{}`: is the path stale?)", dir.full(p)))
            .unwrap_or_default();
        return Err(Error::UnknownInput {
            which: items[i].which.clone(),
            input: dir.full(&input),
            hint,
        });
    }
    Ok(items
        .into_iter()
        .zip(done)
        .map(|(it, path)| (path.expect("every item resolved"), it.derivation))
        .collect())
}

/// Hashes modulo of derivations, memoized: those of the batch as they are
/// computed, those in the store read from their `.drv` files on demand.
struct DrvHashes<'s> {
    store: &'s Store,
    known: HashMap<StorePath, DrvHash>,
}

impl<'s> DrvHashes<'s> {
    fn new(store: &'s Store) -> Self {
        DrvHashes {
            store,
            known: HashMap::new(),
        }
    }

    fn known(&self, drv: &StorePath) -> bool {
        self.known.contains_key(drv)
    }

    fn get(&self, drv: &StorePath) -> Option<DrvHash> {
        self.known.get(drv).copied()
    }

    fn insert(&mut self, drv: StorePath, h: DrvHash) {
        self.known.insert(drv, h);
    }

    /// The hash modulo of `drv`, a `.drv` in the store, reading its inputs
    /// as needed. Iterative: a deep graph must not exhaust the stack.
    fn read_from_store(&mut self, drv: &StorePath) -> Result<DrvHash, bigtop_store::Error> {
        let mut parsed: HashMap<StorePath, Derivation> = HashMap::new();
        let mut stack = vec![drv.clone()];
        while let Some(top) = stack.last().cloned() {
            if self.known.contains_key(&top) {
                stack.pop();
                continue;
            }
            if !parsed.contains_key(&top) {
                if !self.store.is_valid(&top)? {
                    return Err(bigtop_store::Error::NotValid { path: top });
                }
                let d = self.store.read_derivation(&top)?;
                parsed.insert(top.clone(), d);
            }
            let d = &parsed[&top];
            let missing: Vec<StorePath> = d
                .input_drvs
                .keys()
                .filter(|p| !self.known.contains_key(*p))
                .cloned()
                .collect();
            if missing.is_empty() {
                let h = d
                    .hash_modulo(self.store.store_dir(), |p| self.known.get(p).copied())
                    .map_err(|source| bigtop_store::Error::BadDerivation {
                        name: top.to_string(),
                        source,
                    })?;
                self.known.insert(top, h);
                stack.pop();
            } else {
                // A `.drv` cannot be its own input (its path hashes its
                // inputs' paths), so this terminates.
                stack.extend(missing);
            }
        }
        Ok(self.known[drv])
    }
}

/// Runs `bigtop show-derivation` (and `bigtop derivation show`).
pub fn show(args: &ShowDerivationArgs, global: &GlobalArgs) -> Result<(), Error> {
    let store = global.store.open()?;
    let mut order: Vec<StorePath> = Vec::new();
    let mut derivations: HashMap<StorePath, Derivation> = HashMap::new();
    for input in &args.paths {
        let drv = derivation_of(&store, input)?;
        if args.recursive {
            closure_postorder(&store, &drv, &mut derivations, &mut order)?;
        } else if !derivations.contains_key(&drv) {
            derivations.insert(drv.clone(), read(&store, &drv)?);
            order.push(drv);
        }
    }
    let list: Vec<&Derivation> = order.iter().map(|p| &derivations[p]).collect();
    let mut out = Out::new();
    out.pretty_json(&list)?;
    Ok(out.finish()?)
}

fn read(store: &Store, drv: &StorePath) -> Result<Derivation, Error> {
    if !store.is_valid(drv)? {
        return Err(bigtop_store::Error::NotValid { path: drv.clone() }.into());
    }
    Ok(store.read_derivation(drv)?)
}

/// Adds `drv` and its input derivations to `order`, inputs first.
fn closure_postorder(
    store: &Store,
    drv: &StorePath,
    derivations: &mut HashMap<StorePath, Derivation>,
    order: &mut Vec<StorePath>,
) -> Result<(), Error> {
    // Depth first without recursion: `Some` marks a derivation whose
    // inputs are already on the stack above it, so that when it comes
    // back up they are done.
    let mut stack: Vec<(StorePath, Option<Derivation>)> = vec![(drv.clone(), None)];
    while let Some((p, expanded)) = stack.pop() {
        if derivations.contains_key(&p) {
            continue;
        }
        match expanded {
            Some(d) => {
                derivations.insert(p.clone(), d);
                order.push(p);
            }
            None => {
                let d = read(store, &p)?;
                let inputs: Vec<StorePath> = d
                    .input_drvs
                    .keys()
                    .rev()
                    .filter(|i| !derivations.contains_key(*i))
                    .cloned()
                    .collect();
                stack.push((p, Some(d)));
                stack.extend(inputs.into_iter().map(|i| (i, None)));
            }
        }
    }
    Ok(())
}

/// The `.drv` a user named: the path itself, or the deriver of an output.
pub(crate) fn derivation_of(store: &Store, input: &str) -> Result<StorePath, Error> {
    let path = store::parse_path(store, input)?;
    if path.is_derivation() {
        return Ok(path);
    }
    store.deriver(&path)?.ok_or_else(|| Error::NoDeriver {
        path: store.store_dir().full(&path),
    })
}
