//! The proxy itself: accept connections, pick a backend, forward, stream back.
//!
//! One [`Balancer`] holds the backend set, the policy and the sticky
//! settings; [`crate::pool`] keeps idle keep-alive connections to each
//! backend, so a busy balancer does not pay a TCP handshake per request.
//!
//! Per request:
//! 1. `/_lb/…` with `--admin`: the balancer's own API ([`crate::admin`]);
//!    `CONNECT` (405) and two `Host` headers (400) are refused: they are
//!    the client's mistakes, or tricks;
//! 2. choose a backend: the one the `lb_sticky` cookie names, if it can
//!    still take this shopper, else one the policy picks among those taking
//!    new shoppers (none → 503);
//! 3. keep only the path and query of the request's URI and connect to
//!    *that backend's* address (an absolute-form request line like
//!    `GET http://elsewhere/ HTTP/1.1` goes to the backend all the same:
//!    the balancer is not an open proxy);
//! 4. drop hop-by-hop headers and the sticky cookie, add `X-Forwarded-*`;
//! 5. take one of the backend's slots, waiting in its short queue if all
//!    are busy (a full queue → 503 with `Retry-After`; see
//!    [`crate::backend::Limits`]);
//! 6. send with the request body streaming through; wait for the response
//!    head at most `request_timeout` after the body's last piece went
//!    through (→ 504 when the backend was the one silent, 408 when it was
//!    waiting for the rest of the body; a long upload that keeps moving is
//!    not cut, one that trickles in below [`MIN_UPLOAD_RATE`] is: 408),
//!    and as long for each next piece of the response body (a backend
//!    frozen half-way: the response is cut);
//! 7. if nothing reached the backend (its connection failed), send the
//!    request, still whole, to one other backend. If the request went out
//!    and the exchange failed before any of the response arrived, send it
//!    elsewhere only if it is *idempotent* (GET, HEAD, PUT, DELETE,
//!    OPTIONS: sending it twice does no more than once) and its body is
//!    empty or was held; anything else gets a 502, since it may have been
//!    acted on (sending a POST again could add an item twice; the client
//!    may retry it safely with an `Idempotency-Key`). nginx's
//!    `proxy_next_upstream error` and HAProxy's `retry-on` draw the same
//!    line;
//! 8. return the response with its body streaming through, counting the
//!    request in flight until its last byte, and (when sticky) a refreshed
//!    `lb_sticky` cookie. A client that stops reading it is given up
//!    after `send_timeout` ([`crate::client`]), and with it the
//!    backend.
//!
//! With TLS on ([`crate::tls`]), each connection is first told apart (TLS,
//! or plain HTTP sent to the TLS port by mistake) and decrypted; what is
//! above happens unchanged on the decrypted stream, since the connection
//! code is generic over the stream's type. Only the facts differ:
//! `X-Forwarded-Proto: https`, a `Secure` sticky cookie, and HSTS if asked.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{
    CONTENT_LENGTH, HOST, HeaderMap, HeaderValue, SET_COOKIE, STRICT_TRANSPORT_SECURITY, UPGRADE,
};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::Config;
use crate::admin;
use crate::admin::AdminAccess;
use crate::backend::{Backend, BackendSet, BackendSetError, HealthChange, Limits, Refused};
use crate::body::{FromClient, MIN_UPLOAD_RATE, ProxyBody, Tracked, Upload, linger};
use crate::client::{ClientIo, Place};
use crate::dial::Dial;
use crate::errors::{LbError, json_response};
use crate::headers::{self, Proto};
use crate::health::{self, HealthConfig};
use crate::metrics::Counters;
use crate::policy::{Picker, Policy};
use crate::pool::{self, PoolKey, SendError, Unsent};
use crate::sticky::{self, Sticky};
use crate::supervisor::Supervisor;
use crate::tls::{Opened, Tls};
use crate::tunnel;

/// How long open client connections get to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The largest body of an idempotent request held so that the request can
/// be sent again; larger ones stream through and are not retried.
const REPLAY_BODY_LIMIT: usize = 64 * 1024;

