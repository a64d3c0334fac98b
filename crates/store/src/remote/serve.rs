//! The serving end of the protocol: what `bigtop store serve` runs on the
//! remote machine, with its standard input and output as the channel.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};

use bigtop_core::StorePath;

use super::{MAGIC, MAX_PATHS, PROTOCOL_VERSION};
use crate::error::{io_err, Chain, Error};
use crate::export::{get, get_number, put, MAX_FIELD};
use crate::Store;

fn bad(reason: impl Into<String>) -> Error {
    Error::BadStream {
        reason: reason.into(),
    }
}

/// Writes one message and sends it.
fn send(output: &mut impl Write, parts: &[&[u8]]) -> Result<(), Error> {
    parts
        .iter()
        .try_for_each(|p| put(output, p))
        .and_then(|()| output.flush())
        .map_err(io_err("write", "the serve channel"))
}

/// Reads a count and that many store paths.
fn get_paths(input: &mut impl BufRead, what: &str) -> Result<Vec<StorePath>, Error> {
    let n = get_number(input, &format!("the number of {what}"), MAX_PATHS)?;
    (0..n)
        .map(|_| {
            let s = get(input, what)?;
            StorePath::from_base_name(&s).map_err(|e| bad(format!("{what} `{s}`: {e}")))
        })
        .collect()
}

/// Serves `store` to the client at the other end of `input` and `output`
/// until it quits or hangs up; the protocol is in [`super`]. A request
/// the store cannot answer is answered with its error, which ends the
/// session and is returned too: after a refused import the channel may
/// hold the rest of a stream that will not be read.
pub fn serve(
    store: &Store,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> Result<(), Error> {
    let version = PROTOCOL_VERSION.to_string();
    send(
        output,
        &[
            MAGIC.as_bytes(),
            version.as_bytes(),
            store.store_dir().as_str().as_bytes(),
        ],
    )?;
    let magic = get(input, "the client's greeting")?;
    let theirs = get(input, "the client's protocol version")?;
    if magic != MAGIC || theirs != version {
        return refuse(
            output,
            bad(format!(
                "the client speaks `{magic}` version `{theirs}`, this server `{MAGIC}` version {version}"
            )),
        );
    }
    loop {
        // The client may hang up between requests; that is its `quit`.
        if input
            .fill_buf()
            .map_err(io_err("read", "the serve channel"))?
            .is_empty()
        {
            return Ok(());
        }
        let op = get(input, "an operation")?;
        let answered = match op.as_str() {
            "quit" => return Ok(()),
            "valid" => valid(store, input, output),
            "closure" => closure(store, input, output),
            "import" => store
                .import(input)
                .and_then(|paths| send_paths(output, paths.iter()))
                .map_err(Failure::from),
            "export" => export(store, input, output),
            other => Err(bad(format!("unknown operation `{other}`")).into()),
        };
        match answered {
            Ok(()) => {}
            Err(Failure::Unanswered(e)) => return refuse(output, e),
            // The stream has begun: the client sees it break off, and
            // this side's error on standard error.
            Err(Failure::Answered(e)) => return Err(e),
        }
    }
}

/// Why a request failed: before its answer began, so that the error can
/// be the answer, or after.
enum Failure {
    Unanswered(Error),
    Answered(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Unanswered(e)
    }
}

/// Answers `e` and ends the session with it.
fn refuse(output: &mut impl Write, e: Error) -> Result<(), Error> {
    let mut message = Chain(&e).to_string();
    if message.len() as u64 > MAX_FIELD {
        let mut end = MAX_FIELD as usize - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    // The client may be gone already; the error is still this side's.
    let _ = send(output, &[b"error", message.as_bytes()]);
    Err(e)
}

fn send_paths<'a>(
    output: &mut impl Write,
    paths: impl ExactSizeIterator<Item = &'a StorePath>,
) -> Result<(), Error> {
    let n = paths.len().to_string();
    let names: Vec<String> = paths.map(ToString::to_string).collect();
    let mut parts: Vec<&[u8]> = vec![b"ok", n.as_bytes()];
    parts.extend(names.iter().map(|s| s.as_bytes()));
    send(output, &parts)
}

fn valid(store: &Store, input: &mut impl BufRead, output: &mut impl Write) -> Result<(), Failure> {
    let paths = get_paths(input, "paths to check")?;
    // Rooted before they are looked up: what is said to be valid stays so
    // until the session ends.
    store.add_temp_roots(&paths)?;
    Ok(send_paths(output, store.valid_among(&paths)?.iter())?)
}

fn closure(
    store: &Store,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> Result<(), Failure> {
    let roots = get_paths(input, "roots")?;
    store.add_temp_roots(&roots)?;
    let closure = store.closure(&roots)?;
    let mut infos = Vec::with_capacity(closure.len());
    for p in &closure {
        infos.push(
            store
                .path_info(p)?
                .ok_or_else(|| Error::NotValid { path: p.clone() })?,
        );
    }
    let w = |e| io_err("write", "the serve channel")(e);
    put(output, b"ok").map_err(w)?;
    put(output, infos.len().to_string().as_bytes()).map_err(w)?;
    for info in &infos {
        put(output, info.path.to_string().as_bytes()).map_err(w)?;
        put(output, info.nar_hash.to_string().as_bytes()).map_err(w)?;
        put(output, info.nar_size.to_string().as_bytes()).map_err(w)?;
        put(output, info.references.len().to_string().as_bytes()).map_err(w)?;
        for r in &info.references {
            put(output, r.to_string().as_bytes()).map_err(w)?;
        }
    }
    Ok(output.flush().map_err(w)?)
}

fn export(store: &Store, input: &mut impl BufRead, output: &mut impl Write) -> Result<(), Failure> {
    let paths: BTreeSet<StorePath> = get_paths(input, "paths to export")?.into_iter().collect();
    store.add_temp_roots(&paths)?;
    let valid = store.valid_among(&paths)?;
    if let Some(p) = paths.difference(&valid).next() {
        return Err(Error::NotValid { path: p.clone() }.into());
    }
    put(output, b"ok").map_err(io_err("write", "the serve channel"))?;
    store
        .export_only(&paths, output)
        .map(drop)
        .map_err(Failure::Answered)
}
