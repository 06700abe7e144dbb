//! Active health checks: `GET /healthz` on every backend, every interval.
//!
//! A backend goes down after `fall` failed checks in a row and comes back
//! after `rise` good ones (HAProxy's `check inter 1s rise 2 fall 2`): one
//! slow answer does not flap a backend out of rotation, and a restarted
//! backend must prove itself twice before shoppers are sent to it.
//!
//! A failed connection while proxying takes a backend out at once (see
//! [`crate::proxy`]); only these checks bring it back. Each check opens a
//! fresh connection (no pooling): the question is whether the backend
//! accepts connections *now*, not whether an old one is still open.
//!
//! The check talks both ways, like HAProxy's `agent-check`:
//!
//! * the backend's answer may report its load (`{"in_flight": n,
//!   "sockets": m}`), which the `least-load` policy uses: a backend knows
//!   about sockets and requests that other balancers sent it;
//! * the request tells a draining backend so ([`STATE_HEADER`]:
//!   `draining`), and a removed one gets one last word (`removed`), so it
//!   can close its long-lived connections (WebSockets) with "going away"
//!   and let its pages reconnect elsewhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

use crate::backend::{Backend, HealthChange};
use crate::proxy::Balancer;

/// Health check settings.
#[derive(Clone, Copy, Debug)]
pub struct HealthConfig {
    /// Time between two checks of a backend.
    pub interval: Duration,
    /// Time a check may take before it counts as failed.
    pub timeout: Duration,
    /// Good checks in a row that bring a down backend back.
    pub rise: u32,
    /// Failed checks in a row that take a backend down.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
        }
    }
}

/// The path checked on every backend.
pub const HEALTH_PATH: &str = "/healthz";
/// The request header that tells a backend what the balancer makes of it:
/// `draining` (take no new long-lived connections, close yours) or
/// `removed` (the last word before the balancer forgets it).
pub const STATE_HEADER: &str = "x-lb-backend-state";

/// What a backend may report about its load.
#[derive(Debug, serde::Deserialize)]
struct Report {
    #[serde(default)]
    in_flight: u64,
    #[serde(default)]
    sockets: u64,
}

/// Checks every backend each interval, for as long as the balancer runs.
pub async fn run_checks(
    balancer: Arc<Balancer>,
    config: HealthConfig,
    source: Option<std::net::IpAddr>,
) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.timeout));
    connector.set_local_address(source);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut checks = JoinSet::new();
        for backend in balancer.backends().all() {
            let client = client.clone();
            checks.spawn(async move {
                let started = Instant::now();
                let ok = check(&client, &backend, config.timeout).await;
                let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
                match backend.record_check(ok, took_ms, config.rise, config.fall) {
                    HealthChange::WentUp => {
                        tracing::info!(backend = backend.name(), "backend is up")
                    }
                    HealthChange::WentDown => {
                        tracing::warn!(
                            backend = backend.name(),
                            "backend is down: health checks failing"
                        )
                    }
                    HealthChange::None => {}
                }
            });
        }
        while checks.join_next().await.is_some() {}
    }
}

async fn check(
    client: &Client<HttpConnector, Empty<Bytes>>,
    backend: &Backend,
    timeout: Duration,
) -> bool {
    let state = backend.is_draining().then_some("draining");
    let attempt = async {
        let response = client.request(health_request(backend, state)?).await.ok()?;
        if !response.status().is_success() {
            return Some(false);
        }
        // The body is small; a backend that sends more is not reporting.
        if let Ok(body) = Limited::new(response.into_body(), 4096).collect().await
            && let Ok(report) = serde_json::from_slice::<Report>(&body.to_bytes())
        {
            backend.record_load(report.in_flight.saturating_add(report.sockets));
        }
        Some(true)
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// `GET /healthz` for `backend`, telling it `state` when there is one.
fn health_request(
    backend: &Backend,
    state: Option<&'static str>,
) -> Option<hyper::Request<Empty<Bytes>>> {
    let mut parts = backend.url().clone().into_parts();
    parts.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static(HEALTH_PATH));
    let uri = Uri::from_parts(parts).ok()?;
    let mut request = hyper::Request::get(uri);
    if let Some(state) = state {
        request = request.header(STATE_HEADER, state);
    }
    request.body(Empty::new()).ok()
}

/// Tells a backend it has been removed, once, without waiting long; from
/// `source`, as the health checks (stage 7's security groups let only the
/// balancer's own address reach an instance).
pub(crate) fn say_goodbye(backend: Arc<Backend>, source: Option<std::net::IpAddr>) {
    tokio::spawn(async move {
        let mut connector = HttpConnector::new();
        connector.set_local_address(source);
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        if let Some(request) = health_request(&backend, Some("removed")) {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.request(request)).await;
        }
    });
}
