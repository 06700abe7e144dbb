//! The bytes of an open tunnel, copied both ways, with a buffer only while
//! some are in flight.
//!
//! A shop's WebSockets are open for as long as a page is, and idle nearly
//! all that time: a stock update now and then, a ping. What an idle tunnel
//! costs the balancer is what it keeps between messages. tokio's
//! `copy_bidirectional` (the rejected alternative, and what this module
//! replaced) keeps a buffer each way for the tunnel's whole life: two pages
//! per idle tunnel, most of what `lb` held per open tunnel (10–12 KiB).
//!
//! Here each direction reads into a buffer on the stack, for the length of
//! one poll, and writes what it read straight on. Only when the other side
//! cannot take it all yet (a slow reader, a full socket buffer) do the
//! bytes left over move to the heap, and that buffer goes back to the
//! allocator as soon as they are written. An idle tunnel holds no buffer at
//! all; HAProxy does the same with its buffer pool, and so does nginx's
//! `proxy_buffering off` path, with one buffer per side. Nothing is read
//! from a side while bytes from it are still waiting to be written: a
//! slow reader slows its writer down (back-pressure), and memory stays
//! bounded by one chunk per direction.
//!
//! A tunnel on which no byte has moved either way for the idle timeout is
//! ended (nginx's `proxy_read_timeout`, HAProxy's `timeout tunnel`). An
//! instance that froze, or a page that vanished without closing, would
//! otherwise hold its tunnel open for ever; the shop's sockets ping well
//! within the timeout, so a quiet page is never taken for a dead one. The
//! deadline is re-armed lazily: moving bytes only notes the time, and the
//! timer, when it fires early, is set again from that note (resetting a
//! timer on every message would touch the timer wheel for each one).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Duration, Instant, Sleep};

/// The most read from one side in one go, on the stack (tokio's own copy
/// size). A larger message goes through in several chunks.
const CHUNK: usize = 8 * 1024;

/// Copies `a`'s bytes to `b` and `b`'s to `a` until both sides have closed
/// their writing half (an end of stream is passed on as a shutdown of the
/// other side's), or either fails, or no byte has moved either way for
/// `idle` (an error of kind `TimedOut`; `None`: no limit). Returns the
/// bytes copied `a` → `b` and `b` → `a`, as
/// `tokio::io::copy_bidirectional` does.
pub(crate) async fn relay<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Option<Duration>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (OneWay::default(), OneWay::default());
    let mut quiet = idle.map(Quiet::new);
    std::future::poll_fn(|cx| {
        let up = a_to_b.poll_copy(cx, &mut *a, &mut *b)?;
        let down = b_to_a.poll_copy(cx, &mut *b, &mut *a)?;
        if let (Poll::Ready(up), Poll::Ready(down)) = (up, down) {
            return Poll::Ready(Ok((up, down)));
        }
        match &mut quiet {
            Some(quiet) => quiet.poll_expired(cx, a_to_b.copied + b_to_a.copied),
            None => Poll::Pending,
        }
    })
    .await
}

/// The idle timeout of one relay.
struct Quiet {
    idle: Duration,
    /// Bytes moved (both ways) when last looked at, and when that was.
    moved: u64,
    since: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Quiet {
    fn new(idle: Duration) -> Self {
        let idle = idle.min(crate::LONGEST_WAIT);
        let since = Instant::now();
        Self {
            idle,
            moved: 0,
            since,
            timer: Box::pin(tokio::time::sleep_until(since + idle)),
        }
    }

    /// Given the bytes moved so far, `Ready` with a `TimedOut` error once
    /// none have moved for the idle time; `Pending` (the timer armed)
    /// until then.
    fn poll_expired(&mut self, cx: &mut Context<'_>, moved: u64) -> Poll<io::Result<(u64, u64)>> {
        if moved != self.moved {
            self.moved = moved;
            self.since = Instant::now();
        }
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.since + self.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no bytes either way for {:?}", self.idle),
                )));
            }
            // Bytes moved since the timer was set: wait from the last of them.
            self.timer.as_mut().reset(deadline);
        }
    }
}

/// One direction of a relay.
#[derive(Default)]
struct OneWay {
    /// Bytes read but not yet written, because the writer could not take
    /// them: the only buffer a direction ever holds, and only until then.
    unwritten: Option<Unwritten>,
    /// Written since the last flush.
    unflushed: bool,
    /// The reader has ended; the end is being passed on.
    ended: bool,
    /// The end was passed on: nothing more to do.
    done: bool,
    copied: u64,
}

