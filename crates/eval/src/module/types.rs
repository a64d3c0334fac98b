//! Option types: what a value may be, and how several definitions of one
//! option merge into its value.
//!
//! Scalars (booleans, integers, strings, enums, paths, packages) merge
//! only when every definition at the winning priority agrees; lists
//! concatenate in definition order (see [`before`](super::before) and
//! [`after`](super::after)); maps merge key by key; submodules field by
//! field, each field with its own type, default and priorities. A type of
//! your own implements [`CustomType`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::config::Config;
use super::error::{nearest_under, Error, Loc, Shown};
use super::value::Value;
use super::{OptionDecl, NORMAL};
use crate::drv::Str;

/// A type of your own: how to check one value and merge several.
///
/// ```
/// use bigtop_eval::module::types::{self, CustomType};
/// use bigtop_eval::module::Value;
/// /// The largest of the values given.
/// struct Max;
/// impl CustomType for Max {
///     fn description(&self) -> String { "integer (the largest definition wins)".into() }
///     fn check(&self, v: &Value) -> Result<(), String> {
///         matches!(v, Value::Int(_)).then_some(()).ok_or_else(|| "not an integer".into())
///     }
///     fn merge(&self, values: Vec<Value>) -> Result<Value, String> {
///         Ok(values.into_iter().max_by_key(|v| match v { Value::Int(i) => *i, _ => i64::MIN }).unwrap_or_default())
///     }
/// }
/// let t = types::custom(Max);
/// assert_eq!(t.to_string(), "integer (the largest definition wins)");
/// ```
pub trait CustomType: Send + Sync {
    /// How documentation and errors name it.
    fn description(&self) -> String;
    /// Whether one value fits, and why not.
    fn check(&self, value: &Value) -> Result<(), String>;
    /// The value of the definitions at the winning priority (each has
    /// passed [`check`](CustomType::check)), in definition order.
    fn merge(&self, values: Vec<Value>) -> Result<Value, String>;
}

/// An option type. Cheap to clone.
#[derive(Clone)]
pub struct Type(pub(crate) Arc<Kind>);

pub(crate) enum Kind {
    Bool,
    Int {
        min: i64,
        max: i64,
        name: Option<&'static str>,
    },
    Str {
        single_line: bool,
        non_empty: bool,
        pattern: Option<regex::Regex>,
    },
    Enum(Vec<String>),
    Path,
    Package,
    Output,
    List(Type),
    Map(Type),
    Optional(Type),
    OneOf(Vec<Type>),
    Separated(String),
    Unique(Type),
    Anything,
    Submodule(Submodule),
    Custom(Arc<dyn CustomType>),
}

/// The fields of a submodule type: options of their own, each with a
/// type, a default and a description.
#[derive(Clone, Default)]
pub struct Submodule {
    pub(crate) fields: BTreeMap<String, OptionDecl>,
    /// Fields declared twice in it that do not merge: (field, why, first
    /// and second place), reported when an option of this type is.
    pub(crate) clashes: Vec<(String, String, Loc, Loc)>,
}

impl Submodule {
    /// Declares a field; `configure` sets its default, description and
    /// example.
    #[track_caller]
    pub fn option(
        &mut self,
        name: &str,
        ty: Type,
        configure: impl FnOnce(&mut OptionDecl),
    ) -> &mut Self {
        let mut d = OptionDecl::new(ty, Loc::caller());
        configure(&mut d);
        // Declaring a field twice in one submodule merges the two, as
        // declarations in different modules do; a clash is reported with
        // the option declared with this submodule.
        match self.fields.remove(name) {
            Some(old) => {
                let (first, second) = (old.locs[0].clone(), d.locs[0].clone());
                let merged = match old.clone().merge(d) {
                    Ok(m) => m,
                    Err(why) => {
                        self.clashes.push((name.to_owned(), why, first, second));
                        old
                    }
                };
                self.fields.insert(name.to_owned(), merged);
            }
            None => {
                self.fields.insert(name.to_owned(), d);
            }
        }
        self
    }
}

