//! A page's side of `GET /ws`, in Rust: what `stage6 demo`, the crowd's
//! live mode, `scripts/bench-stage6` and the tests use to watch the shop as
//! a browser would (the page's own script is `page/live.js`).
//!
//! [`LiveClient`] opens the socket and speaks its messages (see
//! [`crate::socket`]); [`Tally`] keeps the count a page keeps: per topic,
//! the update numbers received, the gaps between them, and the last
//! stream id, to resume from.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long opening a socket and its `hello` may take.
const OPEN_DEADLINE: Duration = Duration::from_secs(5);

/// Why a socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot open the socket: {0}")]
    Open(String),
    #[error("the shop closed the socket ({code}: {reason})")]
    Closed { code: u16, reason: String },
    #[error("the connection ended without a close frame")]
    Dropped,
    #[error("the shop sent something that is not JSON: {0}")]
    NotJson(String),
    #[error("no hello within {0:?}")]
    NoHello(Duration),
}

/// One open `/ws` socket.
pub struct LiveClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    hello: Value,
}

impl std::fmt::Debug for LiveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveClient")
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

impl LiveClient {
    /// Opens `ws://…/ws` (a `http://` base works too: `base` is the shop's
    /// or the balancer's URL, with an optional query such as `?room=tees`)
    /// and reads the `hello`.
    pub async fn connect(base: &str, query: &str) -> Result<Self, ClientError> {
        let url = format!(
            "{}/ws{query}",
            base.trim_end_matches('/').replacen("http://", "ws://", 1)
        );
        // Small buffers, as the shop's side has: a benchmark opens thousands.
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0);
        let open = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        let (socket, _) = tokio::time::timeout(OPEN_DEADLINE, open)
            .await
            .map_err(|_| ClientError::NoHello(OPEN_DEADLINE))?
            .map_err(|e| ClientError::Open(e.to_string()))?;
        let mut client = Self {
            socket,
            hello: Value::Null,
        };
        match client.next(OPEN_DEADLINE).await? {
            Some(hello) if hello["type"] == "hello" => client.hello = hello,
            _ => return Err(ClientError::NoHello(OPEN_DEADLINE)),
        }
        Ok(client)
    }

    /// The instance that holds this socket.
    pub fn instance(&self) -> &str {
        self.hello["instance"].as_str().unwrap_or("?")
    }

    /// The shop's `hello`.
    pub fn hello(&self) -> &Value {
        &self.hello
    }

    async fn send(&mut self, message: &Value) -> Result<(), ClientError> {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .map_err(|_| ClientError::Dropped)
    }

    /// Watches these SKUs (replacing the list), resuming each topic after
    /// the stream id in `since` (`{"stock:TEE-RED-M": "1733-0"}`).
    pub async fn watch(
        &mut self,
        skus: &[String],
        since: &HashMap<String, String>,
    ) -> Result<(), ClientError> {
        self.send(&json!({"type": "watch", "skus": skus, "since": since}))
            .await
    }

    /// Joins a room as `name`, resuming after the stream id `since`.
    pub async fn join(
        &mut self,
        room: &str,
        name: &str,
        since: Option<&str>,
    ) -> Result<(), ClientError> {
        self.send(&json!({"type": "join", "room": room, "name": name, "since": since}))
            .await
    }

    /// Says something in the room joined.
    pub async fn say(&mut self, text: &str) -> Result<(), ClientError> {
        self.send(&json!({"type": "say", "text": text})).await
    }

    /// Asks for a snapshot.
    pub async fn ask_snapshot(&mut self) -> Result<(), ClientError> {
        self.send(&json!({"type": "snapshot"})).await
    }

    /// The next message, or `None` if none came within `wait`. A close
    /// from the shop is an error naming its code.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Value>, ClientError> {
        match self.next_text(wait).await? {
            Some(text) => serde_json::from_str(text.as_str())
                .map(Some)
                .map_err(|_| ClientError::NotJson(text.to_string())),
            None => Ok(None),
        }
    }

    /// The next message as it came, unread (for a benchmark that reads
    /// only the fields it needs), or `None` if none came within `wait`.
    pub async fn next_text(&mut self, wait: Duration) -> Result<Option<Utf8Bytes>, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Ok(None),
                Ok(None | Some(Err(_))) => return Err(ClientError::Dropped),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Message::Text(text) => return Ok(Some(text)),
                Message::Close(frame) => {
                    let (code, reason) = frame
                        .map_or((CloseCode::Status.into(), String::new()), |f| {
                            (u16::from(f.code), f.reason.to_string())
                        });
                    return Err(ClientError::Closed { code, reason });
                }
                _ => {}
            }
        }
    }

    /// Reads until a message of `kind` arrives (others go to `tally`), or
    /// `wait` passes.
    pub async fn until(
        &mut self,
        kind: &str,
        tally: &mut Tally,
        wait: Duration,
    ) -> Result<Option<Value>, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(message) = self.next(left).await? else {
                return Ok(None);
            };
            tally.absorb(&message);
            if message["type"] == kind {
                return Ok(Some(message));
            }
        }
    }

    /// Reads everything that arrives until nothing has for `quiet`, into
    /// `tally`.
    pub async fn drain(&mut self, tally: &mut Tally, quiet: Duration) -> Result<(), ClientError> {
        while let Some(message) = self.next(quiet).await? {
            tally.absorb(&message);
        }
        Ok(())
    }

    /// Reads until `tally` has received `count` updates in all, or nothing
    /// has arrived for `quiet`: a page that will hear everything stops as
    /// soon as it has, and only one that will not waits out the quiet.
    pub async fn drain_until(
        &mut self,
        tally: &mut Tally,
        count: u64,
        quiet: Duration,
    ) -> Result<(), ClientError> {
        while tally.received() < count {
            let Some(message) = self.next(quiet).await? else {
                break;
            };
            tally.absorb(&message);
        }
        Ok(())
    }

    /// Closes the socket as a page does when it goes away.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.socket.close(None)).await;
    }
}

