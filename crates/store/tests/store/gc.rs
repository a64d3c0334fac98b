use std::collections::BTreeSet;

use bigtop_store::core::{StoreDir, StorePath};
use bigtop_store::{Error, GcOptions, Store};

use crate::{assert_consistent, deep_tree, force_remove, text, RemoveOnDrop, Result};

#[test]
fn collects_what_no_root_keeps_alive() -> Result {
    let tmp = tempfile::tempdir()?;
    let (lib, app, dead, dead_dep, indirect);
    {
        let store = Store::open_chroot(tmp.path())?;
        lib = text(&store, "lib", "lib", &[])?;
        app = text(&store, "app", "app", &[&lib])?;
        dead_dep = text(&store, "dead-dep", "x", &[])?;
        dead = text(&store, "dead", "y", &[&dead_dep])?;
        indirect = text(&store, "indirect", "z", &[])?;
        store.add_root("app", &app)?;
        store.add_indirect_root(&tmp.path().join("result"), &indirect)?;
    }
    let store = Store::open_chroot(tmp.path())?;
    let dry = store.collect_garbage(&GcOptions {
        dry_run: true,
        ..Default::default()
    })?;
    assert_eq!(dry.deleted, {
        let mut v = vec![dead.clone(), dead_dep.clone()];
        v.sort();
        v
    });
    assert!(store.is_valid(&dead)?, "a dry run deletes nothing");

    let report = store.collect_garbage(&GcOptions::default())?;
    assert_eq!(report.deleted, dry.deleted);
    assert!(report.freed_bytes > 0);
    for p in [&dead, &dead_dep] {
        assert!(!store.is_valid(p)?);
        assert!(!store.physical(p).exists());
    }
    for p in [&lib, &app, &indirect] {
        assert!(store.is_valid(p)?, "{p} is live");
    }
    // The indirect root dies with its link.
    std::fs::remove_file(tmp.path().join("result"))?;
    let report = store.collect_garbage(&GcOptions::default())?;
    assert_eq!(report.deleted, vec![indirect.clone()]);
    // Dropping the direct root frees the whole closure.
    store.remove_root("app")?;
    let report = store.collect_garbage(&GcOptions::default())?;
    assert_eq!(
        report.deleted.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&app, &lib])
    );
    assert!(store.all_valid_paths()?.is_empty());
    assert_consistent(&store)
}

#[test]
fn temporary_roots_live_as_long_as_their_process_handle() -> Result {
    let tmp = tempfile::tempdir()?;
    let adder = Store::open_chroot(tmp.path())?;
    let fresh = text(&adder, "fresh", "just added", &[])?;
    let collector = Store::open_chroot(tmp.path())?;
    assert!(collector
        .collect_garbage(&GcOptions::default())?
        .deleted
        .is_empty());
    assert!(matches!(
        collector.delete_paths([&fresh]),
        Err(Error::StillAlive { .. })
    ));
    drop(adder);
    assert_eq!(
        collector.collect_garbage(&GcOptions::default())?.deleted,
        vec![fresh]
    );
    Ok(())
}

#[test]
fn max_freed_stops_early() -> Result {
    let tmp = tempfile::tempdir()?;
    {
        let store = Store::open_chroot(tmp.path())?;
        for i in 0..20 {
            text(&store, &format!("g{i}"), &"x".repeat(5000), &[])?;
        }
    }
    let store = Store::open_chroot(tmp.path())?;
    let report = store.collect_garbage(&GcOptions {
        max_freed: Some(1),
        ..Default::default()
    })?;
    assert!(
        !report.deleted.is_empty() && report.deleted.len() <= 8,
        "{}",
        report.deleted.len()
    );
    Ok(())
}

