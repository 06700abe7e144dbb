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
//! Why per thread: the `lb` binary runs one event loop per core (see
//! [`crate::run_threaded`]), and a connection's task lives on the loop that
//! opened it. A per-thread pool keeps a request, its client's connection
//! and its backend connection on one thread, with no cross-thread wake-ups.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::ProxyBody;

/// Idle connections kept per backend and thread; more are closed.
const MAX_IDLE: usize = 128;

type Sender = SendRequest<ProxyBody>;

/// Which pool a connection belongs to: one balancer's, one backend's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub balancer: usize,
    /// `host:port`.
    pub address: String,
}

thread_local! {
    static IDLE: RefCell<HashMap<PoolKey, Vec<Sender>>> = RefCell::new(HashMap::new());
}

/// A connection in use; give it back with [`Pooled::release`] once its
/// response has been read to the end, or drop it to close it.
pub struct Pooled {
    key: PoolKey,
    sender: Sender,
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
        if self.sender.is_closed() {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.key).or_default();
            if list.len() < MAX_IDLE {
                list.push(self.sender);
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
        reason: String,
        /// The backend refused or did not answer a new connection.
        connect_failed: bool,
    },
    /// The request was (at least partly) sent, then the exchange failed.
    Failed(hyper::Error),
}

fn take_idle(key: &PoolKey) -> Option<Sender> {
    IDLE.with(|idle| idle.borrow_mut().get_mut(key).and_then(Vec::pop))
}

/// Sends `request` to `key.address` on an idle connection, or a new one.
pub async fn send(
    key: PoolKey,
    connect_timeout: Duration,
    mut request: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Pooled), SendError> {
    // The most recently used connection first: it is the least likely to
    // have been closed by the backend meanwhile.
    while let Some(mut sender) = take_idle(&key) {
        // A connection whose last response just ended becomes ready as soon
        // as its task has seen the end; one the backend closed says so here.
        if sender.is_closed() || sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((response, Pooled { key, sender })),
            Err(mut error) => match error.take_message() {
                // Closed under our feet before anything was written: the
                // request is intact, try the next connection.
                Some(unsent) => request = unsent,
                None => return Err(SendError::Failed(error.into_error())),
            },
        }
    }

    let connected =
        tokio::time::timeout(connect_timeout, TcpStream::connect(key.address.as_str())).await;
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            return Err(SendError::NotSent {
                request: Box::new(request),
                reason: format!("cannot connect to {}: {error}", key.address),
                connect_failed: true,
            });
        }
        Err(_elapsed) => {
            return Err(SendError::NotSent {
                request: Box::new(request),
                reason: format!(
                    "no connection to {} within {} ms",
                    key.address,
                    connect_timeout.as_millis()
                ),
                connect_failed: true,
            });
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = match http1::handshake(TokioIo::new(stream)).await {
        Ok(pair) => pair,
        Err(error) => {
            return Err(SendError::NotSent {
                request: Box::new(request),
                reason: format!("HTTP handshake with {} failed: {error}", key.address),
                connect_failed: true,
            });
        }
    };
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "backend connection ended with an error");
        }
    });
    match sender.try_send_request(request).await {
        Ok(response) => Ok((response, Pooled { key, sender })),
        Err(mut error) => match error.take_message() {
            Some(request) => Err(SendError::NotSent {
                request: Box::new(request),
                reason: error.error().to_string(),
                connect_failed: false,
            }),
            None => Err(SendError::Failed(error.into_error())),
        },
    }
}
