use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::content_address::ContentAddressMethod;

fn dir() -> StoreDir {
    StoreDir::default()
}

fn out() -> OutputName {
    OutputName::out()
}

fn name(s: &str) -> OutputName {
    OutputName::new(s).unwrap()
}

/// A tiny evaluator: derivations registered by `.drv` path, their hashes
/// modulo memoized, as bigtop-eval does it.
#[derive(Default)]
struct World {
    hashes: HashMap<StorePath, DrvHash>,
    drvs: HashMap<StorePath, Derivation>,
}

impl World {
    fn add(&mut self, mut drv: Derivation) -> (StorePath, Derivation) {
        let hashes = &self.hashes;
        let h = drv
            .fill_output_paths(&dir(), |p| hashes.get(p).copied())
            .unwrap();
        let path = drv.drv_path(&dir()).unwrap();
        self.hashes.insert(path.clone(), h);
        self.drvs.insert(path.clone(), drv.clone());
        (path, drv)
    }
}

fn fetch(url: &str) -> Derivation {
    let mut d = Derivation::new("source.tar.gz", "x86_64-linux", "builtin:fetchurl");
    d.env.insert("url".into(), url.into());
    let ca = ContentAddress::new(
        ContentAddressMethod::Flat,
        Hash::digest(HashAlgo::Sha256, b"tarball"),
    );
    d.outputs.insert(out(), DerivationOutput::Fixed(ca));
    d
}

fn package(name_: &str, inputs: &[(&StorePath, &str)]) -> Derivation {
    let mut d = Derivation::new(name_, "x86_64-linux", "/bin/sh");
    d.args = vec!["-c".into(), "build".into()];
    d.outputs.insert(out(), DerivationOutput::Deferred);
    for (p, o) in inputs {
        d.input_drvs
            .entry((*p).clone())
            .or_default()
            .insert(name(o));
    }
    d
}

#[test]
fn drv_text_snapshot() {
    let mut w = World::default();
    let (src, _) = w.add(fetch("https://example.org/hello-2.12.tar.gz"));
    let mut d = package("hello-2.12", &[(&src, "out")]);
    d.outputs.insert(name("dev"), DerivationOutput::Deferred);
    d.input_srcs.insert(
        dir()
            .make_text_path("builder.sh", &Hash::digest(HashAlgo::Blake3, b"make"), [])
            .unwrap(),
    );
    d.env
        .insert("script".into(), "echo \"hi\"\n\tdone\\ \u{1} é".into());
    d.env.insert("LANG".into(), "C.UTF-8".into());
    let (path, d) = w.add(d);
    insta::assert_snapshot!(format!("{path}\n\n{}", d.to_text(&dir())));
}

#[test]
fn same_derivation_same_paths() {
    let build = || {
        let mut w = World::default();
        let (src, _) = w.add(fetch("https://a.example/x.tar.gz"));
        w.add(package("hello", &[(&src, "out")]))
    };
    assert_eq!(build(), build());
    let (_, d) = build();
    assert!(matches!(
        d.outputs[&out()],
        DerivationOutput::InputAddressed(_)
    ));
}

#[test]
fn fetch_details_do_not_reach_dependents() {
    let mut w = World::default();
    let (a, fa) = w.add(fetch("https://a.example/x.tar.gz"));
    let (b, fb) = w.add(fetch("https://mirror.example/x.tar.gz"));
    assert_ne!(a, b, "different fetchers are different .drv files");
    assert_eq!(
        fa.output_path(&dir(), &out()),
        fb.output_path(&dir(), &out())
    );
    let (_, pa) = w.add(package("hello", &[(&a, "out")]));
    let (_, pb) = w.add(package("hello", &[(&b, "out")]));
    assert_eq!(
        pa.output_path(&dir(), &out()),
        pb.output_path(&dir(), &out())
    );
}

#[test]
fn input_changes_reach_exactly_their_dependents() {
    let mut w = World::default();
    let (lib1, _) = w.add(package("lib", &[]));
    let mut changed = package("lib", &[]);
    changed.args.push("--patched".into());
    let (lib2, _) = w.add(changed);
    let (_, app1) = w.add(package("app", &[(&lib1, "out")]));
    let (_, app2) = w.add(package("app", &[(&lib2, "out")]));
    let (_, other1) = w.add(package("other", &[]));
    assert_ne!(
        app1.output_path(&dir(), &out()),
        app2.output_path(&dir(), &out())
    );
    assert_eq!(other1, w.add(package("other", &[])).1);
}

