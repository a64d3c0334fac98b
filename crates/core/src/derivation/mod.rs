//! Derivations: what to build, from what, and where the results go.
//!
//! A [`Derivation`] is the unit the planner schedules and the builder runs:
//! a builder program with arguments and environment, the outputs it must
//! produce, the outputs of other derivations it needs (`input_drvs`) and
//! plain store paths it needs (`input_srcs`).
//!
//! # The `.drv` format
//!
//! A derivation has exactly one text form. It is the `.drv` file in the
//! store, and (with the masking described below) the input of the hash that
//! names its outputs. It is line-oriented so that snapshot tests and
//! `diff` read well:
//!
//! ```text
//! bigtop-derivation-1
//! name "hello-2.12"
//! system "x86_64-linux"
//! builder "/bin/sh"
//! arg "-c"
//! arg "echo hello > $out"
//! output "dev" input-addressed "/bigtop/store/…-hello-2.12-dev"
//! output "out" input-addressed "/bigtop/store/…-hello-2.12"
//! input-drv "/bigtop/store/…-gcc-13.drv" "lib" "out"
//! input-src "/bigtop/store/…-builder.sh"
//! env "LANG" "C.UTF-8"
//! ```
//!
//! * The first line is the version, `bigtop-derivation-1`.
//! * Then, in this order: `name`, `system`, `builder`, one `arg` per
//!   argument (in argument order), one `output` per output (sorted by name),
//!   one `input-drv` per input derivation (sorted by store path, then the
//!   output names used, sorted), one `input-src` per input source (sorted),
//!   one `env` per variable (sorted by name). Store paths sort as their
//!   text does (as [`StorePath`]'s `Ord` does).
//! * Every line ends with `\n`; fields are separated by one space.
//! * Strings are quoted with `"`. Inside, `\\`, `\"`, `\n`, `\t` and `\r`
//!   are escaped, any other control character (U+0000–U+001F, U+007F) is
//!   written `\u{XX}` with two lower-case hex digits, and everything else
//!   is written as itself (UTF-8).
//! * An output is one of
//!   - `input-addressed "<path>"`: the path follows from the derivation,
//!   - `fixed "<content address>"`: a fetcher's output, named by the
//!     expected content alone (e.g. `"fixed:r:sha256:0mdq…"`),
//!   - `floating <flat|recursive|text> <algo>`: content-addressed, its path
//!     known only once built,
//!   - `deferred`: input-addressed, but some input is floating, so the path
//!     is known only once that input has been built.
//!
//! Parsing accepts only this canonical form: a text that parses prints back
//! to the same bytes, so one derivation has one `.drv` and one hash.
//!
//! # Hashing modulo
//!
//! Output paths of input-addressed derivations are computed from the
//! *masked* text ([`Derivation::hash_modulo`]): the same format, in which
//!
//! * every input-addressed or deferred output is written
//!   `input-addressed ""` (the path is what is being computed);
//! * every `input-drv` line names, instead of the `.drv` path, the input's
//!   own hash modulo in typed form (`"blake3:…"`), the lines sorted by it.
//!
//! A fixed-output derivation's hash modulo is `blake3("fixed:out:<content
//! address>:<output path>")`: it depends on the expected content only, so
//! changing a fetcher's URL or mirror list changes nothing downstream.
//! Folding inputs' hashes modulo (rather than their `.drv` paths) in this
//! way is what Nix calls "hash modulo": derivations that differ only in how
//! a fixed output is fetched give the same outputs.
//!
//! # Placeholders
//!
//! A builder learns its output paths from the environment (`$out`, `$dev`,
//! …), set by the builder when it runs. Where a string must name an output
//! before its path is known — always for floating outputs — it uses
//! [`placeholder`]`(output)`; for an output of a floating input,
//! [`upstream_placeholder`]. The builder replaces placeholders in `builder`,
//! `args` and `env` with the real paths ([`Derivation::substitute`]), and
//! [`Derivation::resolve`] turns a derivation with floating inputs into one
//! that names their built paths, so that an input rebuilt to identical
//! bytes leaves its dependents' paths unchanged (early cutoff).
//!
//! ```
//! use bigtop_core::derivation::{Derivation, DerivationOutput, OutputName};
//! use bigtop_core::StoreDir;
//! let dir = StoreDir::default();
//! let mut drv = Derivation::new("hello", "x86_64-linux", "/bin/sh");
//! drv.args = vec!["-c".into(), "echo hello > $out".into()];
//! drv.outputs.insert(OutputName::out(), DerivationOutput::Deferred);
//! // The closure gives the hash modulo of each input derivation (none here).
//! drv.fill_output_paths(&dir, |_input_drv| None)?;
//! let out = drv.output_path(&dir, &OutputName::out()).expect("input-addressed");
//! assert_eq!(out.name(), "hello");
//! let text = drv.to_text(&dir);
//! assert_eq!(Derivation::parse(&dir, &text)?, drv);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod builtins;
mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::base32;
use crate::content_address::{ContentAddress, ContentAddressMethod};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::{self, StoreDir, StorePath};

