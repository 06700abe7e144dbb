//! The chaos schedule: what happens to the instances, and when.
//!
//! The same for every stage of a run, fixed by the seed: at set fractions of
//! the run an instance crashes (SIGKILL), comes back, the fleet scales out
//! (a new instance joins the balancer) and scales in (an instance is
//! drained, removed from the balancer and stopped), and a second crash
//! follows. Which instance is chosen comes from the seed. The same schedule
//! runs behind this project's balancer or behind nginx or HAProxy
//! ([`Target`]). With `--store` (stage 4), the session store itself is
//! killed (SIGKILL) and started again half-way ([`StoreProcess`]): what it
//! keeps is the lesson.

use std::time::Duration;

use shop::Services;
use shop::front::Behind;
use shop::services::dynamodb::DynamoServer;
use shop::services::memcached::MemcachedServer;
use shop::services::postgres::PostgresCluster;
use shop::services::redis::RedisServer;
use shop::topology::Topology;
use stage4::stores::StoreKind;

use stage7::data_tier::DataTier;
use stage7::region::Zone;

use crate::rng::Rng;

/// One thing done to the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL a running instance, as a crash would.
    Crash,
    /// Start the last crashed instance again, on its own port.
    Restart,
    /// Start one more instance and add it to the balancer.
    ScaleOut,
    /// Drain an instance, remove it from the balancer, stop it.
    ScaleIn,
    /// Stage 7: zone a goes dark (its servers and instances killed, its
    /// links cut).
    ZoneDown,
    /// Stage 7: zone a comes back (servers re-joined, instances restarted).
    ZoneUp,
    /// Stage 7, `--partition-first`: zone b's data machine is cut off from
    /// the others shortly before zone a goes dark (healed when it does).
    Partition,
    /// Stage 4 with `--store`: the session store killed (SIGKILL) and
    /// started again on its own port (and, where it keeps one, its data).
    StoreRestart,
}

#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub at: Duration,
    pub action: Action,
}

/// The schedule for a run of `duration` (with `store_restart`, the
/// session store's crash and restart between the scale-out and the
/// scale-in).
pub fn schedule(duration: Duration, store_restart: bool) -> Vec<Event> {
    [
        (0.20, Action::Crash),
        (0.35, Action::Restart),
        (0.50, Action::ScaleOut),
        (0.575, Action::StoreRestart),
        (0.65, Action::ScaleIn),
        (0.80, Action::Crash),
        (0.90, Action::Restart),
    ]
    .into_iter()
    .filter(|(_, action)| store_restart || *action != Action::StoreRestart)
    .map(|(fraction, action)| Event {
        at: duration.mul_f64(fraction),
        action,
    })
    .collect()
}

/// Stage 7's schedule: zone a lost for a third of the run, then back;
/// with `partition_first`, zone b's data cut off from it for the
/// twentieth of the run before.
pub fn zone_schedule(duration: Duration, partition_first: bool) -> Vec<Event> {
    let partition = partition_first.then_some((0.25, Action::Partition));
    partition
        .into_iter()
        .chain([(0.30, Action::ZoneDown), (0.65, Action::ZoneUp)])
        .map(|(fraction, action)| Event {
            at: duration.mul_f64(fraction),
            action,
        })
        .collect()
}

