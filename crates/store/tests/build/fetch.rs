//! Fixed-output fetches (`builtin:fetchurl`) from `file://` URLs and from
//! an HTTP server on 127.0.0.1; and a sandboxed fixed-output builder
//! reaching that server while an ordinary one cannot.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bigtop_store::build::Error;
use bigtop_store::build::{BuildOptions, Sandboxing};
use bigtop_store::core::content_address::{ContentAddress, ContentAddressMethod};
use bigtop_store::core::derivation::{Derivation, DerivationOutput, OutputName};
use bigtop_store::core::hash::{Hash, HashAlgo};
use bigtop_store::core::nar;

use super::{build_out, direct_store, fill, plain, sh, strays, TestResult};

/// What the server answers to one request.
#[derive(Clone)]
enum Answer {
    Body(Vec<u8>),
    Status(u16),
    /// A `Content-Length` larger than the body, then the connection closes.
    Cut(Vec<u8>),
    Redirect(String),
}

/// An HTTP/1.1 server on 127.0.0.1: each path answers from its queue (the
/// last answer repeats); every request's path is recorded.
struct Server {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(routes: Vec<(&str, Vec<Answer>)>) -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let routes: BTreeMap<String, VecDeque<Answer>> = routes
            .into_iter()
            .map(|(p, a)| (p.to_owned(), a.into()))
            .collect();
        let routes = Arc::new(Mutex::new(routes));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let h = hits.clone();
        // Detached: it ends with the test process.
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = serve(conn, &routes, &h);
            }
        });
        Ok(Server { addr, hits })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

fn serve(
    conn: TcpStream,
    routes: &Mutex<BTreeMap<String, VecDeque<Answer>>>,
    hits: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let path = request.split(' ').nth(1).unwrap_or("").to_owned();
    hits.lock().unwrap().push(path.clone());
    let answer = {
        let mut routes = routes.lock().unwrap();
        match routes.get_mut(&path) {
            Some(q) if q.len() > 1 => q.pop_front(),
            Some(q) => q.front().cloned(),
            None => None,
        }
    };
    let mut w = conn;
    let head = |status: &str, len: usize, extra: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n")
    };
    match answer {
        Some(Answer::Body(b)) => {
            w.write_all(head("200 OK", b.len(), "").as_bytes())?;
            w.write_all(&b)?;
        }
        Some(Answer::Status(code)) => {
            w.write_all(head(&format!("{code} Whatever"), 0, "").as_bytes())?;
        }
        Some(Answer::Cut(b)) => {
            w.write_all(head("200 OK", b.len() + 1000, "").as_bytes())?;
            w.write_all(&b)?;
        }
        Some(Answer::Redirect(to)) => {
            w.write_all(head("302 Found", 0, &format!("Location: {to}\r\n")).as_bytes())?;
        }
        None => w.write_all(head("404 Not Found", 0, "").as_bytes())?,
    }
    w.flush()
}

/// A `builtin:fetchurl` derivation of `env` expecting `hash` of `method`.
fn fetch_drv(
    store: &bigtop_store::Store,
    name: &str,
    env: &[(&str, &str)],
    method: ContentAddressMethod,
    hash: Hash,
) -> Derivation {
    let mut d = Derivation::new(name, "builtin", "builtin:fetchurl");
    for (k, v) in env {
        d.env.insert((*k).into(), (*v).into());
    }
    d.outputs.insert(
        OutputName::out(),
        DerivationOutput::Fixed(ContentAddress::new(method, hash)),
    );
    fill(store, &mut d);
    d
}

#[test]
fn an_http_fetch_is_checked_registered_and_not_repeated() -> TestResult {
    let body = b"release tarball bytes\n".to_vec();
    let server = Server::start(vec![("/src.tar", vec![Answer::Body(body.clone())])])?;
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let hash = Hash::digest(HashAlgo::Sha256, &body);
    let url = server.url("/src.tar");
    let d = fetch_drv(
        &store,
        "src.tar",
        &[("url", &url)],
        ContentAddressMethod::Flat,
        hash,
    );
    let out = build_out(&store, plain(), &d)?;
    assert_eq!(std::fs::read(store.physical(&out))?, body);
    let info = store.path_info(&out)?.ok_or("not registered")?;
    assert_eq!(info.ca.map(|c| c.hash), Some(hash));
    // The path is the fixed-output path: the URL is not part of it.
    assert_eq!(
        Some(out.clone()),
        d.output_path(store.store_dir(), &OutputName::out())
    );
    let log = store
        .read_log(&store.add_derivation(&d)?)?
        .ok_or("no log")?;
    assert!(
        log.contains(&format!("fetching {url}")),
        "the log says what was fetched"
    );
    assert_eq!(build_out(&store, plain(), &d)?, out);
    assert_eq!(
        server.hits(),
        vec!["/src.tar"],
        "a valid output is not fetched again"
    );
    Ok(())
}

