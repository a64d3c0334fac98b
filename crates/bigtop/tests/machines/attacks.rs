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
