//! Sessions in Memcached (what ElastiCache for Memcached runs): fast, and
//! forgetful on purpose.
//!
//! * **Where**: one item per session, `myclothes:session:<sha256(id)>`,
//!   holding a small JSON record: when the session was born, its cart, and
//!   the answers to its recent idempotency keys ([`Record`]).
//! * **How a change stays atomic**: Memcached runs no scripts, so a change
//!   is read, changed in Rust, written back, with the write made
//!   conditional: `gets` returns the item with a `cas` number, and `cas`
//!   stores the new record only if nobody wrote the item since. If someone
//!   did (`EXISTS`), read again and retry, a bounded number of times
//!   ([`MAX_ATTEMPTS`]); fifty concurrent adds make fifty, after some
//!   retries. (Redis checks the rule and makes the change in one Lua
//!   script, with no retries at all.) The record of an idempotency key is
//!   in the same item, so it is written in the same `cas` as the change.
//! * **Expiry**: every item has an expiry time; a read is `gat` (get and
//!   touch), which renews it in the same round trip. Renewing on every
//!   read is cheap here: Memcached has no log and no replica to tell.
//! * **On the wire** each of these is one of Memcached's meta commands
//!   (`mg`, `ms`, `md`: `protocol.rs` says why, and which is which).
//! * **Durability: none.** Memcached keeps everything in memory only: a
//!   restart forgets every cart, and when its memory is full it evicts the
//!   least recently used items, silently. A shopper whose session is gone
//!   gets a fresh, empty cart and a notice, never an error. The eviction
//!   count is on `/metrics` ([`MemcachedSessions::stats`]).
//! * **Failure**: Memcached unreachable or frozen → 503 within the store
//!   timeout, as for every store.

mod protocol;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shop::cart::{Cart, CartError, CartOp};
use shop::{ApiError, CartReply, CartRequest, CartStore, IdempotencyKey};

use crate::error::SessionError;
use crate::sessions::{
    self, APPLIED_FOR, Answer, Mode, Purpose, REMEMBERED_KEYS, SessionSettings, SessionStore,
    digest,
};
use protocol::{Client, Outcome};

/// Every session's item is under this prefix.
pub const KEY_PREFIX: &str = "myclothes:session:";

/// How many times a change is tried when other changes to the same cart
/// keep winning the `cas` race. Fifty shoppers' tabs adding at the same
/// instant need up to fifty; a cart that busy is a bot.
pub const MAX_ATTEMPTS: u32 = 100;

/// The record a session's item holds, as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// When the session started (unix seconds, the instance's clock).
    born: u64,
    /// The cart, checked by the same rules as every stage's
    /// ([`Cart::apply`]).
    cart: Cart,
    /// The answers to the newest changes sent with an idempotency key.
    #[serde(default)]
    applied: Vec<Applied>,
}

/// One change made under an idempotency key, and what it answered.
#[derive(Debug, Serialize, Deserialize)]
struct Applied {
    key: String,
    /// Unix seconds.
    at: u64,
    answer: Answer,
}

impl Record {
    fn new(now: u64) -> Self {
        Self {
            born: now,
            cart: Cart::new(),
            applied: Vec::new(),
        }
    }

    /// The first answer to `key`, if this change was made before.
    fn replay(&self, key: Option<&IdempotencyKey>, now: u64) -> Option<Answer> {
        let key = key?.as_str();
        self.applied
            .iter()
            .find(|applied| applied.key == key && now < applied.at + APPLIED_FOR.as_secs())
            .map(|applied| applied.answer.clone())
    }

    /// Applies `op` (or leaves the cart as it was, when the rules refuse
    /// it) and records the answer under `key`.
    fn apply(&mut self, op: CartOp, key: Option<&IdempotencyKey>, now: u64) -> Answer {
        let answer = match self.cart.apply(op) {
            Ok(()) => self.cart_answer(),
            Err(CartError::CartFull) => Answer::CartFull,
            Err(CartError::LineFull { total, .. }) => Answer::LineFull(total),
            // The SKU and quantity were checked before they got here.
            Err(error @ (CartError::UnknownSku(_) | CartError::BadQuantity(_))) => {
                tracing::error!(%error, "a checked change was refused");
                Answer::CartFull
            }
        };
        if let Some(key) = key {
            self.applied
                .retain(|applied| now < applied.at + APPLIED_FOR.as_secs());
            self.applied.push(Applied {
                key: key.as_str().to_owned(),
                at: now,
                answer: answer.clone(),
            });
            let excess = self.applied.len().saturating_sub(REMEMBERED_KEYS);
            self.applied.drain(..excess);
        }
        answer
    }

