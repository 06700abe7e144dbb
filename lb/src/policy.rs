//! Which backend gets the next request.
//!
//! Two policies, the two every balancer ships (nginx's default and
//! `least_conn`, HAProxy's `roundrobin` and `leastconn`, an ALB's
//! `round_robin` and `least_outstanding_requests`):
//!
//! * **round-robin** hands requests out in turn. Perfectly fair in *count*,
//!   blind to how long each request takes.
//! * **least-connections** picks the backend with the fewest requests in
//!   flight, so a slow instance gets fewer new requests. Ties are broken in
//!   turn, otherwise an idle pool would send everything to the first backend.
//!
//! Two more, for long-lived connections:
//!
//! * **least-load** picks by the load each backend *reports* on its health
//!   check (requests in flight plus open sockets): what the seeds' router
//!   does, and HAProxy's `agent-check`. A backend knows about sockets other
//!   balancers sent it; this balancer only knows its own. The report is as
//!   old as the last check, so ties fall to this balancer's own count.
//! * **hash-param** sends every request with the same value of one query
//!   parameter (`?room=tees`) to the same backend, by rendezvous hashing:
//!   each backend scores `hash(value, name)`, the highest wins. A removed
//!   backend moves only its own values; the others stay put (consistent
//!   hashing; HAProxy's `balance url_param`, nginx's `hash … consistent`).
//!   Requests without the parameter go round-robin.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::Backend;

/// The balancing policy, as chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    RoundRobin,
    LeastConn,
    LeastLoad,
    HashParam,
}

/// A policy plus the little state it needs (the turn counter).
#[derive(Debug)]
pub struct Picker {
    policy: Policy,
    turn: AtomicUsize,
}

impl Picker {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            turn: AtomicUsize::new(0),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Picks one of `candidates`, or `None` when there are none. `key` is
    /// the value the hash-param policy hashes (none: round-robin).
    pub fn pick(&self, candidates: &[Arc<Backend>], key: Option<&str>) -> Option<Arc<Backend>> {
        if candidates.is_empty() {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let len = candidates.len();
        // Among equals, each in its turn (see the module's docs).
        let in_turn = |offset: usize| &candidates[(turn + offset) % len];
        let chosen = match (self.policy, key) {
            (Policy::HashParam, Some(key)) => candidates
                .iter()
                .max_by_key(|b| rendezvous(key, b.name()))?,
            (Policy::RoundRobin | Policy::HashParam, _) => &candidates[turn % len],
            (Policy::LeastLoad, _) => (0..len)
                .map(in_turn)
                .min_by_key(|b| (b.reported_load().unwrap_or(u64::MAX), b.in_flight()))?,
            (Policy::LeastConn, _) => (0..len).map(in_turn).min_by_key(|b| b.in_flight())?,
        };
        Some(Arc::clone(chosen))
    }
}

/// A backend's score for a key: the same on every balancer and every run.
fn rendezvous(key: &str, backend: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    (key, backend).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendSpec, Limits};

    fn backends(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                Arc::new(Backend::new(
                    BackendSpec::new(&format!("b{i}"), &format!("http://127.0.0.1:{}", 4000 + i))
                        .expect("spec"),
                    Limits::default(),
                ))
            })
            .collect()
    }

    #[test]
    fn round_robin_takes_turns() {
        let set = backends(3);
        let picker = Picker::new(Policy::RoundRobin);
        let names: Vec<_> = (0..6)
            .map(|_| {
                picker
                    .pick(&set, None)
                    .expect("a backend")
                    .name()
                    .to_owned()
            })
            .collect();
        assert_eq!(names, ["b0", "b1", "b2", "b0", "b1", "b2"]);
    }

    #[tokio::test]
    async fn least_conn_avoids_the_busy_backend() {
        let set = backends(3);
        let limits = Limits::default();
        let _busy = (
            set[0].admit(&limits).await,
            set[0].admit(&limits).await,
            set[1].admit(&limits).await,
        );
        let picker = Picker::new(Policy::LeastConn);
        for _ in 0..5 {
            assert_eq!(picker.pick(&set, None).expect("a backend").name(), "b2");
        }
    }

    #[test]
    fn least_conn_spreads_ties_in_turn() {
        let set = backends(3);
        let picker = Picker::new(Policy::LeastConn);
        let mut names: Vec<_> = (0..3)
            .map(|_| {
                picker
                    .pick(&set, None)
                    .expect("a backend")
                    .name()
                    .to_owned()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["b0", "b1", "b2"]);
    }

    #[test]
    fn nothing_to_pick_from_gives_none() {
        assert!(Picker::new(Policy::RoundRobin).pick(&[], None).is_none());
    }

    #[test]
    fn hash_param_keeps_a_key_on_one_backend_and_moves_only_a_removed_ones() {
        let set = backends(3);
        let picker = Picker::new(Policy::HashParam);
        let rooms: Vec<String> = (0..60).map(|i| format!("room{i}")).collect();
        let home = |set: &[Arc<Backend>], room: &str| {
            picker
                .pick(set, Some(room))
                .expect("a backend")
                .name()
                .to_owned()
        };
        let before: Vec<String> = rooms.iter().map(|r| home(&set, r)).collect();
        for (room, first) in rooms.iter().zip(&before) {
            assert_eq!(&home(&set, room), first, "the same room, the same backend");
        }
        let without_b1: Vec<Arc<Backend>> =
            set.iter().filter(|b| b.name() != "b1").cloned().collect();
        for (room, first) in rooms.iter().zip(&before) {
            if first != "b1" {
                assert_eq!(&home(&without_b1, room), first, "only b1's rooms move");
            }
        }
        let spread: std::collections::BTreeSet<&String> = before.iter().collect();
        assert_eq!(spread.len(), 3, "sixty rooms land on every backend");
    }

    #[test]
    fn least_load_follows_what_backends_report() {
        let set = backends(3);
        set[0].record_load(10);
        set[1].record_load(2);
        set[2].record_load(7);
        let picker = Picker::new(Policy::LeastLoad);
        assert_eq!(picker.pick(&set, None).expect("a backend").name(), "b1");
    }
}
