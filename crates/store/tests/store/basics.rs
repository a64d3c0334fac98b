use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use bigtop_store::core::nar;
use bigtop_store::core::{HashAlgo, StoreDir};
use bigtop_store::{Error, PathInfo, Store, VerifyOptions};

use crate::{assert_consistent, text, Result};

#[test]
fn opening_creates_the_layout() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    assert_eq!(store.root(), tmp.path().join("bigtop/store"));
    for d in ["db/db.sqlite", "gcroots", "gcroots/auto", "logs"] {
        assert!(store.state_dir().join(d).exists(), "{d}");
    }
    assert_eq!(store.state_dir(), tmp.path().join("bigtop/var"));
    Ok(())
}

#[test]
fn a_newer_schema_is_refused_by_name() -> Result {
    let tmp = tempfile::tempdir()?;
    drop(Store::open_chroot(tmp.path())?);
    let db = tmp.path().join("bigtop/var/db/db.sqlite");
    let conn = rusqlite::Connection::open(&db)?;
    conn.execute_batch("PRAGMA user_version = 99")?;
    drop(conn);
    let err = Store::open_chroot(tmp.path()).unwrap_err();
    assert!(
        matches!(err, Error::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("db.sqlite"), "{err}");
    Ok(())
}

/// Regression: two logical store dirs under one chroot base
/// (`/bigtop/store` and `/bigtop/other`) both keep their state in
/// `<base>/bigtop/var`, so they shared one database. Each saw the other's
/// paths as missing; a repair in one unregistered the other's paths, and
/// the next repair there deleted their files as unregistered entries. The
/// database now belongs to the store dir that created it.
#[test]
fn a_database_refuses_another_store_dir_and_nothing_is_lost() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let lib = text(&store, "lib", "lib", &[])?;
    let app = text(&store, "app", "app", &[&lib])?;
    drop(store);

    let repair = VerifyOptions {
        check_contents: false,
        repair: true,
    };
    let opened = Store::builder()
        .store_dir(StoreDir::new("/bigtop/other")?)
        .chroot(tmp.path())
        .open();
    if let Ok(other) = &opened {
        // What the user did next: repair the store that lost its paths.
        other.verify(repair)?;
    }
    let store = Store::open_chroot(tmp.path())?;
    store.verify(repair)?;
    for p in [&lib, &app] {
        assert!(store.is_valid(p)?, "{p} was unregistered");
        assert!(store.physical(p).exists(), "{p} was deleted");
    }
    assert_consistent(&store)?;

    let err = opened.expect_err("another store dir must be refused");
    assert!(matches!(err, Error::StoreDirMismatch { .. }), "{err}");
    let message = err.to_string();
    for part in [
        "`/bigtop/store`",
        "`/bigtop/other`",
        "bigtop/var/db/db.sqlite",
    ] {
        assert!(message.contains(part), "{message}");
    }
    Ok(())
}

#[test]
fn added_paths_are_canonical_and_queryable() -> Result {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("bin"))?;
    fs::write(src.join("bin/tool"), "#!/bin/sh\n")?;
    fs::set_permissions(src.join("bin/tool"), fs::Permissions::from_mode(0o4755))?;
    fs::write(src.join("README"), "docs")?;
    fs::write(src.join("ignored.o"), "junk")?;
    std::os::unix::fs::symlink("bin/tool", src.join("link"))?;

    let store = Store::open_chroot(tmp.path().join("root"))?;
    let filter = |p: &std::path::Path| p.extension().is_none_or(|e| e != "o");
    let path = store.add_path("src", &src, &filter)?;
    let physical = store.physical(&path);
    assert!(!physical.join("ignored.o").exists());
    let tool = fs::metadata(physical.join("bin/tool"))?;
    assert_eq!(
        tool.mode() & 0o7777,
        0o555,
        "setuid dropped, read-only, executable"
    );
    assert_eq!(tool.mtime(), 1);
    assert_eq!(
        fs::metadata(physical.join("README"))?.mode() & 0o7777,
        0o444
    );
    assert_eq!(fs::metadata(&physical)?.mode() & 0o7777, 0o555);
    assert_eq!(fs::symlink_metadata(physical.join("link"))?.mtime(), 1);

    let info = store.path_info(&path)?.ok_or("not valid")?;
    assert_eq!(
        (info.nar_hash, info.nar_size),
        nar::hash_path(&physical, HashAlgo::Blake3)?
    );
    assert!(info.references.is_empty());
    assert!(info.ca.is_some());
    // Same contents, same path, even after the filter dropped a file.
    fs::write(src.join("other.o"), "more junk")?;
    assert_eq!(store.add_path("src", &src, &filter)?, path);
    // Regression: the second add's staged copy used to stay behind.
    let report = store.verify(Default::default())?;
    assert!(report.is_clean(), "{report:?}");
    assert_consistent(&store)
}

