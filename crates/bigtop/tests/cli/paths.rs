//! How commands read the store paths a user gives them: each command acts
//! on exactly the path named, whatever its spelling.

use serde_json::Value;

use crate::{full, graph, json_paths, lines, Result, TestStore};

/// `<store>/A/../B` spells B: taking the first component after the store
/// dir acted on A instead, so `store delete` deleted a path nobody named.
#[test]
fn dotdot_in_a_path_names_the_path_it_leads_to() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = TestStore::new(tmp.path(), "s");
    let g = graph(&store)?;
    let physical_dir = store.dir.join("bigtop/store");
    let physical = physical_dir.to_str().ok_or("path")?;

    // Logical and physical spellings, with `..`, `.` and doubled slashes.
    let info = |input: &str| -> Result<String> {
        let json: Value =
            serde_json::from_str(&store.ok(&["store", "path-info", "--json", input])?)?;
        Ok(json[0]["path"].as_str().ok_or("path")?.to_owned())
    };
    assert_eq!(
        info(&format!("/bigtop/store/{}/../{}", g.lib, g.tool))?,
        g.tool.to_string()
    );
    assert_eq!(
        info(&format!("{physical}/{}/../{}", g.lib, g.tool))?,
        g.tool.to_string()
    );
    assert_eq!(
        info(&format!(
            "/bigtop/store/{}/x/../../../store/./{}",
            g.lib, g.tool
        ))?,
        g.tool.to_string()
    );
    assert_eq!(
        info(&format!("{physical}//./{}/", g.mid))?,
        g.mid.to_string()
    );
    // A file inside a store path still names that path.
    assert_eq!(
        info(&format!("/bigtop/store/{}/bin/x", g.app))?,
        g.app.to_string()
    );

    let input = format!("/bigtop/store/{}/../{}", g.app, g.tool);
    let mut closure = [full(&g.tool), full(&g.lib)];
    closure.sort();
    assert_eq!(lines(&store.ok(&["store", "requisites", &input])?), closure);

    // The store dir itself, or a path that leaves it, is no store path.
    for input in [
        format!("/bigtop/store/{}/..", g.other),
        format!("{physical}/{}/../../store", g.other),
        format!("/bigtop/store/{}/../../{}", g.other, g.other),
    ] {
        let (_, err) = store.fails(&["store", "delete", &input])?;
        assert!(
            err.contains(&format!("`{input}` is not a store path")),
            "{err}"
        );
    }
    assert!(store.valid(&g.other)? && store.physical(&g.other).exists());

    // Deletes app, the path named, and leaves other alone.
    let input = format!("{physical}/{}/../{}", g.other, g.app);
    let json: Value = serde_json::from_str(&store.ok(&["store", "delete", "--json", &input])?)?;
    assert_eq!(json_paths(&json["deleted"])?, [g.app.to_string()]);
    assert!(!store.valid(&g.app)? && !store.physical(&g.app).exists());
    assert!(store.valid(&g.other)? && store.physical(&g.other).exists());
    Ok(())
}
