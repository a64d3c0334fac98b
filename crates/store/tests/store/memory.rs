//! A closure holding a 4 GiB file moves between two stores in bounded
//! memory: through the export and import stream, and substituted from a
//! binary cache over HTTP. Each side runs as a child process (this binary
//! again), and its own peak resident memory is read from the kernel while
//! it runs.

use std::collections::BTreeSet;
use std::io::{self, BufReader, Read};
use std::process::{Command, Stdio};

use bigtop_store::core::{Hash, HashAlgo, Hasher, StorePath};
use bigtop_store::{PathInfo, Store};

use crate::Result;

const FILE_SIZE: u64 = 4 << 30;
const LIMIT_BYTES: i64 = 64 << 20;
const DIR_VAR: &str = "BIGTOP_TEST_DIR";
const PATH_VAR: &str = "BIGTOP_TEST_PATH";
/// A FIFO joining the two children: libtest prints to their stdout.
const PIPE_VAR: &str = "BIGTOP_TEST_PIPE";

/// The NAR of one regular file of `size` zero bytes, generated as it is
/// read: nothing the size of the file is ever in memory.
struct ZeroFileNar {
    head: Vec<u8>,
    at: usize,
    zeros: u64,
    tail: Vec<u8>,
    tail_at: usize,
}

impl ZeroFileNar {
    fn new(size: u64) -> Self {
        let s = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
            out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
        };
        let mut head = Vec::new();
        for t in [
            &b"nix-archive-1"[..],
            b"(",
            b"type",
            b"regular",
            b"contents",
        ] {
            s(&mut head, t);
        }
        head.extend_from_slice(&size.to_le_bytes());
        let mut tail = vec![0u8; ((8 - size % 8) % 8) as usize];
        s(&mut tail, b")");
        ZeroFileNar {
            head,
            at: 0,
            zeros: size,
            tail,
            tail_at: 0,
        }
    }
}

impl Read for ZeroFileNar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.head.len() {
            let n = buf.len().min(self.head.len() - self.at);
            buf[..n].copy_from_slice(&self.head[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        if self.zeros > 0 {
            let n = buf.len().min(self.zeros.min(usize::MAX as u64) as usize);
            buf[..n].fill(0);
            self.zeros -= n as u64;
            return Ok(n);
        }
        let n = buf.len().min(self.tail.len() - self.tail_at);
        buf[..n].copy_from_slice(&self.tail[self.tail_at..self.tail_at + n]);
        self.tail_at += n;
        Ok(n)
    }
}

#[test]
#[ignore = "entry point for a child process of the memory test"]
fn child_export() -> Result {
    let store = Store::open_chroot(std::env::var(DIR_VAR)?)?;
    let path = StorePath::from_base_name(&std::env::var(PATH_VAR)?)?;
    let mut out = io::BufWriter::new(
        std::fs::OpenOptions::new()
            .write(true)
            .open(std::env::var(PIPE_VAR)?)?,
    );
    store.export([&path], &mut out)?;
    Ok(())
}

#[test]
#[ignore = "entry point for a child process of the memory test"]
fn child_import() -> Result {
    let store = Store::open_chroot(std::env::var(DIR_VAR)?)?;
    let pipe = std::fs::File::open(std::env::var(PIPE_VAR)?)?;
    let imported = store.import(&mut BufReader::new(pipe))?;
    eprintln!("imported {}", imported.len());
    Ok(())
}

/// A thread that follows process `pid`'s own peak resident memory
/// (`VmHWM` in `/proc/PID/status`, read every 5 ms) until it is gone, and
/// returns it. Not the rusage of children: that is the largest of every
/// child this test binary ever waited for (a Nix or nginx of another
/// test), and counts the test binary's own memory, which a child shares
/// until it execs.
fn follow_peak(pid: u32) -> std::thread::JoinHandle<i64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            // A zombie has no memory lines: it is over.
            let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            else {
                break;
            };
            peak = peak.max(kib * 1024);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        peak
    })
}

#[test]
fn a_4_gib_closure_moves_in_bounded_memory() -> Result {
    let tmp = tempfile::tempdir()?;
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let path = {
        let store = Store::open_chroot(&src)?;
        let mut hasher = Hasher::new(HashAlgo::Blake3);
        let size = io::copy(&mut ZeroFileNar::new(FILE_SIZE), &mut hasher)?;
        let nar_hash: Hash = hasher.finish();
        let path = store
            .store_dir()
            .make_source_path("big", &nar_hash, [], false)?;
        let info = PathInfo::new(path.clone(), nar_hash, size, BTreeSet::new());
        store.add_nar(
            info,
            &mut BufReader::with_capacity(1 << 20, ZeroFileNar::new(FILE_SIZE)),
        )?;
        store.add_root("big", &path)?;
        path
    };
    let exe = std::env::current_exe()?;
    let args = |entry: &'static str| {
        [
            "--exact",
            entry,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]
    };
    let fifo = tmp.path().join("stream");
    let c = std::ffi::CString::new(fifo.to_str().ok_or("path")?)?;
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut export = Command::new(&exe)
        .args(args("memory::child_export"))
        .env(DIR_VAR, &src)
        .env(PATH_VAR, path.to_string())
        .env(PIPE_VAR, &fifo)
        .stdout(Stdio::null())
        .spawn()?;
    let export_peak = follow_peak(export.id());
    let import = Command::new(&exe)
        .args(args("memory::child_import"))
        .env(DIR_VAR, &dst)
        .env(PIPE_VAR, &fifo)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let import_peak = follow_peak(import.id());
    let import = import.wait_with_output()?;
    let exported = export.wait()?;
    assert!(exported.success(), "export failed");
    assert!(
        import.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let join = |h: std::thread::JoinHandle<i64>| h.join().map_err(|_| "the follower panicked");
    let peak = join(export_peak)?.max(join(import_peak)?);
    assert!(
        peak < LIMIT_BYTES,
        "a child peaked at {} MiB (limit 64 MiB)",
        peak >> 20
    );
    // A child that was never seen cannot pass for a small one.
    assert!(peak > 0, "no child was seen running");

    let store = Store::open_chroot(&dst)?;
    let info = store.path_info(&path)?.ok_or("not imported")?;
    assert_eq!(info.nar_size, FILE_SIZE + 112);
    assert_eq!(std::fs::metadata(store.physical(&path))?.len(), FILE_SIZE);
    eprintln!(
        "peak resident memory of export and import: {} MiB",
        peak >> 20
    );
    Ok(())
}

