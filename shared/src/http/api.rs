//! The JSON API: catalog and cart.
//!
//! Every cart handler does the same three things: validate the input against
//! the catalog and the cart rules *before* touching the store (so a bad
//! request changes nothing), hand one [`CartOp`] to the stage's store, and
//! render the store's [`CartReply`] as `{lines, total_cents, served_by}`
//! plus the cookies and headers the store asked for.

use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::cart::{CartOp, KnownSku, PricedLine, Quantity};
use crate::catalog::{Catalog, Product};
use crate::cookies::request_jar;
use crate::error::ApiError;
use crate::http::Shop;
use crate::http::json::ApiJson;
use crate::store::{CartReply, CartStore};

/// The catalog never changes while the process runs: serialise it once.
static PRODUCTS_JSON: LazyLock<Vec<u8>> = LazyLock::new(|| {
    serde_json::to_vec(Catalog::get().products()).unwrap_or_else(|_| b"[]".to_vec())
});

/// `GET /api/products`
pub async fn list_products() -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        PRODUCTS_JSON.as_slice(),
    )
        .into_response()
}

/// `GET /api/products/{sku}`
pub async fn get_product(Path(sku): Path<String>) -> Result<Json<&'static Product>, ApiError> {
    Catalog::get()
        .find(&sku)
        .map(Json)
        .ok_or(ApiError::UnknownSku(sku))
}

/// The body of every cart response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartBody {
    pub lines: Vec<PricedLine>,
    pub total_cents: u64,
    pub served_by: String,
    /// Plain-words notes from the stage (e.g. why a cookie was rejected).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

/// `POST /api/cart/items` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddItem {
    pub sku: String,
    /// Defaults to 1. Read as a wide integer so that `-1` or `1000` are
    /// reported as bad quantities rather than as unreadable JSON.
    #[serde(default = "one")]
    pub qty: i64,
}

/// `PUT /api/cart/items/{sku}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetItem {
    pub qty: i64,
}

fn one() -> i64 {
    1
}

/// `GET /api/cart`
pub async fn view_cart<S: CartStore>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    run(&shop, &headers, CartOp::View).await
}

/// `POST /api/cart/items {"sku","qty"}`
pub async fn add_item<S: CartStore>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AddItem>,
) -> Result<Response, ApiError> {
    let op = CartOp::Add(KnownSku::new(&body.sku)?, Quantity::new(body.qty)?);
    run(&shop, &headers, op).await
}

/// `PUT /api/cart/items/{sku} {"qty"}`
pub async fn set_item<S: CartStore>(
    State(shop): State<Arc<Shop<S>>>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SetItem>,
) -> Result<Response, ApiError> {
    let op = CartOp::Set(KnownSku::new(&sku)?, Quantity::new(body.qty)?);
    run(&shop, &headers, op).await
}

/// `DELETE /api/cart/items/{sku}`
pub async fn remove_item<S: CartStore>(
    State(shop): State<Arc<Shop<S>>>,
    Path(sku): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    run(&shop, &headers, CartOp::Remove(KnownSku::new(&sku)?)).await
}

/// `DELETE /api/cart`
pub async fn clear_cart<S: CartStore>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    run(&shop, &headers, CartOp::Clear).await
}

async fn run<S: CartStore>(
    shop: &Shop<S>,
    headers: &HeaderMap,
    op: CartOp,
) -> Result<Response, ApiError> {
    let reply = shop.store.apply(&request_jar(headers), op).await?;
    Ok(cart_response(shop.instance.id(), reply))
}

/// Renders a store's reply: JSON body, then the store's cookies and headers.
pub fn cart_response(served_by: &str, reply: CartReply) -> Response {
    let priced = reply.cart.priced();
    let body = CartBody {
        lines: priced.lines,
        total_cents: priced.total_cents,
        served_by: served_by.to_owned(),
        notices: reply.notices,
    };
    let mut response = Json(body).into_response();
    append_reply_headers(response.headers_mut(), reply.cookies, reply.headers);
    response
}

/// Adds a store's cookies and extra headers to a response.
pub fn append_reply_headers(
    target: &mut HeaderMap,
    cookies: Vec<cookie::Cookie<'static>>,
    extra: HeaderMap,
) {
    for cookie in cookies {
        // A cookie the `cookie` crate built always encodes to a valid header
        // value; should one not, dropping it is safer than a 500.
        if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
            target.append(SET_COOKIE, value);
        }
    }
    target.extend(extra);
}