pub use text::ParseError;

/// The first line of every `.drv`.
pub const VERSION_LINE: &str = "bigtop-derivation-1";

/// The name of a derivation output (`out`, `dev`, `lib`, …).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OutputName(Box<str>);

impl OutputName {
    /// The default output, `out`.
    pub fn out() -> Self {
        OutputName("out".into())
    }

    /// An output name, checked: the store path name characters, not
    /// starting with `.`, at most 32 bytes.
    pub fn new(name: &str) -> Result<Self, store_path::ParseError> {
        if name.len() > 32 {
            return Err(store_path::ParseError::BadName {
                input: name.to_owned(),
                reason: "an output name is at most 32 characters",
            });
        }
        store_path::validate_name(name)?;
        Ok(OutputName(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OutputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OutputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl FromStr for OutputName {
    type Err = store_path::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutputName::new(s)
    }
}

impl TryFrom<String> for OutputName {
    type Error = store_path::ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        OutputName::new(&s)
    }
}

impl From<OutputName> for String {
    fn from(n: OutputName) -> String {
        n.0.into()
    }
}

/// How an output's path is determined.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DerivationOutput {
    /// From the derivation's hash modulo; the path is recorded.
    InputAddressed(StorePath),
    /// From the expected content alone (a fetcher).
    Fixed(ContentAddress),
    /// From the content, once built.
    Floating {
        /// What the content hash covers.
        method: ContentAddressMethod,
        /// The hash algorithm.
        algo: HashAlgo,
    },
    /// Input-addressed, but not computable yet: an input is floating, or
    /// [`Derivation::fill_output_paths`] has not run.
    Deferred,
}

/// A derivation. See the [module docs](self) for its text form.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Derivation {
    /// The name: outputs are named after it, the `.drv` is `<name>.drv`.
    pub name: String,
    /// The platform it builds on, e.g. `x86_64-linux`.
    pub system: String,
    /// The program to run.
    pub builder: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment (the builder adds the documented variables).
    pub env: BTreeMap<String, String>,
    /// The outputs, by name.
    pub outputs: BTreeMap<OutputName, DerivationOutput>,
    /// Other derivations' outputs needed: `.drv` path → outputs used.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<OutputName>>,
    /// Store paths needed as they are.
    pub input_srcs: BTreeSet<StorePath>,
}

/// The hash modulo of a derivation, as dependents fold it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DrvHash {
    /// Every output path is known from this hash.
    Known(Hash),
    /// Some output path depends on a floating output: known once built.
    Deferred(Hash),
}

impl DrvHash {
    /// The hash, deferred or not.
    pub fn hash(&self) -> &Hash {
        match self {
            DrvHash::Known(h) | DrvHash::Deferred(h) => h,
        }
    }
}

