//! A machine attacking its host: root inside a container plants symlinks
//! where activation, which runs on the host as root, will write; and
//! tries to forge the records activation trusts.

use bigtop::activate::engine::{Mode, Options, Quiet};
use bigtop::eval::module::ModuleBuilder;

use crate::{build, run_in, Booted, Result};

fn system(m: &mut ModuleBuilder, version: &str) {
    m.define("system.services.app.argv", vec!["/bin/sleep", "1000"]);
    m.define("etc.\"app/app.conf\".text", format!("{version}\n"));
    m.define("etc.secret.text", "s3cret\n");
    m.define("etc.secret.mode", "0600");
}

#[test]
fn symlinks_planted_in_a_machine_never_lead_activation_onto_the_host() -> Result {
    let booted = Booted::new()?;
    let m = &booted.machine;
    let host = tempfile::tempdir()?;
    let target = host.path().display().to_string();
    let first = build(m, |c| system(c, "v1"))?;
    m.activate(&first, Mode::Switch, &Options::default(), &Quiet)?;

    // Root inside points /etc/app, /etc/secret and a service directory at
    // a directory of the host (a path that means nothing inside).
    let plant = format!(
        "rm -rf /etc/app /etc/secret && ln -s {target} /etc/app && ln -s {target}/secret /etc/secret \
         && mkdir -p /run/service && ln -s {target} /run/service/newsvc"
    );
    let (code, out) = run_in(m, &["sh", "-c", &plant])?;
    assert_eq!(code, Some(0), "{out}");
    let second = build(m, |c| {
        system(c, "v2");
        c.define("system.services.newsvc.argv", vec!["/bin/sleep", "1000"]);
    })?;
    let e = m
        .activate(&second, Mode::Switch, &Options::default(), &Quiet)
        .expect_err("activation must refuse the planted links");
    let chain = crate::chain(&e);
    assert!(chain.contains("a symlink is on the way"), "{chain}");
    assert_eq!(
        std::fs::read_dir(host.path())?.count(),
        0,
        "nothing was written on the host"
    );

    // The store's state, the profile and activation's records are
    // read-only inside.
    let forge = "echo '{}' > /bigtop/var/activate/journal.json";
    let (code, _) = run_in(m, &["sh", "-c", forge])?;
    assert_ne!(code, Some(0));
    let (code, _) = run_in(m, &["sh", "-c", "ln -s / /bigtop/var/gcroots/evil"])?;
    assert_ne!(code, Some(0));
    Ok(())
}

/// Root inside swaps a service's directory for a symlink to a service
/// the host supervises: stopping or restarting the machine's service
/// must not touch the host's.
#[test]
fn a_service_directory_swapped_for_a_host_service_is_not_driven() -> Result {
    // A service supervised on the host, in a scan directory of its own.
    let host = tempfile::tempdir()?;
    let victim = host.path().join("victim");
    std::fs::create_dir(&victim)?;
    std::fs::write(victim.join("run"), "#!/bin/sh\nexec sleep 1000\n")?;
    std::fs::set_permissions(
        victim.join("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mut svscan = std::process::Command::new("s6-svscan")
        .arg(host.path())
        .spawn()?;
    // Supervised first (s6-svwait needs the supervisor), then up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::process::Command::new("s6-svok")
        .arg(&victim)
        .status()?
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "s6-svscan never supervised the victim"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let up = std::process::Command::new("s6-svwait")
        .args(["-u", "-t", "10000"])
        .arg(&victim)
        .status()?;
    assert!(up.success());

    let result = (|| -> Result {
        let booted = Booted::new()?;
        let m = &booted.machine;
        let first = build(m, |c| system(c, "v1"))?;
        m.activate(&first, Mode::Switch, &Options::default(), &Quiet)?;
        let plant = format!(
            "rm -rf /run/service/app && ln -s {} /run/service/app",
            victim.display()
        );
        let (code, out) = run_in(m, &["sh", "-c", &plant])?;
        assert_eq!(code, Some(0), "{out}");
        let second = build(m, |c| {
            system(c, "v1");
            c.define(
                "system.services.app.argv",
                bigtop::eval::module::force(vec!["/bin/sleep", "2000"]),
            );
        })?;
        assert!(m
            .activate(&second, Mode::Switch, &Options::default(), &Quiet)
            .is_err());
        Ok(())
    })();
    let still_up = std::process::Command::new("s6-svstat")
        .args(["-o", "up"])
        .arg(&victim)
        .output()?;
    let _ = std::process::Command::new("s6-svscanctl")
        .arg("-t")
        .arg(host.path())
        .status();
    let _ = svscan.wait();
    result?;
    assert_eq!(
        String::from_utf8_lossy(&still_up.stdout).trim(),
        "true",
        "the host's service was not stopped"
    );
    Ok(())
}