/// `true` or `false`.
pub fn bool() -> Type {
    Type::new(Kind::Bool)
}

/// Any 64-bit integer.
pub fn int() -> Type {
    between(i64::MIN, i64::MAX)
}

/// An integer from `min` to `max`, both included.
pub fn between(min: i64, max: i64) -> Type {
    Type::new(Kind::Int {
        min,
        max,
        name: None,
    })
}

/// A TCP or UDP port: 0 to 65535.
pub fn port() -> Type {
    Type::new(Kind::Int {
        min: 0,
        max: 65535,
        name: Some("port"),
    })
}

/// An integer that is 0 or more.
pub fn unsigned() -> Type {
    Type::new(Kind::Int {
        min: 0,
        max: i64::MAX,
        name: Some("unsigned integer"),
    })
}

/// Any string.
pub fn str() -> Type {
    Type::new(Kind::Str {
        single_line: false,
        non_empty: false,
        pattern: None,
    })
}

/// A string without a line break.
pub fn single_line_str() -> Type {
    Type::new(Kind::Str {
        single_line: true,
        non_empty: false,
        pattern: None,
    })
}

/// A string that is not empty.
pub fn non_empty_str() -> Type {
    Type::new(Kind::Str {
        single_line: false,
        non_empty: true,
        pattern: None,
    })
}

/// A string matching the regular expression `pattern` (anchor it with
/// `^…$` to match the whole string). Fails if the pattern does not parse.
pub fn matching(pattern: &str) -> Result<Type, regex::Error> {
    Ok(Type::new(Kind::Str {
        single_line: false,
        non_empty: false,
        pattern: Some(regex::Regex::new(pattern)?),
    }))
}

/// One of the given strings. Declaring the option again with another
/// enum adds values.
pub fn one_of_str<I, S>(values: I) -> Type
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut v: Vec<String> = values.into_iter().map(Into::into).collect();
    v.sort();
    v.dedup();
    Type::new(Kind::Enum(v))
}

/// An absolute path, or a package or output (which stands for its path).
pub fn path() -> Type {
    Type::new(Kind::Path)
}

/// A package.
pub fn package() -> Type {
    Type::new(Kind::Package)
}

/// One output of a package (`dev`, `doc`, …); a package given stands for
/// its default output.
pub fn output() -> Type {
    Type::new(Kind::Output)
}

/// A list of `elem`: definitions concatenate.
pub fn list(elem: Type) -> Type {
    Type::new(Kind::List(elem))
}

/// A map from string keys to `elem`: definitions merge key by key.
pub fn map(elem: Type) -> Type {
    Type::new(Kind::Map(elem))
}

/// `elem` or null. Every definition at the winning priority must be null,
/// or none.
pub fn optional(elem: Type) -> Type {
    Type::new(Kind::Optional(elem))
}

/// A value of the first of `types` that every definition fits.
pub fn either(types: impl IntoIterator<Item = Type>) -> Type {
    Type::new(Kind::OneOf(types.into_iter().collect()))
}

/// Strings joined by `separator` in definition order.
pub fn separated(separator: &str) -> Type {
    Type::new(Kind::Separated(separator.to_owned()))
}

/// Lines: strings joined by newlines in definition order.
pub fn lines() -> Type {
    separated("\n")
}

/// `elem`, defined exactly once (after priorities are applied).
pub fn unique(elem: Type) -> Type {
    Type::new(Kind::Unique(elem))
}

/// Any value: maps merge key by key, lists concatenate, other values must
/// agree (for free-form settings rendered to a file).
pub fn anything() -> Type {
    Type::new(Kind::Anything)
}

/// A struct of options, declared by `fields`. Declaring the option again
/// with another submodule adds fields.
pub fn submodule(fields: impl FnOnce(&mut Submodule)) -> Type {
    let mut s = Submodule::default();
    fields(&mut s);
    Type::new(Kind::Submodule(s))
}

/// A type of your own.
pub fn custom(t: impl CustomType + 'static) -> Type {
    Type::new(Kind::Custom(Arc::new(t)))
}

