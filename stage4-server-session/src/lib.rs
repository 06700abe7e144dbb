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
//! ([`shop::store::RedisCarts`] instead of signed cookies), and a
//! `DELETE /api/session` route to end a session. The balancer stays plain
//! round-robin. The instances share one thing: `REDIS_URL`; `stage4 up`
//! starts a private `redis-server` when it is unset.
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
//! The session store itself is in `shop` (stage 5 keeps sessions in Redis
//! too); this crate holds the stage's lesson, flags, demo and tests.

mod demo;

use std::ffi::OsString;

use shop::store::RedisCarts;
use shop::store::redis::SessionArgs;
use shop::{BoxError, Services, Stage, StageInfo};

/// Stage 4: carts in Redis under a server-side session, behind round-robin.
#[derive(Debug)]
pub struct Stage4;

/// Stage 4's name and lesson, as the banner and the page show them.
pub static INFO: StageInfo = StageInfo {
    package: "stage4",
    title: "Stage 4 · Server session",
    lesson: "Only a session id travels; your cart lives in Redis, so any instance serves you and none of them matters.",
    try_this: &[
        "open {url}, add items, then kill the instance that served you on the dashboard ({url}/_lb/): the cart is still there",
        "curl -s -c jar -b jar {url}/api/cart ; grep sid jar   (22 characters: the whole cookie)",
        "curl -s -X DELETE -b jar -c jar {url}/api/session   (ends the session for good)",
        "cargo run -p stage4 -- demo   (instance loss, the cookie's size, concurrent adds, narrated)",
    ],
    policy: lb::Policy::RoundRobin,
    sticky: false,
};

impl Stage for Stage4 {
    const INFO: &'static StageInfo = &INFO;
    type Args = SessionArgs;
    type Store = RedisCarts;

    async fn services(args: &mut SessionArgs) -> Result<Services, BoxError> {
        let mut services = Services::default();
        args.start_redis_if_unset(&mut services).await?;
        Ok(services)
    }

    async fn store(args: &SessionArgs) -> Result<RedisCarts, BoxError> {
        args.connect()
    }

    fn instance_env(args: &SessionArgs) -> Vec<(OsString, OsString)> {
        args.instance_env()
    }

    async fn demo(
        args: SessionArgs,
        exe: std::path::PathBuf,
        _services: Services,
    ) -> Result<(), BoxError> {
        demo::run(args, exe).await
    }
}
