//! Stage 5's data tier: the database behind a cache, as one value.
//!
//! [`Data`] is the stage's [`shop::Stage::State`]: what its own routes
//! (accounts, catalog, `/metrics`) are given besides the carts, which stay
//! in stage 4's sessions. Its one method is the read path every cached
//! answer takes, cache-aside.

use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use shop::ApiError;
use sqlx::PgPool;

use crate::cache::{Cache, Lookup};
use crate::data_path::{self, DATA_PATH};
use crate::db::{Database, Query, WalPosition};

/// The database (primary and replica) and the cache in front of it.
#[derive(Debug)]
pub struct Data {
    pub db: Database,
    pub cache: Cache,
}

impl Data {
    /// Cache-aside for a JSON body: the cached bytes, or the answer of
    /// `query` (run where [`Database::read`] says) serialised and cached.
    /// `None` from the database is a 404. The response carries the path
    /// (`X-Data-Path: <piece>=…`).
    pub async fn cached_json<T: serde::Serialize>(
        &self,
        name: &str,
        piece: &str,
        min_lsn: Option<&WalPosition>,
        query: impl for<'p> Fn(&'p PgPool) -> Query<'p, Option<T>>,
    ) -> Result<Response, ApiError> {
        let mut path = Vec::new();
        let lookup = self.cache.get(name, &mut path).await;
        let body = match lookup {
            Lookup::Hit(bytes) => bytes,
            Lookup::Miss { .. } | Lookup::Unavailable => {
                // A write's mark says how new the answer must be, as the
                // shopper's own last write does: the later of the two.
                let mark = match &lookup {
                    Lookup::Miss { mark } => mark.as_ref(),
                    _ => None,
                };
                let min_lsn = WalPosition::later(min_lsn, mark.map(|mark| &mark.written_at));
                let value = self
                    .db
                    .read(min_lsn, &mut path, query)
                    .await?
                    .ok_or_else(|| ApiError::NotFound(name.to_owned()))?;
                let bytes = serde_json::to_vec(&value).map_err(|error| {
                    tracing::error!(%error, "cannot serialise a database answer");
                    ApiError::Internal
                })?;
                // Only a plain miss fills the cache: after a timeout the
                // cache is likely still unwell, and the request should not
                // wait on it twice.
                if let Lookup::Miss { mark } = &lookup {
                    self.cache.put(name, &bytes, mark.as_ref(), &mut path).await;
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
