//! The canonical `.drv` text: printer and strict parser.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use thiserror::Error;

use super::{Derivation, DerivationOutput, OutputName, VERSION_LINE};
use crate::content_address::{ContentAddress, ContentAddressMethod};
use crate::hash::HashAlgo;
use crate::store_path::{StoreDir, StorePath};

/// Why a `.drv` text was rejected. Line numbers count from 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The first line is not [`VERSION_LINE`].
    #[error("derivation text does not start with `{VERSION_LINE}` (found `{found}`)")]
    BadVersion {
        /// The first line.
        found: String,
    },
    /// A line that does not fit the format.
    #[error("derivation text, line {line}: {reason} in `{text}`")]
    BadLine {
        /// The line number.
        line: usize,
        /// What is wrong.
        reason: String,
        /// The line.
        text: String,
    },
    /// A required field is missing.
    #[error("derivation text has no `{field}` line")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// The text is well formed but describes an invalid derivation.
    #[error("derivation text describes an invalid derivation: {reason}")]
    Invalid {
        /// The rule broken, as [`Derivation::validate`] words it.
        reason: String,
    },
    /// Everything parsed, but the text is not in the canonical form
    /// (order, escaping, spacing), so it would hash differently from the
    /// same derivation printed by bigtop.
    #[error("derivation text is not canonical: line {line} should be `{expected}`")]
    NotCanonical {
        /// The first line that differs.
        line: usize,
        /// What bigtop prints there.
        expected: String,
    },
}

fn quote(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    escape(out, s);
    out.push('"');
}

fn escape(out: &mut String, s: &str) {
    // Runs of plain text are copied whole: every escaped character is
    // ASCII, so splitting at its byte keeps UTF-8 intact. Eight bytes are
    // checked at a time (environment values are most of a derivation's
    // text, and most of them need no escaping).
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // May report a byte that is not special (then each byte is looked
    // at), never miss one.
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let maybe_special = |x: u64| {
        (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
            | zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | zero(x ^ (ONES * 0x7f))
    };
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if maybe_special(x) == 0 {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\t' => "\\t",
            b'\r' => "\\r",
            b if b < 0x20 || b == 0x7f => "",
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{{{b:02x}}}");
        } else {
            out.push_str(escaped);
        }
        i += 1;
        start = i;
    }
    out.push_str(&s[start..]);
}

/// A full store path, quoted, without building it as a string first (a
/// base name never needs escaping: its characters are validated).
fn quote_path(out: &mut String, dir: &StoreDir, p: &StorePath) {
    out.push('"');
    escape(out, dir.as_str());
    let _ = write!(out, "/{p}\"");
}

fn method_word(m: ContentAddressMethod) -> &'static str {
    match m {
        ContentAddressMethod::Flat => "flat",
        ContentAddressMethod::Recursive => "recursive",
        ContentAddressMethod::Text => "text",
    }
}

/// An input derivation as the masked text names it: by its hash modulo
/// (in its text form, which orders the inputs), with the outputs used.
pub(super) struct MaskedInput<'a> {
    pub(super) hash: HashText,
    pub(super) outputs: std::borrow::Cow<'a, BTreeSet<OutputName>>,
}

/// A hash's text form kept on the stack: made for every input of every
/// derivation hashed, so not worth an allocation each.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct HashText {
    len: u8,
    // `algo:` and the base-32 digest: `sha512:` and 103 characters at most.
    buf: [u8; 112],
}

