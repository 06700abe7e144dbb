//! The body type that flows through the proxy.
//!
//! Backend responses are passed on as they stream in, never buffered: a large
//! download costs the balancer a few buffers, not its size in memory. The one
//! thing the balancer adds is [`Tracked`], which keeps the backend's
//! in-flight count up until the last byte has gone out, so least-connections
//! sees a slow download as the load it is.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, SizeHint};

use crate::backend::InFlight;

/// The body of every response the balancer sends (and request it forwards).
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A body that releases an [`InFlight`] guard when it ends or is dropped.
pub struct Tracked {
    inner: ProxyBody,
    guard: Option<InFlight>,
}

impl Tracked {
    pub fn new(inner: ProxyBody, guard: InFlight) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // Finished: release the in-flight count now rather than when
            // hyper gets round to dropping the body.
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body the proxy can take back if it was never sent.
///
/// The pooled client consumes the request it is given. When the connection
/// to the backend fails *before* the body was read (connection refused: the
/// instance is dead), the body is still whole, and the request can go to
/// another backend: no error for the shopper. This wrapper keeps the body in
/// a shared slot and remembers whether anything read from it; the proxy can
/// then [`Replayable::take_back`] an untouched body for its one retry.
/// (The alternative, buffering every body in memory, would break streaming
/// of large uploads.)
#[derive(Clone, Debug)]
pub struct Replayable {
    slot: std::sync::Arc<std::sync::Mutex<Slot>>,
}

#[derive(Debug)]
struct Slot {
    body: Option<hyper::body::Incoming>,
    touched: bool,
}

impl Replayable {
    pub fn new(body: hyper::body::Incoming) -> Self {
        Self {
            slot: std::sync::Arc::new(std::sync::Mutex::new(Slot {
                body: Some(body),
                touched: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A body to send, reading from the shared slot.
    pub fn sendable(&self) -> ProxyBody {
        http_body_util::BodyExt::boxed(self.clone())
    }

    /// The body, if nothing was read from it yet.
    pub fn take_back(&self) -> Option<Self> {
        let mut slot = self.lock();
        if slot.touched {
            return None;
        }
        slot.body.take().map(Self::new)
    }
}

impl Body for Replayable {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut slot = self.lock();
        slot.touched = true;
        match slot.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.lock().body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.lock()
            .body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
