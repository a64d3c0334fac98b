//! Derivations, low level: strings that remember the store paths they
//! name, typed handles to package outputs, and a builder for a raw
//! derivation.
//!
//! A [`Str`] is text plus its *context*: the outputs and sources its text
//! names. Every string a derivation is made of (builder, arguments,
//! environment) contributes its context to the derivation's inputs, so a
//! dependency cannot be used without being declared — what Nix's string
//! context does. Outputs ([`Output`]) and derivations ([`Drv`]) are not
//! `Display`: the only ways to put one into text are [`text!`](crate::text),
//! [`Str::push`] and the conversions into [`Str`], which all keep it.
//!
//! ```
//! use bigtop_eval::drv::{DrvBuilder, Platform};
//! use bigtop_eval::text;
//! let p = Platform::default();
//! let greeting = DrvBuilder::new("greeting")
//!     .builder("/bin/sh")
//!     .args(["-c", "echo hello > $out"])
//!     .build(&p)?;
//! let shout = DrvBuilder::new("shout")
//!     .builder("/bin/sh")
//!     .arg("-c")
//!     // Naming `greeting` in the script makes it an input.
//!     .arg(text!("tr a-z A-Z < {} > $out", greeting))
//!     .build(&p)?;
//! assert!(shout.derivation().input_drvs.contains_key(greeting.drv_path()));
//! assert!(shout.out().path().name() == "shout");
//! # Ok::<(), bigtop_eval::Error>(())
//! ```

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use bigtop_core::derivation::{Derivation, DerivationOutput, DrvHash, OutputName};
use bigtop_core::{ContentAddress, StorePath};

use crate::source::Source;
use crate::Error;

/// Moved to [`platform`](crate::platform); re-exported here, where it
/// was first.
pub use crate::platform::Platform;

/// What documentation and queries read about a package.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Meta {
    /// One line on what it is.
    pub description: Option<String>,
    /// Where it lives.
    pub homepage: Option<String>,
    /// Its license, as an SPDX expression.
    pub license: Option<String>,
    /// The systems it builds on (empty: any).
    pub platforms: Vec<String>,
}

/// An evaluated derivation: its value, its `.drv` path, its outputs'
/// paths, and the derivations and sources it was made from. Cheap to
/// clone; equal when the `.drv` paths are.
#[derive(Clone)]
pub struct Drv(pub(crate) Arc<Node>);

pub(crate) struct Node {
    pub(crate) derivation: Derivation,
    pub(crate) drv_path: StorePath,
    pub(crate) hash: DrvHash,
    pub(crate) outputs: BTreeMap<OutputName, StorePath>,
    /// Each output's full path as text: what interpolating it writes, made
    /// once rather than at every use.
    pub(crate) full_paths: BTreeMap<OutputName, Box<str>>,
    /// The output a bare reference means: the first one declared.
    pub(crate) default_output: OutputName,
    pub(crate) inputs: Vec<Drv>,
    pub(crate) sources: Vec<Source>,
    pub(crate) platform: Platform,
    pub(crate) meta: Meta,
    pub(crate) origin: Origin,
}

/// How a derivation was made, for `override_inputs` and `override_attrs`.
///
/// Kept as trait objects: what made it (a package set, the package
/// builder) is a layer above this module, which only holds on to it.
#[derive(Clone, Default)]
pub(crate) struct Origin {
    /// By a package-set recipe, from named inputs.
    pub(crate) recipe: Option<Arc<dyn Remake>>,
    /// By the package builder: its attributes and stdenv, which only the
    /// package builder reads back.
    pub(crate) package: Option<Arc<dyn Any + Send + Sync>>,
}

/// A recipe's call that made a derivation, able to make it again with
/// some of the inputs it asked for replaced.
pub(crate) trait Remake: Send + Sync {
    /// The derivation made again with `replace`d inputs, in order (the
    /// first input the recipe did not ask for is an error).
    fn remake(&self, replace: Vec<(&str, Drv)>) -> Result<Drv, Error>;
}

impl PartialEq for Drv {
    fn eq(&self, other: &Self) -> bool {
        self.0.drv_path == other.0.drv_path
    }
}

impl Eq for Drv {}

