//! # Stage 4 · Server session
//!
//! **The lesson:** only a session id travels. The shopper's `sid` cookie
//! holds 22 random characters; the cart lives in Redis, which every
//! instance reaches. Instances become disposable: any of them serves any
//! request, one dying loses nothing, and concurrent changes to one cart
//! lose nothing either, because Redis applies each change atomically.
//! The state has not vanished, it has moved: Redis is now the thing that
//! must not go down (and when it does, the shop answers 503, never an
//! empty cart).
//!
//! **What changed since stage 3:** the cart store (a session store instead
//! of signed cookies: only a change starts a session, and a change with an
//! `Idempotency-Key` is applied once however often it is sent), and a
//! `DELETE /api/session` route to end a session ([`routes`]). The balancer
//! stays plain round-robin. The instances share one thing: the store.
//!
//! **Which store:** `--store redis` (the default), `memcached`, `postgres`,
//! `dynamodb` or `dynamodb-cached` ([`stores`] compares them). `stage4 up` starts a private
//! server of the chosen kind when its URL (`REDIS_URL`, `MEMCACHED_URL`,
//! `DATABASE_URL`, `DYNAMODB_URL`) is unset. Each answer names its store in
//! `X-Session-Store`, and the page shows it with its trade-off.
//!
//! **Run it:** `cargo run -p stage4`, open <http://127.0.0.1:8080>, kill
//! the instance that served you from the dashboard, and reload; or
//! `cargo run -p stage4 -- up --store memcached`, add items, and restart
//! memcached; or `cargo run -p stage4 -- demo`.
//!
//! ```text
//! curl -s -c jar -b jar -H 'content-type: application/json' \
//!      -d '{"sku":"TEE-RED-M","qty":2}' http://127.0.0.1:8080/api/cart/items
//! grep sid jar          # a session id, nothing else
//! redis-cli -u "$REDIS_URL" --scan --pattern 'myclothes:session:*'   # the cart's home
//! ```
//!
//! The modules: [`sessions`] (what every store shares: the cookie, renewal,
//! the once-only rule for retried changes, the [`sessions::SessionStore`]
//! trait), [`stores`] (Redis with Lua scripts, Memcached with `cas`,
//! PostgreSQL with transactions, DynamoDB with conditional updates, and
//! DynamoDB behind a Redis cache), [`error`] (their failures: the store not
//! answering, busy, or full), [`routes`] (ending a session, `/metrics`),
//! `page` (the store's badge). Stage 5 keeps its sessions here too.

mod demo;
pub mod error;
mod page;
pub mod routes;
pub mod sessions;
pub mod stores;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use serde::Serialize;
use shop::services::dynamodb::{DYNAMODB_URL_ENV, DynamoServer};
use shop::services::memcached::{MEMCACHED_URL_ENV, MemcachedServer};
use shop::services::postgres::{DATABASE_URL_ENV, PostgresCluster};
use shop::services::redis::{REDIS_URL_ENV, RedisServer};
use shop::{BoxError, Scope, Services, Stage, StageInfo};

use crate::sessions::SessionSettings;
use crate::stores::dynamodb::Credentialed;
use crate::stores::{
    CachedDynamoSessions, DynamoSessions, MemcachedSessions, PostgresSessions, RedisSessions,
    Store, StoreKind,
};

/// Stage 4: carts in a shared session store (Redis by default), behind round-robin.
#[derive(Debug)]
pub struct Stage4;

/// Stage 4's name and lesson, as the banner and the page show them.
pub static INFO: StageInfo = StageInfo {
    package: "stage4",
    title: "Stage 4 · Server session",
    lesson: "Only a session id travels; your cart lives in a shared store (Redis unless --store says otherwise), so any instance serves you and none of them matters.",
    try_this: &[
        "open {url}, add items, then kill the instance that served you on the dashboard (its link is above): the cart is still there",
        "curl -s -c jar -b jar -H 'content-type: application/json' -d '{\"sku\":\"TEE-RED-M\"}' {url}/api/cart/items ; grep sid jar   (22 characters: the whole cookie)",
        "curl -s -X DELETE -b jar -c jar {url}/api/session   (ends the session for good)",
        "cargo run -p stage4 -- up --store memcached   (then restart memcached from another shell: every cart is gone, and the shop says so)",
        "cargo run -p stage4 -- demo   (instance loss, the cookie's size, concurrent adds, narrated)",
    ],
    policy: lb::Policy::RoundRobin,
    sticky: false,
};

/// The flags of a stage that keeps sessions in Redis (stages 4 and 5). Each
/// has an environment fallback, which is also how `up` hands them to its
/// instances.
#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct SessionArgs {
    /// The Redis that holds the sessions. Unset: a private `redis-server`
    /// is started (and stopped on exit).
    #[arg(long, env = REDIS_URL_ENV, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Idle lifetime of a session; every request renews it.
    #[arg(long, env = "SHOP_SESSION_TTL", default_value = "30m", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "shop::flags::duration")]
    pub session_ttl: Duration,
    /// How long a request waits for the session store before answering 503.
    #[arg(long, env = "SHOP_STORE_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "shop::flags::duration")]
    pub store_timeout: Duration,
    /// Mark the `sid` cookie `Secure` (only sent over HTTPS).
    #[arg(long, env = "SHOP_SECURE_COOKIES")]
    pub secure_cookies: bool,
}

