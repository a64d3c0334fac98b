//! Typed options: Rust types as option types, typed keys that read and
//! define options, and structs of options (`#[derive(Options)]`).
//!
//! A key knows the Rust type of its option, so reading gives that type
//! and defining takes only what converts to it: a misspelled option or a
//! value of the wrong type is a compile error, not an evaluation error.
//! Dotted string paths stay for data documents, documentation, errors and
//! the command line; every key has one ([`Key::path`]).
//!
//! ```
//! use bigtop_eval::module::{force, Module};
//! #[derive(bigtop_eval::Options)]
//! struct Web { enable: bool, #[option(default = 80)] port: u16 }
//! let web = Web::at("services.web");
//! Module::new("host", |m| {
//!     m.set(web.port, force(8443));
//! });
//! ```
//!
//! A value of another type does not compile:
//!
//! ```compile_fail
//! # use bigtop_eval::module::Module;
//! # #[derive(bigtop_eval::Options)]
//! # struct Web { enable: bool, #[option(default = 80)] port: u16 }
//! # let web = Web::at("services.web");
//! Module::new("host", |m| {
//!     m.set(web.port, "8443");
//! });
//! ```
//!
//! nor does one out of the Rust type's range, behind a priority:
//!
//! ```compile_fail
//! # use bigtop_eval::module::{force, Module};
//! # #[derive(bigtop_eval::Options)]
//! # struct Web { enable: bool, #[option(default = 80)] port: u16 }
//! # let web = Web::at("services.web");
//! Module::new("host", |m| {
//!     m.set(web.port, force(-1));
//! });
//! ```
//!
//! nor a misspelled option:
//!
//! ```compile_fail
//! # use bigtop_eval::module::Module;
//! # #[derive(bigtop_eval::Options)]
//! # struct Web { enable: bool, #[option(default = 80)] port: u16 }
//! # let web = Web::at("services.web");
//! Module::new("host", |m| {
//!     m.set(web.prot, 8443);
//! });
//! ```

use std::collections::{BTreeMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use super::types::{self, Type};
use super::value::{FromValue, IntoValue, Value};
use super::{Computed, Definition, ModuleBuilder, OptionDecl, Prioritized, ValueOrCode};
use crate::drv::{Drv, Output, Str};

/// A Rust type that an option can have: its [`Type`], its conversions,
/// and the key that names an option of it.
///
/// Implemented for booleans, integers, strings, packages and outputs,
/// [`Value`] (any value), `Vec`, `BTreeMap<String, _>` and `Option` of
/// them, and by `#[derive(Options)]` for structs of options.
pub trait OptionValue: FromValue + IntoValue + Sized + 'static {
    /// The key of an option of this type: [`Opt<Self>`] for most types;
    /// for a struct of options, a struct of the keys of its fields.
    type Key: Key<Value = Self>;

    /// The option type its definitions are checked and merged as.
    fn option_type() -> Type;

    /// The value of an option of this type that nobody defines, where its
    /// declaration gives no default: `false`, an empty list or map,
    /// `None`, a struct of its fields' defaults; `None` (the option then
    /// needs a definition where it is read) for other types.
    fn implicit_default() -> Option<Value> {
        None
    }

    /// Declares an option of this type at `path`; `configure` gives its
    /// description, default and the like. A struct of options declares
    /// each of its fields as an option of its own below `path`.
    #[track_caller]
    fn declare(m: &mut ModuleBuilder, path: &str, configure: &dyn Fn(&mut OptionDecl)) {
        m.option(path, Self::option_type(), |o| {
            if let Some(v) = Self::implicit_default() {
                o.default(v);
            }
            configure(o)
        });
    }
}

/// A typed key: names an option (or a struct of options) whose value is
/// a [`Key::Value`]. Keys are small and `Copy`.
pub trait Key: Copy {
    /// The Rust type of the value.
    type Value: OptionValue;