struct Unwritten {
    bytes: Box<[u8]>,
    from: usize,
}

impl OneWay {
    /// Copies what `from` has to `to`, until `from` has nothing more for
    /// now (`Pending`, with both wakers registered as needed) or has ended
    /// and the end was passed on (`Ready` with the bytes copied).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.copied));
            }
            // First what a slow writer left; then the buffer is let go.
            if let Some(unwritten) = &mut self.unwritten {
                while unwritten.from < unwritten.bytes.len() {
                    let n = ready!(
                        Pin::new(&mut *to).poll_write(cx, &unwritten.bytes[unwritten.from..])
                    )?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    unwritten.from += n;
                    self.copied += n as u64;
                    self.unflushed = true;
                }
                self.unwritten = None;
            }
            if self.ended {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            if Pin::new(&mut *from).poll_read(cx, &mut read)?.is_pending() {
                // Nothing more to read for now: see that what was written
                // is on its way (a no-op for plain TCP, a TLS record for
                // HTTPS) before waiting.
                if self.unflushed {
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
            let read = read.filled();
            if read.is_empty() {
                self.ended = true;
                continue;
            }
            let mut written = 0;
            while written < read.len() {
                match Pin::new(&mut *to).poll_write(cx, &read[written..])? {
                    Poll::Ready(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(n) => {
                        written += n;
                        self.copied += n as u64;
                        self.unflushed = true;
                    }
                    Poll::Pending => {
                        // The writer is full: keep the rest until it is not.
                        self.unwritten = Some(Unwritten {
                            bytes: read[written..].into(),
                            from: 0,
                        });
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// Runs a test's steps under a deadline: a relay that stops moving
    /// bytes fails the test instead of hanging it.
    async fn within_deadline(steps: impl Future<Output = ()>) {
        tokio::time::timeout(Duration::from_secs(10), steps)
            .await
            .expect("the relay kept moving");
    }

    /// What one end still receives, up to the end of the stream.
    async fn everything_left(end: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut rest = Vec::new();
        end.read_to_end(&mut rest).await.expect("read to the end");
        rest
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_each_end_is_passed_on() {
        within_deadline(async {
            let (mut client, mut client_side) = duplex(64 * 1024);
            let (mut server_side, mut server) = duplex(64 * 1024);
            let relaying =
                tokio::spawn(async move { relay(&mut client_side, &mut server_side, None).await });

            client.write_all(b"hello").await.expect("client writes");
            let mut got = [0u8; 5];
            server.read_exact(&mut got).await.expect("server reads");
            assert_eq!(&got, b"hello");
            server.write_all(b"hi there").await.expect("server writes");
            let mut got = [0u8; 8];
            client.read_exact(&mut got).await.expect("client reads");
            assert_eq!(&got, b"hi there");

            client.shutdown().await.expect("client ends");
            assert!(
                everything_left(&mut server).await.is_empty(),
                "the end reaches the server"
            );
            server
                .write_all(b"bye")
                .await
                .expect("the other way stays open");
            server.shutdown().await.expect("server ends");
            assert_eq!(everything_left(&mut client).await, b"bye", "then the end");

            let copied = relaying.await.expect("relay task").expect("relay");
            assert_eq!(copied, (5, 11));
        })
        .await;
    }

    #[tokio::test]
    async fn a_slow_reader_gets_every_byte_in_order() {
        within_deadline(async {
            // The server side takes 100 bytes at a time, far less than a chunk.
            let (mut client, mut client_side) = duplex(64 * 1024);
            let (mut server_side, mut server) = duplex(100);
            let relaying =
                tokio::spawn(async move { relay(&mut client_side, &mut server_side, None).await });
            let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let writing = {
                let sent = sent.clone();
                tokio::spawn(async move {
                    client.write_all(&sent).await.expect("client writes");
                    client.shutdown().await.expect("client ends");
                    client
                })
            };
            let mut received = Vec::new();
            let mut piece = [0u8; 37];
            loop {
                let n = server.read(&mut piece).await.expect("server reads");
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&piece[..n]);
                tokio::task::yield_now().await;
            }
            assert_eq!(received.len(), sent.len(), "every byte");
            assert!(received == sent, "in order");
            drop(writing.await.expect("writer"));
            drop(server);
            let (up, _) = relaying.await.expect("relay task").expect("relay");
            assert_eq!(up, 300_000);
        })
        .await;
    }

    #[tokio::test]
    async fn a_tunnel_quiet_both_ways_ends_at_the_idle_timeout() {
        within_deadline(async {
            let idle = Duration::from_millis(300);
            let (_client, mut client_side) = duplex(1024);
            let (mut server_side, _server) = duplex(1024);
            let started = Instant::now();
            let ended = relay(&mut client_side, &mut server_side, Some(idle)).await;
            let error = ended.expect_err("a quiet tunnel is ended");
            assert_eq!(error.kind(), io::ErrorKind::TimedOut);
            assert!(started.elapsed() >= idle, "not before the idle time");
        })
        .await;
    }

    #[tokio::test]
    async fn an_idle_timeout_too_long_for_the_clock_means_for_ever() {
        let (mut client, mut client_side) = duplex(1024);
        let (mut server_side, mut server) = duplex(1024);
        let relaying = tokio::spawn(async move {
            relay(&mut client_side, &mut server_side, Some(Duration::MAX)).await
        });
        within_deadline(async {
            client.write_all(b"x").await.expect("writes");
            let mut got = [0u8; 1];
            server.read_exact(&mut got).await.expect("the byte crosses");
            client.shutdown().await.expect("client ends");
            server.shutdown().await.expect("server ends");
        })
        .await;
        let copied = relaying.await.expect("the relay did not panic");
        assert_eq!(copied.expect("relay"), (1, 0));
    }

    #[tokio::test]
    async fn bytes_either_way_keep_a_tunnel_open_past_the_idle_timeout() {
        within_deadline(async {
            let idle = Duration::from_secs(1);
            let (mut client, mut client_side) = duplex(1024);
            let (mut server_side, mut server) = duplex(1024);
            let relaying =
                tokio::spawn(
                    async move { relay(&mut client_side, &mut server_side, Some(idle)).await },
                );
            // Three idle times, with a byte every tenth of one: first the
            // client speaking, then only the server (a ping and its pong
            // alternate the same way).
            for round in 0..30 {
                tokio::time::sleep(idle / 10).await;
                let (from, to) = if round < 15 {
                    (&mut client, &mut server)
                } else {
                    (&mut server, &mut client)
                };
                from.write_all(b"x").await.expect("writes");
                let mut got = [0u8; 1];
                to.read_exact(&mut got).await.expect("the byte crosses");
            }
            assert!(!relaying.is_finished(), "still open after three idle times");
            client.shutdown().await.expect("client ends");
            server.shutdown().await.expect("server ends");
            let copied = relaying.await.expect("relay task").expect("relay");
            assert_eq!(copied, (15, 15));
        })
        .await;
    }

    #[test]
    fn the_buffer_is_held_only_while_the_writer_is_behind() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (mut writer_end, mut from) = duplex(CHUNK);
        let (mut to, mut reader_end) = duplex(10);
        let mut one_way = OneWay::default();

        // Idle: nothing to read, nothing held.
        assert!(one_way.poll_copy(&mut cx, &mut from, &mut to).is_pending());
        assert!(
            one_way.unwritten.is_none(),
            "an idle direction holds no buffer"
        );

        // 50 bytes arrive; the other side takes 10: the other 40 are kept.
        assert!(
            Pin::new(&mut writer_end)
                .poll_write(&mut cx, &[7; 50])
                .is_ready()
        );
        assert!(one_way.poll_copy(&mut cx, &mut from, &mut to).is_pending());
        let kept = one_way.unwritten.as_ref().map(|u| u.bytes.len() - u.from);
        assert_eq!(kept, Some(40), "what the writer could not take yet");

        // The reader catches up: the rest is written and the buffer let go.
        let mut sink = Vec::new();
        while sink.len() < 50 {
            let mut piece = [0u8; 10];
            let mut buf = ReadBuf::new(&mut piece);
            if Pin::new(&mut reader_end)
                .poll_read(&mut cx, &mut buf)
                .is_ready()
            {
                sink.extend_from_slice(buf.filled());
            }
            let _ = one_way.poll_copy(&mut cx, &mut from, &mut to);
        }
        assert_eq!(sink, vec![7; 50]);
        assert!(one_way.unwritten.is_none(), "let go once written");
        assert_eq!(one_way.copied, 50);
    }
}
