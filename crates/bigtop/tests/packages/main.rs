//! Packages built for real: the host bootstrap, the package builder and
//! `realise`, on the C sources of `examples/packages/`, into a temp store
//! whose logical dir is its physical one (so built programs run here).

#[path = "../support/example.rs"]
mod example;
#[path = "../support/store.rs"]
mod support;

use std::error::Error;
use std::path::{Path, PathBuf};

use bigtop::eval::closure::BuildClosure;
use bigtop::eval::drv::{Drv, Platform};
use bigtop::eval::package::{OverrideAttrs, Package, Phase, Stdenv};
use bigtop::eval::source::SourceBuilder;
use bigtop::eval::text;
use bigtop::realise::RuntimeClosure;
use bigtop::store::build::{BuildOptions, Builder};
use bigtop::store::Store;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packages")
}

fn store(tmp: &Path) -> Result<(Store, Platform)> {
    support::direct(tmp)
}

fn greet_and_hello(stdenv: &Stdenv) -> Result<(Drv, Drv)> {
    let p = stdenv.platform();
    let greet = Package::new("greet")
        .version("1.0")
        .src(&SourceBuilder::new(examples().join("greet")).build(p)?)
        .build(stdenv)?;
    let hello = Package::new("hello")
        .version("1.0")
        .src(
            &SourceBuilder::new(examples().join("hello"))
                .gitignore()
                .build(p)?,
        )
        .build_input(&greet)
        .env("GREET", &greet)
        .build(stdenv)?;
    Ok((greet, hello))
}

fn builder(store: &Store) -> Builder<'_> {
    Builder::new(store).options(BuildOptions {
        max_jobs: 2,
        ..BuildOptions::default()
    })
}

#[test]
fn a_c_program_and_its_library_build_in_the_sandbox_and_run() -> Result {
    let tmp = tempfile::tempdir()?;
    let (store, platform) = store(tmp.path())?;
    let boot = bigtop::bootstrap::host(&platform)?;
    let (greet, hello) = greet_and_hello(&boot.stdenv)?;

    // Before building: the build closure holds the bootstrap's tools,
    // both packages and their source trees (and the builder script),
    // nothing else.
    let closure = BuildClosure::of([&hello]);
    assert_eq!(
        closure.render_names(),
        "bigtop-setup.sh\nbootstrap-tools\ngreet\ngreet-1.0\nhello\nhello-1.0\n"
    );
    assert!(closure.sources().any(|s| s == &boot.tools));
    closure.assert_excludes("openssl");
    // Regression: the compiler enters as an imported source, not a
    // derivation; closure checks used to look at derivations only and
    // passed, vacuously.
    assert!(closure.contains_named("bootstrap-tools"));
    let err = closure.check_excludes("bootstrap-tools").unwrap_err();
    assert!(
        err.contains("hello-1.0") && err.contains("bootstrap-tools"),
        "{err}"
    );
    let why = closure.why("bootstrap-tools").ok_or("the tools are in")?;
    assert_eq!(why.first().map(|n| n.name()), Some("hello-1.0"));
    assert_eq!(why.last().map(|n| n.path()), Some(boot.tools.path()));

    let built = bigtop::realise::realise(&store, &builder(&store), std::slice::from_ref(&hello))?;
    assert_eq!(built.report.built, 3);
    let exe = store.physical(&built.path(&hello.out())?).join("bin/hello");
    let out = std::process::Command::new(&exe).arg("tests").output()?;
    assert_eq!(
        String::from_utf8(out.stdout)?,
        "Hello, tests, from libgreet!\n"
    );

    // At run time it needs its library (the run path names it), not the
    // compiler that built it.
    let runtime = RuntimeClosure::of(&store, &[hello.out().path().clone()])?;
    assert_eq!(runtime.render_names(), "greet-1.0\nhello-1.0\n");
    runtime.assert_excludes("bootstrap-tools");
    assert!(runtime.contains_named("greet") && !runtime.contains_named("bootstrap-tools"));
    let why = runtime.why("greet").ok_or("greet is in")?;
    assert_eq!(
        why,
        [hello.out().path().clone(), greet.out().path().clone()]
    );
    let err = runtime.check_excludes("greet").unwrap_err();
    assert!(
        err.contains("greet-1.0") && err.contains("hello-1.0"),
        "{err}"
    );

    // Evaluated again, nothing to build.
    let again = bigtop::realise::realise(
        &store,
        &builder(&store),
        &[greet_and_hello(&boot.stdenv)?.1],
    )?;
    assert_eq!(again.report.built, 0);
    Ok(())
}

