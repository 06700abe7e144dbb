//! Lazy loading (cache-aside) in a Redis of its own.
//!
//! * **Read**: look in the cache; on a miss, read the database and store
//!   the answer with a TTL (plus up to 10% jitter, so keys filled together
//!   do not all expire together and stampede the database).
//! * **Write**: write the primary, commit, *then* replace the cached copy
//!   with the write's *mark*: where the write ended in the primary's WAL.
//!   Dropping the copy rather than writing the new value means two writers
//!   cannot leave the older value in the cache; doing it after the commit
//!   means the next reader cannot refill it from before the write. Two
//!   writes' marks can reach Redis in either order, so the later write's
//!   mark is the one kept: an earlier one replacing it would let a replica
//!   that has replayed only the earlier write fill the entry. For the same
//!   reason an answer filled over a mark keeps that mark's position
//!   (`filled-after <position>`, ahead of the body): a late mark of an
//!   earlier write leaves it be, as it holds that write already.
//! * **A fill cannot put back what a write replaced.** A plain `DEL` would
//!   leave two races. A reader that read the old row just before the
//!   commit could store it just after the delete; and a reader on a
//!   replica that has not replayed the write yet (another shopper, or the
//!   same shopper on another device, whose session knows nothing of it)
//!   would read the old row and cache it for everyone, the writer
//!   included, for a whole TTL. So a miss remembers what it found under
//!   the key (nothing, or a mark), a reader that found a mark reads no
//!   older than the write it marks (the replica only once it has replayed
//!   that far), and the fill is a script (`cache_swap.lua`) that stores
//!   the answer only if the key still holds what the miss found. The
//!   rejected alternative, a version number per cached value as stage 4's
//!   `dynamodb-cached` keeps, needs a counter the database does not have;
//!   the WAL position is that counter, for free.
//! * **Down**: the cache is an optimisation, so a cache that does not
//!   answer is logged and counted, and the request is served from the
//!   database: slower, never an error.
//!
//! What is cached is the response body itself (JSON bytes): a warm hit is
//! one `GET` and no serialisation.
//!
//! Why a separate Redis from the sessions? A cache should evict when full
//! (`allkeys-lru`); a session store must never evict, or carts vanish.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::data_path::Step;
use crate::db::WalPosition;

/// Replace an entry only if it still holds what was found there: how a
/// fill and a write's mark each avoid replacing something newer.
static SWAP_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("cache_swap.lua")));

/// How many times a write looks again when the entry changed between its
/// look and its mark (a fill or another write landed in between). Each
/// such change needs another client's round trip in that gap, so a few
/// tries are plenty; past them the mark is reported as failed.
const MARK_ATTEMPTS: usize = 5;

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
    /// Nothing cached. `mark` is the last write's, if the key holds one:
    /// read no older than it, and fill only while the key still holds it.
    Miss {
        mark: Option<Mark>,
    },
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

/// How a write's mark starts. No cached value (a JSON body) starts so.
const MARK_PREFIX: &[u8] = b"written-at ";

/// How an answer filled over a mark starts: the mark's position, then a
/// newline, then the body.
const FILLED_AFTER_PREFIX: &[u8] = b"filled-after ";

/// A write's mark, as a miss found it under the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The bytes under the key, which a fill must still find there.
    held: Vec<u8>,
    /// Where the write ended in the primary's WAL.
    pub written_at: WalPosition,
}

impl Mark {
    fn of(written_at: &WalPosition) -> Self {
        let mut held = MARK_PREFIX.to_vec();
        held.extend_from_slice(written_at.to_stored().as_bytes());
        Self {
            held,
            written_at: written_at.clone(),
        }
    }

    /// The mark in `held`, if it is one (else a cached value).
    fn read(held: Vec<u8>) -> Result<Self, Vec<u8>> {
        match held.strip_prefix(MARK_PREFIX).map(std::str::from_utf8) {
            Some(Ok(stored)) => Ok(Self {
                written_at: WalPosition::from_stored(stored),
                held,
            }),
            _ => Err(held),
        }
    }

    /// What a fill over this mark stores: the mark's position, then `body`.
    fn filled_with(&self, body: &[u8]) -> Vec<u8> {
        let stored = self.written_at.to_stored();
        let mut value =
            Vec::with_capacity(FILLED_AFTER_PREFIX.len() + stored.len() + 1 + body.len());
        value.extend_from_slice(FILLED_AFTER_PREFIX);
        value.extend_from_slice(stored.as_bytes());
        value.push(b'\n');
        value.extend_from_slice(body);
        value
    }
}

