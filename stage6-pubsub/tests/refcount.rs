//! The hub's one-subscription-per-topic count under races: sockets on
//! several threads watching, unwatching and closing at once. Whatever the
//! interleaving, what Redis is told must make sense on its own (per topic:
//! subscribe, unsubscribe, subscribe, … never twice the same in a row) and
//! must end where the watchers are (subscribed exactly to the topics some
//! socket still watches).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use proptest::prelude::*;
use stage6::hub::{Hub, Watcher};
use stage6::subscriptions::Change;
use stage6::topic::Topic;

#[derive(Clone, Debug)]
enum Op {
    Watch(usize, usize),
    Unwatch(usize, usize),
    Close(usize),
}

const TOPICS: usize = 4;
const SOCKETS_PER_THREAD: usize = 3;

fn topic(n: usize) -> Topic {
    Topic::Stock(format!("TEE-RED-{n}"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..SOCKETS_PER_THREAD, 0..TOPICS).prop_map(|(s, t)| Op::Watch(s, t)),
        3 => (0..SOCKETS_PER_THREAD, 0..TOPICS).prop_map(|(s, t)| Op::Unwatch(s, t)),
        1 => (0..SOCKETS_PER_THREAD).prop_map(Op::Close),
    ]
}

/// One thread's sockets: runs its ops and returns what they still watch.
fn run_thread(hub: &Hub, ops: &[Op]) -> BTreeSet<Topic> {
    let mut sockets: Vec<(u64, BTreeSet<Topic>)> = (0..SOCKETS_PER_THREAD)
        .map(|_| (hub.register(Watcher::new().0), BTreeSet::new()))
        .collect();
    for op in ops {
        match *op {
            Op::Watch(s, t) => {
                let _ready = hub.watch(sockets[s].0, &topic(t));
                sockets[s].1.insert(topic(t));
            }
            Op::Unwatch(s, t) => {
                hub.unwatch(sockets[s].0, &topic(t));
                sockets[s].1.remove(&topic(t));
            }
            Op::Close(s) => {
                hub.leave(sockets[s].0);
                // The page reconnects: a new socket in its place.
                sockets[s] = (hub.register(Watcher::new().0), BTreeSet::new());
            }
        }
        std::thread::yield_now();
    }
    sockets
        .into_iter()
        .flat_map(|(_, watched)| watched)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn subscribe_and_unsubscribe_races_keep_one_subscription_per_watched_topic(
        threads in prop::collection::vec(prop::collection::vec(op(), 0..60), 2..5)
    ) {
        let (changes, mut told) = tokio::sync::mpsc::unbounded_channel();
        let hub = Arc::new(Hub::new(Some(changes)));
        let handles: Vec<_> = threads
            .into_iter()
            .map(|ops| {
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || run_thread(&hub, &ops))
            })
            .collect();
        let mut still_watched = BTreeSet::new();
        for handle in handles {
            still_watched.extend(handle.join().expect("a thread"));
        }

        // Replay what Redis was told, in order.
        let mut subscribed: HashMap<Topic, bool> = HashMap::new();
        while let Ok((change, _number)) = told.try_recv() {
            match change {
                Change::Subscribe(t) => {
                    let was = subscribed.insert(t.clone(), true).unwrap_or(false);
                    prop_assert!(!was, "subscribed twice to {}", t);
                }
                Change::Unsubscribe(t) => {
                    let was = subscribed.insert(t.clone(), false).unwrap_or(false);
                    prop_assert!(was, "unsubscribed from {} without a subscription", t);
                }
            }
        }
        let ends_subscribed: BTreeSet<Topic> =
            subscribed.into_iter().filter(|(_, on)| *on).map(|(t, _)| t).collect();
        prop_assert_eq!(&ends_subscribed, &still_watched);
        let hub_topics: BTreeSet<Topic> = hub.topics().into_iter().collect();
        prop_assert_eq!(&hub_topics, &still_watched);
    }
}