#[test]
fn queries_walk_the_reference_graph() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let libc = text(&store, "libc", "c library", &[])?;
    let ssl = text(&store, "openssl", "tls", &[&libc])?;
    let curl = text(&store, "curl", "http", &[&ssl, &libc])?;
    let app = text(&store, "app", "the app", &[&curl])?;
    let other = text(&store, "other", "unrelated", &[&libc])?;

    assert_eq!(
        store.closure([&app])?,
        BTreeSet::from([app.clone(), curl.clone(), ssl.clone(), libc.clone()])
    );
    assert_eq!(
        store.reverse_closure([&ssl])?,
        BTreeSet::from([ssl.clone(), curl.clone(), app.clone()])
    );
    assert_eq!(
        store.referrers(&libc)?,
        BTreeSet::from([ssl.clone(), curl.clone(), other.clone()])
    );
    assert_eq!(
        store.references(&curl)?,
        BTreeSet::from([ssl.clone(), libc.clone()])
    );
    assert_eq!(
        store.why_depends(&app, &libc)?,
        Some(vec![app.clone(), curl.clone(), libc.clone()])
    );
    assert_eq!(store.why_depends(&libc, &app)?, None);
    let sizes: u64 = [&app, &curl, &ssl, &libc]
        .iter()
        .map(|p| {
            store
                .path_info(p)
                .map(|i| i.map(|i| i.nar_size).unwrap_or(0))
        })
        .sum::<std::result::Result<u64, _>>()?;
    assert_eq!(store.closure_size([&app])?, sizes);
    let unknown =
        bigtop_store::core::StorePath::from_base_name("00000000000000000000000000000000-nope")?;
    assert!(matches!(
        store.closure(&[unknown]),
        Err(Error::NotValid { .. })
    ));
    Ok(())
}

#[test]
fn a_valid_path_is_found_by_its_digest_alone() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let paths = [
        text(&store, "a", "one", &[])?,
        text(&store, "a-b", "two", &[])?,
        text(&store, "z.txt", "three", &[])?,
    ];
    for p in &paths {
        assert_eq!(store.valid_path_with_digest(p.digest())?.as_ref(), Some(p));
    }
    let unknown = bigtop_store::core::StorePathDigest::parse("00000000000000000000000000000000")?;
    assert_eq!(store.valid_path_with_digest(&unknown)?, None);
    // Once deleted, its digest names nothing (a new handle: this one's
    // temporary roots hold what it added).
    drop(store);
    let store = Store::open_chroot(tmp.path())?;
    store.delete_paths(&[paths[1].clone()])?;
    assert_eq!(store.valid_path_with_digest(paths[1].digest())?, None);
    Ok(())
}

#[test]
fn derivation_outputs_are_recorded() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let drv = text(&store, "hello.drv", "bigtop-derivation-1", &[])?;
    let out = text(&store, "hello", "built", &[])?;
    let outputs = std::collections::BTreeMap::from([(
        bigtop_store::core::derivation::OutputName::out(),
        out.clone(),
    )]);
    store.register_derivation_outputs(&drv, &outputs)?;
    assert_eq!(store.derivation_outputs(&drv)?, outputs);
    Ok(())
}

