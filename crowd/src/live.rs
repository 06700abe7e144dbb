//! `crowd --stage 6`: the crowd watches instead of shopping.
//!
//! N watchers open a WebSocket each through the balancer, as the shop page
//! does: each watches 20 of the 40 "hot" SKUs and sits in one of five
//! rooms (`?room=…` in the URL, so `room-sticky` can send a room to one
//! instance). A publisher changes a random hot SKU's flash price through
//! the balancer and says something in a random room, at a set rate, while
//! the chaos schedule crashes, restarts and scales the instances. A
//! watcher whose socket drops reconnects as the page does (full jitter,
//! 100 ms to 2 s), sending where it was.
//!
//! At the end every watcher asks for a snapshot, which says how many
//! updates were published on each of its topics. Per fan-out mode:
//! updates published, delivered, **missed** (published on a watcher's
//! topics, never delivered to it; stock and rooms apart, because
//! `room-sticky` only helps rooms), and the fan-out latency from the
//! publisher's request to the watcher's socket.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser as _;
use serde_json::{Value, json};
use shop::topology::{Topology, TopologyConfig};
use shop::{BoxError, Scope, Services, Stage};
use stage6::client::{LiveClient, Tally};
use stage6::fanout::Fanout;
use stage6::{LiveArgs, Stage6};

use crate::chaos::Playback;
use crate::report::{LiveReport, percentile_ms};
use crate::rng::Rng;

use crate::{Cli, DefaultArgs, STAGE_ENV};

const HOT_SKUS: usize = 40;
const WATCHED: usize = 20;
const ROOMS: [&str; 5] = ["tees", "hoodies", "jeans", "jackets", "socks"];
/// How long the publisher is quiet before the final count, so that nothing
/// is still on its way.
const SETTLE: Duration = Duration::from_secs(1);

/// When each numbered update left the publisher (price cents or the text
/// said carry the number).
type Sent = Arc<Mutex<HashMap<u64, Instant>>>;

/// Runs the live crowd once per fan-out mode in `modes`.
pub async fn run(cli: &Cli, exe: &Path, modes: &[Fanout]) -> Result<Vec<LiveReport>, BoxError> {
    let mut reports = Vec::new();
    for &fanout in modes {
        let mut args = DefaultArgs::<LiveArgs>::try_parse_from(["crowd"])?.args;
        args.fanout = fanout;
        let services: Services = Stage6::services(&mut args, Scope::Fleet).await?;
        let mut env = shop::flags::instance_env(&args)?;
        env.push((STAGE_ENV.into(), "6".into()));
        let topology = Topology::start(TopologyConfig {
            env,
            policy: Stage6::policy(&args),
            ..TopologyConfig::for_tests(exe, &stage6::INFO)
        })
        .await?;
        let report = watch_through(&topology, fanout, cli).await;
        topology.stop().await;
        drop(services);
        reports.push(report?);
    }
    Ok(reports)
}

/// What one watcher counted.
struct Watched {
    tally: Tally,
    room: &'static str,
    latencies: Vec<Duration>,
    reconnects: u64,
}