/// What the chaos schedule acts on: a stage's instances, behind this
/// project's balancer ([`Topology`]) or behind a real engine ([`Behind`]).
pub trait Target: Sync {
    /// Where the shoppers go.
    fn url(&self) -> String;
    /// The instances, in start order.
    fn instance_names(&self) -> Vec<String>;
    /// SIGKILL, as a crash would.
    fn crash(&self, name: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Start a crashed instance again, on its own port.
    fn restart(&self, name: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// One more instance, in rotation; returns its name.
    fn scale_out(&self) -> impl Future<Output = Result<String, String>> + Send;
    /// Out of rotation, then stopped.
    fn scale_in(&self, name: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Instance processes running now.
    fn running(&self) -> usize {
        self.instance_names().len()
    }
    /// What the auto scaling group decided, if one runs the instances.
    fn scaling(&self) -> Option<lb::supervisor::ScalingView> {
        None
    }
}

impl Target for Topology {
    fn url(&self) -> String {
        Topology::url(self)
    }

    fn instance_names(&self) -> Vec<String> {
        self.instances().into_iter().map(|i| i.name).collect()
    }

    fn running(&self) -> usize {
        self.instances().iter().filter(|i| i.pid.is_some()).count()
    }

    fn scaling(&self) -> Option<lb::supervisor::ScalingView> {
        Topology::scaling(self)
    }

    async fn crash(&self, name: &str) -> Result<(), String> {
        self.kill_instance(name).await.map_err(|e| e.to_string())
    }

    async fn restart(&self, name: &str) -> Result<(), String> {
        self.restart_instance(name).await.map_err(|e| e.to_string())
    }

    async fn scale_out(&self) -> Result<String, String> {
        self.add_instance()
            .await
            .map(|i| i.name)
            .map_err(|e| e.to_string())
    }

    async fn scale_in(&self, name: &str) -> Result<(), String> {
        let backends = self.balancer().backends();
        if let Some(backend) = backends.get(name) {
            backend.drain();
        }
        // Let requests in flight finish, as a real deregistration delay
        // would (much shorter here).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = backends.remove(name);
        self.kill_instance(name).await.map_err(|e| e.to_string())
    }
}

impl Target for Behind {
    fn url(&self) -> String {
        Behind::url(self)
    }

    fn instance_names(&self) -> Vec<String> {
        self.instances().into_iter().map(|i| i.name).collect()
    }

    async fn crash(&self, name: &str) -> Result<(), String> {
        self.kill_instance(name).await.map_err(|e| e.to_string())
    }

    async fn restart(&self, name: &str) -> Result<(), String> {
        self.restart_instance(name).await.map_err(|e| e.to_string())
    }

    async fn scale_out(&self) -> Result<String, String> {
        self.add_instance()
            .await
            .map(|i| i.name)
            .map_err(|e| e.to_string())
    }

    async fn scale_in(&self, name: &str) -> Result<(), String> {
        // Rewritten configuration, engine reloaded, a short delay, stopped.
        self.remove_instance(name).await.map_err(|e| e.to_string())
    }
}

/// The server behind stage 4's `--store`, which the schedule kills and
/// starts again.
#[derive(Debug)]
pub enum StoreProcess<'s> {
    Redis(&'s mut RedisServer),
    Memcached(&'s mut MemcachedServer),
    /// Sessions use only the primary.
    Postgres(&'s mut PostgresCluster),
    /// For `dynamodb-cached` too: the record, not the cache.
    Dynamodb(&'s mut DynamoServer),
}

impl<'s> StoreProcess<'s> {
    /// The private server `services` started for `kind`.
    pub fn find(services: &'s mut Services, kind: StoreKind) -> Option<Self> {
        Some(match kind {
            StoreKind::Redis => Self::Redis(services.get_mut()?),
            StoreKind::Memcached => Self::Memcached(services.get_mut()?),
            StoreKind::Postgres => Self::Postgres(services.get_mut()?),
            StoreKind::Dynamodb | StoreKind::DynamodbCached => Self::Dynamodb(services.get_mut()?),
        })
    }

    /// `kill -9`, then the same server started again.
    async fn kill_and_restart(&mut self) -> Result<(), String> {
        let started = match self {
            Self::Redis(server) => {
                server.kill();
                server.restart().await
            }
            Self::Memcached(server) => {
                server.kill();
                server.restart().await
            }
            Self::Postgres(cluster) => {
                cluster.kill_primary();
                cluster.start_primary().await
            }
            Self::Dynamodb(server) => {
                server.kill();
                server.restart().await
            }
        };
        started.map_err(|error| error.to_string())
    }
}

/// The schedule played against a target as a run goes on: each call to
/// [`Playback::due`] does whatever has come due.
#[derive(Debug)]
pub struct Playback<'z> {
    chaos: Chaos,
    zones: Option<&'z DataTier>,
    store: Option<StoreProcess<'z>>,
    events: std::iter::Peekable<std::vec::IntoIter<Event>>,
    started: std::time::Instant,
    /// What was done, in order (`"4.0s crashed: i2"`).
    pub log: Vec<String>,
}

impl<'z> Playback<'z> {
    /// The schedule for a run of `duration` that started at `started`
    /// (none at all with `quiet_fleet`; the zone schedule with `zones`; a
    /// store restart with `store`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seed: u64,
        duration: Duration,
        quiet_fleet: bool,
        target: &impl Target,
        zones: Option<&'z DataTier>,
        store: Option<StoreProcess<'z>>,
        partition_first: bool,
        started: std::time::Instant,
    ) -> Self {
        let events = match (quiet_fleet, zones) {
            (true, _) => Vec::new(),
            (false, Some(_)) => zone_schedule(duration, partition_first),
            (false, None) => schedule(duration, store.is_some()),
        };
        Self {
            chaos: Chaos::new(seed, target),
            zones,
            store,
            events: events.into_iter().peekable(),
            started,
            log: Vec::new(),
        }
    }

    /// Whether some event of the schedule is still to be done.
    pub fn is_pending(&self) -> bool {
        self.events.len() > 0
    }

    /// Says in the log how far past `duration` the run went to finish the
    /// schedule, if it did; and which events it gave up on, if any.
    pub fn note_overtime(&mut self, duration: Duration) {
        let elapsed = self.started.elapsed();
        let undone: Vec<String> = self
            .events
            .by_ref()
            .map(|e| format!("{:?}", e.action))
            .collect();
        if !undone.is_empty() {
            self.log.push(format!(
                "{:.1}s not done, the run's overtime was up: {}",
                elapsed.as_secs_f64(),
                undone.join(", ")
            ));
        } else {
            // Ending a loop tick or an event late is not worth a line.
            let past = elapsed.saturating_sub(duration);
            if past > Duration::from_millis(500) {
                self.log.push(format!(
                    "{:.1}s the run went on {:.1}s past its duration to finish the chaos schedule",
                    elapsed.as_secs_f64(),
                    past.as_secs_f64()
                ));
            }
        }
    }

    /// Does the next event if it has come due; returns what was done.
    pub async fn due(&mut self, target: &impl Target) -> Option<String> {
        let elapsed = self.started.elapsed();
        let event = self.events.next_if(|e| elapsed >= e.at)?;
        let done = match (event.action, self.zones) {
            (Action::ZoneDown, Some(zones)) => zone_down(zones, target).await,
            (Action::ZoneUp, Some(zones)) => zone_up(zones, target).await,
            (Action::Partition, Some(zones)) => match zones.partition_zone_b_data(true) {
                Ok(()) => "zone b's data cut off from zone a (a partition)".to_owned(),
                Err(error) => format!("partition failed: {error}"),
            },
            (Action::StoreRestart, _) => match &mut self.store {
                Some(store) => match store.kill_and_restart().await {
                    Ok(()) => "session store killed (kill -9) and started again".to_owned(),
                    Err(error) => format!("session store restart failed: {error}"),
                },
                None => "StoreRestart: skipped, no store of ours".to_owned(),
            },
            (action, _) => self.chaos.act(action, target).await,
        };
        let line = format!("{:.1}s {done}", self.started.elapsed().as_secs_f64());
        self.log.push(line.clone());
        Some(line)
    }
}

/// Carries out the schedule against a target, returning what was done.
#[derive(Debug)]
pub struct Chaos {
    rng: Rng,
    running: Vec<String>,
    crashed: Vec<String>,
}

impl Chaos {
    pub fn new(seed: u64, target: &impl Target) -> Self {
        Self {
            rng: Rng::fork(seed, 0),
            running: target.instance_names(),
            crashed: Vec::new(),
        }
    }

    /// Does `action`; returns a line saying what happened.
    pub async fn act(&mut self, action: Action, target: &impl Target) -> String {
        match action {
            Action::ZoneDown | Action::ZoneUp | Action::Partition | Action::StoreRestart => {
                format!("{action:?}: skipped, not this stage's")
            }
            Action::Crash | Action::ScaleIn if self.running.len() <= 1 => {
                format!("{action:?}: skipped, one instance left")
            }
            Action::Crash => {
                let victim = self.running.remove(self.rng.index(self.running.len()));
                let outcome = target.crash(&victim).await;
                self.crashed.push(victim.clone());
                describe("crashed", &victim, outcome)
            }
            Action::Restart => match self.crashed.pop() {
                Some(name) => {
                    let outcome = target.restart(&name).await;
                    if outcome.is_ok() {
                        self.running.push(name.clone());
                    }
                    describe("restarted", &name, outcome)
                }
                None => "Restart: skipped, nothing crashed".to_owned(),
            },
            Action::ScaleOut => match target.scale_out().await {
                Ok(name) => {
                    self.running.push(name.clone());
                    format!("scaled out: {name} joined")
                }
                Err(error) => format!("scale out failed: {error}"),
            },
            Action::ScaleIn => {
                let victim = self.running.remove(self.rng.index(self.running.len()));
                let outcome = target.scale_in(&victim).await;
                describe("scaled in", &victim, outcome)
            }
        }
    }
}

/// Zone a goes dark: its servers (through the data tier) and its
/// instances (`a1`, `a2`, …: killed already with their namespaces, and
/// collected by the launcher here).
async fn zone_down(zones: &DataTier, target: &impl Target) -> String {
    let killed = zones.take_zone_down(Zone::A).await;
    // A partition before (`--partition-first`) ends with zone a.
    let _ = zones.partition_zone_b_data(false);
    for name in target
        .instance_names()
        .iter()
        .filter(|n| n.starts_with('a'))
    {
        let _ = target.crash(name).await;
    }
    match killed {
        Ok(count) => format!("zone a went dark ({count} processes killed, links cut)"),
        Err(error) => format!("zone a down failed: {error}"),
    }
}

/// Zone a comes back: its servers re-join, its instances start again.
async fn zone_up(zones: &DataTier, target: &impl Target) -> String {
    let back = zones.bring_zone_back(Zone::A).await;
    for name in target
        .instance_names()
        .iter()
        .filter(|n| n.starts_with('a'))
    {
        let _ = target.restart(name).await;
    }
    match back {
        Ok(done) => format!("zone a came back: {}", done.join("; ")),
        Err(error) => format!("zone a back failed: {error}"),
    }
}

fn describe(what: &str, name: &str, outcome: Result<(), String>) -> String {
    match outcome {
        Ok(()) => format!("{what}: {name}"),
        Err(error) => format!("{what} {name} failed: {error}"),
    }
}