#[test]
fn a_nar_that_does_not_match_its_claim_leaves_nothing() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path().join("s"))?;
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree)?;
    fs::write(tree.join("f"), "contents")?;
    let mut archive = Vec::new();
    nar::dump_path(&tree, &mut archive)?;
    let (hash, size) = nar::hash_path(&tree, HashAlgo::Sha256)?;
    let path = store
        .store_dir()
        .make_source_path("tree", &hash, [], false)?;

    let wrong = bigtop_store::core::Hash::digest(HashAlgo::Sha256, b"something else");
    let err = store
        .add_nar(
            PathInfo::new(path.clone(), wrong, size, BTreeSet::new()),
            &mut &archive[..],
        )
        .unwrap_err();
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    let err = store
        .add_nar(
            PathInfo::new(path.clone(), hash, size + 8, BTreeSet::new()),
            &mut &archive[..],
        )
        .unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
    let err = store
        .add_nar(
            PathInfo::new(path.clone(), hash, size, BTreeSet::new()),
            &mut &archive[..archive.len() - 9],
        )
        .unwrap_err();
    assert!(matches!(err, Error::Nar { .. }), "{err}");
    // Nothing registered, nothing left in the store directory.
    assert!(!store.is_valid(&path)?);
    assert_eq!(fs::read_dir(store.root())?.count(), 0);

    store.add_nar(
        PathInfo::new(path.clone(), hash, size, BTreeSet::new()),
        &mut &archive[..],
    )?;
    assert!(store.is_valid(&path)?);
    assert_eq!(fs::read(store.physical(&path).join("f"))?, b"contents");
    Ok(())
}

#[test]
fn a_batch_registers_all_or_nothing() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let mut batch = store.batch();
    let a = batch.add_text("a", b"a", &BTreeSet::new())?;
    let b = batch.add_text("b", b"b", &BTreeSet::from([a.clone()]))?;
    let ghost =
        bigtop_store::core::StorePath::from_base_name("11111111111111111111111111111111-ghost")?;
    let c = batch.add_text("c", b"c", &BTreeSet::from([ghost.clone()]))?;
    let err = batch.commit().unwrap_err();
    assert!(
        matches!(&err, Error::MissingReference { path, reference } if *path == c && *reference == ghost),
        "{err}"
    );
    for p in [&a, &b, &c] {
        assert!(!store.is_valid(p)?);
        assert!(!store.physical(p).exists(), "{p} left on disk");
    }
    // In any order within a batch, references resolve.
    let mut batch = store.batch();
    let b2 = batch.add_text("b", b"b", &BTreeSet::from([a.clone()]))?;
    let a2 = batch.add_text("a", b"a", &BTreeSet::new())?;
    batch.commit()?;
    assert_eq!(store.references(&b2)?, BTreeSet::from([a2]));
    assert_consistent(&store)
}

#[test]
fn many_small_paths_in_one_batch() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let mut batch = store.batch();
    let mut prev = BTreeSet::new();
    for i in 0..2000 {
        let p = batch.add_text(&format!("p{i}"), format!("path {i}").as_bytes(), &prev)?;
        prev = BTreeSet::from([p]);
    }
    let paths = batch.commit()?;
    assert_eq!(paths.len(), 2000);
    assert_eq!(store.closure(&[paths[1999].clone()])?.len(), 2000);
    Ok(())
}

