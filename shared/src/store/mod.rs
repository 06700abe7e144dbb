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
//!
//! A change may carry an [`IdempotencyKey`] (the client's name for one
//! user action, in the `Idempotency-Key` header). A client that got no
//! answer (a 502, a 503, a cut connection) sends the same change again with
//! the same key, and a store that remembers keys answers the retry with
//! the first result instead of applying it twice. Stores whose state a
//! lost answer cannot change (the shopper's own cookie) need not remember.

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

/// A client's name for one change, so that a retry of it is recognised:
/// 1 to 64 letters, digits, `-` or `_` (a UUID fits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The header that carries it.
    pub const HEADER: &'static str = "idempotency-key";

    /// Checks a key's shape.
    pub fn new(key: &str) -> Result<Self, ApiError> {
        let shaped = (1..=64).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if shaped {
            Ok(Self(key.to_owned()))
        } else {
            Err(ApiError::BadIdempotencyKey)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One cart request, as a store is given it.
#[derive(Clone, Copy, Debug)]
pub struct CartRequest<'a> {
    /// The request's cookies (where a session or client id is).
    pub cookies: &'a CookieJar,
    pub op: CartOp,
    /// The client's name for this change, when it gave one.
    pub key: Option<&'a IdempotencyKey>,
}

/// Where the shopper's cart lives.
pub trait CartStore: Send + Sync + 'static {
    /// Applies the request's operation to the cart of the shopper it names.
    ///
    /// A refused change returns the error and leaves the stored cart as it
    /// was. A store that cannot reach its data returns an error, never an
    /// empty cart.
    fn apply(
        &self,
        request: CartRequest<'_>,
    ) -> impl Future<Output = Result<CartReply, ApiError>> + Send;
}
