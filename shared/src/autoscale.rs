//! An auto scaling group for `stageN up --autoscale MIN..MAX --target-load N`.
//!
//! The point of a stateless tier is that instances may come and go at any
//! moment. Here they do, on their own: every second the group measures the
//! load per instance and keeps it near a target, as an AWS Auto Scaling
//! group with a *target tracking* policy does.
//!
//! * **The metric.** By default, requests per second per in-service
//!   instance, counted by the balancer (ALB's `RequestCountPerTarget`);
//!   with `--scale-on in-flight`, the load the instances report on their
//!   health checks: requests in flight plus open WebSockets (the seeds'
//!   router, which "keeps sending … health status along with usage").
//!   Either is averaged over a window, so one busy second is not a trend.
//! * **Scale out** at once when the average is above the target: to
//!   `ceil(total load / target)` instances, then a cooldown before the next
//!   scale-out (a new instance needs a moment before its load shows).
//! * **Scale in** only when the load has stayed low for a whole cooldown,
//!   one instance at a time, and only while the instances left would stay
//!   under 90 % of the target: the gap between the two thresholds is what
//!   keeps the group from flapping (out, in, out…). Scaling in is a kill
//!   with good manners: the balancer *drains* the instance (no new
//!   shoppers; requests in flight finish), waits until nothing is in
//!   flight or the deregistration delay runs out, removes it, and only
//!   then stops the process (SIGTERM). Whatever the instance kept in its
//!   own memory is gone: stage 2's pinned carts are; stages 3 to 5 lose
//!   nothing.
//! * **Health-check replacement**: an instance the balancer has called
//!   down for longer than the grace period (crashed, or frozen) is killed
//!   and replaced by a new one.
//! * Never fewer than MIN nor more than MAX, whatever the load says.
//!
//! Every decision is recorded with its reason, in figures, and the
//! dashboard shows it (`GET /_lb/scaling`).
//!
//! What AWS does beyond this: the cooldowns and windows are minutes, not
//! seconds (target tracking scales in after 15 minutes of low load); it
//! balances instances across zones first when it picks one to terminate
//! (this group takes an unhealthy one, else the oldest, as the
//! `OldestInstance` policy does); and lifecycle hooks let an
//! instance finish its own work before it is terminated.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb::supervisor::{ScalingDecision, ScalingView};
use lb::{Backend, BackendState, Balancer};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::topology::Fleet;

/// How many decisions the group remembers (the dashboard lists them).
const DECISIONS_KEPT: usize = 50;
/// Scale in only while the instances left stay under this share of the
/// target (the hysteresis that prevents flapping).
const SCALE_IN_HEADROOM: f64 = 0.9;
/// How often a draining instance is checked for requests still in flight.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// The fewest and the most instances: `MIN..MAX` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleRange {
    pub min: usize,
    pub max: usize,
}

impl FromStr for ScaleRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{text:?} is not MIN..MAX (e.g. 2..6)");
        let (min, max) = text.split_once("..").ok_or_else(usage)?;
        let min: usize = min.trim().parse().map_err(|_| usage())?;
        let max: usize = max.trim().parse().map_err(|_| usage())?;
        if min == 0 {
            return Err("the group needs at least one instance: MIN must be 1 or more".to_owned());
        }
        if min > max {
            return Err(format!("MIN ({min}) is more than MAX ({max})"));
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for ScaleRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.min, self.max)
    }
}

/// What the group measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMetric {
    /// Requests per second per in-service instance, counted by the
    /// balancer (ALB's `RequestCountPerTarget`).
    Requests,
    /// Requests in flight plus open WebSockets per instance, as the
    /// instances report them on their health checks.
    InFlight,
}

impl LoadMetric {
    fn unit(self) -> &'static str {
        match self {
            Self::Requests => "requests/s per instance",
            Self::InFlight => "in flight + sockets per instance",
        }
    }
}

