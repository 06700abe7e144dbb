//! Hooks that let the dashboard act on instances, not just on backends.
//!
//! The balancer knows backends as URLs; it cannot start or kill a process.
//! Whoever started the instances (the stages' launcher, `stageN up`) can,
//! and hands the balancer a [`Supervisor`]. The dashboard then shows kill,
//! restart and add buttons, and the admin API answers
//! `POST /_lb/instances`, `POST /_lb/instances/{name}/kill|restart`.
//! A plain `lb` binary has no supervisor and shows no such buttons. A
//! launcher that placed its instances in availability zones (stage 7) also
//! names the zones, and the dashboard offers to take a whole zone down and
//! bring it back (`POST /_lb/zones/{zone}/down|up`). A launcher that
//! scales its instances on its own (an auto scaling group, `--autoscale`)
//! reports what it decided, and why ([`ScalingView`], `GET /_lb/scaling`).

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::backend::BackendSpec;

/// A boxed future, so the trait can be used as `dyn Supervisor`.
pub type SupervisorFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Controls the processes behind the backends.
pub trait Supervisor: Send + Sync + 'static {
    /// Kills the instance behind backend `name` (SIGKILL: a crash).
    fn kill(&self, name: &str) -> SupervisorFuture<'_, ()>;
    /// Starts the instance behind backend `name` again, on the same address.
    fn restart(&self, name: &str) -> SupervisorFuture<'_, ()>;
    /// Starts one more instance and returns it as a backend to add.
    fn add(&self) -> SupervisorFuture<'_, BackendSpec>;
    /// The availability zones the instances run in; none by default.
    fn zones(&self) -> Vec<String> {
        Vec::new()
    }
    /// Takes zone `zone` down (everything in it, not only the instances)
    /// or, with `up`, brings it back; returns what was done.
    fn set_zone(&self, zone: &str, up: bool) -> SupervisorFuture<'_, String> {
        let _ = up;
        let message = format!("there is no zone {zone} here");
        Box::pin(async move { Err(message) })
    }
    /// What the auto scaling group behind the backends is doing, if there
    /// is one; none by default.
    fn scaling(&self) -> Option<ScalingView> {
        None
    }
}

/// An auto scaling group as the dashboard shows it: its bounds, its
/// target, the instance counts, and its latest decisions with reasons.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalingView {
    pub min: usize,
    pub max: usize,
    /// The load per instance it steers toward.
    pub target_load: f64,
    /// What "load" means here (e.g. `requests/s per instance`).
    pub metric: String,
    /// The load per in-service instance, averaged over the last window.
    pub load_per_instance: f64,
    /// How many instances it wants.
    pub desired: usize,
    /// Instance processes running (draining ones included).
    pub running: usize,
    /// Backends the balancer's health checks call up.
    pub healthy: usize,
    /// Newest last.
    pub decisions: Vec<ScalingDecision>,
}

/// One thing the auto scaling group did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingDecision {
    /// Milliseconds since the group started.
    pub at_ms: u64,
    /// `scale-out`, `scale-in`, `replace` or `failed`.
    pub action: String,
    /// Why, in words and figures.
    pub reason: String,
}
