//! The merge engine: how the definitions of an option, placed on it by
//! [`Config`](super::Config), become its value — priorities, then the
//! option's type (scalars agree, lists concatenate, maps and submodules
//! split by key and merge each key on its own).
//!
//! It runs definitions' code and conditions through an [`Evaluator`] (the
//! configuration, which memoizes and finds cycles) and never names the
//! configuration itself: `config` depends on it, not the other way.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::{nearest_under, Error, Loc, ShownDefinition};
use super::types::{Kind, Type};
use super::value::Value;
use super::{Apply, Cond, Lazy, OptionDecl, ValueOrCode, NORMAL, OPTION_DEFAULT, ORDER};
use crate::drv::Str;

/// What merging needs of the configuration it merges for: running a
/// definition's code and its conditions, both of which may read other
/// options.
pub(crate) trait Evaluator {
    /// The value `code` computes.
    fn run(&self, code: &Lazy) -> Result<Value, Error>;
    /// Whether every condition holds.
    fn holds(&self, conds: &[Cond]) -> Result<bool, Error>;
}

/// The keys below an option a definition is for (`alice.uid` of
/// `users`): shared by the definition's copies as it moves down, level by
/// level, to the key it defines.
#[derive(Clone, Default)]
pub(crate) struct SubPath {
    all: Option<Arc<[String]>>,
    at: usize,
}

impl SubPath {
    pub(crate) fn new(keys: Vec<String>) -> SubPath {
        SubPath {
            all: (!keys.is_empty()).then(|| keys.into()),
            at: 0,
        }
    }

    /// The path below its first key.
    fn rest(&self) -> SubPath {
        SubPath {
            all: self.all.clone(),
            at: (self.at + 1).min(self.all.as_ref().map_or(0, |a| a.len())),
        }
    }
}

impl std::ops::Deref for SubPath {
    type Target = [String];
    fn deref(&self) -> &[String] {
        match &self.all {
            Some(a) => &a[self.at..],
            None => &[],
        }
    }
}

/// Where a merge is, as errors name it: the option's path and the keys
/// (or list items) below it. Written out only for an error: merging is
/// done for every key of every map, and hardly ever fails.
#[derive(Clone, Copy)]
pub(crate) enum At<'a> {
    /// The node `keys` below the option of that path.
    Node(&'a str, &'a [String]),
    /// A key of a map or submodule.
    Key(&'a At<'a>, &'a str),
    /// An item of a list.
    Item(&'a At<'a>, usize),
}

impl At<'_> {
    /// An option's own path.
    pub(crate) fn option(path: &str) -> At<'_> {
        At::Node(path, &[])
    }
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Node(option, keys) => {
                f.write_str(option)?;
                for k in *keys {
                    write!(f, ".{k}")?;
                }
                Ok(())
            }
            At::Key(parent, key) => write!(f, "{parent}.{key}"),
            At::Item(parent, i) => write!(f, "{parent}.{i}"),
        }
    }
}

/// A definition placed on its option: what `config` keeps for each
/// definition and what the merge takes, one record for both. Its code
/// (`lazy`) runs only once the definition wins at the level it is for;
/// until then `value` is null.
#[derive(Clone)]
pub(crate) struct PlacedDefinition {
    /// The path below the option being merged.
    pub(crate) sub: SubPath,
    /// The value given, or computed by `lazy`.
    pub(crate) value: Value,
    /// Code computing the value, until it is run.
    pub(crate) lazy: Option<Lazy>,
    /// Conditions still to check: those of a definition below a key of a
    /// map or submodule option wait for that key to be merged, so that
    /// one key's condition may read another key.
    pub(crate) conds: Vec<Cond>,
    pub(crate) priority: u32,
    pub(crate) order: u32,
    pub(crate) loc: Loc,
    pub(crate) module: Arc<str>,
    /// Its place among all definitions: breaks ties in ordering.
    pub(crate) seq: usize,
}

impl PlacedDefinition {
    /// A definition of the option itself giving `value`, at the
    /// option-default priority and the plain order, with no conditions,
    /// made where `decl` was declared: the shape of a default.
    fn declared(value: &ValueOrCode, decl: &OptionDecl) -> PlacedDefinition {
        PlacedDefinition {
            sub: SubPath::default(),
            value: Value::Null,
            lazy: None,
            conds: Vec::new(),
            priority: OPTION_DEFAULT,
            order: ORDER,
            loc: decl.locs[0].clone(),
            module: decl
                .modules
                .first()
                .cloned()
                .unwrap_or_else(|| Arc::from("(declaration)")),
            seq: 0,
        }
        .giving(value)
    }

