//! Collecting modules and evaluating their options.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use super::error::{nearest_under, Error, Errors, ShownDefinition, Warning};
use super::merge::{self, At, Evaluator, KeyToMerge, PlacedDefinition, SubPath};
use super::types::Type;
use super::value::{FromValue, Value};
use super::{Check, Cond, Key, Lazy, Migration, Module, OptionDecl};
use crate::set::Pkgs;

/// A memoized computation: under way (asked for again, it is a cycle),
/// or done.
enum MemoEntry<T> {
    Running,
    Done(Result<T, Error>),
}

/// The winning definitions of a map or submodule option, by key.
type DefsByKey = Arc<BTreeMap<String, Vec<PlacedDefinition>>>;

/// A node of the option tree, as the memo tables key it: an option, or a
/// key or field below a map or submodule option.
///
/// One string, the option's path then each key after a NUL and its
/// length (keys may hold dots, so a dotted path would not tell them
/// apart, and data may even put a NUL in a key, which the length keeps
/// from running into the next key): a node's key costs one allocation,
/// and an option's node is its path, so an option's entry is found by
/// its path without making one.
#[derive(Clone, PartialEq, Eq, Hash)]
struct NodePath(String);

impl NodePath {
    /// The node `path` below the option `option`.
    fn below(option: &str, path: &[String]) -> NodePath {
        let mut k = option.to_owned();
        for p in path {
            // Writing to a String cannot fail.
            let _ = write!(k, "\0{}:{p}", p.len());
        }
        NodePath(k)
    }
}

impl NodePath {
    /// How errors and cycles name the node: its option's path and the
    /// keys below it, dotted.
    fn shown(&self) -> String {
        let Some((option, mut rest)) = self.0.split_once('\0') else {
            return self.0.clone();
        };
        let mut out = option.to_owned();
        while let Some((len, tail)) = rest.split_once(':') {
            let Some(key) = len.parse::<usize>().ok().and_then(|n| tail.get(..n)) else {
                break;
            };
            out.push('.');
            out.push_str(key);
            match tail[key.len()..].strip_prefix('\0') {
                Some(next) => rest = next,
                None => break,
            }
        }
        out
    }
}

/// An option's node is its path (hashed and compared as the string).
impl Borrow<str> for NodePath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// One memo table: a node's computation, by node.
type Memo<T> = RefCell<HashMap<NodePath, MemoEntry<T>>>;

/// An evaluated configuration: every option of a set of modules, merged
/// on first read and then kept.
///
/// Not shared between threads (each machine of a fleet is evaluated by
/// one); it may be sent to another.
pub struct Config {
    /// Shared by every configuration of the same declaring modules.
    decls: Arc<BTreeMap<String, OptionDecl>>,
    defs: HashMap<String, Vec<PlacedDefinition>>,
    modules: Vec<Module>,
    pkgs: Option<Pkgs>,
    warnings: Vec<Warning>,
    /// Merged values of options. Shared: reading one key of a big map
    /// option (one /etc file of hundreds) copies nothing.
    memo: Memo<Arc<Value>>,
    /// Map and submodule options' definitions split by key, so that one
    /// key is merged without the others: sibling keys may read each
    /// other, as in NixOS.
    splits: Memo<DefsByKey>,
    /// Single keys of map and submodule options, merged on their own;
    /// `None` where every definition of the key is off.
    keys: Memo<Option<Arc<Value>>>,
    /// Which keys a map or submodule option has.
    key_lists: Memo<Vec<String>>,
    /// The nodes being merged, innermost last, each with what follows
    /// its name in a cycle's chain.
    stack: RefCell<Vec<(NodePath, &'static str)>>,
    /// What each path read names.
    resolved: RefCell<HashMap<String, Arc<Resolved>>>,
    /// What paths name, for every configuration of the same declarations
    /// (it depends on them alone): a fleet's machines read the same
    /// paths, each found once.
    shared: Arc<SharedResolved>,
}

/// What paths name, by path, shared by the configurations of one set of
/// declarations.
type SharedResolved = Mutex<HashMap<String, Arc<Resolved>>>;

/// How many paths [`SharedResolved`] keeps: past that (a program reading
/// paths of its own making for every machine), each configuration finds
/// the new ones on its own.
const SHARED_RESOLVED_KEPT: usize = 10_000;

/// What a path names: an option (with the keys below it), a group of
/// options (each child's name and path), or nothing.
enum Resolved {
    Option(String, Vec<String>),
    Group(Vec<(String, String)>),
    Nothing,
}

/// One definition of an option, as [`Config::definitions`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionInfo {
    /// The definition: module, place, priority, value (when it could be
    /// computed).
    pub shown: ShownDefinition,
    /// The path below the option it was given for (`alice.uid` of
    /// `users`), empty when for the option itself.
    pub sub: Vec<String>,
    /// Whether its conditions hold.
    pub active: bool,
    /// Whether it is at the winning priority (and active).
    pub wins: bool,
}

