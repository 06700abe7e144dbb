//! `GET /metrics`: this instance's data counters, in the Prometheus text
//! format (written with the balancer's [`lb::metrics::Exposition`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use lb::metrics::{Exposition, Kind};
use shop::Shop;

use crate::DataStage;

/// `GET /metrics`
pub(crate) async fn metrics<S: DataStage>(State(shop): State<Arc<Shop<S>>>) -> Response {
    let data = &shop.state.as_ref().data;
    let (db, cache) = (data.db.stats(), data.cache.stats());
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let mut out = Exposition::new();
    for (name, help, value) in [
        (
            "shop_cache_hits_total",
            "Reads answered by the cache.",
            load(&cache.hits),
        ),
        (
            "shop_cache_misses_total",
            "Reads the cache did not have.",
            load(&cache.misses),
        ),
        (
            "shop_cache_errors_total",
            "Cache calls that failed or timed out.",
            load(&cache.errors),
        ),
        (
            "shop_replica_reads_total",
            "Reads served by the replica.",
            load(&db.replica_reads),
        ),
        (
            "shop_primary_reads_total",
            "Reads served by the primary.",
            load(&db.primary_reads),
        ),
        (
            "shop_replica_fallbacks_total",
            "Reads that went to the primary because the replica failed.",
            load(&db.replica_fallbacks),
        ),
        (
            "shop_db_writes_total",
            "Write transactions on the primary.",
            load(&db.writes),
        ),
        (
            "shop_db_queries_total",
            "Database reads and writes made for requests.",
            db.queries(),
        ),
    ] {
        out.single(name, Kind::Counter, help, value);
    }
    if let Some(lag) = data.db.replica_lag_bytes().await {
        out.single(
            "shop_replica_lag_bytes",
            Kind::Gauge,
            "WAL the replica has not replayed yet.",
            lag,
        );
    }
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out.finish(),
    )
        .into_response()
}
