//! Sources: filtered trees, named by what the filters keep.

use std::fs;
use std::path::Path;

use bigtop_eval::drv::{Drv, DrvBuilder, Platform};
use bigtop_eval::set::PackageSet;
use bigtop_eval::source::{Kind, SourceBuilder};
use bigtop_eval::text;

use crate::TestResult;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// `app` builds from the source, `bundle` from `app`, `docs` from neither.
fn set(root: &Path) -> PackageSet {
    let root = root.to_owned();
    PackageSet::new(Platform::default())
        .add("app", move |a| {
            let src = SourceBuilder::new(root.join("app"))
                .gitignore()
                .build(a.platform())?;
            DrvBuilder::new("app")
                .builder("/bin/sh")
                .arg("-c")
                .arg(text!("cp -r {} $out", src))
                .build(a.platform())
        })
        .add("bundle", |a| {
            let app = a.get("app")?;
            DrvBuilder::new("bundle")
                .builder("/bin/sh")
                .arg("-c")
                .arg(text!("ln -s {} $out", app))
                .build(a.platform())
        })
        .add("docs", |a| {
            DrvBuilder::new("docs")
                .builder("/bin/sh")
                .build(a.platform())
        })
}

fn all(set: &PackageSet) -> Vec<(String, Drv)> {
    set.eval()
        .all()
        .into_iter()
        .map(|(n, d)| (n, d.unwrap()))
        .collect()
}

fn changed(before: &[(String, Drv)], after: &[(String, Drv)]) -> Vec<String> {
    before
        .iter()
        .zip(after)
        .filter(|((_, a), (_, b))| a != b)
        .map(|((n, _), _)| n.clone())
        .collect()
}

#[test]
fn touching_an_ignored_file_changes_nothing_and_a_tracked_one_its_dependents() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let repo = tmp.path();
    fs::create_dir(repo.join(".git"))?;
    write(repo, ".gitignore", "*.o\n");
    write(repo, "app/.gitignore", "build/\n!keep.o\n");
    write(repo, "app/main.c", "int main() { return 0; }\n");
    write(repo, "app/keep.o", "whitelisted again below\n");
    write(repo, "app/build/main.o", "object\n");
    write(repo, "app/util.o", "object\n");
    write(repo, ".git/HEAD", "ref: refs/heads/main\n");
    let whole = || {
        SourceBuilder::new(repo)
            .name("repo")
            .gitignore()
            .build(&Platform::default())
    };
    let whole_before = whole()?;
    let before = all(&set(repo));

    // Ignored: by the repository's .gitignore, by the app's, and .git.
    write(repo, "app/util.o", "rebuilt\n");
    write(repo, "app/build/main.o", "rebuilt\n");
    write(repo, "app/build/new.o", "new\n");
    write(repo, ".git/HEAD", "ref: refs/heads/other\n");
    assert_eq!(changed(&before, &all(&set(repo))), Vec::<String>::new());
    assert_eq!(whole()?, whole_before);

    // Tracked: the whitelisted object, then the C file.
    write(repo, "app/keep.o", "changed\n");
    let after_keep = all(&set(repo));
    assert_eq!(changed(&before, &after_keep), ["app", "bundle"]);
    write(repo, "app/main.c", "int main() { return 1; }\n");
    assert_eq!(changed(&after_keep, &all(&set(repo))), ["app", "bundle"]);
    Ok(())
}

#[test]
fn include_exclude_and_predicates_select_what_is_hashed() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("src");
    write(&root, "a.c", "a");
    write(&root, "lib/b.c", "b");
    write(&root, "lib/b.h", "h");
    write(&root, "docs/readme.md", "r");
    let p = Platform::default();
    let only_c = || SourceBuilder::new(&root).include("**/*.c").include("*.c");
    let first = only_c().build(&p)?;
    write(&root, "docs/readme.md", "changed");
    write(&root, "lib/b.h", "changed");
    assert_eq!(only_c().build(&p)?, first);
    write(&root, "lib/b.c", "changed");
    assert_ne!(only_c().build(&p)?, first);

    let no_docs = || SourceBuilder::new(&root).exclude("docs");
    let first = no_docs().build(&p)?;
    write(&root, "docs/new.md", "n");
    assert_eq!(no_docs().build(&p)?, first);

    let small = || {
        SourceBuilder::new(&root).filter(|rel, kind| {
            rel.starts_with("lib") || kind == Kind::Directory || rel == Path::new("a.c")
        })
    };
    let first = small().build(&p)?;
    write(&root, "docs/readme.md", "again");
    assert_eq!(small().build(&p)?, first);
    Ok(())
}

#[test]
fn a_source_is_named_like_the_store_names_an_added_tree() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("hello");
    write(&root, "hello.c", "int main(){}\n");
    let src = SourceBuilder::new(&root).build(&Platform::default())?;
    assert_eq!(src.path().name(), "hello");
    // Its NAR is what was hashed; the store checks it again on import.
    let mut nar = Vec::new();
    src.write_nar(&mut nar)?;
    assert_eq!(nar.len() as u64, src.nar_size());
    assert_eq!(
        bigtop_eval::core::Hash::digest(bigtop_eval::core::HashAlgo::Blake3, &nar),
        *src.nar_hash()
    );
    // An edit after evaluation is caught, not imported under the old name.
    write(&root, "hello.c", "edited\n");
    let err = src.write_nar(std::io::sink()).unwrap_err();
    assert!(err.to_string().contains("hello"), "{err}");
    let err = SourceBuilder::new(tmp.path().join("missing"))
        .build(&Platform::default())
        .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    Ok(())
}