#[test]
fn a_wrong_hash_prints_both_hashes_and_leaves_nothing() -> TestResult {
    let server = Server::start(vec![(
        "/f",
        vec![Answer::Body(b"changed upstream".to_vec())],
    )])?;
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let pinned = Hash::digest(HashAlgo::Sha256, b"what it was");
    let got = Hash::digest(HashAlgo::Sha256, b"changed upstream");
    let d = fetch_drv(
        &store,
        "f",
        &[("url", &server.url("/f"))],
        ContentAddressMethod::Flat,
        pinned,
    );
    let err = build_out(&store, plain(), &d).unwrap_err().to_string();
    assert!(
        err.contains(&format!("specified: {}", pinned.to_sri())),
        "{err}"
    );
    assert!(err.contains(&format!("got: {}", got.to_sri())), "{err}");
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

#[test]
fn mirrors_are_tried_in_order_and_transient_errors_retried() -> TestResult {
    let body = b"mirrored".to_vec();
    let server = Server::start(vec![
        ("/gone", vec![Answer::Status(404)]),
        (
            "/flaky",
            vec![
                Answer::Status(503),
                Answer::Cut(b"mirr".to_vec()),
                Answer::Body(body.clone()),
            ],
        ),
        ("/moved", vec![Answer::Redirect("/flaky".into())]),
    ])?;
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let urls = format!("{} {}", server.url("/gone"), server.url("/moved"));
    let d = fetch_drv(
        &store,
        "mirrored",
        &[("urls", &urls)],
        ContentAddressMethod::Flat,
        Hash::digest(HashAlgo::Blake3, &body),
    );
    let out = build_out(&store, plain(), &d)?;
    assert_eq!(std::fs::read(store.physical(&out))?, body);
    // A 404 is final for its mirror; a 503 and a cut body are retried.
    assert_eq!(
        server.hits(),
        vec!["/gone", "/moved", "/flaky", "/moved", "/flaky", "/moved", "/flaky"]
    );
    Ok(())
}

#[test]
fn every_failed_url_is_named() -> TestResult {
    let server = Server::start(vec![])?;
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let missing = tmp.path().join("no such file");
    let encoded = missing.display().to_string().replace(' ', "%20");
    let urls = format!("{} file://{encoded}", server.url("/a"));
    let d = fetch_drv(
        &store,
        "nowhere",
        &[("urls", &urls)],
        ContentAddressMethod::Flat,
        Hash::digest(HashAlgo::Sha256, b""),
    );
    let err = build_out(&store, plain(), &d).unwrap_err().to_string();
    assert!(err.contains(&server.url("/a")), "{err}");
    assert!(err.contains("HTTP status 404"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

#[test]
fn a_file_url_fetches_an_executable_with_a_recursive_hash() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let src = tmp.path().join("tool.sh");
    std::fs::write(&src, "#!/bin/sh\necho tool\n")?;
    // The expected hash is that of the NAR of an executable file.
    let reference = tmp.path().join("reference");
    std::fs::write(&reference, "#!/bin/sh\necho tool\n")?;
    std::fs::set_permissions(
        &reference,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let (hash, _) = nar::hash_path(&reference, HashAlgo::Sha256)?;
    let url = format!("file://{}", src.display());
    let d = fetch_drv(
        &store,
        "tool.sh",
        &[("url", &url), ("executable", "1")],
        ContentAddressMethod::Recursive,
        hash,
    );
    let out = build_out(&store, plain(), &d)?;
    let out = store.physical(&out);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out)?.permissions());
    assert_eq!(mode & 0o777, 0o555);
    Ok(())
}

#[test]
fn only_fixed_outputs_may_fetch() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let mut d = Derivation::new("impure", "builtin", "builtin:fetchurl");
    d.env.insert("url".into(), "file:///etc/hostname".into());
    fill(&store, &mut d);
    let err = build_out(&store, plain(), &d).unwrap_err();
    assert!(matches!(err, Error::BuildFailed(_)), "{err}");
    assert!(err.to_string().contains("fixed-output"), "{err}");
    Ok(())
}

/// perl (from perl-base, essential in Debian) as a network client: the
/// sandbox sees the host's `/usr`, `/lib` and `/lib64` read-only.
fn perl_options() -> BuildOptions {
    let mut paths: Vec<(PathBuf, PathBuf)> = Vec::new();
    for p in ["/usr", "/lib", "/lib64", "/bin"] {
        if std::path::Path::new(p).exists() {
            paths.push((p.into(), p.into()));
        }
    }
    BuildOptions {
        sandbox: Sandboxing::Required,
        sandbox_paths: Some(paths),
        ..plain()
    }
}

#[test]
fn in_the_sandbox_only_a_fixed_output_builder_reaches_the_network() -> TestResult {
    let body = b"over the loopback\n".to_vec();
    let server = Server::start(vec![("/x", vec![Answer::Body(body.clone())])])?;
    let tmp = tempfile::tempdir()?;
    let store = bigtop_store::Store::open_chroot(tmp.path())?;
    let script = format!(
        "use IO::Socket::INET; \
         my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => {port}) \
           or die qq(no network: $!\\n); \
         print $s qq(GET /x HTTP/1.0\\r\\n\\r\\n); \
         local $/; my $r = <$s>; $r =~ s/^.*?\\r\\n\\r\\n//s; \
         open(my $o, '>', $ENV{{out}}) or die; print $o $r;",
        port = server.addr.port()
    );
    let perl = |store: &bigtop_store::Store, name: &str| {
        let mut d = sh(store, name, "", &[]);
        d.builder = "/usr/bin/perl".into();
        d.args = vec!["-e".into(), script.clone()];
        d
    };
    let mut fixed = perl(&store, "fetch-fixed");
    fixed.outputs.insert(
        OutputName::out(),
        DerivationOutput::Fixed(ContentAddress::new(
            ContentAddressMethod::Flat,
            Hash::digest(HashAlgo::Sha256, &body),
        )),
    );
    fill(&store, &mut fixed);
    let out = build_out(&store, perl_options(), &fixed)?;
    assert_eq!(std::fs::read(store.physical(&out))?, body);

    let mut ordinary = perl(&store, "fetch-ordinary");
    fill(&store, &mut ordinary);
    let err = build_out(&store, perl_options(), &ordinary).unwrap_err();
    let Error::BuildFailed(failures) = &err else {
        return Err(format!("unexpected error: {err}").into());
    };
    assert!(
        failures[0]
            .log_tail
            .iter()
            .any(|l| l.contains("no network")),
        "{:?}",
        failures[0].log_tail
    );
    assert_eq!(server.hits(), vec!["/x"]);
    Ok(())
}

/// A tarball: directories, files (`(path, contents, mode)`) and symlinks
/// (`(path, target)`), gzip-compressed or not.
fn tarball(files: &[(&str, &str, u32)], links: &[(&str, &str)], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, contents, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(contents.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, contents.as_bytes()).unwrap();
    }
    for (path, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, path, target).unwrap();
    }
    let bytes = b.into_inner().unwrap();
    if !gzip {
        return bytes;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bytes).unwrap();
    gz.finish().unwrap()
}