#[test]
fn deleting_given_paths_refuses_live_ones() -> Result {
    let tmp = tempfile::tempdir()?;
    let (lib, app, rooted);
    {
        let store = Store::open_chroot(tmp.path())?;
        lib = text(&store, "lib", "lib", &[])?;
        app = text(&store, "app", "app", &[&lib])?;
        rooted = text(&store, "rooted", "r", &[])?;
        store.add_root("r", &rooted)?;
    }
    let store = Store::open_chroot(tmp.path())?;
    let err = store.delete_paths([&lib]).unwrap_err();
    assert!(err.to_string().contains(&app.to_string()), "{err}");
    let err = store.delete_paths([&rooted]).unwrap_err();
    assert!(err.to_string().contains("root"), "{err}");
    assert!(store.is_valid(&lib)? && store.is_valid(&rooted)?);
    // A path together with its only referrer goes.
    let report = store.delete_paths([&lib, &app])?;
    assert_eq!(report.deleted.len(), 2);
    assert!(!store.is_valid(&lib)? && !store.physical(&lib).exists());
    assert_consistent(&store)
}

#[test]
fn verify_finds_and_repairs_damage() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let lib = text(&store, "lib", "lib", &[])?;
    let app = text(&store, "app", "app", &[&lib])?;
    let tampered = text(&store, "tampered", "original", &[])?;
    assert!(store.verify(Default::default())?.is_clean());

    let make_writable = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))
    };
    let lib_file = store.physical(&lib);
    std::fs::remove_file(&lib_file)?;
    let t = store.physical(&tampered);
    make_writable(&t)?;
    std::fs::write(&t, "changed!")?;
    std::fs::write(store.root().join("stray-file"), "not registered")?;

    let options = bigtop_store::VerifyOptions {
        check_contents: true,
        repair: false,
    };
    let report = store.verify(options)?;
    assert_eq!(report.missing, vec![lib.clone()]);
    assert_eq!(report.corrupt, vec![tampered.clone()]);
    assert_eq!(report.unregistered, vec!["stray-file".to_string()]);

    let report = store.verify(bigtop_store::VerifyOptions {
        check_contents: true,
        repair: true,
    })?;
    // The missing path's referrer goes with it: it would refer to nothing.
    let gone: BTreeSet<_> = report.unregistered_paths.iter().collect();
    assert_eq!(gone, BTreeSet::from([&lib, &app, &tampered]));
    assert!(store.verify(options)?.is_clean());
    assert_consistent(&store)
}

#[test]
fn a_self_referencing_path_is_collected() -> Result {
    use bigtop_store::core::{nar, HashAlgo};
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    std::fs::write(&tree, "refers to itself")?;
    let mut archive = Vec::new();
    nar::dump_path(&tree, &mut archive)?;
    let (hash, size) = nar::hash_path(&tree, HashAlgo::Blake3)?;
    let path = {
        let store = Store::open_chroot(tmp.path().join("s"))?;
        let path = store
            .store_dir()
            .make_source_path("selfref", &hash, [], true)?;
        let info =
            bigtop_store::PathInfo::new(path.clone(), hash, size, BTreeSet::from([path.clone()]));
        store.add_nar(info, &mut &archive[..])?;
        assert_eq!(store.references(&path)?, BTreeSet::from([path.clone()]));
        assert_eq!(store.referrers(&path)?, BTreeSet::from([path.clone()]));
        path
    };
    let store = Store::open_chroot(tmp.path().join("s"))?;
    assert_eq!(
        store.collect_garbage(&GcOptions::default())?.deleted,
        vec![path]
    );
    assert_consistent(&store)
}

/// Two paths that refer to each other (as two outputs of one build can),
/// both also referring to `also`.
fn referring_to_each_other(
    store: &Store,
    tmp: &std::path::Path,
    tag: &str,
    also: &[&StorePath],
) -> Result<(StorePath, StorePath)> {
    use bigtop_store::core::{nar, HashAlgo};
    let mut batch = store.batch();
    let mut made = Vec::new();
    let mut nars = Vec::new();
    for out in ["out", "dev"] {
        let f = tmp.join(format!("{tag}-{out}"));
        std::fs::write(&f, format!("{tag} {out}"))?;
        let mut archive = Vec::new();
        nar::dump_path(&f, &mut archive)?;
        let (hash, size) = nar::hash_path(&f, HashAlgo::Blake3)?;
        let path = store
            .store_dir()
            .make_source_path(&format!("{tag}-{out}"), &hash, [], false)?;
        made.push((path, hash, size));
        nars.push(archive);
    }
    for (i, (path, hash, size)) in made.iter().enumerate() {
        let mut refs: BTreeSet<StorePath> = also.iter().map(|p| (*p).clone()).collect();
        refs.insert(made[1 - i].0.clone());
        let info = bigtop_store::PathInfo::new(path.clone(), *hash, *size, refs);
        batch.add_nar(info, &mut &nars[i][..])?;
    }
    batch.commit()?;
    Ok((made[0].0.clone(), made[1].0.clone()))
}

