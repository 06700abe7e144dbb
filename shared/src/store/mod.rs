//! Where a stage keeps the cart: the one thing that changes between stages.
//!
//! The HTTP surface ([`crate::http`]) is written once, generic over a
//! [`CartStore`]. A store receives the request's cookies and a [`CartOp`],
//! and answers with the resulting cart plus whatever it wants to tell the
//! shopper: cookies to set, headers, plain-words notices for the page.
//!
//! Taking an *operation* (not "give me the cart" then "save this cart")
//! lets each store apply it in the way that is safe for where it keeps
//! data: under a lock in memory (stages 1–2), inside a signed cookie
//! (stage 3), atomically in Redis (stage 4+).

pub mod memory;
pub mod redis;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use cookie::{Cookie, CookieJar};

use crate::cart::{Cart, CartOp};
use crate::error::ApiError;
use crate::http::Shop;

pub use memory::MemoryCarts;
pub use redis::RedisCarts;

/// What a store answers for one request.
#[derive(Debug, Default)]
pub struct CartReply {
    /// The cart after the operation.
    pub cart: Cart,
    /// Cookies to set on the response.
    pub cookies: Vec<Cookie<'static>>,
    /// Extra response headers that show the stage at work.
    pub headers: HeaderMap,
    /// Plain-words notes for the shop page ("your cookie was rejected: …").
    pub notices: Vec<String>,
}

impl CartReply {
    pub fn new(cart: Cart) -> Self {
        Self {
            cart,
            ..Self::default()
        }
    }
}

/// Where the shopper's cart lives.
pub trait CartStore: Send + Sync + 'static {
    /// Applies `op` to the cart of the shopper who sent `cookies`.
    ///
    /// A refused change returns the error and leaves the stored cart as it
    /// was. A store that cannot reach its data returns an error, never an
    /// empty cart.
    fn apply(
        &self,
        cookies: &CookieJar,
        op: CartOp,
    ) -> impl Future<Output = Result<CartReply, ApiError>> + Send;

    /// Whether the store serves `/api/products` itself (stage 5 reads the
    /// catalog from PostgreSQL through a cache); otherwise the shared
    /// surface serves the static catalog.
    const OWN_CATALOG: bool = false;

    /// Routes only this store has (stage 4's `DELETE /api/session`), merged
    /// into the shared surface. Most stores have none.
    fn routes() -> Router<Arc<Shop<Self>>>
    where
        Self: Sized,
    {
        Router::new()
    }
}
