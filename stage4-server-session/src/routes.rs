//! The route only a session has: `DELETE /api/session`, which ends it.
//!
//! Any stage whose carts are [`RedisSessions`] serves it (stage 5 too, as
//! its "log out").

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::delete;
use shop::cookies::request_jar;
use shop::http::api::set_cookies;
use shop::{ApiError, Shop, Stage};

use crate::sessions::RedisSessions;

/// The session routes, for a stage that keeps its carts in sessions.
pub fn session_routes<S: Stage<Carts = RedisSessions>>() -> Router<Arc<Shop<S>>> {
    Router::new().route("/api/session", delete(end_session::<S>))
}

/// `DELETE /api/session`: 204, and the `sid` cookie removed.
async fn end_session<S: Stage<Carts = RedisSessions>>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let removal = shop.carts.end(&request_jar(&headers)).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookies(response.headers_mut(), [removal]);
    Ok(response)
}