    fn cart_answer(&self) -> Answer {
        Answer::Cart(
            self.cart
                .lines()
                .iter()
                .map(|line| (line.sku.clone(), line.qty.to_string()))
                .collect(),
        )
    }
}

/// Carts in Memcached, one item per session.
#[derive(Debug)]
pub struct MemcachedSessions {
    client: Client,
    settings: SessionSettings,
}

impl MemcachedSessions {
    /// A store using the Memcached at `address` (`host:port`, or a
    /// `memcache://host:port` URL). Nothing is connected until first use.
    pub fn connect(address: &str, settings: SessionSettings) -> Result<Self, String> {
        let address = address
            .strip_prefix("memcache://")
            .or_else(|| address.strip_prefix("memcached://"))
            .unwrap_or(address)
            .trim_end_matches('/');
        if address.is_empty() || !address.contains(':') {
            return Err(format!(
                "a Memcached address is host:port (memcache://127.0.0.1:11211), not {address:?}"
            ));
        }
        Ok(Self {
            client: Client::new(address.to_owned()),
            settings,
        })
    }

    /// Memcached's own counters (`evictions`, `curr_items`, `bytes`,
    /// `limit_maxbytes`, …), for `/metrics`.
    pub async fn stats(&self) -> Result<HashMap<String, String>, ApiError> {
        self.within_timeout(self.client.stats(), Purpose::Read)
            .await
    }

    /// The item's expiry, in Memcached's terms: seconds from now (at least
    /// one), or a unix time past thirty days (Memcached reads any larger
    /// number as a date).
    fn exptime(&self) -> u32 {
        const THIRTY_DAYS: u64 = 30 * 24 * 3600;
        let seconds = self.settings.ttl.as_secs_f64().ceil() as u64;
        let seconds = if seconds > THIRTY_DAYS {
            now() + seconds
        } else {
            seconds.max(1)
        };
        u32::try_from(seconds).unwrap_or(u32::MAX)
    }

    /// A change to a session that must exist, within one store timeout
    /// (as DynamoDB's): each call has its own too, but a hundred rounds
    /// against a slow (not frozen) Memcached would otherwise add up to
    /// minutes. Past it, the change may or may not have been made: 503
    /// `change_unconfirmed`, safe to retry with the same key.
    async fn change_existing(
        &self,
        item_key: &str,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, ApiError> {
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, self.race_for_the_change(item_key, op, key)).await {
            Ok(answer) => answer,
            Err(_) => {
                tracing::warn!(
                    timeout_ms = timeout.as_millis(),
                    "a cart change did not finish in time"
                );
                Err(SessionError::ChangeUnconfirmed.into())
            }
        }
    }

