//! The set of backends the balancer may forward to, and what it knows of each.
//!
//! A [`Backend`] is created only from the balancer's configuration (the command
//! line, or later the admin API): the proxy builds every upstream URI from a
//! backend's own base URI, never from anything in the request. That is what
//! "the LB forwards only to configured backends" means in code.
//!
//! Each backend carries the live numbers the policies, the health checks and
//! the dashboard need: requests in flight, requests served, errors, and a
//! state. It also bounds
//! its own load ([`Limits`]): at most `max_conns` requests at once, a short
//! queue behind them, and a 503 with `Retry-After` past that, so a burst of
//! clients cannot pile thousands of connections onto one instance (whose
//! accept queue would overflow, whose health would then be misjudged, and
//! whose shoppers would all get errors). HAProxy's `maxconn` and queue, and
//! nginx's `max_conns`, do the same. The set is a
//! `RwLock<Vec<Arc<Backend>>>`: reads (one per request) vastly outnumber
//! changes (an operator adding or removing an instance), and the lock is never
//! held across an `.await`. A lock-free structure (e.g. `arc-swap`) would also
//! do; at a few backends and a few thousand requests per second the plain lock
//! is not the bottleneck and is easier to read.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::Duration;

use hyper::Uri;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::sticky::{Pin, Sticky};

/// Connection timeouts in a row that take a backend out. A refused
/// connection takes it out at once (nothing listens there); a timeout may
/// be a busy backend, or a busy balancer, and one alone proves nothing.
const TIMEOUTS_BEFORE_DOWN: u32 = 3;

/// How much load one backend is given at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight to one backend at most (HAProxy's `maxconn`,
    /// nginx's `max_conns`).
    pub max_conns: usize,
    /// Requests that may wait for a free slot on one backend; more are
    /// answered 503 with `Retry-After` at once.
    pub queue: usize,
    /// How long a request waits in that queue before it is answered 503.
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_conns: 100,
            queue: 1000,
            queue_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a backend did not take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is busy and the queue is full.
    QueueFull,
    /// The request waited in the queue for the whole queue timeout.
    QueueTimeout,
}

/// How a new connection to a backend failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Refused or reset: nothing is listening there.
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
}

/// What the balancer does with a backend, as the admin API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Healthy and taking new shoppers.
    Up,
    /// Failing its health checks (or just refused a connection): takes nothing.
    Down,
    /// Healthy, finishing with the shoppers pinned to it, taking no new ones
    /// (scale-in; an ALB's "deregistration delay", HAProxy's `drain`).
    Draining,
}

/// The status classes counted per backend: 1xx … 5xx.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A backend as given on the command line: `NAME=http://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub name: String,
    /// Scheme and authority only, e.g. `http://127.0.0.1:3001`.
    pub url: Uri,
}

/// Why a backend specification was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendSpecError {
    #[error("expected NAME=http://HOST:PORT, got `{0}`")]
    Shape(String),
    #[error("backend name `{0}` must be 1-64 characters of letters, digits, `-` or `_`")]
    Name(String),
    #[error("backend URL `{0}` is not a valid absolute URL")]
    Url(String),
    #[error("backend URL `{0}` must use http:// (this balancer does not speak TLS to backends)")]
    Scheme(String),
    #[error("backend URL `{0}` must not have a path or query: the request's own path is kept")]
    Path(String),
    #[error(
        "backend URL `{0}` must be on this machine (127.0.0.1, ::1): a backend elsewhere would receive the shoppers' cookies (start lb with --allow-remote-backends to allow it)"
    )]
    NotLoopback(String),
}

