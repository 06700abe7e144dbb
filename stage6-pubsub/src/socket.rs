//! `GET /ws`: one page's WebSocket, for as long as the page is open.
//!
//! ```text
//! page → {"type":"watch","skus":["TEE-RED-M",…],"since":{"stock:TEE-RED-M":"1733-0"}}
//! page → {"type":"join","room":"tees","name":"Ada","since":"1733-2"}
//! page → {"type":"say","text":"the navy runs small"} · {"type":"leave"} (the room)
//! page → {"type":"snapshot"}
//! shop → {"type":"hello","instance":"i2","fanout":"pubsub","epoch":"…","live":true}
//! shop → {"type":"snapshot","epoch":"…","stocks":[{"sku","stock","price_cents","seq"}],"rooms":[{"room","seq"}]}
//! shop → {"type":"stock","topic":"stock:TEE-RED-M","sku":"TEE-RED-M","stock":2,"epoch":"…","seq":17}
//! shop → {"type":"say"|"presence","topic":"room:tees",…,"seq":4,"id":"1733-2"}   (id: streams only)
//! shop → {"type":"paused"} · {"type":"live"} · {"type":"lagged"}
//! ```
//!
//! The socket's task reads the page's messages, and sends what the hub
//! put on its queue. A page that reads too slowly fills the queue: updates
//! are then dropped for it alone and it gets `lagged` and a snapshot
//! (latest values win); a page that lags again and again, or whose send
//! blocks for over a second, is closed with 1013 ("try again later"). When
//! the instance is leaving (drained, removed, stopping), every socket is
//! closed with 1001 ("going away"), and the pages reconnect elsewhere.
//!
//! Each page may send a burst of 40 messages, then `--ws-messages-per-second`
//! (10): a message past that is refused with an `error`, and a page that
//! keeps sending is closed with 1008 (see `crate::allowance`).
//!
//! In `streams` mode the socket also mends gaps itself: an update whose
//! number is not the next one makes it read what it missed from the stream
//! first, so the page sees every update, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::SinkExt;
use serde::Deserialize;
use shop::{ApiError, Catalog, Shop};

use crate::Stage6;
use crate::allowance::{Allowance, Verdict};
use crate::fanout::Fanout;
use crate::hub::{Delivery, Update, Watcher};
use crate::live::{LiveError, PRESENCE_FOR};
use crate::subscriptions::SocketId;
use crate::topic::{Topic, stream_id};

/// How long one send to a page may take before the page counts as stuck.
const SEND_DEADLINE: Duration = Duration::from_secs(1);
/// How long a page waits for its instance's subscription to a topic
/// before it is sent its snapshot anyway (Redis may be down: then it is
/// told that live updates are paused).
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(2);
/// The most queued messages written out together.
const BATCH: usize = 64;
/// How many times a page may overflow its queue, one soon after another,
/// before it is closed.
const LAGS_ALLOWED: u32 = 3;
/// How long a lag is held against a page: a page that has kept up this
/// long since its last lag starts afresh. Without it, a phone open all day
/// that fell behind in four flash sales, hours apart, would be closed as a
/// page that cannot keep up.
const LAGS_REMEMBERED_FOR: Duration = Duration::from_secs(60);
/// The most SKUs one page may watch.
const MAX_WATCHED: usize = 300;
/// The longest message a shopper may say, in bytes.
pub(crate) const MAX_SAY: usize = 4096;

/// A page's lags that still count against it.
#[derive(Debug, Default)]
struct RecentLags {
    count: u32,
    last: Option<Instant>,
}

impl RecentLags {
    /// Notes a lag at `now`; returns how many there have been, each within
    /// [`LAGS_REMEMBERED_FOR`] of the one before.
    fn note(&mut self, now: Instant) -> u32 {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) > LAGS_REMEMBERED_FOR)
        {
            self.count = 0;
        }
        self.count += 1;
        self.last = Some(now);
        self.count
    }
}

