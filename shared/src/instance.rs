//! Who one running instance is, how busy, and whether it is leaving: the
//! name every response carries in `X-Served-By`, the load `/healthz`
//! reports (requests in flight, long-lived sockets held), the word the
//! balancer sends a draining instance through its health check, and which
//! balancers it believes about the shopper's connection (`X-Forwarded-Proto`,
//! see [`crate::http`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::http::HeaderValue;
use tokio::sync::watch;

/// One instance's identity and load.
#[derive(Debug)]
pub struct Instance {
    id: String,
    header: HeaderValue,
    started: Instant,
    in_flight: AtomicUsize,
    sockets: AtomicUsize,
    leaving: watch::Sender<bool>,
    /// Peers whose `X-Forwarded-Proto` is believed; none by default.
    trusted_proxies: Vec<IpAddr>,
}

impl Instance {
    /// `id` is shown to shoppers and used as a header value, so it must be
    /// printable ASCII.
    pub fn new(id: &str) -> Result<Self, String> {
        let header = HeaderValue::from_str(id)
            .ok()
            .filter(|_| !id.is_empty() && id.chars().all(|c| c.is_ascii_graphic()))
            .ok_or_else(|| format!("instance id `{id}` must be printable ASCII without spaces"))?;
        Ok(Self {
            id: id.to_owned(),
            header,
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            sockets: AtomicUsize::new(0),
            leaving: watch::Sender::new(false),
            trusted_proxies: Vec::new(),
        })
    }

    /// Believes what these peers (the balancers in front) say about the
    /// shopper's connection. Anyone can send `X-Forwarded-Proto: https`;
    /// only a balancer that terminated TLS itself knows it is true, and
    /// only its address says the header is its own.
    pub fn with_trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpAddr>) -> Self {
        // Compared in canonical form: an IPv4 peer on a dual-stack socket
        // shows up as `::ffff:a.b.c.d`.
        self.trusted_proxies = proxies.into_iter().map(|ip| ip.to_canonical()).collect();
        self
    }

    /// Whether `peer` is one of the balancers this instance believes.
    pub fn trusts_proxy(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.contains(&peer.to_canonical())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id as a ready-made `X-Served-By` value.
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }

    pub(crate) fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts a request in flight until the returned guard is dropped (a
    /// guard, so a request cancelled mid-way still leaves the count right).
    pub(crate) fn busy(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(&self.in_flight)
    }
}

impl Instance {
    /// Long-lived connections (WebSockets) this instance holds right now.
    pub fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Acquire)
    }

    /// Counts one long-lived connection until the guard is dropped.
    pub fn hold_socket(&self) -> HeldSocket<'_> {
        self.sockets.fetch_add(1, Ordering::AcqRel);
        HeldSocket(&self.sockets)
    }

    /// Marks the instance as leaving: the balancer drains or removed it, or
    /// it is shutting down. Whoever holds long-lived connections closes
    /// them ("going away") so that their clients reconnect elsewhere.
    pub fn leave(&self) {
        self.leaving.send_replace(true);
    }

    /// Whether the instance is leaving, and a way to wait until it is.
    pub fn leaving(&self) -> watch::Receiver<bool> {
        self.leaving.subscribe()
    }
}

/// One long-lived connection held; see [`Instance::hold_socket`].
#[derive(Debug)]
pub struct HeldSocket<'a>(&'a AtomicUsize);

impl Drop for HeldSocket<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request in flight; see [`Instance::busy`].
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
