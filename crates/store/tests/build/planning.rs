use std::collections::BTreeSet;

use bigtop_store::build::{builtin, Builder, JobKind, Reason};
use bigtop_store::core::derivation::{Derivation, OutputName};
use bigtop_store::core::StorePath;

use crate::{direct_store, fill, plain, sh, TestResult};

#[test]
fn a_plan_names_builds_reasons_and_the_critical_path() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let lib = sh(&store, "lib", "echo lib > $out", &[]);
    let lib_drv = store.add_derivation(&lib)?;
    let mut app = sh(&store, "app", "echo app > $out", &[]);
    app.input_drvs
        .insert(lib_drv.clone(), BTreeSet::from([OutputName::out()]));
    fill(&store, &mut app);
    let app_drv = store.add_derivation(&app)?;
    let mut top = sh(&store, "top", "echo top > $out", &[]);
    top.input_drvs
        .insert(app_drv.clone(), BTreeSet::from([OutputName::out()]));
    fill(&store, &mut top);
    let top_drv = store.add_derivation(&top)?;

    let plan = Builder::new(&store)
        .options(plain())
        .dry_run(&[(top_drv.clone(), BTreeSet::new())])?;
    assert_eq!(plan.build_count(), 3);
    assert_eq!(plan.fetch_count(), 0);
    let order: Vec<_> = plan.jobs.iter().map(|j| j.path().clone()).collect();
    assert_eq!(order, [lib_drv, app_drv, top_drv]);
    assert_eq!(
        plan.jobs[0].reason,
        Reason::OutputsMissing(vec![OutputName::out()])
    );
    assert_eq!(
        plan.jobs.iter().map(|j| j.priority).collect::<Vec<_>>(),
        [3, 2, 1]
    );
    assert_eq!(plan.critical_path, [0, 1, 2]);
    let text = plan.to_string();
    assert!(text.starts_with("3 derivations will be built:"), "{text}");
    assert!(text.contains("outputs out are not valid"), "{text}");
    assert!(text.contains("critical path: 3 jobs"), "{text}");
    Ok(())
}

/// A builtin derivation writing `text`, with `inputs`' outputs as inputs:
/// builds anywhere.
fn write(
    s: &bigtop_store::Store,
    name: &str,
    text: String,
    inputs: &[&bigtop_store::core::StorePath],
) -> Derivation {
    let mut d = Derivation::new(name, "builtin", builtin::WRITE_FILE);
    d.env.insert("text".into(), text);
    for i in inputs {
        d.input_drvs
            .insert((*i).clone(), BTreeSet::from([OutputName::out()]));
    }
    fill(s, &mut d);
    d
}

/// Outputs a substituter has are fetched, with their references first,
/// and the derivations that made them are not looked at.
#[test]
fn substitutable_outputs_are_fetched_instead_of_built() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    // A cache: another store with the same logical dir, elsewhere.
    let cache_dir = tempfile::tempdir()?;
    let cache = bigtop_store::Store::builder()
        .store_dir(store.store_dir().clone())
        .physical_root(cache_dir.path().join("store"))
        .state_dir(cache_dir.path().join("var"))
        .open()?;
    // Builtins build anywhere: make `data` and `lib` (referring to it) there.
    let data = write(&store, "data", "42".into(), &[]);
    let data_out = data
        .output_path(store.store_dir(), &OutputName::out())
        .unwrap();
    let data_drv = store.add_derivation(&data)?;
    let lib = write(
        &store,
        "lib",
        format!("uses {}", store.store_dir().display(&data_out)),
        &[&data_drv],
    );
    let lib_drv = store.add_derivation(&lib)?;
    for d in [&data, &lib] {
        let p = cache.add_derivation(d)?;
        Builder::new(&cache)
            .options(plain())
            .build(&[(p, BTreeSet::new())])?;
    }
    let lib_out = lib
        .output_path(store.store_dir(), &OutputName::out())
        .unwrap();
    let mut app = sh(&store, "app", "echo app > $out", &[]);
    app.input_drvs
        .insert(lib_drv.clone(), BTreeSet::from([OutputName::out()]));
    fill(&store, &mut app);
    let app_drv = store.add_derivation(&app)?;
    // Without the data's .drv file, planning must not need it.
    std::fs::remove_file(store.physical(&data_drv))?;

    let builder = Builder::new(&store).options(plain()).substituter(&cache);
    let targets = [(app_drv.clone(), BTreeSet::new())];
    let plan = builder.dry_run(&targets)?;
    assert_eq!((plan.build_count(), plan.fetch_count()), (1, 2));
    let fetched: BTreeSet<_> = plan
        .jobs
        .iter()
        .filter(|j| matches!(j.kind, JobKind::Fetch { .. }))
        .map(|j| j.path().clone())
        .collect();
    assert_eq!(fetched, BTreeSet::from([data_out.clone(), lib_out.clone()]));
    assert!(
        plan.to_string().contains("2 paths will be fetched"),
        "{plan}"
    );
    let report = builder.build(&targets)?;
    assert_eq!((report.built, report.fetched), (1, 2));
    assert_eq!(
        store.path_info(&lib_out)?.unwrap().nar_hash,
        cache.path_info(&lib_out)?.unwrap().nar_hash
    );
    assert_eq!(store.references(&lib_out)?, BTreeSet::from([data_out]));
    Ok(())
}

