//! What can go wrong evaluating modules: each error names the option and
//! every definition involved, with where it came from.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use super::value::Value;

/// Where a declaration or definition came from: a Rust call site, or a
/// key of a data file. Small and cheap to clone: every definition keeps
/// one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Loc {
    /// A call in Rust code (taken with `#[track_caller]`).
    Code(&'static std::panic::Location<'static>),
    /// A key of a TOML or JSON document.
    Data(Arc<DataKey>),
}

/// A key of a data document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataKey {
    /// The document's name (usually its path).
    pub file: Arc<str>,
    /// The dotted key.
    pub key: String,
}

impl Loc {
    /// The caller's location.
    #[track_caller]
    pub fn caller() -> Loc {
        Loc::Code(std::panic::Location::caller())
    }

    /// The key `key` of the document `file`.
    pub fn data(file: Arc<str>, key: String) -> Loc {
        Loc::Data(Arc::new(DataKey { file, key }))
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Code(l) => write!(f, "{}:{}:{}", l.file(), l.line(), l.column()),
            Loc::Data(d) => write!(f, "{}, key `{}`", d.file, d.key),
        }
    }
}

/// One definition as an error shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownDefinition {
    /// The module that made it.
    pub module: Arc<str>,
    /// Where.
    pub loc: Loc,
    /// Its priority.
    pub priority: u32,
    /// Its value, when it could be computed.
    pub value: Option<Value>,
}

impl fmt::Display for ShownDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{v}")?,
            None => f.write_str("(not computed)")?,
        }
        write!(
            f,
            " at priority {} in module `{}` ({})",
            self.priority, self.module, self.loc
        )
    }
}

fn list(defs: &[ShownDefinition]) -> String {
    defs.iter().map(|d| format!("\n  - {d}")).collect()
}

/// The names under `parent` nearest to `parent.wanted`, as full paths.
pub(crate) fn nearest_under<'a>(
    parent: &str,
    wanted: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    crate::error::nearest(wanted, names)
        .into_iter()
        .map(|n| format!("{parent}.{n}"))
        .collect()
}

/// Why a configuration cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// A definition names an option nobody declared.
    #[error("the option `{path}` defined in module `{module}` ({loc}) does not exist{}", crate::error::did_you_mean(.suggestions))]
    Unknown {
        /// The path defined.
        path: String,
        /// The defining module.
        module: Arc<str>,
        /// Where.
        loc: Loc,
        /// The closest declared options.
        suggestions: Vec<String>,
    },
    /// An option read by path that nobody declared.
    #[error("the option `{path}` is read but does not exist{}", crate::error::did_you_mean(.suggestions))]
    NoSuchOption {
        /// The path read.
        path: String,
        /// The closest declared options.
        suggestions: Vec<String>,
    },
    /// Definitions at the winning priority disagree.
    #[error("the option `{option}` has conflicting definitions at priority {priority}:{}\nRaise the priority of the one that should win (`force(…)` or `priority(n, …)`; lower numbers win), or make them equal", list(.defs))]
    Conflict {
        /// The option.
        option: String,
        /// The winning priority.
        priority: u32,
        /// Every definition at that priority.
        defs: Vec<ShownDefinition>,
    },
    /// A custom type's merge refused the definitions.
    #[error("the option `{option}` cannot merge its definitions ({reason}):{}", list(.defs))]
    Merge {
        /// The option.
        option: String,
        /// What the type said.
        reason: String,
        /// The definitions.
        defs: Vec<ShownDefinition>,
    },
    /// An option of a unique type is defined more than once.
    #[error("the option `{option}` may be defined only once, but has {} definitions:{}", .defs.len(), list(.defs))]
    NotUnique {
        /// The option.
        option: String,
        /// Its definitions.
        defs: Vec<ShownDefinition>,
    },
    /// A read-only option defined more than once.
    #[error("the option `{option}` is read-only, but has {} definitions:{}\nDefine it in one module only", .defs.len(), list(.defs))]
    ReadOnly {
        /// The option.
        option: String,
        /// Its definitions.
        defs: Vec<ShownDefinition>,
    },
    /// The option's `apply` function refused the merged value.
    #[error("the option `{option}` was merged, but its `apply` function (declared at {declared}) refused the value: {reason}")]
    Apply {
        /// The option.
        option: String,
        /// Where it was declared.
        declared: Loc,
        /// Why.
        reason: String,
    },
    /// A value that is not of the option's type.
    #[error("the option `{option}` is {expected}, but module `{module}` ({loc}) defines it as {value}: {reason}")]
    Type {
        /// The option (with the key or index inside it).
        option: String,
        /// The type, described.
        expected: String,
        /// The value given.
        value: Box<Value>,
        /// Why it does not fit.
        reason: String,
        /// The defining module.
        module: Arc<str>,
        /// Where.
        loc: Loc,
    },
    /// An option read with no definition and no default.
    #[error("the option `{option}` is used but has no value: define it in a module (declared at {declared})")]
    NoValue {
        /// The option.
        option: String,
        /// Where it was declared.
        declared: Loc,
    },
    /// Options that need each other's values.
    #[error("the options form a cycle: {}", .chain.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// The options, each needing the next; the first and last are the
        /// same.
        chain: Vec<String>,
    },
    /// A removed option is still defined.
    #[error(
        "the option `{option}` defined in module `{module}` ({loc}) was removed: {instructions}"
    )]
    Removed {
        /// The option.
        option: String,
        /// The defining module.
        module: Arc<str>,
        /// Where.
        loc: Loc,
        /// What the removing module says to do instead.
        instructions: String,
    },
    /// A definition that cannot be placed.
    #[error("the definition of `{path}` in module `{module}` ({loc}) {reason}")]
    BadDefinition {
        /// The path defined.
        path: String,
        /// The defining module.
        module: Arc<str>,
        /// Where.
        loc: Loc,
        /// What is wrong.
        reason: String,
    },
    /// Two declarations of one option that do not merge.
    #[error("the option `{option}` is declared twice, and the declarations do not merge ({reason}): at {first} and at {second}")]
    Declaration {
        /// The option.
        option: String,
        /// Why they do not merge.
        reason: String,
        /// The first declaration.
        first: Loc,
        /// The second.
        second: Loc,
    },
    /// An option's value read as a Rust type it does not convert to.
    #[error("the option `{option}` cannot be read as `{rust_type}`: {reason}")]
    Convert {
        /// The option.
        option: String,
        /// The Rust type asked for.
        rust_type: &'static str,
        /// Why.
        reason: String,
    },
    /// A module's assertion failed.
    #[error("assertion of module `{module}` ({loc}) failed: {message}")]
    Assertion {
        /// The module.
        module: Arc<str>,
        /// Where the assertion is.
        loc: Loc,
        /// Its message.
        message: String,
    },
    /// A data document that cannot be read.
    #[error("data document `{file}`: {reason}")]
    Data {
        /// Its name.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The code of a definition failed on its own (a package it asked
    /// for does not exist, a check of its own): where it was.
    #[error("the definition of `{option}` in module `{module}` ({loc}) failed: {cause}")]
    InDefinition {
        /// The option (or key inside one) it defines.
        option: String,
        /// The defining module.
        module: Arc<str>,
        /// Where.
        loc: Loc,
        /// What its code said (part of this error's message, so not
        /// given again as its source).
        cause: Box<Error>,
    },
    /// An error from a definition's own code.
    #[error("{message}")]
    Other {
        /// What the definition said.
        message: String,
    },
    /// An evaluation error met by a definition's code (a package it read
    /// that does not evaluate): its own message, and its causes as the
    /// source chain, for a renderer to print.
    #[error(transparent)]
    Eval(EvalError),
}

