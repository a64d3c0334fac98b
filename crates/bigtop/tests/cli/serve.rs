//! `bigtop cache serve`: the binary, serving a chroot store on an
//! ephemeral port, read by bigtop's own substituter, by the real Nix
//! (2.8), and by hostile or impatient clients.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use bigtop::core::{Hash, HashAlgo, Hasher, SecretKey, StoreDir, StorePath, TrustedKeys};
use bigtop::store::cache::{fetch, CacheError, FetchOptions, HttpCache};
use bigtop::store::Store;
use serde_json::Value;

use crate::Result;

/// A running `bigtop cache serve`, killed when dropped.
struct Serving {
    child: Child,
    /// Kept open: the server's standard output.
    _stdout: BufReader<ChildStdout>,
    addr: String,
    stderr: PathBuf,
}

impl Serving {
    /// Serves the chroot store `store` on 127.0.0.1, port 0, with `args`
    /// added; returns once it printed where it listens.
    fn start(store: &Path, args: &[&str]) -> Result<Serving> {
        let stderr = store.with_extension(format!("serve-{}.log", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_bigtop"))
            .args([
                "cache",
                "serve",
                "--json",
                "--listen",
                "127.0.0.1:0",
                "--store",
            ])
            .arg(store)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr)?)
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.is_empty() {
            let _ = child.wait();
            return Err(
                format!("the server did not start: {}", fs::read_to_string(&stderr)?).into(),
            );
        }
        let json: Value = serde_json::from_str(&line)?;
        let addr = json["listen"].as_str().ok_or("no `listen`")?.to_owned();
        assert_eq!(json["url"], format!("http://{addr}"));
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        Ok(Serving {
            child,
            _stdout: stdout,
            addr,
            stderr,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to standard error.
    fn stderr(&self) -> Result<String> {
        Ok(fs::read_to_string(&self.stderr)?)
    }

    /// Its peak resident memory in bytes (`VmHWM`).
    fn peak_rss(&self) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let hwm = crate::vm_hwm(&status).ok_or("no VmHWM")?;
        Ok(u64::try_from(hwm)?)
    }

    /// How many of its open descriptors are `file`.
    fn open_count(&self, file: &Path) -> Result<usize> {
        self.open_where(|l| l == file)
    }

    /// How many of its open descriptors are files `is` says yes to.
    fn open_where(&self, is: impl Fn(&Path) -> bool) -> Result<usize> {
        let mut n = 0;
        for fd in fs::read_dir(format!("/proc/{}/fd", self.pid()))? {
            // A descriptor closed while listing is not open.
            if fs::read_link(fd?.path()).is_ok_and(|l| is(&l)) {
                n += 1;
            }
        }
        Ok(n)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.stderr);
    }
}

/// An agent that takes every status as an answer.
fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build(),
    )
}

/// `GET url`: the status and the body.
fn get(url: &str) -> Result<(u16, Vec<u8>)> {
    let mut r = agent().get(url).call()?;
    let status = r.status().as_u16();
    Ok((
        status,
        r.body_mut().with_config().limit(1 << 30).read_to_vec()?,
    ))
}

/// The text of `GET url`, which must answer 200.
fn get_text(url: &str) -> Result<String> {
    let (status, body) = get(url)?;
    assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
    Ok(String::from_utf8(body)?)
}

/// A narinfo's field.
fn field<'a>(narinfo: &'a str, key: &str) -> Result<&'a str> {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .ok_or_else(|| format!("no `{key}` in {narinfo}").into())
}

/// One raw request, as a hostile client sends it (nothing normalized):
/// the status line and the whole answer.
fn raw(addr: &str, request_line: &str) -> Result<(String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{request_line} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.lines().next().unwrap_or("").to_owned();
    Ok((status, answer))
}

