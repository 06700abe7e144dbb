//! The body type that flows through the proxy.
//!
//! Request and response bodies are passed on as they stream in, never
//! buffered: a large upload or download costs the balancer a few buffers,
//! not its size in memory. (The one exception: the small body of an
//! idempotent request is held, so that the request can be sent again
//! elsewhere; see [`crate::proxy`].) The balancer adds two wrappers:
//!
//! * [`Tracked`], which, once the last byte of a response has gone out,
//!   releases the backend's in-flight count and slot (so least-connections
//!   sees a slow download as the load it is) and returns the backend
//!   connection to the pool; and which cuts the response if the backend
//!   sends nothing more for the request timeout (a backend frozen after its
//!   headers would otherwise hold all of these for ever). A client that
//!   stops reading is another matter: hyper then stops asking for the
//!   body, so this watch does not see it;
//! * [`FromClient`], which notes when a *client's* request body breaks
//!   (an invalid chunk size, a connection cut mid-upload), so that the
//!   failure is answered as the client's fault (400), not the backend's;
//!   and when a piece of it last went through ([`Upload`]), so that the
//!   wait for the backend's answer counts from there: a long upload that
//!   keeps moving is not cut at the request timeout, a stalled one is, and
//!   so is one that trickles in below [`MIN_UPLOAD_RATE`];
//!   and which, if the answer comes before the upload is done (a backend's
//!   early 413), keeps reading and dropping the rest for a while
//!   ([`linger`]). Closing a connection with unread data in it makes the
//!   kernel reset it, and a client still sending then fails before it ever
//!   reads the answer. nginx calls this `lingering_close`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::backend::InFlight;
use crate::pool::Pooled;

/// What can end a body early: hyper's errors, and the balancer's own
/// (a backend that stopped sending mid-response).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the balancer sends (and request it forwards).
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A response body that lets go of its backend when it ends, and gives up
/// on a backend that stops sending it half-way.
pub struct Tracked {
    inner: Incoming,
    guard: Option<InFlight>,
    connection: Option<Pooled>,
    /// How long the backend may go without sending the next piece (the
    /// request timeout, as nginx's `proxy_read_timeout` is both); `None`
    /// for a body that needs no watching.
    quiet: Option<QuietBackend>,
}

/// The wait for a response's next piece: a frozen backend after its
/// headers would otherwise hold the client, the connection and one of its
/// request slots for ever.
struct QuietBackend {
    limit: Duration,
    /// When the last piece came.
    since: tokio::time::Instant,
    /// Armed only while a piece is awaited; re-armed from `since`.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Tracked {
    pub fn new(inner: Incoming, guard: InFlight, connection: Pooled, limit: Duration) -> Self {
        Self {
            inner,
            guard: Some(guard),
            connection: Some(connection),
            quiet: Some(QuietBackend {
                limit: limit.min(crate::LONGEST_WAIT),
                since: tokio::time::Instant::now(),
                timer: None,
            }),
        }
    }

    /// A body from a connection that is not pooled (an upgrade refused).
    pub fn unpooled(inner: Incoming, guard: InFlight) -> Self {
        Self {
            inner,
            guard: Some(guard),
            connection: None,
            quiet: None,
        }
    }

    /// A broken response (the backend's error, or its silence): its
    /// connection is not reusable, and its slot is free.
    fn broken(&mut self) {
        self.connection = None;
        self.guard = None;
    }

    /// The response is complete: the connection may carry another request.
    fn finished(&mut self) {
        self.guard = None;
        if let Some(connection) = self.connection.take() {
            connection.release();
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finished(),
            Poll::Ready(Some(Err(_))) => self.broken(),
            Poll::Ready(Some(Ok(_))) => {
                if let Some(quiet) = &mut self.quiet {
                    quiet.since = tokio::time::Instant::now();
                }
            }
            Poll::Pending => {
                if let Some(quiet) = &mut self.quiet
                    && quiet.poll_expired(cx).is_ready()
                {
                    self.broken();
                    let limit = self.quiet.as_ref().map_or(0, |q| q.limit.as_millis());
                    return Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the backend sent nothing more for {limit} ms"),
                    )))));
                }
            }
        }
        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl QuietBackend {
    /// `Ready` once nothing has come for the limit; else `Pending`, with
    /// the timer set for when it would be.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let deadline = self.since + self.limit;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                // A piece came since the timer was set: wait from it.
                timer.as_mut().reset(deadline);
            }
            std::task::ready!(timer.as_mut().poll(cx));
            if tokio::time::Instant::now() >= self.since + self.limit {
                return Poll::Ready(());
            }
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // An empty body (a 204, `Content-Length: 0`) is never polled; it is
        // complete all the same. Anything else dropped half-way (the client
        // went away) leaves its connection mid-response: close it.
        if self.inner.is_end_stream() {
            self.finished();
        }
    }
}

/// How long the rest of an unwanted upload is read and dropped.
const LINGER: Duration = Duration::from_secs(30);

/// Reads what is left of a client's request body and drops it, for at most
/// [`LINGER`], so that the client finishes sending and reads the answer it
/// was given. Call it with a body nobody will read.
pub fn linger(mut body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
}