impl std::hash::Hash for Drv {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.drv_path.hash(state)
    }
}

impl PartialOrd for Drv {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Drv {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.drv_path.cmp(&other.0.drv_path)
    }
}

impl fmt::Debug for Drv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Drv({})", self.0.drv_path)
    }
}

impl Drv {
    /// This derivation, remembering how it was made (a fresh value, or
    /// one shared already, which keeps its own origin).
    fn with(self, set: impl FnOnce(&mut Origin)) -> Drv {
        match Arc::try_unwrap(self.0) {
            Ok(mut node) => {
                set(&mut node.origin);
                Drv(Arc::new(node))
            }
            Err(shared) => Drv(shared),
        }
    }

    pub(crate) fn with_recipe(self, call: Arc<dyn Remake>) -> Drv {
        self.with(|o| o.recipe = Some(call))
    }

    pub(crate) fn with_package(self, made: Arc<dyn Any + Send + Sync>) -> Drv {
        self.with(|o| o.package = Some(made))
    }

    /// What the package builder kept of how it made this derivation.
    pub(crate) fn package_origin(&self) -> Option<&(dyn Any + Send + Sync)> {
        self.0.origin.package.as_deref()
    }

    /// The same package made by its recipe with some inputs replaced —
    /// nixpkgs' `override`. Only inputs the recipe asked for can be
    /// replaced; the result is not shared with the set.
    pub fn override_inputs<'a, I>(&self, replace: I) -> Result<Drv, Error>
    where
        I: IntoIterator<Item = (&'a str, Drv)>,
    {
        let Some(call) = &self.0.origin.recipe else {
            return Err(Error::NotOverridable {
                name: self.name().to_owned(),
                why: "it was not made by a package-set recipe",
            });
        };
        call.remake(replace.into_iter().collect())
    }

    /// The bit of `output` among this derivation's outputs (as a
    /// [`Context`] records it).
    fn output_bit(&self, output: &OutputName) -> u64 {
        self.0
            .outputs
            .keys()
            .position(|o| o == output)
            .map_or(0, |i| 1 << i)
    }

    /// The derivation's name.
    pub fn name(&self) -> &str {
        &self.0.derivation.name
    }

    /// The derivation, as the store will hold it.
    pub fn derivation(&self) -> &Derivation {
        &self.0.derivation
    }

    /// The store path of its `.drv` file.
    pub fn drv_path(&self) -> &StorePath {
        &self.0.drv_path
    }

    /// Its hash modulo, as dependents fold it in.
    pub fn hash_modulo(&self) -> &DrvHash {
        &self.0.hash
    }

    /// The platform it was evaluated for.
    pub fn platform(&self) -> &Platform {
        &self.0.platform
    }

    /// Its metadata.
    pub fn meta(&self) -> &Meta {
        &self.0.meta
    }

    /// The output a bare reference to it means (`out` unless the first
    /// declared output is another).
    pub fn out(&self) -> Output {
        Output {
            drv: self.clone(),
            name: self.0.default_output.clone(),
        }
    }

    /// The output `name`.
    pub fn output(&self, name: &str) -> Result<Output, Error> {
        match OutputName::new(name) {
            Ok(o) if self.0.outputs.contains_key(&o) => Ok(Output {
                drv: self.clone(),
                name: o,
            }),
            _ => Err(Error::NoSuchOutput {
                drv: self.name().to_owned(),
                output: name.to_owned(),
                have: self
                    .0
                    .outputs
                    .keys()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Every output, by name.
    pub fn outputs(&self) -> impl Iterator<Item = Output> + '_ {
        self.0.outputs.keys().map(|o| Output {
            drv: self.clone(),
            name: o.clone(),
        })
    }

    /// The derivations it names directly.
    pub fn input_derivations(&self) -> &[Drv] {
        &self.0.inputs
    }

    /// The sources it names directly.
    pub fn input_sources(&self) -> &[Source] {
        &self.0.sources
    }

    /// Every derivation needed to build it, itself included, inputs before
    /// the derivations that need them (a topological order, stable for a
    /// given graph).
    pub fn closure(&self) -> Vec<Drv> {
        closure_of(std::slice::from_ref(self))
    }
}

/// Every derivation needed to build `roots`, roots included, inputs first.
pub fn closure_of(roots: &[Drv]) -> Vec<Drv> {
    let mut order = Vec::new();
    let mut seen: BTreeSet<StorePath> = BTreeSet::new();
    // Iterative post-order: deep graphs must not overflow the stack.
    let mut stack: Vec<(Drv, bool)> = roots.iter().rev().map(|d| (d.clone(), false)).collect();
    while let Some((d, expanded)) = stack.pop() {
        if expanded {
            order.push(d);
            continue;
        }
        if !seen.insert(d.0.drv_path.clone()) {
            continue;
        }
        stack.push((d.clone(), true));
        for i in d.0.inputs.iter().rev() {
            if !seen.contains(&i.0.drv_path) {
                stack.push((i.clone(), false));
            }
        }
    }
    order
}

/// One output of a derivation: a typed handle, whose path is known.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Output {
    drv: Drv,
    name: OutputName,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Output({}^{})", self.drv.0.drv_path, self.name)
    }
}

/// Its full store path (`/bigtop/store/<digest>-<name>`), as a builder
/// or a machine sees it.
impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.drv.platform().store_dir.full(self.path()))
    }
}

