//! The trivial build of the sandbox benchmarks, `/bin/sh -c 'echo i > $out'`,
//! run sandboxed and as a plain `std::process::Command` for comparison.

use std::error::Error;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bigtop_store::sandbox::{self, SandboxSpec};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const STORE_DIR: &str = "/bigtop/store";

/// A chroot store with one input, in which trivial builds run.
pub struct TrivialBuilds {
    dir: PathBuf,
    extra_paths: Vec<(PathBuf, PathBuf)>,
}

/// The base name of the input every build sees.
pub const INPUT: &str = "0000000000000000000000000000000a-input";

impl TrivialBuilds {
    /// Lays out the store under `dir` (which must exist).
    pub fn new(dir: &Path) -> Result<TrivialBuilds> {
        let store = dir.join("store");
        fs::create_dir_all(store.join(INPUT))?;
        fs::write(store.join(INPUT).join("data"), "input\n")?;
        Ok(TrivialBuilds {
            dir: dir.to_owned(),
            extra_paths: sandbox::default_extra_paths()?,
        })
    }

    /// The scratch dirs of build `i`: its chroot and its build dir.
    pub fn scratch(&self, i: usize) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("chroot-{i}")),
            self.dir.join(format!("build-{i}")),
        )
    }

    /// Runs build `i` in a sandbox, from creating its build dir to reaping
    /// it; checks its output. Its scratch dirs stay (see [`Self::clean`]).
    pub fn sandboxed(&self, i: usize) -> Result<()> {
        let (chroot, build) = self.scratch(i);
        fs::create_dir(&build)?;
        let (mut out_r, out_w) = std::io::pipe()?;
        let name = format!("{i:032}-out");
        let spec = SandboxSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), format!("echo {i} > $out")],
            env: vec![("out".into(), format!("{STORE_DIR}/{name}"))],
            build_dir: build,
            build_dir_inside: "/build".into(),
            store_dir: STORE_DIR.into(),
            store_root: self.dir.join("store"),
            chroot_dir: chroot.clone(),
            inputs: vec![INPUT.into()],
            outputs: vec![name.clone()],
            extra_paths: self.extra_paths.clone(),
            network: false,
            stdout: out_w.try_clone()?.into(),
            stderr: out_w.into(),
            inherit: Vec::new(),
            uid: sandbox::DEFAULT_UID,
            gid: sandbox::DEFAULT_GID,
        };
        let child = sandbox::spawn(&spec)?;
        drop(spec);
        let mut log = String::new();
        out_r.read_to_string(&mut log)?;
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("build {i} failed with {status}: {log}").into());
        }
        let out = chroot.join(STORE_DIR.trim_start_matches('/')).join(name);
        if fs::read_to_string(&out)? != format!("{i}\n") {
            return Err(format!("build {i} wrote a wrong output").into());
        }
        Ok(())
    }

    /// Runs the same build as a plain process: no namespaces, no root.
    pub fn plain(&self, i: usize) -> Result<()> {
        let (_, build) = self.scratch(i);
        fs::create_dir(&build)?;
        let out = build.join("out");
        let output = Command::new("/bin/sh")
            .args(["-c", &format!("echo {i} > $out")])
            .env_clear()
            .env("out", &out)
            .current_dir(&build)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()?;
        if !output.status.success() || fs::read_to_string(&out)? != format!("{i}\n") {
            return Err(format!("plain build {i} failed with {}", output.status).into());
        }
        Ok(())
    }

    /// Removes the scratch dirs of build `i`, as the builder would after
    /// moving the output into the store.
    pub fn clean(&self, i: usize) -> Result<()> {
        let (chroot, build) = self.scratch(i);
        if chroot.exists() {
            fs::remove_dir_all(chroot)?;
        }
        fs::remove_dir_all(build)?;
        Ok(())
    }
}
