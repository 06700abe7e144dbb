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

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
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

/// Checks every backend each interval, for as long as the balancer runs.
pub async fn run_checks(balancer: Arc<Balancer>, config: HealthConfig) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.timeout));
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
    let mut parts = backend.url().clone().into_parts();
    parts.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static(HEALTH_PATH));
    let Ok(uri) = Uri::from_parts(parts) else {
        return false;
    };
    match tokio::time::timeout(timeout, client.get(uri)).await {
        Ok(Ok(response)) => response.status().is_success(),
        _ => false,
    }
}