/// The full store path of its default output: `println!("{hello}")`
/// prints where `hello` is (or will be) once built.
impl fmt::Display for Drv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.out().fmt(f)
    }
}

impl Output {
    /// The derivation that makes it.
    pub fn drv(&self) -> &Drv {
        &self.drv
    }

    /// Its name (`out`, `dev`, …).
    pub fn name(&self) -> &OutputName {
        &self.name
    }

    /// Its store path.
    pub fn path(&self) -> &StorePath {
        &self.drv.0.outputs[&self.name]
    }

    /// Its full path, as text with this output in its context.
    pub fn to_str(&self) -> Str {
        Str::from(self)
    }
}

/// The outputs and sources a string names.
///
/// Kept as short lists (a string names a handful of paths), outputs as a
/// bit per output of their derivation: adding one allocates nothing, and
/// every string of every derivation adds some.
#[derive(Clone, Default)]
pub struct Context {
    drvs: Vec<(Drv, u64)>,
    srcs: Vec<Source>,
}

impl PartialEq for Context {
    fn eq(&self, other: &Self) -> bool {
        fn sorted(c: &Context) -> (Vec<(&StorePath, u64)>, Vec<&StorePath>) {
            let mut d: Vec<(&StorePath, u64)> =
                c.drvs.iter().map(|(d, m)| (d.drv_path(), *m)).collect();
            d.sort();
            let mut s: Vec<&StorePath> = c.srcs.iter().map(Source::path).collect();
            s.sort();
            (d, s)
        }
        sorted(self) == sorted(other)
    }
}

impl Eq for Context {}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field(
                "outputs",
                &self
                    .outputs()
                    .map(|(d, o)| (d.drv_path(), o))
                    .collect::<Vec<_>>(),
            )
            .field(
                "sources",
                &self.srcs.iter().map(Source::path).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Context {
    /// Adds an output.
    pub fn add_output(&mut self, o: &Output) {
        self.add(&o.drv, &o.name);
    }

    fn add(&mut self, drv: &Drv, output: &OutputName) {
        let bit = drv.output_bit(output);
        self.add_bits(drv, bit);
    }

    fn add_bits(&mut self, drv: &Drv, bits: u64) {
        match self
            .drvs
            .iter_mut()
            .find(|(d, _)| Arc::ptr_eq(&d.0, &drv.0) || d.0.drv_path == drv.0.drv_path)
        {
            Some((_, m)) => *m |= bits,
            None => self.drvs.push((drv.clone(), bits)),
        }
    }

    /// Adds a source.
    pub fn add_source(&mut self, s: &Source) {
        if !self.srcs.iter().any(|x| x == s) {
            self.srcs.push(s.clone());
        }
    }

    /// Adds everything `other` names.
    pub fn extend(&mut self, other: &Context) {
        for (d, bits) in &other.drvs {
            self.add_bits(d, *bits);
        }
        for s in &other.srcs {
            self.add_source(s);
        }
    }

    /// Whether it names nothing.
    pub fn is_empty(&self) -> bool {
        self.drvs.is_empty() && self.srcs.is_empty()
    }

    /// The outputs named, by derivation (in the order first named).
    pub fn outputs(&self) -> impl Iterator<Item = (&Drv, Vec<&OutputName>)> {
        self.drvs.iter().map(|(d, bits)| {
            let names =
                d.0.outputs
                    .keys()
                    .enumerate()
                    .filter(|(i, _)| bits & (1 << i) != 0)
                    .map(|(_, o)| o)
                    .collect();
            (d, names)
        })
    }

    /// The sources named.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.srcs.iter()
    }
}

