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
use crate::fs::{
    create_dirs, entry, fifo_has_reader, io_err, names, read_optional, remove_file, remove_tree,
    write_volatile, Entry, Pinned,
};

use super::{Backend, Inside, ServiceState};

/// Files of a rendered service directory that s6-supervise or activation
/// reads.
const FILES: [&str; 5] = ["type", "run", "finish", "reload", "check"];

/// The s6 backend of one machine.
#[derive(Debug)]
pub struct S6 {
    scan: PathBuf,
    logs: PathBuf,
    /// Services installed and not yet picked up by s6-svscan.
    pending: std::sync::Mutex<Vec<String>>,
}

impl S6 {
    /// The backend for the scan directory `scan` (`ROOT/run/service`),
    /// with logs under `logs` (`ROOT/var/log`).
    pub fn new(scan: PathBuf, logs: PathBuf) -> S6 {
        S6 {
            scan,
            logs,
            pending: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.scan.join(name)
    }

    /// Runs an s6 tool on the service (or scan) directory `dir`, pinned:
    /// a machine that swaps it for a symlink to one of the host's
    /// services cannot make us stop or start that instead.
    fn tool(&self, program: &str, args: &[&str], dir: &Path) -> Result<String, Error> {
        let pinned = Pinned::new(dir)?;
        let out = Command::new(program)
            .args(args)
            .arg(pinned.path())
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

    /// Waits until s6-svscan supervises each of `names` and its logger
    /// (their control pipes exist).
    fn wait_supervised(&self, names: &[String]) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for name in names {
            let control = self.dir(name).join("supervise/control");
            let log_control = self.dir(name).join("log/supervise/control");
            // Listening, not merely there: s6-supervise makes the pipe
            // before it opens it, and s6-svc fails in between.
            while !(fifo_has_reader(&control) && fifo_has_reader(&log_control)) {
                if std::time::Instant::now() > deadline {
                    return Err(Error::Service {
                        service: name.to_owned(),
                        reason: format!(
                            "s6-svscan did not pick up `{}`: is it running on `{}`?",
                            self.dir(name).display(),
                            self.scan.display()
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// What `supervise/status` says of a service: read directly rather
    /// than through one `s6-svstat` process per service, which made
    /// looking at 200 services cost 160 ms. The format is s6 2.11's
    /// (35 bytes: two TAI64N stamps, the pid as a 64-bit big-endian
    /// number, the wait status, flags); another size falls back to
    /// `s6-svstat`.
    fn state(&self, dir: &Path) -> Result<ServiceState, Error> {
        let status = dir.join("supervise/status");
        match read_optional(&status) {
            Ok(Some(b)) if b.len() == 35 => {
                let pid = u64::from_be_bytes(b[24..32].try_into().expect("8 bytes"));
                let finishing = b[34] & 0b10 != 0;
                let up = pid != 0 && !finishing;
                Ok(ServiceState {
                    up,
                    pid: (up && pid <= u64::from(u32::MAX)).then_some(pid as u32),
                })
            }
            _ => {
                let text = self.tool("s6-svstat", &["-o", "up,pid"], dir)?;
                let mut fields = text.split_whitespace();
                let up = fields.next() == Some("true");
                let pid = fields
                    .next()
                    .and_then(|p| p.parse::<i64>().ok())
                    .filter(|p| *p > 0);
                Ok(ServiceState {
                    up,
                    pid: pid.map(|p| p as u32),
                })
            }
        }
    }
}

/// Writes `path` unless it already holds `bytes`: an activation that
/// changes 10 services of 200 rewrites (and syncs) only theirs.
fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let same = read_optional(path)?.is_some_and(|b| b == bytes)
        && matches!(entry(path)?, Entry::File { mode: m, .. } if m == mode);
    if !same {
        // The scan directory is in /run: a reboot empties it anyway.
        write_volatile(path, bytes, mode)?;
    }
    Ok(())
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Backend for S6 {
    fn states(&self) -> Result<BTreeMap<String, ServiceState>, Error> {
        let mut out = BTreeMap::new();
        for name in names(&self.scan)? {
            let dir = self.dir(&name);
            if name.starts_with('.') || entry(&dir.join("supervise/control"))? == Entry::Missing {
                continue;
            }
            out.insert(name, self.state(&dir)?);
        }
        Ok(out)
    }

    fn install(&self, name: &str, rendered: &Path) -> Result<(), Error> {
        let dir = self.dir(name);
        let fresh = entry(&dir)? == Entry::Missing;
        // Made under a temporary name and renamed, so that s6-svscan never
        // sees half a directory.
        let target = if fresh {
            self.scan.join(format!(".{name}.new"))
        } else {
            dir.clone()
        };
        if fresh {
            remove_tree(&target)?;
            create_dirs(&target.join("log"))?;
            write_volatile(&target.join("down"), b"", 0o644)?;
        }
        for f in FILES {
            let src = rendered.join(f);
            let dst = target.join(f);
            match fs::read(&src) {
                Ok(bytes) => {
                    let mode = if f == "type" { 0o644 } else { 0o755 };
                    write_if_changed(&dst, &bytes, mode)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    remove_file(&dst)?;
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
        write_if_changed(&target.join("log/run"), log_run.as_bytes(), 0o755)?;
        if fresh {
            crate::fs::rename(&target, &dir)?;
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name.to_owned());
        }
        Ok(())
    }

    fn commit(&self) -> Result<(), Error> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.is_empty() {
            return Ok(());
        }
        // One rescan for every new directory; the loggers (no `down`
        // file) start as soon as they are supervised.
        self.tool("s6-svscanctl", &["-a"], &self.scan)?;
        self.wait_supervised(&pending)
    }

    fn start(&self, name: &str) -> Result<(), Error> {
        self.tool("s6-svc", &["-u"], &self.dir(name)).map(|_| ())
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<(), Error> {
        let dir = self.dir(name);
        if entry(&dir.join("supervise/control"))? == Entry::Missing {
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
        if entry(&dir)? == Entry::Missing {
            return Ok(());
        }
        self.stop(name, timeout)?;
        remove_tree(&dir)?;
        // Prune: s6-svscan stops the supervisors of directories gone.
        self.tool("s6-svscanctl", &["-an"], &self.scan)?;
        Ok(())
    }

    fn wait_up_all(&self, names: &[&str], timeout: Duration) -> Result<bool, Error> {
        let ms = timeout.as_millis().max(1).to_string();
        let pinned: Vec<Pinned> = names
            .iter()
            .map(|n| Pinned::new(&self.dir(n)))
            .collect::<Result<_, _>>()?;
        // `-a`: all of them.
        let out = Command::new("s6-svwait")
            .args(["-u", "-a", "-t", &ms])
            .args(pinned.iter().map(Pinned::path))
            .output()
            .map_err(|e| Error::Service {
                service: names.join(", "),
                reason: format!("cannot run `s6-svwait`: {e}"),
            })?;
        Ok(out.status.success())
    }

    fn reload(&self, name: &str, inside: &Inside<'_>) -> Result<(), Error> {
        if entry(&self.dir(name).join("reload"))? == Entry::Missing {
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
        let log = read_optional(&self.logs.join(name).join("current"))
            .ok()
            .flatten()
            .unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        super::tail(&log, lines)
    }
}