impl BackendSpec {
    /// Checks a name and URL as the admin API and the command line both need.
    pub fn new(name: &str, url: &str) -> Result<Self, BackendSpecError> {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(BackendSpecError::Name(name.to_owned()));
        }
        let uri: Uri = url
            .parse()
            .map_err(|_| BackendSpecError::Url(url.to_owned()))?;
        if uri.scheme_str() != Some("http") {
            return Err(BackendSpecError::Scheme(url.to_owned()));
        }
        if uri.authority().is_none() {
            return Err(BackendSpecError::Url(url.to_owned()));
        }
        if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
            return Err(BackendSpecError::Path(url.to_owned()));
        }
        let base = Uri::builder()
            .scheme("http")
            .authority(
                uri.authority()
                    .cloned()
                    .ok_or_else(|| BackendSpecError::Url(url.to_owned()))?,
            )
            .path_and_query("/")
            .build()
            .map_err(|_| BackendSpecError::Url(url.to_owned()))?;
        Ok(Self {
            name: name.to_owned(),
            url: base,
        })
    }
}

impl BackendSpec {
    /// Whether the backend's host is a loopback address (`127.0.0.0/8`,
    /// `::1`, or `::ffff:127.x.y.z`), written as an IP literal. A name such
    /// as `localhost` does not count: what a name resolves to can change
    /// after it was checked.
    pub fn is_loopback(&self) -> bool {
        self.url
            .host()
            .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|host| host.parse::<IpAddr>().ok())
            .is_some_and(|ip| ip.to_canonical().is_loopback())
    }
}

impl FromStr for BackendSpec {
    type Err = BackendSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, url) = s
            .split_once('=')
            .ok_or_else(|| BackendSpecError::Shape(s.to_owned()))?;
        Self::new(name.trim(), url.trim())
    }
}

/// One configured backend and its live counters.
///
/// Two independent facts make its [`BackendState`]: *health* (set by the
/// health checks and by failed connections) and *draining* (set by an
/// operator). Keeping them apart means a draining backend that blips and
/// recovers is still draining afterwards.
pub struct Backend {
    name: String,
    url: Uri,
    /// `host:port`, what a connection is opened to.
    address: String,
    healthy: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    served: AtomicU64,
    by_class: [AtomicU64; 5],
    /// Attempts that failed on this backend's account (see [`Backend::errors`]).
    errors: AtomicU64,
    health: Mutex<HealthRun>,
    health_check_failures: AtomicU64,
    /// Duration of the last health check in ms; `u64::MAX` = none yet.
    last_check_ms: AtomicU64,
    /// One permit per request this backend may be given at once.
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot.
    queued: AtomicUsize,
    /// Requests refused because the queue was full or timed out.
    refused: AtomicU64,
    /// Connection timeouts in a row while proxying.
    timeouts: AtomicU32,
    /// Open tunnels (WebSockets) through this backend.
    pub(crate) tunnels: AtomicUsize,
    /// The load the backend last reported on `/healthz` (requests in
    /// flight plus open sockets); `u64::MAX` before the first report.
    reported_load: AtomicU64,
    /// The sticky cookie that pins shoppers here, made on first use.
    sticky_pin: OnceLock<Pin>,
}

/// Consecutive outcomes, for the rise/fall thresholds.
#[derive(Debug, Default)]
struct HealthRun {
    successes: u32,
    failures: u32,
}

