//! # Stage 5 · Database, replica and cache
//!
//! **The lesson:** shoppers' accounts and addresses belong in a database,
//! and reads must scale without hurting writes. Writes go to the PostgreSQL
//! primary; reads go to a streaming read replica, a few milliseconds
//! behind; a Redis cache, filled lazily on a miss, takes most reads off the
//! database altogether. Each brings its own trouble, and the shop shows it:
//! replica lag (read-your-writes), cache invalidation, and what happens
//! when any one of the three is down. Every response says where its data
//! came from in `X-Data-Path`.
//!
//! **What changed since stage 4:** carts and sessions stay exactly where
//! they were (stage 4's [`stage4::sessions::RedisSessions`], and its
//! `DELETE /api/session`, which is now "log out"). The stage adds a data
//! tier ([`data`]: a database with a replica, [`db`], behind a cache,
//! [`cache`]), accounts ([`accounts`]), a catalog read from the database
//! ([`catalog`]), `/metrics` ([`metrics`]) and an account panel on the page
//! ([`page`]). Login rotates the session id. Its errors are [`error`]'s.
//!
//! **Run it:** `cargo run -p stage5` (it starts a private PostgreSQL
//! primary + replica and two private Redis servers, sessions and cache,
//! unless `DATABASE_URL`/`DATABASE_REPLICA_URL`/`REDIS_URL`/`CACHE_URL` are
//! set), or `cargo run -p stage5 -- demo`.
//!
//! ```text
//! curl -si -c jar -b jar -H 'content-type: application/json' \
//!      -d '{"email":"ada@example.com","password":"correct horse","name":"Ada"}' \
//!      http://127.0.0.1:8080/api/signup
//! curl -si -b jar http://127.0.0.1:8080/api/me | grep -i x-data-path   # cache-miss,replica,cached
//! curl -si -b jar http://127.0.0.1:8080/api/me | grep -i x-data-path   # cache-hit
//! ```

mod accounts;
mod attempts;
mod cache;
mod catalog;
mod data;
mod data_path;
mod db;
mod demo;
mod error;
mod metrics;
pub mod page;
mod passwords;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;
use shop::services::postgres::{DATABASE_REPLICA_URL_ENV, DATABASE_URL_ENV, PostgresCluster};
use shop::services::redis::{RedisRole, RedisServer};
use shop::{ApiError, BoxError, Scope, Services, Shop, Stage, StageInfo, Widget};
use stage4::SessionArgs;
use stage4::sessions::RedisSessions;

use crate::attempts::Attempts;
use crate::cache::Cache;
use crate::data::Data;
use crate::db::Database;
use crate::passwords::Passwords;

/// The variable that points the shop at a cache Redis it did not start.
pub const CACHE_URL_ENV: &str = "CACHE_URL";

/// Stage 5: PostgreSQL primary + replica, a Redis cache, sessions in Redis.
#[derive(Debug)]
pub struct Stage5;

/// Stage 5's name and lesson, as the banner and the page show them.
pub static INFO: StageInfo = StageInfo {
    package: "stage5",
    title: "Stage 5 · Database, replica and cache",
    lesson: "Accounts and catalog live in PostgreSQL: writes to the primary, reads from a replica, most reads from a cache. X-Data-Path says which.",
    try_this: &[
        "open {url}, sign up, and watch the request log: each answer says where its data came from (X-Data-Path)",
        "curl -si -b jar {url}/api/me twice: cache-miss,replica,cached then cache-hit",
        "curl {url}/metrics: cache hits and misses, replica and primary reads, the replica's lag",
        "cargo run -p stage5 -- demo   (cache hits, invalidation, read-your-writes, a replica outage, narrated)",
    ],
    policy: lb::Policy::RoundRobin,
    sticky: false,
};

/// Stage 5's flags: stage 4's session flags, plus the databases and cache.
#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct DataArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub session: SessionArgs,
    /// The PostgreSQL primary (writes). Unset, with the replica unset too: a
    /// private primary and replica are started.
    #[arg(long, env = DATABASE_URL_ENV, hide_env_values = true)]
    pub database_url: Option<String>,
    /// The PostgreSQL streaming replica (reads).
    #[arg(long, env = DATABASE_REPLICA_URL_ENV, hide_env_values = true)]
    pub database_replica_url: Option<String>,
    /// The cache's Redis. Unset: a private cache `redis-server` is started.
    #[arg(long, env = CACHE_URL_ENV, hide_env_values = true)]
    pub cache_url: Option<String>,
    /// How long a cached product or profile lives (plus up to 10% jitter).
    #[arg(long, env = "SHOP_CACHE_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "shop::flags::duration")]
    pub cache_ttl: Duration,
    /// How long a request waits for a database connection before the read
    /// falls back (replica) or the write answers 503 (primary).
    #[arg(long, env = "SHOP_DB_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "shop::flags::duration")]
    pub db_timeout: Duration,
    /// Turn the cache off: every read goes to the database (for comparison).
    #[arg(long, env = "SHOP_NO_CACHE")]
    pub no_cache: bool,
}

