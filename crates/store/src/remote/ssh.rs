//! The client end: a remote store reached by running `ssh`, and the two
//! copies over it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bigtop_core::{StoreDir, StorePath};

use super::{RemoteError, Status, MAGIC, MAX_PATHS, PROTOCOL_VERSION};
use crate::cache::{CopyObserver, CopyReport, Counting, Quiet};
use crate::export::{get, get_number, put};
use crate::Store;

/// How to reach a remote store: the ssh client and its arguments, and
/// the bigtop to run on the other side.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SshOptions {
    /// The ssh client (default `ssh`, looked up on `PATH`).
    pub ssh_program: String,
    /// Arguments given to ssh before the destination, each one argument
    /// (`-i`, `KEY`, `-o`, `StrictHostKeyChecking=yes`, `-F`, `FILE`);
    /// default none.
    pub ssh_args: Vec<String>,
    /// The program run on the remote side (default `bigtop`, looked up
    /// on the remote login's `PATH`).
    pub remote_program: String,
    /// The remote's `--store` (default none: the remote's default store).
    pub remote_store: Option<String>,
    /// The remote's `--store-dir` (default none: the remote's default).
    pub remote_store_dir: Option<String>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            ssh_program: "ssh".into(),
            ssh_args: Vec::new(),
            remote_program: "bigtop".into(),
            remote_store: None,
            remote_store_dir: None,
        }
    }
}

/// A bigtop store on another machine, at `ssh://[user@]host[:port]`.
#[derive(Debug, Clone)]
pub struct SshStore {
    url: String,
    user: Option<String>,
    host: String,
    port: Option<u16>,
    options: SshOptions,
}

impl SshStore {
    /// The store at `url` (`ssh://[user@]host[:port]`, an IPv6 host in
    /// brackets), reached as `options` say. Nothing is run yet.
    pub fn new(url: &str, options: SshOptions) -> Result<SshStore, RemoteError> {
        let bad = |reason| RemoteError::Url {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("ssh://")
            .ok_or_else(|| bad("it does not start with `ssh://`"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(bad(
                "only `ssh://[user@]host[:port]` is understood: no path, query or fragment",
            ));
        }
        let (user, at) = match rest.rsplit_once('@') {
            Some((user, at)) => (Some(user), at),
            None => (None, rest),
        };
        if let Some(user) = user {
            if user.contains(':') {
                return Err(bad("a password in the URL is not supported: use a key"));
            }
            if user.is_empty() || !user.chars().all(|c| c.is_ascii_graphic() && c != '@') {
                return Err(bad(
                    "the user name is empty or has spaces or odd characters",
                ));
            }
        }
        let (host, port) = if let Some(bracketed) = at.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("`[` without `]` around the host"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("something other than `:port` after `]`"))?,
                    ),
                ),
            }
        } else {
            match at.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err(bad("an IPv6 host must be in brackets: `ssh://[::1]:22`"))
                }
                Some((host, port)) => (host, Some(port)),
                None => (at, None),
            }
        };
        if host.is_empty() {
            return Err(bad("it names no host"));
        }
        // ssh would take `-oProxyCommand=…` for an option, whatever
        // `--` says about the arguments after it.
        if host.starts_with('-') || !host.chars().all(|c| c.is_ascii_graphic() && c != '@') {
            return Err(bad(
                "the host has spaces, `@`, odd characters or a leading `-`",
            ));
        }
        let port = port
            .map(|p| match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
                _ => Err(bad("the port is not a number from 1 to 65535")),
            })
            .transpose()?;
        Ok(SshStore {
            url: url.to_owned(),
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
            options,
        })
    }

    /// How messages name it: its URL.
    pub fn describe(&self) -> &str {
        &self.url
    }

    /// The ssh command that starts a session, not yet run: `ssh
    /// [ssh_args] [-p PORT] -- [user@]host '<remote program>' store serve
    /// [--store DIR] [--store-dir DIR]`, the remote command quoted for the
    /// remote shell.
    pub fn command(&self) -> Command {
        let o = &self.options;
        let mut command = Command::new(&o.ssh_program);
        command.args(&o.ssh_args);
        if let Some(port) = self.port {
            command.arg("-p").arg(port.to_string());
        }
        let destination = match &self.user {
            Some(user) => format!("{user}@{}", self.host),
            None => self.host.clone(),
        };
        let mut words = vec![o.remote_program.as_str(), "store", "serve"];
        if let Some(store) = &o.remote_store {
            words.extend(["--store", store]);
        }
        if let Some(dir) = &o.remote_store_dir {
            words.extend(["--store-dir", dir]);
        }
        let line = words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ");
        command.arg("--").arg(destination).arg(line);
        command
    }
}