const URL_VAR: &str = "BIGTOP_TEST_URL";
const KEY_VAR: &str = "BIGTOP_TEST_KEY";

#[test]
#[ignore = "entry point for a child process of the memory test"]
fn child_substitute() -> Result {
    use bigtop_store::cache::{fetch, FetchOptions, HttpCache};
    let store = Store::open_chroot(std::env::var(DIR_VAR)?)?;
    let path = StorePath::from_base_name(&std::env::var(PATH_VAR)?)?;
    let cache = HttpCache::new(&std::env::var(URL_VAR)?)?;
    let key: bigtop_store::core::PublicKey = std::env::var(KEY_VAR)?.parse()?;
    let report = fetch(
        &store,
        &cache,
        &[path],
        &FetchOptions::trusting([key].into_iter().collect()),
    )?;
    eprintln!("fetched {}", report.copied.len());
    Ok(())
}

/// A cache on nginx holds one path of a 4 GiB file, its NAR compressed
/// with zstd (made here as it is generated, never whole on disk
/// uncompressed); a child substitutes it and peaks under 64 MiB.
#[test]
fn a_4_gib_nar_substitutes_from_a_cache_over_http_in_bounded_memory() -> Result {
    use bigtop_store::core::hash::HashingWriter;
    use bigtop_store::core::narinfo::NarInfo;
    use bigtop_store::core::SecretKey;
    let server = crate::cache::Nginx::start()?;
    let root = server.root();
    std::fs::create_dir_all(root.join("nar"))?;
    let tmp = tempfile::tempdir()?;
    let dir = bigtop_store::core::StoreDir::default();
    std::fs::write(
        root.join("nix-cache-info"),
        format!("StoreDir: {dir}\nWantMassQuery: 1\nPriority: 40\n"),
    )?;
    // One pass makes the compressed file and both hashes.
    let staged = root.join("nar/staged");
    let file = HashingWriter::new(std::fs::File::create(&staged)?, HashAlgo::Sha256);
    let encoder = zstd::stream::write::Encoder::new(file, 1)?;
    let mut nar = HashingWriter::new(encoder, HashAlgo::Sha256);
    io::copy(&mut ZeroFileNar::new(FILE_SIZE), &mut nar)?;
    let (nar_hash, nar_size, encoder) = nar.finish();
    let (file_hash, file_size, _) = encoder.finish()?.finish();
    let url = format!("nar/{}.nar.zst", file_hash.to_base32());
    std::fs::rename(&staged, root.join(&url))?;
    let path = dir.make_source_path("big", &nar_hash, [], false)?;
    let key = SecretKey::generate("big.example.org-1")?;
    let mut info = NarInfo::new(path.clone(), url, nar_hash, nar_size);
    info.compression = Some("zstd".into());
    info.file_hash = Some(file_hash);
    info.file_size = Some(file_size);
    info.sign(&dir, &key);
    std::fs::write(
        root.join(format!("{}.narinfo", path.digest())),
        info.to_text(&dir),
    )?;

    let dst = tmp.path().join("dst");
    let child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "memory::child_substitute",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, &dst)
        .env(PATH_VAR, path.to_string())
        .env(URL_VAR, server.url())
        .env(KEY_VAR, key.public().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let follower = follow_peak(child.id());
    let out = child.wait_with_output()?;
    assert!(
        out.status.success(),
        "substitution failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak = follower.join().map_err(|_| "the follower panicked")?;
    assert!(
        peak < LIMIT_BYTES,
        "the child peaked at {} MiB (limit 64 MiB)",
        peak >> 20
    );
    assert!(peak > 0, "the child was never seen running");
    let store = Store::open_chroot(&dst)?;
    let recorded = store.path_info(&path)?.ok_or("not substituted")?;
    assert_eq!(recorded.nar_size, FILE_SIZE + 112);
    assert_eq!(std::fs::metadata(store.physical(&path))?.len(), FILE_SIZE);
    eprintln!(
        "peak resident memory substituting 4 GiB over HTTP: {} MiB ({file_size} compressed bytes)",
        peak >> 20
    );
    Ok(())
}