    /// The same definition giving `value` (code not run yet).
    pub(crate) fn giving(self, value: &ValueOrCode) -> PlacedDefinition {
        let (value, lazy) = match value {
            ValueOrCode::Value(v) => (v.clone(), None),
            ValueOrCode::Lazy(f) => (Value::Null, Some(f.clone())),
        };
        PlacedDefinition {
            value,
            lazy,
            ..self
        }
    }

    /// A copy without its conditions, for a merge that has checked them
    /// or leaves them to the key they are below.
    pub(crate) fn without_conds(&self) -> PlacedDefinition {
        PlacedDefinition {
            sub: self.sub.clone(),
            value: self.value.clone(),
            lazy: self.lazy.clone(),
            conds: Vec::new(),
            priority: self.priority,
            order: self.order,
            loc: self.loc.clone(),
            module: self.module.clone(),
            seq: self.seq,
        }
    }

    /// Computes the value, once.
    /// Computes the value, once; `at` is the option (or key) it is
    /// for, which an error of the code's own names.
    pub(crate) fn force(&mut self, cx: &impl Evaluator, at: &At) -> Result<(), Error> {
        if let Some(f) = self.lazy.take() {
            self.value = cx.run(&f).map_err(|e| match e {
                // Errors of other options read on the way carry their
                // own place; the code's own get this one.
                e @ (Error::Eval(_) | Error::Other { .. }) => Error::InDefinition {
                    option: format!(
                        "{at}{}",
                        self.sub.iter().map(|s| format!(".{s}")).collect::<String>()
                    ),
                    module: self.module.clone(),
                    loc: self.loc.clone(),
                    cause: Box::new(e),
                },
                e => e,
            })?;
        }
        Ok(())
    }

    pub(crate) fn shown(&self) -> ShownDefinition {
        ShownDefinition {
            module: self.module.clone(),
            loc: self.loc.clone(),
            priority: self.priority,
            value: self.lazy.is_none().then(|| self.value.clone()),
        }
    }

    /// Everything but the value and sub-path.
    fn shallow(&self) -> PlacedDefinition {
        PlacedDefinition {
            sub: SubPath::default(),
            value: Value::Null,
            lazy: None,
            conds: Vec::new(),
            priority: self.priority,
            order: self.order,
            loc: self.loc.clone(),
            module: self.module.clone(),
            seq: self.seq,
        }
    }
}

/// The declaration's default as a definition, not computed yet.
pub(crate) fn default_of(decl: &OptionDecl) -> Option<PlacedDefinition> {
    Some(PlacedDefinition::declared(decl.default.as_ref()?, decl))
}

/// A definition at the option-default priority, made where `decl` was
/// declared, giving `value`.
fn declared_default(decl: &OptionDecl, value: Value) -> PlacedDefinition {
    PlacedDefinition::declared(&ValueOrCode::Value(value), decl)
}

/// Merges the definitions of the option `option` of type `ty` (forced,
/// conditions applied, its default among them at its priority).
pub(crate) fn merge(
    cx: &impl Evaluator,
    ty: &Type,
    option: &At,
    defs: Vec<PlacedDefinition>,
) -> Result<Value, Error> {
    merge_entry(cx, ty, option, defs, None)
}

