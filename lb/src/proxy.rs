//! The proxy itself: accept connections, pick a backend, forward, stream back.
//!
//! One [`Balancer`] holds the backend set, the policy and one pooled HTTP
//! client. The client keeps idle keep-alive connections to each backend
//! (hyper-util's pool), so a busy balancer does not pay a TCP handshake per
//! request: the same thing nginx's `keepalive` in an `upstream` block buys.
//!
//! Per request:
//! 1. pick a backend among those that take traffic (none → 503);
//! 2. rebuild the URI from *that backend's* base URL and the request's path
//!    (an absolute-form request line like `GET http://elsewhere/ HTTP/1.1`
//!    keeps only its path: the balancer is not an open proxy);
//! 3. drop hop-by-hop headers, add `X-Forwarded-*`;
//! 4. send with the request body streaming through, wait for the response
//!    head at most `request_timeout` (→ 504), map a failure to 502;
//! 5. return the response with its body streaming through, counting the
//!    request in flight until its last byte.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::Config;
use crate::backend::{Backend, BackendSet, BackendSetError};
use crate::body::{ProxyBody, Tracked};
use crate::errors::LbError;
use crate::headers;
use crate::policy::Picker;

/// How long open client connections get to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running balancer's shared state.
#[derive(Debug)]
pub struct Balancer {
    backends: BackendSet,
    picker: Picker,
    client: Client<HttpConnector, ProxyBody>,
    request_timeout: Duration,
}

impl Balancer {
    pub fn new(config: Config) -> Result<Arc<Self>, BackendSetError> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Arc::new(Self {
            backends: BackendSet::new(config.backends)?,
            picker: Picker::new(config.policy),
            client,
            request_timeout: config.request_timeout,
        }))
    }

    /// The backends, for inspection and runtime changes.
    pub fn backends(&self) -> &BackendSet {
        &self.backends
    }

    /// Accepts connections on `listener` until `shutdown` completes, then
    /// lets open connections finish their current request (for a few seconds
    /// at most).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, client_addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off
                        // rather than spin, and keep serving.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let balancer = Arc::clone(&self);
            let service = service_fn(move |request| {
                let balancer = Arc::clone(&balancer);
                async move { Ok::<_, Infallible>(balancer.handle(client_addr, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "client connection ended with an error");
                }
            });
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!("some client connections were still open after the grace period");
            }
        }
        Ok(())
    }

    /// Serves one request: forward it, or answer with a JSON error.
    pub async fn handle(
        &self,
        client_addr: SocketAddr,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let Some(backend) = self.picker.pick(&self.backends.available()) else {
            return LbError::NoBackendAvailable.into_response();
        };
        match self.forward(&backend, client_addr, request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(backend = backend.name(), %error, "forwarding failed");
                error.into_response()
            }
        }
    }

    async fn forward(
        &self,
        backend: &Arc<Backend>,
        client_addr: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, LbError> {
        let (mut parts, body) = request.into_parts();
        parts.uri = upstream_uri(backend.url(), &parts.uri)?;
        headers::remove_hop_by_hop(&mut parts.headers);
        headers::add_forwarded(&mut parts.headers, client_addr.ip());
        let upstream = Request::from_parts(parts, body.boxed());

        let in_flight = backend.start_request();
        let sent = tokio::time::timeout(self.request_timeout, self.client.request(upstream)).await;
        let response = match sent {
            Err(_elapsed) => {
                return Err(LbError::GatewayTimeout {
                    backend: backend.name().to_owned(),
                    timeout_ms: self.request_timeout.as_millis(),
                });
            }
            Ok(Err(error)) => {
                return Err(LbError::BadGateway {
                    backend: backend.name().to_owned(),
                    reason: error_chain(&error),
                });
            }
            Ok(Ok(response)) => response,
        };
        backend.count_served();
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            Tracked::new(body.boxed(), in_flight).boxed(),
        ))
    }
}

/// `base` (scheme and authority of a configured backend) joined with the
/// path and query of the client's request line. Nothing else from the
/// request's URI is used.
fn upstream_uri(base: &Uri, requested: &Uri) -> Result<Uri, LbError> {
    let path_and_query = requested.path_and_query().map_or("/", |pq| pq.as_str());
    let mut parts = base.clone().into_parts();
    parts.path_and_query =
        Some(path_and_query.parse().map_err(|_| {
            LbError::BadRequest(format!("cannot forward the path `{path_and_query}`"))
        })?);
    Uri::from_parts(parts).map_err(|e| LbError::BadRequest(e.to_string()))
}

/// "connection refused" is more use to a learner than "client error
/// (Connect)": walk the source chain and join it.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_only_the_path_and_query_of_the_request() {
        let base: Uri = "http://127.0.0.1:3001/".parse().expect("uri");
        let absolute: Uri = "http://evil.example/steal?x=1".parse().expect("uri");
        assert_eq!(
            upstream_uri(&base, &absolute).expect("uri").to_string(),
            "http://127.0.0.1:3001/steal?x=1"
        );
        let origin: Uri = "/api/cart".parse().expect("uri");
        assert_eq!(
            upstream_uri(&base, &origin).expect("uri").to_string(),
            "http://127.0.0.1:3001/api/cart"
        );
    }
}
