//! Stage 5's store: carts in the session store (as in stage 4), accounts
//! and catalog in PostgreSQL behind a cache.
//!
//! [`DataShop`] is what every handler gets. Its cart operations are stage
//! 4's [`RedisCarts`], unchanged, with `X-Data-Path: cart=session-store`
//! added; its own routes are the accounts ([`crate::accounts`]), the
//! catalog ([`crate::catalog`]) and `/metrics`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cookie::CookieJar;
use shop::cart::CartOp;
use shop::http::Shop;
use shop::store::RedisCarts;
use shop::{ApiError, CartReply, CartStore};
use sqlx::PgPool;

use crate::cache::{Cache, Lookup};
use crate::data_path::{self, DATA_PATH, Step};
use crate::db::{Database, Query};
use crate::{accounts, catalog};

/// Everything a stage-5 instance reads and writes.
#[derive(Debug)]
pub struct DataShop {
    pub carts: RedisCarts,
    pub db: Database,
    pub cache: Cache,
}

impl DataShop {
    /// Cache-aside for a JSON body: the cached bytes, or the answer of
    /// `query` (run where [`Database::read`] says) serialised and cached.
    /// `None` from the database is a 404. The response carries the path.
    pub async fn cached_json<T: serde::Serialize>(
        &self,
        name: &str,
        piece: &str,
        min_lsn: Option<&str>,
        query: impl for<'p> Fn(&'p PgPool) -> Query<'p, Option<T>>,
    ) -> Result<Response, ApiError> {
        let mut path = Vec::new();
        let lookup = self.cache.get(name, &mut path).await;
        let body = match lookup {
            Lookup::Hit(bytes) => bytes,
            Lookup::Miss | Lookup::Unavailable => {
                let value = self
                    .db
                    .read(min_lsn, &mut path, query)
                    .await?
                    .ok_or_else(|| ApiError::NotFound(name.to_owned()))?;
                let bytes = serde_json::to_vec(&value).map_err(|_| ApiError::Internal)?;
                // Only a plain miss fills the cache: after a timeout the
                // cache is likely still unwell, and the request should not
                // wait on it twice.
                if matches!(lookup, Lookup::Miss) {
                    self.cache.put(name, &bytes, &mut path).await;
                }
                bytes
            }
        };
        Ok((
            [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (DATA_PATH, data_path::header(piece, &path)),
            ],
            body,
        )
            .into_response())
    }
}

impl AsRef<RedisCarts> for DataShop {
    fn as_ref(&self) -> &RedisCarts {
        &self.carts
    }
}

impl CartStore for DataShop {
    const OWN_CATALOG: bool = true;

    async fn apply(&self, cookies: &CookieJar, op: CartOp) -> Result<CartReply, ApiError> {
        let mut reply = self.carts.apply(cookies, op).await?;
        reply
            .headers
            .insert(DATA_PATH, data_path::header("cart", &[Step::SessionStore]));
        Ok(reply)
    }

    fn routes() -> Router<Arc<Shop<Self>>> {
        RedisCarts::routes::<Self>()
            .route("/api/products", get(catalog::list_products))
            .route("/api/products/{sku}", get(catalog::get_product))
            .route("/api/signup", post(accounts::signup))
            .route("/api/login", post(accounts::login))
            .route("/api/logout", post(accounts::logout))
            .route("/api/me", get(accounts::get_me).put(accounts::put_me))
            .route("/metrics", get(metrics))
    }
}

/// `GET /metrics`: this instance's data counters, Prometheus text format.
async fn metrics(State(shop): State<Arc<Shop<DataShop>>>) -> Response {
    let stats = shop.store.db.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let counters = [
        (
            "shop_cache_hits_total",
            "Reads answered by the cache.",
            load(&stats.cache_hits),
        ),
        (
            "shop_cache_misses_total",
            "Reads the cache did not have.",
            load(&stats.cache_misses),
        ),
        (
            "shop_cache_errors_total",
            "Cache calls that failed or timed out.",
            load(&stats.cache_errors),
        ),
        (
            "shop_replica_reads_total",
            "Reads served by the replica.",
            load(&stats.replica_reads),
        ),
        (
            "shop_primary_reads_total",
            "Reads served by the primary.",
            load(&stats.primary_reads),
        ),
        (
            "shop_replica_fallbacks_total",
            "Reads that went to the primary because the replica failed.",
            load(&stats.replica_fallbacks),
        ),
        (
            "shop_db_writes_total",
            "Write transactions on the primary.",
            load(&stats.writes),
        ),
        (
            "shop_db_queries_total",
            "Database reads and writes made for requests.",
            stats.db_queries(),
        ),
    ];
    let mut text = String::new();
    for (name, help, value) in counters {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    if let Some(lag) = shop.store.db.replica_lag_bytes().await {
        let _ = writeln!(
            text,
            "# HELP shop_replica_lag_bytes WAL the replica has not replayed yet.\n# TYPE shop_replica_lag_bytes gauge\nshop_replica_lag_bytes {lag}"
        );
    }
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}
