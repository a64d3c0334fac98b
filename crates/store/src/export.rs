//! Moving closures between stores as one stream.
//!
//! The stream is a sequence of NAR-style strings (64-bit little-endian
//! length, bytes, zero padding to 8), so that it is self-delimiting and
//! binary-safe:
//!
//! ```text
//! "bigtop-export-1"
//! { "path" <base name> <nar hash> <nar size> <deriver or ""> <content address or "">
//!   <reference count> <reference>… <signature count> <signature>… "nar" <NAR> }
//! "end"
//! ```
//!
//! Metadata comes before each NAR, so the importer checks the hash while
//! the NAR streams to disk.
//!
//! Paths come references first, so an importer can check each path's
//! references against what it already has. Both directions stream: a
//! closure holding a 4 GiB file moves through a few buffers, never through
//! memory whole. An import is all or nothing: every path is checked
//! against its hash and staged, and only then are all registered together.

use std::collections::BTreeSet;
use std::io::{self, BufRead, Read, Write};

use bigtop_core::hash::HashingWriter;
use bigtop_core::nar;
use bigtop_core::{ReferenceGraph, StorePath};

use crate::error::{io_err, Error};
use crate::store::{PathInfo, Store};

const MAGIC: &str = "bigtop-export-1";
/// Longest metadata string accepted (a signature or path is far shorter).
const MAX_FIELD: u64 = 4096;
/// Most references accepted for one path.
const MAX_REFS: u64 = 1 << 20;

fn put(w: &mut impl Write, s: &[u8]) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s)?;
    w.write_all(&[0u8; 8][..(8 - s.len() % 8) % 8])
}

fn bad(reason: impl Into<String>) -> Error {
    Error::BadStream {
        reason: reason.into(),
    }
}

