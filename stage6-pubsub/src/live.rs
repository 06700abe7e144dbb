//! The live layer's writes and reads in Redis: stock, checkout, rooms,
//! flash prices, presence, snapshots and stream backlogs.
//!
//! Every change is one Lua script that also numbers the update and sends it
//! as the fan-out mode says (`lua/publish.lua`): `PUBLISH` (pub/sub),
//! `XADD … MAXLEN ~` (streams), or nothing, when only the instance itself
//! delivers to its own sockets (local, room-sticky). The stock levels live
//! in the sessions' Redis, beside the carts, so a checkout (take the stock,
//! empty the cart) is one atomic script.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use redis::aio::ConnectionManager;
use serde::Serialize;
use shop::{Catalog, IdempotencyKey, StageError};
use stage4::sessions::Session;

use crate::fanout::{Fanout, PubsubChannel};
use crate::hub::{Hub, Update};
use crate::topic::{PREFIX, Topic, stream_id};

/// How many entries a topic's stream keeps (about: `MAXLEN ~`).
pub(crate) const STREAM_LENGTH: usize = 1000;
/// How long a checkout's receipt is kept for a retry with the same key.
const RECEIPT_KEPT: Duration = Duration::from_secs(600);
/// How long a room member stays present without a refresh.
pub(crate) const PRESENCE_FOR: Duration = Duration::from_secs(30);
/// The most names a presence update carries (with the count of everyone):
/// the most recently seen first. See `lua/presence.lua` for why not all.
pub const PRESENCE_NAMES: usize = 20;

const SEQS: &str = "myclothes:live:seq";
const STOCK: &str = "myclothes:stock";
const FLASH: &str = "myclothes:flash";
const EPOCH: &str = "myclothes:live:epoch";

static CHECKOUT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/publish.lua"),
        include_str!("lua/checkout.lua")
    ))
});
static SAY: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/publish.lua"),
        include_str!("lua/say.lua")
    ))
});
static PRICE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/publish.lua"),
        include_str!("lua/price.lua")
    ))
});
static RESTORE: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/restore.lua")));
static PRESENCE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/publish.lua"),
        include_str!("lua/presence.lua")
    ))
});

/// Stage 6's own failures.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// 409 `sold_out`: a line of the cart is more than is left; nothing
    /// was bought.
    #[error("only {left} of {sku} left; nothing was bought")]
    SoldOut { sku: String, left: i64 },
    /// 409 `empty_cart`: there is nothing to buy.
    #[error("your cart is empty")]
    EmptyCart,
    /// 403 `cross_site`: a page of another site tried to open the shop's
    /// WebSocket.
    #[error("this socket is only for the shop's own pages")]
    CrossSite,
    /// 503 `live_store_unavailable`: Redis did not answer in time. A
    /// checkout may still happen when it recovers (retry it: an emptied
    /// cart cannot be bought twice).
    #[error("the live store is not answering right now; please try again in a moment")]
    Unavailable,
}

impl StageError for LiveError {
    fn status(&self) -> axum::http::StatusCode {
        match self {
            Self::SoldOut { .. } | Self::EmptyCart => axum::http::StatusCode::CONFLICT,
            Self::CrossSite => axum::http::StatusCode::FORBIDDEN,
            Self::Unavailable => axum::http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::SoldOut { .. } => "sold_out",
            Self::EmptyCart => "empty_cart",
            Self::CrossSite => "cross_site",
            Self::Unavailable => "live_store_unavailable",
        }
    }
}

/// One SKU's live state.
#[derive(Clone, Debug, Serialize)]
pub struct StockLevel {
    pub sku: String,
    pub stock: i64,
    /// The flash price, when a sale is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_cents: Option<i64>,
    /// The number of the latest update on this SKU's topic.
    pub seq: u64,
    /// That update's stream id (streams mode), to resume from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// What a page is sent to catch up: the latest value of each stock it
/// watches, and the latest number of each room it is in.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub r#type: &'static str,
    pub epoch: String,
    pub stocks: Vec<StockLevel>,
    pub rooms: Vec<RoomPosition>,
}

