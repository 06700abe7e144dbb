//! # crowd: the workshop's proof
//!
//! The whole story in one table: the same crowd of virtual shoppers, the
//! same instance failures, five stages, how many carts survive.
//!
//! For each stage, `crowd` starts the stage's topology (three instances
//! behind the balancer, plus the stage's Redis or PostgreSQL), lets N
//! shoppers ([`shopper`]) shop through the balancer for a while, each
//! checking its cart after every step, while the [`chaos`] schedule crashes,
//! restarts and scales instances. Then it prints a [`report`]. Stage 7
//! (`--stage 7`, as root) plays a different schedule: zone a goes dark,
//! servers and instances together, and comes back.
//!
//! **Run it:** `cargo run --release -p crowd -- --stage all --format markdown`
//! (`--shoppers 40 --duration 20s --seed 7` are the defaults).
//!
//! The instances are this same binary: `crowd` re-runs itself as
//! `crowd serve …` with `CROWD_STAGE` set, which hands over to that stage's
//! own command line (see [`serve_stage_instance`]). So `cargo run -p crowd`
//! needs nothing else built.

pub mod accounts;
pub mod chaos;
pub mod chart;
pub mod live;
pub mod report;
pub mod rng;
pub mod shopper;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use shop::autoscale::{AutoscaleConfig, ScaleRange};
use shop::front::{Behind, Engine};
use shop::topology::{Topology, TopologyConfig};
use shop::{BoxError, Scope, Services, Stage};

use stage6::fanout::Fanout;

use crate::chaos::{Playback, StoreProcess, Target};
pub use crate::report::Reports;
use crate::report::{Format, Report, percentile_ms};
use crate::shopper::{Tally, VirtualShopper};
use stage4::stores::StoreKind;

/// How often the carts-intact timeline is sampled.
const TIMELINE_STEP: Duration = Duration::from_millis(500);

/// Set on the instances `crowd` starts: which stage they are.
pub const STAGE_ENV: &str = "CROWD_STAGE";

/// `crowd [--stage 1..7|all] [--shoppers N] [--duration D] [--seed S] [--format F]`
#[derive(Clone, Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Which stage to run: 1 to 7, or `all` (stages 1 to 6 in turn, same seed
    /// and schedule). Stage 6 runs the live crowd ([`live`]) once per
    /// `--fanout` mode.
    #[arg(long, default_value = "all")]
    pub stage: String,
    /// How many virtual shoppers (stage 6: watchers, one socket each).
    #[arg(long, default_value_t = 40)]
    pub shoppers: usize,
    /// Stage 6: which fan-out modes, one or `all`.
    #[arg(long, default_value = "all")]
    pub fanout: String,
    /// Stage 6: updates published per second (prices and room messages).
    #[arg(long, default_value_t = 40)]
    pub rate: u32,
    /// How long each stage runs.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Makes the shoppers' choices and the chaos schedule repeatable.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// No chaos: only the shoppers.
    #[arg(long)]
    pub no_chaos: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Also draw carts intact over time, per stage, with the chaos events
    /// marked, as an SVG file (stages 1 to 5).
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<std::path::PathBuf>,
    /// Stage 7: cut zone b's data machine off from zone a a moment before
    /// zone a goes dark (the partition that comes first on a bad day): what
    /// an asynchronous standby then loses.
    #[arg(long)]
    pub partition_first: bool,
    /// Shop through a real engine (nginx or HAProxy, configured from
    /// `deploy/`) instead of this project's balancer. Stages 1 to 5.
    #[arg(long, value_enum)]
    pub behind: Option<Engine>,
    /// Grow the crowd from a tenth of --shoppers to all of them and back:
    /// arrivals over the first 30 % of the run, departures from half-way
    /// to 80 %, a tenth to the end. Runs under an auto scaling group (--autoscale, 1..4 unless
    /// given) in place of the chaos schedule.
    #[arg(long)]
    pub ramp: bool,
    /// Let an auto scaling group keep MIN..MAX instances by load; it is
    /// then the only one that adds and removes instances (no chaos
    /// schedule). Its cooldowns are compressed to the run's length.
    #[arg(long, value_name = "MIN..MAX")]
    pub autoscale: Option<ScaleRange>,
    /// Requests per second per instance the group keeps near (a shopper
    /// makes about ten a second).
    #[arg(long, default_value_t = 100.0)]
    pub target_load: f64,
    /// Stage 4: which session stores, comma-separated, or `all` (redis,
    /// memcached, postgres, dynamodb, dynamodb-cached). Each runs in turn,
    /// one row each, and the chaos schedule also kills the store (kill -9)
    /// and starts it again half-way: what each keeps is the lesson.
    #[arg(long, value_name = "STORE,…|all")]
    pub store: Option<String>,
}

