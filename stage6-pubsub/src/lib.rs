//! # Stage 6 · Live, across instances
//!
//! **The lesson:** stages 1–5 made the web tier stateless; some servers
//! cannot be. A WebSocket is a long-lived TCP connection, so *which page
//! is connected to which instance* is state, and it lives in that
//! instance. When a shopper buys the last T-shirt on instance 1, the pages
//! watching it on instances 2 and 3 hear nothing unless the instances tell
//! each other. `--fanout` picks how, and each way loses something:
//!
//! | `--fanout` | how instances hear of each other | what it loses |
//! | --- | --- | --- |
//! | `local` | they do not | about two thirds of the updates, with three instances |
//! | `room-sticky` | they need not: the balancer sends a whole room to one instance | the room, when that instance dies; and a busy room loads one instance |
//! | `pubsub` | Redis channels, one subscription per topic per instance | what is published while a page reconnects (at most once) |
//! | `streams` | Redis Streams, read from the last id seen | nothing (within the stream's length) |
//!
//! **What changed since stage 5:** nothing of the shop (accounts, catalog,
//! carts and sessions are stage 5's and stage 4's); a live layer on top:
//! `GET /ws` ([`socket`]) carries a stock and flash-price ticker and a
//! live-shopping room per garment; `POST /api/checkout` takes the cart's
//! stock atomically ([`live`]); each instance has a [`hub`] (which socket
//! watches what, one Redis subscription per topic, [`subscriptions`]) and
//! a [`bus`] (how updates arrive from Redis); each socket has an
//! allowance of messages its page may send (`allowance`). The balancer
//! proxies the WebSockets and balances by open sockets (`least-conn`), or
//! sends a room to one instance (`hash-param` on `?room=`, for
//! `room-sticky`).
//!
//! **Run it:** `cargo run -p stage6` (`-- --fanout local` to see the
//! break), open <http://127.0.0.1:8080> in two windows, and buy in one; or
//! `cargo run -p stage6 -- demo`, the four modes in under two minutes.
//!
//! ```text
//! curl -s -c jar -b jar -H 'content-type: application/json' -d '{"sku":"TEE-RED-M","qty":1}' http://127.0.0.1:8080/api/cart/items
//! curl -s -b jar -X POST http://127.0.0.1:8080/api/checkout      # watching pages see TEE-RED-M's stock drop
//! ```

mod allowance;
pub mod bus;
pub mod client;
mod demo;
pub mod fanout;
pub mod hub;
pub mod live;
mod page;
mod routes;
pub mod socket;
pub mod subscriptions;
mod ticker;
pub mod topic;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use serde::Serialize;
use shop::{ApiError, BoxError, Scope, Services, Shop, Stage, StageInfo, Widget};
use stage4::sessions::RedisSessions;
use stage5::{DataArgs, Stage5, Stage5State};
use tokio::task::JoinHandle;

use crate::bus::Bus;
use crate::fanout::{Fanout, PubsubChannel};
use crate::hub::Hub;
use crate::live::Live;

/// Stage 6: stage 5's shop plus live updates over WebSockets.
#[derive(Debug)]
pub struct Stage6;

/// Stage 6's name and lesson, as the banner and the page show them.
pub static INFO: StageInfo = StageInfo {
    package: "stage6",
    title: "Stage 6 · Live, across instances",
    lesson: "A WebSocket stays on one instance: the instances must tell each other what happened, or your page misses it. --fanout says how.",
    try_this: &[
        "open {url} in two windows (two instances): buy in one, watch the stock drop in the other; the counter says received / published",
        "cargo run -p stage6 -- --fanout local   (each page sees only its own instance's updates: about a third)",
        "kill the instance of one page on the dashboard: it reconnects elsewhere; with --fanout streams it catches up on what it missed",
        "cargo run -p stage6 -- demo   (the four modes, narrated)",
    ],
    policy: lb::Policy::LeastConn,
    sticky: false,
};

