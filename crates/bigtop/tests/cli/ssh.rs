//! `bigtop copy --to/--from ssh://…` against a real sshd on 127.0.0.1,
//! with the remote side running this build's `bigtop store serve` on a
//! chroot store in a temporary directory.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bigtop::core::StorePath;
use serde_json::Value;

use crate::{bigtop, full, graph, ok, Result, TestStore};

const BIGTOP: &str = env!("CARGO_BIN_EXE_bigtop");

/// An sshd of its own on 127.0.0.1: its host key, one authorized client
/// key, root allowed in; stopped when dropped.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn keygen(path: &Path) -> Result {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bigtop-test", "-f"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run ssh-keygen (apt-get install openssh-client): {e}"))?;
    if !out.status.success() {
        return Err(format!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

impl Sshd {
    fn start() -> Result<Sshd> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        keygen(&d.join("host_key"))?;
        keygen(&d.join("client_key"))?;
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
        // sshd refuses to start without its privilege separation dir.
        fs::create_dir_all("/run/sshd")?;
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let config = d.join("sshd_config");
            fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                     PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
                     StrictModes no\nUsePAM no\nPermitRootLogin yes\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nMaxStartups 100\nLogLevel INFO\n",
                    d = d.display()
                ),
            )?;
            let log = fs::File::create(d.join("sshd.log"))?;
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot run sshd (apt-get install openssh-server): {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let host = fs::read_to_string(d.join("host_key.pub"))?;
                    let key: Vec<&str> = host.split_whitespace().take(2).collect();
                    fs::write(
                        d.join("known_hosts"),
                        format!("[127.0.0.1]:{port} {}\n", key.join(" ")),
                    )?;
                    fs::write(
                        d.join("ssh_config"),
                        "Host *\n  BatchMode yes\n  GlobalKnownHostsFile /dev/null\n  \
                         IdentitiesOnly yes\n  LogLevel ERROR\n  ConnectTimeout 10\n",
                    )?;
                    return Ok(Sshd { child, port, dir });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Its port was taken in between, or it failed: try another.
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(format!(
            "sshd did not start: {}",
            fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        )
        .into())
    }

    fn url(&self) -> String {
        format!("ssh://root@127.0.0.1:{}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the client needs, as `--ssh-option` arguments, with
    /// `known_hosts` as the file of host keys it trusts.
    fn options_with(&self, known_hosts: &Path) -> Vec<String> {
        let file = |p: PathBuf| p.display().to_string();
        [
            "-F".to_owned(),
            file(self.path("ssh_config")),
            "-i".to_owned(),
            file(self.path("client_key")),
            "-o".to_owned(),
            format!("UserKnownHostsFile={}", known_hosts.display()),
            "-o".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
        ]
        .into_iter()
        .map(|a| format!("--ssh-option={a}"))
        .collect()
    }

    fn options(&self) -> Vec<String> {
        self.options_with(&self.path("known_hosts"))
    }

    /// Stops sshd once every session has ended (so that the remote side
    /// has finished all it does).
    fn stop_after_sessions(self) -> Result {
        let pid = self.child.id();
        let children = format!("/proc/{pid}/task/{pid}/children");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string(&children)?.trim().is_empty() {
            if Instant::now() > deadline {
                return Err("an ssh session did not end".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = i32::try_from(pid)?;
        // SAFETY: signalling and reaping our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        reap(pid)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the child `pid`. (Its rusage would not measure it: a peak
/// there also counts what the child shared with the test binary before it
/// exec'd, and every descendant.)
fn reap(pid: i32) -> Result {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let got = unsafe { libc::waitpid(pid, &mut status, 0) };
    if got != pid {
        return Err(format!("waitpid: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

/// The highest `VmHWM` of any `bigtop store serve` process whose command
/// line names `marker`, read from `/proc` every 5 ms until `stop`.
fn peak_of_processes_naming(marker: &str, stop: &AtomicBool) -> i64 {
    let mut peak = 0;
    while !stop.load(Ordering::SeqCst) {
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let dir = entry.path();
            let Ok(cmdline) = fs::read(dir.join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !(cmdline.contains("store serve") && cmdline.contains(marker)) {
                continue;
            }
            let hwm = fs::read_to_string(dir.join("status")).ok();
            peak = peak.max(hwm.as_deref().and_then(crate::vm_hwm).unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    peak
}

/// The highest `VmHWM` (peak resident memory of that process alone) seen
/// in `/proc/PID/status` until the process is gone, read every 5 ms.
fn own_peak_rss(pid: u32) -> i64 {
    let mut peak = 0;
    while let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
        // A zombie has no memory lines: it is over.
        let Some(hwm) = crate::vm_hwm(&status) else {
            break;
        };
        peak = peak.max(hwm);
        std::thread::sleep(Duration::from_millis(5));
    }
    peak
}

/// `bigtop copy` over SSH from or to `local`, with the remote store at
/// `remote` and `extra` arguments.
fn copy(
    sshd: &Sshd,
    local: &TestStore,
    direction: &str,
    remote: &Path,
    extra: &[&str],
    paths: &[&StorePath],
) -> Result<Output> {
    let url = sshd.url();
    let remote = remote.to_str().ok_or("path")?;
    let options = sshd.options();
    let mut args = vec!["copy", direction, &url, "--remote-store", remote];
    if !extra.contains(&"--remote-program") {
        args.extend(["--remote-program", BIGTOP]);
    }
    args.extend(options.iter().map(String::as_str));
    args.extend(extra);
    let names: Vec<String> = paths.iter().map(|p| full(p)).collect();
    args.extend(names.iter().map(String::as_str));
    local.run(&args, b"")
}

fn json(out: Output) -> Result<Value> {
    Ok(serde_json::from_slice(&ok(out)?)?)
}

fn copied(v: &Value) -> Result<BTreeSet<String>> {
    Ok(crate::json_paths(&v["copied"])?.into_iter().collect())
}

fn names(paths: &[&StorePath]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

/// Entries of a chroot store's directory that an interrupted operation
/// left (staged trees, sandbox roots).
fn leftovers(store: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(store.join("bigtop/store"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            out.push(name);
        }
    }
    Ok(out)
}

/// `bigtop store verify` of a store passes, and then nothing staged is
/// left in it.
fn verify_clean(store: &Path) -> Result<String> {
    let out = ok(bigtop(
        &["store", "verify", "--store", store.to_str().ok_or("path")?],
        b"",
        store.parent().ok_or("parent")?,
    )?)?;
    let left = leftovers(store)?;
    assert!(left.is_empty(), "left in {}: {left:?}", store.display());
    Ok(String::from_utf8(out)?)
}

#[test]
fn copy_to_ssh_sends_the_closure_once_and_then_only_what_the_remote_lacks() -> Result {
    let sshd = Sshd::start()?;
    let tmp = tempfile::tempdir()?;
    let local = TestStore::new(tmp.path(), "local");
    let g = graph(&local)?;
    let remote = tmp.path().join("remote");

    let first = json(copy(
        &sshd,
        &local,
        "--to",
        &remote,
        &["--json"],
        &[&g.app],
    )?)?;
    assert_eq!(first["direction"], "to");
    assert_eq!(first["remote"], sshd.url());
    assert_eq!(copied(&first)?, names(&[&g.app, &g.mid, &g.lib]), "{first}");
    assert_eq!(first["present"], 0);
    let nar_bytes = first["nar_bytes"].as_u64().ok_or("nar_bytes")?;
    let mut stream = Vec::new();
    local.open()?.export_only(
        &[g.app.clone(), g.mid.clone(), g.lib.clone()].into(),
        &mut stream,
    )?;
    assert_eq!(first["stream_bytes"], stream.len() as u64);
    assert!(stream.len() as u64 > nar_bytes);
    // References first, as the importer needs them.
    assert_eq!(crate::json_paths(&first["copied"])?[0], g.lib.to_string());

    let there = TestStore::new(tmp.path(), "remote");
    for p in [&g.app, &g.mid, &g.lib] {
        assert!(there.valid(p)?, "{p}");
        assert_eq!(fs::read(there.physical(p))?, fs::read(local.physical(p))?);
    }
    assert!(!there.valid(&g.tool)?);
    let info: Value =
        serde_json::from_str(&there.ok(&["store", "path-info", "--json", &full(&g.app)])?)?;
    assert_eq!(info[0]["references"][0], g.mid.to_string());
    let verified = verify_clean(&remote)?;
    assert!(
        verified.contains("3 paths checked: 0 missing, 0 corrupt"),
        "{verified}"
    );

    // Everything is there: nothing moves.
    let again = json(copy(
        &sshd,
        &local,
        "--to",
        &remote,
        &["--json"],
        &[&g.app],
    )?)?;
    assert_eq!(copied(&again)?, BTreeSet::new(), "{again}");
    assert_eq!(again["present"], 3);
    assert_eq!(again["nar_bytes"], 0);
    assert_eq!(again["stream_bytes"], 0);

    // Half there: only `tool` moves, `lib` is counted present.
    let text = ok(copy(&sshd, &local, "--to", &remote, &[], &[&g.tool])?)?;
    assert_eq!(
        String::from_utf8(text)?.split(" (").next(),
        Some(format!("copied 1 paths to {}", sshd.url()).as_str())
    );
    assert!(there.valid(&g.tool)?);
    verify_clean(&remote)?;
    Ok(())
}

#[test]
fn copy_from_ssh_fetches_the_closure_and_only_what_is_missing_here() -> Result {
    let sshd = Sshd::start()?;
    let tmp = tempfile::tempdir()?;
    let there = TestStore::new(tmp.path(), "remote");
    let g = graph(&there)?;
    let local = TestStore::new(tmp.path(), "local");

    // Half the closure first: `mid` brings `lib`.
    let half = json(copy(
        &sshd,
        &local,
        "--from",
        &there.dir,
        &["--json"],
        &[&g.mid],
    )?)?;
    assert_eq!(half["direction"], "from");
    assert_eq!(copied(&half)?, names(&[&g.mid, &g.lib]), "{half}");
    assert_eq!(half["present"], 0);

    // Then the rest: only `app` moves, `mid` and `lib` are here.
    let rest = json(copy(
        &sshd,
        &local,
        "--from",
        &there.dir,
        &["--json"],
        &[&g.app],
    )?)?;
    assert_eq!(copied(&rest)?, names(&[&g.app]), "{rest}");
    assert_eq!(rest["present"], 2);
    let app_size = there.open()?.path_info(&g.app)?.ok_or("app")?.nar_size;
    assert_eq!(rest["nar_bytes"], app_size);
    let mut stream = Vec::new();
    there
        .open()?
        .export_only(&[g.app.clone()].into(), &mut stream)?;
    assert_eq!(rest["stream_bytes"], stream.len() as u64);
    for p in [&g.app, &g.mid, &g.lib] {
        assert!(local.valid(p)?, "{p}");
        assert_eq!(fs::read(local.physical(p))?, fs::read(there.physical(p))?);
    }
    assert!(!local.valid(&g.other)?);
    verify_clean(&local.dir)?;

    // The ssh arguments may come from `$BIGTOP_SSH_OPTS` instead.
    let env_opts = format!(
        "-F {} -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
        sshd.path("ssh_config").display(),
        sshd.path("client_key").display(),
        sshd.path("known_hosts").display(),
    );
    let url = sshd.url();
    let out = Command::new(BIGTOP)
        .args(["copy", "--from", &url, "--json", "--remote-program", BIGTOP])
        .args(["--remote-store", there.dir.to_str().ok_or("path")?])
        .args(["--store", local.dir.to_str().ok_or("path")?])
        .arg(full(&g.tool))
        .env("BIGTOP_SSH_OPTS", &env_opts)
        .output()?;
    let tool = json(out)?;
    assert_eq!(copied(&tool)?, names(&[&g.tool]), "{tool}");
    assert_eq!(tool["present"], 1);

    // On a terminal, the copy draws its progress: paths and bytes.
    let fresh = local.dir.with_file_name("by-terminal");
    let command = format!(
        "{BIGTOP} copy --from {url} --remote-program {BIGTOP} --remote-store {} --store {} {}",
        there.dir.display(),
        fresh.display(),
        full(&g.app)
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("BIGTOP_SSH_OPTS", &env_opts)
        .env("COLUMNS", "80")
        .output()?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("[0/3 paths]"), "{shown:?}");
    assert!(
        shown.contains("[3/3 paths]") && shown.contains("#]"),
        "{shown:?}"
    );

    // A path the remote does not have: it says so.
    let gone = there
        .open()?
        .add_text("gone", b"not for long", &BTreeSet::new())?;
    there.ok(&["store", "delete", &full(&gone)])?;
    let out = copy(&sshd, &local, "--from", &there.dir, &[], &[&gone])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains(&format!(
            "the store on `{}` refused: path `{gone}` is not valid in the store",
            sshd.url()
        )),
        "{err}"
    );
    Ok(())
}

/// A `--remote-program` that runs bigtop and kills it with SIGKILL once
/// `limit` bytes have passed in `direction` (`in`: what it reads, `out`:
/// what it writes), saying so on standard error.
fn killer(dir: &Path, direction: &str, limit: u64) -> Result<PathBuf> {
    let pid = dir.join("bigtop.pid");
    let cut = format!(
        // dd passes on what each read gets, at once: `head -c` would hold
        // the greetings in its buffer.
        "{{ dd bs=64K iflag=count_bytes count={limit} status=none; kill -9 \"$(cat {pid})\"; \
         echo 'wrapper: killed bigtop after {limit} bytes' >&2; exit 137; }}",
        pid = pid.display()
    );
    let run = format!(
        "sh -c 'echo $$ > {pid}; exec {BIGTOP} \"$@\"' bigtop \"$@\"",
        pid = pid.display()
    );
    let pipeline = match direction {
        "in" => format!("{cut} | {run}"),
        _ => format!("{run} | {cut}"),
    };
    let script = dir.join(format!("kill-{direction}.sh"));
    fs::write(&script, format!("#!/bin/sh\n{pipeline}\n"))?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

/// A path of `size` bytes that are not all alike, added to `store`.
fn big_path(store: &TestStore, size: usize) -> Result<StorePath> {
    let src = store.dir.parent().ok_or("parent")?.join("big");
    let mut data = Vec::with_capacity(size);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(&src, &data)?;
    let added = store.ok(&["store", "add", src.to_str().ok_or("path")?])?;
    let path = added
        .trim()
        .strip_prefix("/bigtop/store/")
        .ok_or("not a path")?;
    Ok(StorePath::from_base_name(path)?)
}

#[test]
fn a_remote_killed_mid_stream_fails_the_copy_naming_the_host_and_registers_nothing() -> Result {
    let sshd = Sshd::start()?;
    let tmp = tempfile::tempdir()?;
    let local = TestStore::new(tmp.path(), "local");
    let big = big_path(&local, 8 << 20)?;
    let remote = TestStore::new(tmp.path(), "remote");
    let limit = 1 << 20;

    // Killed while it imports what this side sends.
    let program = killer(tmp.path(), "in", limit)?;
    let program = program.to_str().ok_or("path")?;
    let out = copy(
        &sshd,
        &local,
        "--to",
        &remote.dir,
        &["--remote-program", program],
        &[&big],
    )?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains(&format!("`{}` ended the session while", sshd.url())),
        "{err}"
    );
    assert!(err.contains("exit status 137"), "{err}");
    assert!(
        err.contains(&format!("wrapper: killed bigtop after {limit} bytes")),
        "{err}"
    );
    assert!(!remote.valid(&big)?);
    assert!(!remote.physical(&big).exists());
    // What the killed importer staged is garbage the next verify removes.
    verify_clean(&remote.dir)?;
    assert!(!remote.valid(&big)?);
    verify_clean(&local.dir)?;

    // Killed while it exports to this side.
    let other = TestStore::new(tmp.path(), "other");
    let program = killer(tmp.path(), "out", limit)?;
    let program = program.to_str().ok_or("path")?;
    ok(copy(&sshd, &local, "--to", &remote.dir, &[], &[&big])?)?;
    let out = copy(
        &sshd,
        &other,
        "--from",
        &remote.dir,
        &["--remote-program", program],
        &[&big],
    )?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains(&format!(
            "`{}` ended the session while sending the export stream",
            sshd.url()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("wrapper: killed bigtop after {limit} bytes")),
        "{err}"
    );
    // The importer here dropped its batch itself: nothing is staged.
    assert_eq!(leftovers(&other.dir)?, Vec::<String>::new());
    assert!(!other.valid(&big)?);
    assert!(!other.physical(&big).exists());
    verify_clean(&other.dir)?;
    assert!(remote.valid(&big)?);
    Ok(())
}

#[test]
fn a_missing_remote_program_is_named_with_what_the_remote_shell_said() -> Result {
    let sshd = Sshd::start()?;
    let tmp = tempfile::tempdir()?;
    let local = TestStore::new(tmp.path(), "local");
    let g = graph(&local)?;
    let missing = "/nonexistent/bin/bigtop";
    let out = copy(
        &sshd,
        &local,
        "--to",
        &tmp.path().join("remote"),
        &["--remote-program", missing],
        &[&g.lib],
    )?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains(&format!(
            "the remote program `{missing}` was not found on `{}`",
            sshd.url()
        )),
        "{err}"
    );
    assert!(err.contains("No such file or directory"), "{err}");

    // Something else that answers: not the protocol.
    let out = copy(
        &sshd,
        &local,
        "--to",
        &tmp.path().join("remote"),
        &["--remote-program", "/bin/echo"],
        &[&g.lib],
    )?;
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains(&format!(
            "`/bin/echo` on `{}` did not answer as `bigtop store serve` (exit status 0): \
             it wrote `store serve --store {}\\n` first",
            sshd.url(),
            tmp.path().join("remote").display()
        )),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_host_key_other_than_the_known_one_is_refused_naming_the_host() -> Result {
    let sshd = Sshd::start()?;
    let tmp = tempfile::tempdir()?;
    let local = TestStore::new(tmp.path(), "local");
    let g = graph(&local)?;
    keygen(&tmp.path().join("impostor"))?;
    let impostor = fs::read_to_string(tmp.path().join("impostor.pub"))?;
    let key: Vec<&str> = impostor.split_whitespace().take(2).collect();
    let known = tmp.path().join("known_hosts");
    fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", sshd.port, key.join(" ")),
    )?;
    let url = sshd.url();
    let mut args = vec!["copy", "--to", &url, "--remote-program", BIGTOP];
    let options = sshd.options_with(&known);
    args.extend(options.iter().map(String::as_str));
    let lib = full(&g.lib);
    args.push(&lib);
    let out = local.run(&args, b"")?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains(&format!("cannot reach `{url}` over SSH (exit status 255)")),
        "{err}"
    );
    assert!(err.contains("Host key verification failed"), "{err}");
    Ok(())
}

/// One string of the protocol's framing.
fn frame(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

#[test]
fn a_remote_of_another_protocol_version_or_store_dir_is_refused_naming_both() -> Result {
    let sshd = Sshd::start()?;
    let tmp = tempfile::tempdir()?;
    let local = TestStore::new(tmp.path(), "local");
    let g = graph(&local)?;
    let remote = tmp.path().join("remote");

    // A future bigtop, as far as its greeting goes.
    let mut greeting = Vec::new();
    for s in ["bigtop-serve", "99", "/bigtop/store"] {
        frame(&mut greeting, s);
    }
    fs::write(tmp.path().join("greeting"), greeting)?;
    let future = tmp.path().join("future.sh");
    fs::write(
        &future,
        format!(
            "#!/bin/sh\ncat {}\ncat > /dev/null\n",
            tmp.path().join("greeting").display()
        ),
    )?;
    fs::set_permissions(&future, fs::Permissions::from_mode(0o755))?;
    let out = copy(
        &sshd,
        &local,
        "--to",
        &remote,
        &["--remote-program", future.to_str().ok_or("path")?],
        &[&g.lib],
    )?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains(&format!(
            "`{}` speaks version 99 of the bigtop store protocol, this bigtop version 1",
            sshd.url()
        )),
        "{err}"
    );

    // A remote store of another store dir.
    let elsewhere = tmp.path().join("elsewhere.sh");
    fs::write(
        &elsewhere,
        format!("#!/bin/sh\nexec {BIGTOP} \"$@\" --store-dir /elsewhere/store\n"),
    )?;
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o755))?;
    let out = copy(
        &sshd,
        &local,
        "--to",
        &remote,
        &["--remote-program", elsewhere.to_str().ok_or("path")?],
        &[&g.lib],
    )?;
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("has the store dir `/elsewhere/store`, this one `/bigtop/store`"),
        "{err}"
    );
    assert!(!TestStore::new(tmp.path(), "remote").valid(&g.lib)?);
    Ok(())
}

#[test]
fn copy_over_ssh_refuses_signature_flags_and_bad_urls() -> Result {
    let tmp = tempfile::tempdir()?;
    let local = TestStore::new(tmp.path(), "local");
    let g = graph(&local)?;
    let lib = full(&g.lib);
    let (_, err) = local.fails(&["copy", "--to", "ssh://web1", "--sign", "k.secret", &lib])?;
    assert!(err.contains("`--sign` is for binary caches"), "{err}");
    let (_, err) = local.fails(&[
        "copy",
        "--from",
        "ssh://web1",
        "--trusted-public-key",
        "k-1:AAAA",
        &lib,
    ])?;
    assert!(
        err.contains("`--trusted-public-keys` is for binary caches"),
        "{err}"
    );
    let (_, err) = local.fails(&["copy", "--to", "ssh://web1:99999", &lib])?;
    assert!(
        err.contains("`ssh://web1:99999` is not a remote store URL: the port"),
        "{err}"
    );
    let (_, err) = local.fails(&["copy", "--to", "ssh://-oProxyCommand=x", &lib])?;
    assert!(err.contains("is not a remote store URL"), "{err}");
    Ok(())
}

#[test]
fn store_serve_refuses_json() -> Result {
    let tmp = tempfile::tempdir()?;
    let out = bigtop(&["store", "serve", "--json"], b"", tmp.path())?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}

/// Both sides stream: a path holding a 1 GiB file moves there and back
/// with each side's peak resident memory far below it.
#[test]
fn a_1_gib_path_moves_both_ways_in_bounded_memory() -> Result {
    const SIZE: u64 = 1 << 30;
    const LIMIT: i64 = 64 << 20;
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("big");
    // Sparse: nothing of its size is written to make it.
    fs::File::create(&src)?.set_len(SIZE)?;
    let local = TestStore::new(tmp.path(), "local");
    let added = local.ok(&["store", "add", src.to_str().ok_or("path")?])?;
    fs::remove_file(&src)?;
    let big = StorePath::from_base_name(
        added
            .trim()
            .strip_prefix("/bigtop/store/")
            .ok_or("not a path")?,
    )?;
    let remote = tmp.path().join("remote");
    let back = TestStore::new(tmp.path(), "back");

    let mut peaks = Vec::new();
    for (store, direction) in [(&local, "--to"), (&back, "--from")] {
        let sshd = Sshd::start()?;
        let url = sshd.url();
        let options = sshd.options();
        let out_file = tmp.path().join("copy.out");
        // The remote bigtop's own peak, read while it runs: sshd's rusage
        // would also count what each process forked from the test
        // binary held before it exec'd (the whole test binary's memory,
        // when other tests run beside this one).
        let stop = Arc::new(AtomicBool::new(false));
        let remote_watch = {
            let (stop, marker) = (stop.clone(), remote.display().to_string());
            std::thread::spawn(move || peak_of_processes_naming(&marker, &stop))
        };
        let child = Command::new(BIGTOP)
            .args([
                "copy",
                direction,
                &url,
                "--json",
                "--remote-program",
                BIGTOP,
            ])
            .args(["--remote-store", remote.to_str().ok_or("path")?])
            .args(["--store", store.dir.to_str().ok_or("path")?])
            .args(&options)
            .arg(full(&big))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_file)?)
            .stderr(fs::File::create(tmp.path().join("copy.err"))?)
            .spawn()?;
        // bigtop's own peak, read from the kernel while it runs: its
        // rusage on exit would count its `ssh` child too, whose buffers
        // grow with how far the other side lags, which is not bigtop's.
        let pid = child.id();
        let watcher = std::thread::spawn(move || own_peak_rss(pid));
        // Reaped here; dropping a `Child` waits for nothing.
        reap(i32::try_from(pid)?)?;
        drop(child);
        let local_peak = watcher.join().map_err(|_| "the watcher panicked")?;
        let report: Value = serde_json::from_slice(&fs::read(&out_file)?).map_err(|e| {
            format!(
                "{e}: {}",
                fs::read_to_string(tmp.path().join("copy.err")).unwrap_or_default()
            )
        })?;
        assert_eq!(copied(&report)?, names(&[&big]), "{report}");
        assert_eq!(report["nar_bytes"], SIZE + 112);
        sshd.stop_after_sessions()?;
        stop.store(true, Ordering::SeqCst);
        let remote_peak = remote_watch.join().map_err(|_| "the watcher panicked")?;
        assert!(
            remote_peak > 0,
            "{direction}: the remote bigtop was never seen"
        );
        eprintln!(
            "copy {direction}: peak resident memory here {} MiB, remote side {} MiB",
            local_peak >> 20,
            remote_peak >> 20
        );
        peaks.push((direction, local_peak, remote_peak));
    }
    for (direction, here, there) in peaks {
        assert!(
            here < LIMIT,
            "{direction}: this side peaked at {} MiB",
            here >> 20
        );
        assert!(
            there < LIMIT,
            "{direction}: the remote side peaked at {} MiB",
            there >> 20
        );
    }
    let there = TestStore::new(tmp.path(), "remote");
    assert_eq!(fs::metadata(there.physical(&big))?.len(), SIZE);
    assert_eq!(fs::metadata(back.physical(&big))?.len(), SIZE);
    Ok(())
}
