//! Keep-alive connections to the backends, one pool per thread.
//!
//! Opening a TCP connection per proxied request would double the work of
//! every request (and run the machine out of ports under load), so finished
//! connections wait here for the next request to the same backend: what
//! nginx's `keepalive` in an `upstream` block does.
//!
//! The pool is built on hyper's connection-level client
//! (`hyper::client::conn::http1`) rather than hyper-util's ready-made pooled
//! `Client`, for two reasons the proxy cares about:
//!
//! * **Retries without copies.** The proxy connects *before* it hands the
//!   request over, so when the connection fails (the instance is dead) it
//!   still holds the request, body and all, and can send it to another
//!   backend. With the ready-made client the request is gone on failure, and
//!   a retry needs a copy made in advance for every request.
//! * **No task per request.** A connection goes back to the pool when the
//!   proxy has streamed the last byte of its response ([`Pooled::release`],
//!   called by [`crate::body::Tracked`]). The ready-made client spawns a
//!   task per request to find that moment out; measured with
//!   `scripts/bench-lb`, that showed.
//!
//! One more thing the pool does for the proxy: a backend that answers
//! before it has read the whole request body (a 413 for an upload over its
//! limit) and then closes makes the rest of the upload fail to write. The
//! answer is already on its way back, and it is the answer the client
//! needs. [`BackendStream`] lets the write side fail quietly so that the
//! response is still read, as nginx and HAProxy do; the connection is then
//! never reused.
//!
//! Why per thread: the `lb` binary runs one event loop per core (see
//! [`crate::run_threaded`]), and a connection's task lives on the loop that
//! opened it. A per-thread pool keeps a request, its client's connection
//! and its backend connection on one thread, with no cross-thread wake-ups.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::backend::ConnectFailure;
use crate::body::ProxyBody;
use crate::dial::Dial;

/// Idle connections kept per backend and thread; more are closed.
const MAX_IDLE: usize = 128;

/// Which pool a connection belongs to: one balancer's, one backend's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub balancer: usize,
    /// `host:port`.
    pub address: String,
}

/// An idle connection: its sender, and whether its writes failed.
type Idle = (Sender, Arc<AtomicBool>);

thread_local! {
    static IDLE: RefCell<HashMap<PoolKey, Vec<Idle>>> = RefCell::new(HashMap::new());
}

type Sender = SendRequest<ProxyBody>;

/// A connection to a backend whose writes may fail without failing the
/// exchange: once the backend has stopped reading (it answered early and
/// closed), what is left of the request is dropped, the response is still
/// read, and the connection is marked as not to be reused.
struct BackendStream {
    tcp: TcpStream,
    write_failed: Arc<AtomicBool>,
}