#[test]
fn phases_hooks_and_overrides_change_what_is_built() -> Result {
    let tmp = tempfile::tempdir()?;
    let (store, platform) = store(tmp.path())?;
    let boot = bigtop::bootstrap::host(&platform)?;
    let base = Package::new("phases")
        .version("1")
        .phase(Phase::Unpack, "")
        .pre(Phase::Build, "echo pre-build >> log")
        .phase(Phase::Build, "echo build >> log")
        .post(Phase::Build, "echo post-build >> log")
        .post(Phase::Build, "echo second-post >> log")
        .phase(Phase::Install, "mkdir -p $out && cp log $out/log")
        .outputs(["out", "doc"])
        .post(Phase::Install, "mkdir -p $doc && echo docs > $doc/README")
        .build(&boot.stdenv)?;
    let checked = base.override_attrs(|p| {
        p.version("2")
            .do_check(true)
            .phase(Phase::Check, "echo check >> log")
    })?;
    assert_eq!(checked.name(), "phases-2");
    let built =
        bigtop::realise::realise(&store, &builder(&store), &[base.clone(), checked.clone()])?;
    let read = |d: &Drv, o: &str, f: &str| -> Result<String> {
        let path = built.path(&d.output(o)?)?;
        Ok(std::fs::read_to_string(store.physical(&path).join(f))?)
    };
    assert_eq!(
        read(&base, "out", "log")?,
        "pre-build\nbuild\npost-build\nsecond-post\n"
    );
    assert_eq!(
        read(&checked, "out", "log")?,
        "pre-build\nbuild\npost-build\nsecond-post\ncheck\n"
    );
    assert_eq!(read(&base, "doc", "README")?, "docs\n");

    // A failing phase fails the build, naming it in the log.
    let broken = Package::new("broken")
        .phase(Phase::Unpack, "")
        .phase(Phase::Configure, text!("echo configuring; false"))
        .build(&boot.stdenv)?;
    let err = bigtop::realise::realise(&store, &builder(&store), &[broken])
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken"), "{err}");
    Ok(())
}