/// An evaluation error ([`crate::Error`]) inside a module error: shared,
/// so that module errors stay cheap to clone, and compared by what it
/// says, causes included, since evaluation errors have no `PartialEq`
/// (they hold I/O errors).
#[derive(Debug, Clone)]
pub struct EvalError(pub Arc<crate::Error>);

impl EvalError {
    /// The messages of the error and of each of its causes.
    fn chain(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::successors(Some(&*self.0 as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .map(|e| e.to_string())
    }
}

impl PartialEq for EvalError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.chain().eq(other.chain())
    }
}

impl Eq for EvalError {}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The evaluation error's own causes: its message is this error's.
impl std::error::Error for EvalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl Error {
    /// An error with a message, for a definition's own checks.
    pub fn msg(message: impl Into<String>) -> Error {
        Error::Other {
            message: message.into(),
        }
    }
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Error {
        Error::Eval(EvalError(Arc::new(e)))
    }
}

/// Everything wrong with a configuration, found together, and the
/// warnings its modules gave.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct Errors {
    /// The machine whose configuration this is, when a fleet evaluated
    /// it.
    pub machine: Option<String>,
    /// The errors, in the order found.
    pub errors: Vec<Error>,
    /// The warnings.
    pub warnings: Vec<Warning>,
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        if let Some(m) = &self.machine {
            write!(f, "machine `{m}`: ")?;
        }
        write!(f, "{n} error{}:", if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            write!(f, "\n- {}", e.to_string().replace('\n', "\n  "))?;
        }
        for w in &self.warnings {
            write!(f, "\n- warning: {w}")?;
        }
        Ok(())
    }
}

/// A warning of a module (or of an option migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The module that gave it.
    pub module: Arc<str>,
    /// Where.
    pub loc: Loc,
    /// What it says.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (module `{}`, {})",
            self.message, self.module, self.loc
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a package error read by a definition was flattened to
    /// its first line, and what made the package fail was lost.
    #[test]
    fn an_evaluation_error_keeps_its_causes() {
        let cause = crate::Error::NoSuchPackage {
            name: "opensll".into(),
            suggestions: vec!["openssl".into()],
        };
        let e = Error::from(crate::Error::InPackage {
            name: "app".into(),
            source: Arc::new(cause),
        });
        assert_eq!(e.to_string(), "in package `app`");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some("no package `opensll` in this package set; did you mean `openssl`?")
        );
        assert_eq!(e.clone(), e);
        let other = Error::from(crate::Error::InPackage {
            name: "app".into(),
            source: Arc::new(crate::Error::Cycle {
                chain: vec!["app".into(), "app".into()],
            }),
        });
        assert_ne!(e, other);
    }
}
