//! Binary caches: round trips through a `file://` cache in each
//! compression, what a forged, corrupt or hostile cache gets refused with,
//! and interoperation with the real Nix (2.8) in both directions.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use bigtop_store::cache::{
    fetch, upload, BinaryCache, CacheError, Compression, FetchOptions, FileCache, UploadOptions,
};
use bigtop_store::core::{SecretKey, StoreDir, StorePath, TrustedKeys};
use bigtop_store::Store;

use crate::{assert_consistent, text, Result};

/// A store with `dep` and `app` (which refers to `dep`).
fn two(store: &Store) -> Result<(StorePath, StorePath)> {
    let dep = text(store, "dep", "the library", &[])?;
    let app = text(store, "app", &"an app ".repeat(2000), &[&dep])?;
    Ok((dep, app))
}

fn key() -> Result<(SecretKey, TrustedKeys)> {
    let key = SecretKey::generate("cache.example.org-1")?;
    let trusted = [key.public()].into_iter().collect();
    Ok((key, trusted))
}

#[test]
fn closures_round_trip_in_every_compression_and_only_what_is_missing_moves() -> Result {
    let tmp = tempfile::tempdir()?;
    let from = Store::open_chroot(tmp.path().join("from"))?;
    let (dep, app) = two(&from)?;
    let (key, trusted) = key()?;
    for c in [Compression::Zstd, Compression::Xz, Compression::None] {
        let cache = FileCache::open(tmp.path().join(format!("cache-{}", c.name())))?;
        let options = UploadOptions {
            compression: c,
            key: Some(key.clone()),
        };
        let up = upload(&from, &cache, std::slice::from_ref(&app), &options)?;
        assert_eq!(up.copied.len(), 2, "{c:?}");
        // Again: the cache has everything.
        let again = upload(&from, &cache, std::slice::from_ref(&app), &options)?;
        assert_eq!((again.copied.len(), again.present), (0, 2));

        let to = Store::open_chroot(tmp.path().join(format!("to-{}", c.name())))?;
        let down = fetch(
            &to,
            &cache,
            std::slice::from_ref(&app),
            &FetchOptions::trusting(trusted.clone()),
        )?;
        // References first.
        assert_eq!(down.copied, [dep.clone(), app.clone()], "{c:?}");
        assert_eq!(
            std::fs::read(to.physical(&app))?,
            std::fs::read(from.physical(&app))?
        );
        assert_eq!(to.references(&app)?, BTreeSet::from([dep.clone()]));
        // Signatures travel with the paths.
        assert_eq!(to.path_info(&app)?.map(|i| i.signatures.len()), Some(1));
        assert_consistent(&to)?;
        // Nothing left to fetch.
        let again = fetch(
            &to,
            &cache,
            std::slice::from_ref(&app),
            &FetchOptions::trusting(trusted.clone()),
        )?;
        assert_eq!((again.copied.len(), again.present), (0, 1));
    }
    Ok(())
}

/// A cache holding `app` and `dep`, written by a store in `tmp`, and the
/// key that signed it.
fn cache_with_two(tmp: &Path) -> Result<(FileCache, StorePath, StorePath, TrustedKeys)> {
    let from = Store::open_chroot(tmp.join("from"))?;
    let (dep, app) = two(&from)?;
    let (key, trusted) = key()?;
    let cache = FileCache::open(tmp.join("cache"))?;
    upload(
        &from,
        &cache,
        std::slice::from_ref(&app),
        &UploadOptions {
            compression: Compression::Zstd,
            key: Some(key),
        },
    )?;
    Ok((cache, dep, app, trusted))
}

fn narinfo_file(cache: &FileCache, p: &StorePath) -> std::path::PathBuf {
    cache.dir().join(format!("{}.narinfo", p.digest()))
}

fn nar_file(cache: &FileCache, p: &StorePath) -> Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(narinfo_file(cache, p))?;
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .ok_or("no URL")?;
    Ok(cache.dir().join(url))
}

#[test]
fn a_narinfo_not_signed_by_a_trusted_key_is_refused_naming_path_cache_and_keys() -> Result {
    let tmp = tempfile::tempdir()?;
    let (cache, _, app, _) = cache_with_two(tmp.path())?;
    let (_, other) = key()?;
    let mut other = other;
    other.insert(SecretKey::generate("someone-else-1")?.public());
    let to = Store::open_chroot(tmp.path().join("to"))?;
    let e = fetch(
        &to,
        &cache,
        std::slice::from_ref(&app),
        &FetchOptions::trusting(other),
    )
    .expect_err("untrusted");
    let msg = e.to_string();
    assert!(matches!(e, CacheError::Untrusted { .. }), "{msg}");
    assert!(msg.contains(&to.store_dir().full(&app)), "{msg}");
    assert!(msg.contains(&cache.describe()), "{msg}");
    assert!(msg.contains("signed by: cache.example.org-1"), "{msg}");
    assert!(to.all_valid_paths()?.is_empty());
    // Without signatures required, the same cache is taken.
    let open = FetchOptions {
        require_sigs: false,
        ..FetchOptions::default()
    };
    fetch(&to, &cache, std::slice::from_ref(&app), &open)?;
    assert!(to.is_valid(&app)?);
    Ok(())
}

