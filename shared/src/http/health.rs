//! `GET /healthz`: is this instance alive, and how busy is it?
//!
//! The balancer's health checks call this, and a workshop host can too. It
//! answers from memory only: a health check that touched the cart store
//! would take every instance out of rotation when the store blips, turning
//! a partial outage into a total one.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::http::Shop;
use crate::store::CartStore;

/// The `/healthz` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub instance: String,
    pub stage: String,
    pub uptime_s: u64,
    /// Requests being served right now, not counting this one.
    pub in_flight: usize,
}

pub async fn healthz<S: CartStore>(State(shop): State<Arc<Shop<S>>>) -> Json<Health> {
    Json(Health {
        instance: shop.instance.id().to_owned(),
        stage: shop.stage.package.to_owned(),
        uptime_s: shop.instance.uptime_s(),
        in_flight: shop.instance.in_flight().saturating_sub(1),
    })
}