/// Stage 4's flags: which store keeps the sessions, where it is, and the
/// session flags every session stage has.
#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct Stage4Args {
    /// Where the sessions live: `redis` (durable, atomic by Lua script),
    /// `memcached` (memory only: a restart forgets every cart; atomic by
    /// gets/cas), `postgres` (durable, atomic by transaction), `dynamodb`
    /// (durable, atomic by conditional update) or `dynamodb-cached`
    /// (DynamoDB, with reads from a Redis cache in front).
    #[arg(long, env = "SHOP_SESSION_STORE", value_enum, default_value_t)]
    pub store: StoreKind,
    /// The Memcached that holds the sessions (`--store memcached`). Unset:
    /// a private `memcached` is started (and stopped on exit).
    #[arg(long, env = MEMCACHED_URL_ENV, hide_env_values = true)]
    pub memcached_url: Option<String>,
    /// The PostgreSQL that holds the sessions (`--store postgres`). Unset:
    /// a private server is started (and stopped on exit).
    #[arg(long, env = DATABASE_URL_ENV, hide_env_values = true)]
    pub database_url: Option<String>,
    /// The DynamoDB endpoint that holds the sessions (`--store dynamodb`),
    /// signed for with the SDK's default credentials (environment,
    /// profile, instance role). Unset: a private `dynalite` is started.
    #[arg(long, env = DYNAMODB_URL_ENV, hide_env_values = true)]
    pub dynamodb_url: Option<String>,
    /// Sign DynamoDB requests with made-up local credentials, as dynalite
    /// and DynamoDB Local accept (`up` sets this when it starts dynalite).
    /// Off: the SDK's default chain (environment, profile, instance role).
    #[arg(long, env = "SHOP_DYNAMODB_LOCAL_CREDENTIALS")]
    pub dynamodb_local_credentials: bool,
    /// How long a request waits for the Redis in front of DynamoDB
    /// (`--store dynamodb-cached`) before it reads the record instead.
    ///
    /// Far below the store timeout on purpose: a cache is worth asking
    /// only while it is much faster than the record (a Redis read here
    /// takes well under a millisecond, a DynamoDB read several).
    #[arg(long, env = "SHOP_CACHE_TIMEOUT", default_value = "50ms", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "shop::flags::duration")]
    pub cache_timeout: Duration,
    #[command(flatten)]
    #[serde(flatten)]
    pub session: SessionArgs,
}

impl Stage4Args {
    /// Starts a private server for the chosen store when no URL was given.
    pub async fn start_store_if_unset(&mut self, services: &mut Services) -> Result<(), BoxError> {
        match self.store {
            StoreKind::Redis => self.session.start_redis_if_unset(services).await,
            StoreKind::Memcached => {
                if self.memcached_url.is_none() {
                    let server = MemcachedServer::start().await?;
                    let url = server.url();
                    services.keep(
                        server,
                        format!(
                            "Memcached:  {url}   (private memcached, memory only; set {MEMCACHED_URL_ENV} to use your own)"
                        ),
                    );
                    self.memcached_url = Some(url);
                }
                Ok(())
            }
            StoreKind::Postgres => {
                if self.database_url.is_none() {
                    // Stage 5's primary and replica; sessions use only the
                    // primary (a read must see the change just made).
                    let cluster = PostgresCluster::start().await?;
                    let url = cluster.primary_url();
                    services.keep(
                        cluster,
                        format!(
                            "PostgreSQL: {url}   (private primary; set {DATABASE_URL_ENV} to use your own)"
                        ),
                    );
                    self.database_url = Some(url);
                }
                Ok(())
            }
            StoreKind::Dynamodb => self.start_dynalite_if_unset(services).await,
            StoreKind::DynamodbCached => {
                self.start_dynalite_if_unset(services).await?;
                self.session.start_redis_if_unset(services).await
            }
        }
    }

    /// Starts a private dynalite when no DynamoDB endpoint was given.
    async fn start_dynalite_if_unset(&mut self, services: &mut Services) -> Result<(), BoxError> {
        if self.dynamodb_url.is_none() {
            let server = DynamoServer::start().await?;
            let url = server.url();
            services.keep(
                server,
                format!(
                    "DynamoDB:   {url}   (private dynalite: DynamoDB's API over LevelDB; set {DYNAMODB_URL_ENV} to use your own)"
                ),
            );
            self.dynamodb_url = Some(url);
            self.dynamodb_local_credentials = true;
        }
        Ok(())
    }

