//! One instance's hub: which of its sockets watch what, and delivery to
//! them.
//!
//! Every socket registers a [`Watcher`]: a bounded queue (the socket's
//! task sends from it) and a "lagged" flag. Delivering an update to a
//! topic puts it on each watcher's queue without waiting: a full queue
//! means that page is slow, so the update is dropped *for that page only*
//! and its flag raised; the page then gets a snapshot (stock is
//! latest-value state: the newest value replaces all it missed). The hub
//! never waits on a page, so one slow page delays nobody else, and it
//! never waits on Redis either: updates from Redis are handed on as they
//! arrive.
//!
//! The hub also says whether live updates flow ([`Hub::set_live`]): when
//! Redis is unreachable, every socket is told "paused", and "live" (with a
//! snapshot) when it is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, watch};

use crate::subscriptions::{Change, SocketId, Subscriptions};
use crate::topic::Topic;

/// How many messages a socket's queue holds before its page counts as slow.
pub(crate) const QUEUE: usize = 256;

/// One numbered update on a topic, read once when it arrives and then
/// shared by every socket it goes to (the JSON is reference-counted: a
/// thousand watchers do not make a thousand copies).
#[derive(Clone, Debug)]
pub struct Update {
    /// Its number on its topic.
    pub seq: u64,
    /// Its stream entry's id, when it came through a stream (a page
    /// resumes from it).
    pub id: Option<Arc<str>>,
    /// The whole update, as the page receives it.
    pub json: Utf8Bytes,
}

impl Update {
    /// Reads `seq` and `id` out of an update's JSON.
    pub fn parse(json: String) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Numbered<'a> {
            seq: u64,
            #[serde(borrow)]
            id: Option<std::borrow::Cow<'a, str>>,
        }
        let numbered: Numbered<'_> = serde_json::from_str(&json).ok()?;
        let (seq, id) = (numbered.seq, numbered.id.map(|id| Arc::from(id.as_ref())));
        Some(Self {
            seq,
            id,
            json: Utf8Bytes::from(json),
        })
    }
}

/// One message for one page.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// An update on a topic.
    Update { topic: Arc<Topic>, update: Update },
    /// Live updates stopped (Redis is unreachable) or started again.
    Live(bool),
}

/// What the hub keeps of one socket.
#[derive(Clone, Debug)]
pub struct Watcher {
    queue: mpsc::Sender<Delivery>,
    lagged: Arc<AtomicBool>,
    lags: Arc<AtomicU32>,
}

impl Watcher {
    /// A watcher and the receiving end of its queue.
    pub fn new() -> (Self, mpsc::Receiver<Delivery>) {
        let (queue, received) = mpsc::channel(QUEUE);
        let watcher = Self {
            queue,
            lagged: Arc::new(AtomicBool::new(false)),
            lags: Arc::new(AtomicU32::new(0)),
        };
        (watcher, received)
    }