/// Regression: two input derivations with the same hash modulo (the same
/// build fed by fetchers of the same content from different URLs) used to
/// keep only one of their output sets, so derivations using different
/// outputs of them got the same paths.
#[test]
fn inputs_sharing_a_hash_modulo_keep_all_their_outputs() {
    let mut w = World::default();
    let (fa, _) = w.add(fetch("https://a.example/x.tar.gz"));
    let (fb, _) = w.add(fetch("https://b.example/x.tar.gz"));
    let two_outputs = |src: &StorePath| {
        let mut d = package("x", &[(src, "out")]);
        d.outputs.insert(name("dev"), DerivationOutput::Deferred);
        d
    };
    let (x, _) = w.add(two_outputs(&fa));
    let (x2, _) = w.add(two_outputs(&fb));
    assert_ne!(x, x2);
    assert_eq!(w.hashes[&x], w.hashes[&x2]);
    let (_, d1) = w.add(package("app", &[(&x, "dev"), (&x2, "out")]));
    let (_, d2) = w.add(package("app", &[(&x2, "out")]));
    assert_ne!(
        d1.output_path(&dir(), &out()),
        d2.output_path(&dir(), &out())
    );
}

#[test]
fn resolve_leaves_input_addressed_derivations_alone() {
    let mut w = World::default();
    let (lib, _) = w.add(package("lib", &[]));
    let (_, app) = w.add(package("app", &[(&lib, "out")]));
    let resolved = app.resolve(&dir(), |_, _| None).unwrap().unwrap();
    assert_eq!(resolved, app);
}

#[test]
fn store_dir_changes_paths() {
    let mut d = package("hello", &[]);
    let mut e = d.clone();
    d.fill_output_paths(&dir(), |_| None).unwrap();
    e.fill_output_paths(&StoreDir::new("/opt/store").unwrap(), |_| None)
        .unwrap();
    assert_ne!(d.outputs, e.outputs);
}

#[test]
fn output_names_and_paths() {
    let mut d = package("hello", &[]);
    d.outputs.insert(name("man"), DerivationOutput::Deferred);
    d.fill_output_paths(&dir(), |_| None).unwrap();
    assert_eq!(d.output_path(&dir(), &out()).unwrap().name(), "hello");
    assert_eq!(
        d.output_path(&dir(), &name("man")).unwrap().name(),
        "hello-man"
    );
    assert_eq!(d.output_path(&dir(), &name("doc")), None);
}