/// `?room=tees&name=Ada&since=1733-2`: join a room as the socket opens
/// (resuming after stream id `since`). The room is in the URL, not only in
/// a message, so that a balancer can send the socket by room
/// (`--fanout room-sticky`).
#[derive(Debug, Deserialize)]
pub(crate) struct Opening {
    room: Option<String>,
    name: Option<String>,
    since: Option<String>,
}

/// What a page may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FromPage {
    Watch {
        skus: Vec<String>,
        #[serde(default)]
        since: HashMap<String, String>,
    },
    Join {
        room: String,
        name: Option<String>,
        since: Option<String>,
    },
    Leave,
    Say {
        text: String,
    },
    Snapshot,
}

/// `GET /ws`. 403 `cross_site` when the page that opens it is from
/// another site: browsers send cookies with a WebSocket handshake and
/// never ask first (no CORS for WebSockets), so the shop checks the
/// `Origin` itself ("cross-site WebSocket hijacking").
pub(crate) async fn open(
    State(shop): State<Arc<Shop<Stage6>>>,
    Query(opening): Query<Opening>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if !lb::origin_matches_host(&headers) {
        return Err(LiveError::CrossSite.into());
    }
    Ok(upgrade
        // A page sends a few small messages: 4 KiB buffers instead of the
        // default 128 KiB each way keep an idle socket near 10 KiB on the
        // instance, not 140 (scripts/bench-stage6 measures it).
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(64 * 1024)
        // And each frame: tungstenite reads a whole frame before it checks
        // the message's size, and allows 16 MiB frames by default.
        .max_frame_size(64 * 1024)
        .on_upgrade(move |socket| async move { Session::run(shop, socket, opening).await }))
}

/// Where a page is on one topic: the last update it was sent.
#[derive(Clone, Debug, Default)]
struct Position {
    seq: u64,
    /// The stream id of that update (streams mode).
    id: Option<Arc<str>>,
}

/// Whether Redis answered a question about a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answered {
    Yes,
    No,
}

/// Why a socket ends.
enum End {
    /// The page went away (or its connection did).
    Gone,
    /// Closed by the shop, with a code and a reason.
    Close(u16, &'static str),
}

struct Session {
    shop: Arc<Shop<Stage6>>,
    socket: WebSocket,
    id: SocketId,
    watcher: Watcher,
    skus: Vec<String>,
    room: Option<(String, String)>,
    positions: HashMap<Topic, Position>,
    /// What the page may still send.
    allowance: Allowance,
    lags: RecentLags,
}

impl Session {
    async fn run(shop: Arc<Shop<Stage6>>, socket: WebSocket, opening: Opening) {
        let (watcher, mut queue) = Watcher::new();
        let id = shop.state.hub.register(watcher.clone());
        let held = shop.instance.hold_socket();
        let mut leaving = shop.instance.leaving();
        let mut session = Self {
            shop: Arc::clone(&shop),
            socket,
            id,
            watcher,
            skus: Vec::new(),
            room: None,
            positions: HashMap::new(),
            allowance: Allowance::new(shop.state.ws_messages_per_second, Instant::now()),
            lags: RecentLags::default(),
        };
        let end = session.serve(&mut queue, &mut leaving, opening).await;
        match &end {
            End::Gone => tracing::debug!(socket = session.id, "socket gone"),
            End::Close(code, reason) => {
                tracing::info!(socket = session.id, code, reason, "socket closed")
            }
        }
        // The goodbye first, then the bookkeeping in Redis: a stopping
        // instance has only moments, and the page should hear why.
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let close = session.socket.send(Message::Close(Some(frame)));
            let _ = tokio::time::timeout(SEND_DEADLINE, close).await;
        }
        session.leave_room().await;
        session.shop.state.hub.leave(session.id);
        drop(held);
    }

    fn member(&self, name: &str) -> String {
        format!("{}/{}/{name}", self.shop.instance.id(), self.id)
    }

