//! What stage 6 costs and holds, measured: run by `scripts/bench-stage6`
//! (which builds the release binaries and keeps the result), or directly:
//!
//! ```text
//! cargo build --release -p stage6 --examples
//! target/release/examples/bench_live --exe target/release/stage6
//! ```
//!
//! 1. **Fan-out latency**: 1,000 sockets over three instances, each
//!    watching 20 SKUs; 1,000 flash-price changes a second spread over the
//!    catalog, each sent to one instance; the time from sending a change to
//!    a socket on *another* instance receiving it, and any gap in the
//!    update numbers once the run is steady.
//! 2. **Redis deliveries per update**: sparse watchers, one channel per
//!    topic against one shared channel.
//! 3. **Idle sockets on one instance**: as many as it takes (up to
//!    `--idle`), with its resident memory along the way.
//! 4. **Skew after a scale-out**: 600 sockets over three instances, a
//!    fourth joins, 400 more; sockets per instance, least-conn against
//!    round-robin.
//!
//! Nothing is asserted: it prints a Markdown report.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use shop::topology::{Topology, TopologyConfig};
use shop::{BoxError, Scope, Stage};
use stage6::client::{LiveClient, Tally};
use stage6::{LiveArgs, Stage6};

#[derive(Debug, Parser)]
struct Bench {
    /// The stage6 binary the instances run.
    #[arg(long)]
    exe: PathBuf,
    /// Sockets for the latency run.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// SKUs each of them watches.
    #[arg(long, default_value_t = 20)]
    watched: usize,
    /// Flash-price changes per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How long the changes are sent.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The most idle sockets to open on one instance.
    #[arg(long, default_value_t = 12_000)]
    idle: usize,
}

/// The stage's flags with nothing given, for the servers `services` starts.
#[derive(Debug, Parser)]
struct Defaults {
    #[command(flatten)]
    args: LiveArgs,
}

/// When each numbered change left, and for which instance.
type Sent = Arc<RwLock<HashMap<u64, (Instant, usize)>>>;

fn main() -> Result<(), BoxError> {
    let bench = Bench::parse();
    // Thousands of sockets: as many file descriptors as allowed.
    let fds = lb::raise_fd_limit()?;
    eprintln!("bench_live: up to {fds} open files");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(bench))
}

async fn run(bench: Bench) -> Result<(), BoxError> {
    let mut args = Defaults::try_parse_from(["bench"])?.args;
    let _services = Stage6::services(&mut args, Scope::Fleet).await?;
    println!("{}", latency(&bench, &args).await?);
    println!("{}", deliveries(&bench, &args).await?);
    println!("{}", idle(&bench, &args).await?);
    println!("{}", skew(&bench, &args).await?);
    Ok(())
}

async fn topology(
    bench: &Bench,
    args: &LiveArgs,
    policy: lb::Policy,
) -> Result<Topology, BoxError> {
    Ok(Topology::start(TopologyConfig {
        env: shop::flags::instance_env(args)?,
        policy,
        ..TopologyConfig::for_tests(&bench.exe, &stage6::INFO)
    })
    .await?)
}

/// `n` sockets opened at once (at most 200 at a time) by `open`.
async fn open_many<F, Fut>(n: usize, open: F) -> Vec<LiveClient>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Option<LiveClient>> + Send + 'static,
{
    let mut sockets = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + 200).min(n);
        let batch: Vec<_> = (start..end).map(|i| tokio::spawn(open(i))).collect();
        for opening in batch {
            if let Ok(Some(socket)) = opening.await {
                sockets.push(socket);
            }
        }
        start = end;
    }
    sockets
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = (((sorted.len() - 1) as f64) * q).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

