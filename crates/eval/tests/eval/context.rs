//! Strings with context: naming an output declares it.

use bigtop_eval::core::derivation::OutputName;
use bigtop_eval::drv::{DrvBuilder, Platform, Str};
use bigtop_eval::{text, trivial, Error};

use crate::TestResult;

fn sh(p: &Platform, name: &str, script: impl Into<Str>) -> Result<bigtop_eval::drv::Drv, Error> {
    DrvBuilder::new(name)
        .builder("/bin/sh")
        .arg("-c")
        .arg(script)
        .build(p)
}

#[test]
fn an_output_named_anywhere_is_an_input_with_just_that_output() -> TestResult {
    let p = Platform::default();
    let lib = DrvBuilder::new("lib")
        .builder("/bin/sh")
        .outputs(["out", "dev"])
        .build(&p)?;
    let dev = lib.output("dev")?;
    let tool = sh(&p, "tool", "true")?;
    let app = DrvBuilder::new("app")
        .builder(text!("{}/bin/tool", tool))
        .env("CFLAGS", text!("-I{}/include", dev))
        .build(&p)?;
    let d = app.derivation();
    assert_eq!(
        d.builder,
        format!("{}/bin/tool", p.store_dir.full(tool.out().path()))
    );
    assert_eq!(
        d.input_drvs[lib.drv_path()],
        [OutputName::new("dev")?].into_iter().collect()
    );
    assert_eq!(
        d.input_drvs[tool.drv_path()],
        [OutputName::out()].into_iter().collect()
    );
    // The derivation's own outputs follow from its inputs.
    let again = DrvBuilder::new("app")
        .builder(text!("{}/bin/tool", tool))
        .env("CFLAGS", text!("-I{}/include", dev))
        .build(&p)?;
    assert_eq!(again.out().path(), app.out().path());
    let other_lib = DrvBuilder::new("lib")
        .builder("/bin/bash")
        .outputs(["out", "dev"])
        .build(&p)?;
    let changed = DrvBuilder::new("app")
        .builder(text!("{}/bin/tool", tool))
        .env("CFLAGS", text!("-I{}/include", other_lib.output("dev")?))
        .build(&p)?;
    assert_ne!(changed.out().path(), app.out().path());
    Ok(())
}

#[test]
fn text_keeps_context_through_joins_and_pushes_and_formatting() -> TestResult {
    let p = Platform::default();
    let a = sh(&p, "a", "true")?;
    let b = sh(&p, "b", "true")?;
    let mut s = Str::from("PATH=");
    s.push(Str::join([text!("{}/bin", a), text!("{}/bin", b)], ":"));
    assert_eq!(s.context().outputs().count(), 2);
    let padded = text!("[{:>3}]", 7);
    assert_eq!(padded.as_str(), "[  7]");
    assert!(padded.context().is_empty());
    let named = text!("{x}+{x}", x = a);
    assert_eq!(named.context().outputs().count(), 1);
    Ok(())
}

#[test]
fn a_missing_output_and_a_bad_name_are_named() -> TestResult {
    let p = Platform::default();
    let a = sh(&p, "a", "true")?;
    let err = a.output("dev").unwrap_err();
    assert_eq!(err.to_string(), "`a` has no output `dev` (it has: `out`)");
    let err = sh(&p, "bad name", "true").unwrap_err();
    assert!(err.to_string().contains("`bad name`"), "{err}");
    let err = DrvBuilder::new("x").build(&p).unwrap_err();
    assert_eq!(err.to_string(), "derivation `x` has no builder");
    Ok(())
}

#[test]
fn trivial_builders_make_builtin_derivations() -> TestResult {
    let p = Platform::default();
    let conf = trivial::write_toml(&p, "conf.toml", &serde_json::json!({"port": 80}))?;
    assert_eq!(conf.derivation().builder, "builtin:write-file");
    assert_eq!(conf.derivation().env["text"], "port = 80\n");
    let script = trivial::write_script(&p, "run", "/bin/sh", text!("cat {}\n", conf))?;
    let env = &script.derivation().env;
    assert_eq!(env["executable"], "1");
    assert_eq!(
        env["text"],
        format!("#!/bin/sh\ncat {}\n", p.store_dir.full(conf.out().path()))
    );
    let joined = trivial::symlink_join(&p, "env", [&conf, &script])?;
    assert_eq!(joined.input_derivations().len(), 2);
    Ok(())
}

#[test]
fn a_derivation_displays_as_its_full_output_path() -> crate::TestResult {
    let p = bigtop_eval::drv::Platform::default();
    let hello = bigtop_eval::trivial::write_text(&p, "hello", "hi")?;
    let full = p.store_dir.full(hello.out().path());
    assert!(
        full.starts_with("/bigtop/store/") && full.ends_with("-hello"),
        "{full}"
    );
    assert_eq!(hello.to_string(), full);
    assert_eq!(hello.out().to_string(), full);
    Ok(())
}
