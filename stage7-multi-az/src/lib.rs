//! # Stage 7 · Multi-AZ
//!
//! **The lesson:** a stateless web tier survives the loss of an instance;
//! a whole availability zone can go dark too, with everything in it. The
//! shop spreads every tier over zones `a` and `b` (Linux network
//! namespaces, [`region`]): instances in both behind the balancer,
//! PostgreSQL with a **synchronous** standby in the other zone
//! ([`postgres_ha`]), the sessions' Redis with a replica watched by three
//! Sentinels, and security groups that let each tier talk only to the
//! next ([`security_groups`]). When zone `a` goes dark, a failover manager
//! ([`failover`]) fences the old primary and promotes the standby (only
//! one that was in sync), and the endpoints ([`endpoint`]) follow: no
//! acknowledged write is lost. (An asynchronous standby, `--async-standby`,
//! can lose them: the tests show it.)
//!
//! **What changed since stage 5:** nothing in the shop's code. The
//! instances are stage 5's; what changes is where each server runs and how
//! they find the primary: through endpoints that move on failover.
//!
//! **Run it:** `sudo -E cargo run -p stage7` (root: namespaces and
//! nftables; without root the zones run on loopback addresses, without the
//! firewall, and the banner says so).

pub mod data_tier;
mod demo;
pub mod endpoint;
pub mod failover;
pub mod netns;
pub mod postgres_ha;
pub mod redis_ha;
pub mod region;
pub mod security_groups;
mod zones;

use std::sync::Arc;

use axum::Router;
use axum::response::Response;
use serde::Serialize;
use shop::{ApiError, BoxError, Scope, Services, Shop, Stage, StageInfo, Widget};
use stage4::sessions::RedisSessions;
use stage5::{DataArgs, Stage5State};

pub use region::NetworkChoice;

/// Stage 7: stage 5's shop, spread over two zones.
#[derive(Debug)]
pub struct Stage7;

/// Stage 7's name and lesson, as the banner and the page show them.
pub static INFO: StageInfo = StageInfo {
    package: "stage7",
    title: "Stage 7 · Multi-AZ",
    lesson: "Every tier spans two zones: instances in both, a synchronous PostgreSQL standby and a Redis replica in the other. Lose a zone, keep every committed write.",
    try_this: &[
        "open {url}, fill a cart and sign up; X-Served-By says a1, b1 or a2: the zone is the letter",
        "ip netns list | grep mc7-   (one namespace per machine); ip netns exec mc7-1-a-data nft list ruleset",
        "curl --max-time 2 http://10.77.1.11:3000/ from the host: dropped (sg-app admits only the balancer)",
        "cargo test -p stage7 --test zone_loss   (a zone goes dark; the standby is promoted; the zone returns)",
    ],
    policy: lb::Policy::RoundRobin,
    sticky: false,
};

/// Stage 7's flags: stage 5's, plus how the zones are built and how the
/// data tier behaves when one is lost.
#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct MultiAzArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataArgs,
    /// How the zones are built: namespaces need root; loopback runs the
    /// same layout on 127.77.x.y without firewall or links to cut.
    #[arg(long, env = "SHOP_NETWORK", value_enum, default_value_t)]
    pub network: NetworkChoice,
    /// An asynchronous standby (fast commits that a failover can lose).
    #[arg(long, env = "SHOP_ASYNC_STANDBY")]
    pub async_standby: bool,
    /// Never commit without the standby (no degraded mode: writes stop
    /// while the other zone is down).
    #[arg(long, env = "SHOP_STRICT_SYNC")]
    pub strict_sync: bool,
    /// Failed checks of the primary (one a second) before a failover.
    #[arg(long, env = "SHOP_FAILOVER_AFTER", default_value_t = 3)]
    pub failover_after: u32,
}

impl Stage for Stage7 {
    const INFO: &'static StageInfo = &INFO;
    type Args = MultiAzArgs;
    type Carts = RedisSessions;
    type State = Stage5State;

    async fn services(args: &mut MultiAzArgs, scope: Scope) -> Result<Services, BoxError> {
        match scope {
            // One instance, started by `up` inside its zone: the URLs are set.
            Scope::Instance => <stage5::Stage5 as Stage>::services(&mut args.data, scope).await,
            Scope::Fleet => zones::start(args).await,
        }
    }

    async fn start(args: &MultiAzArgs) -> Result<(RedisSessions, Stage5State), BoxError> {
        Stage5State::start(&args.data).await
    }

    fn routes() -> Router<Arc<Shop<Self>>> {
        stage5::routes::<Self>()
    }

    async fn list_products(shop: &Shop<Self>) -> Result<Response, ApiError> {
        shop.state.list_products().await
    }

    async fn get_product(shop: &Shop<Self>, sku: String) -> Result<Response, ApiError> {
        shop.state.get_product(sku).await
    }

    const WIDGETS: &'static [Widget] = &[stage5::page::ACCOUNT];
    const LOG_HEADERS: &'static [&'static str] = &["x-session", "x-data-path"];

    async fn demo(
        args: MultiAzArgs,
        exe: std::path::PathBuf,
        services: Services,
    ) -> Result<(), BoxError> {
        demo::run(args, exe, services).await
    }
}
