// Compatibility with the real Nix: committed fixtures made by Nix 2.8
// (`tests/fixtures/nar/generate.sh`) and live comparisons against the
// `nix-store` and `nix` binaries (Debian's `nix-bin`, installed by CI).

use std::error::Error;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use bigtop_core::hash::{Hash, HashAlgo};
use bigtop_core::nar;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nar")
        .join(name)
}

fn dump(path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    nar::dump_path(path, &mut out)?;
    Ok(out)
}

#[test]
fn nix_fixtures_restore_and_dump_to_the_same_bytes() -> Result {
    let tmp = tempfile::tempdir()?;
    for name in ["tree.nar", "file.nar", "symlink.nar"] {
        let bytes = fs::read(fixture(name))?;
        let dest = tmp.path().join(name);
        nar::restore(&mut &bytes[..], &dest)?;
        assert_eq!(
            dump(&dest)?,
            bytes,
            "{name}: our dump of the restored tree differs from Nix's"
        );
        let mut again = Vec::new();
        nar::parse(&mut &bytes[..], &mut nar::NarEncoder::new(&mut again))?;
        assert_eq!(again, bytes, "{name}: parse and re-encode differs");
    }
    Ok(())
}

#[test]
fn nix_fixture_hash_matches_nix_hash_path() -> Result {
    let tmp = tempfile::tempdir()?;
    let bytes = fs::read(fixture("tree.nar"))?;
    let dest = tmp.path().join("tree");
    nar::restore(&mut &bytes[..], &dest)?;
    let (hash, size) = nar::hash_path(&dest, HashAlgo::Sha256)?;
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(
        hash.to_base32(),
        fs::read_to_string(fixture("tree.sha256.base32"))?.trim()
    );
    assert_eq!(
        hash.to_sri(),
        fs::read_to_string(fixture("tree.sha256.sri"))?.trim()
    );
    Ok(())
}

fn nix(program: &str) -> Command {
    let mut cmd = Command::new(program);
    // As root without a daemon, as CI runs it.
    cmd.env(
        "NIX_CONFIG",
        "build-users-group =\nsandbox = false\nexperimental-features = nix-command",
    );
    cmd
}

fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().map_err(|e| {
        format!("cannot run {cmd:?}: {e} (these tests need Nix: `apt-get install nix-bin`)")
    })?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(out.stdout)
}

/// A tree with every kind of node and awkward sizes and names.
fn build_tree(root: &Path, seed: u64) -> Result {
    fs::create_dir_all(root.join("sub/deeper"))?;
    fs::create_dir(root.join("empty"))?;
    let mut x = seed | 1;
    for i in 0..40u64 {
        // xorshift: sizes around the 8-byte padding and buffer boundaries.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = match i % 4 {
            0 => (x % 17) as usize,
            1 => (x % 70_000) as usize,
            2 => 256 * 1024 + (x % 3) as usize - 1,
            _ => (x % 9) as usize,
        };
        let data: Vec<u8> = (0..len).map(|j| (j as u64 ^ x) as u8).collect();
        let dir = if i % 3 == 0 {
            root.join("sub/deeper")
        } else {
            root.join("sub")
        };
        let path = dir.join(format!("f{i}-{}", x % 1000));
        fs::write(&path, &data)?;
        if x.is_multiple_of(2) {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
    }
    symlink("sub/deeper", root.join("link-to-dir"))?;
    symlink("/does/not/exist", root.join("dangling"))?;
    fs::write(root.join("Upper"), "sorts before lower case")?;
    fs::write(root.join("\u{e9}t\u{e9}"), "non-ASCII name")?;
    Ok(())
}