/// The NAR sha256 of the tree the tarball of the tests unpacks to.
fn unpacked_hash(tmp: &std::path::Path) -> Result<Hash, Box<dyn std::error::Error>> {
    use std::os::unix::fs::PermissionsExt;
    let r = tmp.join("reference");
    std::fs::create_dir_all(r.join("src"))?;
    std::fs::write(r.join("src/main.c"), "int main(){}\n")?;
    std::fs::write(r.join("run.sh"), "#!/bin/sh\n")?;
    std::fs::set_permissions(r.join("run.sh"), std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::symlink("src/main.c", r.join("link"))?;
    Ok(nar::hash_path(&r, HashAlgo::Sha256)?.0)
}

#[test]
fn a_tarball_is_unpacked_its_top_directory_stripped_and_checked_as_a_tree() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let tgz = tarball(
        &[
            ("hello-1.0/src/main.c", "int main(){}\n", 0o644),
            ("hello-1.0/run.sh", "#!/bin/sh\n", 0o755),
        ],
        &[("hello-1.0/link", "src/main.c")],
        true,
    );
    let server = Server::start(vec![("/hello-1.0.tar.gz", vec![Answer::Body(tgz)])])?;
    let url = server.url("/hello-1.0.tar.gz");
    let hash = unpacked_hash(tmp.path())?;
    let env = [("url", url.as_str()), ("unpack", "1")];

    // Unpinned (a hash of zeros): the failure gives the hash to pin.
    let unpinned = fetch_drv(
        &store,
        "hello-src",
        &env,
        ContentAddressMethod::Recursive,
        Hash::new(HashAlgo::Sha256, [0; 32]),
    );
    let err = build_out(&store, plain(), &unpinned)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no hash pinned yet") && err.contains(&format!("got: {}", hash.to_sri())),
        "{err}"
    );
    assert_eq!(strays(&store), Vec::<String>::new());

    let d = fetch_drv(
        &store,
        "hello-src",
        &env,
        ContentAddressMethod::Recursive,
        hash,
    );
    let out = store.physical(&build_out(&store, plain(), &d)?);
    assert_eq!(
        std::fs::read_to_string(out.join("src/main.c"))?,
        "int main(){}\n"
    );
    assert_eq!(
        std::fs::read_link(out.join("link"))?,
        PathBuf::from("src/main.c")
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["link", "run.sh", "src"]);
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}

