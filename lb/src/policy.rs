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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::Backend;

/// The balancing policy, as chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    RoundRobin,
    LeastConn,
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

    /// Picks one of `candidates`, or `None` when there are none.
    pub fn pick(&self, candidates: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        if candidates.is_empty() {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let chosen = match self.policy {
            Policy::RoundRobin => &candidates[turn % candidates.len()],
            Policy::LeastConn => {
                // Start the scan at this turn's position so that among equally
                // loaded backends each gets its turn.
                let len = candidates.len();
                (0..len)
                    .map(|offset| &candidates[(turn + offset) % len])
                    .min_by_key(|b| b.in_flight())?
            }
        };
        Some(Arc::clone(chosen))
    }
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
            .map(|_| picker.pick(&set).expect("a backend").name().to_owned())
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
            assert_eq!(picker.pick(&set).expect("a backend").name(), "b2");
        }
    }

    #[test]
    fn least_conn_spreads_ties_in_turn() {
        let set = backends(3);
        let picker = Picker::new(Policy::LeastConn);
        let mut names: Vec<_> = (0..3)
            .map(|_| picker.pick(&set).expect("a backend").name().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["b0", "b1", "b2"]);
    }

    #[test]
    fn nothing_to_pick_from_gives_none() {
        assert!(Picker::new(Policy::RoundRobin).pick(&[]).is_none());
    }
}