impl Cli {
    /// The auto scaling group this run asks for, its waits scaled to the
    /// run (a 60 s run: a 3 s window, 4 s and 6 s cooldowns), since the
    /// teaching defaults of `up` (tens of seconds) would outlast it.
    pub fn autoscaling(&self) -> Option<AutoscaleConfig> {
        let range = self
            .autoscale
            .or(self.ramp.then_some(ScaleRange { min: 1, max: 4 }))?;
        let part = |divisor: u32| (self.duration / divisor).max(Duration::from_millis(500));
        Some(AutoscaleConfig {
            interval: Duration::from_millis(250),
            window: part(20).max(Duration::from_secs(1)),
            scale_out_cooldown: part(15),
            scale_in_cooldown: part(10),
            deregistration_delay: part(15),
            unhealthy_grace: part(10),
            ..AutoscaleConfig::new(range, self.target_load)
        })
    }
}

/// `crowd serve …` with `CROWD_STAGE=N`: one instance of stage N.
pub fn serve_stage_instance() -> ExitCode {
    match std::env::var(STAGE_ENV).as_deref() {
        Ok("1") => shop::cli::main::<stage1::Stage1>(),
        Ok("2") => shop::cli::main::<stage2::Stage2>(),
        Ok("3") => shop::cli::main::<stage3::Stage3>(),
        Ok("4") => shop::cli::main::<stage4::Stage4>(),
        Ok("5") => shop::cli::main::<stage5::Stage5>(),
        Ok("6") => shop::cli::main::<stage6::Stage6>(),
        Ok("7") => shop::cli::main::<stage7::Stage7>(),
        _ => {
            eprintln!("error: `crowd serve` is how crowd starts instances; set {STAGE_ENV}=1..7");
            ExitCode::FAILURE
        }
    }
}

