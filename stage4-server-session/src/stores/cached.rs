//! Sessions in DynamoDB with Redis in front (`--store dynamodb-cached`):
//! the seeds' "used together", where the NoSQL database is the record and
//! the key-value store the cache.
//!
//! * **Reads** ask Redis first. A hit is the cart, with no DynamoDB call.
//!   A miss (or a cache that does not answer within `--cache-timeout`,
//!   50 ms by default) reads
//!   the record, answers from it, and fills the cache for next time: a
//!   lazily filled, read-through cache.
//! * **Changes** go to the record only (one conditional `UpdateItem`, see
//!   [`super::dynamodb`]), and then invalidate the cached copy. Rejected:
//!   writing the new cart into the cache as well (write-through): two
//!   writers could land in the cache in the other order than in the record.
//! * **A slow fill cannot put back an old cart.** The record carries a
//!   version, one up with every change. Invalidating leaves a *tombstone*
//!   holding the new version, not an empty key, and a fill is a script
//!   (`cache_put.lua`) that refuses to replace a newer version. So a
//!   reader that read version 5, then lost the race to a writer of version
//!   6, finds the writer's tombstone and leaves it be. (Had invalidation
//!   been a plain `DEL`, the reader's fill would have put version 5 back
//!   until the entry's TTL.)
//! * **The cache going away takes nothing down.** A cache that fails or
//!   freezes is skipped for [`CACHE_BACKOFF`]; requests are served from the
//!   record, slower, with no error. An invalidation that could not be made
//!   is remembered and made again every [`RETRY_EVERY`] until the cache
//!   takes it; meanwhile this instance reads that session from the record.
//!   Another instance may serve the old cached cart until then, or until
//!   the entry's [`CACHE_TTL`] runs out: the price of a cache, bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use shop::cart::CartOp;
use shop::{ApiError, CartReply, CartRequest, CartStore, IdempotencyKey};

use super::dynamodb::{DynamoSessions, Snapshot};
use crate::sessions::{self, Answer, Mode, SessionSettings, SessionStore, digest};

/// Every cached session is under this prefix.
pub const CACHE_KEY_PREFIX: &str = "myclothes:cached-session:";
/// How long the cache keeps an entry: the bound on how stale a cached
/// cart can be after the cache missed an invalidation.
pub const CACHE_TTL: Duration = Duration::from_secs(15);
/// How long a cache that failed is left alone.
pub const CACHE_BACKOFF: Duration = Duration::from_secs(1);
/// How often invalidations the cache missed are tried again.
pub const RETRY_EVERY: Duration = Duration::from_millis(250);
/// The version of a deleted session's tombstone: above any real version
/// (and exact in Lua's numbers, which are doubles).
const DELETED: u64 = 1 << 53;

static PUT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("cache_put.lua")));

/// What the cache holds for a session.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// The record's version this entry was made from.
    v: u64,
    /// The cart (absent in a tombstone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cart: Option<Vec<(String, String)>>,
    /// When the session expires, unix milliseconds.
    #[serde(default)]
    exp: u64,
}

/// DynamoDB as the record, Redis as a read-through cache.
#[derive(Clone)]
pub struct CachedDynamoSessions {
    record: DynamoSessions,
    cache: ConnectionManager,
    /// How long a request waits for the cache.
    cache_timeout: Duration,
    health: Arc<CacheHealth>,
}

impl std::fmt::Debug for CachedDynamoSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedDynamoSessions")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// What this instance knows about the cache's state, and its counters.
#[derive(Debug, Default)]
struct CacheHealth {
    /// Skip the cache until then.
    down_until: Mutex<Option<Instant>>,
    /// Invalidations the cache did not take: session digest → version.
    missed: Mutex<HashMap<String, u64>>,
    hits: AtomicU64,
    misses: AtomicU64,
    skipped: AtomicU64,
}

impl CacheHealth {
    fn usable(&self) -> bool {
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        match *down {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                *down = None;
                tracing::info!("trying the session cache again");
                true
            }
            None => true,
        }
    }

    fn failed(&self, error: &str) {
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if down.is_none() {
            tracing::warn!(
                error,
                backoff_ms = CACHE_BACKOFF.as_millis(),
                "the session cache failed; serving from the record"
            );
        }
        *down = Some(Instant::now() + CACHE_BACKOFF);
    }

    fn missed_one(&self, session: &str) -> bool {
        self.missed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(session)
    }
}

