//! The body type that flows through the proxy.
//!
//! Request and response bodies are passed on as they stream in, never
//! buffered: a large upload or download costs the balancer a few buffers,
//! not its size in memory. The one thing the balancer adds is [`Tracked`],
//! which, once the last byte of a response has gone out, releases the
//! backend's in-flight count (so least-connections sees a slow download as
//! the load it is) and returns the backend connection to the pool.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, SizeHint};

use crate::backend::InFlight;
use crate::pool::Pooled;

/// The body of every response the balancer sends (and request it forwards).
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A response body that lets go of its backend when it ends.
pub struct Tracked {
    inner: ProxyBody,
    guard: Option<InFlight>,
    connection: Option<Pooled>,
}

impl Tracked {
    pub fn new(inner: ProxyBody, guard: InFlight, connection: Pooled) -> Self {
        Self {
            inner,
            guard: Some(guard),
            connection: Some(connection),
        }
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
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finished(),
            Poll::Ready(Some(Err(_))) => {
                // A broken response: its connection is not reusable.
                self.connection = None;
                self.guard = None;
            }
            _ => {}
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