fn get(r: &mut impl Read, what: &str) -> Result<String, Error> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)
        .map_err(|e| bad(format!("stream ends before {what}: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_FIELD {
        return Err(bad(format!(
            "{what} claims {len} bytes, more than {MAX_FIELD}"
        )));
    }
    let padded = len.div_ceil(8) * 8;
    let mut buf = vec![0u8; padded as usize];
    r.read_exact(&mut buf)
        .map_err(|e| bad(format!("stream ends inside {what}: {e}")))?;
    if buf[len as usize..].iter().any(|&b| b != 0) {
        return Err(bad(format!("padding of {what} is not zero")));
    }
    buf.truncate(len as usize);
    String::from_utf8(buf).map_err(|_| bad(format!("{what} is not UTF-8")))
}

fn get_number(r: &mut impl Read, what: &str, max: u64) -> Result<u64, Error> {
    let s = get(r, what)?;
    let n: u64 = s
        .parse()
        .map_err(|_| bad(format!("{what} `{s}` is not a number")))?;
    if n > max {
        return Err(bad(format!("{what} {n} is more than {max}")));
    }
    Ok(n)
}

impl Store {
    /// Writes the closure of `paths` to `w`, references first. Each NAR is
    /// checked against its recorded hash as it streams; a corrupt path
    /// fails the export.
    pub fn export<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
        w: &mut impl Write,
    ) -> Result<Vec<StorePath>, Error> {
        let closure = self.closure(paths)?;
        let mut infos = Vec::with_capacity(closure.len());
        for p in &closure {
            infos.push(
                self.path_info(p)?
                    .ok_or_else(|| Error::NotValid { path: p.clone() })?,
            );
        }
        let graph = ReferenceGraph::new(infos.iter().map(|i| {
            (
                i.path.clone(),
                i.references.iter().cloned().collect::<Vec<_>>(),
            )
        }))
        .map_err(|e| bad(e.to_string()))?;
        let order = graph.topo_order().map_err(|e| bad(e.to_string()))?;
        let by_path: std::collections::HashMap<&StorePath, &PathInfo> =
            infos.iter().map(|i| (&i.path, i)).collect();
        let out_err = |e: io::Error| io_err("write", "the export stream")(e);
        put(w, MAGIC.as_bytes()).map_err(out_err)?;
        for p in &order {
            let info = by_path[p];
            put(w, b"path").map_err(out_err)?;
            put(w, p.to_string().as_bytes()).map_err(out_err)?;
            put(w, info.nar_hash.to_string().as_bytes()).map_err(out_err)?;
            put(w, info.nar_size.to_string().as_bytes()).map_err(out_err)?;
            put(
                w,
                info.deriver
                    .as_ref()
                    .map(|d| d.to_string())
                    .unwrap_or_default()
                    .as_bytes(),
            )
            .map_err(out_err)?;
            put(
                w,
                info.ca
                    .map(|c| c.to_string())
                    .unwrap_or_default()
                    .as_bytes(),
            )
            .map_err(out_err)?;
            put(w, info.references.len().to_string().as_bytes()).map_err(out_err)?;
            for r in &info.references {
                put(w, r.to_string().as_bytes()).map_err(out_err)?;
            }
            put(w, info.signatures.len().to_string().as_bytes()).map_err(out_err)?;
            for s in &info.signatures {
                put(w, s.to_string().as_bytes()).map_err(out_err)?;
            }
            put(w, b"nar").map_err(out_err)?;
            let mut hashing = HashingWriter::new(&mut *w, info.nar_hash.algo());
            nar::dump_path(&self.physical(p), &mut hashing)?;
            let (got, _, _) = hashing.finish();
            if got != info.nar_hash {
                return Err(Error::HashMismatch {
                    path: p.clone(),
                    expected: info.nar_hash,
                    got,
                });
            }
        }
        put(w, b"end").map_err(out_err)?;
        w.flush().map_err(out_err)?;
        Ok(order)
    }

    /// Reads an export stream and adds every path in it, or none: a bad
    /// hash, a truncated NAR, or a reference to a path neither in the
    /// stream nor valid here rejects the whole stream.
    pub fn import(&self, r: &mut impl BufRead) -> Result<Vec<StorePath>, Error> {
        if get(r, "the stream magic")? != MAGIC {
            return Err(bad(format!("it does not start with `{MAGIC}`")));
        }
        let mut batch = self.batch();
        let mut seen: BTreeSet<StorePath> = BTreeSet::new();
        loop {
            match get(r, "`path` or `end`")?.as_str() {
                "end" => break,
                "path" => {}
                other => return Err(bad(format!("expected `path` or `end`, found `{other}`"))),
            }
            let name = get(r, "a path")?;
            let path =
                StorePath::from_base_name(&name).map_err(|e| bad(format!("path `{name}`: {e}")))?;
            let field = |r: &mut _, what: &str| get(r, &format!("{what} of `{path}`"));
            let nar_hash = field(r, "the NAR hash")?
                .parse()
                .map_err(|e| bad(format!("NAR hash of `{path}`: {e}")))?;
            let nar_size = get_number(r, &format!("the NAR size of `{path}`"), u64::MAX)?;
            let deriver = Some(field(r, "the deriver")?)
                .filter(|d| !d.is_empty())
                .map(|d| StorePath::from_base_name(&d))
                .transpose()
                .map_err(|e| bad(format!("deriver of `{path}`: {e}")))?;
            let ca = Some(field(r, "the content address")?)
                .filter(|c| !c.is_empty())
                .map(|c| c.parse())
                .transpose()
                .map_err(|e| bad(format!("content address of `{path}`: {e}")))?;
            let n = get_number(r, &format!("the reference count of `{path}`"), MAX_REFS)?;
            let mut references = BTreeSet::new();
            for _ in 0..n {
                let s = field(r, "a reference")?;
                let reference = StorePath::from_base_name(&s)
                    .map_err(|e| bad(format!("reference `{s}` of `{path}`: {e}")))?;
                if reference != path && !seen.contains(&reference) && !self.is_valid(&reference)? {
                    return Err(Error::MissingReference { path, reference });
                }
                references.insert(reference);
            }
            let n = get_number(r, &format!("the signature count of `{path}`"), MAX_REFS)?;
            let mut signatures = Vec::new();
            for _ in 0..n {
                let s = field(r, "a signature")?;
                signatures.push(
                    s.parse()
                        .map_err(|e| bad(format!("signature of `{path}`: {e}")))?,
                );
            }
            let mut info = PathInfo::new(path.clone(), nar_hash, nar_size, references);
            info.deriver = deriver;
            info.ca = ca;
            info.signatures = signatures;
            if get(r, "`nar`")? != "nar" {
                return Err(bad(format!(
                    "expected `nar` after the metadata of `{path}`"
                )));
            }
            batch.add_nar(info, r)?;
            seen.insert(path);
        }
        batch.commit()
    }
}