async fn latency(bench: &Bench, args: &LiveArgs) -> Result<String, BoxError> {
    let topology = topology(bench, args, lb::Policy::LeastConn).await?;
    let urls: Vec<String> = topology.instances().into_iter().map(|i| i.url).collect();
    let skus: Vec<String> = shop::Catalog::get()
        .products()
        .iter()
        .map(|p| p.sku.clone())
        .collect();
    let watched = bench.watched;
    let sockets = {
        let (urls, skus) = (urls.clone(), skus.clone());
        open_many(bench.sockets, move |n| {
            let url = urls[n % urls.len()].clone();
            let mine: Vec<String> = (0..watched)
                .map(|k| skus[(n * 7 + k * 13) % skus.len()].clone())
                .collect();
            async move {
                let mut socket = LiveClient::connect(&url, "").await.ok()?;
                socket.watch(&mine, &HashMap::new()).await.ok()?;
                let mut tally = Tally::default();
                socket
                    .until("snapshot", &mut tally, Duration::from_secs(30))
                    .await
                    .ok()??;
                Some(socket)
            }
        })
        .await
    };
    let opened = sockets.len();
    let rss_watching: Vec<u64> = topology
        .instances()
        .iter()
        .map(|i| rss_kib(i.pid))
        .collect();

    let sent: Sent = Arc::default();
    let steady_from = Instant::now() + Duration::from_secs(2);
    let stop_at = Instant::now() + bench.duration;
    let mut readers = Vec::new();
    for (n, mut socket) in sockets.into_iter().enumerate() {
        let sent = Arc::clone(&sent);
        let home = n % urls.len();
        readers.push(tokio::spawn(async move {
            let (mut other, mut same) = (Vec::new(), Vec::new());
            // Only the fields this needs are read from each message: the
            // benchmark must not be the busiest process on the machine.
            #[derive(serde::Deserialize)]
            struct Seen<'a> {
                topic: Option<&'a str>,
                seq: Option<u64>,
                price_cents: Option<u64>,
            }
            let mut last: HashMap<String, u64> = HashMap::new();
            let (mut gaps, mut lagged) = (0u64, 0u64);
            let quiet_after = stop_at + Duration::from_secs(2);
            while Instant::now() < quiet_after {
                let Ok(Some(text)) = socket
                    .next_text(quiet_after.saturating_duration_since(Instant::now()))
                    .await
                else {
                    break;
                };
                let at = Instant::now();
                let Ok(seen) = serde_json::from_str::<Seen<'_>>(text.as_str()) else {
                    continue;
                };
                if text.as_str().starts_with(r#"{"type":"lagged""#) {
                    lagged += 1;
                }
                if let (Some(topic), Some(seq)) = (seen.topic, seen.seq) {
                    match last.get_mut(topic) {
                        Some(previous) => {
                            if at >= steady_from && seq > *previous + 1 {
                                gaps += seq - *previous - 1;
                            }
                            *previous = (*previous).max(seq);
                        }
                        None => {
                            last.insert(topic.to_owned(), seq);
                        }
                    }
                }
                if let Some(number) = seen.price_cents {
                    let sent_at = sent.read().ok().and_then(|s| s.get(&number).copied());
                    if let Some((when, instance)) = sent_at {
                        if when >= steady_from {
                            if instance == home {
                                &mut same
                            } else {
                                &mut other
                            }
                            .push(at - when);
                        }
                    }
                }
            }
            socket.close().await;
            (other, same, gaps, lagged)
        }));
    }

    // The publisher: `rate` changes a second from 8 senders, each change to
    // one instance in turn.
    let http = reqwest::Client::new();
    let senders = 8u32;
    let number = Arc::new(std::sync::atomic::AtomicU64::new(100_000));
    let mut publishers = Vec::new();
    for s in 0..senders {
        let (http, urls, skus, sent, number) = (
            http.clone(),
            urls.clone(),
            skus.clone(),
            Arc::clone(&sent),
            Arc::clone(&number),
        );
        let every = Duration::from_secs(1) * senders / bench.rate.max(1);
        publishers.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut done = 0u64;
            let mut k = s as usize;
            while Instant::now() < stop_at {
                ticks.tick().await;
                let n = number.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let instance = k % urls.len();
                let sku = &skus[(k * 31) % skus.len()];
                k += senders as usize;
                if let Ok(mut sent) = sent.write() {
                    sent.insert(n, (Instant::now(), instance));
                }
                let ok = http
                    .post(format!("{}/api/live/price", urls[instance]))
                    .json(&json!({"sku": sku, "price_cents": n}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                done += u64::from(ok);
            }
            done
        }));
    }
    let mut published = 0;
    for publisher in publishers {
        published += publisher.await?;
    }
    let (mut other, mut same, mut gaps, mut lagged) = (Vec::new(), Vec::new(), 0, 0);
    for reader in readers {
        let (o, s, g, l) = reader.await?;
        other.extend(o);
        same.extend(s);
        gaps += g;
        lagged += l;
    }
    other.sort_unstable();
    same.sort_unstable();
    let mut dropped = 0;
    for instance in topology.instances() {
        let stats: serde_json::Value = reqwest::get(format!("{}/api/live/stats", instance.url))
            .await?
            .json()
            .await?;
        dropped += stats["dropped"].as_u64().unwrap_or(0);
    }
    topology.stop().await;
    #[allow(clippy::cast_precision_loss)]
    let rate = published as f64 / bench.duration.as_secs_f64();
    let per_instance = opened / urls.len();
    Ok(format!(
        "### Fan-out latency\n\n\
         {opened} sockets over {} instances ({per_instance} each), {} SKUs watched by each; \
         {published} flash-price changes in {:.0} s ({rate:.0}/s), each to one instance.\n\n\
         | from the change to a socket | deliveries | p50 ms | p90 ms | p99 ms | max ms |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n\
         | on another instance | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n\
         | on the same instance | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n\n\
         Steady state (after the first 2 s): {gaps} update-number gaps seen by the sockets; \
         {lagged} `lagged` notices; {dropped} updates dropped for slow sockets. \
         Resident memory of each instance with its sockets watching: {} MiB.\n",
        urls.len(),
        bench.watched,
        bench.duration.as_secs_f64(),
        other.len(),
        percentile(&other, 0.5),
        percentile(&other, 0.9),
        percentile(&other, 0.99),
        other.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        same.len(),
        percentile(&same, 0.5),
        percentile(&same, 0.9),
        percentile(&same, 0.99),
        same.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        rss_watching
            .iter()
            .map(|k| (k / 1024).to_string())
            .collect::<Vec<_>>()
            .join(" / "),
    ))
}