#[test]
fn corrupt_truncated_swapped_escaping_and_exploding_caches_are_refused_with_nothing_registered(
) -> Result {
    let open = FetchOptions {
        require_sigs: false,
        ..FetchOptions::default()
    };
    // Each case breaks a fresh cache one way; the fetch must fail and
    // leave the store empty.
    type Break = fn(&FileCache, &StorePath, &StorePath) -> Result<&'static str>;
    let cases: [Break; 13] = [
        // A flipped byte in the compressed NAR of `dep`.
        |c, dep, _| {
            let f = nar_file(c, dep)?;
            let mut b = std::fs::read(&f)?;
            let mid = b.len() / 2;
            b[mid] ^= 0x55;
            std::fs::write(&f, b)?;
            Ok("")
        },
        // The NAR cut in half.
        |c, dep, _| {
            let f = nar_file(c, dep)?;
            let b = std::fs::read(&f)?;
            std::fs::write(&f, &b[..b.len() / 2])?;
            Ok("")
        },
        // `app`'s narinfo served for `dep`.
        |c, dep, app| {
            std::fs::copy(narinfo_file(c, app), narinfo_file(c, dep))?;
            Ok("not the")
        },
        // A URL leaving the cache.
        |c, dep, _| {
            let f = narinfo_file(c, dep);
            let text = std::fs::read_to_string(&f)?;
            let text = text
                .lines()
                .map(|l| {
                    if l.starts_with("URL: ") {
                        "URL: ../../etc/passwd".to_owned()
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(&f, text + "\n")?;
            Ok("leaves the cache")
        },
        // A NAR that decompresses to far more than its narinfo says.
        |c, dep, _| {
            let f = nar_file(c, dep)?;
            let bomb = zstd_of(&vec![0u8; 64 << 20])?;
            std::fs::write(&f, bomb)?;
            Ok("")
        },
        // A URL whose escapes a server would decode into `..`.
        |c, dep, _| {
            set_field(
                &narinfo_file(c, dep),
                "URL",
                Some("nar/%2e%2e/%2e%2e/etc/passwd"),
            )?;
            Ok("leaves the cache")
        },
        // A narinfo too long to be one (not cut short and parsed).
        |c, dep, _| {
            let f = narinfo_file(c, dep);
            let mut text = std::fs::read_to_string(&f)?;
            text.push_str(&format!("X-Padding: {}\n", "a".repeat(2 << 20)));
            std::fs::write(&f, text)?;
            Ok("longer than")
        },
        // A narinfo that is a symbolic link to another file.
        |c, dep, app| {
            let f = narinfo_file(c, dep);
            std::fs::remove_file(&f)?;
            std::os::unix::fs::symlink(narinfo_file(c, app), &f)?;
            Ok("cannot open")
        },
        // A NAR file that is a FIFO no one writes: refused, not waited on.
        |c, dep, _| {
            let f = nar_file(c, dep)?;
            std::fs::remove_file(&f)?;
            let status = Command::new("mkfifo").arg(&f).status()?;
            assert!(status.success(), "mkfifo");
            Ok("not a regular file")
        },
        // No file size or hash claimed (as nix-serve's narinfos), and
        // an uncompressed NAR followed by endless bytes: the read stops.
        |c, dep, _| {
            let n = narinfo_file(c, dep);
            let f = nar_file(c, dep)?;
            let nar = zstd::decode_all(std::fs::File::open(&f)?)?;
            let mut file = nar;
            file.extend(std::iter::repeat_n(0u8, 8 << 20));
            std::fs::write(&f, file)?;
            set_field(&n, "Compression", Some("none"))?;
            set_field(&n, "FileSize", None)?;
            set_field(&n, "FileHash", None)?;
            Ok("more bytes than")
        },
        // The NARs' folder a symbolic link to where they are: not
        // followed, whatever it points to.
        |c, _, _| {
            let nar = c.dir().join("nar");
            let elsewhere = c.dir().with_file_name("elsewhere");
            std::fs::rename(&nar, &elsewhere)?;
            std::os::unix::fs::symlink(&elsewhere, &nar)?;
            Ok("cannot open")
        },
        // A reference the cache does not have.
        |c, dep, _| {
            let f = narinfo_file(c, dep);
            let text = std::fs::read_to_string(&f)?;
            let refs = text
                .lines()
                .find_map(|l| l.strip_prefix("References:"))
                .unwrap_or("")
                .trim()
                .to_owned();
            let ghost = "00000000000000000000000000000000-ghost";
            set_field(&f, "References", Some(format!("{refs} {ghost}").trim()))?;
            Ok("does not have")
        },
        // A Sig line that is not a signature at all.
        |c, dep, _| {
            set_field(&narinfo_file(c, dep), "Sig", Some("garbage"))?;
            Ok("")
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let tmp = tempfile::tempdir()?;
        let (cache, dep, app, _) = cache_with_two(tmp.path())?;
        let want = case(&cache, &dep, &app)?;
        let to = Store::open_chroot(tmp.path().join("to"))?;
        let e = fetch(&to, &cache, std::slice::from_ref(&app), &open).expect_err("a broken cache");
        let msg = format!(
            "{e}: {:?}",
            std::error::Error::source(&e).map(|s| s.to_string())
        );
        assert!(msg.contains(want), "case {i}: {msg}");
        assert!(
            to.all_valid_paths()?.is_empty(),
            "case {i}: something was registered"
        );
        assert_consistent(&to)?;
        // Nor anything left staged in the store.
        let left: Vec<_> = std::fs::read_dir(to.root())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        assert!(left.is_empty(), "case {i}: left in the store: {left:?}");
    }
    Ok(())
}

/// Replaces the line `key: …` of a narinfo (or removes it).
pub(crate) fn set_field(narinfo: &Path, key: &str, value: Option<&str>) -> Result {
    let text = std::fs::read_to_string(narinfo)?;
    let prefix = format!("{key}: ");
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with(&prefix) {
            if let Some(v) = value {
                out.push_str(&format!("{key}: {v}\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(narinfo, out)?;
    Ok(())
}

fn zstd_of(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut e = zstd::stream::write::Encoder::new(&mut out, 3)?;
    std::io::Write::write_all(&mut e, data)?;
    e.finish()?;
    Ok(out)
}

/// The real Nix, run as root without a daemon on a store under `root`.
fn nix(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("nix")
        .args(args)
        .env(
            "NIX_CONFIG",
            "build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters =\n",
        )
        .env("HOME", root)
        .env("XDG_CACHE_HOME", root.join("cache-home"))
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "nix {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn nix_store_dir() -> Result<StoreDir> {
    Ok(StoreDir::new("/nix/store")?)
}

#[test]
fn nix_substitutes_from_a_cache_bigtop_wrote_and_checks_its_signatures() -> Result {
    let tmp = tempfile::tempdir()?;
    let ours = Store::builder()
        .store_dir(nix_store_dir()?)
        .chroot(tmp.path().join("ours"))
        .open()?;
    let (dep, app) = two(&ours)?;
    let (key, _) = key()?;
    for c in [Compression::Zstd, Compression::Xz] {
        let dir = tmp.path().join(format!("cache-{}", c.name()));
        let cache = FileCache::open(&dir)?;
        upload(
            &ours,
            &cache,
            std::slice::from_ref(&app),
            &UploadOptions {
                compression: c,
                key: Some(key.clone()),
            },
        )?;
        let root = tmp.path().join(format!("nix-{}", c.name()));
        let store = format!("local?root={}", root.display());
        let full = ours.store_dir().full(&app);
        nix(
            &root,
            &[
                "copy",
                "--from",
                &format!("file://{}", dir.display()),
                "--to",
                &store,
                "--option",
                "trusted-public-keys",
                &key.public().to_string(),
                &full,
            ],
        )?;
        let physical = root.join(full.trim_start_matches('/'));
        assert_eq!(
            std::fs::read(&physical)?,
            std::fs::read(ours.physical(&app))?
        );
        let refs = nix(&root, &["path-info", "--store", &store, "--json", &full])?;
        assert!(refs.contains(&ours.store_dir().full(&dep)), "{refs}");

        // Nix refuses it under a key it does not trust.
        let other = tmp.path().join(format!("nix-untrusting-{}", c.name()));
        let e = nix(
            &other,
            &[
                "copy",
                "--from",
                &format!("file://{}", dir.display()),
                "--to",
                &format!("local?root={}", other.display()),
                "--option",
                "trusted-public-keys",
                &SecretKey::generate("other-1")?.public().to_string(),
                &full,
            ],
        )
        .expect_err("an untrusted cache");
        assert!(e.to_string().contains("signature"), "{e}");
    }
    Ok(())
}

#[test]
fn bigtop_substitutes_from_caches_nix_wrote_in_xz_and_zstd() -> Result {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("nix");
    let store = format!("local?root={}", root.display());
    let file = tmp.path().join("hello.txt");
    std::fs::write(&file, "hello from nix\n")?;
    let added = nix(
        &root,
        &[
            "store",
            "add-file",
            "--store",
            &store,
            &file.display().to_string(),
        ],
    )?;
    let added = added.trim().to_owned();
    for c in ["xz", "zstd"] {
        let dir = tmp.path().join(format!("cache-{c}"));
        nix(
            &root,
            &[
                "copy",
                "--from",
                &store,
                "--to",
                &format!("file://{}?compression={c}", dir.display()),
                &added,
            ],
        )?;
        let cache = FileCache::open(&dir)?;
        let ours = Store::builder()
            .store_dir(nix_store_dir()?)
            .chroot(tmp.path().join(format!("ours-{c}")))
            .open()?;
        let path = ours.store_dir().parse_path(&added)?;
        let open = FetchOptions {
            require_sigs: false,
            ..FetchOptions::default()
        };
        let r = fetch(&ours, &cache, std::slice::from_ref(&path), &open)?;
        assert_eq!(r.copied, std::slice::from_ref(&path), "{c}");
        assert_eq!(
            std::fs::read_to_string(ours.physical(&path))?,
            "hello from nix\n"
        );
    }
    Ok(())
}

/// nginx with WebDAV `PUT`, serving a temporary directory on 127.0.0.1,
/// stopped when dropped.
pub(crate) struct Nginx {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    pub(crate) fn start() -> Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.path().join("nginx.conf");
        let module = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so";
        std::fs::write(
            &conf,
            format!(
                "load_module {module};\n\
                 daemon off;\nmaster_process off;\nuser root;\nworker_processes 1;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 server {{\n    listen 127.0.0.1:{port};\n    root {r};\n\
                 location / {{ dav_methods PUT; create_full_put_path on; client_max_body_size 0; }}\n  }}\n}}\n",
                d = dir.path().display(),
                r = root.display(),
            ),
        )?;
        let child = Command::new("nginx")
            .args([
                "-c",
                &conf.display().to_string(),
                "-p",
                &dir.path().display().to_string(),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Nginx { child, port, dir });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err("nginx did not start".into())
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The folder it serves.
    pub(crate) fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("root")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_cache_on_nginx_takes_uploads_over_put_and_serves_bigtop_and_nix() -> Result {
    let server = Nginx::start()?;
    let cache = bigtop_store::cache::open(&server.url())?;
    let tmp = tempfile::tempdir()?;
    let from = Store::builder()
        .store_dir(nix_store_dir()?)
        .chroot(tmp.path().join("from"))
        .open()?;
    let (dep, app) = two(&from)?;
    let (key, trusted) = key()?;
    let up = upload(
        &from,
        &cache,
        std::slice::from_ref(&app),
        &UploadOptions {
            compression: Compression::Zstd,
            key: Some(key.clone()),
        },
    )?;
    assert_eq!(up.copied.len(), 2);
    // Asked again, the server says it has them (HEAD).
    assert_eq!(
        upload(
            &from,
            &cache,
            std::slice::from_ref(&app),
            &UploadOptions::default()
        )?
        .present,
        2
    );

    let to = Store::builder()
        .store_dir(nix_store_dir()?)
        .chroot(tmp.path().join("to"))
        .open()?;
    let down = fetch(
        &to,
        &cache,
        std::slice::from_ref(&app),
        &FetchOptions::trusting(trusted),
    )?;
    assert_eq!(down.copied, [dep.clone(), app.clone()]);
    assert_eq!(
        std::fs::read(to.physical(&app))?,
        std::fs::read(from.physical(&app))?
    );

    // Nix substitutes from the same server.
    let root = tmp.path().join("nix");
    let full = from.store_dir().full(&app);
    nix(
        &root,
        &[
            "copy",
            "--from",
            &server.url(),
            "--to",
            &format!("local?root={}", root.display()),
            "--option",
            "trusted-public-keys",
            &key.public().to_string(),
            &full,
        ],
    )?;
    assert_eq!(
        std::fs::read(root.join(full.trim_start_matches('/')))?,
        std::fs::read(from.physical(&app))?
    );

    // A server that is gone: retried, then an error naming the cache.
    let url = server.url();
    drop(server);
    let gone = bigtop_store::cache::open(&url)?;
    let again = Store::open_chroot(tmp.path().join("again"))?;
    let e = fetch(
        &again,
        &gone,
        std::slice::from_ref(&app),
        &FetchOptions::default(),
    )
    .expect_err("no server");
    assert!(e.to_string().contains(&url), "{e}");
    Ok(())
}

#[test]
fn only_signatures_that_verify_are_kept_and_they_travel_on_upload() -> Result {
    let tmp = tempfile::tempdir()?;
    let (cache, dep, app, trusted) = cache_with_two(tmp.path())?;
    // A second signature under a trusted name that does not verify, and
    // one by a key no one trusts.
    let forged = SecretKey::generate("cache.example.org-1")?;
    let stranger = SecretKey::generate("stranger-1")?;
    for key in [&forged, &stranger] {
        let f = narinfo_file(&cache, &app);
        let text = std::fs::read_to_string(&f)?;
        let mut info = bigtop_store::core::narinfo::NarInfo::parse(&StoreDir::default(), &text)?;
        let mut other = info.clone();
        other.signatures.clear();
        other.sign(&StoreDir::default(), key);
        info.signatures.extend(other.signatures);
        std::fs::write(&f, info.to_text(&StoreDir::default()))?;
    }
    let to = Store::open_chroot(tmp.path().join("to"))?;
    fetch(
        &to,
        &cache,
        std::slice::from_ref(&app),
        &FetchOptions::trusting(trusted.clone()),
    )?;
    let sigs = to.path_info(&app)?.ok_or("app")?.signatures;
    assert_eq!(sigs.len(), 1, "{sigs:?}");

    // Uploaded on with a second key: the first signature goes along.
    let second = SecretKey::generate("second-1")?;
    let onward = FileCache::open(tmp.path().join("onward"))?;
    upload(
        &to,
        &onward,
        std::slice::from_ref(&app),
        &UploadOptions {
            compression: Compression::Zstd,
            key: Some(second.clone()),
        },
    )?;
    let text = std::fs::read_to_string(narinfo_file(&onward, &app))?;
    let info = bigtop_store::core::narinfo::NarInfo::parse(&StoreDir::default(), &text)?;
    let mut names: Vec<&str> = info.signatures.iter().map(|s| s.name()).collect();
    names.sort();
    assert_eq!(names, ["cache.example.org-1", "second-1"]);
    // Each still verifies: trusted by either key alone, a reader takes it.
    let mut by_second = TrustedKeys::default();
    by_second.insert(second.public());
    for keys in [trusted, by_second] {
        let fresh = Store::open_chroot(tempfile::tempdir_in(tmp.path())?.keep())?;
        fetch(
            &fresh,
            &onward,
            std::slice::from_ref(&app),
            &FetchOptions::trusting(keys),
        )?;
        assert!(fresh.is_valid(&dep)?);
    }
    Ok(())
}

#[test]
fn without_signatures_references_are_checked_against_the_contents() -> Result {
    let tmp = tempfile::tempdir()?;
    let (cache, dep, app, _) = cache_with_two(tmp.path())?;
    // `app`'s contents name `dep`; its narinfo now says they do not (and
    // its signature no longer verifies, which `--no-require-sigs` allows).
    set_field(&narinfo_file(&cache, &app), "References", Some(""))?;
    let to = Store::open_chroot(tmp.path().join("to"))?;
    // `dep` is there already: only the lie about `app` is left to catch.
    fetch(
        &to,
        &cache,
        std::slice::from_ref(&dep),
        &FetchOptions::default(),
    )?;
    let e = fetch(
        &to,
        &cache,
        std::slice::from_ref(&app),
        &FetchOptions::default(),
    )
    .expect_err("an undeclared reference");
    let chain = format!(
        "{e}: {:?}",
        std::error::Error::source(&e).map(|s| s.to_string())
    );
    assert!(chain.contains(&dep.to_string()), "{chain}");
    assert!(!to.is_valid(&app)?);
    assert_consistent(&to)?;
    Ok(())
}

#[test]
fn a_cache_s_misses_are_remembered_for_their_time_to_live() -> Result {
    use bigtop_store::build::Substituter;
    use bigtop_store::cache::{CacheSubstituter, NarinfoMemo};
    use std::sync::Arc;
    use std::time::Duration;
    let tmp = tempfile::tempdir()?;
    let from = Store::open_chroot(tmp.path().join("from"))?;
    let (dep, app) = two(&from)?;
    let (key, trusted) = key()?;
    let cache = FileCache::open(tmp.path().join("cache"))?;
    let options = UploadOptions {
        compression: Compression::Zstd,
        key: Some(key),
    };
    upload(&from, &cache, std::slice::from_ref(&dep), &options)?;
    let to = Store::open_chroot(tmp.path().join("to"))?;
    let both = BTreeSet::from([dep.clone(), app.clone()]);
    let file = tmp.path().join("memo/misses.sqlite");
    let offered = |ttl: Duration| -> Result<Vec<StorePath>> {
        let memo = Arc::new(NarinfoMemo::open(&file, ttl)?);
        let sub =
            CacheSubstituter::new(&to, cache.clone(), FetchOptions::trusting(trusted.clone()))
                .remembering_misses(memo);
        Ok(sub.query(&both)?.into_keys().collect())
    };
    assert_eq!(
        offered(Duration::from_secs(3600))?,
        std::slice::from_ref(&dep)
    );
    // `app` arrives in the cache; for the hour, it is still taken to be
    // missing, and not asked for.
    upload(&from, &cache, std::slice::from_ref(&app), &options)?;
    assert_eq!(
        offered(Duration::from_secs(3600))?,
        std::slice::from_ref(&dep)
    );
    // With nothing remembered for long, it is asked for and found, and
    // found it is forgotten as a miss.
    let mut want = vec![dep.clone(), app.clone()];
    want.sort();
    assert_eq!(offered(Duration::ZERO)?, want);
    assert_eq!(offered(Duration::from_secs(3600))?, want);
    Ok(())
}

#[test]
fn verify_repair_fetches_broken_paths_again_as_recorded() -> Result {
    use bigtop_store::build::Substituter;
    use bigtop_store::cache::CacheSubstituter;
    use bigtop_store::VerifyOptions;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    let (cache, dep, app, trusted) = cache_with_two(tmp.path())?;
    let from = Store::open_chroot(tmp.path().join("from"))?;
    let lonely = text(&from, "lonely", "in no cache", &[])?;
    let store = Store::open_chroot(tmp.path().join("to"))?;
    fetch(
        &store,
        &cache,
        std::slice::from_ref(&app),
        &FetchOptions::trusting(trusted.clone()),
    )?;
    // `lonely` comes by export, so no cache has it.
    let mut stream = Vec::new();
    from.export(std::slice::from_ref(&lonely), &mut stream)?;
    store.import(&mut stream.as_slice())?;
    let good = std::fs::read(store.physical(&app))?;
    // `app` altered on disk, `dep` gone, `lonely` altered.
    for p in [&app, &lonely] {
        let f = store.physical(p);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))?;
        std::fs::write(&f, b"tampered")?;
    }
    std::fs::remove_file(store.physical(&dep))?;
    let sub = CacheSubstituter::new(&store, cache.clone(), FetchOptions::trusting(trusted));
    let subs: [&dyn Substituter; 1] = [&sub];
    let options = VerifyOptions {
        check_contents: true,
        repair: true,
    };
    let report = store.verify_with(options, &subs)?;
    let mut want = vec![dep.clone(), app.clone()];
    want.sort();
    let mut got = report.refetched.clone();
    got.sort();
    assert_eq!(got, want);
    // What no substituter has is unregistered, as without them.
    assert_eq!(report.unregistered_paths, std::slice::from_ref(&lonely));
    assert_eq!(std::fs::read(store.physical(&app))?, good);
    assert!(store.physical(&dep).exists());
    let again = store.verify(VerifyOptions {
        check_contents: true,
        repair: false,
    })?;
    assert!(again.is_clean(), "{again:?}");
    assert_consistent(&store)?;
    Ok(())
}

/// harmonia's narinfos point to `nar/<hash>.nar?hash=<path hash>`: the
/// query is sent to an HTTP cache and ignored by a directory.
#[test]
fn a_nar_url_with_a_query_is_read() -> Result {
    let tmp = tempfile::tempdir()?;
    let (cache, dep, app, trusted) = cache_with_two(tmp.path())?;
    for p in [&dep, &app] {
        let f = narinfo_file(&cache, p);
        let text = std::fs::read_to_string(&f)?;
        let url = text
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .ok_or("no URL")?
            .to_owned();
        set_field(&f, "URL", Some(&format!("{url}?hash={}", p.digest())))?;
    }
    let server = Nginx::start()?;
    let root = server.root();
    for entry in std::fs::read_dir(cache.dir())? {
        let entry = entry?;
        let to = root.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&to)?;
            for f in std::fs::read_dir(entry.path())? {
                let f = f?;
                std::fs::copy(f.path(), to.join(f.file_name()))?;
            }
        } else {
            std::fs::copy(entry.path(), to)?;
        }
    }
    let over_http = bigtop_store::cache::open(&server.url())?;
    for (i, source) in [&cache as &dyn BinaryCache, &*over_http]
        .into_iter()
        .enumerate()
    {
        let to = Store::open_chroot(tmp.path().join(format!("to-{i}")))?;
        fetch(
            &to,
            source,
            std::slice::from_ref(&app),
            &FetchOptions::trusting(trusted.clone()),
        )?;
        assert!(to.is_valid(&app)? && to.is_valid(&dep)?);
    }
    Ok(())
}

/// A build that is not bit for bit reproducible: the cache's copy of a
/// broken path has other bytes (same references, signed by a trusted
/// key). Repair takes it and records its hash, rather than deleting the
/// path and everything that refers to it.
#[test]
fn verify_repair_takes_a_trusted_build_with_other_bytes() -> Result {
    use bigtop_store::build::Substituter;
    use bigtop_store::cache::CacheSubstituter;
    use bigtop_store::{PathInfo, VerifyOptions};
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    let nar_of = |text: &str| -> Result<(Vec<u8>, bigtop_store::core::Hash)> {
        let f = tmp.path().join("build-output");
        std::fs::write(&f, text)?;
        let mut nar = Vec::new();
        bigtop_store::core::nar::dump_path(&f, &mut nar)?;
        std::fs::remove_file(&f)?;
        let hash = bigtop_store::core::Hash::digest(bigtop_store::core::HashAlgo::Sha256, &nar);
        Ok((nar, hash))
    };
    let path: StorePath = "0c6kzph7l0dcbfmjap64f0czdafn3b7x-nonrepro".parse()?;
    let add = |store: &Store, text: &str| -> Result {
        let (nar, hash) = nar_of(text)?;
        let info = PathInfo::new(path.clone(), hash, nar.len() as u64, BTreeSet::new());
        store.add_nar(info, &mut nar.as_slice())?;
        Ok(())
    };
    let builder = Store::open_chroot(tmp.path().join("builder"))?;
    add(&builder, "built on the build machine")?;
    let (key, trusted) = key()?;
    let cache = FileCache::open(tmp.path().join("cache"))?;
    upload(
        &builder,
        &cache,
        std::slice::from_ref(&path),
        &UploadOptions {
            compression: Compression::Zstd,
            key: Some(key.clone()),
        },
    )?;
    let store = Store::open_chroot(tmp.path().join("here"))?;
    add(&store, "built here, a little differently")?;
    let user = text(&store, "user", "uses it", &[&path])?;
    // `user` (recorded with BLAKE3) is in the cache too, the same bytes
    // under Nix's SHA-256: damaged, it comes back with its record as it was.
    upload(
        &store,
        &cache,
        std::slice::from_ref(&user),
        &UploadOptions {
            compression: Compression::Zstd,
            key: Some(key),
        },
    )?;
    let user_record = store.path_info(&user)?.ok_or("user")?;
    let f = store.physical(&path);
    for p in [&path, &user] {
        let file = store.physical(p);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
        std::fs::write(&file, "damaged")?;
    }

    let sub = CacheSubstituter::new(&store, cache.clone(), FetchOptions::trusting(trusted));
    let subs: [&dyn Substituter; 1] = [&sub];
    let report = store.verify_with(
        VerifyOptions {
            check_contents: true,
            repair: true,
        },
        &subs,
    )?;
    let mut want = vec![path.clone(), user.clone()];
    want.sort();
    let mut got = report.refetched.clone();
    got.sort();
    assert_eq!(got, want);
    assert!(report.unregistered_paths.is_empty(), "{report:?}");
    assert_eq!(store.path_info(&user)?.as_ref(), Some(&user_record));
    assert_eq!(std::fs::read_to_string(&f)?, "built on the build machine");
    assert!(store.is_valid(&user)?);
    let recorded = store.path_info(&path)?.ok_or("path")?;
    assert_eq!(recorded.signatures.len(), 1);
    let again = store.verify(VerifyOptions {
        check_contents: true,
        repair: false,
    })?;
    assert!(again.is_clean(), "{again:?}");
    Ok(())
}

/// A path whose content address gives its very name is taken without a
/// signature (as Nix takes such paths), its contents checked against the
/// address; a forged address is no reason to trust anything.
#[test]
fn a_content_address_that_gives_the_path_vouches_for_it() -> Result {
    use bigtop_store::core::{ContentAddress, ContentAddressMethod, Hash, HashAlgo};
    use bigtop_store::PathInfo;
    let tmp = tempfile::tempdir()?;
    let from = Store::open_chroot(tmp.path().join("from"))?;
    let contents = b"a source tarball, say\n";
    let ca = ContentAddress {
        method: ContentAddressMethod::Flat,
        hash: Hash::digest(HashAlgo::Sha256, contents),
    };
    let path = from.store_dir().make_fixed_output_path("src.tar", &ca)?;
    let file = tmp.path().join("src.tar");
    std::fs::write(&file, contents)?;
    let mut nar = Vec::new();
    bigtop_store::core::nar::dump_path(&file, &mut nar)?;
    let mut info = PathInfo::new(
        path.clone(),
        Hash::digest(HashAlgo::Sha256, &nar),
        nar.len() as u64,
        BTreeSet::new(),
    );
    info.ca = Some(ca);
    from.add_nar(info, &mut nar.as_slice())?;
    // Uploaded unsigned.
    let cache = FileCache::open(tmp.path().join("cache"))?;
    upload(
        &from,
        &cache,
        std::slice::from_ref(&path),
        &UploadOptions::default(),
    )?;
    let strict = FetchOptions::trusting(TrustedKeys::default());
    let to = Store::open_chroot(tmp.path().join("to"))?;
    fetch(&to, &cache, std::slice::from_ref(&path), &strict)?;
    let recorded = to.path_info(&path)?.ok_or("path")?;
    assert_eq!(recorded.ca, Some(ca));
    assert!(recorded.signatures.is_empty());
    assert_eq!(std::fs::read(to.physical(&path))?, contents);

    // Other contents under the same address (the narinfo's NAR hash and
    // size made to match them): the address does not hold for them.
    let narinfo = narinfo_file(&cache, &path);
    let evil = tmp.path().join("evil");
    std::fs::write(&evil, b"something else entirely\n")?;
    let mut evil_nar = Vec::new();
    bigtop_store::core::nar::dump_path(&evil, &mut evil_nar)?;
    std::fs::write(cache.dir().join("nar/evil.nar"), &evil_nar)?;
    let original = std::fs::read_to_string(&narinfo)?;
    set_field(&narinfo, "URL", Some("nar/evil.nar"))?;
    set_field(&narinfo, "Compression", Some("none"))?;
    set_field(&narinfo, "FileHash", None)?;
    set_field(&narinfo, "FileSize", None)?;
    let evil_hash = Hash::digest(HashAlgo::Sha256, &evil_nar);
    set_field(&narinfo, "NarHash", Some(&evil_hash.to_string()))?;
    set_field(&narinfo, "NarSize", Some(&evil_nar.len().to_string()))?;
    let victim = Store::open_chroot(tmp.path().join("victim"))?;
    let e = fetch(&victim, &cache, std::slice::from_ref(&path), &strict)
        .expect_err("contents the content address does not hold for");
    let chain = format!(
        "{e}: {:?}",
        std::error::Error::source(&e).map(|s| s.to_string())
    );
    assert!(chain.contains(&ca.hash.to_string()), "{chain}");
    assert!(victim.all_valid_paths()?.is_empty());
    assert_consistent(&victim)?;
    std::fs::write(&narinfo, original)?;

    // The address changed: it no longer gives the path, and nothing else
    // vouches for it.
    let other = ContentAddress {
        method: ContentAddressMethod::Flat,
        hash: Hash::digest(HashAlgo::Sha256, b"something else"),
    };
    set_field(&narinfo, "CA", Some(&other.to_string()))?;
    let elsewhere = Store::open_chroot(tmp.path().join("elsewhere"))?;
    let e = fetch(&elsewhere, &cache, std::slice::from_ref(&path), &strict)
        .expect_err("a content address that does not give the path");
    assert!(matches!(e, CacheError::Untrusted { .. }), "{e}");
    assert!(elsewhere.all_valid_paths()?.is_empty());
    Ok(())
}

/// A cache whose `nar/` folder is a symbolic link takes no upload: reads
/// follow no symbolic link, so what went there could never be read back.
#[test]
fn an_upload_through_a_symlinked_folder_is_refused() -> Result {
    let tmp = tempfile::tempdir()?;
    let from = Store::open_chroot(tmp.path().join("from"))?;
    let (_, app) = two(&from)?;
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere)?;
    std::fs::create_dir_all(tmp.path().join("cache"))?;
    std::os::unix::fs::symlink(&elsewhere, tmp.path().join("cache/nar"))?;
    let cache = FileCache::open(tmp.path().join("cache"))?;
    let e = upload(
        &from,
        &cache,
        std::slice::from_ref(&app),
        &UploadOptions::default(),
    )
    .expect_err("a symlinked nar/");
    assert!(e.to_string().contains("not a folder"), "{e}");
    assert_eq!(std::fs::read_dir(&elsewhere)?.count(), 0);
    Ok(())
}
