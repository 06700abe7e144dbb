//! The proxy itself: accept connections, pick a backend, forward, stream back.
//!
//! One [`Balancer`] holds the backend set, the policy and the sticky
//! settings; [`crate::pool`] keeps idle keep-alive connections to each
//! backend, so a busy balancer does not pay a TCP handshake per request.
//!
//! Per request:
//! 1. `/_lb/…` with `--admin`: the balancer's own API ([`crate::admin`]);
//! 2. choose a backend: the one the `lb_sticky` cookie names, if it can
//!    still take this shopper, else one the policy picks among those taking
//!    new shoppers (none → 503);
//! 3. keep only the path and query of the request's URI and connect to
//!    *that backend's* address (an absolute-form request line like
//!    `GET http://elsewhere/ HTTP/1.1` goes to the backend all the same:
//!    the balancer is not an open proxy);
//! 4. drop hop-by-hop headers and the sticky cookie, add `X-Forwarded-*`;
//! 5. send with the request body streaming through; wait for the response
//!    head at most `request_timeout` (→ 504);
//! 6. if nothing reached the backend (its connection failed: mark it down),
//!    send the request, still whole, to one other backend; if the exchange
//!    failed after the request went out, answer 502 (it may have been acted
//!    on: sending it again could, say, add an item twice);
//! 7. return the response with its body streaming through, counting the
//!    request in flight until its last byte, and (when sticky) a refreshed
//!    `lb_sticky` cookie.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue, SET_COOKIE};
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::Config;
use crate::admin;
use crate::backend::{Backend, BackendSet, BackendSetError, HealthChange};
use crate::body::{ProxyBody, Tracked};
use crate::errors::LbError;
use crate::headers;
use crate::health::{self, HealthConfig};
use crate::metrics::Counters;
use crate::policy::{Picker, Policy};
use crate::pool::{self, PoolKey, SendError};
use crate::sticky::{self, Sticky};
use crate::supervisor::Supervisor;