/// The `Content-Length` of `HEAD target`, which must answer 200 with no
/// body.
fn head_length(addr: &str, target: &str) -> Result<Option<u64>> {
    let (status, answer) = raw(addr, &format!("HEAD {target}"))?;
    assert!(status.contains(" 200 "), "HEAD {target}: {answer}");
    assert!(answer.ends_with("\r\n\r\n"), "a body: {answer:?}");
    let length = answer.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse())
    });
    Ok(length.transpose()?)
}

fn nix_dir() -> Result<StoreDir> {
    Ok(StoreDir::new("/nix/store")?)
}

/// A chroot store at `dir` with the logical dir `store_dir`.
fn open(dir: &Path, store_dir: StoreDir) -> Result<Store> {
    Ok(Store::builder().store_dir(store_dir).chroot(dir).open()?)
}

/// lib ← app, and app's text names lib.
fn closure(store: &Store) -> Result<(StorePath, StorePath)> {
    let lib = store.add_text("lib", &b"a library ".repeat(500), &BTreeSet::new())?;
    let text = format!("an app using {}", store.store_dir().full(&lib));
    let app = store.add_text("app", text.as_bytes(), &BTreeSet::from([lib.clone()]))?;
    Ok((lib, app))
}

/// A key pair in Nix's files under `dir`: the secret key file and the key.
fn key(dir: &Path, name: &str) -> Result<(PathBuf, SecretKey)> {
    let key = SecretKey::generate(name)?;
    let file = dir.join(format!("{name}.secret"));
    fs::write(&file, key.to_string())?;
    Ok((file, key))
}

#[test]
fn bigtop_substitutes_a_closure_from_cache_serve_under_the_trusted_key_only() -> Result {
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    let (lib, app) = closure(&Store::open_chroot(&served)?)?;
    let (key_file, key) = key(tmp.path(), "cache-1")?;
    let server = Serving::start(&served, &["--sign", key_file.to_str().ok_or("path")?])?;
    let cache = HttpCache::new(&server.url())?;

    let info = get_text(&format!("{}/nix-cache-info", server.url()))?;
    assert_eq!(
        info,
        "StoreDir: /bigtop/store\nWantMassQuery: 1\nPriority: 30\n"
    );
    // HEAD says the length GET sends; for a narinfo, before its hash is
    // known (HEAD computes none) and signed.
    assert_eq!(
        head_length(&server.addr, "/nix-cache-info")?,
        Some(info.len() as u64)
    );
    for p in [&lib, &app] {
        let target = format!("/{}.narinfo", p.digest());
        let length = head_length(&server.addr, &target)?;
        let narinfo = get_text(&format!("{}{target}", server.url()))?;
        assert!(narinfo.contains("\nSig: cache-1:"), "{narinfo}");
        assert_eq!(length, Some(narinfo.len() as u64), "{narinfo}");
    }

    // Under another key: refused, naming the key that signed.
    let other = SecretKey::generate("other-1")?;
    let to = Store::open_chroot(tmp.path().join("untrusting"))?;
    let e = fetch(
        &to,
        &cache,
        std::slice::from_ref(&app),
        &FetchOptions::trusting([other.public()].into_iter().collect()),
    )
    .expect_err("an untrusted cache");
    assert!(
        matches!(&e, CacheError::Untrusted { seen, .. } if seen == &["cache-1"]),
        "{e}"
    );
    assert!(to.all_valid_paths()?.is_empty());

    let trusted: TrustedKeys = [key.public()].into_iter().collect();
    let to_dir = tmp.path().join("to");
    let to = Store::open_chroot(&to_dir)?;
    let report = fetch(
        &to,
        &cache,
        std::slice::from_ref(&app),
        &FetchOptions::trusting(trusted.clone()),
    )?;
    assert_eq!(
        report.copied.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&lib, &app])
    );
    let from = Store::open_chroot(&served)?;
    for p in [&lib, &app] {
        assert_eq!(fs::read(to.physical(p))?, fs::read(from.physical(p))?);
        // What was fetched is recorded with the SHA-256 the narinfo said.
        let (sha256, size) = bigtop::core::nar::hash_path(&from.physical(p), HashAlgo::Sha256)?;
        let got = to.path_info(p)?.ok_or("not fetched")?;
        assert_eq!((got.nar_hash, got.nar_size), (sha256, size));
    }
    assert_eq!(to.references(&app)?, BTreeSet::from([lib.clone()]));
    drop(to);

    // That store, holding SHA-256 hashes and the signatures, served on
    // without a key of its own: the signatures go with the paths.
    let relay = Serving::start(&to_dir, &[])?;
    let again = Store::open_chroot(tmp.path().join("again"))?;
    fetch(
        &again,
        &HttpCache::new(&relay.url())?,
        std::slice::from_ref(&app),
        &FetchOptions::trusting(trusted),
    )?;
    assert!(again.is_valid(&app)? && again.is_valid(&lib)?);
    assert_eq!(server.stderr()?, "");
    assert_eq!(relay.stderr()?, "");
    Ok(())
}