/// What one health check outcome changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthChange {
    None,
    WentUp,
    WentDown,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("state", &self.state())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Backend {
    pub fn new(spec: BackendSpec, limits: Limits) -> Self {
        let address = spec.url.authority().map_or_else(String::new, |a| {
            format!("{}:{}", a.host(), a.port_u16().unwrap_or(80))
        });
        Self {
            name: spec.name,
            url: spec.url,
            address,
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            by_class: Default::default(),
            errors: AtomicU64::new(0),
            health: Mutex::new(HealthRun::default()),
            health_check_failures: AtomicU64::new(0),
            last_check_ms: AtomicU64::new(u64::MAX),
            slots: Arc::new(Semaphore::new(limits.max_conns.max(1))),
            queued: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            timeouts: AtomicU32::new(0),
            tunnels: AtomicUsize::new(0),
            reported_load: AtomicU64::new(u64::MAX),
            sticky_pin: OnceLock::new(),
        }
    }

    /// The sticky cookie that pins shoppers to this backend under `sticky`
    /// (one balancer, one key: made on the first request that needs it,
    /// then only read).
    pub(crate) fn sticky_pin(&self, sticky: &Sticky) -> &Pin {
        self.sticky_pin.get_or_init(|| sticky.pin(&self.name))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://host:port/`: the only place a request to this backend may go.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// `host:port` of the backend (the port made explicit).
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn state(&self) -> BackendState {
        if !self.is_healthy() {
            BackendState::Down
        } else if self.draining.load(Ordering::Acquire) {
            BackendState::Draining
        } else {
            BackendState::Up
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether this backend may be given a shopper it has not seen.
    pub(crate) fn takes_new(&self) -> bool {
        self.state() == BackendState::Up
    }

    /// Whether this backend may keep serving shoppers pinned to it.
    pub(crate) fn takes_pinned(&self) -> bool {
        self.is_healthy()
    }

    /// Stops giving this backend new shoppers; its pinned ones stay.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Forces the health state, as a test or an operator would.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
        let mut run = self.health.lock().unwrap_or_else(|p| p.into_inner());
        *run = HealthRun::default();
    }

    /// A new connection to this backend failed while proxying (passive
    /// health checking). Refused: out of rotation at once, nothing listens
    /// there. Timed out: out after [`TIMEOUTS_BEFORE_DOWN`] in a row, since
    /// one timeout may only mean a busy moment. The active checks bring it
    /// back after `rise` good checks.
    pub(crate) fn connect_failed(&self, failure: ConnectFailure) -> HealthChange {
        if failure == ConnectFailure::TimedOut {
            let in_a_row = self.timeouts.fetch_add(1, Ordering::AcqRel) + 1;
            if in_a_row < TIMEOUTS_BEFORE_DOWN {
                return HealthChange::None;
            }
        }
        self.timeouts.store(0, Ordering::Release);
        let mut run = self.health.lock().unwrap_or_else(|p| p.into_inner());
        run.successes = 0;
        if self.healthy.swap(false, Ordering::AcqRel) {
            HealthChange::WentDown
        } else {
            HealthChange::None
        }
    }

    /// A new connection to this backend succeeded: the timeouts in a row
    /// start again from zero.
    pub(crate) fn connected(&self) {
        if self.timeouts.load(Ordering::Acquire) != 0 {
            self.timeouts.store(0, Ordering::Release);
        }
    }

    /// Records one active health check and applies the rise/fall thresholds.
    pub(crate) fn record_check(
        &self,
        ok: bool,
        took_ms: u64,
        rise: u32,
        fall: u32,
    ) -> HealthChange {
        self.last_check_ms.store(took_ms, Ordering::Relaxed);
        let mut run = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            run.successes = run.successes.saturating_add(1);
            run.failures = 0;
            if !self.is_healthy() && run.successes >= rise {
                self.healthy.store(true, Ordering::Release);
                return HealthChange::WentUp;
            }
        } else {
            self.health_check_failures.fetch_add(1, Ordering::Relaxed);
            run.failures = run.failures.saturating_add(1);
            run.successes = 0;
            if self.is_healthy() && run.failures >= fall {
                self.healthy.store(false, Ordering::Release);
                return HealthChange::WentDown;
            }
        }
        HealthChange::None
    }

    /// Requests forwarded to this backend whose response has not finished
    /// streaming back yet: the least-connections signal.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Responses this backend has produced, whatever their status.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Attempts that failed on this backend's account: its own 5xx
    /// answers, and the 502/503/504 the balancer answered because the
    /// backend could not be reached, was too slow or was full, including
    /// attempts then retried on another backend (which the shopper never
    /// saw, and which [`served`](Self::served) does not count). So errors
    /// can exceed served; a retried attempt still tells the operator that
    /// this instance is in trouble. Not counted: the balancer's own
    /// shortage (`balancer_overloaded`) and a client's broken body (400).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Responses by status class, in the order of [`STATUS_CLASSES`].
    pub(crate) fn served_by_class(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed))
    }

    pub(crate) fn health_check_failures(&self) -> u64 {
        self.health_check_failures.load(Ordering::Relaxed)
    }

    /// How long the last health check took, if there was one.
    pub fn last_check_ms(&self) -> Option<u64> {
        match self.last_check_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(ms),
        }
    }

    /// Open tunnels (WebSockets) through this backend.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::Acquire)
    }

    /// The load the backend reported at its last health check.
    pub fn reported_load(&self) -> Option<u64> {
        match self.reported_load.load(Ordering::Relaxed) {
            u64::MAX => None,
            load => Some(load),
        }
    }

    pub(crate) fn record_load(&self, load: u64) {
        self.reported_load
            .store(load.min(u64::MAX - 1), Ordering::Relaxed);
    }

    /// Whether this backend is draining (an operator's decision).
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Requests waiting for a free slot on this backend.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Requests refused because this backend's queue was full or too slow.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Admits a request: takes one of the backend's slots, waiting in its
    /// queue if every slot is busy (within `limits`). The request counts as
    /// in flight until the returned guard is dropped, which frees the slot.
    pub(crate) async fn admit(self: &Arc<Self>, limits: &Limits) -> Result<InFlight, Refused> {
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(TryAcquireError::Closed) => return Err(self.refuse(Refused::QueueFull)),
            Err(TryAcquireError::NoPermits) => {
                let Some(_waiting) = Waiting::join(&self.queued, limits.queue) else {
                    return Err(self.refuse(Refused::QueueFull));
                };
                let acquired = Arc::clone(&self.slots).acquire_owned();
                match tokio::time::timeout(limits.queue_timeout, acquired).await {
                    Ok(Ok(slot)) => slot,
                    Ok(Err(_closed)) => return Err(self.refuse(Refused::QueueFull)),
                    Err(_elapsed) => return Err(self.refuse(Refused::QueueTimeout)),
                }
            }
        };
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(InFlight {
            backend: Arc::clone(self),
            slot: Some(slot),
        })
    }

    fn refuse(&self, why: Refused) -> Refused {
        self.refused.fetch_add(1, Ordering::Relaxed);
        why
    }

    /// Counts a response (or a balancer error on this backend's behalf).
    pub(crate) fn count_served(&self, status: u16) {
        self.served.fetch_add(1, Ordering::Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed attempt (see [`Backend::errors`]).
    pub(crate) fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// One place in a backend's queue, left when dropped (also when the
/// waiting request is cancelled: its client went away).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// Joins the queue, unless `limit` requests wait already.
    fn join(queued: &'a AtomicUsize, limit: usize) -> Option<Self> {
        let joined = queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        joined.then(|| Self(queued))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds one of a backend's slots and one unit of its in-flight count;
/// releases both when dropped, which for a proxied request is when the
/// response body has been streamed to the client (or the client went away).
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    slot: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    /// Gives the request slot back but keeps counting in flight: what an
    /// open WebSocket does. `max_conns` limits requests being answered,
    /// which an idle socket is not; `least-conn` still sees the socket.
    /// (HAProxy counts a tunnel against `maxconn`, so there `maxconn` must
    /// be sized for the sockets too.)
    pub(crate) fn release_slot(&mut self) {
        self.slot = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why the backend set refused a change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendSetError {
    #[error("a backend named `{0}` already exists")]
    DuplicateName(String),
    #[error("no backend named `{0}`")]
    UnknownName(String),
}

/// The backends the balancer knows, in configuration order.
#[derive(Debug, Default)]
pub struct BackendSet {
    backends: RwLock<Vec<Arc<Backend>>>,
    limits: Limits,
}

impl BackendSet {
    pub fn new(
        specs: impl IntoIterator<Item = BackendSpec>,
        limits: Limits,
    ) -> Result<Self, BackendSetError> {
        let set = Self {
            backends: RwLock::default(),
            limits,
        };
        for spec in specs {
            set.add(spec)?;
        }
        Ok(set)
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<Arc<Backend>>> {
        // A panic while holding this lock cannot leave the Vec half-written
        // (every write is a single push or retain), so a poisoned lock is
        // still safe to read.
        self.backends.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a backend; names are unique.
    pub fn add(&self, spec: BackendSpec) -> Result<Arc<Backend>, BackendSetError> {
        let mut backends = self.backends.write().unwrap_or_else(|p| p.into_inner());
        if backends.iter().any(|b| b.name == spec.name) {
            return Err(BackendSetError::DuplicateName(spec.name));
        }
        let backend = Arc::new(Backend::new(spec, self.limits));
        backends.push(Arc::clone(&backend));
        Ok(backend)
    }

    /// Removes a backend. Requests already forwarded to it finish normally.
    pub fn remove(&self, name: &str) -> Result<Arc<Backend>, BackendSetError> {
        let mut backends = self.backends.write().unwrap_or_else(|p| p.into_inner());
        let index = backends
            .iter()
            .position(|b| b.name == name)
            .ok_or_else(|| BackendSetError::UnknownName(name.to_owned()))?;
        Ok(backends.remove(index))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Backend>> {
        self.read().iter().find(|b| b.name == name).cloned()
    }

    /// A snapshot of every backend, whatever its state.
    pub fn all(&self) -> Vec<Arc<Backend>> {
        self.read().clone()
    }

    /// A snapshot of the backends that take new shoppers.
    pub(crate) fn available(&self) -> Vec<Arc<Backend>> {
        self.read()
            .iter()
            .filter(|b| b.takes_new())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_backend(limits: Limits) -> Backend {
        Backend::new(
            BackendSpec::new("a", "http://127.0.0.1:1").expect("spec"),
            limits,
        )
    }

    #[test]
    fn spec_parses_name_and_keeps_only_scheme_and_authority() {
        let spec: BackendSpec = "i1=http://127.0.0.1:3001".parse().expect("valid spec");
        assert_eq!(spec.name, "i1");
        assert_eq!(spec.url.to_string(), "http://127.0.0.1:3001/");
    }

    #[test]
    fn spec_refuses_tls_paths_and_odd_names() {
        assert!(matches!(
            "a=https://x:1".parse::<BackendSpec>(),
            Err(BackendSpecError::Scheme(_))
        ));
        assert!(matches!(
            "a=http://x:1/api".parse::<BackendSpec>(),
            Err(BackendSpecError::Path(_))
        ));
        assert!(matches!(
            "a b=http://x:1".parse::<BackendSpec>(),
            Err(BackendSpecError::Name(_))
        ));
        assert!(matches!(
            "http://x:1".parse::<BackendSpec>(),
            Err(BackendSpecError::Shape(_))
        ));
    }

    #[test]
    fn names_are_unique_and_removal_leaves_the_others() {
        let set = BackendSet::new(
            [
                BackendSpec::new("a", "http://127.0.0.1:1").expect("spec"),
                BackendSpec::new("b", "http://127.0.0.1:2").expect("spec"),
            ],
            Limits::default(),
        )
        .expect("set");
        assert_eq!(
            set.add(BackendSpec::new("a", "http://127.0.0.1:3").expect("spec"))
                .map(|_| ()),
            Err(BackendSetError::DuplicateName("a".into()))
        );
        set.remove("a").expect("remove a");
        let names: Vec<_> = set.all().iter().map(|b| b.name().to_owned()).collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn health_follows_rise_and_fall_thresholds() {
        let backend = test_backend(Limits::default());
        assert_eq!(
            backend.record_check(false, 1, 2, 2),
            HealthChange::None,
            "one failure is not enough"
        );
        assert_eq!(backend.record_check(false, 1, 2, 2), HealthChange::WentDown);
        assert_eq!(backend.state(), BackendState::Down);
        assert_eq!(
            backend.record_check(true, 1, 2, 2),
            HealthChange::None,
            "one success is not enough"
        );
        assert_eq!(backend.record_check(true, 1, 2, 2), HealthChange::WentUp);
        assert_eq!(backend.health_check_failures(), 2);
        assert_eq!(
            backend.connect_failed(ConnectFailure::Refused),
            HealthChange::WentDown,
            "a refused connection is down at once"
        );
    }

    #[test]
    fn connect_timeouts_take_a_backend_down_only_in_a_row() {
        let backend = test_backend(Limits::default());
        for _ in 1..TIMEOUTS_BEFORE_DOWN {
            assert_eq!(
                backend.connect_failed(ConnectFailure::TimedOut),
                HealthChange::None
            );
        }
        backend.connected();
        assert_eq!(
            backend.connect_failed(ConnectFailure::TimedOut),
            HealthChange::None,
            "a connection in between starts the count again"
        );
        for _ in 1..TIMEOUTS_BEFORE_DOWN {
            backend.connect_failed(ConnectFailure::TimedOut);
        }
        assert_eq!(backend.state(), BackendState::Down);
    }

    #[test]
    fn only_loopback_ip_literals_count_as_this_machine() {
        let spec = |url: &str| BackendSpec::new("a", url).expect("spec");
        assert!(spec("http://127.0.0.1:1").is_loopback());
        assert!(spec("http://127.9.9.9:1").is_loopback());
        assert!(spec("http://[::1]:1").is_loopback());
        assert!(spec("http://[::ffff:127.0.0.1]:1").is_loopback());
        assert!(!spec("http://10.0.0.1:1").is_loopback());
        assert!(!spec("http://localhost:1").is_loopback());
        assert!(!spec("http://evil.example:1").is_loopback());
    }

    #[tokio::test]
    async fn a_full_backend_queues_then_refuses() {
        let limits = Limits {
            max_conns: 1,
            queue: 1,
            queue_timeout: Duration::from_millis(50),
        };
        let backend = Arc::new(test_backend(limits));
        let busy = backend.admit(&limits).await.expect("the one slot");
        assert_eq!(
            backend.admit(&limits).await.map(drop),
            Err(Refused::QueueTimeout),
            "waited its turn, then gave up"
        );
        let (waiting, _) = tokio::join!(backend.admit(&limits), async {
            tokio::task::yield_now().await;
            assert_eq!(backend.queued(), 1);
            assert_eq!(
                backend.admit(&limits).await.map(drop),
                Err(Refused::QueueFull)
            );
            drop(busy);
        });
        assert!(waiting.is_ok(), "the queued request got the freed slot");
        assert_eq!(backend.queued(), 0);
        assert_eq!(backend.refused(), 2);
    }

    #[test]
    fn draining_keeps_pinned_shoppers_only_while_healthy() {
        let backend = test_backend(Limits::default());
        backend.drain();
        assert_eq!(backend.state(), BackendState::Draining);
        assert!(!backend.takes_new() && backend.takes_pinned());
        backend.connect_failed(ConnectFailure::Refused);
        assert_eq!(backend.state(), BackendState::Down);
        assert!(!backend.takes_pinned());
    }

    #[tokio::test]
    async fn in_flight_guard_counts_until_dropped() {
        let limits = Limits::default();
        let backend = Arc::new(test_backend(limits));
        let first = backend.admit(&limits).await.expect("admitted");
        let second = backend.admit(&limits).await.expect("admitted");
        assert_eq!(backend.in_flight(), 2);
        drop(first);
        assert_eq!(backend.in_flight(), 1);
        drop(second);
        assert_eq!(backend.in_flight(), 0);
    }
}