/// What a checkout bought: `{"bought":[{"sku","qty","left"}]}`.
#[derive(Debug)]
pub struct Receipt {
    pub body: serde_json::Value,
    /// Whether this is the answer to an earlier call with the same key.
    pub replayed: bool,
}

/// A room's latest update number.
#[derive(Clone, Debug, Serialize)]
pub struct RoomPosition {
    pub room: String,
    pub seq: u64,
    /// That update's stream id (streams mode), to resume from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The live layer of one instance.
#[derive(Clone)]
pub struct Live {
    redis: ConnectionManager,
    fanout: Fanout,
    channel: PubsubChannel,
    epoch: Arc<str>,
    hub: Arc<Hub>,
    timeout: Duration,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("fanout", &self.fanout)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Connects to the sessions' Redis: learns (or starts) the epoch and
    /// stocks every SKU not stocked yet with `initial_stock`.
    pub async fn connect(
        url: &str,
        (fanout, channel): (Fanout, PubsubChannel),
        timeout: Duration,
        hub: Arc<Hub>,
        initial_stock: u32,
    ) -> Result<Self, redis::RedisError> {
        let mut redis = shop::services::redis::client(url, timeout)?;
        let mut fresh = [0u8; 6];
        getrandom::fill(&mut fresh)
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?;
        let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(EPOCH).arg(&fresh).arg("NX").ignore();
        for product in Catalog::get().products() {
            pipe.cmd("HSETNX")
                .arg(STOCK)
                .arg(&product.sku)
                .arg(initial_stock)
                .ignore();
        }
        pipe.cmd("GET").arg(EPOCH);
        let (epoch,): (String,) = pipe.query_async(&mut redis).await?;
        Ok(Self {
            redis,
            fanout,
            channel,
            epoch: Arc::from(epoch),
            hub,
            timeout,
        })
    }

    /// The connection, for the ticker's lease.
    pub(crate) fn redis(&self) -> ConnectionManager {
        self.redis.clone()
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn fanout(&self) -> Fanout {
        self.fanout
    }

    /// Raises the topics' counters to at least the numbers this instance
    /// has delivered (see `lua/restore.lua`): called before live updates
    /// resume after an outage.
    pub(crate) async fn restore_numbers(&self, seen: &[(Topic, u64)]) -> Result<(), LiveError> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut invocation = RESTORE.key(SEQS);
        for (topic, number) in seen {
            invocation.arg(topic.to_string()).arg(*number);
        }
        let mut redis = self.redis.clone();
        let raised: u64 = self.within(invocation.invoke_async(&mut redis)).await?;
        if raised > 0 {
            tracing::warn!(
                raised,
                "Redis came back without its last writes: update numbers put back"
            );
        }
        Ok(())
    }

    /// ARGV[1..=4] of every publishing script.
    fn common_args(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        let mode = match (self.fanout, self.channel) {
            (Fanout::Pubsub, PubsubChannel::Shared) => "pubsub-shared",
            (fanout, _) => fanout.as_str(),
        };
        invocation
            .arg(mode)
            .arg(&*self.epoch)
            .arg(STREAM_LENGTH)
            .arg(PREFIX);
    }

