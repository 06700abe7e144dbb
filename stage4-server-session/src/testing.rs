//! Helpers for the tests of stages that keep sessions in a store (this one,
//! with each of its stores, and stage 5), behind the `testing` feature.

use std::collections::BTreeSet;
use std::time::Duration;

use shop::StageInfo;
use shop::services::dynamodb::{DYNAMODB_URL_ENV, DynamoServer};
use shop::services::memcached::{DEFAULT_MEMORY_MB, MEMCACHED_URL_ENV, MemcachedServer};
use shop::services::postgres::{DATABASE_URL_ENV, PostgresCluster};
use shop::services::redis::{REDIS_URL_ENV, RedisServer};
use shop::shopper::Shopper;
use shop::topology::{Topology, TopologyConfig};

use crate::sessions::SESSION_COOKIE;
use crate::stores::dynamodb::Credentialed;
use crate::stores::{DynamoSessions, StoreKind};

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

/// The server behind a [`StoreShop`], which the test can freeze, kill
/// and restart.
#[derive(Debug)]
pub enum StoreServer {
    Redis(RedisServer),
    Memcached(MemcachedServer),
    Postgres(PostgresCluster),
    Dynamodb(DynamoServer),
    /// The record (which `freeze`, `kill` and `restart` act on) and its
    /// cache.
    DynamodbCached(DynamoServer, RedisServer),
}

impl StoreServer {
    /// Starts a private server for `kind` (Memcached with
    /// [`shop::services::memcached::DEFAULT_MEMORY_MB`]).
    pub async fn start(kind: StoreKind) -> Self {
        match kind {
            StoreKind::Redis => Self::Redis(
                RedisServer::start()
                    .await
                    .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}")),
            ),
            StoreKind::Memcached => Self::memcached(DEFAULT_MEMORY_MB).await,
            StoreKind::Postgres => Self::Postgres(
                PostgresCluster::start()
                    .await
                    .unwrap_or_else(|e| panic!("a private PostgreSQL is needed: {e}")),
            ),
            StoreKind::Dynamodb => Self::Dynamodb(dynalite().await),
            StoreKind::DynamodbCached => Self::DynamodbCached(
                dynalite().await,
                RedisServer::start()
                    .await
                    .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}")),
            ),
        }
    }

    /// A private `memcached` holding at most `memory_mb` megabytes.
    pub async fn memcached(memory_mb: u32) -> Self {
        Self::Memcached(
            MemcachedServer::start_with_memory(memory_mb)
                .await
                .unwrap_or_else(|e| panic!("a private memcached is needed: {e}")),
        )
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            Self::Redis(_) => StoreKind::Redis,
            Self::Memcached(_) => StoreKind::Memcached,
            Self::Postgres(_) => StoreKind::Postgres,
            Self::Dynamodb(_) => StoreKind::Dynamodb,
            Self::DynamodbCached(..) => StoreKind::DynamodbCached,
        }
    }

    /// The Redis in front of a `dynamodb-cached` store. Panics for
    /// another kind.
    pub fn cache(&mut self) -> &mut RedisServer {
        match self {
            Self::DynamodbCached(_, cache) => cache,
            other => panic!("no cache in front of {:?}", other.kind()),
        }
    }

    /// The variables that point stage 4 at this server.
    fn env(&self) -> Vec<(&'static str, String)> {
        let (variable, url) = match self {
            Self::Redis(server) => (REDIS_URL_ENV, server.url()),
            Self::Memcached(server) => (MEMCACHED_URL_ENV, server.url()),
            Self::Postgres(cluster) => (DATABASE_URL_ENV, cluster.primary_url()),
            Self::Dynamodb(server) | Self::DynamodbCached(server, _) => {
                (DYNAMODB_URL_ENV, server.url())
            }
        };
        let mut env = vec![
            ("SHOP_SESSION_STORE", self.kind().name().to_owned()),
            (variable, url),
        ];
        if let Self::DynamodbCached(_, cache) = self {
            env.push((REDIS_URL_ENV, cache.url()));
        }
        if let Self::Dynamodb(_) | Self::DynamodbCached(..) = self {
            // A server the shop did not start is signed for with the SDK's
            // default credentials: here, the environment's.
            env.extend([
                ("AWS_ACCESS_KEY_ID", "local".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", "local".to_owned()),
                ("AWS_REGION", "us-east-1".to_owned()),
            ]);
        }
        env
    }

    /// Every item in the DynamoDB sessions table, as the server holds it
    /// (expired ones too: nothing deletes them here). Panics for another
    /// kind of store.
    pub async fn dynamodb_items(
        &self,
    ) -> Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
        let (Self::Dynamodb(server) | Self::DynamodbCached(server, _)) = self else {
            panic!("not a DynamoDB store: {:?}", self.kind());
        };
        let settings = crate::sessions::SessionSettings {
            ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            secure_cookies: false,
        };
        let store = DynamoSessions::connect(&server.url(), Credentialed::Local, settings)
            .await
            .expect("an SDK client");
        let scanned = store
            .client()
            .scan()
            .table_name(crate::stores::dynamodb::TABLE)
            .send()
            .await
            .expect("Scan");
        scanned.items.unwrap_or_default()
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        match self {
            Self::Redis(server) => server.pause(),
            Self::Memcached(server) => server.pause(),
            Self::Postgres(cluster) => cluster.freeze_primary(),
            Self::Dynamodb(server) | Self::DynamodbCached(server, _) => server.pause(),
        }
        .expect("SIGSTOP");
    }

    /// Wakes the frozen server (SIGCONT).
    pub fn thaw(&self) {
        match self {
            Self::Redis(server) => server.resume(),
            Self::Memcached(server) => server.resume(),
            Self::Postgres(cluster) => cluster.thaw_primary(),
            Self::Dynamodb(server) | Self::DynamodbCached(server, _) => server.resume(),
        }
        .expect("SIGCONT");
    }

    /// `kill -9`, as a crash would.
    pub fn kill(&mut self) {
        match self {
            Self::Redis(server) => server.kill(),
            Self::Memcached(server) => server.kill(),
            Self::Postgres(cluster) => cluster.kill_primary(),
            Self::Dynamodb(server) | Self::DynamodbCached(server, _) => server.kill(),
        }
    }

    /// Starts the killed server again, on the same port (and, for Redis,
    /// PostgreSQL and DynamoDB, the same data).
    pub async fn restart(&mut self) {
        match self {
            Self::Redis(server) => server.restart().await,
            Self::Memcached(server) => server.restart().await,
            Self::Postgres(cluster) => cluster.start_primary().await,
            Self::Dynamodb(server) | Self::DynamodbCached(server, _) => server.restart().await,
        }
        .expect("the store starts again");
    }
}