impl BackendStream {
    /// A write error that means "the backend is no longer reading".
    fn swallow(&self, result: io::Result<usize>, len: usize) -> io::Result<usize> {
        match result {
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                self.write_failed.store(true, Ordering::Release);
                Ok(len)
            }
            other => other,
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_failed.load(Ordering::Acquire) {
            return Poll::Ready(Ok(buf.len()));
        }
        let polled = Pin::new(&mut self.tcp).poll_write(cx, buf);
        polled.map(|result| self.swallow(result, buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.write_failed.load(Ordering::Acquire) {
            return Poll::Ready(Ok(len));
        }
        let polled = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        polled.map(|result| self.swallow(result, len))
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_failed.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A connection in use; give it back with [`Pooled::release`] once its
/// response has been read to the end, or drop it to close it.
pub struct Pooled {
    key: PoolKey,
    sender: Sender,
    write_failed: Arc<AtomicBool>,
    /// Opened for this request, rather than taken from the pool.
    pub fresh: bool,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Pooled {
    /// Returns the connection to this thread's pool.
    pub fn release(self) {
        if self.sender.is_closed() || self.write_failed.load(Ordering::Acquire) {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.key).or_default();
            if list.len() < MAX_IDLE {
                list.push((self.sender, self.write_failed));
            }
        });
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// Nothing reached the backend; here is the request, whole.
    NotSent {
        /// Boxed: this is the rare path, and the `Ok` path should stay small.
        request: Box<Request<ProxyBody>>,
        why: Unsent,
    },
    /// The request was (at least partly) sent, then the exchange failed
    /// before a response head arrived.
    Failed(hyper::Error),
}

/// Why a request never left.
#[derive(Debug)]
pub enum Unsent {
    /// The backend refused, or did not answer, a new connection.
    Connect(ConnectFailure, String),
    /// This machine could not open a connection (out of file descriptors
    /// or ports): the balancer's trouble, not the backend's.
    Local(io::Error),
    /// The connection closed before the request went out.
    Closed(String),
}

impl Unsent {
    /// Says why in words fit for a client: no addresses, no internals.
    pub fn describe(&self) -> String {
        match self {
            Self::Connect(ConnectFailure::Refused, _) => "it refused the connection".to_owned(),
            Self::Connect(ConnectFailure::TimedOut, _) => {
                "it did not accept a connection in time".to_owned()
            }
            Self::Local(_) => "the balancer could not open a connection".to_owned(),
            Self::Closed(_) => "the connection closed before the request was sent".to_owned(),
        }
    }
}

/// Sorts a failed `connect` into the backend's fault or this machine's.
fn connect_error(error: io::Error) -> Unsent {
    if crate::dial::is_local_shortage(&error) {
        Unsent::Local(error)
    } else {
        Unsent::Connect(ConnectFailure::Refused, error.to_string())
    }
}

fn take_idle(key: &PoolKey) -> Option<Idle> {
    IDLE.with(|idle| idle.borrow_mut().get_mut(key).and_then(Vec::pop))
}

/// Sends `request` to `key.address` on an idle connection, or a new one.
pub async fn send(
    key: PoolKey,
    dial: Dial,
    mut request: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Pooled), SendError> {
    // The most recently used connection first: it is the least likely to
    // have been closed by the backend meanwhile.
    while let Some((mut sender, write_failed)) = take_idle(&key) {
        // A connection whose last response just ended becomes ready as soon
        // as its task has seen the end; one the backend closed says so here.
        if sender.is_closed() || sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                let pooled = Pooled {
                    key,
                    sender,
                    write_failed,
                    fresh: false,
                };
                return Ok((response, pooled));
            }
            Err(mut error) => match error.take_message() {
                // Closed under our feet before anything was written: the
                // request is intact, try the next connection.
                Some(unsent) => request = unsent,
                None => return Err(SendError::Failed(error.into_error())),
            },
        }
    }

    let connected = dial.connect(key.address.as_str()).await;
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            return Err(SendError::NotSent {
                request: Box::new(request),
                why: connect_error(error),
            });
        }
        Err(_elapsed) => {
            return Err(SendError::NotSent {
                request: Box::new(request),
                why: Unsent::Connect(
                    ConnectFailure::TimedOut,
                    format!("no connection within {} ms", dial.timeout.as_millis()),
                ),
            });
        }
    };
    let _ = stream.set_nodelay(true);
    let write_failed = Arc::new(AtomicBool::new(false));
    let stream = BackendStream {
        tcp: stream,
        write_failed: Arc::clone(&write_failed),
    };
    let (mut sender, connection) = match http1::handshake(TokioIo::new(stream)).await {
        Ok(pair) => pair,
        Err(error) => {
            return Err(SendError::NotSent {
                request: Box::new(request),
                why: Unsent::Connect(
                    ConnectFailure::Refused,
                    format!("HTTP handshake failed: {error}"),
                ),
            });
        }
    };
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "backend connection ended with an error");
        }
    });
    match sender.try_send_request(request).await {
        Ok(response) => Ok((
            response,
            Pooled {
                key,
                sender,
                write_failed,
                fresh: true,
            },
        )),
        Err(mut error) => match error.take_message() {
            Some(request) => Err(SendError::NotSent {
                request: Box::new(request),
                why: Unsent::Closed(error.error().to_string()),
            }),
            None => Err(SendError::Failed(error.into_error())),
        },
    }
}