impl Type {
    fn new(k: Kind) -> Type {
        Type(Arc::new(k))
    }

    /// Whether `v` could be a value of this type, looking inside lists,
    /// maps and submodules (for [`either`], which picks the type every
    /// definition fits).
    fn accepts(&self, v: &Value) -> bool {
        use Kind as K;
        match (&*self.0, v) {
            (K::List(t), Value::List(l)) => l.iter().all(|x| t.accepts(x)),
            (K::Map(t), Value::Map(m)) => m.values().all(|x| t.accepts(x)),
            (K::Optional(_), Value::Null) => true,
            (K::Optional(t) | K::Unique(t), v) => t.accepts(v),
            (K::OneOf(ts), v) => ts.iter().any(|t| t.accepts(v)),
            (K::Submodule(s), Value::Map(m)) => m
                .iter()
                .all(|(k, x)| s.fields.get(k).is_some_and(|d| d.ty.accepts(x))),
            (K::List(_) | K::Map(_) | K::Submodule(_), _) => false,
            _ => self.coerce(v.clone()).is_ok(),
        }
    }

    /// The same type, declared twice: scalar types by what they accept,
    /// others (custom types) only if they are the same object.
    fn same(&self, other: &Type) -> bool {
        use Kind as K;
        match (&*self.0, &*other.0) {
            _ if Arc::ptr_eq(&self.0, &other.0) => true,
            (K::Bool, K::Bool)
            | (K::Path, K::Path)
            | (K::Package, K::Package)
            | (K::Output, K::Output)
            | (K::Anything, K::Anything) => true,
            (K::Int { min, max, .. }, K::Int { min: a, max: b, .. }) => (min, max) == (a, b),
            (
                K::Str {
                    single_line,
                    non_empty,
                    pattern,
                },
                K::Str {
                    single_line: a,
                    non_empty: b,
                    pattern: c,
                },
            ) => {
                (single_line, non_empty) == (a, b)
                    && pattern.as_ref().map(regex::Regex::as_str)
                        == c.as_ref().map(regex::Regex::as_str)
            }
            (K::Separated(a), K::Separated(b)) => a == b,
            (K::Unique(a), K::Unique(b)) => a.same(b),
            (K::OneOf(a), K::OneOf(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y))
            }
            _ => false,
        }
    }

    /// Fields declared twice in a submodule inside it that do not merge:
    /// (path below this type, why, first and second place).
    pub(crate) fn clashes(&self) -> Vec<(String, String, Loc, Loc)> {
        use Kind as K;
        match &*self.0 {
            K::Submodule(s) => {
                let mut out = s.clashes.clone();
                for (name, d) in &s.fields {
                    out.extend(
                        d.ty.clashes()
                            .into_iter()
                            .map(|(p, w, a, b)| (format!("{name}.{p}"), w, a, b)),
                    );
                }
                out
            }
            K::List(t) | K::Map(t) | K::Optional(t) | K::Unique(t) => t.clashes(),
            K::OneOf(ts) => ts.iter().flat_map(Type::clashes).collect(),
            _ => Vec::new(),
        }
    }

    /// The type of `key` inside this map or submodule (an element, a
    /// field), and whether it is a map entry; `None` for other types and
    /// unknown fields.
    pub(crate) fn inner(&self, key: &str) -> Option<(&Type, bool)> {
        match &*self.0 {
            Kind::Map(e) => Some((e, true)),
            Kind::Submodule(s) => s.fields.get(key).map(|d| (&d.ty, false)),
            _ => None,
        }
    }

    /// Whether its value is merged key by key (a map or a submodule).
    pub(crate) fn is_keyed(&self) -> bool {
        matches!(&*self.0, Kind::Map(_) | Kind::Submodule(_))
    }

    /// The submodule's fields, if it is one.
    pub(crate) fn submodule(&self) -> Option<&Submodule> {
        match &*self.0 {
            Kind::Submodule(s) => Some(s),
            _ => None,
        }
    }

    /// The two declarations of one option as one type: submodules gain
    /// fields, enums gain values, containers merge their element types.
    pub(crate) fn merge_decl(&self, other: &Type) -> Result<Type, String> {
        use Kind as K;
        Ok(match (&*self.0, &*other.0) {
            (K::Enum(a), K::Enum(b)) => one_of_str(a.iter().chain(b).cloned()),
            (K::Submodule(a), K::Submodule(b)) => {
                let mut fields = a.fields.clone();
                for (name, d) in &b.fields {
                    let merged = match fields.remove(name) {
                        Some(old) => old
                            .merge(d.clone())
                            .map_err(|e| format!("field `{name}`: {e}"))?,
                        None => d.clone(),
                    };
                    fields.insert(name.clone(), merged);
                }
                let clashes = a.clashes.iter().chain(&b.clashes).cloned().collect();
                Type::new(K::Submodule(Submodule { fields, clashes }))
            }
            (K::List(a), K::List(b)) => list(a.merge_decl(b)?),
            (K::Map(a), K::Map(b)) => map(a.merge_decl(b)?),
            (K::Optional(a), K::Optional(b)) => optional(a.merge_decl(b)?),
            _ if self.same(other) => self.clone(),
            _ => {
                return Err(format!(
                    "{self} and {other}; only submodules, enums and containers of them merge"
                ))
            }
        })
    }

    /// Whether `v` fits, as the value it stands for (a package given for
    /// a path is its output path).
    fn coerce(&self, v: Value) -> Result<Value, (Value, String)> {
        use Kind as K;
        let fail = |v: Value, why: String| Err((v, why));
        match (&*self.0, v) {
            (K::Bool, v @ Value::Bool(_)) => Ok(v),
            (K::Int { min, max, .. }, Value::Int(i)) => {
                if (*min..=*max).contains(&i) {
                    Ok(Value::Int(i))
                } else {
                    fail(Value::Int(i), format!("it is not between {min} and {max}"))
                }
            }
            (
                K::Str {
                    single_line,
                    non_empty,
                    pattern,
                },
                Value::Str(s),
            ) => {
                let t = s.as_str();
                if *single_line && t.contains('\n') {
                    fail(Value::Str(s), "it has a line break".into())
                } else if *non_empty && t.is_empty() {
                    fail(Value::Str(s), "it is empty".into())
                } else if let Some(p) = pattern.as_ref().filter(|p| !p.is_match(t)) {
                    fail(Value::Str(s), format!("it does not match `{}`", p.as_str()))
                } else {
                    Ok(Value::Str(s))
                }
            }
            (K::Enum(values), Value::Str(s)) => {
                if values.iter().any(|x| x == s.as_str()) {
                    Ok(Value::Str(s))
                } else {
                    let near = crate::error::nearest(s.as_str(), values.iter().map(|x| &**x));
                    let hint = match near.first() {
                        Some(n) => format!("; did you mean `{n}`?"),
                        None => String::new(),
                    };
                    fail(Value::Str(s), format!("it is not one of the values{hint}"))
                }
            }
            (K::Path, Value::Str(s)) => {
                if !s.as_str().starts_with('/') {
                    fail(Value::Str(s), "it is not an absolute path".into())
                } else if s.as_str().chars().any(char::is_control) {
                    fail(Value::Str(s), "it holds a control character".into())
                } else {
                    Ok(Value::Str(s))
                }
            }
            (K::Path, Value::Package(d)) => Ok(Value::Str(Str::from(d))),
            (K::Path, Value::Output(o)) => Ok(Value::Str(Str::from(o))),
            (K::Package, v @ Value::Package(_)) => Ok(v),
            (K::Output, v @ Value::Output(_)) => Ok(v),
            (K::Output, Value::Package(d)) => Ok(Value::Output(d.out())),
            (K::Custom(c), v) => match c.check(&v) {
                Ok(()) => Ok(v),
                Err(why) => fail(v, why),
            },
            (K::Separated(_), v @ Value::Str(_)) => Ok(v),
            (K::Anything, v) => Ok(v),
            (_, v) => {
                let why = format!("it is {}", v.kind());
                fail(v, why)
            }
        }
    }

    /// Merges the definitions of the option `option` (forced, conditions
    /// applied, its default among them at its priority).
    pub(crate) fn merge(
        &self,
        cx: &Config,
        option: &str,
        defs: Vec<Forced>,
    ) -> Result<Value, Error> {
        self.merge_entry(cx, option, defs, None)
    }

    /// [`Type::merge`] of the entry `entry` of a map (what its fields that
    /// default to their entry's key get).
    pub(crate) fn merge_entry(
        &self,
        cx: &Config,
        option: &str,
        defs: Vec<Forced>,
        entry: Option<&str>,
    ) -> Result<Value, Error> {
        use Kind as K;
        let (priority, mut defs) = winners(defs);
        // The values given for this level are needed now; those for
        // something inside wait until they win there.
        for d in defs.iter_mut().filter(|d| d.sub.is_empty()) {
            d.force(cx)?;
        }
        match &*self.0 {
            // Priorities apply again key by key, inside.
            K::Submodule(_) | K::Map(_) => merge_keyed(cx, option, self, defs, entry),
            K::List(elem) => {
                let mut defs = leaves(defs, option, self)?;
                defs.sort_by_key(|d| (d.order, d.seq));
                let mut out = Vec::new();
                for d in defs {
                    let base = d.shallow();
                    let Value::List(items) = d.value else {
                        return Err(type_error(
                            option,
                            self,
                            &d,
                            format!("it is {}", d.value.kind()),
                        ));
                    };
                    for item in items {
                        let at = format!("{option}.{}", out.len());
                        let one = Forced {
                            value: item,
                            ..base.clone()
                        };
                        out.push(elem.merge(cx, &at, vec![one])?);
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
                    elem.merge_entry(cx, option, defs, entry)
                } else {
                    Err(conflict(option, priority, &defs))
                }
            }
            K::Unique(elem) => {
                if defs.len() == 1 {
                    elem.merge_entry(cx, option, defs, entry)
                } else {
                    Err(Error::NotUnique {
                        option: option.to_owned(),
                        defs: defs.iter().map(Forced::shown).collect(),
                    })
                }
            }
            K::OneOf(types) => {
                let defs = leaves(defs, option, self)?;
                match types
                    .iter()
                    .find(|t| defs.iter().all(|d| t.accepts(&d.value)))
                {
                    Some(t) => t.merge_entry(cx, option, defs, entry),
                    None => {
                        let d = defs
                            .iter()
                            .find(|d| types.iter().all(|t| !t.accepts(&d.value)))
                            .unwrap_or(&defs[0]);
                        Err(type_error(option, self, d, "it fits none of them".into()))
                    }
                }
            }
            K::Separated(sep) => {
                let mut defs = checked(self, option, leaves(defs, option, self)?)?;
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
                    let mut by_key: BTreeMap<String, Vec<Forced>> = BTreeMap::new();
                    for d in defs {
                        for (key, d) in split(d, self)? {
                            by_key.entry(key).or_default().push(d);
                        }
                    }
                    return by_key
                        .into_iter()
                        .map(|(k, defs)| {
                            Ok((k.clone(), self.merge(cx, &format!("{option}.{k}"), defs)?))
                        })
                        .collect::<Result<_, _>>()
                        .map(Value::Map);
                }
                let mut defs = leaves(defs, option, self)?;
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
                let defs = checked(self, option, leaves(defs, option, self)?)?;
                let shown: Vec<Shown> = defs.iter().map(Forced::shown).collect();
                c.merge(defs.into_iter().map(|d| d.value).collect())
                    .map_err(|reason| Error::Merge {
                        option: option.to_owned(),
                        reason,
                        defs: shown,
                    })
            }
            K::Bool
            | K::Int { .. }
            | K::Str { .. }
            | K::Enum(_)
            | K::Path
            | K::Package
            | K::Output => {
                let defs = checked(self, option, leaves(defs, option, self)?)?;
                agreed(option, priority, defs)
            }
        }
    }
}

