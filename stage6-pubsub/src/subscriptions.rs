//! Which topics this instance must hear about: a count of local watchers
//! per topic (the seeds' PubSubManager).
//!
//! An instance holds **one** Redis subscription per topic while at least
//! one of its sockets watches it, whatever the number of sockets: the
//! first watcher (0 → 1) subscribes, the last to leave (1 → 0)
//! unsubscribes. Everything here is bookkeeping, no I/O: each call says
//! what to tell Redis ([`Change`]), and the hub hands the changes, in
//! order, to the one task that talks to Redis, so a subscribe and an
//! unsubscribe can never overtake each other.
//!
//! (The seeds' sketch adds the watcher and then checks `length > 1` to
//! decide whether it is already subscribed. Off by one: a lone watcher who
//! leaves and comes back finds length 1, "not subscribed yet", and
//! subscribes again; with counts, 0 → 1 is the only moment to subscribe.)

use std::collections::{BTreeSet, HashMap};

use crate::topic::Topic;

/// A socket, as this instance numbers them.
pub type SocketId = u64;

/// What Redis must be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Subscribe(Topic),
    Unsubscribe(Topic),
}

/// Local watchers by topic.
#[derive(Debug, Default)]
pub struct Subscriptions {
    watchers: HashMap<Topic, BTreeSet<SocketId>>,
}

impl Subscriptions {
    /// `socket` watches `topic`; the first watcher subscribes.
    pub fn watch(&mut self, socket: SocketId, topic: &Topic) -> Option<Change> {
        let watchers = self.watchers.entry(topic.clone()).or_default();
        let first = watchers.is_empty();
        let added = watchers.insert(socket);
        (added && first).then(|| Change::Subscribe(topic.clone()))
    }

    /// `socket` stops watching `topic`; the last watcher unsubscribes.
    pub fn unwatch(&mut self, socket: SocketId, topic: &Topic) -> Option<Change> {
        let watchers = self.watchers.get_mut(topic)?;
        if !watchers.remove(&socket) || !watchers.is_empty() {
            return None;
        }
        self.watchers.remove(topic);
        Some(Change::Unsubscribe(topic.clone()))
    }

    /// `socket` closed: it stops watching everything.
    pub fn leave(&mut self, socket: SocketId) -> Vec<Change> {
        let topics: Vec<Topic> = self
            .watchers
            .iter()
            .filter(|(_, watchers)| watchers.contains(&socket))
            .map(|(topic, _)| topic.clone())
            .collect();
        topics
            .iter()
            .filter_map(|topic| self.unwatch(socket, topic))
            .collect()
    }

    /// The sockets watching `topic`.
    pub fn watchers(&self, topic: &Topic) -> impl Iterator<Item = SocketId> + '_ {
        self.watchers.get(topic).into_iter().flatten().copied()
    }

    /// Every topic with at least one watcher.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.watchers.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tee() -> Topic {
        Topic::Stock("TEE-RED-M".into())
    }

    #[test]
    fn the_first_watcher_subscribes_and_the_last_unsubscribes() {
        let mut subs = Subscriptions::default();
        assert_eq!(subs.watch(1, &tee()), Some(Change::Subscribe(tee())));
        assert_eq!(subs.watch(2, &tee()), None);
        assert_eq!(
            subs.watch(2, &tee()),
            None,
            "watching twice is watching once"
        );
        assert_eq!(subs.unwatch(1, &tee()), None);
        assert_eq!(subs.unwatch(2, &tee()), Some(Change::Unsubscribe(tee())));
        // The seeds' off-by-one: a lone watcher who comes back.
        assert_eq!(subs.watch(3, &tee()), Some(Change::Subscribe(tee())));
        assert_eq!(subs.leave(3), vec![Change::Unsubscribe(tee())]);
        assert_eq!(subs.topics().count(), 0);
    }
}