#[test]
fn planning_a_built_graph_reads_no_derivation() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let leaves: Vec<_> = (0..20)
        .map(|i| sh(&store, &format!("leaf{i}"), "echo > $out", &[]))
        .collect();
    let mut top = sh(&store, "top", "echo > $out", &[]);
    for l in &leaves {
        let p = store.add_derivation(l)?;
        top.input_drvs
            .insert(p, BTreeSet::from([OutputName::out()]));
    }
    fill(&store, &mut top);
    let top_drv = store.add_derivation(&top)?;
    let targets = [(top_drv.clone(), BTreeSet::new())];
    let report = Builder::new(&store).options(plain()).build(&targets)?;
    assert_eq!(report.built, 21);
    // Remove every input .drv file: an already-built graph must not need them.
    for l in &leaves {
        let p = l.drv_path(store.store_dir())?;
        let f = store.physical(&p);
        std::fs::remove_file(&f)?;
    }
    let plan = Builder::new(&store).options(plain()).dry_run(&targets)?;
    assert!(plan.is_empty());
    assert_eq!(plan.already_valid, vec![top_drv]);
    assert!(plan
        .jobs
        .iter()
        .all(|j| !matches!(j.kind, JobKind::Fetch { .. })));
    Ok(())
}

/// A derivation that needs an output its input does not have was accepted
/// when added and failed only when built; the store refuses it when it is
/// added, naming the derivation, the input and the output.
#[test]
fn an_input_output_that_does_not_exist_is_refused_when_added() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let lib = sh(&store, "lib", "echo lib > $out", &[]);
    let lib_drv = store.add_derivation(&lib)?;
    let needing = |outputs: &[&str]| -> Result<Derivation, Box<dyn std::error::Error>> {
        let mut app = sh(&store, "app", "echo app > $out", &[]);
        let wanted = outputs
            .iter()
            .map(|o| OutputName::new(o))
            .collect::<Result<_, _>>()?;
        app.input_drvs.insert(lib_drv.clone(), wanted);
        fill(&store, &mut app);
        Ok(app)
    };
    let bad = needing(&["out", "dev"])?;
    let bad_drv = bad.drv_path(store.store_dir())?;
    let expected = format!(
        "derivation `{bad_drv}` needs output `dev` of `{lib_drv}`, which has no such output (it has: `out`)"
    );
    // The input known to this handle, and read from its `.drv`.
    for store in [&store, &direct_store(tmp.path())] {
        let err = store.add_derivation(&bad).expect_err("refused");
        assert_eq!(err.to_string(), expected);
        assert!(!store.is_valid(&bad_drv)?);
    }
    assert!(store.add_derivation(&needing(&["out"])?).is_ok());

    // Within one batch, the input added before or after.
    let lib2 = sh(&store, "lib2", "echo lib2 > $out", &[]);
    let lib2_drv = lib2.drv_path(store.store_dir())?;
    let mut app2 = sh(&store, "app2", "echo app2 > $out", &[]);
    app2.input_drvs
        .insert(lib2_drv.clone(), BTreeSet::from([OutputName::new("doc")?]));
    // lib2 is not in the store: its hash comes from the value.
    let dir = store.store_dir().clone();
    let lib2_hash = lib2.hash_modulo(&dir, |_| None)?;
    app2.fill_output_paths(&dir, |p| (p == &lib2_drv).then_some(lib2_hash))?;
    let app2_drv = app2.drv_path(store.store_dir())?;
    let expected = format!(
        "derivation `{app2_drv}` needs output `doc` of `{lib2_drv}`, which has no such output (it has: `out`)"
    );
    let mut batch = store.batch();
    batch.add_derivation(&lib2)?;
    let err = batch.add_derivation(&app2).expect_err("refused");
    assert_eq!(err.to_string(), expected);
    let mut batch = store.batch();
    batch.add_derivation(&app2)?;
    batch.add_derivation(&lib2)?;
    let err = batch.commit().expect_err("refused");
    assert_eq!(err.to_string(), expected);
    assert!(!store.is_valid(&app2_drv)? && !store.is_valid(&lib2_drv)?);
    assert!(
        crate::strays(&store).is_empty(),
        "{:?}",
        crate::strays(&store)
    );
    Ok(())
}

