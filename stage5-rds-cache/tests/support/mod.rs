//! `spawn_shop()`: stage 5 for one test, with every server it needs started
//! fresh (a PostgreSQL primary + streaming replica, a sessions Redis, a
//! cache Redis) and kept in the test's hands to stop, pause and inspect.

#![allow(dead_code)] // each test file uses its own subset

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use shop::services::postgres::{DATABASE_REPLICA_URL_ENV, DATABASE_URL_ENV, PostgresCluster};
use shop::services::redis::{REDIS_URL_ENV, RedisRole, RedisServer};
use shop::shopper::{Shopper, set_cookie_value};
use shop::topology::{Topology, TopologyConfig};
use sqlx::PgPool;
use stage4::sessions::SESSION_COOKIE;

pub const STAGE5: &str = env!("CARGO_BIN_EXE_stage5");

#[derive(Debug)]
pub struct TestShop {
    pub topology: Topology,
    pub postgres: PostgresCluster,
    pub sessions: RedisServer,
    pub cache: RedisServer,
}

pub async fn spawn_shop() -> TestShop {
    let postgres = PostgresCluster::start()
        .await
        .unwrap_or_else(|e| panic!("a private PostgreSQL primary + replica is needed: {e}"));
    let sessions = RedisServer::start()
        .await
        .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}"));
    let cache = RedisServer::start_as(RedisRole::Cache)
        .await
        .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}"));
    let mut config = TopologyConfig::for_tests(STAGE5, &stage5::INFO);
    config.env.extend([
        (REDIS_URL_ENV.into(), sessions.url().into()),
        (stage5::CACHE_URL_ENV.into(), cache.url().into()),
        (DATABASE_URL_ENV.into(), postgres.primary_url().into()),
        (
            DATABASE_REPLICA_URL_ENV.into(),
            postgres.replica_url().into(),
        ),
        // About what happens, not how fast: a loaded test machine must not
        // turn a slow answer into a 503.
        ("SHOP_STORE_TIMEOUT".into(), "10s".into()),
        // Enough for a first connection on a busy machine; outages still
        // answer (fall back, or 503) after it.
        ("SHOP_DB_TIMEOUT".into(), "5s".into()),
    ]);
    let topology = Topology::start(config)
        .await
        .unwrap_or_else(|e| panic!("stage5 did not start: {e}"));
    TestShop {
        topology,
        postgres,
        sessions,
        cache,
    }
}

impl TestShop {
    pub fn url(&self) -> String {
        self.topology.url()
    }

    pub fn shopper(&self) -> Shopper {
        Shopper::new(self.url()).expect("client")
    }

    pub async fn primary(&self) -> PgPool {
        PgPool::connect(&self.postgres.primary_url())
            .await
            .expect("the primary")
    }

    pub async fn replica(&self) -> PgPool {
        PgPool::connect(&self.postgres.replica_url())
            .await
            .expect("the replica")
    }

    /// Waits until the replica has replayed everything the primary wrote.
    pub async fn replica_caught_up(&self) {
        let (primary, replica) = (self.primary().await, self.replica().await);
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&primary)
            .await
            .expect("primary LSN");
        for _ in 0..200 {
            let caught_up: Option<bool> =
                sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                    .bind(&target)
                    .fetch_one(&replica)
                    .await
                    .expect("replica LSN");
            if caught_up == Some(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the replica did not catch up");
    }

    /// Holds the replica back: it keeps answering, from before every
    /// write made from now on, until [`TestShop::let_replica_replay`].
    pub async fn hold_replica_back(&self) {
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&self.replica().await)
            .await
            .expect("pause replay");
    }

    pub async fn let_replica_replay(&self) {
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(&self.replica().await)
            .await
            .expect("resume replay");
    }

    /// A plain connection to the cache Redis.
    pub async fn cache_connection(&self) -> redis::aio::MultiplexedConnection {
        self.cache.connection().await.expect("the cache redis")
    }

    /// A counter summed over every instance's `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let mut total = 0;
        for instance in self.topology.instances() {
            let text = reqwest::get(format!("{}/metrics", instance.url))
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            total += text
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name} "))?.parse::<u64>().ok())
                .unwrap_or(0);
        }
        total
    }

    pub async fn stop(self) {
        self.topology.stop().await;
    }
}

/// One answer: status, `X-Data-Path`, the session cookie it set, the body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub data_path: String,
    pub new_sid: Option<String>,
    pub headers: HeaderMap,
    pub body: Value,
}

pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("an answer");
    let status = response.status();
    let headers = response.headers().clone();
    let data_path = headers
        .get("x-data-path")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let new_sid = set_cookie_value(&headers, SESSION_COOKIE);
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        data_path,
        new_sid,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

pub async fn signup(shopper: &Shopper, email: &str, password: &str) -> Answer {
    send(
        shopper
            .http()
            .post(shopper.url("/api/signup"))
            .json(&json!({
                "email": email, "password": password, "name": "Ada Lovelace"
            })),
    )
    .await
}

pub async fn login(shopper: &Shopper, email: &str, password: &str) -> Answer {
    send(
        shopper
            .http()
            .post(shopper.url("/api/login"))
            .json(&json!({ "email": email, "password": password })),
    )
    .await
}

pub async fn me(shopper: &Shopper) -> Answer {
    send(shopper.http().get(shopper.url("/api/me"))).await
}

pub async fn update_me(shopper: &Shopper, name: &str) -> Answer {
    send(shopper.http().put(shopper.url("/api/me")).json(&json!({
        "name": name,
        "address": {"line1": "12 St James's Square", "city": "London", "postcode": "SW1Y 4JH", "country": "GB"}
    })))
    .await
}