/// Why a derivation is not well formed, or its paths cannot be computed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The name does not make a valid store path name.
    #[error("derivation `{name}` has an invalid name")]
    BadName {
        /// The name.
        name: String,
        /// The rule it breaks.
        #[source]
        source: store_path::ParseError,
    },
    /// A structural rule is broken.
    #[error("derivation `{name}` is invalid: {reason}")]
    Invalid {
        /// The derivation's name.
        name: String,
        /// The rule, with the offending value.
        reason: String,
    },
    /// The hash of an input derivation could not be found.
    #[error("derivation `{name}` needs `{input}`, whose hash is not known")]
    UnknownInput {
        /// The derivation's name.
        name: String,
        /// The input `.drv`.
        input: StorePath,
    },
}

/// An error and its sources on one line, for errors that carry text.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The string that stands for output `output` of the derivation being
/// built, replaced by its real path when the builder runs.
pub fn placeholder(output: &OutputName) -> String {
    let h = blake3::hash(format!("bigtop-output:{output}").as_bytes());
    format!("/{}", base32::encode(h.as_bytes()))
}

/// The string that stands for output `output` of the floating input
/// derivation `drv`, replaced when the dependent is [resolved](Derivation::resolve).
pub fn upstream_placeholder(drv: &StorePath, output: &OutputName) -> String {
    let h = blake3::hash(format!("bigtop-upstream:{drv}:{output}").as_bytes());
    format!("/{}", base32::encode(h.as_bytes()))
}

