//! The signed cart token, built by hand from `hmac`, `sha2` and `base64`.
//!
//! ```text
//! v1.<kid>.<base64url(payload)>.<base64url(mac)>
//! payload = {"n":"cart","l":[["TEE-RED-M",2],…],"iat":1763900000,"exp":1764504800}
//! mac     = HMAC-SHA256(key[kid], "v1\n" + cookie name + "\n" + kid + "\n" + base64url(payload))
//! ```
//!
//! * **Versioned** (`v1`): a later format can be introduced while old
//!   cookies are still read.
//! * **Names its key** (`kid`): secrets can be rotated (see [`crate::keys`]).
//! * **Bound to its cookie's name**: the MAC covers the name, so a value
//!   copied from another cookie signed with the same key (another shop on
//!   the same domain, say) fails; the payload names its cookie too, so the
//!   rejection can say why (`wrong-name`).
//! * **Expires on the server** (`exp`): `Max-Age` only asks the browser to
//!   forget the cookie; a copied cookie would live forever without `exp`.
//! * **Verified in constant time** (`Mac::verify_slice`): comparing MACs
//!   with `==` stops at the first differing byte, and the time that takes
//!   leaks, byte by byte, what the right MAC is.
//!
//! What it does *not* do: hide the cart (the payload is only base64; anyone
//! can read it), or stop replay (an old, valid cookie sent again is
//! accepted: a signature proves who made a value, not that it is the latest).
//!
//! In production: `cookie::PrivateJar`/`SignedJar` (axum-extra's
//! `SignedCookieJar`), `tower-sessions`' cookie store, Rails'
//! `MessageVerifier`, or JWT/PASETO libraries for the general case.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use shop::cart::{Cart, CartLine, KnownSku, Quantity};

use crate::keys::{Key, KeyAge, Keys};

const VERSION: &str = "v1";

/// Why a cookie was not accepted as a cart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No cookie.
    Missing,
    /// Not a token of this format (wrong parts, bad base64, bad JSON).
    Malformed,
    /// The MAC does not match: the value was altered, or forged.
    BadSignature,
    /// Signed with a key this shop does not have (another shop, an old key
    /// that was retired, a forgery).
    UnknownKey,
    /// Past its `exp`.
    Expired,
    /// A valid token for another cookie name.
    WrongName,
}

impl Rejection {
    /// The reason as the `X-Cart-Cookie` header and the logs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad-signature",
            Self::UnknownKey => "unknown-key",
            Self::Expired => "expired",
            Self::WrongName => "wrong-name",
        }
    }

    /// The reason in plain words, for the shop page.
    pub fn explain(self) -> &'static str {
        match self {
            Self::Missing => "there was no cart cookie",
            Self::Malformed => "the cart cookie was not in the shop's format (damaged or made up)",
            Self::BadSignature => {
                "the cart cookie's signature did not match: it was changed after the shop signed it"
            }
            Self::UnknownKey => "the cart cookie was signed with a key this shop does not have",
            Self::Expired => "the cart cookie is older than its expiry",
            Self::WrongName => "the cart cookie's value was signed for a different cookie",
        }
    }
}

/// The signed content.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    /// The cookie name this value belongs to.
    n: String,
    /// Lines as `[sku, qty]` pairs: shorter than objects, and every byte
    /// counts against the 4 KB.
    l: Vec<(String, u8)>,
    iat: u64,
    exp: u64,
}

/// A cart read from a valid token.
#[derive(Debug)]
pub struct Verified {
    pub cart: Cart,
    /// Which key signed it: a retired one's cookie is re-signed.
    pub key: KeyAge,
    /// The SKUs of lines left out: the catalog no longer sells them (or no
    /// longer allows their quantity) since the cookie was signed.
    pub dropped: Vec<String>,
    /// When it was signed and when it expires (unix seconds): a cookie only
    /// re-signed (under the current key) keeps both, so re-signing never
    /// makes a cart live longer than its last change allows.
    pub iat: u64,
    pub exp: u64,
}

/// Signs carts into tokens and verifies tokens back into carts.
/// How far ahead of this instance's clock another instance's may be.
const CLOCK_SKEW_S: u64 = 60;