/// [`merge`] of the entry `entry` of a map (what its fields that default
/// to their entry's key get).
pub(crate) fn merge_entry(
    cx: &impl Evaluator,
    ty: &Type,
    option: &At,
    defs: Vec<PlacedDefinition>,
    entry: Option<&str>,
) -> Result<Value, Error> {
    use Kind as K;
    let (priority, mut defs) = winners(defs);
    // The values given for this level are needed now; those for
    // something inside wait until they win there.
    for d in defs.iter_mut().filter(|d| d.sub.is_empty()) {
        d.force(cx, option)?;
    }
    match &*ty.0 {
        // Priorities apply again key by key, inside.
        K::Submodule(_) | K::Map(_) => merge_keyed(cx, option, ty, defs, entry),
        K::List(elem) => {
            let mut defs = leaves(defs, option, ty)?;
            defs.sort_by_key(|d| (d.order, d.seq));
            let mut out = Vec::new();
            for d in defs {
                let base = d.shallow();
                let Value::List(items) = d.value else {
                    return Err(type_error(
                        option,
                        ty,
                        &d,
                        format!("it is {}", d.value.kind()),
                    ));
                };
                for item in items {
                    let at = At::Item(option, out.len());
                    let one = PlacedDefinition {
                        value: item,
                        ..base.clone()
                    };
                    out.push(merge(cx, elem, &at, vec![one])?);
                }
            }
            Ok(Value::List(out))
        }
        K::Optional(elem) => {
            // A definition of something inside (`ready.tcp_port`)
            // makes it not null.
            let nulls = defs
                .iter()
                .filter(|d| d.sub.is_empty() && d.value == Value::Null)
                .count();
            if nulls == defs.len() {
                Ok(Value::Null)
            } else if nulls == 0 {
                merge_entry(cx, elem, option, defs, entry)
            } else {
                Err(conflict(option, priority, &defs))
            }
        }
        K::Unique(elem) => {
            if defs.len() == 1 {
                merge_entry(cx, elem, option, defs, entry)
            } else {
                Err(Error::NotUnique {
                    option: option.to_string(),
                    defs: defs.iter().map(PlacedDefinition::shown).collect(),
                })
            }
        }
        K::OneOf(types) => {
            let defs = leaves(defs, option, ty)?;
            match types
                .iter()
                .find(|t| defs.iter().all(|d| t.accepts(&d.value)))
            {
                Some(t) => merge_entry(cx, t, option, defs, entry),
                None => {
                    let d = defs
                        .iter()
                        .find(|d| types.iter().all(|t| !t.accepts(&d.value)))
                        .unwrap_or(&defs[0]);
                    Err(type_error(option, ty, d, "it fits none of them".into()))
                }
            }
        }
        K::Separated(sep) => {
            let mut defs = checked(ty, option, leaves(defs, option, ty)?)?;
            defs.sort_by_key(|d| (d.order, d.seq));
            let parts = defs.into_iter().map(|d| match d.value {
                Value::Str(s) => s,
                _ => Str::default(),
            });
            Ok(Value::Str(Str::join(parts, sep)))
        }
        K::Anything => {
            // Maps merge key by key, each key with its own priorities
            // (a data document's key overrides a module's default for
            // that key only).
            if defs
                .iter()
                .all(|d| !d.sub.is_empty() || matches!(d.value, Value::Map(_)))
            {
                let mut by_key: BTreeMap<String, Vec<PlacedDefinition>> = BTreeMap::new();
                for d in defs {
                    for (key, d) in split(d, ty)? {
                        by_key.entry(key).or_default().push(d);
                    }
                }
                return by_key
                    .into_iter()
                    .map(|(k, defs)| Ok((k.clone(), merge(cx, ty, &At::Key(option, &k), defs)?)))
                    .collect::<Result<_, _>>()
                    .map(Value::Map);
            }
            let mut defs = leaves(defs, option, ty)?;
            if defs.iter().all(|d| matches!(d.value, Value::List(_))) {
                defs.sort_by_key(|d| (d.order, d.seq));
                let mut out = Vec::new();
                for d in defs {
                    if let Value::List(l) = d.value {
                        out.extend(l);
                    }
                }
                return Ok(Value::List(out));
            }
            agreed(option, priority, defs)
        }
        K::Custom(c) => {
            let defs = checked(ty, option, leaves(defs, option, ty)?)?;
            let shown: Vec<ShownDefinition> = defs.iter().map(PlacedDefinition::shown).collect();
            c.merge(defs.into_iter().map(|d| d.value).collect())
                .map_err(|reason| Error::Merge {
                    option: option.to_string(),
                    reason,
                    defs: shown,
                })
        }
        K::Bool | K::Int { .. } | K::Str { .. } | K::Enum(_) | K::Path | K::Package | K::Output => {
            let defs = checked(ty, option, leaves(defs, option, ty)?)?;
            agreed(option, priority, defs)
        }
    }
}

/// The one value every definition at the winning priority gives.
fn agreed(option: &At, priority: u32, defs: Vec<PlacedDefinition>) -> Result<Value, Error> {
    let first = &defs[0].value;
    if defs.iter().all(|d| &d.value == first) {
        Ok(first.clone())
    } else {
        Err(conflict(option, priority, &defs))
    }
}

fn conflict(option: &At, priority: u32, defs: &[PlacedDefinition]) -> Error {
    Error::Conflict {
        option: option.to_string(),
        priority,
        defs: defs.iter().map(PlacedDefinition::shown).collect(),
    }
}

