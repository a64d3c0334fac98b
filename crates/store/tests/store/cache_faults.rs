//! Binary caches over HTTP that misbehave on purpose: a server (written
//! here, as no real one drops connections on request) that serves a
//! cache's files but cuts or stalls NAR bodies halfway, or redirects
//! uploads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bigtop_store::cache::{
    fetch, upload, CacheError, Compression, FetchOptions, FileCache, HttpCache, UploadOptions,
};
use bigtop_store::core::{SecretKey, StorePath, TrustedKeys};
use bigtop_store::Store;

use crate::{assert_consistent, text, Result};

/// What the server does with NAR requests.
#[derive(Clone, Copy)]
enum Fault {
    /// Sends half the body, then closes the connection.
    Drop,
    /// Sends half the body, then sends nothing more (until stopped).
    Stall,
    /// Sends empty zstd frames for ever, with no length: a stream that
    /// decompresses to nothing and never ends.
    Endless,
}

struct FaultyServer {
    port: u16,
    stop: Arc<AtomicBool>,
    /// NAR requests seen.
    nar_requests: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultyServer {
    /// Serves the files of `dir`; the first `faulty` NAR requests get
    /// `fault`, the ones after the whole file. Every `PUT` is redirected.
    fn start(dir: PathBuf, fault: Fault, faulty: usize) -> Result<FaultyServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let nar_requests = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, nar_requests) = (stop.clone(), nar_requests.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (dir, stop, nar_requests) =
                        (dir.clone(), stop.clone(), nar_requests.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, &dir, fault, faulty, &stop, &nar_requests);
                    });
                }
            })
        };
        Ok(FaultyServer {
            port,
            stop,
            nar_requests,
            thread: Some(thread),
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request per connection (`Connection: close`).
fn serve(
    conn: TcpStream,
    dir: &std::path::Path,
    fault: Fault,
    faulty: usize,
    stop: &AtomicBool,
    nar_requests: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let mut conn = conn;
    if method == "PUT" {
        std::io::copy(&mut reader.take(length as u64), &mut std::io::sink())?;
        return conn.write_all(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let file = dir.join(target.trim_start_matches('/'));
    let Ok(body) = std::fs::read(&file) else {
        return conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    if !(matches!(fault, Fault::Endless) && target.starts_with("/nar/")) {
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
    }
    if method == "HEAD" {
        return Ok(());
    }
    let is_nar = target.starts_with("/nar/");
    if is_nar && matches!(fault, Fault::Endless) {
        nar_requests.fetch_add(1, Ordering::SeqCst);
        return endless(conn, stop);
    }
    if is_nar && nar_requests.fetch_add(1, Ordering::SeqCst) < faulty {
        conn.write_all(&body[..body.len() / 2])?;
        conn.flush()?;
        if let Fault::Stall = fault {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        return conn.shutdown(std::net::Shutdown::Both);
    }
    conn.write_all(&body)
}

/// Skippable zstd frames (magic 0x184D2A50, a length, that many bytes),
/// sent until the client goes or the server stops; the body has no
/// length, and ends only when the connection does.
fn endless(mut conn: TcpStream, stop: &AtomicBool) -> std::io::Result<()> {
    conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
    let mut frame = vec![0x50, 0x2A, 0x4D, 0x18];
    frame.extend_from_slice(&(60_000u32).to_le_bytes());
    frame.resize(8 + 60_000, 0);
    while !stop.load(Ordering::SeqCst) {
        conn.write_all(&frame)?;
    }
    Ok(())
}

/// A file cache holding `app` (which refers to `dep`), with NARs large
/// enough that half of one is many reads; the trusted key.
fn cache(tmp: &std::path::Path) -> Result<(FileCache, StorePath, StorePath, TrustedKeys)> {
    let from = Store::open_chroot(tmp.join("from"))?;
    let dep = text(&from, "dep", &"a library ".repeat(50_000), &[])?;
    // Random-looking, so that it does not compress away.
    let noise: String = (0..400_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    let app = text(&from, "app", &noise, &[&dep])?;
    let key = SecretKey::generate("cache.example.org-1")?;
    let cache = FileCache::open(tmp.join("cache"))?;
    upload(
        &from,
        &cache,
        std::slice::from_ref(&app),
        &UploadOptions {
            compression: Compression::Zstd,
            key: Some(key.clone()),
        },
    )?;
    Ok((cache, dep, app, [key.public()].into_iter().collect()))
}

/// The store holds nothing, registered or staged.
fn assert_empty(store: &Store) -> Result {
    assert!(store.all_valid_paths()?.is_empty(), "something registered");
    assert_consistent(store)?;
    let left: Vec<_> = std::fs::read_dir(store.root())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    assert!(left.is_empty(), "left in the store: {left:?}");
    Ok(())
}

#[test]
fn a_nar_cut_off_midway_is_fetched_again() -> Result {
    let tmp = tempfile::tempdir()?;
    let (cache, dep, app, trusted) = cache(tmp.path())?;
    // The first two NAR answers are cut: both paths need a second try,
    // and one of them a third.
    let server = FaultyServer::start(cache.dir().to_owned(), Fault::Drop, 2)?;
    let to = Store::open_chroot(tmp.path().join("to"))?;
    let report = fetch(
        &to,
        &HttpCache::new(&server.url())?,
        std::slice::from_ref(&app),
        &FetchOptions::trusting(trusted),
    )?;
    assert_eq!(report.copied, [dep, app.clone()]);
    assert_eq!(server.nar_requests.load(Ordering::SeqCst), 4);
    assert!(to.is_valid(&app)?);
    assert_consistent(&to)?;
    Ok(())
}

#[test]
fn a_cache_that_always_cuts_nars_off_fails_the_copy_with_nothing_left() -> Result {
    let tmp = tempfile::tempdir()?;
    let (cache, _, app, trusted) = cache(tmp.path())?;
    let server = FaultyServer::start(cache.dir().to_owned(), Fault::Drop, usize::MAX)?;
    let to = Store::open_chroot(tmp.path().join("to"))?;
    let e = fetch(
        &to,
        &HttpCache::new(&server.url())?,
        std::slice::from_ref(&app),
        &FetchOptions::trusting(trusted),
    )
    .expect_err("every NAR is cut off");
    assert!(e.to_string().contains(&server.url()), "{e}");
    // Each path was tried three times before the copy gave up (the
    // other path may have stopped sooner, once one failed for good).
    assert!(server.nar_requests.load(Ordering::SeqCst) >= 3);
    assert_empty(&to)?;
    Ok(())
}

#[test]
fn a_cache_that_stalls_midway_times_out_with_nothing_left() -> Result {
    let tmp = tempfile::tempdir()?;
    let (cache, _, app, trusted) = cache(tmp.path())?;
    let server = FaultyServer::start(cache.dir().to_owned(), Fault::Stall, usize::MAX)?;
    let to = Store::open_chroot(tmp.path().join("to"))?;
    let started = std::time::Instant::now();
    let e = fetch(
        &to,
        &HttpCache::new(&server.url())?.stall_after(Duration::from_millis(500)),
        std::slice::from_ref(&app),
        &FetchOptions::trusting(trusted),
    )
    .expect_err("every NAR stalls");
    // Not hung: three tries of half a second of silence each, and waits.
    assert!(started.elapsed() < Duration::from_secs(60), "{e}");
    assert!(e.to_string().contains(&server.url()), "{e}");
    assert_empty(&to)?;
    Ok(())
}

#[test]
fn an_upload_redirected_elsewhere_fails_instead_of_passing_for_done() -> Result {
    let tmp = tempfile::tempdir()?;
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty)?;
    let server = FaultyServer::start(empty, Fault::Drop, 0)?;
    let from = Store::open_chroot(tmp.path().join("from"))?;
    let path = text(&from, "hello", "hello", &[])?;
    let e = upload(
        &from,
        &HttpCache::new(&server.url())?,
        std::slice::from_ref(&path),
        &UploadOptions::default(),
    )
    .expect_err("a redirected PUT");
    assert!(matches!(e, CacheError::Io { .. }), "{e:?}");
    let chain = format!(
        "{e}: {:?}",
        std::error::Error::source(&e).map(|s| s.to_string())
    );
    assert!(chain.contains("redirected"), "{chain}");
    Ok(())
}

#[test]
fn a_nar_that_never_ends_is_cut_where_no_compressed_nar_could_reach() -> Result {
    let tmp = tempfile::tempdir()?;
    let (cache, _, app, trusted) = cache(tmp.path())?;
    // `FileSize` is not signed: a cache that claims the largest one must
    // not lift the bound.
    for entry in std::fs::read_dir(cache.dir())? {
        let f = entry?.path();
        if f.extension().is_some_and(|e| e == "narinfo") {
            crate::cache::set_field(&f, "FileSize", Some("18446744073709551615"))?;
        }
    }
    let server = FaultyServer::start(cache.dir().to_owned(), Fault::Endless, usize::MAX)?;
    let to = Store::open_chroot(tmp.path().join("to"))?;
    let e = fetch(
        &to,
        &HttpCache::new(&server.url())?,
        std::slice::from_ref(&app),
        &FetchOptions::trusting(trusted),
    )
    .expect_err("an endless NAR");
    assert!(e.to_string().contains(&server.url()), "{e}");
    assert_empty(&to)?;
    Ok(())
}