impl CachedDynamoSessions {
    /// The record in `record`, cached in the Redis at `cache_url`, which a
    /// request waits for at most `cache_timeout`. Starts this instance's
    /// retrier of missed invalidations.
    pub fn new(
        record: DynamoSessions,
        cache_url: &str,
        cache_timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let cache = shop::services::redis::client(cache_url, cache_timeout)?;
        let store = Self {
            record,
            cache,
            cache_timeout,
            health: Arc::new(CacheHealth::default()),
        };
        let retrier = store.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RETRY_EVERY);
            loop {
                every.tick().await;
                retrier.retry_missed().await;
            }
        });
        Ok(store)
    }

    /// The cache's counters, for `/metrics`: reads answered by the cache,
    /// reads that went to the record, and reads that skipped a cache that
    /// was down.
    pub fn stats(&self) -> HashMap<String, String> {
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed).to_string();
        HashMap::from([
            ("cache_hits".to_owned(), count(&self.health.hits)),
            ("cache_misses".to_owned(), count(&self.health.misses)),
            ("cache_skipped".to_owned(), count(&self.health.skipped)),
        ])
    }

    /// The cached cart of `session` (a digest), if the cache has a live,
    /// fresh one. `None` for a miss, a tombstone, or a cache that failed.
    async fn cached(&self, session: &str) -> Option<Vec<(String, String)>> {
        if !self.health.usable() || self.health.missed_one(session) {
            self.health.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut cache = self.cache.clone();
        sessions::round_trip();
        let got = tokio::time::timeout(
            self.cache_timeout,
            redis::cmd("GET")
                .arg(entry_key(session))
                .query_async::<Option<String>>(&mut cache),
        )
        .await;
        let text = match got {
            Ok(Ok(text)) => text?,
            Ok(Err(error)) => {
                self.health.failed(&error.to_string());
                return None;
            }
            Err(_) => {
                self.health.failed("no answer in time");
                return None;
            }
        };
        let entry: Entry = serde_json::from_str(&text).ok()?;
        // An entry whose session has run down far enough to renew goes to
        // the record, which renews it (as every store renews on a read).
        let left = Duration::from_millis(entry.exp.saturating_sub(now_ms()));
        let settings = self.record.settings();
        if left + settings.renew_after() < settings.ttl {
            return None;
        }
        entry.cart
    }

    /// Puts `entry` for `session` unless the cache holds a newer version.
    /// `Ok(false)`: it did (the race this module's notes describe).
    async fn put(&self, session: &str, entry: &Entry) -> Result<bool, String> {
        let text = serde_json::to_string(entry).map_err(|e| e.to_string())?;
        let mut cache = self.cache.clone();
        let mut invocation = PUT_SCRIPT.key(entry_key(session));
        invocation
            .arg(entry.v)
            .arg(text)
            .arg(u64::try_from(CACHE_TTL.as_millis()).unwrap_or(u64::MAX));
        sessions::round_trip();
        match tokio::time::timeout(
            self.cache_timeout,
            invocation.invoke_async::<i64>(&mut cache),
        )
        .await
        {
            Ok(Ok(put)) => Ok(put == 1),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer in time".to_owned()),
        }
    }

    /// Fills the cache from a snapshot of the record (best effort: a cache
    /// that fails is skipped for a while). Whether the entry was put.
    pub(crate) async fn fill(&self, session: &str, snapshot: &Snapshot) -> bool {
        let Answer::Cart(cart) = &snapshot.cart else {
            return false;
        };
        if !self.health.usable() {
            return false;
        }
        let entry = Entry {
            v: snapshot.version,
            cart: Some(cart.clone()),
            exp: snapshot.expires_ms,
        };
        match self.put(session, &entry).await {
            Ok(put) => put,
            Err(error) => {
                self.health.failed(&error);
                false
            }
        }
    }

    /// Leaves a tombstone of `version` in place of the cached copy; when
    /// the cache does not take it, remembers it for the retrier.
    async fn invalidate(&self, session: &str, version: u64) {
        let tombstone = Entry {
            v: version,
            cart: None,
            exp: 0,
        };
        if let Err(error) = self.put(session, &tombstone).await {
            self.health.failed(&error);
            let mut missed = self.health.missed.lock().unwrap_or_else(|e| e.into_inner());
            let held = missed.entry(session.to_owned()).or_insert(version);
            *held = (*held).max(version);
        }
    }

    /// Makes again the invalidations the cache missed.
    async fn retry_missed(&self) {
        let missed: Vec<(String, u64)> = self
            .health
            .missed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(session, version)| (session.clone(), *version))
            .collect();
        for (session, version) in missed {
            let tombstone = Entry {
                v: version,
                cart: None,
                exp: 0,
            };
            if self.put(&session, &tombstone).await.is_err() {
                return;
            }
            let mut held = self.health.missed.lock().unwrap_or_else(|e| e.into_inner());
            if held.get(&session) == Some(&version) {
                held.remove(&session);
            }
        }
    }
}

