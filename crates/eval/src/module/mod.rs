//! The module system: machine configuration as typed options that many
//! modules declare and define, merged by type and priority — what the
//! NixOS module system does, with Rust's types doing the checking.
//!
//! A [`Module`] declares options (a path, a [`Type`](types::Type), a
//! default, a description, an example) and defines values for them (its
//! own or other modules'). [`Config::eval`] collects a set of modules
//! with their imports and evaluates every option: lazily (a definition
//! may read any option, each is merged once, a real cycle is reported
//! with its chain), by priority (the lowest number wins: see
//! [`OPTION_DEFAULT`], [`DEFAULT`], [`PLATFORM`], [`NORMAL`], [`FORCE`]),
//! and by type (scalars must agree, lists concatenate, maps and
//! submodules merge key by key). Every definition remembers where it was
//! written, and errors list every definition involved.
//!
//! ```
//! use bigtop_eval::module::{types, Config, Module, default, force, lazy};
//! let web = Module::new("web", |m| {
//!     m.option("services.web.enable", types::bool(), |o| {
//!         o.default(false).description("Whether to run the web server.");
//!     });
//!     m.option("services.web.port", types::port(), |o| {
//!         o.default(80).description("The port it listens on.").example(8080);
//!     });
//!     m.option("firewall.allowed_tcp_ports", types::list(types::port()), |o| {
//!         o.default(Vec::<u16>::new());
//!     });
//!     // Defines the firewall only when the service is on: conditions are
//!     // lazy, so they may read any option.
//!     m.when(|c| c.get::<bool>("services.web.enable"), |m| {
//!         m.define("firewall.allowed_tcp_ports", lazy(|c| Ok(vec![c.get::<u16>("services.web.port")?])));
//!     });
//! });
//! let host = Module::new("host", |m| {
//!     m.import(&web);
//!     m.define("services.web.enable", true);
//!     m.define("services.web.port", default(8080));
//! });
//! let cfg = Config::eval(&[host], None)?;
//! assert_eq!(cfg.get::<Vec<u16>>("firewall.allowed_tcp_ports")?, vec![8080]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

mod config;
mod data;
mod docs;
mod error;
mod merge;
mod typed;
pub mod types;
mod value;

pub use config::{Config, DefinitionInfo};
pub use data::Format;
/// The old name of [`ShownDefinition`], which says what it shows.
pub use error::ShownDefinition as Shown;
pub use error::{DataKey, Error, Errors, EvalError, Loc, ShownDefinition, Warning};
pub use typed::{
    empty, field_ref, intern, join, not_a_struct, take_field, DefinitionOf, Empty, Key, Keyed, Opt,
    OptionValue, ValueOf,
};
pub use value::{FromValue, IntoValue, Json, Value};

/// The priority of an option's own default.
pub const OPTION_DEFAULT: u32 = 1500;
/// The priority of [`default`]: a module's default for another module's
/// option.
pub const DEFAULT: u32 = 1000;
/// The priority of [`platform`] and of data documents: what a central
/// system supplies about a machine, below the machine owner's own
/// definitions and above defaults.
pub const PLATFORM: u32 = 900;
/// The priority of a plain definition.
pub const NORMAL: u32 = 100;
/// The priority of [`force`].
pub const FORCE: u32 = 50;

/// The order of [`before`]: earlier in lists and joined strings.
pub const BEFORE: u32 = 500;
/// The order of a plain definition.
pub const ORDER: u32 = 1000;
/// The order of [`after`].
pub const AFTER: u32 = 1500;

pub(crate) type Lazy = Arc<dyn Fn(&Config) -> Result<Value, Error> + Send + Sync>;
pub(crate) type Apply = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;
type Cond = Arc<dyn Fn(&Config) -> Result<bool, Error> + Send + Sync>;
type Test = Arc<dyn Fn(&Config) -> Result<Option<String>, Error> + Send + Sync>;

/// What a definition or default gives: a value, or code that computes it
/// from the configuration.
#[derive(Clone)]
pub(crate) enum ValueOrCode {
    Value(Value),
    Lazy(Lazy),
}

/// What a module gives an option: a value (or code computing it), with a
/// priority and an order. Any [`IntoValue`] is a definition at
/// [`NORMAL`] priority, and so are [`lazy`] code and the priority and
/// order wrappers ([`force`], [`default`], [`before`], …) around either.
#[derive(Clone)]
pub struct Definition {
    value: ValueOrCode,
    priority: u32,
    order: u32,
}

