//! The crate graph of DESIGN.md, checked: a dependency that crosses a
//! layer boundary fails the build's tests instead of creeping in.

use std::collections::BTreeMap;
use std::process::Command;

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
