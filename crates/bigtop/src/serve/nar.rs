//! A path's NAR, dumped from the store on a blocking thread, compressed,
//! and handed to the HTTP body in chunks through a bounded channel: the
//! memory a download holds is a few chunks and the compressor's state,
//! whatever the path's size; a slow client slows the dump (the channel is
//! full), and a client that goes away stops it (the channel is closed).
//!
//! The NAR is checked against the hash and size the store recorded as it
//! streams. The stream is only finished (its last chunk sent, the
//! compressor's trailer written, the end marked) once the whole NAR has
//! matched; on a mismatch, or any failure, the sender goes away without
//! marking the end and the connection is cut, so a client never takes a
//! changed or truncated NAR for a whole one (and its own hash check fails
//! too).

use std::io::{self, Write};

use bigtop_core::hash::{HashAlgo, Hasher};
use bigtop_store::cache::{Compression, Compressor};
use bigtop_store::{PathInfo, Store};
use hyper::body::Bytes;
use tokio::sync::mpsc;

use super::Error;

/// Bytes per chunk sent to the body.
pub(crate) const CHUNK: usize = 64 * 1024;
/// Chunks waiting for the client at most, per download.
pub(crate) const DEPTH: usize = 4;

/// What the dumping thread sends the body.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// Bytes of the (compressed) NAR.
    Data(Bytes),
    /// The NAR is whole and matched what the store recorded. A channel
    /// closed without it is a failed stream.
    Done,
}

/// How a dump ended, when it did not send the whole NAR.
#[derive(Debug)]
pub(crate) enum Stopped {
    /// The client went away: nothing is wrong on this side.
    ClientGone,
    /// The store could not give the NAR it recorded.
    Failed(Error),
}

/// Sends `info.path`'s NAR, compressed with `compression`, down `tx`,
/// checking it against `info` as it goes. Blocks: run it on a thread of
/// its own.
pub(crate) fn send(
    store: &Store,
    info: &PathInfo,
    compression: Compression,
    tx: mpsc::Sender<Chunk>,
) -> Result<(), Stopped> {
    let path = &info.path;
    // Whether the client has left tells a write that failed for that
    // reason from a failure here. Dropped on return with the writer's
    // sender, which closes the channel.
    let client = tx.clone();
    let stopped = |e: Error| {
        if client.is_closed() {
            Stopped::ClientGone
        } else {
            Stopped::Failed(e)
        }
    };
    let sink = ChannelWriter {
        tx,
        buf: Vec::with_capacity(CHUNK),
    };
    let compress_err = |source| Error::Compress {
        path: path.clone(),
        source,
    };
    let compressor = Compressor::with_size(compression, sink, info.nar_size)
        .map_err(|e| stopped(compress_err(e)))?;
    let mut checked = Checked::new(compressor, info.nar_hash.algo(), info.nar_size);
    let dumped = bigtop_core::nar::dump_path(&store.physical(path), &mut checked);
    let over = checked.over;
    let (hash, size, compressor) = checked.finish();
    // A changed path is worth saying even when the client has left.
    match dumped {
        Err(_) if over => return Err(Stopped::Failed(Error::Changed { path: path.clone() })),
        Err(source) => {
            return Err(stopped(Error::Dump {
                path: path.clone(),
                source: Box::new(source),
            }))
        }
        Ok(_) if hash != info.nar_hash || size != info.nar_size => {
            return Err(Stopped::Failed(Error::Changed { path: path.clone() }))
        }
        Ok(_) => {}
    }
    let sink = compressor.finish().map_err(|e| stopped(compress_err(e)))?;
    sink.finish().map_err(|()| Stopped::ClientGone)
}

/// Writes into the channel in chunks of [`CHUNK`] bytes, always holding
/// back the last bytes written until [`finish`](Self::finish): a stream
/// that is not finished never reaches its end.
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    /// Sends what is held back and marks the end; `Err` if the client
    /// went away.
    fn finish(mut self) -> Result<(), ()> {
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.tx
                .blocking_send(Chunk::Data(Bytes::from(last)))
                .map_err(|_| ())?;
        }
        self.tx.blocking_send(Chunk::Done).map_err(|_| ())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        // A full chunk is sent only once more comes after it.
        if self.buf.len() == CHUNK {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            if self
                .tx
                .blocking_send(Chunk::Data(Bytes::from(full)))
                .is_err()
            {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    /// Holds on: flushing would send the bytes held back.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hashes and counts a NAR on its way to `inner`, and refuses to pass
/// more than `limit` bytes: a path grown on disk since it was recorded is
/// cut off at once rather than sent whole first.
pub(crate) struct Checked<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
    limit: u64,
    /// Whether more than `limit` bytes were offered.
    pub(crate) over: bool,
}

impl<W: Write> Checked<W> {
    pub(crate) fn new(inner: W, algo: HashAlgo, limit: u64) -> Self {
        Checked {
            inner,
            hasher: Hasher::new(algo),
            written: 0,
            limit,
            over: false,
        }
    }

    /// The hash and size of what passed, and the inner writer.
    pub(crate) fn finish(self) -> (bigtop_core::Hash, u64, W) {
        (self.hasher.finish(), self.written, self.inner)
    }
}

impl<W: Write> Write for Checked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.limit {
            self.over = true;
            return Err(io::Error::other("the NAR is larger than recorded"));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