impl SessionStore for CachedDynamoSessions {
    fn settings(&self) -> &SessionSettings {
        self.record.settings()
    }

    fn label(&self) -> &'static str {
        "dynamodb-cached; durable record in DynamoDB, reads from a Redis cache"
    }

    async fn read(&self, id: &str) -> Result<Answer, ApiError> {
        let session = digest(id);
        if let Some(cart) = self.cached(&session).await {
            self.health.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Answer::Cart(cart));
        }
        self.health.misses.fetch_add(1, Ordering::Relaxed);
        let Some(snapshot) = self.record.snapshot(id).await? else {
            return Ok(Answer::Unknown);
        };
        if !self.health.missed_one(&session) {
            self.fill(&session, &snapshot).await;
        }
        Ok(snapshot.cart)
    }

    async fn change(
        &self,
        id: &str,
        mode: Mode,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, ApiError> {
        let (answer, version) = self.record.change_versioned(id, mode, op, key).await?;
        if let Some(version) = version {
            self.invalidate(&digest(id), version).await;
        }
        Ok(answer)
    }

    async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.record.delete(id).await?;
        self.invalidate(&digest(id), DELETED).await;
        Ok(())
    }
}

impl CartStore for CachedDynamoSessions {
    async fn apply(&self, request: CartRequest<'_>) -> Result<CartReply, ApiError> {
        sessions::apply(self, request).await
    }
}

/// The cache key of a session (by its digest, never its id).
fn entry_key(session: &str) -> String {
    format!("{CACHE_KEY_PREFIX}{session}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::dynamodb::Credentialed;
    use shop::cart::{KnownSku, Quantity};
    use shop::services::dynamodb::DynamoServer;
    use shop::services::redis::RedisServer;

    fn add(sku: &str, qty: i64) -> CartOp {
        CartOp::Add(
            KnownSku::new(sku).expect("a catalog SKU"),
            Quantity::new(qty).expect("a quantity"),
        )
    }

    /// A real dynalite and a real Redis; the race staged step by step.
    #[tokio::test]
    async fn stale_cache_fill_cannot_outlive_a_write() {
        let dynamo = DynamoServer::start()
            .await
            .unwrap_or_else(|e| panic!("a private dynalite is needed: {e}"));
        let redis = RedisServer::start()
            .await
            .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}"));
        let settings = SessionSettings {
            ttl: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            secure_cookies: false,
        };
        let record = DynamoSessions::connect(&dynamo.url(), Credentialed::Local, settings)
            .await
            .expect("an SDK client");
        record.prepare().await.expect("the table");
        // Patient: the race below is staged step by step, and a fill
        // that missed a short timeout would be skipped, not raced.
        let store =
            CachedDynamoSessions::new(record.clone(), &redis.url(), Duration::from_secs(10))
                .expect("a cache");
        let id = "a-session-id-for-this-test-only";
        let session = digest(id);
        store
            .change(id, Mode::Create, &add("TEE-RED-M", 1), None)
            .await
            .expect("a new session");

        // A reader misses the cache and reads the record (one shirt)...
        let old = record.snapshot(id).await.expect("read").expect("live");
        // ...then, before it fills the cache, a writer adds a second shirt
        // and invalidates the cached copy.
        store
            .change(id, Mode::Resume, &add("TEE-RED-M", 1), None)
            .await
            .expect("a change");
        // Now the slow reader's fill arrives: refused, the tombstone is
        // newer than what it read.
        assert!(
            !store.fill(&session, &old).await,
            "the stale fill is refused"
        );

        let cart = store.read(id).await.expect("read");
        assert_eq!(
            cart,
            Answer::Cart(vec![("TEE-RED-M".into(), "2".into())]),
            "the cart after the write, not before"
        );
        // And that read filled the cache with the new version: a hit now.
        let hits = store.health.hits.load(Ordering::Relaxed);
        assert_eq!(store.read(id).await.expect("read"), cart);
        assert_eq!(store.health.hits.load(Ordering::Relaxed), hits + 1);
    }
}
