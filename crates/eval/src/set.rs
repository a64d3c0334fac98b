//! Package sets: named recipes, evaluated lazily and once, layered with
//! overlays, overridable — what nixpkgs' `callPackage`, overlays and
//! `override` do.
//!
//! A [`PackageSet`] is a value: a base layer of recipes and any number of
//! overlays. [`PackageSet::eval`] gives its [`Pkgs`], where a package is
//! evaluated on first use and then shared. A recipe asks its inputs of
//! [`Args`]: by name, from the *final* set (after every overlay), so an
//! overlay that replaces a library changes every package that uses it. In
//! an overlay, [`Args::prev`] is the package as the layers below made it.
//! Two sets (last year's release and this year's) are evaluated side by
//! side without sharing anything but identical derivations.
//!
//! ```
//! use bigtop_eval::drv::{DrvBuilder, Platform};
//! use bigtop_eval::set::PackageSet;
//! use bigtop_eval::text;
//! let base = PackageSet::new(Platform::default())
//!     .add("zlib", |a| DrvBuilder::new("zlib-1.3").builder("/bin/sh").build(a.platform()))
//!     .add("curl", |a| {
//!         let zlib = a.get("zlib")?;
//!         DrvBuilder::new("curl-8")
//!             .builder("/bin/sh")
//!             .env("ZLIB", text!("{}", zlib))
//!             .build(a.platform())
//!     });
//! let patched = base.clone().overlay(|o| {
//!     o.add("zlib", |a| {
//!         let old = a.prev()?;
//!         DrvBuilder::new("zlib-1.3-patched")
//!             .builder("/bin/sh")
//!             .env("BASE", text!("{}", old))
//!             .build(a.platform())
//!     });
//! });
//! let (v1, v2) = (base.eval(), patched.eval());
//! assert_ne!(v1.get("curl")?.drv_path(), v2.get("curl")?.drv_path());
//! # Ok::<(), bigtop_eval::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

use crate::drv::{Drv, Remake};
use crate::error::closest;
use crate::package::Stdenv;
use crate::platform::Platform;
use crate::Error;

/// A recipe: makes a package from its inputs.
pub type Recipe = Arc<dyn Fn(&Args) -> Result<Drv, Error> + Send + Sync>;

/// Recipes, in layers: the base, then each overlay. Cheap to clone.
#[derive(Clone)]
pub struct PackageSet {
    platform: Platform,
    layers: Vec<Arc<Layer>>,
    /// What recipes take besides packages (the stdenv, a fetcher's
    /// mirror list, a feature flag), by name; an overlay replaces them.
    values: Arc<HashMap<Arc<str>, Shared>>,
}

/// A value of a package set: any type, shared by every recipe.
type Shared = Arc<dyn std::any::Any + Send + Sync>;