#[test]
fn a_tarball_of_several_entries_is_kept_whole_and_a_bad_one_is_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let store = direct_store(tmp.path());
    let plain_tar = tarball(&[("a", "a\n", 0o644), ("b/c", "c\n", 0o644)], &[], false);
    std::fs::write(tmp.path().join("two.tar"), &plain_tar)?;
    let reference = tmp.path().join("ref-two");
    std::fs::create_dir_all(reference.join("b"))?;
    std::fs::write(reference.join("a"), "a\n")?;
    std::fs::write(reference.join("b/c"), "c\n")?;
    let (hash, _) = nar::hash_path(&reference, HashAlgo::Sha256)?;
    let url = format!("file://{}", tmp.path().join("two.tar").display());
    let d = fetch_drv(
        &store,
        "two",
        &[("url", &url), ("unpack", "1")],
        ContentAddressMethod::Recursive,
        hash,
    );
    let out = store.physical(&build_out(&store, plain(), &d)?);
    assert_eq!(std::fs::read_to_string(out.join("b/c"))?, "c\n");

    // Not a tarball at all: refused, naming why, leaving nothing.
    std::fs::write(
        tmp.path().join("junk.tar"),
        "this is not a tarball, not even close",
    )?;
    let url = format!("file://{}", tmp.path().join("junk.tar").display());
    let bad = fetch_drv(
        &store,
        "junk",
        &[("url", &url), ("unpack", "1")],
        ContentAddressMethod::Recursive,
        hash,
    );
    let err = build_out(&store, plain(), &bad).unwrap_err().to_string();
    assert!(err.contains("not a tarball"), "{err}");
    assert_eq!(strays(&store), Vec::<String>::new());

    // An entry climbing out of the output: refused, nothing written there.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_old();
    let name = b"../escaped";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, &b"evil"[..])?;
    std::fs::write(tmp.path().join("evil.tar"), b.into_inner()?)?;
    let url = format!("file://{}", tmp.path().join("evil.tar").display());
    let evil = fetch_drv(
        &store,
        "evil",
        &[("url", &url), ("unpack", "1")],
        ContentAddressMethod::Recursive,
        hash,
    );
    assert!(build_out(&store, plain(), &evil).is_err());
    assert!(!store.root().join("escaped").exists());
    assert!(!tmp.path().join("escaped").exists());
    assert_eq!(strays(&store), Vec::<String>::new());
    Ok(())
}
