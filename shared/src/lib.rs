//! `shop`: MyClothes, everything every stage shares.
//!
//! The shop starts as stage 1 does: carts in each instance's memory. This
//! crate holds that shop, and what every later stage runs on, written once:
//!
//! * the domain: [`catalog`] (270 SKUs, prices in cents) and [`cart`] (the
//!   rules: 1..=99 per line, at most 200 lines, server-side totals);
//! * the HTTP surface: [`http`] (routes, JSON API, shop page, health,
//!   `X-Served-By`), with [`error::ApiError`] for every failure;
//! * the seam a stage fills: [`stage::Stage`] (its name and lesson, flags,
//!   cart store, routes, catalog source, page widgets, demo), with
//!   [`store::CartStore`] for where the cart lives, and the first store,
//!   [`store::MemoryCarts`];
//! * running it: [`cli`] (`up`, `serve`, `demo`), [`flags`] (how `up`
//!   hands a stage's flags to its instances), [`topology`] (instances
//!   behind the `lb` balancer), [`services`] (private `redis-server` and
//!   PostgreSQL processes, for the stages that need them);
//! * shopping it: [`shopper`] (a client with a cookie jar) and [`narrate`]
//!   (the demos' terminal story), used by demos and tests alike; and, with
//!   the `testing` feature, `testing`: helpers for the stages' test suites.
//!
//! What is only one stage's lesson lives in that stage's crate.

pub mod autoscale;
pub mod cart;
pub mod catalog;
pub mod cli;
pub mod cookies;
pub mod error;
pub mod flags;
pub mod front;
pub mod http;
pub mod ids;
mod instance;
pub mod narrate;
mod parent;
pub mod services;
pub mod shopper;
pub mod stage;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topology;

pub use cart::{Cart, CartError, CartLine, CartOp};
pub use catalog::{Catalog, Product};
pub use error::{ApiError, StageError};
pub use instance::{HeldSocket, Instance};
pub use stage::{BoxError, NoArgs, Scope, Services, Shop, Stage, StageInfo, Widget};
pub use store::{CartReply, CartRequest, CartStore, IdempotencyKey};
