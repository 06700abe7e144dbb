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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use cookie::{Cookie, CookieJar};
use shop::cart::Cart;
use shop::cookies::shop_cookie;
use shop::{ApiError, CartReply, CartRequest, CartStore, StageError};

use crate::keys::KeyAge;
use crate::token::{Codec, Rejection, Verified};

/// The size of the cart's `Set-Cookie` header, in bytes.
pub(crate) const CART_COOKIE_BYTES: HeaderName = HeaderName::from_static("x-cart-cookie-bytes");
/// What happened to the cart cookie, e.g. `rejected; reason=expired`.
pub(crate) const CART_COOKIE: HeaderName = HeaderName::from_static("x-cart-cookie");
/// The size browsers guarantee a cookie, attributes included.
pub(crate) const COOKIE_LIMIT: usize = 4096;

/// Stage 3's own failure.
#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    /// 413 `cart_too_large_for_cookie`: the cart's cookie would pass the
    /// 4096-byte limit browsers guarantee; the cart is unchanged.
    #[error(
        "that change would make your cart's cookie {bytes} bytes; the limit is {limit} bytes, so the cart was left as it was"
    )]
    CartTooLargeForCookie { bytes: usize, limit: usize },
}

impl StageError for CookieError {
    fn status(&self) -> StatusCode {
        match self {
            Self::CartTooLargeForCookie { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::CartTooLargeForCookie { .. } => "cart_too_large_for_cookie",
        }
    }
}

/// Carts kept in signed cookies.
#[derive(Debug)]
pub struct CookieCarts {
    codec: Codec,
    name: String,
    ttl: Duration,
    secure: bool,
}

impl CookieCarts {
    pub fn new(codec: Codec, name: String, ttl: Duration, secure: bool) -> Self {
        Self {
            codec,
            name,
            ttl,
            secure,
        }
    }

    /// The cookie as it will be sent: value plus every attribute.
    fn cookie(&self, value: String) -> Cookie<'static> {
        let mut cookie = shop_cookie(self.name.clone(), value, self.secure);
        cookie.set_max_age(cookie::time::Duration::seconds(
            i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
        ));
        cookie
    }

    /// Reads the cart out of the request's cookie: the cart and which key
    /// signed it, or why it was not accepted (`Missing` when there was none).
    fn read(&self, cookies: &CookieJar, now: u64) -> Result<Verified, Rejection> {
        let cookie = cookies.get(&self.name).ok_or(Rejection::Missing)?;
        self.codec.verify(&self.name, cookie.value(), now)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl CartStore for CookieCarts {
    /// An idempotency key is not needed here: the cart changes only when
    /// the shopper's browser stores the answer's cookie, so a change whose
    /// answer was lost changed nothing, and its retry is applied once.
    async fn apply(&self, request: CartRequest<'_>) -> Result<CartReply, ApiError> {
        let (cookies, op) = (request.cookies, request.op);
        let now = unix_now();
        let read = self.read(cookies, now);
        // Fine as it is: signed with the current key, every line still sold.
        let cookie_is_fine = matches!(
            &read,
            Ok(verified) if verified.key == KeyAge::Current && verified.dropped.is_empty()
        );
        let rejected = matches!(&read, Err(reason) if *reason != Rejection::Missing);
        let mut headers = HeaderMap::new();
        let mut notices = Vec::new();
        if let Ok(verified) = &read
            && !verified.dropped.is_empty()
        {
            notices.push(format!(
                "No longer sold, so taken out of your cart: {}.",
                verified.dropped.join(", ")
            ));
        }
        // A re-signing keeps the old token's times (see below).
        let times = read
            .as_ref()
            .ok()
            .map(|verified| (verified.iat, verified.exp));
        let mut cart = match read {
            Ok(Verified {
                cart,
                key: KeyAge::Current,
                ..
            }) => cart,
            Ok(Verified {
                cart,
                key: KeyAge::Retired,
                ..
            }) => {
                headers.insert(
                    CART_COOKIE,
                    HeaderValue::from_static("resigned; reason=old-key"),
                );
                tracing::info!("re-signing a cart cookie made with an old key");
                cart
            }
            // A first visit: nothing to report, it is not an attack.
            Err(Rejection::Missing) => Cart::new(),
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
                notices.push(if op.is_write() {
                    format!("Your cart was reset: {}.", reason.explain())
                } else {
                    format!("Your cart could not be read: {}.", reason.explain())
                });
                Cart::new()
            }
        };
        // A refused change leaves the cookie (and so the cart) as it was.
        cart.apply(op)?;

        // Write a new cookie when something changed, when the old one must
        // be re-signed (under a retired key, or holding lines no longer
        // sold), or on first contact. Never on
        // a mere view of a cookie this instance rejected: the view shows an
        // empty cart, but the cookie stays as the browser has it. Overwriting
        // it would destroy a cart that another instance may read well: in a
        // fleet part-way through a key change, or with one machine's secret
        // mistyped, round-robin would empty a shopper's cart on a page load.
        // (A change replaces it: the shopper acts on the cart they see.)
        let rewrite = op.is_write() || (!cookie_is_fine && !rejected);
        let (value, send) = match (rewrite, cookies.get(&self.name), times) {
            (false, Some(existing), _) => (existing.value().to_owned(), false),
            // Re-signed on a view (old key, or lines no longer sold): the
            // same lifetime, or a replayed old cookie would come back as a
            // fresh one, valid for another whole `--cart-ttl`.
            (true, Some(_), Some((iat, exp))) if !op.is_write() => {
                (self.codec.resign(&self.name, &cart, iat, exp), true)
            }
            _ => (self.codec.sign(&self.name, &cart, now), true),
        };
        let cookie = self.cookie(value);
        let at_most = bytes_behind_tls(&cookie);
        if send && at_most > COOKIE_LIMIT {
            return Err(CookieError::CartTooLargeForCookie {
                bytes: at_most,
                limit: COOKIE_LIMIT,
            }
            .into());
        }
        // The meter shows the header this instance sends.
        headers.insert(
            CART_COOKIE_BYTES,
            HeaderValue::from(cookie.to_string().len()),
        );
        let mut reply = CartReply::new(cart);
        reply.headers = headers;
        reply.notices = notices;
        if send {
            reply.cookies.push(cookie);
        }
        Ok(reply)
    }
}

/// The length of the `Set-Cookie` a browser behind TLS receives, which is
/// what the 4096-byte limit is checked against: the front middleware
/// (`shop::http`) adds `; Secure` there after this store has answered.
/// (RFC 6265 promises 4096 bytes of name, value *and* attributes; checking
/// the header as this store sends it let a cart within 8 bytes of the limit
/// reach a browser behind TLS over it. Over plain HTTP this is 8 bytes on
/// the safe side.)
fn bytes_behind_tls(cookie: &Cookie<'_>) -> usize {
    let mut behind_tls = cookie.clone();
    behind_tls.set_secure(true);
    behind_tls.to_string().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_limit_counts_the_secure_that_tls_adds() {
        let plain = Cookie::build(("cart", "v1.abc"))
            .path("/")
            .http_only(true)
            .build();
        assert_eq!(bytes_behind_tls(&plain), format!("{plain}; Secure").len());
        let secure = Cookie::build(("cart", "v1.abc")).secure(true).build();
        assert_eq!(bytes_behind_tls(&secure), secure.to_string().len());
    }
}