/// A build machine's store where `data` and `lib` (which refers to
/// `data`'s output) are built.
struct BuiltPair {
    _dir: tempfile::TempDir,
    build_machine: bigtop_store::Store,
    data: Derivation,
    data_drv: StorePath,
    data_out: StorePath,
    lib: Derivation,
    lib_drv: StorePath,
    lib_out: StorePath,
}

fn built_pair() -> Result<BuiltPair, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let build_machine = direct_store(dir.path());
    let data = write(&build_machine, "data", "42".into(), &[]);
    let data_drv = build_machine.add_derivation(&data)?;
    let data_out = data
        .output_path(build_machine.store_dir(), &OutputName::out())
        .ok_or("data's output")?;
    let lib = write(
        &build_machine,
        "lib",
        format!("uses {}", build_machine.store_dir().display(&data_out)),
        &[&data_drv],
    );
    let lib_drv = build_machine.add_derivation(&lib)?;
    let lib_out = lib
        .output_path(build_machine.store_dir(), &OutputName::out())
        .ok_or("lib's output")?;
    Builder::new(&build_machine)
        .options(plain())
        .build(&[(lib_drv.clone(), BTreeSet::new())])?;
    Ok(BuiltPair {
        _dir: dir,
        build_machine,
        data,
        data_drv,
        data_out,
        lib,
        lib_drv,
        lib_out,
    })
}

/// A machine with `like`'s store dir (so the same paths) kept in `dir`,
/// knowing `drvs`.
fn machine_like(
    like: &bigtop_store::Store,
    dir: &std::path::Path,
    drvs: &[&Derivation],
) -> Result<bigtop_store::Store, Box<dyn std::error::Error>> {
    let s = bigtop_store::Store::builder()
        .store_dir(like.store_dir().clone())
        .physical_root(dir.join("store"))
        .state_dir(dir.join("var"))
        .open()?;
    for d in drvs {
        s.add_derivation(d)?;
    }
    Ok(s)
}