/// The slowest a request body may come in, in bytes per second, once the
/// request timeout has passed: an upload may take the timeout plus one
/// second for every this many bytes it has sent. Without a floor, a client
/// sending a byte just inside every timeout (the "slow POST" attack)
/// holds a backend's request slot for as long as it likes, and a few
/// hundred such clients hold them all. Apache's `mod_reqtimeout` has the
/// same rule (`MinRate=500`); a phone on a poor line still sends tens of
/// kilobytes a second.
pub const MIN_UPLOAD_RATE: u64 = 500;

/// What the proxy learns of a client's request body on its way to a
/// backend: whether it broke, how much of it went through, and when.
#[derive(Debug)]
pub struct Upload {
    broken: AtomicBool,
    started: Instant,
    /// Milliseconds after `started`.
    last_moved_ms: AtomicU64,
    /// Bytes that went through.
    received: AtomicU64,
    /// Whether the whole body went through.
    finished: AtomicBool,
    /// Milliseconds after `started` when the backend's connection first
    /// asked for the body (`u64::MAX`: not yet). The rate counts from
    /// there: a wait for a backend's slot or connection is not the
    /// client's, nor is one for `100 Continue`, which is sent only then.
    first_asked_ms: AtomicU64,
    /// Whether the backend's connection is waiting for the client's next
    /// piece (rather than the client for the backend to read on).
    waiting_for_client: AtomicBool,
}

impl Upload {
    /// A body already whole (empty, or held before it is sent): nothing of
    /// it will move, and no rate applies.
    pub fn new() -> Arc<Self> {
        Self::with(true)
    }

    /// A body streamed from the client as it comes.
    fn streaming() -> Arc<Self> {
        Self::with(false)
    }

    fn with(finished: bool) -> Arc<Self> {
        Arc::new(Self {
            broken: AtomicBool::new(false),
            started: Instant::now(),
            last_moved_ms: AtomicU64::new(0),
            received: AtomicU64::new(0),
            finished: AtomicBool::new(finished),
            first_asked_ms: AtomicU64::new(u64::MAX),
            waiting_for_client: AtomicBool::new(false),
        })
    }

    /// Whether reading the client's body failed (its fault, not the
    /// backend's).
    pub fn broke(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// When a piece of the body last went through (or the upload began).
    pub fn last_moved(&self) -> Instant {
        self.started + Duration::from_millis(self.last_moved_ms.load(Ordering::Relaxed))
    }

    /// Until when the upload may go on at [`MIN_UPLOAD_RATE`], given a
    /// `grace` (the request timeout) before the rate counts; `None` once
    /// the whole body went through (or for a body held whole): a wait
    /// after that is the backend's; and `None` before the backend first
    /// asks for it: until then the client is not sending late.
    pub fn rate_allows_until(&self, grace: Duration) -> Option<Instant> {
        let first_asked = self.first_asked_ms.load(Ordering::Relaxed);
        if self.finished.load(Ordering::Acquire) || first_asked == u64::MAX {
            return None;
        }
        let received = self.received.load(Ordering::Relaxed);
        let earned = Duration::from_millis(received.saturating_mul(1000) / MIN_UPLOAD_RATE);
        Some(self.started + Duration::from_millis(first_asked) + grace + earned)
    }

    /// Whether the body is unfinished and the backend's connection waits
    /// for the client's next piece of it: a stall is then the client's.
    pub fn waiting_for_client(&self) -> bool {
        !self.finished.load(Ordering::Acquire) && self.waiting_for_client.load(Ordering::Relaxed)
    }

    /// The backend's connection asks for the body. The first time, the
    /// clocks start: the rate's, and the silence's (as if a piece had just
    /// gone through), so a client that waited for `100 Continue` has a
    /// whole timeout from then.
    fn asked(&self) {
        if self.first_asked_ms.load(Ordering::Relaxed) == u64::MAX {
            let since = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.first_asked_ms.store(since, Ordering::Relaxed);
            self.last_moved_ms.store(since, Ordering::Relaxed);
        }
    }

    fn moved(&self, bytes: usize) {
        let since = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_moved_ms.store(since, Ordering::Relaxed);
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.received.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A client's request body on its way to a backend, which remembers whether
/// it was the client's side that failed and when it last moved, and
/// lingers if dropped unfinished.
pub struct FromClient {
    /// Always `Some` until dropped.
    inner: Option<Incoming>,
    upload: Arc<Upload>,
}

impl FromClient {
    /// Wraps `inner`, reporting on it in the [`Upload`] returned.
    pub fn new(inner: Incoming) -> (Self, Arc<Upload>) {
        let upload = Upload::streaming();
        let body = Self {
            inner: Some(inner),
            upload: Arc::clone(&upload),
        };
        (body, upload)
    }
}

impl Body for FromClient {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let upload = &this.upload;
        upload.asked();
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        let done = inner.is_end_stream();
        upload
            .waiting_for_client
            .store(polled.is_pending(), Ordering::Relaxed);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => upload.moved(frame.data_ref().map_or(0, Bytes::len)),
            Poll::Ready(Some(Err(_))) => upload.broken.store(true, Ordering::Release),
            _ => {}
        }
        if done || matches!(polled, Poll::Ready(None)) {
            upload.finished.store(true, Ordering::Release);
        }
        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for FromClient {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && !self.upload.broke()
        {
            linger(inner);
        }
    }
}