    async fn serve(
        &mut self,
        queue: &mut tokio::sync::mpsc::Receiver<Delivery>,
        leaving: &mut tokio::sync::watch::Receiver<bool>,
        opening: Opening,
    ) -> End {
        if *leaving.borrow() {
            return End::Close(close_code::AWAY, "this instance is leaving; reconnect");
        }
        let state = &self.shop.state;
        let hello = serde_json::json!({
            "type": "hello",
            "instance": self.shop.instance.id(),
            "fanout": state.live.fanout(),
            "epoch": state.live.epoch(),
            "live": state.hub.is_live(),
        });
        if let Err(end) = self.send_json(&hello.to_string()).await {
            return end;
        }
        if let Some(room) = opening.room {
            let name = opening.name.unwrap_or_else(|| "guest".to_owned());
            if let Err(end) = self.join(room, name, opening.since).await {
                return end;
            }
        }
        let mut presence = tokio::time::interval(PRESENCE_FOR / 3);
        presence.tick().await;
        let mut ping = tokio::time::interval(self.shop.state.ws_ping);
        // After a stall (a frozen instance, thawed), one ping, not a burst.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            let step = tokio::select! {
                message = self.socket.recv() => match message {
                    Some(Ok(Message::Text(text))) => self.allowed(text.as_str()).await,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => Err(End::Gone),
                    Some(Ok(_)) => Ok(()),
                },
                delivery = queue.recv() => match delivery {
                    Some(delivery) => self.deliver_waiting(delivery, queue).await,
                    None => Err(End::Gone),
                },
                () = until_leaving(leaving) => {
                    Err(End::Close(close_code::AWAY, "this instance is leaving; reconnect"))
                }
                _ = presence.tick() => self.refresh_presence().await,
                _ = ping.tick() => self.ping().await,
            };
            if let Err(end) = step {
                return end;
            }
            if self.watcher.take_lagged() {
                if self.lags.note(Instant::now()) > LAGS_ALLOWED {
                    self.shop
                        .state
                        .hub
                        .stats
                        .closed_slow
                        .fetch_add(1, Ordering::Relaxed);
                    return End::Close(close_code::AGAIN, "too slow: updates kept piling up");
                }
                let lagged = self.send_json(r#"{"type":"lagged"}"#).await;
                if let Err(end) = lagged.and(self.send_snapshot().await) {
                    return end;
                }
            }
        }
    }

    /// Sends a message at once.
    async fn send_json(&mut self, json: &str) -> Result<(), End> {
        self.send_text(json.into()).await?;
        self.flush().await
    }

    /// Puts a text message in the socket's write buffer, which goes out
    /// when it is full or flushed, within [`SEND_DEADLINE`].
    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), End> {
        let feed = self.socket.feed(Message::Text(text));
        within_deadline(&self.shop.state.hub.stats.closed_slow, feed).await
    }

    /// Writes out what the write buffer holds.
    async fn flush(&mut self) -> Result<(), End> {
        let flush = self.socket.flush();
        within_deadline(&self.shop.state.hub.stats.closed_slow, flush).await
    }

    /// A page's message, acted on if its allowance has room for it.
    async fn allowed(&mut self, text: &str) -> Result<(), End> {
        let stats = &self.shop.state.hub.stats;
        match self.allowance.take(Instant::now()) {
            Verdict::Allowed => self.handle(text).await,
            Verdict::Refused => {
                stats.refused_messages.fetch_add(1, Ordering::Relaxed);
                let per_second = self.shop.state.ws_messages_per_second.unwrap_or_default();
                let why = format!(
                    "too many messages: at most {per_second} a second after a burst of {}; this one was not acted on",
                    crate::allowance::BURST
                );
                self.refuse(&why).await
            }
            Verdict::Close => {
                stats.closed_flooding.fetch_add(1, Ordering::Relaxed);
                Err(End::Close(
                    close_code::POLICY,
                    "too many messages; slow down",
                ))
            }
        }
    }

    async fn handle(&mut self, text: &str) -> Result<(), End> {
        let Ok(message) = serde_json::from_str::<FromPage>(text) else {
            return self.refuse("not a message this socket understands").await;
        };
        match message {
            FromPage::Watch { skus, since } => self.watch(skus, &since).await,
            FromPage::Join { room, name, since } => {
                self.join(room, name.unwrap_or_else(|| "guest".to_owned()), since)
                    .await
            }
            FromPage::Say { text } => {
                let Some((room, name)) = self.room.clone() else {
                    return self.refuse("join a room first").await;
                };
                if text.len() > MAX_SAY || text.trim().is_empty() {
                    return self.refuse("a message is 1 to 4096 bytes").await;
                }
                match self.shop.state.live.say(&room, &name, &text).await {
                    Ok(()) => Ok(()),
                    Err(error) => self.refuse(&error.to_string()).await,
                }
            }
            FromPage::Leave => {
                self.leave_room().await;
                Ok(())
            }
            FromPage::Snapshot => self.send_snapshot().await,
        }
    }

    async fn refuse(&mut self, why: &str) -> Result<(), End> {
        let error = serde_json::json!({"type": "error", "message": why});
        self.send_json(&error.to_string()).await
    }

    /// Replaces the SKUs this page watches.
    async fn watch(
        &mut self,
        skus: Vec<String>,
        since: &HashMap<String, String>,
    ) -> Result<(), End> {
        let catalog = Catalog::get();
        let mut wanted: Vec<String> = skus
            .into_iter()
            .filter(|sku| catalog.find(sku).is_some())
            .take(MAX_WATCHED)
            .collect();
        wanted.sort();
        wanted.dedup();
        let hub = &self.shop.state.hub;
        for old in self.skus.iter().filter(|sku| !wanted.contains(sku)) {
            let topic = Topic::Stock(old.clone());
            hub.unwatch(self.id, &topic);
            self.positions.remove(&topic);
        }
        let added: Vec<String> = wanted
            .iter()
            .filter(|sku| !self.skus.contains(sku))
            .cloned()
            .collect();
        let ready: Vec<_> = added
            .iter()
            .map(|sku| hub.watch(self.id, &Topic::Stock(sku.clone())))
            .collect();
        // The instance's subscriptions first, then the snapshot: an update
        // published in between would otherwise reach nobody on this page.
        // One deadline for them all: with Redis frozen, 300 new topics
        // waited for one after the other would hold the socket for minutes.
        let deadline = tokio::time::Instant::now() + SUBSCRIBE_DEADLINE;
        for ready in ready {
            ready.wait_until(deadline).await;
        }
        self.skus = wanted;
        for sku in added {
            let topic = Topic::Stock(sku);
            let since = since.get(&topic.to_string()).cloned();
            if self.start_at(topic, since).await? == Answered::No {
                // Redis did not answer for this topic: asking again for
                // each of the others would cost a store timeout apiece.
                // They start from the snapshot, as after any outage.
                break;
            }
        }
        self.send_snapshot().await
    }

    /// Joins `room` as `name` (leaving any other).
    async fn join(&mut self, room: String, name: String, since: Option<String>) -> Result<(), End> {
        let Some(topic @ Topic::Room(_)) = Topic::parse(&format!("room:{room}")) else {
            let rooms = crate::topic::ROOMS.join(", ");
            return self
                .refuse(&format!("no such room; the rooms are {rooms}"))
                .await;
        };
        let name: String = name
            .chars()
            .filter(|c| !c.is_control() && *c != '/')
            .take(40)
            .collect();
        let live = self.shop.state.live.clone();
        self.leave_room().await;
        let ready = self.shop.state.hub.watch(self.id, &topic);
        ready
            .wait_until(tokio::time::Instant::now() + SUBSCRIBE_DEADLINE)
            .await;
        self.room = Some((room.clone(), name.clone()));
        self.start_at(topic, since).await?;
        if let Err(error) = live.presence(&room, &self.member(&name), "join").await {
            return self.refuse(&error.to_string()).await;
        }
        self.send_snapshot().await
    }

    /// Leaves the room the page is in, if any.
    async fn leave_room(&mut self) {
        if let Some((old, old_name)) = self.room.take() {
            let old_topic = Topic::Room(old.clone());
            self.shop.state.hub.unwatch(self.id, &old_topic);
            self.positions.remove(&old_topic);
            let _ = self
                .shop
                .state
                .live
                .presence(&old, &self.member(&old_name), "leave")
                .await;
        }
    }

    /// Sets where the page starts on a topic. In streams mode: from the id
    /// it sent (catching up on what it missed), else from the newest entry.
    /// Says whether Redis answered (there is nothing to ask it otherwise).
    async fn start_at(&mut self, topic: Topic, since: Option<String>) -> Result<Answered, End> {
        if self.shop.state.live.fanout() != Fanout::Streams {
            return Ok(Answered::Yes);
        }
        let live = self.shop.state.live.clone();
        let from = match since {
            Some(since) if stream_id(&since).is_some() => since,
            _ => match live.newest(&topic).await {
                Ok(position) => {
                    self.positions.insert(topic, position_of(position));
                    return Ok(Answered::Yes);
                }
                Err(_) => return Ok(Answered::No),
            },
        };
        self.positions.insert(
            topic.clone(),
            Position {
                seq: 0,
                id: Some(Arc::from(from.as_str())),
            },
        );
        self.catch_up(&topic).await
    }

    /// Sends what the topic's stream holds after the page's position.
    async fn catch_up(&mut self, topic: &Topic) -> Result<Answered, End> {
        let Some(after) = self.positions.get(topic).and_then(|p| p.id.clone()) else {
            return Ok(Answered::Yes);
        };
        let Ok(missed) = self.shop.state.live.backlog(topic, &after).await else {
            return Ok(Answered::No);
        };
        for (id, json) in missed {
            if let Some(update) = Update::parse(crate::bus::with_id(&json, &id)) {
                self.send_in_order(topic, &update).await?;
            }
        }
        Ok(Answered::Yes)
    }

    /// Sends `first` and whatever else is already waiting in the queue
    /// (up to a batch), then flushes once: under load, one write for many
    /// messages instead of one each.
    async fn deliver_waiting(
        &mut self,
        first: Delivery,
        queue: &mut tokio::sync::mpsc::Receiver<Delivery>,
    ) -> Result<(), End> {
        self.deliver(first).await?;
        for _ in 1..BATCH {
            match queue.try_recv() {
                Ok(next) => self.deliver(next).await?,
                Err(_) => break,
            }
        }
        self.flush().await
    }

    async fn deliver(&mut self, delivery: Delivery) -> Result<(), End> {
        match delivery {
            Delivery::Update { topic, update } => self.send_update(&topic, &update).await,
            Delivery::Live(live) => {
                let notice = if live {
                    r#"{"type":"live"}"#
                } else {
                    r#"{"type":"paused"}"#
                };
                self.send_json(notice).await?;
                if live {
                    // Whatever happened meanwhile: the latest values now.
                    self.send_snapshot().await?;
                }
                Ok(())
            }
        }
    }

    /// Sends one update, in order: a duplicate is skipped, and in streams
    /// mode a gap is first filled from the stream.
    async fn send_update(&mut self, topic: &Topic, update: &Update) -> Result<(), End> {
        if self.shop.state.live.fanout() == Fanout::Streams {
            let at = self.positions.get(topic).map_or(0, |p| p.seq);
            if at != 0 && update.seq > at + 1 {
                self.catch_up(topic).await?;
            }
        }
        self.send_in_order(topic, update).await
    }

    /// Sends one update unless the page has it already.
    async fn send_in_order(&mut self, topic: &Topic, update: &Update) -> Result<(), End> {
        if self
            .positions
            .get(topic)
            .is_some_and(|p| p.seq != 0 && update.seq <= p.seq)
        {
            return Ok(());
        }
        self.send_text(update.json.clone()).await?;
        let position = Position {
            seq: update.seq,
            id: update.id.clone(),
        };
        match self.positions.get_mut(topic) {
            Some(at) => *at = position,
            None => {
                self.positions.insert(topic.clone(), position);
            }
        }
        Ok(())
    }

    async fn send_snapshot(&mut self) -> Result<(), End> {
        let rooms: Vec<String> = self.room.iter().map(|(room, _)| room.clone()).collect();
        match self.shop.state.live.snapshot(&self.skus, &rooms).await {
            Ok(snapshot) => {
                if self.shop.state.live.fanout() == Fanout::Streams {
                    // Streams can replay: whatever the snapshot shows this
                    // page has not had (a room's messages, say, published
                    // while its socket was being set up), it gets first.
                    let behind: Vec<Topic> = snapshot
                        .stocks
                        .iter()
                        .map(|s| (Topic::Stock(s.sku.clone()), s.seq))
                        .chain(
                            snapshot
                                .rooms
                                .iter()
                                .map(|r| (Topic::Room(r.room.clone()), r.seq)),
                        )
                        .filter(|(topic, seq)| {
                            self.positions
                                .get(topic)
                                .is_some_and(|p| p.id.is_some() && p.seq < *seq)
                        })
                        .map(|(topic, _)| topic)
                        .collect();
                    for topic in behind {
                        self.catch_up(&topic).await?;
                    }
                }
                // Stock is latest-value state: an update older than the
                // snapshot, still on its way, would only turn the page
                // back, so it is skipped. Room updates are events, which
                // the snapshot does not carry: they are all still sent.
                for stock in &snapshot.stocks {
                    let position = self
                        .positions
                        .entry(Topic::Stock(stock.sku.clone()))
                        .or_default();
                    if stock.seq > position.seq {
                        position.seq = stock.seq;
                        position.id = stock.id.as_deref().map(Arc::from);
                    }
                }
                let json = serde_json::to_string(&snapshot).unwrap_or_default();
                self.send_json(&json).await
            }
            Err(LiveError::Unavailable) => self.send_json(r#"{"type":"paused"}"#).await,
            Err(error) => self.refuse(&error.to_string()).await,
        }
    }

    /// Shows the balancer (and the page) that this end is alive.
    async fn ping(&mut self) -> Result<(), End> {
        let ping = self.socket.send(Message::Ping(Default::default()));
        within_deadline(&self.shop.state.hub.stats.closed_slow, ping).await
    }

    async fn refresh_presence(&mut self) -> Result<(), End> {
        if let Some((room, name)) = self.room.clone() {
            let _ = self
                .shop
                .state
                .live
                .presence(&room, &self.member(&name), "refresh")
                .await;
        }
        Ok(())
    }
}