#[test]
fn a_fetched_tarball_is_a_source_and_an_unpinned_one_says_what_to_pin() -> Result {
    let tmp = tempfile::tempdir()?;
    let (store, platform) = store(tmp.path())?;
    let boot = bigtop::bootstrap::host(&platform)?;
    // A release tarball of the example's library, made with the host's tar.
    let release = tmp.path().join("release");
    std::fs::create_dir_all(release.join("greet-1.0"))?;
    for f in ["greet.c", "greet.h", "Makefile"] {
        std::fs::copy(
            examples().join("greet").join(f),
            release.join("greet-1.0").join(f),
        )?;
    }
    let status = std::process::Command::new("tar")
        .args(["-czf", "greet-1.0.tar.gz", "greet-1.0"])
        .current_dir(&release)
        .status()?;
    assert!(status.success());
    let url = format!("file://{}", release.join("greet-1.0.tar.gz").display());

    let unpinned = bigtop::eval::fetch::FetchUrl::tarball(&url).build(&platform)?;
    let err = bigtop::realise::realise(&store, &builder(&store), &[unpinned])
        .unwrap_err()
        .to_string();
    let got = err
        .split("got: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| format!("no `got:` in: {err}"))?
        .to_owned();
    assert!(err.contains("no hash pinned yet"), "{err}");

    // Pinned with what the failure printed: fetched, unpacked, built from.
    let src = bigtop::eval::fetch::FetchUrl::tarball(&url)
        .sha256(&got)?
        .build(&platform)?;
    let greet = Package::new("greet")
        .version("1.0")
        .src(&src)
        .build(&boot.stdenv)?;
    let built = bigtop::realise::realise(&store, &builder(&store), std::slice::from_ref(&greet))?;
    let lib = store
        .physical(&built.path(&greet.out())?)
        .join("lib/libgreet.so");
    assert!(lib.is_file(), "{}", lib.display());
    Ok(())
}

#[test]
fn a_program_built_into_a_chroot_store_runs_in_a_sandbox_of_its_closure() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = Store::open_chroot(tmp.path())?;
    let p = Platform::default();
    let greeting = bigtop::eval::trivial::write_text(&p, "greeting", "hello from the store\n")?;
    let script = bigtop::eval::trivial::write_script(
        &p,
        "greet",
        "/bin/sh",
        text!(
            "while IFS= read -r l; do echo \"$l ($1)\"; done < {}\n",
            greeting
        ),
    )?;
    let built = bigtop::realise::realise(&store, &builder(&store), std::slice::from_ref(&script))?;
    let path = built.path(&script.out())?;
    // Its paths are /bigtop/store/…: only a sandbox shows them there.
    assert!(store.store_dir().full(&path).starts_with("/bigtop/store/"));
    let out = bigtop::realise::run(&store, &path, "", &["arg"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout)?,
        "hello from the store (arg)\n"
    );
    // A program that is not there: the error names it and keeps the
    // sandbox's reason as its cause.
    let err = match bigtop::realise::run(&store, &path, "bin/nope", &[]) {
        Err(e) => e,
        Ok(out) => return Err(format!("ran a missing program: {:?}", out.status).into()),
    };
    let missing = format!("{}/bin/nope", store.store_dir().full(&path));
    assert_eq!(
        err.to_string(),
        format!("cannot run `{missing}` in the sandbox")
    );
    let cause = std::error::Error::source(&err).ok_or("no cause")?;
    assert_eq!(
        cause.to_string(),
        format!("cannot execute `{missing}` in the sandbox")
    );
    // `greet` is a file: the kernel says why below it.
    let why = cause.source().ok_or("no reason")?.to_string();
    assert!(why.contains("Not a directory"), "{why}");
    // Nothing of either run is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(store.root())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

/// The example itself, twice: `cargo test` builds examples beside the
/// test binaries.
#[test]
fn the_packages_example_builds_runs_and_then_builds_nothing() -> Result {
    let exe = example::example("packages")?;
    let tmp = tempfile::tempdir()?;
    let run = || example::run(&exe, &[tmp.path()]);
    let first = run()?;
    assert!(first.contains("built 6 derivations"), "{first}");
    assert!(
        first.contains("in the sandbox: Hello, sandbox, from libgreet!"),
        "{first}"
    );
    assert!(
        first.ends_with("Hello, platform team, from libgreet!\n"),
        "{first}"
    );
    let second = run()?;
    assert!(second.contains("built 0 derivations"), "{second}");
    Ok(())
}

/// Regression: `make_flag("EXTRA_CFLAGS=-DA -Werror=x")` reached make as
/// two words (`$makeFlags` was split at spaces), the second taken for a
/// make option. Each flag is one argument, for configure and make alike.
#[test]
fn a_flag_with_spaces_reaches_the_tool_as_one_argument() -> Result {
    let tmp = tempfile::tempdir()?;
    let (store, platform) = store(tmp.path())?;
    let boot = bigtop::bootstrap::host(&platform)?;
    let src = tmp.path().join("src");
    std::fs::create_dir(&src)?;
    std::fs::write(
        src.join("configure"),
        "#!/bin/sh\nfor a in \"$@\"; do printf '[%s]\\n' \"$a\"; done > configure-args\n",
    )?;
    std::fs::set_permissions(
        src.join("configure"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::write(
        src.join("Makefile"),
        "all:\n\tprintf '[%s]\\n' '$(EXTRA_CFLAGS)' '$(MODE)' > make-args\n\
         install:\n\tmkdir -p $(PREFIX)\n\tcp configure-args make-args $(PREFIX)/\n",
    )?;
    let pkg = Package::new("flags")
        .src(&SourceBuilder::new(&src).build(&platform)?)
        .configure_flag("--with-x=a b")
        .configure_flag("--enable-y")
        .make_flag("EXTRA_CFLAGS=-DA -Werror=x")
        .make_flag("MODE=*")
        .build(&boot.stdenv)?;
    let built = bigtop::realise::realise(&store, &builder(&store), std::slice::from_ref(&pkg))?;
    let out = store.physical(&built.path(&pkg.out())?);
    assert_eq!(
        std::fs::read_to_string(out.join("configure-args"))?,
        format!(
            "[--prefix={}]\n[--with-x=a b]\n[--enable-y]\n",
            store.store_dir().full(&built.path(&pkg.out())?)
        )
    );
    assert_eq!(
        std::fs::read_to_string(out.join("make-args"))?,
        "[-DA -Werror=x]\n[*]\n"
    );
    // A flag that a newline would split is refused, naming it.
    let e = Package::new("bad")
        .make_flag("A=1\nB=2")
        .build(&boot.stdenv)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("make flag `A=1\\nB=2` holds a newline"),
        "{e}"
    );
    Ok(())
}

/// Regression: a program linking a library of another package without
/// naming a run path built, then failed at run time (`libgreet.so: cannot
/// open shared object file`), and its runtime closure lacked the
/// library. The package builder gives every link the run path of its
/// inputs' libraries.
#[test]
fn a_program_linking_an_inputs_library_finds_it_at_run_time() -> Result {
    let tmp = tempfile::tempdir()?;
    let (store, platform) = store(tmp.path())?;
    let boot = bigtop::bootstrap::host(&platform)?;
    let (greet, _) = greet_and_hello(&boot.stdenv)?;
    let src = tmp.path().join("src");
    std::fs::create_dir(&src)?;
    std::fs::copy(examples().join("hello/hello.c"), src.join("hello.c"))?;
    // No `-rpath`: the library is found at link time through
    // LIBRARY_PATH, and nothing names it for run time.
    std::fs::write(
        src.join("Makefile"),
        "hello: hello.c\n\t$(CC) -O2 -o $@ hello.c -lgreet\n\
         install: hello\n\tmkdir -p $(PREFIX)/bin\n\tcp hello $(PREFIX)/bin/\n",
    )?;
    let hello = Package::new("plain-hello")
        .src(&SourceBuilder::new(&src).build(&platform)?)
        .build_input(&greet)
        .build(&boot.stdenv)?;
    let built = bigtop::realise::realise(&store, &builder(&store), std::slice::from_ref(&hello))?;
    let exe = store.physical(&built.path(&hello.out())?).join("bin/hello");
    let out = std::process::Command::new(&exe).arg("rpath").output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout)?,
        "Hello, rpath, from libgreet!\n"
    );
    let runtime = RuntimeClosure::of(&store, &[hello.out().path().clone()])?;
    assert!(
        runtime.contains_named("greet"),
        "{}",
        runtime.render_names()
    );

    // Without a run path (the package empties it), the check phase fails
    // the build, naming the program and the library; turned off, the
    // build passes and the program is as broken as it was before.
    let no_rpath = Package::new("no-rpath-hello")
        .src(&SourceBuilder::new(&src).build(&platform)?)
        .build_input(&greet)
        .env("LD_RUN_PATH", "")
        .build(&boot.stdenv)?;
    let e = bigtop::realise::realise(&store, &builder(&store), std::slice::from_ref(&no_rpath))
        .expect_err("the check phase fails it");
    let log = format!("{e:?}");
    assert!(log.contains("needs libgreet.so"), "{log}");
    let unchecked = Package::new("unchecked-hello")
        .src(&SourceBuilder::new(&src).build(&platform)?)
        .build_input(&greet)
        .env("LD_RUN_PATH", "")
        .env("dontCheckLibraries", "1")
        .build(&boot.stdenv)?;
    bigtop::realise::realise(&store, &builder(&store), std::slice::from_ref(&unchecked))?;
    Ok(())
}
