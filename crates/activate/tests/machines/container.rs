//! Booting a root as a container, entering it, stopping it.

use std::fs;
use std::os::fd::OwnedFd;
use std::time::Duration;

use bigtop_activate::container::{Network, Options};
use bigtop_activate::Machine;

use crate::TestResult;

/// Runs `argv` in the machine's container; its exit code and output.
fn run_in(m: &Machine, argv: &[&str]) -> Result<(i32, String), Box<dyn std::error::Error>> {
    let (r, w) = std::io::pipe()?;
    let stdin = OwnedFd::from(fs::File::open("/dev/null")?);
    let err = OwnedFd::from(w.try_clone()?);
    let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    let env = [("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
    let status = m.exec_in_container(&argv, &env, [stdin, OwnedFd::from(w), err])?;
    let out = std::io::read_to_string(r)?;
    Ok((status.code().unwrap_or(-1), out))
}

#[test]
fn a_container_boots_with_s6_as_init_and_stops() -> TestResult {
    let dir = tempfile::tempdir()?;
    let m = Machine::open(dir.path())?;
    let c = m.start_container(&Options {
        name: Some("box1".into()),
        network: Network::Private,
    })?;
    assert_eq!(m.container()?.as_ref(), Some(&c));
    assert!(
        m.start_container(&Options::default()).is_err(),
        "a second start is refused"
    );

    let (code, out) = run_in(&m, &["cat", "/proc/1/cmdline"])?;
    assert_eq!((code, out.as_str()), (0, "s6-svscan\0/run/service\0"));
    let (_, out) = run_in(&m, &["hostname"])?;
    assert_eq!(out.trim(), "box1");
    // Its own root: the host's temp dir is not there; its store is
    // read-only.
    let (code, _) = run_in(&m, &["test", "-e", &dir.path().display().to_string()])?;
    assert_eq!(code, 1);
    let (code, out) = run_in(&m, &["sh", "-c", "touch /bigtop/store/x 2>&1"])?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Read-only"), "{out}");
    // A private network: loopback only.
    let (_, out) = run_in(&m, &["cat", "/proc/net/dev"])?;
    let interfaces: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"]);
    let (code, _) = run_in(&m, &["sh", "-c", "exit 7"])?;
    assert_eq!(code, 7);

    assert!(m.stop_container(Duration::from_secs(10))?);
    assert!(m.container()?.is_none());
    assert!(m
        .exec_in_container(&["true".into()], &[], null3()?)
        .is_err());
    Ok(())
}

fn null3() -> Result<[OwnedFd; 3], Box<dyn std::error::Error>> {
    let f = || -> std::io::Result<OwnedFd> { Ok(OwnedFd::from(fs::File::open("/dev/null")?)) };
    Ok([f()?, f()?, f()?])
}

const UNPRIVILEGED_ROOT: &str = "BIGTOP_TEST_UNPRIVILEGED_ROOT";

#[test]
#[ignore = "entry point for a child process of the unprivileged container test"]
fn boot_unprivileged() -> TestResult {
    let m = Machine::open(std::env::var(UNPRIVILEGED_ROOT)?)?;
    let c = m.start_container(&Options {
        name: Some("mine".into()),
        network: Network::Private,
    })?;
    assert!(c.user_namespace);
    let (code, out) = run_in(&m, &["sh", "-c", "id -u; hostname; cat /proc/1/cmdline"])?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "0\nmine\ns6-svscan\0/run/service\0");
    assert!(m.stop_container(Duration::from_secs(10))?);
    Ok(())
}

/// A user who is not root boots a container too: a user namespace maps
/// the user to root inside. Run as `nobody`, who has no subordinate ids,
/// so root is the only id inside.
#[test]
fn a_container_boots_unprivileged_in_a_user_namespace() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !rustix::process::geteuid().is_root() {
        // Already unprivileged: the test itself is the trial.
        let dir = tempfile::tempdir()?;
        std::env::set_var(UNPRIVILEGED_ROOT, dir.path());
        return boot_unprivileged();
    }
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let root = dir.path().join("machine");
    std::fs::create_dir(&root)?;
    std::os::unix::fs::chown(&root, Some(65534), Some(65534))?;
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--ignored", "--exact", "container::boot_unprivileged"])
        .env(UNPRIVILEGED_ROOT, &root)
        .env("HOME", &root)
        .uid(65534)
        .gid(65534)
        .output()?;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    Ok(())
}