/// What one topic looks like from a page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicTally {
    /// Updates received (duplicates not counted).
    pub received: u64,
    /// The newest update number received (0: none yet).
    pub seq: u64,
    /// The first update number known, from an update or a snapshot.
    pub first: Option<u64>,
    /// The newest update number known to exist.
    pub latest: u64,
    /// Numbers skipped between two updates received in a row.
    pub gaps: u64,
    /// Updates that came with a number not above the newest received.
    pub out_of_order: u64,
    /// The stream id of the newest update received (streams mode).
    pub id: Option<String>,
}

/// A page's count, over every topic.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub topics: HashMap<String, TopicTally>,
    /// Snapshots received.
    pub snapshots: u64,
    /// `paused` notices received.
    pub paused: u64,
    /// `lagged` notices received.
    pub lagged: u64,
}

impl Tally {
    /// Counts one message from the shop.
    pub fn absorb(&mut self, message: &Value) {
        match message["type"].as_str() {
            Some("snapshot") => {
                self.snapshots += 1;
                for stock in message["stocks"].as_array().into_iter().flatten() {
                    if let (Some(sku), Some(seq)) = (stock["sku"].as_str(), stock["seq"].as_u64()) {
                        self.snapshot_says(&format!("stock:{sku}"), seq, stock["id"].as_str());
                    }
                }
                for room in message["rooms"].as_array().into_iter().flatten() {
                    if let (Some(name), Some(seq)) = (room["room"].as_str(), room["seq"].as_u64()) {
                        // Events: a snapshot says how many, not what they
                        // were, so the page is not moved past them; only a
                        // page that has had none starts from its stream id.
                        let topic = format!("room:{name}");
                        self.known(&topic, seq);
                        if let (Some(entry), Some(id)) =
                            (self.topics.get_mut(&topic), room["id"].as_str())
                        {
                            if entry.id.is_none() {
                                entry.id = Some(id.to_owned());
                            }
                        }
                    }
                }
            }
            Some("paused") => self.paused += 1,
            Some("lagged") => self.lagged += 1,
            _ => {
                let (Some(topic), Some(seq)) = (message["topic"].as_str(), message["seq"].as_u64())
                else {
                    return;
                };
                let id = message["id"].as_str().map(str::to_owned);
                let entry = self.topics.entry(topic.to_owned()).or_default();
                entry.first.get_or_insert(seq.saturating_sub(1));
                entry.latest = entry.latest.max(seq);
                if seq <= entry.seq {
                    entry.out_of_order += 1;
                    return;
                }
                if entry.seq != 0 && seq > entry.seq + 1 {
                    entry.gaps += seq - entry.seq - 1;
                }
                entry.seq = seq;
                entry.received += 1;
                if id.is_some() {
                    entry.id = id;
                }
            }
        }
    }

    /// The shop says update `seq` exists on `topic` (a snapshot, a poll).
    pub fn known(&mut self, topic: &str, seq: u64) {
        let entry = self.topics.entry(topic.to_owned()).or_default();
        entry.first.get_or_insert(seq);
        entry.latest = entry.latest.max(seq);
    }

    /// A snapshot puts the page at `seq` on `topic`: stock is
    /// latest-value state, so what came before is replaced, not missed
    /// later. (It was missed, if it never arrived: `published` counts it.)
    fn snapshot_says(&mut self, topic: &str, seq: u64, id: Option<&str>) {
        self.known(topic, seq);
        if let Some(entry) = self.topics.get_mut(topic) {
            if seq > entry.seq || entry.id.is_none() {
                entry.seq = entry.seq.max(seq);
                if let Some(id) = id {
                    entry.id = Some(id.to_owned());
                }
            }
        }
    }

    /// Updates received, over every topic.
    pub fn received(&self) -> u64 {
        self.topics.values().map(|t| t.received).sum()
    }

    /// Updates published since this page first knew of each topic.
    pub fn published(&self) -> u64 {
        self.topics
            .values()
            .map(|t| t.latest.saturating_sub(t.first.unwrap_or(t.latest)))
            .sum()
    }

    /// Updates received on one topic.
    pub fn received_on(&self, topic: &str) -> u64 {
        self.topics.get(topic).map_or(0, |t| t.received)
    }

    /// Where to resume a room from (streams mode).
    pub fn room_since(&self, room: &str) -> Option<&str> {
        self.topics.get(&format!("room:{room}"))?.id.as_deref()
    }

    /// Where to resume each stock topic from (streams mode).
    pub fn since(&self) -> HashMap<String, String> {
        self.topics
            .iter()
            .filter(|(topic, _)| topic.starts_with("stock:"))
            .filter_map(|(topic, t)| Some((topic.clone(), t.id.clone()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_gaps_duplicates_and_what_was_published() {
        let mut tally = Tally::default();
        let update = |seq: u64| json!({"type": "stock", "topic": "stock:TEE-RED-M", "seq": seq, "id": format!("{seq}-0")});
        tally.absorb(
            &json!({"type": "snapshot", "stocks": [{"sku": "TEE-RED-M", "seq": 4}], "rooms": []}),
        );
        for seq in [5, 6, 6, 9] {
            tally.absorb(&update(seq));
        }
        let tee = &tally.topics["stock:TEE-RED-M"];
        assert_eq!((tee.received, tee.gaps, tee.out_of_order), (3, 2, 1));
        assert_eq!(tally.published(), 5, "updates 5 to 9");
        assert_eq!(tally.since()["stock:TEE-RED-M"], "9-0");
    }
}