/// A running balancer's shared state.
pub struct Balancer {
    /// Tells this balancer's per-thread clients apart from another's.
    id: usize,
    backends: BackendSet,
    picker: Picker,
    dial: Dial,
    request_timeout: Duration,
    /// How long an open tunnel may stay quiet both ways.
    tunnel_idle_timeout: Option<Duration>,
    /// How long a write to a client may wait for it to read.
    send_timeout: Option<Duration>,
    /// A place for each client connection open, `max_clients` in all
    /// ([`crate::client`]); shared by every accept loop.
    clients: Arc<Semaphore>,
    max_clients: usize,
    /// Client connections accepted and not yet ended.
    clients_open: Arc<AtomicUsize>,
    /// When a full house was last logged, in seconds since `started`.
    full_logged_at: AtomicU64,
    started: std::time::Instant,
    limits: Limits,
    /// The query parameter the hash-param policy hashes.
    hash_param: String,
    sticky: Option<Sticky>,
    health: Option<HealthConfig>,
    admin: Option<AdminAccess>,
    counters: Counters,
    supervisor: OnceLock<Arc<dyn Supervisor>>,
    /// Set when the balancer speaks HTTPS.
    tls: Option<Tls>,
    /// `Strict-Transport-Security` for responses over TLS, if asked.
    hsts: Option<HeaderValue>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("backends", &self.backends)
            .field("policy", &self.picker.policy())
            .field("sticky", &self.sticky)
            .field("admin", &self.admin.is_some())
            .field("tls", &self.tls)
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

/// An idempotent request, kept so that it can be sent again when the first
/// attempt fails before any of the response arrives.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Replay {
    fn of(parts: &Parts, body: Bytes) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body,
        }
    }

    fn request(&self) -> Request<ProxyBody> {
        let mut request = Request::new(full(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Sending it twice does no more than sending it once (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

fn full(bytes: Bytes) -> ProxyBody {
    if bytes.is_empty() {
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        Full::new(bytes).map_err(|never| match never {}).boxed()
    }
}

/// What one attempt to forward came to.
enum Attempt {
    Done(Response<ProxyBody>),
    /// Nothing reached the backend; the request, whole, can go elsewhere.
    Retry(Request<ProxyBody>, LbError),
    Failed(LbError),
}

impl Balancer {
    pub fn new(config: Config) -> Result<Arc<Self>, crate::RunError> {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        let admin = match (config.admin, config.admin_token) {
            (false, _) => None,
            (true, token) => Some(AdminAccess::new(token, config.allow_remote_backends)?),
        };
        let tls = config.tls.as_ref().map(Tls::new).transpose()?;
        let max_clients = config
            .max_clients
            .unwrap_or_else(crate::default_max_clients)
            .clamp(1, Semaphore::MAX_PERMITS);
        let hsts = config.hsts.filter(|_| tls.is_some()).and_then(|max_age| {
            HeaderValue::from_str(&format!("max-age={}", max_age.as_secs())).ok()
        });
        Ok(Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            backends: BackendSet::new(config.backends, config.limits)?,
            picker: Picker::new(config.policy),
            dial: Dial {
                timeout: config.connect_timeout,
                source: config.source_address,
            },
            request_timeout: config.request_timeout,
            tunnel_idle_timeout: config.tunnel_idle_timeout,
            send_timeout: config.send_timeout,
            clients: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            clients_open: Arc::new(AtomicUsize::new(0)),
            full_logged_at: AtomicU64::new(u64::MAX),
            started: std::time::Instant::now(),
            limits: config.limits,
            hash_param: config.hash_param,
            sticky: config.sticky,
            health: config.health,
            admin,
            counters: Counters::default(),
            supervisor: OnceLock::new(),
            tls,
            hsts,
        }))
    }

    /// The SHA-256 fingerprint of the certificate served, `AB:CD:…`, when
    /// the balancer speaks HTTPS: what a learner compares with the one
    /// their browser shows for a self-signed certificate.
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.tls.as_ref().map(Tls::fingerprint)
    }

    /// The certificate chain served, PEM, when the balancer speaks HTTPS:
    /// what a client must trust to talk to a self-signed balancer.
    pub fn tls_certificate_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(Tls::certificate_pem)
    }

    /// Where the certificate came from ("self-signed certificate for …").
    pub fn tls_description(&self) -> Option<&str> {
        self.tls.as_ref().map(Tls::description)
    }

    /// `https` when the balancer terminates TLS, else `http`: the scheme of
    /// its own URLs.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The token that admin API changes must carry (`Authorization: Bearer
    /// …`), when the admin API is on. The dashboard link carries it.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin.as_ref().map(AdminAccess::token)
    }

    pub(crate) fn admin_access(&self) -> Option<&AdminAccess> {
        self.admin.as_ref()
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

    /// Takes backend `name` out of the balancer and tells its instance it
    /// is leaving (so it closes its long-lived sockets). Requests already
    /// forwarded to it finish normally.
    pub fn remove_backend(&self, name: &str) -> Result<Arc<Backend>, BackendSetError> {
        let backend = self.backends.remove(name)?;
        tracing::info!(backend = backend.name(), "removed");
        health::say_goodbye(Arc::clone(&backend), self.dial.source);
        Ok(backend)
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
        self.health.map(|config| {
            AbortOnDrop(tokio::spawn(health::run_checks(
                Arc::clone(self),
                config,
                self.dial.source,
            )))
        })
    }

    /// [`Balancer::serve`] without the health checks: one of several accept
    /// loops sharing this balancer (see [`crate::run_threaded`]).
    pub async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        // Connections are served with upgrades (WebSockets), which
        // hyper-util's graceful helper does not take: each connection
        // watches a channel instead, and is counted until it ends.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let open = Arc::new(tokio::sync::Semaphore::new(0));
        let mut opened = 0u32;
        tokio::pin!(shutdown);
        loop {
            // A place first: with `max_clients` connections open, new ones
            // wait in the kernel's accept queue (see `crate::client`).
            let permit = match Arc::clone(&self.clients).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    self.note_full_house();
                    tokio::select! {
                        permit = Arc::clone(&self.clients).acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break, // never closed
                        },
                        () = &mut shutdown => break,
                    }
                }
            };
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
            let place = Place::new(permit, &self.clients_open);
            let balancer = Arc::clone(&self);
            let stopping = stopping.clone();
            let closed = Closed(Arc::clone(&open));
            opened = opened.saturating_add(1);
            tokio::spawn(async move {
                balancer
                    .connection(stream, client_addr, place, stopping)
                    .await;
                drop(closed);
            });
        }
        drop(listener);
        let _ = stop.send(true);
        let all_closed = open.acquire_many(opened);
        if tokio::time::timeout(SHUTDOWN_GRACE, all_closed)
            .await
            .is_err()
        {
            tracing::warn!("some client connections were still open after the grace period");
        }
        Ok(())
    }

    /// Counts a full house (every client place taken), and says so in the
    /// log at most once a minute: under a flood, once per connection would
    /// be a flood of its own.
    fn note_full_house(&self) {
        Counters::bump(&self.counters.client_limit_waits);
        let now = self.started.elapsed().as_secs();
        let last = self.full_logged_at.load(Ordering::Relaxed);
        if (last == u64::MAX || now >= last + 60)
            && self
                .full_logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_clients = self.max_clients,
                "every client place is taken: new connections wait in the accept queue (--max-clients)"
            );
        }
    }

    /// Client connections open now (WebSockets included).
    pub fn clients_open(&self) -> usize {
        self.clients_open.load(Ordering::Relaxed)
    }

    /// Client connections held open at most.
    pub fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// One client connection, from accept to close: told apart and
    /// decrypted first when TLS is on, then served.
    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        client_addr: SocketAddr,
        place: Place,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(tls) = &self.tls else {
            let io = ClientIo::new(TokioIo::new(stream), place, self.send_timeout);
            return Arc::clone(&self)
                .serve_http(io, client_addr, Proto::Http, stopping)
                .await;
        };
        let stop_asked = async {
            // The guard `wait_for` returns is not `Send`: drop it here.
            let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
        };
        let opened = tokio::select! {
            opened = tls.open(stream) => opened,
            // A handshake is no request in progress: drop it at once.
            () = stop_asked => return,
        };
        match opened {
            Ok(Opened::Tls(stream)) => {
                let io = ClientIo::new(TokioIo::new(*stream), place, self.send_timeout);
                Arc::clone(&self)
                    .serve_http(io, client_addr, Proto::Https, stopping)
                    .await;
            }
            Ok(Opened::PlainHttp(stream)) => refuse_plain_http(stream).await,
            Err(error) => {
                // Scanners, browsers' speculative connections, clients
                // that distrust the certificate: nothing to act on.
                tracing::debug!(%error, %client_addr, "TLS connection not opened");
            }
        }
    }

    /// Serves HTTP/1.1 on one connection, plain or decrypted, until it
    /// closes; on shutdown, finishes the request in progress first.
    async fn serve_http<I>(
        self: Arc<Self>,
        io: I,
        client_addr: SocketAddr,
        proto: Proto,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let balancer = self;
        let service = service_fn(move |request| {
            let balancer = Arc::clone(&balancer);
            async move {
                let mut response = balancer.handle_over(client_addr, proto, request).await;
                if let (Proto::Https, Some(hsts)) = (proto, &balancer.hsts) {
                    // The backend's own, if it sent one, is kept: it may
                    // know more (`includeSubDomains`).
                    response
                        .headers_mut()
                        .entry(STRICT_TRANSPORT_SECURITY)
                        .or_insert_with(|| hsts.clone());
                }
                Ok::<_, Infallible>(response)
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(connection);
        let stop_asked = async move {
            // The guard `wait_for` returns is not `Send`: drop it here.
            let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
        };
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = stop_asked => {
                // Finish the request in progress, then close.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%error, "client connection ended with an error");
        }
    }

    /// Serves one request that came over plain HTTP: the admin API, or
    /// forward it, or a JSON error.
    pub async fn handle(
        &self,
        client_addr: SocketAddr,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        self.handle_over(client_addr, Proto::Http, request).await
    }

    /// Serves one request that came over `proto`.
    async fn handle_over(
        &self,
        client_addr: SocketAddr,
        proto: Proto,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        if self.admin.is_some() && admin::is_admin_path(request.uri().path()) {
            return admin::handle(self, client_addr, request).await;
        }
        let mut request = request;
        let upgrade = tunnel::is_upgrade(&request).then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        // Every early answer below lets the client finish sending first.
        let refuse = |error: LbError, body: Incoming| {
            linger(body);
            error.into_response()
        };
        if parts.method == Method::CONNECT {
            return refuse(LbError::MethodNotAllowed("CONNECT".to_owned()), body);
        }
        if parts.headers.get_all(HOST).iter().count() > 1 {
            let error = LbError::BadRequest("the request has more than one Host header".to_owned());
            return refuse(error, body);
        }
        let pinned = sticky::take_cookie(&mut parts.headers);
        let key = self.hash_key(&parts.uri);
        let Some(route) = self.route(pinned.as_deref(), None, key.as_deref(), upgrade.is_some())
        else {
            Counters::bump(&self.counters.no_backend);
            return refuse(LbError::NoBackendAvailable, body);
        };
        parts.uri = match origin_form(&parts.uri) {
            Ok(uri) => uri,
            Err(error) => return refuse(error, body),
        };
        let upgrade_to = parts.headers.get(UPGRADE).cloned();
        headers::remove_hop_by_hop(&mut parts.headers);
        // Only the balancer's health checks may tell an instance it is
        // leaving: from a shopper, this header would take every instance
        // out of the live layer, one request each.
        parts.headers.remove(crate::health::STATE_HEADER);
        headers::add_forwarded(&mut parts.headers, client_addr.ip(), proto);
        if let (Some(client), Some(protocol)) = (upgrade, upgrade_to) {
            tunnel::keep_upgrade_headers(&mut parts.headers, protocol);
            let upstream = Request::from_parts(parts, full(Bytes::new()));
            return self.open_tunnel(&route, client, upstream, proto).await;
        }
        let prepared = upstream_request(parts, body, self.request_timeout).await;
        let (upstream, replay, upload) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => return error.into_response(),
        };
        let replay = replay.as_ref();

        let first = self
            .forward(&route.backend, upstream, replay, &upload)
            .await;
        let (response, backend, pin) = match first {
            Attempt::Done(response) => (response, route.backend, route.pin),
            Attempt::Failed(error) => return self.failure(&route.backend, error, &upload),
            Attempt::Retry(upstream, error) => {
                // One retry, elsewhere. The shopper is re-pinned there.
                let Some(second) = self.route(None, Some(&route.backend), key.as_deref(), false)
                else {
                    return self.failure(&route.backend, error, &upload);
                };
                Counters::bump(&self.counters.retries);
                // The shopper will not see this failure, but the operator
                // should: it is the first backend's error all the same.
                route.backend.count_error();
                if route.from_cookie {
                    Counters::bump(&self.counters.sticky_reassignments);
                }
                tracing::info!(
                    from = route.backend.name(),
                    to = second.backend.name(),
                    "retrying on another backend"
                );
                match self.forward(&second.backend, upstream, None, &upload).await {
                    Attempt::Done(response) => (response, second.backend, true),
                    Attempt::Failed(error) | Attempt::Retry(_, error) => {
                        return self.failure(&second.backend, error, &upload);
                    }
                }
            }
        };
        self.finish(response, &backend, pin, proto)
    }

    /// The value the hash-param policy hashes: the request's query
    /// parameter of that name, if the policy is hash-param and it has one.
    fn hash_key(&self, uri: &Uri) -> Option<String> {
        if self.picker.policy() != Policy::HashParam {
            return None;
        }
        uri.query()?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == self.hash_param)
            .map(|(_, value)| value.to_owned())
    }

    /// Answers an upgrade request through a tunnel to `route`'s backend.
    async fn open_tunnel(
        &self,
        route: &Route,
        client: hyper::upgrade::OnUpgrade,
        upstream: Request<ProxyBody>,
        proto: Proto,
    ) -> Response<ProxyBody> {
        let backend = &route.backend;
        let in_flight = match backend.admit(&self.limits).await {
            Ok(in_flight) => in_flight,
            Err(_) => {
                let error = LbError::BackendBusy {
                    backend: backend.name().to_owned(),
                    why: "its queue is full",
                };
                return self.failure(backend, error, &Upload::new());
            }
        };
        let opened = tunnel::open(
            backend,
            in_flight,
            client,
            upstream,
            self.dial,
            self.request_timeout,
            self.tunnel_idle_timeout,
        )
        .await;
        match opened {
            Ok(response) => self.finish(response, backend, route.pin, proto),
            Err(error) => self.failure(backend, error, &Upload::new()),
        }
    }

    /// Chooses a backend: the pinned one if it can still take the shopper,
    /// else one the policy picks (never `avoid`). An upgrade (a socket that
    /// will stay open) goes only to a backend taking new shoppers, even a
    /// pinned one: a draining backend takes no new sockets.
    fn route(
        &self,
        pinned: Option<&str>,
        avoid: Option<&Arc<Backend>>,
        key: Option<&str>,
        upgrade: bool,
    ) -> Option<Route> {
        if let (Some(sticky), Some(token)) = (&self.sticky, pinned) {
            let found = self
                .backends
                .all()
                .into_iter()
                .find(|b| b.sticky_pin(sticky).is(token));
            let usable = |b: &Backend| {
                if upgrade {
                    b.takes_new()
                } else {
                    b.takes_pinned()
                }
            };
            match found {
                Some(backend) if usable(&backend) => {
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
        let backend = self.picker.pick(&candidates, key)?;
        Some(Route {
            backend,
            pin: self.sticky.is_some(),
            from_cookie: false,
        })
    }

    /// Sends `upstream` to `backend` once; `replay` (for an idempotent
    /// request) lets it be sent again if this attempt fails before any of
    /// the response arrives.
    async fn forward(
        &self,
        backend: &Arc<Backend>,
        mut upstream: Request<ProxyBody>,
        replay: Option<&Replay>,
        upload: &Upload,
    ) -> Attempt {
        if !upstream.headers().contains_key(HOST) {
            // HTTP/1.0 clients may send no Host; HTTP/1.1 backends need one.
            if let Ok(host) = HeaderValue::from_str(backend.address()) {
                upstream.headers_mut().insert(HOST, host);
            }
        }
        let in_flight = match backend.admit(&self.limits).await {
            Ok(in_flight) => in_flight,
            Err(refused) => {
                return Attempt::Failed(LbError::BackendBusy {
                    backend: backend.name().to_owned(),
                    why: match refused {
                        Refused::QueueFull => "its queue is full",
                        Refused::QueueTimeout => "no slot came free in time",
                    },
                });
            }
        };
        let key = PoolKey {
            balancer: self.id,
            address: backend.address().to_owned(),
        };
        let sent = answered_within(
            self.request_timeout,
            upload,
            pool::send(key, self.dial, upstream),
        )
        .await;
        let bad_gateway = |reason: String| LbError::BadGateway {
            backend: backend.name().to_owned(),
            reason,
        };
        match sent {
            Ok(Ok((response, connection))) => {
                if connection.fresh {
                    backend.connected();
                }
                let (mut head, body) = response.into_parts();
                headers::remove_hop_by_hop(&mut head.headers);
                let body = Tracked::new(body, in_flight, connection, self.request_timeout);
                Attempt::Done(Response::from_parts(head, body.boxed()))
            }
            Ok(Err(SendError::NotSent { request, why })) => {
                let error = match &why {
                    Unsent::Connect(failure, detail) => {
                        if backend.connect_failed(*failure) == HealthChange::WentDown {
                            // Passive health check: out of rotation now.
                            tracing::warn!(
                                backend = backend.name(),
                                detail,
                                "backend is down: connection failed"
                            );
                        }
                        bad_gateway(why.describe())
                    }
                    Unsent::Local(error) => {
                        tracing::error!(backend = backend.name(), %error, "cannot open a connection: the balancer is out of resources");
                        LbError::Overloaded
                    }
                    Unsent::Closed(detail) => {
                        tracing::debug!(
                            backend = backend.name(),
                            detail,
                            "connection closed before sending"
                        );
                        bad_gateway(why.describe())
                    }
                };
                match error {
                    LbError::Overloaded => Attempt::Failed(error),
                    _ => Attempt::Retry(*request, error),
                }
            }
            Ok(Err(SendError::Failed(error))) => {
                tracing::debug!(backend = backend.name(), error = %error_chain(&error), "exchange failed");
                let failed = bad_gateway("the connection failed before it answered".to_owned());
                match replay {
                    // Nothing of the response arrived: an idempotent request
                    // may go elsewhere.
                    Some(replay) => Attempt::Retry(replay.request(), failed),
                    None => Attempt::Failed(failed),
                }
            }
            Err(GaveUp::Silent) => Attempt::Failed(LbError::GatewayTimeout {
                backend: backend.name().to_owned(),
                timeout_ms: self.request_timeout.as_millis(),
            }),
            Err(GaveUp::UploadStalled) => Attempt::Failed(LbError::UploadStalled {
                timeout_ms: self.request_timeout.as_millis(),
            }),
            Err(GaveUp::UploadTooSlow) => Attempt::Failed(LbError::UploadTooSlow {
                min_rate: MIN_UPLOAD_RATE,
            }),
        }
    }

    /// Counts the response (a 5xx as the backend's error too) and
    /// (re)pins the shopper, with a `Secure` cookie if they came over TLS.
    fn finish(
        &self,
        mut response: Response<ProxyBody>,
        backend: &Backend,
        pin: bool,
        proto: Proto,
    ) -> Response<ProxyBody> {
        backend.count_served(response.status().as_u16());
        if response.status().is_server_error() {
            backend.count_error();
        }
        if pin {
            if let Some(cookie) = self
                .sticky
                .as_ref()
                .and_then(|s| backend.sticky_pin(s).set_cookie(proto == Proto::Https))
            {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
        }
        response
    }

    /// Answers a failed exchange: the client's fault when its own body
    /// broke (400), else the error as it came.
    fn failure(&self, backend: &Backend, error: LbError, upload: &Upload) -> Response<ProxyBody> {
        let error = if upload.broke() {
            LbError::BadRequest(
                "the request body could not be read (a malformed chunk, or the client went away)"
                    .to_owned(),
            )
        } else {
            error
        };
        tracing::warn!(backend = backend.name(), %error, "forwarding failed");
        if error.is_backends_fault() {
            backend.count_error();
        }
        let response = error.into_response();
        backend.count_served(response.status().as_u16());
        response
    }
}

/// Waits for `exchange` (sending a request, then its answer's head) until
/// `timeout` has passed with neither the answer nor a piece of the
/// request body going through. Counting from the start instead would cut
/// a long upload that never stopped moving (a 100 MB file at 2 MB/s takes
/// 50 s); a stalled one is still cut, one timeout after its last piece.
/// nginx's `proxy_send_timeout` and `proxy_read_timeout`, and HAProxy's
/// `timeout server`, are limits on silence in the same way. Silence alone
/// is no limit on a body that trickles in, a byte just inside each
/// timeout, so one that falls below [`MIN_UPLOAD_RATE`] is cut too.
async fn answered_within<T>(
    timeout: Duration,
    upload: &Upload,
    exchange: impl Future<Output = T>,
) -> Result<T, GaveUp> {
    let mut exchange = std::pin::pin!(exchange);
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, exchange.as_mut()).await {
            Ok(answered) => return Ok(answered),
            Err(_) => {
                let silence_ends = upload.last_moved() + timeout;
                match upload.rate_allows_until(timeout) {
                    Some(rate_ends) if rate_ends <= deadline && rate_ends < silence_ends => {
                        return Err(GaveUp::UploadTooSlow);
                    }
                    _ if silence_ends <= deadline => {
                        return Err(if upload.waiting_for_client() {
                            GaveUp::UploadStalled
                        } else {
                            GaveUp::Silent
                        });
                    }
                    Some(rate_ends) => deadline = silence_ends.min(rate_ends),
                    None => deadline = silence_ends,
                }
            }
        }
    }
}

/// Why [`answered_within`] gave up.
#[derive(Debug, PartialEq, Eq)]
enum GaveUp {
    /// Neither an answer nor a piece of the body for a whole timeout,
    /// while the backend had the whole body or was not reading it: the
    /// backend's to answer for (504).
    Silent,
    /// Nothing for a whole timeout while the backend waited for the rest
    /// of the body: the client's (408, as nginx's `client_body_timeout`).
    UploadStalled,
    /// The body came in below [`MIN_UPLOAD_RATE`]: the client's (408).
    UploadTooSlow,
}

/// The request to send upstream, with what is needed to send it again (an
/// idempotent request with an empty or small body: the body is read first
/// and held) and a flag that says whether the client's body broke.
async fn upstream_request(
    parts: Parts,
    body: Incoming,
    body_deadline: Duration,
) -> Result<(Request<ProxyBody>, Option<Replay>, Arc<Upload>), LbError> {
    if body.is_end_stream() {
        let replay = is_idempotent(&parts.method).then(|| Replay::of(&parts, Bytes::new()));
        return Ok((
            Request::from_parts(parts, full(Bytes::new())),
            replay,
            Upload::new(),
        ));
    }
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let small = declared.is_some_and(|length| length <= REPLAY_BODY_LIMIT);
    if is_idempotent(&parts.method) && small {
        // Held whole before it is sent, so within a deadline (the request
        // timeout): a client that declares 64 KiB and sends less would
        // otherwise hold its task and connection for ever.
        let collected = tokio::time::timeout(
            body_deadline,
            Limited::new(body, REPLAY_BODY_LIMIT).collect(),
        )
        .await
        .map_err(|_| LbError::BodyTimeout {
            timeout_ms: body_deadline.as_millis(),
        })?;
        let bytes = collected
            .map_err(|_| {
                LbError::BadRequest(
                    "the request body could not be read (cut short, or longer than declared)"
                        .to_owned(),
                )
            })?
            .to_bytes();
        let replay = Replay::of(&parts, bytes.clone());
        return Ok((
            Request::from_parts(parts, full(bytes)),
            Some(replay),
            Upload::new(),
        ));
    }
    let (body, upload) = FromClient::new(body);
    Ok((Request::from_parts(parts, body.boxed()), None, upload))
}

/// Counts a client connection as closed when dropped, however its task
/// ends (see [`Balancer::accept`]).
struct Closed(Arc<tokio::sync::Semaphore>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

/// Answers a plain-HTTP request sent to the TLS port, in plain HTTP, then
/// closes. The request head is read first (by hyper), so the client is
/// not reset mid-send and reads the answer.
async fn refuse_plain_http(stream: TcpStream) {
    let local = stream.local_addr().ok();
    let service = service_fn(move |request: Request<Incoming>| async move {
        let host = request
            .headers()
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .map(str::to_owned)
            .or_else(|| local.map(|local| local.to_string()))
            .unwrap_or_default();
        let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let message = format!("This port speaks HTTPS; use https://{host}{path}");
        let mut response = json_response(
            hyper::StatusCode::BAD_REQUEST,
            "plain_http_to_https_port",
            &message,
        );
        response
            .headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(response)
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, served)
        .await
        .is_err()
    {
        tracing::debug!("a plain-HTTP client on the TLS port sent no full request in time");
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    pub(crate) fn new(task: tokio::task::JoinHandle<()>) -> Self {
        Self(task)
    }
}

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