#[test]
fn floating_inputs_defer_dependents_until_resolved() {
    let mut w = World::default();
    let mut lib = package("lib", &[]);
    lib.outputs.insert(
        out(),
        DerivationOutput::Floating {
            method: ContentAddressMethod::Recursive,
            algo: HashAlgo::Blake3,
        },
    );
    let (lib_drv, lib) = w.add(lib);
    assert_eq!(lib.output_path(&dir(), &out()), None);
    let mut app = package("app", &[(&lib_drv, "out")]);
    app.env
        .insert("LIB".into(), upstream_placeholder(&lib_drv, &out()));
    let (app_drv, app) = w.add(app);
    assert_eq!(app.outputs[&out()], DerivationOutput::Deferred);
    assert!(matches!(w.hashes[&app_drv], DrvHash::Deferred(_)));
    // A dependent of a deferred derivation is deferred too.
    let (_, top) = w.add(package("top", &[(&app_drv, "out")]));
    assert_eq!(top.outputs[&out()], DerivationOutput::Deferred);

    let built = dir()
        .make_source_path(
            "lib",
            &Hash::digest(HashAlgo::Blake3, b"lib bytes"),
            [],
            false,
        )
        .unwrap();
    assert_eq!(app.resolve(&dir(), |_, _| None).unwrap(), None);
    let resolved = app
        .resolve(&dir(), |_, _| Some(built.clone()))
        .unwrap()
        .unwrap();
    assert!(resolved.input_drvs.is_empty());
    assert!(resolved.input_srcs.contains(&built));
    assert_eq!(resolved.env["LIB"], dir().full(&built));
    let path = resolved
        .output_path(&dir(), &out())
        .expect("resolved outputs are input-addressed");

    // Early cutoff: the input's derivation changed but rebuilt to the same
    // bytes, so the dependent resolves to the same path.
    let mut lib2 = w.drvs[&lib_drv].clone();
    lib2.args.push("--no-op-change".into());
    let (lib2_drv, _) = w.add(lib2);
    let mut app2 = package("app", &[(&lib2_drv, "out")]);
    app2.env
        .insert("LIB".into(), upstream_placeholder(&lib2_drv, &out()));
    let (_, app2) = w.add(app2);
    let resolved2 = app2
        .resolve(&dir(), |_, _| Some(built.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(resolved2.output_path(&dir(), &out()), Some(path));
}

#[test]
fn placeholders_are_substituted() {
    let mut d = package("p", &[]);
    let ph = placeholder(&out());
    d.args.push(format!("--prefix={ph}"));
    d.env.insert("prefix".into(), format!("{ph}/share"));
    d.substitute(&BTreeMap::from([(
        ph.clone(),
        "/bigtop/store/x-p".to_owned(),
    )]));
    assert_eq!(d.args.last().unwrap(), "--prefix=/bigtop/store/x-p");
    assert_eq!(d.env["prefix"], "/bigtop/store/x-p/share");
    assert_eq!(ph.len(), 53);
    assert_ne!(placeholder(&name("dev")), ph);
}

#[test]
fn validation_names_the_problem() {
    let check = |d: &Derivation, needle: &str| {
        let err = d.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err} should mention {needle}");
    };
    check(&Derivation::new("x", "s", "/bin/sh"), "no outputs");
    let mut d = package("x", &[]);
    d.env.insert("A=B".into(), "v".into());
    check(&d, "`A=B`");
    let mut d = package("x", &[]);
    d.args.push("a\0b".into());
    check(&d, "NUL");
    let mut d = fetch("u");
    d.outputs.insert(name("dev"), DerivationOutput::Deferred);
    check(&d, "exactly one output");
    let mut d = package("x", &[]);
    d.outputs.insert(
        name("dev"),
        DerivationOutput::Floating {
            method: ContentAddressMethod::Recursive,
            algo: HashAlgo::Blake3,
        },
    );
    check(&d, "floating");
    let d = package("bad name", &[]);
    assert!(matches!(d.validate(), Err(Error::BadName { .. })));
}

#[test]
fn tampered_output_paths_are_detected() {
    let mut w = World::default();
    let (_, mut d) = w.add(package("hello", &[]));
    d.verify_output_paths(&dir(), |_| None).unwrap();
    let other = w
        .add(package("evil", &[]))
        .1
        .output_path(&dir(), &out())
        .unwrap();
    d.outputs
        .insert(out(), DerivationOutput::InputAddressed(other));
    let err = d.verify_output_paths(&dir(), |_| None).unwrap_err();
    assert!(err.to_string().contains("output `out`"), "{err}");
}

#[test]
fn parse_rejects_non_canonical_and_malformed_text() {
    let mut w = World::default();
    let (src, _) = w.add(fetch("u"));
    let mut d = package("hello", &[(&src, "out")]);
    d.env.insert("A".into(), "1".into());
    d.env.insert("B".into(), "2".into());
    let (_, d) = w.add(d);
    let text = d.to_text(&dir());
    assert_eq!(Derivation::parse(&dir(), &text).unwrap(), d);

    let swapped = text.replace(
        "env \"A\" \"1\"\nenv \"B\" \"2\"\n",
        "env \"B\" \"2\"\nenv \"A\" \"1\"\n",
    );
    assert!(matches!(
        Derivation::parse(&dir(), &swapped),
        Err(ParseError::NotCanonical { .. })
    ));
    let spaced = text.replace("name \"hello\"", "name  \"hello\"");
    assert!(matches!(
        Derivation::parse(&dir(), &spaced),
        Err(ParseError::BadLine { line: 2, .. })
    ));
    let escaped = text.replace("\"hello\"", "\"hel\\u{6c}o\"");
    assert!(matches!(
        Derivation::parse(&dir(), &escaped),
        Err(ParseError::NotCanonical { .. })
    ));
    let bad_escape = text.replace("\"hello\"", "\"hel\\qlo\"");
    assert!(matches!(
        Derivation::parse(&dir(), &bad_escape),
        Err(ParseError::BadLine { .. })
    ));
    assert!(matches!(
        Derivation::parse(&dir(), text.trim_end()),
        Err(ParseError::BadLine { .. })
    ));
    assert!(matches!(
        Derivation::parse(&dir(), &text.replace("bigtop-derivation-1", "Derive(")),
        Err(ParseError::BadVersion { .. })
    ));
    let no_name = text.replace("name \"hello\"\n", "");
    assert_eq!(
        Derivation::parse(&dir(), &no_name),
        Err(ParseError::Missing { field: "name" })
    );
    let twice = text.replace("system", "name \"x\"\nsystem");
    assert!(matches!(
        Derivation::parse(&dir(), &twice),
        Err(ParseError::BadLine { line: 3, .. })
    ));
    let unknown = format!("{text}flavour \"x\"\n");
    let err = Derivation::parse(&dir(), &unknown).unwrap_err();
    assert!(
        err.to_string().contains("unknown keyword `flavour`"),
        "{err}"
    );
    let invalid = "bigtop-derivation-1\nname \"x\"\nsystem \"s\"\nbuilder \"/bin/sh\"\n";
    let err = Derivation::parse(&dir(), invalid).unwrap_err();
    assert!(
        matches!(&err, ParseError::Invalid { reason } if reason.contains("no outputs")),
        "{err}"
    );
    let foreign = text.replace("/bigtop/store/", "/nix/store/");
    assert!(matches!(
        Derivation::parse(&dir(), &foreign),
        Err(ParseError::BadLine { .. })
    ));
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,20}",
        any::<String>().prop_map(|s| s.replace('\0', ""))
    ]
}