impl Config {
    /// Collects `modules` with their imports and evaluates every option
    /// and assertion. `pkgs` is the package set definitions read with
    /// [`Config::pkgs`]. Every error (and every warning) is returned
    /// together.
    pub fn eval(modules: &[Module], pkgs: Option<Pkgs>) -> Result<Config, Errors> {
        // What collecting finds does not stop the evaluation: a definition
        // that could not be placed is left out, and everything else is
        // still checked, so that one run reports every error.
        let (cfg, mut errors) = Config::gather(modules, pkgs);
        for path in cfg.decls.keys() {
            match cfg.option(path) {
                Ok(_) => {}
                // Unset and unread: an option only needs a value where it
                // is used (a reader reports it).
                Err(Error::NoValue { option, .. }) if option == *path => {}
                // An option that only failed because another did is
                // reported once, by the other.
                Err(e) if errors.contains(&e) => {}
                Err(e) => errors.push(e),
            }
        }
        let mut warnings = cfg.warnings.clone();
        for m in &cfg.modules {
            for c in &m.0.checks {
                match cfg.run_check(c) {
                    Ok(None) => {}
                    Ok(Some(message)) if c.warning => warnings.push(Warning {
                        module: m.0.name.clone(),
                        loc: c.loc.clone(),
                        message,
                    }),
                    Ok(Some(message)) => errors.push(Error::Assertion {
                        module: m.0.name.clone(),
                        loc: c.loc.clone(),
                        message,
                    }),
                    Err(e) => {
                        if !errors.contains(&e) {
                            errors.push(e)
                        }
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(Config { warnings, ..cfg })
        } else {
            Err(Errors {
                machine: None,
                errors,
                warnings,
            })
        }
    }

    /// Collects `modules` without evaluating anything: options are
    /// merged when read. Fails only on what collecting finds (unknown or
    /// removed options, declarations that do not merge).
    pub fn collect(modules: &[Module], pkgs: Option<Pkgs>) -> Result<Config, Errors> {
        let (cfg, errors) = Config::gather(modules, pkgs);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(Errors {
                machine: None,
                errors,
                warnings: cfg.warnings,
            })
        }
    }

    fn gather(modules: &[Module], pkgs: Option<Pkgs>) -> (Config, Vec<Error>) {
        let modules = gather(modules);
        let (decls, shared, mut errors) = declarations(&modules);
        let mut cfg = Config {
            decls,
            defs: HashMap::new(),
            modules: Vec::new(),
            pkgs,
            warnings: Vec::new(),
            memo: RefCell::new(HashMap::new()),
            splits: RefCell::new(HashMap::new()),
            keys: RefCell::new(HashMap::new()),
            key_lists: RefCell::new(HashMap::new()),
            stack: RefCell::new(Vec::new()),
            resolved: RefCell::new(HashMap::new()),
            shared,
        };
        let migrations: Vec<(&Migration, Arc<str>)> = modules
            .iter()
            .flat_map(|m| m.0.migrations.iter().map(|x| (x, m.0.name.clone())))
            .collect();
        let mut seq = 0;
        for m in &modules {
            for d in &m.0.defs {
                seq += 1;
                let def = PlacedDefinition {
                    sub: SubPath::default(),
                    value: Value::Null,
                    lazy: None,
                    priority: d.def.priority,
                    order: d.def.order,
                    conds: d.conds.clone(),
                    loc: d.loc.clone(),
                    module: m.0.name.clone(),
                    seq,
                }
                .giving(&d.def.value);
                cfg.place(&d.path, def, &migrations, &mut errors, 0);
            }
        }
        cfg.modules = modules;
        (cfg, errors)
    }

    /// Puts a definition of `path` on the option it is for.
    /// Every definition that cannot be placed adds an error (a map given
    /// to a group of options may have several bad keys); `renames` counts
    /// the migrations followed, so that renames in a loop end.
    fn place(
        &mut self,
        path: &[String],
        def: PlacedDefinition,
        migrations: &[(&Migration, Arc<str>)],
        errors: &mut Vec<Error>,
        renames: usize,
    ) {
        let dotted = path.join(".");
        for (m, _) in migrations {
            match m {
                Migration::Renamed { from, to, .. } => {
                    if let Some(rest) = under(path, from) {
                        let new: Vec<String> = to
                            .split('.')
                            .map(str::to_owned)
                            .chain(rest.iter().cloned())
                            .collect();
                        let shown = new.join(".");
                        self.warnings.push(Warning {
                            module: def.module.clone(),
                            loc: def.loc.clone(),
                            message: format!(
                                "the option `{dotted}` has been renamed to `{shown}`: define `{shown}` instead"
                            ),
                        });
                        if renames >= migrations.len() {
                            errors.push(Error::BadDefinition {
                                path: dotted,
                                module: def.module,
                                loc: def.loc,
                                reason: "names an option renamed in a loop: check the modules' `renamed` calls".into(),
                            });
                            return;
                        }
                        return self.place(&new, def, migrations, errors, renames + 1);
                    }
                }
                Migration::Removed {
                    path: removed,
                    instructions,
                    ..
                } => {
                    if under(path, removed).is_some() {
                        errors.push(Error::Removed {
                            option: removed.clone(),
                            module: def.module,
                            loc: def.loc,
                            instructions: instructions.clone(),
                        });
                        return;
                    }
                }
            }
        }
        if let Some((option, sub)) = self.option_of_segments(path) {
            let def = PlacedDefinition {
                sub: SubPath::new(sub),
                ..def
            };
            self.defs.entry(option).or_default().push(def);
            return;
        }
        if self.is_group(&dotted) {
            let fields = match (def.lazy.is_some(), def.value) {
                (false, Value::Map(fields)) => fields,
                (code, other) => {
                    errors.push(Error::BadDefinition {
                        path: dotted,
                        module: def.module,
                        loc: def.loc,
                        reason: format!(
                        "gives {} to a group of options; give a map of them, or define each option",
                        if code { "code" } else { other.kind() }
                    ),
                    });
                    return;
                }
            };
            for (k, v) in fields {
                let one = PlacedDefinition {
                    sub: SubPath::default(),
                    value: v,
                    lazy: None,
                    conds: def.conds.clone(),
                    loc: def.loc.clone(),
                    module: def.module.clone(),
                    priority: def.priority,
                    order: def.order,
                    seq: def.seq,
                };
                let mut at = path.to_vec();
                at.push(k);
                self.place(&at, one, migrations, errors, renames);
            }
            return;
        }
        errors.push(Error::Unknown {
            suggestions: self.suggest(&dotted),
            path: dotted,
            module: def.module,
            loc: def.loc,
        });
    }

    /// The declared option a path of segments is, or is inside (with the
    /// rest, which may hold keys with dots).
    fn option_of_segments(&self, path: &[String]) -> Option<(String, Vec<String>)> {
        // No option is declared inside another (collecting refuses it), so
        // the first prefix that is an option is the only one.
        let mut key = String::with_capacity(path.iter().map(|p| p.len() + 1).sum());
        for (n, seg) in path.iter().enumerate() {
            if n > 0 {
                key.push('.');
            }
            key.push_str(seg);
            if self.decls.contains_key(&key) {
                return Some((key, path[n + 1..].to_vec()));
            }
        }
        None
    }

    /// Whether options are declared under `path`.
    fn is_group(&self, path: &str) -> bool {
        let dotted = format!("{path}.");
        self.decls
            .range(dotted.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&dotted))
    }

    fn suggest(&self, path: &str) -> Vec<String> {
        crate::error::nearest(path, self.decls.keys().map(|k| &**k))
    }

    /// The package set of the machine's release, if one was given.
    pub fn pkgs(&self) -> Result<&Pkgs, Error> {
        self.pkgs
            .as_ref()
            .ok_or_else(|| Error::msg("this configuration was evaluated without a package set"))
    }

    /// The value at `path` (an option, something inside one, or a group
    /// of options as a map), read as `T`.
    pub fn get<T: FromValue>(&self, path: &str) -> Result<T, Error> {
        let resolved = self.resolve(path);
        let r = match &*resolved {
            Resolved::Option(option, sub) => self.with_value_in(option, sub, T::from_value_ref)?,
            _ => T::from_value(self.value(path)?),
        };
        r.map_err(|reason| Error::Convert {
            option: path.to_owned(),
            rust_type: std::any::type_name::<T>(),
            reason,
        })
    }

    /// The value at `path` as JSON (see [`Value::to_json`]), converted
    /// where it is kept rather than from a copy: what a tool printing a
    /// machine's options uses.
    pub fn json(&self, path: &str) -> Result<serde_json::Value, Error> {
        match &*self.resolve(path) {
            Resolved::Option(option, sub) => self.with_value_in(option, sub, Value::to_json),
            _ => Ok(self.value(path)?.to_json()),
        }
    }

    /// The option (or struct of options) `key` names, as its Rust type.
    pub fn read<K: Key>(&self, key: K) -> Result<K::Value, Error> {
        self.get(key.path())
    }

    /// The keys of the map or submodule option `path` (a map's defined
    /// keys, a submodule's fields), without merging their values.
    pub fn keys(&self, path: &str) -> Result<Vec<String>, Error> {
        let Some(decl) = self.decls.get(path).filter(|d| d.ty.is_keyed()) else {
            return Err(Error::NoSuchOption {
                path: format!("{path} (as a map or submodule option)"),
                suggestions: self.suggest(path),
            });
        };
        // Which keys are there depends on their definitions' conditions,
        // which may ask for the keys again: a cycle, reported as one.
        self.memoized(&self.key_lists, path, " (its keys)", || {
            let split = self.split(path)?;
            let mut out = Vec::new();
            for key in merge::keys_of(&decl.ty, &split) {
                // A map key is there if one of its definitions is on.
                let on = match split.get(&key) {
                    Some(defs) if decl.ty.submodule().is_none() => {
                        let mut any = false;
                        for d in defs {
                            if self.holds(&d.conds)? {
                                any = true;
                                break;
                            }
                        }
                        any
                    }
                    _ => true,
                };
                if on {
                    out.push(key);
                }
            }
            Ok(out)
        })
    }

    /// The value at `path`, untyped.
    pub fn value(&self, path: &str) -> Result<Value, Error> {
        let resolved = self.resolve(path);
        match &*resolved {
            Resolved::Option(option, sub) => self.value_in(option, sub),
            Resolved::Group(children) => {
                let mut out = BTreeMap::new();
                for (name, full) in children {
                    out.insert(name.clone(), self.value(full)?);
                }
                Ok(Value::Map(out))
            }
            Resolved::Nothing => Err(Error::NoSuchOption {
                path: path.to_owned(),
                suggestions: self.suggest(path),
            }),
        }
    }

    /// What `path` names, found once per configuration: the same paths
    /// are read again and again (by every definition reading an option),
    /// and finding one parses it and looks up its prefixes.
    fn resolve(&self, path: &str) -> Arc<Resolved> {
        if let Some(r) = self.resolved.borrow().get(path) {
            return r.clone();
        }
        let known = self.lock_shared().get(path).cloned();
        let r = known.unwrap_or_else(|| {
            let r = Arc::new(self.resolve_anew(path));
            let mut shared = self.lock_shared();
            if shared.len() < SHARED_RESOLVED_KEPT {
                shared.insert(path.to_owned(), r.clone());
            }
            r
        });
        self.resolved
            .borrow_mut()
            .insert(path.to_owned(), r.clone());
        r
    }

    fn lock_shared(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Resolved>>> {
        // What is kept is only ever whole entries: a panic elsewhere
        // while holding the lock leaves nothing half-written.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn resolve_anew(&self, path: &str) -> Resolved {
        let segments = super::parse_path(path);
        if let Some((option, sub)) = self.option_of_segments(&segments) {
            return Resolved::Option(option, sub);
        }
        // Options are declared by their segments joined with dots: a
        // group given with a quoted segment is looked up that way too.
        let path = segments.join(".");
        if !self.is_group(&path) {
            return Resolved::Nothing;
        }
        let dotted = format!("{path}.");
        let mut children: Vec<(String, String)> = Vec::new();
        for (k, _) in self
            .decls
            .range(dotted.clone()..)
            .take_while(|(k, _)| k.starts_with(&dotted))
        {
            let c = k[dotted.len()..].split('.').next().unwrap_or("");
            if children.last().is_none_or(|(last, _)| last != c) {
                children.push((c.to_owned(), format!("{path}.{c}")));
            }
        }
        Resolved::Group(children)
    }

    /// The value at `sub` below the declared option `option`.
    fn value_in(&self, option: &str, sub: &[String]) -> Result<Value, Error> {
        self.with_value_in(option, sub, Value::clone)
    }

    /// `f` of the value at `sub` below the declared option `option`,
    /// borrowed from where it is kept: a reader converting it to a Rust
    /// type copies only what it keeps, not the whole tree.
    fn with_value_in<R>(
        &self,
        option: &str,
        sub: &[String],
        f: impl FnOnce(&Value) -> R,
    ) -> Result<R, Error> {
        let merged = matches!(self.memo.borrow().get(option), Some(MemoEntry::Done(Ok(_))));
        // As deep as the path goes through maps and submodules, a node is
        // merged on its own (unless the whole option already is).
        let mut depth = 0;
        let decl = &self.decls[option];
        if !merged && decl.apply.is_none() && !decl.read_only {
            let mut t = &decl.ty;
            while let Some(k) = sub.get(depth) {
                let Some((next, _)) = t.inner(k) else { break };
                // A field with `apply` (or read only) is merged as a whole
                // node: what is below it is read from its applied value.
                let whole = t
                    .submodule()
                    .and_then(|s| s.fields.get(k.as_str()))
                    .is_some_and(|d| d.apply.is_some() || d.read_only);
                t = next;
                depth += 1;
                if whole {
                    break;
                }
            }
        }
        let whole = if depth > 0 {
            self.node_present(option, &sub[..depth])?
        } else {
            self.option(option)?
        };
        let mut v: &Value = &whole;
        for (i, key) in sub.iter().enumerate().skip(depth) {
            let missing = |keys: Vec<String>| {
                let at = node_shown(option, &sub[..i]);
                Error::NoSuchOption {
                    path: format!("{at}.{key}"),
                    suggestions: nearest_under(&at, key, keys.iter().map(|k| &**k)),
                }
            };
            v = match v {
                Value::Map(m) => match m.get(key.as_str()) {
                    Some(v) => v,
                    None => return Err(missing(m.keys().cloned().collect())),
                },
                Value::List(l) => match key.parse::<usize>().ok().and_then(|i| l.get(i)) {
                    Some(v) => v,
                    None => return Err(missing(Vec::new())),
                },
                _ => return Err(missing(Vec::new())),
            };
        }
        Ok(f(v))
    }

    /// The merged value of the declared option `path`, once.
    fn option(&self, path: &str) -> Result<Arc<Value>, Error> {
        self.memoized(&self.memo, path, "", || self.merge(path).map(Arc::new))
    }

    /// `compute`d once per `key` (a [`NodePath`]'s text) of `table`;
    /// `suffix` follows the node's name in a cycle's chain. A value
    /// already computed is found without allocating.
    fn memoized<T: Clone>(
        &self,
        table: &Memo<T>,
        key: &str,
        suffix: &'static str,
        compute: impl FnOnce() -> Result<T, Error>,
    ) -> Result<T, Error> {
        match table.borrow().get(key) {
            Some(MemoEntry::Done(r)) => return r.clone(),
            Some(MemoEntry::Running) => {
                let stack = self.stack.borrow();
                let start = stack
                    .iter()
                    .position(|(p, s)| p.0 == key && *s == suffix)
                    .unwrap_or(0);
                let mut chain: Vec<String> =
                    stack[start..].iter().map(|(p, s)| p.shown() + s).collect();
                chain.push(NodePath(key.to_owned()).shown() + suffix);
                return Err(Error::Cycle { chain });
            }
            None => {}
        }
        let key = NodePath(key.to_owned());
        table.borrow_mut().insert(key.clone(), MemoEntry::Running);
        self.stack.borrow_mut().push((key, suffix));
        // A definition whose code panics leaves the value uncomputed, not
        // running: a later read is no false cycle.
        struct Unwind<'a, T> {
            cfg: &'a Config,
            table: &'a Memo<T>,
        }
        impl<T> Drop for Unwind<'_, T> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    if let Some((key, _)) = self.cfg.stack.borrow_mut().pop() {
                        self.table.borrow_mut().remove(&key);
                    }
                }
            }
        }
        let guard = Unwind { cfg: self, table };
        let r = compute();
        std::mem::forget(guard);
        let (key, _) = self
            .stack
            .borrow_mut()
            .pop()
            .expect("the entry pushed above");
        if let Some(slot) = table.borrow_mut().get_mut(&key) {
            *slot = MemoEntry::Done(r.clone());
        }
        r
    }

    /// The active definitions of the option `path` (its default among
    /// them), values not computed yet.
    fn active(&self, path: &str) -> Result<Vec<PlacedDefinition>, Error> {
        let decl = &self.decls[path];
        // Below a key of a map or submodule, a definition's conditions are
        // checked when that key is merged (it takes part here, at the
        // normal priority, as it would in NixOS).
        let keyed = decl.ty.is_keyed();
        let mut defs = Vec::new();
        for d in self.defs.get(path).into_iter().flatten() {
            if keyed && !d.sub.is_empty() {
                defs.push(d.clone());
            } else if self.holds(&d.conds)? {
                defs.push(d.without_conds());
            }
        }
        defs.extend(merge::default_of(decl));
        if defs.is_empty() {
            return Err(Error::NoValue {
                option: path.to_owned(),
                declared: decl.locs[0].clone(),
            });
        }
        Ok(defs)
    }

    fn merge(&self, path: &str) -> Result<Value, Error> {
        let decl = &self.decls[path];
        let v = self.merge_unapplied(path)?;
        match &decl.apply {
            Some(f) => f(v).map_err(|reason| Error::Apply {
                option: path.to_owned(),
                declared: decl.locs[0].clone(),
                reason,
            }),
            None => Ok(v),
        }
    }

    /// A read-only option's definitions whose conditions hold, if more
    /// than one: the error naming them all.
    fn check_read_only(&self, path: &str) -> Result<(), Error> {
        let mut on = Vec::new();
        for d in self.defs.get(path).into_iter().flatten() {
            if self.holds(&d.conds)? {
                on.push(d.shown());
            }
        }
        if on.len() > 1 {
            return Err(Error::ReadOnly {
                option: path.to_owned(),
                defs: on,
            });
        }
        Ok(())
    }

    fn merge_unapplied(&self, path: &str) -> Result<Value, Error> {
        let decl = &self.decls[path];
        if decl.read_only {
            self.check_read_only(path)?;
        }
        if decl.ty.is_keyed() {
            let split = self.split(path)?;
            let at = At::option(path);
            merge::unknown_fields(&at, &decl.ty, &split)?;
            let keys = merge::keys_of(&decl.ty, &split);
            let mut values = Vec::with_capacity(keys.len());
            for key in &keys {
                // As in `node_value`: a key whose definitions and defaults
                // can read nothing is merged directly, without an entry
                // of its own.
                let v = if merge::is_plain(&decl.ty, key, split.get(key)) {
                    let defs = split.get(key).map_or(&[][..], Vec::as_slice);
                    merge::merge_key(self, &at, &decl.ty, key, defs.into(), None)?.map(Arc::new)
                } else {
                    self.node_value(path, std::slice::from_ref(key))?
                };
                values.push(v);
            }
            // The whole value takes over from the keys' own entries (a key
            // read later is taken from it), so each key's value is moved
            // into it rather than copied.
            let mut table = self.keys.borrow_mut();
            let mut out = BTreeMap::new();
            for (key, v) in keys.into_iter().zip(values) {
                table.remove(&NodePath::below(path, std::slice::from_ref(&key)));
                if let Some(v) = v {
                    out.insert(key, Arc::try_unwrap(v).unwrap_or_else(|v| (*v).clone()));
                }
            }
            return Ok(Value::Map(out));
        }
        // Values are computed by the merge, and only those of the
        // definitions that win: a losing default is never run.
        merge::merge(self, &decl.ty, &At::option(path), self.active(path)?)
    }

    fn split(&self, path: &str) -> Result<DefsByKey, Error> {
        self.memoized(&self.splits, path, "", || {
            let decl = &self.decls[path];
            merge::split_level(self, &At::option(path), &decl.ty, self.active(path)?).map(Arc::new)
        })
    }

    /// The type of the node `path` below the option `option` (the option
    /// itself for an empty path), and the map entry it is, if it is one.
    fn node_type(&self, option: &str, path: &[String]) -> Result<(Type, Option<String>), Error> {
        let mut t = self.decls[option].ty.clone();
        let mut entry = None;
        for (i, k) in path.iter().enumerate() {
            let Some((next, is_entry)) = t.inner(k) else {
                return Err(Error::NoSuchOption {
                    path: node_shown(option, &path[..=i]),
                    suggestions: Vec::new(),
                });
            };
            entry = is_entry.then(|| k.clone());
            t = next.clone();
        }
        Ok((t, entry))
    }

    /// The definitions below the map or submodule node `path`, by key
    /// (the option's own split for an empty path).
    fn node_split(&self, option: &str, path: &[String]) -> Result<DefsByKey, Error> {
        if path.is_empty() {
            return self.split(option);
        }
        let key = NodePath::below(option, path);
        self.memoized(&self.splits, &key.0, "", || {
            let Some(p) = self.node_defs(option, path)? else {
                return Ok(Arc::new(BTreeMap::new()));
            };
            merge::split_level(self, &At::Node(option, path), &p.ty, p.defs).map(Arc::new)
        })
    }

    /// The definitions of the node `path` (not empty), ready to merge;
    /// `None` for a map entry whose every definition is off.
    fn node_defs(&self, option: &str, path: &[String]) -> Result<Option<KeyToMerge>, Error> {
        let (parent, last) = path.split_at(path.len() - 1);
        let split = self.node_split(option, parent)?;
        let (ty, entry) = self.node_type(option, parent)?;
        let defs = split.get(&last[0]).map_or(&[][..], Vec::as_slice);
        merge::prepare_key(
            self,
            &At::Node(option, parent),
            &ty,
            &last[0],
            defs.into(),
            entry.as_deref(),
        )
    }

    /// The value at `path` (not empty) below the map or submodule option
    /// `option`, merged on its own, and so are the keys inside it that are
    /// maps or submodules: sibling keys and fields may read each other.
    /// `None` for a map entry whose definitions are all off.
    fn node_value(&self, option: &str, path: &[String]) -> Result<Option<Arc<Value>>, Error> {
        if let Some(MemoEntry::Done(Ok(whole))) = self.memo.borrow().get(option) {
            let mut v: &Value = whole;
            for k in path {
                match v {
                    Value::Map(m) => match m.get(k) {
                        Some(x) => v = x,
                        None => return Ok(None),
                    },
                    _ => return Ok(None),
                }
            }
            return Ok(Some(Arc::new(v.clone())));
        }
        let key = NodePath::below(option, path);
        self.memoized(&self.keys, &key.0, "", || {
            let at = At::Node(option, path);
            let Some(p) = self.node_defs(option, path)? else {
                return Ok(None);
            };
            if p.ty.is_keyed() {
                // Split from the definitions just prepared: through
                // `node_split` they would be prepared again, their
                // conditions run twice.
                let split = self.memoized(&self.splits, &key.0, "", || {
                    merge::split_level(self, &at, &p.ty, p.defs).map(Arc::new)
                })?;
                merge::unknown_fields(&at, &p.ty, &split)?;
                let mut out = BTreeMap::new();
                for key in merge::keys_of(&p.ty, &split) {
                    if !split.contains_key(&key) {
                        if let Some(v) = merge::untouched_field(&p.ty, &key, p.entry.as_deref()) {
                            out.insert(key, v);
                            continue;
                        }
                    }
                    // A key whose definitions can read nothing cannot be
                    // in a cycle nor run code twice: merged here, directly.
                    let v = if merge::is_plain(&p.ty, &key, split.get(&key)) {
                        let defs = split.get(&key).map_or(&[][..], Vec::as_slice);
                        merge::merge_key(self, &at, &p.ty, &key, defs.into(), p.entry.as_deref())?
                    } else {
                        let mut child = path.to_vec();
                        child.push(key.clone());
                        self.node_value(option, &child)?.map(|v| (*v).clone())
                    };
                    if let Some(v) = v {
                        out.insert(key, v);
                    }
                }
                return Ok(Some(Arc::new(merge::finish(
                    p.apply,
                    &at,
                    Value::Map(out),
                )?)));
            }
            let v = merge::merge_entry(self, &p.ty, &at, p.defs, p.entry.as_deref())?;
            Ok(Some(Arc::new(merge::finish(p.apply, &at, v)?)))
        })
    }

    /// [`Config::node_value`], a missing entry an error naming it.
    fn node_present(&self, option: &str, path: &[String]) -> Result<Arc<Value>, Error> {
        match self.node_value(option, path)? {
            Some(v) => Ok(v),
            None => {
                let (parent, last) = path.split_at(path.len() - 1);
                let split = self.node_split(option, parent)?;
                Err(Error::NoSuchOption {
                    path: node_shown(option, path),
                    suggestions: nearest_under(
                        &node_shown(option, parent),
                        &last[0],
                        split.keys().map(|k| &**k),
                    ),
                })
            }
        }
    }

    fn holds(&self, conds: &[Cond]) -> Result<bool, Error> {
        for c in conds {
            if !c(self)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn run_check(&self, c: &Check) -> Result<Option<String>, Error> {
        if !self.holds(&c.conds)? {
            return Ok(None);
        }
        (c.test)(self)
    }

    /// Who defined the option `path`, with which value, at which
    /// priority: every definition (the declaration's default last), and
    /// whether it is active and wins.
    pub fn definitions(&self, path: &str) -> Result<Vec<DefinitionInfo>, Error> {
        let Some(decl) = self.decls.get(path) else {
            return Err(Error::NoSuchOption {
                path: path.to_owned(),
                suggestions: self.suggest(path),
            });
        };
        let mut out = Vec::new();
        for d in self.defs.get(path).into_iter().flatten() {
            let active = self.holds(&d.conds)?;
            let value = match &d.lazy {
                None => Some(d.value.clone()),
                Some(f) if active => f(self).ok(),
                Some(_) => None,
            };
            out.push(DefinitionInfo {
                shown: ShownDefinition {
                    module: d.module.clone(),
                    loc: d.loc.clone(),
                    priority: d.priority,
                    value,
                },
                sub: d.sub.to_vec(),
                active,
                wins: false,
            });
        }
        if let Some(mut d) = merge::default_of(decl) {
            let value = d.force(self, &At::option(path)).ok().map(|()| d.value);
            out.push(DefinitionInfo {
                shown: ShownDefinition {
                    module: d.module,
                    loc: d.loc,
                    priority: d.priority,
                    value,
                },
                sub: Vec::new(),
                active: true,
                wins: false,
            });
        }
        let level = |i: &DefinitionInfo| {
            if i.sub.is_empty() {
                i.shown.priority
            } else {
                super::NORMAL
            }
        };
        if let Some(best) = out.iter().filter(|i| i.active).map(level).min() {
            for i in out.iter_mut() {
                i.wins = i.active && level(i) == best;
            }
        }
        Ok(out)
    }

    /// The declared options, by path.
    pub fn options(&self) -> impl Iterator<Item = (&str, &OptionDecl)> {
        self.decls.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The warnings the modules gave (and the option migrations).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The modules collected (imports included, disabled ones left out),
    /// in the order their definitions count.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }
}

impl Evaluator for Config {
    fn run(&self, code: &Lazy) -> Result<Value, Error> {
        code(self)
    }

    fn holds(&self, conds: &[Cond]) -> Result<bool, Error> {
        Config::holds(self, conds)
    }
}

/// Declarations compiled from a set of declaring modules (in order), with
/// what merging them found; kept for the next configuration of the same
/// modules.
struct Compiled {
    declaring: Vec<Module>,
    decls: Arc<BTreeMap<String, OptionDecl>>,
    resolved: Arc<SharedResolved>,
    errors: Vec<Error>,
}

/// How many sets of declarations are kept: a fleet has a few releases,
/// each with its set; a program building modules anew for every machine
/// does not grow this.
const COMPILED_KEPT: usize = 8;

/// The declarations of `modules`, merged and checked once for every
/// configuration whose modules declare the same options: the machines of
/// a fleet share them, and evaluate only their definitions.
/// With them, what paths they name, as configurations find it.
fn declarations(
    modules: &[Module],
) -> (
    Arc<BTreeMap<String, OptionDecl>>,
    Arc<SharedResolved>,
    Vec<Error>,
) {
    use std::sync::{Mutex, OnceLock};
    static KEPT: OnceLock<Mutex<Vec<Compiled>>> = OnceLock::new();
    let declaring: Vec<Module> = modules
        .iter()
        .filter(|m| !m.0.options.is_empty())
        .cloned()
        .collect();
    let same = |c: &Compiled| {
        c.declaring.len() == declaring.len()
            && c.declaring
                .iter()
                .zip(&declaring)
                .all(|(a, b)| Arc::ptr_eq(&a.0, &b.0))
    };
    let kept = KEPT.get_or_init(Default::default);
    {
        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = kept.iter().position(same) {
            // Most recently used last.
            let c = kept.remove(i);
            let out = (c.decls.clone(), c.resolved.clone(), c.errors.clone());
            kept.push(c);
            return out;
        }
    }
    let (decls, errors) = compile(&declaring);
    let decls = Arc::new(decls);
    let resolved = Arc::new(SharedResolved::default());
    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
    // Threads that started together compiled the same set: the first
    // one kept is used by all, rather than kept twice.
    if let Some(c) = kept.iter().find(|c| same(c)) {
        return (c.decls.clone(), c.resolved.clone(), c.errors.clone());
    }
    if kept.len() >= COMPILED_KEPT {
        kept.remove(0);
    }
    kept.push(Compiled {
        declaring,
        decls: decls.clone(),
        resolved: resolved.clone(),
        errors: errors.clone(),
    });
    (decls, resolved, errors)
}

/// The options `modules` declare, merged, and what is wrong with them.
fn compile(modules: &[Module]) -> (BTreeMap<String, OptionDecl>, Vec<Error>) {
    let mut errors = Vec::new();
    let mut decls: BTreeMap<String, OptionDecl> = BTreeMap::new();
    for m in modules {
        for (path, d) in &m.0.options {
            let merged = match decls.remove(path) {
                None => d.clone(),
                Some(old) => {
                    let first = old.locs[0].clone();
                    match old.clone().merge(d.clone()) {
                        Ok(m) => m,
                        Err(reason) => {
                            errors.push(Error::Declaration {
                                option: path.clone(),
                                reason,
                                first,
                                second: d.locs[0].clone(),
                            });
                            old
                        }
                    }
                }
            };
            decls.insert(path.clone(), merged);
        }
    }
    for (path, d) in &decls {
        for (field, reason, first, second) in d.ty.clashes() {
            errors.push(Error::Declaration {
                option: format!("{path}.{field}"),
                reason,
                first,
                second,
            });
        }
    }
    // An option cannot also be a group of options.
    for (path, d) in &decls {
        let mut prefix = path.as_str();
        while let Some((head, _)) = prefix.rsplit_once('.') {
            if let Some(outer) = decls.get(head) {
                errors.push(Error::Declaration {
                    option: head.to_owned(),
                    reason: format!("it is an option, and `{path}` is declared inside it"),
                    first: outer.locs[0].clone(),
                    second: d.locs[0].clone(),
                });
            }
            prefix = head;
        }
    }
    (decls, errors)
}

/// How a cycle or an error names the node `path` below `option`.
fn node_shown(option: &str, path: &[String]) -> String {
    std::iter::once(option)
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(".")
}

/// `path` is the dotted `prefix` or inside it: the rest.
fn under<'a>(path: &'a [String], prefix: &str) -> Option<&'a [String]> {
    let mut n = 0;
    for seg in prefix.split('.') {
        if path.get(n)? != seg {
            return None;
        }
        n += 1;
    }
    Some(&path[n..])
}

/// Every module reachable from `roots`, each once (by name), depth
/// first, leaving out disabled ones and what only they import.
fn gather(roots: &[Module]) -> Vec<Module> {
    let mut disabled: HashSet<String> = HashSet::new();
    let mut seen: HashSet<Arc<str>> = HashSet::new();
    let mut stack: Vec<Module> = roots.iter().rev().cloned().collect();
    while let Some(m) = stack.pop() {
        if seen.insert(m.0.name.clone()) {
            disabled.extend(m.0.disabled.iter().map(|(n, _)| n.clone()));
            stack.extend(m.0.imports.iter().rev().cloned());
        }
    }
    let mut out = Vec::new();
    let mut seen: HashSet<Arc<str>> = HashSet::new();
    let mut stack: Vec<Module> = roots.iter().rev().cloned().collect();
    while let Some(m) = stack.pop() {
        if disabled.contains(&*m.0.name) || !seen.insert(m.0.name.clone()) {
            continue;
        }
        stack.extend(m.0.imports.iter().rev().cloned());
        out.push(m);
    }
    out
}