/// How the group behaves. [`AutoscaleConfig::new`] gives the teaching
/// defaults: seconds where AWS uses minutes, so a learner sees it happen.
#[derive(Clone, Copy, Debug)]
pub struct AutoscaleConfig {
    pub range: ScaleRange,
    /// The load per instance to keep near.
    pub target_load: f64,
    pub metric: LoadMetric,
    /// How often the group looks.
    pub interval: Duration,
    /// The load is averaged over this long.
    pub window: Duration,
    /// After a scale-out, no other scale-out for this long.
    pub scale_out_cooldown: Duration,
    /// The load must stay low this long before a scale-in, and this long
    /// must pass after any scaling before the next scale-in.
    pub scale_in_cooldown: Duration,
    /// How long a draining instance may finish its requests.
    pub deregistration_delay: Duration,
    /// An instance down for longer than this is replaced.
    pub unhealthy_grace: Duration,
}

impl AutoscaleConfig {
    pub fn new(range: ScaleRange, target_load: f64) -> Self {
        Self {
            range,
            target_load,
            metric: LoadMetric::Requests,
            interval: Duration::from_secs(1),
            window: Duration::from_secs(5),
            scale_out_cooldown: Duration::from_secs(10),
            scale_in_cooldown: Duration::from_secs(30),
            deregistration_delay: Duration::from_secs(10),
            unhealthy_grace: Duration::from_secs(10),
        }
    }

    /// Whether the configuration makes sense.
    pub fn check(&self) -> Result<(), String> {
        if !(self.target_load.is_finite() && self.target_load > 0.0) {
            return Err(format!(
                "--target-load must be above 0 (got {})",
                self.target_load
            ));
        }
        if self.interval.is_zero() || self.window < self.interval {
            return Err("the window must be at least one interval long".to_owned());
        }
        Ok(())
    }
}

/// How many instances carry `total_load` at `target` each, within bounds.
pub(crate) fn desired(total_load: f64, target: f64, range: ScaleRange) -> usize {
    // A float count of instances: rounding up is the point (1.2 instances'
    // worth of load needs 2), and the clamp bounds it.
    let needed = (total_load / target).ceil();
    let needed = if needed.is_finite() && needed > 0.0 {
        needed.min(range.max as f64) as usize
    } else {
        0
    };
    needed.clamp(range.min, range.max)
}

/// Whether one instance fewer would still run under the headroom.
pub(crate) fn may_scale_in(total_load: f64, target: f64, in_service: usize) -> bool {
    in_service > 1 && total_load / (in_service - 1) as f64 <= target * SCALE_IN_HEADROOM
}

/// What the group shows the dashboard, updated by the group's task.
#[derive(Debug)]
pub(crate) struct ScalingState {
    started: Instant,
    view: Mutex<ScalingView>,
}

impl ScalingState {
    fn new(config: &AutoscaleConfig) -> Self {
        Self {
            started: Instant::now(),
            view: Mutex::new(ScalingView {
                min: config.range.min,
                max: config.range.max,
                target_load: config.target_load,
                metric: config.metric.unit().to_owned(),
                ..ScalingView::default()
            }),
        }
    }

    pub(crate) fn view(&self) -> ScalingView {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ScalingView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, action: &str, reason: String) {
        tracing::info!(action, %reason, "auto scaling");
        let at_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut view = self.lock();
        if view.decisions.len() == DECISIONS_KEPT {
            view.decisions.remove(0);
        }
        view.decisions.push(ScalingDecision {
            at_ms,
            action: action.to_owned(),
            reason,
        });
    }
}

