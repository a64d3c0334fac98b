//! The serving end of the SSH protocol, driven in memory: a client's
//! messages in, the answers read back. (Over a real sshd, with the
//! client, in the `bigtop` crate's CLI tests.)

use std::io::{BufReader, Read};

use bigtop_store::core::StorePath;
use bigtop_store::remote::{serve, PROTOCOL_VERSION};
use bigtop_store::Store;

use crate::{text, Result};

fn frame(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

/// A client's messages: its greeting, then `parts`.
fn client(version: u64, parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    frame(&mut out, b"bigtop-serve");
    frame(&mut out, version.to_string().as_bytes());
    for p in parts {
        frame(&mut out, p.as_bytes());
    }
    out
}

/// Reads the answers back.
struct Answers<'a>(&'a [u8]);

impl Answers<'_> {
    fn next(&mut self) -> Result<String> {
        let mut len = [0u8; 8];
        self.0.read_exact(&mut len)?;
        let len = usize::try_from(u64::from_le_bytes(len))?;
        let padded = len.div_ceil(8) * 8;
        let s = self.0.get(..len).ok_or("answer cut short")?.to_vec();
        self.0 = self.0.get(padded..).ok_or("answer cut short")?;
        Ok(String::from_utf8(s)?)
    }

    fn greeting(&mut self) -> Result {
        assert_eq!(self.next()?, "bigtop-serve");
        assert_eq!(self.next()?, PROTOCOL_VERSION.to_string());
        assert_eq!(self.next()?, "/bigtop/store");
        Ok(())
    }

    fn paths(&mut self) -> Result<Vec<String>> {
        let n: usize = self.next()?.parse()?;
        (0..n).map(|_| self.next()).collect()
    }
}

fn run(store: &Store, input: &[u8]) -> (Vec<u8>, std::result::Result<(), bigtop_store::Error>) {
    let mut output = Vec::new();
    let result = serve(store, &mut BufReader::new(input), &mut output);
    (output, result)
}

#[test]
fn serve_answers_queries_exports_exactly_what_is_asked_and_imports_it_elsewhere() -> Result {
    let tmp = tempfile::tempdir()?;
    let a = Store::open_chroot(tmp.path().join("a"))?;
    let dep = text(&a, "dep", "the library", &[])?;
    let app = text(&a, "app", "the app", &[&dep])?;
    let elsewhere = StorePath::from_base_name("00000000000000000000000000000000-elsewhere")?;
    let (dep_s, app_s, else_s) = (dep.to_string(), app.to_string(), elsewhere.to_string());

    let (output, result) = run(
        &a,
        &client(
            PROTOCOL_VERSION,
            &[
                "valid", "3", &app_s, &else_s, &dep_s, //
                "closure", "1", &app_s, //
                "export", "1", &app_s, //
            ],
        ),
    );
    result?;
    let mut answers = Answers(&output);
    answers.greeting()?;
    assert_eq!(answers.next()?, "ok");
    // Valid paths and the closure come sorted.
    let mut both = [(&app, vec![dep_s.clone()]), (&dep, vec![])];
    both.sort_by_key(|(p, _)| (*p).clone());
    let sorted: Vec<String> = both.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(answers.paths()?, sorted);
    assert_eq!(answers.next()?, "ok");
    assert_eq!(answers.next()?, "2");
    for (p, refs) in both {
        let info = a.path_info(p)?.ok_or("not valid")?;
        assert_eq!(answers.next()?, p.to_string());
        assert_eq!(answers.next()?, info.nar_hash.to_string());
        assert_eq!(answers.next()?, info.nar_size.to_string());
        assert_eq!(answers.paths()?, refs);
    }
    assert_eq!(answers.next()?, "ok");
    // Only `app`: the client said it has `dep`.
    let stream = answers.0.to_vec();
    let mut only_app = Vec::new();
    a.export_only(&[app.clone()].into(), &mut only_app)?;
    assert_eq!(stream, only_app);

    // Into a store with `dep` and without `app`, through another session.
    let b = Store::open_chroot(tmp.path().join("b"))?;
    let mut dep_stream = Vec::new();
    a.export_only(&[dep.clone()].into(), &mut dep_stream)?;
    b.import(&mut &dep_stream[..])?;
    let mut input = client(PROTOCOL_VERSION, &["import"]);
    input.extend_from_slice(&stream);
    frame(&mut input, b"quit");
    let (output, result) = run(&b, &input);
    result?;
    let mut answers = Answers(&output);
    answers.greeting()?;
    assert_eq!(answers.next()?, "ok");
    assert_eq!(answers.paths()?, [app_s]);
    assert!(answers.0.is_empty());
    assert!(b.is_valid(&app)?);
    Ok(())
}

#[test]
fn serve_answers_a_refusal_in_band_and_ends_the_session() -> Result {
    let tmp = tempfile::tempdir()?;
    let a = Store::open_chroot(tmp.path().join("a"))?;
    let dep = text(&a, "dep", "the library", &[])?;
    let app = text(&a, "app", "the app", &[&dep])?;

    // Another version: greeted, then told why not.
    let (output, result) = run(&a, &client(PROTOCOL_VERSION + 1, &["valid", "0"]));
    let err = result.err().ok_or("another version was served")?;
    let mut answers = Answers(&output);
    answers.greeting()?;
    assert_eq!(answers.next()?, "error");
    let message = answers.next()?;
    assert!(
        message.contains(&format!("version `{}`", PROTOCOL_VERSION + 1)),
        "{message}"
    );
    assert_eq!(message, format!("{err}"));
    assert!(answers.0.is_empty());

    // A path it does not have, asked for export: refused before any
    // stream, and nothing after it is read.
    let b = Store::open_chroot(tmp.path().join("b"))?;
    let (output, result) = run(
        &b,
        &client(PROTOCOL_VERSION, &["export", "1", &app.to_string(), "quit"]),
    );
    assert!(result.is_err());
    let mut answers = Answers(&output);
    answers.greeting()?;
    assert_eq!(answers.next()?, "error");
    assert_eq!(
        answers.next()?,
        format!("path `{app}` is not valid in the store")
    );
    assert!(answers.0.is_empty());

    // A stream whose referrer arrives without its reference: the import
    // is refused whole, and nothing is left staged.
    let mut only_app = Vec::new();
    a.export_only(&[app.clone()].into(), &mut only_app)?;
    let mut input = client(PROTOCOL_VERSION, &["import"]);
    input.extend_from_slice(&only_app);
    let (output, result) = run(&b, &input);
    assert!(result.is_err());
    let mut answers = Answers(&output);
    answers.greeting()?;
    assert_eq!(answers.next()?, "error");
    let message = answers.next()?;
    assert!(
        message.contains(&format!("`{app}` refers to `{dep}`")),
        "{message}"
    );
    assert!(!b.is_valid(&app)?);
    crate::assert_consistent(&b)?;
    Ok(())
}