/// A write to a page, within [`SEND_DEADLINE`]; a page that does not take
/// it in time is closed (and counted in `closed_slow`).
async fn within_deadline(
    closed_slow: &std::sync::atomic::AtomicU64,
    write: impl Future<Output = Result<(), axum::Error>>,
) -> Result<(), End> {
    match tokio::time::timeout(SEND_DEADLINE, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => {
            closed_slow.fetch_add(1, Ordering::Relaxed);
            Err(End::Close(
                close_code::AGAIN,
                "too slow: a send took over a second",
            ))
        }
    }
}

/// Resolves when the instance starts leaving (never, if it cannot tell).
async fn until_leaving(leaving: &mut tokio::sync::watch::Receiver<bool>) {
    if leaving.wait_for(|leaving| *leaving).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn position_of(newest: Option<(String, u64)>) -> Position {
    match newest {
        Some((id, seq)) => Position {
            seq,
            id: Some(Arc::from(id)),
        },
        None => Position {
            seq: 0,
            id: Some(Arc::from("0-0")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lags_one_after_another_add_up_and_lags_hours_apart_do_not() {
        let start = Instant::now();
        let mut lags = RecentLags::default();
        let seconds = |s: u64| start + Duration::from_secs(s);
        // Four flash sales, an hour apart: each lag is the first.
        for hour in 0..4 {
            assert_eq!(lags.note(seconds(hour * 3600)), 1);
        }
        // Then a page that cannot keep up: a lag every ten seconds.
        let counts: Vec<u32> = (1..=4)
            .map(|n| lags.note(seconds(4 * 3600 + n * 10)))
            .collect();
        assert_eq!(counts, [1, 2, 3, 4], "each within a minute of the last");
        assert!(
            counts[2] <= LAGS_ALLOWED && counts[3] > LAGS_ALLOWED,
            "closed on the fourth"
        );
    }
}