    async fn within<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LiveError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                tracing::warn!(%error, "live store failed");
                Err(LiveError::Unavailable)
            }
            Err(_) => {
                tracing::warn!("live store did not answer in time");
                Err(LiveError::Unavailable)
            }
        }
    }

    /// Where updates go once published: only to this instance's own
    /// sockets when the mode has no shared channel.
    fn published(&self, updates: impl IntoIterator<Item = String>) {
        if self.fanout.through_redis() {
            return;
        }
        for json in updates {
            if let Some(topic) = topic_of(&json) {
                if let Some(update) = Update::parse(json) {
                    self.hub.deliver(&topic, &update);
                }
            }
        }
    }

    /// Buys the session's whole cart: stock comes off every line or none.
    /// With an idempotency key, a second call answers with the first
    /// receipt and buys nothing.
    pub async fn checkout(
        &self,
        session: &Session,
        key: Option<&IdempotencyKey>,
    ) -> Result<Receipt, LiveError> {
        let keys = session.keys();
        let mut invocation = CHECKOUT.key(SEQS);
        invocation.key(STOCK).key(&keys.cart);
        if let Some(key) = key {
            // Named after the cart key (a digest of the session id), never the id.
            invocation.key(format!("{}:checkout:{}", keys.cart, key.as_str()));
        }
        self.common_args(&mut invocation);
        invocation.arg(u64::try_from(RECEIPT_KEPT.as_millis()).unwrap_or(u64::MAX));
        let mut redis = self.redis.clone();
        let reply: Vec<String> = self.within(invocation.invoke_async(&mut redis)).await?;
        let mut reply = reply.into_iter();
        let outcome = reply.next();
        match outcome.as_deref() {
            Some(first @ ("ok" | "replay")) => {
                let receipt = reply.next().unwrap_or_default();
                let body = serde_json::from_str(&receipt).map_err(|error| {
                    tracing::error!(%error, "the checkout script's receipt is not JSON");
                    LiveError::Unavailable
                })?;
                self.published(reply);
                Ok(Receipt {
                    body,
                    replayed: first == "replay",
                })
            }
            Some("empty") => Err(LiveError::EmptyCart),
            Some("short") => {
                let sku = reply.next().unwrap_or_default();
                let left = reply.next().and_then(|l| l.parse().ok()).unwrap_or(0);
                Err(LiveError::SoldOut { sku, left })
            }
            other => {
                tracing::error!(?other, "the checkout script answered something odd");
                Err(LiveError::Unavailable)
            }
        }
    }

    /// Says `text` in `room` as `from`.
    pub async fn say(&self, room: &str, from: &str, text: &str) -> Result<(), LiveError> {
        let mut invocation = SAY.key(SEQS);
        self.common_args(&mut invocation);
        invocation.arg(room).arg(from).arg(text);
        let mut redis = self.redis.clone();
        let json: String = self.within(invocation.invoke_async(&mut redis)).await?;
        self.published([json]);
        Ok(())
    }

    /// Puts `sku` on a flash sale at `price_cents`.
    pub async fn set_price(&self, sku: &str, price_cents: u32) -> Result<(), LiveError> {
        let mut invocation = PRICE.key(SEQS);
        invocation.key(FLASH).key(STOCK);
        self.common_args(&mut invocation);
        invocation.arg(sku).arg(price_cents);
        let mut redis = self.redis.clone();
        let json: String = self.within(invocation.invoke_async(&mut redis)).await?;
        self.published([json]);
        Ok(())
    }

    /// A room member arrives, is still there, or leaves.
    pub async fn presence(&self, room: &str, member: &str, what: &str) -> Result<(), LiveError> {
        let mut invocation = PRESENCE.key(SEQS);
        invocation.key(format!("{PREFIX}presence:{room}"));
        self.common_args(&mut invocation);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        invocation
            .arg(room)
            .arg(member)
            .arg(what)
            .arg(now_ms)
            .arg(u64::try_from(PRESENCE_FOR.as_millis()).unwrap_or(u64::MAX))
            .arg(PRESENCE_NAMES);
        let mut redis = self.redis.clone();
        let json: Option<String> = self.within(invocation.invoke_async(&mut redis)).await?;
        self.published(json);
        Ok(())
    }

    /// The latest state of `skus` and the latest numbers of `rooms`.
    pub async fn snapshot(&self, skus: &[String], rooms: &[String]) -> Result<Snapshot, LiveError> {
        let mut redis = self.redis.clone();
        let stock_topics: Vec<Topic> = skus.iter().map(|s| Topic::Stock(s.clone())).collect();
        let room_topics: Vec<Topic> = rooms.iter().map(|r| Topic::Room(r.clone())).collect();
        let names = |topics: &[Topic]| topics.iter().map(Topic::to_string).collect::<Vec<_>>();
        // One transaction (MULTI … EXEC), so that every number and stream
        // id is of the same moment: a publishing script cannot run between
        // two of these reads.
        let mut pipe = redis::pipe();
        pipe.atomic();
        // HMGET needs at least one field: ask for a name nothing has.
        let or_none = |list: Vec<String>| {
            if list.is_empty() {
                vec!["-".to_owned()]
            } else {
                list
            }
        };
        pipe.cmd("HMGET").arg(STOCK).arg(or_none(skus.to_vec()));
        pipe.cmd("HMGET").arg(FLASH).arg(or_none(skus.to_vec()));
        pipe.cmd("HMGET")
            .arg(SEQS)
            .arg(or_none(names(&stock_topics)));
        pipe.cmd("HMGET")
            .arg(SEQS)
            .arg(or_none(names(&room_topics)));
        let streams = self.fanout == Fanout::Streams;
        if streams {
            // Where each topic's stream is now: a page that got nothing yet
            // resumes from here.
            for topic in stock_topics.iter().chain(&room_topics) {
                pipe.cmd("XREVRANGE")
                    .arg(topic.channel())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
            }
        }
        let replies: Vec<redis::Value> = self.within(pipe.query_async(&mut redis)).await?;
        let mut replies = replies.into_iter();
        type Column = Vec<Option<i64>>;
        let mut column = || -> Column {
            replies
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default()
        };
        let (stock, flash, stock_seqs, room_seqs) = (column(), column(), column(), column());
        let mut ids = replies.map(|reply| {
            type Entries = Vec<(String, Vec<(String, String)>)>;
            redis::from_redis_value::<Entries>(reply)
                .ok()
                .and_then(|entries| entries.into_iter().next())
                .map_or_else(|| "0-0".to_owned(), |(id, _)| id)
        });
        let mut next_id = || if streams { ids.next() } else { None };
        let stocks = skus
            .iter()
            .enumerate()
            .map(|(i, sku)| StockLevel {
                sku: sku.clone(),
                stock: stock.get(i).copied().flatten().unwrap_or(0),
                price_cents: flash.get(i).copied().flatten(),
                seq: seq_of(stock_seqs.get(i).copied().flatten()),
                id: next_id(),
            })
            .collect();
        let rooms = rooms
            .iter()
            .enumerate()
            .map(|(i, room)| RoomPosition {
                room: room.clone(),
                seq: seq_of(room_seqs.get(i).copied().flatten()),
                id: next_id(),
            })
            .collect();
        Ok(Snapshot {
            r#type: "snapshot",
            epoch: self.epoch.to_string(),
            stocks,
            rooms,
        })
    }

    /// What a topic's stream holds after `after` (a stream id), oldest
    /// first: what a page that was away missed.
    pub async fn backlog(
        &self,
        topic: &Topic,
        after: &str,
    ) -> Result<Vec<(String, String)>, LiveError> {
        if stream_id(after).is_none() {
            return Ok(Vec::new());
        }
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("XRANGE");
        command
            .arg(topic.channel())
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(STREAM_LENGTH);
        let entries: Vec<(String, Vec<(String, String)>)> =
            self.within(command.query_async(&mut redis)).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let json = fields.into_iter().find(|(name, _)| name == "m")?.1;
                Some((id, json))
            })
            .collect())
    }

    /// The newest entry of a topic's stream: its id and update number.
    pub async fn newest(&self, topic: &Topic) -> Result<Option<(String, u64)>, LiveError> {
        #[derive(serde::Deserialize)]
        struct Numbered {
            seq: u64,
        }
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("XREVRANGE");
        command
            .arg(topic.channel())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let entries: Vec<(String, Vec<(String, String)>)> =
            self.within(command.query_async(&mut redis)).await?;
        Ok(entries.into_iter().next().and_then(|(id, fields)| {
            let json = fields.into_iter().find(|(name, _)| name == "m")?.1;
            let seq = serde_json::from_str::<Numbered>(&json).ok()?.seq;
            Some((id, seq))
        }))
    }

    /// Whether Redis answers now (for the hub's pause and resume).
    pub async fn ping(&self) -> bool {
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("PING");
        command.arg("live");
        matches!(self.within(command.query_async::<String>(&mut redis)).await, Ok(ref pong) if pong == "live")
    }
}

fn seq_of(value: Option<i64>) -> u64 {
    value.and_then(|v| u64::try_from(v).ok()).unwrap_or(0)
}

/// The topic an update's JSON names.
pub(crate) fn topic_of(json: &str) -> Option<Topic> {
    #[derive(serde::Deserialize)]
    struct Named {
        topic: String,
    }
    Topic::parse(&serde_json::from_str::<Named>(json).ok()?.topic)
}
