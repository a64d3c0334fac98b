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
//!
//! A stream is not trusted to describe its paths. A content address must
//! give the path's very name and hold for its contents, or anyone could
//! put other contents under a content-addressed path; and the contents of
//! every path are scanned for references, which must all be declared, or
//! the collector would delete a path still in use. The scan runs once the
//! whole stream is staged, since contents may name a path that comes later
//! in it; it reads the staged trees back from disk, so memory stays
//! bounded by the store's path count, not by the stream.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;

use bigtop_core::hash::{Hasher, HashingWriter};
use bigtop_core::{nar, ContentAddress, ContentAddressMethod, HashAlgo};
use bigtop_core::{ReferenceGraph, StoreDir, StorePath};

use crate::error::{io_err, Error};
use crate::scan::ReferenceScanner;
use crate::store::add::AddBatch;
use crate::store::{PathInfo, Store};

const MAGIC: &str = "bigtop-export-1";
/// Longest metadata string accepted (a signature or path is far shorter).
pub(crate) const MAX_FIELD: u64 = 4096;
/// Most references accepted for one path.
const MAX_REFS: u64 = 1 << 20;

pub(crate) fn put(w: &mut impl Write, s: &[u8]) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s)?;
    w.write_all(&[0u8; 8][..(8 - s.len() % 8) % 8])
}

fn bad(reason: impl Into<String>) -> Error {
    Error::BadStream {
        reason: reason.into(),
    }
}