/// The definitions at the winning priority (the lowest number). One
/// addressed below this option (`users.alice.uid` for `users`) takes part
/// at the normal priority here: its own priority applies where it lands.
fn winners(defs: Vec<PlacedDefinition>) -> (u32, Vec<PlacedDefinition>) {
    let level = |d: &PlacedDefinition| {
        if d.sub.is_empty() {
            d.priority
        } else {
            NORMAL
        }
    };
    let best = defs.iter().map(level).min().unwrap_or(NORMAL);
    (
        best,
        defs.into_iter().filter(|d| level(d) == best).collect(),
    )
}

/// Definitions that must address this option itself, not something in it.
fn leaves(
    defs: Vec<PlacedDefinition>,
    option: &At,
    ty: &Type,
) -> Result<Vec<PlacedDefinition>, Error> {
    if let Some(d) = defs.iter().find(|d| !d.sub.is_empty()) {
        return Err(Error::BadDefinition {
            path: format!("{option}.{}", d.sub.join(".")),
            module: d.module.clone(),
            loc: d.loc.clone(),
            reason: format!("reaches into `{option}`, which is {ty} and has no options inside"),
        });
    }
    Ok(defs)
}

fn checked(
    ty: &Type,
    option: &At,
    defs: Vec<PlacedDefinition>,
) -> Result<Vec<PlacedDefinition>, Error> {
    defs.into_iter()
        .map(|mut d| match ty.coerce(std::mem::take(&mut d.value)) {
            Ok(v) => Ok(PlacedDefinition { value: v, ..d }),
            Err((v, why)) => {
                d.value = v;
                Err(type_error(option, ty, &d, why))
            }
        })
        .collect()
}

fn type_error(option: &At, ty: &Type, d: &PlacedDefinition, reason: String) -> Error {
    Error::Type {
        option: option.to_string(),
        expected: article(&ty.to_string()),
        value: Box::new(d.value.clone()),
        reason,
        module: d.module.clone(),
        loc: d.loc.clone(),
    }
}

fn article(t: &str) -> String {
    let an = t.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {t}", if an { "an" } else { "a" })
}

/// A definition of a map or submodule, split by key: a map value gives
/// one definition per key, a definition addressed below gives one.
fn split(d: PlacedDefinition, ty: &Type) -> Result<Vec<(String, PlacedDefinition)>, Error> {
    if let Some(key) = d.sub.first() {
        let key = key.clone();
        let rest = d.sub.rest();
        return Ok(vec![(key, PlacedDefinition { sub: rest, ..d })]);
    }
    let base = d.shallow();
    match d.value {
        Value::Map(m) => Ok(m
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    PlacedDefinition {
                        value: v,
                        ..base.clone()
                    },
                )
            })
            .collect()),
        ref other => {
            let reason = format!("it is {}", other.kind());
            Err(Error::Type {
                option: String::new(),
                expected: article(&ty.to_string()),
                value: Box::new(d.value.clone()),
                reason,
                module: d.module.clone(),
                loc: d.loc.clone(),
            })
        }
    }
}

/// The definitions of a map or submodule at this level, by key: the
/// winners' values computed where they are given for the whole, split by
/// key, and those given for something inside moved down a level.
pub(crate) fn split_level(
    cx: &impl Evaluator,
    option: &At,
    ty: &Type,
    defs: Vec<PlacedDefinition>,
) -> Result<BTreeMap<String, Vec<PlacedDefinition>>, Error> {
    let (_, mut defs) = winners(defs);
    for d in defs.iter_mut().filter(|d| d.sub.is_empty()) {
        d.force(cx, option)?;
    }
    let mut by_key: BTreeMap<String, Vec<PlacedDefinition>> = BTreeMap::new();
    for d in defs {
        for (key, d) in split(d, ty).map_err(|e| with_option(e, option))? {
            by_key.entry(key).or_default().push(d);
        }
    }
    Ok(by_key)
}

/// A map or submodule merged whole, key by key.
fn merge_keyed(
    cx: &impl Evaluator,
    option: &At,
    ty: &Type,
    defs: Vec<PlacedDefinition>,
    entry: Option<&str>,
) -> Result<Value, Error> {
    let mut by_key = split_level(cx, option, ty, defs)?;
    unknown_fields(option, ty, &by_key)?;
    let mut out = BTreeMap::new();
    for key in keys_of(ty, &by_key) {
        let defs = match by_key.remove(&key) {
            Some(defs) => defs,
            None => match untouched_field(ty, &key, entry) {
                Some(v) => {
                    out.insert(key, v);
                    continue;
                }
                None => Vec::new(),
            },
        };
        if let Some(v) = merge_key(cx, option, ty, &key, Cow::Owned(defs), entry)? {
            out.insert(key, v);
        }
    }
    Ok(Value::Map(out))
}

