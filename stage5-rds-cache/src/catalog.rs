//! The catalog, read from PostgreSQL through the cache.
//!
//! `GET /api/products` and `GET /api/products/{sku}`: the same JSON as the
//! earlier stages' static catalog, now from the `products` table (on the
//! replica), cached under `catalog:all` and `product:<SKU>`.

use axum::response::Response;
use shop::catalog::Product;
use shop::{ApiError, Catalog};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::data::Data;

const COLUMNS: &str = "sku, name, garment, colour, size, price_cents";

fn product(row: &PgRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        garment: row.try_get("garment")?,
        colour: row.try_get("colour")?,
        size: row.try_get("size")?,
        price_cents: u32::try_from(row.try_get::<i32, _>("price_cents")?).unwrap_or(0),
    })
}

/// `GET /api/products`
pub(crate) async fn list_products(data: &Data) -> Result<Response, ApiError> {
    data.cached_json("catalog:all", "catalog", None, |pool| {
        Box::pin(async move {
            let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM products ORDER BY position"))
                .fetch_all(pool)
                .await?;
            let products = rows.iter().map(product).collect::<Result<Vec<_>, _>>()?;
            Ok(Some(products))
        })
    })
    .await
}

/// `GET /api/products/{sku}`
pub(crate) async fn get_product(data: &Data, sku: String) -> Result<Response, ApiError> {
    // Unknown SKUs never reach the database (nor fill the cache with
    // misses): the catalog's shape is known to every instance.
    if Catalog::get().find(&sku).is_none() {
        return Err(ApiError::UnknownSku(sku));
    }
    let name = format!("product:{sku}");
    data.cached_json(&name, "catalog", None, move |pool| {
        let sku = sku.clone();
        Box::pin(async move {
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM products WHERE sku = $1"))
                .bind(sku)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(product).transpose()
        })
    })
    .await
}
