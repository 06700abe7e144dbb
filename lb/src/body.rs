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
