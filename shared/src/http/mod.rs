//! The HTTP surface every stage serves, written once.
//!
//! | route | handler |
//! | --- | --- |
//! | `GET /` | [`page`]: the shop page |
//! | `GET /api/products`, `GET /api/products/{sku}` | [`api`]: the catalog |
//! | `GET /api/cart`, `DELETE /api/cart` | [`api`]: view, clear |
//! | `POST /api/cart/items`, `PUT`/`DELETE /api/cart/items/{sku}` | [`api`]: add, set, remove |
//! | `GET /healthz` | [`health`]: instance id, uptime, in-flight requests |
//! | a store's own, e.g. `DELETE /api/session` | [`CartStore::routes`] |
//!
//! Everything else is a JSON 404 (unknown path) or 405 (known path, wrong
//! method). Bodies are limited to [`BODY_LIMIT`]. Every response, errors
//! included, carries `X-Served-By: <instance id>`: the thread the whole
//! workshop pulls on.

pub mod api;
pub mod health;
pub mod json;
pub mod page;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};

use crate::error::ApiError;
use crate::stage::StageInfo;
use crate::store::CartStore;

/// The largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Names the instance that produced a response.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
/// Stage 3: the size of the cart's `Set-Cookie` header, in bytes.
pub const CART_COOKIE_BYTES: HeaderName = HeaderName::from_static("x-cart-cookie-bytes");
/// Stage 3: what happened to the cart cookie, e.g. `rejected; reason=expired`.
pub const CART_COOKIE: HeaderName = HeaderName::from_static("x-cart-cookie");
/// Stage 3: the size browsers guarantee a cookie, attributes included.
pub const COOKIE_LIMIT: usize = 4096;

/// Who this instance is, and how busy.
#[derive(Debug)]
pub struct Instance {
    id: String,
    header: HeaderValue,
    started: Instant,
    in_flight: AtomicUsize,
}

impl Instance {
    /// `id` is shown to shoppers and used as a header value, so it must be
    /// printable ASCII.
    pub fn new(id: &str) -> Result<Self, String> {
        let header = HeaderValue::from_str(id)
            .ok()
            .filter(|_| !id.is_empty() && id.chars().all(|c| c.is_ascii_graphic()))
            .ok_or_else(|| format!("instance id `{id}` must be printable ASCII without spaces"))?;
        Ok(Self {
            id: id.to_owned(),
            header,
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Everything a handler needs: the stage, this instance, and the cart store.
#[derive(Debug)]
pub struct Shop<S> {
    pub stage: &'static StageInfo,
    pub instance: Instance,
    pub store: S,
}

/// The whole HTTP surface for one instance.
pub fn router<S: CartStore>(shop: Arc<Shop<S>>) -> Router {
    let mut router = Router::new().route("/", get(page::shop_page::<S>));
    if !S::OWN_CATALOG {
        router = router
            .route("/api/products", get(api::list_products))
            .route("/api/products/{sku}", get(api::get_product));
    }
    router
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
async fn mark_served_by<S: CartStore>(
    State(shop): State<Arc<Shop<S>>>,
    request: Request,
    next: Next,
) -> Response {
    let instance = &shop.instance;
    instance.in_flight.fetch_add(1, Ordering::AcqRel);
    // Decrement in a guard, so a request cancelled mid-way (client gone)
    // still leaves the count right.
    struct Done<'a>(&'a AtomicUsize);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let _done = Done(&instance.in_flight);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    tracing::debug!(%method, path, status = response.status().as_u16(), "served");
    response
        .headers_mut()
        .insert(SERVED_BY, instance.header.clone());
    response
}
