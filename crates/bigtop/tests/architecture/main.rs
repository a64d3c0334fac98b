//! The crate graph of DESIGN.md, checked: a dependency that crosses a
//! layer boundary fails the build's tests instead of creeping in. And the
//! module graph inside the crates: a new cycle between modules fails too.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

mod modules;

/// For each crate, the bigtop crates it must never depend on (directly or
/// through anything else).
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "bigtop-core",
        &["bigtop-store", "bigtop-eval", "bigtop-activate", "bigtop"],
    ),
    // Evaluation is pure: it computes paths without a store.
    (
        "bigtop-eval",
        &["bigtop-store", "bigtop-activate", "bigtop"],
    ),
    (
        "bigtop-store",
        &["bigtop-eval", "bigtop-activate", "bigtop"],
    ),
    ("bigtop-activate", &["bigtop-eval", "bigtop"]),
    // A proc-macro: it writes code that names bigtop-eval, and links
    // none of bigtop.
    (
        "bigtop-eval-derive",
        &[
            "bigtop-core",
            "bigtop-store",
            "bigtop-eval",
            "bigtop-activate",
            "bigtop",
        ],
    ),
];

#[test]
fn layers_depend_only_downwards() -> Result<(), Box<dyn std::error::Error>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // `--no-deps`: the workspace's own manifests are all the layers need,
    // and no registry is asked.
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    // Normal (non-dev, non-build) dependency edges by package name.
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for package in meta["packages"].as_array().ok_or("no packages")? {
        let from = package["name"].as_str().ok_or("package name")?;
        let entry = deps.entry(from).or_default();
        for dep in package["dependencies"].as_array().ok_or("dependencies")? {
            if dep["kind"].is_null() {
                entry.push(dep["name"].as_str().ok_or("dependency name")?);
            }
        }
    }
    for (krate, forbidden) in FORBIDDEN {
        let mut seen = vec![*krate];
        let mut todo = vec![*krate];
        while let Some(k) = todo.pop() {
            for d in deps.get(k).into_iter().flatten() {
                assert!(
                    !forbidden.contains(d),
                    "`{krate}` depends on `{d}` (through `{k}`), which DESIGN.md forbids"
                );
                if !seen.contains(d) {
                    seen.push(d);
                    todo.push(d);
                }
            }
        }
        assert!(
            seen.len() > 1 || *krate == "bigtop-core",
            "`{krate}` was not found in the workspace"
        );
    }
    Ok(())
}

/// The crates whose modules must read from the bottom up: all of them.
const ONE_WAY_CRATES: &[&str] = &["core", "store", "eval", "eval-derive", "activate", "bigtop"];

#[test]
fn modules_inside_crates_use_each_other_one_way() -> Result<(), Box<dyn std::error::Error>> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = Vec::new();
    for krate in ONE_WAY_CRATES {
        let graph = modules::read_crate(&crates.join(krate).join("src"))?;
        assert!(graph.files > 0, "no source file of `{krate}` was read");
        for cycle in graph.cycles() {
            report.push(format!("bigtop-{krate}: {cycle}"));
        }
    }
    assert!(
        report.is_empty(),
        "module cycles (DESIGN.md, \"Layers inside a crate\"):\n{}",
        report.join("\n")
    );
    Ok(())
}

/// Writes a crate's `src` from `(file, text)` pairs.
fn fake_crate(files: &[(&str, &str)]) -> Result<tempfile::TempDir, std::io::Error> {
    let dir = tempfile::tempdir()?;
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(dir)
}

fn cycle_texts(files: &[(&str, &str)]) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let dir = fake_crate(files)?;
    let graph = modules::read_crate(dir.path())?;
    Ok(graph.cycles().iter().map(ToString::to_string).collect())
}

#[test]
fn the_module_check_finds_cycles_through_every_kind_of_path(
) -> Result<(), Box<dyn std::error::Error>> {
    // The edge back is made by, in turn: a `use` group, a `super::` path
    // in a body, a name re-exported at the root, a macro's tokens, an
    // attribute's arguments.
    let backs = [
        ("use crate::{b::{self, X}};", "a -> b: `crate::b`"),
        ("fn f() { super::b::g(); }", "a -> b: `crate::b::g`"),
        ("fn f() -> crate::B { todo!() }", "a -> b: `crate::B`"),
        (
            "fn f() { println!(\"{}\", crate::b::N); }",
            "a -> b: `crate::b::N`",
        ),
        (
            "#[doc = \"x\"] #[derive(crate::b::Derive)] struct S;",
            "a -> b: `crate::b::Derive`",
        ),
    ];
    for (back, edge) in backs {
        let cycles = cycle_texts(&[
            ("lib.rs", "mod a; mod b; pub use b::B;"),
            ("a.rs", back),
            ("b/mod.rs", "mod inner; pub struct B;"),
            ("b/inner.rs", "fn f() { crate::a::f(); }"),
        ])?;
        assert_eq!(cycles.len(), 1, "{back}: {cycles:#?}");
        assert!(cycles[0].starts_with(r#"modules ["a", "b"] of the crate root"#));
        assert!(cycles[0].contains(edge), "{back}: {}", cycles[0]);
        assert!(
            cycles[0].contains("b -> a: `crate::a::f` at b/inner.rs:1"),
            "{}",
            cycles[0]
        );
    }

    // Siblings deeper in the tree are checked in their own scope.
    let cycles = cycle_texts(&[
        ("lib.rs", "mod m;"),
        ("m/mod.rs", "mod x; mod y;"),
        ("m/x.rs", "use super::y::Y; pub struct X;"),
        ("m/y.rs", "pub struct Y(crate::m::x::X);"),
    ])?;
    assert_eq!(cycles.len(), 1, "{cycles:#?}");
    assert!(
        cycles[0].starts_with(r#"modules ["x", "y"] of `m`"#),
        "{}",
        cycles[0]
    );
    Ok(())
}

#[test]
fn the_module_check_allows_the_tree_itself_and_test_code() -> Result<(), Box<dyn std::error::Error>>
{
    let cycles = cycle_texts(&[
        // A parent uses its children and they use it back; a test module
        // sets up with a sibling; an inline module is a child like a file.
        (
            "lib.rs",
            "mod a; mod b; pub use a::A; pub struct Root; mod inline { use crate::Root; }",
        ),
        ("a.rs", "pub struct A(crate::Root); use crate::b::B;"),
        (
            "b.rs",
            "pub struct B; use super::inline; #[cfg(test)] mod tests { use crate::a::A; } \
             #[cfg(test)] fn helper() -> crate::A { todo!() }",
        ),
    ])?;
    assert!(cycles.is_empty(), "{cycles:#?}");
    Ok(())
}