/// The real Nix, run as root without a daemon, its caches under `home`.
fn nix(home: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("nix")
        .args(args)
        .env(
            "NIX_CONFIG",
            "build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters =\nrequire-sigs = true\n",
        )
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache-home"))
        .output()
        .map_err(|e| format!("cannot run nix (apt-get install nix-bin): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nix {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn nix_substitutes_a_closure_from_cache_serve_and_refuses_it_under_another_key() -> Result {
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    let ours = open(&served, nix_dir()?)?;
    let (lib, app) = closure(&ours)?;
    let (key_file, key) = key(tmp.path(), "cache-1")?;
    let full = ours.store_dir().full(&app);
    for compression in ["zstd", "xz", "none"] {
        let server = Serving::start(
            &served,
            &[
                "--store-dir",
                "/nix/store",
                "--sign",
                key_file.to_str().ok_or("path")?,
                "--compression",
                compression,
            ],
        )?;
        let root = tmp.path().join(format!("nix-{compression}"));
        let store = format!("local?root={}", root.display());
        nix(
            &root,
            &[
                "copy",
                "--from",
                &server.url(),
                "--to",
                &store,
                "--option",
                "trusted-public-keys",
                &key.public().to_string(),
                &full,
            ],
        )?;
        for p in [&lib, &app] {
            let physical = root.join(ours.store_dir().full(p).trim_start_matches('/'));
            assert_eq!(
                fs::read(&physical)?,
                fs::read(ours.physical(p))?,
                "{compression}"
            );
        }
        let info: Value = serde_json::from_str(&nix(
            &root,
            &["path-info", "--store", &store, "--json", &full],
        )?)?;
        assert_eq!(
            info[0]["references"],
            serde_json::json!([ours.store_dir().full(&lib)]),
            "{info}"
        );
        assert!(
            info[0]["signatures"].to_string().contains("cache-1:"),
            "{info}"
        );

        // Under a key it does not trust: refused.
        let other = tmp.path().join(format!("nix-untrusting-{compression}"));
        let e = nix(
            &other,
            &[
                "copy",
                "--from",
                &server.url(),
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
        assert!(!other.join(full.trim_start_matches('/')).exists());
        assert_eq!(server.stderr()?, "", "{compression}");
    }
    Ok(())
}

#[test]
fn bad_names_and_methods_are_refused_and_no_file_is_ever_read() -> Result {
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    let store = Store::open_chroot(&served)?;
    let (_, app) = closure(&store)?;
    let info = store.path_info(&app)?.ok_or("no info")?;
    // A tree in the store dir that the store does not hold.
    let stray = StorePath::from_base_name("00000000000000000000000000000000-stray")?;
    fs::write(store.physical(&stray), "root:x:0:0 not served\n")?;
    drop(store);
    // Uncompressed: a NAR's HEAD has a length.
    let server = Serving::start(&served, &["--compression", "none"])?;
    let addr = &server.addr;
    let h = info.nar_hash.to_base32();
    let d = app.digest();
    let cases: &[(&str, &str)] = &[
        ("GET /../../etc/passwd", "404"),
        ("GET /../../../../../../etc/passwd", "404"),
        ("GET /etc/passwd", "404"),
        ("GET /nar/..%2f..", "400"),
        ("GET /nar/../../etc/passwd", "400"),
        ("GET /nar/..%2f..%2f..%2fetc%2fpasswd.nar", "400"),
        ("GET /..%2f..%2fetc%2fpasswd.narinfo", "400"),
        ("GET /../../etc/passwd.narinfo", "404"),
        ("GET /not-a-digest.narinfo", "400"),
        ("GET /00000000000000000000000000000000.narinfo", "404"),
        ("GET /00000000000000000000000000000000-stray", "404"),
        ("GET /nar/00000000000000000000000000000000-stray", "400"),
        (&format!("GET /{app}"), "404"),
        (&format!("GET /{app}.narinfo"), "400"),
        (&format!("GET /nar/{d}.nar"), "400"),
        (&format!("GET /nar/{d}-{h}.nar.gz"), "400"),
        (&format!("GET /nar/{d}-{}.nar", "1".repeat(52)), "404"),
        ("GET /log/x.drv", "404"),
        ("GET /", "404"),
        ("GET http://example.com/etc/passwd", "404"),
        ("POST /nix-cache-info", "405"),
        (&format!("PUT /{d}.narinfo"), "405"),
        (&format!("DELETE /nar/{d}-{h}.nar"), "405"),
    ];
    let stray_digest = "00000000000000000000000000000000";
    let mut failures = Vec::new();
    for (request, want) in cases {
        let (status, answer) = raw(addr, request)?;
        if !status.starts_with(&format!("HTTP/1.1 {want} ")) {
            failures.push(format!("{request}: {status}, not {want}"));
        }
        assert!(!answer.contains("root:"), "{request}: {answer}");
    }
    // The stray tree is not a valid path: its narinfo and NAR are 404.
    let (status, _) = raw(addr, &format!("GET /{stray_digest}.narinfo"))?;
    assert!(status.contains(" 404 "), "{status}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let (status, answer) = raw(addr, "POST /nix-cache-info")?;
    assert!(status.contains(" 405 "), "{status}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\nallow: get, head\r\n"),
        "{answer}"
    );

    // HEAD: the answers GET gives, without their bodies.
    let narinfo_length = head_length(addr, &format!("/{d}.narinfo"))?;
    let (status, _) = raw(addr, &format!("HEAD /{stray_digest}.narinfo"))?;
    assert!(status.contains(" 404 "), "{status}");
    let (status, answer) = raw(addr, &format!("HEAD /nar/{d}-{h}.nar"))?;
    assert!(status.contains(" 200 "), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("\ncontent-length: {}\r\n", info.nar_size)),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\n"), "a body: {answer:?}");
    let (status, answer) = raw(addr, "HEAD /nix-cache-info")?;
    assert!(
        status.contains(" 200 ") && answer.ends_with("\r\n\r\n"),
        "{answer}"
    );

    // And what the narinfo names is served.
    let narinfo = get_text(&format!("{}/{d}.narinfo", server.url()))?;
    assert_eq!(narinfo_length, Some(narinfo.len() as u64));
    let url = field(&narinfo, "URL")?;
    assert_eq!(url, format!("nar/{d}-{h}.nar"));
    let (status, nar) = get(&format!("{}/nar/{d}-{h}.nar", server.url()))?;
    assert_eq!(status, 200);
    let mut want = Vec::new();
    bigtop::core::nar::dump_path(
        &served.join("bigtop/store").join(app.to_string()),
        &mut want,
    )?;
    assert_eq!(nar, want);
    assert_eq!(server.stderr()?, "");
    Ok(())
}

/// Reads a NAR answer through `decode` and hashes it with BLAKE3: its
/// hash and size.
fn hash_nar(body: impl Read, zstd: bool) -> Result<(Hash, u64)> {
    let mut hasher = Hasher::new(HashAlgo::Blake3);
    let mut reader: Box<dyn Read> = if zstd {
        Box::new(zstd::stream::read::Decoder::new(body)?)
    } else {
        Box::new(body)
    };
    let size = io::copy(&mut reader, &mut hasher)?;
    Ok((hasher.finish(), size))
}

/// The serving process's peak memory must not grow with the path: a
/// 4 GiB file (of zeros, cheap to generate and compress, so the test
/// measures the server, not the disk) streams in under 64 MiB.
#[test]
fn a_4_gib_path_is_served_in_bounded_memory() -> Result {
    const SIZE: u64 = 4 << 30;
    const LIMIT: u64 = 64 << 20;
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    let big_file = tmp.path().join("big");
    fs::File::create(&big_file)?.set_len(SIZE)?;
    let started = Instant::now();
    let (path, info) = {
        let store = Store::open_chroot(&served)?;
        let path = store.add_path("big", &big_file, &|_| true)?;
        (path.clone(), store.path_info(&path)?.ok_or("not added")?)
    };
    fs::remove_file(&big_file)?;
    eprintln!("added 4 GiB in {:?}", started.elapsed());
    let server = Serving::start(&served, &[])?;
    let before = server.peak_rss()?;

    let started = Instant::now();
    let narinfo = get_text(&format!("{}/{}.narinfo", server.url(), path.digest()))?;
    eprintln!("narinfo (SHA-256 of 4 GiB) in {:?}", started.elapsed());
    assert_eq!(field(&narinfo, "NarSize")?, info.nar_size.to_string());
    let url = format!("{}/{}", server.url(), field(&narinfo, "URL")?);
    assert!(url.ends_with(".nar.zst"), "{url}");

    let started = Instant::now();
    let r = agent().get(&url).call()?;
    assert_eq!(r.status().as_u16(), 200);
    let (hash, size) = hash_nar(r.into_body().into_reader(), true)?;
    let took = started.elapsed();
    assert_eq!((hash, size), (info.nar_hash, info.nar_size));
    let peak = server.peak_rss()?;
    eprintln!(
        "served 4 GiB (zstd) in {took:?}, {:.0} MiB/s; server peak RSS {} MiB (before: {} MiB)",
        SIZE as f64 / (1 << 20) as f64 / took.as_secs_f64(),
        peak >> 20,
        before >> 20
    );
    assert!(
        peak < LIMIT,
        "the server peaked at {} MiB (limit {} MiB)",
        peak >> 20,
        LIMIT >> 20
    );
    assert_eq!(server.stderr()?, "");
    Ok(())
}

/// Bytes that do not compress, so that a download fills every buffer on
/// the way fast.
fn noise(size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

#[test]
fn a_client_leaving_mid_nar_stops_its_dump_and_the_server_serves_on() -> Result {
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    let (path, info, physical) = {
        let store = Store::open_chroot(&served)?;
        let src = tmp.path().join("noise");
        fs::write(&src, noise(64 << 20))?;
        let path = store.add_path("noise", &src, &|_| true)?;
        let info = store.path_info(&path)?.ok_or("not added")?;
        (path.clone(), info, store.physical(&path))
    };
    let server = Serving::start(&served, &[])?;
    let nar = format!(
        "/nar/{}-{}.nar.zst",
        path.digest(),
        info.nar_hash.to_base32()
    );
    let wait_closed = |what: &str| -> Result {
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.open_count(&physical)? > 0 {
            assert!(Instant::now() < deadline, "{what}: the dump goes on");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };

    // More clients leave than NARs may be dumped at once (64): a dump
    // that did not stop would hold its turn for good.
    for i in 0..80 {
        let mut s = TcpStream::connect(&server.addr)?;
        write!(s, "GET {nar} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut first = [0u8; 4096];
        s.read_exact(&mut first)?;
        assert!(first.starts_with(b"HTTP/1.1 200 OK"), "{i}");
        if i == 0 {
            // While the client does not read, the dump waits, file open.
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(server.open_count(&physical)?, 1);
        }
        drop(s);
        if i == 0 {
            wait_closed("after the first client left")?;
        }
    }
    wait_closed("after 80 clients left")?;

    // Others are served, whole, meanwhile and after.
    let narinfo = get_text(&format!("{}/{}.narinfo", server.url(), path.digest()))?;
    assert_eq!(field(&narinfo, "NarSize")?, info.nar_size.to_string());
    let r = agent().get(&format!("{}{nar}", server.url())).call()?;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        hash_nar(r.into_body().into_reader(), true)?,
        (info.nar_hash, info.nar_size)
    );
    assert_eq!(server.stderr()?, "");
    Ok(())
}

#[test]
fn a_path_changed_on_disk_is_never_served_whole() -> Result {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    let (small, big) = {
        let store = Store::open_chroot(&served)?;
        let small = store.add_text("small", b"the original", &BTreeSet::new())?;
        let src = tmp.path().join("big");
        fs::write(&src, noise(4 << 20))?;
        let big = store.add_path("big", &src, &|_| true)?;
        let infos = [&small, &big].map(|p| store.path_info(p));
        let [small, big] = infos;
        (small?.ok_or("not added")?, big?.ok_or("not added")?)
    };
    let physical = |p: &StorePath| served.join("bigtop/store").join(p.to_string());
    // Same sizes, other bytes: only the hash tells.
    for (info, at) in [(&small, 0u64), (&big, 3 << 20)] {
        let file = physical(&info.path);
        let dir = file.parent().ok_or("parent")?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644))?;
        let f = fs::OpenOptions::new().write(true).open(&file)?;
        std::os::unix::fs::FileExt::write_all_at(&f, b"THE CHANGE", at)?;
    }
    for (compression, ext) in [("none", ".nar"), ("zstd", ".nar.zst"), ("xz", ".nar.xz")] {
        let server = Serving::start(&served, &["--compression", compression])?;
        for info in [&small, &big] {
            let d = info.path.digest();
            // No narinfo: its SHA-256 cannot be known.
            let (status, _) = get(&format!("{}/{d}.narinfo", server.url()))?;
            assert_eq!(status, 404, "{}", info.path);
            // The NAR, asked for by name, never ends.
            let url = format!(
                "{}/nar/{d}-{}{ext}",
                server.url(),
                info.nar_hash.to_base32()
            );
            // Cut before the status line when the dump fails before
            // hyper sends the head (a small path), after it otherwise.
            let Ok(r) = agent().get(&url).call() else {
                continue;
            };
            assert_eq!(r.status().as_u16(), 200);
            let mut body = Vec::new();
            let read = r.into_body().into_reader().read_to_end(&mut body);
            assert!(
                read.is_err(),
                "{url}: {} bytes read as a whole answer",
                body.len()
            );
        }
        let log = server.stderr()?;
        for info in [&small, &big] {
            assert!(
                log.contains(&format!(
                    "warning: `{}` in the store no longer matches its recorded NAR hash and size",
                    info.path
                )),
                "{compression}: {log}"
            );
        }
    }
    Ok(())
}

#[test]
fn serve_names_a_bad_key_file_a_bad_limit_and_an_address_it_cannot_listen_on() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = tmp.path().join("s");
    let store = store.to_str().ok_or("path")?;
    fs::write(tmp.path().join("bad.secret"), "not a key")?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken = taken.local_addr()?.to_string();
    for (args, message) in [
        (
            vec!["--listen", "127.0.0.1:0", "--sign", "missing.secret"],
            "error: cannot read secret key file `missing.secret`".to_owned(),
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--sign", "bad.secret"],
            "error: secret key file `bad.secret` holds no secret key".to_owned(),
        ),
        (
            vec!["--listen", &taken],
            format!("error: cannot listen on `{taken}`"),
        ),
    ] {
        let mut all = vec!["cache", "serve", "--store", store];
        all.extend(args);
        let out = crate::bigtop(&all, b"", tmp.path())?;
        let err = String::from_utf8(out.stderr)?;
        assert_eq!(out.status.code(), Some(1), "{all:?}: {err}");
        assert!(out.stdout.is_empty(), "{all:?}");
        assert!(err.starts_with(&message), "{all:?}: {err}");
    }
    for (flag, value) in [
        ("--send-timeout", "0"),
        ("--nar-wait", "soon"),
        ("--max-nar-streams", "0"),
        ("--max-hash-jobs", "many"),
    ] {
        let args = [
            "cache",
            "serve",
            "--store",
            store,
            "--listen",
            "127.0.0.1:0",
        ];
        let out = crate::bigtop(&[&args[..], &[flag, value]].concat(), b"", tmp.path())?;
        let err = String::from_utf8(out.stderr)?;
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(
            err.starts_with(&format!("error: invalid value '{value}' for '{flag} ")),
            "{err}"
        );
    }
    Ok(())
}

/// The client does not pick what the server spends: a NAR is served in
/// the compression the server was told only (xz takes up to 94 MiB per
/// download, zstd several, none the most bandwidth), any other name of
/// it is 404, as a file the cache lacks.
#[test]
fn a_nar_is_served_only_in_the_servers_compression() -> Result {
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    let store = Store::open_chroot(&served)?;
    let (lib, _) = closure(&store)?;
    let info = store.path_info(&lib)?.ok_or("no info")?;
    drop(store);
    let name = format!("nar/{}-{}.nar", lib.digest(), info.nar_hash.to_base32());
    for (compression, ext) in [("zstd", ".zst"), ("xz", ".xz"), ("none", "")] {
        let server = Serving::start(&served, &["--compression", compression])?;
        let narinfo = get_text(&format!("{}/{}.narinfo", server.url(), lib.digest()))?;
        assert_eq!(field(&narinfo, "URL")?, format!("{name}{ext}"));
        for other in ["", ".zst", ".xz"] {
            let url = format!("{}/{name}{other}", server.url());
            let want = if other == ext { 200 } else { 404 };
            assert_eq!(get(&url)?.0, want, "{compression}: {url}");
            let (status, _) = raw(&server.addr, &format!("HEAD /{name}{other}"))?;
            assert!(
                status.contains(&format!(" {want} ")),
                "{compression}: HEAD {url}: {status}"
            );
        }
        assert_eq!(server.stderr()?, "");
    }
    Ok(())
}

/// Clients that ask for NARs and never read them hold the server's NAR
/// streams only until `--send-timeout`: before, as many such
/// connections as streams (64 by default) blocked every later download
/// for good, each holding a dump thread and a compressor.
#[test]
fn clients_that_never_read_hold_nar_streams_only_until_the_send_timeout() -> Result {
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    let (path, info, physical) = {
        let store = Store::open_chroot(&served)?;
        let src = tmp.path().join("noise");
        // More than the socket buffers on both sides hold: the server
        // is left with bytes the client does not take.
        fs::write(&src, noise(64 << 20))?;
        let path = store.add_path("noise", &src, &|_| true)?;
        let info = store.path_info(&path)?.ok_or("not added")?;
        (path.clone(), info, store.physical(&path))
    };
    let nar = format!(
        "/nar/{}-{}.nar.zst",
        path.digest(),
        info.nar_hash.to_base32()
    );
    // Asks for the NAR and reads the head (sent once a stream is
    // taken), and no more.
    let stall = |server: &Serving| -> Result<TcpStream> {
        let mut s = TcpStream::connect(&server.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(s, "GET {nar} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut head = [0u8; 1024];
        s.read_exact(&mut head)?;
        assert!(head.starts_with(b"HTTP/1.1 200 OK"));
        Ok(s)
    };
    let wait_closed = |server: &Serving| -> Result {
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.open_count(&physical)? > 0 {
            assert!(Instant::now() < deadline, "the dumps go on");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    let whole = |server: &Serving| -> Result {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build(),
        );
        let r = agent.get(&format!("{}{nar}", server.url())).call()?;
        assert_eq!(r.status().as_u16(), 200);
        let got = hash_nar(r.into_body().into_reader(), true)?;
        assert_eq!(got, (info.nar_hash, info.nar_size));
        Ok(())
    };

    // Both streams taken and no turn freed in time: 503, at once.
    let server = Serving::start(
        &served,
        &[
            "--max-nar-streams",
            "2",
            "--send-timeout",
            "2",
            "--nar-wait",
            "0.2",
        ],
    )?;
    let stalled = [stall(&server)?, stall(&server)?];
    let (status, answer) = raw(&server.addr, &format!("GET {nar}"))?;
    assert!(status.contains(" 503 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nretry-after: "),
        "{answer}"
    );
    // Their connections are closed and their dumps stopped once they
    // took nothing for 2 seconds; then a NAR is served whole.
    wait_closed(&server)?;
    whole(&server)?;
    // What they had not read was cut: never the end of the body.
    for mut s in stalled {
        let mut answer = Vec::new();
        if s.read_to_end(&mut answer).is_ok() {
            assert!(!answer.ends_with(b"\r\n0\r\n\r\n"), "a whole answer");
        }
    }
    assert_eq!(server.stderr()?, "");
    drop(server);

    // A request that may wait long enough gets its turn once the send
    // timeout frees one.
    let server = Serving::start(&served, &["--max-nar-streams", "2", "--send-timeout", "2"])?;
    let stalled = [stall(&server)?, stall(&server)?];
    whole(&server)?;
    drop(stalled);
    wait_closed(&server)?;
    assert_eq!(server.stderr()?, "");
    Ok(())
}

/// Narinfos for paths recorded with BLAKE3 cost a NAR dump each, to
/// hash it with SHA-256: those computations used to run on as many
/// threads as there were requests; `--max-hash-jobs` bounds them.
#[test]
fn narinfos_hash_at_most_max_hash_jobs_nars_at_once() -> Result {
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    let paths = {
        let store = Store::open_chroot(&served)?;
        let mut paths = Vec::new();
        for i in 0..4 {
            let src = tmp.path().join(format!("zeros-{i}"));
            fs::File::create(&src)?.set_len(32 << 20)?;
            paths.push(store.add_path(&format!("zeros-{i}"), &src, &|_| true)?);
        }
        paths
    };
    let files: Vec<PathBuf> = paths
        .iter()
        .map(|p| served.join("bigtop/store").join(p.to_string()))
        .collect();
    let server = Serving::start(&served, &["--max-hash-jobs", "1"])?;
    let requests: Vec<_> = paths
        .iter()
        .map(|p| {
            let url = format!("{}/{}.narinfo", server.url(), p.digest());
            std::thread::spawn(move || get(&url).map(|(status, _)| status).ok())
        })
        .collect();
    let mut most = 0;
    while !requests.iter().all(|r| r.is_finished()) {
        most = most.max(server.open_where(|l| files.iter().any(|f| f == l))?);
        std::thread::sleep(Duration::from_millis(2));
    }
    for r in requests {
        assert_eq!(r.join().map_err(|_| "a client panicked")?, Some(200));
    }
    assert_eq!(most, 1, "NARs hashed at once");
    assert_eq!(server.stderr()?, "");
    Ok(())
}

/// SIGTERM stops `cache serve` cleanly: it stops accepting, lets what is
/// under way finish, and exits with success.
#[test]
fn sigterm_stops_the_server_cleanly() -> Result {
    let tmp = tempfile::tempdir()?;
    let store = tmp.path().join("store");
    bigtop::store::Store::open_chroot(&store)?;
    let mut serving = Serving::start(&store, &[])?;
    let pid = i32::try_from(serving.pid())?;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = serving.child.try_wait()? {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", serving.stderr()?);
    assert!(
        serving.stderr()?.contains("finishing"),
        "{}",
        serving.stderr()?
    );
    assert!(
        std::net::TcpStream::connect(&serving.addr).is_err(),
        "still listening"
    );
    Ok(())
}