fn arb_path() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), "[a-z][a-z0-9.-]{0,10}")
        .prop_map(|(d, n)| StorePath::new(crate::store_path::StorePathDigest(d), &n).unwrap())
}

fn arb_drv_path() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), "[a-z][a-z0-9-]{0,10}").prop_map(|(d, n)| {
        StorePath::new(crate::store_path::StorePathDigest(d), &format!("{n}.drv")).unwrap()
    })
}

fn arb_outputs() -> impl Strategy<Value = BTreeMap<OutputName, DerivationOutput>> {
    let names = || "[a-z]{1,5}".prop_map(|n| OutputName::new(&n).unwrap());
    let input_addressed = prop_oneof![
        arb_path().prop_map(DerivationOutput::InputAddressed),
        Just(DerivationOutput::Deferred)
    ];
    prop_oneof![
        proptest::collection::btree_map(names(), input_addressed, 1..3),
        (any::<[u8; 32]>(), 0..3usize).prop_map(|(b, m)| {
            let method = [
                ContentAddressMethod::Flat,
                ContentAddressMethod::Recursive,
                ContentAddressMethod::Text,
            ][m];
            let ca = ContentAddress::new(method, Hash::new(HashAlgo::Sha256, b));
            BTreeMap::from([(OutputName::out(), DerivationOutput::Fixed(ca))])
        }),
        proptest::collection::btree_set(names(), 1..3).prop_map(|names| {
            names
                .into_iter()
                .map(|n| {
                    let kind = DerivationOutput::Floating {
                        method: ContentAddressMethod::Recursive,
                        algo: HashAlgo::Blake3,
                    };
                    (n, kind)
                })
                .collect()
        }),
    ]
}

prop_compose! {
    fn arb_drv()(
        name in "[a-z][a-z0-9.+_-]{0,20}",
        system in arb_string(),
        builder in arb_string().prop_filter("non-empty", |b| !b.is_empty()),
        args in proptest::collection::vec(arb_string(), 0..4),
        env in proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,8}", arb_string(), 0..4),
        outputs in arb_outputs(),
        input_drvs in proptest::collection::btree_map(arb_drv_path(), proptest::collection::btree_set("[a-z]{1,4}".prop_map(|n| OutputName::new(&n).unwrap()), 1..3), 0..3),
        input_srcs in proptest::collection::btree_set(arb_path(), 0..3),
    ) -> Derivation {
        Derivation { name, system, builder, args, env, outputs, input_drvs, input_srcs }
    }
}

proptest! {
    #[test]
    fn text_round_trips(drv in arb_drv()) {
        let text = drv.to_text(&dir());
        prop_assert_eq!(Derivation::parse(&dir(), &text).unwrap(), drv.clone());
        // JSON, for `--json` output, round-trips too.
        let json = serde_json::to_string(&drv).unwrap();
        prop_assert_eq!(serde_json::from_str::<Derivation>(&json).unwrap(), drv);
    }

    #[test]
    fn masked_form_ignores_output_paths(drv in arb_drv(), other in arb_path()) {
        let mut a = drv.clone();
        let mut b = drv;
        for kind in a.outputs.values_mut() {
            if matches!(kind, DerivationOutput::InputAddressed(_)) {
                *kind = DerivationOutput::Deferred;
            }
        }
        for kind in b.outputs.values_mut() {
            if matches!(kind, DerivationOutput::Deferred) {
                *kind = DerivationOutput::InputAddressed(other.clone());
            }
        }
        let input = |_: &StorePath| Some(DrvHash::Known(Hash::digest(HashAlgo::Blake3, b"in")));
        if !a.is_fixed_output() {
            prop_assert_eq!(a.hash_modulo(&dir(), input).unwrap(), b.hash_modulo(&dir(), input).unwrap());
        }
    }
}