#[test]
fn a_full_collection_takes_reference_cycles() -> Result {
    let tmp = tempfile::tempdir()?;
    let s = tmp.path().join("s");
    // Two outputs of one build that refer to each other, twice: one pair
    // rooted, one pair garbage.
    let mut pairs = Vec::new();
    {
        let store = Store::open_chroot(&s)?;
        for tag in ["kept", "dropped"] {
            pairs.push(referring_to_each_other(&store, tmp.path(), tag, &[])?);
        }
        store.add_root("kept", &pairs[0].0)?;
    }
    let store = Store::open_chroot(&s)?;
    // Neither path of a cycle is ever unreferenced: the usual pass leaves them.
    assert!(store
        .collect_garbage(&GcOptions::default())?
        .deleted
        .is_empty());
    let full = GcOptions {
        full: true,
        ..Default::default()
    };
    let dry = store.collect_garbage(&GcOptions {
        dry_run: true,
        ..full.clone()
    })?;
    let mut dropped = vec![pairs[1].0.clone(), pairs[1].1.clone()];
    dropped.sort();
    assert_eq!(dry.deleted, dropped);
    assert!(store.is_valid(&pairs[1].0)?);
    let report = store.collect_garbage(&full)?;
    assert_eq!(report.deleted, dropped);
    for p in [&pairs[0].0, &pairs[0].1] {
        assert!(store.is_valid(p)?, "{p} is rooted");
    }
    assert!(!store.physical(&pairs[1].0).exists());
    assert_consistent(&store)
}

#[test]
fn a_collection_removes_what_dead_processes_left_half_made() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let (made, kept) = leftovers_of_a_dead_and_a_live_handle(&store)?;
    let dry = store.collect_garbage(&GcOptions {
        dry_run: true,
        ..GcOptions::default()
    })?;
    assert_eq!(dry.freed_bytes, 0);
    assert!(made.iter().all(|d| d.exists()), "a dry run removes nothing");
    let report = store.collect_garbage(&GcOptions::default())?;
    assert!(report.freed_bytes > 0);
    for d in &made {
        assert!(!d.exists(), "{} is left", d.display());
    }
    for d in &kept {
        assert!(d.exists(), "{} of a live process was removed", d.display());
    }
    Ok(())
}

