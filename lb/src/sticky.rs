//! Sticky sessions: the balancer's own cookie pins a shopper to a backend.
//!
//! Like an AWS ALB's duration-based stickiness (`AWSALB`) or HAProxy's
//! `cookie SRV insert`, the balancer *inserts* a cookie, `lb_sticky`, whose
//! value names the backend that served the shopper; the next request with
//! that cookie goes back there. The expiry slides: every response refreshes
//! `Max-Age`, so an active shopper stays pinned and an idle one is released
//! after the TTL.
//!
//! The value is *opaque*: an HMAC-SHA256 of the backend's name under a key
//! only the balancer knows, truncated to 128 bits. Not the backend's address
//! (that would tell clients the topology, and a forged address must never
//! become a route), and not a plain name (a client could pick its instance
//! and pile onto one). A value that matches no backend, or a backend that is
//! down or removed, is treated as no cookie: the policy chooses anew and the
//! cookie is re-issued (counted as a reassignment). Several balancers given
//! the same key (`--sticky-key`) agree on every value.
//!
//! The cookie is removed from the request before it is forwarded: it is the
//! balancer's business, not the shop's (HAProxy's `indirect`). It is
//! `Secure` (sent back only over HTTPS) when the shopper's request came
//! over TLS, and only then: on a plain-HTTP balancer a `Secure` cookie
//! would never come back, and every request would be routed anew.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use hyper::header::{COOKIE, HeaderValue};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The name of the balancer's cookie.
pub const COOKIE_NAME: &str = "lb_sticky";
/// The smallest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// Bytes of the HMAC kept in the cookie: 128 bits.
const TOKEN_BYTES: usize = 16;

/// Sticky-session settings.
#[derive(Clone)]
pub struct Sticky {
    key: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Sticky")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Why a sticky key was refused.
#[derive(Debug, thiserror::Error)]
pub enum StickyKeyError {
    #[error("the sticky key must be at least {MIN_KEY_BYTES} bytes, given as hex")]
    TooShort,
    #[error("the sticky key must be hex")]
    NotHex,
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

impl Sticky {
    /// Sticky sessions with a fresh random key: values are valid for this
    /// balancer process only.
    pub fn random(ttl: Duration) -> Result<Self, StickyKeyError> {
        let mut key = vec![0u8; MIN_KEY_BYTES];
        getrandom::fill(&mut key).map_err(|e| StickyKeyError::Random(e.to_string()))?;
        Ok(Self { key, ttl })
    }

    /// Sticky sessions with a given key (hex, at least 32 bytes).
    pub(crate) fn with_hex_key(key_hex: &str, ttl: Duration) -> Result<Self, StickyKeyError> {
        let key = hex::decode(key_hex.trim()).map_err(|_| StickyKeyError::NotHex)?;
        if key.len() < MIN_KEY_BYTES {
            return Err(StickyKeyError::TooShort);
        }
        Ok(Self { key, ttl })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn mac_for(&self, backend: &str) -> Hmac<Sha256> {
        // HMAC takes a key of any length; ours is at least 32 bytes.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        mac.update(b"lb_sticky\0");
        mac.update(backend.as_bytes());
        mac
    }

    /// The cookie value that pins a shopper to `backend`.
    pub(crate) fn token_for(&self, backend: &str) -> String {
        let digest = self.mac_for(backend).finalize().into_bytes();
        URL_SAFE_NO_PAD.encode(&digest[..TOKEN_BYTES])
    }

    /// `backend`'s pin: its token and the `Set-Cookie` values that carry it.
    /// Computed once per backend ([`crate::Backend::sticky_pin`]): the key
    /// never changes while the balancer runs. (Per request, routing a pinned
    /// shopper took an HMAC per backend tried and one more for the
    /// `Set-Cookie`: 1.5 % of the balancer's CPU samples under load.)
    pub(crate) fn pin(&self, backend: &str) -> Pin {
        let token = self.token_for(backend);
        let set_cookie = |secure: bool| {
            let value = format!(
                "{COOKIE_NAME}={token}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{}",
                self.ttl.as_secs(),
                if secure { "; Secure" } else { "" }
            );
            HeaderValue::from_str(&value).ok()
        };
        Pin {
            set_cookie: set_cookie(false),
            set_cookie_secure: set_cookie(true),
            token,
        }
    }
}

/// What pins a shopper to one backend: the cookie value, and the
/// `Set-Cookie` header values that (re)pin a shopper with a fresh expiry.
#[derive(Clone)]
pub(crate) struct Pin {
    token: String,
    set_cookie: Option<HeaderValue>,
    set_cookie_secure: Option<HeaderValue>,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A token is a credential of sorts: it routes a shopper. Not logged.
        f.debug_struct("Pin").finish_non_exhaustive()
    }
}

impl Pin {
    /// Whether a cookie value is this pin, compared in constant time (`==`
    /// on the strings would stop at the first wrong byte, and the time that
    /// takes tells a forger how far they got).
    pub(crate) fn is(&self, cookie_value: &str) -> bool {
        self.token.as_bytes().ct_eq(cookie_value.as_bytes()).into()
    }