/// Whether the definitions of `key` of the map or submodule `ty` can
/// read nothing: no code, no condition, no computed default, and nothing
/// inside merged key by key. Such a key is merged where it is needed,
/// without an entry of its own among the memoized values.
pub(crate) fn is_plain(ty: &Type, key: &str, defs: Option<&Vec<PlacedDefinition>>) -> bool {
    let defs_plain =
        defs.is_none_or(|defs| defs.iter().all(|d| d.lazy.is_none() && d.conds.is_empty()));
    let child = match &*ty.0 {
        Kind::Map(elem) => elem,
        Kind::Submodule(s) => match s.fields.get(key) {
            Some(d) => {
                if matches!(d.default, Some(ValueOrCode::Lazy(_))) {
                    return false;
                }
                &d.ty
            }
            None => return false,
        },
        _ => return false,
    };
    // A map or submodule inside is merged directly too when nothing in
    // it can run code: no definition's, no default's.
    defs_plain && (!child.is_keyed() || !child.lazy_inside())
}

/// The value of the field `key` of the submodule `ty` when nothing
/// defines it and merging its default could do nothing else: a plain
/// default of a type that is not merged key by key, no `apply`, not read
/// only. `None` where the field must go through the merge (which also
/// reports a default that does not fit). Most fields of most entries
/// are left at their defaults; this skips the merge's bookkeeping for
/// them.
pub(crate) fn untouched_field(ty: &Type, key: &str, entry: Option<&str>) -> Option<Value> {
    let Kind::Submodule(s) = &*ty.0 else {
        return None;
    };
    let decl = s.fields.get(key)?;
    // A custom type's merge may change even a lone default.
    if decl.apply.is_some()
        || decl.read_only
        || decl.ty.is_keyed()
        || matches!(&*decl.ty.0, Kind::Custom(_))
    {
        return None;
    }
    let v = match (&decl.default, entry.filter(|_| decl.default_key)) {
        (Some(ValueOrCode::Value(v)), _) => v.clone(),
        (None, Some(name)) => Value::from(name),
        _ => return None,
    };
    decl.ty.coerce(v).ok()
}

/// The keys a submodule's definitions give that it does not declare.
pub(crate) fn unknown_fields(
    option: &At,
    ty: &Type,
    by_key: &BTreeMap<String, Vec<PlacedDefinition>>,
) -> Result<(), Error> {
    let Kind::Submodule(s) = &*ty.0 else {
        return Ok(());
    };
    for (field, defs) in by_key {
        if !s.fields.contains_key(field) {
            let option = option.to_string();
            let option = option.as_str();
            let d = &defs[0];
            let mut suggestions = nearest_under(option, field, s.fields.keys().map(|k| &**k));
            // `etc.nginx.conf.text`, `etc.foo/x.conf.text`: a key holding
            // a dot was split at it. Where the rest is a field, say how to
            // quote the key.
            if let (Some((parent, key)), Some(next)) = (option.rsplit_once('.'), d.sub.first()) {
                if s.fields.contains_key(next) {
                    let rest: String = d.sub[1..].iter().map(|x| format!(".{x}")).collect();
                    suggestions.insert(0, format!("{parent}.\"{key}.{field}\".{next}{rest}"));
                }
            }
            return Err(Error::Unknown {
                path: format!("{option}.{field}"),
                module: d.module.clone(),
                loc: d.loc.clone(),
                suggestions,
            });
        }
    }
    Ok(())
}

/// The keys a map or submodule value has: a map's defined keys, a
/// submodule's declared fields.
pub(crate) fn keys_of(ty: &Type, by_key: &BTreeMap<String, Vec<PlacedDefinition>>) -> Vec<String> {
    match &*ty.0 {
        Kind::Submodule(s) => s.fields.keys().cloned().collect(),
        _ => by_key.keys().cloned().collect(),
    }
}

/// A key's definitions ready to merge: conditions checked, defaults
/// added, with the type and map entry they are merged as.
pub(crate) struct KeyToMerge {
    pub(crate) defs: Vec<PlacedDefinition>,
    pub(crate) ty: Type,
    /// The map entry it is, if it is one (its key).
    pub(crate) entry: Option<String>,
    /// A submodule field's `apply` function, and where it was declared.
    pub(crate) apply: Option<(Apply, Loc)>,
}