impl HashText {
    pub(super) fn of(h: &crate::hash::Hash) -> Self {
        struct Fill<'a>(&'a mut HashText);
        impl std::fmt::Write for Fill<'_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                let at = usize::from(self.0.len);
                let end = at + s.len();
                let dst = self.0.buf.get_mut(at..end).ok_or(std::fmt::Error)?;
                dst.copy_from_slice(s.as_bytes());
                self.0.len = end as u8;
                Ok(())
            }
        }
        let mut t = HashText {
            len: 0,
            buf: [0; 112],
        };
        write!(Fill(&mut t), "{h}").expect("a hash's text fits in 112 bytes");
        t
    }

    pub(super) fn as_str(&self) -> &str {
        // Only ever filled from `str`s.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// Prints the text; with `masked_inputs` (sorted by hash text, each hash
/// once), the masked form used for the hash modulo.
pub(super) fn print(
    drv: &Derivation,
    dir: &StoreDir,
    masked_inputs: Option<&[MaskedInput<'_>]>,
) -> String {
    let mut o = String::with_capacity(256);
    print_into(&mut o, drv, dir, masked_inputs);
    o
}

/// The hash of the text [`print`] gives, printed into a buffer this
/// thread keeps (evaluation hashes two texts per derivation).
pub(super) fn hash_of(
    algo: HashAlgo,
    drv: &Derivation,
    dir: &StoreDir,
    masked_inputs: Option<&[MaskedInput<'_>]>,
) -> crate::hash::Hash {
    thread_local! {
        static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        print_into(&mut b, drv, dir, masked_inputs);
        let h = crate::hash::Hash::digest(algo, b.as_bytes());
        // A huge derivation's buffer is not kept.
        if b.capacity() > 1 << 20 {
            *b = String::new();
        }
        h
    })
}

fn print_into(
    o: &mut String,
    drv: &Derivation,
    dir: &StoreDir,
    masked_inputs: Option<&[MaskedInput<'_>]>,
) {
    o.push_str(VERSION_LINE);
    o.push('\n');
    let field = |o: &mut String, key: &str, value: &str| {
        o.push_str(key);
        o.push(' ');
        quote(o, value);
        o.push('\n');
    };
    field(o, "name", &drv.name);
    field(o, "system", &drv.system);
    field(o, "builder", &drv.builder);
    for a in &drv.args {
        field(o, "arg", a);
    }
    for (name, kind) in &drv.outputs {
        o.push_str("output ");
        quote(o, name.as_str());
        match (kind, masked_inputs.is_some()) {
            (DerivationOutput::InputAddressed(_) | DerivationOutput::Deferred, true) => {
                o.push_str(" input-addressed \"\"")
            }
            (DerivationOutput::InputAddressed(p), false) => {
                o.push_str(" input-addressed ");
                quote_path(o, dir, p);
            }
            (DerivationOutput::Deferred, false) => o.push_str(" deferred"),
            (DerivationOutput::Fixed(ca), _) => {
                o.push_str(" fixed ");
                quote(o, &ca.to_string());
            }
            (DerivationOutput::Floating { method, algo }, _) => {
                let _ = write!(o, " floating {} {algo}", method_word(*method));
            }
        }
        o.push('\n');
    }
    let input = |o: &mut String, key: &str, outs: &BTreeSet<OutputName>| {
        o.push_str("input-drv ");
        quote(o, key);
        for out in outs {
            o.push(' ');
            quote(o, out.as_str());
        }
        o.push('\n');
    };
    match masked_inputs {
        Some(masked) => masked
            .iter()
            .for_each(|m| input(o, m.hash.as_str(), &m.outputs)),
        None => drv.input_drvs.iter().for_each(|(p, outs)| {
            o.push_str("input-drv ");
            quote_path(o, dir, p);
            for out in outs {
                o.push(' ');
                quote(o, out.as_str());
            }
            o.push('\n');
        }),
    }
    for p in &drv.input_srcs {
        o.push_str("input-src ");
        quote_path(o, dir, p);
        o.push('\n');
    }
    for (k, v) in &drv.env {
        o.push_str("env ");
        quote(o, k);
        o.push(' ');
        quote(o, v);
        o.push('\n');
    }
}

/// One line split into its keyword and fields.
struct Line<'a> {
    no: usize,
    text: &'a str,
}

enum Token {
    Quoted(String),
    Word(String),
}

impl Line<'_> {
    fn err(&self, reason: impl Into<String>) -> ParseError {
        ParseError::BadLine {
            line: self.no,
            reason: reason.into(),
            text: self.text.chars().take(200).collect(),
        }
    }

    fn tokens(&self) -> Result<(String, Vec<Token>), ParseError> {
        let mut chars = self.text.chars().peekable();
        let mut tokens = Vec::new();
        while chars.peek().is_some() {
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(self.err("unterminated string")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('"') => s.push('"'),
                            Some('\\') => s.push('\\'),
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some('u') => {
                                let esc: String = chars.by_ref().take(4).collect();
                                let hex = esc
                                    .strip_prefix('{')
                                    .and_then(|e| e.strip_suffix('}'))
                                    .filter(|h| h.len() == 2)
                                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                                    .and_then(char::from_u32)
                                    .ok_or_else(|| self.err(format!("bad escape `\\u{esc}`")))?;
                                s.push(hex);
                            }
                            other => {
                                return Err(self.err(format!(
                                    "unknown escape `\\{}`",
                                    other.map(String::from).unwrap_or_default()
                                )))
                            }
                        },
                        Some(c) => s.push(c),
                    }
                }
                tokens.push(Token::Quoted(s));
            } else {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(w));
            }
            match chars.next() {
                None => break,
                Some(' ') if chars.peek().is_some() => {}
                Some(_) => return Err(self.err("fields must be separated by exactly one space")),
            }
        }
        let mut iter = tokens.into_iter();
        match iter.next() {
            Some(Token::Word(key)) => Ok((key, iter.collect())),
            _ => Err(self.err("a line starts with a keyword")),
        }
    }
}

