use bigtop_store::{Error, Store};

use crate::{assert_consistent, text, Result};

fn exported(tmp: &std::path::Path) -> Result<(Vec<u8>, Vec<bigtop_store::core::StorePath>)> {
    let store = Store::open_chroot(tmp.join("src"))?;
    let lib = text(&store, "lib", "lib", &[])?;
    let mid = text(&store, "mid", "mid", &[&lib])?;
    let app = text(&store, "app", "app", &[&mid, &lib])?;
    let mut stream = Vec::new();
    let order = store.export([&app], &mut stream)?;
    assert_eq!(order, vec![lib, mid, app], "references first");
    Ok((stream, order))
}

#[test]
fn export_import_round_trips_a_closure() -> Result {
    let tmp = tempfile::tempdir()?;
    let (stream, order) = exported(tmp.path())?;
    let src = Store::open_chroot(tmp.path().join("src"))?;
    let dst = Store::open_chroot(tmp.path().join("dst"))?;
    let imported = dst.import(&mut &stream[..])?;
    assert_eq!(imported, order);
    for p in &order {
        let (a, b) = (
            src.path_info(p)?.ok_or("src")?,
            dst.path_info(p)?.ok_or("dst")?,
        );
        assert_eq!(
            (a.nar_hash, a.nar_size, &a.references, a.ca),
            (b.nar_hash, b.nar_size, &b.references, b.ca)
        );
    }
    // Importing again is a no-op, not an error.
    assert_eq!(dst.import(&mut &stream[..])?, order);
    assert_consistent(&dst)
}

/// Runs an import of `stream` into a fresh store and checks that it was
/// rejected whole: nothing registered, nothing left in the store dir.
fn rejected(tmp: &std::path::Path, stream: &[u8]) -> Result<Error> {
    let dir = tempfile::tempdir_in(tmp)?;
    let dst = Store::open_chroot(dir.path())?;
    let err = dst.import(&mut &stream[..]).expect_err("import must fail");
    assert!(dst.all_valid_paths()?.is_empty(), "partially imported");
    assert_eq!(
        std::fs::read_dir(dst.root())?.count(),
        0,
        "left files behind"
    );
    Ok(err)
}

#[test]
fn a_bad_hash_rejects_the_whole_stream() -> Result {
    let tmp = tempfile::tempdir()?;
    let (mut stream, _) = exported(tmp.path())?;
    // Flip one byte of the last file's contents ("app"), after two good paths.
    let at = stream
        .windows(3)
        .rposition(|w| w == b"app")
        .ok_or("no app contents")?;
    stream[at] = b'A';
    let err = rejected(tmp.path(), &stream)?;
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    Ok(())
}

#[test]
fn a_reference_outside_stream_and_store_rejects_it() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path().join("src"))?;
    let lib = text(&store, "lib", "lib", &[])?;
    let app = text(&store, "app", "app", &[&lib])?;
    let mut stream = Vec::new();
    store.export([&app], &mut stream)?;
    // Cut `lib` out: the stream starts with it, references first.
    let mut other = Vec::new();
    store.export([&lib], &mut other)?;
    let lib_part = other.len() - 16 - 24; // without magic's and "end"'s strings
    let magic = 24;
    let mut without_lib = stream[..magic].to_vec();
    without_lib.extend_from_slice(&stream[magic + lib_part..]);
    let err = rejected(tmp.path(), &without_lib)?;
    assert!(
        matches!(&err, Error::MissingReference { path, reference } if *path == app && *reference == lib),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_truncated_stream_is_rejected_at_every_cut() -> Result {
    let tmp = tempfile::tempdir()?;
    let (stream, _) = exported(tmp.path())?;
    for cut in (0..stream.len()).step_by(7) {
        rejected(tmp.path(), &stream[..cut])?;
    }
    Ok(())
}

#[test]
fn garbage_is_rejected() -> Result {
    let tmp = tempfile::tempdir()?;
    let err = rejected(tmp.path(), b"not an export stream at all, just text")?;
    assert!(matches!(err, Error::BadStream { .. }), "{err}");
    Ok(())
}
