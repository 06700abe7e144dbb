//! How updates published on other instances reach this one's hub.
//!
//! * **pubsub**: one connection (RESP3, so subscribed messages arrive as
//!   push messages beside ordinary replies) holds one subscription per
//!   topic some local socket watches. One task issues every SUBSCRIBE and
//!   UNSUBSCRIBE, in the order the hub's counts made them; another hands
//!   every message to the hub at once (it never waits on a page: Redis cuts
//!   a subscriber whose output buffer passes `client-output-buffer-limit
//!   pubsub`, 32 MB by default). A disconnection is a **gap**: whatever was
//!   published meanwhile is gone, so the pages are told and get a snapshot
//!   when the connection is back.
//!   With `--pubsub-channel shared`, one channel carries every topic
//!   instead, as classic socket.io's adapter does: every instance hears
//!   every update and drops what nobody local watches (the README
//!   compares the Redis deliveries of both).
//! * **streams**: one task reads every watched topic's stream with
//!   `XREAD BLOCK`, from the last id it delivered. A disconnection only
//!   delays: reading resumes where it stopped.
//! * **local** and **room-sticky**: nothing comes from Redis; each
//!   instance delivers what it publishes to its own sockets only.
//!
//! In every mode a heartbeat (`PING` every half second) tells the hub
//! whether Redis answers, and so whether live updates are paused.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{IntoConnectionInfo, ProtocolVersion, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::fanout::{Fanout, PubsubChannel};
use crate::hub::Order;
use crate::hub::{Hub, Update};
use crate::live::Live;
use crate::subscriptions::Change;
use crate::topic::{PREFIX, Topic};

/// How often Redis is asked whether it is there.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long one `XREAD` waits for something new.
const READ_BLOCK_MS: u64 = 100;

/// The background tasks of one instance's bus; they stop when dropped.
#[derive(Debug, Default)]
pub struct Bus {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Bus {
    /// Starts the tasks the fan-out mode needs, reading subscription
    /// changes from `changes`.
    pub fn start(
        (fanout, channels): (Fanout, PubsubChannel),
        url: &str,
        timeout: Duration,
        hub: &Arc<Hub>,
        live: &Live,
        changes: mpsc::UnboundedReceiver<Order>,
    ) -> Result<Self, redis::RedisError> {
        let mut bus = Self::default();
        match fanout {
            Fanout::Pubsub => {
                let (pushes, received) = mpsc::unbounded_channel();
                let info = url.into_connection_info()?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(settings))?;
                let config = ConnectionManagerConfig::new()
                    .set_push_sender(pushes)
                    .set_automatic_resubscription()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_max_delay(Duration::from_secs(1));
                let subscriber = ConnectionManager::new_lazy_with_config(client, config)?;
                let (resync, resyncs) = mpsc::channel(1);
                bus.tasks.push(tokio::spawn(subscribe(
                    subscriber.clone(),
                    Arc::clone(hub),
                    (changes, resyncs),
                    channels,
                )));
                bus.tasks
                    .push(tokio::spawn(listen(received, Arc::clone(hub))));
                bus.tasks.push(tokio::spawn(heartbeat(
                    Pinger::Subscriber(subscriber, timeout, live.clone()),
                    Arc::clone(hub),
                    Some(resync),
                )));
            }
            Fanout::Streams => {
                let client = redis::Client::open(url)?;
                bus.tasks.push(tokio::spawn(read_streams(
                    client,
                    timeout,
                    Arc::clone(hub),
                    changes,
                )));
                bus.tasks.push(tokio::spawn(heartbeat(
                    Pinger::Live(live.clone()),
                    Arc::clone(hub),
                    None,
                )));
            }
            Fanout::Local | Fanout::RoomSticky => {
                drop(changes);
                bus.tasks.push(tokio::spawn(heartbeat(
                    Pinger::Live(live.clone()),
                    Arc::clone(hub),
                    None,
                )));
            }
        }
        Ok(bus)
    }
}

/// A request to subscribe again to everything watched (Redis is back
/// after a gap), answered once Redis has confirmed it.
type Resync = oneshot::Sender<bool>;

