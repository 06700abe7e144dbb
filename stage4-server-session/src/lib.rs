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
//! **What changed since stage 3:** the cart store
//! ([`sessions::RedisSessions`] instead of signed cookies: only a change
//! starts a session, and a change with an `Idempotency-Key` is applied once
//! however often it is sent), and a `DELETE /api/session` route to end a
//! session ([`routes`]). The balancer
//! stays plain round-robin. The instances share one thing: `REDIS_URL`;
//! `stage4 up` starts a private `redis-server` when it is unset.
//!
//! **Run it:** `cargo run -p stage4`, open <http://127.0.0.1:8080>, kill
//! the instance that served you from the dashboard, and reload; or
//! `cargo run -p stage4 -- demo`.
//!
//! ```text
//! curl -s -c jar -b jar -H 'content-type: application/json' \
//!      -d '{"sku":"TEE-RED-M","qty":2}' http://127.0.0.1:8080/api/cart/items
//! grep sid jar          # a session id, nothing else
//! redis-cli -u "$REDIS_URL" --scan --pattern 'myclothes:session:*'   # the cart's home
//! ```
//!
//! The modules: [`sessions`] (the store: sessions in Redis, each with a
//! cart, changed by Lua scripts), [`error`] (its failures: Redis not
//! answering, or full), [`routes`] (ending a session). Stage 5 keeps its
//! sessions here too.

mod demo;
pub mod error;
pub mod routes;
pub mod sessions;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use serde::Serialize;
use shop::services::redis::{REDIS_URL_ENV, RedisServer};
use shop::{BoxError, Scope, Services, Stage, StageInfo};

use crate::sessions::{RedisSessions, SessionSettings};

/// Stage 4: carts in Redis under a server-side session, behind round-robin.
#[derive(Debug)]
pub struct Stage4;

/// Stage 4's name and lesson, as the banner and the page show them.
pub static INFO: StageInfo = StageInfo {
    package: "stage4",
    title: "Stage 4 · Server session",
    lesson: "Only a session id travels; your cart lives in Redis, so any instance serves you and none of them matters.",
    try_this: &[
        "open {url}, add items, then kill the instance that served you on the dashboard (its link is above): the cart is still there",
        "curl -s -c jar -b jar -H 'content-type: application/json' -d '{\"sku\":\"TEE-RED-M\"}' {url}/api/cart/items ; grep sid jar   (22 characters: the whole cookie)",
        "curl -s -X DELETE -b jar -c jar {url}/api/session   (ends the session for good)",
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
    /// How long a request waits for Redis before answering 503.
    #[arg(long, env = "SHOP_STORE_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "shop::flags::duration")]
    pub store_timeout: Duration,
    /// Mark the `sid` cookie `Secure` (only sent over HTTPS).
    #[arg(long, env = "SHOP_SECURE_COOKIES")]
    pub secure_cookies: bool,
}

impl SessionArgs {
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
        let settings = SessionSettings {
            ttl: self.session_ttl,
            timeout: self.store_timeout,
            secure_cookies: self.secure_cookies,
        };
        Ok(RedisSessions::connect(url, settings)?)
    }
}

impl Stage for Stage4 {
    const INFO: &'static StageInfo = &INFO;
    type Args = SessionArgs;
    type Carts = RedisSessions;
    type State = ();

    async fn services(args: &mut SessionArgs, _scope: Scope) -> Result<Services, BoxError> {
        let mut services = Services::default();
        args.start_redis_if_unset(&mut services).await?;
        Ok(services)
    }

    async fn start(args: &SessionArgs) -> Result<(RedisSessions, ()), BoxError> {
        Ok((args.connect()?, ()))
    }

    fn routes() -> axum::Router<std::sync::Arc<shop::Shop<Self>>> {
        routes::session_routes()
    }

    const LOG_HEADERS: &'static [&'static str] = &["x-session"];

    async fn demo(
        args: SessionArgs,
        exe: std::path::PathBuf,
        _services: Services,
    ) -> Result<(), BoxError> {
        demo::run(args, exe).await
    }
}