    /// Whether updates were dropped since the last call (and forget it).
    pub fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::AcqRel)
    }

    /// How many times this page's queue overflowed.
    pub fn lags(&self) -> u32 {
        self.lags.load(Ordering::Acquire)
    }

    fn offer(&self, delivery: Delivery) -> bool {
        match self.queue.try_send(delivery) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.lagged.swap(true, Ordering::AcqRel) {
                    self.lags.fetch_add(1, Ordering::AcqRel);
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// What the hub counts, for `/metrics` and the tests.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Updates put on a socket's queue.
    pub delivered: AtomicU64,
    /// Updates dropped for a slow page (it gets a snapshot instead).
    pub dropped: AtomicU64,
    /// Messages that arrived from Redis (pub/sub or streams).
    pub from_redis: AtomicU64,
    /// Sockets closed for being too slow.
    pub closed_slow: AtomicU64,
    /// Messages from pages refused for going past their allowance.
    pub refused_messages: AtomicU64,
    /// Sockets closed for sending on regardless (1008).
    pub closed_flooding: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    subscriptions: Subscriptions,
    sockets: HashMap<SocketId, Watcher>,
    /// Per subscribed topic: which subscription (its number) and whether
    /// Redis has confirmed it.
    ready: HashMap<Topic, (u64, watch::Sender<bool>)>,
    next_order: u64,
    /// The highest update number delivered per topic: what pages of this
    /// instance may hold (see [`Hub::numbers_seen`]).
    seen: HashMap<Topic, u64>,
}

/// A subscription change for the task that talks to Redis, numbered so
/// that its confirmation ([`Hub::confirm`]) cannot be taken for a later
/// subscription to the same topic.
pub type Order = (Change, u64);

/// Resolves once the instance's subscription to a topic is in place
/// (confirmed by Redis), so that a page's snapshot taken after it cannot
/// miss an update published in between.
#[derive(Debug)]
pub struct Ready(Option<watch::Receiver<bool>>);

impl Ready {
    /// Waits for the subscription, until `deadline` at the latest (Redis
    /// may be down: the page is then told live updates are paused). A
    /// deadline, not a duration: a page that watches many topics waits for
    /// all of them within one.
    pub async fn wait_until(self, deadline: tokio::time::Instant) {
        if let Some(mut ready) = self.0 {
            let _ = tokio::time::timeout_at(deadline, ready.wait_for(|ready| *ready)).await;
        }
    }
}

/// The hub of one instance.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    /// Subscription changes, in order, for the task that talks to Redis
    /// (`None` when updates do not travel through Redis).
    changes: Option<mpsc::UnboundedSender<Order>>,
    live: watch::Sender<bool>,
    next_socket: AtomicU64,
    pub stats: HubStats,
}