impl Derivation {
    /// A derivation with no arguments, environment, outputs or inputs.
    pub fn new(name: &str, system: &str, builder: &str) -> Self {
        Derivation {
            name: name.to_owned(),
            system: system.to_owned(),
            builder: builder.to_owned(),
            args: Vec::new(),
            env: BTreeMap::new(),
            outputs: BTreeMap::new(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::new(),
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::Invalid {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Checks the structural rules: a valid name, at least one output,
    /// a fixed output only alone and named `out`, floating outputs not
    /// mixed with input-addressed ones, no NUL in any string, environment
    /// names non-empty and free of `=`.
    pub fn validate(&self) -> Result<(), Error> {
        store_path::validate_name(&format!("{}.drv", self.name)).map_err(|source| {
            Error::BadName {
                name: self.name.clone(),
                source,
            }
        })?;
        if self.outputs.is_empty() {
            return Err(self.invalid("it has no outputs"));
        }
        let fixed = self
            .outputs
            .values()
            .filter(|o| matches!(o, DerivationOutput::Fixed(_)))
            .count();
        if fixed > 0 && (self.outputs.len() != 1 || !self.outputs.contains_key(&OutputName::out()))
        {
            return Err(self.invalid("a fixed-output derivation has exactly one output, `out`"));
        }
        let floating = self
            .outputs
            .values()
            .filter(|o| matches!(o, DerivationOutput::Floating { .. }))
            .count();
        if floating > 0 && floating != self.outputs.len() {
            return Err(self.invalid("floating outputs cannot be mixed with other kinds"));
        }
        if self.builder.is_empty() {
            return Err(self.invalid("the builder is empty"));
        }
        let strings = [&self.system, &self.builder]
            .into_iter()
            .chain(&self.args)
            .chain(self.env.keys())
            .chain(self.env.values());
        for s in strings {
            if s.contains('\0') {
                return Err(self.invalid(format!("string `{}` contains NUL", s.escape_debug())));
            }
        }
        if let Some(k) = self.env.keys().find(|k| k.is_empty() || k.contains('=')) {
            return Err(self.invalid(format!(
                "environment variable name `{k}` is empty or contains `=`"
            )));
        }
        if let Some((drv, _)) = self.input_drvs.iter().find(|(_, outs)| outs.is_empty()) {
            return Err(self.invalid(format!(
                "input derivation `{drv}` is listed with no outputs"
            )));
        }
        if let Some(drv) = self.input_drvs.keys().find(|d| !d.is_derivation()) {
            return Err(self.invalid(format!("input derivation `{drv}` is not a `.drv`")));
        }
        Ok(())
    }

    /// Whether this is a fixed-output derivation (a fetcher).
    pub fn is_fixed_output(&self) -> bool {
        matches!(
            self.outputs.values().next(),
            Some(DerivationOutput::Fixed(_))
        ) && self.outputs.len() == 1
    }

    /// The `.drv` text. See the [module docs](self).
    pub fn to_text(&self, dir: &StoreDir) -> String {
        text::print(self, dir, None)
    }

    /// Parses a `.drv` text, accepting only the canonical form.
    pub fn parse(dir: &StoreDir, text: &str) -> Result<Self, ParseError> {
        text::parse(dir, text)
    }

    /// The store path of the `.drv` file: a text path over its bytes,
    /// referring to every input.
    pub fn drv_path(&self, dir: &StoreDir) -> Result<StorePath, Error> {
        let content = text::hash_of(HashAlgo::Blake3, self, dir, None);
        let refs = self.input_drvs.keys().chain(&self.input_srcs);
        dir.make_text_path(&format!("{}.drv", self.name), &content, refs)
            .map_err(|source| Error::BadName {
                name: self.name.clone(),
                source,
            })
    }

    /// The hash modulo (see the [module docs](self)). `input` gives the
    /// hash modulo of each input derivation; the evaluator memoizes these.
    pub fn hash_modulo(
        &self,
        dir: &StoreDir,
        mut input: impl FnMut(&StorePath) -> Option<DrvHash>,
    ) -> Result<DrvHash, Error> {
        if let (true, Some(DerivationOutput::Fixed(ca))) =
            (self.is_fixed_output(), self.outputs.values().next())
        {
            let path = self.fixed_path(dir, ca)?;
            let h = Hash::digest(
                HashAlgo::Blake3,
                format!("fixed:out:{ca}:{}", dir.display(&path)).as_bytes(),
            );
            return Ok(DrvHash::Known(h));
        }
        let mut deferred = self
            .outputs
            .values()
            .any(|o| matches!(o, DerivationOutput::Floating { .. }));
        let mut inputs: Vec<text::MaskedInput<'_>> = Vec::with_capacity(self.input_drvs.len());
        for (drv, outs) in &self.input_drvs {
            let h = input(drv).ok_or_else(|| Error::UnknownInput {
                name: self.name.clone(),
                input: drv.clone(),
            })?;
            deferred |= matches!(h, DrvHash::Deferred(_));
            inputs.push(text::MaskedInput {
                hash: text::HashText::of(h.hash()),
                outputs: std::borrow::Cow::Borrowed(outs),
            });
        }
        inputs.sort_unstable_by_key(|a| a.hash);
        // Two input derivations can share a hash modulo (fetchers of the
        // same content); their output sets merge, as their paths coincide.
        inputs.dedup_by(|later, kept| {
            let same = later.hash == kept.hash;
            if same {
                let more = std::mem::take(later.outputs.to_mut());
                kept.outputs.to_mut().extend(more);
            }
            same
        });
        let h = text::hash_of(HashAlgo::Blake3, self, dir, Some(&inputs));
        Ok(if deferred {
            DrvHash::Deferred(h)
        } else {
            DrvHash::Known(h)
        })
    }

    fn fixed_path(&self, dir: &StoreDir, ca: &ContentAddress) -> Result<StorePath, Error> {
        dir.make_fixed_output_path(&self.name, ca)
            .map_err(|source| Error::BadName {
                name: self.name.clone(),
                source,
            })
    }

    /// Computes the path of every input-addressed output (those given as
    /// [`DerivationOutput::Deferred`] or with a stale path) and returns the
    /// hash modulo for dependents. Outputs stay deferred when an input is
    /// floating.
    pub fn fill_output_paths(
        &mut self,
        dir: &StoreDir,
        input: impl FnMut(&StorePath) -> Option<DrvHash>,
    ) -> Result<DrvHash, Error> {
        self.validate()?;
        let h = self.hash_modulo(dir, input)?;
        let name = self.name.clone();
        for (out, kind) in self.outputs.iter_mut() {
            if matches!(
                kind,
                DerivationOutput::InputAddressed(_) | DerivationOutput::Deferred
            ) {
                *kind = match h {
                    DrvHash::Known(h) => DerivationOutput::InputAddressed(
                        dir.make_output_path(&h, out.as_str(), &name)
                            .map_err(|source| Error::BadName {
                                name: name.clone(),
                                source,
                            })?,
                    ),
                    DrvHash::Deferred(_) => DerivationOutput::Deferred,
                };
            }
        }
        Ok(h)
    }

    /// Checks that every recorded input-addressed path is the one the
    /// derivation computes (a `.drv` read from elsewhere cannot claim
    /// another derivation's outputs).
    pub fn verify_output_paths(
        &self,
        dir: &StoreDir,
        input: impl FnMut(&StorePath) -> Option<DrvHash>,
    ) -> Result<DrvHash, Error> {
        let mut copy = self.clone();
        let h = copy.fill_output_paths(dir, input)?;
        if let Some((out, _)) = self
            .outputs
            .iter()
            .find(|(out, kind)| copy.outputs.get(*out) != Some(kind))
        {
            return Err(self.invalid(format!(
                "the recorded path of output `{out}` is not the one its inputs determine"
            )));
        }
        Ok(h)
    }

    /// The path of an output, where known before building.
    pub fn output_path(&self, dir: &StoreDir, output: &OutputName) -> Option<StorePath> {
        match self.outputs.get(output)? {
            DerivationOutput::InputAddressed(p) => Some(p.clone()),
            DerivationOutput::Fixed(ca) => self.fixed_path(dir, ca).ok(),
            DerivationOutput::Floating { .. } | DerivationOutput::Deferred => None,
        }
    }

    /// Replaces every placeholder in `builder`, `args` and `env` (own
    /// outputs and upstream outputs alike) by the path `paths` gives for it.
    /// The builder calls this with the real output paths before running.
    pub fn substitute(&mut self, replacements: &BTreeMap<String, String>) {
        if replacements.is_empty() {
            return;
        }
        let rewrite = |s: &mut String| {
            for (from, to) in replacements {
                if s.contains(from.as_str()) {
                    *s = s.replace(from.as_str(), to);
                }
            }
        };
        rewrite(&mut self.builder);
        self.args.iter_mut().for_each(rewrite);
        self.env.values_mut().for_each(rewrite);
    }

    /// For a derivation with deferred or floating outputs, the derivation
    /// with its input derivations replaced by their built outputs: `realised(drv, output)` gives each output's path. Upstream
    /// placeholders become those paths, the outputs become input sources,
    /// and deferred outputs get paths from the resolved derivation. `None`
    /// if some input output is not realised yet. Any other derivation is
    /// returned unchanged: its paths are already final.
    pub fn resolve(
        &self,
        dir: &StoreDir,
        mut realised: impl FnMut(&StorePath, &OutputName) -> Option<StorePath>,
    ) -> Result<Option<Derivation>, Error> {
        // Only derivations downstream of floating outputs are resolved: an
        // input-addressed derivation is built as it is, at the paths it has.
        if !self.outputs.values().any(|o| {
            matches!(
                o,
                DerivationOutput::Deferred | DerivationOutput::Floating { .. }
            )
        }) {
            return Ok(Some(self.clone()));
        }
        let mut resolved = self.clone();
        resolved.input_drvs.clear();
        let mut replacements = BTreeMap::new();
        for (drv, outs) in &self.input_drvs {
            for out in outs {
                let Some(path) = realised(drv, out) else {
                    return Ok(None);
                };
                replacements.insert(upstream_placeholder(drv, out), dir.full(&path));
                resolved.input_srcs.insert(path);
            }
        }
        resolved.substitute(&replacements);
        // A resolved derivation has no input derivations to look up.
        resolved.fill_output_paths(dir, |_| None)?;
        Ok(Some(resolved))
    }
}

#[cfg(test)]
mod tests;