/// `word` as the remote shell reads it back: as it is when it holds only
/// characters no shell treats specially, else in single quotes. (`=` is
/// special too: a first word `A=b` is an assignment, not a program.)
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+,".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Copies the closures of `roots` from `store` to `remote`: asks which
/// of its paths the remote has, in one request, then sends the rest as
/// one export stream, which the remote registers whole or not at all.
pub fn copy_to(
    store: &Store,
    remote: &SshStore,
    roots: &[StorePath],
) -> Result<CopyReport, RemoteError> {
    copy_to_observed(store, remote, roots, &Quiet)
}

/// [`copy_to`], telling `observer` how it goes (the bytes are those of
/// the stream, a little more than the NARs').
pub fn copy_to_observed(
    store: &Store,
    remote: &SshStore,
    roots: &[StorePath],
    observer: &dyn CopyObserver,
) -> Result<CopyReport, RemoteError> {
    let local = |source| RemoteError::Store {
        host: remote.url.clone(),
        source: Box::new(source),
    };
    // Kept alive here until the copy ends, whatever a collector does.
    store.add_temp_roots(roots).map_err(local)?;
    let closure = store.closure(roots).map_err(local)?;
    let mut session = Session::open(remote, store.store_dir())?;
    match session.send_missing(store, &closure, observer) {
        Ok(report) => session.finish().map(|()| report),
        Err(failure) => Err(session.fail(failure)),
    }
}

/// Copies the closures of `roots` from `remote` into `store`: asks for
/// the closure with each path's record, in one request, then for an
/// export of the paths `store` lacks, which it imports as any export
/// stream, checked and registered whole or not at all.
pub fn copy_from(
    store: &Store,
    remote: &SshStore,
    roots: &[StorePath],
) -> Result<CopyReport, RemoteError> {
    copy_from_observed(store, remote, roots, &Quiet)
}

/// [`copy_from`], telling `observer` how it goes (the bytes are those of
/// the stream, a little more than the NARs').
pub fn copy_from_observed(
    store: &Store,
    remote: &SshStore,
    roots: &[StorePath],
    observer: &dyn CopyObserver,
) -> Result<CopyReport, RemoteError> {
    let mut session = Session::open(remote, store.store_dir())?;
    match session.fetch_missing(store, roots, observer) {
        Ok(report) => session.finish().map(|()| report),
        Err(failure) => Err(session.fail(failure)),
    }
}

/// Why a session failed, before the remote's exit is known to explain it.
enum Failure {
    /// The channel broke, or carried what the protocol does not allow:
    /// how the remote ended says why.
    Channel {
        during: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The remote answered with an error.
    Refused(String),
    /// The local store failed: because the channel broke under it, or on
    /// its own.
    Local {
        during: &'static str,
        source: Box<crate::Error>,
    },
    /// Already said in full.
    Said(Box<RemoteError>),
}

/// One end of the channel, counting what passes and noting whether it
/// broke or ended, which tells a local failure from the remote's.
struct Channel<T> {
    inner: T,
    bytes: u64,
    ended: bool,
    /// The first bytes read, to show what a program that is not `bigtop
    /// store serve` (or a login script) wrote instead.
    head: Vec<u8>,
}

/// How many of the first bytes read are kept.
const HEAD_KEPT: usize = 64;

impl<T> Channel<T> {
    fn new(inner: T) -> Self {
        Channel {
            inner,
            bytes: 0,
            ended: false,
            head: Vec::new(),
        }
    }
}

impl<R: Read> Read for Channel<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.bytes += n as u64;
                self.ended |= n == 0 && !buf.is_empty();
                let room = HEAD_KEPT.saturating_sub(self.head.len()).min(n);
                self.head.extend_from_slice(&buf[..room]);
                Ok(n)
            }
            Err(e) => {
                self.ended |= e.kind() != io::ErrorKind::Interrupted;
                Err(e)
            }
        }
    }
}

impl<W: Write> Write for Channel<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.ended |= e.kind() != io::ErrorKind::Interrupted;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.ended = true)
    }
}