/// Runs the stages `cli` asks for and returns their reports.
pub async fn run(cli: &Cli) -> Result<Reports, BoxError> {
    let stages: Vec<u8> = match cli.stage.as_str() {
        "all" => vec![1, 2, 3, 4, 5, 6],
        one => vec![
            one.parse::<u8>()
                .ok()
                .filter(|n| (1..=7).contains(n))
                .ok_or("--stage takes 1 to 7, or all (1 to 6: stage 7 needs root)")?,
        ],
    };
    let modes: Vec<Fanout> = match cli.fanout.as_str() {
        "all" => vec![
            Fanout::Local,
            Fanout::RoomSticky,
            Fanout::Pubsub,
            Fanout::Streams,
        ],
        one => vec![
            <Fanout as clap::ValueEnum>::from_str(one, true)
                .map_err(|_| "--fanout takes local, room-sticky, pubsub, streams, or all")?,
        ],
    };
    let stores: Option<Vec<StoreKind>> = match cli.store.as_deref() {
        None => None,
        Some("all") => Some(<StoreKind as clap::ValueEnum>::value_variants().to_vec()),
        Some(list) => Some(
            list.split(',')
                .map(|name| {
                    <StoreKind as clap::ValueEnum>::from_str(name.trim(), true).map_err(|_| {
                        format!(
                            "--store takes redis, memcached, postgres, dynamodb, dynamodb-cached (comma-separated), or all; not {name:?}"
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    if stores.is_some() && !stages.contains(&4) {
        return Err("--store is for stage 4 (--stage 4)".into());
    }
    let exe = std::env::current_exe()?;
    let mut reports = Reports::default();
    for stage in stages {
        let report = match stage {
            1 => run_stage::<stage1::Stage1>(1, cli, &exe, None).await?,
            2 => run_stage::<stage2::Stage2>(2, cli, &exe, None).await?,
            3 => run_stage::<stage3::Stage3>(3, cli, &exe, None).await?,
            4 if stores.is_some() => {
                for &kind in stores.iter().flatten() {
                    reports
                        .carts
                        .push(run_stage::<stage4::Stage4>(4, cli, &exe, Some(kind)).await?);
                }
                continue;
            }
            4 => run_stage::<stage4::Stage4>(4, cli, &exe, None).await?,
            5 => run_stage::<stage5::Stage5>(5, cli, &exe, None).await?,
            7 if cli.behind.is_none() => run_stage::<stage7::Stage7>(7, cli, &exe, None).await?,
            _ if cli.behind.is_some() => {
                return Err(
                    "--behind runs stages 1 to 5 (stage 6's crowd uses the project's balancer)"
                        .into(),
                );
            }
            _ => {
                reports.live.extend(live::run(cli, &exe, &modes).await?);
                continue;
            }
        };
        reports.carts.push(report);
    }
    Ok(reports)
}

/// When shopper `n` of `shoppers` arrives and leaves under `--ramp`: a
/// tenth shop all along; the others arrive one after another over the
/// first 30 % of the run, and leave in reverse order between half-way and
/// 80 %. So the crowd grows, holds, shrinks, and the last fifth of the run
/// shows what the scale-ins did to the shoppers who stayed.
pub fn ramp_window(n: usize, shoppers: usize, duration: Duration) -> (Duration, Duration) {
    let always = (shoppers / 10).max(1);
    if n < always || shoppers <= always {
        return (Duration::ZERO, duration);
    }
    // From just above 0 (the first to come) to 1 (the last).
    #[allow(clippy::cast_precision_loss)]
    let rank = (n - always + 1) as f64 / (shoppers - always) as f64;
    (
        duration.mul_f64(0.3 * rank),
        duration.mul_f64(0.8 - 0.3 * rank),
    )
}

/// The group's scale-outs and scale-ins as chaos lines (`"12.3s
/// scale-out: 1 → 3"`, `"20.1s scale-in: i3"`), for the table and chart.
fn scaling_log(view: &lb::supervisor::ScalingView) -> Vec<String> {
    view.decisions
        .iter()
        .filter_map(|d| {
            #[allow(clippy::cast_precision_loss)]
            let at = d.at_ms as f64 / 1000.0;
            let what = match d.action.as_str() {
                "scale-out" | "replace" => d.reason.split(':').next()?.to_owned(),
                "scale-in" => d
                    .reason
                    .rsplit("draining ")
                    .next()?
                    .split(' ')
                    .next()?
                    .to_owned(),
                _ => return None,
            };
            Some(format!("{at:.1}s {}: {what}", d.action))
        })
        .collect()
}

/// The stage's flags as if none were given (environment fallbacks apply).
#[derive(Debug, Parser)]
pub(crate) struct DefaultArgs<A: clap::Args> {
    #[command(flatten)]
    pub(crate) args: A,
}

/// Runs stage `number` under the crowd. `store` (stage 4 only): which
/// session store, killed and restarted half-way.
async fn run_stage<S: Stage>(
    number: u8,
    cli: &Cli,
    exe: &Path,
    store: Option<StoreKind>,
) -> Result<Report, BoxError> {
    let store_kind = store;
    let mut args = match store_kind {
        // Stage 4's own flag, as `stage4 up --store NAME` would parse it.
        Some(kind) => DefaultArgs::<S::Args>::try_parse_from(["crowd", "--store", kind.name()])?,
        None => DefaultArgs::<S::Args>::try_parse_from(["crowd"])?,
    }
    .args;
    let mut services: Services = S::services(&mut args, Scope::Fleet).await?;
    let mut env = shop::flags::instance_env(&args)?;
    env.push((STAGE_ENV.into(), number.to_string().into()));
    // Stage 7 places its instances in zones, reached from the balancer's
    // own address; the others leave both unset.
    let (placement, balancer_source) = services.placement();
    let config = TopologyConfig {
        env,
        placement,
        balancer_source,
        autoscale: cli.autoscaling(),
        // Under a group, start as small as it may be: the load decides.
        instances: cli.autoscaling().map_or(3, |group| group.range.min),
        ..TopologyConfig::for_tests(exe, S::INFO)
    };
    let report = match cli.behind {
        Some(_) if config.autoscale.is_some() => {
            return Err("--ramp and --autoscale need the project's balancer, not --behind".into());
        }
        Some(engine) => {
            let behind = Behind::start(config, engine).await?;
            let store = store_kind.and_then(|kind| StoreProcess::find(&mut services, kind));
            let mut report = shop_through(&behind, None, store, S::INFO, cli).await;
            if let Ok(report) = &mut report {
                report.title = format!("{} · {}", report.title, engine.name());
                if let Some(kind) = store_kind {
                    report.title = format!("{} · --store {}", report.title, kind.name());
                }
            }
            behind.stop().await;
            report
        }
        None => {
            let topology = Topology::start(config).await?;
            let (zones, store) = match store_kind {
                Some(kind) => (None, StoreProcess::find(&mut services, kind)),
                None => (
                    services
                        .get_mut::<std::sync::Arc<stage7::data_tier::DataTier>>()
                        .map(|tier| &**tier),
                    None,
                ),
            };
            let mut report = shop_through(&topology, zones, store, S::INFO, cli).await;
            if let (Ok(report), Some(kind)) = (&mut report, store_kind) {
                report.title = format!("{} · --store {}", report.title, kind.name());
            }
            topology.stop().await;
            report
        }
    };
    drop(services);
    report
}

/// How much longer than `--duration` a run may go on to finish its chaos
/// schedule, at most: every wait has a deadline.
const OVERTIME_AT_MOST: Duration = Duration::from_secs(60);

/// When the shoppers (and stage 7's writers) go home. At `--duration`, as a
/// rule; but the chaos schedule is what the run is for, and a fleet slower
/// than the run (instances that take seconds to start on a busy machine)
/// can leave its last events undone at that moment: the run then goes on,
/// shoppers included, until they are done. (Ending on time and reporting
/// the missing events was the alternative: a short run's table would then
/// say "stage 4 lost no cart" of a run that never scaled in.)
#[derive(Clone, Debug, Default)]
pub struct Closing(Arc<AtomicBool>);

impl Closing {
    /// Tells everyone still shopping to finish.
    fn close(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the run is over.
    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The crowd shops through `target` while the chaos schedule runs (with
/// `zones`, stage 7's: zone a goes dark, then comes back).
async fn shop_through(
    target: &impl Target,
    zones: Option<&stage7::data_tier::DataTier>,
    store: Option<StoreProcess<'_>>,
    info: &shop::StageInfo,
    cli: &Cli,
) -> Result<Report, BoxError> {
    let url = target.url();
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + cli.duration;
    let closing = Closing::default();

    // Stage 7: account writers beside the shoppers.
    let writers =
        zones.map(|_| tokio::spawn(accounts::run(url.clone(), cli.seed, closing.clone())));
    let mut shoppers = Vec::new();
    for n in 0..cli.shoppers {
        let mut shopper = VirtualShopper::new(&url, cli.seed, n as u64)?;
        let tally = Arc::clone(&tally);
        let (arrives, leaves) = match cli.ramp {
            true => ramp_window(n, cli.shoppers, cli.duration),
            false => (Duration::ZERO, cli.duration),
        };
        // A ramp's shopper leaves at the end of its window (no chaos
        // schedule runs beside an auto scaling group); the others stay
        // until the run closes.
        let leaves_at = cli.ramp.then_some(started + leaves);
        let closing = closing.clone();
        let stays = move || match leaves_at {
            Some(at) => Instant::now() < at,
            None => !closing.is_closed(),
        };
        shoppers.push(tokio::spawn(async move {
            tokio::time::sleep_until((started + arrives).into()).await;
            while stays() {
                shopper.step(&tally).await;
                let pause = shopper.think_time();
                tokio::time::sleep(pause).await;
            }
            shopper.final_check(&tally).await;
            shopper
        }));
    }

    let progress = if cli.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(u64::try_from(cli.duration.as_millis()).unwrap_or(u64::MAX));
        if let Ok(style) = ProgressStyle::with_template("{prefix:>28} [{bar:30}] {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(info.title);
        bar
    };
    // An auto scaling group is the only one that adds and removes
    // instances: a chaos schedule beside it would fight it.
    let mut chaos = Playback::new(
        cli.seed,
        cli.duration,
        cli.no_chaos || target.scaling().is_some(),
        target,
        zones,
        store,
        cli.partition_first,
        started,
    );
    let intact_now = || {
        let lost = usize::try_from(Tally::get(&tally.carts_lost)).unwrap_or(usize::MAX);
        (
            started.elapsed().as_secs_f64(),
            cli.shoppers.saturating_sub(lost),
        )
    };
    let mut timeline = vec![intact_now()];
    let running_now = || (started.elapsed().as_secs_f64(), target.running());
    let mut instances = vec![running_now()];
    let mut next_sample = started + TIMELINE_STEP;
    let overtime_ends = deadline + OVERTIME_AT_MOST;
    // A ramp beside an auto scaling group shows the group following the
    // crowd out and back in. Draining an instance takes its deregistration
    // delay, which on a busy machine can outlast the ramp's quiet end: a
    // group that grew and has not shrunk yet gets the same overtime, with
    // no shoppers left, to do it.
    let group_still_out =
        |instances: &[(f64, usize)]| cli.ramp && not_back_in_yet(instances, target.running());
    while Instant::now() < deadline
        || ((chaos.is_pending() || group_still_out(&instances)) && Instant::now() < overtime_ends)
    {
        if Instant::now() >= next_sample {
            timeline.push(intact_now());
            instances.push(running_now());
            next_sample += TIMELINE_STEP;
        }
        if let Some(line) = chaos.due(target).await {
            if progress.is_hidden() {
                if !cli.quiet {
                    eprintln!("  {}: {line}", info.package);
                }
            } else {
                progress.println(format!("  {line}"));
            }
        }
        progress.set_position(u64::try_from(started.elapsed().as_millis()).unwrap_or(0));
        progress.set_message(format!(
            "{} requests · {} 5xx · {} carts lost",
            Tally::get(&tally.requests),
            Tally::get(&tally.server_errors),
            Tally::get(&tally.carts_lost)
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    closing.close();
    chaos.note_overtime(cli.duration);
    progress.finish_and_clear();

    let mut latencies = Vec::new();
    let (mut intact, mut lost) = (0, 0);
    for shopper in shoppers {
        let shopper = shopper.await?;
        if shopper.lost {
            lost += 1;
        } else {
            intact += 1;
        }
        latencies.extend(shopper.latencies);
    }
    let writes = match writers {
        Some(writers) => writers.await.ok(),
        None => None,
    };
    let elapsed = started.elapsed().as_secs_f64();
    let requests = Tally::get(&tally.requests);
    // A ramp's shoppers are gone by `--duration`, whatever the overtime.
    let shopping = match cli.ramp {
        true => elapsed.min(cli.duration.as_secs_f64()),
        false => elapsed,
    };
    #[allow(clippy::cast_precision_loss)]
    let requests_per_s = requests as f64 / shopping.max(0.001);
    Ok(Report {
        stage: info.package.to_owned(),
        title: match zones {
            Some(zones) => format!("{} · {}", info.title, zones.standby_kind().await),
            None => info.title.to_owned(),
        },
        shoppers: cli.shoppers,
        duration_s: elapsed,
        requests,
        requests_per_s,
        p50_ms: percentile_ms(&mut latencies, 0.50),
        p99_ms: percentile_ms(&mut latencies, 0.99),
        server_errors: Tally::get(&tally.server_errors),
        retries: Tally::get(&tally.retries),
        unconfirmed: Tally::get(&tally.unconfirmed),
        carts_intact: intact,
        carts_lost: lost,
        chaos: match target.scaling() {
            Some(view) => scaling_log(&view),
            None => chaos.log,
        },
        instances: match target.scaling() {
            Some(_) => {
                instances.push((elapsed, target.running()));
                instances
            }
            None => Vec::new(),
        },
        timeline: {
            // The final check may find a loss the run did not see.
            timeline.push((elapsed, intact));
            timeline
        },
        account_writes: writes.map(|w| w.acknowledged),
        account_writes_lost: writes.map(|w| w.lost),
    })
}

/// Whether a group that grew over the run (`instances`, its samples of
/// running instances) still runs as many as at its peak.
fn not_back_in_yet(instances: &[(f64, usize)], running_now: usize) -> bool {
    let first = instances.first().map_or(0, |&(_, running)| running);
    let peak = instances
        .iter()
        .map(|&(_, running)| running)
        .max()
        .unwrap_or(0);
    peak > first && running_now >= peak
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_waits_for_a_group_that_grew_to_shrink() {
        let grew = [(0.0, 1), (5.0, 3)];
        assert!(not_back_in_yet(&grew, 3), "still at its peak");
        assert!(!not_back_in_yet(&grew, 2), "one scaled in");
        // A group that never grew has nothing to come back from.
        assert!(!not_back_in_yet(&[(0.0, 1), (5.0, 1)], 1));
    }

    #[test]
    fn a_ramp_grows_the_crowd_holds_it_and_shrinks_it_back() {
        let duration = Duration::from_secs(100);
        let active_at = |seconds: u64| {
            let t = Duration::from_secs(seconds);
            (0..40)
                .map(|n| ramp_window(n, 40, duration))
                .filter(|&(arrives, leaves)| arrives <= t && t < leaves)
                .count()
        };
        assert_eq!(active_at(0), 4, "a tenth from the start");
        assert!(
            active_at(15) > 15 && active_at(15) < 25,
            "{}",
            active_at(15)
        );
        assert_eq!(active_at(40), 40, "everyone at the peak");
        assert!(
            active_at(65) > 15 && active_at(65) < 25,
            "{}",
            active_at(65)
        );
        assert_eq!(active_at(85), 4, "back to a tenth");
    }
}
