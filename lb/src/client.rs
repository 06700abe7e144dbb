//! A client's connection as the balancer holds it: the socket, its place
//! among `--max-clients`, and a deadline on each write.
//!
//! **Its place.** Every client connection is a file descriptor, and most
//! need a second one to a backend. Past the open-file limit, `accept` and
//! connecting to a backend both fail, for every client at once, those
//! already being served too. So a balancer holds at most `max_clients`
//! client connections (HAProxy's `maxconn`, nginx's `worker_connections`);
//! past that it stops accepting, and new ones wait in the kernel's accept
//! queue until an open one ends. The place is a semaphore permit held by
//! [`ClientIo`], so it lasts exactly as long as the socket, through a
//! WebSocket upgrade too (hyper hands the same value on to the tunnel).
//!
//! **Its send deadline.** A response in flight holds a backend's request
//! slot, a pooled connection and a task. When the client stops reading (a
//! laptop closed half-way through a download, or someone holding the
//! shop's connections on purpose), the kernel's buffers fill, our writes
//! stop going through, and hyper simply waits: for ever, until now. nginx
//! calls the limit `send_timeout` (60 s), HAProxy `timeout client`. A
//! write the kernel cannot take starts a timer, any write that goes
//! through stops it, and if the timer fires first the write fails with
//! `TimedOut`: hyper ends the connection, and dropping the response lets go
//! of the backend. The timer only runs while a write waits, so the usual
//! write, straight into the socket's buffer, costs one branch. "Goes
//! through" is coarse: Linux wakes a blocked writer only once about a third
//! of the socket's send buffer has drained, and that buffer grows to a few
//! megabytes on a fast download. A reader must take in that much within
//! the limit: with the default 60 s, about 25 KB/s (nginx's `send_timeout`
//! works the same way, and so has the same floor).
//!
//! Rejected alternatives: a deadline on the whole response would cut a
//! slow but steady download of a large file; a check in the response body
//! never runs, because hyper stops polling the body when the client stops
//! reading.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

/// A client connection's place among `--max-clients`: taken before its
/// `accept` (so that with every place taken nothing is accepted), counted
/// as open from the `accept` on, given back when the connection ends.
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
    open: Arc<AtomicUsize>,
}

impl Place {
    /// The connection just accepted on `permit`, counted in `open`.
    pub(crate) fn new(permit: OwnedSemaphorePermit, open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self {
            _permit: permit,
            open: Arc::clone(open),
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection: its socket (plain or TLS), its place among the
/// balancer's clients, and how long each write may wait.
pub(crate) struct ClientIo<I> {
    io: I,
    /// Given back when the connection ends.
    _place: Place,
    /// `None`: writes may wait for ever.
    limit: Option<Duration>,
    /// Made at the first write that has to wait, then reused.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` is counting down for the write that waits now.
    armed: bool,
}

impl<I> ClientIo<I> {
    pub(crate) fn new(io: I, place: Place, limit: Option<Duration>) -> Self {
        Self {
            io,
            _place: place,
            limit: limit.map(|limit| limit.min(crate::LONGEST_WAIT)),
            timer: None,
            armed: false,
        }
    }

    /// Passes on what the wrapped write answered: progress (or an error)
    /// stops the clock; a wait starts it, or fails once it has run out.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Poll::Pending = polled else {
            self.armed = false;
            return polled;
        };
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let deadline = Instant::now() + limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for the send timeout",
        )))
    }
}

impl<I: Read + Unpin> Read for ClientIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: Write + Unpin> Write for ClientIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt;

    /// A connected pair over a small pipe: what the far end does not read
    /// soon fills it.
    fn pipe(
        limit: Option<Duration>,
    ) -> (
        ClientIo<TokioIo<tokio::io::DuplexStream>>,
        tokio::io::DuplexStream,
    ) {
        let (near, far) = tokio::io::duplex(1024);
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .expect("a free place");
        let place = Place::new(permit, &Arc::new(AtomicUsize::new(0)));
        (ClientIo::new(TokioIo::new(near), place, limit), far)
    }

    async fn write_all<W: Write + Unpin>(io: &mut W, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, data)).await?;
            data = &data[n..];
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_write_nobody_reads_fails_at_the_limit() {
        let (mut near, _far) = pipe(Some(Duration::from_millis(200)));
        let started = Instant::now();
        let error = write_all(&mut near, &[7; 4096])
            .await
            .expect_err("it fails");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_slowly_is_never_cut() {
        let (mut near, mut far) = pipe(Some(Duration::from_millis(300)));
        // 16 KiB through a 1 KiB pipe, a KiB every 100 ms: the writer waits
        // about 1.6 s in all, never 300 ms in a row.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut piece = [0u8; 1024];
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match far.read(&mut piece).await {
                    Ok(0) | Err(_) => return got.len(),
                    Ok(n) => got.extend_from_slice(&piece[..n]),
                }
            }
        });
        write_all(&mut near, &[7; 16 * 1024])
            .await
            .expect("all of it goes through");
        std::future::poll_fn(|cx| Pin::new(&mut near).poll_shutdown(cx))
            .await
            .expect("shutdown");
        assert_eq!(reader.await.expect("reader"), 16 * 1024);
    }

    #[tokio::test]
    async fn without_a_limit_a_write_waits_for_ever() {
        let (mut near, mut far) = pipe(None);
        let writing = tokio::spawn(async move { write_all(&mut near, &[7; 4096]).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!writing.is_finished(), "still waiting");
        let mut all = Vec::new();
        far.read_to_end(&mut all).await.expect("read");
        assert_eq!(all.len(), 4096);
        writing.await.expect("task").expect("written");
    }
}
