//! `GET /healthz`: is this instance alive, and how busy is it?
//!
//! The balancer's health checks call this, and a workshop host can too. It
//! answers from memory only: a health check that touched the cart store
//! would take every instance out of rotation when the store blips, turning
//! a partial outage into a total one.
//!
//! It also carries two words between the balancer and the instance: the
//! answer reports the load (requests in flight and long-lived sockets, for
//! a balancer that picks by reported load), and a request marked
//! `X-LB-Backend-State: draining` or `removed` tells the instance it is
//! leaving, so it closes its long-lived sockets ("going away") and their
//! pages reconnect to another instance. That word is believed only from a
//! balancer the instance trusts (`--trusted-proxy`, as `X-Forwarded-Proto`
//! is): the balancers strip it from shoppers' requests, but anyone who can
//! reach the instance directly could otherwise send it, and leaving is for
//! good (every new WebSocket would be closed at once from then on).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use serde::Serialize;

use crate::stage::{Shop, Stage};

/// The `/healthz` body.
#[derive(Debug, Serialize)]
pub(super) struct Health {
    instance: String,
    stage: String,
    uptime_s: u64,
    /// Requests being served right now, not counting this one.
    in_flight: usize,
    /// Long-lived connections (WebSockets) held right now.
    sockets: usize,
}

/// What the balancer may say of this instance on a health check (the
/// balancers strip it from shoppers' requests).
const BALANCER_SAYS: &str = lb::STATE_HEADER;

pub(super) async fn healthz<S: Stage>(
    State(shop): State<Arc<Shop<S>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Json<Health> {
    let said = headers.get(BALANCER_SAYS).and_then(|v| v.to_str().ok());
    let leaving = matches!(said, Some("draining" | "removed"));
    if leaving && !shop.instance.trusts_proxy(peer.ip()) {
        // Said again on every health check: once is enough to explain why
        // a draining instance keeps its sockets.
        static TOLD: std::sync::Once = std::sync::Once::new();
        TOLD.call_once(|| {
            tracing::warn!(
                peer = %peer.ip(),
                "ignoring X-LB-Backend-State from a peer that is not a --trusted-proxy"
            );
        });
    } else if leaving && !*shop.instance.leaving().borrow() {
        tracing::info!(state = said, "the balancer says this instance is leaving");
        shop.instance.leave();
    }
    Json(Health {
        instance: shop.instance.id().to_owned(),
        stage: S::INFO.package.to_owned(),
        uptime_s: shop.instance.uptime_s(),
        in_flight: shop.instance.in_flight().saturating_sub(1),
        sockets: shop.instance.sockets(),
    })
}
