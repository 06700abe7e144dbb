//! The set of backends the balancer may forward to, and what it knows of each.
//!
//! A [`Backend`] is created only from the balancer's configuration (the command
//! line, or later the admin API): the proxy builds every upstream URI from a
//! backend's own base URI, never from anything in the request. That is what
//! "the LB forwards only to configured backends" means in code.
//!
//! Each backend carries the live numbers the policies and the (later) health
//! checks need: requests in flight, requests served, and a state. The set is a
//! `RwLock<Vec<Arc<Backend>>>`: reads (one per request) vastly outnumber
//! changes (an operator adding or removing an instance), and the lock is never
//! held across an `.await`. A lock-free structure (e.g. `arc-swap`) would also
//! do; at a few backends and a few thousand requests per second the plain lock
//! is not the bottleneck and is easier to read.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use hyper::Uri;

/// Whether a backend takes traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Takes new shoppers.
    Up,
    /// Known to be failing: takes nothing.
    Down,
    /// Finishing what it has, taking no new shoppers (scale-in).
    Draining,
}

impl BackendState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Up,
            1 => Self::Down,
            _ => Self::Draining,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Up => 0,
            Self::Down => 1,
            Self::Draining => 2,
        }
    }
}

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
pub struct Backend {
    name: String,
    url: Uri,
    state: AtomicU8,
    in_flight: AtomicUsize,
    served: AtomicU64,
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
    pub fn new(spec: BackendSpec) -> Self {
        Self {
            name: spec.name,
            url: spec.url,
            state: AtomicU8::new(BackendState::Up.as_u8()),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://host:port/`: the only place a request to this backend may go.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: BackendState) {
        self.state.store(state.as_u8(), Ordering::Release);
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

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            backend: Arc::clone(self),
        }
    }

    pub(crate) fn count_served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }
}

/// Holds one unit of a backend's in-flight count; releases it when dropped,
/// which for a proxied request is when the response body has been streamed
/// to the client (or the client went away).
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
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
}

impl BackendSet {
    pub fn new(specs: impl IntoIterator<Item = BackendSpec>) -> Result<Self, BackendSetError> {
        let set = Self::default();
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
        let backend = Arc::new(Backend::new(spec));
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

    /// A snapshot of the backends that take new requests.
    pub fn available(&self) -> Vec<Arc<Backend>> {
        self.read()
            .iter()
            .filter(|b| b.state() == BackendState::Up)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let set = BackendSet::new([
            BackendSpec::new("a", "http://127.0.0.1:1").expect("spec"),
            BackendSpec::new("b", "http://127.0.0.1:2").expect("spec"),
        ])
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
    fn in_flight_guard_counts_until_dropped() {
        let backend = Arc::new(Backend::new(
            BackendSpec::new("a", "http://127.0.0.1:1").expect("spec"),
        ));
        let first = backend.start_request();
        let second = backend.start_request();
        assert_eq!(backend.in_flight(), 2);
        drop(first);
        assert_eq!(backend.in_flight(), 1);
        drop(second);
        assert_eq!(backend.in_flight(), 0);
    }
}