    /// The `Set-Cookie` value that (re)pins a shopper, with the full expiry
    /// again (`Max-Age` slides with every response); `secure` when the
    /// shopper's request came over TLS.
    pub(crate) fn set_cookie(&self, secure: bool) -> Option<HeaderValue> {
        if secure {
            self.set_cookie_secure.clone()
        } else {
            self.set_cookie.clone()
        }
    }
}

/// Takes the `lb_sticky` cookie out of the request's `Cookie` headers and
/// returns its value. Other cookies are left as they were.
pub fn take_cookie(headers: &mut HeaderMap) -> Option<String> {
    if !headers.contains_key(COOKIE) {
        return None;
    }
    let mut found = None;
    let mut kept: Vec<String> = Vec::new();
    for value in headers.get_all(COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((name, value)) if name.trim() == COOKIE_NAME => {
                    found = Some(value.trim().to_owned());
                }
                _ => kept.push(pair.to_owned()),
            }
        }
    }
    if found.is_some() {
        headers.remove(COOKIE);
        if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
            if !kept.is_empty() {
                headers.insert(COOKIE, value);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky() -> Sticky {
        Sticky::with_hex_key(&"ab".repeat(32), Duration::from_secs(60)).expect("key")
    }

    #[test]
    fn tokens_are_opaque_stable_and_distinct() {
        let s = sticky();
        assert_eq!(s.token_for("i1"), s.token_for("i1"));
        assert_ne!(s.token_for("i1"), s.token_for("i2"));
        assert!(!s.token_for("i1").contains("i1"));
        assert!(s.pin("i1").is(&s.token_for("i1")));
        assert!(!s.pin("i2").is(&s.token_for("i1")));
        assert!(!s.pin("i1").is("not base64!") && !s.pin("i1").is(""));
        let other = Sticky::with_hex_key(&"cd".repeat(32), Duration::from_secs(60)).expect("key");
        assert_ne!(
            s.token_for("i1"),
            other.token_for("i1"),
            "another key, other tokens"
        );
    }

    #[test]
    fn short_or_odd_keys_are_refused() {
        assert!(matches!(
            Sticky::with_hex_key("abcd", Duration::ZERO),
            Err(StickyKeyError::TooShort)
        ));
        assert!(matches!(
            Sticky::with_hex_key("xyz", Duration::ZERO),
            Err(StickyKeyError::NotHex)
        ));
    }

    #[test]
    fn the_sticky_cookie_is_taken_out_and_the_others_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("a=1; lb_sticky=tok; b=2"));
        assert_eq!(take_cookie(&mut headers).as_deref(), Some("tok"));
        assert_eq!(headers[COOKIE], "a=1; b=2");

        let mut only = HeaderMap::new();
        only.insert(COOKIE, HeaderValue::from_static("lb_sticky=tok"));
        assert_eq!(take_cookie(&mut only).as_deref(), Some("tok"));
        assert!(!only.contains_key(COOKIE));
    }

    #[test]
    fn set_cookie_slides_the_expiry_and_is_http_only() {
        let value = sticky().pin("i1").set_cookie(false).expect("header");
        let text = value.to_str().expect("ascii");
        assert!(text.starts_with("lb_sticky=") && text.contains("Max-Age=60"));
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Lax"));
        assert!(!text.contains("Secure"));
        let over_tls = sticky().pin("i1").set_cookie(true).expect("header");
        assert!(over_tls.to_str().expect("ascii").ends_with("; Secure"));
    }
}