impl fmt::Debug for PackageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackageSet")
            .field("platform", &self.platform)
            .field(
                "layers",
                &self
                    .layers
                    .iter()
                    .map(|l| l.keys().collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// An overlay being written: its recipes replace or add packages.
#[derive(Default)]
pub struct Overlay {
    recipes: Layer,
    values: HashMap<Arc<str>, Shared>,
}

impl Overlay {
    /// Replaces or adds `name`.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        recipe: impl Fn(&Args) -> Result<Drv, Error> + Send + Sync + 'static,
    ) -> &mut Self {
        self.recipes
            .insert(Arc::from(name.into()), Arc::new(recipe));
        self
    }

    /// Replaces or adds the value `name` (see [`PackageSet::value`]):
    /// every recipe asking for it gets this one.
    pub fn value<T: std::any::Any + Send + Sync>(
        &mut self,
        name: impl Into<String>,
        value: T,
    ) -> &mut Self {
        self.values.insert(Arc::from(name.into()), Arc::new(value));
        self
    }

    /// Replaces the stdenv every recipe builds with.
    pub fn stdenv(&mut self, stdenv: Stdenv) -> &mut Self {
        self.value(STDENV, stdenv)
    }
}

/// The name the stdenv is kept under among a set's values.
const STDENV: &str = "stdenv";

impl PackageSet {
    /// An empty set evaluated for `platform`.
    pub fn new(platform: Platform) -> Self {
        PackageSet {
            platform,
            layers: vec![Arc::new(Layer::default())],
            values: Arc::default(),
        }
    }

    /// Adds (or replaces) a value recipes take by name, as `callPackage`
    /// passes `stdenv` or `fetchurl`: any type, shared, read with
    /// [`Args::value`]. An overlay may replace it.
    pub fn value<T: std::any::Any + Send + Sync>(
        mut self,
        name: impl Into<String>,
        value: T,
    ) -> Self {
        Arc::make_mut(&mut self.values).insert(Arc::from(name.into()), Arc::new(value));
        self
    }

    /// The stdenv recipes build with ([`Args::stdenv`]): given once to
    /// the set rather than cloned into every recipe.
    pub fn stdenv(self, stdenv: Stdenv) -> Self {
        self.value(STDENV, stdenv)
    }

    /// Adds (or replaces) a recipe in the top layer.
    pub fn add(
        mut self,
        name: impl Into<String>,
        recipe: impl Fn(&Args) -> Result<Drv, Error> + Send + Sync + 'static,
    ) -> Self {
        let top = self.layers.last_mut().expect("a set has a layer");
        Arc::make_mut(top).insert(Arc::from(name.into()), Arc::new(recipe));
        self
    }

    /// A new layer on top: its recipes see the final set through
    /// [`Args::get`] and what they replace through [`Args::prev`].
    pub fn overlay(mut self, write: impl FnOnce(&mut Overlay)) -> Self {
        let mut o = Overlay::default();
        write(&mut o);
        self.layers.push(Arc::new(o.recipes));
        if !o.values.is_empty() {
            Arc::make_mut(&mut self.values).extend(o.values);
        }
        self
    }

    /// Every package name, sorted.
    pub fn names(&self) -> BTreeSet<&str> {
        self.layers
            .iter()
            .flat_map(|l| l.keys().map(|k| &**k))
            .collect()
    }

    /// The set, ready to evaluate packages as they are asked for.
    pub fn eval(&self) -> Pkgs {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Pkgs(Arc::new(Inner {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            set: self.clone(),
            // Every slot is made up front (one allocation per package),
            // so that looking one up takes no lock: every input of every
            // package is looked up, from every core.
            memo: self
                .layers
                .iter()
                .map(|l| l.keys().map(|k| (k.clone(), Slot::default())).collect())
                .collect(),
        }))
    }
}

/// One package of one layer: evaluated by the first thread that asks,
/// waited for by the others.
#[derive(Default)]
struct SlotInner {
    state: Mutex<SlotState>,
    done: Condvar,
}

type Slot = Arc<SlotInner>;

#[derive(Default)]
enum SlotState {
    #[default]
    Empty,
    Running(ThreadId),
    Done(Result<Drv, Arc<Error>>),
}

impl SlotInner {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Which thread waits for which package (and the package's name): a
/// thread about to wait follows this to find a cycle that runs across
/// threads, which would otherwise wait forever.
static WAITING: Mutex<Option<Waits>> = Mutex::new(None);

/// Waiting thread → the package it waits for, and its name.
type Waits = HashMap<ThreadId, (Slot, Arc<str>)>;

/// Recipes of one layer by name. Looked up for every input of every
/// package: hashed with FNV-1a, which for short names costs a fraction
/// of the standard hasher (names are the user's own, not an attacker's).
type Layer = HashMap<Arc<str>, Recipe, BuildHasherDefault<Fnv>>;

/// FNV-1a, 64 bits.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Evaluated packages of one layer, by name: a slot for each of its
/// recipes.
type Memo = HashMap<Arc<str>, Slot, BuildHasherDefault<Fnv>>;

/// An evaluated package set: each package is made on first use, once.
/// Cheap to clone (clones share what was evaluated); safe to use from
/// several threads.
#[derive(Clone)]
pub struct Pkgs(Arc<Inner>);

struct Inner {
    id: u64,
    set: PackageSet,
    /// Per layer: name → the package as that layer makes it.
    memo: Vec<Memo>,
}

impl fmt::Debug for Pkgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n: usize = self
            .0
            .memo
            .iter()
            .flat_map(|m| m.values())
            .filter(|s| matches!(*s.lock(), SlotState::Done(_)))
            .count();
        write!(
            f,
            "Pkgs({} packages, {n} evaluated)",
            self.0.set.names().len()
        )
    }
}

thread_local! {
    /// The packages this thread is evaluating, innermost last: a package
    /// asked for again while it is being made is a cycle.
    static EVALUATING: RefCell<Vec<(u64, usize, Arc<str>)>> = const { RefCell::new(Vec::new()) };
}

impl Pkgs {
    /// The platform its packages are evaluated for.
    pub fn platform(&self) -> &Platform {
        &self.0.set.platform
    }

    /// The package `name`, as the final set makes it.
    pub fn get(&self, name: &str) -> Result<Drv, Error> {
        match self.top_layer_of(name, usize::MAX) {
            Some(layer) => self.eval_at(layer, name, &BTreeMap::new()),
            None => Err(self.missing(name)),
        }
    }

    /// Every package of the set, evaluated on every core (errors
    /// included, by name).
    pub fn all(&self) -> BTreeMap<String, Result<Drv, Error>> {
        let names: Vec<&str> = self.0.set.names().into_iter().collect();
        // Inside a recipe, this thread owns the packages on its stack: if
        // it waited in rayon's pool it could take another job that asks
        // for one of them and wait on itself. One recipe's `all` runs on
        // its own thread; the set as a whole still spreads over every
        // core.
        let inside_a_recipe = EVALUATING.with(|s| !s.borrow().is_empty());
        let results = if inside_a_recipe {
            crate::par::one_by_one(&names, |name| self.get(name))
        } else {
            crate::par::on_every_core(&names, |name| self.get(name))
        };
        names
            .into_iter()
            .zip(results)
            .map(|(name, r)| {
                let r = r.unwrap_or_else(|why| {
                    Err(Error::InPackage {
                        name: name.to_owned(),
                        source: std::sync::Arc::new(Error::RecipePanicked { message: why }),
                    })
                });
                (name.to_owned(), r)
            })
            .collect()
    }

    /// The value `name` of the set ([`PackageSet::value`]), as a `T`.
    pub fn value<T: std::any::Any + Send + Sync>(&self, name: &str) -> Result<Arc<T>, Error> {
        let values = &self.0.set.values;
        let Some(v) = values.get(name) else {
            return Err(Error::NoSuchValue {
                name: name.to_owned(),
                suggestions: closest(name, values.keys().map(|k| &**k)),
            });
        };
        v.clone().downcast::<T>().map_err(|_| Error::ValueType {
            name: name.to_owned(),
            expected: std::any::type_name::<T>(),
        })
    }

    fn missing(&self, name: &str) -> Error {
        Error::NoSuchPackage {
            name: name.to_owned(),
            suggestions: closest(name, self.0.set.names()),
        }
    }

    /// The highest layer below `below` that defines `name`.
    fn top_layer_of(&self, name: &str, below: usize) -> Option<usize> {
        let layers = &self.0.set.layers;
        (0..layers.len().min(below))
            .rev()
            .find(|&l| layers[l].contains_key(name))
    }

    /// `name` as layer `layer` makes it, with `overrides` for inputs;
    /// memoized when there are none.
    fn eval_at(
        &self,
        layer: usize,
        name: &str,
        overrides: &BTreeMap<String, Drv>,
    ) -> Result<Drv, Error> {
        let Some((key_name, slot)) = self.0.memo[layer].get_key_value(name) else {
            return Err(self.missing(name));
        };
        let wrap = |e: Arc<Error>| match &*e {
            // A cycle reads best as one chain, not nested per package.
            Error::Cycle { chain } => Error::Cycle {
                chain: chain.clone(),
            },
            _ => Error::InPackage {
                name: name.to_owned(),
                source: e,
            },
        };
        let slot = if overrides.is_empty() {
            if let SlotState::Done(done) = &*slot.lock() {
                return done.clone().map_err(wrap);
            }
            Some(slot)
        } else {
            None
        };
        let key = (self.0.id, layer, key_name.clone());
        let cycle = EVALUATING.with(|s| {
            let s = s.borrow();
            s.iter().position(|k| *k == key).map(|start| {
                let mut chain: Vec<String> = s[start..].iter().map(|k| k.2.to_string()).collect();
                chain.push(name.to_owned());
                chain
            })
        });
        if let Some(chain) = cycle {
            return Err(Error::Cycle { chain });
        }
        let run = || -> Result<Drv, Arc<Error>> {
            EVALUATING.with(|s| s.borrow_mut().push(key.clone()));
            // Popped however the recipe ends: rayon's threads outlive a
            // call, and an entry left by a panic would make the next
            // package this thread evaluates look like a cycle.
            struct Pop;
            impl Drop for Pop {
                fn drop(&mut self) {
                    EVALUATING.with(|s| s.borrow_mut().pop());
                }
            }
            let _pop = Pop;
            self.call(layer, key_name, overrides).map_err(Arc::new)
        };
        let Some(slot) = slot else {
            return run().map_err(wrap);
        };
        let me = std::thread::current().id();
        loop {
            let mut state = slot.lock();
            match &*state {
                SlotState::Done(done) => return done.clone().map_err(wrap),
                SlotState::Empty => {
                    *state = SlotState::Running(me);
                    drop(state);
                    // A recipe that panics leaves the slot empty again (the
                    // next to ask runs it, and panics in its own thread),
                    // not running forever.
                    let reset = ResetOnUnwind(slot);
                    let r = run();
                    std::mem::forget(reset);
                    *slot.lock() = SlotState::Done(r.clone());
                    slot.done.notify_all();
                    return r.map_err(wrap);
                }
                SlotState::Running(owner) => {
                    let owner = *owner;
                    drop(state);
                    if let Some(chain) = wait_cycle(me, owner, key_name, slot) {
                        return Err(Error::Cycle { chain });
                    }
                    let mut state = slot.lock();
                    while matches!(*state, SlotState::Running(_)) {
                        state = slot.done.wait(state).unwrap_or_else(|e| e.into_inner());
                    }
                    drop(state);
                    if let Some(w) = WAITING.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                        w.remove(&me);
                    }
                }
            }
        }
    }

    fn call(
        &self,
        layer: usize,
        name: &Arc<str>,
        overrides: &BTreeMap<String, Drv>,
    ) -> Result<Drv, Error> {
        let recipe = self.0.set.layers[layer][name].clone();
        let args = Args {
            pkgs: self.clone(),
            layer,
            name: name.clone(),
            overrides: overrides.clone(),
            asked: Mutex::new(BTreeSet::new()),
        };
        let drv = recipe(&args)?;
        let call = Call {
            pkgs: self.clone(),
            layer,
            name: name.to_string(),
            overrides: overrides.clone(),
            inputs: args.asked.into_inner().unwrap_or_else(|e| e.into_inner()),
        };
        Ok(drv.with_recipe(Arc::new(call)))
    }
}

