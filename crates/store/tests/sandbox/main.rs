//! The build sandbox, with real namespaces and the host's `/bin/sh`. Where
//! a shell cannot do the job (connecting to a socket, sleeping), the
//! builder is this test binary itself, made visible inside with its
//! libraries and run at one of the `child_*` entry points.
//!
//! These tests need user namespaces: where they are unavailable they fail
//! with the error that says so.

use std::error::Error;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use bigtop_store::sandbox::{self, SandboxError, SandboxSpec, Sandboxed};

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

const STORE_DIR: &str = "/bigtop/store";
const INPUT: &str = "0000000000000000000000000000000a-input";
const HIDDEN: &str = "0000000000000000000000000000000b-hidden";
const OUT: &str = "0000000000000000000000000000000c-out";
const HELPER: &str = "/helper";

/// A chroot store on the host: `store/` holds two paths, `INPUT` (a
/// directory) and `HIDDEN` (a file), and `chroot/` is the scratch root.
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Result<Fixture> {
        let tmp = tempfile::tempdir()?;
        // The build dir's parent must be private (a spawn refuses it else).
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700))?;
        let store = tmp.path().join("store");
        fs::create_dir_all(store.join(INPUT))?;
        fs::write(store.join(INPUT).join("data"), "input data\n")?;
        fs::write(store.join(HIDDEN), "secret\n")?;
        fs::create_dir(tmp.path().join("build"))?;
        Ok(Fixture { tmp })
    }

    fn store_root(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    fn chroot(&self) -> PathBuf {
        self.tmp.path().join("chroot")
    }

    /// Where the builder's outputs are on the host after it exited.
    fn output(&self, name: &str) -> PathBuf {
        self.chroot()
            .join(STORE_DIR.trim_start_matches('/'))
            .join(name)
    }

    /// A spec running `program args`, with `$out` set, `INPUT` as its only
    /// input and the host's `/bin/sh` visible. The returned readers are
    /// the builder's stdout and stderr.
    fn spec(&self, program: &str, args: &[&str]) -> Result<(SandboxSpec, Pipes)> {
        let (out_r, out_w) = std::io::pipe()?;
        let (err_r, err_w) = std::io::pipe()?;
        let spec = SandboxSpec {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("out".into(), format!("{STORE_DIR}/{OUT}"))],
            build_dir: self.tmp.path().join("build"),
            build_dir_inside: "/build".into(),
            store_dir: STORE_DIR.into(),
            store_root: self.store_root(),
            chroot_dir: self.chroot(),
            inputs: vec![INPUT.into()],
            outputs: vec![OUT.into()],
            extra_paths: sandbox::default_extra_paths()?,
            network: false,
            stdout: out_w.into(),
            stderr: err_w.into(),
            inherit: Vec::new(),
            uid: sandbox::DEFAULT_UID,
            gid: sandbox::DEFAULT_GID,
        };
        Ok((
            spec,
            Pipes {
                out: out_r,
                err: err_r,
            },
        ))
    }

    /// A spec running `sh -c script`.
    fn sh(&self, script: &str) -> Result<(SandboxSpec, Pipes)> {
        self.spec("/bin/sh", &["-c", script])
    }

    /// A spec running this test binary's `child_*` entry point inside.
    fn helper(&self, entry: &str) -> Result<(SandboxSpec, Pipes)> {
        let (mut spec, pipes) = self.spec(
            HELPER,
            &[
                "--exact",
                entry,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ],
        )?;
        let exe = std::env::current_exe()?;
        spec.extra_paths.extend(sandbox::libraries_of(&exe)?);
        spec.extra_paths.push((exe, HELPER.into()));
        Ok((spec, pipes))
    }
}