#[derive(Clone, Debug)]
pub struct Codec {
    keys: Keys,
    ttl_s: u64,
}

impl Codec {
    pub fn new(keys: Keys, ttl_s: u64) -> Self {
        Self { keys, ttl_s }
    }

    /// The token for `cart` in cookie `name`, signed now with the current key.
    pub fn sign(&self, name: &str, cart: &Cart, now: u64) -> String {
        self.sign_with(
            self.keys.current(),
            name,
            cart,
            now,
            now.saturating_add(self.ttl_s),
        )
    }

    /// The token for `cart` signed now with the current key, with the
    /// times of the token it replaces (a re-signing, not a change).
    pub fn resign(&self, name: &str, cart: &Cart, iat: u64, exp: u64) -> String {
        self.sign_with(self.keys.current(), name, cart, iat, exp)
    }

    /// The token with explicit key and times (tests use it to make expired
    /// or foreign tokens).
    pub fn sign_with(&self, key: &Key, name: &str, cart: &Cart, iat: u64, exp: u64) -> String {
        let payload = Payload {
            n: name.to_owned(),
            l: cart
                .lines()
                .iter()
                .map(|l| (l.sku.clone(), l.qty))
                .collect(),
            iat,
            exp,
        };
        sign_payload(key, &payload)
    }

    /// The cart in token `value`, read from cookie `name`, at time `now`.
    pub fn verify(&self, name: &str, value: &str, now: u64) -> Result<Verified, Rejection> {
        let mut parts = value.split('.');
        let (Some(version), Some(kid), Some(payload_b64), Some(mac_b64), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Rejection::Malformed);
        };
        if version != VERSION {
            return Err(Rejection::Malformed);
        }
        let (key, age) = self.keys.find(kid).ok_or(Rejection::UnknownKey)?;
        let tag = URL_SAFE_NO_PAD
            .decode(mac_b64)
            .map_err(|_| Rejection::Malformed)?;
        if mac(key, name, payload_b64).verify_slice(&tag).is_err() {
            return Err(self.why_not(key, name, payload_b64, &tag));
        }
        let payload: Payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(Rejection::Malformed)?;
        if payload.n != name {
            return Err(Rejection::Malformed);
        }
        // Past its own `exp`, or older than this shop's lifetime allows now:
        // an operator who shortens `--cart-ttl` (to narrow replays) shortens
        // it for the cookies already out there too. One signed in the future
        // was not signed by this shop's clocks.
        if now >= payload.exp
            || now >= payload.iat.saturating_add(self.ttl_s)
            || payload.iat > now.saturating_add(CLOCK_SKEW_S)
        {
            return Err(Rejection::Expired);
        }
        // Signed by this shop, so it followed the rules when signed; the
        // catalog may have changed since. A line it no longer sells is left
        // out (and named), not the whole cart with it.
        let (kept, dropped): (Vec<CartLine>, Vec<CartLine>) = payload
            .l
            .into_iter()
            .map(|(sku, qty)| CartLine { sku, qty })
            .partition(|line| {
                KnownSku::new(&line.sku).is_ok() && Quantity::new(i64::from(line.qty)).is_ok()
            });
        let cart = Cart::from_lines(kept).map_err(|_| Rejection::Malformed)?;
        Ok(Verified {
            cart,
            key: age,
            dropped: dropped.into_iter().map(|line| line.sku).collect(),
            iat: payload.iat,
            exp: payload.exp,
        })
    }

    /// A MAC failed: was it a value signed for another cookie, or altered?
    fn why_not(&self, key: &Key, name: &str, payload_b64: &str, tag: &[u8]) -> Rejection {
        let declared = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .ok()
            .and_then(|json| serde_json::from_slice::<Payload>(&json).ok())
            .map(|p| p.n);
        match declared {
            Some(other)
                if other != name && mac(key, &other, payload_b64).verify_slice(tag).is_ok() =>
            {
                Rejection::WrongName
            }
            _ => Rejection::BadSignature,
        }
    }
}