/// The running group: stops when dropped.
#[derive(Debug)]
pub(crate) struct Autoscaler {
    task: JoinHandle<()>,
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Autoscaler {
    /// Starts the group's loop over `fleet`, behind `balancer`.
    pub(crate) fn start(
        config: AutoscaleConfig,
        fleet: Arc<Fleet>,
        balancer: Arc<Balancer>,
    ) -> (Self, Arc<ScalingState>) {
        let state = Arc::new(ScalingState::new(&config));
        let group = Group {
            config,
            fleet,
            balancer,
            state: Arc::clone(&state),
            samples: VecDeque::new(),
            last_served: HashMap::new(),
            down_since: HashMap::new(),
            last_scale_out: None,
            last_scaling: None,
            low_since: None,
        };
        let task = tokio::spawn(group.run());
        (Self { task }, state)
    }
}

/// One measurement: how much load, over how long.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Requests counted (requests metric) or load summed (in-flight).
    load: f64,
    over: Duration,
}

/// The group's loop and what it remembers between ticks.
struct Group {
    config: AutoscaleConfig,
    fleet: Arc<Fleet>,
    balancer: Arc<Balancer>,
    state: Arc<ScalingState>,
    samples: VecDeque<Sample>,
    /// Each backend's `served` counter at the last tick.
    last_served: HashMap<String, u64>,
    /// When each unhealthy backend was first seen down.
    down_since: HashMap<String, Instant>,
    last_scale_out: Option<Instant>,
    /// The last scale-out or scale-in (replacements do not count).
    last_scaling: Option<Instant>,
    /// Since when the load has been low enough to scale in.
    low_since: Option<Instant>,
}

impl Group {
    async fn run(mut self) {
        let mut ticks = tokio::time::interval(self.config.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            ticks.tick().await;
            let now = Instant::now();
            let over = now.saturating_duration_since(last);
            last = now;
            self.tick(now, over).await;
        }
    }

    async fn tick(&mut self, now: Instant, over: Duration) {
        let backends = self.balancer.backends().all();
        // Draining instances are on their way out: not in service.
        let in_service: Vec<&Arc<Backend>> = backends
            .iter()
            .filter(|b| b.state() != BackendState::Draining)
            .collect();
        self.measure(&backends, over);
        let total = self.average_total_load();
        let n = in_service.len();
        let range = self.config.range;
        let target = self.config.target_load;
        let want = desired(total, target, range);
        {
            let mut view = self.state.lock();
            view.desired = want;
            view.running = self.fleet.running();
            view.healthy = backends
                .iter()
                .filter(|b| b.state() == BackendState::Up)
                .count();
            view.load_per_instance = if n == 0 { 0.0 } else { total / n as f64 };
        }
        if self.replace_unhealthy(&in_service, now).await {
            return;
        }
        let per_instance = if n == 0 { total } else { total / n as f64 };
        let unit = self.config.metric.unit();
        if n < range.min {
            let reason = format!("{n} in service, below the minimum {}", range.min);
            self.scale_out(range.min - n, n, reason, now).await;
        } else if want > n && self.cooled(self.last_scale_out, self.config.scale_out_cooldown, now)
        {
            let reason = format!(
                "{per_instance:.1} {unit} over {n}, above the target {target}: {want} instances carry {total:.1}"
            );
            self.scale_out(want - n, n, reason, now).await;
        } else if n > range.max {
            let reason = format!("{n} in service, above the maximum {}", range.max);
            self.scale_in(&in_service, reason, now);
        } else if n > range.min && may_scale_in(total, target, n) {
            let low_since = *self.low_since.get_or_insert(now);
            let cooldown = self.config.scale_in_cooldown;
            if now.saturating_duration_since(low_since) >= cooldown
                && self.cooled(self.last_scaling, cooldown, now)
            {
                let reason = format!(
                    "{per_instance:.1} {unit} over {n} for {} s; {} would carry {:.1} each, under the target {target}",
                    cooldown.as_secs(),
                    n - 1,
                    total / (n - 1) as f64
                );
                self.scale_in(&in_service, reason, now);
            }
        } else {
            self.low_since = None;
        }
    }

    /// Whether `cooldown` has passed since `last`.
    fn cooled(&self, last: Option<Instant>, cooldown: Duration, now: Instant) -> bool {
        last.is_none_or(|at| now.saturating_duration_since(at) >= cooldown)
    }