#[test]
fn dump_is_byte_identical_to_nix_store_dump() -> Result {
    let tmp = tempfile::tempdir()?;
    for seed in [1, 2, 3] {
        let root = tmp.path().join(format!("t{seed}"));
        build_tree(&root, seed)?;
        let ours = dump(&root)?;
        let theirs = run(nix("nix-store").arg("--dump").arg(&root))?;
        assert!(
            ours == theirs,
            "seed {seed}: our NAR ({} bytes) differs from nix-store --dump ({} bytes)",
            ours.len(),
            theirs.len()
        );
        for file in ["Upper", "dangling", "sub/deeper"] {
            let ours = dump(&root.join(file))?;
            let theirs = run(nix("nix-store").arg("--dump").arg(root.join(file)))?;
            assert!(ours == theirs, "{file}: NAR differs from nix-store --dump");
        }
    }
    Ok(())
}

#[test]
fn sha256_hash_equals_nix_hash_path() -> Result {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("t");
    build_tree(&root, 42)?;
    let (ours, _) = nar::hash_path(&root, HashAlgo::Sha256)?;
    let theirs = run(nix("nix")
        .args(["hash", "path", "--type", "sha256", "--base32"])
        .arg(&root))?;
    assert_eq!(ours.to_base32(), String::from_utf8(theirs)?.trim());
    let sri = run(nix("nix")
        .args(["hash", "path", "--type", "sha256"])
        .arg(&root))?;
    let sri: Hash = String::from_utf8(sri)?.trim().parse()?;
    assert_eq!(ours, sri);
    Ok(())
}

#[test]
fn nix_store_restore_accepts_our_archives() -> Result {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("t");
    build_tree(&root, 7)?;
    let ours = dump(&root)?;
    let nar_file = tmp.path().join("t.nar");
    fs::write(&nar_file, &ours)?;
    let restored = tmp.path().join("restored");
    run(nix("sh").arg("-c").arg(format!(
        "nix-store --restore '{}' < '{}'",
        restored.display(),
        nar_file.display()
    )))?;
    assert_eq!(dump(&restored)?, ours);
    Ok(())
}

#[test]
fn base32_matches_nix_hash_to_base32() -> Result {
    for data in [&b""[..], b"a", b"bigtop", &[0xff; 32]] {
        let h = Hash::digest(HashAlgo::Sha256, data);
        let theirs = run(nix("nix")
            .args(["hash", "to-base32", "--type", "sha256"])
            .arg(h.to_hex()))?;
        assert_eq!(h.to_base32(), String::from_utf8(theirs)?.trim());
    }
    Ok(())
}

/// Issue 13: trees are walked by directory descriptors now, and nest up
/// to `nar::MAX_DEPTH` (16,384) levels instead of 1,024. Nix walks by
/// path, so it is compared where a path still reaches the bottom: 1,500
/// levels of `d`, a file and a symlink at the bottom. (Deeper, past
/// `PATH_MAX`, `nix-store --dump` fails with `File name too long`; the unit
/// tests hold such trees to their encoding instead.)
#[test]
fn a_tree_nested_1500_deep_dumps_and_hashes_as_nix_does() -> Result {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("t");
    let mut bottom = root.clone();
    for _ in 0..1500 {
        bottom.push("d");
    }
    fs::create_dir_all(&bottom)?;
    fs::write(bottom.join("f"), "at the bottom\n")?;
    symlink("f", bottom.join("l"))?;
    let ours = dump(&root)?;
    let theirs = run(nix("nix-store").arg("--dump").arg(&root))?;
    assert!(
        ours == theirs,
        "our NAR ({} bytes) differs from nix-store --dump ({} bytes)",
        ours.len(),
        theirs.len()
    );
    let (hash, _) = nar::hash_path(&root, HashAlgo::Sha256)?;
    let nix_hash = run(nix("nix")
        .args(["hash", "path", "--type", "sha256", "--base32"])
        .arg(&root))?;
    assert_eq!(hash.to_base32(), String::from_utf8(nix_hash)?.trim());
    // What Nix unpacks from our archive dumps to it again.
    let nar_file = tmp.path().join("t.nar");
    fs::write(&nar_file, &ours)?;
    let restored = tmp.path().join("restored");
    run(nix("sh").arg("-c").arg(format!(
        "nix-store --restore '{}' < '{}'",
        restored.display(),
        nar_file.display()
    )))?;
    assert!(dump(&restored)? == ours, "Nix's unpack dumps differently");
    Ok(())
}