/// A full dry run listed what the first pass would delete and then, again,
/// everything unreachable, which includes it: 24 paths listed where the
/// real collection deleted 13.
#[test]
fn a_full_dry_run_lists_exactly_what_a_full_collection_deletes() -> Result {
    let tmp = tempfile::tempdir()?;
    let s = tmp.path().join("s");
    let expected: BTreeSet<StorePath>;
    let kept: BTreeSet<StorePath>;
    {
        let store = Store::open_chroot(&s)?;
        let lib = text(&store, "lib", "lib", &[])?;
        let app = text(&store, "app", "app", &[&lib])?;
        store.add_root("app", &app)?;
        // Garbage the first pass takes: a chain, and a path referring to a
        // live one.
        let dead_dep = text(&store, "dead-dep", "x", &[])?;
        let dead = text(&store, "dead", "y", &[&dead_dep])?;
        let orphan = text(&store, "orphan", "o", &[&lib])?;
        // A garbage cycle that keeps a path referred to; a garbage path
        // referring to a cycle; a rooted cycle.
        let under = text(&store, "under-cycle", "u", &[])?;
        let (c1, c2) = referring_to_each_other(&store, tmp.path(), "c", &[&under])?;
        let (d1, d2) = referring_to_each_other(&store, tmp.path(), "d", &[])?;
        let over = text(&store, "over-cycle", "v", &[&d1])?;
        let (r1, r2) = referring_to_each_other(&store, tmp.path(), "r", &[&lib])?;
        store.add_root("r", &r2)?;
        expected = [dead_dep, dead, orphan, under, c1, c2, d1, d2, over]
            .into_iter()
            .collect();
        kept = [lib, app, r1, r2].into_iter().collect();
    }
    let store = Store::open_chroot(&s)?;
    let full = GcOptions {
        full: true,
        ..Default::default()
    };
    let dry = store.collect_garbage(&GcOptions {
        dry_run: true,
        ..full.clone()
    })?;
    let listed: BTreeSet<StorePath> = dry.deleted.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        dry.deleted.len(),
        "listed twice: {:?}",
        dry.deleted
    );
    assert_eq!(listed, expected);
    let nar_sizes = listed
        .iter()
        .map(|p| Ok(store.path_info(p)?.ok_or("not valid")?.nar_size))
        .sum::<Result<u64>>()?;
    assert_eq!(dry.freed_bytes, nar_sizes, "counted twice");
    assert!(listed.iter().all(|p| store.physical(p).exists()));

    let report = store.collect_garbage(&full)?;
    assert_eq!(report.deleted, dry.deleted);
    assert_eq!(store.all_valid_paths()?, kept);
    assert_consistent(&store)
}

/// A `result` link made inside the store dir was an entry the store does
/// not know (`verify` reported it); the API refuses it, however spelled.
#[test]
fn an_indirect_root_inside_the_store_dir_is_refused() -> Result {
    let tmp = tempfile::tempdir()?;
    // A logical dir of its own: were the check to fail, the link would be
    // made there, not in the host's `/bigtop/store`.
    let logical = tmp.path().join("logical/store");
    let store = Store::builder()
        .store_dir(StoreDir::new(logical.to_str().ok_or("path")?)?)
        .chroot(tmp.path().join("s"))
        .open()?;
    std::fs::create_dir_all(&logical)?;
    let kept = text(&store, "kept", "k", &[])?;
    std::os::unix::fs::symlink(store.root(), tmp.path().join("store-link"))?;
    for link in [
        store.root().join("evil"),
        store.root().join(kept.to_string()).join("evil"),
        store.root().join("../store/evil"),
        tmp.path().join("store-link/evil"),
        logical.join("evil"),
    ] {
        let err = store.add_indirect_root(&link, &kept).unwrap_err();
        assert!(matches!(err, Error::RootInStore { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("`{}`", link.display())),
            "{err}"
        );
    }
    assert!(store.verify(Default::default())?.is_clean());
    assert_eq!(std::fs::read_dir(&logical)?.count(), 0);
    store.add_indirect_root(&tmp.path().join("result"), &kept)?;
    assert_eq!(store.roots()?.len(), 1);
    Ok(())
}

/// Regression: verify reported what interrupted adds and builds leave
/// behind (staged trees, sandbox roots, build dirs of processes that are
/// gone) as unregistered entries and called the store broken, though
/// nothing registered was damaged and the next collection removes them
/// anyway. They are garbage: verify removes them and the store is clean.
#[test]
fn verify_removes_what_dead_processes_left_and_calls_the_store_clean() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let lib = text(&store, "lib", "lib", &[])?;
    let (made, kept) = leftovers_of_a_dead_and_a_live_handle(&store)?;
    // Not verify's to repair: the collector removes them as well.
    let report = store.verify(Default::default())?;
    assert!(report.is_clean(), "{report:?}");
    assert!(report.unregistered.is_empty(), "{report:?}");
    let mut expected = made.to_vec();
    expected.sort();
    assert_eq!(report.garbage, expected);
    assert!(report.garbage_bytes > 0);
    for d in &made {
        assert!(!d.exists(), "{} is left", d.display());
    }
    for d in &kept {
        assert!(d.exists(), "{} of a live process was removed", d.display());
    }
    assert!(store.is_valid(&lib)? && store.physical(&lib).exists());
    Ok(())
}