    /// Adds this tick's sample and drops the ones older than the window.
    fn measure(&mut self, backends: &[Arc<Backend>], over: Duration) {
        let load = match self.config.metric {
            LoadMetric::Requests => {
                let mut served = HashMap::with_capacity(backends.len());
                let mut requests = 0u64;
                for backend in backends {
                    let now = backend.served();
                    // A backend seen for the first time counts from now.
                    let before = self.last_served.get(backend.name()).copied().unwrap_or(now);
                    requests += now.saturating_sub(before);
                    served.insert(backend.name().to_owned(), now);
                }
                self.last_served = served;
                requests as f64
            }
            LoadMetric::InFlight => backends
                .iter()
                .filter(|b| b.state() != BackendState::Draining)
                .map(|b| b.reported_load().unwrap_or(0) as f64)
                .sum::<f64>(),
        };
        self.samples.push_back(Sample { load, over });
        let mut kept = Duration::ZERO;
        let mut keep = 0;
        for sample in self.samples.iter().rev() {
            if kept >= self.config.window {
                break;
            }
            kept += sample.over;
            keep += 1;
        }
        while self.samples.len() > keep {
            self.samples.pop_front();
        }
    }

    /// The whole tier's load, averaged over the window.
    fn average_total_load(&self) -> f64 {
        match self.config.metric {
            LoadMetric::Requests => {
                let requests: f64 = self.samples.iter().map(|s| s.load).sum();
                let seconds: f64 = self.samples.iter().map(|s| s.over.as_secs_f64()).sum();
                if seconds > 0.0 {
                    requests / seconds
                } else {
                    0.0
                }
            }
            LoadMetric::InFlight => {
                let count = self.samples.len().max(1) as f64;
                self.samples.iter().map(|s| s.load).sum::<f64>() / count
            }
        }
    }

    /// Replaces one instance that has been down longer than the grace
    /// period; returns whether it did (one change per tick).
    async fn replace_unhealthy(&mut self, in_service: &[&Arc<Backend>], now: Instant) -> bool {
        self.down_since
            .retain(|name, _| in_service.iter().any(|b| b.name() == name));
        let mut overdue = None;
        for backend in in_service {
            if backend.state() == BackendState::Down {
                let since = *self
                    .down_since
                    .entry(backend.name().to_owned())
                    .or_insert(now);
                if overdue.is_none()
                    && now.saturating_duration_since(since) >= self.config.unhealthy_grace
                {
                    overdue = Some(backend.name().to_owned());
                }
            } else {
                self.down_since.remove(backend.name());
            }
        }
        let Some(name) = overdue else {
            return false;
        };
        self.down_since.remove(&name);
        let _ = self.balancer.remove_backend(&name);
        // Unhealthy, maybe frozen: no grace for a process that cannot
        // take it (a stopped process never handles SIGTERM).
        self.fleet.terminate(&name, false).await;
        match self.launch().await {
            Ok(new) => self.state.record(
                "replace",
                format!(
                    "{name} failed its health checks for {} s; terminated, {new} launched",
                    self.config.unhealthy_grace.as_secs()
                ),
            ),
            Err(error) => self.state.record(
                "failed",
                format!("{name} terminated, but its replacement did not start: {error}"),
            ),
        }
        true
    }

    /// Starts one instance and puts it behind the balancer.
    async fn launch(&self) -> Result<String, String> {
        let spec = self.fleet.add().await?;
        let name = spec.name.clone();
        self.balancer
            .backends()
            .add(spec)
            .map_err(|e| e.to_string())?;
        Ok(name)
    }