/// The one task that tells Redis what to subscribe to. On a resync it
/// subscribes again to everything watched now, and answers whether that
/// worked: live updates resume only once the subscriptions are back, or
/// the first updates after an outage would be lost.
async fn subscribe(
    mut redis: ConnectionManager,
    hub: Arc<Hub>,
    (mut changes, mut resyncs): (mpsc::UnboundedReceiver<Order>, mpsc::Receiver<Resync>),
    channels: PubsubChannel,
) {
    // Every channel Redis may hold for us: added when a SUBSCRIBE is
    // sent, removed only when an UNSUBSCRIBE is confirmed. A resync
    // names these channels instead of sending UNSUBSCRIBE with no
    // arguments: how many confirmations that one gets depends on what the
    // server holds, which after a reconnect the client can only guess
    // (redis-rs issue 2423), and a wrong guess shifts every later reply.
    let mut held: HashSet<String> = HashSet::new();
    loop {
        let outcome = tokio::select! {
            biased;
            change = changes.recv() => match (change, channels) {
                (None, _) => return,
                (Some((Change::Subscribe(topic), number)), PubsubChannel::PerTopic) => {
                    held.insert(topic.channel());
                    let outcome = redis.subscribe(topic.channel()).await;
                    if outcome.is_ok() {
                        // Redis has answered the SUBSCRIBE: from now on,
                        // every update on the topic reaches this instance.
                        hub.confirm(&topic, number);
                    }
                    outcome
                }
                (Some((Change::Unsubscribe(topic), _)), PubsubChannel::PerTopic) => {
                    let outcome = redis.unsubscribe(topic.channel()).await;
                    if outcome.is_ok() {
                        held.remove(&topic.channel());
                    }
                    outcome
                }
                (Some((change, number)), PubsubChannel::Shared) => {
                    // Shared channel: subscribed while any topic is watched.
                    let wanted = !hub.topics().is_empty();
                    let shared = SHARED_CHANNEL_NAME.as_str();
                    let outcome = match (wanted, held.contains(shared)) {
                        (true, false) => {
                            held.insert(shared.to_owned());
                            redis.subscribe(shared).await
                        }
                        (false, true) => {
                            let outcome = redis.unsubscribe(shared).await;
                            if outcome.is_ok() {
                                held.remove(shared);
                            }
                            outcome
                        }
                        _ => Ok(()),
                    };
                    if let (Ok(()), Change::Subscribe(topic), true) = (&outcome, &change, wanted) {
                        hub.confirm(topic, number);
                    }
                    outcome
                }
            },
            Some(done) = resyncs.recv() => {
                // What is watched now, subscribed again (a SUBSCRIBE to a
                // channel already held is harmless); and what a change
                // that failed during the outage may have left behind,
                // dropped.
                let wanted: HashSet<String> = match channels {
                    PubsubChannel::PerTopic => hub.topics().iter().map(Topic::channel).collect(),
                    PubsubChannel::Shared if hub.topics().is_empty() => HashSet::new(),
                    PubsubChannel::Shared => HashSet::from([SHARED_CHANNEL_NAME.clone()]),
                };
                let stale: Vec<String> = held.difference(&wanted).cloned().collect();
                let mut outcome = Ok(());
                if !stale.is_empty() {
                    outcome = redis.unsubscribe(&stale).await;
                    if outcome.is_ok() {
                        for channel in &stale {
                            held.remove(channel);
                        }
                    }
                }
                if outcome.is_ok() && !wanted.is_empty() {
                    held.extend(wanted.iter().cloned());
                    outcome = redis.subscribe(wanted.into_iter().collect::<Vec<_>>()).await;
                }
                if outcome.is_ok() {
                    hub.confirm_all();
                }
                let _ = done.send(outcome.is_ok());
                outcome
            }
        };
        if let Err(error) = outcome {
            // The heartbeat sees the outage too, and resyncs when it ends.
            tracing::warn!(%error, "a subscription change failed");
            hub.set_live(false);
        }
    }
}

/// The one channel of `--pubsub-channel shared`.
static SHARED_CHANNEL_NAME: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{PREFIX}all"));

/// Hands every message Redis pushes to the hub, at once.
async fn listen(mut pushes: mpsc::UnboundedReceiver<redis::PushInfo>, hub: Arc<Hub>) {
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::Message => {
                let mut data = push.data.into_iter();
                let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                    continue;
                };
                let (Some(channel), Some(payload)) = (text(channel), text(payload)) else {
                    continue;
                };
                // A topic's own channel names it; the shared channel
                // carries every topic, named in the update itself.
                let topic = if channel == *SHARED_CHANNEL_NAME {
                    crate::live::topic_of(&payload)
                } else {
                    Topic::of_channel(&channel)
                };
                if let Some(topic) = topic {
                    hub.stats.from_redis.fetch_add(1, Ordering::Relaxed);
                    if let Some(update) = Update::parse(payload) {
                        hub.deliver(&topic, &update);
                    }
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("the pub/sub connection dropped: a gap");
                hub.set_live(false);
            }
            _ => {}
        }
    }
}

