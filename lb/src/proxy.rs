//! The proxy itself: accept connections, pick a backend, forward, stream back.
//!
//! One [`Balancer`] holds the backend set, the policy and the sticky
//! settings. Each thread that serves requests has its own pooled HTTP client
//! (see [`Balancer::client`]); the pool keeps idle keep-alive connections to
//! each backend, so a busy balancer does not pay a TCP handshake per
//! request: what nginx's `keepalive` in an `upstream` block buys.
//!
//! Per request:
//! 1. `/_lb/…` with `--admin`: the balancer's own API ([`crate::admin`]);
//! 2. choose a backend: the one the `lb_sticky` cookie names, if it can
//!    still take this shopper, else one the policy picks among those taking
//!    new shoppers (none → 503);
//! 3. rebuild the URI from *that backend's* base URL and the request's path
//!    (an absolute-form request line like `GET http://elsewhere/ HTTP/1.1`
//!    keeps only its path: the balancer is not an open proxy);
//! 4. drop hop-by-hop headers and the sticky cookie, add `X-Forwarded-*`;
//! 5. send with the request body streaming through; wait for the response
//!    head at most `request_timeout` (→ 504);
//! 6. if the connection failed, mark the backend down and, when the request
//!    can be sent again unchanged, retry it once on another backend;
//!    otherwise answer 502;
//! 7. return the response with its body streaming through, counting the
//!    request in flight until its last byte, and (when sticky) a refreshed
//!    `lb_sticky` cookie.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::SET_COOKIE;
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::Config;
use crate::admin;
use crate::backend::{Backend, BackendSet, BackendSetError, HealthChange};
use crate::body::{ProxyBody, Replayable, Tracked};
use crate::errors::LbError;
use crate::headers;
use crate::health::{self, HealthConfig};
use crate::metrics::Counters;
use crate::policy::{Picker, Policy};
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
    /// The backend could not be reached; the request can be sent again.
    Retry(Parts, Replayable, LbError),
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

    /// This thread's pooled client to the backends.
    ///
    /// Why per thread: a pooled connection belongs to the runtime that
    /// opened it, and its task runs there. With one runtime per core (the
    /// `lb` binary, like nginx's worker processes), a per-thread pool keeps
    /// each request, its client connection and its backend connection on
    /// one thread: no cross-thread wake-ups, which were the largest cost in
    /// a profile of a shared pool. On a multi-threaded runtime it is simply
    /// a pool per worker thread.
    fn client(&self) -> Client<HttpConnector, ProxyBody> {
        type Clients = RefCell<HashMap<usize, Client<HttpConnector, ProxyBody>>>;
        thread_local! {
            static CLIENTS: Clients = RefCell::new(HashMap::new());
        }
        CLIENTS.with(|clients| {
            clients
                .borrow_mut()
                .entry(self.id)
                .or_insert_with(|| {
                    let mut connector = HttpConnector::new();
                    connector.set_connect_timeout(Some(self.connect_timeout));
                    connector.set_nodelay(true);
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(60))
                        .pool_timer(TokioTimer::new())
                        .build(connector)
                })
                .clone()
        })
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
        headers::remove_hop_by_hop(&mut parts.headers);
        headers::add_forwarded(&mut parts.headers, client_addr.ip());

        let (response, backend, pin) = match self
            .forward(&route.backend, parts, Replayable::new(body))
            .await
        {
            Attempt::Done(response) => (response, route.backend, route.pin),
            Attempt::Failed(error) => return self.failure(&route.backend, error),
            Attempt::Retry(parts, body, error) => {
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
                match self.forward(&second.backend, parts, body).await {
                    Attempt::Done(response) => (response, second.backend, true),
                    Attempt::Failed(error) | Attempt::Retry(_, _, error) => {
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

    async fn forward(&self, backend: &Arc<Backend>, mut parts: Parts, body: Replayable) -> Attempt {
        parts.uri = match upstream_uri(backend.url(), &parts.uri) {
            Ok(uri) => uri,
            Err(error) => return Attempt::Failed(error),
        };
        let upstream = Request::from_parts(parts.clone(), body.sendable());
        let in_flight = backend.start_request();
        let sent =
            tokio::time::timeout(self.request_timeout, self.client().request(upstream)).await;
        match sent {
            Ok(Ok(response)) => {
                let (mut head, body) = response.into_parts();
                headers::remove_hop_by_hop(&mut head.headers);
                Attempt::Done(Response::from_parts(
                    head,
                    Tracked::new(body.boxed(), in_flight).boxed(),
                ))
            }
            Err(_elapsed) => Attempt::Failed(LbError::GatewayTimeout {
                backend: backend.name().to_owned(),
                timeout_ms: self.request_timeout.as_millis(),
            }),
            Ok(Err(error)) => {
                let error_text = error_chain(&error);
                if error.is_connect() {
                    // Nobody answered: passive health check, down at once.
                    if backend.mark_failed() == HealthChange::WentDown {
                        tracing::warn!(backend = backend.name(), error = %error_text, "backend is down: connection failed");
                    }
                }
                let lb_error = LbError::BadGateway {
                    backend: backend.name().to_owned(),
                    reason: error_text,
                };
                // Safe to send again when nothing reached the backend (the
                // connection failed), or when the method is idempotent and
                // the body was never read (a stale pooled connection).
                let resendable = error.is_connect() || is_idempotent(&parts.method);
                match body.take_back() {
                    Some(body) if resendable => Attempt::Retry(parts, body, lb_error),
                    _ => Attempt::Failed(lb_error),
                }
            }
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

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
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