    async fn scale_out(&mut self, count: usize, from: usize, reason: String, now: Instant) {
        let mut launched = Vec::with_capacity(count);
        for _ in 0..count {
            match self.launch().await {
                Ok(name) => launched.push(name),
                Err(error) => {
                    self.state
                        .record("failed", format!("an instance did not start: {error}"));
                    break;
                }
            }
        }
        self.last_scale_out = Some(now);
        self.last_scaling = Some(now);
        self.low_since = None;
        if !launched.is_empty() {
            self.state.record(
                "scale-out",
                format!(
                    "{from} → {}: {reason}; launched {}",
                    from + launched.len(),
                    launched.join(", ")
                ),
            );
        }
    }

    /// Drains one instance and stops it once it is idle (in a task of
    /// its own: the group keeps watching meanwhile).
    fn scale_in(&mut self, in_service: &[&Arc<Backend>], reason: String, now: Instant) {
        // An unhealthy instance first, then the oldest (AWS's
        // `OldestInstance` termination policy: the fleet keeps renewing
        // itself). The oldest has also met the most shoppers, which is
        // what matters to a tier that keeps them in memory.
        let Some(victim) = in_service
            .iter()
            .find(|b| b.state() != BackendState::Up)
            .or_else(|| in_service.first())
        else {
            return;
        };
        let victim = Arc::clone(victim);
        self.last_scaling = Some(now);
        self.low_since = None;
        let n = in_service.len();
        victim.drain();
        self.state.record(
            "scale-in",
            format!(
                "{n} → {}: {reason}; draining {} (deregistration delay {} s)",
                n - 1,
                victim.name(),
                self.config.deregistration_delay.as_secs()
            ),
        );
        let delay = self.config.deregistration_delay;
        let balancer = Arc::clone(&self.balancer);
        let fleet = Arc::clone(&self.fleet);
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            let name = victim.name().to_owned();
            let started = Instant::now();
            let deadline = started + delay;
            // As an ALB does: deregistration ends early once nothing is in
            // flight (requests or WebSockets).
            while victim.in_flight() + victim.tunnels() > 0 && Instant::now() < deadline {
                tokio::time::sleep(DRAIN_POLL).await;
            }
            let left = victim.in_flight() + victim.tunnels();
            let _ = balancer.remove_backend(&name);
            fleet.terminate(&name, true).await;
            state.record(
                "terminated",
                format!(
                    "{name} drained for {:.1} s ({left} still in flight), removed and stopped",
                    started.elapsed().as_secs_f64()
                ),
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: ScaleRange = ScaleRange { min: 2, max: 6 };

    #[test]
    fn desired_rounds_up_and_stays_within_bounds() {
        assert_eq!(desired(0.0, 50.0, RANGE), 2);
        assert_eq!(desired(120.0, 50.0, RANGE), 3);
        assert_eq!(desired(150.0, 50.0, RANGE), 3);
        assert_eq!(desired(151.0, 50.0, RANGE), 4);
        assert_eq!(desired(10_000.0, 50.0, RANGE), 6);
        assert_eq!(desired(f64::NAN, 50.0, RANGE), 2);
    }

    #[test]
    fn scale_in_keeps_headroom_so_it_does_not_flap() {
        // 4 instances, 130 req/s: 3 would carry 43.3 each, under 45.
        assert!(may_scale_in(130.0, 50.0, 4));
        // 140 req/s: 3 would carry 46.7, over 90 % of 50: stay.
        assert!(!may_scale_in(140.0, 50.0, 4));
        assert!(!may_scale_in(0.0, 50.0, 1));
    }

    #[test]
    fn ranges_parse_and_bad_ones_say_why() {
        assert_eq!("2..6".parse(), Ok(ScaleRange { min: 2, max: 6 }));
        assert_eq!("3..3".parse(), Ok(ScaleRange { min: 3, max: 3 }));
        let errors: Vec<String> = ["6..2", "0..3", "2-6", "a..b"]
            .iter()
            .filter_map(|t| t.parse::<ScaleRange>().err())
            .collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].contains("more than MAX"), "{}", errors[0]);
        assert!(errors[1].contains("at least one"), "{}", errors[1]);
    }
}
