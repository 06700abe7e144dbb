//! Where a stage keeps the cart: the one thing every stage must decide.
//!
//! The HTTP surface ([`crate::http`]) is written once, for any
//! [`CartStore`]. A store receives the request's cookies and a [`CartOp`],
//! and answers with the resulting cart plus whatever it wants to tell the
//! shopper: cookies to set, headers, plain-words notices for the page.
//!
//! Taking an *operation* (not "give me the cart" then "save this cart")
//! lets each store apply it in the way that is safe for where it keeps
//! data: under a lock in memory, inside a signed value, atomically in a
//! shared database.

mod memory;

use std::future::Future;

use axum::http::HeaderMap;
use cookie::{Cookie, CookieJar};

use crate::cart::{Cart, CartOp};
use crate::error::ApiError;

pub use memory::MemoryCarts;

/// What a store answers for one request.
#[derive(Debug, Default)]
pub struct CartReply {
    /// The cart after the operation.
    pub cart: Cart,
    /// Cookies to set on the response.
    pub cookies: Vec<Cookie<'static>>,
    /// Extra response headers that show the stage at work.
    pub headers: HeaderMap,
    /// Plain-words notes for the shop page ("your cart was reset: …").
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
}