struct ResetOnUnwind<'a>(&'a Slot);

impl Drop for ResetOnUnwind<'_> {
    fn drop(&mut self) {
        *self.0.lock() = SlotState::Empty;
        self.0.done.notify_all();
    }
}

/// Before `me` waits for `name` (which `owner` is evaluating): whether
/// the threads' waits close a cycle back to `me` — then the packages
/// along it, and `me` does not wait. Otherwise `me` is recorded as
/// waiting.
fn wait_cycle(me: ThreadId, owner: ThreadId, name: &Arc<str>, slot: &Slot) -> Option<Vec<String>> {
    let mut waiting = WAITING.lock().unwrap_or_else(|e| e.into_inner());
    let w = waiting.get_or_insert_with(HashMap::new);
    let mut chain = vec![name.to_string()];
    let mut t = owner;
    while let Some((s, n)) = w.get(&t) {
        chain.push(n.to_string());
        let runner = match &*s.lock() {
            SlotState::Running(r) => *r,
            _ => break,
        };
        if runner == me {
            chain.push(name.to_string());
            return Some(chain);
        }
        t = runner;
    }
    w.insert(me, (slot.clone(), name.clone()));
    None
}

/// What a recipe asks its inputs of.
pub struct Args {
    pkgs: Pkgs,
    layer: usize,
    name: Arc<str>,
    overrides: BTreeMap<String, Drv>,
    /// The inputs asked for: what `override` may replace.
    asked: Mutex<BTreeSet<String>>,
}

