//! The cart store of stage 3: the shopper's own cookie.
//!
//! Each request brings the cart along in the `cart` cookie; the instance
//! verifies it, applies the change, signs the result and sends it back.
//! Nothing is kept on the server, so any instance can serve any request.
//! The price is paid elsewhere:
//!
//! * the whole cart travels with *every* request (the `X-Cart-Cookie-Bytes`
//!   header shows how much), and must fit in the 4096 bytes a browser
//!   promises to keep for one cookie;
//! * two requests sent with the same cookie each produce their own new
//!   cookie, and the browser keeps whichever answer arrives last: the other
//!   change is lost (last writer wins);
//! * an old cookie, sent again, is still valid until it expires.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue};
use cookie::{Cookie, CookieJar};
use shop::cart::{Cart, CartOp};
use shop::cookies::shop_cookie;
use shop::http::{CART_COOKIE, CART_COOKIE_BYTES, COOKIE_LIMIT};
use shop::{ApiError, CartReply, CartStore};

use crate::token::{Codec, Rejection};

/// Carts kept in signed cookies.
#[derive(Debug)]
pub struct CookieCarts {
    codec: Codec,
    name: String,
    ttl: Duration,
    secure: bool,
    /// Cookies re-signed because they were signed with an old key.
    resigned: AtomicU64,
}

impl CookieCarts {
    pub fn new(codec: Codec, name: String, ttl: Duration, secure: bool) -> Self {
        Self {
            codec,
            name,
            ttl,
            secure,
            resigned: AtomicU64::new(0),
        }
    }

    /// How many cookies this instance re-signed with the current key.
    pub fn resigned(&self) -> u64 {
        self.resigned.load(Ordering::Relaxed)
    }

    /// The cookie as it will be sent: value plus every attribute.
    fn cookie(&self, value: String) -> Cookie<'static> {
        let mut cookie = shop_cookie(self.name.clone(), value, self.secure);
        cookie.set_max_age(cookie::time::Duration::seconds(
            i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
        ));
        cookie
    }

    /// Reads the cart out of the request's cookie.
    fn read(&self, cookies: &CookieJar, now: u64) -> (Cart, Result<bool, Rejection>) {
        let Some(cookie) = cookies.get(&self.name) else {
            return (Cart::new(), Err(Rejection::Missing));
        };
        match self.codec.verify(&self.name, cookie.value(), now) {
            Ok(verified) => (verified.cart, Ok(verified.old_key)),
            Err(reason) => (Cart::new(), Err(reason)),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl CartStore for CookieCarts {
    async fn apply(&self, cookies: &CookieJar, op: CartOp) -> Result<CartReply, ApiError> {
        let now = unix_now();
        let (mut cart, read) = self.read(cookies, now);
        let mut headers = HeaderMap::new();
        let mut notices = Vec::new();
        match read {
            Err(Rejection::Missing) | Ok(false) => {}
            Err(reason) => {
                // The reason, never the value: a log is no place for a cart
                // someone may be trying to forge.
                tracing::warn!(
                    reason = reason.as_str(),
                    "cart cookie rejected; treating the cart as empty"
                );
                if let Ok(value) =
                    HeaderValue::from_str(&format!("rejected; reason={}", reason.as_str()))
                {
                    headers.insert(CART_COOKIE, value);
                }
                notices.push(format!("Your cart was reset: {}.", reason.explain()));
            }
            Ok(true) => {
                headers.insert(
                    CART_COOKIE,
                    HeaderValue::from_static("resigned; reason=old-key"),
                );
            }
        }
        // A refused change leaves the cookie (and so the cart) as it was.
        cart.apply(op)?;

        // Write a new cookie when something changed, when the old one must
        // be replaced (rejected, or under an old key), or on first contact.
        let rewrite = op.is_write() || read != Ok(false);
        let (value, send) = match (rewrite, cookies.get(&self.name)) {
            (false, Some(existing)) => (existing.value().to_owned(), false),
            _ => (self.codec.sign(&self.name, &cart, now), true),
        };
        let cookie = self.cookie(value);
        let bytes = cookie.to_string().len();
        if send && bytes > COOKIE_LIMIT {
            return Err(ApiError::CartTooLargeForCookie {
                bytes,
                limit: COOKIE_LIMIT,
            });
        }
        if read == Ok(true) {
            let total = self.resigned.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(total, "re-signed a cart cookie made with an old key");
        }
        headers.insert(CART_COOKIE_BYTES, HeaderValue::from(bytes));
        let mut reply = CartReply::new(cart);
        reply.headers = headers;
        reply.notices = notices;
        if send {
            reply.cookies.push(cookie);
        }
        Ok(reply)
    }
}