async fn watch_through(
    topology: &Topology,
    fanout: Fanout,
    cli: &Cli,
) -> Result<LiveReport, BoxError> {
    let url = topology.url();
    let hot: Vec<String> = shop::Catalog::get()
        .products()
        .iter()
        .step_by(shop::Catalog::get().products().len() / HOT_SKUS)
        .take(HOT_SKUS)
        .map(|p| p.sku.clone())
        .collect();
    let sent: Sent = Arc::default();
    let started = Instant::now();
    let publishing_ends = started + cli.duration;
    let counting_at = publishing_ends + SETTLE;

    let mut watchers = Vec::new();
    let counted = Arc::new(tokio::sync::Barrier::new(cli.shoppers));
    for n in 0..cli.shoppers {
        let mut rng = Rng::fork(cli.seed, 1000 + n as u64);
        let mut skus = hot.clone();
        for i in 0..WATCHED {
            let j = i + rng.index(skus.len() - i);
            skus.swap(i, j);
        }
        skus.truncate(WATCHED);
        let room = ROOMS[n % ROOMS.len()];
        watchers.push(tokio::spawn(watcher(
            url.clone(),
            skus,
            room,
            n,
            Arc::clone(&sent),
            counting_at,
            Arc::clone(&counted),
        )));
    }
    // Let every watcher open before anything is published.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let publisher = tokio::spawn(publish(
        url.clone(),
        hot.clone(),
        cli.rate,
        cli.seed,
        Arc::clone(&sent),
        publishing_ends,
    ));

    let mut chaos = Playback::new(
        cli.seed,
        cli.duration,
        cli.no_chaos,
        topology,
        None,
        None,
        false,
        started,
    );
    while Instant::now() < publishing_ends {
        if let Some(line) = chaos.due(topology).await {
            if !cli.quiet {
                eprintln!("  stage6 --fanout {}: {line}", fanout.as_str());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publisher.await??;

    let mut report = LiveReport {
        stage: "stage6".to_owned(),
        fanout: fanout.as_str().to_owned(),
        watchers: cli.shoppers,
        published: 0,
        owed_stock: 0,
        owed_room: 0,
        delivered_stock: 0,
        delivered_room: 0,
        missed_stock: 0,
        missed_room: 0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        reconnects: 0,
        chaos: chaos.log,
    };
    let mut latencies = Vec::new();
    // Per topic, the span of update numbers any watcher knew of.
    let mut spans: HashMap<String, (u64, u64)> = HashMap::new();
    for watcher in watchers {
        let watched = watcher.await?;
        for (topic, t) in &watched.tally.topics {
            let first = t.first.unwrap_or(t.latest);
            let span = spans.entry(topic.clone()).or_insert((first, t.latest));
            *span = (span.0.min(first), span.1.max(t.latest));
        }
        report.reconnects += watched.reconnects;
        latencies.extend(watched.latencies);
        for (topic, t) in &watched.tally.topics {
            let owed = t.latest.saturating_sub(t.first.unwrap_or(t.latest));
            let delivered = t.received.min(owed);
            if topic.starts_with("room:") {
                debug_assert_eq!(topic, &format!("room:{}", watched.room));
                report.owed_room += owed;
                report.delivered_room += delivered;
            } else {
                report.owed_stock += owed;
                report.delivered_stock += delivered;
            }
        }
    }
    report.published = spans.values().map(|(first, latest)| latest - first).sum();
    report.missed_stock = report.owed_stock - report.delivered_stock;
    report.missed_room = report.owed_room - report.delivered_room;
    report.p50_ms = percentile_ms(&mut latencies, 0.50);
    report.p99_ms = percentile_ms(&mut latencies, 0.99);
    Ok(report)
}

/// Opens (or reopens) a watcher's socket: through the balancer, in its
/// room, resuming where it was; retried with full jitter until `until`.
async fn open(
    url: &str,
    room: &str,
    n: usize,
    tally: &Tally,
    skus: &[String],
    rng: &mut Rng,
    until: Instant,
) -> Option<LiveClient> {
    let mut attempt = 0u32;
    while Instant::now() < until {
        let since = tally
            .room_since(room)
            .map(|id| format!("&since={id}"))
            .unwrap_or_default();
        let query = format!("?room={room}&name=w{n}{since}");
        if let Ok(mut socket) = LiveClient::connect(url, &query).await {
            if socket.watch(skus, &tally.since()).await.is_ok() {
                return Some(socket);
            }
        }
        attempt += 1;
        let ceiling = 100u64.saturating_mul(1 << attempt.min(5)).min(2000);
        tokio::time::sleep(Duration::from_millis(
            100 + rng.below(ceiling.saturating_sub(100).max(1)),
        ))
        .await;
    }
    None
}

async fn watcher(
    url: String,
    skus: Vec<String>,
    room: &'static str,
    n: usize,
    sent: Sent,
    counting_at: Instant,
    counted: Arc<tokio::sync::Barrier>,
) -> Watched {
    let mut rng = Rng::fork(0x5eed, n as u64);
    let mut watched = Watched {
        tally: Tally::default(),
        room,
        latencies: Vec::new(),
        reconnects: 0,
    };
    let mut socket = open(&url, room, n, &watched.tally, &skus, &mut rng, counting_at).await;
    while let Some(live) = socket.as_mut() {
        let left = counting_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match live.next(left).await {
            Ok(Some(message)) => {
                note_latency(&message, &sent, &mut watched.latencies, &watched.tally);
                watched.tally.absorb(&message);
            }
            Ok(None) => break,
            Err(_) => {
                watched.reconnects += 1;
                socket = open(&url, room, n, &watched.tally, &skus, &mut rng, counting_at).await;
            }
        }
    }
    // The final count: a snapshot says how many were published. Room
    // updates published just before it may still be on their way (a
    // snapshot does not move a page past events): read them too.
    for _ in 0..3 {
        let Some(live) = socket.as_mut() else { break };
        if live.ask_snapshot().await.is_ok() {
            if let Ok(Some(_)) = live
                .until("snapshot", &mut watched.tally, Duration::from_secs(5))
                .await
            {
                let _ = live
                    .drain(&mut watched.tally, Duration::from_millis(300))
                    .await;
                break;
            }
        }
        socket = open(
            &url,
            room,
            n,
            &watched.tally,
            &skus,
            &mut rng,
            Instant::now() + Duration::from_secs(5),
        )
        .await;
    }
    // Leave only once every watcher has counted: a leaving member is an
    // update in its room, which the others would be owed.
    counted.wait().await;
    if let Some(live) = socket {
        live.close().await;
    }
    watched
}

/// The fan-out latency of a numbered update arriving now (counted once: a
/// duplicate is not a delivery).
fn note_latency(message: &Value, sent: &Sent, latencies: &mut Vec<Duration>, tally: &Tally) {
    let (Some(topic), Some(seq)) = (message["topic"].as_str(), message["seq"].as_u64()) else {
        return;
    };
    if tally.topics.get(topic).is_some_and(|t| seq <= t.seq) {
        return;
    }
    let number = match message["type"].as_str() {
        Some("stock") => message["price_cents"].as_u64(),
        Some("say") => message["text"]
            .as_str()
            .and_then(|t| t.strip_prefix('#')?.parse().ok()),
        _ => None,
    };
    let at = number.and_then(|n| sent.lock().ok()?.get(&n).copied());
    if let Some(at) = at {
        latencies.push(at.elapsed());
    }
}

/// Publishes at `rate` per second until `until`: flash prices over HTTP
/// through the balancer, room messages over one socket per room.
async fn publish(
    url: String,
    hot: Vec<String>,
    rate: u32,
    seed: u64,
    sent: Sent,
    until: Instant,
) -> Result<(), BoxError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut rng = Rng::fork(seed, 999);
    let mut speakers: HashMap<&str, LiveClient> = HashMap::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Numbers start above any catalog price, and stay under the price cap.
    let mut number: u64 = 100_000;
    let mut tally = Tally::default();
    while Instant::now() < until {
        ticks.tick().await;
        number += 1;
        if let Ok(mut sent) = sent.lock() {
            sent.insert(number, Instant::now());
        }
        if number % 2 == 0 {
            let sku = &hot[rng.index(hot.len())];
            // A failed publish (its instance just crashed) is simply not
            // published: the count comes from the update numbers.
            let _ = http
                .post(format!("{url}/api/live/price"))
                .json(&json!({"sku": sku, "price_cents": number}))
                .send()
                .await;
        } else {
            let room = ROOMS[rng.index(ROOMS.len())];
            if !speakers.contains_key(room) {
                if let Ok(speaker) =
                    LiveClient::connect(&url, &format!("?room={room}&name=publisher")).await
                {
                    speakers.insert(room, speaker);
                }
            }
            let Some(speaker) = speakers.get_mut(room) else {
                continue;
            };
            // Read what the room sent back, so this socket never lags.
            while let Ok(Some(message)) = speaker.next(Duration::ZERO).await {
                tally.absorb(&message);
            }
            if speaker.say(&format!("#{number}")).await.is_err() {
                speakers.remove(room);
            }
        }
    }
    for (_, speaker) in speakers {
        speaker.close().await;
    }
    Ok(())
}