/// How long open client connections get to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running balancer's shared state.
pub struct Balancer {
    /// Tells this balancer's per-thread clients apart from another's.
    id: usize,
    backends: BackendSet,
    picker: Picker,
    connect_timeout: Duration,
    request_timeout: Duration,
    sticky: Option<Sticky>,
    health: Option<HealthConfig>,
    admin: bool,
    counters: Counters,
    supervisor: OnceLock<Arc<dyn Supervisor>>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("backends", &self.backends)
            .field("policy", &self.picker.policy())
            .field("sticky", &self.sticky)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// Where a request is going, and whether the shopper must be (re)pinned.
struct Route {
    backend: Arc<Backend>,
    /// Set `lb_sticky` on the response.
    pin: bool,
    /// The shopper's sticky cookie chose this backend.
    from_cookie: bool,
}

/// What one attempt to forward came to.
enum Attempt {
    Done(Response<ProxyBody>),
    /// Nothing reached the backend; the request, whole, can go elsewhere.
    Retry(Request<ProxyBody>, LbError),
    Failed(LbError),
}

impl Balancer {
    pub fn new(config: Config) -> Result<Arc<Self>, BackendSetError> {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        Ok(Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            backends: BackendSet::new(config.backends)?,
            picker: Picker::new(config.policy),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            sticky: config.sticky,
            health: config.health,
            admin: config.admin,
            counters: Counters::default(),
            supervisor: OnceLock::new(),
        }))
    }

    /// The backends, for inspection and runtime changes.
    pub fn backends(&self) -> &BackendSet {
        &self.backends
    }

    pub fn policy(&self) -> Policy {
        self.picker.policy()
    }

    pub fn sticky(&self) -> Option<&Sticky> {
        self.sticky.as_ref()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Lets the dashboard kill, restart and add instances. Set once.
    pub fn set_supervisor(&self, supervisor: Arc<dyn Supervisor>) {
        let _ = self.supervisor.set(supervisor);
    }

    pub fn supervisor(&self) -> Option<&Arc<dyn Supervisor>> {
        self.supervisor.get()
    }

    /// Accepts connections on `listener` until `shutdown` completes, then
    /// lets open connections finish their current request (for a few seconds
    /// at most). Runs the health checks meanwhile.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        // Aborted when `serve` returns *or* is itself dropped (aborted).
        let _checks = self.start_health_checks();
        self.accept(listener, shutdown).await
    }

    /// Starts the active health checks (if configured) on this runtime;
    /// they stop when the returned guard is dropped.
    pub fn start_health_checks(self: &Arc<Self>) -> Option<AbortOnDrop> {
        self.health
            .map(|config| AbortOnDrop(tokio::spawn(health::run_checks(Arc::clone(self), config))))
    }

    /// [`Balancer::serve`] without the health checks: one of several accept
    /// loops sharing this balancer (see [`crate::run_threaded`]).
    pub async fn accept(
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

    /// Serves one request: the admin API, or forward it, or a JSON error.
    pub async fn handle(
        &self,
        client_addr: SocketAddr,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        if self.admin && admin::is_admin_path(request.uri().path()) {
            return admin::handle(self, client_addr, request).await;
        }
        let (mut parts, body) = request.into_parts();
        let pinned = sticky::take_cookie(&mut parts.headers);
        let Some(route) = self.route(pinned.as_deref(), None) else {
            Counters::bump(&self.counters.no_backend);
            return LbError::NoBackendAvailable.into_response();
        };
        parts.uri = match origin_form(&parts.uri) {
            Ok(uri) => uri,
            Err(error) => return error.into_response(),
        };
        headers::remove_hop_by_hop(&mut parts.headers);
        headers::add_forwarded(&mut parts.headers, client_addr.ip());
        let upstream = Request::from_parts(parts, body.boxed());

        let (response, backend, pin) = match self.forward(&route.backend, upstream).await {
            Attempt::Done(response) => (response, route.backend, route.pin),
            Attempt::Failed(error) => return self.failure(&route.backend, error),
            Attempt::Retry(upstream, error) => {
                // One retry, elsewhere. The shopper is re-pinned there.
                let Some(second) = self.route(None, Some(&route.backend)) else {
                    return self.failure(&route.backend, error);
                };
                Counters::bump(&self.counters.retries);
                if route.from_cookie {
                    Counters::bump(&self.counters.sticky_reassignments);
                }
                tracing::info!(
                    from = route.backend.name(),
                    to = second.backend.name(),
                    "retrying on another backend"
                );
                match self.forward(&second.backend, upstream).await {
                    Attempt::Done(response) => (response, second.backend, true),
                    Attempt::Failed(error) | Attempt::Retry(_, error) => {
                        return self.failure(&second.backend, error);
                    }
                }
            }
        };
        self.finish(response, &backend, pin)
    }

    /// Chooses a backend: the pinned one if it can still take the shopper,
    /// else one the policy picks (never `avoid`).
    fn route(&self, pinned: Option<&str>, avoid: Option<&Arc<Backend>>) -> Option<Route> {
        if let (Some(sticky), Some(token)) = (&self.sticky, pinned) {
            let found = self
                .backends
                .all()
                .into_iter()
                .find(|b| sticky.token_for(b.name()) == token);
            match found {
                Some(backend) if backend.takes_pinned() => {
                    return Some(Route {
                        backend,
                        pin: true,
                        from_cookie: true,
                    });
                }
                _ => {
                    // Unknown (forged, or removed) or down: choose anew.
                    Counters::bump(&self.counters.sticky_reassignments);
                }
            }
        }
        let mut candidates = self.backends.available();
        if let Some(avoid) = avoid {
            candidates.retain(|b| !Arc::ptr_eq(b, avoid));
        }
        let backend = self.picker.pick(&candidates)?;
        Some(Route {
            backend,
            pin: self.sticky.is_some(),
            from_cookie: false,
        })
    }

    async fn forward(&self, backend: &Arc<Backend>, mut upstream: Request<ProxyBody>) -> Attempt {
        if !upstream.headers().contains_key(HOST) {
            // HTTP/1.0 clients may send no Host; HTTP/1.1 backends need one.
            if let Ok(host) = HeaderValue::from_str(backend.address()) {
                upstream.headers_mut().insert(HOST, host);
            }
        }
        let key = PoolKey {
            balancer: self.id,
            address: backend.address().to_owned(),
        };
        let in_flight = backend.start_request();
        let sent = tokio::time::timeout(
            self.request_timeout,
            pool::send(key, self.connect_timeout, upstream),
        )
        .await;
        match sent {
            Ok(Ok((response, connection))) => {
                let (mut head, body) = response.into_parts();
                headers::remove_hop_by_hop(&mut head.headers);
                let body = Tracked::new(body.boxed(), in_flight, connection);
                Attempt::Done(Response::from_parts(head, body.boxed()))
            }
            Ok(Err(SendError::NotSent {
                request,
                reason,
                connect_failed,
            })) => {
                if connect_failed && backend.mark_failed() == HealthChange::WentDown {
                    // Nobody answered: passive health check, down at once.
                    tracing::warn!(backend = backend.name(), %reason, "backend is down: connection failed");
                }
                let error = LbError::BadGateway {
                    backend: backend.name().to_owned(),
                    reason,
                };
                Attempt::Retry(*request, error)
            }
            Ok(Err(SendError::Failed(error))) => Attempt::Failed(LbError::BadGateway {
                backend: backend.name().to_owned(),
                reason: error_chain(&error),
            }),
            Err(_elapsed) => Attempt::Failed(LbError::GatewayTimeout {
                backend: backend.name().to_owned(),
                timeout_ms: self.request_timeout.as_millis(),
            }),
        }
    }

    /// Counts the response and (re)pins the shopper.
    fn finish(
        &self,
        mut response: Response<ProxyBody>,
        backend: &Backend,
        pin: bool,
    ) -> Response<ProxyBody> {
        backend.count_served(response.status().as_u16());
        if pin {
            if let Some(cookie) = self
                .sticky
                .as_ref()
                .and_then(|s| s.set_cookie(backend.name()))
            {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
        }
        response
    }

    fn failure(&self, backend: &Backend, error: LbError) -> Response<ProxyBody> {
        tracing::warn!(backend = backend.name(), %error, "forwarding failed");
        let response = error.into_response();
        backend.count_served(response.status().as_u16());
        response
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The path and query of the client's request line, as an origin-form URI
/// (`/api/cart?x=1`). Nothing else from the request's URI is used: the
/// connection goes to the chosen backend's address, whatever the client
/// wrote.
fn origin_form(requested: &Uri) -> Result<Uri, LbError> {
    let path_and_query = requested.path_and_query().map_or("/", |pq| pq.as_str());
    path_and_query
        .parse()
        .map_err(|_| LbError::BadRequest(format!("cannot forward the path `{path_and_query}`")))
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
    fn origin_form_keeps_only_the_path_and_query_of_the_request() {
        let absolute: Uri = "http://evil.example/steal?x=1".parse().expect("uri");
        assert_eq!(
            origin_form(&absolute).expect("uri").to_string(),
            "/steal?x=1"
        );
        let origin: Uri = "/api/cart".parse().expect("uri");
        assert_eq!(origin_form(&origin).expect("uri").to_string(), "/api/cart");
    }
}