/// A cached answer as stored: its body, and the position of the mark it
/// was filled over, if any.
fn read_answer(held: &[u8]) -> (Option<WalPosition>, &[u8]) {
    held.strip_prefix(FILLED_AFTER_PREFIX)
        .and_then(|rest| {
            let end = rest.iter().position(|&byte| byte == b'\n')?;
            let stored = std::str::from_utf8(&rest[..end]).ok()?;
            Some((Some(WalPosition::from_stored(stored)), &rest[end + 1..]))
        })
        .unwrap_or((None, held))
}

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
            Ok(Ok(Some(held))) => match Mark::read(held) {
                Err(held) => {
                    count(&self.stats.hits);
                    path.push(Step::CacheHit);
                    let body = match read_answer(&held) {
                        (None, _) => held,
                        (Some(_), body) => body.to_vec(),
                    };
                    Lookup::Hit(body)
                }
                Ok(mark) => {
                    count(&self.stats.misses);
                    path.push(Step::CacheMiss);
                    Lookup::Miss { mark: Some(mark) }
                }
            },
            Ok(Ok(None)) => {
                count(&self.stats.misses);
                path.push(Step::CacheMiss);
                Lookup::Miss { mark: None }
            }
            Ok(Err(error)) => self.down(&error.to_string(), path),
            Err(_) => self.down("timed out", path),
        }
    }

    /// Stores `bytes` under `name` with the TTL plus jitter, if the key
    /// still holds what the miss found there (`mark`, or nothing): a write
    /// that landed since has marked it, and this answer may be older.
    pub async fn put(&self, name: &str, bytes: &[u8], mark: Option<&Mark>, path: &mut Vec<Step>) {
        let Some(redis) = &self.redis else { return };
        let mut redis = redis.clone();
        let ttl_ms = self.ttl_ms();
        let mut fill = SWAP_SCRIPT.key(Self::key(name));
        match mark {
            Some(mark) => fill.arg(&mark.held).arg(mark.filled_with(bytes)),
            None => fill.arg(&[] as &[u8]).arg(bytes),
        };
        fill.arg(ttl_ms.saturating_add(jitter(ttl_ms / 10)));
        let call = fill.invoke_async::<bool>(&mut redis);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(true)) => path.push(Step::Cached),
            Ok(Ok(false)) => path.push(Step::NotCached),
            Ok(Err(error)) => {
                count(&self.stats.errors);
                tracing::warn!(%error, "could not fill the cache");
            }
            Err(_) => count(&self.stats.errors),
        }
    }

    /// Replaces the cached copy of `name` with the mark of a write that
    /// ended at `written_at`, unless a later write's mark is there already.
    /// The mark lives as long as a cached copy would: past that, a replica
    /// that far behind is the lesson's outage.
    pub async fn invalidate(&self, name: &str, written_at: &WalPosition, path: &mut Vec<Step>) {
        let Some(redis) = &self.redis else { return };
        let (key, mark) = (Self::key(name), Mark::of(written_at));
        let call = self.place(redis.clone(), &key, &mark);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(true)) => path.push(Step::Invalidated),
            outcome => {
                count(&self.stats.errors);
                let reason = match outcome {
                    Ok(Ok(_)) => "the entry kept changing".to_owned(),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
                tracing::warn!(
                    reason,
                    key = name,
                    "could not invalidate; the stale copy lives until its TTL"
                );
                path.push(Step::InvalidateFailed);
            }
        }
    }

    /// Leaves `mark` under `key` unless the entry holds a write at least
    /// as late: a mark, or an answer filled over one. Looks, then swaps
    /// only what it saw (`cache_swap.lua`); when the entry changed in
    /// between, looks again. `Ok(false)`: it kept changing.
    ///
    /// The rejected alternative, comparing WAL positions inside a script,
    /// is one round trip instead of two, but it would be a second copy of
    /// [`WalPosition::later`] written in Lua; a write goes to the primary
    /// and waits for its commit anyway, so the extra round trip is small.
    async fn place(
        &self,
        mut redis: ConnectionManager,
        key: &str,
        mark: &Mark,
    ) -> redis::RedisResult<bool> {
        for _ in 0..MARK_ATTEMPTS {
            let held: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut redis).await?;
            let held = held.unwrap_or_default();
            let holds = match Mark::read(held) {
                Ok(found) => (Some(found.written_at), found.held),
                Err(answer) => (read_answer(&answer).0, answer),
            };
            let (newest, held) = holds;
            if let Some(newest) = newest
                && WalPosition::later(Some(&newest), Some(&mark.written_at)) == Some(&newest)
            {
                return Ok(true);
            }
            let placed = SWAP_SCRIPT
                .key(key)
                .arg(held)
                .arg(&mark.held)
                .arg(self.ttl_ms())
                .invoke_async::<bool>(&mut redis)
                .await?;
            if placed {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;
    use shop::services::redis::{RedisRole, RedisServer};

    fn cache_in(server: &RedisServer) -> Cache {
        Cache::connect(
            Some(&server.url()),
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
        .expect("a cache client")
    }

    async fn cache_server() -> RedisServer {
        RedisServer::start_as(RedisRole::Cache)
            .await
            .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}"))
    }

    fn mark_of(lookup: Lookup) -> Option<Mark> {
        match lookup {
            Lookup::Miss { mark } => mark,
            other => panic!("expected a miss, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_fill_of_a_read_made_before_a_write_is_refused() {
        let server = cache_server().await;
        let cache = cache_in(&server);
        let mut path = Vec::new();
        // A reader misses and goes to the database for the old row...
        let found = mark_of(cache.get("profile:1", &mut path).await);
        assert_eq!(found, None);
        // ...a writer commits and marks the key...
        let written_at = WalPosition::from_stored("1:0/3000148");
        cache.invalidate("profile:1", &written_at, &mut path).await;
        // ...and the reader's fill, of the row from before, comes too late.
        cache
            .put("profile:1", br#"{"name":"old"}"#, found.as_ref(), &mut path)
            .await;
        assert_eq!(path.last(), Some(&Step::NotCached));
        let mark = mark_of(cache.get("profile:1", &mut path).await).expect("the write's mark");
        assert_eq!(mark.written_at, written_at);
    }

    #[tokio::test]
    async fn a_fill_of_a_read_made_after_the_write_it_found_is_kept() {
        let server = cache_server().await;
        let cache = cache_in(&server);
        let mut path = Vec::new();
        let written_at = WalPosition::from_stored("1:0/3000148");
        cache.invalidate("profile:1", &written_at, &mut path).await;
        let found = mark_of(cache.get("profile:1", &mut path).await);
        assert_eq!(
            found.as_ref().map(|mark| &mark.written_at),
            Some(&written_at),
            "the reader learns how new its answer must be"
        );
        cache
            .put("profile:1", br#"{"name":"new"}"#, found.as_ref(), &mut path)
            .await;
        assert_eq!(path.last(), Some(&Step::Cached));
        match cache.get("profile:1", &mut path).await {
            Lookup::Hit(bytes) => assert_eq!(bytes, br#"{"name":"new"}"#),
            other => panic!("expected a hit, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_earlier_writes_mark_landing_late_keeps_the_later_one() {
        let server = cache_server().await;
        let cache = cache_in(&server);
        let mut path = Vec::new();
        // Two writes commit, the second further along the WAL, but their
        // marks reach Redis in the other order...
        let first = WalPosition::from_stored("1:0/3000148");
        let second = WalPosition::from_stored("1:0/A000000");
        cache.invalidate("profile:1", &second, &mut path).await;
        cache.invalidate("profile:1", &first, &mut path).await;
        assert_eq!(path, [Step::Invalidated, Step::Invalidated]);
        // ...and a reader still learns that it must read past the second:
        // a replica that has replayed only the first has the old profile.
        let found = mark_of(cache.get("profile:1", &mut path).await).expect("a mark");
        assert_eq!(found.written_at, second);
        // A later write (here, after a failover: a new timeline) still
        // replaces it.
        let after_failover = WalPosition::from_stored("2:0/5000000");
        cache
            .invalidate("profile:1", &after_failover, &mut path)
            .await;
        let found = mark_of(cache.get("profile:1", &mut path).await).expect("a mark");
        assert_eq!(found.written_at, after_failover);
    }

    #[tokio::test]
    async fn an_earlier_writes_mark_landing_late_keeps_an_answer_read_after_a_later_write() {
        let server = cache_server().await;
        let cache = cache_in(&server);
        let mut path = Vec::new();
        let first = WalPosition::from_stored("1:0/3000148");
        let second = WalPosition::from_stored("1:0/A000000");
        // The second write marks the entry; a reader finds the mark, reads
        // past it, and fills the entry with what it read...
        cache.invalidate("profile:1", &second, &mut path).await;
        let found = mark_of(cache.get("profile:1", &mut path).await);
        cache
            .put(
                "profile:1",
                br#"{"name":"second"}"#,
                found.as_ref(),
                &mut path,
            )
            .await;
        assert_eq!(path.last(), Some(&Step::Cached));
        // ...then the first write's mark, held up, lands. The answer holds
        // that write already: it stays, and a reader gets the body alone.
        cache.invalidate("profile:1", &first, &mut path).await;
        match cache.get("profile:1", &mut path).await {
            Lookup::Hit(bytes) => assert_eq!(bytes, br#"{"name":"second"}"#),
            other => panic!("the answer read after the second write is kept: {other:?}"),
        }
        // A write after the one it was read past replaces it, as ever.
        let third = WalPosition::from_stored("1:0/B000000");
        cache.invalidate("profile:1", &third, &mut path).await;
        let found = mark_of(cache.get("profile:1", &mut path).await).expect("a mark");
        assert_eq!(found.written_at, third);
    }
}
