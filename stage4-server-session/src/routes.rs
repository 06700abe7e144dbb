//! The routes only a session store has: `DELETE /api/session`, which ends
//! the session, and (stage 4's own) `GET /metrics`, what the store reports.
//!
//! Any stage whose carts are sessions serves the first (stage 5 too, as its
//! "log out").

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::delete;
use cookie::{Cookie, CookieJar};
use shop::cookies::request_jar;
use shop::http::api::set_cookies;
use shop::{ApiError, CartStore, Shop, Stage};

use crate::Stage4;
use crate::stores::{RedisSessions, Store};

/// A cart store whose carts are sessions, which can be ended.
pub trait EndsSessions: CartStore {
    /// Ends the session the request names; returns the cookie that removes
    /// it from the browser.
    fn end(
        &self,
        cookies: &CookieJar,
    ) -> impl Future<Output = Result<Cookie<'static>, ApiError>> + Send;
}

impl EndsSessions for RedisSessions {
    async fn end(&self, cookies: &CookieJar) -> Result<Cookie<'static>, ApiError> {
        RedisSessions::end(self, cookies).await
    }
}

impl EndsSessions for Store {
    async fn end(&self, cookies: &CookieJar) -> Result<Cookie<'static>, ApiError> {
        Store::end(self, cookies).await
    }
}

/// The session routes, for a stage that keeps its carts in sessions.
pub fn session_routes<S: Stage<Carts: EndsSessions>>() -> Router<Arc<Shop<S>>> {
    Router::new().route("/api/session", delete(end_session::<S>))
}

/// `DELETE /api/session`: 204, and the `sid` cookie removed.
async fn end_session<S: Stage<Carts: EndsSessions>>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let removal = shop.carts.end(&request_jar(&headers)).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookies(response.headers_mut(), [removal]);
    Ok(response)
}

/// `GET /metrics` (stage 4): which store holds the sessions, and what it
/// says about itself, in Prometheus' text format. For Memcached, the
/// evictions above all: carts dropped to make room, without a word.
pub(crate) async fn metrics(State(shop): State<Arc<Shop<Stage4>>>) -> Result<Response, ApiError> {
    let (kind, stats) = shop.carts.stats().await?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP session_store_info The store this instance keeps sessions in.\n\
         # TYPE session_store_info gauge\n\
         session_store_info{{store=\"{}\"}} 1",
        kind.name()
    );
    let _ = writeln!(
        text,
        "# HELP session_store_round_trips_total Round trips to the session store and its cache.\n\
         # TYPE session_store_round_trips_total counter\n\
         session_store_round_trips_total {}",
        crate::sessions::round_trips()
    );
    let counters = [
        (
            "evictions",
            "memcached_evictions_total",
            "counter",
            "Items Memcached dropped to make room (carts lost without a word).",
        ),
        (
            "curr_items",
            "memcached_items",
            "gauge",
            "Items Memcached holds now.",
        ),
        (
            "bytes",
            "memcached_bytes",
            "gauge",
            "Bytes of items Memcached holds now.",
        ),
        (
            "limit_maxbytes",
            "memcached_limit_bytes",
            "gauge",
            "The most bytes Memcached may hold.",
        ),
        (
            "cache_hits",
            "session_cache_hits_total",
            "counter",
            "Session reads the cache answered (dynamodb-cached).",
        ),
        (
            "cache_misses",
            "session_cache_misses_total",
            "counter",
            "Session reads that went to the record (dynamodb-cached).",
        ),
        (
            "cache_skipped",
            "session_cache_skipped_total",
            "counter",
            "Session reads that skipped a cache that had failed (dynamodb-cached).",
        ),
    ];
    for (stat, name, kind, help) in counters {
        if let Some(value) = stats.get(stat) {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