    /// The key of the option at `path` (dotted, keys holding dots in
    /// double quotes).
    fn at(path: &'static str) -> Self;

    /// Its dotted path.
    fn path(&self) -> &'static str;
}

/// A typed key for one option: reading it with [`Config::read`] gives a
/// `T`, and [`ModuleBuilder::set`] defines it with what converts to `T`.
///
/// ```
/// use bigtop_eval::module::Opt;
/// const PORT: Opt<u16> = Opt::new("services.web.port");
/// assert_eq!(PORT.path(), "services.web.port");
/// ```
///
/// [`Config::read`]: super::Config::read
pub struct Opt<T> {
    path: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<T> Opt<T> {
    /// The key of the option at `path`.
    pub const fn new(path: &'static str) -> Self {
        Opt {
            path,
            _t: PhantomData,
        }
    }

    /// Its dotted path.
    pub const fn path(&self) -> &'static str {
        self.path
    }
}

impl<T> Clone for Opt<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Opt<T> {}

impl<T> std::fmt::Debug for Opt<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opt({})", self.path)
    }
}

impl<T: OptionValue> Key for Opt<T> {
    type Value = T;

    fn at(path: &'static str) -> Self {
        Opt::new(path)
    }

    fn path(&self) -> &'static str {
        self.path
    }
}

impl<T: OptionValue> Opt<BTreeMap<String, T>> {
    /// The key of the entry `key` of this map option: a struct of
    /// options' keys for a map of structs (`hosts.entry("web").port`).
    pub fn entry(&self, key: &str) -> T::Key {
        T::Key::at(join(self.path, key))
    }
}

impl<T: OptionValue> Opt<Option<T>> {
    /// The key of what this optional option holds when it is set: for an
    /// optional struct of options, its fields (`ready.some().tcp_port`);
    /// defining one of them sets the option.
    pub fn some(&self) -> T::Key {
        T::Key::at(self.path)
    }
}

/// The interned path of `name` below `parent`: quoted where the name
/// holds a dot, so that the path parses back to the same segments.
pub fn join(parent: &str, name: &str) -> &'static str {
    let quote = name.is_empty() || name.contains(['.', '"', '\\']);
    // Keys are made for every machine from the same few names: the path
    // is put together in a buffer kept per thread, and allocated only the
    // first time it is seen.
    thread_local! {
        static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        if !parent.is_empty() {
            b.push_str(parent);
            b.push('.');
        }
        if quote {
            b.push('"');
            for c in name.chars() {
                if matches!(c, '"' | '\\') {
                    b.push('\\');
                }
                b.push(c);
            }
            b.push('"');
        } else {
            b.push_str(name);
        }
        intern(&b)
    })
}

/// `path` as a `&'static str`, kept once however often it is asked for.
///
/// Keys are `Copy` so that a struct of keys can be used field by field
/// (`m.set(web.port, 80)`, then `web.enable`); that needs their paths to
/// live as long as the program. The set of option paths a program names
/// is bounded by its definitions, so each is kept once and never freed.
pub fn intern(path: &str) -> &'static str {
    static PATHS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = PATHS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = set.get(path) {
        return p;
    }
    let p: &'static str = Box::leak(path.to_owned().into_boxed_str());
    set.insert(p);
    p
}

/// What may define an option whose Rust type is `T`: a `T` itself, what
/// converts to it without loss (`&str` for a `String`, a package for an
/// output or a string), lists and maps of those, [`lazy`](super::lazy)
/// code returning one, and a priority or order wrapper
/// ([`force`](super::force), …) around any of them.
pub trait DefinitionOf<T> {
    /// The untyped definition.
    fn into_definition(self) -> Definition;
}

/// A plain value that may stand for a `T`: what [`DefinitionOf`] takes
/// inside lists, maps and optional values.
pub trait ValueOf<T> {
    /// The value, as the option's type holds it.
    fn into_typed(self) -> Value;
}

/// Implements [`ValueOf<T>`] and [`DefinitionOf<T>`] for `T` itself, for
/// types that only stand for themselves (what `#[derive(Options)]` does
/// for a struct of options).
#[macro_export]
#[doc(hidden)]
macro_rules! __defines_itself {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::module::ValueOf<$t> for $t {
            fn into_typed(self) -> $crate::module::Value {
                $crate::module::IntoValue::into_value(self)
            }
        }
        impl $crate::module::DefinitionOf<$t> for $t {
            fn into_definition(self) -> $crate::module::Definition {
                $crate::module::Definition::from(self)
            }
        }
    )*};
}

crate::__defines_itself!(
    bool, i8, i16, i32, i64, u8, u16, u32, u64, String, Str, Drv, Output, Value
);