/// Issue 13: a builder can nest directories past `PATH_MAX`. Such trees
/// were removed by paths, which failed (`File name too long`): what a
/// dead process left of one, a stray one, and a registered one that
/// became garbage stayed in the store for good, and `verify --repair`
/// failed. 2,000 levels of `dd/` are a 6,000-byte path.
#[test]
fn verify_and_the_collector_remove_trees_deeper_than_path_max() -> Result {
    let tmp = tempfile::tempdir()?;
    let _cleanup = RemoveOnDrop(tmp.path().to_owned());
    let store = Store::open_chroot(tmp.path())?;
    let dead = only_handle_id(&store)? + 1_000;
    let root = store.root().to_owned();
    let half = root.join(format!(".tmp-{dead}-1-half"));
    let stray = root.join("stray-deep");
    deep_tree(&half, 2000)?;
    deep_tree(&stray, 2000)?;
    let report = store.verify(bigtop_store::VerifyOptions {
        check_contents: true,
        repair: true,
    })?;
    assert_eq!(report.garbage, vec![half.clone()]);
    assert_eq!(report.unregistered, vec!["stray-deep".to_string()]);
    assert!(!half.exists() && !stray.exists());
    assert!(store.verify(Default::default())?.is_clean());

    // Added (copied, canonicalized, hashed), checked, then collected.
    let src = tmp.path().join("src");
    deep_tree(&src, 2000)?;
    let deep = store.add_path("deep", &src, &|_| true);
    force_remove(&src);
    let deep = deep?;
    let checked = store.verify(bigtop_store::VerifyOptions {
        check_contents: true,
        repair: false,
    })?;
    assert!(checked.is_clean(), "{checked:?}");
    // A new handle: the one that added the path keeps it alive.
    drop(store);
    let store = Store::open_chroot(tmp.path())?;
    let chroot = root.join(format!(".chroot-{dead}-2-deep"));
    deep_tree(&chroot, 2000)?;
    let report = store.collect_garbage(&GcOptions::default())?;
    assert_eq!(report.deleted, vec![deep.clone()]);
    assert!(!store.physical(&deep).exists() && !chroot.exists());
    assert_consistent(&store)
}

/// The id of the only handle open on `store`: leftovers are named by the
/// id of the handle that made them, and ids are never handed out twice,
/// so a larger one is certainly dead.
fn only_handle_id(store: &Store) -> Result<u64> {
    let ids: Vec<u64> = std::fs::read_dir(store.state_dir().join("processes"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().parse()?))
        .collect::<Result<_>>()?;
    match ids[..] {
        [id] => Ok(id),
        _ => Err(format!("one handle open, found {ids:?}").into()),
    }
}

/// Staged trees, sandbox roots and build dirs, each with a file, named as
/// a dead handle's (`made`) and as `store`'s own (`kept`).
fn leftovers_of_a_dead_and_a_live_handle(
    store: &Store,
) -> Result<([std::path::PathBuf; 3], [std::path::PathBuf; 3])> {
    let live = only_handle_id(store)?;
    let dead = live + 1_000;
    let root = store.root().to_owned();
    let builds = store.state_dir().join("builds");
    std::fs::create_dir_all(&builds)?;
    let named = |id: u64, what: &str| {
        [
            root.join(format!(".tmp-{id}-1-{what}")),
            root.join(format!(".chroot-{id}-2-{what}")),
            builds.join(format!("{id}-3-{what}")),
        ]
    };
    let (made, kept) = (named(dead, "half"), named(live, "busy"));
    for dir in made.iter().chain(&kept) {
        std::fs::create_dir_all(dir.join("sub"))?;
        std::fs::write(dir.join("sub/file"), "x")?;
    }
    Ok((made, kept))
}
