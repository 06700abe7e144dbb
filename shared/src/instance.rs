//! One shop instance: the HTTP surface over a cart store, on a listener.
//!
//! `run(listener, shop, shutdown)` in the style of mini-redis: the caller
//! binds (so a test can bind port 0 and learn the port) and decides when to
//! stop (so a test can stop it without signals).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::http::{Shop, router};
use crate::store::CartStore;

/// Serves `shop` on `listener` until `shutdown` completes, then finishes the
/// requests in progress.
pub async fn run<S: CartStore>(
    listener: TcpListener,
    shop: Arc<Shop<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(shop))
        .with_graceful_shutdown(shutdown)
        .await
}