/// A signed binary cache as the substituter: what it has and vouches for
/// is fetched through its NARs; under a key not trusted, or when the
/// cache is gone, the same paths are built instead, and the plan says why.
#[test]
fn a_binary_cache_substitutes_what_it_signed_and_builds_are_the_fallback() -> TestResult {
    use bigtop_store::cache::{
        upload, CacheSubstituter, Compression, FetchOptions, FileCache, UploadOptions,
    };
    use bigtop_store::core::{SecretKey, TrustedKeys};
    let tmp = tempfile::tempdir()?;
    // A build machine builds `data` and `lib` (referring to it) and
    // uploads them.
    let BuiltPair {
        _dir: _builder_dir,
        build_machine,
        data,
        data_drv: _,
        data_out,
        lib,
        lib_drv,
        lib_out,
    } = built_pair()?;
    let key = SecretKey::generate("builds.example.org-1")?;
    let cache = FileCache::open(tmp.path().join("cache"))?;
    upload(
        &build_machine,
        &cache,
        std::slice::from_ref(&lib_out),
        &UploadOptions {
            compression: Compression::Zstd,
            key: Some(key.clone()),
        },
    )?;

    // A machine with the same store dir (the same paths) and the cache.
    let machine = |dir: &std::path::Path| machine_like(&build_machine, dir, &[&data, &lib]);
    let trusted: TrustedKeys = [key.public()].into_iter().collect();
    let here = tempfile::tempdir()?;
    let store = machine(here.path())?;
    let sub = CacheSubstituter::new(&store, cache.clone(), FetchOptions::trusting(trusted));
    let builder = Builder::new(&store).options(plain()).substituter(&sub);
    let targets = [(lib_drv.clone(), BTreeSet::new())];
    let plan = builder.dry_run(&targets)?;
    assert_eq!((plan.build_count(), plan.fetch_count()), (0, 2), "{plan}");
    let report = builder.build(&targets)?;
    assert_eq!((report.built, report.fetched), (0, 2));
    assert_eq!(
        std::fs::read(store.physical(&lib_out))?,
        std::fs::read(build_machine.physical(&lib_out))?
    );
    assert_eq!(
        store.references(&lib_out)?,
        BTreeSet::from([data_out.clone()])
    );

    // Under a key it does not trust, nothing is offered: both are built.
    let other = tempfile::tempdir()?;
    let store = machine(other.path())?;
    let untrusted: TrustedKeys = [SecretKey::generate("other-1")?.public()]
        .into_iter()
        .collect();
    let sub = CacheSubstituter::new(&store, cache.clone(), FetchOptions::trusting(untrusted));
    let report = Builder::new(&store)
        .options(plain())
        .substituter(&sub)
        .build(&targets)?;
    assert_eq!((report.built, report.fetched), (2, 0));

    // A cache that is not there offers nothing either, and says why.
    let gone = tempfile::tempdir()?;
    let store = machine(gone.path())?;
    let missing = FileCache::open(gone.path().join("no-cache"))?;
    let sub = CacheSubstituter::new(&store, missing, FetchOptions::default());
    let report = Builder::new(&store)
        .options(plain())
        .substituter(&sub)
        .build(&targets)?;
    assert_eq!((report.built, report.fetched), (2, 0));
    assert!(
        sub.unusable().is_some_and(|w| w.contains("nix-cache-info")),
        "{:?}",
        sub.unusable()
    );

    // A cache whose NAR of `lib` is corrupt: `data` is fetched, `lib`
    // tried three times, then built from its derivation, and the
    // observer told so.
    let text = std::fs::read_to_string(cache.dir().join(format!("{}.narinfo", lib_out.digest())))?;
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .ok_or("no URL")?;
    let nar = cache.dir().join(url);
    let mut bytes = std::fs::read(&nar)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&nar, bytes)?;
    let broken = tempfile::tempdir()?;
    let store = machine(broken.path())?;
    let sub = CacheSubstituter::new(
        &store,
        cache.clone(),
        FetchOptions::trusting([key.public()].into_iter().collect()),
    );
    #[derive(Default)]
    struct FellBack(std::sync::Mutex<Vec<bigtop_store::core::StorePath>>);
    impl bigtop_store::build::BuildObserver for FellBack {
        fn fell_back(&self, path: &bigtop_store::core::StorePath) {
            self.0.lock().unwrap().push(path.clone());
        }
    }
    let seen = FellBack::default();
    let report = Builder::new(&store)
        .options(plain())
        .substituter(&sub)
        .observer(&seen)
        .build(&targets)?;
    assert_eq!((report.built, report.fetched), (1, 1));
    assert_eq!(*seen.0.lock().unwrap(), std::slice::from_ref(&lib_out));
    assert_eq!(
        std::fs::read(store.physical(&lib_out))?,
        std::fs::read(build_machine.physical(&lib_out))?
    );
    Ok(())
}