impl fmt::Debug for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Args(for `{}`)", self.name)
    }
}

impl Args {
    /// The package `name` from the final set (or as overridden).
    pub fn get(&self, name: &str) -> Result<Drv, Error> {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned());
        match self.overrides.get(name) {
            Some(d) => Ok(d.clone()),
            None => self.pkgs.get(name),
        }
    }

    /// This package as the layers below this recipe's make it: what an
    /// overlay builds on.
    pub fn prev(&self) -> Result<Drv, Error> {
        self.prev_of(&self.name)
    }

    /// The package `name` as the layers below this recipe's make it.
    pub fn prev_of(&self, name: &str) -> Result<Drv, Error> {
        match self.pkgs.top_layer_of(name, self.layer) {
            Some(l) => self.pkgs.eval_at(l, name, &BTreeMap::new()),
            None => Err(Error::NoSuchPackage {
                name: name.to_owned(),
                suggestions: Vec::new(),
            }),
        }
    }

    /// The platform to evaluate for.
    pub fn platform(&self) -> &Platform {
        self.pkgs.platform()
    }

    /// The whole final set.
    pub fn pkgs(&self) -> &Pkgs {
        &self.pkgs
    }

    /// The package being made.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value `name` of the final set ([`PackageSet::value`]).
    pub fn value<T: std::any::Any + Send + Sync>(&self, name: &str) -> Result<Arc<T>, Error> {
        self.pkgs.value(name)
    }

    /// The stdenv of the final set ([`PackageSet::stdenv`]).
    ///
    /// ```
    /// use bigtop_eval::drv::Platform;
    /// use bigtop_eval::package::{Package, Phase, Stdenv};
    /// use bigtop_eval::set::PackageSet;
    /// let p = Platform::default();
    /// let stdenv = Stdenv::new(&p, "/bin/sh", Vec::<bigtop_eval::drv::Str>::new())?;
    /// let pkgs = PackageSet::new(p)
    ///     .stdenv(stdenv)
    ///     .add("hello", |a| {
    ///         Package::new("hello")
    ///             .version("1.0")
    ///             .phase(Phase::Install, "mkdir -p $out")
    ///             .build(&a.stdenv()?)
    ///     })
    ///     .eval();
    /// assert_eq!(pkgs.get("hello")?.name(), "hello-1.0");
    /// # Ok::<(), bigtop_eval::Error>(())
    /// ```
    pub fn stdenv(&self) -> Result<Stdenv, Error> {
        self.value::<Stdenv>(STDENV).map(|s| (*s).clone())
    }
}

/// How a recipe made a package: enough to make it again with other
/// inputs.
struct Call {
    pkgs: Pkgs,
    layer: usize,
    name: String,
    overrides: BTreeMap<String, Drv>,
    inputs: BTreeSet<String>,
}

impl Remake for Call {
    fn remake(&self, replace: Vec<(&str, Drv)>) -> Result<Drv, Error> {
        let mut overrides = self.overrides.clone();
        for (input, drv) in replace {
            if !self.inputs.contains(input) {
                return Err(Error::NoSuchInput {
                    package: self.name.clone(),
                    input: input.to_owned(),
                    takes: self
                        .inputs
                        .iter()
                        .map(|i| format!("`{i}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            overrides.insert(input.to_owned(), drv);
        }
        self.pkgs.eval_at(self.layer, &self.name, &overrides)
    }
}
