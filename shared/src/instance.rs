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
use ipnet::{IpNet, Ipv4Net};
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
    /// Peers whose `X-Forwarded-*` headers are believed: addresses or
    /// networks, in canonical form; none by default.
    trusted_proxies: Vec<IpNet>,
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
    /// shopper's connection: each an address, or a network for a fleet of
    /// balancers whose addresses change (a cloud balancer's nodes come and
    /// go within its subnets: `10.0.0.0/16`, as nginx's `set_real_ip_from`
    /// takes). Anyone can send `X-Forwarded-Proto: https` or
    /// `X-Forwarded-For`; only a balancer that saw the connection knows
    /// them, and only its address says the headers are its own.
    pub fn with_trusted_proxies<P: Into<IpNet>>(
        mut self,
        proxies: impl IntoIterator<Item = P>,
    ) -> Self {
        self.trusted_proxies = proxies.into_iter().map(|p| canonical(p.into())).collect();
        self
    }

    /// Whether `peer` is one of the balancers this instance believes.
    pub fn trusts_proxy(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies
            .iter()
            .any(|proxies| proxies.contains(&peer))
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

/// `proxies` in the form peers are compared in: an IPv4 peer on a
/// dual-stack socket shows up as `::ffff:a.b.c.d`, and is compared as
/// `a.b.c.d`, so an IPv4-mapped network is made IPv4 too.
fn canonical(proxies: IpNet) -> IpNet {
    match proxies {
        IpNet::V6(net) if net.prefix_len() >= 96 => match net.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, net.prefix_len() - 96)
                .map_or(proxies, |net| IpNet::V4(net.trunc())),
            None => proxies,
        },
        other => other.trunc(),
    }
}

/// Parses a `--trusted-proxy`: an address (`10.0.0.5`, `::1`) or a network
/// (`10.0.0.0/16`, `fd00::/8`).
pub fn parse_trusted_proxy(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither an IP address nor a network like 10.0.0.0/16"))
}

#[cfg(test)]
mod trusted_proxy_tests {
    use super::*;

    fn instance(proxies: &[&str]) -> Instance {
        let proxies: Vec<IpNet> = proxies
            .iter()
            .map(|p| parse_trusted_proxy(p).expect("a proxy"))
            .collect();
        Instance::new("i1")
            .expect("an id")
            .with_trusted_proxies(proxies)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn a_balancers_address_or_its_network_is_believed_and_no_one_else() {
        let one = instance(&["10.0.1.5"]);
        assert!(one.trusts_proxy(ip("10.0.1.5")));
        assert!(!one.trusts_proxy(ip("10.0.1.6")));
        let fleet = instance(&["10.0.0.0/16", "fd00::/8"]);
        assert!(fleet.trusts_proxy(ip("10.0.200.7")));
        assert!(fleet.trusts_proxy(ip("fd12::1")));
        assert!(!fleet.trusts_proxy(ip("10.1.0.1")));
        assert!(!fleet.trusts_proxy(ip("203.0.113.9")));
        assert!(
            !instance(&[]).trusts_proxy(ip("127.0.0.1")),
            "none by default"
        );
    }

    #[test]
    fn ipv4_peers_on_a_dual_stack_socket_are_the_same_peers() {
        let fleet = instance(&["10.0.0.0/16"]);
        assert!(fleet.trusts_proxy(ip("::ffff:10.0.3.4")));
        let mapped = instance(&["::ffff:10.0.0.0/112"]);
        assert!(mapped.trusts_proxy(ip("10.0.3.4")));
        assert!(!mapped.trusts_proxy(ip("10.1.3.4")));
    }

    #[test]
    fn what_is_neither_an_address_nor_a_network_is_refused() {
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0.0/"] {
            assert!(parse_trusted_proxy(bad).is_err(), "{bad:?}");
        }
    }
}
