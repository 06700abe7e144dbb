//! WebSockets through the balancer: an HTTP/1.1 `Upgrade`, then a tunnel.
//!
//! A WebSocket starts as an ordinary GET with `Upgrade: websocket` and
//! `Connection: upgrade`. If the backend agrees (`101 Switching
//! Protocols`), the connection stops being HTTP: from then on it carries
//! WebSocket frames both ways, for as long as the page stays open. For a
//! balancer that means:
//!
//! * the two headers are hop-by-hop, so the proxy would normally drop
//!   them; for an upgrade they are passed on on purpose;
//! * the backend connection is opened for this one request and never goes
//!   back to the pool: once upgraded, it belongs to the socket;
//! * after the 101, the proxy relays bytes between the two connections
//!   ([`relay`]: a buffer only while bytes are in flight, so an idle
//!   tunnel holds none) until both sides close, or until no byte has
//!   moved either way for the idle timeout (a frozen instance, a page
//!   gone without a goodbye: the page then reconnects, to an instance
//!   that answers). It does not read the frames: they are the page's and
//!   the instance's business;
//! * the tunnel holds its backend's in-flight count for its whole life, so
//!   `least-conn` balances open sockets, and a tunnels-open gauge says how
//!   many there are; it gives back its request slot (`max_conns` is about
//!   requests being answered: a hundred idle sockets must not lock an
//!   instance out of ordinary requests).
//!
//! This is where the stateless story ends: while a socket is open, *which
//! instance* holds it is state, kept by the balancer (this tunnel) and by
//! the instance (the socket). An instance that dies takes its sockets
//! with it, and the pages must reconnect; the balancer can only send them
//! somewhere else. nginx needs `proxy_set_header Upgrade $http_upgrade;
//! proxy_set_header Connection "upgrade";` for the same job; HAProxy does
//! it by itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::backend::{Backend, ConnectFailure, InFlight};
use crate::body::{ProxyBody, Tracked};
use crate::dial::Dial;
use crate::errors::LbError;

mod relay;

/// Whether `request` asks to switch protocols: a GET with `Upgrade` and a
/// `Connection` header that lists `upgrade`.
pub(crate) fn is_upgrade(request: &Request<Incoming>) -> bool {
    let connection_says_upgrade = request
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    request.method() == Method::GET
        && connection_says_upgrade
        && request.headers().contains_key(UPGRADE)
}

/// Puts back the two hop-by-hop headers an upgrade needs, after the
/// proxy's usual removal.
pub(crate) fn keep_upgrade_headers(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, upgrade);
}

/// Counts one open tunnel on its backend until dropped.
struct OpenTunnel(Arc<Backend>);

impl OpenTunnel {
    fn new(backend: &Arc<Backend>) -> Self {
        backend.tunnels.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(backend))
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends an upgrade request to `backend` on a connection of its own. On a
/// 101, answers the client with it and splices the two connections once
/// both sides have switched; any other answer is passed on as it is.
pub(crate) async fn open(
    backend: &Arc<Backend>,
    in_flight: InFlight,
    client: OnUpgrade,
    upstream: Request<ProxyBody>,
    dial: Dial,
    answer_timeout: Duration,
    idle_timeout: Option<Duration>,
) -> Result<Response<ProxyBody>, LbError> {
    let bad_gateway = |reason: &str| LbError::BadGateway {
        backend: backend.name().to_owned(),
        reason: reason.to_owned(),
    };
    let stream = match dial.connect(backend.address()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) if crate::dial::is_local_shortage(&error) => {
            tracing::error!(backend = backend.name(), %error, "cannot open a tunnel: the balancer is out of resources");
            return Err(LbError::Overloaded);
        }
        Ok(Err(_)) => {
            backend.connect_failed(ConnectFailure::Refused);
            return Err(bad_gateway("it refused the connection"));
        }
        Err(_) => {
            backend.connect_failed(ConnectFailure::TimedOut);
            return Err(bad_gateway("it did not accept a connection in time"));
        }
    };
    backend.connected();
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| bad_gateway("the HTTP handshake failed"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upgrade connection ended with an error");
        }
    });
    let mut response =
        match tokio::time::timeout(answer_timeout, sender.send_request(upstream)).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => return Err(bad_gateway("the connection failed before it answered")),
            Err(_) => {
                return Err(LbError::GatewayTimeout {
                    backend: backend.name().to_owned(),
                    timeout_ms: answer_timeout.as_millis(),
                });
            }
        };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused (a draining instance, a bad handshake): an ordinary answer.
        let (head, body) = response.into_parts();
        let body = Tracked::unpooled(body, in_flight);
        return Ok(Response::from_parts(
            head,
            http_body_util::BodyExt::boxed(body),
        ));
    }
    let server = hyper::upgrade::on(&mut response);
    let tunnel = OpenTunnel::new(backend);
    let name = backend.name().to_owned();
    let mut in_flight = in_flight;
    in_flight.release_slot();
    tokio::spawn(async move {
        let _held = (in_flight, tunnel);
        match tokio::try_join!(client, server) {
            Ok((client, server)) => {
                let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
                let copied = relay::relay(&mut client, &mut server, idle_timeout).await;
                match copied {
                    Ok((up, down)) => tracing::debug!(backend = name, up, down, "tunnel closed"),
                    Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                        tracing::info!(backend = name, %error, "tunnel closed: idle");
                    }
                    Err(error) => tracing::debug!(backend = name, %error, "tunnel broke"),
                }
            }
            Err(error) => tracing::debug!(backend = name, %error, "upgrade did not complete"),
        }
    });
    let (head, _) = response.into_parts();
    Ok(Response::from_parts(head, crate::errors::empty()))
}