/// Text with context: the store paths it names are inputs of whatever
/// derivation it ends up in. See the [module docs](self).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Str {
    text: String,
    ctx: Context,
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ctx.is_empty() {
            fmt::Debug::fmt(&self.text, f)
        } else {
            write!(f, "{:?} with {:?}", self.text, self.ctx)
        }
    }
}

impl Str {
    /// The text. Whatever is made from it alone has lost the context: to
    /// keep it, use the `Str`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// What the text names.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Appends `more`, with its context.
    pub fn push(&mut self, more: impl Interpolate) {
        more.interpolate(&mut self.text, &mut self.ctx);
    }

    /// `parts` joined by `sep`, with all their contexts.
    pub fn join<I>(parts: I, sep: &str) -> Str
    where
        I: IntoIterator,
        I::Item: Interpolate,
    {
        let mut s = Str::default();
        for (i, p) in parts.into_iter().enumerate() {
            if i > 0 {
                s.text.push_str(sep);
            }
            s.push(p);
        }
        s
    }

    /// Text with a context gathered elsewhere (text made from other
    /// `Str`s by a transformation that keeps their paths, such as JSON
    /// escaping).
    pub(crate) fn from_parts(text: String, ctx: Context) -> Str {
        Str { text, ctx }
    }

    /// Splits into text and context.
    pub fn into_parts(self) -> (String, Context) {
        (self.text, self.ctx)
    }
}

/// A value that can be put into a [`Str`]: text, numbers, outputs,
/// derivations (their default output) and sources. Outputs and sources
/// add themselves to the context.
pub trait Interpolate {
    /// Appends the text to `out`; context goes into `ctx`.
    fn interpolate(&self, out: &mut String, ctx: &mut Context);
}

impl<T: Interpolate + ?Sized> Interpolate for &T {
    fn interpolate(&self, out: &mut String, ctx: &mut Context) {
        (**self).interpolate(out, ctx)
    }
}

impl Interpolate for str {
    fn interpolate(&self, out: &mut String, _: &mut Context) {
        out.push_str(self)
    }
}

impl Interpolate for String {
    fn interpolate(&self, out: &mut String, _: &mut Context) {
        out.push_str(self)
    }
}

impl Interpolate for Str {
    fn interpolate(&self, out: &mut String, ctx: &mut Context) {
        ctx.extend(&self.ctx);
        out.push_str(&self.text)
    }
}

impl Interpolate for Output {
    fn interpolate(&self, out: &mut String, ctx: &mut Context) {
        ctx.add_output(self);
        out.push_str(&self.drv.0.full_paths[&self.name])
    }
}

impl Interpolate for Drv {
    fn interpolate(&self, out: &mut String, ctx: &mut Context) {
        let name = &self.0.default_output;
        ctx.add(self, name);
        out.push_str(&self.0.full_paths[name])
    }
}

impl Interpolate for Source {
    fn interpolate(&self, out: &mut String, ctx: &mut Context) {
        ctx.add_source(self);
        out.push_str(&self.full_path())
    }
}