/// The last bytes ssh wrote to standard error (its own messages and the
/// remote program's), read by a thread so that ssh never blocks on it.
struct StderrTail {
    text: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

/// How much of the remote's standard error is kept: the end, where the
/// error is.
const STDERR_KEPT: usize = 16 * 1024;

impl StderrTail {
    fn start(mut stderr: impl Read + Send + 'static) -> StderrTail {
        let text = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let kept = Arc::clone(&text);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut text = kept.lock().unwrap_or_else(|e| e.into_inner());
                        text.extend_from_slice(&buf[..n]);
                        if text.len() > STDERR_KEPT {
                            let cut = text.len() - STDERR_KEPT;
                            text.drain(..cut);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        StderrTail { text, done }
    }

    /// What was written, once the writer is done or `wait` has passed (a
    /// process ssh left behind may hold the pipe open).
    fn take(&self, wait: Duration) -> String {
        let _ = self.done.recv_timeout(wait);
        let text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// How long the remote gets to end once this side has closed the
/// channel, before ssh is killed.
const GRACE: Duration = Duration::from_secs(10);

/// A running `ssh … bigtop store serve`, greeted.
struct Session<'r> {
    remote: &'r SshStore,
    child: Child,
    to: Option<BufWriter<Channel<ChildStdin>>>,
    from: Option<BufReader<Channel<ChildStdout>>>,
    stderr: StderrTail,
    greeted: bool,
}

impl<'r> Session<'r> {
    /// Starts ssh and exchanges greetings: the same protocol version and
    /// store dir, or an error naming both.
    fn open(remote: &'r SshStore, store_dir: &StoreDir) -> Result<Session<'r>, RemoteError> {
        let mut child = remote
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RemoteError::Spawn {
                program: remote.options.ssh_program.clone(),
                host: remote.url.clone(),
                source,
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three were piped")
        };
        let mut session = Session {
            remote,
            child,
            to: Some(BufWriter::with_capacity(256 * 1024, Channel::new(stdin))),
            from: Some(BufReader::with_capacity(256 * 1024, Channel::new(stdout))),
            stderr: StderrTail::start(stderr),
            greeted: false,
        };
        match session.greet(store_dir) {
            Ok(()) => Ok(session),
            Err(failure) => Err(session.fail(failure)),
        }
    }

    fn greet(&mut self, store_dir: &StoreDir) -> Result<(), Failure> {
        const DURING: &str = "greeting";
        self.send(
            &[MAGIC.as_bytes(), PROTOCOL_VERSION.to_string().as_bytes()],
            DURING,
        )?;
        let magic = self.get("its greeting", DURING)?;
        if magic != MAGIC {
            return Err(Failure::Channel {
                during: DURING,
                source: format!("it greeted with `{magic}`, not `{MAGIC}`").into(),
            });
        }
        let version = self.get("its protocol version", DURING)?;
        let version: u64 = version.parse().map_err(|_| Failure::Channel {
            during: DURING,
            source: format!("its protocol version `{version}` is not a number").into(),
        })?;
        if version != PROTOCOL_VERSION {
            return Err(Failure::Said(Box::new(RemoteError::Version {
                host: self.remote.url.clone(),
                remote: version,
                local: PROTOCOL_VERSION,
            })));
        }
        let theirs = self.get("its store dir", DURING)?;
        if theirs != store_dir.as_str() {
            return Err(Failure::Said(Box::new(RemoteError::StoreDir {
                host: self.remote.url.clone(),
                remote: theirs,
                local: store_dir.to_string(),
            })));
        }
        self.greeted = true;
        Ok(())
    }

    fn to(&mut self) -> &mut BufWriter<Channel<ChildStdin>> {
        self.to
            .as_mut()
            .unwrap_or_else(|| unreachable!("open until the session ends"))
    }

    fn from(&mut self) -> &mut BufReader<Channel<ChildStdout>> {
        self.from
            .as_mut()
            .unwrap_or_else(|| unreachable!("open until the session ends"))
    }

    /// The bytes read from the remote and consumed: not those read ahead
    /// into the buffer.
    fn consumed(&mut self) -> u64 {
        let from = self.from();
        from.get_ref().bytes - from.buffer().len() as u64
    }

    /// Writes one message and sends it.
    fn send(&mut self, parts: &[&[u8]], during: &'static str) -> Result<(), Failure> {
        let to = self.to();
        parts
            .iter()
            .try_for_each(|p| put(to, p))
            .and_then(|()| to.flush())
            .map_err(|e| Failure::Channel {
                during,
                source: Box::new(e),
            })
    }

    /// Sends an operation and its paths.
    fn send_paths<'a>(
        &mut self,
        op: &str,
        paths: impl ExactSizeIterator<Item = &'a StorePath>,
        during: &'static str,
    ) -> Result<(), Failure> {
        let n = paths.len().to_string();
        let names: Vec<String> = paths.map(ToString::to_string).collect();
        let mut parts: Vec<&[u8]> = vec![op.as_bytes(), n.as_bytes()];
        parts.extend(names.iter().map(|s| s.as_bytes()));
        self.send(&parts, during)
    }

    fn get(&mut self, what: &str, during: &'static str) -> Result<String, Failure> {
        get(self.from(), what).map_err(|e| Failure::Channel {
            during,
            source: Box::new(e),
        })
    }

    fn get_number(&mut self, what: &str, during: &'static str) -> Result<u64, Failure> {
        get_number(self.from(), what, MAX_PATHS).map_err(|e| Failure::Channel {
            during,
            source: Box::new(e),
        })
    }

    fn get_path(&mut self, what: &str, during: &'static str) -> Result<StorePath, Failure> {
        let s = self.get(what, during)?;
        StorePath::from_base_name(&s).map_err(|e| Failure::Channel {
            during,
            source: format!("{what} `{s}`: {e}").into(),
        })
    }

    fn get_paths(&mut self, what: &str, during: &'static str) -> Result<Vec<StorePath>, Failure> {
        let n = self.get_number(&format!("the number of {what}"), during)?;
        (0..n).map(|_| self.get_path(what, during)).collect()
    }

    /// Reads the start of an answer: `"ok"`, or the remote's error.
    fn answer(&mut self, during: &'static str) -> Result<(), Failure> {
        match self.get("an answer", during)?.as_str() {
            "ok" => Ok(()),
            "error" => Err(Failure::Refused(self.get("its error", during)?)),
            other => Err(Failure::Channel {
                during,
                source: format!("it answered `{other}`, not `ok` or `error`").into(),
            }),
        }
    }

    /// The copy to the remote, once greeted.
    fn send_missing(
        &mut self,
        store: &Store,
        closure: &BTreeSet<StorePath>,
        observer: &dyn CopyObserver,
    ) -> Result<CopyReport, Failure> {
        const ASKING: &str = "asking which paths it has";
        self.send_paths("valid", closure.iter(), ASKING)?;
        self.answer(ASKING)?;
        let present: BTreeSet<StorePath> =
            self.get_paths("valid paths", ASKING)?.into_iter().collect();
        let missing: BTreeSet<StorePath> = closure.difference(&present).cloned().collect();
        let mut report = CopyReport {
            present: closure.len() - missing.len(),
            ..CopyReport::default()
        };
        if missing.is_empty() {
            return Ok(report);
        }
        for p in &missing {
            let info = store
                .path_info(p)
                .and_then(|i| i.ok_or_else(|| crate::Error::NotValid { path: p.clone() }))
                .map_err(|source| Failure::Local {
                    during: "reading the paths to send",
                    source: Box::new(source),
                })?;
            report.nar_bytes += info.nar_size;
        }
        const SENDING: &str = "receiving the export stream";
        observer.planned(missing.len(), report.nar_bytes);
        self.send(&[b"import"], SENDING)?;
        let before = self.to().get_ref().bytes;
        let sent = store.export_only(
            &missing,
            &mut Counting {
                inner: self.to(),
                observer,
            },
        );
        report.file_bytes = self.to().get_ref().bytes - before;
        let order = match sent {
            Ok(order) => order,
            // The remote stopped reading: it may have said why.
            Err(source) if self.to().get_ref().ended => {
                return Err(match self.answer(SENDING) {
                    Err(refused @ Failure::Refused(_)) => refused,
                    _ => Failure::Channel {
                        during: SENDING,
                        source: Box::new(source),
                    },
                })
            }
            Err(source) => {
                return Err(Failure::Local {
                    during: "sending the export stream",
                    source: Box::new(source),
                })
            }
        };
        const IMPORTING: &str = "importing what was sent";
        self.answer(IMPORTING)?;
        let imported: BTreeSet<StorePath> = self
            .get_paths("imported paths", IMPORTING)?
            .into_iter()
            .collect();
        if imported != missing {
            return Err(Failure::Channel {
                during: IMPORTING,
                source: format!(
                    "it says it imported {} paths of the {} sent",
                    imported.len(),
                    missing.len()
                )
                .into(),
            });
        }
        order.iter().for_each(|p| observer.copied(p));
        report.copied = order;
        Ok(report)
    }

    /// The copy from the remote, once greeted.
    fn fetch_missing(
        &mut self,
        store: &Store,
        roots: &[StorePath],
        observer: &dyn CopyObserver,
    ) -> Result<CopyReport, Failure> {
        const ASKING: &str = "listing the closure";
        self.send_paths("closure", roots.iter(), ASKING)?;
        self.answer(ASKING)?;
        let n = self.get_number("the number of paths in the closure", ASKING)?;
        let mut sizes: BTreeMap<StorePath, u64> = BTreeMap::new();
        for _ in 0..n {
            let path = self.get_path("a path of the closure", ASKING)?;
            // Read to keep the protocol's shape; the import checks the
            // stream's own copy of each.
            self.get("a NAR hash", ASKING)?;
            let size = self.get(&format!("the NAR size of `{path}`"), ASKING)?;
            let size = size.parse().map_err(|_| Failure::Channel {
                during: ASKING,
                source: format!("the NAR size `{size}` of `{path}` is not a number").into(),
            })?;
            self.get_paths(&format!("references of `{path}`"), ASKING)?;
            sizes.insert(path, size);
        }
        let local = |source: crate::Error| Failure::Local {
            during: "checking which paths are here",
            source: Box::new(source),
        };
        // Rooted before they are looked up, as a builder roots its inputs.
        store.add_temp_roots(sizes.keys()).map_err(local)?;
        let present = store.valid_among(sizes.keys()).map_err(local)?;
        let missing: BTreeSet<StorePath> = sizes
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        let mut report = CopyReport {
            present: present.len(),
            nar_bytes: missing.iter().map(|p| sizes[p]).sum(),
            ..CopyReport::default()
        };
        if missing.is_empty() {
            return Ok(report);
        }
        const SENDING: &str = "sending the export stream";
        observer.planned(missing.len(), report.nar_bytes);
        self.send_paths("export", missing.iter(), SENDING)?;
        self.answer(SENDING)?;
        let before = self.consumed();
        let imported = store
            .import(&mut Counting {
                inner: self.from(),
                observer,
            })
            .map_err(|source| Failure::Local {
                during: SENDING,
                source: Box::new(source),
            })?;
        report.file_bytes = self.consumed() - before;
        if let Some(p) = missing.iter().find(|p| !imported.contains(p)) {
            return Err(Failure::Channel {
                during: SENDING,
                source: format!("its export stream left out `{p}`, which was asked for").into(),
            });
        }
        imported.iter().for_each(|p| observer.copied(p));
        report.copied = imported;
        Ok(report)
    }

    /// Ends a session that did its work: the remote is told to quit and
    /// given its grace to do so.
    fn finish(mut self) -> Result<(), RemoteError> {
        // It has answered everything asked: how it goes from here does
        // not change what was copied.
        let _ = self.send(&[b"quit"], "quitting");
        self.to = None;
        self.from = None;
        self.reap(GRACE);
        Ok(())
    }

    /// Ends a failed session, and says why it failed in full: what broke
    /// on this side, how the remote ended and what it printed.
    fn fail(mut self, failure: Failure) -> RemoteError {
        let ended = self.to.as_ref().is_some_and(|w| w.get_ref().ended)
            || self.from.as_ref().is_some_and(|r| r.get_ref().ended);
        let head = self
            .from
            .as_ref()
            .map(|r| r.get_ref().head.clone())
            .unwrap_or_default();
        // Closing both ends lets a remote that is still reading or
        // writing see the session is over. What is buffered is dropped,
        // not flushed: a remote that stopped reading would block that.
        if let Some(to) = self.to.take() {
            drop(to.into_parts());
        }
        self.from = None;
        // A local failure while the remote is well needs nothing from it.
        let grace = match &failure {
            Failure::Local { .. } if !ended => Duration::ZERO,
            _ => GRACE,
        };
        let status = self.reap(grace);
        let stderr = self.stderr.take(Duration::from_secs(1));
        let host = self.remote.url.clone();
        let program = self.remote.options.remote_program.clone();
        match failure {
            Failure::Said(e) => *e,
            Failure::Refused(message) => RemoteError::Refused { host, message },
            Failure::Local { source, .. } if !ended => RemoteError::Store { host, source },
            Failure::Local { during, source } => RemoteError::Ended {
                host,
                during,
                status,
                stderr,
                source,
            },
            Failure::Channel { .. } if status == Status::Exited(127) && !self.greeted => {
                RemoteError::ProgramMissing {
                    host,
                    program,
                    stderr,
                }
            }
            // ssh's own failures exit with 255.
            Failure::Channel { .. } if status == Status::Exited(255) && !self.greeted => {
                RemoteError::Connect {
                    host,
                    status,
                    stderr,
                }
            }
            Failure::Channel { source, .. } if !self.greeted => RemoteError::NotBigtop {
                host,
                program,
                reason: not_a_greeting(&head).unwrap_or_else(|| source.to_string()),
                status,
                stderr,
            },
            Failure::Channel { source, .. } if !ended && status == Status::Exited(0) => {
                RemoteError::Protocol {
                    host,
                    reason: source.to_string(),
                }
            }
            Failure::Channel { during, source } => RemoteError::Ended {
                host,
                during,
                status,
                stderr,
                source,
            },
        }
    }

    /// Waits up to `grace` for ssh to exit, then kills it.
    fn reap(&mut self, grace: Duration) -> Status {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status_of(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Status::Killed;
                }
            }
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // Finished sessions have been waited for; this is for a panic.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a remote wrote instead of a greeting, when that is what broke
/// it: text is more telling than the length it made.
fn not_a_greeting(head: &[u8]) -> Option<String> {
    let mut greeting = Vec::new();
    put(&mut greeting, MAGIC.as_bytes()).ok()?;
    let common = head.len().min(greeting.len());
    if head.is_empty() || head[..common] == greeting[..common] {
        return None;
    }
    let text = String::from_utf8_lossy(head);
    let more = if head.len() == HEAD_KEPT { "…" } else { "" };
    Some(format!("it wrote `{}{more}` first", text.escape_debug()))
}

fn status_of(status: ExitStatus) -> Status {
    match (status.code(), status.signal()) {
        (Some(code), _) => Status::Exited(code),
        (None, Some(signal)) => Status::Signaled(signal),
        (None, None) => Status::Killed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> Result<(Option<String>, String, Option<u16>), RemoteError> {
        SshStore::new(url, SshOptions::default()).map(|s| (s.user, s.host, s.port))
    }

    #[test]
    fn urls_give_user_host_and_port() {
        let ok = |url: &str, user: Option<&str>, host: &str, port: Option<u16>| {
            let got = parts(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                got,
                (user.map(str::to_owned), host.to_owned(), port),
                "{url}"
            );
        };
        ok("ssh://web1", None, "web1", None);
        ok("ssh://web1/", None, "web1", None);
        ok(
            "ssh://root@127.0.0.1:2222",
            Some("root"),
            "127.0.0.1",
            Some(2222),
        );
        ok("ssh://deploy@[::1]:22", Some("deploy"), "::1", Some(22));
        ok("ssh://[fe80::1]", None, "fe80::1", None);
    }

    #[test]
    fn bad_urls_are_refused_naming_them() {
        for url in [
            "http://web1",
            "ssh://",
            "ssh://web1/srv/store",
            "ssh://web1?remote-store=/x",
            "ssh://user:secret@web1",
            "ssh://@web1",
            "ssh://web1:0",
            "ssh://web1:65536",
            "ssh://web1:+22",
            "ssh://web1:",
            "ssh://::1",
            "ssh://[::1",
            "ssh://[::1]x",
            "ssh://-oProxyCommand=touch%20x",
            "ssh://a b",
        ] {
            match parts(url) {
                Err(RemoteError::Url { url: named, .. }) => assert_eq!(named, url),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_remote_command_is_quoted_for_a_shell() {
        assert_eq!(shell_quote("bigtop"), "bigtop");
        assert_eq!(
            shell_quote("/opt/big top/bin/bigtop"),
            "'/opt/big top/bin/bigtop'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_quote("A=b"), "'A=b'");
        let options = SshOptions {
            remote_program: "/opt/big top/bigtop".into(),
            remote_store_dir: Some("/nix/store".into()),
            ..SshOptions::default()
        };
        let store = SshStore::new("ssh://web1", options).expect("a valid URL");
        let args: Vec<String> = store
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--",
                "web1",
                "'/opt/big top/bigtop' store serve --store-dir /nix/store"
            ]
        );
    }
}
