//! Random identifiers for the values a cookie names a shopper by.
//!
//! 128 bits from the operating system's random source (`getrandom`, which is
//! `getrandom(2)` on Linux), written as 22 characters of unpadded base64url so
//! they fit in a cookie without escaping. 128 bits is OWASP's floor for
//! identifiers that grant access: an attacker guessing a billion ids a
//! second would expect to need ~10^21 years to hit one of a million live ones.
//!
//! Why not a counter, a timestamp, a UUIDv1/v7 or a fast userspace PRNG?
//! Each is predictable from one sample, and a predictable id is a stolen
//! cart.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Bytes of randomness in an id.
const ID_BYTES: usize = 16;
/// Length of an id once encoded.
const ID_LEN: usize = 22;

/// Why no id could be made: the OS random source failed, which on Linux
/// means something is badly wrong with the machine.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomSourceError(getrandom::Error);

/// A fresh random id.
pub fn random_id() -> Result<String, RandomSourceError> {
    let mut bytes = [0u8; ID_BYTES];
    getrandom::fill(&mut bytes).map_err(RandomSourceError)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `value` has the shape of an id this module makes. Anything else
/// in a cookie is ignored and replaced, never stored or echoed.
pub fn is_well_formed(value: &str) -> bool {
    value.len() == ID_LEN
        && URL_SAFE_NO_PAD
            .decode(value)
            .is_ok_and(|bytes| bytes.len() == ID_BYTES)
}

/// The first few characters of an id, enough to tell shoppers apart in a log
/// without writing down anything that would let a reader use the id.
pub fn redacted(value: &str) -> String {
    let prefix: String = value.chars().take(6).collect();
    format!("{prefix}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_and_distinct() {
        let a = random_id().expect("random id");
        let b = random_id().expect("random id");
        assert!(is_well_formed(&a) && is_well_formed(&b));
        assert_ne!(a, b);
        assert_eq!(a.len(), ID_LEN);
    }

    #[test]
    fn odd_values_are_not_well_formed() {
        assert!(!is_well_formed(""));
        assert!(!is_well_formed("not-an-id"));
        assert!(!is_well_formed("AAAAAAAAAAAAAAAAAAAAA*"));
        assert!(!redacted("abcdefghijklmnop").contains("ghij"));
    }
}
