//! The cookie secrets: one that signs, older ones that still verify.
//!
//! `--cookie-secret` (`SHOP_COOKIE_SECRET`) signs every cart;
//! `--cookie-old-secrets` (`SHOP_COOKIE_OLD_SECRETS`, comma-separated) only
//! verify, so a secret can be rotated without
//! emptying every shopper's cart: put the new one in `SHOP_COOKIE_SECRET`,
//! the old one in `SHOP_COOKIE_OLD_SECRETS`, and cookies signed with the old
//! one are re-signed with the new one the next time their shopper comes by.
//!
//! A secret is at least 32 bytes (HMAC-SHA256's own output size: a shorter
//! key makes brute force the weakest link), given as hex or base64. Each key
//! is named in the cookie by a *key id*: a short hash of the secret, so the
//! verifier knows which key to try, without the cookie saying anything
//! about the secret itself.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The smallest secret accepted, in bytes.
pub(crate) const MIN_SECRET_BYTES: usize = 32;
/// The signing secret's environment variable.
pub(crate) const SECRET_ENV: &str = "SHOP_COOKIE_SECRET";
/// The verify-only secrets' environment variable.
pub(crate) const OLD_SECRETS_ENV: &str = "SHOP_COOKIE_OLD_SECRETS";

/// One secret and its id.
#[derive(Clone)]
pub struct Key {
    id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The id only: a secret never reaches a log.
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key from raw bytes (at least 32).
    pub fn new(secret: Vec<u8>) -> Result<Self, KeyError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::TooShort {
                bytes: secret.len(),
            });
        }
        let digest = Sha256::new()
            .chain_update(b"myclothes cookie key id\0")
            .chain_update(&secret)
            .finalize();
        let id = URL_SAFE_NO_PAD.encode(&digest[..6]);
        Ok(Self { id, secret })
    }

    /// A key from hex or base64 text.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        Self::new(decode_secret(text.trim())?)
    }

    /// A fresh random key (for `stage3 up`, which shares it with its instances).
    pub fn random() -> Result<Self, KeyError> {
        let mut secret = vec![0u8; MIN_SECRET_BYTES];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        Self::new(secret)
    }

    /// The key id written into cookies.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The secret as hex, to hand to instances through the environment.
    pub(crate) fn to_hex(&self) -> String {
        hex::encode(&self.secret)
    }
}

/// Which key signed a cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAge {
    /// The key that signs today.
    Current,
    /// An older key that still verifies: the cookie should be re-signed.
    Retired,
}

/// A secret given as a flag: kept out of `Debug` output (and so out of
/// logs), handed on to instances as it was given.
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// Why a secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "{SECRET_ENV} is not set. Stage 3 signs carts with it: give every instance the same secret \
         of at least {MIN_SECRET_BYTES} bytes, hex or base64 (e.g. `export {SECRET_ENV}=$(openssl rand -hex 32)`); \
         `stage3 up` makes one for you"
    )]
    Missing,
    #[error("a cookie secret must be at least {MIN_SECRET_BYTES} bytes; this one is {bytes}")]
    TooShort { bytes: usize },
    #[error("a cookie secret must be hex or base64")]
    NotEncoded,
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

fn decode_secret(text: &str) -> Result<Vec<u8>, KeyError> {
    if let Ok(bytes) = hex::decode(text) {
        return Ok(bytes);
    }
    [&STANDARD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .ok_or(KeyError::NotEncoded)
}

/// The signing key and the verify-only ones.
#[derive(Clone, Debug)]
pub struct Keys {
    current: Key,
    old: Vec<Key>,
}

impl Keys {
    pub fn new(current: Key, old: Vec<Key>) -> Self {
        Self { current, old }
    }

    /// The keys from the secret flags: the signing one, and the
    /// comma-separated list of older ones.
    pub(crate) fn from_secrets(
        current: Option<&Secret>,
        old: Option<&Secret>,
    ) -> Result<Self, KeyError> {
        let current = Key::parse(current.ok_or(KeyError::Missing)?.expose())?;
        let old = old
            .map(Secret::expose)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Key::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { current, old })
    }

    pub fn current(&self) -> &Key {
        &self.current
    }

    /// The key with this id, and whether it is the current one.
    pub fn find(&self, id: &str) -> Option<(&Key, KeyAge)> {
        if self.current.id == id {
            return Some((&self.current, KeyAge::Current));
        }
        self.old
            .iter()
            .find(|k| k.id == id)
            .map(|k| (k, KeyAge::Retired))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_secrets_give_the_same_key() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let b64 = STANDARD.encode(hex::decode(hex).expect("hex"));
        assert_eq!(
            Key::parse(hex).expect("hex").id(),
            Key::parse(&b64).expect("b64").id()
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(
            Key::parse("abcd").map(|_| ()),
            Err(KeyError::TooShort { bytes: 2 })
        );
        assert_eq!(Key::parse("!!!").map(|_| ()), Err(KeyError::NotEncoded));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = Key::new(vec![0xAB; 32]).expect("key");
        assert!(!format!("{key:?}").to_lowercase().contains("abab"));
        let secret = Secret::from("abab".repeat(16));
        assert!(!format!("{secret:?}").contains("abab"));
    }
}
