//! A write timeout for a connection, which hyper does not have: a
//! response the client does not take would otherwise hold what makes it
//! (a NAR's stream, its dump thread and compressor) for as long as the
//! client keeps the connection open.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `io`, whose writes fail with [`io::ErrorKind::TimedOut`] once the
/// peer has taken no bytes for `timeout`: hyper then drops the
/// connection, and with it the response's body.
pub(crate) struct StallTimeout<T> {
    io: T,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Whether `sleep` counts down: from the first write that could not
    /// go on, until one does.
    armed: bool,
}

impl<T> StallTimeout<T> {
    pub(crate) fn new(io: T, timeout: Duration) -> Self {
        StallTimeout {
            io,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }

    /// `r`, a write's outcome, unless the peer stalled too long.
    fn check<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.timeout;
            self.sleep.as_mut().reset(deadline);
        }
        // Registers the task to be woken at the deadline, besides when
        // the socket can take more.
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no bytes for {:?}", self.timeout),
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.check(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.check(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.check(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Instant as StdInstant;

    /// Writes `buf` through `w` until a write fails: how long that took.
    async fn write_until_failure(
        w: &mut StallTimeout<tokio::net::TcpStream>,
    ) -> (io::Error, Duration) {
        let buf = vec![0u8; 64 * 1024];
        let started = StdInstant::now();
        loop {
            let written = std::future::poll_fn(|cx| Pin::new(&mut *w).poll_write(cx, &buf)).await;
            if let Err(e) = written {
                return (e, started.elapsed());
            }
        }
    }

    #[tokio::test]
    async fn a_slow_reader_is_kept_and_one_that_stops_is_cut_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Reads 1 MiB every 100 ms for two seconds, then stops. (Less
        // would not do: the kernel says a socket can take more only once
        // a good part of its send buffer, a few MiB, is taken.)
        let (done, wait_done) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let until = StdInstant::now() + Duration::from_secs(2);
            while StdInstant::now() < until {
                s.read_exact(&mut buf).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = wait_done.recv_timeout(Duration::from_secs(10));
            drop(s);
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut w = StallTimeout::new(tcp, Duration::from_secs(1));
        let (e, took) = write_until_failure(&mut w).await;
        // Timed out (not cut by the reader leaving, which it does only
        // once told, or after 10 seconds), and not while it read.
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(took >= Duration::from_secs(2), "{took:?}");
        done.send(()).unwrap();
        reader.join().unwrap();
    }
}
