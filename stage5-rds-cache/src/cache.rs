//! Lazy loading (cache-aside) in a Redis of its own.
//!
//! * **Read**: look in the cache; on a miss, read the database and store
//!   the answer with a TTL (plus up to 10% jitter, so keys filled together
//!   do not all expire together and stampede the database).
//! * **Write**: write the primary, commit, *then* delete the key. Deleting
//!   rather than updating it means a concurrent writer cannot leave its
//!   older value in the cache; deleting after the commit means the next
//!   reader cannot refill the cache from before the write. (One race is
//!   left: a reader that read the old row just before the commit may store
//!   it just after the delete. The TTL bounds how long that lasts.)
//! * **Down**: the cache is an optimisation, so a cache that does not
//!   answer is logged and counted, and the request is served from the
//!   database: slower, never an error.
//!
//! What is cached is the response body itself (JSON bytes): a warm hit is
//! one `GET` and no serialisation.
//!
//! Why a separate Redis from the sessions? A cache should evict when full
//! (`allkeys-lru`); a session store must never evict, or carts vanish.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::data_path::Step;

/// What the cache counts, for `/metrics` and the benchmarks.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Calls that failed or timed out.
    pub errors: AtomicU64,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Vec<u8>),
    Miss,
    /// The cache did not answer (or caching is off): go to the database,
    /// and do not try to fill the cache.
    Unavailable,
}

/// The cache, or none (`--no-cache`).
#[derive(Clone)]
pub struct Cache {
    redis: Option<ConnectionManager>,
    ttl: Duration,
    timeout: Duration,
    stats: Arc<CacheStats>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("enabled", &self.redis.is_some())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Every cache key starts with this.
pub const CACHE_KEY_PREFIX: &str = "myclothes:cache:";

impl Cache {
    /// A cache in the Redis at `url` (`None`: caching off), through the
    /// same kind of client as the sessions ([`shop::services::redis::client`]).
    pub fn connect(
        url: Option<&str>,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let redis = url
            .map(|url| shop::services::redis::client(url, timeout))
            .transpose()?;
        Ok(Self {
            redis,
            ttl,
            timeout,
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The full key for `name` (e.g. `profile:42`).
    pub fn key(name: &str) -> String {
        format!("{CACHE_KEY_PREFIX}{name}")
    }

    /// Looks `name` up, recording the step in `path`.
    pub async fn get(&self, name: &str, path: &mut Vec<Step>) -> Lookup {
        let Some(redis) = &self.redis else {
            path.push(Step::CacheOff);
            return Lookup::Unavailable;
        };
        let mut redis = redis.clone();
        let mut command = redis::cmd("GET");
        command.arg(Self::key(name));
        let call = command.query_async::<Option<Vec<u8>>>(&mut redis);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(Some(bytes))) => {
                count(&self.stats.hits);
                path.push(Step::CacheHit);
                Lookup::Hit(bytes)
            }
            Ok(Ok(None)) => {
                count(&self.stats.misses);
                path.push(Step::CacheMiss);
                Lookup::Miss
            }
            Ok(Err(error)) => self.down(&error.to_string(), path),
            Err(_) => self.down("timed out", path),
        }
    }

    /// Stores `bytes` under `name` with the TTL plus jitter.
    pub async fn put(&self, name: &str, bytes: &[u8], path: &mut Vec<Step>) {
        let Some(redis) = &self.redis else { return };
        let mut redis = redis.clone();
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut command = redis::cmd("SET");
        command
            .arg(Self::key(name))
            .arg(bytes)
            .arg("PX")
            .arg(ttl_ms.saturating_add(jitter(ttl_ms / 10)));
        let call = command.query_async::<()>(&mut redis);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(())) => path.push(Step::Cached),
            Ok(Err(error)) => {
                count(&self.stats.errors);
                tracing::warn!(%error, "could not fill the cache");
            }
            Err(_) => count(&self.stats.errors),
        }
    }

    /// Deletes `name` after a write.
    pub async fn invalidate(&self, name: &str, path: &mut Vec<Step>) {
        let Some(redis) = &self.redis else { return };
        let mut redis = redis.clone();
        let mut command = redis::cmd("DEL");
        command.arg(Self::key(name));
        let call = command.query_async::<i64>(&mut redis);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(_)) => path.push(Step::Invalidated),
            outcome => {
                count(&self.stats.errors);
                tracing::warn!(
                    ok = outcome.is_ok(),
                    key = name,
                    "could not invalidate; the stale copy lives until its TTL"
                );
                path.push(Step::InvalidateFailed);
            }
        }
    }

    fn down(&self, reason: &str, path: &mut Vec<Step>) -> Lookup {
        count(&self.stats.errors);
        tracing::warn!(reason, "cache unavailable; serving from the database");
        path.push(Step::CacheDown);
        Lookup::Unavailable
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A random number of milliseconds in `0..=max`.
fn jitter(max: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if max == 0 || getrandom::fill(&mut bytes).is_err() {
        return 0;
    }
    u64::from_le_bytes(bytes) % (max + 1)
}
