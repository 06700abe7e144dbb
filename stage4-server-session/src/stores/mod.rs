//! Where the sessions are kept: one flag, `--store`, and a module per
//! choice.
//!
//! | `--store` | what AWS runs | a change is atomic by | after `kill -9` and a restart |
//! | --- | --- | --- | --- |
//! | `redis` (default) | ElastiCache for Redis | one Lua script | every cart (append-only file) |
//! | `memcached` | ElastiCache for Memcached | `gets` + `cas`, retried | no cart at all |
//! | `postgres` | RDS for PostgreSQL | a transaction, the session's row locked | every cart (write-ahead log) |
//! | `dynamodb` | DynamoDB (three zones) | one conditional `UpdateItem` | every cart |
//! | `dynamodb-cached` | DynamoDB, and ElastiCache in front | the record's `UpdateItem`; the cache is invalidated after | every cart (the record) |
//!
//! Each store implements [`crate::sessions::SessionStore`] (read, change,
//! delete); what a session *is* (cookies, ids, idempotency, the notices) is
//! written once, in [`crate::sessions`]. [`Store`] is the one a stage-4
//! instance was started with.

pub mod cached;
pub mod dynamodb;
pub mod memcached;
pub mod postgres;
pub mod redis;

use std::collections::HashMap;

use cookie::{Cookie, CookieJar};
use serde::Serialize;
use shop::cart::CartOp;
use shop::{ApiError, CartReply, CartRequest, CartStore, IdempotencyKey};

use crate::sessions::{self, Answer, Mode, SessionSettings, SessionStore};
pub use cached::CachedDynamoSessions;
pub use dynamodb::DynamoSessions;
pub use memcached::MemcachedSessions;
pub use postgres::PostgresSessions;
pub use redis::RedisSessions;

/// The choices of `--store`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// Redis: durable with its append-only file, atomic by Lua script.
    #[default]
    Redis,
    /// Memcached: memory only, evicts when full, atomic by `gets`/`cas`.
    Memcached,
    /// PostgreSQL: durable, atomic by transaction, a row per cart line.
    Postgres,
    /// DynamoDB: durable, atomic by conditional update, an item per session.
    Dynamodb,
    /// DynamoDB as the record, Redis as a read-through cache in front.
    DynamodbCached,
}

impl StoreKind {
    /// The name `--store` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Memcached => "memcached",
            Self::Postgres => "postgres",
            Self::Dynamodb => "dynamodb",
            Self::DynamodbCached => "dynamodb-cached",
        }
    }
}

/// The session store a stage-4 instance was started with.
#[derive(Debug)]
pub enum Store {
    Redis(RedisSessions),
    Memcached(MemcachedSessions),
    Postgres(PostgresSessions),
    Dynamodb(DynamoSessions),
    DynamodbCached(CachedDynamoSessions),
}

impl Store {
    /// Ends the session the request names (see [`sessions::end`]).
    pub async fn end(&self, cookies: &CookieJar) -> Result<Cookie<'static>, ApiError> {
        sessions::end(self, cookies).await
    }

    /// What the store itself reports, for `/metrics`: its name, and for
    /// Memcached its counters (`evictions` above all: carts it dropped to
    /// make room, without telling anyone).
    pub async fn stats(&self) -> Result<(StoreKind, HashMap<String, String>), ApiError> {
        match self {
            Self::Redis(_) => Ok((StoreKind::Redis, HashMap::new())),
            Self::Memcached(store) => Ok((StoreKind::Memcached, store.stats().await?)),
            Self::Postgres(_) => Ok((StoreKind::Postgres, HashMap::new())),
            Self::Dynamodb(_) => Ok((StoreKind::Dynamodb, HashMap::new())),
            Self::DynamodbCached(store) => Ok((StoreKind::DynamodbCached, store.stats())),
        }
    }
}

/// Every store's future is boxed. An `async fn` over an enum is as large as
/// the largest of its arms' futures, whichever store runs: with the AWS
/// SDK's, a cart request's future was 24 KB (Redis's read alone: 0.6 KB),
/// allocated zeroed and copied on every request of every store. `perf` on
/// a Redis-backed instance under cart reads: `memmove` fell from 6.4 % to
/// 2.3 % of its samples with the box. One small allocation instead.
impl SessionStore for Store {
    fn settings(&self) -> &SessionSettings {
        match self {
            Self::Redis(store) => store.settings(),
            Self::Memcached(store) => store.settings(),
            Self::Postgres(store) => store.settings(),
            Self::Dynamodb(store) => store.settings(),
            Self::DynamodbCached(store) => store.settings(),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Redis(store) => store.label(),
            Self::Memcached(store) => store.label(),
            Self::Postgres(store) => store.label(),
            Self::Dynamodb(store) => store.label(),
            Self::DynamodbCached(store) => store.label(),
        }
    }

    async fn read(&self, id: &str) -> Result<Answer, ApiError> {
        match self {
            Self::Redis(store) => Box::pin(store.read(id)).await,
            Self::Memcached(store) => Box::pin(store.read(id)).await,
            Self::Postgres(store) => Box::pin(store.read(id)).await,
            Self::Dynamodb(store) => Box::pin(store.read(id)).await,
            Self::DynamodbCached(store) => Box::pin(store.read(id)).await,
        }
    }

    async fn change(
        &self,
        id: &str,
        mode: Mode,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, ApiError> {
        match self {
            Self::Redis(store) => Box::pin(store.change(id, mode, op, key)).await,
            Self::Memcached(store) => Box::pin(store.change(id, mode, op, key)).await,
            Self::Postgres(store) => Box::pin(store.change(id, mode, op, key)).await,
            Self::Dynamodb(store) => Box::pin(store.change(id, mode, op, key)).await,
            Self::DynamodbCached(store) => Box::pin(store.change(id, mode, op, key)).await,
        }
    }

    async fn delete(&self, id: &str) -> Result<(), ApiError> {
        match self {
            Self::Redis(store) => Box::pin(store.delete(id)).await,
            Self::Memcached(store) => Box::pin(store.delete(id)).await,
            Self::Postgres(store) => Box::pin(store.delete(id)).await,
            Self::Dynamodb(store) => Box::pin(store.delete(id)).await,
            Self::DynamodbCached(store) => Box::pin(store.delete(id)).await,
        }
    }
}

impl CartStore for Store {
    async fn apply(&self, request: CartRequest<'_>) -> Result<CartReply, ApiError> {
        sessions::apply(self, request).await
    }
}