/// What a stage-5 instance holds besides the carts: the data tier, and the
/// guards in front of the accounts.
#[derive(Debug)]
pub struct Stage5State {
    data: Data,
    passwords: Passwords,
    attempts: Attempts,
}

impl AsRef<Stage5State> for Stage5State {
    fn as_ref(&self) -> &Stage5State {
        self
    }
}

/// A stage built on this one (stage 5 itself, and stage 6): its carts are
/// stage 4's sessions and its state holds this stage's, so this stage's
/// routes serve it unchanged.
pub trait DataStage: Stage<Carts = RedisSessions, State: AsRef<Stage5State>> {}

impl<S: Stage<Carts = RedisSessions, State: AsRef<Stage5State>>> DataStage for S {}

impl Stage5State {
    /// Connects this instance's carts and data tier (migrating the
    /// database first) from the flags.
    pub async fn start(args: &DataArgs) -> Result<(RedisSessions, Self), BoxError> {
        let (Some(primary), Some(replica)) = (&args.database_url, &args.database_replica_url)
        else {
            return Err(format!("set {DATABASE_URL_ENV} and {DATABASE_REPLICA_URL_ENV}").into());
        };
        let db = Database::connect(primary, replica, args.db_timeout)?;
        db.prepare()
            .await
            .map_err(|e| format!("cannot prepare the database at {DATABASE_URL_ENV}: {e}"))?;
        let cache_url = if args.no_cache {
            None
        } else {
            args.cache_url.as_deref()
        };
        let cache = Cache::connect(cache_url, args.cache_ttl, args.session.store_timeout)?;
        let sessions_url = args.session.redis_url.as_deref().unwrap_or_default();
        let state = Self {
            data: Data { db, cache },
            passwords: Passwords::new(),
            attempts: Attempts::connect(sessions_url, args.session.store_timeout)?,
        };
        Ok((args.session.connect()?, state))
    }

    /// The catalog, from the database through the cache.
    pub async fn list_products(&self) -> Result<Response, ApiError> {
        catalog::list_products(&self.data).await
    }

    /// One product, from the database through the cache.
    pub async fn get_product(&self, sku: String) -> Result<Response, ApiError> {
        catalog::get_product(&self.data, sku).await
    }
}

/// This stage's routes (accounts, `/metrics`, and stage 4's
/// `DELETE /api/session`), for any stage built on it.
pub fn routes<S: DataStage>() -> Router<Arc<Shop<S>>> {
    stage4::routes::session_routes()
        .route("/api/signup", post(accounts::signup::<S>))
        .route("/api/login", post(accounts::login::<S>))
        .route(
            "/api/me",
            get(accounts::get_me::<S>).put(accounts::put_me::<S>),
        )
        .route("/metrics", get(metrics::metrics::<S>))
}

impl Stage for Stage5 {
    const INFO: &'static StageInfo = &INFO;
    type Args = DataArgs;
    type Carts = RedisSessions;
    type State = Stage5State;

    async fn services(args: &mut DataArgs, _scope: Scope) -> Result<Services, BoxError> {
        let mut services = Services::default();
        args.session.start_redis_if_unset(&mut services).await?;
        if args.cache_url.is_none() && !args.no_cache {
            let cache = RedisServer::start_as(RedisRole::Cache).await?;
            let url = cache.url();
            services.keep(
                cache,
                format!("Cache:      {url}   (private redis-server, LRU, no persistence; set {CACHE_URL_ENV} to use your own)"),
            );
            args.cache_url = Some(url);
        }
        match (&args.database_url, &args.database_replica_url) {
            (None, None) => {
                let cluster = PostgresCluster::start().await?;
                let (primary, replica) = (cluster.primary_url(), cluster.replica_url());
                services.keep(
                    cluster,
                    format!(
                        "PostgreSQL: primary {primary}, streaming replica {replica}   (private)"
                    ),
                );
                args.database_url = Some(primary);
                args.database_replica_url = Some(replica);
            }
            (Some(_), Some(_)) => {}
            _ => {
                return Err(format!(
                    "set both {DATABASE_URL_ENV} and {DATABASE_REPLICA_URL_ENV}, or neither (a private primary and replica are then started)"
                )
                .into());
            }
        }
        Ok(services)
    }

    async fn start(args: &DataArgs) -> Result<(RedisSessions, Stage5State), BoxError> {
        Stage5State::start(args).await
    }

    fn routes() -> Router<Arc<Shop<Self>>> {
        routes::<Self>()
    }

    async fn list_products(shop: &Shop<Self>) -> Result<Response, ApiError> {
        shop.state.list_products().await
    }

    async fn get_product(shop: &Shop<Self>, sku: String) -> Result<Response, ApiError> {
        shop.state.get_product(sku).await
    }

    const WIDGETS: &'static [Widget] = &[page::ACCOUNT];
    const LOG_HEADERS: &'static [&'static str] = &["x-session", "x-data-path"];

    async fn demo(
        args: DataArgs,
        exe: std::path::PathBuf,
        services: Services,
    ) -> Result<(), BoxError> {
        demo::run(args, exe, services).await
    }
}