impl Hub {
    /// A hub; `changes` receives the subscription changes when updates
    /// travel through Redis.
    pub fn new(changes: Option<mpsc::UnboundedSender<Order>>) -> Self {
        Self {
            state: Mutex::default(),
            changes,
            live: watch::Sender::new(true),
            next_socket: AtomicU64::new(1),
            stats: HubStats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change under the lock is a whole insert or remove.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands a change to the task that talks to Redis. Called under the
    /// hub's lock: Redis hears the changes in the order the counts made
    /// them.
    fn tell(&self, state: &mut State, change: Change) {
        let Some(changes) = &self.changes else {
            return;
        };
        let number = match &change {
            Change::Subscribe(topic) => {
                state.next_order += 1;
                let number = state.next_order;
                state
                    .ready
                    .insert(topic.clone(), (number, watch::Sender::new(false)));
                number
            }
            Change::Unsubscribe(topic) => {
                state.ready.remove(topic);
                0
            }
        };
        let _ = changes.send((change, number));
    }

    /// Registers a socket; returns its number.
    pub fn register(&self, watcher: Watcher) -> SocketId {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        self.lock().sockets.insert(id, watcher);
        id
    }

    /// `socket` watches `topic`; the answer resolves once this instance's
    /// subscription to it is in place.
    pub fn watch(&self, socket: SocketId, topic: &Topic) -> Ready {
        let mut state = self.lock();
        if let Some(change) = state.subscriptions.watch(socket, topic) {
            self.tell(&mut state, change);
        }
        Ready(state.ready.get(topic).map(|(_, ready)| ready.subscribe()))
    }

    /// `socket` stops watching `topic`.
    pub fn unwatch(&self, socket: SocketId, topic: &Topic) {
        let mut state = self.lock();
        if let Some(change) = state.subscriptions.unwatch(socket, topic) {
            self.tell(&mut state, change);
        }
    }

    /// `socket` closed.
    pub fn leave(&self, socket: SocketId) {
        let mut state = self.lock();
        state.sockets.remove(&socket);
        for change in state.subscriptions.leave(socket) {
            self.tell(&mut state, change);
        }
    }

    /// Redis confirmed subscription `number` to `topic`.
    pub fn confirm(&self, topic: &Topic, number: u64) {
        if let Some((current, ready)) = self.lock().ready.get(topic) {
            if *current == number {
                ready.send_replace(true);
            }
        }
    }

    /// Every subscription is in place again (after an outage).
    pub fn confirm_all(&self) {
        for (_, ready) in self.lock().ready.values() {
            ready.send_replace(true);
        }
    }

    /// The highest number delivered on each topic, for topics still
    /// watched. After an outage these go back to Redis
    /// ([`crate::live::Live::restore_numbers`]): a Redis that restarted
    /// without its last writes would number the next updates again from
    /// below, and pages would drop them as duplicates.
    pub fn numbers_seen(&self) -> Vec<(Topic, u64)> {
        let mut state = self.lock();
        let State {
            seen,
            subscriptions,
            ..
        } = &mut *state;
        seen.retain(|topic, _| subscriptions.watchers(topic).next().is_some());
        seen.iter().map(|(t, n)| (t.clone(), *n)).collect()
    }

    /// Every topic some socket of this instance watches.
    pub fn topics(&self) -> Vec<Topic> {
        self.lock().subscriptions.topics().cloned().collect()
    }

    /// Hands an update to every local socket watching its topic.
    pub fn deliver(&self, topic: &Topic, update: &Update) {
        let mut state = self.lock();
        match state.seen.get_mut(topic) {
            Some(seen) => *seen = (*seen).max(update.seq),
            None => {
                state.seen.insert(topic.clone(), update.seq);
            }
        }
        let mut shared_topic = None;
        for socket in state.subscriptions.watchers(topic) {
            let Some(watcher) = state.sockets.get(&socket) else {
                continue;
            };
            let topic = shared_topic.get_or_insert_with(|| Arc::new(topic.clone()));
            let delivery = Delivery::Update {
                topic: Arc::clone(topic),
                update: update.clone(),
            };
            let counter = if watcher.offer(delivery) {
                &self.stats.delivered
            } else {
                &self.stats.dropped
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Says whether live updates flow; every socket hears of a change.
    pub fn set_live(&self, live: bool) {
        if self.live.send_replace(live) == live {
            return;
        }
        tracing::warn!(
            live,
            "live updates {}",
            if live { "resumed" } else { "paused" }
        );
        for watcher in self.lock().sockets.values() {
            watcher.offer(Delivery::Live(live));
        }
    }

    /// Whether live updates flow now.
    pub fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    /// How many sockets this instance holds.
    pub fn sockets(&self) -> usize {
        self.lock().sockets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_for_that_page_only_and_flags_it() {
        let (changes, mut told) = mpsc::unbounded_channel();
        let hub = Hub::new(Some(changes));
        let (slow, _never_read) = Watcher::new();
        let (quick, mut received) = Watcher::new();
        let slow_id = hub.register(slow.clone());
        let quick_id = hub.register(quick);
        let tee = Topic::Stock("TEE-RED-M".into());
        let _ = hub.watch(slow_id, &tee);
        let _ = hub.watch(quick_id, &tee);
        assert_eq!(
            told.try_recv().ok(),
            Some((Change::Subscribe(tee.clone()), 1))
        );
        assert!(
            told.try_recv().is_err(),
            "one subscription for two watchers"
        );
        for n in 0..QUEUE + 10 {
            let update = Update::parse(format!("{{\"seq\":{n}}}")).expect("an update");
            hub.deliver(&tee, &update);
            // The quick page reads as it goes.
            assert!(received.try_recv().is_ok());
        }
        assert!(slow.take_lagged(), "the slow page is flagged");
        assert_eq!(slow.lags(), 1);
        assert_eq!(hub.stats.dropped.load(Ordering::Relaxed), 10);
        hub.leave(slow_id);
        hub.leave(quick_id);
        assert_eq!(told.try_recv().ok(), Some((Change::Unsubscribe(tee), 0)));
    }
}
