//! What a store answers for a cart operation, as a type.
//!
//! Every store's answer is read into [`Answer`] once, where it arrives,
//! so that nothing else matches on strings. Redis's `cart.lua` replies with a flat list whose first element says what
//! happened (`ok`, `unknown`, `taken`, `cart_full`, `line_full`); the rest
//! is the cart's hash (`ok`) or the refused total (`line_full`). A replay
//! of a change already made (same idempotency key) is the first answer
//! with `replay` in front. The Memcached store keeps answers it
//! recorded (for idempotency keys) as JSON, through serde.

use redis::{FromRedisValue, ParsingError, Value};

/// One cart operation's outcome in a store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Answer {
    /// Applied (or only looked at): the cart's hash afterwards, as
    /// `(SKU, quantity)` pairs.
    Cart(Vec<(String, String)>),
    /// This change was made before (same idempotency key): its first answer.
    Replayed(Box<Answer>),
    /// The session does not exist (expired, ended, never issued).
    Unknown,
    /// A new session's key was taken already (a 128-bit id collided, or
    /// the random source is broken).
    Taken,
    /// The cart already has the most lines it may hold.
    CartFull,
    /// The line would hold this many, more than it may.
    LineFull(u32),
}

impl FromRedisValue for Answer {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let words: Vec<String> = FromRedisValue::from_redis_value(value)?;
        Self::from_words(words.into_iter())
    }
}

impl Answer {
    fn from_words(mut words: impl Iterator<Item = String>) -> Result<Self, ParsingError> {
        let answer = match words.next().as_deref() {
            Some("replay") => Self::Replayed(Box::new(Self::from_words(words)?)),
            Some("ok") => {
                let mut pairs = Vec::new();
                while let (Some(field), Some(value)) = (words.next(), words.next()) {
                    pairs.push((field, value));
                }
                Self::Cart(pairs)
            }
            Some("unknown") => Self::Unknown,
            Some("taken") => Self::Taken,
            Some("cart_full") => Self::CartFull,
            Some("line_full") => Self::LineFull(
                words
                    .next()
                    .and_then(|total| total.parse().ok())
                    .ok_or("line_full without a total")?,
            ),
            other => return Err(format!("the cart script answered {other:?}").into()),
        };
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Value {
        Value::Array(
            list.iter()
                .map(|w| Value::BulkString(w.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn each_reply_reads_as_its_variant() {
        let read = |list: &[&str]| Answer::from_redis_value(words(list));
        assert_eq!(
            read(&["ok", "SOCK-GREY-L", "1", "TEE-RED-M", "2"]),
            Ok(Answer::Cart(vec![
                ("SOCK-GREY-L".into(), "1".into()),
                ("TEE-RED-M".into(), "2".into())
            ]))
        );
        assert_eq!(
            read(&["replay", "cart_full"]),
            Ok(Answer::Replayed(Box::new(Answer::CartFull)))
        );
        assert_eq!(read(&["unknown"]), Ok(Answer::Unknown));
        assert_eq!(read(&["line_full", "100"]), Ok(Answer::LineFull(100)));
        assert!(read(&["line_full"]).is_err());
        assert!(read(&["what"]).is_err());
    }
}