pub(crate) fn get(r: &mut impl Read, what: &str) -> Result<String, Error> {
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

pub(crate) fn get_number(r: &mut impl Read, what: &str, max: u64) -> Result<u64, Error> {
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
        self.export_only(&closure, w)
    }

    /// Writes exactly `paths` to `w`, not their closure, each after those
    /// of its references among them: for a receiver that already has the
    /// rest of their closure (what a copy between stores sends once it
    /// knows what the other side lacks).
    pub fn export_only(
        &self,
        paths: &BTreeSet<StorePath>,
        w: &mut impl Write,
    ) -> Result<Vec<StorePath>, Error> {
        let mut infos = Vec::with_capacity(paths.len());
        for p in paths {
            infos.push(
                self.path_info(p)?
                    .ok_or_else(|| Error::NotValid { path: p.clone() })?,
            );
        }
        // References outside the set are the receiver's already; only the
        // order among those sent matters.
        let graph = ReferenceGraph::new(infos.iter().map(|i| {
            (
                i.path.clone(),
                i.references
                    .iter()
                    .filter(|r| paths.contains(*r))
                    .cloned()
                    .collect::<Vec<_>>(),
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
    /// hash, a truncated NAR, a reference to a path neither in the stream
    /// nor valid here, a content address that does not give the path or
    /// does not hold for its contents, or contents that refer to a valid
    /// or imported path not among the declared references rejects the
    /// whole stream.
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
            // Before the NAR is read: a forged name fails fast.
            check_ca_path(self.store_dir(), &info)?;
            if get(r, "`nar`")? != "nar" {
                return Err(bad(format!(
                    "expected `nar` after the metadata of `{path}`"
                )));
            }
            batch.add_nar(info, r)?;
            seen.insert(path);
        }
        self.check_staged_contents(&batch, &seen)?;
        batch.commit()
    }

    /// Checks each staged tree of an import against what the stream
    /// claimed: its content address holds for its contents, and its
    /// references include every valid or imported path its contents name.
    pub(crate) fn check_staged_contents(
        &self,
        batch: &AddBatch<'_>,
        imported: &BTreeSet<StorePath>,
    ) -> Result<(), Error> {
        // Every path that could be referred to: what is valid here (or
        // becomes valid with this stream) is what the collector would
        // delete. A path that exists nowhere cannot be deleted.
        let valid = self.all_valid_paths()?;
        let mut scanner = ReferenceScanner::new(valid.iter().chain(imported));
        drop(valid);
        let mut buf = Vec::new();
        for (info, tree) in batch.staged_trees() {
            check_tree(&mut scanner, info, tree, &mut buf)?;
        }
        Ok(())
    }

    /// [`check_staged_contents`](Self::check_staged_contents) for one tree
    /// staged for `info`, whose references are valid paths or itself.
    pub(crate) fn check_staged_tree(&self, info: &PathInfo, tree: &Path) -> Result<(), Error> {
        let valid = self.all_valid_paths()?;
        let mut scanner = ReferenceScanner::new(valid.iter().chain([&info.path]));
        drop(valid);
        check_tree(&mut scanner, info, tree, &mut Vec::new())
    }
}

/// Scans `tree`, staged for `info`, for references `info` does not
/// declare, and checks its content address, if it claims one.
fn check_tree(
    scanner: &mut ReferenceScanner,
    info: &PathInfo,
    tree: &Path,
    buf: &mut Vec<u8>,
) -> Result<(), Error> {
    let file_algo = info.ca.and_then(|ca| match ca.method {
        ContentAddressMethod::Recursive => None,
        _ => Some(ca.hash.algo()),
    });
    let file_hash = scan_tree(scanner, tree, file_algo, buf).map_err(io_err("scan", tree))?;
    let found = scanner.take_found();
    if let Some(reference) = found.difference(&info.references).next() {
        return Err(Error::UndeclaredReference {
            path: info.path.clone(),
            reference: reference.clone(),
        });
    }
    if let Some(ca) = info.ca {
        check_ca_contents(info, &ca, tree, file_hash)?;
    }
    Ok(())
}

/// Scans `tree` for references. When `file_algo` is given (a flat or text
/// content address) and `tree` is a regular file, its bytes are hashed in
/// the same read and the hash returned. Anything else under such a claim
/// is neither scanned nor hashed: `None` says the claim cannot hold.
fn scan_tree(
    scanner: &mut ReferenceScanner,
    tree: &Path,
    file_algo: Option<HashAlgo>,
    buf: &mut Vec<u8>,
) -> io::Result<Option<bigtop_core::Hash>> {
    let Some(algo) = file_algo else {
        scanner.scan_path(tree)?;
        return Ok(None);
    };
    if !fs::symlink_metadata(tree)?.is_file() {
        return Ok(None);
    }
    if buf.is_empty() {
        buf.resize(64 * 1024, 0);
    }
    let mut hasher = Hasher::new(algo);
    let mut file = fs::File::open(tree)?;
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        scanner.feed(&buf[..n]);
        hasher.update(&buf[..n]);
    }
    scanner.end_stream();
    Ok(Some(hasher.finish()))
}

/// Checks that `info`'s content address, if any, gives `info.path`: the
/// path is recomputed from the claim as adding or building it would.
pub(crate) fn check_ca_path(dir: &StoreDir, info: &PathInfo) -> Result<(), Error> {
    let Some(ca) = info.ca else { return Ok(()) };
    let path = &info.path;
    let name = path.name();
    let unfit = |reason| Error::ContentAddressUnfit {
        path: path.clone(),
        ca,
        reason,
    };
    let implied = match ca.method {
        // Text files are named after their references too; one cannot
        // refer to itself, its name being a hash of its contents.
        ContentAddressMethod::Text => dir.make_text_path(name, &ca.hash, &info.references),
        ContentAddressMethod::Recursive => dir.make_source_path(
            name,
            &ca.hash,
            info.references.iter().filter(|r| *r != path),
            info.references.contains(path),
        ),
        ContentAddressMethod::Flat if info.references.is_empty() => {
            dir.make_fixed_output_path(name, &ca)
        }
        ContentAddressMethod::Flat => {
            return Err(unfit("a flat content address allows no references"))
        }
        _ => return Err(unfit("this bigtop does not know its method")),
    }?;
    if implied != *path {
        return Err(Error::ContentAddressMismatch {
            path: path.clone(),
            ca,
            implied,
        });
    }
    Ok(())
}

/// Checks that `ca` holds for the staged contents at `tree`. `file_hash`
/// is the flat hash of `tree` with the claim's algorithm when it is a
/// regular file (computed while scanning it), for flat and text claims.
fn check_ca_contents(
    info: &PathInfo,
    ca: &ContentAddress,
    tree: &Path,
    file_hash: Option<bigtop_core::Hash>,
) -> Result<(), Error> {
    let got = match ca.method {
        // The NAR hash was checked as the NAR streamed in.
        ContentAddressMethod::Recursive if ca.hash.algo() == info.nar_hash.algo() => info.nar_hash,
        ContentAddressMethod::Recursive => nar::hash_path(tree, ca.hash.algo())?.0,
        _ => file_hash.ok_or(Error::ContentAddressUnfit {
            path: info.path.clone(),
            ca: *ca,
            reason: "a flat or text content address needs a single regular file",
        })?,
    };
    if got != ca.hash {
        return Err(Error::HashMismatch {
            path: info.path.clone(),
            expected: ca.hash,
            got,
        });
    }
    Ok(())
}