macro_rules! interpolate_display {
    ($($t:ty),*) => {$(
        impl Interpolate for $t {
            fn interpolate(&self, out: &mut String, _: &mut Context) {
                use std::fmt::Write as _;
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
interpolate_display!(bool, char, u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

macro_rules! str_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Str {
            fn from(v: $t) -> Str {
                let mut s = Str::default();
                s.push(v);
                s
            }
        }
    )*};
}
str_from!(&str, String, &String, &Str, Output, &Output, Drv, &Drv, Source, &Source);

/// One argument of [`text!`](crate::text), already interpolated.
#[doc(hidden)]
pub struct Piece(String);

impl fmt::Display for Piece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padding and alignment apply to the interpolated text.
        f.pad(&self.0)
    }
}

/// Collects the context of [`text!`](crate::text)'s arguments.
#[doc(hidden)]
#[derive(Default)]
pub struct Capture(Context);

impl Capture {
    #[doc(hidden)]
    pub fn arg(&mut self, v: impl Interpolate) -> Piece {
        let mut text = String::new();
        v.interpolate(&mut text, &mut self.0);
        Piece(text)
    }

    #[doc(hidden)]
    pub fn finish(self, text: String) -> Str {
        Str { text, ctx: self.0 }
    }
}

/// `format!` for [`Str`]: text whose arguments may be outputs,
/// derivations, sources or other `Str`s, whose context it keeps.
/// Arguments are given positionally or all by name, never captured
/// implicitly (`{zlib}` without `zlib = …` does not compile for an output:
/// outputs have no plain `Display`, which would lose the context).
///
/// ```
/// # use bigtop_eval::drv::{DrvBuilder, Platform};
/// use bigtop_eval::text;
/// # let p = Platform::default();
/// # let zlib = DrvBuilder::new("zlib").builder("/bin/sh").build(&p)?;
/// let flags = text!("-I{}/include -L{}/lib", zlib, zlib);
/// assert_eq!(flags.context().outputs().count(), 1);
/// let flags = text!("-I{inc}/include -L{lib}/lib", inc = zlib, lib = zlib);
/// assert_eq!(flags.context().outputs().count(), 1);
/// assert!(flags.as_str().ends_with("-zlib/lib"));
/// # Ok::<(), bigtop_eval::Error>(())
/// ```
#[macro_export]
macro_rules! text {
    ($fmt:literal $(,)?) => {
        $crate::drv::Capture::default().finish(::std::format!($fmt))
    };
    ($fmt:literal, $($name:ident = $val:expr),+ $(,)?) => {{
        let mut capture = $crate::drv::Capture::default();
        let text = ::std::format!($fmt, $($name = capture.arg(&$val)),+);
        capture.finish(text)
    }};
    ($fmt:literal, $($val:expr),+ $(,)?) => {{
        let mut capture = $crate::drv::Capture::default();
        let text = ::std::format!($fmt, $(capture.arg(&$val)),+);
        capture.finish(text)
    }};
}

/// A raw derivation under construction: builder, arguments, environment
/// and outputs; inputs follow from the context of its strings (and may be
/// added explicitly with [`input`](Self::input)).
#[derive(Clone, Debug)]
#[must_use = "a derivation is made by `build`"]
pub struct DrvBuilder {
    name: String,
    system: Option<String>,
    builder: Option<Str>,
    args: Vec<Str>,
    env: BTreeMap<String, Str>,
    outputs: Vec<String>,
    fixed: Option<ContentAddress>,
    extra: Context,
    meta: Meta,
}

impl DrvBuilder {
    /// A derivation named `name` (its outputs are named after it).
    pub fn new(name: impl Into<String>) -> Self {
        DrvBuilder {
            name: name.into(),
            system: None,
            builder: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            outputs: Vec::new(),
            fixed: None,
            extra: Context::default(),
            meta: Meta::default(),
        }
    }

    /// The program to run (a store path in a `Str`, `builtin:…`, or a
    /// host path the sandbox provides).
    pub fn builder(mut self, b: impl Into<Str>) -> Self {
        self.builder = Some(b.into());
        self
    }

    /// Appends an argument.
    pub fn arg(mut self, a: impl Into<Str>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Appends arguments.
    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Str>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (the last setting wins).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<Str>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The outputs, the first being the default. Default: `out` alone.
    pub fn outputs<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.outputs = names.into_iter().map(Into::into).collect();
        self
    }

    /// Makes it a fixed-output derivation (a fetcher): its one output is
    /// named by the expected content, and its builder may use the network.
    pub fn fixed_output(mut self, ca: ContentAddress) -> Self {
        self.fixed = Some(ca);
        self
    }

    /// Declares an input that no string names (rarely needed: naming it
    /// in the builder, an argument or a variable declares it).
    pub fn input(mut self, what: impl Interpolate) -> Self {
        what.interpolate(&mut String::new(), &mut self.extra);
        self
    }

    /// The system it builds on. Default: the platform's.
    pub fn system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// Metadata for documentation and queries.
    pub fn meta(mut self, meta: Meta) -> Self {
        self.meta = meta;
        self
    }

    /// Computes the derivation, its `.drv` path and its output paths.
    pub fn build(self, platform: &Platform) -> Result<Drv, Error> {
        let name = self.name;
        let Some(builder) = self.builder else {
            return Err(Error::NoBuilder { name });
        };
        let mut ctx = self.extra;
        let mut take = |s: Str| {
            let (text, c) = s.into_parts();
            ctx.extend(&c);
            text
        };
        let builder = take(builder);
        let system = self.system.unwrap_or_else(|| platform.system.clone());
        let mut d = Derivation::new(&name, &system, &builder);
        d.args = self.args.into_iter().map(&mut take).collect();
        d.env = self.env.into_iter().map(|(k, v)| (k, take(v))).collect();
        let bad = |e: bigtop_core::store_path::ParseError| Error::BadName {
            name: name.clone(),
            source: e,
        };
        let declared: Vec<OutputName> = if self.outputs.is_empty() {
            vec![OutputName::out()]
        } else {
            self.outputs
                .iter()
                .map(|o| OutputName::new(o))
                .collect::<Result<_, _>>()
                .map_err(bad)?
        };
        if declared.len() > 64 {
            // Contexts keep a bit per output.
            return Err(Error::Derivation {
                name: name.clone(),
                source: bigtop_core::derivation::Error::Invalid {
                    name: name.clone(),
                    reason: format!(
                        "it has {} outputs; at most 64 are supported",
                        declared.len()
                    ),
                },
            });
        }
        match self.fixed {
            Some(ca) => {
                d.outputs
                    .insert(OutputName::out(), DerivationOutput::Fixed(ca));
            }
            None => {
                for o in &declared {
                    d.outputs.insert(o.clone(), DerivationOutput::Deferred);
                }
            }
        }
        let default_output = if self.fixed.is_some() {
            OutputName::out()
        } else {
            declared[0].clone()
        };
        d.input_drvs = ctx
            .outputs()
            .map(|(drv, outs)| (drv.0.drv_path.clone(), outs.into_iter().cloned().collect()))
            .collect();
        d.input_srcs = ctx.srcs.iter().map(|s| s.path().clone()).collect();
        let dir = &platform.store_dir;
        let hash = d
            .fill_output_paths(dir, |p| {
                ctx.drvs
                    .iter()
                    .find(|(drv, _)| &drv.0.drv_path == p)
                    .map(|(drv, _)| drv.0.hash)
            })
            .map_err(|source| Error::Derivation {
                name: name.clone(),
                source,
            })?;
        let drv_path = d.drv_path(dir).map_err(|source| Error::Derivation {
            name: name.clone(),
            source,
        })?;
        let mut outputs = BTreeMap::new();
        let mut full_paths = BTreeMap::new();
        for o in d.outputs.keys() {
            // Every output is input-addressed (its inputs are) or fixed.
            let p = d.output_path(dir, o).ok_or_else(|| Error::Derivation {
                name: name.clone(),
                source: bigtop_core::derivation::Error::Invalid {
                    name: name.clone(),
                    reason: format!("the path of output `{o}` is not known before building"),
                },
            })?;
            full_paths.insert(o.clone(), dir.full(&p).into_boxed_str());
            outputs.insert(o.clone(), p);
        }
        Ok(Drv(Arc::new(Node {
            derivation: d,
            drv_path,
            hash,
            outputs,
            full_paths,
            default_output,
            inputs: {
                let mut inputs: Vec<Drv> = ctx.drvs.into_iter().map(|(d, _)| d).collect();
                inputs.sort();
                inputs
            },
            sources: {
                let mut sources = ctx.srcs;
                sources.sort_by(|a, b| a.path().cmp(b.path()));
                sources
            },
            platform: platform.clone(),
            meta: self.meta,
            origin: Origin::default(),
        })))
    }
}
