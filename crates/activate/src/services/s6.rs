//! The s6 backend: the live scan directory `ROOT/run/service`, driven
//! with the real `s6-svc`, `s6-svscanctl`, `s6-svwait` and `s6-svstat`.
//!
//! Each service is a directory of the scan directory whose `run`,
//! `finish` and friends are copied from the toplevel's `s6/<name>/`
//! (s6-supervise needs `supervise/` writable, so the directory cannot be
//! the read-only store's), with a `down` file, so that a supervisor never
//! starts a service on its own: activation decides, and a container's
//! boot activates. Each gets a logger, `s6-log` into
//! `ROOT/var/log/<name>/current`. The tools work on the host's view of
//! the scan directory, so a container's services are driven from
//! outside it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::Error;
use crate::fs::{create_dirs, io_err, write_atomic};

use super::{Backend, Inside, ServiceState};

/// Files of a rendered service directory that s6-supervise or activation
/// reads.
const FILES: [&str; 5] = ["type", "run", "finish", "reload", "check"];

/// The s6 backend of one machine.
#[derive(Debug)]
pub struct S6 {
    scan: PathBuf,
    logs: PathBuf,
}

impl S6 {
    /// The backend for the scan directory `scan` (`ROOT/run/service`),
    /// with logs under `logs` (`ROOT/var/log`).
    pub fn new(scan: PathBuf, logs: PathBuf) -> S6 {
        S6 { scan, logs }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.scan.join(name)
    }

    fn tool(&self, program: &str, args: &[&str], dir: &Path) -> Result<String, Error> {
        let out = Command::new(program)
            .args(args)
            .arg(dir)
            .output()
            .map_err(|e| Error::Service {
                service: dir_name(dir),
                reason: format!("cannot run `{program}`: {e}"),
            })?;
        if !out.status.success() {
            return Err(Error::Service {
                service: dir_name(dir),
                reason: format!(
                    "`{program} {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until s6-svscan supervises `name` (its control pipe exists).
    fn wait_supervised(&self, name: &str) -> Result<(), Error> {
        let control = self.dir(name).join("supervise/control");
        let log_control = self.dir(name).join("log/supervise/control");
        for _ in 0..5000 {
            if control.exists() && log_control.exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(Error::Service {
            service: name.to_owned(),
            reason: format!(
                "s6-svscan did not pick up `{}`: is it running on `{}`?",
                self.dir(name).display(),
                self.scan.display()
            ),
        })
    }
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Backend for S6 {
    fn states(&self) -> Result<BTreeMap<String, ServiceState>, Error> {
        let mut out = BTreeMap::new();
        let entries = match fs::read_dir(&self.scan) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("read", &self.scan)(e).into()),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read", &self.scan))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().join("supervise/control").exists() {
                continue;
            }
            let text = self.tool("s6-svstat", &["-o", "up,pid"], &entry.path())?;
            let mut fields = text.split_whitespace();
            let up = fields.next() == Some("true");
            let pid = fields
                .next()
                .and_then(|p| p.parse::<i64>().ok())
                .filter(|p| *p > 0);
            out.insert(
                name,
                ServiceState {
                    up,
                    pid: pid.map(|p| p as u32),
                },
            );
        }
        Ok(out)
    }

    fn install(&self, name: &str, rendered: &Path) -> Result<(), Error> {
        let dir = self.dir(name);
        let fresh = !dir.exists();
        // Made under a temporary name and renamed, so that s6-svscan never
        // sees half a directory.
        let target = if fresh {
            self.scan.join(format!(".{name}.new"))
        } else {
            dir.clone()
        };
        if fresh {
            let _ = fs::remove_dir_all(&target);
            create_dirs(&target.join("log"))?;
            write_atomic(&target.join("down"), b"", 0o644)?;
            write_atomic(&target.join("log/down"), b"", 0o644)?;
        }
        for f in FILES {
            let src = rendered.join(f);
            let dst = target.join(f);
            match fs::read(&src) {
                Ok(bytes) => {
                    let mode = if f == "type" { 0o644 } else { 0o755 };
                    write_atomic(&dst, &bytes, mode)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if dst.exists() {
                        fs::remove_file(&dst).map_err(io_err("remove", &dst))?;
                    }
                }
                Err(e) => return Err(io_err("read", &src)(e).into()),
            }
        }
        let log_dir = self.logs.join(name);
        create_dirs(&log_dir)?;
        let inside = Path::new("/var/log").join(name);
        let log_run = format!(
            "#!/bin/sh\nexec s6-log -b n10 s1000000 T {}\n",
            inside.display()
        );
        write_atomic(&target.join("log/run"), log_run.as_bytes(), 0o755)?;
        if fresh {
            crate::fs::rename(&target, &dir)?;
            self.tool("s6-svscanctl", &["-a"], &self.scan)?;
            self.wait_supervised(name)?;
            // The logger runs whenever its service is supervised.
            self.tool("s6-svc", &["-u"], &dir.join("log"))?;
        }
        Ok(())
    }

    fn start(&self, name: &str) -> Result<(), Error> {
        self.tool("s6-svc", &["-u"], &self.dir(name)).map(|_| ())
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<(), Error> {
        let dir = self.dir(name);
        if !dir.join("supervise/control").exists() {
            return Ok(());
        }
        self.tool("s6-svc", &["-d"], &dir)?;
        let ms = timeout.as_millis().to_string();
        // `-D`: down and its finish script done; on timeout, killed.
        if self.tool("s6-svwait", &["-D", "-t", &ms], &dir).is_err() {
            self.tool("s6-svc", &["-k"], &dir)?;
            self.tool("s6-svwait", &["-D", "-t", "5000"], &dir)?;
        }
        Ok(())
    }

    fn remove(&self, name: &str, timeout: Duration) -> Result<(), Error> {
        let dir = self.dir(name);
        if !dir.exists() {
            return Ok(());
        }
        self.stop(name, timeout)?;
        fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        // Prune: s6-svscan stops the supervisors of directories gone.
        self.tool("s6-svscanctl", &["-an"], &self.scan)?;
        Ok(())
    }

    fn wait_up(&self, name: &str, timeout: Duration) -> Result<bool, Error> {
        let ms = timeout.as_millis().max(1).to_string();
        Ok(self
            .tool("s6-svwait", &["-u", "-t", &ms], &self.dir(name))
            .is_ok())
    }

    fn reload(&self, name: &str, inside: &Inside<'_>) -> Result<(), Error> {
        if !self.dir(name).join("reload").exists() {
            return Err(Error::Service {
                service: name.to_owned(),
                reason: "it reloads on change but has no reload command".into(),
            });
        }
        // Run inside the machine, where the service's paths are.
        let script = Path::new("/run/service").join(name).join("reload");
        let (code, output) = inside(&[script.to_string_lossy().into_owned()])?;
        if code != Some(0) {
            return Err(Error::Service {
                service: name.to_owned(),
                reason: format!(
                    "its reload command failed: {}",
                    super::tail(&output, 10).join("\n")
                ),
            });
        }
        Ok(())
    }

    fn log_tail(&self, name: &str, lines: usize) -> Vec<String> {
        let log = fs::read_to_string(self.logs.join(name).join("current")).unwrap_or_default();
        super::tail(&log, lines)
    }
}