/// The one value every definition at the winning priority gives.
fn agreed(option: &str, priority: u32, defs: Vec<Forced>) -> Result<Value, Error> {
    let first = &defs[0].value;
    if defs.iter().all(|d| &d.value == first) {
        Ok(first.clone())
    } else {
        Err(conflict(option, priority, &defs))
    }
}

fn conflict(option: &str, priority: u32, defs: &[Forced]) -> Error {
    Error::Conflict {
        option: option.to_owned(),
        priority,
        defs: defs.iter().map(Forced::shown).collect(),
    }
}

/// A definition on its way through the merge: its value is computed
/// (`lazy` taken) only once it wins at the level it is for.
#[derive(Clone)]
pub(crate) struct Forced {
    /// The path below the option being merged.
    pub(crate) sub: Vec<String>,
    pub(crate) value: Value,
    pub(crate) lazy: Option<super::Lazy>,
    /// Conditions still to check: those of a definition below a key of a
    /// map or submodule option wait for that key to be merged, so that
    /// one key's condition may read another key.
    pub(crate) conds: Vec<super::Cond>,
    pub(crate) priority: u32,
    pub(crate) order: u32,
    pub(crate) loc: Loc,
    pub(crate) module: Arc<str>,
    /// Its place among all definitions: breaks ties in ordering.
    pub(crate) seq: usize,
}

