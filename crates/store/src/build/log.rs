//! A build's log: its lines go to the observer, a tail kept for the
//! failure report, and a file in the state dir.
//!
//! Most builders print little or nothing, and a build's serial path is
//! what a 2-core machine waits on: a log stays in memory until it is big
//! enough to be worth compressing, and a small one is written once, as
//! plain text, when the build ends (no gzip state per build); an empty
//! one is not written at all.

use std::collections::VecDeque;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;

use bigtop_core::StorePath;

use super::observer::BuildObserver;
use crate::store::Store;

/// Past this many bytes the log is streamed to a gzip file.
const IN_MEMORY: usize = 64 * 1024;

enum Sink {
    Memory(Vec<u8>),
    Gzip(flate2::write::GzEncoder<fs::File>),
    /// The file could not be written (a full disk): the log is lost, the
    /// build is not.
    Lost,
}

/// Writes lines of a build's log to its log file, the observer and a tail
/// kept for the failure report.
/// Why [`LogSink::pump_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PumpEnd {
    /// The log ended: every writer closed it.
    End,
    /// The process exited (the log may still be open).
    Exited,
    /// The build was interrupted.
    Interrupted,
}

pub(crate) struct LogSink<'a> {
    store: &'a Store,
    sink: Sink,
    /// The start of a line whose end has not been read yet.
    partial: Vec<u8>,
    drv: &'a StorePath,
    observer: &'a dyn BuildObserver,
    tail: VecDeque<String>,
    keep: usize,
}

impl<'a> LogSink<'a> {
    pub(crate) fn new(
        store: &'a Store,
        drv: &'a StorePath,
        observer: &'a dyn BuildObserver,
        keep: usize,
    ) -> Self {
        LogSink {
            store,
            sink: Sink::Memory(Vec::new()),
            partial: Vec::new(),
            drv,
            observer,
            tail: VecDeque::new(),
            keep,
        }
    }

    /// Takes bytes as they come; complete lines are passed on.
    fn feed(&mut self, bytes: &[u8]) {
        self.write(bytes);
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(i + 1);
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
            }
            rest = after;
        }
        self.partial.extend_from_slice(rest);
    }

    fn line(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let line = text.trim_end_matches(['\n', '\r']);
        self.observer.log_line(self.drv, line);
        if self.keep > 0 {
            if self.tail.len() == self.keep {
                self.tail.pop_front();
            }
            self.tail.push_back(line.to_owned());
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        match &mut self.sink {
            Sink::Memory(buf) if buf.len() + bytes.len() <= IN_MEMORY => {
                buf.extend_from_slice(bytes);
            }
            Sink::Memory(buf) => {
                let held = std::mem::take(buf);
                let gz = self.open_gzip().and_then(|mut gz| {
                    (gz.write_all(&held).is_ok() && gz.write_all(bytes).is_ok()).then_some(gz)
                });
                self.sink = gz.map_or(Sink::Lost, Sink::Gzip);
            }
            Sink::Gzip(gz) => {
                if gz.write_all(bytes).is_err() {
                    self.sink = Sink::Lost;
                }
            }
            Sink::Lost => {}
        }
    }

    fn open_gzip(&self) -> Option<flate2::write::GzEncoder<fs::File>> {
        let path = self.store.log_file(self.drv, true);
        let file = create(&path)?;
        // A log of an earlier build of the same derivation is replaced.
        let _ = fs::remove_file(self.store.log_file(self.drv, false));
        Some(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    }

    /// Reads `from` to its end.
    pub(crate) fn pump(&mut self, mut from: impl Read) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.feed(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Reads `from` until its end, until `exited` (a pidfd) becomes
    /// readable, or until `interrupt` fires, whichever comes first,
    /// without a thread of its own. Without a pidfd (a kernel older than
    /// 5.3), `exited_now` is asked every 50 ms instead; with neither, only
    /// the end and the interrupt count.
    pub(crate) fn pump_until(
        &mut self,
        from: &std::io::PipeReader,
        exited: Option<BorrowedFd<'_>>,
        mut exited_now: Option<&mut dyn FnMut() -> bool>,
        interrupt: Option<&super::Interrupt>,
    ) -> PumpEnd {
        let mut buf = [0u8; 16 * 1024];
        let fd = |f: Option<BorrowedFd<'_>>| libc::pollfd {
            fd: f.map_or(-1, |fd| fd.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = [
            fd(Some(from.as_fd())),
            fd(exited),
            fd(interrupt.map(super::Interrupt::fd)),
        ];
        let timeout = if exited.is_none() && exited_now.is_some() {
            50
        } else {
            -1
        };
        loop {
            // SAFETY: `fds` is a valid array of three pollfds (a negative
            // fd is ignored by poll).
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout) };
            if r < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Cannot wait on all: fall back to reading to the end.
                let mut from = from;
                self.pump(&mut from);
                return PumpEnd::End;
            }
            if fds[2].revents != 0 {
                return PumpEnd::Interrupted;
            }
            if fds[0].revents != 0 {
                let mut from = from;
                match from.read(&mut buf) {
                    Ok(0) => return PumpEnd::End,
                    Ok(n) => {
                        self.feed(&buf[..n]);
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return PumpEnd::End,
                }
            }
            let polled = exited.is_none() && exited_now.as_mut().is_some_and(|f| f());
            if fds[1].revents != 0 || polled {
                return PumpEnd::Exited;
            }
        }
    }

    /// Adds a line of our own (not the builder's) to the log.
    pub(crate) fn note(&mut self, line: &str) {
        self.feed(format!("{line}\n").as_bytes());
    }

    /// Finishes the log file; returns the tail.
    pub(crate) fn finish(mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.line(&last);
        }
        match std::mem::replace(&mut self.sink, Sink::Lost) {
            Sink::Memory(buf) => {
                let plain = self.store.log_file(self.drv, false);
                // A builder that printed nothing (most builders of small
                // files) costs no file; a log of an earlier build goes.
                if buf.is_empty() {
                    let _ = fs::remove_file(&plain);
                } else if let Some(mut f) = create(&plain) {
                    if f.write_all(&buf).is_err() {
                        drop(f);
                        let _ = fs::remove_file(&plain);
                    }
                }
                let _ = fs::remove_file(self.store.log_file(self.drv, true));
            }
            Sink::Gzip(gz) => {
                let _ = gz.finish();
            }
            Sink::Lost => {}
        }
        self.tail.into_iter().collect()
    }
}

/// Creates (or truncates) a log file, and its directory when missing.
fn create(path: &PathBuf) -> Option<fs::File> {
    match fs::File::create(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(path.parent()?).ok()?;
            fs::File::create(path).ok()
        }
        Err(_) => None,
    }
}
