// Compatibility with the real Nix, against fixtures it generated
// (`tests/fixtures/*/generate.sh`).

use std::error::Error;
use std::path::PathBuf;

use bigtop_core::narinfo::NarInfo;
use bigtop_core::signing::{PublicKey, SecretKey, TrustedKeys, VerifyError};
use bigtop_core::StoreDir;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

fn fixture(relative: &str) -> Result<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative);
    std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// The key pair from `nix-store --generate-binary-cache-key`, parsed as
/// the files are (Nix writes them without a final newline; editors add one,
/// which the parser must accept as Nix does).
fn nix_keys() -> Result<(SecretKey, PublicKey)> {
    let secret: SecretKey = fixture("keys/secret.key")?.parse()?;
    let public: PublicKey = fixture("keys/public.key")?.parse()?;
    let with_newline: PublicKey =
        format!("{}\n", fixture("keys/public.key")?.trim_end()).parse()?;
    assert_eq!(with_newline, public);
    Ok((secret, public))
}

fn nix_store() -> Result<StoreDir> {
    Ok(StoreDir::new("/nix/store")?)
}

/// `a` refers to `b`; both signed by Nix with the fixture key.
const NARINFOS: [&str; 2] = [
    "narinfo/fvg5vr8gqb5fk5aaixhrck9fxmxj7phz.narinfo",
    "narinfo/w320iz5b4848q2l7a7x8mw2vymm22ddg.narinfo",
];

#[test]
fn nix_key_files_parse_and_round_trip() -> Result {
    let (secret, public) = nix_keys()?;
    assert_eq!(secret.name(), "bigtop-test-fixture-1");
    assert_eq!(secret.public(), public);
    assert_eq!(secret.to_string(), fixture("keys/secret.key")?.trim_end());
    assert_eq!(public.to_string(), fixture("keys/public.key")?.trim_end());
    Ok(())
}

#[test]
fn our_signature_with_a_nix_key_verifies_with_its_public_key() -> Result {
    let (secret, public) = nix_keys()?;
    let signature = secret.sign(b"1;/nix/store/x;sha256:0;0;");
    assert!(public.verify(b"1;/nix/store/x;sha256:0;0;", &signature));
    assert!(!public.verify(b"1;/nix/store/x;sha256:0;1;", &signature));
    Ok(())
}

#[test]
fn nix_narinfo_reprints_byte_for_byte() -> Result {
    let dir = nix_store()?;
    for file in NARINFOS {
        let text = fixture(file)?;
        let info = NarInfo::parse(&dir, &text)?;
        assert_eq!(info.to_text(&dir), text, "{file}");
    }
    Ok(())
}

#[test]
fn nix_signatures_verify_and_ours_are_identical() -> Result {
    let dir = nix_store()?;
    let (secret, public) = nix_keys()?;
    let trusted: TrustedKeys = [public].into_iter().collect();
    for file in NARINFOS {
        let nix_signed = NarInfo::parse(&dir, &fixture(file)?)?;
        // Nix's signature verifies with our fingerprint...
        nix_signed.verify(&dir, &trusted)?;
        // ...and ed25519 is deterministic, so signing the same fingerprint
        // with the same key gives Nix's exact signature.
        let mut ours = nix_signed.clone();
        ours.signatures.clear();
        ours.sign(&dir, &secret);
        assert_eq!(ours.signatures, nix_signed.signatures, "{file}");
    }
    Ok(())
}

#[test]
fn nix_signature_rejects_an_altered_narinfo() -> Result {
    let dir = nix_store()?;
    let (_, public) = nix_keys()?;
    let trusted: TrustedKeys = [public].into_iter().collect();
    let mut info = NarInfo::parse(&dir, &fixture(NARINFOS[0])?)?;
    info.references.clear();
    match info.verify(&dir, &trusted) {
        Err(VerifyError::Invalid { keys, .. }) => assert_eq!(keys, ["bigtop-test-fixture-1"]),
        other => panic!("expected an invalid signature, got {other:?}"),
    }
    Ok(())
}