async fn deliveries(bench: &Bench, args: &LiveArgs) -> Result<String, BoxError> {
    let mut rows = String::new();
    for channel in [
        stage6::fanout::PubsubChannel::PerTopic,
        stage6::fanout::PubsubChannel::Shared,
    ] {
        let args = LiveArgs {
            pubsub_channel: channel,
            ..args.clone()
        };
        let topology = topology(bench, &args, lb::Policy::LeastConn).await?;
        let instances = topology.instances();
        let skus: Vec<String> = shop::Catalog::get()
            .products()
            .iter()
            .map(|p| p.sku.clone())
            .collect();
        // 30 sockets, 2 SKUs each: most SKUs are watched on one instance or none.
        let mut sockets = Vec::new();
        for n in 0..30 {
            let mut socket = LiveClient::connect(&instances[n % instances.len()].url, "").await?;
            let mine = vec![
                skus[(n * 17) % skus.len()].clone(),
                skus[(n * 29 + 5) % skus.len()].clone(),
            ];
            socket.watch(&mine, &HashMap::new()).await?;
            socket
                .until("snapshot", &mut Tally::default(), Duration::from_secs(10))
                .await?;
            sockets.push(socket);
        }
        let http = reqwest::Client::new();
        let updates = 540;
        for n in 0..updates {
            http.post(format!(
                "{}/api/live/price",
                instances[n % instances.len()].url
            ))
            .json(&json!({"sku": skus[n % skus.len()], "price_cents": 1000 + n}))
            .send()
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut from_redis = 0;
        for instance in &instances {
            let stats: serde_json::Value = reqwest::get(format!("{}/api/live/stats", instance.url))
                .await?
                .json()
                .await?;
            from_redis += stats["from_redis"].as_u64().unwrap_or(0);
        }
        for socket in sockets {
            socket.close().await;
        }
        topology.stop().await;
        #[allow(clippy::cast_precision_loss)]
        let per_update = from_redis as f64 / updates as f64;
        rows.push_str(&format!(
            "| `--pubsub-channel {}` | {updates} | {from_redis} | {per_update:.2} |\n",
            match channel {
                stage6::fanout::PubsubChannel::PerTopic => "per-topic",
                stage6::fanout::PubsubChannel::Shared => "shared",
            }
        ));
    }
    Ok(format!(
        "### Redis deliveries per update\n\n\
         Three instances, 30 sockets watching 2 SKUs each (sparse, as most shoppers are), \
         540 changes spread over the 270 SKUs.\n\n\
         | channels | updates | messages Redis delivered to instances | per update |\n\
         | --- | ---: | ---: | ---: |\n{rows}"
    ))
}

/// An instance's resident memory, in KiB (`VmRSS`).
fn rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn idle(bench: &Bench, args: &LiveArgs) -> Result<String, BoxError> {
    let topology = topology(bench, args, lb::Policy::LeastConn).await?;
    let target = topology
        .instances()
        .into_iter()
        .next()
        .ok_or("no instance")?;
    let before = rss_kib(target.pid);
    let mut sockets: Vec<LiveClient> = Vec::new();
    let mut rows = format!(
        "| sockets | resident MiB | KiB per socket |\n| ---: | ---: | ---: |\n| 0 | {} | |\n",
        before / 1024
    );
    let mut failed = None;
    while sockets.len() < bench.idle && failed.is_none() {
        let batch = 1000.min(bench.idle - sockets.len());
        let url = target.url.clone();
        let opened = open_many(batch, move |_| {
            let url = url.clone();
            async move { LiveClient::connect(&url, "").await.ok() }
        })
        .await;
        if opened.len() < batch {
            failed = Some(sockets.len() + opened.len());
        }
        sockets.extend(opened);
        let rss = rss_kib(target.pid);
        #[allow(clippy::cast_precision_loss)]
        let per = rss.saturating_sub(before) as f64 / sockets.len().max(1) as f64;
        rows.push_str(&format!(
            "| {} | {} | {per:.1} |\n",
            sockets.len(),
            rss / 1024
        ));
    }
    let stats: serde_json::Value = reqwest::get(format!("{}/api/live/stats", target.url))
        .await?
        .json()
        .await?;
    let held = stats["sockets"].as_u64().unwrap_or(0);
    for socket in sockets {
        drop(socket);
    }
    topology.stop().await;
    Ok(format!(
        "### Idle sockets on one instance\n\n\
         Opened in batches of 1,000 straight to one instance (no balancer), each answered with its \
         `hello`; the instance reported {held} open.{}\n\n{rows}",
        failed.map_or_else(String::new, |n| format!(" Opening failed after {n}."))
    ))
}

async fn skew(bench: &Bench, args: &LiveArgs) -> Result<String, BoxError> {
    let mut rows = String::new();
    for policy in [lb::Policy::LeastConn, lb::Policy::RoundRobin] {
        let topology = topology(bench, args, policy).await?;
        let url = topology.url();
        let open = |n: usize| {
            let url = url.clone();
            open_many(n, move |_| {
                let url = url.clone();
                async move { LiveClient::connect(&url, "").await.ok() }
            })
        };
        let mut sockets = open(600).await;
        let joined = topology.add_instance().await?;
        topology
            .wait_for_backend(&joined.name, lb::BackendState::Up, Duration::from_secs(20))
            .await?;
        sockets.extend(open(400).await);
        let mut counts = Vec::new();
        for instance in topology.instances() {
            let stats: serde_json::Value = reqwest::get(format!("{}/api/live/stats", instance.url))
                .await?
                .json()
                .await?;
            counts.push(stats["sockets"].as_u64().unwrap_or(0));
        }
        let (max, min) = (
            counts.iter().max().copied().unwrap_or(0),
            counts.iter().min().copied().unwrap_or(0),
        );
        #[allow(clippy::cast_precision_loss)]
        let ratio = max as f64 / min.max(1) as f64;
        rows.push_str(&format!(
            "| {policy:?} | {} | {max} / {min} = {ratio:.2} |\n",
            counts
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" · ")
        ));
        for socket in sockets {
            drop(socket);
        }
        topology.stop().await;
    }
    Ok(format!(
        "### Socket skew after a scale-out\n\n\
         600 sockets through the balancer over three instances, a fourth joins, 400 more.\n\n\
         | policy | sockets per instance (i1 · i2 · i3 · i4) | max / min |\n| --- | --- | ---: |\n{rows}"
    ))
}