/// For an optional option, the value itself stands for `Some` of it:
/// `m.set(etc.text, "hello")` rather than `Some("hello")`.
macro_rules! stands_for_some {
    ($($x:ty => $t:ty),* $(,)?) => {$(
        impl ValueOf<Option<$t>> for $x {
            fn into_typed(self) -> Value {
                ValueOf::<$t>::into_typed(self)
            }
        }
        impl DefinitionOf<Option<$t>> for $x {
            fn into_definition(self) -> Definition {
                Definition::from(ValueOf::<$t>::into_typed(self))
            }
        }
    )*};
}

stands_for_some!(
    bool => bool, i8 => i8, i16 => i16, i32 => i32, i64 => i64, u8 => u8, u16 => u16,
    u32 => u32, u64 => u64, String => String, Str => Str, Drv => Drv, Output => Output,
    &str => String, &str => Str, String => Str, Drv => Str, Drv => Output,
);

/// `ValueOf<$t> for $x` with `$conv` turning an `$x` into a `Value`, and
/// the matching `DefinitionOf`.
macro_rules! stands_for {
    ($($x:ty => $t:ty : $conv:expr),* $(,)?) => {$(
        impl ValueOf<$t> for $x {
            fn into_typed(self) -> Value {
                let f: fn($x) -> Value = $conv;
                f(self)
            }
        }
        impl DefinitionOf<$t> for $x {
            fn into_definition(self) -> Definition {
                Definition::from(ValueOf::<$t>::into_typed(self))
            }
        }
    )*};
}

stands_for!(
    &str => String: |s| s.into_value(),
    &str => Str: |s| s.into_value(),
    String => Str: |s| s.into_value(),
    // A package stands for its store path in a string, and for its
    // default output where an output is asked for.
    Drv => Str: |d| Value::Str(Str::from(d)),
    Drv => Output: |d| Value::Output(d.out()),
);

impl<T, X: ValueOf<T>> ValueOf<Vec<T>> for Vec<X> {
    fn into_typed(self) -> Value {
        Value::List(self.into_iter().map(ValueOf::into_typed).collect())
    }
}

impl<T, X: ValueOf<T>> DefinitionOf<Vec<T>> for Vec<X> {
    fn into_definition(self) -> Definition {
        Definition::from(ValueOf::<Vec<T>>::into_typed(self))
    }
}

impl<T, X: ValueOf<T>, const N: usize> ValueOf<Vec<T>> for [X; N] {
    fn into_typed(self) -> Value {
        Value::List(self.into_iter().map(ValueOf::into_typed).collect())
    }
}

impl<T, X: ValueOf<T>, const N: usize> DefinitionOf<Vec<T>> for [X; N] {
    fn into_definition(self) -> Definition {
        Definition::from(ValueOf::<Vec<T>>::into_typed(self))
    }
}

impl<T, K: Into<String>, X: ValueOf<T>> ValueOf<BTreeMap<String, T>> for BTreeMap<K, X> {
    fn into_typed(self) -> Value {
        Value::Map(
            self.into_iter()
                .map(|(k, v)| (k.into(), v.into_typed()))
                .collect(),
        )
    }
}

impl<T, K: Into<String>, X: ValueOf<T>> DefinitionOf<BTreeMap<String, T>> for BTreeMap<K, X> {
    fn into_definition(self) -> Definition {
        Definition::from(ValueOf::<BTreeMap<String, T>>::into_typed(self))
    }
}

impl<T, X: ValueOf<T>> ValueOf<Option<T>> for Option<X> {
    fn into_typed(self) -> Value {
        self.map_or(Value::Null, ValueOf::into_typed)
    }
}

impl<T, X: ValueOf<T>> DefinitionOf<Option<T>> for Option<X> {
    fn into_definition(self) -> Definition {
        Definition::from(ValueOf::<Option<T>>::into_typed(self))
    }
}

impl<T, D: DefinitionOf<T>> DefinitionOf<T> for Prioritized<D> {
    fn into_definition(self) -> Definition {
        Prioritized {
            inner: self.inner.into_definition(),
            priority: self.priority,
            order: self.order,
        }
        .into()
    }
}

impl<T, X: ValueOf<T> + 'static> DefinitionOf<T> for Computed<X> {
    fn into_definition(self) -> Definition {
        let code = self.code;
        Definition {
            value: ValueOrCode::Lazy(Arc::new(move |c| code(c).map(ValueOf::into_typed))),
            priority: super::NORMAL,
            order: super::ORDER,
        }
    }
}