/// The merged value of the field at `path`, through its `apply`
/// function if it has one.
pub(crate) fn finish(apply: Option<(Apply, Loc)>, path: &At, v: Value) -> Result<Value, Error> {
    match apply {
        Some((f, declared)) => f(v).map_err(|reason| Error::Apply {
            option: path.to_string(),
            declared,
            reason,
        }),
        None => Ok(v),
    }
}

/// The definitions [`split_level`] gave `key` of a map or submodule
/// (`ty`, itself the entry `entry` of a map, if it is one), prepared;
/// `None` for a map key whose every definition is off. Borrowed where
/// a memoized split keeps them: only the active ones are copied.
pub(crate) fn prepare_key(
    cx: &impl Evaluator,
    option: &At,
    ty: &Type,
    key: &str,
    defs: Cow<'_, [PlacedDefinition]>,
    entry: Option<&str>,
) -> Result<Option<KeyToMerge>, Error> {
    let path = || At::Key(option, key).to_string();
    let mut active = Vec::with_capacity(defs.len() + 1);
    match defs {
        Cow::Owned(defs) => {
            for mut d in defs {
                if cx.holds(&std::mem::take(&mut d.conds))? {
                    active.push(d);
                }
            }
        }
        Cow::Borrowed(defs) => {
            for d in defs {
                if cx.holds(&d.conds)? {
                    active.push(d.without_conds());
                }
            }
        }
    }
    match &*ty.0 {
        // A key whose every definition is off is not there.
        Kind::Map(_) if active.is_empty() => Ok(None),
        Kind::Map(elem) => Ok(Some(KeyToMerge {
            defs: active,
            ty: elem.clone(),
            entry: Some(key.to_owned()),
            apply: None,
        })),
        Kind::Submodule(s) => {
            let Some(decl) = s.fields.get(key) else {
                return Err(Error::NoSuchOption {
                    suggestions: nearest_under(
                        &option.to_string(),
                        key,
                        s.fields.keys().map(|k| &**k),
                    ),
                    path: path(),
                });
            };
            if decl.read_only && active.len() > 1 {
                return Err(Error::ReadOnly {
                    option: path(),
                    defs: active.iter().map(PlacedDefinition::shown).collect(),
                });
            }
            // A default that cannot win is left out: it would only be
            // copied, to be dropped by `winners`.
            let beaten = active
                .iter()
                .any(|d| d.priority < OPTION_DEFAULT || !d.sub.is_empty());
            match (default_of(decl), entry.filter(|_| decl.default_key)) {
                _ if beaten => {}
                (Some(d), _) => active.push(d),
                // The entry's key, as NixOS gives a submodule its `name`.
                (None, Some(name)) => active.push(declared_default(decl, Value::from(name))),
                (None, None) => {}
            }
            if active.is_empty() {
                return Err(Error::NoValue {
                    option: path(),
                    declared: decl.locs[0].clone(),
                });
            }
            Ok(Some(KeyToMerge {
                defs: active,
                ty: decl.ty.clone(),
                entry: None,
                apply: decl.apply.clone().map(|f| (f, decl.locs[0].clone())),
            }))
        }
        _ => Err(Error::NoSuchOption {
            path: path(),
            suggestions: Vec::new(),
        }),
    }
}

/// The value at `key` of a map or submodule, from the definitions
/// [`split_level`] gave that key; `None` for a map key that is off.
pub(crate) fn merge_key(
    cx: &impl Evaluator,
    option: &At,
    ty: &Type,
    key: &str,
    defs: Cow<'_, [PlacedDefinition]>,
    entry: Option<&str>,
) -> Result<Option<Value>, Error> {
    match prepare_key(cx, option, ty, key, defs, entry)? {
        Some(p) => {
            let at = At::Key(option, key);
            let v = merge_entry(cx, &p.ty, &at, p.defs, p.entry.as_deref())?;
            finish(p.apply, &at, v).map(Some)
        }
        None => Ok(None),
    }
}

fn with_option(e: Error, option: &At) -> Error {
    match e {
        Error::Type {
            option: o,
            expected,
            value,
            reason,
            module,
            loc,
        } if o.is_empty() => Error::Type {
            option: option.to_string(),
            expected,
            value,
            reason,
            module,
            loc,
        },
        e => e,
    }
}
