//! `GET /healthz`: is this instance alive, and how busy is it?
//!
//! The balancer's health checks call this, and a workshop host can too. It
//! answers from memory only: a health check that touched the cart store
//! would take every instance out of rotation when the store blips, turning
//! a partial outage into a total one.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
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
}

pub(super) async fn healthz<S: Stage>(State(shop): State<Arc<Shop<S>>>) -> Json<Health> {
    Json(Health {
        instance: shop.instance.id().to_owned(),
        stage: S::INFO.package.to_owned(),
        uptime_s: shop.instance.uptime_s(),
        in_flight: shop.instance.in_flight().saturating_sub(1),
    })
}