/// The token for `payload`, signed with `key`.
fn sign_payload(key: &Key, payload: &Payload) -> String {
    // Serialising plain strings and numbers cannot fail.
    let json = serde_json::to_vec(payload).unwrap_or_default();
    let payload_b64 = URL_SAFE_NO_PAD.encode(json);
    let mac = mac(key, &payload.n, &payload_b64).finalize().into_bytes();
    format!(
        "{VERSION}.{}.{payload_b64}.{}",
        key.id(),
        URL_SAFE_NO_PAD.encode(mac)
    )
}

fn mac(key: &Key, name: &str, payload_b64: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length; `Key` guarantees at least 32 bytes.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.secret())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(VERSION.as_bytes());
    mac.update(b"\n");
    mac.update(name.as_bytes());
    mac.update(b"\n");
    mac.update(key.id().as_bytes());
    mac.update(b"\n");
    mac.update(payload_b64.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop::cart::{CartOp, KnownSku, Quantity};

    fn codec() -> Codec {
        Codec::new(Keys::new(Key::new(vec![7; 32]).expect("key"), vec![]), 3600)
    }

    fn cart() -> Cart {
        let mut cart = Cart::new();
        let op = CartOp::Add(
            KnownSku::new("TEE-RED-M").expect("sku"),
            Quantity::new(2).expect("qty"),
        );
        cart.apply(op).expect("add");
        cart
    }

    #[test]
    fn a_line_the_catalog_no_longer_sells_is_left_out_and_the_rest_kept() {
        let codec = codec();
        let payload = Payload {
            n: "cart".to_owned(),
            l: vec![("TEE-RED-M".to_owned(), 2), ("TEE-PINK-M".to_owned(), 1)],
            iat: 1_000,
            exp: 5_000,
        };
        let token = sign_payload(codec.keys.current(), &payload);
        let verified = codec.verify("cart", &token, 1_001).expect("valid");
        assert_eq!(verified.cart, cart(), "the line still sold is kept");
        assert_eq!(verified.dropped, ["TEE-PINK-M"]);
    }

    #[test]
    fn a_shorter_lifetime_applies_to_cookies_already_signed() {
        let week = 7 * 24 * 3_600;
        let long_lived = Codec::new(codec().keys, week);
        let token = long_lived.sign("cart", &cart(), 1_000);
        // The operator shortens the lifetime to an hour: a cookie signed two
        // hours ago no longer verifies, whatever its own `exp` says.
        assert!(codec().verify("cart", &token, 1_000 + 3_599).is_ok());
        assert_eq!(
            codec().verify("cart", &token, 1_000 + 3_600).err(),
            Some(Rejection::Expired)
        );
        // Nor does one claiming to be signed in the future.
        let ahead = long_lived.sign("cart", &cart(), 10_000);
        assert_eq!(
            codec().verify("cart", &ahead, 1_000).err(),
            Some(Rejection::Expired)
        );
    }

    #[test]
    fn a_signed_cart_verifies_back() {
        let token = codec().sign("cart", &cart(), 1_000);
        let verified = codec().verify("cart", &token, 1_001).expect("valid");
        assert_eq!(verified.cart, cart());
        assert_eq!(verified.key, KeyAge::Current);
    }

    #[test]
    fn each_rejection_has_its_reason() {
        let c = codec();
        let token = c.sign("cart", &cart(), 1_000);
        assert_eq!(
            c.verify("cart", &token, 1_000 + 3_600).map(|_| ()),
            Err(Rejection::Expired)
        );
        assert_eq!(
            c.verify("other", &token, 1_001).map(|_| ()),
            Err(Rejection::WrongName)
        );
        assert_eq!(
            c.verify("cart", "v1.x.y", 1_001).map(|_| ()),
            Err(Rejection::Malformed)
        );
        let foreign = Codec::new(Keys::new(Key::new(vec![9; 32]).expect("key"), vec![]), 3600);
        assert_eq!(
            c.verify("cart", &foreign.sign("cart", &cart(), 1_000), 1_001)
                .map(|_| ()),
            Err(Rejection::UnknownKey)
        );
        let mut forged = token.clone();
        forged.push('A');
        assert!(c.verify("cart", &forged, 1_001).is_err());
    }
}