impl<T: IntoValue> From<T> for Definition {
    fn from(v: T) -> Self {
        Definition {
            value: ValueOrCode::Value(v.into_value()),
            priority: NORMAL,
            order: ORDER,
        }
    }
}

/// A definition computed from the configuration: what [`lazy`] makes.
/// It keeps the Rust type `T` its code returns, so that a typed key
/// ([`ModuleBuilder::set`]) can check it.
pub struct Computed<T> {
    code: Code<T>,
}

/// Code computing a `T` from the configuration.
type Code<T> = Arc<dyn Fn(&Config) -> Result<T, Error> + Send + Sync>;

impl<T: IntoValue + 'static> From<Computed<T>> for Definition {
    fn from(c: Computed<T>) -> Self {
        let code = c.code;
        Definition {
            value: ValueOrCode::Lazy(Arc::new(move |cfg| code(cfg).map(IntoValue::into_value))),
            priority: NORMAL,
            order: ORDER,
        }
    }
}

/// A definition given a priority or an order: what [`force`],
/// [`default`], [`platform`], [`priority`], [`before`], [`after`] and
/// [`order`] make. It keeps what it wraps, so that a typed key can still
/// check the value's type.
pub struct Prioritized<D> {
    inner: D,
    priority: Option<u32>,
    order: Option<u32>,
}

impl<D: Into<Definition>> From<Prioritized<D>> for Definition {
    fn from(p: Prioritized<D>) -> Self {
        let d = p.inner.into();
        Definition {
            priority: p.priority.unwrap_or(d.priority),
            order: p.order.unwrap_or(d.order),
            value: d.value,
        }
    }
}

/// A definition computed from the configuration when the option is
/// first read: it may read any other option.
pub fn lazy<T, F>(f: F) -> Computed<T>
where
    F: Fn(&Config) -> Result<T, Error> + Send + Sync + 'static,
{
    Computed { code: Arc::new(f) }
}

/// `d` at priority `n` (lower numbers win).
pub fn priority<D>(n: u32, d: D) -> Prioritized<D> {
    Prioritized {
        inner: d,
        priority: Some(n),
        order: None,
    }
}

/// `d` at [`DEFAULT`] priority: any plain definition overrides it.
pub fn default<D>(d: D) -> Prioritized<D> {
    priority(DEFAULT, d)
}

/// `d` at [`PLATFORM`] priority: the machine owner's definitions
/// override it; defaults do not.
pub fn platform<D>(d: D) -> Prioritized<D> {
    priority(PLATFORM, d)
}

/// `d` at [`FORCE`] priority: overrides plain definitions.
pub fn force<D>(d: D) -> Prioritized<D> {
    priority(FORCE, d)
}

/// `d` placed at `n` among a list's or joined string's definitions
/// (lower first; equal orders keep definition order).
pub fn order<D>(n: u32, d: D) -> Prioritized<D> {
    Prioritized {
        inner: d,
        priority: None,
        order: Some(n),
    }
}

/// `d` before the plain definitions of a list or joined string.
pub fn before<D>(d: D) -> Prioritized<D> {
    order(BEFORE, d)
}

/// `d` after the plain definitions of a list or joined string.
pub fn after<D>(d: D) -> Prioritized<D> {
    order(AFTER, d)
}

/// An option's declaration: its type, default, description and example.
#[derive(Clone)]
pub struct OptionDecl {
    pub(crate) ty: types::Type,
    pub(crate) default: Option<ValueOrCode>,
    pub(crate) default_text: Option<String>,
    /// The default is the key of the map entry its submodule is (NixOS's
    /// `name` argument).
    pub(crate) default_key: bool,
    pub(crate) description: String,
    pub(crate) example: Option<Value>,
    /// Applied to the merged value before anyone reads it.
    pub(crate) apply: Option<Apply>,
    /// At most one module may define it.
    pub(crate) read_only: bool,
    /// Left out of the documentation.
    pub(crate) internal: bool,
    /// Every declaration merged into this one.
    pub(crate) locs: Vec<Loc>,
    pub(crate) modules: Vec<Arc<str>>,
}

impl OptionDecl {
    pub(crate) fn new(ty: types::Type, loc: Loc) -> Self {
        OptionDecl {
            ty,
            default: None,
            default_text: None,
            default_key: false,
            description: String::new(),
            example: None,
            apply: None,
            read_only: false,
            internal: false,
            locs: vec![loc],
            modules: Vec::new(),
        }
    }

