//! The HTTP surface every stage serves, written once.
//!
//! | route | handler |
//! | --- | --- |
//! | `GET /` | [`page`]: the shop page |
//! | `GET /api/products`, `GET /api/products/{sku}` | [`api`], from the stage's catalog source |
//! | `GET /api/cart`, `DELETE /api/cart` | [`api`]: view, clear |
//! | `POST /api/cart/items`, `PUT`/`DELETE /api/cart/items/{sku}` | [`api`]: add, set, remove |
//! | `GET /healthz` | [`health`]: instance id, uptime, in-flight requests |
//! | the stage's own | [`Stage::routes`] |
//!
//! Everything else is a JSON 404 (unknown path) or 405 (known path, wrong
//! method). Bodies are limited to [`BODY_LIMIT`]. Every response, errors
//! included, carries `X-Served-By: <instance id>`: the thread the whole
//! workshop pulls on.

pub mod api;
mod health;
pub mod json;
pub mod page;
pub mod path;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use tokio::net::TcpListener;

use crate::error::ApiError;
use crate::stage::{Shop, Stage};

pub use json::BODY_LIMIT;

/// Names the instance that produced a response.
pub(crate) const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// Serves `shop` on `listener` until `shutdown` completes, then finishes
/// the requests in progress.
///
/// `run(listener, shop, shutdown)` in the style of mini-redis: the caller
/// binds (so a test can bind port 0 and learn the port) and decides when to
/// stop (so a test can stop it without signals). Handlers may ask for the
/// connection's peer (`ConnectInfo<SocketAddr>`).
pub async fn run<S: Stage>(
    listener: TcpListener,
    shop: Arc<Shop<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let leaving = Arc::clone(&shop);
    let app = router(shop).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // No Nagle: an answer, or a WebSocket message, leaves at once instead
    // of waiting for the previous one to be acknowledged (with the peer's
    // delayed ACK, up to 40 ms).
    let listener =
        axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
            let _ = stream.set_nodelay(true);
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Long-lived connections would hold the shutdown open: tell
            // whoever holds them to close.
            leaving.instance.leave();
        })
        .await
}

/// The whole HTTP surface for one instance.
fn router<S: Stage>(shop: Arc<Shop<S>>) -> Router {
    Router::new()
        .route("/", get(page::shop_page::<S>))
        .route("/api/products", get(api::list_products::<S>))
        .route("/api/products/{sku}", get(api::get_product::<S>))
        .route(
            "/api/cart",
            get(api::view_cart::<S>).delete(api::clear_cart::<S>),
        )
        .route("/api/cart/items", post(api::add_item::<S>))
        .route(
            "/api/cart/items/{sku}",
            put(api::set_item::<S>).delete(api::remove_item::<S>),
        )
        .route("/healthz", get(health::healthz::<S>))
        .merge(S::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shop),
            mark_served_by::<S>,
        ))
        .with_state(shop)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} {}", uri.path()))
}

/// Counts the request in flight while it runs and stamps `X-Served-By` on
/// whatever comes back.
async fn mark_served_by<S: Stage>(
    State(shop): State<Arc<Shop<S>>>,
    request: Request,
    next: Next,
) -> Response {
    let instance = &shop.instance;
    let _busy = instance.busy();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    tracing::debug!(%method, path, status = response.status().as_u16(), "served");
    response
        .headers_mut()
        .insert(SERVED_BY, instance.header().clone());
    response
}
