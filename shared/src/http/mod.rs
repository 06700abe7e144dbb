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
//!
//! ## Behind a balancer that speaks HTTPS
//!
//! When the balancer terminates TLS (`lb --tls`), the instance gets plain
//! HTTP and `X-Forwarded-Proto: https`. Then every cookie it sets must be
//! `Secure`, so the browser never sends the cart or session over plain
//! HTTP where anyone on the network could read it. The header is believed
//! only from a peer the instance trusts (`serve --trusted-proxy IP`;
//! [`Instance::with_trusted_proxies`]), and only its *last* value counts:
//! each proxy appends, so the last one is the nearest proxy's, and anything
//! before it may have come from the client.
//!
//! `Secure` is added by [`secure_cookies_behind_tls`], in the one middleware
//! every response goes through, to each `Set-Cookie` that lacks it. The
//! rejected alternative, a "secure" flag handed to every cookie writer
//! (the cart store of each stage, the session store, the client id), has
//! to be threaded through every stage, and one forgotten writer leaks a
//! cookie over plain HTTP; here no stage can forget. (`--secure-cookies`
//! on stages 3 and 4 still forces it without a trusted balancer.)

pub mod api;
mod health;
pub mod json;
pub mod page;
pub mod path;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use tokio::net::TcpListener;

use crate::error::ApiError;
use crate::instance::Instance;
use crate::stage::{Shop, Stage};

pub use json::BODY_LIMIT;

/// Names the instance that produced a response.
pub(crate) const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
/// What the balancer says the shopper's connection was: `http` or `https`.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

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
    let told = Arc::clone(&leaving);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Long-lived connections would hold the shutdown open: tell
            // whoever holds them to close.
            told.instance.leave();
        })
        .await?;
    // An upgraded connection (a WebSocket) is no longer HTTP, so the
    // graceful shutdown above does not wait for it: give the sockets told
    // to close a moment to say goodbye (1001) before the process ends and
    // cuts them mid-sentence.
    let deadline = tokio::time::Instant::now() + SOCKETS_CLOSE_WITHIN;
    while leaving.instance.sockets() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How long a stopping instance waits for its sockets to close: less than
/// the launcher's grace period before SIGKILL (5 s).
const SOCKETS_CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

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
/// whatever comes back (and `Secure` on its cookies behind TLS).
async fn mark_served_by<S: Stage>(
    State(shop): State<Arc<Shop<S>>>,
    request: Request,
    next: Next,
) -> Response {
    let instance = &shop.instance;
    let _busy = instance.busy();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = secure_cookies_behind_tls(instance, request, next).await;
    tracing::debug!(%method, path, status = response.status().as_u16(), "served");
    response
        .headers_mut()
        .insert(SERVED_BY, instance.header().clone());
    response
}

/// Runs the request and, if it came over TLS to a balancer this instance
/// trusts, marks every cookie the response sets `Secure`.
pub async fn secure_cookies_behind_tls(
    instance: &Instance,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    let over_tls = peer.is_some_and(|peer| instance.trusts_proxy(peer.ip()))
        && last_forwarded_proto(request.headers()).is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let mut response = next.run(request).await;
    if over_tls {
        mark_cookies_secure(response.headers_mut());
    }
    response
}

/// The last `X-Forwarded-Proto` value: the one the nearest proxy added,
/// whether the header came once, several times, or as a list.
fn last_forwarded_proto(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(X_FORWARDED_PROTO)
        .iter()
        .next_back()?
        .to_str()
        .ok()?
        .rsplit(',')
        .next()
        .map(str::trim)
}

/// Adds `; Secure` to each `Set-Cookie` that does not have it already.
fn mark_cookies_secure(headers: &mut HeaderMap) {
    let cookies: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
    if cookies.is_empty() {
        return;
    }
    headers.remove(SET_COOKIE);
    for cookie in cookies {
        let secured = match cookie.to_str() {
            Ok(text) if !has_secure_attribute(text) => {
                HeaderValue::from_str(&format!("{text}; Secure")).unwrap_or(cookie)
            }
            // Already `Secure`, or not text: left as it was.
            _ => cookie,
        };
        headers.append(SET_COOKIE, secured);
    }
}

/// Whether a `Set-Cookie` value has the `Secure` attribute (names are
/// case-insensitive; the first `;`-separated part is the cookie itself).
fn has_secure_attribute(set_cookie: &str) -> bool {
    set_cookie
        .split(';')
        .skip(1)
        .any(|attribute| attribute.trim().eq_ignore_ascii_case("secure"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn the_last_forwarded_proto_is_the_nearest_proxys() {
        let last = |pairs| last_forwarded_proto(&headers(pairs)).map(str::to_owned);
        assert_eq!(
            last(&[("x-forwarded-proto", "https")]),
            Some("https".into())
        );
        assert_eq!(
            last(&[("x-forwarded-proto", "https, http")]),
            Some("http".into())
        );
        assert_eq!(
            last(&[
                ("x-forwarded-proto", "http"),
                ("x-forwarded-proto", "https")
            ]),
            Some("https".into())
        );
        assert_eq!(last(&[]), None);
    }

    #[test]
    fn every_cookie_becomes_secure_once() {
        let mut map = headers(&[
            ("set-cookie", "cart=abc; Path=/; HttpOnly"),
            ("set-cookie", "sid=x; Path=/; secure; HttpOnly"),
            ("set-cookie", "Secure=1; Path=/"),
            ("content-type", "text/plain"),
        ]);
        mark_cookies_secure(&mut map);
        let cookies: Vec<_> = map
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect();
        assert_eq!(
            cookies,
            [
                "cart=abc; Path=/; HttpOnly; Secure",
                "sid=x; Path=/; secure; HttpOnly",
                "Secure=1; Path=/; Secure",
            ]
        );
        assert_eq!(map["content-type"], "text/plain");
    }
}