    /// `gets`, change, `cas`, and again while someone else's change wins.
    async fn race_for_the_change(
        &self,
        item_key: &str,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, ApiError> {
        for attempt in 0..MAX_ATTEMPTS {
            let Some(item) = self
                .within_timeout(self.client.gets(item_key), Purpose::Read)
                .await?
            else {
                return Ok(Answer::Unknown);
            };
            let mut record = parse(&item.data)?;
            let now = now();
            if let Some(first) = record.replay(key, now) {
                return Ok(Answer::Replayed(Box::new(first)));
            }
            let answer = record.apply(*op, key, now);
            let data = encode(&record)?;
            let stored = self
                .within_timeout(
                    self.client.cas(item_key, self.exptime(), &data, item.cas),
                    Purpose::Change,
                )
                .await?;
            match stored {
                Outcome::Stored => return Ok(answer),
                // Expired or evicted between our two calls.
                Outcome::NotFound => return Ok(Answer::Unknown),
                Outcome::Exists | Outcome::NotStored => {
                    // Someone else's change won: read theirs, try again,
                    // after a moment that differs per request (so the
                    // losers do not all come back at the same instant).
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        tracing::warn!(
            attempts = MAX_ATTEMPTS,
            "a cart change kept losing the cas race"
        );
        Err(SessionError::Contended.into())
    }

    /// Waits for Memcached at most the store timeout
    /// ([`sessions::within_timeout`]); "out of memory" is an item it has no
    /// room for even after evicting.
    async fn within_timeout<T>(
        &self,
        call: impl Future<Output = Result<T, protocol::Error>>,
        purpose: Purpose,
    ) -> Result<T, ApiError> {
        // Every call here is one command or one pipeline: one round trip.
        sessions::round_trip();
        sessions::within_timeout(self.settings.timeout, purpose, call, |error| {
            matches!(error, protocol::Error::Refused(answer) if answer.contains("out of memory"))
        })
        .await
    }
}

impl SessionStore for MemcachedSessions {
    fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    fn label(&self) -> &'static str {
        "memcached; memory only (a restart forgets every cart, a full store evicts), atomic by gets/cas"
    }

    async fn read(&self, id: &str) -> Result<Answer, ApiError> {
        let item = self
            .within_timeout(
                self.client.gat(self.exptime(), &item_key(id)),
                Purpose::Read,
            )
            .await?;
        match item {
            None => Ok(Answer::Unknown),
            Some(item) => Ok(parse(&item.data)?.cart_answer()),
        }
    }

    async fn change(
        &self,
        id: &str,
        mode: Mode,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, ApiError> {
        let item_key = item_key(id);
        match mode {
            Mode::Resume => self.change_existing(&item_key, op, key).await,
            Mode::Create => {
                let now = now();
                let mut record = Record::new(now);
                let answer = record.apply(*op, key, now);
                let data = encode(&record)?;
                // `add` stores only if the key is free: a new session never
                // overwrites another.
                let stored = self
                    .within_timeout(
                        self.client.add(&item_key, self.exptime(), &data),
                        Purpose::Change,
                    )
                    .await?;
                Ok(match stored {
                    Outcome::Stored => answer,
                    _ => Answer::Taken,
                })
            }
        }
    }

    async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.within_timeout(self.client.delete(&item_key(id)), Purpose::Change)
            .await
            .map(drop)
    }
}

impl CartStore for MemcachedSessions {
    async fn apply(&self, request: CartRequest<'_>) -> Result<CartReply, ApiError> {
        sessions::apply(self, request).await
    }
}

/// Where a session is kept: named by a SHA-256 of its id, never the id.
pub fn item_key(session_id: &str) -> String {
    format!("{KEY_PREFIX}{}", digest(session_id))
}

fn parse(data: &[u8]) -> Result<Record, ApiError> {
    serde_json::from_slice(data).map_err(|error| {
        tracing::error!(%error, "a session item is not a session record");
        ApiError::Internal
    })
}

fn encode(record: &Record) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(record).map_err(|error| {
        tracing::error!(%error, "cannot encode a session record");
        ApiError::Internal
    })
}

/// Unix seconds, by this instance's clock.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// How long a loser of the `cas` race waits before reading again: a random
/// share of a window that grows with each loss, up to 5 ms.
fn backoff(attempt: u32) -> Duration {
    let window_us = (200 * u64::from(attempt + 1)).min(5_000);
    let random = getrandom::u64().unwrap_or(u64::from(attempt) * 7919);
    Duration::from_micros(random % window_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop::cart::{KnownSku, Quantity};

    fn add(qty: i64) -> CartOp {
        CartOp::Add(
            KnownSku::new("TEE-RED-M").expect("a catalog SKU"),
            Quantity::new(qty).expect("a quantity"),
        )
    }

    #[test]
    fn a_recorded_key_replays_its_first_answer_and_changes_nothing() {
        let key = IdempotencyKey::new("k1").expect("a key");
        let mut record = Record::new(1_000);
        let first = record.apply(add(2), Some(&key), 1_000);
        assert_eq!(record.replay(Some(&key), 1_001), Some(first));
        assert_eq!(record.cart.qty_of("TEE-RED-M"), 2);
        // Forgotten after APPLIED_FOR.
        assert_eq!(
            record.replay(Some(&key), 1_000 + APPLIED_FOR.as_secs()),
            None
        );
    }

    #[test]
    fn a_session_remembers_only_its_newest_keys() {
        let mut record = Record::new(0);
        for n in 0..40 {
            let key = IdempotencyKey::new(&format!("k{n}")).expect("a key");
            record.apply(CartOp::Clear, Some(&key), 0);
        }
        assert_eq!(record.applied.len(), REMEMBERED_KEYS);
        let oldest = IdempotencyKey::new("k0").expect("a key");
        assert_eq!(record.replay(Some(&oldest), 0), None);
    }

    #[test]
    fn a_refused_change_leaves_the_cart_and_says_why() {
        let mut record = Record::new(0);
        assert!(matches!(record.apply(add(90), None, 0), Answer::Cart(_)));
        assert_eq!(record.apply(add(10), None, 0), Answer::LineFull(100));
        assert_eq!(record.cart.qty_of("TEE-RED-M"), 90);
    }
}
