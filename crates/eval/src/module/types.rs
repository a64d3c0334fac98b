//! Option types: what a value may be, and how several definitions of one
//! option merge into its value (the merging itself is the configuration's
//! merge engine, which follows these types).
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

use super::error::Loc;
use super::value::Value;
use super::OptionDecl;
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
    /// Whether a field inside (at any depth) has a computed default:
    /// found once, when first asked.
    pub(crate) lazy: std::sync::OnceLock<bool>,
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

/// A string without a line break (`\n` or `\r`).
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
    pub(super) fn accepts(&self, v: &Value) -> bool {
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

    /// Whether merging a value of it may run code besides the
    /// definitions': a field inside, at any depth, with a computed
    /// default.
    pub(crate) fn lazy_inside(&self) -> bool {
        use Kind as K;
        match &*self.0 {
            K::Submodule(s) => *s.lazy.get_or_init(|| {
                s.fields.values().any(|d| {
                    matches!(d.default, Some(super::ValueOrCode::Lazy(_))) || d.ty.lazy_inside()
                })
            }),
            K::List(t) | K::Map(t) | K::Optional(t) | K::Unique(t) => t.lazy_inside(),
            K::OneOf(ts) => ts.iter().any(Type::lazy_inside),
            _ => false,
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
                Type::new(K::Submodule(Submodule {
                    fields,
                    clashes,
                    lazy: Default::default(),
                }))
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
    pub(super) fn coerce(&self, v: Value) -> Result<Value, (Value, String)> {
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
                if *single_line && t.contains(['\n', '\r']) {
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