/// An option whose value is made of fields or entries: a struct of
/// options or a map. What [`empty`] may define.
pub trait Keyed {}

impl<T> Keyed for BTreeMap<String, T> {}

/// A definition giving no field and no entry: what makes an entry of a
/// map exist with every field at its default (`m.set(GROUPS.entry("www"),
/// empty())`), where `BTreeMap::<String, Value>::new()` was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Empty;

/// An empty definition: see [`Empty`].
pub fn empty() -> Empty {
    Empty
}

impl IntoValue for Empty {
    fn into_value(self) -> Value {
        Value::Map(BTreeMap::new())
    }
}

impl<T: Keyed> ValueOf<T> for Empty {
    fn into_typed(self) -> Value {
        self.into_value()
    }
}

impl<T: Keyed> DefinitionOf<T> for Empty {
    fn into_definition(self) -> Definition {
        Definition::from(self)
    }
}

macro_rules! scalar_option {
    ($($t:ty => $ty:expr),* $(,)?) => {$(
        impl OptionValue for $t {
            type Key = Opt<$t>;
            fn option_type() -> Type {
                $ty
            }
        }
    )*};
}

scalar_option!(
    i8 => types::between(i8::MIN.into(), i8::MAX.into()),
    i16 => types::between(i16::MIN.into(), i16::MAX.into()),
    i32 => types::between(i32::MIN.into(), i32::MAX.into()),
    i64 => types::int(),
    u8 => types::between(0, u8::MAX.into()),
    u16 => types::between(0, u16::MAX.into()),
    u32 => types::between(0, u32::MAX.into()),
    u64 => types::unsigned(),
    String => types::str(),
    Str => types::str(),
    Drv => types::package(),
    Output => types::output(),
    Value => types::anything(),
);

impl OptionValue for bool {
    type Key = Opt<bool>;
    fn option_type() -> Type {
        types::bool()
    }
    fn implicit_default() -> Option<Value> {
        Some(Value::Bool(false))
    }
}

impl<T: OptionValue> OptionValue for Vec<T> {
    type Key = Opt<Vec<T>>;
    fn option_type() -> Type {
        types::list(T::option_type())
    }
    fn implicit_default() -> Option<Value> {
        Some(Value::List(Vec::new()))
    }
}

impl<T: OptionValue> OptionValue for BTreeMap<String, T> {
    type Key = Opt<BTreeMap<String, T>>;
    fn option_type() -> Type {
        types::map(T::option_type())
    }
    fn implicit_default() -> Option<Value> {
        Some(Value::Map(BTreeMap::new()))
    }
}

impl<T: OptionValue> OptionValue for Option<T> {
    type Key = Opt<Option<T>>;
    fn option_type() -> Type {
        types::optional(T::option_type())
    }
    fn implicit_default() -> Option<Value> {
        Some(Value::Null)
    }
}

/// For `#[derive(Options)]`: why a value is not the map of a struct of
/// options.
#[doc(hidden)]
pub fn not_a_struct(name: &str, v: &Value) -> String {
    format!(
        "expected the options of `{name}` as a map, got {}",
        v.kind()
    )
}

/// For `#[derive(Options)]`: the field `name` of a struct of options
/// read from its merged map, borrowed.
#[doc(hidden)]
pub fn field_ref<T: FromValue>(map: &BTreeMap<String, Value>, name: &str) -> Result<T, String> {
    match map.get(name) {
        Some(v) => T::from_value_ref(v).map_err(|e| format!("field `{name}`: {e}")),
        None => T::from_value(Value::Null).map_err(|_| format!("field `{name}` has no value")),
    }
}

/// For `#[derive(Options)]`: the field `name` of a struct of options
/// read from its merged map.
#[doc(hidden)]
pub fn take_field<T: FromValue>(
    map: &mut BTreeMap<String, Value>,
    name: &str,
) -> Result<T, String> {
    match map.remove(name) {
        Some(v) => T::from_value(v).map_err(|e| format!("field `{name}`: {e}")),
        // A field nobody defined reads as null: an optional field is
        // `None`, anything else says it has no value.
        None => T::from_value(Value::Null).map_err(|_| format!("field `{name}` has no value")),
    }
}
