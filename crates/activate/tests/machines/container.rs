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