/// An update's JSON with its stream id added (`"id":"…"`), so that the
/// page can resume from it.
pub(crate) fn with_id(json: &str, id: &str) -> String {
    match json.strip_suffix('}') {
        Some(open) => format!("{open},\"id\":\"{id}\"}}"),
        None => json.to_owned(),
    }
}

fn text(value: Value) -> Option<String> {
    redis::from_redis_value::<String>(value).ok()
}

/// What the heartbeat pings.
enum Pinger {
    /// The subscriber connection itself (pub/sub): if it does not answer,
    /// neither do its subscriptions. And the live layer's connection, from
    /// which the snapshots come: both must answer.
    Subscriber(ConnectionManager, Duration, Live),
    /// The live layer's connection.
    Live(Live),
}

impl Pinger {
    fn live(&self) -> &Live {
        match self {
            Self::Subscriber(_, _, live) | Self::Live(live) => live,
        }
    }

    async fn ping(&mut self) -> bool {
        match self {
            Self::Subscriber(redis, timeout, live) => {
                let command = redis::cmd("PING");
                let ping = command.query_async::<Value>(redis);
                matches!(tokio::time::timeout(*timeout, ping).await, Ok(Ok(_))) && live.ping().await
            }
            Self::Live(live) => live.ping().await,
        }
    }
}

/// Pings Redis every [`HEARTBEAT`]: no answer pauses live updates; an
/// answer after a pause resumes them (resubscribing first, in pub/sub).
async fn heartbeat(mut pinger: Pinger, hub: Arc<Hub>, resync: Option<mpsc::Sender<Resync>>) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let answered = pinger.ping().await;
        match (answered, hub.is_live()) {
            (false, true) => hub.set_live(false),
            (true, false) => {
                let resubscribed = match &resync {
                    Some(resync) => {
                        // Within a deadline: a subscriber stuck on a
                        // frozen Redis must not stop the heartbeat.
                        let (done, confirmed) = oneshot::channel();
                        let asked = async {
                            resync.send(done).await.is_ok() && confirmed.await.unwrap_or(false)
                        };
                        tokio::time::timeout(HEARTBEAT * 4, asked)
                            .await
                            .unwrap_or(false)
                    }
                    None => true,
                };
                // Numbers a restarted Redis lost are put back first, or
                // the next updates would repeat them.
                if resubscribed
                    && pinger
                        .live()
                        .restore_numbers(&hub.numbers_seen())
                        .await
                        .is_ok()
                {
                    hub.set_live(true);
                }
            }
            _ => {}
        }
    }
}

/// Deadlines for the stream reader's connection: a frozen Redis fails a
/// read (and the reader retries) instead of holding it forever. A read
/// blocks for [`READ_BLOCK_MS`] on purpose, so it gets that on top.
fn streams_config(timeout: Duration) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout + Duration::from_millis(READ_BLOCK_MS)))
}

