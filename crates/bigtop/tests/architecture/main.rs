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
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .ok_or("no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    // Normal (non-dev) dependency edges by package name.
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"]
        .as_array()
        .ok_or("no resolve graph")?
    {
        let from = names[node["id"].as_str().ok_or("node id")?];
        for dep in node["deps"].as_array().ok_or("deps")? {
            let normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()));
            if normal {
                deps.entry(from)
                    .or_default()
                    .push(names[dep["pkg"].as_str().ok_or("dep id")?]);
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