struct Pipes {
    out: std::io::PipeReader,
    err: std::io::PipeReader,
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn assert_success(&self) {
        assert!(
            self.status.success(),
            "builder failed with {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Spawns, closes our copies of the write ends, collects the output and
/// waits.
fn run(spec: SandboxSpec, pipes: Pipes) -> Result<Finished> {
    let child = sandbox::spawn(&spec)?;
    drop(spec);
    finish(child, pipes)
}

fn finish(child: Sandboxed, mut pipes: Pipes) -> Result<Finished> {
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        pipes.err.read_to_string(&mut s).map(|_| s)
    });
    let mut stdout = String::new();
    pipes.out.read_to_string(&mut stdout)?;
    let stderr = err_reader.join().map_err(|_| "stderr reader panicked")??;
    let status = child.wait()?;
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

#[test]
fn sandboxing_is_available() -> Result {
    Ok(sandbox::check_available()?)
}

#[test]
fn the_builder_sees_only_its_environment_and_writes_its_output() -> Result {
    let fx = Fixture::new()?;
    let (mut spec, pipes) = fx.sh("export -p > $out; echo \"cwd=$(pwd) pid=$$\"; \
         [ -z \"${HOME+set}\" ] || exit 3")?;
    spec.env.push(("GREETING".into(), "hello sandbox".into()));
    let done = run(spec, pipes)?;
    done.assert_success();
    let exported = fs::read_to_string(fx.output(OUT))?;
    let names: Vec<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .map(|l| l.split('=').next().unwrap_or(l))
        .collect();
    assert!(
        exported.contains("GREETING='hello sandbox'"),
        "missing from {exported}"
    );
    // dash exports PWD itself; everything else came from the spec.
    for name in &names {
        assert!(
            ["out", "GREETING", "PWD"].contains(name),
            "`{name}` leaked into the builder's environment:\n{exported}"
        );
    }
    assert_eq!(done.stdout, "cwd=/build pid=1\n");
    Ok(())
}

#[test]
fn exit_status_stdout_and_stderr_reach_the_caller() -> Result {
    let fx = Fixture::new()?;
    let (spec, pipes) = fx.sh("echo to stdout; echo to stderr >&2; exit 7")?;
    let done = run(spec, pipes)?;
    assert_eq!(done.status.code(), Some(7));
    assert_eq!(done.stdout, "to stdout\n");
    assert_eq!(done.stderr, "to stderr\n");
    Ok(())
}

#[test]
fn only_inputs_are_visible_in_the_store() -> Result {
    let fx = Fixture::new()?;
    let script = format!(
        "read line < {STORE_DIR}/{INPUT}/data; echo \"$line\"; \
         for p in {STORE_DIR}/*; do echo \"has $p\"; done; \
         if [ -e {STORE_DIR}/{HIDDEN} ]; then echo visible; exit 4; fi; \
         read line 2>/dev/null < {STORE_DIR}/{HIDDEN} && exit 5; \
         echo ok > $out"
    );
    let (spec, pipes) = fx.sh(&script)?;
    let done = run(spec, pipes)?;
    done.assert_success();
    assert_eq!(
        done.stdout,
        format!("input data\nhas {STORE_DIR}/{INPUT}\n"),
        "stderr: {}",
        done.stderr
    );
    assert_eq!(fs::read_to_string(fx.output(OUT))?, "ok\n");
    Ok(())
}

#[test]
fn the_builder_cannot_write_outside_its_build_dir_and_outputs() -> Result {
    let fx = Fixture::new()?;
    // Each attempt that succeeds prints its name.
    let script = format!(
        "try() {{ if ( eval \"$1\" ) 2>/dev/null; then echo \"wrote: $1\"; fi; }}; \
         try 'echo x > {STORE_DIR}/{INPUT}/data'; \
         try 'echo x > {STORE_DIR}/{INPUT}/new'; \
         try 'echo x > /evil'; \
         try 'echo x > /etc/evil'; \
         try 'echo x > /etc/passwd'; \
         try 'echo x > /bin/sh'; \
         try 'echo x > /dev/evil'; \
         try 'echo x > /proc/evil'; \
         echo x > /dev/null || echo 'cannot write /dev/null'; \
         echo x > /build/file || echo 'cannot write the build dir'; \
         echo x > /tmp/file2 || echo 'cannot write /tmp'; \
         echo x > {STORE_DIR}/not-an-output-but-in-scratch; \
         echo x > $out"
    );
    let (spec, pipes) = fx.sh(&script)?;
    let done = run(spec, pipes)?;
    done.assert_success();
    assert_eq!(done.stdout, "", "stderr: {}", done.stderr);
    assert_eq!(
        fs::read_to_string(fx.store_root().join(INPUT).join("data"))?,
        "input data\n"
    );
    assert!(!fx.store_root().join(INPUT).join("new").exists());
    assert_eq!(fs::read_to_string(fx.output(OUT))?, "x\n");
    let build = fx.tmp.path().join("build");
    assert_eq!(fs::read_to_string(build.join("file"))?, "x\n");
    assert_eq!(fs::read_to_string(build.join("file2"))?, "x\n");
    // The store dir inside is writable (outputs are created there, of any
    // type), so a builder can create other names too, as in Nix; they stay
    // in the scratch dir, which the caller removes, and never reach the
    // store.
    assert!(!fx
        .store_root()
        .join("not-an-output-but-in-scratch")
        .exists());
    Ok(())
}

#[test]
fn the_builder_has_no_network() -> Result {
    let fx = Fixture::new()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let (mut spec, pipes) = fx.helper("child_connect")?;
    spec.env
        .push((ADDR_VAR.into(), listener.local_addr()?.to_string()));
    let done = run(spec, pipes)?;
    assert_eq!(
        done.status.code(),
        Some(101),
        "the connection did not fail:\n{}\n{}",
        done.stdout,
        done.stderr
    );
    assert!(done.stdout.contains("cannot connect"), "{}", done.stdout);
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        other => Err(format!("the listener got {other:?}").into()),
    }
}

#[test]
fn the_builder_has_the_network_when_asked() -> Result {
    let fx = Fixture::new()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let (mut spec, pipes) = fx.helper("child_connect")?;
    spec.network = true;
    spec.env
        .push((ADDR_VAR.into(), listener.local_addr()?.to_string()));
    let done = run(spec, pipes)?;
    done.assert_success();
    listener.set_nonblocking(true)?;
    assert!(listener.accept().is_ok(), "no connection arrived");
    Ok(())
}

#[test]
fn processes_left_behind_die_with_the_builder() -> Result {
    let fx = Fixture::new()?;
    // The helper writes its PID namespace to /build/ns, then sleeps; the
    // shell waits for the file and exits, leaving it running.
    let script = format!(
        "{HELPER} --exact child_sleep --ignored --nocapture --test-threads=1 & \
         while [ ! -s /build/ns ]; do :; done; echo $$ > $out"
    );
    let (mut spec, pipes) = fx.helper("unused")?;
    spec.program = "/bin/sh".into();
    spec.args = vec!["-c".into(), script];
    spec.env.push((NS_FILE_VAR.into(), "/build/ns".into()));
    let done = run(spec, pipes)?;
    done.assert_success();
    assert_eq!(fs::read_to_string(fx.output(OUT))?, "1\n");
    let ns = fs::read_to_string(fx.tmp.path().join("build").join("ns"))?;
    assert!(ns.starts_with("pid:["), "{ns}");
    // When the wait returned, the kernel had killed the namespace.
    let survivors: Vec<String> = fs::read_dir("/proc")?
        .filter_map(|e| e.ok())
        .filter(|e| {
            fs::read_link(e.path().join("ns/pid")).is_ok_and(|link| link.as_os_str() == ns.as_str())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(survivors.is_empty(), "still running: {survivors:?}");
    Ok(())
}

#[test]
fn kill_ends_a_sleeping_builder() -> Result {
    let fx = Fixture::new()?;
    let (spec, pipes) = fx.helper("child_sleep")?;
    let child = sandbox::spawn(&spec)?;
    drop(spec);
    assert!(child.try_wait()?.is_none(), "the sleeper exited by itself");
    child.kill()?;
    let done = finish(child, pipes)?;
    assert_eq!(done.status.signal(), Some(libc::SIGKILL), "{}", done.status);
    Ok(())
}

#[test]
fn dropping_the_handle_kills_the_sandbox() -> Result {
    let fx = Fixture::new()?;
    let (spec, mut pipes) = fx.helper("child_sleep")?;
    let child = sandbox::spawn(&spec)?;
    drop(spec);
    drop(child);
    // The write ends were only in the sandbox: the end arrives once it
    // is dead.
    let mut rest = String::new();
    pipes.out.read_to_string(&mut rest)?;
    Ok(())
}

#[test]
fn a_missing_program_is_an_exec_error() -> Result {
    let fx = Fixture::new()?;
    let (spec, _pipes) = fx.spec("/no/such/builder", &[])?;
    match sandbox::spawn(&spec) {
        Err(SandboxError::Exec { program, source }) => {
            assert_eq!(program, "/no/such/builder");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            Ok(())
        }
        other => Err(format!("expected an exec error, got {other:?}").into()),
    }
}

#[test]
fn a_missing_input_is_named() -> Result {
    let fx = Fixture::new()?;
    let (mut spec, _pipes) = fx.sh("true")?;
    spec.inputs
        .push("0000000000000000000000000000000d-gone".into());
    match sandbox::spawn(&spec) {
        Err(e @ SandboxError::Prepare { .. }) => {
            assert!(e.to_string().contains("-gone"), "{e}");
            Ok(())
        }
        other => Err(format!("expected a prepare error, got {other:?}").into()),
    }
}

#[test]
fn many_builds_in_a_row() -> Result {
    // Namespaces, mounts and descriptors must not pile up.
    let fx = Fixture::new()?;
    for i in 0..50 {
        let (mut spec, pipes) = fx.sh(&format!("echo {i} > $out"))?;
        spec.chroot_dir = fx.tmp.path().join(format!("chroot-{i}"));
        let out = spec
            .chroot_dir
            .join(STORE_DIR.trim_start_matches('/'))
            .join(OUT);
        run(spec, pipes)?.assert_success();
        assert_eq!(fs::read_to_string(out)?, format!("{i}\n"));
    }
    Ok(())
}

const ADDR_VAR: &str = "BIGTOP_TEST_ADDR";
const NS_FILE_VAR: &str = "BIGTOP_TEST_NS_FILE";

/// Inside a sandbox: connects to `BIGTOP_TEST_ADDR`, and panics (exit
/// 101) if it cannot.
#[test]
#[ignore = "entry point for builders of the sandbox tests"]
fn child_connect() {
    let addr = std::env::var(ADDR_VAR).expect("address to connect to");
    match TcpStream::connect_timeout(&addr.parse().expect("an address"), Duration::from_secs(5)) {
        Ok(_) => println!("connected to {addr}"),
        Err(e) => {
            println!("cannot connect to {addr}: {e}");
            panic!("cannot connect");
        }
    }
}

/// Inside a sandbox: writes its PID namespace to `BIGTOP_TEST_NS_FILE` if
/// set, then sleeps for an hour.
#[test]
#[ignore = "entry point for builders of the sandbox tests"]
fn child_sleep() {
    if let Ok(file) = std::env::var(NS_FILE_VAR) {
        let ns = fs::read_link("/proc/self/ns/pid").expect("own PID namespace");
        let tmp = Path::new(&file).with_extension("tmp");
        fs::write(&tmp, ns.as_os_str().as_encoded_bytes()).expect("write the namespace");
        fs::rename(&tmp, &file).expect("publish the namespace");
    }
    std::thread::sleep(Duration::from_secs(3600));
}

/// Issue 13, point 1: every way to make a setuid or setgid file (or to set
/// attributes such as file capabilities) fails inside, with the errno a
/// program expects; plain modes still work.
#[test]
fn no_call_can_set_a_setuid_or_setgid_bit_inside() -> Result {
    let fx = Fixture::new()?;
    let (spec, pipes) = fx.helper("child_setuid")?;
    let f = run(spec, pipes)?;
    f.assert_success();
    assert!(f.stdout.contains("all refused"), "{}", f.stdout);
    Ok(())
}

/// Inside a sandbox: tries each call that could set S_ISUID/S_ISGID in
/// `/build`, and panics if one succeeds or fails otherwise than expected.
#[test]
#[ignore = "entry point for builders of the sandbox tests"]
fn child_setuid() {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).unwrap();
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let expect = |what: &str, r: libc::c_long, want: i32| {
        let got = if r < 0 { errno() } else { 0 };
        println!("{what}: {r} errno {got}");
        assert_eq!(got, want, "{what}");
    };
    unsafe {
        let plain = c("/build/plain");
        let fd = libc::open(plain.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o755);
        expect("open 0755", fd as _, 0);
        expect("fchmod 0700", libc::fchmod(fd, 0o700) as _, 0);
        expect("fchmod 04755", libc::fchmod(fd, 0o4755) as _, libc::EPERM);
        expect(
            "chmod 02755",
            libc::chmod(plain.as_ptr(), 0o2755) as _,
            libc::EPERM,
        );
        expect(
            "fchmodat 04755",
            libc::fchmodat(libc::AT_FDCWD, plain.as_ptr(), 0o4755, 0) as _,
            libc::EPERM,
        );
        let made = c("/build/made");
        let r = libc::open(made.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o4755);
        expect("open O_CREAT 04755", r as _, libc::EPERM);
        let r = libc::openat(
            libc::AT_FDCWD,
            made.as_ptr(),
            libc::O_CREAT | libc::O_RDWR,
            0o2755,
        );
        expect("openat O_CREAT 02755", r as _, libc::EPERM);
        let r = libc::syscall(libc::SYS_creat, made.as_ptr(), 0o4755);
        expect("creat 04755", r, libc::EPERM);
        let r = libc::mknod(made.as_ptr(), libc::S_IFREG | 0o4755, 0);
        expect("mknod 04755", r as _, libc::EPERM);
        let r = libc::mkdir(made.as_ptr(), 0o2755);
        expect("mkdir 02755", r as _, libc::EPERM);
        // Without O_CREAT the mode is unused: no refusal for garbage in it.
        let r = libc::open(plain.as_ptr(), libc::O_RDONLY, 0o4755);
        expect("open existing", if r < 0 { r as _ } else { 0 }, 0);
        let r = libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            made.as_ptr(),
            0usize,
            0usize,
        );
        expect("openat2", r, libc::ENOSYS);
        let r = libc::syscall(libc::SYS_io_uring_setup, 1, 0usize);
        expect("io_uring_setup", r, libc::ENOSYS);
        let name = c("security.capability");
        let r = libc::setxattr(plain.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0);
        expect("setxattr", r as _, libc::ENOTSUP);
        let mut st: libc::stat = std::mem::zeroed();
        libc::stat(plain.as_ptr(), &mut st);
        assert_eq!(st.st_mode & 0o7777, 0o700);
    }
    // And the writable places ignore such bits: mounted nosuid.
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for at in ["/build", "/bigtop/store"] {
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(at))
            .unwrap_or_else(|| panic!("{at} is not a mount point:\n{mounts}"));
        assert!(line.contains("nosuid"), "{line}");
    }
    println!("all refused");
}