impl Forced {
    /// Computes the value, once.
    pub(crate) fn force(&mut self, cx: &Config) -> Result<(), Error> {
        if let Some(f) = self.lazy.take() {
            self.value = f(cx)?;
        }
        Ok(())
    }

    fn shown(&self) -> Shown {
        Shown {
            module: self.module.clone(),
            loc: self.loc.clone(),
            priority: self.priority,
            value: self.lazy.is_none().then(|| self.value.clone()),
        }
    }

    /// Everything but the value and sub-path.
    fn shallow(&self) -> Forced {
        Forced {
            sub: Vec::new(),
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

/// The definitions at the winning priority (the lowest number). One
/// addressed below this option (`users.alice.uid` for `users`) takes part
/// at the normal priority here: its own priority applies where it lands.
fn winners(defs: Vec<Forced>) -> (u32, Vec<Forced>) {
    let level = |d: &Forced| {
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
fn leaves(defs: Vec<Forced>, option: &str, ty: &Type) -> Result<Vec<Forced>, Error> {
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

fn checked(ty: &Type, option: &str, defs: Vec<Forced>) -> Result<Vec<Forced>, Error> {
    defs.into_iter()
        .map(|mut d| match ty.coerce(std::mem::take(&mut d.value)) {
            Ok(v) => Ok(Forced { value: v, ..d }),
            Err((v, why)) => {
                d.value = v;
                Err(type_error(option, ty, &d, why))
            }
        })
        .collect()
}

fn type_error(option: &str, ty: &Type, d: &Forced, reason: String) -> Error {
    Error::Type {
        option: option.to_owned(),
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
fn split(d: Forced, ty: &Type) -> Result<Vec<(String, Forced)>, Error> {
    if let Some((key, rest)) = d.sub.split_first() {
        let key = key.clone();
        let rest = rest.to_vec();
        return Ok(vec![(key, Forced { sub: rest, ..d })]);
    }
    let base = d.shallow();
    match d.value {
        Value::Map(m) => Ok(m
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    Forced {
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
    cx: &Config,
    option: &str,
    ty: &Type,
    defs: Vec<Forced>,
) -> Result<BTreeMap<String, Vec<Forced>>, Error> {
    let (_, mut defs) = winners(defs);
    for d in defs.iter_mut().filter(|d| d.sub.is_empty()) {
        d.force(cx)?;
    }
    let mut by_key: BTreeMap<String, Vec<Forced>> = BTreeMap::new();
    for d in defs {
        for (key, d) in split(d, ty).map_err(|e| with_option(e, option))? {
            by_key.entry(key).or_default().push(d);
        }
    }
    Ok(by_key)
}

/// A map or submodule merged whole, key by key.
fn merge_keyed(
    cx: &Config,
    option: &str,
    ty: &Type,
    defs: Vec<Forced>,
    entry: Option<&str>,
) -> Result<Value, Error> {
    let mut by_key = split_level(cx, option, ty, defs)?;
    unknown_fields(option, ty, &by_key)?;
    let mut out = BTreeMap::new();
    for key in keys_of(ty, &by_key) {
        let defs = by_key.remove(&key).unwrap_or_default();
        if let Some(v) = merge_key(cx, option, ty, &key, defs, entry)? {
            out.insert(key, v);
        }
    }
    Ok(Value::Map(out))
}

/// Whether the definitions of `key` of the map or submodule `ty` can
/// read nothing: no code, no condition, no computed default, and nothing
/// inside merged key by key. Such a key is merged where it is needed,
/// without an entry of its own among the memoized values.
pub(crate) fn is_plain(ty: &Type, key: &str, defs: Option<&Vec<Forced>>) -> bool {
    let defs_plain =
        defs.is_none_or(|defs| defs.iter().all(|d| d.lazy.is_none() && d.conds.is_empty()));
    let child = match &*ty.0 {
        Kind::Map(elem) => elem,
        Kind::Submodule(s) => match s.fields.get(key) {
            Some(d) => {
                if matches!(d.default, Some(super::DefValue::Lazy(_))) {
                    return false;
                }
                &d.ty
            }
            None => return false,
        },
        _ => return false,
    };
    defs_plain && !child.is_keyed()
}

/// The keys a submodule's definitions give that it does not declare.
pub(crate) fn unknown_fields(
    option: &str,
    ty: &Type,
    by_key: &BTreeMap<String, Vec<Forced>>,
) -> Result<(), Error> {
    let Kind::Submodule(s) = &*ty.0 else {
        return Ok(());
    };
    for (field, defs) in by_key {
        if !s.fields.contains_key(field) {
            let d = &defs[0];
            return Err(Error::Unknown {
                path: format!("{option}.{field}"),
                module: d.module.clone(),
                loc: d.loc.clone(),
                suggestions: nearest_under(option, field, s.fields.keys().map(|k| &**k)),
            });
        }
    }
    Ok(())
}

/// The keys a map or submodule value has: a map's defined keys, a
/// submodule's declared fields.
pub(crate) fn keys_of(ty: &Type, by_key: &BTreeMap<String, Vec<Forced>>) -> Vec<String> {
    match &*ty.0 {
        Kind::Submodule(s) => s.fields.keys().cloned().collect(),
        _ => by_key.keys().cloned().collect(),
    }
}

/// The value at `key` of a map or submodule option, from the
/// definitions [`split_level`] gave that key.
/// A key's definitions ready to merge: conditions checked, defaults
/// added, with the type and map entry they are merged as.
pub(crate) struct Prepared {
    pub(crate) path: String,
    pub(crate) defs: Vec<Forced>,
    pub(crate) ty: Type,
    pub(crate) entry: Option<String>,
}

/// The definitions [`split_level`] gave `key` of a map or submodule
/// (`ty`, itself the entry `entry` of a map, if it is one), prepared;
/// `None` for a map key whose every definition is off.
pub(crate) fn prepare_key(
    cx: &Config,
    option: &str,
    ty: &Type,
    key: &str,
    defs: Vec<Forced>,
    entry: Option<&str>,
) -> Result<Option<Prepared>, Error> {
    let path = format!("{option}.{key}");
    let mut active = Vec::with_capacity(defs.len());
    for mut d in defs {
        if cx.holds(&std::mem::take(&mut d.conds))? {
            active.push(d);
        }
    }
    match &*ty.0 {
        // A key whose every definition is off is not there.
        Kind::Map(_) if active.is_empty() => Ok(None),
        Kind::Map(elem) => Ok(Some(Prepared {
            path,
            defs: active,
            ty: elem.clone(),
            entry: Some(key.to_owned()),
        })),
        Kind::Submodule(s) => {
            let Some(decl) = s.fields.get(key) else {
                return Err(Error::NoSuchOption {
                    suggestions: nearest_under(option, key, s.fields.keys().map(|k| &**k)),
                    path,
                });
            };
            match (cx.default_of(decl), entry.filter(|_| decl.default_key)) {
                (Some(d), _) => active.push(d),
                // The entry's key, as NixOS gives a submodule its `name`.
                (None, Some(name)) => active.push(Forced {
                    value: Value::from(name),
                    ..cx.declared_default(decl)
                }),
                (None, None) => {}
            }
            if active.is_empty() {
                return Err(Error::NoValue {
                    option: path,
                    declared: decl.locs[0].clone(),
                });
            }
            Ok(Some(Prepared {
                path,
                defs: active,
                ty: decl.ty.clone(),
                entry: None,
            }))
        }
        _ => Err(Error::NoSuchOption {
            path,
            suggestions: Vec::new(),
        }),
    }
}

/// The value at `key` of a map or submodule, from the definitions
/// [`split_level`] gave that key; `None` for a map key that is off.
pub(crate) fn merge_key(
    cx: &Config,
    option: &str,
    ty: &Type,
    key: &str,
    defs: Vec<Forced>,
    entry: Option<&str>,
) -> Result<Option<Value>, Error> {
    match prepare_key(cx, option, ty, key, defs, entry)? {
        Some(p) => {
            p.ty.merge_entry(cx, &p.path, p.defs, p.entry.as_deref())
                .map(Some)
        }
        None => Ok(None),
    }
}

fn with_option(e: Error, option: &str) -> Error {
    match e {
        Error::Type {
            option: o,
            expected,
            value,
            reason,
            module,
            loc,
        } if o.is_empty() => Error::Type {
            option: option.to_owned(),
            expected,
            value,
            reason,
            module,
            loc,
        },
        e => e,
    }
}

impl fmt::Display for Type {
    /// The type as documentation and errors name it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Kind::Bool => f.write_str("boolean"),
            Kind::Int {
                name: Some(n),
                max: i64::MAX,
                ..
            } => f.write_str(n),
            Kind::Int {
                name: Some(n),
                min,
                max,
            } => write!(f, "{n} ({min} to {max})"),
            Kind::Int { min, max, .. } if (*min, *max) == (i64::MIN, i64::MAX) => {
                f.write_str("integer")
            }
            Kind::Int { min, max, .. } => write!(f, "integer from {min} to {max}"),
            Kind::Str {
                single_line,
                non_empty,
                pattern,
            } => {
                if *non_empty {
                    f.write_str("non-empty ")?;
                }
                if *single_line {
                    f.write_str("single-line ")?;
                }
                f.write_str("string")?;
                match pattern {
                    Some(p) => write!(f, " matching `{}`", p.as_str()),
                    None => Ok(()),
                }
            }
            Kind::Enum(v) => write!(
                f,
                "one of {}",
                v.iter()
                    .map(|x| format!("{x:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Kind::Path => f.write_str("absolute path"),
            Kind::Package => f.write_str("package"),
            Kind::Output => f.write_str("package output"),
            Kind::List(t) => write!(f, "list of ({t})"),
            Kind::Map(t) => write!(f, "map of ({t})"),
            Kind::Optional(t) => write!(f, "null or ({t})"),
            Kind::OneOf(ts) => write!(
                f,
                "either {}",
                ts.iter()
                    .map(|t| format!("({t})"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            Kind::Separated(sep) => write!(f, "strings joined by {sep:?}"),
            Kind::Unique(t) => write!(f, "{t}, defined once"),
            Kind::Anything => f.write_str("anything"),
            Kind::Submodule(s) => write!(
                f,
                "submodule ({})",
                s.fields.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            Kind::Custom(c) => f.write_str(&c.description()),
        }
    }
}

impl fmt::Debug for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Type({self})")
    }
}