/// Stage 6's flags: stage 5's, plus the live layer's.
#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct LiveArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataArgs,
    /// How instances hear about each other's updates.
    #[arg(long, value_enum, env = "SHOP_FANOUT", default_value_t = Fanout::Pubsub)]
    pub fanout: Fanout,
    /// Which Redis channels carry the updates in pubsub mode.
    #[arg(long, value_enum, env = "SHOP_PUBSUB_CHANNEL", default_value_t = PubsubChannel::PerTopic)]
    pub pubsub_channel: PubsubChannel,
    /// Change a random flash price this often, from one instance (e.g. 1s).
    #[arg(long, env = "SHOP_TICKER", value_parser = lb::parse_period)]
    #[serde(serialize_with = "serialize_ticker")]
    pub ticker: Option<Duration>,
    /// Units of each SKU in stock when the shop first starts.
    #[arg(long, env = "SHOP_INITIAL_STOCK", default_value_t = 50)]
    pub initial_stock: u32,
    /// Ping each page's socket this often, so that a balancer's idle
    /// timeout (lb's and nginx's 60s) never takes a quiet page for a dead
    /// one, and a frozen instance's sockets go quiet and get closed.
    #[arg(long, env = "SHOP_WS_PING", default_value = "20s", value_parser = lb::parse_period)]
    #[serde(serialize_with = "shop::flags::duration")]
    pub ws_ping: Duration,
    /// Messages a second one page may send once a burst of 40 is spent
    /// (chat, watch lists, snapshots); more are refused, and a page that
    /// keeps sending is closed (1008). 0: no limit.
    #[arg(long, env = "SHOP_WS_MESSAGES_PER_SECOND", default_value_t = 10)]
    pub ws_messages_per_second: u32,
}

fn serialize_ticker<S: serde::Serializer>(
    every: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match every {
        Some(every) => shop::flags::duration(every, serializer),
        None => serializer.serialize_none(),
    }
}

/// What a stage-6 instance holds besides the carts.
#[derive(Debug)]
pub struct Stage6State {
    data: Stage5State,
    hub: Arc<Hub>,
    live: Live,
    _bus: Bus,
    ticker: Option<JoinHandle<()>>,
    /// How often each socket is pinged.
    ws_ping: Duration,
    /// Messages a second each page may send after its burst; `None`: no
    /// limit ([`allowance`]).
    ws_messages_per_second: Option<u32>,
}

impl Drop for Stage6State {
    fn drop(&mut self) {
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
    }
}

impl AsRef<Stage5State> for Stage6State {
    fn as_ref(&self) -> &Stage5State {
        &self.data
    }
}

impl Stage for Stage6 {
    const INFO: &'static StageInfo = &INFO;
    type Args = LiveArgs;
    type Carts = RedisSessions;
    type State = Stage6State;

    async fn services(args: &mut LiveArgs, scope: Scope) -> Result<Services, BoxError> {
        Stage5::services(&mut args.data, scope).await
    }

    async fn start(args: &LiveArgs) -> Result<(RedisSessions, Stage6State), BoxError> {
        let (carts, data) = Stage5State::start(&args.data).await?;
        let url = args.data.session.redis_url.as_deref().unwrap_or_default();
        let timeout = args.data.session.store_timeout;
        let (changes, to_bus) = tokio::sync::mpsc::unbounded_channel();
        // Only pub/sub and streams subscribe to anything in Redis.
        let hub = Arc::new(Hub::new(args.fanout.through_redis().then_some(changes)));
        let live = Live::connect(
            url,
            (args.fanout, args.pubsub_channel),
            timeout,
            Arc::clone(&hub),
            args.initial_stock,
        )
        .await?;
        let bus = Bus::start(
            (args.fanout, args.pubsub_channel),
            url,
            timeout,
            &hub,
            &live,
            to_bus,
        )?;
        let ticker = args
            .ticker
            .map(|every| tokio::spawn(ticker::run(live.clone(), every)));
        let state = Stage6State {
            data,
            hub,
            live,
            _bus: bus,
            ticker,
            ws_ping: args.ws_ping,
            ws_messages_per_second: Some(args.ws_messages_per_second).filter(|&n| n > 0),
        };
        Ok((carts, state))
    }

    fn policy(args: &LiveArgs) -> lb::Policy {
        match args.fanout {
            Fanout::RoomSticky => lb::Policy::HashParam,
            _ => INFO.policy,
        }
    }

    fn routes() -> Router<Arc<Shop<Self>>> {
        stage5::routes::<Self>().merge(routes::live_routes())
    }

    async fn list_products(shop: &Shop<Self>) -> Result<Response, ApiError> {
        shop.state.data.list_products().await
    }

    async fn get_product(shop: &Shop<Self>, sku: String) -> Result<Response, ApiError> {
        shop.state.data.get_product(sku).await
    }

    const WIDGETS: &'static [Widget] = &[stage5::page::ACCOUNT, page::LIVE];
    const LOG_HEADERS: &'static [&'static str] = &["x-session", "x-data-path"];

    async fn demo(
        args: LiveArgs,
        exe: std::path::PathBuf,
        services: Services,
    ) -> Result<(), BoxError> {
        demo::run(args, exe, services).await
    }
}