/// Reads every watched topic's stream from the last id delivered, and
/// hands each entry (with its id) to the hub.
async fn read_streams(
    client: redis::Client,
    timeout: Duration,
    hub: Arc<Hub>,
    mut changes: mpsc::UnboundedReceiver<Order>,
) {
    let mut last: HashMap<Topic, String> = HashMap::new();
    // Subscriptions not yet pinned to a stream id, by their numbers.
    let mut unconfirmed: HashMap<Topic, u64> = HashMap::new();
    let mut connection: Option<MultiplexedConnection> = None;
    loop {
        // Take every pending change; wait for one when nothing is watched.
        loop {
            let change = if last.is_empty() {
                match changes.recv().await {
                    Some(change) => change,
                    None => return,
                }
            } else {
                match changes.try_recv() {
                    Ok(change) => change,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            };
            match change {
                // Start after the newest entry: what comes next is new.
                (Change::Subscribe(topic), number) => {
                    last.insert(topic.clone(), "$".to_owned());
                    unconfirmed.insert(topic, number);
                }
                (Change::Unsubscribe(topic), _) => {
                    last.remove(&topic);
                    unconfirmed.remove(&topic);
                }
            }
        }
        let redis = match connection.as_mut() {
            Some(redis) => redis,
            None => match client
                .get_multiplexed_async_connection_with_config(&streams_config(timeout))
                .await
            {
                Ok(fresh) => connection.insert(fresh),
                Err(error) => {
                    tracing::warn!(%error, "cannot reach Redis to read streams");
                    tokio::time::sleep(HEARTBEAT).await;
                    continue;
                }
            },
        };
        // `$` only means "after the newest" when read: pin it to an id now.
        let mut pinning_failed = None;
        for (topic, id) in last.iter_mut().filter(|(_, id)| *id == "$") {
            let mut newest = redis::cmd("XREVRANGE");
            newest
                .arg(topic.channel())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
            match newest.query_async::<Vec<(String, Value)>>(redis).await {
                Ok(entries) => {
                    *id = entries
                        .into_iter()
                        .next()
                        .map_or_else(|| "0-0".to_owned(), |(id, _)| id);
                    // Read from here on: a page that starts after this
                    // point misses nothing.
                    if let Some(number) = unconfirmed.remove(topic) {
                        hub.confirm(topic, number);
                    }
                }
                Err(error) => {
                    pinning_failed = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = pinning_failed {
            // A Redis still loading its data after a restart answers every
            // command with an error at once: without this pause the
            // reader would ask again, and again, as fast as it could.
            tracing::warn!(%error, "cannot find where streams end; trying again");
            connection = None;
            tokio::time::sleep(HEARTBEAT).await;
            continue;
        }
        let (keys, ids): (Vec<String>, Vec<String>) = last
            .iter()
            .filter(|(_, id)| *id != "$")
            .map(|(topic, id)| (topic.channel(), id.clone()))
            .unzip();
        if keys.is_empty() {
            connection = None;
            continue;
        }
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT")
            .arg(500)
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS")
            .arg(&keys)
            .arg(&ids);
        type Entries = Vec<(String, Vec<(String, String)>)>;
        match read
            .query_async::<Option<Vec<(String, Entries)>>>(redis)
            .await
        {
            Ok(Some(streams)) => {
                for (key, entries) in streams {
                    let Some(topic) = Topic::of_channel(&key) else {
                        continue;
                    };
                    for (id, fields) in entries {
                        if let Some((_, json)) = fields.into_iter().find(|(name, _)| name == "m") {
                            hub.stats.from_redis.fetch_add(1, Ordering::Relaxed);
                            if let Some(update) = Update::parse(with_id(&json, &id)) {
                                hub.deliver(&topic, &update);
                            }
                        }
                        if let Some(position) = last.get_mut(&topic) {
                            *position = id;
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "reading streams failed; resuming where it stopped");
                connection = None;
                tokio::time::sleep(HEARTBEAT).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop::services::redis::RedisServer;

    /// How many times Redis has run `command`, from `INFO commandstats`.
    async fn calls_of(redis: &mut MultiplexedConnection, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(redis)
            .await
            .expect("INFO");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().expect("a count"))
    }

    #[tokio::test]
    async fn a_redis_that_fails_every_stream_command_is_asked_again_at_the_heartbeat() {
        let server = RedisServer::start()
            .await
            .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}"));
        let mut redis = server.connection().await.expect("a connection");
        let topic = Topic::parse("room:tees").expect("a topic");
        // A key of another type makes every stream command on it fail at
        // once, as every command does while a restarted Redis loads its
        // data (`LOADING`).
        redis::cmd("SET")
            .arg(topic.channel())
            .arg("not a stream")
            .query_async::<()>(&mut redis)
            .await
            .expect("SET");
        let (changes, orders) = mpsc::unbounded_channel();
        changes
            .send((Change::Subscribe(topic), 1))
            .expect("the reader listens");
        let reader = tokio::spawn(read_streams(
            redis::Client::open(server.url()).expect("a client"),
            Duration::from_secs(1),
            Arc::new(Hub::new(None)),
            orders,
        ));
        tokio::time::sleep(HEARTBEAT * 4).await;
        reader.abort();
        let calls = calls_of(&mut redis, "xrevrange").await;
        assert!(
            (2..=8).contains(&calls),
            "asked {calls} times in four heartbeats: once each, not as fast as it can"
        );
    }
}
