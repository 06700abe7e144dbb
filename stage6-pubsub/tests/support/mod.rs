//! `spawn_live()`: stage 6 for one test, in the fan-out mode the test is
//! about, with every server it needs started fresh (stage 5's PostgreSQL
//! primary + replica, the sessions Redis that also carries the live
//! layer) and kept in the test's hands to freeze, kill and inspect.

#![allow(dead_code)] // each test file uses its own subset

use std::time::Duration;

use serde_json::{Value, json};
use shop::services::postgres::{DATABASE_REPLICA_URL_ENV, DATABASE_URL_ENV, PostgresCluster};
use shop::services::redis::{REDIS_URL_ENV, RedisServer};
use shop::shopper::Shopper;
use shop::topology::{Topology, TopologyConfig};
use stage6::client::{LiveClient, Tally};
use stage6::fanout::Fanout;

pub const STAGE6: &str = env!("CARGO_BIN_EXE_stage6");

/// How long a test waits for something that should happen at once.
pub const SOON: Duration = Duration::from_secs(10);
/// How long a page stays quiet before everything sent has arrived.
pub const QUIET: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct LiveShop {
    pub topology: Topology,
    pub postgres: PostgresCluster,
    pub redis: RedisServer,
}

/// Stage 6 in `fanout` mode with `instances` instances behind the real
/// balancer (its policy as `up` would choose it), and `env` on top.
pub async fn spawn_live(fanout: Fanout, instances: usize, env: &[(&str, &str)]) -> LiveShop {
    spawn_live_with(fanout, instances, env, |_| {}).await
}

/// The same, with the topology's settings changed by `configure` (the
/// balancer's tunnel idle timeout, say) before it starts.
pub async fn spawn_live_with(
    fanout: Fanout,
    instances: usize,
    env: &[(&str, &str)],
    configure: impl FnOnce(&mut TopologyConfig),
) -> LiveShop {
    let postgres = PostgresCluster::start()
        .await
        .unwrap_or_else(|e| panic!("a private PostgreSQL primary + replica is needed: {e}"));
    let redis = RedisServer::start()
        .await
        .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}"));
    let mut config = TopologyConfig::for_tests(STAGE6, &stage6::INFO).instances(instances);
    if fanout == Fanout::RoomSticky {
        config.policy = lb::Policy::HashParam;
    }
    config.env.extend([
        (REDIS_URL_ENV.into(), redis.url().into()),
        (DATABASE_URL_ENV.into(), postgres.primary_url().into()),
        (
            DATABASE_REPLICA_URL_ENV.into(),
            postgres.replica_url().into(),
        ),
        ("SHOP_NO_CACHE".into(), "true".into()),
        ("SHOP_FANOUT".into(), fanout.as_str().into()),
        // About what happens, not how fast: a loaded test machine must not
        // turn a slow answer into a 503.
        ("SHOP_STORE_TIMEOUT".into(), "5s".into()),
        ("SHOP_DB_TIMEOUT".into(), "5s".into()),
    ]);
    for (name, value) in env {
        config.env.retain(|(n, _)| n != name);
        config.env.push(((*name).into(), (*value).into()));
    }
    configure(&mut config);
    let topology = Topology::start(config)
        .await
        .unwrap_or_else(|e| panic!("stage6 did not start: {e}"));
    LiveShop {
        topology,
        postgres,
        redis,
    }
}

impl LiveShop {
    pub fn url(&self) -> String {
        self.topology.url()
    }

    /// The address of instance `name` (`i1`, …), to open a page on it.
    pub fn instance_url(&self, name: &str) -> String {
        self.topology
            .instance(name)
            .unwrap_or_else(|| panic!("no instance {name}"))
            .url
    }

    pub fn shopper(&self) -> Shopper {
        Shopper::new(self.url()).expect("client")
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        self.redis.connection().await.expect("the sessions redis")
    }

    /// How many instances hold a subscription to `topic` (`PUBSUB NUMSUB`).
    pub async fn subscribers(&self, topic: &str) -> u64 {
        let mut redis = self.redis().await;
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("myclothes:live:{topic}"))
            .query_async(&mut redis)
            .await
            .expect("PUBSUB NUMSUB");
        count
    }

    /// Waits (up to [`SOON`]) until `topic` has `count` subscribers.
    pub async fn wait_for_subscribers(&self, topic: &str, count: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let now = self.subscribers(topic).await;
            if now == count || tokio::time::Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets `sku`'s flash price through `base` (an instance or the
    /// balancer): one update on its topic.
    pub async fn set_price(&self, base: &str, sku: &str, cents: u32) -> reqwest::StatusCode {
        reqwest::Client::new()
            .post(format!("{base}/api/live/price"))
            .json(&json!({"sku": sku, "price_cents": cents}))
            .send()
            .await
            .expect("an answer")
            .status()
    }

    /// `/api/live/stats` of instance `name`.
    pub async fn stats(&self, name: &str) -> Value {
        reqwest::get(format!("{}/api/live/stats", self.instance_url(name)))
            .await
            .expect("stats")
            .json()
            .await
            .expect("JSON")
    }

    pub async fn stop(self) {
        self.topology.stop().await;
    }
}

/// A page on `base` watching `skus`, with its first snapshot counted.
pub async fn page(base: &str, skus: &[&str]) -> (LiveClient, Tally) {
    let mut page = LiveClient::connect(base, "").await.expect("a socket");
    let mut tally = Tally::default();
    let skus: Vec<String> = skus.iter().map(|s| (*s).to_owned()).collect();
    page.watch(&skus, &Default::default()).await.expect("watch");
    page.until("snapshot", &mut tally, SOON)
        .await
        .expect("socket open")
        .expect("a snapshot after watching");
    (page, tally)
}

/// Reads a page until it has received `count` updates in all, or [`SOON`]
/// passes.
pub async fn receive(page: &mut LiveClient, tally: &mut Tally, count: u64) {
    let deadline = tokio::time::Instant::now() + SOON;
    while tally.received() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match page.next(left).await.expect("socket open") {
            Some(message) => tally.absorb(&message),
            None => return,
        }
    }
}

/// A shopper who puts `qty` of `sku` in a fresh cart and checks out:
/// the checkout's status and body.
pub async fn buy(base: &str, sku: &str, qty: u8) -> (reqwest::StatusCode, Value) {
    let shopper = Shopper::new(base).expect("client");
    shopper
        .add(sku, i64::from(qty))
        .await
        .expect("added to the cart");
    let response = shopper
        .http()
        .post(shopper.url("/api/checkout"))
        .send()
        .await
        .expect("a checkout answer");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST /api/checkout` as `shopper`.
pub async fn checkout(shopper: &Shopper) -> reqwest::Response {
    shopper
        .http()
        .post(shopper.url("/api/checkout"))
        .send()
        .await
        .expect("a checkout answer")
}