/// Issue 13, point 16: builds running at once shared one loopback, so a
/// builder could talk to another build's listener on 127.0.0.1. A
/// listening builder and one started while it runs are now in different
/// network namespaces; a builder after it may reuse its (empty) one.
#[test]
fn builds_running_at_once_do_not_share_a_network() -> Result {
    let fx = Fixture::new()?;
    let port_file = fx.tmp.path().join("listen-build").join("port");
    fs::create_dir(port_file.parent().ok_or("a parent")?)?;
    let (mut spec, listen_pipes) = fx.helper("child_listen")?;
    spec.build_dir = port_file.parent().ok_or("a parent")?.to_owned();
    spec.chroot_dir = fx.tmp.path().join("chroot-listen");
    let listening = sandbox::spawn(&spec)?;
    drop(spec);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Ok(a) = fs::read_to_string(&port_file) {
            if a.ends_with('\n') {
                break a.trim().to_owned();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listener never said where"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut spec, pipes) = fx.helper("child_connect")?;
    spec.env.push((ADDR_VAR.into(), addr.clone()));
    let connecting = sandbox::spawn(&spec)?;
    drop(spec);
    let done = finish(connecting, pipes)?;
    assert_eq!(
        done.status.code(),
        Some(101),
        "reached the other build's {addr}:\n{}",
        done.stdout
    );
    listening.kill()?;
    finish(listening, listen_pipes)?;
    Ok(())
}

/// Inside a sandbox: listens on 127.0.0.1, writes the address and a
/// newline to `port` in its build dir, and sleeps for an hour.
#[test]
#[ignore = "entry point for builders of the sandbox tests"]
fn child_listen() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let addr = listener.local_addr().expect("an address");
    fs::write("port", format!("{addr}\n")).expect("write the address");
    std::thread::sleep(Duration::from_secs(3600));
}