#[test]
fn added_paths_belong_to_the_store_owner() -> Result {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("bigtop/store");
    fs::create_dir_all(&root)?;
    let me = rustix::process::geteuid();
    // As root (CI), the store belongs to someone else and paths follow it;
    // otherwise nobody can give files away, and they stay ours.
    let expected = if me.is_root() {
        std::os::unix::fs::chown(&root, Some(4321), Some(4321))?;
        (4321, 4321)
    } else {
        (me.as_raw(), rustix::process::getegid().as_raw())
    };
    let store = Store::open_chroot(tmp.path())?;
    let src = tmp.path().join("src");
    fs::create_dir(&src)?;
    fs::write(src.join("f"), "x")?;
    let path = store.add_path("src", &src, &|_| true)?;
    let text = text(&store, "t", "text", &[])?;
    for p in [
        store.physical(&path),
        store.physical(&path).join("f"),
        store.physical(&text),
    ] {
        let m = fs::symlink_metadata(&p)?;
        assert_eq!((m.uid(), m.gid()), expected, "{}", p.display());
    }
    Ok(())
}

/// `<store>/A/../B` names B: the parser once took the first component
/// after the store dir, so commands acted on A.
#[test]
fn user_paths_apply_dot_and_dotdot_before_naming_a_store_path() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let a = text(&store, "a", "a", &[])?;
    let b = text(&store, "b", "b", &[])?;
    let root = store.root().to_str().ok_or("path")?.to_owned();
    let parse = |s: &str| store.parse_user_path(s).map_err(|e| e.to_string());
    for (input, expected) in [
        (format!("/bigtop/store/{a}/../{b}"), &b),
        (format!("{root}/{a}/../{b}"), &b),
        (format!("{root}/{a}/bin/../../{b}/x"), &b),
        (format!("/bigtop/store/{a}/../../store/{b}"), &b),
        (format!("/bigtop/store/./{a}"), &a),
        (format!("/bigtop//store//{a}//"), &a),
        (format!("{root}/{a}/bin/tool"), &a),
        (format!("{a}/"), &a),
        (b.to_string(), &b),
    ] {
        assert_eq!(parse(&input).as_ref(), Ok(expected), "{input}");
    }
    for input in [
        format!("/bigtop/store/{a}/.."),
        format!("{root}/{a}/../.."),
        format!("/bigtop/store/{a}/../../{a}"),
        format!("{root}/../store2/{a}"),
    ] {
        let err = parse(&input).expect_err(&input);
        assert!(err.contains(&format!("`{input}`")), "{err}");
    }
    Ok(())
}

/// A chroot store's out-link points at the logical path, which is not on
/// the host: resolving a user's path maps it through the store instead.
#[test]
fn resolving_a_user_path_maps_a_symlink_into_the_store() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path().join("s"))?;
    let a = text(&store, "a", "a", &[])?;
    let b = text(&store, "b", "b", &[])?;
    let link = |name: &str, target: String| -> Result<String> {
        let at = tmp.path().join(name);
        std::os::unix::fs::symlink(target, &at)?;
        Ok(at.to_str().ok_or("path")?.to_owned())
    };
    let logical = link("result", format!("/bigtop/store/{a}"))?;
    let physical = link(
        "physical",
        store.physical(&b).to_str().ok_or("path")?.into(),
    )?;
    let chain = link("chain", "result".into())?;
    let outside = link("outside", "/etc".into())?;
    let resolve = |s: &str| store.resolve_user_path(s).map_err(|e| e.to_string());
    assert_eq!(resolve(&logical), Ok(a.clone()));
    assert_eq!(resolve(&physical), Ok(b.clone()));
    assert_eq!(resolve(&chain), Ok(a.clone()));
    let err = resolve(&outside).unwrap_err();
    assert!(err.contains("leads to `/etc`"), "{err}");
    // The parser alone reads no links.
    assert!(store.parse_user_path(&logical).is_err());
    // A path in the store is the path it names, links in it unfollowed.
    std::fs::create_dir(tmp.path().join("tree"))?;
    std::os::unix::fs::symlink(format!("/bigtop/store/{b}"), tmp.path().join("tree/to-b"))?;
    let tree = store.add_path("tree", &tmp.path().join("tree"), &|_| true)?;
    let inside = store.physical(&tree).join("to-b");
    assert_eq!(resolve(inside.to_str().ok_or("path")?), Ok(tree));
    Ok(())
}