/// Stage 4 with `--store` set to the kind of `store`, which the test
/// controls: three instances behind round-robin.
#[derive(Debug)]
pub struct StoreShop {
    pub topology: Topology,
    pub store: StoreServer,
}

impl StoreShop {
    /// Starts a private server of `kind`, then the stage pointed at it.
    pub async fn start(exe: &str, kind: StoreKind, env: &[(&str, &str)]) -> Self {
        Self::start_with(exe, StoreServer::start(kind).await, env).await
    }

    /// Starts the stage pointed at `store`, with `env` added for every
    /// instance (e.g. `SHOP_STORE_TIMEOUT=10s`).
    pub async fn start_with(exe: &str, store: StoreServer, env: &[(&str, &str)]) -> Self {
        let mut config = TopologyConfig::for_tests(exe, &crate::INFO);
        config
            .env
            .extend(store.env().into_iter().map(|(k, v)| (k.into(), v.into())));
        config
            .env
            .extend(env.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        let topology = Topology::start(config).await.unwrap_or_else(|e| {
            panic!("stage4 --store {} did not start: {e}", store.kind().name())
        });
        Self { topology, store }
    }

    pub fn url(&self) -> String {
        self.topology.url()
    }

    /// A new shopper (an empty cookie jar) at the balancer.
    pub fn shopper(&self) -> Shopper {
        Shopper::new(self.url()).expect("an HTTP client")
    }

    /// A shopper with one line sends fifty "add one" of another at once
    /// (spread over the instances); asserts that the cart holds all fifty
    /// and its first line still, then stops the shop.
    pub async fn assert_concurrent_adds_all_land(self) {
        let alice = self.shopper();
        alice.add("SOCK-GREY-L", 1).await.expect("a first change");
        add_one_at_once(&alice, "TEE-RED-M", 50).await;
        let cart = alice.cart().await.expect("view");
        assert_eq!(
            cart.qty_of("TEE-RED-M"),
            50,
            "{}: no add was lost",
            self.store.kind().name()
        );
        assert_eq!(cart.qty_of("SOCK-GREY-L"), 1, "nor the first line");
        self.stop().await;
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

/// Sends `times` "add one `sku`" for `shopper` all at once (over whichever
/// instances the balancer picks) and waits for every answer; panics if any
/// add fails. Returns the instances that served them.
pub async fn add_one_at_once(
    shopper: &Shopper,
    sku: &'static str,
    times: usize,
) -> BTreeSet<String> {
    let mut adds = tokio::task::JoinSet::new();
    for _ in 0..times {
        let shopper = shopper.clone();
        adds.spawn(async move { shopper.add(sku, 1).await });
    }
    let mut served_by = BTreeSet::new();
    while let Some(done) = adds.join_next().await {
        let reply = done.expect("the add ran").expect("every add succeeds");
        served_by.insert(reply.served_by().to_owned());
    }
    served_by
}

async fn dynalite() -> DynamoServer {
    DynamoServer::start()
        .await
        .unwrap_or_else(|e| panic!("a private dynalite is needed: {e}"))
}

/// A number from `GET /metrics` of one instance (through the balancer);
/// panics when the instance does not report it.
pub async fn metric(shopper: &Shopper, name: &str) -> u64 {
    let text = shopper
        .http()
        .get(shopper.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("a body");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("/metrics has no {name}:\n{text}"))
}
