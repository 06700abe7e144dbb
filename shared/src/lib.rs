//! `shop`: MyClothes, everything the five stages share.
//!
//! A stage differs from its neighbours in one thing: where the shopper's cart
//! lives. So this crate holds all the rest, written once:
//!
//! * the domain: [`catalog`] (270 SKUs, prices in cents) and [`cart`] (the
//!   rules: 1..=99 per line, at most 200 lines, server-side totals);
//! * the HTTP surface: [`http`] (routes, JSON API, shop page, health,
//!   `X-Served-By`), with [`error::ApiError`] for every failure;
//! * the seam a stage fills: [`store::CartStore`], and [`stage::Stage`] for
//!   its name, lesson, flags and demo; the stores more than one stage uses
//!   ([`store::MemoryCarts`], [`store::RedisCarts`]);
//! * running it: [`cli`] (`up`, `serve`, `demo`), [`topology`] (instances
//!   behind the `lb` balancer), [`instance`] (one server), [`services`]
//!   (private `redis-server` and PostgreSQL processes);
//! * shopping it: [`shopper`] (a client with a cookie jar) and [`narrate`]
//!   (the demos' terminal story), used by demos and tests alike.

pub mod cart;
pub mod catalog;
pub mod cli;
pub mod cookies;
pub mod error;
pub mod http;
pub mod ids;
pub mod instance;
pub mod narrate;
pub mod parent;
pub mod services;
pub mod shopper;
pub mod stage;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod topology;

pub use cart::{Cart, CartError, CartLine, CartOp};
pub use catalog::{Catalog, Product};
pub use error::ApiError;
pub use stage::{BoxError, NoArgs, Services, Stage, StageInfo};
pub use store::{CartReply, CartStore};

/// Every stage binary links this crate, so this picks their allocator:
/// mimalloc, as the `lb` binary does. Under load, glibc's malloc and free
/// took about 15% of an instance's CPU (perf, stage 4 cart reads): HTTP
/// parsing and Redis replies make many small, short-lived allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