/// A fetch that fails at one cache is tried at the next, before anything
/// is built; a cache that cannot vouch for a path's references (no
/// signatures required, a narinfo that leaves one out) has its contents
/// scanned, and the path is built when they name what it did not declare.
#[test]
fn a_failed_fetch_tries_the_next_cache_and_unvouched_references_are_scanned() -> TestResult {
    use bigtop_store::cache::{
        upload, CacheSubstituter, Compression, FetchOptions, FileCache, UploadOptions,
    };
    use bigtop_store::core::SecretKey;
    let tmp = tempfile::tempdir()?;
    let BuiltPair {
        _dir: _builder_dir,
        build_machine,
        data,
        data_drv,
        data_out,
        lib,
        lib_drv,
        lib_out,
    } = built_pair()?;
    let key = SecretKey::generate("builds.example.org-1")?;
    let options = UploadOptions {
        compression: Compression::Zstd,
        key: Some(key.clone()),
    };
    let broken = FileCache::open(tmp.path().join("broken"))?;
    let good = FileCache::open(tmp.path().join("good"))?;
    for cache in [&broken, &good] {
        upload(
            &build_machine,
            cache,
            std::slice::from_ref(&lib_out),
            &options,
        )?;
    }
    let narinfo = |c: &FileCache| c.dir().join(format!("{}.narinfo", lib_out.digest()));
    let text = std::fs::read_to_string(narinfo(&broken))?;
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .ok_or("no URL")?;
    let nar = broken.dir().join(url);
    let mut bytes = std::fs::read(&nar)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&nar, bytes)?;

    let machine = |dir: &std::path::Path| machine_like(&build_machine, dir, &[&data, &lib]);
    let targets = [(lib_drv.clone(), BTreeSet::new())];
    let trusted = FetchOptions::trusting([key.public()].into_iter().collect());

    // The broken cache first, then the good one: fetched from the good one.
    let here = tempfile::tempdir()?;
    let store = machine(here.path())?;
    let first = CacheSubstituter::new(&store, broken.clone(), trusted.clone());
    let second = CacheSubstituter::new(&store, good.clone(), trusted.clone());
    let report = Builder::new(&store)
        .options(plain())
        .substituter(&first)
        .substituter(&second)
        .build(&targets)?;
    assert_eq!((report.built, report.fetched), (0, 2));
    assert_eq!(
        std::fs::read(store.physical(&lib_out))?,
        std::fs::read(build_machine.physical(&lib_out))?
    );

    // Signatures not required, and `lib`'s narinfo leaves out `data`: the
    // scan finds it, the fetch fails, and `lib` is built instead (its
    // references then right).
    let text = std::fs::read_to_string(narinfo(&good))?
        .lines()
        .map(|l| {
            if l.starts_with("References:") {
                "References: ".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(narinfo(&good), text + "\n")?;
    let there = tempfile::tempdir()?;
    let store = machine(there.path())?;
    // `data` is here (the collector could take it): what `lib` names.
    Builder::new(&store)
        .options(plain())
        .build(&[(data_drv.clone(), BTreeSet::new())])?;
    let unsigned = FetchOptions {
        require_sigs: false,
        ..FetchOptions::default()
    };
    let sub = CacheSubstituter::new(&store, good.clone(), unsigned);
    let report = Builder::new(&store)
        .options(plain())
        .substituter(&sub)
        .build(&targets)?;
    assert_eq!((report.built, report.fetched), (1, 0));
    assert_eq!(store.references(&lib_out)?, BTreeSet::from([data_out]));
    Ok(())
}
