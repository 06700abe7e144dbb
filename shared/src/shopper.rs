//! A shopper, as a program: an HTTP client with its own cookie jar.
//!
//! The demos and every stage's tests shop through this, the way a browser
//! would: cookies the shop sets come back on the next request, whichever
//! instance the balancer picks.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::json;

use crate::cart::CartOp;
use crate::http::SERVED_BY;
use crate::http::api::CartBody;
use crate::store::IdempotencyKey;

/// Why a shopper's request did not give a cart.
#[derive(Debug, thiserror::Error)]
pub enum ShopperError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP {status} from {served_by}: {body}")]
    Status {
        status: StatusCode,
        served_by: String,
        body: String,
    },
}

impl ShopperError {
    /// The status of a refused request, if it got that far.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Http(e) => e.status(),
        }
    }
}

/// The value a response's `Set-Cookie` headers give cookie `name`, if any.
pub fn set_cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, value)| value.trim().to_owned())
}

/// A cart as one response showed it.
#[derive(Clone, Debug)]
pub struct CartSeen {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: CartBody,
}

impl CartSeen {
    pub fn served_by(&self) -> &str {
        &self.body.served_by
    }

    pub fn qty_of(&self, sku: &str) -> u8 {
        self.body
            .lines
            .iter()
            .find(|l| l.sku == sku)
            .map_or(0, |l| l.qty)
    }

    pub fn is_empty(&self) -> bool {
        self.body.lines.is_empty()
    }

    /// `2 × TEE-RED-M, 1 × SOCK-GREY-L` or `empty`.
    pub fn summary(&self) -> String {
        if self.body.lines.is_empty() {
            return "empty".to_owned();
        }
        self.body
            .lines
            .iter()
            .map(|l| format!("{} × {}", l.qty, l.sku))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One shopper with a cookie jar, shopping at `base` (a balancer or an instance).
#[derive(Clone, Debug)]
pub struct Shopper {
    http: reqwest::Client,
    base: String,
}

impl Shopper {
    pub fn new(base: impl Into<String>) -> Result<Self, ShopperError> {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            // Generous: a stuck request should fail a test, not hang it.
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Self {
            http,
            base: base.into().trim_end_matches('/').to_owned(),
        })
    }

    /// The same shopper (same cookies) shopping somewhere else.
    pub fn at(&self, base: impl Into<String>) -> Self {
        Self {
            http: self.http.clone(),
            base: base.into().trim_end_matches('/').to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying client, for requests the helpers below do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn cart(&self) -> Result<CartSeen, ShopperError> {
        self.send(self.http.get(self.url("/api/cart"))).await
    }

    pub async fn add(&self, sku: &str, qty: i64) -> Result<CartSeen, ShopperError> {
        self.send(
            self.http
                .post(self.url("/api/cart/items"))
                .json(&json!({ "sku": sku, "qty": qty })),
        )
        .await
    }

    pub async fn set(&self, sku: &str, qty: i64) -> Result<CartSeen, ShopperError> {
        self.send(
            self.http
                .put(self.url(&format!("/api/cart/items/{sku}")))
                .json(&json!({ "qty": qty })),
        )
        .await
    }

    pub async fn remove(&self, sku: &str) -> Result<CartSeen, ShopperError> {
        self.send(
            self.http
                .delete(self.url(&format!("/api/cart/items/{sku}"))),
        )
        .await
    }

    pub async fn clear(&self) -> Result<CartSeen, ShopperError> {
        self.send(self.http.delete(self.url("/api/cart"))).await
    }

    /// One cart operation, sent with `Idempotency-Key: key` when given: how
    /// a careful client sends a change it may have to retry.
    pub async fn apply(&self, op: CartOp, key: Option<&str>) -> Result<CartSeen, ShopperError> {
        let request = match op {
            CartOp::View => self.http.get(self.url("/api/cart")),
            CartOp::Add(sku, qty) => self
                .http
                .post(self.url("/api/cart/items"))
                .json(&json!({ "sku": sku.as_str(), "qty": qty.get() })),
            CartOp::Set(sku, qty) => self
                .http
                .put(self.url(&format!("/api/cart/items/{}", sku.as_str())))
                .json(&json!({ "qty": qty.get() })),
            CartOp::Remove(sku) => self
                .http
                .delete(self.url(&format!("/api/cart/items/{}", sku.as_str()))),
            CartOp::Clear => self.http.delete(self.url("/api/cart")),
        };
        let request = match key {
            Some(key) => request.header(IdempotencyKey::HEADER, key),
            None => request,
        };
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<CartSeen, ShopperError> {
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        if !status.is_success() {
            let served_by = headers
                .get(SERVED_BY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("the balancer")
                .to_owned();
            let body = response.text().await.unwrap_or_default();
            return Err(ShopperError::Status {
                status,
                served_by,
                body,
            });
        }
        let body = response.json::<CartBody>().await?;
        Ok(CartSeen {
            status,
            headers,
            body,
        })
    }
}
