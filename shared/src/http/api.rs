//! The JSON API: catalog and cart.
//!
//! Every cart handler does the same three things: validate the input against
//! the catalog and the cart rules *before* touching the store (so a bad
//! request changes nothing), hand one [`CartOp`] to the stage's store, and
//! render the store's [`CartReply`] as `{lines, total_cents, served_by}`
//! plus the cookies and headers the store asked for.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::cart::{CartOp, KnownSku, PricedLine, Quantity};
use crate::cookies::request_jar;
use crate::error::ApiError;
use crate::http::json::ApiJson;
use crate::http::path::ApiPath;
use crate::stage::{Shop, Stage};
use crate::store::{CartReply, CartRequest, CartStore, IdempotencyKey};

/// `GET /api/products`
pub(super) async fn list_products<S: Stage>(
    State(shop): State<Arc<Shop<S>>>,
) -> Result<Response, ApiError> {
    S::list_products(&shop).await
}

/// `GET /api/products/{sku}`
pub(super) async fn get_product<S: Stage>(
    State(shop): State<Arc<Shop<S>>>,
    ApiPath(sku): ApiPath<String>,
) -> Result<Response, ApiError> {
    S::get_product(&shop, sku).await
}

/// The body of every cart response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartBody {
    pub lines: Vec<PricedLine>,
    pub total_cents: u64,
    pub served_by: String,
    /// Plain-words notes from the stage (e.g. why a cart was reset).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

/// `POST /api/cart/items` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddItem {
    sku: String,
    /// Defaults to 1. Read as a wide integer so that `-1` or `1000` are
    /// reported as bad quantities rather than as unreadable JSON.
    #[serde(default = "one")]
    qty: i64,
}

/// `PUT /api/cart/items/{sku}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetItem {
    qty: i64,
}

fn one() -> i64 {
    1
}

/// `GET /api/cart`
pub(super) async fn view_cart<S: Stage>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    run(&shop, &headers, CartOp::View).await
}

/// `POST /api/cart/items {"sku","qty"}`
pub(super) async fn add_item<S: Stage>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AddItem>,
) -> Result<Response, ApiError> {
    let op = CartOp::Add(KnownSku::new(&body.sku)?, Quantity::new(body.qty)?);
    run(&shop, &headers, op).await
}

/// `PUT /api/cart/items/{sku} {"qty"}`
pub(super) async fn set_item<S: Stage>(
    State(shop): State<Arc<Shop<S>>>,
    ApiPath(sku): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SetItem>,
) -> Result<Response, ApiError> {
    let op = CartOp::Set(KnownSku::new(&sku)?, Quantity::new(body.qty)?);
    run(&shop, &headers, op).await
}

/// `DELETE /api/cart/items/{sku}`
pub(super) async fn remove_item<S: Stage>(
    State(shop): State<Arc<Shop<S>>>,
    ApiPath(sku): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    run(&shop, &headers, CartOp::Remove(KnownSku::new(&sku)?)).await
}

/// `DELETE /api/cart`
pub(super) async fn clear_cart<S: Stage>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    run(&shop, &headers, CartOp::Clear).await
}

async fn run<S: Stage>(
    shop: &Shop<S>,
    headers: &HeaderMap,
    op: CartOp,
) -> Result<Response, ApiError> {
    let key = headers
        .get(IdempotencyKey::HEADER)
        .map(|value| IdempotencyKey::new(value.to_str().unwrap_or("")))
        .transpose()?;
    let cookies = request_jar(headers);
    let request = CartRequest {
        cookies: &cookies,
        op,
        key: key.as_ref(),
    };
    let reply = shop.carts.apply(request).await?;
    Ok(cart_response(shop.instance.id(), reply))
}

/// Renders a store's reply: JSON body, then the store's cookies and headers.
fn cart_response(served_by: &str, reply: CartReply) -> Response {
    let priced = reply.cart.priced();
    let body = CartBody {
        lines: priced.lines,
        total_cents: priced.total_cents,
        served_by: served_by.to_owned(),
        notices: reply.notices,
    };
    let mut response = Json(body).into_response();
    set_cookies(response.headers_mut(), reply.cookies);
    response.headers_mut().extend(reply.headers);
    response
}

/// Adds `Set-Cookie` headers for `cookies` to a response.
pub fn set_cookies(
    target: &mut HeaderMap,
    cookies: impl IntoIterator<Item = cookie::Cookie<'static>>,
) {
    for cookie in cookies {
        // A cookie the `cookie` crate built always encodes to a valid header
        // value; should one not, dropping it is safer than a 500.
        if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
            target.append(SET_COOKIE, value);
        }
    }
}