    /// The value when no module defines it (at [`OPTION_DEFAULT`]).
    pub fn default(&mut self, v: impl IntoValue) -> &mut Self {
        self.default = Some(ValueOrCode::Value(v.into_value()));
        self
    }

    /// A default computed from the configuration (e.g. a package of the
    /// machine's release), described for the documentation by `text`.
    pub fn default_with<T, F>(&mut self, text: &str, f: F) -> &mut Self
    where
        T: IntoValue,
        F: Fn(&Config) -> Result<T, Error> + Send + Sync + 'static,
    {
        self.default = Some(ValueOrCode::Lazy(Arc::new(move |c| {
            f(c).map(IntoValue::into_value)
        })));
        self.default_text = Some(text.to_owned());
        self
    }

    /// How the documentation shows the default, where its value would
    /// not say it well.
    pub fn default_text(&mut self, text: &str) -> &mut Self {
        self.default_text = Some(text.to_owned());
        self
    }

    /// For a field of a submodule in a map: the default is the entry's
    /// key (`users.alice.name` is `alice` unless defined). In a list,
    /// where entries have no key, the field then needs a definition.
    pub fn default_key(&mut self) -> &mut Self {
        self.default = None;
        self.default_key = true;
        self.default_text = Some("the entry's key".into());
        self
    }

    /// What it is for (Markdown).
    pub fn description(&mut self, text: &str) -> &mut Self {
        self.description = text.to_owned();
        self
    }

    /// An example value for the documentation.
    pub fn example(&mut self, v: impl IntoValue) -> &mut Self {
        self.example = Some(v.into_value());
        self
    }

    /// A function applied to the merged value, whose result is what
    /// every reader sees (NixOS's `apply`): to normalise (sort, dedupe,
    /// fill in) what many modules defined. Definitions are checked
    /// against the type before it runs; its result is not checked again.
    pub fn apply<T, U, F>(&mut self, f: F) -> &mut Self
    where
        T: FromValue,
        U: IntoValue,
        F: Fn(T) -> U + Send + Sync + 'static,
    {
        self.apply = Some(Arc::new(move |v| {
            T::from_value(v).map(|t| f(t).into_value())
        }));
        self
    }

    /// Only one definition may be given (besides the default): a second
    /// one is an error naming both, whatever their priorities (NixOS's
    /// `readOnly`). For what a central module sets once, such as the
    /// release a machine runs.
    pub fn read_only(&mut self) -> &mut Self {
        self.read_only = true;
        self
    }

    /// Left out of the generated documentation (NixOS's `internal`): for
    /// options modules use to talk to each other, not for users to set.
    pub fn internal(&mut self) -> &mut Self {
        self.internal = true;
        self
    }

    /// The type.
    pub fn ty(&self) -> &types::Type {
        &self.ty
    }

    /// Its description.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Whether it is hidden from the documentation.
    pub fn is_internal(&self) -> bool {
        self.internal
    }

    /// Two declarations of one option as one.
    pub(crate) fn merge(mut self, other: OptionDecl) -> Result<OptionDecl, String> {
        self.ty = self.ty.merge_decl(&other.ty)?;
        self.default_key |= other.default_key;
        match (&self.default, other.default) {
            (None, d) => {
                self.default = d;
                self.default_text = other.default_text.or(self.default_text);
            }
            (Some(_), None) => {}
            (Some(ValueOrCode::Value(a)), Some(ValueOrCode::Value(b))) if *a == b => {}
            (Some(_), Some(_)) => return Err("both give a default".into()),
        }
        if self.description.is_empty() {
            self.description = other.description;
        } else if !other.description.is_empty() && other.description != self.description {
            self.description = format!("{}\n\n{}", self.description, other.description);
        }
        if self.example.is_none() {
            self.example = other.example;
        }
        self.apply = match (self.apply.take(), other.apply) {
            (None, f) | (f, None) => f,
            (Some(a), Some(b)) if Arc::ptr_eq(&a, &b) => Some(a),
            (Some(_), Some(_)) => return Err("both give a function to apply".into()),
        };
        self.read_only |= other.read_only;
        self.internal |= other.internal;
        self.locs.extend(other.locs);
        self.modules.extend(other.modules);
        Ok(self)
    }
}

