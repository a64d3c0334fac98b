//! Why an evaluation failed.

use std::path::PathBuf;

use bigtop_core::derivation;
use bigtop_core::store_path;
use thiserror::Error;

/// An evaluation error, naming the package, source or input it concerns.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A derivation is not well formed (a bad name, output, or input).
    #[error("derivation `{name}` is not valid")]
    Derivation {
        /// The derivation's name.
        name: String,
        /// Why.
        #[source]
        source: derivation::Error,
    },
    /// A name cannot be part of a store path.
    #[error("`{name}` cannot name a store path")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: store_path::ParseError,
    },
    /// An output was asked of a derivation that does not have it.
    #[error("`{drv}` has no output `{output}` (it has: {have})")]
    NoSuchOutput {
        /// The derivation's name.
        drv: String,
        /// The output asked for.
        output: String,
        /// The outputs it has.
        have: String,
    },
    /// A flag of a package holds a newline, which would split it.
    #[error("package `{package}`: {kind} flag `{}` holds a newline: each flag is passed as one argument, and flags are separated by newlines", flag.escape_debug())]
    BadFlag {
        /// The package.
        package: String,
        /// `configure` or `make`.
        kind: &'static str,
        /// The flag.
        flag: String,
    },
    /// A derivation has no builder.
    #[error("derivation `{name}` has no builder")]
    NoBuilder {
        /// The derivation's name.
        name: String,
    },
    /// A source could not be read.
    #[error("cannot read source `{}`", path.display())]
    Source {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A filter pattern does not parse.
    #[error("bad pattern `{pattern}` for source `{}`", root.display())]
    Pattern {
        /// The source's root.
        root: PathBuf,
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// A source holds something a store path cannot (a socket, a device,
    /// a name NAR forbids).
    #[error("source `{}` cannot be stored: {reason}", path.display())]
    Unstorable {
        /// The offending file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A package set has no package of this name.
    #[error("no package `{name}` in this package set{}", did_you_mean(.suggestions))]
    NoSuchPackage {
        /// The name asked for.
        name: String,
        /// Declared names close to it.
        suggestions: Vec<String>,
    },
    /// A package set has no value of this name.
    #[error("no value `{name}` in this package set (give it with `PackageSet::value`){}", did_you_mean(.suggestions))]
    NoSuchValue {
        /// The name asked for.
        name: String,
        /// Names of values close to it.
        suggestions: Vec<String>,
    },
    /// A package set's value is of another type than asked for.
    #[error("the value `{name}` of this package set is not a `{expected}`")]
    ValueType {
        /// Its name.
        name: String,
        /// The type asked for.
        expected: &'static str,
    },
    /// Packages that need each other.
    #[error("packages depend on each other: {}", .chain.join(" -> "))]
    Cycle {
        /// The packages, from the first to the one that needs it again.
        chain: Vec<String>,
    },
    /// A package failed to evaluate; `source` says why (shared by every
    /// package that needs it).
    #[error("in package `{name}`")]
    InPackage {
        /// The package.
        name: String,
        /// Why it failed.
        #[source]
        source: std::sync::Arc<Error>,
    },
    /// An expected hash does not parse.
    #[error("bad hash `{hash}` for `{url}`: {reason}")]
    BadHash {
        /// What is fetched.
        url: String,
        /// The hash given.
        hash: String,
        /// Why.
        reason: String,
    },
    /// A value could not be serialized (a JSON or TOML file).
    #[error("cannot write `{name}` as {format}: {reason}")]
    Serialize {
        /// The file's name.
        name: String,
        /// JSON or TOML.
        format: &'static str,
        /// Why.
        reason: String,
    },
    /// An override names an input the package does not take.
    #[error("`{package}` takes no input `{input}` (it takes: {takes})")]
    NoSuchInput {
        /// The package.
        package: String,
        /// The input named.
        input: String,
        /// The inputs it takes.
        takes: String,
    },
    /// `override`/`override_attrs` on a derivation that was not made by a
    /// recipe or a package builder.
    #[error("`{name}` cannot be overridden: {why}")]
    NotOverridable {
        /// The derivation.
        name: String,
        /// What it lacks.
        why: &'static str,
    },
    /// A recipe's code panicked (when evaluating a whole set, which
    /// reports it as that package's error).
    #[error("its recipe panicked: {message}")]
    RecipePanicked {
        /// The panic's message.
        message: String,
    },
}

/// `; did you mean …?` for suggestions, or nothing.
pub(crate) fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        [one] => format!("; did you mean `{one}`?"),
        many => format!(
            "; did you mean one of {}?",
            many.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `names` within reach of `wanted` (edit distance at most a third of
/// its length, at least 2), with their distances, best first.
fn within_reach<'a>(
    wanted: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<(usize, &'a str)> {
    let limit = (wanted.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = names
        .into_iter()
        .map(|n| (edit_distance(wanted, n), n))
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    scored
}

/// The closest of `names` to `wanted`, best first, at most three.
pub(crate) fn closest<'a>(wanted: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    within_reach(wanted, names)
        .into_iter()
        .take(3)
        .map(|(_, n)| n.to_owned())
        .collect()
}

/// Like [`closest`], keeping only the nearest (ties included): for
/// option paths, which share long prefixes, so that every sibling is
/// not within reach.
pub(crate) fn nearest<'a>(wanted: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let scored = within_reach(wanted, names);
    let best = scored.first().map_or(0, |(d, _)| *d);
    scored
        .into_iter()
        .take_while(|(d, _)| *d == best)
        .take(3)
        .map(|(_, n)| n.to_owned())
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_the_close_names() {
        assert_eq!(closest("zlibb", ["zlib", "openssl", "zstd"]), ["zlib"]);
        assert!(closest("nginx", ["zlib", "openssl"]).is_empty());
        let e = Error::NoSuchPackage {
            name: "zlibb".into(),
            suggestions: vec!["zlib".into()],
        };
        assert_eq!(
            e.to_string(),
            "no package `zlibb` in this package set; did you mean `zlib`?"
        );
    }
}