    /// The session store these flags describe, ready (PostgreSQL's
    /// tables made).
    pub async fn connect(&self) -> Result<Store, BoxError> {
        Ok(match self.store {
            StoreKind::Redis => Store::Redis(self.session.connect()?),
            StoreKind::Memcached => {
                let url = self.memcached_url.as_deref().ok_or_else(|| {
                    format!(
                        "no Memcached to keep sessions in: set {MEMCACHED_URL_ENV}=memcache://host:port"
                    )
                })?;
                Store::Memcached(MemcachedSessions::connect(url, self.session.settings())?)
            }
            StoreKind::Postgres => {
                let url = self.database_url.as_deref().ok_or_else(|| {
                    format!(
                        "no PostgreSQL to keep sessions in: set {DATABASE_URL_ENV}=postgres://user@host:port/db"
                    )
                })?;
                let store = PostgresSessions::connect(url, self.session.settings())?;
                store.prepare().await.map_err(|error| {
                    format!("cannot prepare the sessions tables at {DATABASE_URL_ENV}: {error}")
                })?;
                Store::Postgres(store)
            }
            StoreKind::Dynamodb => Store::Dynamodb(self.connect_dynamodb().await?),
            StoreKind::DynamodbCached => {
                let url = self.session.redis_url.as_deref().ok_or_else(|| {
                    format!("no Redis to cache sessions in: set {REDIS_URL_ENV}=redis://host:port")
                })?;
                Store::DynamodbCached(CachedDynamoSessions::new(
                    self.connect_dynamodb().await?,
                    url,
                    self.cache_timeout,
                )?)
            }
        })
    }

    /// The DynamoDB these flags name, its table ready.
    async fn connect_dynamodb(&self) -> Result<DynamoSessions, BoxError> {
        let url = self.dynamodb_url.as_deref().ok_or_else(|| {
            format!(
                "no DynamoDB to keep sessions in: set {DYNAMODB_URL_ENV}=http://host:port (or AWS's endpoint)"
            )
        })?;
        let credentials = if self.dynamodb_local_credentials {
            Credentialed::Local
        } else {
            Credentialed::DefaultChain
        };
        let store = DynamoSessions::connect(url, credentials, self.session.settings()).await?;
        store.prepare().await.map_err(|error| {
            format!("cannot prepare the sessions table at {DYNAMODB_URL_ENV}: {error}")
        })?;
        Ok(store)
    }
}

impl SessionArgs {
    /// How sessions behave, from these flags.
    pub fn settings(&self) -> SessionSettings {
        SessionSettings {
            ttl: self.session_ttl,
            timeout: self.store_timeout,
            secure_cookies: self.secure_cookies,
        }
    }

    /// Starts a private `redis-server` when no Redis URL was given, and
    /// records its URL.
    pub async fn start_redis_if_unset(&mut self, services: &mut Services) -> Result<(), BoxError> {
        if self.redis_url.is_none() {
            let server = RedisServer::start().await?;
            let url = server.url();
            services.keep(
                server,
                format!("Redis:      {url}   (private redis-server; set {REDIS_URL_ENV} to use your own)"),
            );
            self.redis_url = Some(url);
        }
        Ok(())
    }

    /// The session store these flags describe.
    pub fn connect(&self) -> Result<RedisSessions, BoxError> {
        let url = self.redis_url.as_deref().ok_or_else(|| {
            format!("no Redis to keep sessions in: set {REDIS_URL_ENV}=redis://host:port")
        })?;
        Ok(RedisSessions::connect(url, self.settings())?)
    }
}

impl Stage for Stage4 {
    const INFO: &'static StageInfo = &INFO;
    type Args = Stage4Args;
    type Carts = Store;
    type State = ();

    async fn services(args: &mut Stage4Args, _scope: Scope) -> Result<Services, BoxError> {
        let mut services = Services::default();
        args.start_store_if_unset(&mut services).await?;
        Ok(services)
    }

    async fn start(args: &Stage4Args) -> Result<(Store, ()), BoxError> {
        Ok((args.connect().await?, ()))
    }

    fn routes() -> axum::Router<std::sync::Arc<shop::Shop<Self>>> {
        routes::session_routes().route("/metrics", axum::routing::get(routes::metrics))
    }

    const WIDGETS: &'static [shop::Widget] = &[page::STORE_BADGE];

    const LOG_HEADERS: &'static [&'static str] = &["x-session", "x-session-store"];

    async fn demo(
        args: Stage4Args,
        exe: std::path::PathBuf,
        _services: Services,
    ) -> Result<(), BoxError> {
        // The demo narrates Redis (its keys, its AOF); the other stores
        // have their tests and `crowd --stage 4 --store NAME`.
        if args.store != StoreKind::Redis {
            return Err(format!(
                "the demo tells the Redis story; run it without --store (was {}), or try `cargo run -p crowd -- --stage 4 --store {}`",
                args.store.name(),
                args.store.name()
            )
            .into());
        }
        demo::run(args.session, exe).await
    }
}