/// The segments of a dotted path; a segment in double quotes may hold
/// dots (`etc."nginx/nginx.conf".text`).
pub(crate) fn parse_path(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            // Inside quotes, a backslash keeps the next character as it
            // is: a key may hold a quote (`join` writes `\"`).
            '\\' if quoted => cur.extend(chars.next()),
            '"' => quoted = !quoted,
            '.' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// A module: a named set of option declarations, definitions, imports,
/// assertions and warnings. Cheap to clone; modules are deduplicated by
/// name when several import one.
#[derive(Clone)]
pub struct Module(pub(crate) Arc<ModuleData>);

pub(crate) struct ModuleData {
    pub(crate) name: Arc<str>,
    pub(crate) loc: Loc,
    pub(crate) imports: Vec<Module>,
    pub(crate) disabled: Vec<(String, Loc)>,
    pub(crate) options: Vec<(String, OptionDecl)>,
    pub(crate) defs: Vec<RawDef>,
    pub(crate) checks: Vec<Check>,
    pub(crate) migrations: Vec<Migration>,
}

pub(crate) struct RawDef {
    pub(crate) path: Vec<String>,
    pub(crate) def: Definition,
    pub(crate) conds: Vec<Cond>,
    pub(crate) loc: Loc,
}

pub(crate) struct Check {
    pub(crate) warning: bool,
    pub(crate) test: Test,
    pub(crate) conds: Vec<Cond>,
    pub(crate) loc: Loc,
}

pub(crate) enum Migration {
    Renamed { from: String, to: String },
    Removed { path: String, instructions: String },
}

impl Module {
    /// A module named `name` (its identity for imports and
    /// [`ModuleBuilder::disable`]), written by `body`.
    #[track_caller]
    pub fn new(name: impl Into<String>, body: impl FnOnce(&mut ModuleBuilder)) -> Module {
        let mut b = ModuleBuilder {
            data: ModuleData {
                name: Arc::from(name.into()),
                loc: Loc::caller(),
                imports: Vec::new(),
                disabled: Vec::new(),
                options: Vec::new(),
                defs: Vec::new(),
                checks: Vec::new(),
                migrations: Vec::new(),
            },
            conds: Vec::new(),
        };
        body(&mut b);
        Module(Arc::new(b.data))
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Module({:?} at {})", self.0.name, self.0.loc)
    }
}

/// Writes a [`Module`]: every call records where it was made.
pub struct ModuleBuilder {
    data: ModuleData,
    conds: Vec<Cond>,
}

impl ModuleBuilder {
    /// Imports `m` (once, however many modules import it).
    pub fn import(&mut self, m: &Module) -> &mut Self {
        self.data.imports.push(m.clone());
        self
    }

    /// Leaves out the module named `name`, wherever it is imported (with
    /// the modules only it imports).
    #[track_caller]
    pub fn disable(&mut self, name: &str) -> &mut Self {
        self.data.disabled.push((name.to_owned(), Loc::caller()));
        self
    }

    /// Declares the option `path` of type `ty`; `configure` gives its
    /// default, description and example.
    #[track_caller]
    pub fn option(
        &mut self,
        path: &str,
        ty: types::Type,
        configure: impl FnOnce(&mut OptionDecl),
    ) -> &mut Self {
        let mut d = OptionDecl::new(ty, Loc::caller());
        d.modules.push(self.data.name.clone());
        configure(&mut d);
        // Options are found by their segments joined with dots: a path
        // given quoted (`join` quotes a name holding a dot) is declared
        // as its segments say.
        let path = if path.contains('"') {
            parse_path(path).join(".")
        } else {
            path.to_owned()
        };
        self.data.options.push((path, d));
        self
    }

    /// Defines `path`: an option, something inside one (a key of a map
    /// option, a field of a submodule), or a group of options given a map.
    /// A key holding dots is quoted, as in Nix: `etc."nginx/nginx.conf".text`.
    #[track_caller]
    pub fn define(&mut self, path: &str, def: impl Into<Definition>) -> &mut Self {
        let loc = Loc::caller();
        self.push_def(parse_path(path), def.into(), loc)
    }

    /// Defines the option `key` names (or something inside it) with what
    /// converts to its Rust type, at any priority: `m.set(web.port,
    /// 8080)`, `m.set(web.port, force(8443))`, `m.set(ports, lazy(|c| …))`.
    /// A value of another type does not compile.
    #[track_caller]
    pub fn set<K: Key>(&mut self, key: K, def: impl DefinitionOf<K::Value>) -> &mut Self {
        let loc = Loc::caller();
        self.push_def(parse_path(key.path()), def.into_definition(), loc)
    }

    /// Declares the options of `T` (a struct of options, or one option
    /// of a Rust type) at `path`, and returns their key.
    ///
    /// ```
    /// use bigtop_eval::module::{Config, Module};
    /// /// A web server.
    /// #[derive(bigtop_eval::Options, Debug, Clone, PartialEq)]
    /// struct Web {
    ///     /// Whether to run it.
    ///     enable: bool,
    ///     /// The port it listens on.
    ///     #[option(default = 80)]
    ///     port: u16,
    /// }
    /// let web = Web::at("services.web");
    /// let module = Module::new("web", |m| {
    ///     m.options::<Web>("services.web");
    /// });
    /// let host = Module::new("host", |m| {
    ///     m.import(&module);
    ///     m.set(web.enable, true);
    /// });
    /// let cfg = Config::eval(&[host], None)?;
    /// assert_eq!(cfg.read(web)?, Web { enable: true, port: 80 });
    /// assert_eq!(cfg.read(web.port)?, 80);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn options<T: OptionValue>(&mut self, path: &str) -> T::Key {
        let path = intern(path);
        T::declare(self, path, &|_| {});
        T::Key::at(path)
    }

    /// Declares the option `key` names, of its Rust type; `configure`
    /// gives its description, default and the like.
    #[track_caller]
    pub fn declare<K: Key>(&mut self, key: K, configure: impl Fn(&mut OptionDecl)) -> &mut Self {
        K::Value::declare(self, key.path(), &configure);
        self
    }

    /// Defines the path given as its segments, for keys that hold dots
    /// (`["services", "web", "hosts", "example.com"]`).
    #[track_caller]
    pub fn define_at(&mut self, path: &[&str], def: impl Into<Definition>) -> &mut Self {
        let loc = Loc::caller();
        self.push_def(
            path.iter().map(|s| (*s).to_owned()).collect(),
            def.into(),
            loc,
        )
    }

    pub(crate) fn push_def(&mut self, path: Vec<String>, def: Definition, loc: Loc) -> &mut Self {
        self.data.defs.push(RawDef {
            path,
            def,
            conds: self.conds.clone(),
            loc,
        });
        self
    }

    /// The definitions, assertions and warnings `body` makes apply only
    /// where `cond` holds. The condition is evaluated when an option it
    /// guards is read, so it may read any option.
    pub fn when(
        &mut self,
        cond: impl Fn(&Config) -> Result<bool, Error> + Send + Sync + 'static,
        body: impl FnOnce(&mut ModuleBuilder),
    ) -> &mut Self {
        self.conds.push(Arc::new(cond));
        body(self);
        self.conds.pop();
        self
    }

    /// Fails the evaluation with `message` unless `test` holds.
    #[track_caller]
    pub fn assert(
        &mut self,
        test: impl Fn(&Config) -> Result<bool, Error> + Send + Sync + 'static,
        message: impl Into<String>,
    ) -> &mut Self {
        let message = message.into();
        self.check(false, move |c| Ok((!test(c)?).then(|| message.clone())))
    }

    /// Warns with `message` where `test` holds.
    #[track_caller]
    pub fn warn(
        &mut self,
        test: impl Fn(&Config) -> Result<bool, Error> + Send + Sync + 'static,
        message: impl Into<String>,
    ) -> &mut Self {
        let message = message.into();
        self.check(true, move |c| Ok(test(c)?.then(|| message.clone())))
    }

    /// An assertion whose message is computed: `test` returns the
    /// message of a failure, or `None`.
    #[track_caller]
    pub fn assert_with(
        &mut self,
        test: impl Fn(&Config) -> Result<Option<String>, Error> + Send + Sync + 'static,
    ) -> &mut Self {
        self.check(false, test)
    }

    #[track_caller]
    fn check(
        &mut self,
        warning: bool,
        test: impl Fn(&Config) -> Result<Option<String>, Error> + Send + Sync + 'static,
    ) -> &mut Self {
        self.data.checks.push(Check {
            warning,
            test: Arc::new(test),
            conds: self.conds.clone(),
            loc: Loc::caller(),
        });
        self
    }

    /// The option `from` was renamed to `to`: definitions of `from` (and
    /// of anything inside it) are forwarded to `to` with their priority,
    /// each with a warning naming the new option.
    pub fn renamed(&mut self, from: &str, to: &str) -> &mut Self {
        self.data.migrations.push(Migration::Renamed {
            from: from.to_owned(),
            to: to.to_owned(),
        });
        self
    }

    /// The option `path` was removed: defining it is an error that gives
    /// `instructions`.
    pub fn removed(&mut self, path: &str, instructions: &str) -> &mut Self {
        self.data.migrations.push(Migration::Removed {
            path: path.to_owned(),
            instructions: instructions.to_owned(),
        });
        self
    }
}
