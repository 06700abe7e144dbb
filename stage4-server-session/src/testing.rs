//! Helpers for the tests of stages that keep sessions in Redis (this one
//! and stage 5), behind the `testing` feature.

use std::time::Duration;

use shop::StageInfo;
use shop::services::redis::{REDIS_URL_ENV, RedisServer};
use shop::shopper::Shopper;
use shop::topology::{Topology, TopologyConfig};

use crate::sessions::SESSION_COOKIE;

/// A stage whose sessions live in a `redis-server` the test controls.
#[derive(Debug)]
pub struct SessionShop {
    pub topology: Topology,
    pub redis: RedisServer,
}

impl SessionShop {
    /// Starts a private `redis-server`, then the stage (three instances
    /// behind round-robin) pointed at it, with `env` added for every
    /// instance (e.g. `SHOP_SESSION_TTL=2s`).
    pub async fn start(exe: &str, stage: &StageInfo, env: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start()
            .await
            .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}"));
        let mut config = TopologyConfig::for_tests(exe, stage);
        config.env.push((REDIS_URL_ENV.into(), redis.url().into()));
        config
            .env
            .extend(env.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        let topology = Topology::start(config)
            .await
            .unwrap_or_else(|e| panic!("{} did not start: {e}", stage.package));
        Self { topology, redis }
    }

    pub fn url(&self) -> String {
        self.topology.url()
    }

    /// A new shopper (an empty cookie jar) at the balancer.
    pub fn shopper(&self) -> Shopper {
        Shopper::new(self.url()).expect("an HTTP client")
    }

    /// A plain connection to the same Redis, to look at what the shop wrote.
    pub async fn redis_connection(&self) -> redis::aio::MultiplexedConnection {
        self.redis
            .connection()
            .await
            .expect("a connection to the test's redis-server")
    }

    /// Every key in Redis (fine for a test's handful).
    pub async fn redis_keys(&self) -> Vec<String> {
        let mut redis = self.redis_connection().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut redis)
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }

    pub async fn stop(self) {
        self.topology.stop().await;
    }
}

/// A request from a client without a cookie jar, carrying exactly
/// `Cookie: sid=<sid>` when `sid` is given: how a test plays a planted,
/// replayed or stolen session id.
pub fn request_with_sid(
    method: reqwest::Method,
    url: &str,
    sid: Option<&str>,
) -> reqwest::RequestBuilder {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("an HTTP client");
    let request = client.request(method, url);
    match sid {
        Some(sid) => request.header(reqwest::header::COOKIE, format!("{SESSION_COOKIE}={sid}")),
        None => request,
    }
}
