//! The `bigtop` binary, run as a user runs it.

use std::error::Error;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

fn bigtop(args: &[&str], stdin: &[u8], cwd: &Path) -> Result<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bigtop"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().ok_or("stdin")?.write_all(stdin)?;
    Ok(child.wait_with_output()?)
}

fn ok(out: Output) -> Result<Vec<u8>> {
    if !out.status.success() {
        return Err(format!("bigtop failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(out.stdout)
}

fn tree(root: &Path) -> Result {
    fs::create_dir_all(root.join("bin"))?;
    fs::write(root.join("bin/run"), "#!/bin/sh\nexit 0\n")?;
    fs::set_permissions(root.join("bin/run"), fs::Permissions::from_mode(0o755))?;
    fs::write(root.join("data"), vec![7u8; 3000])?;
    std::os::unix::fs::symlink("bin/run", root.join("link"))?;
    Ok(())
}

#[test]
fn nar_dump_and_restore_round_trip() -> Result {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    tree(&src)?;
    let nar = ok(bigtop(
        &["nar", "dump", src.to_str().ok_or("path")?],
        b"",
        tmp.path(),
    )?)?;
    let mut expected = Vec::new();
    bigtop::core::nar::dump_path(&src, &mut expected)?;
    assert_eq!(nar, expected);
    ok(bigtop(&["nar", "restore", "copy"], &nar, tmp.path())?)?;
    let again = ok(bigtop(&["nar", "dump", "copy"], b"", tmp.path())?)?;
    assert_eq!(again, nar);
    Ok(())
}

#[test]
fn nar_restore_rejects_bad_input_and_names_it() -> Result {
    let tmp = tempfile::tempdir()?;
    let out = bigtop(&["nar", "restore", "dest"], b"not a nar at all", tmp.path())?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("Cannot unpack into `dest`"), "{err}");
    assert!(err.contains("Expected the NAR magic"), "{err}");
    assert!(!tmp.path().join("dest").exists());
    let out = bigtop(&["nar", "dump", "missing"], b"", tmp.path())?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)?.contains("Cannot read `missing`"));
    Ok(())
}

#[test]
fn hash_path_forms_agree_with_each_other() -> Result {
    let tmp = tempfile::tempdir()?;
    tree(&tmp.path().join("t"))?;
    let text = |args: &[&str]| -> Result<String> {
        Ok(String::from_utf8(ok(bigtop(args, b"", tmp.path())?)?)?
            .trim()
            .to_owned())
    };
    let json: serde_json::Value =
        serde_json::from_str(&text(&["hash", "path", "t", "--algo", "sha256", "--json"])?)?;
    assert_eq!(json["algo"], "sha256");
    assert_eq!(
        text(&["hash", "path", "t", "--algo", "sha256"])?,
        json["sri"]
    );
    assert_eq!(
        text(&["hash", "path", "t", "--algo", "sha256", "--base32"])?,
        json["base32"]
    );
    assert_eq!(
        text(&["hash", "path", "t", "--algo", "sha256", "--hex"])?,
        json["hex"]
    );
    let mut nar = Vec::new();
    bigtop::core::nar::dump_path(&tmp.path().join("t"), &mut nar)?;
    assert_eq!(json["nar_size"], nar.len() as u64);
    assert!(text(&["hash", "path", "t"])?.starts_with("blake3-"));
    // A path that is not UTF-8 is shown lossily, not a crash.
    let odd = std::ffi::OsStr::from_bytes(b"t\xff");
    fs::create_dir(tmp.path().join(odd))?;
    let out = Command::new(env!("CARGO_BIN_EXE_bigtop"))
        .args(["hash".as_ref(), "path".as_ref(), odd, "--json".as_ref()])
        .current_dir(tmp.path())
        .output()?;
    let json: serde_json::Value = serde_json::from_slice(&ok(out)?)?;
    assert_eq!(json["path"], "t\u{fffd}");
    Ok(())
}

#[test]
fn hash_path_sha256_equals_nix_hash_path() -> Result {
    let tmp = tempfile::tempdir()?;
    tree(&tmp.path().join("t"))?;
    let ours = ok(bigtop(
        &["hash", "path", "t", "--algo", "sha256", "--base32"],
        b"",
        tmp.path(),
    )?)?;
    let theirs = Command::new("nix")
        .args(["hash", "path", "--type", "sha256", "--base32", "t"])
        .env(
            "NIX_CONFIG",
            "build-users-group =\nsandbox = false\nexperimental-features = nix-command",
        )
        .current_dir(tmp.path())
        .output()
        .map_err(|e| format!("cannot run nix (apt-get install nix-bin): {e}"))?;
    assert!(
        theirs.status.success(),
        "{}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert_eq!(ours, theirs.stdout);
    Ok(())
}

#[test]
fn key_generate_writes_a_usable_pair_once() -> Result {
    let tmp = tempfile::tempdir()?;
    let out = ok(bigtop(
        &["key", "generate", "cache-1", "--json"],
        b"",
        tmp.path(),
    )?)?;
    let json: serde_json::Value = serde_json::from_slice(&out)?;
    let secret: bigtop::core::SecretKey = fs::read_to_string(tmp.path().join("cache-1.secret"))?
        .trim()
        .parse()?;
    let public: bigtop::core::PublicKey = fs::read_to_string(tmp.path().join("cache-1.public"))?
        .trim()
        .parse()?;
    assert_eq!(json["public_key"], public.to_string());
    assert_eq!(secret.public(), public);
    assert!(public.verify(b"msg", &secret.sign(b"msg")));
    let mode = fs::metadata(tmp.path().join("cache-1.secret"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // Never overwrites a key.
    let before = fs::read(tmp.path().join("cache-1.secret"))?;
    let out = bigtop(&["key", "generate", "cache-1"], b"", tmp.path())?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)?.contains("Cannot write `cache-1.secret`"));
    assert_eq!(fs::read(tmp.path().join("cache-1.secret"))?, before);

    let out = bigtop(&["key", "generate", "bad:name"], b"", tmp.path())?;
    assert!(String::from_utf8(out.stderr)?.contains("Invalid key name `bad:name`"));
    Ok(())
}
