//! # Stage 1 · Local state
//!
//! **The lesson:** each instance keeps carts in its own memory. Behind a
//! round-robin balancer the shopper's next request lands on another
//! instance, whose memory has never heard of that cart: it "vanishes", and
//! comes back when round-robin returns to the instance that has it.
//!
//! **What changed:** nothing yet; this is where the shop starts. The cart
//! store is [`shop::store::MemoryCarts`], a map from a random `client_id`
//! cookie to a cart, inside each process.
//!
//! **Run it:** `cargo run -p stage1`, open <http://127.0.0.1:8080>, add a
//! T-shirt, then press "Refresh cart" a few times and watch the badge change
//! colour as the cart empties and refills. Or, in a terminal:
//!
//! ```text
//! curl -s -c jar -b jar -H 'content-type: application/json' \
//!      -d '{"sku":"TEE-RED-M","qty":2}' http://127.0.0.1:8080/api/cart/items
//! curl -s -c jar -b jar http://127.0.0.1:8080/api/cart     # another instance: empty
//! ```
//!
//! `cargo run -p stage1 -- demo` tells the same story in the terminal.
//! Stage 2 keeps this store and pins each shopper to one instance instead.

mod demo;

use shop::store::MemoryCarts;
use shop::{BoxError, NoArgs, Services, Stage, StageInfo};

/// Stage 1: carts in each instance's memory, behind round-robin.
#[derive(Debug)]
pub struct Stage1;

/// Stage 1's name and lesson, as the banner and the page show them.
pub static INFO: StageInfo = StageInfo {
    package: "stage1",
    title: "Stage 1 · Local state",
    lesson: "Each instance keeps carts in its own memory: when round-robin sends you to another instance, your cart is not there.",
    try_this: &[
        "open {url}, add a T-shirt, then press \"Refresh cart\": the badge changes colour and the cart empties, then comes back",
        "curl -s -c jar -b jar -H 'content-type: application/json' -d '{\"sku\":\"TEE-RED-M\",\"qty\":2}' {url}/api/cart/items ; curl -s -c jar -b jar {url}/api/cart",
        "cargo run -p stage1 -- demo   (the same story, narrated)",
    ],
    policy: lb::Policy::RoundRobin,
    sticky: false,
};

impl Stage for Stage1 {
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
