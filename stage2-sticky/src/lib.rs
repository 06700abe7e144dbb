//! # Stage 2 · Sticky sessions
//!
//! **The lesson:** the balancer pins each shopper to one instance with a
//! cookie of its own (`lb_sticky`), so the cart in that instance's memory is
//! found again. It works, until that instance dies, restarts or is scaled
//! in: the carts it held are gone, and the shoppers are quietly sent
//! elsewhere with an empty cart. Pinning also spreads load by *shopper*, not
//! by request: a few busy shoppers make one instance hot, and a new instance
//! gets only newcomers.
//!
//! **What changed since stage 1:** nothing in the instances (the same
//! [`shop::store::MemoryCarts`]); only the balancer, started with
//! `sticky: true`. That is the point: stickiness is a balancer feature that
//! hides the problem without removing it.
//!
//! **Run it:** `cargo run -p stage2`, open <http://127.0.0.1:8080>, fill a
//! cart, then open the dashboard (the link on the banner) and kill
//! the instance on your badge. Or `cargo run -p stage2 -- demo`.
//!
//! ```text
//! curl -s -c jar -b jar -H 'content-type: application/json' \
//!      -d '{"sku":"TEE-RED-M","qty":2}' http://127.0.0.1:8080/api/cart/items
//! curl -s -c jar -b jar http://127.0.0.1:8080/api/cart     # same instance, same cart
//! ```

mod demo;

use shop::store::MemoryCarts;
use shop::{BoxError, NoArgs, Services, Stage, StageInfo};

/// Stage 2: stage 1's instances behind a sticky balancer.
#[derive(Debug)]
pub struct Stage2;

/// Stage 2's name and lesson, as the banner and the page show them.
pub static INFO: StageInfo = StageInfo {
    package: "stage2",
    title: "Stage 2 · Sticky sessions",
    lesson: "The balancer pins you to one instance, so your cart holds, until that instance dies or is scaled in.",
    try_this: &[
        "open {url}, fill a cart, refresh: the badge keeps its colour (the lb_sticky cookie pins you)",
        "open the dashboard (its link is above) and press Kill on your instance, then refresh the shop: no error, another instance, an empty cart",
        "press Drain on an instance: its pinned shoppers stay, new shoppers never land there",
        "cargo run -p stage2 -- demo   (the same story, narrated)",
    ],
    policy: lb::Policy::RoundRobin,
    sticky: true,
};

impl Stage for Stage2 {
    const INFO: &'static StageInfo = &INFO;
    type Args = NoArgs;
    type Carts = MemoryCarts;
    type State = ();

    async fn start(_args: &NoArgs) -> Result<(MemoryCarts, ()), BoxError> {
        Ok((MemoryCarts::default(), ()))
    }

    async fn demo(
        _args: NoArgs,
        exe: std::path::PathBuf,
        _services: Services,
    ) -> Result<(), BoxError> {
        demo::run(exe).await
    }
}
