//! Stage 6's HTTP routes, beside stage 5's:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /ws` | the page's WebSocket ([`crate::socket`]) |
//! | `POST /api/checkout` | buy the whole cart: stock comes off every line or none (409 `sold_out`, 409 `empty_cart`) |
//! | `GET /api/live/stock?skus=A,B` | the latest stock and flash price of some SKUs |
//! | `POST /api/live/price` | put a SKU on a flash sale (`{"sku","price_cents"}`), as the ticker does |
//! | `GET /api/live/stats` | this instance's hub: sockets, topics, delivered, dropped |
//!
//! The changes publish an update, which the fan-out mode carries to the
//! watching pages.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use shop::cookies::request_jar;
use shop::http::json::ApiJson;
use shop::{ApiError, Catalog, IdempotencyKey, Shop};

use crate::Stage6;
use crate::live::LiveError;
use crate::socket;

/// Stage 6's own routes.
pub(crate) fn live_routes() -> Router<Arc<Shop<Stage6>>> {
    Router::new()
        .route("/ws", get(socket::open))
        .route("/api/checkout", post(checkout))
        .route("/api/live/stock", get(stock))
        .route("/api/live/price", post(set_price))
        .route("/api/live/stats", get(stats))
}

/// `POST /api/checkout`: 200 with what was bought. A retry with the same
/// `Idempotency-Key` gets the first answer again (and buys nothing more).
async fn checkout(
    State(shop): State<Arc<Shop<Stage6>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = headers
        .get(IdempotencyKey::HEADER)
        .map(|value| IdempotencyKey::new(value.to_str().unwrap_or("")))
        .transpose()?;
    let Some(session) = shop.carts.session(&request_jar(&headers), &[]).await? else {
        // No session, no cart.
        return Err(LiveError::EmptyCart.into());
    };
    let receipt = shop.state.live.checkout(&session, key.as_ref()).await?;
    let mut response = Json(receipt.body).into_response();
    if receipt.replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// `?skus=TEE-RED-M,TEE-RED-L`
#[derive(Debug, Deserialize)]
struct StockQuery {
    skus: String,
}

/// `GET /api/live/stock?skus=…`: 404 `unknown_sku` names the first SKU
/// the catalog does not have.
async fn stock(
    State(shop): State<Arc<Shop<Stage6>>>,
    Query(query): Query<StockQuery>,
) -> Result<Response, ApiError> {
    let skus: Vec<String> = query
        .skus
        .split(',')
        .filter(|sku| !sku.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(unknown) = skus.iter().find(|sku| Catalog::get().find(sku).is_none()) {
        return Err(ApiError::UnknownSku(unknown.clone()));
    }
    if skus.len() > 300 {
        return Err(ApiError::InvalidBody(
            "ask for at most 300 SKUs at once".into(),
        ));
    }
    let snapshot = shop.state.live.snapshot(&skus, &[]).await?;
    Ok(Json(snapshot.stocks).into_response())
}

/// `{"sku": "TEE-RED-M", "price_cents": 1500}`
#[derive(Debug, Deserialize)]
struct NewPrice {
    sku: String,
    price_cents: u32,
}

/// `POST /api/live/price`: 204. Only a JSON body is accepted, so another
/// site cannot send one from a learner's browser without the browser
/// asking first (a CORS preflight, which this shop never grants). The
/// price is shown live; what the cart charges is the catalog's.
async fn set_price(
    State(shop): State<Arc<Shop<Stage6>>>,
    ApiJson(new): ApiJson<NewPrice>,
) -> Result<Response, ApiError> {
    if Catalog::get().find(&new.sku).is_none() {
        return Err(ApiError::UnknownSku(new.sku));
    }
    if !(1..=1_000_000).contains(&new.price_cents) {
        return Err(ApiError::InvalidBody("price_cents is 1 to 1000000".into()));
    }
    shop.state.live.set_price(&new.sku, new.price_cents).await?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/live/stats`: what this instance's hub holds and has done.
async fn stats(State(shop): State<Arc<Shop<Stage6>>>) -> Response {
    let hub = &shop.state.hub;
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    Json(serde_json::json!({
        "instance": shop.instance.id(),
        "fanout": shop.state.live.fanout(),
        "live": hub.is_live(),
        "sockets": hub.sockets(),
        "topics": hub.topics().len(),
        "delivered": count(&hub.stats.delivered),
        "dropped": count(&hub.stats.dropped),
        "from_redis": count(&hub.stats.from_redis),
        "closed_slow": count(&hub.stats.closed_slow),
        "refused_messages": count(&hub.stats.refused_messages),
        "closed_flooding": count(&hub.stats.closed_flooding),
    }))
    .into_response()
}