fn quoted(line: &Line<'_>, t: &Token, what: &str) -> Result<String, ParseError> {
    match t {
        Token::Quoted(s) => Ok(s.clone()),
        Token::Word(w) => Err(line.err(format!("{what} must be a quoted string, found `{w}`"))),
    }
}

fn word<'t>(line: &Line<'_>, t: &'t Token, what: &str) -> Result<&'t str, ParseError> {
    match t {
        Token::Word(w) => Ok(w),
        Token::Quoted(s) => Err(line.err(format!("{what} must be a bare word, found `\"{s}\"`"))),
    }
}

pub(super) fn parse(dir: &StoreDir, text: &str) -> Result<Derivation, ParseError> {
    let mut lines = text.split_inclusive('\n').enumerate();
    let first = lines.next().map(|(_, l)| l).unwrap_or("");
    if first != format!("{VERSION_LINE}\n") {
        return Err(ParseError::BadVersion {
            found: first.trim_end().chars().take(80).collect(),
        });
    }
    let mut drv = Derivation::new("", "", "");
    let (mut name, mut system, mut builder) = (None, None, None);
    for (i, raw) in lines {
        let line = Line {
            no: i + 1,
            text: raw.strip_suffix('\n').unwrap_or(raw),
        };
        if !raw.ends_with('\n') {
            return Err(line.err("the last line must end with a newline"));
        }
        let (key, fields) = line.tokens()?;
        let arity = |n: usize| {
            if fields.len() == n {
                Ok(())
            } else {
                Err(line.err(format!(
                    "`{key}` takes {n} field(s), found {}",
                    fields.len()
                )))
            }
        };
        let path = |s: &str| dir.parse_path(s).map_err(|e| line.err(e.to_string()));
        let once = |slot: &mut Option<String>, v: String| {
            if slot.replace(v).is_some() {
                Err(line.err(format!("`{key}` appears twice")))
            } else {
                Ok(())
            }
        };
        match key.as_str() {
            "name" => {
                arity(1)?;
                once(&mut name, quoted(&line, &fields[0], "the name")?)?
            }
            "system" => {
                arity(1)?;
                once(&mut system, quoted(&line, &fields[0], "the system")?)?
            }
            "builder" => {
                arity(1)?;
                once(&mut builder, quoted(&line, &fields[0], "the builder")?)?
            }
            "arg" => {
                arity(1)?;
                drv.args.push(quoted(&line, &fields[0], "an argument")?)
            }
            "output" => {
                if fields.len() < 2 {
                    return Err(line.err("`output` takes a name and a kind"));
                }
                let out = OutputName::new(&quoted(&line, &fields[0], "the output name")?)
                    .map_err(|e| line.err(e.to_string()))?;
                let kind = match (word(&line, &fields[1], "the output kind")?, &fields[2..]) {
                    ("input-addressed", [p]) => {
                        DerivationOutput::InputAddressed(path(&quoted(&line, p, "the output path")?)?)
                    }
                    ("deferred", []) => DerivationOutput::Deferred,
                    ("fixed", [ca]) => DerivationOutput::Fixed(
                        quoted(&line, ca, "the content address")?
                            .parse::<ContentAddress>()
                            .map_err(|e| line.err(e.to_string()))?,
                    ),
                    ("floating", [m, a]) => {
                        let method = match word(&line, m, "the method")? {
                            "flat" => ContentAddressMethod::Flat,
                            "recursive" => ContentAddressMethod::Recursive,
                            "text" => ContentAddressMethod::Text,
                            other => return Err(line.err(format!("unknown method `{other}`"))),
                        };
                        let algo: HashAlgo = word(&line, a, "the algorithm")?
                            .parse()
                            .map_err(|e: crate::hash::ParseError| line.err(e.to_string()))?;
                        DerivationOutput::Floating { method, algo }
                    }
                    (other, _) => {
                        return Err(line.err(format!(
                            "`{other}` with {} field(s) is not an output kind (input-addressed \"<path>\", deferred, fixed \"<ca>\", floating <method> <algo>)",
                            fields.len() - 2
                        )))
                    }
                };
                if drv.outputs.insert(out.clone(), kind).is_some() {
                    return Err(line.err(format!("output `{out}` appears twice")));
                }
            }
            "input-drv" => {
                if fields.len() < 2 {
                    return Err(line.err("`input-drv` takes a path and at least one output"));
                }
                let p = path(&quoted(&line, &fields[0], "the input path")?)?;
                let mut outs = BTreeSet::new();
                for f in &fields[1..] {
                    let o = OutputName::new(&quoted(&line, f, "an output name")?)
                        .map_err(|e| line.err(e.to_string()))?;
                    outs.insert(o);
                }
                if drv.input_drvs.insert(p.clone(), outs).is_some() {
                    return Err(line.err(format!("input `{p}` appears twice")));
                }
            }
            "input-src" => {
                arity(1)?;
                let p = path(&quoted(&line, &fields[0], "the input path")?)?;
                if !drv.input_srcs.insert(p.clone()) {
                    return Err(line.err(format!("input `{p}` appears twice")));
                }
            }
            "env" => {
                arity(2)?;
                let k = quoted(&line, &fields[0], "the variable name")?;
                let v = quoted(&line, &fields[1], "the value")?;
                if drv.env.insert(k.clone(), v).is_some() {
                    return Err(line.err(format!("variable `{k}` appears twice")));
                }
            }
            other => return Err(line.err(format!("unknown keyword `{other}`"))),
        }
    }
    drv.name = name.ok_or(ParseError::Missing { field: "name" })?;
    drv.system = system.ok_or(ParseError::Missing { field: "system" })?;
    drv.builder = builder.ok_or(ParseError::Missing { field: "builder" })?;
    drv.validate().map_err(|e| ParseError::Invalid {
        reason: crate::derivation::error_chain(&e),
    })?;
    // One derivation, one text: anything that parsed but prints
    // differently (order, escapes) is rejected rather than silently
    // accepted under a different hash.
    let printed = print(&drv, dir, None);
    if printed != text {
        let (line, expected) = printed
            .lines()
            .zip(text.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, _))| (i + 1, a.to_owned()))
            .unwrap_or_else(|| {
                let n = printed.lines().count().min(text.lines().count());
                (n + 1, printed.lines().nth(n).unwrap_or("").to_owned())
            });
        return Err(ParseError::NotCanonical { line, expected });
    }
    Ok(drv)
}

#[cfg(test)]
mod tests {
    use super::escape;
    use proptest::prelude::*;

    /// The rule, one character at a time.
    fn reference(s: &str) -> String {
        let mut out = String::new();
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\u{{{:02x}}}", c as u32))
                }
                c => out.push(c),
            }
        }
        out
    }

    proptest! {
        /// Eight bytes at a time escapes exactly what one at a time does,
        /// wherever the special characters fall.
        #[test]
        fn escaping_by_words_matches_the_rule(
            s in "([a-z0-9 ]{0,11}[\"\\\\\n\t\r\u{0}\u{1f}\u{7f}\u{80}é€𝄞]?){0,8}"
        ) {
            let mut out = String::new();
            escape(&mut out, &s);
            prop_assert_eq!(out, reference(&s));
        }
    }
}
